// TLS over OpenSSL 3 for Hato's blocking sockets: server (inbound STARTTLS, RFC 3207)
// and client (outbound STARTTLS, cluster links).
//
// Stable API (issue 3 built it, issue 4 uses the client side; change it only additively):
//
//     // Server side, once at start-up (PEM files; the chain file may hold intermediates):
//     let server = try TLSContext.server(certificateChainPath: "/etc/hato/cert.pem",
//                                        privateKeyPath: "/etc/hato/key.pem")
//     // After "220 2.0.0 Ready to start TLS" has been written on `socket`:
//     let tls = try TLSStream.accept(over: socket, context: server)
//
//     // Client side (outbound delivery). Opportunistic: encrypt, never fail on the certificate,
//     // but report whether it verified (chain against the system roots + host name):
//     let client = try TLSContext.client()                       // verifyPeer: false
//     // Mandatory verification (handshake fails with TLSError.Kind.certificateVerification):
//     let strict = try TLSContext.client(verifyPeer: true, trustedCAFile: nil)  // nil = system roots
//     // After the server's "220" to STARTTLS:
//     let tls = try TLSStream.connect(over: socket, context: client, serverName: "mx.example.com")
//     tls.protocolVersion          // "TLSv1.3"
//     tls.cipher                   // "TLS_AES_256_GCM_SHA384"
//     tls.peerCertificateVerified  // chain and host name verified
//     tls.verificationError        // e.g. "self-signed certificate", nil when verified
//     try tls.write(bytes); let n = try tls.read(into: buffer); tls.close()   // ByteStream
//
// Rules:
// - Minimum protocol TLS 1.2 on both sides; no compression; no renegotiation.
// - Timeouts are the socket's: set `socket.setTimeouts(read:write:)` (or `tls.setTimeouts`) before
//   the handshake and between reads. A timeout surfaces as `SocketError(.timeout)`, as on a plain
//   socket; a peer that disconnects as `SocketError(.closed)` (or `read` returning 0).
// - Handshake failures that are about TLS itself (protocol mismatch, not TLS at all, a bad
//   certificate) throw `TLSError`, so a caller can classify them ("TLS" bounce category).
// - The socket must not be read by anyone else once the handshake starts: bytes a plaintext
//   reader had buffered past the STARTTLS line must be discarded (RFC 3207 §4.2, CVE-2011-0411).
// - SIGPIPE: OpenSSL writes with write(2), so a closed peer would raise SIGPIPE. Creating a
//   `TLSContext` ignores SIGPIPE for the process (the binaries also do it at start).
// - One `TLSStream` serializes its own calls (an internal lock). The close rule of `Socket`
//   holds: the reading thread calls `close()`; another thread that wants the connection to end
//   calls `shutdown()`, which wakes the reader. Every OpenSSL call that touches the socket
//   holds a use of its descriptor (`Socket.withDescriptor`), so it is never released under one.

import COpenSSL
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A TLS failure that is about TLS itself rather than the network.
public struct TLSError: Error, CustomStringConvertible, Sendable, Equatable {
    /// What failed.
    public enum Kind: Sendable, Equatable {
        /// A context could not be built: unreadable or invalid PEM, a key that does not match.
        case configuration
        /// The handshake failed: no common protocol or cipher, not TLS, an alert from the peer.
        case handshake
        /// The peer's certificate did not verify (chain or host name) and verification was required.
        case certificateVerification
    }

    /// The failure class.
    public let kind: Kind
    /// A human-readable reason, including OpenSSL's reason strings.
    public let message: String

    /// Creates an error.
    /// - Parameters:
    ///   - kind: the failure class.
    ///   - message: what happened.
    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    /// `TLS <kind>: <message>`.
    public var description: String {
        switch kind {
        case .configuration: return "TLS configuration: \(message)"
        case .handshake: return "TLS handshake failed: \(message)"
        case .certificateVerification: return "TLS certificate verification failed: \(message)"
        }
    }

