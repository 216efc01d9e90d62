import Foundation
import HatoTestKit
import Testing
@testable import ClusterProtocol
@testable import HatoConfig
@testable import HatoCoordinator
@testable import HatoCrypto
@testable import HatoHTTP
@testable import HatoSupport
@testable import SMTPCore

/// A queue + reporter on a temporary directory with a manual clock.
final class ReportingFixture: @unchecked Sendable {
    let dir = NSTemporaryDirectory() + "hato-rep-" + Identifier.random(bytes: 5)
    let clock = ManualClock(Date(timeIntervalSince1970: 2_000_000_000))
    let retry = RetryPolicy(schedule: [60, 600], maxAge: 3600)
    let config: ClusterConfig
    let store: any QueueStore
    /// Where the store lives (a directory or a PostgreSQL schema, removed with the fixture).
    let place: TestStore
    let service: ReportingService
    final class Count: @unchecked Sendable { let lock = NSLock(); var n = 0 }
    private let count = Count()
    var enqueued: Int { count.lock.withLock { count.n } }

    init(kind: StoreKind = .sqlite, extraYAML: String = "") throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let yaml = """
            cluster: { name: t, secret: "0123456789abcdef0123" }
            coordinator: { listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0, admin_token: tok, data_dir: \(dir)/coordinator }
            smtp: { listen: [127.0.0.1:0], hostname: relay.hato.test }
            nodes: [ { id: node-a, data_dir: \(dir)/node-a } ]
            pools: [ { name: t } ]
            ips: [ { address: 127.0.0.10, helo: mta10.hato.test, pool: t } ]
            routing: { default_pool: t }
            retry: { schedule: [1m, 10m], max_age: 1h }
            \(extraYAML)
            """
        config = try ClusterConfig.parse(yaml, path: dir + "/cluster.yml")
        place = try TestStore(kind, directory: config.coordinator.dataDir)
        store = try place.open()
        let c = count
        service = try ReportingService(config: config, store: store, clock: clock, onEnqueued: { c.lock.withLock { c.n += 1 } })
    }

    var reporter: DeliveryReporter { service.reporter }

    func cleanup() { try? FileManager.default.removeItem(atPath: dir) }

    func message(_ id: String, from: String = "app@example.org", _ rcpts: [String]) -> NewMessage {
        NewMessage(id: id, reversePath: from, recipients: rcpts, pool: "t",
                   content: Array("Received: from c by relay.hato.test; x\r\nFrom: <app@example.org>\r\nSubject: order \(id)\r\n\r\nsecret body\r\n".utf8),
                   heloName: "client.test", clientAddress: "127.0.0.1", receivedAt: clock.now())
    }

    /// Leases every due recipient of `messageID` to node-a from 127.0.0.10 for 300 s, recorded
    /// in the store as the scheduler records a grant.
    /// - Returns: the lease and the recipients it holds.
    func leaseDue(_ messageID: String) throws -> (lease: LeaseRecord, due: [DueRecipient]) {
        let due = try store.dueRecipients(pools: ["t"], now: clock.now(), limit: 100).filter { $0.messageID == messageID }
        let lease = LeaseRecord(id: "L-" + Identifier.random(bytes: 4), node: "node-a", instance: "i1", sendingIP: "127.0.0.10", messageID: messageID,
                                domain: due.first?.domain ?? "", recipientIDs: due.map(\.id), grantedAt: clock.now(), expiresAt: clock.now() + 300)
        _ = try store.recordLeases([lease])
        return (lease, due)
    }

    /// Leases every due recipient of `messageID` and applies `outcome` to each.
    func deliver(_ messageID: String, status: RecipientResult.Status, code: Int, enhanced: String?, text: String, mx: String? = "mx.hato.test") throws {
        let (lease, due) = try leaseDue(messageID)
        clock.advance(2)
        let result = ResultMessage(leaseID: lease.id, instanceID: "i1", sendingIP: "127.0.0.10", mxHost: mx, remoteAddress: "127.0.0.1",
                                   outcomes: due.map { RecipientResult(recipientID: $0.id, status: status, reply: DeliveryStatus(code: code, enhanced: enhanced, text: text)) },
                                   finishedAt: clock.now().timeIntervalSince1970)
        _ = try store.applyResult(result, node: "node-a", retry: retry, now: clock.now())
    }

    /// Runs reporter passes until idle.
    func report() throws { while try reporter.runOnce() {} }

    /// Messages queued with a null reverse-path (DSNs), with their content.
    func dsns() throws -> [(id: String, to: [String], content: [UInt8])] {
        try TestStore.nullSenderMessages(store).map { id, body in
            (id, try store.message(id: id)?.recipients.map(\.address) ?? [], body)
        }
    }

    func setNotify(_ value: String, message: String) throws {
        try TestStore.setNotify(store, value, message: message)
    }

    func logLines() -> [DeliveryLogRecord] { service.deliveryLog.query(messageID: nil, recipient: nil, limit: 100_000) }
}

