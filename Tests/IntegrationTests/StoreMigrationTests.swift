import ClusterProtocol
import Foundation
import HatoConfig
@testable import HatoCoordinator
import HatoCrypto
import HatoIO
import HatoSupport
import HatoTestKit
import SMTPCore
import Testing

/// What a queue store holds, read through the `QueueStore` API only: equal snapshots of the
/// SQLite queue and of the PostgreSQL store after a migration mean the coordinator sees the same
/// queue on both.
private struct QueueSnapshot: Equatable {
    var messages: [MessageRecord] = []
    var contents: [[UInt8]?] = []
    var submissions: [String] = []
    var counts: [RecipientState: Int] = [:]
    var leases: [LeaseRecord] = []
    var leasesPerNode: [String: Int] = [:]
    var draining: Set<String> = []
    var owners: [String: String] = [:]
    var daily: [[String: Int]] = []
    var backoffs: [BackoffTable.Entry] = []
    var pauses: [String] = []
    var suppressions: [String] = []
    var events: [QueueEvent] = []
    var eventCount = 0
    var webhooks: [WebhookOutboxRow] = []
    var webhookCount = 0
    var nextWebhook: Date?
    var dsns: [String] = []
    var nextDue: Date?
    var waiting: [WaitingRecipient] = []
    var delayCandidates: [QueueEvent] = []
    var tenants: [Tenant] = []
    var tenantUsers: [TenantSMTPUser] = []
    var apiKeys: [APIKeyRecord] = []
    var sendingDomains: [SendingDomain] = []
    var usage: [TenantUsage] = []
    var tenantsVersion: Int64 = 0
    var tenantEvents: [TenantEvent] = []
    var idempotency: IdempotencyRecord?
    /// The lease query's answer: transactional first (`recipients.priority` copied).
    var due: [DueRecipient] = []

    init(_ s: any QueueStore, ids: [String], hooks: [String], days: [Int], now: Date) throws {
        for id in ids {
            messages.append(try #require(try s.message(id: id)))
            contents.append(try s.content(of: id))
            submissions.append(String(describing: try s.submissionRecord(messageID: id)))
        }
        counts = try s.countsByState()
        leases = try s.allLeases().sorted { $0.id < $1.id }
        leasesPerNode = try s.leasesPerNode()
        draining = try s.drainingNodes()
        owners = try s.ipOwners()
        daily = try days.map { try s.dailyAttempts(day: $0) }
        backoffs = try s.activeBackoffs(now: now).sorted { ($0.sendingIP, $0.provider) < ($1.sendingIP, $1.provider) }
        pauses = try s.pauses().map { "\($0)" }.sorted()
        suppressions = try s.suppressions(address: nil, now: now, limit: 10_000).map { "\($0)" }.sorted()
        events = try s.pendingEvents(limit: 100_000)
        eventCount = try s.pendingEventCount()
        webhooks = try hooks.flatMap { try s.dueWebhooks(hook: $0, now: now + 86_400, limit: 10_000) }
        webhookCount = try s.webhookOutboxCount()
        nextWebhook = try s.nextWebhookDue()
        dsns = try s.readyDSNs(now: now + 86_400, hold: 0, limit: 10_000).map { "\($0)" }.sorted()
        nextDue = try s.nextDueTime()
        waiting = try s.waitingRecipients(RecipientSelector(), after: 0, limit: 100_000).rows
        delayCandidates = try s.delayWarningCandidates(receivedAfter: 0, upTo: now.timeIntervalSince1970 + 1, limit: 100_000)
        tenants = try s.tenants()
        due = try s.dueRecipients(pools: ["transactional"], now: now + 86_400, limit: 100_000)
        tenantUsers = try s.tenantUsers(tenant: nil)
        apiKeys = try s.apiKeys(tenant: nil)
        sendingDomains = try s.sendingDomains(tenant: nil)
        usage = try ["acme", "beta"].map { try s.usage(tenant: $0, now: now) }
        tenantsVersion = try s.tenantsVersion()
        tenantEvents = try s.tenantEvents(tenant: "acme", after: 0, limit: 100_000)
        idempotency = try s.idempotencyRecord(tenant: "acme", key: "order-4")
    }
}

/// A SQLite queue filled through `SQLiteQueueStore`'s own API with recipients in every state
/// and a row in every table.
private struct FilledQueue {
    let ids: [String]
    let hooks = ["http://127.0.0.1:9/hook-a", "http://127.0.0.1:9/hook-b"]
    let days: [Int]
    let now: Date