    /// Drains this thread's OpenSSL error queue into one line of reason strings.
    static func drainOpenSSLErrors() -> String {
        var reasons: [String] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            if let reason = ERR_reason_error_string(code) {
                let text = String(cString: reason)
                if !reasons.contains(text) { reasons.append(text) }
            } else {
                reasons.append("error \(code)")
            }
        }
        return reasons.joined(separator: "; ")
    }
}

/// A TLS protocol version as OpenSSL names it (`TLSv1.2`, `TLSv1.3`).
public enum TLSProtocol {
    /// The lowest version Hato negotiates on either side.
    public static let minimum = "TLSv1.2"
}

/// An OpenSSL `SSL_CTX`: certificates, trust and protocol limits shared by many connections.
///
/// `@unchecked Sendable`: an `SSL_CTX` is immutable after this initializer and OpenSSL 3 allows
/// creating `SSL` objects from it on many threads at once. Freed in `deinit` (connections made
/// from it hold their own reference inside OpenSSL).
public final class TLSContext: @unchecked Sendable {
    /// Whether this context accepts (server) or initiates (client) handshakes.
    public enum Role: Sendable, Equatable {
        /// Inbound: presents a certificate.
        case server
        /// Outbound: checks the peer's certificate (see `verifiesPeer`).
        case client
    }

    let handle: OpaquePointer
    /// Server or client.
    public let role: Role
    /// Client contexts only: whether a certificate that does not verify fails the handshake.
    public let verifiesPeer: Bool

    private static let sigpipeIgnored: Bool = {
        ignoreSIGPIPE()
        return true
    }()

    private init(handle: OpaquePointer, role: Role, verifiesPeer: Bool) {
        self.handle = handle
        self.role = role
        self.verifiesPeer = verifiesPeer
    }

    deinit { SSL_CTX_free(handle) }

    /// The common settings: TLS 1.2+, no compression, no renegotiation, and an EOF without
    /// `close_notify` read as a plain end of stream (SMTP frames its own data).
    private static func make(method: OpaquePointer?) throws(TLSError) -> OpaquePointer {
        _ = sigpipeIgnored
        ERR_clear_error()
        guard let method, let ctx = SSL_CTX_new(method) else {
            throw TLSError(.configuration, "SSL_CTX_new failed: \(TLSError.drainOpenSSLErrors())")
        }
        guard hato_SSL_CTX_set_min_proto_version(ctx, hato_TLS1_2_VERSION()) == 1 else {
            SSL_CTX_free(ctx)
            throw TLSError(.configuration, "cannot set the minimum protocol version: \(TLSError.drainOpenSSLErrors())")
        }
        _ = SSL_CTX_set_options(ctx, UInt64(hato_SSL_OP_NO_COMPRESSION_64() | hato_SSL_OP_NO_RENEGOTIATION()
                                             | hato_SSL_OP_IGNORE_UNEXPECTED_EOF()))
        _ = hato_SSL_CTX_set_mode(ctx, hato_SSL_MODE_AUTO_RETRY())
        return ctx
    }

    private static func checkReadable(_ path: String, _ what: String) throws(TLSError) {
        guard !path.isEmpty else { throw TLSError(.configuration, "\(what) path is empty") }
        if access(path, R_OK) != 0 {
            let reason = String(validatingCString: strerror(errno)) ?? "errno \(errno)"
            throw TLSError(.configuration, "cannot read \(what) \(path): \(reason)")
        }
    }

