import Foundation
import HatoIO

/// STARTTLS for outbound SMTP over the shared OpenSSL layer (`TLSContext`, `TLSStream`).
///
/// Opportunistic by design (RFC 7435): the certificate is checked against the MX host name
/// and the result is reported (`TLSSessionInfo.verified`), but a failed check does not stop
/// the delivery — without DANE or MTA-STS an MX certificate cannot be authenticated anyway.
public struct OpenSSLTLSClient: OutboundTLSClient {
    /// The client context (shared by all connections; OpenSSL contexts are thread-safe).
    public let context: TLSContext

    /// A client that does not enforce certificate verification.
    /// - Throws: `TLSError` when OpenSSL cannot create the context.
    public init() throws {
        context = try TLSContext.client(verifyPeer: false)
    }

    /// A client over an existing context.
    public init(context: TLSContext) { self.context = context }

    /// Runs the client handshake with SNI set to `serverName`.
    public func secure(_ socket: Socket, serverName: String, timeout: TimeInterval) throws -> (stream: any ByteStream, info: TLSSessionInfo) {
        socket.setTimeouts(read: timeout, write: timeout)
        let stream = try TLSStream.connect(over: socket, context: context, serverName: serverName)
        return (stream, TLSSessionInfo(version: stream.protocolVersion, cipher: stream.cipher, verified: stream.peerCertificateVerified))
    }
}
