import Foundation
import HatoSupport
import Testing
@testable import HatoIO

/// The epoll loop the SMTP submission sessions run on (issue 19), with real sockets on loopback.
@Suite("EventLoop: readiness, tasks, interest, deregistration, stop")
struct EventLoopTests {
    /// A connected pair on 127.0.0.1: the loop's side and the peer's.
    private func connectedPair() throws -> (server: Socket, client: Socket) {
        let listener = try Socket.listen(on: SocketAddress(host: "127.0.0.1", port: 0))
        defer { listener.close() }
        let address = try #require(listener.localAddress)
        let client = try Socket.connect(to: address, timeout: 5)
        let (server, _) = try listener.accept()
        return (server, client)
    }

    /// Polls `condition` until it holds or 5 s pass.
    private func eventually(_ condition: () -> Bool) -> Bool {
        let deadline = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < deadline {
            if condition() { return true }
            usleep(2_000)
        }
        return condition()
    }

    @Test("tasks run on the loop's thread in the order queued, from any thread")
    func tasksInOrder() throws {
        let loop = try EventLoop(name: "test-loop")
        loop.start()
        defer { loop.stop(); loop.waitUntilStopped() }
        let seen = Locked<[Int]>([])
        let onLoop = Locked(true)
        for i in 0..<100 {
            loop.execute {
                onLoop.withLock { $0 = $0 && loop.inLoop }
                seen.withLock { $0.append(i) }
            }
        }
        #expect(eventually { seen.snapshot.count == 100 })
        #expect(seen.snapshot == Array(0..<100))
        #expect(onLoop.snapshot)
        #expect(!loop.inLoop)
    }

    @Test("a registered socket's handler reads what the peer wrote; writable interest; deregistered, it is not called again")
    func readinessAndDeregistration() throws {
        let (server, client) = try connectedPair()
        defer { server.close(); client.close() }
        let loop = try EventLoop(name: "test-loop")
        loop.start()
        defer { loop.stop(); loop.waitUntilStopped() }
        let received = Locked<[UInt8]>([])
        let calls = Locked((readable: 0, writable: 0))
        loop.execute {
            try? loop.register(server, interest: .readable) { ready in
                if ready.writable {
                    calls.withLock { $0.writable += 1 }
                    loop.setInterest(server, .readable)  // once is enough
                }
                guard ready.readable else { return }
                calls.withLock { $0.readable += 1 }
                var buffer = [UInt8](repeating: 0, count: 1024)
                guard case .processed(let n)? = try? buffer.withUnsafeMutableBytes({ try server.readIfReady(into: $0) }), n > 0 else {
                    loop.deregister(server)  // end of stream
                    return
                }
                received.withLock { $0 += buffer[0..<n] }
            }
        }
        try client.write(Array("hello".utf8))
        #expect(eventually { received.snapshot == Array("hello".utf8) })
        // Writable interest: reported once (the handler goes back to readable).
        loop.execute { loop.setInterest(server, [.readable, .writable]) }
        #expect(eventually { calls.snapshot.writable == 1 })
        // Deregistered: more input no longer reaches the handler.
        let registered = Locked(-1)
        loop.execute { loop.deregister(server); registered.withLock { $0 = loop.registeredCount } }
        #expect(eventually { registered.snapshot == 0 })
        let before = calls.snapshot.readable
        try client.write(Array("more".utf8))
        usleep(100_000)
        #expect(calls.snapshot.readable == before)
        #expect(received.snapshot == Array("hello".utf8))
    }

    @Test("the sweep runs while sockets are registered; stop ends the thread")
    func sweepAndStop() throws {
        let (server, client) = try connectedPair()
        defer { server.close(); client.close() }
        let sweeps = Locked(0)
        let loop = try EventLoop(name: "test-loop", sweepInterval: .milliseconds(10), sweep: { sweeps.withLock { $0 += 1 } })
        loop.start()
        loop.execute { try? loop.register(server, interest: .readable) { _ in } }
        #expect(eventually { sweeps.snapshot >= 5 })
        loop.stop()
        #expect(loop.waitUntilStopped(timeout: .seconds(5)))
    }

    @Test("tasks queued before stop run; once the loop has ended, execute refuses (the caller cleans up)")
    func executeAfterStop() throws {
        let loop = try EventLoop(name: "test-loop")
        loop.start()
        let ran = Locked(0)
        for _ in 0..<10 { #expect(loop.execute { ran.withLock { $0 += 1 } }) }
        loop.stop()
        #expect(loop.waitUntilStopped(timeout: .seconds(5)))
        #expect(ran.snapshot == 10)
        #expect(!loop.execute { ran.withLock { $0 += 100 } })
        usleep(20_000)
        #expect(ran.snapshot == 10)
    }
}