    /// A server context presenting the certificate chain and private key in PEM files.
    /// - Parameters:
    ///   - certificateChainPath: PEM file with the server certificate first, then any intermediates.
    ///   - privateKeyPath: PEM file with the matching private key (unencrypted).
    /// - Returns: the context.
    /// - Throws: `TLSError(.configuration)` naming the file when a file is unreadable, is not
    ///   PEM, or the key does not match the certificate.
    public static func server(certificateChainPath: String, privateKeyPath: String) throws(TLSError) -> TLSContext {
        try checkReadable(certificateChainPath, "certificate")
        try checkReadable(privateKeyPath, "private key")
        let ctx = try make(method: TLS_server_method())
        let context = TLSContext(handle: ctx, role: .server, verifiesPeer: false)
        ERR_clear_error()
        guard SSL_CTX_use_certificate_chain_file(ctx, certificateChainPath) == 1 else {
            throw TLSError(.configuration, "cannot load certificate \(certificateChainPath): \(TLSError.drainOpenSSLErrors())")
        }
        guard SSL_CTX_use_PrivateKey_file(ctx, privateKeyPath, SSL_FILETYPE_PEM) == 1 else {
            let reasons = TLSError.drainOpenSSLErrors()
            if reasons.contains("key values mismatch") {
                throw TLSError(.configuration, "private key \(privateKeyPath) does not match certificate \(certificateChainPath): \(reasons)")
            }
            throw TLSError(.configuration, "cannot load private key \(privateKeyPath): \(reasons)")
        }
        guard SSL_CTX_check_private_key(ctx) == 1 else {
            throw TLSError(.configuration, "private key \(privateKeyPath) does not match certificate \(certificateChainPath): \(TLSError.drainOpenSSLErrors())")
        }
        return context
    }

    /// A client context.
    ///
    /// The peer's chain is always checked against the trust roots and the host name given to
    /// `TLSStream.connect`, and the result is reported in `TLSStream.peerCertificateVerified`;
    /// only with `verifyPeer` does a failure abort the handshake.
    /// - Parameters:
    ///   - verifyPeer: fail the handshake when the certificate does not verify (default false:
    ///     opportunistic TLS, as for MX delivery without DANE/MTA-STS, RFC 7435).
    ///   - trustedCAFile: a PEM bundle of trust roots; nil uses the system's default roots.
    /// - Returns: the context.
    /// - Throws: `TLSError(.configuration)` when the CA file cannot be loaded.
    public static func client(verifyPeer: Bool = false, trustedCAFile: String? = nil) throws(TLSError) -> TLSContext {
        if let trustedCAFile { try checkReadable(trustedCAFile, "CA file") }
        let ctx = try make(method: TLS_client_method())
        let context = TLSContext(handle: ctx, role: .client, verifiesPeer: verifyPeer)
        ERR_clear_error()
        if let trustedCAFile {
            guard SSL_CTX_load_verify_locations(ctx, trustedCAFile, nil) == 1 else {
                throw TLSError(.configuration, "cannot load CA file \(trustedCAFile): \(TLSError.drainOpenSSLErrors())")
            }
        } else {
            _ = SSL_CTX_set_default_verify_paths(ctx)
            ERR_clear_error()
        }
        SSL_CTX_set_verify(ctx, verifyPeer ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, nil)
        return context
    }

    /// The minimum protocol version this context negotiates, as OpenSSL names it (`TLSv1.2`).
    public var minimumProtocolVersion: String {
        switch Int32(truncatingIfNeeded: hato_SSL_CTX_get_min_proto_version(handle)) {
        case hato_TLS1_2_VERSION(): return "TLSv1.2"
        case hato_TLS1_3_VERSION(): return "TLSv1.3"
        case let other: return "0x" + String(other, radix: 16)
        }
    }
}

/// A TLS connection over a connected blocking `Socket`, usable wherever a `ByteStream` is.
///
/// `@unchecked Sendable`: it owns an `SSL*`, and every use of it happens under `lock` (OpenSSL
/// forbids two threads on one `SSL`). The reading thread closes it; other threads call
/// `shutdown()` (see `Socket`'s close rule).
public final class TLSStream: ByteStream, @unchecked Sendable {
    /// The underlying TCP socket (set its timeouts; do not read or write it directly).
    public let socket: Socket
    /// The context the connection was made from.
    public let context: TLSContext
    /// The negotiated protocol, e.g. `TLSv1.3` (RFC 8446) or `TLSv1.2` (RFC 5246).
    public let protocolVersion: String
    /// The negotiated cipher suite (OpenSSL's name), e.g. `TLS_AES_256_GCM_SHA384`.
    public let cipher: String
    /// Client side: whether the server's certificate chain verified against the trust roots and
    /// matched the `serverName`. Always false on the server side (no client certificates).
    public let peerCertificateVerified: Bool
    /// Client side: why the certificate did not verify (OpenSSL's text), nil when it did or on
    /// the server side.
    public let verificationError: String?

