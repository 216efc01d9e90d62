import Foundation
import Testing
@testable import ClusterProtocol
@testable import HatoCrypto
@testable import HatoNode
@testable import HatoSupport
@testable import SMTPCore

/// The node journal's compaction, crash safety and group commit (filter: `JournalCompactionTests`).
@Suite("JournalCompactionTests")
struct JournalCompactionTests {
    func result(_ id: String) -> ResultMessage {
        ResultMessage(leaseID: id, instanceID: "i", sendingIP: "127.0.0.10", mxHost: "mx.dest.test", remoteAddress: "192.0.2.1",
                      outcomes: [RecipientResult(recipientID: 1, status: .delivered, reply: DeliveryStatus(code: 250, enhanced: "2.0.0", text: "ok: queued as X"))],
                      finishedAt: 1_800_000_000)
    }

    func directory() -> String { NSTemporaryDirectory() + "hato-jc-" + Identifier.random(bytes: 5) }

    @Test("a long run of record and acknowledge keeps the file bounded; what is unacknowledged survives")
    func bounded() throws {
        let dir = directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let j = try OutcomeJournal(directory: dir, compactEvery: 50)
        try j.record(result("L0"))
        let line = j.fileSize
        #expect(line > 100)
        var largest = 0
        for i in 1..<3000 {
            try j.record(result("L\(i)"))
            if i >= 3 { j.acknowledge(leaseID: "L\(i - 3)") }
            largest = max(largest, j.fileSize)
        }
        // At most 50 acknowledged results and their ack lines since the last compaction, plus 3 pending.
        #expect(largest < 60 * line)
        #expect(j.compactions >= 2900 / 50)
        #expect(j.pending.map(\.leaseID) == ["L2997", "L2998", "L2999"])
        let size = (try FileManager.default.attributesOfItem(atPath: dir + "/journal.jsonl")[.size] as? Int) ?? -1
        #expect(size == j.fileSize)
        #expect(try OutcomeJournal(directory: dir).pending.map(\.leaseID) == ["L2997", "L2998", "L2999"])
    }

    @Test("the size trigger compacts a file over compactAboveBytes at the next acknowledgement")
    func sizeTrigger() throws {
        let dir = directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let j = try OutcomeJournal(directory: dir, compactEvery: 1_000_000, compactAboveBytes: 8192)
        var largest = 0
        for i in 0..<1000 {
            try j.record(result("S\(i)"))
            j.acknowledge(leaseID: "S\(i)")
            largest = max(largest, j.fileSize)
        }
        #expect(largest < 8192 + 1024)
        #expect(j.compactions > 10)
        #expect(j.pending.isEmpty)
    }

    @Test("a crash during a compaction (a partial temporary file left behind) loses no unacknowledged result")
    func crashMidCompaction() throws {
        let dir = directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var j: OutcomeJournal? = try OutcomeJournal(directory: dir, compactEvery: 1000)
        for id in ["A", "B", "C", "D"] { try j!.record(result(id)) }
        j!.acknowledge(leaseID: "B")
        j = nil
        // The compaction wrote part of its temporary file and the process died before the rename.
        let partial = Array(try JSONEncoder().encode(["result": result("A")])) + [0x0A] + Array("{\"result\":{\"leaseID\":\"C".utf8)
        #expect(FileManager.default.createFile(atPath: dir + "/journal.jsonl.tmp", contents: Data(partial)))
        let reopened = try OutcomeJournal(directory: dir)
        #expect(reopened.pending.map(\.leaseID) == ["A", "C", "D"])
        #expect(!FileManager.default.fileExists(atPath: dir + "/journal.jsonl.tmp"))
        // The reopened journal compacted: only the three results remain in the file, and new records append.
        let lines = try String(contentsOfFile: dir + "/journal.jsonl", encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 3)
        try reopened.record(result("E"))
        #expect(try OutcomeJournal(directory: dir).pending.map(\.leaseID) == ["A", "C", "D", "E"])
    }

    @Test("group commit without waiters: records return before their fsync; lines written while a sync is held back share the next one")
    func groupCommit() throws {
        let dir = directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let j = try OutcomeJournal(directory: dir)
        try j.record(result("G-first"))
        #expect(j.waitUntilSynced())
        let syncsBefore = j.batchSyncs
        let done = LockedCondition(0)
        try j.holdingSync { () throws -> Void in
            for i in 0..<10 {
                Thread.detachNewThread {
                    try? j.record(result("G\(i)"))
                    done.withLockAndBroadcast { $0 += 1 }
                }
            }
            // Every record returns while no fsync can run: none waits for its line's sync.
            let returned = done.wait(until: .now + .seconds(30), for: { $0 == 10 }) { n, _ in n }
            #expect(returned == 10)
            #expect(j.writtenLines == 11)
            // Written to the file, so a new process (after a crash of this one) reads them back.
            let lines = try String(contentsOfFile: dir + "/journal.jsonl", encoding: .utf8).split(separator: "\n")
            #expect(lines.filter { $0.hasPrefix("{\"result\":") }.count == 11)
        }
        #expect(j.waitUntilSynced())
        #expect(j.syncedLines == 11)
        // One fsync for the ten lines written while it was held back (two if a pass started in between).
        #expect(j.batchSyncs - syncsBefore >= 1 && j.batchSyncs - syncsBefore <= 2)
        #expect(Set(j.pending.map(\.leaseID)) == Set((0..<10).map { "G\($0)" } + ["G-first"]))
        // All of them read back by a new process.
        #expect(Set(try OutcomeJournal(directory: dir).pending.map(\.leaseID)).count == 11)
    }

