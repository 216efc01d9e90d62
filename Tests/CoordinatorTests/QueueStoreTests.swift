import Foundation
import HatoTestKit
import Testing
@testable import ClusterProtocol
@testable import HatoCoordinator
@testable import HatoCrypto
@testable import SMTPCore
@testable import HatoSupport

@Suite("Queue store")
struct QueueStoreTests {
    let retry = RetryPolicy(schedule: [60, 600], maxAge: 3600)
    let t0 = Date(timeIntervalSince1970: 2_000_000_000)

    func message(_ id: String, _ rcpts: [String]) -> NewMessage {
        NewMessage(id: id, reversePath: "s@example.org", recipients: rcpts, pool: "t", content: Array("Subject: x\r\n\r\nbody\r\n".utf8),
                   heloName: "c", clientAddress: "127.0.0.1", receivedAt: t0)
    }

    func lease(_ id: String, _ msg: String, _ rids: [Int64], node: String = "node-a", instance: String = "i1", at: Date) -> LeaseRecord {
        LeaseRecord(id: id, node: node, instance: instance, sendingIP: "127.0.0.10", messageID: msg, domain: "x.test",
                    recipientIDs: rids, grantedAt: at, expiresAt: at + 300)
    }

    func result(_ lease: String, _ outcomes: [(Int64, RecipientResult.Status, Int)]) -> ResultMessage {
        ResultMessage(leaseID: lease, instanceID: "i1", sendingIP: "127.0.0.10", mxHost: "mx.x.test", remoteAddress: "127.0.0.1",
                      outcomes: outcomes.map { RecipientResult(recipientID: $0.0, status: $0.1, reply: DeliveryStatus(code: $0.2, enhanced: nil, text: "t")) }, finishedAt: 0)
    }

    @Test("enqueue → due → lease → delivered, and the body is purged when every recipient is final", arguments: StoreKind.allCases)
    func lifecycle(kind: StoreKind) throws {
        let place = try TestStore(kind)
        let q = try place.open()
        try q.enqueue(message("M1", ["a@x.test", "b@x.test"]))
        let due = try q.dueRecipients(pools: ["t"], now: t0, limit: 10)
        #expect(due.map(\.address) == ["a@x.test", "b@x.test"])
        #expect(try q.dueRecipients(pools: ["other"], now: t0, limit: 10).isEmpty)
        let granted = try q.recordLeases([lease("L1", "M1", due.map(\.id), at: t0)])
        #expect(granted.first?.recipientIDs == due.map(\.id))
        #expect(try q.dueRecipients(pools: ["t"], now: t0, limit: 10).isEmpty)
        #expect(try q.countsByState()[.leased] == 2)
        let app = try q.applyResult(result("L1", [(due[0].id, .delivered, 250), (due[1].id, .failed, 550)]), node: "node-a", retry: retry, now: t0 + 1)
        #expect(app == ResultApplication(applied: 2, ignored: 0, leaseKnown: true))
        let counts = try q.countsByState()
        #expect(counts[.delivered] == 1 && counts[.failed] == 1 && counts[.leased] == 0)
        #expect(try q.content(of: "M1") == nil)
        // A duplicate report changes nothing.
        let again = try q.applyResult(result("L1", [(due[0].id, .delivered, 250)]), node: "node-a", retry: retry, now: t0 + 2)
        #expect(again == ResultApplication(applied: 0, ignored: 1, leaseKnown: false))
    }

    @Test("a queue file of an earlier build (a lease index of every recipient, a leases table with rowids) gets the partial index and a WITHOUT ROWID table on opening; the lease in flight is kept and its result applies")
    func leaseSchemaMigrated() throws {
        let dir = NSTemporaryDirectory() + "hato-q-" + Identifier.random(bytes: 5)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/queue.db"
        func schema(_ name: String) throws -> String {
            try SQLiteDatabase(path: path).prepare("SELECT sql FROM sqlite_master WHERE name=?").query([.text(name)]) { $0.text(0) }.first ?? ""
        }
        var due: [DueRecipient] = []
        do {
            let q = try SQLiteQueueStore(directory: dir)
            #expect(try schema("recipients_lease").contains("WHERE lease_id IS NOT NULL"), "a new file has the partial index")
            #expect(try schema("leases").contains("WITHOUT ROWID"))
            try q.enqueue(message("M1", ["a@x.test", "b@x.test"]))
            due = try q.dueRecipients(pools: ["t"], now: t0, limit: 10)
            _ = try q.recordLeases([lease("L1", "M1", due.map(\.id), at: t0)])
            // Back to the earlier build's schema, the lease row copied over.
            try q.db.execute("""
                DROP INDEX recipients_lease;
                CREATE INDEX recipients_lease ON recipients(lease_id);
                CREATE TABLE leases_old(
                  id TEXT PRIMARY KEY, node TEXT NOT NULL, instance TEXT NOT NULL, ip TEXT NOT NULL,
                  message_id TEXT NOT NULL, domain TEXT NOT NULL, granted_at REAL NOT NULL, expires_at REAL NOT NULL);
                INSERT INTO leases_old SELECT * FROM leases;
                DROP TABLE leases;
                ALTER TABLE leases_old RENAME TO leases;
                CREATE INDEX leases_expiry ON leases(expires_at);
                """)
        }
        #expect(try schema("leases").contains("WITHOUT ROWID") == false)
        #expect(try schema("recipients_lease").contains("WHERE") == false)
        let q = try SQLiteQueueStore(directory: dir)
        #expect(try schema("recipients_lease").contains("WHERE lease_id IS NOT NULL"))
        #expect(try schema("leases").contains("WITHOUT ROWID"))
        #expect(try schema("leases_expiry").contains("expires_at"))
        let kept = try q.allLeases()
        #expect(kept.map(\.id) == ["L1"])
        #expect(kept.first?.recipientIDs.sorted() == due.map(\.id).sorted())
        #expect(kept.first?.grantedAt == t0 && kept.first?.expiresAt == t0 + 300)
        // The lookups by lease id use the partial index.
        let plan = try q.db.prepare("EXPLAIN QUERY PLAN SELECT id FROM recipients WHERE lease_id=?").query([.text("L1")]) { $0.text(3) }
        #expect(plan.joined().contains("recipients_lease"), "\(plan)")
        // The delivery events' trigger still reads the lease's grant time from the new table.
        try q.installReportingSchema()
        let app = try q.applyResult(result("L1", [(due[0].id, .delivered, 250), (due[1].id, .delivered, 250)]), node: "node-a", retry: retry, now: t0 + 1)
        #expect(app == ResultApplication(applied: 2, ignored: 0, leaseKnown: true))
        let events = try q.pendingEvents(limit: 10).filter { $0.kind == .delivered }
        #expect(events.count == 2)
        #expect(events.allSatisfy { $0.leaseGrantedAt == t0 })
        #expect(try q.allLeases().isEmpty)
        #expect(try q.db.prepare("SELECT count(*) FROM recipients INDEXED BY recipients_lease WHERE lease_id IS NOT NULL").query { $0.int(0) } == [0])
        // Opening it again changes nothing.
        _ = try SQLiteQueueStore(directory: dir)
        #expect(try schema("leases").contains("WITHOUT ROWID"))
    }

