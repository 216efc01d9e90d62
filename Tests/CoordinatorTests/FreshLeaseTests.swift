import Foundation
import HatoTestKit
import Testing
@testable import ClusterProtocol
@testable import HatoConfig
@testable import HatoCoordinator
@testable import HatoCrypto
@testable import HatoSupport
@testable import SMTPCore

/// Issue 19's light-load latency: new mail leased from its inserted rows while its commit runs
/// (`SQLiteQueueStore.observeInsertedRecipients`, `Scheduler.leaseFresh`).
@Suite("Leasing new mail from its inserted rows")
struct FreshLeaseTests {
    /// Collects what the store reports inserted.
    final class Inserted: @unchecked Sendable {
        private let rows = Locked<[[DueRecipient]]>([])
        func add(_ r: [DueRecipient]) { rows.withLock { $0.append(r) } }
        /// The rows of batches reported since the last call.
        func take() -> [DueRecipient] { rows.withLock { r in defer { r = [] }; return r.flatMap { $0 } } }
    }

    func driver() throws -> (SchedulerDriver, Inserted) {
        let d = try SchedulerDriver(yaml: SchedulerCoreTests.yaml)
        let inserted = Inserted()
        let store = try #require(d.store as? SQLiteQueueStore)
        store.observeInsertedRecipients { inserted.add($0); return false }
        d.join("node-a", 1, bindable: ["127.0.0.10", "127.0.0.20", "127.0.0.21"])
        d.join("node-b", 2, bindable: ["127.0.0.11", "127.0.0.20", "127.0.0.21"])
        return (d, inserted)
    }

    func leaseFresh(_ d: SchedulerDriver, _ rows: [DueRecipient]) throws -> [Scheduler.Directive] {
        try d.scheduler.leaseFresh(rows, now: d.now, queue: d.store, canSend: { !d.backedUp.contains($0) })
    }

    func grantedIDs(_ d: SchedulerDriver) -> Set<Int64> {
        Set(d.granted.values.flatMap { $0.flatMap(\.recipientIDs) })
    }

    @Test("new mail is leased from its rows only once a round found nothing else due; a round that left mail behind turns that off until one drains the queue")
    func onlyWhenDrained() throws {
        let (d, inserted) = try driver()
        try d.enqueue(1)
        let first = inserted.take()
        #expect(first.count == 1)
        #expect(try leaseFresh(d, first).isEmpty, "no round has read the queue yet")
        d.tick()
        #expect(grantedIDs(d) == Set(first.map(\.id)))
        #expect(d.scheduler.queueDrained)

        try d.enqueue(2)
        let second = inserted.take()
        #expect(second.count == 2)
        let directives = try leaseFresh(d, second)
        #expect(directives.contains { if case .grant = $0 { true } else { false } })
        d.perform(directives)
        #expect(grantedIDs(d) == Set((first + second).map(\.id)))
        #expect(try d.store.countsByState()[.leased] == 3)
        #expect(d.scheduler.lastDueCount <= Scheduler.freshLeaseMaximumRows)

        // A bigger batch (a load building up) waits for the next round's due query.
        try d.enqueue(Scheduler.freshLeaseMaximumRows + 1)
        let burst = inserted.take()
        #expect(try leaseFresh(d, burst).isEmpty)
        d.tick()
        #expect(grantedIDs(d).isSuperset(of: burst.map(\.id)))
        #expect(d.scheduler.queueDrained)

        // Both nodes stop reading: the round leases nothing and leaves mail due.
        d.backedUp = ["node-a", "node-b"]
        try d.enqueue(1)
        d.tick()
        #expect(!d.scheduler.queueDrained)
        let third = inserted.take()
        d.backedUp = []
        try d.enqueue(1)
        let fourth = inserted.take()
        #expect(try leaseFresh(d, fourth).isEmpty, "older mail waits: the new message must not pass it")
        d.tick()
        #expect(grantedIDs(d).isSuperset(of: (third + fourth).map(\.id)))
        #expect(d.scheduler.queueDrained)
    }

    @Test("a new row of a pool no IP can take now is not leased, and the next new mail does not pass it")
    func rowOfAnUnservedPoolWaits() throws {
        let (d, inserted) = try driver()
        d.tick()
        try d.enqueue(1)
        var rows = inserted.take()
        #expect(rows.count == 1)
        var stranger = rows[0]
        stranger.id = rows[0].id + 1000
        stranger.pool = "nowhere"
        rows.append(stranger)
        let directives = try leaseFresh(d, rows)
        d.perform(directives)
        #expect(grantedIDs(d) == [rows[0].id], "the served pool's row goes")
        #expect(!d.scheduler.queueDrained)
    }