    private let ssl: OpaquePointer
    private let lock = NSLock()
    private var closed = false

    private init(socket: Socket, context: TLSContext, ssl: OpaquePointer, verified: Bool, verificationError: String?) {
        self.socket = socket
        self.context = context
        self.ssl = ssl
        protocolVersion = SSL_get_version(ssl).map { String(cString: $0) } ?? "unknown"
        cipher = SSL_get_current_cipher(ssl).flatMap { SSL_CIPHER_get_name($0) }.map { String(cString: $0) } ?? "unknown"
        peerCertificateVerified = verified
        self.verificationError = verificationError
    }

    deinit { SSL_free(ssl) }

    /// Runs the server handshake on `socket` (after the `220` reply to STARTTLS was sent).
    /// - Parameters:
    ///   - socket: the connected socket; its read/write timeouts bound the handshake.
    ///   - context: a `.server` context.
    /// - Returns: the encrypted stream.
    /// - Throws: `SocketError(.timeout)`/`SocketError(.closed)` when the client stalls or
    ///   disconnects; `TLSError(.handshake)` when the negotiation fails (e.g. the client sent
    ///   plaintext, or only offers TLS 1.1).
    public static func accept(over socket: Socket, context: TLSContext) throws -> TLSStream {
        precondition(context.role == .server, "TLSStream.accept needs a server context")
        let ssl = try newSSL(socket: socket, context: context)
        do {
            try socket.withDescriptor("TLS handshake") { _ in try handshake(ssl, client: false, context: context) }
        } catch {
            SSL_free(ssl)
            throw error
        }
        return TLSStream(socket: socket, context: context, ssl: ssl, verified: false, verificationError: nil)
    }

    /// Runs the client handshake on `socket` (after the server's `220` to STARTTLS).
    ///
    /// Sends `serverName` as SNI (RFC 6066 §3; not for IP literals) and checks the certificate
    /// against it (RFC 6125 via OpenSSL's host name check; an IP literal is matched against
    /// IP SANs).
    /// - Parameters:
    ///   - socket: the connected socket; its read/write timeouts bound the handshake.
    ///   - context: a `.client` context.
    ///   - serverName: the host name the client meant to reach (the MX host name), or nil to
    ///     send no SNI and check no name (then `peerCertificateVerified` covers the chain only).
    /// - Returns: the encrypted stream; see `peerCertificateVerified` when the context does not
    ///   enforce verification.
    /// - Throws: `SocketError(.timeout)`/`SocketError(.closed)` on stall or disconnect;
    ///   `TLSError(.certificateVerification)` when the context verifies and the certificate does
    ///   not; `TLSError(.handshake)` for other negotiation failures.
    public static func connect(over socket: Socket, context: TLSContext, serverName: String?) throws -> TLSStream {
        precondition(context.role == .client, "TLSStream.connect needs a client context")
        let ssl = try newSSL(socket: socket, context: context)
        if let serverName, !serverName.isEmpty {
            let isIP = SocketAddress(host: serverName, port: 0).isNumeric
            if !isIP { _ = hato_SSL_set_tlsext_host_name(ssl, serverName) }
            let param = SSL_get0_param(ssl)
            if isIP {
                _ = X509_VERIFY_PARAM_set1_ip_asc(param, serverName)
            } else {
                _ = SSL_set1_host(ssl, serverName)
            }
        }
        do {
            try socket.withDescriptor("TLS handshake") { _ in try handshake(ssl, client: true, context: context) }
        } catch {
            SSL_free(ssl)
            throw error
        }
        let result = SSL_get_verify_result(ssl)
        let peer = SSL_get1_peer_certificate(ssl)
        defer { if let peer { X509_free(peer) } }
        let verified = result == Int(X509_V_OK) && peer != nil
        var reason: String? = nil
        if !verified {
            reason = peer == nil ? "no peer certificate"
                : X509_verify_cert_error_string(result).map { String(cString: $0) } ?? "verify error \(result)"
        }
        return TLSStream(socket: socket, context: context, ssl: ssl, verified: verified, verificationError: reason)
    }

