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

/// A queue with reporting, a cluster hub (not started unless a test pauses) and the queue
/// control routes, on a temporary directory with a manual clock.
final class QueueControlFixture: @unchecked Sendable {
    let dir = NSTemporaryDirectory() + "hato-qc-" + Identifier.random(bytes: 5)
    let clock = ManualClock(Date(timeIntervalSince1970: 2_000_000_000))
    let retry = RetryPolicy(schedule: [1800], maxAge: 3600)
    let config: ClusterConfig
    let store: any QueueStore
    /// Where the store lives (a directory or a PostgreSQL schema, removed with the fixture).
    let place: TestStore
    let service: ReportingService
    let hub: ClusterHub
    let api: QueueControlAPI
    static let domains = ["gmail.com", "googlemail.com", "outlook.com", "yahoo.com", "example.test"]

    init(kind: StoreKind = .sqlite, extraYAML: String = "", batchSize: Int = 97) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let yaml = """
            cluster: { name: t, secret: "0123456789abcdef0123" }
            coordinator: { listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0, admin_token: tok, data_dir: \(dir)/coordinator }
            smtp: { listen: [127.0.0.1:0], hostname: relay.hato.test }
            nodes: [ { id: node-a, data_dir: \(dir)/node-a } ]
            pools: [ { name: t }, { name: bulk } ]
            ips: [ { address: 127.0.0.10, helo: mta10.hato.test, pool: t }, { address: 127.0.0.12, helo: mta12.hato.test, pool: bulk } ]
            routing: { default_pool: t }
            retry: { schedule: [30m], max_age: 1h }
            \(extraYAML)
            """
        config = try ClusterConfig.parse(yaml, path: dir + "/cluster.yml")
        place = try TestStore(kind, directory: config.coordinator.dataDir)
        store = try place.open()
        let hub = try ClusterHub(config: config, store: store, clock: clock)
        self.hub = hub
        service = try ReportingService(config: config, store: store, clock: clock, onEnqueued: {},
                                       waitReason: { hub.waitReason(pool: $0, domain: $1, state: $2, nextAttemptAt: $3) })
        api = QueueControlAPI(store: store, hub: hub, clock: clock, batchSize: batchSize)
    }

    func cleanup() { try? FileManager.default.removeItem(atPath: dir) }

    /// `count` messages, each to one recipient at each of `domains`; even ones in pool `bulk`, odd ones in `t`.
    /// - Returns: the message ids in order.
    @discardableResult
    func fill(_ count: Int, from: String = "app@sender.test", tag: String = "u") throws -> [String] {
        let messages = (0..<count).map { i in
            NewMessage(id: String(format: "M%05d", i) + tag, reversePath: from, recipients: Self.domains.map { "\(tag)\(i)@\($0)" },
                       pool: i % 2 == 0 ? "bulk" : "t",
                       content: Array("From: <app@sender.test>\r\nSubject: order \(i)\r\n\r\nsecret body\r\n".utf8),
                       heloName: "client.test", clientAddress: "127.0.0.1", receivedAt: clock.now())
        }
        try store.enqueue(messages)
        return messages.map(\.id)
    }

    /// Sends one request to the queue control routes as `who`.
    func call(_ method: String, _ path: String, query: [String: String] = [:], body: String = "", as who: String? = "tester") -> (status: Int, json: Any?) {
        var headers = ["authorization": "Bearer tok"]
        if let who { headers["x-hato-operator"] = who }
        guard let r = api.handle(HTTPRequest(method: method, path: path, query: query, headers: headers, body: Array(body.utf8))) else { return (0, nil) }
        return (r.status, try? JSONSerialization.jsonObject(with: Data(r.body)))
    }

    /// Runs an action and returns its report.
    func act(_ action: String, _ body: String, as who: String? = "tester") throws -> QueueActionReport {
        var headers = ["authorization": "Bearer tok"]
        if let who { headers["x-hato-operator"] = who }
        let r = api.handle(HTTPRequest(method: "POST", path: "/v1/queue/\(action)", query: [:], headers: headers, body: Array(body.utf8)))
        let d = JSONDecoder(); d.keyDecodingStrategy = .convertFromSnakeCase
        guard let r, r.status == 200 else { throw HarnessFailure("\(action) \(body): \(String(decoding: r?.body ?? [], as: UTF8.self))") }
        return try d.decode(QueueActionReport.self, from: Data(r.body))
    }

    func summary(_ by: String) throws -> [String: QueueGroup] {
        let r = api.handle(HTTPRequest(method: "GET", path: "/v1/queue/summary", query: ["by": by], headers: ["authorization": "Bearer tok"], body: []))
        let d = JSONDecoder(); d.keyDecodingStrategy = .convertFromSnakeCase
        let report = try d.decode(QueueSummaryReport.self, from: Data(r?.body ?? []))
        return Dictionary(uniqueKeysWithValues: report.groups.map { ($0.key, $0) })
    }

    /// Every page of `queue list` with `query`, `limit` rows a page.
    func listAll(_ query: [String: String], limit: Int) throws -> [QueueListEntry] {
        var out: [QueueListEntry] = []
        var after: String?
        let d = JSONDecoder(); d.keyDecodingStrategy = .convertFromSnakeCase
        for _ in 0..<100_000 {
            var q = query
            q["limit"] = "\(limit)"
            if let after { q["after"] = after }
            let r = api.handle(HTTPRequest(method: "GET", path: "/v1/queue/recipients", query: q, headers: ["authorization": "Bearer tok"], body: []))
            guard r?.status == 200 else { throw HarnessFailure("list \(q): \(String(decoding: r?.body ?? [], as: UTF8.self))") }
            let page = try d.decode(QueueListPage.self, from: Data(r?.body ?? []))
            #expect(page.recipients.count <= limit)
            out += page.recipients
            guard let next = page.next else { return out }
            after = next
        }
        throw HarnessFailure("pagination did not end")
    }

    func counts() throws -> [RecipientState: Int] { try store.countsByState() }

    /// Leases the due recipients of `domain` and defers each (451), so their next attempt is 30 minutes away.
    func deferAll(domain: String) throws {
        let due = try store.dueRecipients(pools: ["t", "bulk"], now: clock.now(), limit: 100_000).filter { $0.domain == domain }
        let leases = due.map { r in
            LeaseRecord(id: "L-\(r.id)", node: "node-a", instance: "i1", sendingIP: r.pool == "t" ? "127.0.0.10" : "127.0.0.12", messageID: r.messageID,
                        domain: r.domain, recipientIDs: [r.id], grantedAt: clock.now(), expiresAt: clock.now() + 300)
        }
        _ = try store.recordLeases(leases)
        let results = leases.map { l in
            (result: ResultMessage(leaseID: l.id, instanceID: "i1", sendingIP: l.sendingIP, mxHost: "mx.\(domain)", remoteAddress: "127.0.0.1",
                                   outcomes: [RecipientResult(recipientID: l.recipientIDs[0], status: .deferred, reply: DeliveryStatus(code: 451, enhanced: "4.3.0",
                                                              text: "temporary local problem"))], finishedAt: 0), node: "node-a")
        }
        _ = try store.applyResults(results, retry: retry, now: clock.now())
    }

    func report() throws { while try service.reporter.runOnce() {} }

    func logLines() -> [DeliveryLogRecord] { service.deliveryLog.query(messageID: nil, recipient: nil, limit: 1_000_000) }

    /// Queued DSNs (reverse-path `<>`, from the reporter) with their content, header fields unfolded.
    func dsns() throws -> [(id: String, content: String)] {
        try TestStore.nullSenderMessages(store, helo: "relay.hato.test").map {
            ($0.id, String(decoding: $0.content, as: UTF8.self).replacingOccurrences(of: "\r\n ", with: " "))
        }
    }
}