    @Test("a delivered body's pages are still in the page cache when it is dropped, after 4 MiB more mail was queued: its overflow chain is not read back")
    func purgeReadsNoPagesBack() throws {
        let dir = NSTemporaryDirectory() + "hato-page-cache-" + Identifier.random(bytes: 5)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Every body in its row (bodies from 32 KiB go to the spool by default; smaller ones,
        // and queues from before the spool, still free overflow pages).
        let q = try SQLiteQueueStore(directory: dir, spoolThreshold: .max)
        func big(_ id: String, _ octets: Int) -> NewMessage {
            var m = message(id, ["\(id.lowercased())@x.test"])
            m.content = Array("Subject: \(id)\r\n\r\n".utf8) + Array(repeating: 0x61, count: octets)
            return m
        }
        try q.enqueue(big("M0", 256 * 1024))
        // A stream of 100 KiB messages behind it: twice SQLite's default page cache of 2000 KiB.
        for i in 1...40 { try q.enqueue(big("M\(i)", 100 * 1024)) }
        let due = try #require(try q.dueRecipients(pools: ["t"], now: t0, limit: 100).first { $0.messageID == "M0" })
        _ = try q.recordLeases([lease("L0", "M0", [due.id], at: t0)])
        let before = q.cacheMissesForTests
        _ = try q.applyResult(result("L0", [(due.id, .delivered, 250)]), node: "node-a", retry: retry, now: t0 + 1)
        let misses = q.cacheMissesForTests - before
        #expect(try q.content(of: "M0") == nil, "the body was dropped")
        // 256 KiB is 64 overflow pages of 4 KiB: all still cached (a few pages of the tables may not be).
        #expect(misses < 8, "\(misses) pages read back from the file")
    }

    @Test("results committed without an fsync of their own are durable with the next synced commit of queued mail; with none within the wait, with one of their own")
    func resultsRideTheNextSync() throws {
        let dir = NSTemporaryDirectory() + "hato-results-sync-" + Identifier.random(bytes: 5)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let q = try SQLiteQueueStore(directory: dir)
        q.setSyncsExpectedWithinForTests(.seconds(600))  // mail commits count as coming (the test's pace is not the point)
        try q.enqueue([message("M1", ["a@x.test"]), message("M2", ["b@x.test"]), message("M4", ["d@x.test"])])
        let due = try q.dueRecipients(pools: ["t"], now: t0, limit: 10)
        _ = try q.recordLeases([lease("L1", "M1", [due[0].id], at: t0), lease("L2", "M2", [due[1].id], at: t0),
                                lease("L4", "M4", [due[2].id], at: t0)])
        let before = q.durableCommitsForTests
        let (apps, mark) = try q.applyResultsUnsynced([(result("L1", [(due[0].id, .delivered, 250)]), "node-a")], retry: retry, now: t0 + 1)
        #expect(apps == [ResultApplication(applied: 1, ignored: 0, leaseKnown: true)])
        #expect(mark == q.commitsForTests && mark > before, "the mark is the results' own commit")
        #expect(q.durableCommitsForTests == before, "the results' commit did not sync")
        // Mail queued meanwhile syncs the WAL: the wait ends with it, without a commit of its own.
        let third = message("M3", ["c@x.test"])
        let queued = Locked(false)
        Thread.detachNewThread {
            usleep(50_000)
            try? q.enqueue(third)
            queued.withLock { $0 = true }
        }
        let started = ContinuousClock.now
        try q.awaitSync(after: mark, wait: .seconds(20))
        #expect(ContinuousClock.now - started < .seconds(10))
        let deadline = ContinuousClock.now + .seconds(10)
        while !queued.snapshot && ContinuousClock.now < deadline { usleep(1000) }
        #expect(queued.snapshot, "the mail was queued")
        #expect(q.durableCommitsForTests == mark + 1, "the mail's commit (the next one) synced both")
        #expect(try q.db.prepare("SELECT count(*) FROM sqlite_master WHERE name='wal_sync_marks'").query { $0.int(0) } == [0])
        // Nothing else commits: after the wait, a synced commit of its own.
        let (_, mark2) = try q.applyResultsUnsynced([(result("L2", [(due[1].id, .delivered, 250)]), "node-a")], retry: retry, now: t0 + 2)
        // A synced commit that changed nothing wrote and synced nothing: it does not count.
        #expect(try q.requeueExpiredLeases(now: t0).isEmpty)
        #expect(q.durableCommitsForTests == mark2 - 1 && q.commitsForTests == mark2)
        let waited = ContinuousClock.now
        try q.awaitSync(after: mark2, wait: .milliseconds(30))
        #expect(ContinuousClock.now - waited >= .milliseconds(30))
        // Two: creating the marks table (the first time: a synced write of its own, as every
        // write outside a transaction is) and the mark's commit.
        #expect(q.durableCommitsForTests == mark2 + 2 && q.commitsForTests == mark2 + 2)
        #expect(try q.db.prepare("SELECT mark FROM wal_sync_marks").query { $0.int(0) } == [Int64(mark2)])
        #expect(try q.countsByState()[.delivered] == 2)
        // No other synced commit lately (a backlog drained, no mail coming in): no wait at all.
        q.setSyncsExpectedWithinForTests(.zero)
        let (_, mark3) = try q.applyResultsUnsynced([(result("L4", [(due[2].id, .delivered, 250)]), "node-a")], retry: retry, now: t0 + 3)
        let unwaited = ContinuousClock.now
        try q.awaitSync(after: mark3, wait: .seconds(30))
        #expect(ContinuousClock.now - unwaited < .seconds(10), "synced at once, not after the wait")
        #expect(q.durableCommitsForTests == mark3 + 1)
        #expect(try q.db.prepare("SELECT mark FROM wal_sync_marks").query { $0.int(0) } == [Int64(mark3)])
    }

    @Test("a deferral schedules the retry; it survives reopening the store (restart)", arguments: StoreKind.allCases)
    func deferralAndRestart(kind: StoreKind) throws {
        let place = try TestStore(kind)
        var q: (any QueueStore)? = try place.open()
        try q!.enqueue(message("M1", ["a@x.test"]))
        let r = try q!.dueRecipients(pools: ["t"], now: t0, limit: 10)[0]
        _ = try q!.recordLeases([lease("L1", "M1", [r.id], at: t0)])
        _ = try q!.applyResult(result("L1", [(r.id, .deferred, 451)]), node: "node-a", retry: retry, now: t0 + 5)
        q = nil
        let reopened = try place.open()
        #expect(try reopened.dueRecipients(pools: ["t"], now: t0 + 64, limit: 10).isEmpty)
        #expect(try reopened.dueRecipients(pools: ["t"], now: t0 + 65, limit: 10).map(\.id) == [r.id])
        #expect(try reopened.message(id: "M1")?.recipients.first?.attempts == 1)
        #expect(try reopened.content(of: "M1") == Array("Subject: x\r\n\r\nbody\r\n".utf8))
    }

    @Test("expired leases return to the queue; a late delivered report is still applied", arguments: StoreKind.allCases)
    func leaseExpiry(kind: StoreKind) throws {
        let place = try TestStore(kind)
        let q = try place.open()
        try q.enqueue(message("M1", ["a@x.test"]))
        let r = try q.dueRecipients(pools: ["t"], now: t0, limit: 10)[0]
        _ = try q.recordLeases([lease("L1", "M1", [r.id], at: t0)])
        #expect(try q.requeueExpiredLeases(now: t0 + 299).isEmpty)
        #expect(try q.requeueExpiredLeases(now: t0 + 300) == ["L1"])
        #expect(try q.countsByState()[.queued] == 1)
        // A late deferral for the expired lease must not disturb the queued recipient …
        let late = try q.applyResult(result("L1", [(r.id, .deferred, 451)]), node: "node-a", retry: retry, now: t0 + 301)
        #expect(late.applied == 0)
        #expect(try q.countsByState()[.queued] == 1)
        // … but a late delivery is final.
        _ = try q.applyResult(result("L1", [(r.id, .delivered, 250)]), node: "node-a", retry: retry, now: t0 + 302)
        #expect(try q.countsByState()[.delivered] == 1)
    }

    @Test("a batch of results applies as its reports one after the other: a duplicate, a recipient requeued then deferred by a later lease, one reported twice; events in report order",
          arguments: StoreKind.allCases)
    func resultBatchIsSequential(kind: StoreKind) throws {
        let place = try TestStore(kind)
        let q = try place.open()
        try q.installReportingSchema()
        try q.enqueue(message("M1", ["a@x.test", "b@x.test", "c@x.test", "d@x.test", "e@x.test"]))
        let r = try q.dueRecipients(pools: ["t"], now: t0, limit: 10).map(\.id)
        _ = try q.recordLeases([lease("L1", "M1", [r[0], r[1]], at: t0), lease("L2", "M1", [r[2]], at: t0 + 1),
                                lease("L3", "M1", [r[3]], at: t0 + 2), lease("L4", "M1", [r[4]], at: t0 + 3)])
        var received = EventDisposition()
        received.processed = try q.pendingEvents(limit: 10).map(\.seq)
        try q.completeEvents(received, now: t0)
        let apps = try q.applyResults([
            (result("L1", [(r[0], .delivered, 250)]), "node-a"),                   // b not reported: back to the queue
            (result("L1", [(r[0], .delivered, 250), (r[1], .deferred, 451)]), "node-a"), // a duplicate: the lease is gone
            (result("L2", [(r[1], .deferred, 452), (r[2], .deferred, 453)]), "node-a"),  // b waiting and L2 known: deferred
            (result("L2", [(r[2], .delivered, 251)]), "node-a"),                   // c deferred, then delivered
            (result("L3", [(r[3], .failed, 550)]), "node-a"),
        ], retry: retry, now: t0 + 10)
        #expect(apps == [ResultApplication(applied: 1, ignored: 0, leaseKnown: true), ResultApplication(applied: 0, ignored: 2, leaseKnown: false),
                         ResultApplication(applied: 2, ignored: 0, leaseKnown: true), ResultApplication(applied: 1, ignored: 0, leaseKnown: false),
                         ResultApplication(applied: 1, ignored: 0, leaseKnown: true)])
        let rows = try #require(try q.message(id: "M1")).recipients
        #expect(rows.map(\.state) == [.delivered, .deferred, .delivered, .failed, .leased])
        #expect(rows.map(\.attempts) == [1, 1, 2, 1, 0])
        #expect(rows.map { $0.lastReply?.code.rawValue } == [250, 452, 251, 550, nil])
        #expect(rows[1].nextAttemptAt == (t0 + 70).timeIntervalSince1970)
        #expect(try q.allLeases().map(\.id) == ["L4"])
        #expect(try q.countsByState()[.leased] == 1)
        // One event per change of state, in the order of the reports; the lease's grant time only
        // while the recipient still held it (b was requeued by L1's report before L2 deferred it).
        let events = try q.pendingEvents(limit: 10)
        #expect(events.map(\.kind) == [.delivered, .deferred, .deferred, .delivered, .failed])
        #expect(events.map(\.recipientID) == [r[0], r[1], r[2], r[2], r[3]])
        #expect(events.map { $0.leaseGrantedAt?.timeIntervalSince1970 } == [t0.timeIntervalSince1970, nil, (t0 + 1).timeIntervalSince1970, nil,
                                                                          (t0 + 2).timeIntervalSince1970])
        #expect(events.map(\.reply?.code.rawValue) == [250, 452, 453, 251, 550])
        // The same batch again changes nothing.
        let again = try q.applyResults([(result("L1", [(r[0], .delivered, 250)]), "node-a"), (result("L3", [(r[3], .failed, 550)]), "node-a")],
                                       retry: retry, now: t0 + 20)
        #expect(again == [ResultApplication(applied: 0, ignored: 1, leaseKnown: false), ResultApplication(applied: 0, ignored: 1, leaseKnown: false)])
        #expect(try q.pendingEvents(limit: 10).count == 5)
    }

    @Test("leases of a previous node instance are requeued, the current instance's are kept", arguments: StoreKind.allCases)
    func instanceReconciliation(kind: StoreKind) throws {
        let place = try TestStore(kind)
        let q = try place.open()
        try q.enqueue(message("M1", ["a@x.test"]))
        try q.enqueue(message("M2", ["b@x.test"]))
        let due = try q.dueRecipients(pools: ["t"], now: t0, limit: 10)
        _ = try q.recordLeases([lease("L1", "M1", [due[0].id], instance: "old", at: t0), lease("L2", "M2", [due[1].id], instance: "new", at: t0)])
        #expect(try q.requeueLeases(node: "node-a", exceptInstance: "new", now: t0) == 1)
        #expect(try q.allLeases().map(\.id) == ["L2"])
        #expect(try q.countsByState()[.queued] == 1)
    }

    @Test("recipients older than max age expire", arguments: StoreKind.allCases)
    func maxAge(kind: StoreKind) throws {
        let place = try TestStore(kind)
        let q = try place.open()
        try q.enqueue(message("M1", ["a@x.test"]))
        #expect(try q.expireOld(maxAge: 3600, now: t0 + 3599) == 0)
        #expect(try q.expireOld(maxAge: 3600, now: t0 + 3600) == 1)
        #expect(try q.countsByState()[.expired] == 1)
        #expect(try q.content(of: "M1") == nil)
    }

    @Test("group commit: 64 concurrent submissions are all stored, in fewer transactions than messages", arguments: StoreKind.allCases)
    func groupCommit(kind: StoreKind) throws {
        let place = try TestStore(kind)
        let q = try place.open()
        let group = DispatchGroup()
        let errors = NSLock()
        nonisolated(unsafe) var failures = 0
        for i in 0..<64 {
            group.enter()
            Thread.detachNewThread {
                do { try q.enqueue(message("G\(i)", ["u\(i)@x.test"])) } catch { errors.withLock { failures += 1 } }
                group.leave()
            }
        }
        #expect(group.wait(timeout: .now() + 30) == .success)
        #expect(errors.withLock { failures } == 0)
        #expect(try q.countsByState()[.queued] == 64)
        let batches = TestStore.batchesCommitted(q)
        print("group commit: 64 messages in \(batches) transactions")
        #expect(batches >= 1 && batches < 64, "concurrent messages share transactions")
    }

    @Test("active backoffs survive reopening the queue; expired ones are dropped; a lifted one is gone", arguments: StoreKind.allCases)
    func backoffPersistence(kind: StoreKind) throws {
        let place = try TestStore(kind)
        var q: (any QueueStore)? = try place.open()
        try q!.saveBackoff(BackoffTable.Entry(sendingIP: "127.0.0.10", provider: "gmail", action: .suspend, until: t0.timeIntervalSince1970 + 600, ratePerMinute: nil, reason: "421 4.7.0 try again later"))
        try q!.saveBackoff(BackoffTable.Entry(sendingIP: "127.0.0.11", provider: "yahoo", action: .throttle, until: t0.timeIntervalSince1970 + 60, ratePerMinute: 5, reason: "rate"))
        try q!.saveBackoff(BackoffTable.Entry(sendingIP: "127.0.0.12", provider: "outlook", action: .suspend, until: t0.timeIntervalSince1970 + 60, ratePerMinute: nil, reason: "x"))
        try q!.deleteBackoff(ip: "127.0.0.12", provider: "outlook")
        q = nil
        let reopened = try place.open()
        let active = try reopened.activeBackoffs(now: t0.addingTimeInterval(120))
        #expect(active.map(\.sendingIP) == ["127.0.0.10"])
        var table = BackoffTable(entries: active)
        let admitted = table.admit(ip: "127.0.0.10", provider: "gmail", now: t0.addingTimeInterval(121))
        #expect(!admitted, "the suspension still holds after the restart")
        #expect(try reopened.activeBackoffs(now: t0.addingTimeInterval(700)).isEmpty)
    }
}

