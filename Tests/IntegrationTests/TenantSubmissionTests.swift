import Foundation
import HatoCoordinator
import HatoHTTP
import HatoIO
import HatoTestKit
import SMTPCore
import Testing

extension Integration {
/// Tenants over SMTP (issue 16): a tenant's SMTP user, its domains, limits and suspension,
/// through a real submission listener on loopback and the real SQLite store.
@Suite("Tenant submission")
struct TenantSubmissionTests {
    /// A listener with tenants; `acme` (pool `bulk`, at most 3 recipients per message and
    /// `perHour` messages an hour) owns acme.example with SMTP user `acme-app`.
    static func start(perHour: Int? = nil) throws -> (InProcessSubmission, TenantAdminAPI) {
        let s = try InProcessSubmission(smtpExtra: "relay_networks: [10.99.0.0/16]\nauth_allow_plaintext_loopback: true",
                                        extraYAML: "", withTenants: true)
        try s.store.installReportingSchema()
        let now = Date().timeIntervalSince1970
        try s.store.createTenant(Tenant(name: "acme", pool: "transactional",
                                        limits: TenantLimits(messagesPerHour: perHour, recipientsPerMessage: 3), createdAt: now))
        try s.store.createTenant(Tenant(name: "other", createdAt: now))
        try s.store.addSendingDomain(SendingDomain(domain: "acme.example", tenant: "acme", keys: [], createdAt: now))
        try s.store.addSendingDomain(SendingDomain(domain: "other.example", tenant: "other", keys: [], createdAt: now))
        try s.store.addTenantUser(TenantSMTPUser(name: "acme-app", tenant: "acme",
                                                 passwordHash: PasswordHash.make(password: Array("s3cret".utf8), iterations: 10_000).encoded, createdAt: now))
        try s.store.addTenantUser(TenantSMTPUser(name: "other-app", tenant: "other",
                                                 passwordHash: PasswordHash.make(password: Array("other".utf8), iterations: 10_000).encoded, createdAt: now))
        s.tenants?.invalidate()
        let api = TenantAdminAPI(store: s.store, directory: s.tenants!, onReleased: {})
        return (s, api)
    }

    static func login(_ s: InProcessSubmission, user: String = "acme-app", password: String = "s3cret") throws -> (RawSMTPClient, String) {
        let c = try RawSMTPClient(s.address)
        _ = try c.exchange("EHLO app.test\r\n")
        let plain = Data("\0\(user)\0\(password)".utf8).base64EncodedString()
        return (c, try c.exchange("AUTH PLAIN \(plain)\r\n")[0])
    }

    static func message(from: String, to: String = "rcpt@dest.test") -> String {
        "From: \(from)\r\nTo: \(to)\r\nSubject: hello\r\n\r\nbody\r\n.\r\n"
    }

    @Test("a tenant's SMTP user sends from its own domain; the message is stored with the tenant and its pool")
    func acceptedWithTenant() throws {
        let (s, _) = try Self.start()
        defer { s.shutdown() }
        let (c, auth) = try Self.login(s)
        #expect(auth.hasPrefix("235 "), "\(auth)")
        #expect(try c.exchange("MAIL FROM:<billing@acme.example>\r\n")[0].hasPrefix("250 "))
        #expect(try c.exchange("RCPT TO:<a@dest.test>\r\n")[0].hasPrefix("250 "))
        #expect(try c.exchange("DATA\r\n")[0].hasPrefix("354"))
        let done = try c.exchange(Self.message(from: "Acme Billing <billing@acme.example>"))[0]
        #expect(done.hasPrefix("250 2.0.0 Ok: queued as "), "\(done)")
        let ids = try s.messageIDs()
        #expect(ids.count == 1)
        let record = try s.store.message(id: ids[0])
        #expect(record?.tenant == "acme")
        #expect(record?.pool == "transactional")
        #expect(try s.store.usage(tenant: "acme", now: Date()).hour == 1)
    }

