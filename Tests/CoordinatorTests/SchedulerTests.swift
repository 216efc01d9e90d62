import Foundation
import Testing
@testable import HatoCoordinator
@testable import HatoShared

@Suite("Scheduler logic")
struct SchedulerTests {
    func due(_ id: Int64, _ msg: String, _ addr: String, pool: String = "t") -> DueRecipient {
        DueRecipient(id: id, messageID: msg, address: addr, domain: QueueStore.domain(of: addr), pool: pool, reversePath: "s@x.test")
    }

    @Test("recipients are grouped by (message, destination domain) in order of first appearance")
    func grouping() {
        let groups = LeasePlanner.group([
            due(1, "M1", "a@x.test"), due(2, "M2", "b@x.test"), due(3, "M1", "c@y.test"), due(4, "M1", "d@X.TEST"),
        ])
        #expect(groups.map { "\($0.messageID)/\($0.domain)" } == ["M1/x.test", "M2/x.test", "M1/y.test"])
        #expect(groups[0].recipients.map(\.id) == [1, 4])
    }

    @Test("a group larger than the per-lease limit is split")
    func split() {
        let groups = LeasePlanner.group((1...250).map { due(Int64($0), "M", "u\($0)@x.test") }, maxRecipientsPerLease: 100)
        #expect(groups.map(\.recipients.count) == [100, 100, 50])
    }

    @Test("groups go to the least-loaded IP of their pool, never to another pool, up to the credit limit")
    func assignment() {
        let ips = [AssignedIP(address: "10", helo: "h10", pool: "t"), AssignedIP(address: "11", helo: "h11", pool: "t"),
                   AssignedIP(address: "20", helo: "h20", pool: "bulk")]
        var inFlight = ["10": 1]
        let groups = LeasePlanner.group([due(1, "A", "a@x.test"), due(2, "B", "b@x.test"), due(3, "C", "c@x.test", pool: "bulk"),
                                         due(4, "D", "d@x.test", pool: "other"), due(5, "E", "e@x.test")])
        let plan = LeasePlanner.assign(groups, ips: ips, inFlight: &inFlight, limit: 10)
        #expect(plan.map { "\($0.0.messageID)→\($0.1.address)" } == ["A→11", "B→10", "C→20", "E→11"])
        #expect(inFlight == ["10": 2, "11": 2, "20": 1])
        var f2: [String: Int] = [:]
        #expect(LeasePlanner.assign(groups, ips: ips, inFlight: &f2, limit: 2).count == 2)
    }

    @Test("retry timing follows the schedule, repeats its last step, and expires at max age")
    func retryTiming() {
        let clock = ManualClock()
        let received = clock.now()
        let policy = RetryPolicy(schedule: [60, 300, 900], maxAge: 3600)
        clock.advance(10)
        #expect(policy.afterDeferral(attempts: 1, receivedAt: received, now: clock.now()) == .retry(at: clock.now() + 60))
        #expect(policy.afterDeferral(attempts: 2, receivedAt: received, now: clock.now()) == .retry(at: clock.now() + 300))
        #expect(policy.afterDeferral(attempts: 7, receivedAt: received, now: clock.now()) == .retry(at: clock.now() + 900))
        clock.advance(3000)
        // A retry would fall past the deadline: it is clamped to the deadline.
        #expect(policy.afterDeferral(attempts: 3, receivedAt: received, now: clock.now()) == .retry(at: received + 3600))
        clock.advance(590)
        #expect(policy.afterDeferral(attempts: 4, receivedAt: received, now: clock.now()) == .expire)
    }
}

@Suite("IP assignment table")
struct IPAssignmentTableTests {
    func table() -> IPAssignmentTable {
        IPAssignmentTable(ips: [
            (AssignedIP(address: "127.0.0.10", helo: "a", pool: "t"), ["node-a"]),
            (AssignedIP(address: "127.0.0.12", helo: "b", pool: "t"), ["node-b"]),
            (AssignedIP(address: "127.0.0.20", helo: "f", pool: "t"), ["node-a", "node-b"]),
            (AssignedIP(address: "127.0.0.30", helo: "any", pool: "t"), []),
        ])
    }

    @Test("a node gets the IPs it is eligible for and can bind; an IP never has two owners")
    func join() {
        var t = table()
        #expect(t.nodeConnected("node-a", bindable: ["127.0.0.10", "127.0.0.20"]).map(\.address) == ["127.0.0.10", "127.0.0.20"])
        #expect(t.nodeConnected("node-b", bindable: ["127.0.0.12", "127.0.0.20", "127.0.0.30"]).map(\.address) == ["127.0.0.12", "127.0.0.30"])
        #expect(t.owner(of: "127.0.0.20") == "node-a")
    }

    @Test("a floating IP of a node that went down moves only after the fence time; a fixed IP waits")
    func fencing() {
        var t = table()
        let t0 = Date(timeIntervalSince1970: 1000)
        _ = t.nodeConnected("node-a", bindable: ["127.0.0.10", "127.0.0.20"])
        _ = t.nodeConnected("node-b", bindable: ["127.0.0.12", "127.0.0.20"])
        t.nodeDisconnected("node-a", at: t0)
        #expect(t.rebalanceOrphans(now: t0 + 299, fence: 300).isEmpty)
        #expect(t.owner(of: "127.0.0.20") == "node-a")
        let moves = t.rebalanceOrphans(now: t0 + 300, fence: 300)
        #expect(moves.map { "\($0.0)=\($0.1.address)" } == ["node-b=127.0.0.20"])
        #expect(t.owner(of: "127.0.0.10") == "node-a")
        // node-a comes back: it keeps its fixed IP, the floating one stays with node-b.
        #expect(t.nodeConnected("node-a", bindable: ["127.0.0.10", "127.0.0.20"]).map(\.address) == ["127.0.0.10"])
    }
}
