import Foundation
import HatoIO

/// Limits of an `HTTPServer`.
public struct HTTPServerConfiguration: Sendable, Equatable {
    /// The whole-request deadline: the request line, the headers and the body must all have
    /// arrived this long after the connection was admitted, however the bytes trickle in;
    /// otherwise `408 Request Timeout` and the connection is closed. Default 10 s.
    public var requestTimeout: Duration = .seconds(10)
    /// The deadline for writing the whole response. Default 10 s.
    public var responseTimeout: Duration = .seconds(10)
    /// The most octets of the request line and header fields together (`431` beyond). Default 16 KiB.
    public var maxHeadSize = 16 * 1024
    /// The most octets of one request or header line (`431` beyond). Default 8 KiB.
    public var maxLineLength = 8 * 1024
    /// The most octets of a body (`Content-Length`; `413` beyond). Default 1 MiB.
    public var maxBodySize = 1 << 20
    /// Connections open at once, in total and per peer (`503` beyond). Default 64 / 16 (`AdmissionLimits.adminHTTP`).
    public var admission = AdmissionLimits.adminHTTP

    /// The defaults (for the admin API and `/metrics`).
    public init() {}
}

/// A small blocking HTTP/1.1 server for the admin API and `/metrics`: one request per
/// connection (`Connection: close`), one thread per admitted connection.
///
/// Hardened for an address reachable by others (issue 13): connections are admitted by an
/// `Acceptor` (64 at once, 16 per peer by default; others get `503` without a thread), each
/// request must arrive completely within `requestTimeout` (RFC 9110 §15.5.9 `408`), the head
/// and body are bounded, and the response is written within `responseTimeout`.
public final class HTTPServer: Sendable {
    private let acceptor: Acceptor
    /// The bound address (real port when bound to port 0).
    public let address: SocketAddress
    /// The limits in force.
    public let configuration: HTTPServerConfiguration

    /// Whether the listener speaks HTTPS.
    public let isTLS: Bool

    /// Binds `address`.
    /// - Parameters:
    ///   - address: where to listen; port 0 picks a free port (see `address`).
    ///   - configuration: deadlines, sizes and connection limits.
    ///   - tls: a server context for HTTPS (RFC 9110 §4.2.2 over TLS, RFC 8446): every connection
    ///     starts with the TLS handshake, which counts within `requestTimeout`; nil for plain HTTP.
    ///     Refused connections of an HTTPS listener are closed without a `503` (the client
    ///     expects a TLS record).
    ///   - handler: answers one request (on the connection's thread).
    /// - Throws: `SocketError` when the address cannot be bound.
    public init(address: SocketAddress, configuration: HTTPServerConfiguration = HTTPServerConfiguration(), tls: TLSContext? = nil,
                handler: @escaping @Sendable (HTTPRequest) -> HTTPResponse) throws {
        self.configuration = configuration
        isTLS = tls != nil
        // Over TLS a slow client could stretch the handshake read by read; the acceptor instead
        // shuts every connection down at `requestTimeout` unless its request arrived by then.
        let admission = AdmissionControl(limits: configuration.admission, preAuthentication: tls == nil ? nil
            : PreAuthenticationLimits(maxConnections: configuration.admission.maxConnections,
                                      maxConnectionsPerPeer: configuration.admission.maxConnectionsPerPeer,
                                      handshakeDeadline: configuration.requestTimeout))
        let busy = tls == nil ? HTTPServer.encode(.error(503, "too many connections"), extraHeaders: "Retry-After: 1\r\n") : []
        let refusal: Acceptor.Refusal = { _, _ in busy }
        acceptor = try Acceptor(address: address, configuration: Acceptor.Configuration(name: tls == nil ? "http" : "https"), admission: admission,
                                refusal: refusal,
                                handler: { HTTPServer.serve($0, configuration: configuration, tls: tls, handler: handler) })
        self.address = acceptor.address
    }

    /// Starts the accept loop on a background thread.
    public func start() { acceptor.start() }

    /// Stops accepting and closes the listener (requests in progress finish).
    public func stop() { acceptor.stop() }

    /// Connections open now.
    public var openConnections: Int { acceptor.admission.openConnections }

    private static let reasons: [Int: String] = [200: "OK", 202: "Accepted", 303: "See Other", 400: "Bad Request", 401: "Unauthorized",
                                                 403: "Forbidden", 404: "Not Found",
                                                 405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
                                                 413: "Content Too Large", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
                                                 500: "Internal Server Error", 503: "Service Unavailable"]

    /// The response's bytes, with `Connection: close`.
    static func encode(_ response: HTTPResponse, extraHeaders: String = "") -> [UInt8] {
        var head = "HTTP/1.1 \(response.status) \(reasons[response.status] ?? "Status")\r\n"
        head += "Content-Type: \(response.contentType)\r\nContent-Length: \(response.body.count)\r\n\(extraHeaders)"
        for field in response.headers where !(field.name + field.value).contains(where: { $0 == "\r" || $0 == "\n" }) && !field.name.isEmpty {
            head += "\(field.name): \(field.value)\r\n"
        }
        head += "Connection: close\r\n\r\n"
        return Array(head.utf8) + response.body
    }

