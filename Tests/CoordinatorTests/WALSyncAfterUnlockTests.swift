import Foundation
import HatoTestKit
import Testing
@testable import ClusterProtocol
@testable import HatoCoordinator
@testable import HatoCrypto
@testable import SMTPCore
@testable import HatoSupport

/// Issue 19: a batch of new mail is committed under the queue's lock and synced after it is let
/// go (`SQLiteDatabase.transactionSyncingLater` / `completeSync`), so that leases and results
/// commit during its fsync; nothing is reported durable before a sync that began after it.
@Suite("Queue store: the WAL synced after the lock")
struct WALSyncAfterUnlockTests {
    let t0 = Date(timeIntervalSince1970: 2_000_000_000)
    let retry = RetryPolicy(schedule: [60, 600], maxAge: 3600)

    func message(_ id: String, _ rcpts: [String]) -> NewMessage {
        NewMessage(id: id, reversePath: "s@example.org", recipients: rcpts, pool: "t", content: Array("Subject: x\r\n\r\nbody\r\n".utf8),
                   heloName: "c", clientAddress: "127.0.0.1", receivedAt: t0)
    }

    func storeDirectory() -> String { NSTemporaryDirectory() + "hato-wal-after-" + Identifier.random(bytes: 5) }

    @Test("a commit whose sync is left to the caller is visible at once, a lease round commits before that sync without one of its own, the sync covers both and not a commit made after it began")
    func otherWritersCommitDuringTheSync() throws {
        let dir = storeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let q = try SQLiteQueueStore(directory: dir)
        try q.lock.withLock { try q.db.execute("CREATE TABLE wal_test(k TEXT)") }
        // Lease records skip their fsync within the durable lease horizon once the run knows its
        // boot id; the first lease round moves the horizon (a synced commit).
        _ = try q.beginRun(bootID: "wal-test-boot", now: t0)
        // The first batch is synced through SQLite's own handle (it syncs the WAL's directory
        // entry once) and opens the store's own descriptor of the WAL.
        try q.enqueue([message("M0", ["a@x.test"]), message("M1", ["b@x.test"])])
        #expect(q.durableCommitsForTests == q.commitsForTests)
        let due = try q.dueRecipients(pools: ["t"], now: t0, limit: 10)
        func lease(_ id: String, _ row: DueRecipient) -> LeaseRecord {
            LeaseRecord(id: id, node: "node-a", instance: "i1", sendingIP: "127.0.0.10", messageID: row.messageID,
                        domain: "x.test", recipientIDs: [row.id], grantedAt: t0, expiresAt: t0 + 300)
        }
        #expect(try q.recordLeases([lease("L0", due[0])]).count == 1)
        let syncsBefore = q.lock.withLock { q.db.walSyncsIssued }

        let pending = try #require(try q.lock.withLock {
            try q.db.transactionSyncingLater { later in
                later = true
                try q.db.prepare("INSERT INTO wal_test(k) VALUES('wal-test-1')").run()
            }
        }.pending)
        #expect(pending.commit == q.commitsForTests)
        #expect(q.durableCommitsForTests < pending.commit, "not durable before its sync")
        #expect(q.lock.withLock { q.db.walSyncsIssued } == syncsBefore, "no sync under the lock")

        // Meanwhile (the lock is free): a lease round commits, without an fsync of its own.
        #expect(try q.recordLeases([lease("L1", due[1])]).count == 1)
        #expect(q.lock.withLock { q.db.walSyncsIssued } == syncsBefore, "the lease commit did not sync")
        let leaseCommit = q.commitsForTests
        #expect(leaseCommit == pending.commit + 1)
        // Both visible to another connection before any sync.
        let other = try SQLiteDatabase(path: dir + "/queue.db")
        #expect(try other.prepare("SELECT count(*) FROM wal_test WHERE k='wal-test-1'").query { $0.int(0) } == [1])
        #expect(try other.prepare("SELECT count(*) FROM leases WHERE id='L1'").query { $0.int(0) } == [1])

        // The sync takes the last commit's number before it begins: it covers the lease's commit,
        // and not one made after that (here: between the two, by the hook).
        q.db.beforeSyncForTests = {
            _ = try? q.lock.withLock {
                try q.db.transaction(durability: .processCrashSafe) { try q.db.prepare("INSERT INTO wal_test(k) VALUES('late')").run() }
            }
        }
        try q.db.completeSync(pending)
        q.db.beforeSyncForTests = nil
        #expect(q.commitsForTests == leaseCommit + 1, "the hook committed")
        #expect(q.durableCommitsForTests == leaseCommit)
        #expect(q.lock.withLock { q.db.walSyncsIssued } == syncsBefore + 1, "completeSync synced once")
        // Completing it again (or a sync that a later one covered) issues nothing.
        try q.db.completeSync(pending)
        #expect(q.lock.withLock { q.db.walSyncsIssued } == syncsBefore + 1)
    }

    @Test("a batch whose new rows the scheduler takes is synced after the lock is let go; any other batch under it")
    func onlyBatchesLeasedAtOnceSyncAfterTheLock() throws {
        let dir = storeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let q = try SQLiteQueueStore(directory: dir)
        try q.enqueue(message("M0", ["a@x.test"]))  // the first synced batch opens the WAL descriptor
        let takes = Locked(false)
        q.observeInsertedRecipients { _ in takes.withLock { $0 } }
        let syncedOutside = Locked<[Bool]>([])
        q.db.beforeSyncForTests = {
            // Called only by a sync after the lock (completeSync): the queue's lock is free then.
            let free = q.lock.try()
            if free { q.lock.unlock() }
            syncedOutside.withLock { $0.append(free) }
        }
        defer { q.db.beforeSyncForTests = nil }
        let syncs0 = q.lock.withLock { q.db.walSyncsIssued }
        // Not taken (a load, or a queue not drained): synced under the lock, as before.
        let c1 = try q.enqueueReturningCommitForTests([message("M1", ["b@x.test"])])
        #expect(syncedOutside.snapshot.isEmpty)
        #expect(q.durableCommitsForTests >= c1)
        #expect(q.lock.withLock { q.db.walSyncsIssued } == syncs0 + 1)
        // Taken: its leases commit during the fsync, which runs after the lock.
        takes.withLock { $0 = true }
        let c2 = try q.enqueueReturningCommitForTests([message("M2", ["c@x.test"])])
        #expect(syncedOutside.snapshot == [true])
        #expect(q.durableCommitsForTests >= c2)
        #expect(q.lock.withLock { q.db.walSyncsIssued } == syncs0 + 2)
    }

    @Test("results committed while a batch's sync is pending are durable only from a sync that began after them")
    func resultsWaitForALaterSync() throws {
        let dir = storeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let q = try SQLiteQueueStore(directory: dir)
        q.setSyncsExpectedWithinForTests(.zero)
        try q.lock.withLock { try q.db.execute("CREATE TABLE wal_test(k TEXT)") }
        try q.enqueue(message("M0", ["a@x.test"]))
        let due = try q.dueRecipients(pools: ["t"], now: t0, limit: 10)
        _ = try q.recordLeases([LeaseRecord(id: "L1", node: "node-a", instance: "i1", sendingIP: "127.0.0.10", messageID: "M0",
                                            domain: "x.test", recipientIDs: due.map(\.id), grantedAt: t0, expiresAt: t0 + 300)])
        let pending = try #require(try q.lock.withLock {
            try q.db.transactionSyncingLater { later in
                later = true
                try q.db.prepare("INSERT INTO wal_test(k) VALUES('wal-test-2')").run()
            }
        }.pending)
        let outcome = RecipientResult(recipientID: due[0].id, status: .delivered, reply: DeliveryStatus(code: 250, enhanced: nil, text: "ok"))
        let (_, mark) = try q.applyResultsUnsynced([(ResultMessage(leaseID: "L1", instanceID: "i1", sendingIP: "127.0.0.10", mxHost: "mx.x.test",
                                                                   remoteAddress: "127.0.0.1", outcomes: [outcome], finishedAt: 0), "node-a")],
                                                  retry: retry, now: t0 + 1)
        #expect(mark > pending.commit, "the results' commit is numbered after the pending one")
        #expect(q.durableCommitsForTests < mark)
        // awaitSync with nobody else syncing: a synced commit of its own covers the results.
        try q.awaitSync(after: mark, wait: .zero)
        #expect(q.durableCommitsForTests >= mark)
        // The pending sync is covered by that one already: completing it issues nothing.
        let syncs = q.lock.withLock { q.db.walSyncsIssued }
        try q.db.completeSync(pending)
        #expect(q.lock.withLock { q.db.walSyncsIssued } == syncs)
    }

    /// The observer is read once per batch; kept as a bare function in a `Locked` it came back
    /// wrapped in two more reabstraction thunks at every read (issue 19: thousands deep after a
    /// benchmark, 14.6 % of the coordinator's samples; a stack overflow after ~a million batches).
    @Test("the new-mail observer is called as deep at the 40th batch as at the first")
    func insertObserverKeepsItsDepth() throws {
        let dir = storeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let q = try SQLiteQueueStore(directory: dir)
        let depths = Locked<[Int]>([])
        q.observeInsertedRecipients { _ in depths.withLock { $0.append(Thread.callStackReturnAddresses.count) }; return false }
        for i in 0..<40 { try q.enqueue(message("D\(i)", ["a@x.test"])) }
        let seen = depths.snapshot
        #expect(seen.count == 40)
        #expect(Set(seen).count == 1, "depths seen: \(Set(seen).sorted())")
    }

    @Test("batches, lease rounds and results from several threads: every enqueue returns synced, every awaited mark is covered")
    func concurrentWritersNeverOverclaim() throws {
        let dir = storeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let q = try SQLiteQueueStore(directory: dir)
        _ = try q.beginRun(bootID: "wal-test-boot", now: t0)  // lease commits without fsync, as in production
        q.setSyncsExpectedWithinForTests(.milliseconds(5))
        q.observeInsertedRecipients { _ in true }  // every batch synced after the lock
        let failures = Locked<[String]>([])
        let group = DispatchGroup()
        for w in 0..<3 {
            group.enter()
            Thread.detachNewThread {
                defer { group.leave() }
                for i in 0..<40 {
                    do {
                        // Once the batch's write returns, its commit (and every earlier one) is synced.
                        let commit = try q.enqueueReturningCommitForTests([message("M\(w)-\(i)", ["r\(i)@x.test"])])
                        let durable = q.durableCommitsForTests
                        if durable < commit { failures.withLock { $0.append("enqueue returned at \(durable), its commit is \(commit)") } }
                    } catch {
                        failures.withLock { $0.append("enqueue: \(error)") }
                    }
                }
            }
        }
        group.enter()
        Thread.detachNewThread {
            defer { group.leave() }
            var delivered = 0
            let deadline = ContinuousClock.now + .seconds(30)
            while delivered < 120 && ContinuousClock.now < deadline {
                do {
                    let due = try q.dueRecipients(pools: ["t"], now: t0 + 10, limit: 5)
                    guard !due.isEmpty else { usleep(1000); continue }
                    let leases = due.map { LeaseRecord(id: "L\($0.id)", node: "node-a", instance: "i1", sendingIP: "127.0.0.10", messageID: $0.messageID,
                                                       domain: $0.domain, recipientIDs: [$0.id], grantedAt: t0 + 10, expiresAt: t0 + 300) }
                    let granted = try q.recordLeases(leases)
                    let results = granted.map { l in
                        (result: ResultMessage(leaseID: l.id, instanceID: "i1", sendingIP: "127.0.0.10", mxHost: "mx.x.test", remoteAddress: "127.0.0.1",
                                               outcomes: [RecipientResult(recipientID: l.recipientIDs[0], status: .delivered,
                                                                          reply: DeliveryStatus(code: 250, enhanced: nil, text: "ok"))], finishedAt: 0),
                         node: "node-a")
                    }
                    let (_, mark) = try q.applyResultsUnsynced(results, retry: retry, now: t0 + 11)
                    try q.awaitSync(after: mark, wait: .milliseconds(2))
                    let durable = q.durableCommitsForTests
                    if durable < mark { failures.withLock { $0.append("awaitSync returned at \(durable) before mark \(mark)") } }
                    delivered += granted.count
                } catch {
                    failures.withLock { $0.append("results: \(error)") }
                }
            }
        }
        #expect(group.wait(timeout: .now() + 60) == .success)
        #expect(failures.snapshot.isEmpty, "\(failures.snapshot.prefix(5))")
        #expect(try q.countsByState().values.reduce(0, +) == 120)
        // Nothing left unsynced that a caller was told is durable: a final sync only adds what
        // the result thread committed after its last wait.
        #expect(q.durableCommitsForTests <= q.commitsForTests)
    }

    @Test("a failed sync — under the lock or after it — refuses every later write and leaves a marker; the next start on the same boot holds new leases until the lease horizon, as after a new boot", arguments: [false, true])
    func failedSyncHoldsLeasesAfterARestart(afterUnlock: Bool) throws {
        let dir = storeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let marker = dir + "/queue.db-sync-failed"
        let horizon = Date(timeIntervalSince1970: (t0 + 300).timeIntervalSince1970 + Queue.leaseHorizonSlack)
        // The failed run's store stays open, as in a crash: closing the last connection would
        // checkpoint the WAL itself.
        let failedRun = try SQLiteQueueStore(directory: dir)
        do {
            let q = failedRun
            #expect(try q.beginRun(bootID: "boot-1", now: t0) == nil)
            try q.enqueue([message("M0", ["a@x.test"]), message("M1", ["b@x.test"])])
            let due = try q.dueRecipients(pools: ["t"], now: t0, limit: 10)
            // The first lease moves the durable horizon (a synced commit); the second skips its fsync.
            for (i, row) in due.enumerated() {
                _ = try q.recordLeases([LeaseRecord(id: "L\(i)", node: "node-a", instance: "i1", sendingIP: "127.0.0.10", messageID: row.messageID,
                                                    domain: "x.test", recipientIDs: [row.id], grantedAt: t0, expiresAt: t0 + 300)])
            }
            #expect(!FileManager.default.fileExists(atPath: marker))
            q.db.syncErrorForTests = { EIO }
            if afterUnlock {
                let pending = try #require(try q.lock.withLock {
                    try q.db.transactionSyncingLater { later in
                        later = true
                        try q.db.execute("CREATE TABLE IF NOT EXISTS wal_test(k TEXT); INSERT INTO wal_test(k) VALUES('x')")
                    }
                }.pending)
                #expect(throws: SQLiteError.self) { try q.db.completeSync(pending) }
            } else {
                #expect(throws: SQLiteError.self) { try q.enqueue([message("M2", ["c@x.test"])]) }
            }
            q.db.syncErrorForTests = nil
            #expect(q.db.walSyncFailure != nil)
            // Latched: later writes are refused although the disk "works" again, the run cannot end cleanly.
            #expect(throws: SQLiteError.self) { try q.enqueue([message("M3", ["d@x.test"])]) }
            #expect(throws: SQLiteError.self) { try q.endRun() }
            let text = try String(contentsOfFile: marker, encoding: .utf8)
            #expect(text.contains("boot_id=") && text.contains("write-ahead log failed"), "\(text)")
        }
        // Before the restart the messages are only in the WAL, not in the database file.
        func inDatabaseFile() throws -> Int64 {
            // A copy of the database file alone, without its WAL.
            let copy = storeDirectory()
            defer { try? FileManager.default.removeItem(atPath: copy) }
            try FileManager.default.createDirectory(atPath: copy, withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: dir + "/queue.db", toPath: copy + "/queue.db")
            let file = try SQLiteDatabase(path: copy + "/queue.db")
            // Not even the schema is there before the first checkpoint.
            guard try file.prepare("SELECT count(*) FROM sqlite_master WHERE name='messages'").query([], { $0.int(0) }).first == 1 else { return 0 }
            return try file.prepare("SELECT count(*) FROM messages").query { $0.int(0) }.first ?? -1
        }
        #expect(try inDatabaseFile() == 0)
        // Restarted on the same boot: without the marker this start would hold nothing.
        #expect(try SQLiteQueueStore(directory: dir).beginRun(bootID: "boot-1", now: t0 + 10) == horizon)
        #expect(!FileManager.default.fileExists(atPath: marker), "removed once the hold is stored")
        // It first checkpointed what the WAL held into the database file (and synced it).
        // (A commit whose sync failed stays committed: its client got a 451 and sends again.)
        #expect(try inDatabaseFile() == (afterUnlock ? 2 : 3))
        withExtendedLifetime(failedRun) {}
        // The hold is stored: a restart during it keeps it without the marker; after it, none.
        #expect(try SQLiteQueueStore(directory: dir).beginRun(bootID: "boot-1", now: t0 + 20) == horizon)
        #expect(try SQLiteQueueStore(directory: dir).beginRun(bootID: "boot-1", now: horizon + 1) == nil)
    }

    @Test("the migration to PostgreSQL keeps the hold a failed sync calls for")
    func migrationHoldAfterAFailedSync() {
        let state = ["clean_stop": "0", "boot_id": "boot-1", "lease_horizon": "\(t0.timeIntervalSince1970 + 400)"]
        #expect(StoreMigration.leaseHold(runState: state, bootID: "boot-1", now: t0) == nil)
        #expect(StoreMigration.leaseHold(runState: state, bootID: "boot-1", now: t0, syncFailed: true) == t0.timeIntervalSince1970 + 400)
    }

    @Test("a failed fsync SQLite issues itself latches like a failed sync of ours; a read error, a failed write or a full disk does not")
    func sqliteIOErrorsLatch() throws {
        let dir = storeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let q = try SQLiteQueueStore(directory: dir)
        try q.enqueue([message("M0", ["a@x.test"])])
        q.db.noteIOError(code: 266, message: "read")  // SQLITE_IOERR_READ
        q.db.noteIOError(code: 13, message: "full")  // SQLITE_FULL
        q.db.noteIOError(code: 778, message: "quota")  // SQLITE_IOERR_WRITE: a quota's EDQUOT comes so; nothing written counts
        #expect(q.db.walSyncFailure == nil)
        try q.enqueue([message("M1", ["b@x.test"])])
        q.db.noteIOError(code: 1034, message: "COMMIT")  // SQLITE_IOERR_FSYNC, e.g. a restarted WAL's header
        #expect(q.db.walSyncFailure != nil)
        #expect(throws: SQLiteError.self) { try q.enqueue([message("M2", ["c@x.test"])]) }
        #expect(FileManager.default.fileExists(atPath: dir + "/queue.db-sync-failed"))
    }
}
