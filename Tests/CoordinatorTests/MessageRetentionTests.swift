import Foundation
import HatoTestKit
import Testing
@testable import ClusterProtocol
@testable import HatoConfig
@testable import HatoCoordinator
@testable import HatoCrypto
@testable import SMTPCore
@testable import HatoSupport

/// `coordinator.message_retention`: finished messages leave the queue store with their
/// recipients; open ones, recent ones and ones whose events or DSNs are still due stay.
@Suite("Queue store: finished messages past their retention")
struct MessageRetentionTests {
    let retry = RetryPolicy(schedule: [60, 600], maxAge: 3600)
    let t0 = Date(timeIntervalSince1970: 2_000_000_000)

    func message(_ id: String, _ rcpts: [String], at: Date) -> NewMessage {
        NewMessage(id: id, reversePath: "s@example.org", recipients: rcpts, pool: "t", content: Array("Subject: x\r\n\r\nbody\r\n".utf8),
                   heloName: "c", clientAddress: "127.0.0.1", receivedAt: at)
    }

    /// Leases every due recipient of `id` and reports each with `status`.
    func finish(_ q: any QueueStore, _ id: String, _ status: RecipientResult.Status, code: Int, now: Date) throws {
        let due = try q.dueRecipients(pools: ["t"], now: now, limit: 100).filter { $0.messageID == id }
        #expect(!due.isEmpty)
        let lease = LeaseRecord(id: "L-\(id)-\(Identifier.random(bytes: 3))", node: "node-a", instance: "i1", sendingIP: "127.0.0.10", messageID: id,
                                domain: "x.test", recipientIDs: due.map(\.id), grantedAt: now, expiresAt: now + 300)
        _ = try q.recordLeases([lease])
        _ = try q.applyResult(ResultMessage(leaseID: lease.id, instanceID: "i1", sendingIP: "127.0.0.10", mxHost: "mx.x.test", remoteAddress: "127.0.0.1",
                                            outcomes: due.map { RecipientResult(recipientID: $0.id, status: status, reply: DeliveryStatus(code: code, enhanced: nil, text: "t")) },
                                            finishedAt: 0),
                              node: "node-a", retry: retry, now: now)
    }

    @Test("a finished message stamped in the future (queued while the clock was ahead) stays until its own date and does not hold back the old ones queued after it",
          arguments: StoreKind.allCases)
    func futureStampDoesNotStopThePass(kind: StoreKind) throws {
        let place = try TestStore(kind)
        let q = try place.open()
        let day = 86_400.0
        try q.enqueue(message("OLD0", ["a@x.test"], at: t0))
        try q.enqueue(message("AHEAD", ["f@x.test"], at: t0 + 10 * day))
        try q.enqueue(message("OLD1", ["b@x.test"], at: t0 + 1))
        for id in ["OLD0", "OLD1"] { try finish(q, id, .delivered, code: 250, now: t0 + 100) }
        try finish(q, "AHEAD", .delivered, code: 250, now: t0 + 10 * day)
        // Now is t0 + 1000 s: AHEAD is in the future, OLD0 and OLD1 are past a 500 s retention.
        #expect(try q.deleteFinishedMessages(receivedBefore: t0 + 500, now: t0 + 1000, limit: 10) == 2)
        #expect(try q.message(id: "OLD1") == nil, "the message queued after the future-stamped one went too")
        #expect(try q.message(id: "AHEAD") != nil)
        #expect(try q.deleteFinishedMessages(receivedBefore: t0 + 500, now: t0 + 1000, limit: 10) == 0)
        // Its date has come but not its retention: still not taken for the recent end of the
        // queue — OLD2, queued after it with an older stamp, goes.
        try q.enqueue(message("OLD2", ["c@x.test"], at: t0 + 2))
        try finish(q, "OLD2", .delivered, code: 250, now: t0 + 100)
        #expect(try q.deleteFinishedMessages(receivedBefore: t0 + 1000, now: t0 + 10 * day + 100, limit: 10) == 1)
        #expect(try q.message(id: "OLD2") == nil)
        #expect(try q.message(id: "AHEAD") != nil)
        // Its own date plus the retention: it goes.
        #expect(try q.deleteFinishedMessages(receivedBefore: t0 + 10 * day + 500, now: t0 + 10 * day + 1000, limit: 10) == 1)
        #expect(try q.countsByState().values.reduce(0, +) == 0)
    }

