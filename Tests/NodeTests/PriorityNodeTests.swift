import ClusterProtocol
import Foundation
import Testing
import HatoSupport
@testable import HatoConfig
@testable import HatoNode
@testable import SMTPCore

/// Issue 18, priority at the node: the lease queue and the connection slots kept for
/// transactional mail (filter: `PriorityNodeTests`).
@Suite("PriorityNodeTests")
struct PriorityNodeTests {
    static func held(_ id: String, _ p: MessagePriority?) -> HeldLease {
        HeldLease(lease: Lease(leaseID: id, sendingIP: "127.0.0.10", helo: "a.test", messageID: id, reversePath: "", domain: "x.test",
                               recipients: [], expiresIn: 60, priority: p),
                  body: [], deadline: .now + .seconds(60))
    }

    @Test("the lease queue gives transactional leases before bulk ones; a worker kept for transactional mail never takes bulk")
    func leaseQueue() {
        let q = LeaseQueue()
        q.push(Self.held("b1", .bulk)); q.push(Self.held("t1", .transactional)); q.push(Self.held("b2", .bulk)); q.push(Self.held("t2", nil))
        #expect(q.pop()?.lease.leaseID == "t1")
        #expect(q.pop(takingBulk: false)?.lease.leaseID == "t2", "a lease without a class (an older coordinator's) is transactional")
        q.close()
        #expect(q.pop(takingBulk: false) == nil, "only bulk is left: the reserved worker ends, the bulk stays for the others")
        #expect(q.pop()?.lease.leaseID == "b1")
        #expect(q.pop()?.lease.leaseID == "b2")
        #expect(q.pop() == nil)
    }

    @Test("a push wakes a worker that can take the lease: bulk with only a transactional worker woken first is still taken, every lease is taken once")
    func leaseQueueWakeUps() {
        let q = LeaseQueue()
        let taken = Locked<[String: Int]>([:])
        // Workers waiting before anything is queued: one kept for transactional mail, three general.
        var threads: [Thread] = []
        for takingBulk in [false, true, true, true] {
            let t = Thread {
                while let l = q.pop(takingBulk: takingBulk) {
                    taken.withLock { $0[l.lease.leaseID, default: 0] += 1 }
                    if !takingBulk && l.lease.effectivePriority == .bulk { taken.withLock { $0["bulk-to-reserved"] = 1 } }
                }
            }
            t.start(); threads.append(t)
        }
        func waitFor(_ n: Int) -> Bool {
            let deadline = ContinuousClock.now + .seconds(10)
            while ContinuousClock.now < deadline {
                if taken.withLock({ $0.values.reduce(0, +) }) >= n { return true }
                usleep(1000)
            }
            return false
        }
        usleep(20_000)  // let the workers reach their wait
        // Bulk leases one at a time: each wake-up must reach a worker that takes bulk.
        for i in 0..<20 {
            q.push(Self.held("b\(i)", .bulk))
            #expect(waitFor(i + 1), "bulk lease b\(i) was not taken (lost wake-up)")
        }
        // A burst of transactional and bulk leases.
        for i in 0..<200 { q.push(Self.held("t\(i)", i % 3 == 0 ? .bulk : .transactional)) }
        #expect(waitFor(220))
        // Bulk then transactional, back to back (review: the bulk lease's one wake-up taken by a
        // general worker that then takes the transactional lease, whose wake-up went to the
        // worker kept for transactional mail): every pair must be taken.
        for i in 0..<200 {
            q.push(Self.held("pb\(i)", .bulk)); q.push(Self.held("pt\(i)", .transactional))
            #expect(waitFor(222 + 2 * i), "pair \(i) not taken (lost wake-up)")
        }
        q.close()
        let deadline = ContinuousClock.now + .seconds(10)
        while threads.contains(where: { !$0.isFinished }) && ContinuousClock.now < deadline { usleep(1000) }
        let counts = taken.snapshot
        #expect(counts["bulk-to-reserved"] == nil, "the transactional-only worker took a bulk lease")
        #expect(counts.count == 620 && counts.values.allSatisfy { $0 == 1 }, "every lease taken exactly once")
        let allFinished = threads.allSatisfy { $0.isFinished }
        #expect(allFinished)
    }

    @Test("bulk never takes the last bulk_reserve connection slots of a (sending IP, provider) pair, idle sessions or not")
    func ledgerReserve() {
        typealias Ledger = ShapingLedger<Int>
        let t0 = ContinuousClock.now
        var l = Ledger(shaping: ShapingSettings(defaults: ShapingLimits(maxConnections: 3)), idleTimeout: .seconds(30), priority: PrioritySettings(bulkReserve: 1))
        let target = DeliveryTarget(host: "mx.x.test", address: "192.0.2.1", port: 25)
        let route = SessionRoute(sendingIP: "127.0.0.10", heloName: "a.test", target: target)
        func request(_ p: MessagePriority) -> Ledger.CheckoutRequest { Ledger.CheckoutRequest(route: route, requireTLS: false, priority: p) }
        func isOpen(_ d: Ledger.Decision) -> Bool { if case .open = d { return true } else { return false } }
        func isWait(_ d: Ledger.Decision) -> Bool { if case .wait = d { return true } else { return false } }
        let later = t0 + .seconds(10)
        // Two bulk sessions take the two slots bulk may use; the third waits.
        let a = l.checkout(request(.bulk), now: t0, deadline: later)
        let b = l.checkout(request(.bulk), now: t0, deadline: later)
        #expect(isOpen(a.decision) && isOpen(b.decision))
        #expect(isWait(l.checkout(request(.bulk), now: t0, deadline: later).decision))
        #expect(!l.mayCheckout(request(.bulk)) && l.mayCheckout(request(.transactional)))
        // The reserved slot goes to transactional mail.
        let t = l.checkout(request(.transactional), now: t0, deadline: later)
        #expect(isOpen(t.decision))
        let key = l.key(sendingIP: "127.0.0.10", mxHost: "mx.x.test").0
        // The transactional session goes idle: bulk may not reuse it while two bulk sessions are busy.
        let kept = l.checkin(3, route: route, key: key, hasTLS: false, keepable: true, now: t0)
        #expect(kept)
        #expect(l.busyConnections(key) == 2)
        #expect(isWait(l.checkout(request(.bulk), now: t0, deadline: later).decision))
        // Past the deadline a bulk request is unavailable with a reason naming the reserve.
        if case .unavailable(let why) = l.checkout(request(.bulk), now: later, deadline: later).decision {
            #expect(why.contains("transactional"))
        } else { Issue.record("expected unavailable") }
        // One bulk session ends: bulk may reuse the idle session now.
        l.release(key)
        if case .reuse(let s) = l.checkout(request(.bulk), now: t0, deadline: later).decision { #expect(s == 3) } else { Issue.record("expected reuse") }
        // A pair limited to one connection keeps no reserve (bulk could never send).
        var one = Ledger(shaping: ShapingSettings(defaults: ShapingLimits(maxConnections: 1)), idleTimeout: .zero, priority: PrioritySettings(bulkReserve: 1))
        let only = one.checkout(request(.bulk), now: t0, deadline: later)
        #expect(isOpen(only.decision))
    }
}