@Suite("Queue store: lease records without fsync, the lease horizon and the restart hold")
struct LeaseDurabilityTests {
    let dir = NSTemporaryDirectory() + "hato-run-" + Identifier.random(bytes: 5)
    let t0 = Date(timeIntervalSince1970: 2_000_000_000)

    func queued(_ q: any QueueStore, _ n: Int) throws -> [Int64] {
        for i in 0..<n {
            try q.enqueue(NewMessage(id: "M\(i)", reversePath: "s@example.org", recipients: ["r\(i)@x.test"], pool: "t",
                                     content: Array("Subject: x\r\n\r\nbody\r\n".utf8), heloName: "c", clientAddress: "127.0.0.1", receivedAt: t0))
        }
        return try q.dueRecipients(pools: ["t"], now: t0, limit: 100).map(\.id)
    }

    func lease(_ i: Int, _ rid: Int64, at: Date, for seconds: Double = 300) -> LeaseRecord {
        LeaseRecord(id: "L\(i)-\(rid)", node: "node-a", instance: "i1", sendingIP: "127.0.0.10", messageID: "M\(rid - 1)", domain: "x.test",
                    recipientIDs: [rid], grantedAt: at, expiresAt: at + seconds)
    }

    @Test("with a boot id: one synced commit moves the horizon, leases inside it commit without fsync, a later expiry syncs again")
    func horizon() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let q = try SQLiteQueueStore(directory: dir)
        let rids = try queued(q, 4)
        #expect(try q.beginRun(bootID: "boot-1", now: t0) == nil)
        _ = try q.recordLeases([lease(1, rids[0], at: t0)])
        #expect(q.lock.withLock { q.leaseCommits.synced == 1 && q.leaseCommits.unsynced == 0 })
        #expect(q.lock.withLock { q.leaseHorizon } == (t0 + 300).timeIntervalSince1970 + Queue.leaseHorizonSlack)
        _ = try q.recordLeases([lease(2, rids[1], at: t0 + 30)])
        _ = try q.recordLeases([lease(3, rids[2], at: t0 + 59)])
        #expect(q.lock.withLock { q.leaseCommits.synced == 1 && q.leaseCommits.unsynced == 2 })
        _ = try q.recordLeases([lease(4, rids[3], at: t0 + 61)])
        #expect(q.lock.withLock { q.leaseCommits.synced == 2 && q.leaseCommits.unsynced == 2 })
        #expect(try q.countsByState()[.leased] == 4)
    }

    @Test("without a boot id every lease commit is synced")
    func noBootID() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let q = try SQLiteQueueStore(directory: dir)
        let rids = try queued(q, 2)
        #expect(try q.beginRun(bootID: nil, now: t0) == nil)
        _ = try q.recordLeases([lease(1, rids[0], at: t0)])
        _ = try q.recordLeases([lease(2, rids[1], at: t0 + 1)])
        #expect(q.lock.withLock { q.leaseCommits.synced == 2 && q.leaseCommits.unsynced == 0 })
    }

    @Test("restart on the same boot after a crash: no hold; on a new boot after a crash: hold until the horizon; after a clean stop: no hold")
    func restartHold() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        do {
            let q = try SQLiteQueueStore(directory: dir)
            let rids = try queued(q, 1)
            _ = try q.beginRun(bootID: "boot-1", now: t0)
            _ = try q.recordLeases([lease(1, rids[0], at: t0)])
        }  // the process "crashes": no endRun
        let horizon = Date(timeIntervalSince1970: (t0 + 300).timeIntervalSince1970 + Queue.leaseHorizonSlack)
        #expect(try SQLiteQueueStore(directory: dir).beginRun(bootID: "boot-1", now: t0 + 10) == nil)
        // The same unclean state seen from a new boot (a kernel crash or power loss).
        #expect(try SQLiteQueueStore(directory: dir).beginRun(bootID: "boot-2", now: t0 + 20) == horizon)
        // Still unclean, and the boot changed again: the hold is over once the horizon passed.
        #expect(try SQLiteQueueStore(directory: dir).beginRun(bootID: "boot-3", now: horizon + 1) == nil)
        // Another new boot after an unclean stop holds again. The hold is stored: restarting
        // during it — after a crash on the same boot, or after a clean stop — keeps it.
        #expect(try SQLiteQueueStore(directory: dir).beginRun(bootID: "boot-5", now: t0 + 20) == horizon)
        #expect(try SQLiteQueueStore(directory: dir).beginRun(bootID: "boot-5", now: t0 + 21) == horizon)
        do {
            let q = try SQLiteQueueStore(directory: dir)
            #expect(try q.beginRun(bootID: "boot-5", now: t0 + 25) == horizon)
            try q.endRun()
        }
        #expect(try SQLiteQueueStore(directory: dir).beginRun(bootID: "boot-5", now: t0 + 26) == horizon)
        #expect(try SQLiteQueueStore(directory: dir).beginRun(bootID: "boot-6", now: horizon + 1) == nil)
        // A clean stop with a lease horizon ahead: a new boot does not hold.
        let q = try SQLiteQueueStore(directory: dir)
        _ = try q.beginRun(bootID: "boot-6", now: horizon + 2)
        let rids = try q.dueRecipients(pools: ["t"], now: horizon + 2, limit: 10).map(\.id)
        try q.enqueue(NewMessage(id: "M9", reversePath: "s@example.org", recipients: ["z@x.test"], pool: "t",
                                 content: Array("Subject: x\r\n\r\nbody\r\n".utf8), heloName: "c", clientAddress: "127.0.0.1", receivedAt: horizon))
        let m9 = try q.dueRecipients(pools: ["t"], now: horizon + 2, limit: 10).map(\.id).filter { !rids.contains($0) }
        _ = try q.recordLeases([LeaseRecord(id: "L9", node: "node-a", instance: "i1", sendingIP: "127.0.0.10", messageID: "M9", domain: "x.test",
                                            recipientIDs: m9, grantedAt: horizon + 2, expiresAt: horizon + 302)])
        try q.endRun()
        #expect(try SQLiteQueueStore(directory: dir).beginRun(bootID: "boot-7", now: horizon + 10) == nil)
    }

    @Test("the real boot id is read from the kernel")
    func bootID() {
        let id = Queue.currentBootID()
        #expect(id?.count == 36)
        #expect(id == Queue.currentBootID())
    }
}