    /// Serves one connection on its own thread (the socket's owner; the acceptor closes it after).
    private static func serve(_ connection: AcceptedConnection, configuration: HTTPServerConfiguration, tls: TLSContext?,
                              handler: @Sendable (HTTPRequest) -> HTTPResponse) {
        let conn = connection.socket
        let deadline = ContinuousClock.now + configuration.requestTimeout
        var secure: TLSStream?
        if let tls {
            conn.setTimeouts(read: configuration.requestTimeout, write: configuration.requestTimeout)
            do { secure = try TLSStream.accept(over: conn, context: tls) } catch { return }  // not TLS, or too slow
        }
        defer { secure?.close() }
        let stream = DeadlineStream(socket: conn, tls: secure, deadline: deadline)
        let reader = BufferedReader(stream: stream, chunkSize: 16 * 1024)
        let response: HTTPResponse
        do {
            var request = try read(reader, configuration)
            request.peer = connection.peer.host
            _ = connection.admission.promote()  // the request arrived in time: no deadline shutdown while it is answered
            response = handler(request)
        } catch let e as HTTPParseError {
            response = .error(e.status, e.message)
        } catch let e as SocketError where e.kind == .timeout {
            response = .error(408, "request not complete within \(configuration.requestTimeout)")
        } catch {
            return  // the client left (or reset) before its request was complete
        }
        try? DeadlineStream(socket: conn, tls: secure, deadline: .now + configuration.responseTimeout).write(encode(response))
    }

    private struct HTTPParseError: Error { var status: Int; var message: String }

    private static func read(_ reader: BufferedReader, _ configuration: HTTPServerConfiguration) throws -> HTTPRequest {
        var total = 0
        func line() throws -> String {
            let l: ArraySlice<UInt8>?
            do { l = try reader.readLine(maxLength: configuration.maxLineLength) } catch is LineTooLong {
                throw HTTPParseError(status: 431, message: "request line or header field too long")
            }
            guard let l else { throw SocketError(.closed, "http") }
            total += l.count
            if total > configuration.maxHeadSize { throw HTTPParseError(status: 431, message: "request head too large") }
            var bytes = Array(l)
            while let last = bytes.last, last == 0x0A || last == 0x0D { bytes.removeLast() }
            return String(decoding: bytes, as: UTF8.self)
        }
        let requestLine = try line().split(separator: " ", omittingEmptySubsequences: true)
        guard requestLine.count == 3, requestLine[2].hasPrefix("HTTP/1.") else { throw HTTPParseError(status: 400, message: "bad request line") }
        var headers: [String: String] = [:]
        while true {
            let h = try line()
            if h.isEmpty { break }
            guard let colon = h.firstIndex(of: ":") else { throw HTTPParseError(status: 400, message: "bad header line") }
            headers[h[..<colon].lowercased()] = h[h.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        var body: [UInt8] = []
        if let cl = headers["content-length"] {
            guard let n = Int(cl), n >= 0 else { throw HTTPParseError(status: 400, message: "bad Content-Length") }
            guard n <= configuration.maxBodySize else { throw HTTPParseError(status: 413, message: "body too large") }
            body = try reader.readExact(n)
        }
        let target = String(requestLine[1])
        var path = target
        var query: [String: String] = [:]
        if let q = target.firstIndex(of: "?") {
            path = String(target[..<q])
            for pair in target[target.index(after: q)...].split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1)
                let k = String(kv[0]).removingPercentEncoding ?? String(kv[0])
                query[k] = kv.count > 1 ? (String(kv[1]).removingPercentEncoding ?? String(kv[1])) : ""
            }
        }
        return HTTPRequest(method: String(requestLine[0]), path: path.removingPercentEncoding ?? path, query: query, headers: headers, body: body)
    }
}

/// A socket (or a TLS stream over it) read against one deadline for a whole exchange: each
/// `read` waits at most until the deadline (however slowly the bytes trickle in), then throws
/// `SocketError(.timeout)`; a `write` must finish by the deadline too.
final class DeadlineStream: ByteStream {
    let socket: Socket
    let tls: TLSStream?
    let deadline: ContinuousClock.Instant

    init(socket: Socket, tls: TLSStream? = nil, deadline: ContinuousClock.Instant) {
        self.socket = socket
        self.tls = tls
        self.deadline = deadline
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let remaining = ContinuousClock.now.duration(to: deadline)
        guard remaining > .zero else { throw SocketError(.timeout, "read", code: ETIMEDOUT) }
        socket.setTimeouts(read: remaining, write: remaining)
        if let tls { return try tls.read(into: buffer) }
        return try socket.read(into: buffer)
    }

    func write(_ bytes: [UInt8]) throws {
        guard let tls else { return try socket.write(bytes, before: deadline) }
        let remaining = ContinuousClock.now.duration(to: deadline)
        guard remaining > .zero else { throw SocketError(.timeout, "write", code: ETIMEDOUT) }
        socket.setTimeouts(read: remaining, write: remaining)
        try tls.write(bytes)
    }

    func shutdown() { socket.shutdown() }
    func close() { if let tls { tls.close() } else { socket.close() } }
}
