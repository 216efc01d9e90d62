import Foundation
import HatoCoordinator
import HatoHTTP
import HatoIO
import HatoSupport
import HatoTestKit
import Testing

extension Integration {
/// The HTTP send API (issue 16) through a real listener on loopback and the real SQLite store:
/// authentication, the tenant rules, limits, errors, idempotency and the read endpoints.
@Suite("Tenant HTTP API", .serialized)
struct TenantHTTPAPITests {
    @Test("no key, a malformed key, an unknown key and a revoked key get 401 with WWW-Authenticate: Bearer; nothing is queued")
    func unauthorized() throws {
        let s = try InProcessHTTPAPI()
        defer { s.shutdown() }
        let key = try s.addTenant("acme", domains: ["acme.example"])
        let body = sendJSON(from: "a@acme.example", to: ["r@dest.test"])
        let unknown = APIKeyText.generate().text
        for presented in [nil, "hato_nonsense", unknown, "Basic " + key] as [String?] {
            let r = try s.send(body, key: presented)
            #expect(r.status == 401, "\(r.body)")
            #expect(r.headers["www-authenticate"]?.hasPrefix("Bearer") == true)
            #expect(r.errorCode == "unauthorized")
        }
        let id = String(key.split(separator: "_")[1])
        #expect(try s.store.revokeAPIKey(id: id, tenant: "acme", now: Date()))
        s.tenants.invalidate()
        #expect(try s.send(body, key: key).status == 401)
        #expect(try s.messageIDs().isEmpty)
        // The key's secret never reaches the response.
        #expect(!(try s.send(body, key: key).body.contains(String(key.split(separator: "_")[2]))))
    }

    @Test("202 with the queue id after the commit; the message is stored with its tenant, pool and the built header")
    func accepted() throws {
        let s = try InProcessHTTPAPI()
        defer { s.shutdown() }
        let key = try s.addTenant("acme", domains: ["acme.example"], pool: "transactional")
        let r = try s.send("""
            {"from": {"name": "Acme Billing", "address": "billing@acme.example"}, "to": "r@dest.test", "bcc": ["audit@dest.test"],
             "subject": "Invoice 42", "text": "Your invoice.", "headers": {"X-Campaign": "march"}}
            """, key: key)
        #expect(r.status == 202, "\(r.body)")
        let id = try #require(r.id)
        #expect(try s.messageIDs() == [id])
        let record = try #require(try s.store.message(id: id))
        #expect(record.tenant == "acme")
        #expect(record.pool == "transactional")
        #expect(record.reversePath == "billing@acme.example")
        #expect(Set(record.recipients.map(\.address)) == ["r@dest.test", "audit@dest.test"])
        let content = try s.content(id)
        #expect(content.hasPrefix("Received: from api ([127.0.0.1])\r\n\tby relay.it.test (Hato) with HTTP id \(id)"), "\(content.prefix(200))")
        #expect(content.contains("\r\nFrom: Acme Billing <billing@acme.example>\r\n"))
        #expect(content.contains("\r\nTo: r@dest.test\r\n"))
        #expect(content.contains("\r\nSubject: Invoice 42\r\n"))
        #expect(content.contains("\r\nMessage-ID: <") && content.contains("@relay.it.test>\r\n"))
        #expect(content.contains("\r\nX-Campaign: march\r\n"))
        #expect(!content.lowercased().contains("\r\nbcc:"))
        #expect(try s.store.usage(tenant: "acme", now: Date()).hour == 1)
        #expect(s.accepted.snapshot == 1)
    }

