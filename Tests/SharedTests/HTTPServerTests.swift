import Foundation
import Testing
@testable import HatoHTTP
@testable import HatoIO

@Suite("HTTP server: deadlines, bounds, admission", .serialized)
struct HTTPServerTests {
    static func server(_ configure: (inout HTTPServerConfiguration) -> Void = { _ in },
                       body: @escaping @Sendable (HTTPRequest) -> [UInt8] = { Array("path=\($0.path) body=\($0.body.count)\n".utf8) }) throws -> HTTPServer {
        var configuration = HTTPServerConfiguration()
        configure(&configuration)
        let server = try HTTPServer(address: SocketAddress(host: "127.0.0.1", port: 0), configuration: configuration) { request in
            HTTPResponse(status: 200, contentType: "text/plain", body: body(request))
        }
        server.start()
        return server
    }

    static func statusLine(_ bytes: [UInt8]) -> String {
        String(decoding: bytes.prefix { $0 != 0x0D }, as: UTF8.self)
    }

    @Test("a client trickling one byte every 100 ms gets 408 at the whole-request deadline; the connection is released")
    func tricklingClient() throws {
        let server = try Self.server { $0.requestTimeout = .seconds(1) }
        defer { server.stop() }
        let client = try Socket.connect(to: server.address, timeout: 2)
        defer { client.close() }
        let request = Array("GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Padding: \(String(repeating: "a", count: 200))\r\n\r\n".utf8)
        let started = ContinuousClock.now
        var sent = 0
        // Each byte arrives well within any per-read timeout; only the whole-request deadline ends it.
        while sent < request.count && !client.hasPendingInput && ContinuousClock.now - started < .seconds(5) {
            try? client.write([request[sent]])
            sent += 1
            usleep(100_000)
        }
        let (response, closed) = readToEnd(client)
        let elapsed = ContinuousClock.now - started
        #expect(Self.statusLine(response) == "HTTP/1.1 408 Request Timeout")
        #expect(closed)
        #expect(sent < request.count, "the whole request was sent: \(sent) bytes")
        #expect(elapsed >= .milliseconds(950) && elapsed < .seconds(3), "answered after \(elapsed)")
        try waitFor("the connection to be released") { server.openConnections == 0 }
    }

    @Test("an idle connection gets 408; an oversized head 431, an oversized line 431, an oversized body 413; a normal request is served")
    func bounds() throws {
        let server = try Self.server {
            $0.requestTimeout = .milliseconds(500)
            $0.maxHeadSize = 2048
            $0.maxLineLength = 1024
            $0.maxBodySize = 4096
        }
        defer { server.stop() }
        func exchange(_ text: String) throws -> String {
            let client = try Socket.connect(to: server.address, timeout: 2)
            defer { client.close() }
            if !text.isEmpty { try client.write(text) }
            return String(decoding: readToEnd(client).bytes, as: UTF8.self)
        }
        #expect(try exchange("").hasPrefix("HTTP/1.1 408 Request Timeout\r\n"))
        let manyHeaders = (0..<40).map { "X-H\($0): \(String(repeating: "v", count: 60))\r\n" }.joined()
        #expect(try exchange("GET / HTTP/1.1\r\n\(manyHeaders)\r\n").hasPrefix("HTTP/1.1 431 "))
        #expect(try exchange("GET /\(String(repeating: "p", count: 2000)) HTTP/1.1\r\n\r\n").hasPrefix("HTTP/1.1 431 "))
        #expect(try exchange("POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n").hasPrefix("HTTP/1.1 413 "))
        let ok = try exchange("POST /echo HTTP/1.1\r\nContent-Length: 4096\r\n\r\n" + String(repeating: "b", count: 4096))
        #expect(ok.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(ok.hasSuffix("path=/echo body=4096\n"))
        // A body that stops short of its Content-Length: 408 at the deadline, not a hang.
        #expect(try exchange("POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\nshort").hasPrefix("HTTP/1.1 408 "))
    }