struct HarnessFailure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

@Suite("Queue control")
struct QueueControlTests {
    @Test("queue --by domain, provider, pool, ip and state count 3000 waiting recipients exactly, with the oldest entry", arguments: StoreKind.allCases)
    func summaries(kind: StoreKind) throws {
        let f = try QueueControlFixture(kind: kind)
        defer { f.cleanup() }
        let ids = try f.fill(600)
        f.clock.advance(90)
        let byDomain = try f.summary("domain")
        #expect(Set(byDomain.keys) == Set(QueueControlFixture.domains))
        for d in QueueControlFixture.domains {
            #expect(byDomain[d]?.queued == 600 && byDomain[d]?.total == 600 && byDomain[d]?.held == 0)
            #expect(byDomain[d]?.oldestMessageId == ids[0], "the first message holds the oldest recipient of every domain")
            #expect(byDomain[d]?.oldestAge == 90)
        }
        let byProvider = try f.summary("provider")
        #expect(byProvider.mapValues(\.total) == ["gmail": 1200, "microsoft": 600, "yahoo": 600, "unknown": 600])
        #expect(try f.summary("pool").mapValues(\.total) == ["bulk": 1500, "t": 1500])
        #expect(try f.summary("ip").mapValues(\.total) == ["-": 3000])
        #expect(try f.summary("state").mapValues(\.total) == ["queued": 3000])

        try f.deferAll(domain: "outlook.com")
        let byIP = try f.summary("ip")
        #expect(byIP.mapValues(\.total) == ["-": 2400, "127.0.0.10": 300, "127.0.0.12": 300])
        #expect(byIP["127.0.0.10"]?.deferred == 300)
        let byState = try f.summary("state")
        #expect(byState["deferred"]?.total == 600 && byState["queued"]?.total == 2400)
        #expect(f.call("GET", "/v1/queue/summary", query: ["by": "colour"]).status == 400)
    }