    @Test("a From: or envelope sender domain the tenant has not added gets 403; a suspended tenant 403; nothing is counted")
    func refusedDomainsAndSuspension() throws {
        let s = try InProcessHTTPAPI()
        defer { s.shutdown() }
        let key = try s.addTenant("acme", domains: ["acme.example"])
        try s.addTenant("other", domains: ["other.example"])
        let from = try s.send(sendJSON(from: "x@other.example", to: ["r@dest.test"]), key: key)
        #expect(from.status == 403 && from.errorCode == "sender_domain_not_allowed", "\(from.body)")
        let author = try s.send(sendJSON(from: "x@other.example", to: ["r@dest.test"], extra: "\"envelope\":{\"mail_from\":\"bounces@acme.example\"}"), key: key)
        #expect(author.status == 403 && author.errorCode == "from_domain_not_allowed", "\(author.body)")
        let sender = try s.send(sendJSON(from: "x@acme.example", to: ["r@dest.test"], extra: "\"envelope\":{\"mail_from\":\"b@unknown.example\"}"), key: key)
        #expect(sender.status == 403 && sender.errorCode == "sender_domain_not_allowed")
        var tenant = try #require(try s.store.tenant(named: "acme"))
        tenant.state = .suspended
        tenant.stateReason = "unpaid invoice"
        try s.store.updateTenant(tenant)
        s.tenants.invalidate()
        let suspended = try s.send(sendJSON(from: "x@acme.example", to: ["r@dest.test"]), key: key)
        #expect(suspended.status == 403 && suspended.errorCode == "tenant_suspended")
        #expect((suspended.json?["error"] as? [String: Any])?["message"] as? String == "tenant acme is suspended: unpaid invoice")
        #expect(try s.messageIDs().isEmpty)
        #expect(try s.store.usage(tenant: "acme", now: Date()).hour == 0)
    }