    @Test("over the connection limits: 503 with Retry-After and no thread; served again once a slot frees")
    func connectionLimits() throws {
        let server = try Self.server {
            $0.admission = AdmissionLimits(maxConnections: 3, maxConnectionsPerPeer: 2)
            $0.requestTimeout = .seconds(10)
        }
        defer { server.stop() }
        var idle: [Socket] = []
        defer { idle.forEach { $0.close() } }
        idle.append(try Socket.connect(to: server.address, from: "127.0.0.1", timeout: 2))
        idle.append(try Socket.connect(to: server.address, from: "127.0.0.1", timeout: 2))
        try waitFor("two admitted") { server.openConnections == 2 }
        let samePeer = try Socket.connect(to: server.address, from: "127.0.0.1", timeout: 2)
        try samePeer.write("GET / HTTP/1.1\r\n\r\n")
        let refused = String(decoding: readToEnd(samePeer).bytes, as: UTF8.self)
        samePeer.close()
        #expect(refused.hasPrefix("HTTP/1.1 503 Service Unavailable\r\n"))
        #expect(refused.contains("\r\nRetry-After: 1\r\n"))
        #expect(refused.hasSuffix("\"too many connections\"\n}\n"))
        // Another peer is still served (the total is 3).
        let other = try Socket.connect(to: server.address, from: "127.0.0.2", timeout: 2)
        try other.write("GET /other HTTP/1.1\r\n\r\n")
        #expect(String(decoding: readToEnd(other).bytes, as: UTF8.self).hasSuffix("path=/other body=0\n"))
        other.close()
        idle.removeFirst().close()
        try waitFor("the slot to be released") { server.openConnections == 1 }
        let again = try Socket.connect(to: server.address, from: "127.0.0.1", timeout: 2)
        try again.write("GET /again HTTP/1.1\r\n\r\n")
        #expect(String(decoding: readToEnd(again).bytes, as: UTF8.self).hasSuffix("path=/again body=0\n"))
        again.close()
    }

    @Test("a client that never reads its response holds the connection no longer than responseTimeout")
    func slowReader() throws {
        let big = [UInt8](repeating: 0x7A, count: 16 << 20)
        let server = try Self.server({ $0.responseTimeout = .seconds(1) }, body: { _ in big })
        defer { server.stop() }
        let client = try Socket.connect(to: server.address, timeout: 2)
        defer { client.close() }
        try client.write("GET /big HTTP/1.1\r\n\r\n")
        let started = ContinuousClock.now
        try waitFor("the connection to be admitted") { server.openConnections == 1 }
        try waitFor("the connection to be released", timeout: .seconds(5)) { server.openConnections == 0 }
        let held = ContinuousClock.now - started
        #expect(held >= .milliseconds(900) && held < .seconds(3), "held for \(held)")
        // The client got a prefix of the body, then end of stream (or a reset).
        client.setTimeouts(read: 2, write: 2)
        var received = 0
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while let n = try? buffer.withUnsafeMutableBytes({ try client.read(into: $0) }), n > 0 { received += n }
        #expect(received < big.count)
    }
}

@Suite("HTTP server: persistent connections and response fields", .serialized)
struct HTTPServerKeepAliveTests {
    @Test("with maxRequestsPerConnection 3: two pipelined requests on one connection, the third gets Connection: close; extra fields are written, bad ones dropped")
    func keepAlive() throws {
        var configuration = HTTPServerConfiguration()
        configuration.maxRequestsPerConnection = 3
        let server = try HTTPServer(address: SocketAddress(host: "127.0.0.1", port: 0), configuration: configuration) { request in
            HTTPResponse(status: 429, contentType: "text/plain", body: Array(request.path.utf8),
                         headers: ["Retry-After": "7", "Bad\r\nName": "x", "X-Evil": "a\r\nInjected: yes"])
        }
        server.start()
        defer { server.stop() }
        let client = try Socket.connect(to: server.address, timeout: 2)
        defer { client.close() }
        try client.write(Array("GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\nGET /three HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        let (bytes, closed) = readToEnd(client)
        let text = String(decoding: bytes, as: UTF8.self)
        #expect(closed)
        #expect(text.components(separatedBy: "HTTP/1.1 429 Too Many Requests\r\n").count == 4, "\(text)")
        #expect(text.components(separatedBy: "Connection: keep-alive\r\n").count == 3)
        #expect(text.components(separatedBy: "Connection: close\r\n").count == 2)
        #expect(text.components(separatedBy: "Retry-After: 7\r\n").count == 4)
        #expect(text.hasSuffix("/three"))
        #expect(!text.contains("Injected") && !text.contains("Bad"))
    }

    @Test("the default stays one request per connection; a chunked body is refused with 400")
    func defaults() throws {
        let server = try HTTPServer(address: SocketAddress(host: "127.0.0.1", port: 0)) { _ in HTTPResponse(status: 200, body: []) }
        server.start()
        defer { server.stop() }
        let client = try Socket.connect(to: server.address, timeout: 2)
        try client.write(Array("GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        let text = String(decoding: readToEnd(client).bytes, as: UTF8.self)
        client.close()
        #expect(text.components(separatedBy: "HTTP/1.1 200 OK").count == 2 && text.contains("Connection: close"))
        let chunked = try Socket.connect(to: server.address, timeout: 2)
        defer { chunked.close() }
        try chunked.write(Array("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".utf8))
        #expect(String(decoding: readToEnd(chunked).bytes, as: UTF8.self).hasPrefix("HTTP/1.1 400 "))
    }
}
