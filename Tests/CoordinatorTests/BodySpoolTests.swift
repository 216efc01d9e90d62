import Foundation
import HatoTestKit
import Testing
@testable import ClusterProtocol
@testable import HatoCoordinator
@testable import HatoCrypto
@testable import HatoIO
@testable import HatoSupport

/// Issue 19: large bodies in append-only spool segments beside the SQLite queue (filter: `BodySpoolTests`).
@Suite("BodySpoolTests")
struct BodySpoolTests {
    let t0 = Date(timeIntervalSince1970: 1_800_000_000)

    func temporaryDirectory(_ name: String) -> String { NSTemporaryDirectory() + "hato-spool-\(name)-" + Identifier.random(bytes: 5) }

    /// Octets that differ from one offset to the next (a misplaced read shows).
    func body(_ seed: UInt8, _ octets: Int) -> [UInt8] {
        (0..<octets).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed) &* 7 &+ $0 >> 8) }
    }

    func message(_ id: String, _ content: [UInt8]) -> NewMessage {
        NewMessage(id: id, reversePath: "s@example.org", recipients: ["\(id.lowercased())@x.test"], pool: "t", content: content,
                   heloName: "c.test", clientAddress: "127.0.0.1", receivedAt: t0)
    }

    /// The row's inline body length (nil: NULL) and spool segment (nil: NULL).
    func row(_ q: SQLiteQueueStore, _ id: String) throws -> (inline: Int?, segment: Int64?) {
        try q.lock.withLock {
            try #require(try q.db.prepare("SELECT length(body), body_segment FROM messages WHERE id=?").query([.text(id)]) {
                ($0.isNull(0) ? nil : Int($0.int(0)), $0.isNull(1) ? nil : $0.int(1))
            }.first)
        }
    }

    @Test("segments: bodies read back exactly, a full segment is sealed and the next started, a reopened spool never appends to an old segment")
    func segments() throws {
        let dir = temporaryDirectory("segments")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let spool = try BodySpool(directory: dir, segmentLimit: 100_000)
        let a = body(1, 60_000), b = body(2, 60_000), c = body(3, 5)
        let first = try spool.append([a, nil, b])
        #expect(first[1] == nil)
        let la = try #require(first[0]), lb = try #require(first[2])
        #expect(la.segment == lb.segment && la.offset == 0 && lb.offset == 60_000, "one segment until it holds the limit")
        #expect(spool.sealedSegments.isEmpty, "the current segment is not sealed")
        let second = try spool.append([c])
        let lc = try #require(second[0])
        #expect(lc.segment == la.segment + 1 && lc.offset == 0, "a full segment is sealed and the next one started")
        #expect(spool.sealedSegments.isEmpty, "a segment written by an append whose rows are not committed is not removable")
        spool.finishedWriting(first)
        spool.finishedWriting(second)
        #expect(spool.sealedSegments.map(\.segment) == [la.segment])
        #expect(try spool.read(la) == a && spool.read(lb) == b && spool.read(lc) == c)
        #expect(throws: BodySpool.MissingBody.self) { try spool.read(BodySpool.Location(segment: lc.segment, offset: 0, length: 6)) }
        #expect(spool.onDisk.segments == 2 && spool.onDisk.octets == 120_005)

        let reopened = try BodySpool(directory: dir, segmentLimit: 100_000)
        #expect(reopened.sealedSegments.map(\.segment) == [la.segment, lc.segment], "segments of an earlier run are sealed")
        let third = try reopened.append([a])
        #expect(third[0]?.segment == lc.segment + 1, "a new run starts a new segment")
        reopened.finishedWriting(third)
        try reopened.remove(la.segment)
        #expect(throws: BodySpool.MissingBody.self) { try reopened.read(la) }
        try reopened.remove(try #require(third[0]).segment)  // the current one: left alone
        #expect(try reopened.read(try #require(third[0])) == a)
    }

    @Test("the store: a body from the threshold is in the spool, a smaller one in its row; both read back, also after a restart")
    func storeSpoolsLargeBodies() throws {
        let dir = temporaryDirectory("store")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let large = body(4, 100 * 1024), small = body(5, 1000), edge = body(6, SQLiteQueueStore.defaultSpoolThreshold)
        do {
            let q = try SQLiteQueueStore(directory: dir)
            try q.lock.withLock { try q.db.execute("PRAGMA wal_checkpoint(TRUNCATE)") }
            try q.enqueue(message("L", large))
            #expect(q.walFileSize < 48 * 1024, "the WAL holds the rows' pages, not the 100 KiB body: \(q.walFileSize) octets")
            try q.enqueue([message("S", small), message("E", edge)])
            #expect(try row(q, "L").inline == nil && row(q, "L").segment != nil)
            #expect(try row(q, "E").inline == nil && row(q, "E").segment != nil, "the threshold itself is spooled")
            #expect(try row(q, "S").inline == 1000 && row(q, "S").segment == nil)
            #expect(try q.content(of: "L") == large && q.content(of: "S") == small && q.content(of: "E") == edge)
            #expect(q.spool.onDisk.octets == large.count + edge.count, "each body written once")
        }
        let reopened = try SQLiteQueueStore(directory: dir)
        #expect(try reopened.content(of: "L") == large && reopened.content(of: "E") == edge && reopened.content(of: "S") == small)
        #expect(try reopened.content(of: "missing") == nil)
    }

    @Test("a segment no row points at is removed only after the change that dropped the last reference is durable (a synced commit or a complete checkpoint)")
    func removalWaitsForDurability() throws {
        let dir = temporaryDirectory("remove")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let q = try SQLiteQueueStore(directory: dir, spoolSegmentLimit: 64 * 1024)
        let checkpointer = try SQLiteDatabase(path: q.path)
        var memory = SQLiteQueueStore.CheckpointMemory()
        let a = body(7, 100 * 1024), b = body(8, 100 * 1024)
        try q.enqueue(message("A", a))
        try q.enqueue(message("B", b))  // segment of A full: B starts the next, A's is sealed
        let segA = try #require(try row(q, "A").segment), segB = try #require(try row(q, "B").segment)
        #expect(segA != segB)
        try q.spoolPass(checkpointer, memory: &memory)
        #expect(FileManager.default.fileExists(atPath: q.spool.path(of: segA)), "still referenced")

        // A delivered: its body dropped by a commit without an fsync of its own (as results are).
        try q.lock.withLock {
            try q.db.transaction(durability: .processCrashSafe) {
                try q.db.execute("UPDATE messages SET open_recipients=0 WHERE id='A'")
                try q.purgeBodies(["A"])
            }
        }
        #expect(try row(q, "A") == (nil, nil))
        try q.spoolPass(checkpointer, memory: &memory)
        try q.spoolPass(checkpointer, memory: &memory)
        #expect(FileManager.default.fileExists(atPath: q.spool.path(of: segA)), "unreferenced, but the change is not durable yet")
        try q.enqueue(message("C", body(9, 10)))  // a synced commit
        try q.spoolPass(checkpointer, memory: &memory)
        #expect(!FileManager.default.fileExists(atPath: q.spool.path(of: segA)), "removed after a synced commit")
        #expect(try q.content(of: "B") == b)

        // The same with a complete checkpoint as the proof (no synced commit meanwhile).
        try q.enqueue(message("D", body(10, 100 * 1024)))  // seals B's segment
        try q.lock.withLock {
            try q.db.transaction(durability: .processCrashSafe) {
                try q.db.execute("UPDATE messages SET open_recipients=0 WHERE id='B'")
                try q.purgeBodies(["B"])
            }
        }
        try q.spoolPass(checkpointer, memory: &memory)
        #expect(FileManager.default.fileExists(atPath: q.spool.path(of: segB)))
        try q.checkpointPass(checkpointer, restartSize: 1 << 30, memory: &memory)
        try q.spoolPass(checkpointer, memory: &memory)
        #expect(!FileManager.default.fileExists(atPath: q.spool.path(of: segB)), "removed after a complete checkpoint")
        #expect(q.spool.removedCount == 2)
    }

    @Test("bodies still referenced in a segment sealed long ago move into their rows, and the segment then goes; the content is unchanged")
    func evacuation() throws {
        let dir = temporaryDirectory("evacuate")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let q = try SQLiteQueueStore(directory: dir, spoolSegmentLimit: 64 * 1024)
        let checkpointer = try SQLiteDatabase(path: q.path)
        var memory = SQLiteQueueStore.CheckpointMemory()
        let a = body(11, 100 * 1024)
        try q.enqueue(message("A", a))
        try q.enqueue(message("B", body(12, 40 * 1024)))  // seals A's segment
        let segA = try #require(try row(q, "A").segment)
        try q.spoolPass(checkpointer, memory: &memory, now: .now + .seconds(5))
        #expect(try row(q, "A").segment == segA, "not yet: sealed a moment ago")
        try q.spoolPass(checkpointer, memory: &memory, now: .now + SQLiteQueueStore.spoolEvacuateAfter + .seconds(1))
        #expect(try row(q, "A") == (a.count, nil), "moved into its row")
        #expect(try row(q, "B").inline == 40 * 1024, "B's segment, idle as long by this clock, was sealed and moved too")
        #expect(memory.spoolEvacuated == 2)
        #expect(try q.content(of: "A") == a)
        try q.spoolPass(checkpointer, memory: &memory)  // found unreferenced (the move was a synced commit, before)
        try q.enqueue(message("C", body(13, 10)))
        try q.spoolPass(checkpointer, memory: &memory)
        #expect(!FileManager.default.fileExists(atPath: q.spool.path(of: segA)))
        #expect(try q.content(of: "A") == a)
    }

    @Test("the current segment, idle for the evacuation delay (no new mail sealed it), is sealed; its bodies then move into their rows and it goes")
    func idleCurrentSegment() throws {
        let dir = temporaryDirectory("idle")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let q = try SQLiteQueueStore(directory: dir)
        let checkpointer = try SQLiteDatabase(path: q.path)
        var memory = SQLiteQueueStore.CheckpointMemory()
        let a = body(16, 50 * 1024)
        try q.enqueue(message("A", a))  // deferred for days, say: nothing else arrives
        let segA = try #require(q.spool.currentSegment)
        try q.spoolPass(checkpointer, memory: &memory)
        #expect(q.spool.currentSegment == segA, "a segment started a moment ago stays current")
        let later = ContinuousClock.now + SQLiteQueueStore.spoolEvacuateAfter + .seconds(1)
        try q.spoolPass(checkpointer, memory: &memory, now: later)
        #expect(q.spool.currentSegment == nil && q.spool.sealedSegments.contains { $0.segment == segA }, "sealed once idle that long")
        try q.spoolPass(checkpointer, memory: &memory, now: later + SQLiteQueueStore.spoolEvacuateAfter + .seconds(1))
        #expect(try row(q, "A") == (a.count, nil), "moved into its row")
        try q.spoolPass(checkpointer, memory: &memory)
        try q.checkpointPass(checkpointer, restartSize: 1 << 30, memory: &memory)
        try q.spoolPass(checkpointer, memory: &memory)
        #expect(q.spool.onDisk.segments == 0)
        #expect(try q.content(of: "A") == a)
        try q.enqueue(message("B", body(17, 40 * 1024)))
        #expect(q.spool.currentSegment.map { $0 > segA } == true, "new mail starts a new segment")
    }

    @Test("a segment left by an earlier run that no row points at (a batch that never committed) is removed; one still referenced is kept")
    func orphanSegments() throws {
        let dir = temporaryDirectory("orphan")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let a = body(14, 50 * 1024)
        do {
            let q = try SQLiteQueueStore(directory: dir)
            try q.enqueue(message("A", a))
        }
        let orphan = BodySpool.Location(segment: 0x7f, offset: 0, length: 3)
        #expect(FileManager.default.createFile(atPath: dir + "/spool/000000000000007f.body", contents: Data([1, 2, 3])))
        let q = try SQLiteQueueStore(directory: dir)
        let checkpointer = try SQLiteDatabase(path: q.path)
        var memory = SQLiteQueueStore.CheckpointMemory()
        #expect(try q.spool.read(orphan) == [1, 2, 3])
        try q.spoolPass(checkpointer, memory: &memory)
        try q.checkpointPass(checkpointer, restartSize: 1 << 30, memory: &memory)
        try q.spoolPass(checkpointer, memory: &memory)
        #expect(throws: BodySpool.MissingBody.self) { try q.spool.read(orphan) }
        #expect(try q.content(of: "A") == a, "the referenced segment of the earlier run stays")
    }

    @Test("while events or DSN entries about a message remain, its spooled body is kept like a body in its row")
    func keepBodyTrigger() throws {
        let dir = temporaryDirectory("keep")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let q = try SQLiteQueueStore(directory: dir)
        try q.installReportingSchema()
        let a = body(15, 64 * 1024)
        try q.enqueue(message("A", a))  // the `received` event is recorded with it
        try q.lock.withLock {
            try q.db.execute("UPDATE messages SET open_recipients=0 WHERE id='A'")
            try q.purgeBodies(["A"])
        }
        #expect(try row(q, "A").segment != nil, "kept while its event waits")
        #expect(try q.content(of: "A") == a)
        try q.lock.withLock {
            try q.db.execute("DELETE FROM recipient_events WHERE message_id='A'")
            try q.purgeBodies(["A"])
        }
        #expect(try row(q, "A") == (nil, nil))
        #expect(try q.content(of: "A") == nil)
    }

    @Test("a spool write that finds the file system full is a full queue (452 4.3.1), as SQLITE_FULL is; other failures are not")
    func fullFileSystem() {
        #expect(QueueWriteFailure.isStorageFull(SystemCallError("write /q/spool/0000000000000001.body", code: ENOSPC)))
        #expect(QueueWriteFailure.isStorageFull(SystemCallError("fdatasync /q/spool/0000000000000001.body", code: EDQUOT)))
        #expect(!QueueWriteFailure.isStorageFull(SystemCallError("write /q/spool/0000000000000001.body", code: EIO)))
        #expect(QueueWriteFailure.isStorageFull(SQLiteError(code: 13, message: "database or disk is full")))
        #expect(!QueueWriteFailure.isStorageFull(SQLiteError(code: 5, message: "database is locked")))
        // A disk quota: SQLite reports EDQUOT as SQLITE_IOERR_WRITE (778) with the errno beside it.
        #expect(QueueWriteFailure.isStorageFull(SQLiteError(code: 778, message: "disk I/O error", systemErrno: EDQUOT)))
        #expect(QueueWriteFailure.isStorageFull(SQLiteError(code: 10, message: "disk I/O error", systemErrno: EDQUOT)))
        #expect(!QueueWriteFailure.isStorageFull(SQLiteError(code: 778, message: "disk I/O error", systemErrno: EIO)))
        #expect(!QueueWriteFailure.isStorageFull(SQLiteError(code: 778, message: "disk I/O error")))
    }
}
