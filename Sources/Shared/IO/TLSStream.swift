import COpenSSL
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import HatoSupport

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
    /// Client side: OpenSSL's verification result code (`X509_V_OK` = 0, e.g.
    /// `X509_V_ERR_HOSTNAME_MISMATCH`, `X509_V_ERR_CERT_HAS_EXPIRED`, `X509_V_ERR_DANE_NO_MATCH`).
    public let verificationResult: Int
    /// Client side with TLSA records: whether the certificate was authenticated by one of them
    /// (`SSL_get0_dane_authority`), false otherwise.
    public let daneAuthenticated: Bool
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
                 peerCommonName: String?, duplex: Bool, verificationResult: Int = 0, daneAuthenticated: Bool = false) {
        self.verificationResult = verificationResult
        self.daneAuthenticated = daneAuthenticated
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
    ///   - dane: TLSA records to verify the server against instead of the trust roots (RFC 7672;
    ///     the context must be made with `dane: true`); `serverName` is then required. The result
    ///     is `peerCertificateVerified` / `daneAuthenticated`; unusable records are skipped.
    /// - Returns: the encrypted stream; see `peerCertificateVerified` when the context does not
    ///   enforce verification.
    /// - Throws: `SocketError(.timeout)`/`SocketError(.closed)` on stall or disconnect;
    ///   `TLSError(.certificateVerification)` when the context verifies and the certificate does
    ///   not, or when `dane` holds no usable record; `TLSError(.handshake)` for other negotiation failures (also when the server refused
    ///   our client certificate).
    public static func connect(over socket: Socket, context: TLSContext, serverName: String?, duplex: Bool = false,
                               dane: [TLSAssociation]? = nil) throws -> TLSStream {
        precondition(context.role == .client, "TLSStream.connect needs a client context")
        let ssl = try newSSL(socket: socket, context: context)
        if let dane {
            // RFC 7672 §3: the reference identifier is the MX host name; DANE-EE(3) ignores names
            // (§3.1.1), DANE-TA(2) checks them (§3.2.2).
            guard let serverName, !serverName.isEmpty, SSL_dane_enable(ssl, serverName) > 0 else {
                SSL_free(ssl)
                throw TLSError(.configuration, "cannot enable DANE for \(serverName ?? "no name"): \(TLSError.drainOpenSSLErrors())")
            }
            _ = SSL_dane_set_flags(ssl, hato_DANE_FLAG_NO_DANE_EE_NAMECHECKS())
            var usable = 0
            for a in dane {
                let added = a.data.withUnsafeBufferPointer { p in
                    SSL_dane_tlsa_add(ssl, a.usage, a.selector, a.matchingType, p.baseAddress, p.count)
                }
                if added > 0 { usable += 1 }
            }
            ERR_clear_error()
            guard usable > 0 else {
                SSL_free(ssl)
                throw TLSError(.certificateVerification, "no usable TLSA record for \(serverName)")
            }
            _ = hato_SSL_set_tlsext_host_name(ssl, serverName)
        } else if let serverName, !serverName.isEmpty {
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
        var authority = false
        if dane != nil {
            var mcert: OpaquePointer? = nil
            var mspki: OpaquePointer? = nil
            authority = SSL_get0_dane_authority(ssl, &mcert, &mspki) >= 0 && verified
        }
        return TLSStream(socket: socket, context: context, ssl: ssl, verified: verified, verificationError: reason,
                         peerCommonName: name, duplex: duplex, verificationResult: SSL_get_verify_result(ssl),
                         daneAuthenticated: authority)
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

    /// Sets the write timeout and bounds the read timeout, for a reader working to a deadline
    /// (see `Socket.setTimeouts(readAtMost:write:)`; a duplex stream sets them exactly).
    public func setTimeouts(readAtMost read: Duration, write: Duration) {
        if isDuplex {
            setTimeouts(read: read, write: write)
        } else {
            socket.setTimeouts(readAtMost: read, write: write)
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
