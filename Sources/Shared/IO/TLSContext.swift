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
    ///   - dane: make the context able to verify against TLSA records (`TLSStream.connect(…, dane:)`,
    ///     RFC 7672); OpenSSL's `SSL_CTX_dane_enable`.
    /// - Returns: the context.
    /// - Throws: `TLSError(.configuration)` when the CA file or the client pair cannot be loaded
    ///   (or the key does not match the certificate).
    public static func client(verifyPeer: Bool = false, trustedCAFile: String? = nil, certificateChainPath: String? = nil,
                              privateKeyPath: String? = nil, trustPartialChain: Bool = false,
                              dane: Bool = false) throws(TLSError) -> TLSContext {
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
        if dane {
            // RFC 7672 / RFC 6698: the digests TLSA matching types 1 and 2 name.
            guard SSL_CTX_dane_enable(ctx) > 0 else {
                throw TLSError(.configuration, "cannot enable DANE: \(TLSError.drainOpenSSLErrors())")
            }
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