    @Test("sender and From: domains the tenant has not added get 550 5.7.1; a 4th recipient gets 452 4.5.3")
    func domainsAndRecipients() throws {
        let (s, _) = try Self.start()
        defer { s.shutdown() }
        let (c, _) = try Self.login(s)
        #expect(try c.exchange("MAIL FROM:<x@other.example>\r\n")[0] == "550 5.7.1 sender domain other.example is not a sending domain of tenant acme")
        #expect(try c.exchange("MAIL FROM:<>\r\n")[0].hasPrefix("550 5.7.1 "))
        #expect(try c.exchange("MAIL FROM:<billing@acme.example>\r\n")[0].hasPrefix("250 "))
        for i in 1...3 { #expect(try c.exchange("RCPT TO:<r\(i)@dest.test>\r\n")[0].hasPrefix("250 ")) }
        #expect(try c.exchange("RCPT TO:<r4@dest.test>\r\n")[0] == "452 4.5.3 tenant acme may send to at most 3 recipients per message")
        #expect(try c.exchange("DATA\r\n")[0].hasPrefix("354"))
        let refused = try c.exchange(Self.message(from: "someone@other.example"))[0]
        #expect(refused == "550 5.7.1 From: domain other.example is not a sending domain of tenant acme")
        #expect(try s.messageIDs().isEmpty)
        // A refused message is not counted.
        #expect(try s.store.usage(tenant: "acme", now: Date()).hour == 0)
    }

    @Test("over the hourly limit: 452 4.7.1 at the first RCPT, with the wait; nothing queued beyond the limit")
    func hourlyLimit() throws {
        let (s, _) = try Self.start(perHour: 2)
        defer { s.shutdown() }
        let (c, _) = try Self.login(s)
        for _ in 1...2 {
            #expect(try c.exchange("MAIL FROM:<billing@acme.example>\r\n")[0].hasPrefix("250 "))
            #expect(try c.exchange("RCPT TO:<a@dest.test>\r\n")[0].hasPrefix("250 "))
            _ = try c.exchange("DATA\r\n")
            #expect(try c.exchange(Self.message(from: "billing@acme.example"))[0].hasPrefix("250 "))
        }
        #expect(try c.exchange("MAIL FROM:<billing@acme.example>\r\n")[0].hasPrefix("250 "))
        let over = try c.exchange("RCPT TO:<a@dest.test>\r\n")[0]
        #expect(over.hasPrefix("452 4.7.1 tenant acme has reached its hourly limit of 2 messages; try again in "), "\(over)")
        #expect(try s.messageIDs().count == 2)
    }

    @Test("suspending holds the tenant's waiting mail and refuses new mail with the reason; resuming releases it")
    func suspendAndResume() throws {
        let (s, api) = try Self.start()
        defer { s.shutdown() }
        let (c, _) = try Self.login(s)
        #expect(try c.exchange("MAIL FROM:<billing@acme.example>\r\n")[0].hasPrefix("250 "))
        #expect(try c.exchange("RCPT TO:<a@dest.test>\r\n")[0].hasPrefix("250 "))
        _ = try c.exchange("DATA\r\n")
        #expect(try c.exchange(Self.message(from: "billing@acme.example"))[0].hasPrefix("250 "))
        let suspended = api.handle(HTTPRequest(method: "POST", path: "/v1/tenants/acme/suspend", query: [:], headers: [:],
                                               body: Array(#"{"reason": "unpaid invoice"}"#.utf8)))
        #expect(suspended?.status == 200)
        #expect(try s.store.countsByState()[.held] == 1)
        #expect(try c.exchange("MAIL FROM:<billing@acme.example>\r\n")[0] == "550 5.7.1 tenant acme is suspended: unpaid invoice")
        let resumed = api.handle(HTTPRequest(method: "POST", path: "/v1/tenants/acme/resume", query: [:], headers: [:], body: []))
        #expect(resumed?.status == 200)
        #expect(try s.store.countsByState()[.held] == 0)
        #expect(try s.store.countsByState()[.queued] == 1)
        #expect(try c.exchange("MAIL FROM:<billing@acme.example>\r\n")[0].hasPrefix("250 "))
    }

    @Test("a removed SMTP user cannot authenticate any more, even right after a cached success")
    func removedUser() throws {
        let (s, api) = try Self.start()
        defer { s.shutdown() }
        #expect(try Self.login(s).1.hasPrefix("235 "))
        #expect(try Self.login(s, password: "wrong").1.hasPrefix("535 "))
        let removed = api.handle(HTTPRequest(method: "DELETE", path: "/v1/tenants/acme/users/acme-app", query: [:], headers: [:], body: []))
        #expect(removed?.status == 200)
        #expect(try Self.login(s).1.hasPrefix("535 "))
    }
    @Test("mail of no tenant (a relay network) may not use a tenant's domain, in the envelope or in From:; other domains pass")
    func foreignDomain() throws {
        let s = try InProcessSubmission(smtpExtra: "relay_networks: [127.0.0.0/8]", withTenants: true)
        defer { s.shutdown() }
        try s.store.createTenant(Tenant(name: "acme", createdAt: Date().timeIntervalSince1970))
        try s.store.addSendingDomain(SendingDomain(domain: "acme.example", tenant: "acme", keys: [], createdAt: Date().timeIntervalSince1970))
        s.tenants?.invalidate()
        let c = try RawSMTPClient(s.address)
        _ = try c.exchange("EHLO relay.client\r\n")
        #expect(try c.exchange("MAIL FROM:<billing@acme.example>\r\n")[0]
                == "550 5.7.1 acme.example is a sending domain of tenant acme: send with one of its SMTP users or API keys")
        #expect(try c.exchange("MAIL FROM:<x@mail.acme.example>\r\n")[0]
                == "550 5.7.1 mail.acme.example is under a sending domain of tenant acme: send with one of its SMTP users or API keys")
        #expect(try c.exchange("MAIL FROM:<app@free.example>\r\n")[0].hasPrefix("250 "))
        #expect(try c.exchange("RCPT TO:<a@dest.test>\r\n")[0].hasPrefix("250 "))
        _ = try c.exchange("DATA\r\n")
        #expect(try c.exchange(Self.message(from: "Acme <billing@acme.example>"))[0].hasPrefix("550 5.7.1 acme.example is a sending domain of tenant acme"))
        #expect(try c.exchange("MAIL FROM:<app@free.example>\r\n")[0].hasPrefix("250 "))
        #expect(try c.exchange("RCPT TO:<a@dest.test>\r\n")[0].hasPrefix("250 "))
        _ = try c.exchange("DATA\r\n")
        #expect(try c.exchange(Self.message(from: "app@free.example"))[0].hasPrefix("250 2.0.0 Ok: queued as "))
        #expect(try s.messageIDs().count == 1)
    }
    @Test("a tenant created with a webhook URL and no secret gets one generated, shown in that answer only; its first API key likewise")
    func generatedWebhookSecret() throws {
        let (s, api) = try Self.start()
        defer { s.shutdown() }
        let created = api.handle(HTTPRequest(method: "POST", path: "/v1/tenants",
                                             body: Array(#"{"name": "hooked", "webhook_url": "http://127.0.0.1:9/hook"}"#.utf8)))
        #expect(created?.status == 201)
        let body = (try? JSONSerialization.jsonObject(with: Data(created?.body ?? []))) as? [String: Any]
        let secret = (body?["tenant"] as? [String: Any])?["webhook_secret"] as? String
        #expect(secret?.count == 64)
        #expect(try s.store.tenant(named: "hooked")?.webhookSecret == secret)
        let key = try #require(body?["api_key"] as? String)
        #expect(s.tenants?.verifyAPIKey(key)?.tenant.name == "hooked")
        let detail = String(decoding: api.handle(HTTPRequest(method: "GET", path: "/v1/tenants/hooked"))?.body ?? [], as: UTF8.self)
        #expect(!detail.contains("webhook_secret") && !detail.contains(key), "shown once: never in later answers")
    }

    @Test("priority: a tenant set to bulk through the admin API stays bulk whatever its SMTP mail's X-Hato-Priority says; the field is never stored; \"\" resets it")
    func tenantPriorityOverSMTP() throws {
        let (s, api) = try Self.start()
        defer { s.shutdown() }
        let set = api.handle(HTTPRequest(method: "PATCH", path: "/v1/tenants/acme", body: Array(#"{"priority": "bulk"}"#.utf8)))
        #expect(set?.status == 200, "\(String(decoding: set?.body ?? [], as: UTF8.self))")
        let shown = (try? JSONSerialization.jsonObject(with: Data(api.handle(HTTPRequest(method: "GET", path: "/v1/tenants/acme"))?.body ?? []))) as? [String: Any]
        #expect((shown?["tenant"] as? [String: Any])?["priority"] as? String == "bulk", "\(shown ?? [:])")
        let bad = api.handle(HTTPRequest(method: "PATCH", path: "/v1/tenants/acme", body: Array(#"{"priority": "urgent"}"#.utf8)))
        #expect(bad?.status == 400)
        s.tenants?.invalidate()
        func send(_ header: String) throws -> String {
            let (c, auth) = try Self.login(s)
            #expect(auth.hasPrefix("235 "), "\(auth)")
            _ = try c.exchange("MAIL FROM:<billing@acme.example>\r\n")
            _ = try c.exchange("RCPT TO:<a@dest.test>\r\n")
            _ = try c.exchange("DATA\r\n")
            let done = try c.exchange(header + Self.message(from: "billing@acme.example"))[0]
            #expect(done.hasPrefix("250 "), "\(done)")
            return try #require(try s.messageIDs().last)
        }
        let raised = try send("X-Hato-Priority: transactional\r\n")
        #expect(try s.store.message(id: raised)?.priority == .bulk)
        let content = String(decoding: try s.store.content(of: raised) ?? [], as: UTF8.self)
        #expect(!content.lowercased().contains("x-hato-priority"), "removed before the message is stored")
        #expect(api.handle(HTTPRequest(method: "PATCH", path: "/v1/tenants/acme", body: Array(#"{"priority": ""}"#.utf8)))?.status == 200)
        #expect(try s.store.tenant(named: "acme")?.priority == nil)
        s.tenants?.invalidate()
        #expect(try s.store.message(id: try send(""))?.priority == .transactional)
        #expect(try s.store.message(id: try send("X-Hato-Priority: bulk\r\n"))?.priority == .bulk, "a header may lower")
    }
}
}