@Suite("Queue store: WAL checkpoints in the background")
struct BackgroundCheckpointTests {
    let dir = NSTemporaryDirectory() + "hato-ckpt-" + Identifier.random(bytes: 5)

    @Test("the queue's connection no longer checkpoints; the thread does and starts the WAL over, so it stays far below what was written")
    func bounded() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let q = try SQLiteQueueStore(directory: dir)
        try q.startBackgroundCheckpoints(interval: 0.01, restartSize: 1 << 20)
        #expect(try q.lock.withLock { try q.db.prepare("PRAGMA wal_autocheckpoint").query { $0.int(0) } } == [0])
        let body = Array("Subject: x\r\n\r\n".utf8) + Array(repeating: UInt8(ascii: "y"), count: 16 * 1024) + [0x0D, 0x0A]
        for i in 0..<400 {
            try q.enqueue(NewMessage(id: "M\(i)", reversePath: "s@example.org", recipients: ["r@x.test"], pool: "t", content: body,
                                     heloName: "c", clientAddress: "127.0.0.1", receivedAt: Date()))
        }
        let written = 400 * body.count
        // Two more passes after the last commit: the WAL is below the restart size, or emptied.
        let seen = q.backgroundCheckpointCount
        let deadline = Date().addingTimeInterval(10)
        while q.backgroundCheckpointCount < seen + 2 && Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
        #expect(q.backgroundCheckpointCount >= seen + 2)
        #expect(q.walFileSize < 1 << 20, "WAL \(q.walFileSize) bytes after \(written) bytes of bodies")
        #expect(try q.countsByState()[.queued] == 400)
    }
}