    @Test("queue list pages through every matching recipient exactly once, in id order, with why each waits", arguments: StoreKind.allCases)
    func listing(kind: StoreKind) throws {
        let f = try QueueControlFixture(kind: kind)
        defer { f.cleanup() }
        try f.fill(600)
        try f.deferAll(domain: "yahoo.com")
        let outlook = try f.listAll(["domain": "outlook.com"], limit: 7)
        #expect(outlook.count == 600)
        #expect(Set(outlook.map(\.recipientId)).count == 600)
        #expect(outlook.map(\.recipientId) == outlook.map(\.recipientId).sorted())
        #expect(outlook.allSatisfy { $0.domain == "outlook.com" && $0.state == "queued" && $0.attempts == 0 && $0.lastReply == nil })
        let t = outlook.first { $0.pool == "t" }
        #expect(t?.reason == "no eligible IP in pool t: none is owned by an active node (127.0.0.10 unowned)")
        // Two domains of one provider and two states merge into one id order.
        let gmail = try f.listAll(["provider": "gmail"], limit: 50)
        #expect(gmail.count == 1200 && Set(gmail.map(\.recipientId)).count == 1200)
        #expect(gmail.map(\.recipientId) == gmail.map(\.recipientId).sorted())
        #expect(Set(gmail.map(\.domain)) == ["gmail.com", "googlemail.com"])
        let deferred = try f.listAll(["state": "deferred"], limit: 1000)
        #expect(deferred.count == 600 && deferred.allSatisfy { $0.domain == "yahoo.com" && $0.attempts == 1 })
        #expect(deferred.first?.lastReply == "451 4.3.0 temporary local problem")
        #expect(deferred.first?.reason == "retry at \(Logger.timestamp(f.clock.now() + 1800))")
        #expect(deferred.first?.sendingIp != nil)
        let bulkYahoo = try f.listAll(["pool": "bulk", "domain": "yahoo.com", "ip": "127.0.0.12"], limit: 64)
        #expect(bulkYahoo.count == 300 && bulkYahoo.allSatisfy { $0.pool == "bulk" && $0.sendingIp == "127.0.0.12" })
        #expect(try f.listAll(["ip": "-", "domain": "yahoo.com"], limit: 10).isEmpty)
        #expect(try f.listAll(["sender": "sender.test"], limit: 1000).count == 3000)
        #expect(try f.listAll(["sender": "APP@sender.test", "domain": "gmail.com"], limit: 1000).count == 600)
        #expect(try f.listAll(["sender": "<>"], limit: 10).isEmpty)
        #expect(try f.listAll(["provider": "apple"], limit: 10).isEmpty)
        #expect(f.call("GET", "/v1/queue/recipients", query: ["state": "delivered"]).status == 400)
        #expect(f.call("GET", "/v1/queue/recipients", query: ["after": "x"]).status == 400)
    }

