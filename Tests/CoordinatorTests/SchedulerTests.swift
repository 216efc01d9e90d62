import Foundation
import Testing
@testable import ClusterProtocol
@testable import HatoCoordinator
@testable import HatoSupport

@Suite("Scheduler logic")
struct SchedulerTests {
    func due(_ id: Int64, _ msg: String, _ addr: String, pool: String = "t") -> DueRecipient {
        DueRecipient(id: id, messageID: msg, address: addr, domain: Queue.domain(of: addr), pool: pool, reversePath: "s@x.test")
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

    @Test("a floating IP of a node that went down moves only after the fence; a fixed IP waits")
    func fencing() {
        var t = table()
        let t0 = Date(timeIntervalSince1970: 1000)
        _ = t.nodeConnected("node-a", bindable: ["127.0.0.10", "127.0.0.20"])
        _ = t.nodeConnected("node-b", bindable: ["127.0.0.12", "127.0.0.20"])
        t.nodeDisconnected("node-a", fenceUntil: t0 + 300)
        #expect(t.assignOrphans(now: t0 + 299).isEmpty)
        #expect(t.owner(of: "127.0.0.20") == "node-a")
        let moves = t.assignOrphans(now: t0 + 300)
        #expect(moves.map { "\($0.0)=\($0.1.address)" } == ["node-b=127.0.0.20"])
        #expect(t.owner(of: "127.0.0.10") == "node-a")
        // node-a comes back: it keeps its fixed IP, the floating one stays with node-b.
        #expect(t.nodeConnected("node-a", bindable: ["127.0.0.10", "127.0.0.20"]).map(\.address) == ["127.0.0.10"])
    }

    @Test("handover: the IP stays with the old owner (not leasable) until it reports it released")
    func handover() {
        var t = table()
        _ = t.nodeConnected("node-a", bindable: ["127.0.0.10", "127.0.0.20"])
        _ = t.nodeConnected("node-b", bindable: ["127.0.0.12", "127.0.0.20"])
        let r1 = t.beginHandover("127.0.0.10", to: "node-b")
        #expect(!r1, "a fixed IP cannot go to an ineligible node")
        let r2 = t.beginHandover("127.0.0.20", to: "node-b")
        #expect(r2)
        #expect(t.owner(of: "127.0.0.20") == "node-a")
        #expect(t.leasable(by: "node-a").map(\.address) == ["127.0.0.10"])
        #expect(t.leasable(by: "node-b").map(\.address) == ["127.0.0.12"])
        let r3 = t.released("127.0.0.20", by: "node-b")
        #expect(r3 == nil, "only the owner can release")
        let r4 = t.released("127.0.0.20", by: "node-a")
        #expect(r4 == "node-b")
        #expect(t.owner(of: "127.0.0.20") == "node-b")
        // A handover towards a node that disconnects is cancelled.
        let r5 = t.beginHandover("127.0.0.20", to: "node-a")
        #expect(r5)
        t.nodeDisconnected("node-a", fenceUntil: .distantPast)
        #expect(t.entries.first { $0.ip.address == "127.0.0.20" }?.handoverTo == nil)
    }

    func floating(_ n: Int, eligible: [String] = []) -> IPAssignmentTable {
        IPAssignmentTable(ips: (0..<n).map { (AssignedIP(address: "127.0.1.\(10 + $0)", helo: "h\($0)", pool: "t"), eligible) })
    }

    @Test("rebalance after a third node joins moves the fewest IPs and evens out the counts")
    func rebalanceScaleOut() {
        var t = floating(6)
        let all = (0..<6).map { "127.0.1.\(10 + $0)" }
        _ = t.nodeConnected("node-a", bindable: all)
        _ = t.nodeConnected("node-b", bindable: all)
        _ = t.nodeConnected("node-c", bindable: all)
        // node-a took all six at join.
        #expect(t.owned(by: "node-a").count == 6)
        let plan = t.planRebalance(nodes: ["node-a", "node-b", "node-c"])
        #expect(plan.count == 4, "6/0/0 → 2/2/2 needs exactly four moves")
        #expect(plan.allSatisfy { $0.from == "node-a" })
        #expect(plan.filter { $0.to == "node-b" }.count == 2 && plan.filter { $0.to == "node-c" }.count == 2)
        // Deterministic: the same input gives the same plan.
        #expect(plan == t.planRebalance(nodes: ["node-c", "node-b", "node-a"]))
        // Applying it leaves nothing to do.
        for m in plan {
            let began = t.beginHandover(m.address, to: m.to)
            #expect(began)
            let to = t.released(m.address, by: "node-a")
            #expect(to == m.to)
        }
        #expect(t.planRebalance(nodes: ["node-a", "node-b", "node-c"]).isEmpty)
    }

    @Test("rebalance respects eligibility and never moves fixed IPs")
    func rebalanceEligibility() {
        var t = IPAssignmentTable(ips: [
            (AssignedIP(address: "10.0.0.1", helo: "a", pool: "t"), ["node-a"]),
            (AssignedIP(address: "10.0.0.2", helo: "a", pool: "t"), ["node-a"]),
            (AssignedIP(address: "10.0.0.3", helo: "a", pool: "t"), ["node-a"]),
            (AssignedIP(address: "10.0.0.4", helo: "f", pool: "t"), ["node-a", "node-b"]),
            (AssignedIP(address: "10.0.0.5", helo: "f", pool: "t"), ["node-a", "node-c"]),
        ])
        let all = (1...5).map { "10.0.0.\($0)" }
        _ = t.nodeConnected("node-a", bindable: all)
        _ = t.nodeConnected("node-b", bindable: all)
        _ = t.nodeConnected("node-c", bindable: all)
        let plan = t.planRebalance(nodes: ["node-a", "node-b", "node-c"])
        #expect(plan == [IPAssignmentTable.Move(address: "10.0.0.4", from: "node-a", to: "node-b"),
                         IPAssignmentTable.Move(address: "10.0.0.5", from: "node-a", to: "node-c")])
    }

    @Test("rebalance evens out each pool, not just totals")
    func rebalancePerPool() {
        var t = IPAssignmentTable(ips: [
            (AssignedIP(address: "10.0.0.1", helo: "a", pool: "tx"), []), (AssignedIP(address: "10.0.0.2", helo: "a", pool: "tx"), []),
            (AssignedIP(address: "10.0.0.3", helo: "a", pool: "bulk"), []), (AssignedIP(address: "10.0.0.4", helo: "a", pool: "bulk"), []),
        ])
        let all = (1...4).map { "10.0.0.\($0)" }
        _ = t.nodeConnected("node-a", bindable: all)
        _ = t.nodeConnected("node-b", bindable: all)
        let plan = t.planRebalance(nodes: ["node-a", "node-b"])
        #expect(plan.count == 2)
        #expect(Set(plan.map(\.address)) == ["10.0.0.1", "10.0.0.3"], "one IP of each pool moves")
    }

    @Test("an IP a node cannot bind is not given to it, and reconfigure reports owned IPs that were removed")
    func bindAndReconfigure() {
        var t = floating(2)
        _ = t.nodeConnected("node-a", bindable: ["127.0.1.10"])
        #expect(t.owned(by: "node-a").map(\.address) == ["127.0.1.10"])
        let removed = t.reconfigure([(AssignedIP(address: "127.0.1.11", helo: "h", pool: "t"), []),
                                     (AssignedIP(address: "127.0.1.12", helo: "h", pool: "t"), [])])
        #expect(removed.map { "\($0.address)@\($0.owner)" } == ["127.0.1.10@node-a"])
        #expect(t.entries.map(\.ip.address) == ["127.0.1.11", "127.0.1.12"])
    }
}