    @Test("old finished messages go with their recipients, in batches of the limit; old open and recent ones stay; one that finishes later goes on a later pass; ids are never reused",
          arguments: StoreKind.allCases)
    func deletesOnlyFinishedAndOld(kind: StoreKind) throws {
        let place = try TestStore(kind)
        let q = try place.open()
        for i in 0..<3 { try q.enqueue(message("OLD\(i)", ["a\(i)@x.test", "b\(i)@x.test"], at: t0 + Double(i))) }
        try q.enqueue(message("OPEN", ["o@x.test"], at: t0 + 5))
        try q.enqueue(message("RECENT", ["r@x.test"], at: t0 + 1000))
        for i in 0..<3 { try finish(q, "OLD\(i)", i == 1 ? .failed : .delivered, code: i == 1 ? 550 : 250, now: t0 + 1100) }
        try finish(q, "RECENT", .delivered, code: 250, now: t0 + 1100)
        try finish(q, "OPEN", .deferred, code: 451, now: t0 + 1100)
        #expect(try q.countsByState().values.reduce(0, +) == 8)
        let highest = try #require(try q.message(id: "RECENT")?.recipients.map(\.id).max())

        let cutoff = t0 + 500
        #expect(try q.deleteFinishedMessages(receivedBefore: cutoff, now: t0 + 86_400, limit: 2) == 2)
        #expect(try q.message(id: "OLD0") == nil && q.message(id: "OLD1") == nil)
        #expect(try q.message(id: "OLD2") != nil)
        #expect(try q.deleteFinishedMessages(receivedBefore: cutoff, now: t0 + 86_400, limit: 10) == 1)
        #expect(try q.deleteFinishedMessages(receivedBefore: cutoff, now: t0 + 86_400, limit: 10) == 0)
        let counts = try q.countsByState()
        #expect(counts.values.reduce(0, +) == 2, "only OPEN's and RECENT's recipients are left: \(counts)")
        #expect(counts[.deferred] == 1 && counts[.delivered] == 1)
        #expect(try q.message(id: "OPEN")?.recipients.count == 1)
        #expect(try q.message(id: "RECENT")?.recipients.count == 1)

        // OPEN finishes at its retry: the next pass finds it although an earlier one passed it by.
        try finish(q, "OPEN", .delivered, code: 250, now: t0 + 1200)
        #expect(try q.deleteFinishedMessages(receivedBefore: cutoff, now: t0 + 86_400, limit: 10) == 1)
        #expect(try q.message(id: "OPEN") == nil)
        // A later cut-off takes RECENT too; a new recipient's id is above every deleted one.
        #expect(try q.deleteFinishedMessages(receivedBefore: t0 + 2000, now: t0 + 86_400, limit: 10) == 1)
        #expect(try q.countsByState().values.reduce(0, +) == 0)
        try q.enqueue(message("NEW", ["n@x.test"], at: t0 + 3000))
        #expect(try #require(try q.message(id: "NEW")?.recipients.first?.id) > highest)
    }

    @Test("PostgreSQL: the pass reads finished messages only (messages_finished), not the old open ones in front of them")
    func postgresPassSkipsOpenMessages() throws {
        let place = try TestStore(.postgresql)
        let q = try place.open()
        // 3000 old messages still open (a retention shorter than the retry schedule), and two
        // finished ones received after them (finished first: `finish` leases what is due).
        for i in 0..<2 {
            try q.enqueue(message("DONE\(i)", ["d\(i)@x.test"], at: t0 + 100 + Double(i)))
            try finish(q, "DONE\(i)", .delivered, code: 250, now: t0 + 200)
        }
        try q.enqueue((0..<3000).map { message("OPEN\($0)", ["o\($0)@x.test"], at: t0 + Double($0) / 100) })
        try TestStore.execute(q, "ANALYZE messages")
        let p = try #require(q as? PostgreSQLQueueStore)
        // The pass's own statement, its parameters written in (EXPLAIN without ANALYZE runs nothing).
        let statement = PostgreSQLQueueStore.retentionStatement
            .replacingOccurrences(of: "$1", with: "\(t0.timeIntervalSince1970 + 500)")
            .replacingOccurrences(of: "$2", with: "500")
        let plan = try p.pool.withConnection { c in try c.query("EXPLAIN " + statement).map { try $0.text(0) } }
        #expect(plan.contains { $0.contains("messages_finished") }, "plan: \(plan.joined(separator: " | "))")
        #expect(try TestStore.count(q, "SELECT count(*) FROM messages WHERE open_recipients <= 0") == 2)
        #expect(try q.deleteFinishedMessages(receivedBefore: t0 + 500, now: t0 + 86_400, limit: 10) == 2)
        #expect(try TestStore.count(q, "SELECT count(*) FROM messages") == 3000)
    }