extension BackgroundCheckpointTests {
    /// The WAL header's salts (octets 16..<24): SQLite draws new ones each time it starts the WAL over.
    func walSalts(_ q: SQLiteQueueStore) throws -> [UInt8] {
        let data = try Data(contentsOf: URL(fileURLWithPath: q.path + "-wal"))
        return Array(data[16..<24])
    }

    func message(_ id: String) -> NewMessage {
        NewMessage(id: id, reversePath: "s@example.org", recipients: ["r@x.test"], pool: "t", content: Array("Subject: x\r\n\r\nbody\r\n".utf8),
                   heloName: "c", clientAddress: "127.0.0.1", receivedAt: Date())
    }

    @Test("after a checkpoint that copied everything, the checkpointer starts the WAL over, not the next commit (whose fsync of the new header sat on the lease's path)")
    func restartOffTheCommitPath() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let q = try SQLiteQueueStore(directory: dir)
        try q.lock.withLock { try q.db.execute("PRAGMA wal_autocheckpoint=0") }
        let checkpointer = try SQLiteDatabase(path: q.path)
        try checkpointer.execute("PRAGMA busy_timeout=100")
        for i in 0..<5 { try q.enqueue(message("A\(i)")) }

        // What SQLite does on its own: after a passive checkpoint copied every frame, the next
        // commit starts the WAL over (new salts, and an fsync of the new header in that commit).
        try checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
        let beforeCommit = try walSalts(q)
        try q.enqueue(message("B0"))
        let afterCommit = try walSalts(q)
        #expect(afterCommit != beforeCommit)

