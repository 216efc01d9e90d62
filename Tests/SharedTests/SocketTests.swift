import Foundation
import Testing
@testable import HatoIO

@Suite("Socket")
struct SocketTests {
    @Test("unsentBytes: 0 on a drained connection; grows when the peer stops reading; hasPendingInput sees data and EOF")
    func backlog() throws {
        let listener = try Socket.listen(on: SocketAddress(host: "127.0.0.1", port: 0))
        defer { listener.close() }
        let client = try Socket.connect(to: listener.localAddress!, timeout: 2)
        defer { client.close() }
        let (server, _) = try listener.accept()
        defer { server.close() }
        #expect(client.unsentBytes == 0)
        #expect(!server.hasPendingInput)
        try client.write(Array("hello\r\n".utf8))
        var waited = 0
        while !server.hasPendingInput && waited < 100 { usleep(10_000); waited += 1 }
        #expect(server.hasPendingInput)
        // The server never reads: writes fill its receive buffer, then the client's queue.
        client.setTimeouts(read: 1, write: 0.2)
        let chunk = [UInt8](repeating: 0x61, count: 1 << 20)
        var blocked = false
        for _ in 0..<256 {
            do { try client.write(chunk) } catch { blocked = true; break }
        }
        #expect(blocked)
        #expect(client.unsentBytes > 64 * 1024)
        client.close()
        #expect(client.unsentBytes == 0)
    }

    /// The kernel's SO_RCVTIMEO / SO_SNDTIMEO of `socket`, in seconds.
    func kernelTimeouts(_ socket: Socket) throws -> (read: Double, write: Double) {
        try socket.withDescriptor("getsockopt") { fd in
            func get(_ name: Int32) -> Double {
                var tv = timeval()
                var size = socklen_t(MemoryLayout<timeval>.size)
                _ = getsockopt(fd, SOL_SOCKET, name, &tv, &size)
                return Double(tv.tv_sec) + Double(tv.tv_usec) / 1_000_000
            }
            return (get(SO_RCVTIMEO), get(SO_SNDTIMEO))
        }
    }

    @Test("setReadTimeout(notBefore:) keeps a read timeout at least as long and at most 1 % longer, and never touches the write timeout")
    func readTimeoutNotBefore() throws {
        let listener = try Socket.listen(on: SocketAddress(host: "127.0.0.1", port: 0))
        defer { listener.close() }
        let client = try Socket.connect(to: listener.localAddress!, timeout: 2)
        defer { client.close() }
        client.setTimeouts(read: 300, write: 300)
        #expect(try kernelTimeouts(client) == (300, 300))
        // An SMTP client awaiting a reply with 299.5 s left: 300 s stands (no system call).
        client.setReadTimeout(notBefore: 299.5)
        #expect(try kernelTimeouts(client) == (300, 300))
        // Longer than what is set: set (a read must not time out early).
        client.setReadTimeout(notBefore: 600)
        #expect(try kernelTimeouts(client) == (600, 300))
        // Much shorter: set, so the read does not wait far past its deadline.
        client.setReadTimeout(notBefore: 100)
        #expect(try kernelTimeouts(client) == (100, 300))
        // The server's writes before reading to a deadline: a read timeout within range stands.
        client.setTimeouts(readAtMost: 100.5, write: 30)
        #expect(try kernelTimeouts(client) == (100, 30))
    }
}
