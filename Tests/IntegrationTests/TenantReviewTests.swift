import Foundation
import HatoCoordinator
import HatoCrypto
import HatoHTTP
import HatoIO
import HatoTestKit
import SMTPCore
import Testing

extension Integration {
/// Defects found in review of issue 16 (tenants), each over real loopback sockets.
@Suite("Tenant review")
struct TenantReviewTests {
    /// One transaction of `acme-app` from billing@acme.example with `fromField` as the From: value.
    /// - Returns: the reply to the end of DATA.
    static func sendSMTP(_ s: InProcessSubmission, fromField: String) throws -> String {
        let (c, auth) = try TenantSubmissionTests.login(s)
        #expect(auth.hasPrefix("235 "), "\(auth)")
        #expect(try c.exchange("MAIL FROM:<billing@acme.example>\r\n")[0].hasPrefix("250 "))
        #expect(try c.exchange("RCPT TO:<a@dest.test>\r\n")[0].hasPrefix("250 "))
        #expect(try c.exchange("DATA\r\n")[0].hasPrefix("354"))
        return try c.exchange("From: \(fromField)\r\nTo: a@dest.test\r\nSubject: hi\r\n\r\nbody\r\n.\r\n")[0]
    }

    /// `From:` values whose author (as a mail reader parses it) is at other.example, dressed so
    /// that a lax reading finds acme.example.
    static let spoofedFroms = [
        "boss@other.example (<billing@acme.example>)",           // a comment holding an angle-addr
        "<boss@other.example> \"<billing@acme.example>\"",       // a quoted string after the address
        "<billing@acme.example>, boss@other.example <x>",        // an address before a bogus angle-addr
        "boss@other.example\t(billing@acme.example) <>",         // an empty angle-addr
    ]

    @Test("SMTP: a From: whose real address is another tenant's domain is refused however it is dressed")
    func spoofedFromOverSMTP() throws {
        let (s, _) = try TenantSubmissionTests.start()
        defer { s.shutdown() }
        for from in Self.spoofedFroms {
            let reply = try Self.sendSMTP(s, fromField: from)
            #expect(reply.hasPrefix("550 5.7.1 "), "From: \(from) → \(reply)")
        }
        #expect(try s.messageIDs().isEmpty)
        // Plain and legitimately decorated forms still pass.
        for from in ["billing@acme.example", "\"Acme, Billing <ops@other.example>\" <billing@acme.example>",
                     "billing@acme.example (Acme Billing)", "Billing <billing@acme.example>, ops@acme.example",
                     "Team: billing@acme.example, <ops@acme.example>;", "\"a b\"@acme.example"] {
            let reply = try Self.sendSMTP(s, fromField: from)
            #expect(reply.hasPrefix("250 "), "From: \(from) → \(reply)")
        }
    }