    @Test("flush, hold, release, delete and bounce by selector on 3000 recipients: exact counts after each, in bounded batches, with events and a DSN", arguments: StoreKind.allCases)
    func actions(kind: StoreKind) throws {
        let f = try QueueControlFixture(kind: kind, batchSize: 97)
        defer { f.cleanup() }
        let ids = try f.fill(600)
        try f.report()
        try f.deferAll(domain: "example.test")
        #expect(try f.counts()[.deferred] == 600 && f.counts()[.queued] == 2400)

        // A selector (or ids, or all) is required.
        #expect(f.call("POST", "/v1/queue/hold", body: "{}").status == 400)
        #expect(f.call("POST", "/v1/queue/hold", body: "").status == 400)
        #expect(f.call("POST", "/v1/queue/release", body: "{\"state\": \"queued\"}").status == 400, "release applies to held only")
        #expect(f.call("POST", "/v1/queue/explode", body: "{\"all\": true}").status == 404)
        #expect(try f.act("hold", "{\"all\": true, \"dry_run\": true}").matched == 3000)
        #expect(try f.counts()[.held] == 0, "a dry run changes nothing")

        // flush: the deferred ones become due now; a second flush finds them due already.
        var r = try f.act("flush", "{\"domain\": \"example.test\"}")
        #expect(r.matched == 600 && r.changed == 600)
        #expect(try f.store.dueRecipients(pools: ["t", "bulk"], now: f.clock.now(), limit: 100_000).filter { $0.domain == "example.test" }.count == 600)
        r = try f.act("flush", "{\"domain\": \"example.test\"}")
        #expect(r.matched == 600 && r.changed == 0)

        // hold by provider: gmail.com and googlemail.com.
        r = try f.act("hold", "{\"provider\": \"gmail\", \"reason\": \"ticket 42\"}")
        #expect(r.changed == 1200 && r.by == "tester" && r.target == "provider gmail")
        var c = try f.counts()
        #expect(c[.held] == 1200 && c[.queued] == 1200 && c[.deferred] == 600)
        #expect(try f.act("hold", "{\"pool\": \"bulk\", \"dry_run\": true}").matched == 900, "bulk: 1500 minus 600 held")
        r = try f.act("hold", "{\"pool\": \"bulk\", \"domain\": \"yahoo.com\"}")
        #expect(r.changed == 300)
        #expect(try f.counts()[.held] == 1500)
        let held = try f.listAll(["state": "held"], limit: 500)
        #expect(held.count == 1500 && held.allSatisfy { $0.reason == "held by an operator (release to send)" })
        #expect(try f.store.dueRecipients(pools: ["t", "bulk"], now: f.clock.now() + 7200, limit: 100_000).allSatisfy { !$0.domain.contains("gmail") },
                "held recipients are never due")

        // release by domain: back to queued, due now.
        f.clock.advance(5)
        r = try f.act("release", "{\"domain\": \"gmail.com\"}")
        #expect(r.changed == 600)
        c = try f.counts()
        #expect(c[.held] == 900 && c[.queued] == 1500 && c[.deferred] == 600)
        #expect(try f.store.dueRecipients(pools: ["t", "bulk"], now: f.clock.now(), limit: 100_000).filter { $0.domain == "gmail.com" }.count == 600)

        // delete: yahoo.com, held (bulk) and queued (t) alike; no DSN.
        r = try f.act("delete", "{\"domain\": \"yahoo.com\"}")
        #expect(r.changed == 600)
        c = try f.counts()
        #expect(c[.deleted] == 600 && c[.held] == 600 && c[.queued] == 1200)