@Suite("Reporting: events, DSNs, suppression, delivery log")
struct ReportingTests {
    @Test("a 550 produces one DSN to the sender from <>, logged as failed and dsn-sent; the original body is purged afterwards", arguments: StoreKind.allCases)
    func failureDSN(kind: StoreKind) throws {
        let f = try ReportingFixture(kind: kind)
        defer { f.cleanup() }
        try f.store.enqueue(f.message("M1", ["nobody@hato.test", "other@hato.test"]))
        try f.report()
        #expect(f.logLines().map(\.event) == ["received"])
        try f.deliver("M1", status: .failed, code: 550, enhanced: "5.1.1", text: "no such user")
        #expect(try f.store.content(of: "M1") != nil, "kept while the DSN is pending")
        try f.report()
        let dsns = try f.dsns()
        #expect(dsns.count == 1)
        #expect(dsns.first?.to == ["app@example.org"])
        let text = String(decoding: dsns.first?.content ?? [], as: UTF8.self)
        #expect(text.contains("Content-Type: multipart/report; report-type=delivery-status;"))
        #expect(text.contains("Final-Recipient: rfc822; nobody@hato.test\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.hato.test\r\n"))
        #expect(text.contains("Final-Recipient: rfc822; other@hato.test"))
        #expect(text.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user"))
        #expect(text.contains("Subject: order M1"))
        #expect(!text.contains("secret body"))
        #expect(f.enqueued == 1, "the scheduler is woken")
        #expect(try f.store.content(of: "M1") == nil, "purged once the DSN is queued")
        let lines = f.logLines()
        #expect(lines.filter { $0.event == "failed" }.count == 2)
        let failed = lines.first { $0.event == "failed" && $0.recipient == "nobody@hato.test" }
        #expect(failed?.category == "bad-mailbox")
        #expect(failed?.node == "node-a")
        #expect(failed?.sendingIp == "127.0.0.10")
        #expect(failed?.mx == "mx.hato.test")
        #expect(failed?.attemptTime == 2)
        #expect(failed?.queueTime == 2)
        #expect(lines.filter { $0.event == "dsn-sent" }.map(\.dsnMessageId) == [dsns.first?.id])
        #expect(lines.contains { $0.event == "received" && $0.messageId == dsns.first?.id && $0.reversePath == "" })
        #expect(f.service.metrics.failed.value("t", "127.0.0.10", "other", "bad-mailbox") == 2)
        #expect(f.service.metrics.dsnQueued.value("failed") == 1)
        // A second pass changes nothing: exactly one DSN.
        try f.report()
        #expect(try f.dsns().count == 1)
    }

    @Test("a finished message leaves the store once coordinator.message_retention (30 days) has passed since its receipt; the delivery log keeps its history", arguments: StoreKind.allCases)
    func messageRetention(kind: StoreKind) throws {
        let f = try ReportingFixture(kind: kind)
        defer { f.cleanup() }
        try f.store.enqueue(f.message("M1", ["a@hato.test"]))
        try f.store.enqueue(f.message("M2", ["b@hato.test"]))
        try f.deliver("M1", status: .delivered, code: 250, enhanced: "2.0.0", text: "ok")
        try f.deliver("M2", status: .deferred, code: 451, enhanced: "4.3.0", text: "later")
        try f.report()
        #expect(try f.store.content(of: "M1") == nil, "purged")
        #expect(try f.store.message(id: "M1") != nil, "kept within the retention")
        f.clock.advance(30 * 86_400 - 60)
        try f.report()
        #expect(try f.store.message(id: "M1") != nil, "a minute short of 30 days")
        f.clock.advance(120)
        try f.report()
        #expect(try f.store.message(id: "M1") == nil)
        #expect(try f.store.message(id: "M2")?.recipients.map(\.state) == [.deferred], "still open: never deleted")
        #expect(f.service.metrics.messagesExpunged.value() == 1)
        #expect(f.logLines().filter { $0.messageId == "M1" }.map(\.event) == ["received", "delivered"])
    }