    @Test("HTTP raw: a From: whose real address is another tenant's domain is refused with 403")
    func spoofedFromOverHTTPRaw() throws {
        let api = try InProcessHTTPAPI()
        defer { api.shutdown() }
        let key = try api.addTenant("acme", domains: ["acme.example"])
        try api.addTenant("other", domains: ["other.example"])
        for from in Self.spoofedFroms {
            let raw = base64("From: \(from)\r\nTo: a@dest.test\r\nSubject: hi\r\n\r\nbody\r\n")
            let r = try api.send(#"{"raw":"\#(raw)","envelope":{"mail_from":"billing@acme.example","rcpt_to":["a@dest.test"]}}"#, key: key)
            #expect(r.status == 403, "From: \(from) → \(r.status) \(r.body)")
            #expect(r.errorCode == "from_domain_not_allowed", "\(r.body)")
        }
        #expect(try api.messageIDs().isEmpty)
    }

    @Test("a cluster.yml user keeps its own rights when a tenant SMTP user of the same name is added")
    func clusterUserNameClash() throws {
        let hash = PasswordHash.make(password: Array("app-password".utf8), iterations: 10_000).encoded
        let s = try InProcessSubmission(smtpExtra: """
            auth_allow_plaintext_loopback: true
            users: [ { name: app, password_hash: "\(hash)" } ]
            """, withTenants: true)
        defer { s.shutdown() }
        let now = Date().timeIntervalSince1970
        try s.store.createTenant(Tenant(name: "acme", pool: "transactional", limits: TenantLimits(messagesPerHour: 0), createdAt: now))
        try s.store.addSendingDomain(SendingDomain(domain: "acme.example", tenant: "acme", keys: [], createdAt: now))
        try s.store.addTenantUser(TenantSMTPUser(name: "app", tenant: "acme",
                                                 passwordHash: PasswordHash.make(password: Array("tenant".utf8), iterations: 10_000).encoded, createdAt: now))
        s.tenants?.invalidate()
        let (c, auth) = try TenantSubmissionTests.login(s, user: "app", password: "app-password")
        #expect(auth.hasPrefix("235 "), "\(auth)")
        // The operator's user is no tenant's: its own sender domain, no tenant limit.
        #expect(try c.exchange("MAIL FROM:<ops@operator.example>\r\n")[0].hasPrefix("250 "))
        let rcpt = try c.exchange("RCPT TO:<a@dest.test>\r\n")[0]
        #expect(rcpt.hasPrefix("250 "), "\(rcpt)")
        _ = try c.exchange("DATA\r\n")
        let done = try c.exchange("From: ops@operator.example\r\nTo: a@dest.test\r\nSubject: hi\r\n\r\nbody\r\n.\r\n")[0]
        #expect(done.hasPrefix("250 "), "\(done)")
        let ids = try s.messageIDs()
        #expect(ids.count == 1)
        if let id = ids.first { #expect(try s.store.message(id: id)?.tenant == nil) }
    }

    @Test("a tenant SMTP user removed mid-session cannot finish or start mail as a tenant-less user")
    func userRemovedMidSession() throws {
        let (s, api) = try TenantSubmissionTests.start(perHour: 1)
        defer { s.shutdown() }
        let (c, _) = try TenantSubmissionTests.login(s)
        #expect(try c.exchange("MAIL FROM:<billing@acme.example>\r\n")[0].hasPrefix("250 "))
        #expect(try c.exchange("RCPT TO:<a@dest.test>\r\n")[0].hasPrefix("250 "))
        let removed = api.handle(HTTPRequest(method: "DELETE", path: "/v1/tenants/acme/users/acme-app", query: [:], headers: [:], body: []))
        #expect(removed?.status == 200)
        #expect(try c.exchange("DATA\r\n")[0].hasPrefix("354"))
        // Another tenant's From: domain: before the fix the message was queued as no tenant's mail.
        let reply = try c.exchange("From: boss@other.example\r\nTo: a@dest.test\r\nSubject: hi\r\n\r\nbody\r\n.\r\n")[0]
        #expect(reply.hasPrefix("5"), "\(reply)")
        for i in 1...3 {
            if try c.exchange("MAIL FROM:<billing@acme.example>\r\n")[0].hasPrefix("250 "),
               try c.exchange("RCPT TO:<a\(i)@dest.test>\r\n")[0].hasPrefix("250 "),
               try c.exchange("DATA\r\n")[0].hasPrefix("354") {
                _ = try c.exchange("From: billing@acme.example\r\nTo: a@dest.test\r\nSubject: hi\r\n\r\nbody\r\n.\r\n")
            }
        }
        #expect(try s.messageIDs().isEmpty)
    }

    @Test("SMTP: a tenant whose pool the cluster does not have gets a 4xx, as over HTTP, not a 250 for mail no IP will send")
    func unknownTenantPool() throws {
        let (s, api) = try TenantSubmissionTests.start()
        defer { s.shutdown() }
        // A typo the admin API takes as it is (or a pool a reload removed).
        let changed = api.handle(HTTPRequest(method: "PATCH", path: "/v1/tenants/acme", query: [:], headers: [:],
                                             body: Array(#"{"pool": "transactinal"}"#.utf8)))
        #expect(changed?.status == 200)
        let reply = try Self.sendSMTP(s, fromField: "billing@acme.example")
        #expect(reply.hasPrefix("451 4.3.0 "), "\(reply)")
        #expect(try s.messageIDs().isEmpty)
        #expect(try s.store.usage(tenant: "acme", now: Date()).hour == 0)
    }
}
}
