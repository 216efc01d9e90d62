import Foundation
import HatoTestKit
import Testing
@testable import SMTPCore
@testable import ClusterProtocol
@testable import HatoConfig
@testable import HatoNode
@testable import HatoSupport

/// The node agent's parts as values: reconnect backoff, lease deadlines, the lease queue, and
/// what a revoked sending IP does to pooled sessions (filter: `NodeAgentTests`).
@Suite("NodeAgentTests")
struct NodeAgentTests {}

/// A random source that always draws the top of the range (the longest wait).
private struct AlwaysMax: RandomNumberGenerator {
    mutating func next() -> UInt64 { .max }
}

private func lease(expiresIn: Double, expiresAt: Double? = nil) -> Lease {
    Lease(leaseID: "L1", sendingIP: "127.0.0.1", helo: "h", messageID: "M1", reversePath: "a@b.test", domain: "dest.test",
          recipients: [LeasedRecipient(id: 1, address: "r@dest.test")], expiresIn: expiresIn, expiresAt: expiresAt)
}

extension NodeAgentTests {
    @Test("reconnect backoff: waits grow with jitter up to the 10 s cap, and start over after a successful join")
    func backoffResetsAfterJoin() {
        var backoff = ReconnectBackoff()
        var top = AlwaysMax()
        // The longest draw each time: three times the previous wait, capped.
        let waits = (0..<5).map { _ in backoff.next(using: &top) }
        #expect(waits.map(\.inSeconds).map { ($0 * 1000).rounded() / 1000 } == [1.5, 4.5, 10, 10, 10])
        backoff.joined()
        #expect(backoff.previous == .milliseconds(500))
        #expect(backoff.next(using: &top).inSeconds.rounded(toPlaces: 3) == 1.5)

        // Random draws: always within [base, cap]; after a join the next wait is again at most 1.5 s.
        var random = SplitMix64(seed: 42)
        var jittered = ReconnectBackoff()
        var seen = Set<Int>()
        for round in 0..<200 {
            for _ in 0..<(round % 7) {
                let w = jittered.next(using: &random)
                #expect(w >= .milliseconds(500) && w <= .seconds(10))
                seen.insert(Int(w.inSeconds * 10))
            }
            jittered.joined()
            let first = jittered.next(using: &random)
            #expect(first >= .milliseconds(500) && first <= .milliseconds(1500))
            jittered.joined()
        }
        // Jitter: the waits are spread, not a fixed ladder.
        #expect(seen.count > 30)
    }

    @Test("the lease deadline: expiresIn from receipt on the monotonic clock, bounded by expiresAt, minus 10 % (1 s to 10 s)")
    func leaseDeadline() {
        let now = ContinuousClock.now
        let wall = Date(timeIntervalSince1970: 1_800_000_000)
        #expect(NodeAgent.deadline(for: lease(expiresIn: 60), receivedAt: now, wallNow: wall) == now + .seconds(54))
        #expect(NodeAgent.deadline(for: lease(expiresIn: 5), receivedAt: now, wallNow: wall) == now + .seconds(4))
        #expect(NodeAgent.deadline(for: lease(expiresIn: 300), receivedAt: now, wallNow: wall) == now + .seconds(290))
        // The coordinator's expiry comes first (e.g. the grant sat in a buffer): it bounds the deadline.
        let bounded = NodeAgent.deadline(for: lease(expiresIn: 60, expiresAt: 1_800_000_030), receivedAt: now, wallNow: wall)
        #expect(bounded == now + .seconds(24))
        // An expiresAt later than receipt + expiresIn changes nothing.
        #expect(NodeAgent.deadline(for: lease(expiresIn: 60, expiresAt: 1_800_000_600), receivedAt: now, wallNow: wall) == now + .seconds(54))
    }

    @Test("the lease queue hands leases out in order and ends once closed and empty")
    func leaseQueue() {
        let q = LeaseQueue()
        let deadline = ContinuousClock.now + .seconds(60)
        for id in ["a", "b", "c"] {
            var l = lease(expiresIn: 60)
            l.leaseID = id
            q.push(HeldLease(lease: l, body: [], deadline: deadline))
        }
        #expect(q.count == 3)
        #expect(q.pop()?.lease.leaseID == "a")
        q.close()
        #expect(q.pop()?.lease.leaseID == "b")
        #expect(q.pop()?.lease.leaseID == "c")
        #expect(q.pop() == nil)
    }
}

extension NodeAgentTests {
    @Test("a revoked sending IP: its idle sessions are closed with QUIT at once; deliveries still finish; nothing stays idle or is replaced")
    func revokedIPClosesIdleSessions() throws {
        let mx = try ScriptedMX()
        defer { mx.stop() }
        let pool = SMTPConnectionPool(shaping: ShapingSettings(defaults: ShapingLimits(maxConnections: 2, messagesPerConnection: 1)), idleTimeout: 30)
        defer { pool.shutdown() }
        let d = SMTPDeliverer(timeouts: testTimeouts, pool: pool)
        func send(_ tag: String, from ip: String) -> [OutcomeStatus] {
            var r = DeliveryRequest(reversePath: "news@example.org", recipients: recipients(1), body: sampleMessage(tag), sendingIP: ip, heloName: "mta.example.org")
            r.shapingDeadline = Date().addingTimeInterval(10)
            return d.deliver(r, to: [target(mx)]).outcomes.map(\.status)
        }
        // One message per connection: each delivery retires its session and a replacement is
        // opened in the background, so an idle session waits from each IP.
        #expect(send("1", from: "127.0.0.1") == [.delivered])
        #expect(send("2", from: "127.0.0.2") == [.delivered])
        try waitFor("an idle replacement session from each IP") { pool.idleCount == 2 }
        let before = mx.connectionCount

        pool.revoke(sendingIP: "127.0.0.1")
        // At once, not at idle_timeout (30 s): the 127.0.0.1 session got QUIT and is gone.
        #expect(pool.idleCount == 1)
        #expect(pool.openConnections[ShapingKey(sendingIP: "127.0.0.1", group: "mx:mx.dest.test")] == nil)
        let quitted = mx.connections.filter { $0.peer == "127.0.0.1" && $0.commands.last == "QUIT" }
        #expect(quitted.count == mx.connections.filter { $0.peer == "127.0.0.1" }.count)

        // A lease still queued for the revoked IP is delivered, but its session is not kept
        // and no replacement is opened from that IP.
        #expect(send("3", from: "127.0.0.1") == [.delivered])
        // The delivery asked for a replacement before it returned; the worker refuses it.
        try waitFor("the replacement request handled") { d.replacer.backlog == 0 }
        #expect(mx.connectionCount == before + 1)
        #expect(pool.idleCount == 1)
        #expect(pool.openConnections[ShapingKey(sendingIP: "127.0.0.1", group: "mx:mx.dest.test")] == nil)

        // The other IP is untouched; once the IP is assigned again, sessions are kept again.
        pool.reinstate(sendingIP: "127.0.0.1")
        #expect(send("4", from: "127.0.0.1") == [.delivered])
        try waitFor("a replacement from the reinstated IP") { pool.idleCount == 2 }
    }
}

private extension Double {
    func rounded(toPlaces places: Int) -> Double {
        let f = pow(10, Double(places))
        return (self * f).rounded() / f
    }
}
