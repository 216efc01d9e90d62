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
}