    @Test("over the hourly limit: 429 with Retry-After; the other tenant is unaffected")
    func rateLimited() throws {
        let s = try InProcessHTTPAPI()
        defer { s.shutdown() }
        let acme = try s.addTenant("acme", domains: ["acme.example"], limits: TenantLimits(messagesPerHour: 2))
        let other = try s.addTenant("other", domains: ["other.example"])
        for _ in 0..<2 { #expect(try s.send(sendJSON(from: "a@acme.example", to: ["r@dest.test"]), key: acme).status == 202) }
        let r = try s.send(sendJSON(from: "a@acme.example", to: ["r@dest.test"]), key: acme)
        #expect(r.status == 429 && r.errorCode == "rate_limited", "\(r.body)")
        let after = try #require(r.headers["retry-after"].flatMap(Int.init))
        #expect(after >= 1 && after <= 3600)
        #expect(try s.send(sendJSON(from: "a@other.example", to: ["r@dest.test"]), key: other).status == 202)
        #expect(try s.messageIDs().count == 3)
    }

    @Test("too many recipients for the tenant or for http_api.max_recipients: 400 too_many_recipients")
    func tooManyRecipients() throws {
        let s = try InProcessHTTPAPI(apiExtra: "max_recipients: 5")
        defer { s.shutdown() }
        let acme = try s.addTenant("acme", domains: ["acme.example"], limits: TenantLimits(recipientsPerMessage: 3))
        let other = try s.addTenant("other", domains: ["other.example"])
        let four = (1...4).map { "r\($0)@dest.test" }, six = (1...6).map { "r\($0)@dest.test" }
        let a = try s.send(sendJSON(from: "a@acme.example", to: four), key: acme)
        #expect(a.status == 400 && a.errorCode == "too_many_recipients", "\(a.body)")
        let b = try s.send(sendJSON(from: "a@other.example", to: six), key: other)
        #expect(b.status == 400 && b.errorCode == "too_many_recipients", "\(b.body)")
        #expect(try s.send(sendJSON(from: "a@other.example", to: Array(six.prefix(5))), key: other).status == 202)
    }

    @Test("bad JSON, a missing field, an unknown field: 400 naming the problem; a wrong method 405, an unknown path 404")
    func malformed() throws {
        let s = try InProcessHTTPAPI()
        defer { s.shutdown() }
        let key = try s.addTenant("acme", domains: ["acme.example"])
        let bad = try s.send("{\"from\": ", key: key)
        #expect(bad.status == 400 && bad.errorCode == "invalid_json", "\(bad.body)")
        let missing = try s.send("{\"to\":\"r@dest.test\",\"text\":\"x\"}", key: key)
        #expect(missing.status == 400 && missing.errorCode == "missing_field", "\(missing.body)")
        #expect((missing.json?["error"] as? [String: Any])?["field"] as? String == "from")
        let unknown = try s.send(sendJSON(from: "a@acme.example", to: ["r@dest.test"], extra: "\"attachements\":[]"), key: key)
        #expect(unknown.status == 400 && unknown.errorCode == "invalid_field")
        let method = try s.request("PUT", "/api/v1/messages", key: key, body: "{}")
        #expect(method.status == 405 && method.headers["allow"] == "POST")
        let path = try s.request("GET", "/api/v2/nothing", key: key)
        #expect(path.status == 404 && path.errorCode == "not_found")
        let media = try s.request("POST", "/api/v1/messages", key: key, body: nil, headers: [("Content-Type", "text/plain")])
        #expect(media.status == 415)
        #expect(try s.messageIDs().isEmpty)
    }

    @Test("a body over max_request_size gets 413 unread; a built message over smtp.max_message_size gets 413 message_too_large")
    func oversize() throws {
        let s = try InProcessHTTPAPI(apiExtra: "max_request_size: 8KiB", smtpExtra: "max_message_size: 2KiB")
        defer { s.shutdown() }
        let key = try s.addTenant("acme", domains: ["acme.example"])
        let huge = try s.send(sendJSON(from: "a@acme.example", to: ["r@dest.test"], text: String(repeating: "x", count: 9000)), key: key)
        #expect(huge.status == 413 && huge.errorCode == "request_too_large", "\(huge.body)")
        let big = try s.send(sendJSON(from: "a@acme.example", to: ["r@dest.test"], text: String(repeating: "word ", count: 600)), key: key)
        #expect(big.status == 413 && big.errorCode == "message_too_large", "\(big.body)")
        #expect(try s.messageIDs().isEmpty)
        #expect(try s.store.usage(tenant: "acme", now: Date()).hour == 0)
    }

    @Test("Idempotency-Key: three retries answer the same id and queue one message; another body with the key gets 422")
    func idempotentRetries() throws {
        let s = try InProcessHTTPAPI()
        defer { s.shutdown() }
        let key = try s.addTenant("acme", domains: ["acme.example"])
        let body = sendJSON(from: "a@acme.example", to: ["r@dest.test"])
        let first = try s.send(body, key: key, idempotencyKey: "order-42")
        #expect(first.status == 202 && first.headers["idempotent-replayed"] == nil)
        for _ in 0..<3 {
            let again = try s.send(body, key: key, idempotencyKey: "order-42")
            #expect(again.status == 202 && again.id == first.id && again.headers["idempotent-replayed"] == "true", "\(again.body)")
        }
        #expect(try s.messageIDs() == [first.id!])
        #expect(try s.store.usage(tenant: "acme", now: Date()).hour == 1)
        let reused = try s.send(sendJSON(from: "a@acme.example", to: ["other@dest.test"]), key: key, idempotencyKey: "order-42")
        #expect(reused.status == 422 && reused.errorCode == "idempotency_key_reused")
        // Keys are per tenant: another tenant's same key is its own.
        let other = try s.addTenant("other", domains: ["other.example"])
        #expect(try s.send(sendJSON(from: "a@other.example", to: ["r@dest.test"]), key: other, idempotencyKey: "order-42").status == 202)
        let tooLong = try s.send(body, key: key, idempotencyKey: String(repeating: "k", count: 256))
        #expect(tooLong.status == 400 && tooLong.errorCode == "invalid_request")
    }

    @Test("eight concurrent requests with one Idempotency-Key queue one message and all answer its id")
    func idempotentConcurrent() async throws {
        let s = try InProcessHTTPAPI()
        defer { s.shutdown() }
        let key = try s.addTenant("acme", domains: ["acme.example"])
        let body = sendJSON(from: "a@acme.example", to: ["r@dest.test"])
        let ids = Locked<[String?]>([])
        let threads = (0..<8).map { _ in
            Thread { ids.withLock { $0.append((try? s.send(body, key: key, idempotencyKey: "same"))?.id) } }
        }
        threads.forEach { $0.start() }
        let deadline = Date().addingTimeInterval(20)
        while ids.snapshot.count < 8 && Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
        let got = ids.snapshot
        #expect(got.count == 8)
        #expect(Set(got).count == 1 && got.first! != nil, "\(got)")
        #expect(try s.messageIDs().count == 1)
    }

    @Test("GET a message: the tenant's own with recipients and events; another tenant's and an unknown id answer the same 404")
    func readMessage() throws {
        let s = try InProcessHTTPAPI()
        defer { s.shutdown() }
        let acme = try s.addTenant("acme", domains: ["acme.example"])
        let other = try s.addTenant("other", domains: ["other.example"])
        let id = try #require(try s.send(sendJSON(from: "a@acme.example", to: ["r1@dest.test", "r2@dest.test"]), key: acme).id)
        let mine = try s.request("GET", "/api/v1/messages/\(id)", key: acme)
        #expect(mine.status == 200, "\(mine.body)")
        #expect(mine.json?["id"] as? String == id)
        #expect(mine.json?["mail_from"] as? String == "a@acme.example")
        let recipients = try #require(mine.json?["recipients"] as? [[String: Any]])
        #expect(Set(recipients.compactMap { $0["address"] as? String }) == ["r1@dest.test", "r2@dest.test"])
        #expect(recipients.allSatisfy { $0["state"] as? String == "queued" && $0["attempts"] as? Int == 0 })
        #expect(mine.json?["events"] is [Any])
        let foreign = try s.request("GET", "/api/v1/messages/\(id)", key: other)
        let unknown = try s.request("GET", "/api/v1/messages/NOSUCHID0000", key: other)
        #expect(foreign.status == 404 && unknown.status == 404)
        #expect(foreign.errorCode == unknown.errorCode)
    }

    @Test("GET events pages through the tenant's events with since and next; limits are checked")
    func eventPaging() throws {
        let s = try InProcessHTTPAPI()
        defer { s.shutdown() }
        let acme = try s.addTenant("acme", domains: ["acme.example"])
        let other = try s.addTenant("other", domains: ["other.example"])
        var mine: Set<String> = []
        for i in 0..<5 { mine.insert(try #require(try s.send(sendJSON(from: "a@acme.example", to: ["r\(i)@dest.test"]), key: acme).id)) }
        _ = try s.send(sendJSON(from: "a@other.example", to: ["r@dest.test"]), key: other)
        // The reporter's pass: processing the outbox copies tenants' events into their log.
        var d = EventDisposition()
        d.processed = try s.store.pendingEvents(limit: 1000).map(\.seq)
        try s.store.completeEvents(d, now: Date())

        let all = try s.request("GET", "/api/v1/events?limit=1000", key: acme)
        #expect(all.status == 200, "\(all.body)")
        let everything = try #require(all.json?["events"] as? [[String: Any]])
        #expect(!everything.isEmpty)
        #expect(everything.allSatisfy { mine.contains($0["message_id"] as? String ?? "") })
        var paged: [Int64] = []
        var since: Int64 = 0
        for _ in 0..<100 {
            let page = try s.request("GET", "/api/v1/events?since=\(since)&limit=2", key: acme)
            let events = try #require(page.json?["events"] as? [[String: Any]])
            #expect(events.count <= 2)
            paged += events.compactMap { ($0["id"] as? NSNumber)?.int64Value }
            since = (page.json?["next"] as? NSNumber)?.int64Value ?? since
            if events.isEmpty { break }
        }
        #expect(paged == everything.compactMap { ($0["id"] as? NSNumber)?.int64Value })
        #expect(paged == paged.sorted() && Set(paged).count == paged.count)
        #expect(try s.request("GET", "/api/v1/events?limit=1001", key: acme).status == 400)
        #expect(try s.request("GET", "/api/v1/events?since=-1", key: acme).status == 400)
    }
    @Test("suppressions and stats: a tenant sees and removes only entries of its own domains; stats give its state, limits and counts")
    func suppressionsAndStats() throws {
        let s = try InProcessHTTPAPI()
        defer { s.shutdown() }
        let acme = try s.addTenant("acme", domains: ["acme.example"], limits: TenantLimits(messagesPerHour: 50))
        let beta = try s.addTenant("beta", domains: ["beta.example"])
        let now = Date().timeIntervalSince1970
        try s.store.addSuppressions([
            SuppressionEntry(address: "gone@dest.test", scope: "acme.example", category: "bad-mailbox", reason: "550 5.1.1", source: "bounce", createdAt: now),
            SuppressionEntry(address: "gone@dest.test", scope: "beta.example", reason: "550 5.1.1", source: "bounce", createdAt: now),
            SuppressionEntry(address: "global@dest.test", reason: "operator", source: "operator", createdAt: now),
        ])
        let list = try s.request("GET", "/api/v1/suppressions", key: acme)
        #expect(list.status == 200)
        let entries = list.json?["suppressions"] as? [[String: Any]] ?? []
        #expect(entries.count == 1)
        #expect(entries.first?["address"] as? String == "gone@dest.test")
        #expect(entries.first?["domain"] as? String == "acme.example")
        #expect(try s.request("DELETE", "/api/v1/suppressions/gone@dest.test", key: acme).status == 200)
        #expect(try s.request("DELETE", "/api/v1/suppressions/gone@dest.test", key: acme).status == 404)
        #expect(try s.request("DELETE", "/api/v1/suppressions/global@dest.test", key: acme).status == 404, "not the tenant's entry")
        // beta's entry and the global one are untouched.
        #expect(try s.store.suppressions(address: "gone@dest.test", now: Date()).map(\.scope) == ["beta.example"])
        #expect(try s.store.suppressions(address: "global@dest.test", now: Date()).count == 1)
        #expect(try s.send(sendJSON(from: "a@acme.example", to: ["r@dest.test"]), key: acme).status == 202)
        let stats = try s.request("GET", "/api/v1/stats", key: acme)
        #expect(stats.status == 200)
        #expect(stats.json?["tenant"] as? String == "acme")
        #expect((stats.json?["usage"] as? [String: Any])?["hour"] as? Int == 1)
        #expect((stats.json?["limits"] as? [String: Any])?["messages_per_hour"] as? Int == 50)
        #expect(stats.json?["domains"] as? [String] == ["acme.example"])
        #expect((try s.request("GET", "/api/v1/stats", key: beta).json?["usage"] as? [String: Any])?["hour"] as? Int == 0)
        #expect(try s.request("POST", "/api/v1/stats", key: acme).status == 405)
    }
    @Test("a tenant made again under a deleted tenant's name does not see the old tenant's messages or events")
    func reusedName() throws {
        let s = try InProcessHTTPAPI()
        defer { s.shutdown() }
        let old = try s.addTenant("acme", domains: ["acme.example"])
        let sent = try s.send(sendJSON(from: "a@acme.example", to: ["r@dest.test"]), key: old)
        let id = try #require(sent.id)
        _ = try s.store.applyQueueAction(.delete, to: RecipientSelector(messageIDs: [id]), by: "test", target: "m", note: nil, now: { Date() })
        // The reporter copies the message's events (received, deleted) into the tenant event log.
        let reporting = try ReportingService(config: s.config, store: s.store, onEnqueued: {})
        while try reporting.reporter.runOnce() {}
        #expect(try s.store.tenantEvents(tenant: "acme", after: 0, limit: 10).count == 2)
        try s.store.deleteTenant(named: "acme")
        s.tenants.invalidate()
        usleep(20_000)
        let again = try s.addTenant("acme", domains: ["acme.example"])
        #expect(try s.request("GET", "/api/v1/messages/\(id)", key: again).status == 404)
        let events = try s.request("GET", "/api/v1/events", key: again).json?["events"] as? [Any]
        #expect(events?.isEmpty == true)
        #expect(try s.request("GET", "/api/v1/messages/\(id)", key: old).status == 401, "the old key went with the old tenant")
    }
    @Test("an expired Idempotency-Key record is replaced: the new request queues once and its retries replay it")
    func expiredIdempotencyKey() throws {
        let s = try InProcessHTTPAPI()
        defer { s.shutdown() }
        let key = try s.addTenant("acme", domains: ["acme.example"])
        // A record from two days ago (the default TTL is 24 h), not purged yet.
        let old = Date().addingTimeInterval(-2 * 86400)
        try s.store.enqueue(NewMessage(id: "OLD0000000000000AA", reversePath: "a@acme.example", recipients: ["r@dest.test"], pool: "transactional",
                                       content: Array("From: a@acme.example\r\n\r\nx\r\n".utf8), heloName: "api", clientAddress: "127.0.0.1",
                                       receivedAt: old, tenant: "acme",
                                       idempotency: IdempotencyRecord(tenant: "acme", key: "k-1", requestHash: "x", messageID: "OLD0000000000000AA",
                                                                      createdAt: old.timeIntervalSince1970)))
        let body = sendJSON(from: "a@acme.example", to: ["r@dest.test"])
        let first = try s.send(body, key: key, idempotencyKey: "k-1")
        #expect(first.status == 202)
        #expect(first.id != "OLD0000000000000AA")
        let retry = try s.send(body, key: key, idempotencyKey: "k-1")
        #expect(retry.status == 202)
        #expect(retry.id == first.id, "the retry replays the new record")
        #expect(try s.messageIDs().count == 2, "the old message and one new one")
    }
}
}