    /// Content with every octet value, NUL and bare CR/LF included, and a 64 KiB body for one in four.
    static func content(_ i: Int) -> [UInt8] {
        var bytes = Array("Received: from c by relay.it.test\r\nSubject: message \(i)\r\n\r\n".utf8) + (0...255).map { UInt8($0) }
        if i % 4 == 0 { bytes += (0..<65_536).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ i) } }
        return bytes + Array("\r\n.\r\n\0end".utf8)
    }

    /// Fills `store` with `count` messages (at least 12), two recipients each, in every state.
    init(_ store: SQLiteQueueStore, count: Int, bootID: String = "boot-before") throws {
        let now = Date()
        self.now = now
        let day = Queue.utcDay(now)
        days = [day - 1, day]
        let retry = RetryPolicy(schedule: [600, 3600], maxAge: 86_400)
        try store.installReportingSchema()
        _ = try store.beginRun(bootID: bootID, now: now)
        _ = try store.beginTerm(coordinatorID: "coordinator")
        try store.addSuppressions([SuppressionEntry(address: "gone@d1.test", reason: "hard bounce", source: "bounce", createdAt: now.timeIntervalSince1970 - 10),
                                   SuppressionEntry(address: "scoped@d2.test", scope: "example.org", category: "policy", reason: "complaint",
                                                    source: "operator", createdAt: now.timeIntervalSince1970 - 5, expiresAt: now.timeIntervalSince1970 + 86_400)])
        try store.configureSuppressionAtEnqueue(scope: .global)
        // The tenant layer: a tenant of every kind of row, one message in ten its own.
        try store.createTenant(Tenant(name: "acme", pool: "transactional", limits: TenantLimits(messagesPerHour: 100, messagesPerMonth: 5000, recipientsPerMessage: 10),
                                      webhookURL: "https://hooks.acme.test/events", webhookSecret: "sealed-secret", createdAt: now.timeIntervalSince1970 - 100))
        try store.createTenant(Tenant(name: "beta", state: .suspended, stateReason: "unpaid invoice", createdAt: now.timeIntervalSince1970 - 50,
                                      priority: .bulk))
        try store.addTenantUser(TenantSMTPUser(name: "acme-smtp", tenant: "acme", passwordHash: "$pbkdf2-sha256$1000$c2FsdA$aGFzaA", createdAt: now.timeIntervalSince1970 - 90))
        let secretHash = (0..<32).map { UInt8($0 * 8) }
        try store.addAPIKey(APIKeyRecord(id: "0123456789abcdef", tenant: "acme", label: "billing app", secretHash: secretHash, createdAt: now.timeIntervalSince1970 - 80))
        try store.addAPIKey(APIKeyRecord(id: "fedcba9876543210", tenant: "beta", label: "old", secretHash: secretHash.reversed(), createdAt: now.timeIntervalSince1970 - 70))
        try store.revokeAPIKey(id: "fedcba9876543210", tenant: "beta", now: now - 60)
        try store.touchAPIKeys(["0123456789abcdef"], now: now - 30)
        try store.addSendingDomain(SendingDomain(domain: "acme.test", tenant: "acme", keys: [
            DomainSigningKey(selector: "hato20261205e", algorithm: "ed25519-sha256", sealedPrivateKey: (0...255).map { UInt8($0) }, publicKey: "MCowBQYDK2VwAyEA"),
            DomainSigningKey(selector: "hato20261205r", algorithm: "rsa-sha256", sealedPrivateKey: [0, 0xFF, 0, 13, 10], publicKey: "MIIBIjANBgkq"),
        ], createdAt: now.timeIntervalSince1970 - 20))
        _ = try store.reserveQuota(tenant: "acme", limits: TenantLimits(messagesPerHour: 100), messages: 7, now: now)
        var messages: [NewMessage] = []
        for i in 0..<count {
            let rcpts = ["r\(i)a@d\(i % 3).test", i == 7 ? "gone@d1.test" : "r\(i)b@d\(i % 3).test"]
            messages.append(NewMessage(
                id: String(format: "M%05d", i), reversePath: i % 5 == 0 ? "" : "app\(i)@example.org", recipients: rcpts, pool: "transactional",
                content: Self.content(i), heloName: "client\(i).test", clientAddress: "127.0.0.\(1 + i % 200)",
                receivedAt: now - Double(count - i), authenticatedUser: i % 2 == 0 ? "user\(i)" : nil,
                dsnReturn: i % 3 == 0 ? .headers : nil, envelopeID: i % 3 == 0 ? "env+2B\(i)" : nil,
                recipientParameters: i % 4 == 1 ? [RecipientParameters(notify: .on(success: true, failure: true, delay: false), originalRecipient: "rfc822;orig\(i)@x.test")] : [],
                tenant: i % 10 == 4 ? "acme" : nil,
                idempotency: i == 4 ? IdempotencyRecord(tenant: "acme", key: "order-4", requestHash: "9f86d081", messageID: "M00004",
                                                        createdAt: now.timeIntervalSince1970 - 1) : nil))
            // The priority class (issue 18): one message in three bulk.
            if i % 3 == 1 { messages[messages.count - 1].priority = .bulk }
        }
        try store.enqueue(messages)
        ids = messages.map(\.id)
        let due = try store.dueRecipients(pools: ["transactional"], now: now + 1, limit: 1_000_000)
        let byMessage = Dictionary(grouping: due, by: \.messageID)
        var leases: [LeaseRecord] = []
        for (i, id) in ids.enumerated() where i % 6 != 0 && i % 6 != 5 {
            guard let rs = byMessage[id] else { continue }
            leases.append(LeaseRecord(id: "L\(id)", node: i % 2 == 0 ? "node-a" : "node-b", instance: "inst-1", sendingIP: i % 2 == 0 ? "127.0.0.10" : "127.0.0.12",
                                      messageID: id, domain: rs[0].domain, recipientIDs: rs.map(\.id), grantedAt: now, expiresAt: now + 300))
        }
        _ = try store.recordLeases(leases, countAttemptsOnDay: day)
        var results: [(result: ResultMessage, node: String)] = []
        for l in leases {
            let i = Int(l.messageID.dropFirst())!
            let outcomes: [RecipientResult]
            switch i % 6 {
            case 2: outcomes = l.recipientIDs.map { RecipientResult(recipientID: $0, status: .delivered, reply: DeliveryStatus(code: 250, enhanced: "2.0.0", text: "ok \(i)")) }
            case 3: outcomes = l.recipientIDs.map { RecipientResult(recipientID: $0, status: .deferred, reply: DeliveryStatus(code: 451, enhanced: "4.7.1", text: "try later")) }
            case 4: outcomes = [RecipientResult(recipientID: l.recipientIDs[0], status: .failed, reply: DeliveryStatus(code: 550, enhanced: "5.1.1", text: "no such user"))]
                + l.recipientIDs.dropFirst().map { RecipientResult(recipientID: $0, status: .delivered, reply: DeliveryStatus(code: 250, enhanced: nil, text: "ok")) }
            default: continue // 1: stays leased
            }
            results.append((ResultMessage(leaseID: l.id, instanceID: "inst-1", sendingIP: l.sendingIP, mxHost: "mx.\(l.domain)", remoteAddress: "127.0.0.1",
                                          outcomes: outcomes, finishedAt: now.timeIntervalSince1970 + 2), l.node))
        }
        _ = try store.applyResults(results, retry: retry, now: now + 2)
        let held = ids.enumerated().filter { $0.offset % 6 == 5 }.map(\.element)
        _ = try store.applyQueueAction(.hold, to: RecipientSelector(messageIDs: held), by: "ops", target: "migration test", note: "held", now: { now + 3 })
        try store.recordOperatorEvent(.paused, by: "ops", target: "provider gmail", note: "quiet", now: now + 3)

        // What the reporter would do with the failures: a pending DSN, a suppression and
        // webhook rows for each; the other events stay pending.
        let events = try store.pendingEvents(limit: 1_000_000)
        var d = EventDisposition()
        for e in events where e.kind == .failed {
            guard let rid = e.recipientID else { continue }
            d.processed.append(e.seq)
            d.dsn.append(PendingDSNEntry(recipientID: rid, messageID: e.messageID, action: .failed, status: EnhancedStatusCode("5.1.1")!,
                                         diagnostic: "550 5.1.1 no such user", remoteMTA: "mx.test", at: now + 2))
            d.suppressions.append(SuppressionEntry(address: e.address ?? "", category: "bad_mailbox", reason: "550 5.1.1", source: "bounce",
                                                   messageID: e.messageID, createdAt: now.timeIntervalSince1970 + 2))
            for hook in hooks { d.webhooks.append((hook: hook, eventID: "\(e.messageID).\(e.seq)", body: Array("{\"event\":\"failed\",\"seq\":\(e.seq)}\0".utf8))) }
        }
        d.delayHandled = events.filter { $0.kind == .deferred }.prefix(3).compactMap(\.recipientID)
        try store.completeEvents(d, now: now + 4)
        let rows = try store.dueWebhooks(hook: hooks[0], now: now + 10, limit: 100)
        try store.deleteWebhooks(Array(rows.prefix(1).map(\.id)))
        try store.deferWebhooks(Array(rows.dropFirst().prefix(1).map(\.id)), next: now + 120, error: "HTTP 503")

        try store.saveBackoff(BackoffTable.Entry(sendingIP: "127.0.0.10", provider: "gmail", action: .suspend, until: now.timeIntervalSince1970 + 3600,
                                                 ratePerMinute: nil, reason: "421 4.7.0 try again later"))
        try store.saveBackoff(BackoffTable.Entry(sendingIP: "127.0.0.12", provider: "outlook", action: .throttle, until: now.timeIntervalSince1970 + 1800,
                                                 ratePerMinute: 12, reason: "451 4.7.650 throttled"))
        try store.savePause(Pause(target: PauseTarget(kind: .provider, name: "gmail"), by: "ops", reason: "quiet", at: now.timeIntervalSince1970))
        try store.savePause(Pause(target: PauseTarget(kind: .ip, name: "127.0.0.11"), by: "ops", reason: "listed", at: now.timeIntervalSince1970 + 1))
        try store.setDraining("node-b", true, now: now)
        try store.setDraining("node-c", false, now: now)
        try store.saveIPOwners(["127.0.0.10": "node-a", "127.0.0.11": "node-a", "127.0.0.12": "node-b"])
        try store.addDailyAttempts(["127.0.0.11": 7, "127.0.0.13": 2], day: day - 1)
    }
}

