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
//     // Mutual TLS for the cluster link (RFC 8446 §4.3.2 CertificateRequest): the server demands
//     // a client certificate issued by `clientCAFile`; the client presents its own pair.
//     let hub = try TLSContext.server(certificateChainPath: c, privateKeyPath: k, clientCAFile: ca)
//     let node = try TLSContext.client(verifyPeer: true, trustedCAFile: ca, certificateChainPath: nc, privateKeyPath: nk)
//     // A reader thread and a writer thread on one connection at once: `duplex: true`.
//     let link = try TLSStream.accept(over: socket, context: hub, duplex: true)
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
// - One `TLSStream` serializes its own calls (an internal lock): OpenSSL forbids two threads on
//   one `SSL*`. By default the lock is held across the blocking call, so a reader blocked in
//   `read` holds up a writer. A `duplex` stream (the cluster link: a reader and a writer thread)
//   instead makes the socket non-blocking after the handshake: each `SSL_read`/`SSL_write` runs
//   under the lock without waiting, and the waiting happens in poll(2) outside it, bounded by the
//   timeouts given to `setTimeouts` (not `SO_RCVTIMEO`). The close rule of `Socket`
//   holds: the reading thread calls `close()`; another thread that wants the connection to end
//   calls `shutdown()`, which wakes the reader. Every OpenSSL call that touches the socket
//   holds a use of its descriptor (`Socket.withDescriptor`), so it is never released under one.