        // A pass of the checkpoint thread starts it over itself; the next commit only appends.
        var memory = SQLiteQueueStore.CheckpointMemory()
        try q.checkpointPass(checkpointer, restartSize: 1 << 30, memory: &memory)
        #expect(memory.restarts == 1)
        let afterPass = try walSalts(q)
        #expect(afterPass != afterCommit)
        try q.enqueue(message("B1"))
        #expect(try walSalts(q) == afterPass)

        // Nothing committed since a complete pass: the next pass does nothing (an idle queue
        // is not checkpointed, nor its WAL started over, four times a second).
        try q.checkpointPass(checkpointer, restartSize: 1 << 30, memory: &memory)
        #expect(memory.restarts == 2)
        let idleSalts = try walSalts(q)
        try q.checkpointPass(checkpointer, restartSize: 1 << 30, memory: &memory)
        #expect(memory.idlePasses == 1)
        #expect(memory.restarts == 2)
        #expect(try walSalts(q) == idleSalts)
        // The rewritten user_version is the one it was; the queue is whole.
        #expect(try checkpointer.prepare("PRAGMA user_version").query { $0.int(0) } == [0])
        #expect(try q.countsByState()[.queued] == 7)
    }
}

/// What issue 19's profile changed in the store's hot statements, checked for their results.
@Suite("Queue store: hot statements")
struct QueueStoreHotPathTests {
    let t0 = Date(timeIntervalSince1970: 2_000_000_000)