    private static func newSSL(socket: Socket, context: TLSContext) throws -> OpaquePointer {
        ERR_clear_error()
        guard let ssl = SSL_new(context.handle) else {
            throw TLSError(.configuration, "SSL_new failed: \(TLSError.drainOpenSSLErrors())")
        }
        // The BIO keeps the descriptor's number; every later SSL call runs inside
        // `socket.withDescriptor`, so the number stays this connection's.
        let attached = (try? socket.withDescriptor("TLS handshake") { fd in SSL_set_fd(ssl, fd) == 1 }) ?? false
        guard attached else {
            SSL_free(ssl)
            throw SocketError(.closed, "TLS handshake")
        }
        return ssl
    }

    private static func handshake(_ ssl: OpaquePointer, client: Bool, context: TLSContext) throws {
        var spurious = 0
        while true {
            ERR_clear_error()
            errno = 0
            let rc = client ? SSL_connect(ssl) : SSL_accept(ssl)
            if rc == 1 { return }
            let code = SSL_get_error(ssl, rc)
            let e = errno
            switch code {
            case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
                if e == EAGAIN || e == EWOULDBLOCK { throw SocketError(.timeout, "TLS handshake", code: e) }
                spurious += 1
                if spurious > 16 { throw SocketError(.timeout, "TLS handshake", code: e) }
            case SSL_ERROR_SYSCALL:
                if e == EINTR { continue }
                if e == EAGAIN || e == EWOULDBLOCK { throw SocketError(.timeout, "TLS handshake", code: e) }
                SystemCall.checkNotMisuse(e, "TLS handshake")
                let reasons = TLSError.drainOpenSSLErrors()
                if e == 0 || e == ECONNRESET || e == EPIPE {
                    throw SocketError(.closed, reasons.isEmpty ? "TLS handshake" : "TLS handshake (\(reasons))", code: e)
                }
                throw SocketError(.system, "TLS handshake", code: e)
            case SSL_ERROR_ZERO_RETURN:
                throw SocketError(.closed, "TLS handshake")
            default:
                let reasons = TLSError.drainOpenSSLErrors()
                if client && context.verifiesPeer {
                    let result = SSL_get_verify_result(ssl)
                    if result != Int(X509_V_OK) {
                        let text = X509_verify_cert_error_string(result).map { String(cString: $0) } ?? "verify error \(result)"
                        throw TLSError(.certificateVerification, text)
                    }
                }
                throw TLSError(.handshake, reasons.isEmpty ? "protocol error" : reasons)
            }
        }
    }

    /// Decrypted octets OpenSSL holds that `read` returns without touching the socket
    /// (`SSL_pending`); a driver checks it before flushing pipelined replies (RFC 2920 §3.2).
    public var bufferedByteCount: Int {
        lock.lock()
        defer { lock.unlock() }
        return closed ? 0 : Int(SSL_pending(ssl))
    }

    /// Sets the underlying socket's read and write timeouts in seconds (0 waits forever).
    public func setTimeouts(read: TimeInterval, write: TimeInterval) {
        socket.setTimeouts(read: read, write: write)
    }