extension Integration {
    @Suite("Store migration: hato-coordinator store migrate --from sqlite --to postgresql", .serialized)
    struct StoreMigrationTests {
        /// The recipients per state a filled queue of `count` messages must hold (each state present).
        private func expectEveryState(_ counts: [RecipientState: Int]) {
            for state in [RecipientState.queued, .leased, .deferred, .delivered, .failed, .suppressed, .held] {
                #expect(counts[state] ?? 0 > 0, "no recipient \(state.rawValue) in the test queue")
            }
        }

        @Test("the function copies every table: the PostgreSQL store reads back the same queue through the QueueStore API; a second run copies nothing")
        func copiesEverything() throws {
            let dir = NSTemporaryDirectory() + "hato-migrate-" + Identifier.random(bytes: 6)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sqlite = try SQLiteQueueStore(directory: dir)
            let filled = try FilledQueue(sqlite, count: 60)
            let before = try QueueSnapshot(sqlite, ids: filled.ids, hooks: filled.hooks, days: filled.days, now: filled.now)
            expectEveryState(before.counts)
            #expect(!before.leases.isEmpty && !before.events.isEmpty && !before.dsns.isEmpty && before.webhookCount > 0)
            #expect(!before.backoffs.isEmpty && !before.pauses.isEmpty && !before.owners.isEmpty && !before.draining.isEmpty)
            #expect(before.tenants.count == 2 && before.tenantUsers.count == 1 && before.apiKeys.count == 2 && before.sendingDomains.first?.keys.count == 2)
            #expect(before.usage.first == TenantUsage(hour: 7, day: 7, month: 7) && before.idempotency?.messageID == "M00004" && before.tenantsVersion > 0)
            #expect(before.messages.filter { $0.tenant == "acme" }.count == 6)
            #expect(!before.tenantEvents.isEmpty, "the failures of the tenant's messages were processed")

            let schema = try TestSchema()
            let lines = Locked<[String]>([])
            let options = StoreMigration.Options(progress: { line in lines.withLock { $0.append(line) } }, progressEvery: 50, bootID: "boot-after")
            let report = try StoreMigration.run(from: sqlite, to: try schema.connect(), options: options)
            #expect(report.outcome == .copied)
            #expect(report.verified)
            for t in report.tables {
                #expect(t.sqlite == t.copied && t.copied == t.postgreSQL, "\(t.table): \(t)")
            }
            #expect(report.count("messages")?.copied == 60)
            #expect(report.count("recipients")?.copied == 120)
            #expect(report.count("webhook_outbox")?.copied ?? 0 > 0)
            #expect(lines.snapshot.contains { $0.hasPrefix("recipients: 120/120 copied") }, "\(lines.snapshot)")
            // An unclean stop (no endRun) and a new boot id: the SQLite store would hold new
            // leases until its lease horizon; the hold travels to PostgreSQL.
            let hold = try #require(report.leaseHoldUntil)
            #expect(hold > filled.now + 300)

            let pg = try PostgreSQLQueueStore(configuration: schema.server.configuration(schema: schema.name), poolSize: 2)
            let after = try QueueSnapshot(pg, ids: filled.ids, hooks: filled.hooks, days: filled.days, now: filled.now)
            #expect(after.messages == before.messages)
            #expect(after.contents == before.contents, "content bytes")
            #expect(after.contents.compactMap { $0 }.contains { $0.count > 65_536 && $0.contains(0) })
            #expect(after.submissions == before.submissions)
            #expect(after.counts == before.counts)
            #expect(after.leases == before.leases)
            #expect(after.events == before.events)
            #expect(after.webhooks == before.webhooks)
            #expect(after.dsns == before.dsns)
            #expect(after.suppressions == before.suppressions)
            #expect(after.tenants == before.tenants && after.tenantUsers == before.tenantUsers && after.apiKeys == before.apiKeys)
            #expect(after.sendingDomains == before.sendingDomains, "sealed keys byte for byte")
            #expect(after.usage == before.usage && after.tenantsVersion == before.tenantsVersion && after.idempotency == before.idempotency)
            #expect(after.tenantEvents == before.tenantEvents)
            #expect(after == before)
            let leaseHold = try pg.beginRun(bootID: "boot-after", now: filled.now)
            #expect(leaseHold.map { abs($0.timeIntervalSince(hold)) < 0.001 } == true, "PostgreSQL's beginRun keeps the SQLite lease hold")

            // The store goes on where SQLite stopped: new ids after the old ones, events made by
            // PostgreSQL's own triggers, nothing made by the copy.
            try pg.installReportingSchema()
            let maxRecipient = after.messages.flatMap(\.recipients).map(\.id).max() ?? 0
            try pg.enqueue(NewMessage(id: "MNEW", reversePath: "a@example.org", recipients: ["n@d1.test"], pool: "transactional", content: [1, 2, 3],
                                      heloName: "c", clientAddress: "127.0.0.1", receivedAt: filled.now + 10))
            #expect(try pg.message(id: "MNEW")?.recipients.first?.id ?? 0 > maxRecipient)
            let events = try pg.pendingEvents(limit: 100_000)
            #expect(events.count == before.events.count + 1)
            #expect(events.last.map { $0.messageID == "MNEW" && $0.kind == .received && $0.seq > (before.events.last?.seq ?? 0) } == true)

            // A second run: nothing copied.
            let db = try schema.connect()
            let again = try StoreMigration.run(from: sqlite, to: db, options: StoreMigration.Options(bootID: "boot-after"))
            #expect(again.outcome == .alreadyMigrated, "\(again.rendered)")
            #expect(again.rowsCopied == 0)
            #expect(again.rendered.contains("already migrated: 61 messages present, nothing copied"), "\(again.rendered)")

            // Tenant events and the version go on after the copied ones.
            try pg.createTenant(Tenant(name: "gamma", createdAt: filled.now.timeIntervalSince1970))
            #expect(try pg.tenantsVersion() == before.tenantsVersion + 1)
            try pg.enqueue(NewMessage(id: "MTEN", reversePath: "a@acme.test", recipients: ["t@d1.test"], pool: "transactional", content: [1],
                                      heloName: "c", clientAddress: "127.0.0.1", receivedAt: filled.now + 11, tenant: "acme"))
            let received = try pg.pendingEvents(limit: 100_000).filter { $0.messageID == "MTEN" }.map(\.seq)
            var disposition = EventDisposition()
            disposition.processed = received
            try pg.completeEvents(disposition, now: filled.now + 12)
            let tenantEvents = try pg.tenantEvents(tenant: "acme", after: 0, limit: 100_000)
            #expect(tenantEvents.dropLast() == before.tenantEvents[...] && tenantEvents.last?.messageID == "MTEN")
            #expect((tenantEvents.last?.id ?? 0) > (before.tenantEvents.last?.id ?? 0))
        }