    @Test("a finished message whose events are not reported yet — a complaint recorded after its content was purged — stays until they are", arguments: StoreKind.allCases)
    func keepsMessagesWithPendingReports(kind: StoreKind) throws {
        let f = try ReportingFixture(kind: kind)
        defer { f.cleanup() }
        try f.store.enqueue(f.message("M1", ["a@hato.test"]))
        try f.deliver("M1", status: .delivered, code: 250, enhanced: "2.0.0", text: "ok")
        try f.report()
        #expect(try f.store.content(of: "M1") == nil, "purged: every event reported")
        let original = try #require(try f.store.complaintOriginal(queueID: "M1"))
        try f.store.recordComplaint(Complaint(at: f.clock.now().timeIntervalSince1970, ip: "127.0.0.10", provider: "other", senderDomain: "example.org",
                                              tenant: nil, recipient: "a@hato.test", queueID: "M1", recipientID: original.recipients[0].id,
                                              feedbackType: "abuse", reportingMTA: nil), suppression: nil)
        let later = f.clock.now() + 100 * 86_400
        #expect(try f.store.deleteFinishedMessages(receivedBefore: later, now: t0 + 86_400, limit: 10) == 0, "its complained event waits")
        try f.report()
        // A delay warning's mark for its recipient goes with it (another message's stays).
        try TestStore.execute(f.store, "INSERT INTO dsn_delay_handled(recipient_id, at) VALUES(\(original.recipients[0].id), 1), (999999, 1)")
        #expect(try f.store.deleteFinishedMessages(receivedBefore: later, now: t0 + 86_400, limit: 10) == 1)
        #expect(try f.store.message(id: "M1") == nil)
        #expect(try TestStore.count(f.store, "SELECT count(*) FROM dsn_delay_handled") == 1)
        #expect(try TestStore.count(f.store, "SELECT count(*) FROM dsn_delay_handled WHERE recipient_id = 999999") == 1)
    }

    @Test("a complaint matched to a message that retention deletes before the complaint is recorded still reaches the message's tenant (event log, webhook routing)",
          arguments: StoreKind.allCases)
    func complaintOutlivesItsMessage(kind: StoreKind) throws {
        let f = try ReportingFixture(kind: kind)
        defer { f.cleanup() }
        var m = f.message("M1", ["a@hato.test"])
        m.tenant = "acme"
        try f.store.enqueue(m)
        try f.deliver("M1", status: .delivered, code: 250, enhanced: "2.0.0", text: "ok")
        try f.report()
        // The intake's match (its own read), then the retention pass deletes the message before
        // the complaint's transaction.
        let original = try #require(try f.store.complaintOriginal(queueID: "M1"))
        #expect(original.tenant == "acme")
        #expect(try f.store.deleteFinishedMessages(receivedBefore: f.clock.now() + 86_400, now: f.clock.now(), limit: 10) == 1)
        #expect(try f.store.message(id: "M1") == nil)
        try f.store.recordComplaint(Complaint(at: f.clock.now().timeIntervalSince1970, ip: "127.0.0.10", provider: "other", senderDomain: "example.org",
                                              tenant: original.tenant, recipient: "a@hato.test", queueID: "M1", recipientID: original.recipients[0].id,
                                              feedbackType: "abuse", reportingMTA: nil), suppression: nil)
        let event = try #require(try f.store.pendingEvents(limit: 10).first { $0.kind == .complained })
        #expect(event.messageID == "M1" && event.tenant == "acme", "the event's own tenant, its message gone")
        var d = EventDisposition()
        d.processed = [event.seq]
        try f.store.completeEvents(d, now: f.clock.now())
        let logged = try f.store.tenantEvents(tenant: "acme", after: 0, limit: 100).filter { $0.kind == "complained" }
        #expect(logged.map(\.messageID) == ["M1"] && logged.first?.recipient == "a@hato.test")
        // A complaint about a message of no tenant still reaches no tenant.
        try f.store.enqueue(f.message("M2", ["b@hato.test"]))
        try f.deliver("M2", status: .delivered, code: 250, enhanced: "2.0.0", text: "ok")
        try f.report()
        let plain = try #require(try f.store.complaintOriginal(queueID: "M2"))
        try f.store.recordComplaint(Complaint(at: f.clock.now().timeIntervalSince1970, ip: "127.0.0.10", provider: "other", senderDomain: "example.org",
                                              tenant: plain.tenant, recipient: "b@hato.test", queueID: "M2", recipientID: plain.recipients[0].id,
                                              feedbackType: "abuse", reportingMTA: nil), suppression: nil)
        let plainEvent = try #require(try f.store.pendingEvents(limit: 10).first { $0.kind == .complained })
        #expect(plainEvent.messageID == "M2" && plainEvent.tenant == nil)
    }