    @Test("a deferral because no MX could be connected to keeps the MX host, provider and address family in the log and the metrics", arguments: StoreKind.allCases)
    func connectionFailureContext(kind: StoreKind) throws {
        let f = try ReportingFixture(kind: kind, extraYAML: "shaping: { providers: [ { name: examplemail, mx_suffixes: [example-mail.test] } ] }")
        defer { f.cleanup() }
        try f.store.enqueue(f.message("M1", ["user@example-mail.test"]))
        try f.report()
        let (lease, due) = try f.leaseDue("M1")
        var outcome = RecipientResult(recipientID: due[0].id, status: .deferred, reply: DeliveryStatus(code: 451, enhanced: "4.4.1",
                                      text: "cannot connect: mx.example-mail.test[2001:db8::25]:25: connection refused"))
        outcome.connectionFailure = ConnectionFailureContext(mxHost: "mx.example-mail.test", remoteAddress: "2001:db8::25")
        let result = ResultMessage(leaseID: lease.id, instanceID: "i1", sendingIP: "127.0.0.10", mxHost: nil, remoteAddress: nil,
                                   outcomes: [outcome], finishedAt: f.clock.now().timeIntervalSince1970)
        // Through the cluster frame, as a node sends it.
        guard case .result(let decoded) = try ClusterMessage.decode(ClusterMessage.result(result).frame()) else { Issue.record("not a result"); return }
        #expect(decoded.outcomes.first?.connectionFailure?.addressFamily == "ipv6")
        f.reporter.noteResult(decoded)
        _ = try f.store.applyResult(decoded, node: "node-a", retry: f.retry, now: f.clock.now())
        try f.report()
        let deferred = try #require(f.logLines().first { $0.event == "deferred" })
        #expect(deferred.mx == "mx.example-mail.test")
        #expect(deferred.provider == "examplemail")
        #expect(deferred.addressFamily == "ipv6")
        #expect(deferred.connectFailed == true)
        #expect(deferred.remoteAddress == "2001:db8::25")
        #expect(f.service.metrics.deferred.value("t", "127.0.0.10", "examplemail", "connection") == 1
                || f.service.metrics.deferred.value("t", "127.0.0.10", "examplemail", deferred.category ?? "") == 1)
        #expect(f.service.metrics.deferred.value("t", "127.0.0.10", "unknown", deferred.category ?? "") == 0)
        let json = String(decoding: deferred.json(), as: UTF8.self)
        #expect(json.contains("\"address_family\":\"ipv6\"") && json.contains("\"connect_failed\":true"))
    }

    @Test("the result writer hands a result's session details to reporting before its transaction: a reporter pass between the commit and `applied` logs TLS and timings", arguments: StoreKind.allCases)
    func detailsBeforeCommit(kind: StoreKind) throws {
        let f = try ReportingFixture(kind: kind)
        defer { f.cleanup() }
        try f.store.enqueue(f.message("M1", ["nobody@hato.test"]))
        try f.report()
        let (lease, due) = try f.leaseDue("M1")
        var outcome = RecipientResult(recipientID: due[0].id, status: .failed, reply: DeliveryStatus(code: 550, enhanced: "5.1.1", text: "no such user"))
        outcome.mxHost = "mx.hato.test"
        outcome.timings = DeliveryTimings(resolve: 0.001, connect: 0.002, setup: 0.003, transaction: 0.004)
        let result = ResultMessage(leaseID: lease.id, instanceID: "i1", sendingIP: "127.0.0.10", mxHost: "mx.hato.test", remoteAddress: "127.0.0.1",
                                   outcomes: [outcome], finishedAt: f.clock.now().timeIntervalSince1970)
        final class Seen: @unchecked Sendable { let lock = NSLock(); var eventsBefore = -1; var linesAtApplied: [DeliveryLogRecord] = [] }
        let seen = Seen()
        let store = f.store, service = f.service
        let writer = ResultWriter(store: store, retryPolicy: { f.retry }, clock: f.clock, log: Logger(label: "test"), willApply: { batch in
            // What the hub's preview does; nothing of the batch is readable yet.
            let failed = (try? store.pendingEvents(limit: 100))?.filter { $0.kind == .failed }.count ?? -1
            seen.lock.withLock { seen.eventsBefore = failed }
            for item in batch { service.noteDetails(item.result) }
        }) { _, _ in
            // The reporter thread wins the race against the hub's after-commit observer.
            try? f.report()
            seen.lock.withLock { seen.linesAtApplied = f.logLines() }
        }
        writer.start()
        defer { writer.stop() }
        writer.enqueue(ResultWriter.Item(result: result, node: "node-a", connection: ConnectionID(1)))
        writer.flush(timeout: .seconds(30))
        let (before, lines) = seen.lock.withLock { (seen.eventsBefore, seen.linesAtApplied) }
        #expect(before == 0, "the preview runs before the transaction")
        let failed = try #require(lines.first { $0.event == "failed" })
        #expect(failed.tls == false)
        #expect(failed.timings == outcome.timings)
    }

    @Test("a message from <> never gets a DSN, even when it fails", arguments: StoreKind.allCases)
    func nullSenderNoDSN(kind: StoreKind) throws {
        let f = try ReportingFixture(kind: kind)
        defer { f.cleanup() }
        try f.store.enqueue(f.message("M1", from: "", ["nobody@hato.test"]))
        try f.deliver("M1", status: .failed, code: 550, enhanced: "5.1.1", text: "no such user")
        try f.report()
        #expect(try f.dsns().map(\.id) == ["M1"], "only the original null-sender message")
        #expect(f.logLines().contains { $0.event == "failed" })
        #expect(try f.store.content(of: "M1") == nil)
    }

    @Test("NOTIFY=NEVER suppresses the DSN; NOTIFY=SUCCESS gives a relayed report for a delivery", arguments: StoreKind.allCases)
    func notify(kind: StoreKind) throws {
        let f = try ReportingFixture(kind: kind)
        defer { f.cleanup() }
        try f.store.enqueue(f.message("M1", ["nobody@hato.test"]))
        try f.setNotify("NEVER", message: "M1")
        try f.deliver("M1", status: .failed, code: 550, enhanced: "5.1.1", text: "no such user")
        try f.store.enqueue(f.message("M2", ["ok@hato.test"]))
        try f.setNotify("SUCCESS,FAILURE", message: "M2")
        try f.deliver("M2", status: .delivered, code: 250, enhanced: "2.0.0", text: "ok")
        try f.report()
        let dsns = try f.dsns()
        #expect(dsns.count == 1)
        let text = String(decoding: dsns.first?.content ?? [], as: UTF8.self)
        #expect(text.contains("Final-Recipient: rfc822; ok@hato.test\r\nAction: relayed\r\nStatus: 2.0.0"))
        #expect(text.contains("Subject: Successful Mail Delivery Report"))
        #expect(!text.contains("nobody@hato.test"))
        #expect(DeliveryReporter.notifyAllows(nil, "FAILURE") && DeliveryReporter.notifyAllows(nil, "DELAY") && !DeliveryReporter.notifyAllows(nil, "SUCCESS"))
        #expect(!DeliveryReporter.notifyAllows("never", "FAILURE"))
        #expect(DeliveryReporter.notifyAllows("SUCCESS, DELAY", "DELAY"))
    }

    @Test("expired recipients get a 4.4.7 failure report; a long-deferred one gets one delay warning first", arguments: StoreKind.allCases)
    func expiryAndDelay(kind: StoreKind) throws {
        let f = try ReportingFixture(kind: kind, extraYAML: "dsn: { delay_warning: 30m }")
        defer { f.cleanup() }
        f.reporter.delayScanInterval = 0
        try f.store.enqueue(f.message("M1", ["slow@hato.test"]))
        try f.deliver("M1", status: .deferred, code: 451, enhanced: "4.7.1", text: "greylisted, try again later")
        try f.report()
        #expect(try f.dsns().isEmpty)
        #expect(f.logLines().last?.category == "rate-limited")
        #expect(f.logLines().last?.nextAttempt != nil)
        f.clock.advance(1800)
        try f.report()
        try f.report()
        var dsns = try f.dsns()
        #expect(dsns.count == 1)
        let delay = String(decoding: dsns.first?.content ?? [], as: UTF8.self)
        #expect(delay.contains("Action: delayed\r\nStatus: 4.7.1"))
        #expect(delay.contains("Will-Retry-Until: "))
        #expect(try f.store.content(of: "M1") != nil, "still needed for delivery")
        f.clock.advance(1800)
        #expect(try f.store.expireOld(maxAge: 3600, now: f.clock.now()) == 1)
        try f.report()
        dsns = try f.dsns()
        #expect(dsns.count == 2, "one delay warning, one failure report")
        let failure = String(decoding: dsns.last?.content ?? [], as: UTF8.self)
        #expect(failure.contains("Action: failed\r\nStatus: 4.4.7"))
        #expect(f.logLines().contains { $0.event == "expired" && $0.recipient == "slow@hato.test" })
    }

    @Test("a recipient deferred only after its message is behind the delay-warning scan still gets exactly one warning", arguments: StoreKind.allCases)
    func lateDeferralWarned(kind: StoreKind) throws {
        let f = try ReportingFixture(kind: kind, extraYAML: "dsn: { delay_warning: 30m }")
        defer { f.cleanup() }
        f.reporter.delayScanInterval = 0
        try f.store.enqueue(f.message("M1", ["early@hato.test", "late@hato.test"]))
        let due = try f.store.dueRecipients(pools: ["t"], now: f.clock.now(), limit: 10)
        #expect(due.count == 2)
        // Two leases: the first recipient is deferred at once, the second stays in delivery.
        let leases = due.map { r in
            LeaseRecord(id: "L-\(r.id)", node: "node-a", instance: "i1", sendingIP: "127.0.0.10", messageID: "M1", domain: r.domain,
                        recipientIDs: [r.id], grantedAt: f.clock.now(), expiresAt: f.clock.now() + 7200)
        }
        _ = try f.store.recordLeases(leases)
        func defer_(_ i: Int) throws {
            let result = ResultMessage(leaseID: leases[i].id, instanceID: "i1", sendingIP: "127.0.0.10", mxHost: "mx.hato.test", remoteAddress: "127.0.0.1",
                                       outcomes: [RecipientResult(recipientID: due[i].id, status: .deferred, reply: DeliveryStatus(code: 451, enhanced: "4.4.1", text: "try later"))],
                                       finishedAt: f.clock.now().timeIntervalSince1970)
            _ = try f.store.applyResult(result, node: "node-a", retry: f.retry, now: f.clock.now())
        }
        try defer_(0)
        try f.report()
        f.clock.advance(1900)
        try f.report()
        // The scan found the deferred recipient (its warning waits for the other recipient's
        // first result, to share one DSN); the message is now behind the scan's watermark.
        // The second recipient is deferred only now: no later scan covers its message.
        try defer_(1)
        try f.report()
        f.clock.advance(60)
        try f.report()
        let dsns = try f.dsns()
        #expect(dsns.count == 1)
        let texts = dsns.map { String(decoding: $0.content, as: UTF8.self) }
        #expect(texts.allSatisfy { $0.contains("Action: delayed") })
        #expect(texts.filter { $0.contains("late@hato.test") }.count == 1)
        #expect(texts.filter { $0.contains("early@hato.test") }.count == 1)
    }

    @Test("failures of one message wait for its other recipients' first results, then share one DSN", arguments: StoreKind.allCases)
    func oneDSNPerMessage(kind: StoreKind) throws {
        let f = try ReportingFixture(kind: kind)
        defer { f.cleanup() }
        try f.store.enqueue(f.message("M1", ["a@one.test", "b@two.test"]))
        let due = try f.store.dueRecipients(pools: ["t"], now: f.clock.now(), limit: 10)
        for (i, r) in due.enumerated() {
            let lease = LeaseRecord(id: "L\(i)", node: "node-a", instance: "i1", sendingIP: "127.0.0.10", messageID: "M1", domain: r.domain,
                                    recipientIDs: [r.id], grantedAt: f.clock.now(), expiresAt: f.clock.now() + 300)
            _ = try f.store.recordLeases([lease])
        }
        _ = try f.store.applyResult(ResultMessage(leaseID: "L0", instanceID: "i1", sendingIP: "127.0.0.10", mxHost: "mx.one.test", remoteAddress: nil,
                                                  outcomes: [RecipientResult(recipientID: due[0].id, status: .failed, reply: DeliveryStatus(code: 550, enhanced: "5.1.1", text: "unknown"))],
                                                  finishedAt: 0), node: "node-a", retry: f.retry, now: f.clock.now())
        try f.report()
        #expect(try f.dsns().isEmpty, "b@two.test is still in flight")
        _ = try f.store.applyResult(ResultMessage(leaseID: "L1", instanceID: "i1", sendingIP: "127.0.0.10", mxHost: "mx.two.test", remoteAddress: nil,
                                                  outcomes: [RecipientResult(recipientID: due[1].id, status: .failed, reply: DeliveryStatus(code: 552, enhanced: "5.2.2", text: "mailbox full"))],
                                                  finishedAt: 0), node: "node-a", retry: f.retry, now: f.clock.now())
        try f.report()
        let dsns = try f.dsns()
        #expect(dsns.count == 1)
        let text = String(decoding: dsns.first?.content ?? [], as: UTF8.self)
        #expect(text.contains("Final-Recipient: rfc822; a@one.test") && text.contains("Final-Recipient: rfc822; b@two.test"))
    }

    @Test("a hard bounce suppresses the address; the next message to it is marked suppressed without an attempt and reported", arguments: StoreKind.allCases)
    func hardBounceSuppression(kind: StoreKind) throws {
        let f = try ReportingFixture(kind: kind, extraYAML: "suppression: { expire_after: 1d }")
        defer { f.cleanup() }
        try f.store.enqueue(f.message("M1", ["Nobody@Hato.test"]))
        try f.deliver("M1", status: .failed, code: 550, enhanced: "5.1.1", text: "user unknown")
        try f.report()
        let entries = try f.store.suppressions(now: f.clock.now())
        #expect(entries.map(\.address) == ["nobody@hato.test"])
        #expect(entries.first?.category == "bad-mailbox")
        #expect(entries.first?.scope == nil)
        #expect(entries.first?.expiresAt == f.clock.now().timeIntervalSince1970 + 86_400)
        // A soft failure (mailbox full) does not suppress.
        try f.store.enqueue(f.message("M2", ["full@hato.test"]))
        try f.deliver("M2", status: .failed, code: 552, enhanced: "5.2.2", text: "mailbox full")
        try f.report()
        #expect(try f.store.suppressions(now: f.clock.now()).count == 1)

        try f.store.enqueue(f.message("M3", ["nobody@hato.test", "fine@hato.test"]))
        let m3 = try f.store.message(id: "M3")
        #expect(m3?.recipients.map(\.state) == [.suppressed, .queued])
        #expect(try f.store.dueRecipients(pools: ["t"], now: f.clock.now(), limit: 10).filter { $0.messageID == "M3" }.map(\.address) == ["fine@hato.test"])
        try f.deliver("M3", status: .delivered, code: 250, enhanced: "2.0.0", text: "ok")
        try f.report()
        #expect(f.logLines().contains { $0.event == "suppressed" && $0.messageId == "M3" && $0.recipient == "nobody@hato.test" })
        let last = (try f.dsns().last.map { String(decoding: $0.content, as: UTF8.self) } ?? "").replacingOccurrences(of: "\r\n ", with: " ")
        #expect(last.contains("Final-Recipient: rfc822; nobody@hato.test\r\nAction: failed\r\nStatus: 5.1.1"))
        #expect(last.contains("Diagnostic-Code: X-Hato; 550 5.1.1 recipient address is on the suppression list"))
        #expect(try f.store.countsByState()[.suppressed] == 1)
        #expect(f.service.metrics.suppressed.value("t") == 1)
        // Expiry: after a day the address is tried again.
        f.clock.advance(86_401)
        try f.store.enqueue(f.message("M4", ["nobody@hato.test"]))
        #expect(try f.store.message(id: "M4")?.recipients.first?.state == .queued)
    }

    @Test("suppression scope sender_domain: an entry blocks only that sender domain; global entries block all", arguments: StoreKind.allCases)
    func senderDomainScope(kind: StoreKind) throws {
        let f = try ReportingFixture(kind: kind, extraYAML: "suppression: { scope: sender_domain }")
        defer { f.cleanup() }
        try f.store.enqueue(f.message("M1", from: "app@shop.example", ["gone@hato.test"]))
        try f.deliver("M1", status: .failed, code: 550, enhanced: "5.1.1", text: "user unknown")
        try f.report()
        #expect(try f.store.suppressions(now: f.clock.now()).first?.scope == "shop.example")
        #expect(try f.store.isSuppressed(recipient: "GONE@hato.test", sender: "other@shop.example", scope: .senderDomain, now: f.clock.now()))
        #expect(try !f.store.isSuppressed(recipient: "gone@hato.test", sender: "x@blog.example", scope: .senderDomain, now: f.clock.now()))
        #expect(try f.store.isSuppressed(recipient: "gone@hato.test", sender: "x@blog.example", scope: .global, now: f.clock.now()))
        try f.store.enqueue(f.message("M2", from: "news@blog.example", ["gone@hato.test"]))
        try f.store.enqueue(f.message("M3", from: "billing@SHOP.example", ["gone@hato.test"]))
        #expect(try f.store.message(id: "M2")?.recipients.first?.state == .queued)
        #expect(try f.store.message(id: "M3")?.recipients.first?.state == .suppressed)
        try f.store.addSuppressions([SuppressionEntry(address: "all@hato.test", source: "operator", createdAt: 0)])
        try f.store.enqueue(f.message("M4", from: "news@blog.example", ["all@hato.test"]))
        #expect(try f.store.message(id: "M4")?.recipients.first?.state == .suppressed)
        #expect(try f.store.removeSuppression(address: "ALL@hato.test", scope: nil) == 1)
        #expect(try f.store.removeSuppression(address: "gone@hato.test", scope: "") == 0, "only a domain entry exists")
        #expect(try f.store.removeSuppression(address: "gone@hato.test", scope: "shop.example") == 1)
        #expect(try f.store.suppressions(now: f.clock.now()).isEmpty)
    }

    @Test("reject_at_rcpt mode does not mark at enqueue; isSuppressed answers for the SMTP session", arguments: StoreKind.allCases)
    func rejectMode(kind: StoreKind) throws {
        let f = try ReportingFixture(kind: kind, extraYAML: "suppression: { mode: reject_at_rcpt }")
        defer { f.cleanup() }
        try f.store.addSuppressions([SuppressionEntry(address: "x@hato.test", source: "operator", createdAt: 0)])
        try f.store.enqueue(f.message("M1", ["x@hato.test"]))
        #expect(try f.store.message(id: "M1")?.recipients.first?.state == .queued)
        #expect(try f.store.isSuppressed(recipient: "x@hato.test", sender: "a@b.test", scope: .global, now: f.clock.now()))
        let reply = f.store.suppressionReply(recipient: "X@hato.test", sender: "a@b.test", settings: f.config.suppression, now: f.clock.now())
        #expect(reply?.description == "550 5.1.1 <X@hato.test>: recipient address is suppressed\r\n")
        #expect(f.store.suppressionReply(recipient: "y@hato.test", sender: "a@b.test", settings: f.config.suppression, now: f.clock.now()) == nil)
        #expect(f.store.suppressionReply(recipient: "x@hato.test", sender: "a@b.test", settings: SuppressionSettings(), now: f.clock.now()) == nil,
                "mark_suppressed mode accepts at RCPT")
    }

    @Test("the admin routes list, add and remove suppressions and query the log; /metrics needs no token", arguments: StoreKind.allCases)
    func api(kind: StoreKind) throws {
        let f = try ReportingFixture(kind: kind)
        defer { f.cleanup() }
        let api = f.service.api
        func req(_ method: String, _ path: String, query: [String: String] = [:], body: String = "", token: Bool = true) -> HTTPResponse? {
            api.handle(HTTPRequest(method: method, path: path, query: query, headers: token ? ["authorization": "Bearer tok"] : [:], body: Array(body.utf8)))
        }
        #expect(req("GET", "/v1/status") == nil, "other routes fall through")
        #expect(req("GET", "/v1/suppressions", token: false)?.status == 401)
        #expect(req("POST", "/v1/suppressions", body: "{\"address\": \"bad address\"}")?.status == 400)
        #expect(req("POST", "/v1/suppressions", body: "{\"address\": \"Op@Hato.test\", \"reason\": \"complaint\", \"expires_in\": 60}")?.status == 200)
        let list = try JSONSerialization.jsonObject(with: Data(req("GET", "/v1/suppressions")?.body ?? [])) as? [[String: Any]] ?? []
        #expect(list.count == 1)
        #expect(list.first?["address"] as? String == "op@hato.test")
        #expect(list.first?["source"] as? String == "operator")
        #expect(req("DELETE", "/v1/suppressions/op@hato.test")?.status == 200)
        #expect(req("DELETE", "/v1/suppressions/op@hato.test")?.status == 404)
        try f.store.enqueue(f.message("M1", ["a@hato.test"]))
        try f.deliver("M1", status: .delivered, code: 250, enhanced: "2.0.0", text: "ok")
        try f.report()
        let log = try JSONSerialization.jsonObject(with: Data(req("GET", "/v1/log", query: ["message": "M1"])?.body ?? [])) as? [[String: Any]] ?? []
        #expect(log.map { $0["event"] as? String ?? "" } == ["received", "delivered"])
        let byRcpt = try JSONSerialization.jsonObject(with: Data(req("GET", "/v1/log", query: ["recipient": "A@hato.test"])?.body ?? [])) as? [[String: Any]] ?? []
        #expect(byRcpt.map { $0["event"] as? String ?? "" } == ["delivered"])
        #expect(req("GET", "/v1/log")?.status == 400)
        let metrics = req("GET", "/metrics", token: false)
        #expect(metrics?.status == 200)
        #expect(metrics?.contentType.hasPrefix("text/plain; version=0.0.4") == true)
        let text = String(decoding: metrics?.body ?? [], as: UTF8.self)
        #expect(text.contains("hato_recipients_delivered_total{pool=\"t\",provider=\"other\",sending_ip=\"127.0.0.10\"} 1") ||
                text.contains("hato_recipients_delivered_total{pool=\"t\",sending_ip=\"127.0.0.10\",provider=\"other\"} 1"))
        #expect(text.contains("hato_queue_recipients{state=\"delivered\"} 1"))
        #expect(text.contains("hato_delivery_latency_seconds_count{pool=\"t\"} 1"))
    }

    @Test("the events survive a restart: a failure recorded before a crash still gets its DSN", arguments: StoreKind.allCases)
    func eventsSurviveRestart(kind: StoreKind) throws {
        let dir: String
        let place: TestStore
        do {
            let f = try ReportingFixture(kind: kind)
            dir = f.config.coordinator.dataDir
            place = f.place
            try f.store.enqueue(f.message("M1", ["nobody@hato.test"]))
            try f.deliver("M1", status: .failed, code: 550, enhanced: "5.1.1", text: "no such user")
            // No reporter pass: the "crash" happens here.
        }
        let config = try ClusterConfig.parse("""
            cluster: { name: t, secret: "0123456789abcdef0123" }
            coordinator: { listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0, admin_token: tok, data_dir: \(dir) }
            smtp: { listen: [127.0.0.1:0], hostname: relay.hato.test }
            nodes: [ { id: node-a, data_dir: \(dir)-node } ]
            pools: [ { name: t } ]
            ips: [ { address: 127.0.0.10, helo: mta10.hato.test, pool: t } ]
            routing: { default_pool: t }
            """, path: "/tmp/x.yml")
        defer { try? FileManager.default.removeItem(atPath: (dir as NSString).deletingLastPathComponent) }
        let store = try place.open()
        let service = try ReportingService(config: config, store: store, onEnqueued: {})
        while try service.reporter.runOnce() {}
        #expect(try TestStore.nullSenderMessages(store).count == 1)
    }
}