        @Test("a second run is idempotent: the same rows → nothing copied; a changed SQLite queue → the copy replaced; PostgreSQL served since → refused; a foreign target or a live leader → refused")
        func idempotence() throws {
            let dir = NSTemporaryDirectory() + "hato-migrate-" + Identifier.random(bytes: 6)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sqlite = try SQLiteQueueStore(directory: dir)
            let filled = try FilledQueue(sqlite, count: 24)
            let schema = try TestSchema()
            let options = StoreMigration.Options(bootID: "boot-before")
            let first = try StoreMigration.run(from: sqlite, to: try schema.connect(), options: options)
            #expect(first.outcome == .copied)
            #expect(first.leaseHoldUntil == nil, "same boot: no hold")
            let db = try schema.connect()
            func table(_ name: String) throws -> String {
                try db.query("SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM \(name) t").first?.optionalText(0) ?? ""
            }
            let tables = StoreMigration.tableNames
            let contentAfterFirst = try tables.map(table)

            // A coordinator's start installs the reporting triggers (and begins a term, below).
            let pg = try PostgreSQLQueueStore(configuration: schema.server.configuration(schema: schema.name), poolSize: 2)
            try pg.installReportingSchema()
            let second = try StoreMigration.run(from: sqlite, to: try schema.connect(), options: options)
            #expect(second.outcome == .alreadyMigrated)
            #expect(second.verified)
            #expect(second.rowsCopied == 0)
            #expect(try tables.map(table) == contentAfterFirst, "a second run leaves PostgreSQL as the first left it")

            // The SQLite queue moves on (the coordinator ran on it again); PostgreSQL has not served.
            try sqlite.enqueue(NewMessage(id: "MLATE", reversePath: "", recipients: ["late@d1.test"], pool: "transactional", content: [0, 13, 10],
                                          heloName: "c", clientAddress: "127.0.0.1", receivedAt: filled.now + 5))
            let third = try StoreMigration.run(from: sqlite, to: try schema.connect(), options: options)
            #expect(third.outcome == .copiedAgain, "\(third.rendered)")
            #expect(third.verified, "the triggers made no events for the copied rows")
            #expect(try db.query("SELECT count(*) FROM pg_trigger WHERE tgrelid IN ('messages'::regclass, 'recipients'::regclass) AND NOT tgisinternal AND tgenabled = 'O'").first?.int(0) == 3,
                    "the reporting triggers are on again")
            let ids = filled.ids + ["MLATE"]
            #expect(try QueueSnapshot(pg, ids: ids, hooks: filled.hooks, days: filled.days, now: filled.now)
                    == QueueSnapshot(sqlite, ids: ids, hooks: filled.hooks, days: filled.days, now: filled.now))