        // bounce: outlook.com of pool t, by message id and recipient id too.
        #expect(try f.act("bounce", "{\"domain\": \"outlook.com\", \"pool\": \"t\", \"dry_run\": true}").matched == 300)
        r = try f.act("bounce", "{\"domain\": \"outlook.com\", \"pool\": \"t\"}", as: "alice")
        #expect(r.changed == 300 && r.by == "alice")
        c = try f.counts()
        #expect(c[.failed] == 300 && c[.queued] == 900)
        let oneMessage = try f.act("hold", "{\"message_ids\": [\"\(ids[2])\"]}")
        #expect(oneMessage.changed == 3, "gmail.com, outlook.com, example.test of a bulk message (googlemail.com held, yahoo.com deleted)")
        let rid = try f.store.message(id: ids[4])?.recipients.first { $0.address.hasSuffix("@outlook.com") }?.id ?? 0
        #expect(try f.act("delete", "{\"recipient_ids\": [\(rid)]}").changed == 1)
        #expect(try f.act("delete", "{\"recipient_ids\": [\(rid)]}").changed == 0, "already deleted")
        c = try f.counts()
        #expect(c[.held] == 603 && c[.deleted] == 601 && c[.queued] == 897 && c[.deferred] == 599 && c[.failed] == 300)

