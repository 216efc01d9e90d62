import ClusterProtocol
import Foundation
import HatoIO
import HatoSupport
import HatoTestKit
import Testing

extension Integration {
    @Suite("Close rule: shutdown() from another thread wakes the owner, who closes")
    struct CloseRuleTests {
        @Test("TLSStream.shutdown() from another thread wakes a reader blocked in SSL_read; the reader closes; the peer sees end of stream")
        func tlsShutdownWakesReader() throws {
            let dir = try makeTempDirectory("hato-tls-close-")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let cert = try TestCertificate.make(in: dir)
            let context = try TLSContext.server(certificateChainPath: cert.certificate, privateKeyPath: cert.key)
            let listener = try Socket.listen(on: SocketAddress(host: "127.0.0.1", port: 0))
            defer { listener.close() }
            let serverStream = LockedCondition<TLSStream?>(nil)
            let outcome = LockedCondition<(read: Int, waited: Duration, closed: Bool)?>(nil)
            Thread.detachNewThread {
                guard let (conn, _) = try? listener.accept() else { return }
                conn.setTimeouts(read: .seconds(30), write: .seconds(5))
                guard let tls = try? TLSStream.accept(over: conn, context: context) else { conn.close(); return }
                serverStream.withLockAndBroadcast { $0 = tls }
                let started = ContinuousClock.now
                var buffer = [UInt8](repeating: 0, count: 64)
                let n = (try? buffer.withUnsafeMutableBytes { try tls.read(into: $0) }) ?? -1
                let waited = ContinuousClock.now - started
                tls.close()  // the owner closes
                outcome.withLockAndBroadcast { $0 = (n, waited, conn.isClosed) }
            }
            let socket = try Socket.connect(to: listener.localAddress!, timeout: 5)
            socket.setTimeouts(read: .seconds(10), write: .seconds(10))
            let client = try TLSStream.connect(over: socket, context: try TLSContext.client(), serverName: nil)
            defer { client.close() }
            let server = serverStream.wait(until: .now + .seconds(10), for: { $0 != nil }) { v, _ in v }
            let tls = try #require(server)
            usleep(300_000)
            tls.shutdown()  // another thread: wake, never close
            let result = try #require(outcome.wait(until: .now + .seconds(10), for: { $0 != nil }) { v, _ in v })
            #expect(result.read <= 0)
            #expect(result.waited >= .milliseconds(250) && result.waited < .seconds(5), "woke after \(result.waited)")
            #expect(result.closed)
            var buffer = [UInt8](repeating: 0, count: 16)
            let n = (try? buffer.withUnsafeMutableBytes { try client.read(into: $0) }) ?? 0
            #expect(n == 0, "the client sees end of stream")
        }

        @Test("ClusterConnection.shutdown() from another thread ends the reader's receive; sends from other threads are serialised")
        func clusterConnectionShutdown() throws {
            let listener = try Socket.listen(on: SocketAddress(host: "127.0.0.1", port: 0))
            defer { listener.close() }
            let client = try Socket.connect(to: listener.localAddress!, timeout: 5)
            defer { client.close() }
            let (serverSocket, _) = try listener.accept()
            serverSocket.setTimeouts(read: .seconds(30), write: .seconds(5))
            let connection = ClusterConnection(socket: serverSocket, maximumFrameSize: 1 << 20)
            let peer = ClusterConnection(socket: client, maximumFrameSize: 1 << 20)
            client.setTimeouts(read: .seconds(10), write: .seconds(5))
            let ended = LockedCondition<(error: String, waited: Duration)?>(nil)
            Thread.detachNewThread {
                let started = ContinuousClock.now
                var reason = "no error"
                do {
                    while true { _ = try connection.receive() }
                } catch {
                    reason = "\(error)"
                }
                connection.close()  // the reader owns the connection
                ended.withLockAndBroadcast { $0 = (reason, ContinuousClock.now - started) }
            }
            // Four threads send while the reader waits; the peer receives whole frames.
            let senders = LockedCondition(0)
            for _ in 0..<4 {
                Thread.detachNewThread {
                    for i in 0..<50 { try? connection.send(.heartbeat(HeartbeatMessage(leasesInFlight: i))) }
                    senders.withLockAndBroadcast { $0 += 1 }
                }
            }
            #expect(senders.wait(until: .now + .seconds(10), for: { $0 == 4 }) { _, ok in ok })
            var heartbeats = 0
            while heartbeats < 200, case .heartbeat = try peer.receive() { heartbeats += 1 }
            #expect(heartbeats == 200)
            usleep(100_000)
            connection.shutdown()
            let result = try #require(ended.wait(until: .now + .seconds(10), for: { $0 != nil }) { v, _ in v })
            #expect(result.error.contains("closed"), "\(result.error)")
            #expect(serverSocket.isClosed)
            #expect(throws: SocketError.self) { try peer.receive() }
        }
    }
}
