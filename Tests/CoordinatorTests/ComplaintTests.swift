import Foundation
import HatoTestKit
import Testing
@testable import HatoConfig
@testable import HatoCoordinator
@testable import HatoCrypto
@testable import HatoDelivery
@testable import HatoSupport
@testable import SMTPCore

/// The complaint intake (issue 18): which message, recipient, IP, provider, domain and tenant a
/// feedback report counts against (pure), and the complaints table of both stores.
@Suite("Complaints from feedback loops")
struct ComplaintTests {
    static let returned = ARFSamples.crlf("""
        X-Hato-Recipient: QID0000000000000A.12
        Received: from app.test (app.test [127.0.0.1])
        \tby relay.it.test (Hato) with ESMTP id QID0000000000000A
        \tfor <alice@yahoo.test>; Thu, 3 Dec 2026 09:57:59 +0000
        From: Shop <news@shop.test>
        To: <alice@yahoo.test>
        Subject: Sale
        Message-ID: <sale-1@shop.test>

        Buy now
        """)

    static let original = ComplaintOriginal(queueID: "QID0000000000000A", reversePath: "bounce@Shop.test", tenant: "acme", recipients: [
        .init(id: 11, address: "bob@yahoo.test", ip: "127.0.0.11", mx: "mta5.am0.yahoodns.net"),
        .init(id: 12, address: "alice@yahoo.test", ip: "127.0.0.10", mx: "mta6.am0.yahoodns.net"),
    ])

    static func decide(_ bytes: [UInt8], original: ComplaintOriginal?, scope: SuppressionSettings.Scope = .global) throws -> ComplaintIntake.Decision {
        let report = try FeedbackReport.parse(bytes)
        let id = ComplaintIntake.candidateQueueIDs(report).first ?? ""
        return ComplaintIntake.decide(report, original: original, matchedBy: ComplaintIntake.matchSource(report, queueID: id),
                                      sendingIPs: ["127.0.0.10", "127.0.0.11"], providerName: { MailboxProvider.name(forMXHost: $0) },
                                      suppression: SuppressionSettings(scope: scope), now: Date(timeIntervalSince1970: 1_800_000_000))
    }

