import Foundation
import HatoIO
import HatoSupport

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
    /// Requests served on one connection (HTTP/1.1 persistent connections, RFC 9112 §9.3).
    /// Default 1: every response has `Connection: close`. Above 1, a connection stays open
    /// after a response unless the client asked `Connection: close` (or spoke HTTP/1.0 without
    /// `keep-alive`), the request failed to parse, or this many were served; the next request
    /// must then arrive completely within `requestTimeout`.
    public var maxRequestsPerConnection = 1
    /// The most body octets all connections may hold in memory at once (each body counts its
    /// `Content-Length` from before it is read until its response is written); a body that
    /// does not fit gets `503` with `Retry-After: 1` without being read. Default nil: no bound
    /// beyond `admission.maxConnections × maxBodySize`.
    public var maxBodyMemory: Int? = nil

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

    /// Renders an error the server answers itself (a malformed request, `408`, `413`, `431`,
    /// `503`): status and a sentence → response. The default is `HTTPResponse.error`.
    public typealias ErrorRenderer = @Sendable (_ status: Int, _ message: String) -> HTTPResponse

    /// Binds `address`.
    /// - Parameters:
    ///   - address: where to listen; port 0 picks a free port (see `address`).
    ///   - configuration: deadlines, sizes and connection limits.
    ///   - tls: a server context for HTTPS (RFC 9110 §4.2.2 over TLS, RFC 8446): every connection
    ///     starts with the TLS handshake, which counts within `requestTimeout`; nil for plain HTTP.
    ///     Refused connections of an HTTPS listener are closed without a `503` (the client
    ///     expects a TLS record).
    ///   - errors: renders the errors the server answers itself (default `HTTPResponse.error`).
    ///   - handler: answers one request (on the connection's thread).
    /// - Throws: `SocketError` when the address cannot be bound.
    public init(address: SocketAddress, configuration: HTTPServerConfiguration = HTTPServerConfiguration(), tls: TLSContext? = nil,
                errors: @escaping ErrorRenderer = { HTTPResponse.error($0, $1) },
                handler: @escaping @Sendable (HTTPRequest) -> HTTPResponse) throws {
        self.configuration = configuration
        isTLS = tls != nil
        // Over TLS a slow client could stretch the handshake read by read; the acceptor instead
        // shuts every connection down at `requestTimeout` unless its request arrived by then.
        let admission = AdmissionControl(limits: configuration.admission, preAuthentication: tls == nil ? nil
            : PreAuthenticationLimits(maxConnections: configuration.admission.maxConnections,
                                      maxConnectionsPerPeer: configuration.admission.maxConnectionsPerPeer,
                                      handshakeDeadline: configuration.requestTimeout))
        var busyResponse = errors(503, "too many connections")
        busyResponse.headers["Retry-After"] = "1"
        let busy = tls == nil ? HTTPServer.encode(busyResponse) : []
        let bodyMemory = BodyMemory(limit: configuration.maxBodyMemory)
        let refusal: Acceptor.Refusal = { _, _ in busy }
        acceptor = try Acceptor(address: address, configuration: Acceptor.Configuration(name: tls == nil ? "http" : "https"), admission: admission,
                                refusal: refusal,
                                handler: { HTTPServer.serve($0, configuration: configuration, tls: tls, bodyMemory: bodyMemory,
                                                                     errors: errors, handler: handler) })
        self.address = acceptor.address
    }

    /// Starts the accept loop on a background thread.
    public func start() { acceptor.start() }

    /// Stops accepting and closes the listener (requests in progress finish).
    public func stop() { acceptor.stop() }

    /// Connections open now.
    public var openConnections: Int { acceptor.admission.openConnections }

    /// Reason phrases (RFC 9110 §15).
    private static let reasons: [Int: String] = [200: "OK", 202: "Accepted", 303: "See Other", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
                                                 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
                                                 413: "Content Too Large", 415: "Unsupported Media Type", 422: "Unprocessable Content",
                                                 429: "Too Many Requests", 431: "Request Header Fields Too Large",
                                                 500: "Internal Server Error", 503: "Service Unavailable", 507: "Insufficient Storage"]

    /// The response's bytes: the status line, `Content-Type`, `Content-Length`, the response's
    /// own fields (those that are not a token and visible ASCII dropped), then `Connection`.
    /// - Parameter keepAlive: `Connection: keep-alive` instead of `close`.
    static func encode(_ response: HTTPResponse, keepAlive: Bool = false) -> [UInt8] {
        var head = "HTTP/1.1 \(response.status) \(reasons[response.status] ?? "Status")\r\n"
        head += "Content-Type: \(response.contentType)\r\nContent-Length: \(response.body.count)\r\n"
        for (name, value) in response.headers.sorted(by: { $0.key < $1.key }) where isToken(name) && isFieldValue(value) {
            let lower = name.lowercased()
            guard lower != "content-type" && lower != "content-length" && lower != "connection" else { continue }
            head += "\(name): \(value)\r\n"
        }
        head += keepAlive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n"
        return Array(head.utf8) + response.body
    }

    /// Whether `name` is an RFC 9110 §5.6.2 token.
    private static func isToken(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.allSatisfy { b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || "!#$%&'*+-.^_`|~".utf8.contains(b)
        }
    }

    /// Whether `value` is visible ASCII and spaces (RFC 9110 §5.5, without obs-text).
    private static func isFieldValue(_ value: String) -> Bool {
        value.utf8.allSatisfy { $0 == 0x20 || $0 == 0x09 || ($0 > 0x20 && $0 < 0x7F) }
    }

    /// Serves one connection on its own thread (the socket's owner; the acceptor closes it after):
    /// one request, or several when `maxRequestsPerConnection` allows.
    private static func serve(_ connection: AcceptedConnection, configuration: HTTPServerConfiguration, tls: TLSContext?,
                              bodyMemory: BodyMemory, errors: ErrorRenderer, handler: @Sendable (HTTPRequest) -> HTTPResponse) {
        let conn = connection.socket
        var secure: TLSStream?
        if let tls {
            conn.setTimeouts(read: configuration.requestTimeout, write: configuration.requestTimeout)
            do { secure = try TLSStream.accept(over: conn, context: tls) } catch { return }  // not TLS, or too slow
        }
        defer { secure?.close() }
        let stream = DeadlineStream(socket: conn, tls: secure, deadline: .now + configuration.requestTimeout)
        let reader = BufferedReader(stream: stream, chunkSize: 16 * 1024)
        var served = 0
        while true {
            // Each request must arrive completely within requestTimeout of the previous response.
            if served > 0 { stream.deadline.withLock { $0 = .now + configuration.requestTimeout } }
            var response: HTTPResponse
            var keepAlive = false
            var reserved = 0
            do {
                var (request, http10) = try read(reader, configuration, bodyMemory: bodyMemory, reserved: &reserved)
                if served == 0 { _ = connection.admission.promote() }  // arrived in time: no deadline shutdown while answered
                request.peer = connection.peer
                request.isTLS = secure != nil
                served += 1
                keepAlive = served < configuration.maxRequestsPerConnection && wantsKeepAlive(request, http10: http10)
                response = handler(request)
            } catch let e as HTTPParseError {
                response = errors(e.status, e.message)
                if e.status == 503 { response.headers["Retry-After"] = "1" }
            } catch let e as SocketError where e.kind == .timeout {
                if served > 0 { return }  // a persistent connection idle (or trickling) past requestTimeout: closed
                response = errors(408, "request not complete within \(configuration.requestTimeout)")
            } catch {
                bodyMemory.release(reserved)
                return  // the client left (or reset) before its request was complete, or between requests
            }
            let written: Void? = try? DeadlineStream(socket: conn, tls: secure, deadline: .now + configuration.responseTimeout)
                .write(encode(response, keepAlive: keepAlive))
            bodyMemory.release(reserved)
            guard keepAlive, written != nil else { return }
        }
    }

    /// Whether the client lets the connection persist (RFC 9112 §9.3): HTTP/1.1 unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`.
    private static func wantsKeepAlive(_ request: HTTPRequest, http10: Bool) -> Bool {
        let options = (request.headers["connection"] ?? "").lowercased().split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        if options.contains("close") { return false }
        return http10 ? options.contains("keep-alive") : true
    }

    private struct HTTPParseError: Error { var status: Int; var message: String }

    /// Reads one request; a body's `Content-Length` is reserved in `bodyMemory` first (`reserved`
    /// says how much, for the caller to release once the response is written).
    /// - Returns: the request, and whether it was HTTP/1.0.
    private static func read(_ reader: BufferedReader, _ configuration: HTTPServerConfiguration, bodyMemory: BodyMemory,
                             reserved: inout Int) throws -> (HTTPRequest, Bool) {
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
        // A chunked body would be left unread and parsed as the next request (RFC 9112 §6.1).
        if headers["transfer-encoding"] != nil {
            throw HTTPParseError(status: 400, message: "Transfer-Encoding is not supported: send Content-Length")
        }
        var body: [UInt8] = []
        if let cl = headers["content-length"] {
            guard let n = Int(cl), n >= 0 else { throw HTTPParseError(status: 400, message: "bad Content-Length") }
            guard n <= configuration.maxBodySize else {
                throw HTTPParseError(status: 413, message: "body too large: \(n) octets; at most \(configuration.maxBodySize) are accepted")
            }
            guard bodyMemory.reserve(n) else { throw HTTPParseError(status: 503, message: "too many request bodies in progress; try again") }
            reserved = n
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
        return (HTTPRequest(method: String(requestLine[0]), path: path.removingPercentEncoding ?? path, query: query, headers: headers, body: body),
                requestLine[2] == "HTTP/1.0")
    }
}