    func message(_ id: String, _ rcpts: [String], pool: String) -> NewMessage {
        NewMessage(id: id, reversePath: "s@example.org", recipients: rcpts, pool: pool, content: Array("Subject: x\r\n\r\nbody\r\n".utf8),
                   heloName: "c", clientAddress: "127.0.0.1", receivedAt: t0)
    }

    @Test("the due query is compiled once: running it for queued and deferred, transactional and bulk rows never compiles it again")
    func dueQueryNotRecompiled() throws {
        let dir = NSTemporaryDirectory() + "hato-due-" + Identifier.random(bytes: 5)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let q = try SQLiteQueueStore(directory: dir)
        try q.enqueue(message("M1", ["a@x.test"], pool: "p1"))
        var bulk = message("M2", ["b@x.test"], pool: "p1")
        bulk.priority = .bulk
        try q.enqueue(bulk)
        for round in 0..<6 {
            let due = try q.dueRecipients(pools: ["p1"], now: t0.addingTimeInterval(Double(round)), limit: 10)
            #expect(due.map(\.address) == ["a@x.test", "b@x.test"])
        }
        let statements = q.lock.withLock { q.db.cachedStatements(containing: "INDEXED BY recipients_due_priority") }
        #expect(statements.count == 4)
        // A bound state compared with the partial index recipients_waiting_state made SQLite
        // compile the statement again at every run alternating the value: 24 times in these rounds.
        #expect(statements.map(\.reprepareCount).reduce(0, +) == 0)
    }

    @Test("lease and result rounds compile nothing again, and each synced commit that wrote syncs the WAL once")
    func unsyncedRoundsCompileNothing() throws {
        let dir = NSTemporaryDirectory() + "hato-sync-" + Identifier.random(bytes: 5)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let q = try SQLiteQueueStore(directory: dir)
        let syncsAtOpen = q.lock.withLock { q.db.walSyncsIssued }
        // (Opening compiles a few schema queries again after its ALTER TABLEs: not counted.)
        let compiledAtOpen = Dictionary(q.lock.withLock { q.db.cachedStatements(containing: "") }.map { ($0.sql, $0.reprepareCount) },
                                        uniquingKeysWith: { a, _ in a })
        for i in 0..<3 { try q.enqueue(message("M\(i)", ["r\(i)@x.test"], pool: "p1")) }
        #expect(q.lock.withLock { q.db.walSyncsIssued } == syncsAtOpen + 3, "one WAL sync per queued message (each its own batch here)")
        #expect(q.durableCommitsForTests >= 3 && q.durableCommitsForTests == q.commitsForTests)
        for round in 0..<3 {
            let due = try q.dueRecipients(pools: ["p1"], now: t0, limit: 10)
            let lease = LeaseRecord(id: "L\(round)", node: "node-a", instance: "i1", sendingIP: "127.0.0.10", messageID: due[0].messageID,
                                    domain: due[0].domain, recipientIDs: [due[0].id], grantedAt: t0, expiresAt: t0 + 300)
            #expect(try q.recordLeases([lease], countAttemptsOnDay: nil).count == 1)
            let result = ResultMessage(leaseID: lease.id, instanceID: "i1", sendingIP: "127.0.0.10", mxHost: "mx.x.test", remoteAddress: "127.0.0.1",
                                       outcomes: [RecipientResult(recipientID: due[0].id, status: .delivered,
                                                                  reply: DeliveryStatus(code: 250, enhanced: "2.0.0", text: "ok"))], finishedAt: 0)
            _ = try q.applyResultsUnsynced([(result: result, node: "node-a")], retry: RetryPolicy(schedule: [60], maxAge: 3600), now: t0)
        }
        #expect(try q.countsByState()[.queued] ?? 0 == 0)
        // Before, each unsynced round set PRAGMA synchronous=NORMAL and FULL again: SQLite
        // compiles that pragma anew at every run (12 recompilations in these three rounds).
        let all = q.lock.withLock { q.db.cachedStatements(containing: "") }
        #expect(all.count > 10)
        let recompiled = all.filter { $0.reprepareCount > (compiledAtOpen[$0.sql] ?? 0) }.map(\.sql)
        #expect(recompiled == [])
        #expect(try q.lock.withLock { try q.db.prepare("PRAGMA synchronous").query { $0.int(0) } } == [1], "the connection stays at NORMAL")
        // The unsynced commits issued no sync; a synced one does, one that wrote nothing does not.
        let before = q.lock.withLock { q.db.walSyncsIssued }
        try q.lock.withLock { try q.db.transaction { try q.db.execute("UPDATE messages SET size=size WHERE id='none'") } }
        #expect(q.lock.withLock { q.db.walSyncsIssued } == before)
        try q.lock.withLock { try q.db.transaction { try q.db.execute("UPDATE messages SET size=size+1 WHERE id='M0'") } }
        #expect(q.lock.withLock { q.db.walSyncsIssued } == before + 1)
        // A write outside any transaction (an operator's pause, a backoff) is synced as FULL did;
        // a read is not; nor is an unsynced transaction.
        try q.savePause(Pause(target: PauseTarget(kind: .pool, name: "p1"), by: "ops", reason: "test", at: 0))
        #expect(q.lock.withLock { q.db.walSyncsIssued } >= before + 2)  // (its table may be created first: one more)
        let afterPause = q.lock.withLock { q.db.walSyncsIssued }
        try q.savePause(Pause(target: PauseTarget(kind: .pool, name: "p1"), by: "ops", reason: "again", at: 1))
        #expect(q.lock.withLock { q.db.walSyncsIssued } == afterPause + 1)
        _ = try q.countsByState()
        try q.lock.withLock { try q.db.transaction(durability: .processCrashSafe) { try q.db.execute("UPDATE messages SET size=size+1 WHERE id='M1'") } }
        #expect(q.lock.withLock { q.db.walSyncsIssued } == afterPause + 1)
    }