    @Test("Yahoo/AOL style: the tracked recipient, the recorded IP, the provider from the MX, the sender domain and the tenant")
    func yahooStyle() throws {
        let bytes = ARFSamples.yahoo(returned: Self.returned, recipient: "alice@yahoo.test", mailFrom: "bounce@shop.test", sourceIP: "127.0.0.11")
        let report = try FeedbackReport.parse(bytes)
        #expect(ComplaintIntake.candidateQueueIDs(report) == ["QID0000000000000A"], "the tracking id first, Received's is the same")
        let d = try Self.decide(bytes, original: Self.original)
        #expect(d.matchedBy == "tracking" && d.recipientBy == "tracking")
        #expect(d.complaint == Complaint(at: 1_800_000_000, ip: "127.0.0.10", provider: "yahoo", senderDomain: "shop.test", tenant: "acme",
                                         recipient: "alice@yahoo.test", queueID: "QID0000000000000A", recipientID: 12, feedbackType: "abuse",
                                         reportingMTA: "mta1.mail.gq1.yahoo.com"),
                "the recorded 127.0.0.10 wins over the report's Source-IP 127.0.0.11 (a report's author chooses it)")
        #expect(d.suppression == SuppressionEntry(address: "alice@yahoo.test", scope: nil, category: "complaint",
                                                  reason: "complaint (abuse reported by mta1.mail.gq1.yahoo.com)", source: "complaint",
                                                  messageID: "QID0000000000000A", createdAt: 1_800_000_000, expiresAt: 1_800_000_000 + 90 * 86_400))
        let scoped = try Self.decide(bytes, original: Self.original, scope: .senderDomain)
        #expect(scoped.suppression?.scope == "shop.test", "suppression.scope: sender_domain scopes the entry to the sender's domain")
    }

    @Test("Microsoft JMRP: recipient redacted in Original-Rcpt-To and To:, no Source-IP — the tracking field still finds it, the IP is the recorded one")
    func jmrpRedacted() throws {
        let bytes = ARFSamples.microsoftJMRP(returned: Self.returned, mailFrom: "bounce@shop.test")
        let d = try Self.decide(bytes, original: Self.original)
        #expect(d.complaint.recipient == "alice@yahoo.test" && d.complaint.recipientID == 12)
        #expect(d.complaint.ip == "127.0.0.10")
        #expect(d.suppression?.address == "alice@yahoo.test", "never the redacted address")
        // Without the tracking field, the redacted address matches no recipient and the message has two: nobody is suppressed.
        let untracked = Array(String(decoding: Self.returned, as: UTF8.self).replacingOccurrences(of: "X-Hato-Recipient: QID0000000000000A.12\r\n", with: "").utf8)
        let u = try Self.decide(ARFSamples.microsoftJMRP(returned: untracked, mailFrom: "bounce@shop.test"), original: Self.original)
        #expect(u.matchedBy == "received")
        #expect(u.complaint.recipient == nil && u.suppression == nil)
        #expect(u.complaint.provider == "microsoft" || u.complaint.provider == "other")
    }

    @Test("headers only (text/rfc822-headers): matched by the tracking field; a report about a message that is not ours is counted but suppresses nobody (anyone can send one)")
    func headersOnlyAndUnknown() throws {
        let d = try Self.decide(ARFSamples.headersOnly(returned: Self.returned, sourceIP: "192.0.2.99"), original: Self.original)
        #expect(d.complaint.recipient == "alice@yahoo.test")
        #expect(d.complaint.ip == "127.0.0.10", "a Source-IP that is not ours does not replace the recorded IP")
        let unknown = try Self.decide(ARFSamples.yahoo(returned: Self.returned, recipient: "Carol@Yahoo.test", mailFrom: "x@other.test",
                                                       sourceIP: "127.0.0.10"), original: nil)
        #expect(unknown.matchedBy == "none")
        #expect(unknown.complaint.recipient == "carol@yahoo.test" && unknown.complaint.queueID == nil && unknown.complaint.tenant == nil)
        #expect(unknown.complaint.senderDomain == "other.test", "from Original-Mail-From")
        #expect(unknown.suppression == nil, "an address of the reporter's choosing is not suppressed")
        #expect(unknown.complaint.ip == "127.0.0.10", "with no recorded delivery, a Source-IP of ours stands in")
    }

    @Test("only queue-id-like strings are looked up: a foreign Message-ID's local part with dots or dashes is not")
    func candidates() throws {
        let r = try FeedbackReport.parse(ARFSamples.headersOnly(returned: ARFSamples.crlf("Message-ID: <sale-1.x@shop.test>\nSubject: x\n\n"),
                                                                  sourceIP: "127.0.0.10"))
        #expect(ComplaintIntake.candidateQueueIDs(r).isEmpty)
        let own = try FeedbackReport.parse(ARFSamples.headersOnly(returned: ARFSamples.crlf("Message-ID: <ABCDEFGH1234@relay.it.test>\n\n"),
                                                                    sourceIP: "127.0.0.10"))
        #expect(ComplaintIntake.candidateQueueIDs(own) == ["ABCDEFGH1234"])
        #expect(ComplaintIntake.matchSource(own, queueID: "ABCDEFGH1234") == "message-id")
    }

    @Test("the summary sums per IP, provider, domain, tenant and (IP, provider) pair, most first")
    func summary() {
        let s = ComplaintSummary(groups: [
            ComplaintGroup(ip: "127.0.0.10", provider: "yahoo", senderDomain: "a.test", tenant: "acme", count: 2),
            ComplaintGroup(ip: "127.0.0.10", provider: "gmail", senderDomain: "b.test", tenant: nil, count: 1),
            ComplaintGroup(ip: "127.0.0.11", provider: "yahoo", senderDomain: "a.test", tenant: "acme", count: 4),
        ], since: Date(timeIntervalSince1970: 100))
        #expect(s.total == 7)
        #expect(s.byIp.map { "\($0.key)=\($0.count)" } == ["127.0.0.11=4", "127.0.0.10=3"])
        #expect(s.byProvider.map { "\($0.key)=\($0.count)" } == ["yahoo=6", "gmail=1"])
        #expect(s.bySenderDomain.map { "\($0.key)=\($0.count)" } == ["a.test=6", "b.test=1"])
        #expect(s.byTenant.map { "\($0.key)=\($0.count)" } == ["acme=6", "=1"])
        #expect(s.byIpProvider == [ComplaintCount(ip: "127.0.0.10", provider: "gmail", count: 1), ComplaintCount(ip: "127.0.0.10", provider: "yahoo", count: 2),
                                   ComplaintCount(ip: "127.0.0.11", provider: "yahoo", count: 4)])
    }

    @Test("the store: original lookup, complaint + suppression + complained event in one transaction, counts per (IP, provider), groups, tenant times",
          arguments: StoreKind.allCases)
    func store(kind: StoreKind) throws {
        let place = try TestStore(kind)
        let q = try place.open()
        try q.installReportingSchema()
        let now = Date()
        try q.enqueue(NewMessage(id: "QIDSTORE0001", reversePath: "b@shop.test", recipients: ["alice@yahoo.test", "bob@gmail.test"], pool: "p",
                                 content: Array("Subject: x\r\n\r\nx\r\n".utf8), heloName: "h", clientAddress: "127.0.0.1", receivedAt: now, tenant: "acme"))
        #expect(try q.complaintOriginal(queueID: "NOSUCHQUEUEID") == nil)
        let original = try #require(try q.complaintOriginal(queueID: "QIDSTORE0001"))
        #expect(original.reversePath == "b@shop.test" && original.tenant == "acme")
        #expect(original.recipients.map(\.address) == ["alice@yahoo.test", "bob@gmail.test"])
        _ = try q.pendingEvents(limit: 100).map(\.seq)  // the `received` event
        let rid = original.recipients[0].id
        let c1 = Complaint(at: now.timeIntervalSince1970 - 10, ip: "127.0.0.10", provider: "yahoo", senderDomain: "shop.test", tenant: "acme",
                           recipient: "alice@yahoo.test", queueID: "QIDSTORE0001", recipientID: rid, feedbackType: "abuse", reportingMTA: "mta.yahoo.test")
        try q.recordComplaint(c1, suppression: SuppressionEntry(address: "alice@yahoo.test", category: "complaint", reason: "complaint (abuse)",
                                                                 source: "complaint", messageID: "QIDSTORE0001", createdAt: c1.at))
        try q.recordComplaint(Complaint(at: now.timeIntervalSince1970 - 5, ip: "127.0.0.10", provider: "yahoo", senderDomain: "other.test", tenant: nil,
                                        recipient: nil, queueID: nil, recipientID: nil, feedbackType: "fraud", reportingMTA: nil), suppression: nil)
        try q.recordComplaint(Complaint(at: now.timeIntervalSince1970 - 7200, ip: "127.0.0.11", provider: "gmail", senderDomain: "shop.test", tenant: "acme",
                                        recipient: "old@gmail.test", queueID: nil, recipientID: nil, feedbackType: "abuse", reportingMTA: nil), suppression: nil)
        // The same recipient of the same message again (a replayed report): nothing is written.
        var replay = c1; replay.at += 1; replay.feedbackType = "fraud"
        #expect(try q.recordComplaint(replay, suppression: nil) == false)
        #expect(try q.recordComplaint(Complaint(at: now.timeIntervalSince1970 - 4, ip: "127.0.0.10", provider: "yahoo", senderDomain: "other.test",
                                                tenant: nil, recipient: nil, queueID: nil, recipientID: nil, feedbackType: "abuse", reportingMTA: nil),
                                      suppression: nil) == true, "complaints about unknown messages are not duplicates of each other")
        #expect(try q.isSuppressed(recipient: "Alice@yahoo.test", sender: "x@any.test", scope: .global, now: now))
        #expect(try q.suppressions(address: "alice@yahoo.test", now: now).first?.source == "complaint")
        // The events: `complained` with the recipient, IP, feedback type, provider, reporting MTA and the message's tenant.
        let events = try q.pendingEvents(limit: 100).filter { $0.kind == .complained }
        #expect(events.count == 4, "the replay wrote no event")
        let e = try #require(events.first)
        #expect(e.messageID == "QIDSTORE0001" && e.recipientID == rid && e.address == "alice@yahoo.test" && e.sendingIP == "127.0.0.10")
        #expect(e.textWithoutReply == "abuse" && e.detail == "yahoo" && e.note == "mta.yahoo.test" && e.tenant == "acme")
        #expect(events[1].messageID == "" && events[1].address == nil)
        // Counts.
        let hour = now.addingTimeInterval(-3600)
        #expect(try q.complaintCounts(since: hour) == [ComplaintCount(ip: "127.0.0.10", provider: "yahoo", count: 3)])
        #expect(try q.complaintCounts(since: now.addingTimeInterval(-86_400)) == [ComplaintCount(ip: "127.0.0.10", provider: "yahoo", count: 3),
                                                                             ComplaintCount(ip: "127.0.0.11", provider: "gmail", count: 1)])
        #expect(try q.complaintGroups(since: hour) == [ComplaintGroup(ip: "127.0.0.10", provider: "yahoo", senderDomain: "other.test", tenant: nil, count: 2),
                                                       ComplaintGroup(ip: "127.0.0.10", provider: "yahoo", senderDomain: "shop.test", tenant: "acme", count: 1)])
        #expect(try q.complaintTimes(tenant: "acme", since: hour, limit: 10) == [c1.at])
        #expect(try q.complaintTimes(tenant: "other", since: hour, limit: 10).isEmpty)
        // Processing the events copies the tenant's complaint into its event log (GET /api/v1/events).
        var d = EventDisposition()
        d.processed = try q.pendingEvents(limit: 100).map(\.seq)
        try q.completeEvents(d, now: now)
        #expect(try q.tenantEvents(tenant: "acme", after: 0, limit: 100).map(\.kind).contains("complained"))
    }

    @Test("a tenant's complaint: its own webhook, its event log, the delivery log, hato_complaints_total and the tenant metric; another tenant sees nothing",
          arguments: StoreKind.allCases)
    func tenantComplaint(kind: StoreKind) throws {
        let f = try ReportingFixture(kind: kind)
        defer { f.cleanup() }
        let now = f.clock.now().timeIntervalSince1970
        try f.store.createTenant(Tenant(name: "acme", webhookURL: "http://127.0.0.1:9/acme", webhookSecret: "acme-secret-0123456789", createdAt: now))
        try f.store.createTenant(Tenant(name: "other", webhookURL: "http://127.0.0.1:9/other", webhookSecret: "other-secret-0123456789", createdAt: now))
        let directory = TenantDirectory(store: f.store)
        let service = try ReportingService(config: f.config, store: f.store, clock: f.clock, onEnqueued: {}, tenants: directory)
        var mine = f.message("M1", ["a@yahoo.test"]); mine.tenant = "acme"
        try f.store.enqueue([mine])
        try f.deliver("M1", status: .delivered, code: 250, enhanced: "2.0.0", text: "ok")
        while try service.reporter.runOnce() {}
        let original = try #require(try f.store.complaintOriginal(queueID: "M1"))
        let report = try FeedbackReport.parse(ARFSamples.headersOnly(returned: ARFSamples.crlf("X-Hato-Recipient: M1.\(original.recipients[0].id)\n\n"),
                                                                   sourceIP: "192.0.2.1"))
        let d = ComplaintIntake.decide(report, original: original, matchedBy: "tracking", sendingIPs: [], providerName: { _ in "yahoo" },
                                       suppression: f.config.suppression, now: f.clock.now())
        #expect(d.complaint.tenant == "acme" && d.complaint.recipient == "a@yahoo.test")
        let observed = Locked<[String]>([])
        service.reporter.observeComplaints { ip, mx, at in observed.withLock { $0.append("\(ip) \(mx) \(at.timeIntervalSince1970)") } }
        try f.store.recordComplaint(d.complaint, suppression: d.suppression)
        while try service.reporter.runOnce() {}
        // The reporter tells the reputation signals once: the recorded IP and the MX that took the delivery.
        #expect(observed.snapshot == ["127.0.0.10 mx.hato.test \(d.complaint.at)"])
        let bodies = try f.store.dueWebhooks(hook: "tenant:acme", now: f.clock.now().addingTimeInterval(1), limit: 100)
            .map { String(decoding: $0.body, as: UTF8.self) }
        #expect(bodies.filter { $0.contains("\"event\":\"complained\"") }.count == 1, "\(bodies)")
        #expect(try f.store.dueWebhooks(hook: "tenant:other", now: f.clock.now().addingTimeInterval(1), limit: 100).isEmpty)
        #expect(try f.store.tenantEvents(tenant: "acme", after: 0, limit: 100).map(\.kind).last == "complained")
        #expect(try f.store.tenantEvents(tenant: "other", after: 0, limit: 100).isEmpty)
        let logged = service.deliveryLog.query(messageID: nil, recipient: "a@yahoo.test", limit: 100).filter { $0.event == "complained" }
        #expect(logged.count == 1)
        #expect(logged.first?.tenant == "acme" && logged.first?.provider == "yahoo" && logged.first?.category == "abuse" && logged.first?.messageId == "M1")
        #expect(service.metrics.complaints.value("yahoo") == 1)
        #expect(service.metrics.tenantMessages.value("acme", "complained") == 1)
    }

    @Test("reputation.feedback_addresses: mailboxes, case-insensitive match; a bad address or a duplicate names the key")
    func config() throws {
        func parse(_ extra: String) throws -> ClusterConfig {
            try ClusterConfig.parse("""
                cluster: { name: t, secret: "0123456789abcdef-secret" }
                coordinator: { listen: 127.0.0.1:1, admin_listen: 127.0.0.1:2, admin_token: "0123456789abcdef-token", data_dir: /tmp/x }
                smtp: { listen: [127.0.0.1:3], hostname: relay.t.test }
                nodes: [{ id: n, data_dir: /tmp/x/n }]
                pools: [{ name: p }]
                ips: [{ address: 127.0.0.10, helo: h.t.test, pool: p, nodes: [n] }]
                routing: { default_pool: p }
                \(extra)
                """, path: "/tmp/x/cluster.yml")
        }
        let c = try parse("reputation: { feedback_addresses: [fbl@relay.example, Abuse-FBL@Relay.Example] }")
        #expect(c.reputation.feedbackAddresses.count == 2)
        #expect(c.reputation.isFeedbackAddress(Mailbox(localPart: "FBL", domain: "RELAY.example")))
        #expect(!c.reputation.isFeedbackAddress(Mailbox(localPart: "fbl2", domain: "relay.example")))
        #expect(try parse("").reputation.acceptsFeedback == false)
        #expect(throws: ConfigError.self) { try parse("reputation: { feedback_addresses: [not an address] }") }
        do {
            _ = try parse("reputation: { feedback_addresses: [fbl@relay.example, FBL@relay.example] }")
            Issue.record("a duplicate is refused")
        } catch let e as ConfigError {
            #expect("\(e)".contains("feedback_addresses") && "\(e)".contains("twice"), "\(e)")
        }
    }

    @Test("the tenant overview's complaints per chart point: each time in its bucket, none outside the series")
    func perPoint() {
        let points = (0..<3).map { ActivityTimeline.Point(at: Double(600 + 60 * $0), accepted: 0, delivered: 0, deferred: 0, bounced: 0) }
        #expect(DashboardTenantData.perPoint([599, 600, 659.9, 660, 779, 780, 1000], points: points, bucket: 60) == [2, 1, 1])
        #expect(DashboardTenantData.perPoint([1], points: [], bucket: 60) == [])
    }
}
