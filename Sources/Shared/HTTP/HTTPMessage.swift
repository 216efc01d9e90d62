import Foundation
import HatoIO

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
    /// The client's address (nil for a request made in-process, e.g. in tests).
    public var peer: SocketAddress? = nil
    /// Whether the request arrived over TLS (HTTPS).
    public var isTLS = false

    /// A request from its parts (for handlers called without a socket, and tests).
    public init(method: String, path: String, query: [String: String] = [:], headers: [String: String] = [:], body: [UInt8] = [],
                peer: SocketAddress? = nil, isTLS: Bool = false) {
        self.method = method; self.path = path; self.query = query; self.headers = headers; self.body = body
        self.peer = peer; self.isTLS = isTLS
    }
}

/// An HTTP response.
public struct HTTPResponse: Sendable {
    /// The status code (RFC 9110 §15), e.g. 200.
    public var status: Int
    /// The `Content-Type` field value.
    public var contentType: String
    /// The body; its length is sent as `Content-Length`.
    public var body: [UInt8]
    /// Further header fields (e.g. `Retry-After`, RFC 9110 §10.2.3; `WWW-Authenticate`, §11.6.1),
    /// name → value. Names and values must be tokens and visible ASCII: anything else (CR, LF,
    /// control characters) is dropped when the response is written. `Content-Type`,
    /// `Content-Length` and `Connection` are the server's and are ignored here.
    public var headers: [String: String]
    /// A response with `status`, `contentType` (JSON by default), `body` and extra `headers`.
    public init(status: Int, contentType: String = "application/json", body: [UInt8], headers: [String: String] = [:]) {
        self.status = status; self.contentType = contentType; self.body = body; self.headers = headers
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