    @Test("counting recipients by state does not take the queue's lock: a metrics scrape never stalls submissions")
    func countsWithoutTheLock() throws {
        let dir = NSTemporaryDirectory() + "hato-counts-" + Identifier.random(bytes: 5)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let q = try SQLiteQueueStore(directory: dir)
        try q.enqueue(message("M1", ["a@x.test", "b@x.test"], at: t0))
        let counted = Locked<[RecipientState: Int]?>(nil)
        let seen = q.lock.withLock { () -> [RecipientState: Int]? in
            let thread = Thread { counted.withLock { $0 = try? q.countsByState() } }
            thread.start()
            let deadline = Date() + 5
            while counted.withLock({ $0 }) == nil && Date() < deadline { usleep(1000) }
            return counted.withLock { $0 }
        }
        #expect(seen?[.queued] == 2, "counted while the lock was held")
    }

    @Test("a batch of messages with many recipients is deleted over several transactions of at most about 5000 recipients each")
    func transactionsCappedByRecipients() throws {
        let dir = NSTemporaryDirectory() + "hato-retain-" + Identifier.random(bytes: 5)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let q = try SQLiteQueueStore(directory: dir)
        for m in 0..<3 {
            try q.enqueue(message("BULK\(m)", (0..<2600).map { "r\($0)@x.test" }, at: t0 + Double(m)))
            let due = try q.dueRecipients(pools: ["t"], now: t0 + 10, limit: 5000).filter { $0.messageID == "BULK\(m)" }
            #expect(due.count == 2600)
            let lease = LeaseRecord(id: "LB\(m)", node: "node-a", instance: "i1", sendingIP: "127.0.0.10", messageID: "BULK\(m)",
                                    domain: "x.test", recipientIDs: due.map(\.id), grantedAt: t0 + 10, expiresAt: t0 + 300)
            _ = try q.recordLeases([lease])
            _ = try q.applyResult(ResultMessage(leaseID: lease.id, instanceID: "i1", sendingIP: "127.0.0.10", mxHost: "mx.x.test", remoteAddress: "127.0.0.1",
                                                outcomes: due.map { RecipientResult(recipientID: $0.id, status: .delivered, reply: DeliveryStatus(code: 250, enhanced: nil, text: "ok")) },
                                                finishedAt: 0),
                                  node: "node-a", retry: retry, now: t0 + 11)
        }
        let commitsBefore = q.commitsForTests
        #expect(try q.deleteFinishedMessages(receivedBefore: t0 + 500, now: t0 + 86_400, limit: 10) == 3)
        // 2600 + 2600 ≥ 5000: the first transaction stops after the second message; the third goes in another.
        #expect(q.commitsForTests - commitsBefore == 2)
        #expect(try q.countsByState().values.reduce(0, +) == 0)
    }
}