/// A socket (or a TLS stream over it) read against one deadline for a whole exchange: each
/// `read` waits at most until the deadline (however slowly the bytes trickle in), then throws
/// `SocketError(.timeout)`; a `write` must finish by the deadline too.
final class DeadlineStream: ByteStream {
    let socket: Socket
    let tls: TLSStream?
    /// The deadline in force (moved on for each request of a persistent connection).
    let deadline: Locked<ContinuousClock.Instant>

    init(socket: Socket, tls: TLSStream? = nil, deadline: ContinuousClock.Instant) {
        self.socket = socket
        self.tls = tls
        self.deadline = Locked(deadline)
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let remaining = ContinuousClock.now.duration(to: deadline.snapshot)
        guard remaining > .zero else { throw SocketError(.timeout, "read", code: ETIMEDOUT) }
        socket.setTimeouts(read: remaining, write: remaining)
        if let tls { return try tls.read(into: buffer) }
        return try socket.read(into: buffer)
    }

    func write(_ bytes: [UInt8]) throws {
        let deadline = deadline.snapshot
        guard let tls else { return try socket.write(bytes, before: deadline) }
        let remaining = ContinuousClock.now.duration(to: deadline)
        guard remaining > .zero else { throw SocketError(.timeout, "write", code: ETIMEDOUT) }
        socket.setTimeouts(read: remaining, write: remaining)
        try tls.write(bytes)
    }

    func shutdown() { socket.shutdown() }
    func close() { if let tls { tls.close() } else { socket.close() } }
}

/// The body octets all connections of a server hold at once (`maxBodyMemory`).
final class BodyMemory: Sendable {
    private let limit: Int?
    private let inUse = Locked(0)

    init(limit: Int?) { self.limit = limit }

    /// Reserves `octets`; false (nothing reserved) when that would pass the limit.
    func reserve(_ octets: Int) -> Bool {
        guard let limit else { return true }
        return inUse.withLock { used in
            guard used + octets <= limit || used == 0 else { return false }
            used += octets
            return true
        }
    }

    /// Gives back a reservation.
    func release(_ octets: Int) {
        guard limit != nil, octets > 0 else { return }
        inUse.withLock { $0 -= octets }
    }
}