@Suite("Delivery log files")
struct DeliveryLogTests {
    @Test("rotation by size keeps N files and queries read across them")
    func rotation() throws {
        let dir = NSTemporaryDirectory() + "hato-log-" + Identifier.random(bytes: 5)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let log = try DeliveryLog(directory: dir, maxFileSize: 4096, keepFiles: 2)
        var all: [DeliveryLogRecord] = []
        for i in 0..<100 {
            var r = DeliveryLogRecord(id: "M\(i % 10).\(i)", ts: "2026-01-01T00:00:00.000Z", event: "delivered", messageId: "M\(i % 10)")
            r.recipient = "user\(i)@hato.test"
            r.reply = String(repeating: "x", count: 40)
            all.append(r)
            try log.append([r])
        }
        let files = log.files()
        #expect(files.count == 3, "current + 2 rotated: \(files)")
        for f in files {
            let size = (try FileManager.default.attributesOfItem(atPath: f)[.size] as? NSNumber)?.intValue ?? 0
            #expect(size <= 4096)
        }
        #expect(!FileManager.default.fileExists(atPath: log.rotatedPath(3)))
        // Every kept line parses and is in order; the oldest were rotated away.
        let kept = log.query(messageID: nil, recipient: nil, limit: 1000)
        #expect(kept.count < 100 && kept.count > 40)
        #expect(kept == Array(all.suffix(kept.count)))
        #expect(log.query(messageID: "M3", recipient: nil).allSatisfy { $0.messageId == "M3" })
        #expect(log.query(messageID: nil, recipient: "USER99@hato.test").map(\.id) == ["M9.99"])
        #expect(log.query(messageID: "M9", recipient: nil, limit: 2).map(\.id) == ["M9.89", "M9.99"])
        // A batch bigger than a file still rotates cleanly.
        try log.append(Array(repeating: all[0], count: 200))
        #expect(log.files().count == 3)
    }

    @Test("a torn last line (crash mid-write) is skipped by queries")
    func tornLine() throws {
        let dir = NSTemporaryDirectory() + "hato-log-" + Identifier.random(bytes: 5)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let log = try DeliveryLog(directory: dir, maxFileSize: 1 << 20, keepFiles: 2)
        try log.append([DeliveryLogRecord(id: "A.1", ts: "t", event: "received", messageId: "A")])
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: log.currentPath))
        h.seekToEndOfFile()
        h.write(Data("{\"id\":\"A.2\",\"event\":\"deliv".utf8))
        try h.close()
        #expect(log.query(messageID: "A", recipient: nil).map(\.id) == ["A.1"])
    }
}