    @Test("the due query takes recipients of every pool asked for and none of the others", arguments: StoreKind.allCases)
    func dueOverSeveralPools(kind: StoreKind) throws {
        let place = try TestStore(kind)
        let q = try place.open()
        try q.enqueue(message("M1", ["a@x.test"], pool: "p1"))
        try q.enqueue(message("M2", ["b@x.test"], pool: "p2"))
        try q.enqueue(message("M3", ["c@x.test"], pool: "p3"))
        #expect(Set(try q.dueRecipients(pools: ["p1", "p3"], now: t0, limit: 10).map(\.address)) == ["a@x.test", "c@x.test"])
        #expect(try q.dueRecipients(pools: ["p2"], now: t0, limit: 10).map(\.address) == ["b@x.test"])
        #expect(try q.dueRecipients(pools: ["p1", "p2", "p3"], now: t0, limit: 2).count == 2)
    }

    @Test("recording leases adds the granted recipients to the per-IP and per-provider warm-up counts in the same call; recipients no longer waiting add nothing",
          arguments: StoreKind.allCases)
    func leasesCountPerProvider(kind: StoreKind) throws {
        let place = try TestStore(kind)
        let q = try place.open()
        try q.enqueue(message("M1", ["a@gmail.test", "b@gmail.test", "c@other.test"], pool: "t"))
        let due = try q.dueRecipients(pools: ["t"], now: t0, limit: 10)
        let gmail = due.filter { $0.domain == "gmail.test" }.map(\.id), other = due.filter { $0.domain == "other.test" }.map(\.id)
        func lease(_ id: String, _ domain: String, _ rids: [Int64]) -> LeaseRecord {
            LeaseRecord(id: id, node: "node-a", instance: "i1", sendingIP: "127.0.0.10", messageID: "M1", domain: domain,
                        recipientIDs: rids, grantedAt: t0, expiresAt: t0 + 300)
        }
        let day = Queue.utcDay(t0)
        let providers = ["gmail.test": "gmail", "other.test": "other"]
        let granted = try q.recordLeases([lease("L1", "gmail.test", gmail), lease("L2", "other.test", other)], countAttemptsOnDay: day, providerOfDomain: providers)
        #expect(granted.count == 2)
        #expect(try q.dailyProviderAttempts(day: day) == ["127.0.0.10": ["gmail": 2, "other": 1]])
        #expect(try q.dailyAttempts(day: day) == ["127.0.0.10": 3])
        // The same recipients again (already leased): nothing granted, nothing counted.
        #expect(try q.recordLeases([lease("L3", "gmail.test", gmail)], countAttemptsOnDay: day, providerOfDomain: providers).isEmpty)
        #expect(try q.dailyProviderAttempts(day: day) == ["127.0.0.10": ["gmail": 2, "other": 1]])
    }

    @Test("a queue file whose waiting-recipients index an earlier build made with `state IN (…)` gets the OR form on opening, and queue counts still use it")
    func waitingIndexRebuilt() throws {
        let dir = NSTemporaryDirectory() + "hato-q-" + Identifier.random(bytes: 5)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        do {
            let q = try SQLiteQueueStore(directory: dir)
            try q.enqueue(message("M1", ["a@x.test", "b@x.test"], pool: "t"))
        }
        let path = dir + "/queue.db"
        do {
            let db = try SQLiteDatabase(path: path)
            try db.execute("""
                DROP INDEX recipients_waiting_state;
                CREATE INDEX recipients_waiting_state ON recipients(state) WHERE state IN ('queued','deferred','leased','held');
                """)
        }
        let q = try SQLiteQueueStore(directory: dir)
        let sql = try SQLiteDatabase(path: path).prepare("SELECT sql FROM sqlite_master WHERE name='recipients_waiting_state'").query { $0.text(0) }
        #expect(sql.count == 1)
        #expect(sql.first?.contains(" IN ") == false)
        #expect(sql.first?.contains("state='queued' OR state='deferred' OR state='leased' OR state='held'") == true)
        #expect(try q.waitingDomains() == ["x.test"])
        #expect(try q.countsByState()[.queued] == 2)
    }

    @Test("freeing a message's content writes no copy of it: secure_delete=FAST (Debian's SQLite zeroes every freed page by default), and the unused recipients_due index is gone")
    func freedContentNotRewritten() throws {
        let dir = NSTemporaryDirectory() + "hato-q-" + Identifier.random(bytes: 5)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        do {
            // A queue file of an earlier build, with recipients_due.
            let q = try SQLiteQueueStore(directory: dir)
            try q.db.execute("CREATE INDEX IF NOT EXISTS recipients_due ON recipients(state, next_attempt_at)")
        }
        // Every body in its row: from 32 KiB bodies go to the spool (BodySpoolTests), but smaller
        // ones and those of queues from before it are freed from overflow pages.
        let q = try SQLiteQueueStore(directory: dir, spoolThreshold: .max)
        #expect(try q.db.prepare("SELECT name FROM sqlite_master WHERE name='recipients_due'").query { $0.text(0) }.isEmpty)
        #expect(try q.db.prepare("PRAGMA secure_delete").query { $0.int(0) } == [2], "2 is FAST")
        var m = message("M1", ["a@x.test"], pool: "t")
        m.content = Array(repeating: 0x61, count: 400 * 1024)  // about 100 overflow pages
        try q.enqueue(m)
        try q.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        #expect(q.walFileSize == 0)
        try q.db.execute("UPDATE messages SET body=NULL WHERE id='M1'")
        // SECURE_DELETE on: every freed page zeroed into the WAL (> 400 KiB). FAST: the freelist
        // and the row's pages only.
        #expect(q.walFileSize < 64 * 1024, "WAL after freeing 400 KiB of content: \(q.walFileSize) octets")
    }
}