            // A coordinator starts on PostgreSQL (a new term): an unchanged queue is "already
            // migrated"; a queue that changed afterwards is refused (the two went separate ways).
            _ = try pg.beginTerm(coordinatorID: "coordinator")
            let fourth = try StoreMigration.run(from: sqlite, to: try schema.connect(), options: options)
            #expect(fourth.outcome == .alreadyMigrated)
            try sqlite.enqueue(NewMessage(id: "MLATER", reversePath: "", recipients: ["later@d1.test"], pool: "transactional", content: [1],
                                          heloName: "c", clientAddress: "127.0.0.1", receivedAt: filled.now + 6))
            #expect(throws: StoreMigrationError.self) { try StoreMigration.run(from: sqlite, to: try schema.connect(), options: options) }
            do {
                _ = try StoreMigration.run(from: sqlite, to: try schema.connect(), options: options)
            } catch let e as StoreMigrationError {
                #expect(e.reason == .servedSinceMigration)
                #expect(e.description.contains("went separate ways"))
            }
            #expect(try db.query("SELECT count(*) FROM messages WHERE id = 'MLATER'").first?.int(0) == 0)

            // A target with rows of its own is never written to.
            let other = try TestSchema()
            let otherStore = try PostgreSQLQueueStore(configuration: other.server.configuration(schema: other.name), poolSize: 1)
            try otherStore.enqueue(NewMessage(id: "MOTHER", reversePath: "", recipients: ["x@d1.test"], pool: "transactional", content: [1],
                                              heloName: "c", clientAddress: "127.0.0.1", receivedAt: filled.now))
            do {
                _ = try StoreMigration.run(from: sqlite, to: try other.connect(), options: options)
                Issue.record("migrated into a store with rows of its own")
            } catch let e as StoreMigrationError {
                #expect(e.reason == .targetNotEmpty)
                #expect(e.description.contains("messages: 1"), "\(e)")
            }
            #expect(try other.connect().query("SELECT count(*) FROM messages").first?.int(0) == 1)