    /// Polls `condition` until it holds or 10 s pass.
    func eventually(_ condition: () -> Bool) -> Bool {
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if condition() { return true }
            Thread.sleep(forTimeInterval: 0.005)
        }
        return condition()
    }

    @Test("lines the coordinator acknowledges before their fsync falls due are never fsync'd; the sync thread then idles")
    func acknowledgedLinesNeedNoFsync() throws {
        let dir = directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // A long spacing: the acknowledgements below come well before the lines fall due.
        let j = try OutcomeJournal(directory: dir, syncSpacing: .seconds(1))
        try j.record(result("K1"))
        try j.record(result("K2"))
        j.acknowledge(leaseID: "K1")
        j.acknowledge(leaseID: "K2")
        // Once K1 falls due the sync thread finds both acknowledged: durable, and no fsync.
        #expect(eventually { j.syncedLines == 2 })
        #expect(j.batchSyncs == 0)
        #expect(j.linesCoveredByAck == 2)
        #expect(j.pending.isEmpty)
    }

    @Test("an unacknowledged line is fsync'd once it falls due, with every line written before it")
    func unacknowledgedLineIsFsynced() throws {
        let dir = directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let j = try OutcomeJournal(directory: dir, syncSpacing: .seconds(1))
        try j.record(result("U1"))
        j.acknowledge(leaseID: "U1")
        try j.record(result("U2"))
        try j.record(result("U3"))
        j.acknowledge(leaseID: "U3")
        // U2 stays unacknowledged: one fsync covers it (and U3 with it); U1 needed none.
        #expect(eventually { j.syncedLines == 3 })
        #expect(j.batchSyncs == 1)
        #expect(j.linesCoveredByAck == 1)
        #expect(j.pending.map(\.leaseID) == ["U2"])
        // After it the thread idles again: a new line waits for its own deadline, acknowledged in time.
        try j.record(result("U4"))
        j.acknowledge(leaseID: "U4")
        #expect(eventually { j.syncedLines == 4 })
        #expect(j.batchSyncs == 1)
        #expect(j.linesCoveredByAck == 2)
        #expect(try OutcomeJournal(directory: dir).pending.map(\.leaseID) == ["U2"])
    }

    @Test("a lease recorded twice before its ack: the first line's deadline covers both; neither counts as acknowledged")
    func recordedTwice() throws {
        let dir = directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let j = try OutcomeJournal(directory: dir, syncSpacing: .milliseconds(300))
        try j.record(result("R1"))
        try j.record(result("R1"))
        #expect(eventually { j.syncedLines == 2 })
        #expect(j.batchSyncs == 1)
        #expect(j.linesCoveredByAck == 0)
        #expect(j.pending.map(\.leaseID) == ["R1"])
    }

    @Test("under steady traffic the sync thread's list of waiting lines stays bounded (it never empties)")
    func waitingListBounded() throws {
        let dir = directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // The steady state at load: every line is acknowledged well before it falls due, so no
        // fsync empties the list, and there is always a recent line still waiting for its ack.
        let j = try OutcomeJournal(directory: dir, compactEvery: 1_000_000, compactAboveBytes: 1 << 30, syncSpacing: .milliseconds(50))
        var largest = 0
        for i in 0..<20_000 {
            try j.record(result("W\(i)"))
            if i >= 3 { j.acknowledge(leaseID: "W\(i - 3)") }
            largest = max(largest, j.waitingLines)
        }
        #expect(largest <= 10_000)  // without trimming: all 20 000
        #expect(j.waitUntilSynced())
        #expect(j.syncedLines == 20_000)
    }

    @Test("a failed fsync is not retried on the same file: the unacknowledged results are rewritten to a new one")
    func failedFsyncRewrites() throws {
        let dir = directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let j = try OutcomeJournal(directory: dir)
        try j.record(result("F1"))
        #expect(j.waitUntilSynced())
        j.acknowledge(leaseID: "F1")
        let compactionsBefore = j.compactions
        j.failFsyncs(1)
        try j.record(result("F2"))
        try j.record(result("F3"))
        #expect(j.waitUntilSynced())
        // Rewritten: a compaction holding only what is unacknowledged, no ack line.
        #expect(j.compactions == compactionsBefore + 1)
        let lines = try String(contentsOfFile: dir + "/journal.jsonl", encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 2)
        #expect(lines.allSatisfy { $0.hasPrefix("{\"result\":") })
        // Appends go on in the new file.
        try j.record(result("F4"))
        #expect(j.waitUntilSynced())
        #expect(try OutcomeJournal(directory: dir).pending.map(\.leaseID) == ["F2", "F3", "F4"])
    }
}
