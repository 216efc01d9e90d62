import Foundation
import Testing
@testable import HatoIO
@testable import HatoSupport

/// Reads from `socket` until end of stream (bounded by its timeout).
/// - Returns: what arrived, and whether it ended with end of stream (rather than a timeout).
func readToEnd(_ socket: Socket, timeout: TimeInterval = 5) -> (bytes: [UInt8], closed: Bool) {
    socket.setTimeouts(read: timeout, write: timeout)
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        do {
            let n = try buffer.withUnsafeMutableBytes { try socket.read(into: $0) }
            if n == 0 { return (out, true) }
            out += buffer[0..<n]
        } catch let e as SocketError where e.kind == .closed {
            return (out, true)
        } catch {
            return (out, false)
        }
    }
}

/// Reads one LF-terminated line (bounded by the socket's timeout).
func readLine(_ socket: Socket, timeout: TimeInterval = 5) -> String? {
    socket.setTimeouts(read: timeout, write: timeout)
    var line: [UInt8] = []
    var byte = [UInt8](repeating: 0, count: 1)
    while true {
        guard let n = try? byte.withUnsafeMutableBytes({ try socket.read(into: $0) }), n == 1 else { return nil }
        if byte[0] == 0x0A { return String(decoding: line, as: UTF8.self) }
        line.append(byte[0])
    }
}

@Suite("Acceptor and admission", .serialized)
struct AcceptorTests {
    @Test("PeerKey: an IPv4 address, an IPv6 /64, an IPv4-mapped IPv6 address as its IPv4 address")
    func peerKeys() {
        func key(_ host: String) -> PeerKey { PeerKey(SocketAddress(host: host, port: 1)) }
        #expect(key("192.0.2.1") == key("192.0.2.1"))
        #expect(key("192.0.2.1") != key("192.0.2.2"))
        #expect(key("192.0.2.1").description == "192.0.2.1")
        #expect(key("::ffff:192.0.2.1") == key("192.0.2.1"))
        #expect(key("2001:db8:1:2::1") == key("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        #expect(key("2001:db8:1:2::1") != key("2001:db8:1:3::1"))
        #expect(key("2001:db8:1:2::1").description == "2001:db8:1:2::/64")
        #expect(key("::1") != key("127.0.0.1"))
    }

    @Test("AdmissionControl: total and per-peer limits; a released token frees its slot; release is idempotent")
    func admissionCounts() throws {
        let control = AdmissionControl(limits: AdmissionLimits(maxConnections: 3, maxConnectionsPerPeer: 2))
        let sock = try Socket.listen(on: SocketAddress(host: "127.0.0.1", port: 0))
        defer { sock.close() }
        func admit(_ host: String) -> AdmissionDecision { control.admit(sock, from: SocketAddress(host: host, port: 1000)) }
        guard case .admitted(let a1) = admit("2001:db8::1"), case .admitted(let a2) = admit("2001:db8::2") else {
            Issue.record("not admitted"); return
        }
        guard case .refused(.peerFull) = admit("2001:db8::3") else { Issue.record("same /64 admitted a third time"); return }
        guard case .admitted(let b1) = admit("192.0.2.1") else { Issue.record("not admitted"); return }
        guard case .refused(.listenerFull) = admit("192.0.2.2") else { Issue.record("over the total"); return }
        #expect(control.openConnections == 3)
        #expect(control.openConnections(from: SocketAddress(host: "2001:db8::9", port: 1)) == 2)
        #expect(a1.isAuthenticated && b1.isAuthenticated)
        a1.release()
        a1.release()
        #expect(control.openConnections == 2)
        guard case .admitted = admit("192.0.2.2") else { Issue.record("a freed slot was not reused"); return }
        // The token just admitted was dropped: deinit released it.
        #expect(control.openConnections == 2)
        withExtendedLifetime((a2, b1)) {}
    }