    /// Reads up to `buffer.count` decrypted bytes.
    /// - Returns: the number of bytes read; 0 at the end of the stream (close_notify, or the
    ///   peer closing TCP without it).
    /// - Throws: `SocketError(.timeout)` when the socket's read timeout passed;
    ///   `SocketError(.closed)` after `close()` or on reset; `SocketError(.system)` with
    ///   `EPROTO` on a TLS protocol error (bad record, alert).
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        guard buffer.count > 0, let base = buffer.baseAddress else { return 0 }
        lock.lock()
        defer { lock.unlock() }
        guard !closed else { throw SocketError(.closed, "TLS read") }
        return try socket.withDescriptor("TLS read") { _ in try readLocked(base, Int32(clamping: buffer.count)) }
    }

    /// `SSL_read` under `lock`, with the descriptor held.
    private func readLocked(_ base: UnsafeMutableRawPointer, _ count: Int32) throws -> Int {
        var spurious = 0
        while true {
            ERR_clear_error()
            errno = 0
            let n = SSL_read(ssl, base, count)
            if n > 0 { return Int(n) }
            let code = SSL_get_error(ssl, n)
            let e = errno
            switch code {
            case SSL_ERROR_ZERO_RETURN:
                return 0
            case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
                if e == EAGAIN || e == EWOULDBLOCK { throw SocketError(.timeout, "TLS read", code: e) }
                spurious += 1
                if spurious > 16 { throw SocketError(.timeout, "TLS read", code: e) }
            case SSL_ERROR_SYSCALL:
                if e == EINTR { continue }
                if e == EAGAIN || e == EWOULDBLOCK { throw SocketError(.timeout, "TLS read", code: e) }
                if e == 0 { return 0 }
                SystemCall.checkNotMisuse(e, "TLS read")
                throw SocketError(e == ECONNRESET || e == ENOTCONN ? .closed : .system, "TLS read", code: e)
            default:
                let reasons = TLSError.drainOpenSSLErrors()
                throw SocketError(.system, reasons.isEmpty ? "TLS read" : "TLS read (\(reasons))", code: EPROTO)
            }
        }
    }

    /// Encrypts and writes every byte.
    /// - Throws: `SocketError(.timeout)` when the socket's write timeout passed;
    ///   `SocketError(.closed)` when the peer is gone or after `close()`.
    public func write(_ bytes: [UInt8]) throws {
        if bytes.isEmpty { return }
        lock.lock()
        defer { lock.unlock() }
        guard !closed else { throw SocketError(.closed, "TLS write") }
        try socket.withDescriptor("TLS write") { _ in try writeLocked(bytes) }
    }

    /// `SSL_write` of every byte under `lock`, with the descriptor held.
    private func writeLocked(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { raw in
            var offset = 0
            var spurious = 0
            while offset < raw.count {
                ERR_clear_error()
                errno = 0
                let chunk = Int32(clamping: raw.count - offset)
                let n = SSL_write(ssl, raw.baseAddress! + offset, chunk)
                if n > 0 { offset += Int(n); continue }
                let code = SSL_get_error(ssl, n)
                let e = errno
                switch code {
                case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
                    if e == EAGAIN || e == EWOULDBLOCK { throw SocketError(.timeout, "TLS write", code: e) }
                    spurious += 1
                    if spurious > 16 { throw SocketError(.timeout, "TLS write", code: e) }
                case SSL_ERROR_SYSCALL:
                    if e == EINTR { continue }
                    if e == EAGAIN || e == EWOULDBLOCK { throw SocketError(.timeout, "TLS write", code: e) }
                    SystemCall.checkNotMisuse(e, "TLS write")
                    throw SocketError(e == EPIPE || e == ECONNRESET || e == 0 ? .closed : .system, "TLS write", code: e)
                case SSL_ERROR_ZERO_RETURN:
                    throw SocketError(.closed, "TLS write")
                default:
                    let reasons = TLSError.drainOpenSSLErrors()
                    throw SocketError(.system, reasons.isEmpty ? "TLS write" : "TLS write (\(reasons))", code: EPROTO)
                }
            }
        }
    }

    /// Wakes a thread blocked in `read` (its `SSL_read` sees end of stream) without closing
    /// anything: safe from any thread; the reading thread then calls `close()`.
    public func shutdown() { socket.shutdown() }

    /// Sends `close_notify` (without waiting for the peer's) and closes the socket. Idempotent.
    /// **Owner only** (the reading thread; others call `shutdown()`). Should another thread call
    /// it while a read is blocked, the socket is shut down first so the reader returns and
    /// releases the lock, and no `close_notify` is sent.
    public func close() {
        if lock.try() {
            if !closed {
                closed = true
                ERR_clear_error()
                _ = try? socket.withDescriptor("TLS close") { _ in SSL_shutdown(ssl) }
                ERR_clear_error()
            }
            lock.unlock()
        } else {
            socket.shutdown()
            lock.lock()
            closed = true
            lock.unlock()
        }
        socket.close()
    }
}

extension SocketAddress {
    /// Whether `host` is a numeric IPv4 or IPv6 address.
    var isNumeric: Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1
    }
}
