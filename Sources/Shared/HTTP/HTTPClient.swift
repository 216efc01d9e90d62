import Foundation
import HatoIO

/// An HTTP/1.1 response as `HTTPClient` reads it.
public struct HTTPClientResponse: Sendable {
    /// The status code (RFC 9110 §15).
    public var status: Int
    /// Header fields with lower-cased names (last one wins).
    public var headers: [String: String]
    /// The body (`Content-Length` octets, or everything up to the end of the connection).
    public var body: [UInt8]
}

/// A minimal blocking HTTP/1.1 client (RFC 9112) for Hato's own admin API: one request per
/// connection (`Connection: close`), over plain TCP or TLS with the project's OpenSSL layer.
///
/// It exists because Foundation's `URLSession` on Linux cannot be given a private trust anchor
/// (the admin listener's own certificate or CA) for one request. No redirects, no chunked
/// request bodies; a chunked response is refused (Hato's `HTTPServer` never sends one).
public enum HTTPClient {
    /// A failure to talk to the server (not an HTTP error status).
    public struct Failure: Error, CustomStringConvertible, Sendable {
        /// What went wrong.
        public var description: String
    }

    /// The largest response accepted, octets.
    public static let maximumResponseSize = 64 << 20

    /// Sends one request and reads the whole response.
    /// - Parameters:
    ///   - method: `GET`, `POST`, `DELETE`, …
    ///   - address: the server's numeric address and port.
    ///   - path: the request target, e.g. `/v1/status?x=1`.
    ///   - headers: extra header fields (`Host`, `Content-Length` and `Connection` are added).
    ///   - body: the request body, if any.
    ///   - tls: a client context for HTTPS (it decides how the certificate is checked), nil for HTTP.
    ///   - serverName: the name (or IP literal) the certificate must match; default the address.
    ///   - timeout: seconds for the connection and for each read and write.
    ///   - host: the `Host` field (default the address), e.g. `mta-sts.example.com`.
    ///   - maximumSize: the largest response accepted, octets (default `maximumResponseSize`).
    ///   - deadline: a monotonic instant after which reading stops with a failure (nil: none).
    /// - Returns: the response.
    /// - Throws: `Failure` (wrapping `SocketError`, `TLSError`) when the exchange fails or the
    ///   response is malformed or too large.
    public static func send(_ method: String, to address: SocketAddress, path: String, headers: [(String, String)] = [],
                            body: [UInt8]? = nil, tls: TLSContext? = nil, serverName: String? = nil,
                            timeout: TimeInterval = 30, host: String? = nil, maximumSize: Int = maximumResponseSize,
                            deadline: ContinuousClock.Instant? = nil) throws -> HTTPClientResponse {
        do {
            let socket = try Socket.connect(to: address, timeout: timeout)
            socket.setTimeouts(read: timeout, write: timeout)
            let stream: any ByteStream
            if let tls {
                do {
                    stream = try TLSStream.connect(over: socket, context: tls, serverName: serverName ?? address.host)
                } catch {
                    socket.close()
                    throw error
                }
            } else {
                stream = socket
            }
            defer { stream.close() }
            var head = "\(method) \(path) HTTP/1.1\r\nHost: \(host ?? address.description)\r\nConnection: close\r\n"
            for (name, value) in headers { head += "\(name): \(value)\r\n" }
            if let body { head += "Content-Length: \(body.count)\r\n" }
            head += "\r\n"
            try stream.write(Array(head.utf8) + (body ?? []))
            var data: [UInt8] = []
            var buf = [UInt8](repeating: 0, count: 64 * 1024)
            while true {
                let n = try buf.withUnsafeMutableBytes { try stream.read(into: $0) }
                if n == 0 { break }
                data += buf[0..<n]
                guard data.count <= maximumSize else { throw Failure(description: "response larger than \(maximumSize) octets") }
                if let deadline, ContinuousClock.now >= deadline { throw Failure(description: "response not complete in time") }
            }
            return try parse(data)
        } catch let e as Failure {
            throw e
        } catch {
            throw Failure(description: "\(error)")
        }
    }

    /// Parses a complete response read up to the end of the connection.
    static func parse(_ data: [UInt8]) throws -> HTTPClientResponse {
        guard let end = data.firstRange(of: [13, 10, 13, 10]) else { throw Failure(description: "incomplete HTTP response") }
        let lines = String(decoding: data[..<end.lowerBound], as: UTF8.self).components(separatedBy: "\r\n")
        let statusLine = lines.first?.split(separator: " ", maxSplits: 2) ?? []
        guard statusLine.count >= 2, statusLine[0].hasPrefix("HTTP/1."), let status = Int(statusLine[1]) else {
            throw Failure(description: "bad HTTP status line")
        }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        if headers["transfer-encoding"].map({ $0.lowercased() != "identity" }) == true {
            throw Failure(description: "chunked HTTP responses are not supported")
        }
        var body = Array(data[end.upperBound...])
        if let length = headers["content-length"].flatMap({ Int($0) }) {
            guard body.count >= length else { throw Failure(description: "HTTP body shorter than its Content-Length") }
            body = Array(body.prefix(length))
        }
        return HTTPClientResponse(status: status, headers: headers, body: body)
    }
}