    @Test("Acceptor: over-limit connections get the refusal bytes and end of stream on the accepting thread; a freed slot admits again")
    func refusals() throws {
        let gate = LockedCondition(0)  // handlers running
        let acceptor = try Acceptor(address: SocketAddress(host: "127.0.0.1", port: 0), configuration: .init(name: "test"),
                                    admission: AdmissionControl(limits: AdmissionLimits(maxConnections: 4, maxConnectionsPerPeer: 2)),
                                    refusal: { peer, reason in Array("NO \(reason) \(peer.host)\n".utf8) },
                                    handler: { connection in
                                        gate.withLockAndBroadcast { $0 += 1 }
                                        try? connection.socket.write("HELLO\n")
                                        _ = readToEnd(connection.socket, timeout: 10)
                                        gate.withLockAndBroadcast { $0 -= 1 }
                                    })
        acceptor.start()
        defer { #expect(acceptor.stop()) }
        func connect(_ from: String) throws -> Socket { try Socket.connect(to: acceptor.address, from: from, timeout: 2) }
        var held: [Socket] = []
        defer { held.forEach { $0.close() } }
        for _ in 0..<2 {
            held.append(try connect("127.0.0.1"))
            #expect(readLine(held.last!) == "HELLO")
        }
        let third = try connect("127.0.0.1")
        let refusedPeer = readToEnd(third)
        #expect(String(decoding: refusedPeer.bytes, as: UTF8.self) == "NO max_connections_per_peer 127.0.0.1\n")
        #expect(refusedPeer.closed)
        third.close()
        for _ in 0..<2 {
            held.append(try connect("127.0.0.2"))
            #expect(readLine(held.last!) == "HELLO")
        }
        let fifth = try connect("127.0.0.3")
        let refusedTotal = readToEnd(fifth)
        #expect(String(decoding: refusedTotal.bytes, as: UTF8.self) == "NO max_connections 127.0.0.3\n")
        fifth.close()
        #expect(gate.withLock { $0 } == 4)
        #expect(acceptor.counters.accepted == 4 && acceptor.counters.refused == 2)

        held.removeFirst().close()
        let freed = gate.wait(until: .now + .seconds(5), for: { $0 == 3 }) { _, ok in ok }
        #expect(freed)
        try waitFor("the slot to be released") { acceptor.admission.openConnections == 3 }
        let again = try connect("127.0.0.3")
        #expect(readLine(again) == "HELLO")
        again.close()
    }

    @Test("pre-authentication tier: unauthenticated connections capped in total and per peer; promote() frees the tier; the handshake deadline shuts a silent one down")
    func preAuthentication() throws {
        let admission = AdmissionControl(limits: AdmissionLimits(maxConnections: 10, maxConnectionsPerPeer: 10),
                                         preAuthentication: PreAuthenticationLimits(maxConnections: 2, maxConnectionsPerPeer: 1,
                                                                                    handshakeDeadline: .milliseconds(600)))
        let acceptor = try Acceptor(address: SocketAddress(host: "127.0.0.1", port: 0), configuration: .init(name: "cluster-test"),
                                    admission: admission, handler: { connection in
                                        // The "handshake": a line that says AUTH.
                                        guard readLine(connection.socket, timeout: 10) == "AUTH" else { return }
                                        #expect(connection.admission.promote())
                                        try? connection.socket.write("OK\n")
                                        _ = readToEnd(connection.socket, timeout: 10)
                                    })
        acceptor.start()
        defer { acceptor.stop() }
        func connect(_ from: String) throws -> Socket { try Socket.connect(to: acceptor.address, from: from, timeout: 2) }

        let silent = try connect("127.0.0.1")
        defer { silent.close() }
        let silentSince = ContinuousClock.now
        try waitFor("the silent connection to be admitted") { admission.unauthenticatedConnections == 1 }
        let samePeer = try connect("127.0.0.1")
        #expect(readToEnd(samePeer).closed, "a second unauthenticated connection from one peer is refused")
        samePeer.close()

        let member = try connect("127.0.0.2")
        defer { member.close() }
        try member.write("AUTH\n")
        #expect(readLine(member) == "OK")
        #expect(admission.unauthenticatedConnections == 1)

        let second = try connect("127.0.0.3")
        defer { second.close() }
        try waitFor("the second unauthenticated connection") { admission.unauthenticatedConnections == 2 }
        let third = try connect("127.0.0.4")
        #expect(readToEnd(third).closed, "a third unauthenticated connection is refused")
        third.close()
        #expect(admission.openConnections == 3)

        // The deadline: the silent ones are shut down (their handler sees end of stream and returns).
        let silentEnd = readToEnd(silent, timeout: 5)
        let waited = ContinuousClock.now - silentSince
        #expect(silentEnd.closed && silentEnd.bytes.isEmpty)
        #expect(waited >= .milliseconds(550) && waited < .seconds(3), "shut down after \(waited)")
        #expect(readToEnd(second, timeout: 5).closed)
        try waitFor("the expired slots to be released") { admission.openConnections == 1 && admission.unauthenticatedConnections == 0 }
        // The promoted member is untouched by the deadline.
        #expect(!member.hasPendingInput)
    }

    @Test("pre-authentication tier full: a newcomer from another peer evicts the oldest connection of the peer holding the most, which cannot then promote; the heaviest peer itself is refused")
    func preAuthenticationEviction() throws {
        let admission = AdmissionControl(limits: AdmissionLimits(maxConnections: 20, maxConnectionsPerPeer: 20),
                                         preAuthentication: PreAuthenticationLimits(maxConnections: 4, maxConnectionsPerPeer: 4,
                                                                                    handshakeDeadline: .seconds(30)))
        let acceptor = try Acceptor(address: SocketAddress(host: "127.0.0.1", port: 0), configuration: .init(name: "cluster-test"),
                                    admission: admission, handler: { connection in
                                        guard readLine(connection.socket, timeout: 10) == "AUTH" else { return }
                                        guard connection.admission.promote() else { return }
                                        try? connection.socket.write("OK\n")
                                        _ = readToEnd(connection.socket, timeout: 10)
                                    })
        acceptor.start()
        defer { acceptor.stop() }
        func connect(_ from: String) throws -> Socket { try Socket.connect(to: acceptor.address, from: from, timeout: 2) }

        // A flood from one address fills the tier.
        var flood: [Socket] = []
        defer { flood.forEach { $0.close() } }
        for i in 0..<4 {
            flood.append(try connect("127.0.0.1"))
            try waitFor("flood connection \(i)") { admission.unauthenticatedConnections == i + 1 }
        }
        // The flooder's own fifth is refused: it already holds the most.
        let fifth = try connect("127.0.0.1")
        #expect(readToEnd(fifth).closed)
        fifth.close()
        #expect(admission.evictions == 0)

        // A node from another address gets in: the flood's oldest connection is shut down for it.
        let node = try connect("127.0.0.2")
        defer { node.close() }
        #expect(readToEnd(flood[0]).closed, "the oldest flood connection was evicted")
        try node.write("AUTH\n")
        #expect(readLine(node) == "OK", "the newcomer completes its handshake")
        #expect(admission.evictions == 1)
        try waitFor("the evicted slot to be released") { admission.openConnections == 4 && admission.unauthenticatedConnections == 3 }

        // An evicted connection cannot promote, even if its handshake line was already read.
        #expect(!flood[1].hasPendingInput)
    }

    @Test("stop(): the loop closes the listener at once; new connections are refused by the kernel")
    func stopIsPrompt() throws {
        let acceptor = try Acceptor(address: SocketAddress(host: "127.0.0.1", port: 0), configuration: .init(name: "test"),
                                    admission: AdmissionControl(limits: .adminHTTP), handler: { _ in })
        acceptor.start()
        let address = acceptor.address
        let probe = try Socket.connect(to: address, timeout: 2)
        probe.close()
        let t0 = ContinuousClock.now
        #expect(acceptor.stop())
        let took = ContinuousClock.now - t0
        #expect(took < .milliseconds(500), "stop took \(took)")
        let refused = #expect(throws: SocketError.self) { try Socket.connect(to: address, timeout: 2) }
        #expect(refused?.kind == .closed)
    }
}

/// Polls `condition` every 10 ms for up to `timeout`.
func waitFor(_ what: String, timeout: Duration = .seconds(5), _ condition: () -> Bool) throws {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        if ContinuousClock.now >= deadline { throw AcceptorTestError("timed out waiting for \(what)") }
        usleep(10_000)
    }
}

struct AcceptorTestError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