import COpenSSL
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import HatoSupport

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
    /// Server contexts only: whether a client must present a certificate that verifies against
    /// the `clientCAFile` (mutual TLS); the handshake fails otherwise.
    public let requiresClientCertificate: Bool

    private static let sigpipeIgnored: Bool = {
        ignoreSIGPIPE()
        return true
    }()

    private init(handle: OpaquePointer, role: Role, verifiesPeer: Bool, requiresClientCertificate: Bool = false) {
        self.handle = handle
        self.role = role
        self.verifiesPeer = verifiesPeer
        self.requiresClientCertificate = requiresClientCertificate
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
    ///   - clientCAFile: a PEM bundle of the CAs that issue client certificates; when set, every
    ///     client must present a certificate that verifies against it (mutual TLS, RFC 8446
    ///     §4.3.2), or the handshake fails. Nil (the default): no client certificate is asked for.
    /// - Returns: the context.
    /// - Throws: `TLSError(.configuration)` naming the file when a file is unreadable, is not
    ///   PEM, or the key does not match the certificate.
    public static func server(certificateChainPath: String, privateKeyPath: String, clientCAFile: String? = nil) throws(TLSError) -> TLSContext {
        try checkReadable(certificateChainPath, "certificate")
        try checkReadable(privateKeyPath, "private key")
        if let clientCAFile { try checkReadable(clientCAFile, "CA file") }
        let ctx = try make(method: TLS_server_method())
        let context = TLSContext(handle: ctx, role: .server, verifiesPeer: false, requiresClientCertificate: clientCAFile != nil)
        try loadPair(ctx, certificateChainPath: certificateChainPath, privateKeyPath: privateKeyPath)
        if let clientCAFile {
            try loadTrust(ctx, clientCAFile)
            // The CertificateRequest names the acceptable issuers.
            if let names = SSL_load_client_CA_file(clientCAFile) { SSL_CTX_set_client_CA_list(ctx, names) }
            ERR_clear_error()
            SSL_CTX_set_verify(ctx, hato_SSL_VERIFY_PEER_REQUIRED(), nil)
        }
        return context
    }

    /// Loads a certificate chain and its private key into `ctx` and checks that they match.
    private static func loadPair(_ ctx: OpaquePointer, certificateChainPath: String, privateKeyPath: String) throws(TLSError) {
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
    }

    /// Loads the trust roots of `ctx` from a PEM bundle that must hold at least one certificate.
    private static func loadTrust(_ ctx: OpaquePointer, _ caFile: String) throws(TLSError) {
        let count = try TLSCertificateFile.certificateCount(caFile, what: "CA file")
        guard count > 0 else { throw TLSError(.configuration, "CA file \(caFile) holds no PEM certificate") }
        ERR_clear_error()
        guard SSL_CTX_load_verify_locations(ctx, caFile, nil) == 1 else {
            throw TLSError(.configuration, "cannot load CA file \(caFile): \(TLSError.drainOpenSSLErrors())")
        }
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
    ///   - certificateChainPath: a client certificate chain (PEM) to present when the server asks
    ///     for one (mutual TLS); nil presents none.
    ///   - privateKeyPath: the client certificate's private key (PEM); required with a certificate.
    ///   - trustPartialChain: accept a chain that ends at any certificate of `trustedCAFile`, not
    ///     only at a self-signed root, so that a server's own (leaf) certificate can be trusted
    ///     directly (certificate pinning, as the admin CLI does).
    /// - Returns: the context.
    /// - Throws: `TLSError(.configuration)` when the CA file or the client pair cannot be loaded
    ///   (or the key does not match the certificate).
    public static func client(verifyPeer: Bool = false, trustedCAFile: String? = nil, certificateChainPath: String? = nil,
                              privateKeyPath: String? = nil, trustPartialChain: Bool = false) throws(TLSError) -> TLSContext {
        if let trustedCAFile { try checkReadable(trustedCAFile, "CA file") }
        if let certificateChainPath {
            try checkReadable(certificateChainPath, "certificate")
            guard let privateKeyPath else { throw TLSError(.configuration, "certificate \(certificateChainPath) has no private key") }
            try checkReadable(privateKeyPath, "private key")
        }
        let ctx = try make(method: TLS_client_method())
        let context = TLSContext(handle: ctx, role: .client, verifiesPeer: verifyPeer)
        ERR_clear_error()
        if let trustedCAFile {
            try loadTrust(ctx, trustedCAFile)
        } else {
            _ = SSL_CTX_set_default_verify_paths(ctx)
            ERR_clear_error()
        }
        if trustPartialChain {
            _ = X509_VERIFY_PARAM_set_flags(SSL_CTX_get0_param(ctx), hato_X509_V_FLAG_PARTIAL_CHAIN())
        }
        if let certificateChainPath, let privateKeyPath {
            try loadPair(ctx, certificateChainPath: certificateChainPath, privateKeyPath: privateKeyPath)
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

/// A TLS connection over a connected `Socket`, usable wherever a `ByteStream` is.
///
/// `@unchecked Sendable`: it owns an `SSL*`, and every use of it happens under `lock` (OpenSSL
/// forbids two threads on one `SSL`). The reading thread closes it; other threads call
/// `shutdown()` (see `Socket`'s close rule).
///
/// Two ways of waiting:
/// - **Serialized** (default): the socket stays blocking and its `SO_RCVTIMEO`/`SO_SNDTIMEO`
///   bound each call; the lock is held across the blocking call, so a blocked `read` holds up a
///   `write` from another thread. Right for SMTP, where one thread does both in turn.
/// - **Duplex** (`duplex: true`): after the handshake the socket is made non-blocking; each
///   `SSL_read`/`SSL_write` runs under the lock and returns at once, and the wait for the socket
///   happens in poll(2) outside the lock. A reader thread and a writer thread then work at the
///   same time (the cluster link). Timeouts come from `setTimeouts` (each `read` waits at most the
///   read timeout; a `write` fails after the write timeout without progress).
public final class TLSStream: ByteStream, @unchecked Sendable {
    /// The underlying TCP socket (do not read or write it directly).
    public let socket: Socket
    /// The context the connection was made from.
    public let context: TLSContext
    /// The negotiated protocol, e.g. `TLSv1.3` (RFC 8446) or `TLSv1.2` (RFC 5246).
    public let protocolVersion: String
    /// The negotiated cipher suite (OpenSSL's name), e.g. `TLS_AES_256_GCM_SHA384`.
    public let cipher: String
    /// Whether the peer's certificate verified. Client side: the server's chain against the trust
    /// roots and the `serverName`. Server side: the client's certificate against the context's
    /// `clientCAFile` (always false when the context asks for no client certificate).
    public let peerCertificateVerified: Bool
    /// Client side: why the certificate did not verify (OpenSSL's text), nil when it did or on
    /// the server side.
    public let verificationError: String?
    /// The common name (CN) of the peer certificate's subject, nil when the peer sent none.
    public let peerCommonName: String?
    /// Whether reads and writes may run on two threads at once (see the type's documentation).
    public let isDuplex: Bool

    private let ssl: OpaquePointer
    private let lock = NSLock()
    private var closed = false
    /// Duplex mode: the read and write timeouts (`.zero` waits forever).
    private let timeouts = Locked(Timeouts())

    private struct Timeouts: Sendable {
        var read: Duration = .zero
        var write: Duration = .zero
    }

    private init(socket: Socket, context: TLSContext, ssl: OpaquePointer, verified: Bool, verificationError: String?,
                 peerCommonName: String?, duplex: Bool) {
        self.socket = socket
        self.context = context
        self.ssl = ssl
        protocolVersion = SSL_get_version(ssl).map { String(cString: $0) } ?? "unknown"
        cipher = SSL_get_current_cipher(ssl).flatMap { SSL_CIPHER_get_name($0) }.map { String(cString: $0) } ?? "unknown"
        peerCertificateVerified = verified
        self.verificationError = verificationError
        self.peerCommonName = peerCommonName
        isDuplex = duplex
    }

    deinit { SSL_free(ssl) }

    /// Runs the server handshake on `socket` (after the `220` reply to STARTTLS was sent, or at
    /// once on a TLS-only listener).
    /// - Parameters:
    ///   - socket: the connected, blocking socket; its read/write timeouts bound the handshake.
    ///   - context: a `.server` context; with a `clientCAFile` the client must present a
    ///     certificate that verifies against it.
    ///   - duplex: make the stream usable by a reader and a writer thread at once (the socket
    ///     becomes non-blocking after the handshake; see the type's documentation).
    /// - Returns: the encrypted stream.
    /// - Throws: `SocketError(.timeout)`/`SocketError(.closed)` when the client stalls or
    ///   disconnects; `TLSError(.certificateVerification)` when a required client certificate
    ///   does not verify; `TLSError(.handshake)` when the negotiation fails (e.g. the client sent
    ///   plaintext, only offers TLS 1.1, or sent no certificate when one is required).
    public static func accept(over socket: Socket, context: TLSContext, duplex: Bool = false) throws -> TLSStream {
        precondition(context.role == .server, "TLSStream.accept needs a server context")
        let ssl = try newSSL(socket: socket, context: context)
        do {
            try socket.withDescriptor("TLS handshake") { _ in try handshake(ssl, client: false, context: context) }
            if duplex { try makeDuplex(ssl, socket) }
        } catch {
            SSL_free(ssl)
            throw error
        }
        let (verified, reason, name) = peerVerification(ssl)
        return TLSStream(socket: socket, context: context, ssl: ssl, verified: context.requiresClientCertificate && verified,
                         verificationError: context.requiresClientCertificate ? reason : nil, peerCommonName: name, duplex: duplex)
    }

    /// Runs the client handshake on `socket` (after the server's `220` to STARTTLS).
    ///
    /// Sends `serverName` as SNI (RFC 6066 §3; not for IP literals) and checks the certificate
    /// against it (RFC 6125 via OpenSSL's host name check; an IP literal is matched against
    /// IP SANs).
    /// - Parameters:
    ///   - socket: the connected, blocking socket; its read/write timeouts bound the handshake.
    ///   - context: a `.client` context.
    ///   - serverName: the host name the client meant to reach (the MX host name), or nil to
    ///     send no SNI and check no name (then `peerCertificateVerified` covers the chain only).
    ///   - duplex: make the stream usable by a reader and a writer thread at once.
    /// - Returns: the encrypted stream; see `peerCertificateVerified` when the context does not
    ///   enforce verification.
    /// - Throws: `SocketError(.timeout)`/`SocketError(.closed)` on stall or disconnect;
    ///   `TLSError(.certificateVerification)` when the context verifies and the certificate does
    ///   not; `TLSError(.handshake)` for other negotiation failures (also when the server refused
    ///   our client certificate).
    public static func connect(over socket: Socket, context: TLSContext, serverName: String?, duplex: Bool = false) throws -> TLSStream {
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
            if duplex { try makeDuplex(ssl, socket) }
        } catch {
            SSL_free(ssl)
            throw error
        }
        let (verified, reason, name) = peerVerification(ssl)
        return TLSStream(socket: socket, context: context, ssl: ssl, verified: verified, verificationError: reason,
                         peerCommonName: name, duplex: duplex)
    }

    /// The verification result of the peer's certificate and its subject's common name.
    private static func peerVerification(_ ssl: OpaquePointer) -> (Bool, String?, String?) {
        let result = SSL_get_verify_result(ssl)
        let peer = SSL_get1_peer_certificate(ssl)
        defer { if let peer { X509_free(peer) } }
        let verified = result == Int(X509_V_OK) && peer != nil
        var reason: String? = nil
        if !verified {
            reason = peer == nil ? "no peer certificate"
                : X509_verify_cert_error_string(result).map { String(cString: $0) } ?? "verify error \(result)"
        }
        return (verified, reason, peer.flatMap(TLSCertificateFile.commonName))
    }

    /// After the handshake: a non-blocking socket, and writes that may report progress and be
    /// retried from another buffer address (each write is retried with the rest of its bytes).
    private static func makeDuplex(_ ssl: OpaquePointer, _ socket: Socket) throws {
        try socket.setNonBlocking()
        _ = hato_SSL_set_mode(ssl, hato_SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER() | Int(SSL_MODE_ENABLE_PARTIAL_WRITE))
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
                if (client && context.verifiesPeer) || (!client && context.requiresClientCertificate) {
                    let result = SSL_get_verify_result(ssl)
                    if result != Int(X509_V_OK) {
                        let text = X509_verify_cert_error_string(result).map { String(cString: $0) } ?? "verify error \(result)"
                        throw TLSError(.certificateVerification, client ? text : "client certificate: \(text)")
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

    /// Sets the read and write timeouts in seconds (0 waits forever): the socket's for a
    /// serialized stream, the poll(2) bounds for a duplex one.
    public func setTimeouts(read: TimeInterval, write: TimeInterval) {
        setTimeouts(read: .seconds(max(0, read)), write: .seconds(max(0, write)))
    }

    /// Sets the read and write timeouts (`.zero` waits forever); see `setTimeouts(read:write:)`.
    public func setTimeouts(read: Duration, write: Duration) {
        if isDuplex {
            timeouts.withLock { $0 = Timeouts(read: max(.zero, read), write: max(.zero, write)) }
        } else {
            socket.setTimeouts(read: read, write: write)
        }
    }

    /// Reads up to `buffer.count` decrypted bytes.
    /// - Returns: the number of bytes read; 0 at the end of the stream (close_notify, or the
    ///   peer closing TCP without it, or `shutdown()`).
    /// - Throws: `SocketError(.timeout)` when the read timeout passed;
    ///   `SocketError(.closed)` after `close()` or on reset; `SocketError(.system)` with
    ///   `EPROTO` on a TLS protocol error (bad record, alert).
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        guard buffer.count > 0, let base = buffer.baseAddress else { return 0 }
        let count = Int32(clamping: buffer.count)
        if isDuplex { return try readDuplex(base, count) }
        lock.lock()
        defer { lock.unlock() }
        guard !closed else { throw SocketError(.closed, "TLS read") }
        return try socket.withDescriptor("TLS read") { _ in try readLocked(base, count) }
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

    /// What one non-blocking OpenSSL call did.
    private enum Step {
        /// Octets read or written (0 read: end of stream).
        case done(Int)
        /// Nothing yet: wait until the socket is readable.
        case wantRead
        /// Nothing yet: wait until the socket is writable.
        case wantWrite
    }

    /// Duplex `read`: `SSL_read` under the lock, the wait in poll(2) outside it.
    private func readDuplex(_ base: UnsafeMutableRawPointer, _ count: Int32) throws -> Int {
        let limit = timeouts.snapshot.read
        let deadline: ContinuousClock.Instant? = limit > .zero ? .now + limit : nil
        while true {
            let step: Step = try lock.withLock {
                guard !closed else { throw SocketError(.closed, "TLS read") }
                return try socket.withDescriptor("TLS read") { _ in try readStep(base, count) }
            }
            switch step {
            case .done(let n): return n
            case .wantRead: try waitForSocket(Int16(POLLIN), until: deadline, "TLS read")
            case .wantWrite: try waitForSocket(Int16(POLLOUT), until: deadline, "TLS read")
            }
        }
    }

    /// One non-blocking `SSL_read` (under `lock`, descriptor held).
    private func readStep(_ base: UnsafeMutableRawPointer, _ count: Int32) throws -> Step {
        while true {
            ERR_clear_error()
            errno = 0
            let n = SSL_read(ssl, base, count)
            if n > 0 { return .done(Int(n)) }
            let code = SSL_get_error(ssl, n)
            let e = errno
            switch code {
            case SSL_ERROR_ZERO_RETURN: return .done(0)
            case SSL_ERROR_WANT_READ: return .wantRead
            case SSL_ERROR_WANT_WRITE: return .wantWrite
            case SSL_ERROR_SYSCALL:
                if e == EINTR { continue }
                if e == EAGAIN || e == EWOULDBLOCK { return .wantRead }
                if e == 0 { return .done(0) }
                SystemCall.checkNotMisuse(e, "TLS read")
                throw SocketError(e == ECONNRESET || e == ENOTCONN || e == EPIPE ? .closed : .system, "TLS read", code: e)
            default:
                let reasons = TLSError.drainOpenSSLErrors()
                throw SocketError(.system, reasons.isEmpty ? "TLS read" : "TLS read (\(reasons))", code: EPROTO)
            }
        }
    }

    /// Waits (outside `lock`) until the socket is ready for `events`, an error or hang-up is
    /// pending, or `deadline` passes.
    /// - Throws: `SocketError(.timeout)` at the deadline; `SocketError(.closed)` after `close()`.
    private func waitForSocket(_ events: Int16, until deadline: ContinuousClock.Instant?, _ operation: StaticString) throws {
        try socket.withDescriptor(operation) { fd in
            var ms: Int32 = -1
            if let deadline {
                let left = ContinuousClock.now.duration(to: deadline)
                guard left > .zero else { throw SocketError(.timeout, "\(operation)", code: ETIMEDOUT) }
                ms = max(1, left.pollMilliseconds)
            }
            var pfd = pollfd(fd: fd, events: events, revents: 0)
            let ready: Int32
            do throws(SystemCallError) { ready = try SystemCall.runToCompletion("poll") { poll(&pfd, 1, ms) } } catch {
                throw SocketError(error, operation: "\(operation)")
            }
            if ready == 0 { throw SocketError(.timeout, "\(operation)", code: ETIMEDOUT) }
        }
    }

    /// Encrypts and writes every byte.
    /// - Throws: `SocketError(.timeout)` when the write timeout passed (duplex: without any
    ///   progress); `SocketError(.closed)` when the peer is gone or after `close()`.
    public func write(_ bytes: [UInt8]) throws {
        if bytes.isEmpty { return }
        if isDuplex { return try writeDuplex(bytes) }
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

    /// Duplex `write`: each `SSL_write` under the lock (partial writes allowed), the wait for a
    /// writable socket in poll(2) outside it; the write timeout counts from the last progress.
    private func writeDuplex(_ bytes: [UInt8]) throws {
        let limit = timeouts.snapshot.write
        func fresh() -> ContinuousClock.Instant? { limit > .zero ? .now + limit : nil }
        try bytes.withUnsafeBytes { raw in
            var offset = 0
            var deadline = fresh()
            while offset < raw.count {
                let step: Step = try lock.withLock {
                    guard !closed else { throw SocketError(.closed, "TLS write") }
                    return try socket.withDescriptor("TLS write") { _ in
                        try writeStep(raw.baseAddress! + offset, Int32(clamping: raw.count - offset))
                    }
                }
                switch step {
                case .done(let n):
                    offset += n
                    deadline = fresh()
                case .wantWrite:
                    try waitForSocket(Int16(POLLOUT), until: deadline, "TLS write")
                case .wantRead:
                    // Only a handshake message makes a write wait for input (renegotiation is
                    // off); the reader thread consumes it. Wait briefly instead of spinning.
                    if let deadline, ContinuousClock.now >= deadline { throw SocketError(.timeout, "TLS write", code: ETIMEDOUT) }
                    usleep(1000)
                }
            }
        }
    }

    /// One non-blocking `SSL_write` (under `lock`, descriptor held).
    private func writeStep(_ base: UnsafeRawPointer, _ count: Int32) throws -> Step {
        while true {
            ERR_clear_error()
            errno = 0
            let n = SSL_write(ssl, base, count)
            if n > 0 { return .done(Int(n)) }
            let code = SSL_get_error(ssl, n)
            let e = errno
            switch code {
            case SSL_ERROR_WANT_WRITE: return .wantWrite
            case SSL_ERROR_WANT_READ: return .wantRead
            case SSL_ERROR_SYSCALL:
                if e == EINTR { continue }
                if e == EAGAIN || e == EWOULDBLOCK { return .wantWrite }
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

/// Reads PEM certificate files without building a TLS context (configuration checks).
public enum TLSCertificateFile {
    /// What a PEM certificate file holds.
    public struct Summary: Sendable, Equatable {
        /// Certificates in the file (a chain or a CA bundle).
        public var count: Int
        /// The first certificate's subject common name (CN), if any.
        public var commonName: String?
        /// Seconds from now until the first certificate expires (negative: expired).
        public var secondsUntilExpiry: Int
    }

    /// Reads the certificates of a PEM file.
    /// - Parameter path: the file.
    /// - Returns: the count, the first certificate's CN and its expiry.
    /// - Throws: `TLSError(.configuration)` when the file cannot be read or holds no certificate.
    public static func inspect(_ path: String) throws(TLSError) -> Summary {
        var summary = Summary(count: 0, commonName: nil, secondsUntilExpiry: 0)
        try forEachCertificate(path, what: "certificate") { cert, index in
            summary.count += 1
            guard index == 0 else { return }
            summary.commonName = commonName(cert)
            var days: Int32 = 0, seconds: Int32 = 0
            if let notAfter = X509_get0_notAfter(cert), ASN1_TIME_diff(&days, &seconds, nil, notAfter) == 1 {
                summary.secondsUntilExpiry = Int(days) * 86_400 + Int(seconds)
            }
        }
        guard summary.count > 0 else { throw TLSError(.configuration, "\(path) holds no PEM certificate") }
        return summary
    }

    /// Whether the first certificate of `path` names `host`: an IP literal against its IP SANs,
    /// a host name against its DNS SANs (RFC 6125, as a client checks it).
    /// - Throws: `TLSError(.configuration)` when the file cannot be read or holds no certificate.
    public static func matches(_ path: String, host: String) throws(TLSError) -> Bool {
        var matched: Bool?
        try forEachCertificate(path, what: "certificate") { cert, index in
            guard index == 0 else { return }
            if SocketAddress(host: host, port: 0).isNumeric {
                matched = X509_check_ip_asc(cert, host, 0) == 1
            } else {
                matched = X509_check_host(cert, host, host.utf8.count, 0, nil) == 1
            }
        }
        guard let matched else { throw TLSError(.configuration, "\(path) holds no PEM certificate") }
        return matched
    }

    /// The number of PEM certificates in `path`.
    static func certificateCount(_ path: String, what: String) throws(TLSError) -> Int {
        var count = 0
        try forEachCertificate(path, what: what) { _, _ in count += 1 }
        return count
    }

    private static func forEachCertificate(_ path: String, what: String, _ body: (OpaquePointer, Int) -> Void) throws(TLSError) {
        ERR_clear_error()
        guard let bio = BIO_new_file(path, "r") else {
            let reason = String(validatingCString: strerror(errno)) ?? "errno \(errno)"
            ERR_clear_error()
            throw TLSError(.configuration, "cannot read \(what) \(path): \(reason)")
        }
        defer { BIO_free(bio) }
        var index = 0
        while let cert = PEM_read_bio_X509(bio, nil, nil, nil) {
            body(cert, index)
            X509_free(cert)
            index += 1
        }
        // The loop ends with a "no start line" error at the end of the file.
        ERR_clear_error()
    }

    /// The subject common name of a certificate.
    static func commonName(_ cert: OpaquePointer) -> String? {
        guard let name = X509_get_subject_name(cert) else { return nil }
        var buf = [CChar](repeating: 0, count: 256)
        let n = X509_NAME_get_text_by_NID(name, hato_NID_commonName(), &buf, Int32(buf.count))
        guard n > 0 else { return nil }
        return cString(buf)
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
