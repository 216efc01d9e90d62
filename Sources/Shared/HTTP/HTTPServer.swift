import Foundation

/// A parsed HTTP/1.1 request (RFC 9112), as the admin API needs it.
public struct HTTPRequest: Sendable {
    /// `GET`, `POST`, …
    public var method: String
    /// The path without the query string, e.g. `/v1/status`.
    public var path: String
    /// Query parameters (last one wins).
    public var query: [String: String]
    /// Header fields with lower-cased names.
    public var headers: [String: String]
    /// The body (at most the server's body limit).
    public var body: [UInt8]
}

/// An HTTP response.
public struct HTTPResponse: Sendable {
    public var status: Int
    public var contentType: String
    public var body: [UInt8]
    public init(status: Int, contentType: String = "application/json", body: [UInt8]) {
        self.status = status; self.contentType = contentType; self.body = body
    }
    /// A JSON response of an `Encodable` value (snake_case keys, sorted, pretty).
    public static func json<T: Encodable>(_ value: T, status: Int = 200) -> HTTPResponse {
        let e = JSONEncoder()
        e.keyEncodingStrategy = .convertToSnakeCase
        e.outputFormatting = [.sortedKeys, .prettyPrinted]
        let data = (try? e.encode(value)) ?? Data("{}".utf8)
        return HTTPResponse(status: status, body: Array(data) + [0x0A])
    }
    /// `{"error": message}` with `status`.
    public static func error(_ status: Int, _ message: String) -> HTTPResponse {
        json(["error": message], status: status)
    }
}

/// A small blocking HTTP/1.1 server for the admin API: one thread per connection,
/// one request per connection (`Connection: close`), bounded head (16 KiB) and body (1 MiB).
public final class HTTPServer: @unchecked Sendable {
    private let listener: Socket
    private let handler: @Sendable (HTTPRequest) -> HTTPResponse
    private let log = Logger(label: "http")
    /// The bound address (real port when bound to port 0).
    public let address: SocketAddress

    /// Binds `address`.
    /// - Throws: `SocketError`.
    public init(address: SocketAddress, handler: @escaping @Sendable (HTTPRequest) -> HTTPResponse) throws {
        listener = try Socket.listen(on: address)
        self.address = listener.localAddress ?? address
        self.handler = handler
    }

    /// Starts the accept loop on a background thread.
    public func start() {
        Thread.detachNewThread { [self] in
            while let (conn, _) = try? listener.accept() {
                Thread.detachNewThread { [self] in serve(conn) }
            }
        }
    }

    /// Closes the listener.
    public func stop() { listener.close() }

    private static let reasons: [Int: String] = [200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
                                                 405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large", 500: "Internal Server Error"]

    private func serve(_ conn: Socket) {
        conn.setTimeouts(read: 10, write: 10)
        let reader = BufferedReader(stream: conn, chunkSize: 16 * 1024)
        let response: HTTPResponse
        do {
            response = try handler(read(reader))
        } catch let e as HTTPParseError {
            response = .error(e.status, e.message)
        } catch {
            conn.close(); return
        }
        var head = "HTTP/1.1 \(response.status) \(HTTPServer.reasons[response.status] ?? "Status")\r\n"
        head += "Content-Type: \(response.contentType)\r\nContent-Length: \(response.body.count)\r\nConnection: close\r\n\r\n"
        try? conn.write(Array(head.utf8) + response.body)
        conn.close()
    }

    private struct HTTPParseError: Error { var status: Int; var message: String }

    private func read(_ reader: BufferedReader) throws -> HTTPRequest {
        var total = 0
        func line() throws -> String {
            guard let l = try reader.readLine(maxLength: 8192) else { throw SocketError(.closed, "http") }
            total += l.count
            if total > 16384 { throw HTTPParseError(status: 400, message: "request head too large") }
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
            guard n <= 1 << 20 else { throw HTTPParseError(status: 413, message: "body too large") }
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