    @Test("the rules of a round hold for new mail: a paused pool's new mail is not leased from its rows")
    func rulesApply() throws {
        let (d, inserted) = try driver()
        d.tick()
        #expect(d.scheduler.queueDrained, "an empty queue is drained")
        d.perform(d.scheduler.paused(Pause(target: PauseTarget(kind: .pool, name: "t"), by: "ops", reason: "maintenance", at: 0)))
        try d.enqueue(1)
        let rows = inserted.take()
        let directives = try leaseFresh(d, rows)
        #expect(!directives.contains { if case .grant = $0 { true } else { false } })
        d.perform(directives)
        #expect(grantedIDs(d).isEmpty)
        #expect(try d.store.countsByState()[.queued] == 1)
        #expect(!d.scheduler.queueDrained, "the paused mail waits: the next new mail must not pass it")
    }

    @Test("a row planned from inserted rows that a round meanwhile leased, tried and deferred is not leased again before its retry time")
    func deferredMeanwhileWaits() throws {
        let (d, inserted) = try driver()
        d.tick()
        try d.enqueue(1)
        let rows = inserted.take()
        // A round (its due query saw the committed rows) leases it first; the node defers it.
        d.tick()
        #expect(grantedIDs(d) == Set(rows.map(\.id)))
        d.reportAll(1, status: .deferred, code: 451)
        d.reportAll(2, status: .deferred, code: 451)
        #expect(try d.store.countsByState()[.deferred] == 1)
        // Then the inserted rows reach the scheduler.
        d.perform(try leaseFresh(d, rows))
        #expect(try d.store.countsByState()[.deferred] == 1, "the retry waits for its time (60 s)")
        #expect(try d.store.countsByState()[.leased] ?? 0 == 0)
    }

    @Test("the store reports new recipients as the due query returns them, before their commit is visible")
    func insertedRowsMatchTheDueQuery() throws {
        let place = try TestStore(.sqlite)
        let q = try #require(try place.open() as? SQLiteQueueStore)
        let other = try SQLiteDatabase(path: q.path)
        let inserted = Inserted()
        let visibleThen = Locked<[Int64]>([])
        q.observeInsertedRecipients { rows in
            inserted.add(rows)
            // Another connection still reads the queue as it was before this batch.
            visibleThen.withLock { $0 = (try? other.prepare("SELECT count(*) FROM recipients").query { $0.int(0) }) ?? [-1] }
            return false
        }
        let t0 = Date(timeIntervalSince1970: 2_000_000_000)
        var m = NewMessage(id: "M1", reversePath: "s@example.org", recipients: ["a@x.test", "b@y.test"], pool: "p1",
                           content: Array("Subject: x\r\n\r\nbody\r\n".utf8), heloName: "c", clientAddress: "127.0.0.1", receivedAt: t0)
        m.priority = .bulk
        try q.enqueue(m)
        let rows = inserted.take()
        #expect(visibleThen.snapshot == [0])
        let due = try q.dueRecipients(pools: ["p1"], now: t0, limit: 10)
        #expect(rows.sorted { $0.id < $1.id } == due.sorted { $0.id < $1.id })
        #expect(rows.map(\.priority) == [.bulk, .bulk])
    }

    @Test("a lease for a row id under another message takes nothing (rows seen before a commit that failed, the id reused)")
    func staleRowsTakeNothing() throws {
        let place = try TestStore(.sqlite)
        let q = try #require(try place.open() as? SQLiteQueueStore)
        let t0 = Date(timeIntervalSince1970: 2_000_000_000)
        try q.enqueue(NewMessage(id: "M2", reversePath: "s@example.org", recipients: ["a@x.test"], pool: "p1",
                                 content: Array("Subject: x\r\n\r\nbody\r\n".utf8), heloName: "c", clientAddress: "127.0.0.1", receivedAt: t0))
        let row = try #require(try q.dueRecipients(pools: ["p1"], now: t0, limit: 1).first)
        let stale = LeaseRecord(id: "L1", node: "node-a", instance: "i1", sendingIP: "127.0.0.10", messageID: "M1", domain: "x.test",
                                recipientIDs: [row.id], grantedAt: t0, expiresAt: t0 + 60)
        #expect(try q.recordLeases([stale], countAttemptsOnDay: nil).isEmpty)
        #expect(try q.countsByState()[.queued] == 1)
        let right = LeaseRecord(id: "L2", node: "node-a", instance: "i1", sendingIP: "127.0.0.10", messageID: "M2", domain: "x.test",
                                recipientIDs: [row.id], grantedAt: t0, expiresAt: t0 + 60)
        #expect(try q.recordLeases([right], countAttemptsOnDay: nil).map(\.recipientIDs) == [[row.id]])
    }
}