            // A live leader in the leadership row.
            let led = try TestSchema()
            let ledConnection = try led.connect()
            try PostgreSQLQueueStore.migrations.apply(on: ledConnection)
            _ = try PostgreSQLLeadership(connection: ledConnection).acquire(id: "coordinator-b", incarnation: "x", lease: .seconds(60))
            do {
                _ = try StoreMigration.run(from: sqlite, to: try led.connect(), options: options)
                Issue.record("migrated while a leader was live")
            } catch let e as StoreMigrationError {
                #expect(e.reason == .coordinatorRunning)
                #expect(e.description.contains("coordinator coordinator-b leads the PostgreSQL store"), "\(e)")
            }
            #expect(try ledConnection.query("SELECT count(*) FROM messages").first?.int(0) == 0)
        }

        @Test("a queue whose spooled bodies' directory is missing is refused, naming it, and nothing is copied")
        func missingSpoolRefused() throws {
            let dir = NSTemporaryDirectory() + "hato-migrate-spool-" + Identifier.random(bytes: 5)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sqlite = try SQLiteQueueStore(directory: dir)
            try sqlite.enqueue(NewMessage(id: "MBIG", reversePath: "a@example.org", recipients: ["r@hato.test"], pool: "transactional",
                                          content: Array(repeating: 0x62, count: 40 << 10), heloName: "c", clientAddress: "127.0.0.1",
                                          receivedAt: Date(timeIntervalSince1970: 1_800_000_000)))
            try FileManager.default.moveItem(atPath: dir + "/spool", toPath: dir + "/spool-elsewhere")
            let schema = try TestSchema()
            do {
                _ = try StoreMigration.run(from: sqlite, to: try schema.connect())
                Issue.record("the migration ran without the spool")
            } catch let error as StoreMigrationError {
                #expect(error.reason == .sourceMissing && error.description.contains(dir + "/spool"), "\(error)")
            }
            // Refused before PostgreSQL was written: not even the schema was made.
            #expect(throws: (any Error).self) { try StoreMigration.count(StoreMigration.tables[0], on: try schema.connect()) }
        }

        @Test("large messages: pages and statements are sized by content (about 32 MiB), and every octet arrives")
        func largeMessages() throws {
            let dir = NSTemporaryDirectory() + "hato-migrate-" + Identifier.random(bytes: 6)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sqlite = try SQLiteQueueStore(directory: dir)
            let now = Date()
            let ids = (0..<20).map { String(format: "BIG%02d", $0) }
            for (i, id) in ids.enumerated() {
                var content = [UInt8](repeating: 0, count: 4 << 20)
                var x = UInt64(i + 1)
                for j in content.indices { x = x &* 6364136223846793005 &+ 1442695040888963407; content[j] = UInt8(truncatingIfNeeded: x >> 33) }
                try sqlite.enqueue(NewMessage(id: id, reversePath: "a@example.org", recipients: ["r\(i)@hato.test"], pool: "transactional",
                                              content: content, heloName: "c", clientAddress: "127.0.0.1", receivedAt: now + Double(i)))
            }
            let schema = try TestSchema()
            let report = try StoreMigration.run(from: sqlite, to: try schema.connect())
            #expect(report.outcome == .copied && report.verified)
            #expect(report.contentBytes == 20 * (4 << 20))
            let pg = try PostgreSQLQueueStore(configuration: schema.server.configuration(schema: schema.name), poolSize: 1)
            for id in ids { #expect(try pg.content(of: id) == sqlite.content(of: id), "\(id)") }
        }

        /// Writes `<dir>/migrate.yml`: the cluster's configuration with `store:` naming `schema`.
        private func migrateConfig(_ cluster: LocalCluster, _ schema: TestSchema) throws -> String {
            let yaml = try String(contentsOfFile: cluster.configPath, encoding: .utf8).replacingOccurrences(of: "store: { kind: sqlite }", with: schema.storeYAML)
            let path = (cluster.dir as NSString).appendingPathComponent("migrate.yml")
            try yaml.write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }

        private func runCLI(_ args: [String], dir: String, timeout: TimeInterval = 300) throws -> (Int32, String) {
            let p = try ChildProcess(name: "migrate-\(Identifier.random(bytes: 3))", executable: executablePath("hato-coordinator"), arguments: args, logDirectory: dir)
            guard let status = p.wait(timeout: timeout) else { p.stop(signal: SIGKILL); throw HarnessError("store migrate hung") }
            return ((status >> 8) & 0xFF, p.log)
        }

        @Test("the CLI: --dry-run writes nothing, the migration copies and verifies (progress on stderr, summary on stdout), a second run copies nothing")
        func cli() throws {
            let cluster = try LocalCluster(extraYAML: "store: { kind: sqlite }")
            defer { cluster.shutdown() }
            let schema = try TestSchema()
            let config = try migrateConfig(cluster, schema)
            let count = 20_000
            do {
                let store = try SQLiteQueueStore(directory: (cluster.queueDBPath as NSString).deletingLastPathComponent)
                try store.installReportingSchema()
                let now = Date()
                for batch in stride(from: 0, to: count, by: 1000) {
                    try store.enqueue((batch..<min(count, batch + 1000)).map { i in
                        NewMessage(id: String(format: "C%06d", i), reversePath: "app@example.org", recipients: ["a\(i)@hato.test", "b\(i)@hato.test"],
                                   pool: "transactional", content: FilledQueue.content(i % 4 == 0 ? 1 : i), heloName: "c", clientAddress: "127.0.0.1",
                                   receivedAt: now - Double(count - i) / 1000)
                    })
                }
                _ = try FilledQueue(store, count: 12)
                try store.endRun()
            }
            let migrate = ["store", "migrate", "--from", "sqlite", "--to", "postgresql", "--config", config]

            let (dryStatus, dry) = try runCLI(migrate + ["--dry-run"], dir: cluster.dir)
            #expect(dryStatus == 0, "\(dry)")
            #expect(dry.contains("dry run, nothing written"), "\(dry)")
            #expect(dry.contains("would copy"), "\(dry)")
            #expect(dry.range(of: #"messages\s+20012\s+20012\s+0"#, options: .regularExpression) != nil, "\(dry)")
            let db = try schema.connect()
            #expect(try db.query("SELECT to_regclass('messages') IS NULL").first?.bool(0) == true, "a dry run creates nothing")

            let started = Date()
            let (status, output) = try runCLI(migrate, dir: cluster.dir)
            let elapsed = Date().timeIntervalSince(started)
            #expect(status == 0, "\(output)")
            #expect(output.range(of: #"store migrate: messages: 100\d\d/20012 copied \(\d+ rows/s\)"#, options: .regularExpression) != nil, "progress every 10k: \(output)")
            #expect(output.contains("store migrate: recipients: 40000/40024 copied"), "\(output)")
            #expect(output.range(of: #"messages\s+20012\s+20012\s+20012"#, options: .regularExpression) != nil, "\(output)")
            #expect(output.range(of: #"recipients\s+40024\s+40024\s+40024"#, options: .regularExpression) != nil, "\(output)")
            #expect(output.contains("verified in "), "\(output)")
            let rows = try db.query("SELECT (SELECT count(*) FROM messages) + (SELECT count(*) FROM recipients) + (SELECT count(*) FROM recipient_events)").first?.int(0) ?? 0
            print("store migrate: \(rows) rows (20012 messages) copied and verified in \(String(format: "%.2f", elapsed)) s by the CLI = "
                  + "\(Int(Double(rows) / elapsed)) rows/s; its summary: \(output.split(separator: "\n").filter { $0.hasPrefix("copied ") || $0.hasPrefix("verified") })")

            let (againStatus, again) = try runCLI(migrate, dir: cluster.dir)
            #expect(againStatus == 0, "\(again)")
            #expect(again.contains("already migrated: 20012 messages present, nothing copied"), "\(again)")

            let (usageStatus, usage) = try runCLI(["store", "migrate", "--from", "postgresql", "--to", "sqlite", "--config", config], dir: cluster.dir)
            #expect(usageStatus == 2, "\(usage)")
            let (helpStatus, help) = try runCLI(["store", "--help"], dir: cluster.dir)
            #expect(helpStatus == 0 && help.contains("usage: hato-coordinator store migrate --from sqlite --to postgresql"), "\(help)")

            // Content bytes as stored in SQLite (opened only now: the CLI refuses a file another process holds).
            let pg = try PostgreSQLQueueStore(configuration: schema.server.configuration(schema: schema.name), poolSize: 2)
            let sqlite = try SQLiteQueueStore(directory: (cluster.queueDBPath as NSString).deletingLastPathComponent)
            for id in ["C000000", "C000001", "C019999", "M00004", "M00008"] {
                let content = try #require(try sqlite.content(of: id))
                #expect(try pg.content(of: id) == content, "\(id)")
            }
        }

        @Test("refused while a coordinator serves the SQLite queue (it holds the file) or the PostgreSQL store (its admin API answers); nothing is written")
        func refusesWhileServing() throws {
            let cluster = try LocalCluster(extraYAML: "store: { kind: sqlite }")
            defer { cluster.shutdown() }
            let schema = try TestSchema()
            let config = try migrateConfig(cluster, schema)
            let migrate = ["store", "migrate", "--from", "sqlite", "--to", "postgresql", "--config", config]
            try cluster.startCoordinator()
            let pid = try #require(cluster.coordinator?.pid)
            let ids = try submitWithSmtplib(port: cluster.smtpPort, messages: [("a@example.org", ["x@hato.test"], testMessage(1, to: "x@hato.test"))], dir: cluster.dir)
            #expect(ids.count == 1)

            for extra in [[], ["--dry-run"]] {
                let (status, output) = try runCLI(migrate + extra, dir: cluster.dir)
                #expect(status == 1, "\(output)")
                #expect(output.contains("refusing: process \(pid) (hato-coordinat"), "\(output)")
                #expect(output.contains("has the SQLite queue \(cluster.queueDBPath) open"), "\(output)")
            }
            #expect(try schema.connect().query("SELECT to_regclass('messages') IS NULL").first?.bool(0) == true, "nothing written")

            // Stopped: the migration goes ahead.
            #expect(cluster.stopCoordinator() == 0)
            let (status, output) = try runCLI(migrate, dir: cluster.dir)
            #expect(status == 0, "\(output)")
            #expect(output.range(of: #"messages\s+1\s+1\s+1"#, options: .regularExpression) != nil, "\(output)")

            // Switched to PostgreSQL and serving from it: a second migration is refused.
            let pgCluster = try LocalCluster(extraYAML: schema.storeYAML)
            defer { pgCluster.shutdown() }
            try FileManager.default.createDirectory(atPath: (pgCluster.queueDBPath as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: cluster.queueDBPath, toPath: pgCluster.queueDBPath)
            try pgCluster.startCoordinator()
            let (servingStatus, serving) = try pgCluster.cli(["store", "migrate", "--from", "sqlite", "--to", "postgresql"])
            #expect(servingStatus == 1, "\(serving)")
            #expect(serving.contains("a coordinator is serving from the PostgreSQL store (run_state clean_stop=0) and answers on its admin API at 127.0.0.1:\(pgCluster.adminPort)"),
                    "\(serving)")
            #expect(try pgCluster.message(ids[0])["id"] as? String == ids[0], "the migrated message is served from PostgreSQL")
        }
    }
}
