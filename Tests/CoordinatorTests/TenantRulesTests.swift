import Foundation
import HatoCrypto
import Testing
@testable import HatoCoordinator
import SMTPCore

@Suite("Tenant rules")
struct TenantRulesTests {
    let acme = Tenant(name: "acme", limits: TenantLimits(messagesPerHour: 10, messagesPerDay: 100, messagesPerMonth: 1000, recipientsPerMessage: 3),
                      createdAt: 0)
    var rules: TenantRules {
        TenantRules(tenants: [acme, Tenant(name: "other", createdAt: 0)],
                    domains: [SendingDomain(domain: "acme.example", tenant: "acme", keys: [], createdAt: 0),
                              SendingDomain(domain: "other.example", tenant: "other", keys: [], createdAt: 0)])
    }

    @Test func suspendedTenantIsRefusedPermanently() {
        var t = acme
        #expect(rules.stateRefusal(t) == nil)
        t.state = .suspended
        t.stateReason = "unpaid invoice"
        let r = rules.stateRefusal(t)
        #expect(r?.reply == SMTPReply(550, "5.7.1", "tenant acme is suspended: unpaid invoice"))
        #expect(r?.httpStatus == 403)
        #expect(r?.code == "tenant_suspended")
    }

    @Test func senderDomainMustBeTheTenants() {
        #expect(rules.senderRefusal(tenant: "acme", reversePath: "billing@ACME.example") == nil)
        let other = rules.senderRefusal(tenant: "acme", reversePath: "x@other.example")
        #expect(other?.reply.code == 550)
        #expect(other?.message == "sender domain other.example is not a sending domain of tenant acme")
        #expect(rules.senderRefusal(tenant: "acme", reversePath: "x@sub.acme.example") != nil)
        #expect(rules.senderRefusal(tenant: "acme", reversePath: "")?.code == "sender_domain_not_allowed")
    }

    @Test func everyFromAddressMustBeOfTheTenantsDomains() {
        func msg(_ from: String) -> [UInt8] { Array("From: \(from)\r\nSubject: x\r\n\r\nbody\r\n".utf8) }
        #expect(rules.authorRefusal(tenant: "acme", content: msg("\"Acme, Inc.\" <billing@acme.example>")) == nil)
        #expect(rules.authorRefusal(tenant: "acme", content: msg("a@acme.example, \"x, y\" <b@acme.example>")) == nil)
        let mixed = rules.authorRefusal(tenant: "acme", content: msg("a@acme.example, b@other.example"))
        #expect(mixed?.message == "From: domain other.example is not a sending domain of tenant acme")
        #expect(mixed?.httpStatus == 403)
        let none = rules.authorRefusal(tenant: "acme", content: Array("Subject: x\r\n\r\nbody\r\n".utf8))
        #expect(none?.code == "from_domain_not_allowed")
    }

    @Test func recipientsPerMessage() {
        #expect(rules.recipientRefusal(acme, count: 3) == nil)
        let r = rules.recipientRefusal(acme, count: 4)
        #expect(r?.reply == SMTPReply(452, "4.5.3", "tenant acme may send to at most 3 recipients per message"))
        #expect(r?.httpStatus == 400)
        #expect(rules.recipientRefusal(Tenant(name: "x", createdAt: 0), count: 100_000) == nil)
    }

    @Test func usageAtALimitGivesTheWindowAndTheWait() {
        // 2026-12-05 10:59:30 UTC
        let now = Date(timeIntervalSince1970: 1_796_468_370)
        #expect(TenantRules.usageRefusal(acme, usage: TenantUsage(hour: 9, day: 9, month: 9), now: now) == nil)
        let hour = TenantRules.usageRefusal(acme, usage: TenantUsage(hour: 10, day: 10, month: 10), now: now)
        #expect(hour?.reply == SMTPReply(452, "4.7.1", "tenant acme has reached its hourly limit of 10 messages; try again in 30 s"))
        #expect(hour?.retryAfter == 30)
        #expect(hour?.httpStatus == 429)
        let day = TenantRules.usageRefusal(acme, usage: TenantUsage(hour: 0, day: 100, month: 100), now: now)
        #expect(day?.retryAfter == 13 * 3600 + 30)
        let month = TenantRules.usageRefusal(acme, usage: TenantUsage(hour: 0, day: 0, month: 1000), now: now)
        // Until 2027-01-01 00:00 UTC.
        #expect(month?.retryAfter == 1_798_761_600 - 1_796_468_370)
    }

    @Test func apiKeyTextRoundTrip() {
        let k = APIKeyText.generate()
        #expect(k.text.hasPrefix("hato_\(k.id)_"))
        let parsed = APIKeyText.parse(k.text)
        #expect(parsed?.id == k.id)
        #expect(parsed.map { Crypto.sha256(Array($0.secret.utf8)) } == k.secretHash)
        #expect(APIKeyText.parse("hato_xyz_abc") == nil)
        #expect(APIKeyText.parse("Bearer " + k.text) == nil)
        #expect(APIKeyText.parse(k.text + "x") == nil)
    }
}