        // Reporting: events with the operator, a DSN per bounced message, none for deleted ones.
        try f.report()
        // A message's failures wait (at most 10 minutes) for its recipients' first results: here
        // some are queued, never attempted.
        #expect(try f.dsns().isEmpty)
        f.clock.advance(601)
        try f.report()
        let lines = f.logLines()
        #expect(lines.filter { $0.event == "held" }.count == 1503)
        #expect(lines.filter { $0.event == "released" }.count == 600)
        #expect(lines.filter { $0.event == "deleted" }.count == 601)
        #expect(lines.filter { $0.event == "flushed" }.count == 600)
        let heldLine = lines.first { $0.event == "held" && $0.recipient?.hasSuffix("@gmail.com") == true }
        #expect(heldLine?.operatorName == "tester" && heldLine?.target == "provider gmail" && heldLine?.note == "ticket 42")
        let bounced = lines.filter { $0.event == "failed" }
        #expect(bounced.count == 300)
        #expect(bounced.allSatisfy { $0.operatorName == "alice" && $0.category == "admin" && $0.code == 550 && $0.enhanced == "5.0.0"
                && $0.reply == "bounced by operator alice" && $0.sendingIp == nil && $0.target == "domain outlook.com pool t" })
        #expect(f.service.metrics.failed.value("t", "none", "unknown", "admin") == 300)
        let dsns = try f.dsns()
        #expect(dsns.count == 300, "one DSN per bounced message; deleted recipients get none")
        let dsn = dsns.first?.content ?? ""
        #expect(dsn.contains("Action: failed\r\nStatus: 5.0.0\r\n"))
        #expect(dsn.contains("Diagnostic-Code: X-Hato; 550 5.0.0 bounced by operator alice"))
        #expect(!dsn.contains("Remote-MTA"))
        #expect(!dsns.contains { $0.content.contains("yahoo.com") }, "no DSN for deleted recipients")
        // A deleted or bounced message's content goes once no recipient is open.
        let fullyClosed = try f.store.message(id: ids[1])
        #expect(fullyClosed?.recipients.map(\.state).contains(.failed) == true)
    }

    @Test("pause and resume by provider and by pool change why recipients wait; pauses and lifts are events with the operator", arguments: StoreKind.allCases)
    func pauses(kind: StoreKind) throws {
        let f = try QueueControlFixture(kind: kind)
        defer { f.cleanup() }
        try f.hub.start()
        defer { f.hub.stop() }
        try f.fill(10)
        #expect(f.call("POST", "/v1/pauses", body: "{\"kind\": \"provider\", \"name\": \"microsoft\", \"reason\": \"complaints\"}").status == 201)
        #expect(f.call("POST", "/v1/pauses", body: "{\"kind\": \"pool\", \"name\": \"nosuch\"}").status == 400)
        #expect(f.call("POST", "/v1/pauses", body: "{\"kind\": \"pool\", \"name\": \"bulk\"}", as: "bob").status == 201)
        try waitFor { f.hub.pauses().count == 2 }
        let outlook = try f.listAll(["domain": "outlook.com"], limit: 100)
        #expect(outlook.filter { $0.pool == "t" }.allSatisfy { $0.reason == "paused: provider microsoft (by tester: complaints)" })
        #expect(outlook.filter { $0.pool == "bulk" }.allSatisfy { $0.reason == "paused: pool bulk (by bob)" })
        #expect(outlook.count == 10)
        let paused = f.call("GET", "/v1/pauses").json as? [[String: Any]] ?? []
        #expect(paused.count == 2)
        #expect(f.call("DELETE", "/v1/pauses/provider/microsoft").status == 200)
        #expect(f.call("DELETE", "/v1/pauses/provider/microsoft").status == 404)
        #expect(f.call("DELETE", "/v1/pauses/pool/bulk").status == 200)
        try waitFor { f.hub.pauses().isEmpty }
        #expect(try f.listAll(["domain": "outlook.com"], limit: 100).allSatisfy { $0.reason.hasPrefix("no eligible IP in pool") })
        let lift = f.call("DELETE", "/v1/suspensions", query: ["provider": "gmail"])
        #expect(lift.status == 200 && (lift.json as? [String: Any])?["target"] as? String == "provider gmail")
        try f.report()
        let ops = f.logLines().filter { $0.messageId == nil }
        #expect(ops.map(\.event) == ["paused", "paused", "resumed", "resumed", "lifted"])
        #expect(ops.map { $0.target ?? "" } == ["provider microsoft", "pool bulk", "provider microsoft", "pool bulk", "provider gmail"])
        #expect(ops.map { $0.operatorName ?? "" } == ["tester", "bob", "tester", "tester", "tester"])
        #expect(ops.first?.note == "complaints" && ops.first?.id.hasPrefix("operator.") == true)
        // The operator header is validated; without one the API says admin.
        #expect(QueueControlAPI.operatorName(HTTPRequest(method: "GET", path: "/", query: [:], headers: [:], body: [])) == "admin")
        #expect(QueueControlAPI.operatorName(HTTPRequest(method: "GET", path: "/", query: [:], headers: ["x-hato-operator": "a b\"c"], body: [])) == "admin")
        #expect(QueueControlAPI.operatorName(HTTPRequest(method: "GET", path: "/", query: [:], headers: ["x-hato-operator": "ops.alice@corp"], body: [])) == "ops.alice@corp")
    }

    @Test("a held recipient gets its delay notice after dsn.delay_warning saying why, and expires by retry.max_age with a failure DSN", arguments: StoreKind.allCases)
    func heldDelayAndExpiry(kind: StoreKind) throws {
        let f = try QueueControlFixture(kind: kind, extraYAML: "dsn: { delay_warning: 10m }")
        defer { f.cleanup() }
        f.service.reporter.delayScanInterval = 0
        let ids = try f.fill(1)
        _ = try f.act("hold", "{\"domain\": \"gmail.com\"}")
        f.clock.advance(601)
        try f.report()
        let dsns = try f.dsns()
        #expect(dsns.count == 1, "one delayed DSN for the message: every recipient waits without an attempt")
        let text = dsns.first?.content ?? ""
        #expect(text.contains("Final-Recipient: rfc822; u0@gmail.com\r\nAction: delayed\r\nStatus: 4.0.0\r\n"))
        #expect(text.contains("Diagnostic-Code: X-Hato; not yet attempted: held by an operator (release to send)"))
        #expect(text.contains("Diagnostic-Code: X-Hato; not yet attempted: no eligible IP in pool bulk"))
        #expect(text.contains("Will-Retry-Until: "))
        f.clock.advance(600)
        try f.report()
        #expect(try f.dsns().count == 1, "one delay notice per recipient")
        f.clock.advance(3600)
        #expect(try f.store.expireOld(maxAge: 3600, now: f.clock.now()) == 6, "the message's 5 and the delay DSN's own recipient")
        try f.report()
        let all = try f.dsns()
        #expect(all.count == 2)
        let failure = all.last?.content ?? ""
        #expect(failure.contains("Final-Recipient: rfc822; u0@gmail.com\r\nAction: failed\r\nStatus: 4.4.7\r\n"))
        #expect(failure.contains("held by an operator; not yet attempted (expired: maximum queue age reached)"))
        #expect(try f.store.message(id: ids[0])?.recipients.allSatisfy { $0.state == .expired } == true)
    }

    @Test("a queued recipient never attempted gets its delay notice; a deferred one keeps its reply; <> gets none", arguments: StoreKind.allCases)
    func neverAttemptedDelay(kind: StoreKind) throws {
        let f = try QueueControlFixture(kind: kind, extraYAML: "dsn: { delay_warning: 10m }")
        defer { f.cleanup() }
        f.service.reporter.delayScanInterval = 0
        try f.store.enqueue(NewMessage(id: "NULL1", reversePath: "", recipients: ["x@gmail.com"], pool: "t", content: Array("Subject: b\r\n\r\nb\r\n".utf8),
                                       heloName: "c", clientAddress: "127.0.0.1", receivedAt: f.clock.now()))
        try f.fill(1)
        try f.deferAll(domain: "yahoo.com")
        f.clock.advance(601)
        try f.report()
        let dsns = try f.dsns()
        #expect(dsns.count == 1, "the message from <> gets none")
        let only = dsns.first?.content ?? ""
        #expect(only.contains("u0@gmail.com") && !only.contains("x@gmail.com"))
        let text = dsns.first?.content ?? ""
        #expect(text.contains("Diagnostic-Code: X-Hato; not yet attempted: no eligible IP in pool bulk: none is owned by an active node (127.0.0.12 unowned)"))
        #expect(text.contains("Final-Recipient: rfc822; u0@yahoo.com\r\nAction: delayed\r\nStatus: 4.3.0\r\nRemote-MTA: dns; mx.yahoo.com\r\n"))
        #expect(text.contains("Diagnostic-Code: smtp; 451 4.3.0 temporary local problem"))
    }

    @Test("a bounce of one recipient is reported at once when the message's others are held, deferred or already reported", arguments: StoreKind.allCases)
    func bounceNotHeldBack(kind: StoreKind) throws {
        let f = try QueueControlFixture(kind: kind)
        defer { f.cleanup() }
        try f.fill(1)
        _ = try f.act("hold", "{\"provider\": \"gmail\"}")
        try f.deferAll(domain: "yahoo.com")
        _ = try f.act("delete", "{\"domain\": \"example.test\"}")
        _ = try f.act("bounce", "{\"domain\": \"outlook.com\"}")
        try f.report()
        #expect(try f.dsns().count == 1)
    }

    @Test("actions re-check state: leased recipients are counted as in flight and never touched", arguments: StoreKind.allCases)
    func leasedUntouched(kind: StoreKind) throws {
        let f = try QueueControlFixture(kind: kind)
        defer { f.cleanup() }
        try f.fill(4)
        let due = try f.store.dueRecipients(pools: ["t", "bulk"], now: f.clock.now(), limit: 100).filter { $0.domain == "gmail.com" }
        _ = try f.store.recordLeases([LeaseRecord(id: "L1", node: "node-a", instance: "i1", sendingIP: "127.0.0.10", messageID: due[0].messageID,
                                                  domain: "gmail.com", recipientIDs: [due[0].id], grantedAt: f.clock.now(), expiresAt: f.clock.now() + 300)])
        let r = try f.act("delete", "{\"domain\": \"gmail.com\"}")
        #expect(r.changed == 3 && r.inFlight == 1)
        #expect(try f.counts()[.leased] == 1)
        // A recipient that moved between selection and write is left alone.
        let s = RecipientSelector(domains: ["outlook.com"], states: [.queued])
        let steps = try #require(f.store as? any QueueActionSteps)
        let picked = try steps.selectWaiting(s, after: 0, limit: 10).ids
        #expect(picked.count == 4)
        _ = try steps.applyQueueBatch(.hold, ids: [picked[0]], states: [.queued], by: "x", target: "t", note: nil, now: f.clock.now())
        #expect(try steps.applyQueueBatch(.release, ids: picked, states: [.held], by: "x", target: "t", note: nil, now: f.clock.now()) == 1)
        let outcome = try f.store.applyQueueAction(.hold, to: RecipientSelector(domains: ["outlook.com"]), by: "x", target: "t", note: nil,
                                                   batchSize: 3, now: { f.clock.now() })
        #expect(outcome.matched == 4 && outcome.changed == 4 && outcome.batches == 2)
    }

    @Test("limit= outside 1…1000 (list) or 1…100000 (summary), or not a number, is a 400 naming the range; absent takes the default", arguments: StoreKind.allCases)
    func limitsAreChecked(kind: StoreKind) throws {
        let f = try QueueControlFixture(kind: kind)
        defer { f.cleanup() }
        try f.fill(3)
        for bad in ["abc", "0", "-1", "1001", "2.5"] {
            let r = f.call("GET", "/v1/queue/recipients", query: ["limit": bad])
            #expect(r.status == 400 && (r.json as? [String: Any])?["error"] as? String == "limit= must be a whole number from 1 to 1000", "\(bad): \(r)")
        }
        #expect(f.call("GET", "/v1/queue/summary", query: ["by": "domain", "limit": "0"]).status == 400)
        #expect(f.call("GET", "/v1/queue/summary", query: ["by": "domain", "limit": "100001"]).status == 400)
        #expect(((f.call("GET", "/v1/queue/summary", query: ["by": "domain", "limit": "2"]).json as? [String: Any])?["groups"] as? [Any])?.count == 2)
        #expect(((f.call("GET", "/v1/queue/recipients", query: [:]).json as? [String: Any])?["recipients"] as? [Any])?.count == 15)
        #expect(((f.call("GET", "/v1/queue/recipients", query: ["limit": "1000"]).json as? [String: Any])?["recipients"] as? [Any])?.count == 15)
    }

    @Test("the CLI's --limit: a whole number within the command's bounds, else a usage error that says which and why")
    func cliLimits() throws {
        let args = try CLIArguments(["queue", "list", "--limit", "abc"], valueOptions: ["limit"], flagOptions: [])
        #expect(QueueCommands.limits("queue", options: args.options) == 1...1000)
        #expect(QueueCommands.limits("queue", options: ["by": "domain"]) == 1...100_000)
        #expect(QueueCommands.limits("messages", options: [:]) == nil)
        #expect(throws: CLIArguments.UsageError.self) { try args.integer("limit", in: 1...1000) }
        do { _ = try args.integer("limit", in: 1...1000) } catch { #expect("\(error)" == "--limit: 'abc' is not a whole number from 1 to 1000") }
        do { _ = try CLIArguments.integer("0", option: "limit", in: 1...Int.max) } catch { #expect("\(error)" == "--limit: '0' is not a whole number of at least 1") }
        #expect(try CLIArguments.integer("1000", option: "limit", in: 1...1000) == 1000)
        #expect(try CLIArguments.integer(nil, option: "limit", in: 1...1000) == nil)
    }

    @Test("each queue command has a --help page with its usage, arguments and an example")
    func helpPages() {
        for command in ["queue", "flush", "hold", "release", "delete", "bounce", "pause", "resume", "pauses", "lift"] {
            let page = QueueCommands.help(for: command) ?? ""
            #expect(page.hasPrefix("usage: hato-coordinator \(["pauses", "resume"].contains(command) ? "pause" : command)"), "\(command)")
            #expect(page.contains("hato-coordinator \(command)"), "\(command)")
            #expect(page.contains("examples:\n  hato-coordinator "), "\(command)")
            #expect(page.contains("\n  --") || command == "lift", "\(command) lists its arguments")
        }
        #expect(QueueCommands.help(for: "hold")?.contains("Applies to recipients that are queued or deferred.") == true)
        #expect(QueueCommands.help(for: "release")?.contains("Applies to recipients that are held.") == true)
        #expect(QueueCommands.help(for: "status") == nil)
    }

    /// Polls `condition` every 10 ms for up to 5 s.
    func waitFor(_ condition: () throws -> Bool) throws {
        let deadline = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < deadline {
            if try condition() { return }
            Thread.sleep(forTimeInterval: 0.01)
        }
        throw HarnessFailure("timed out")
    }
}
