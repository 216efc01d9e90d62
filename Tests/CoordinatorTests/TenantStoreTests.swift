import Foundation
import HatoTestKit
import Testing
@testable import ClusterProtocol
@testable import HatoCoordinator
@testable import HatoCrypto
@testable import HatoSupport
@testable import SMTPCore

/// The tenant layer's storage (issue 16), the same test bodies against both queue stores.
@Suite("Tenant store: tenants, users, keys, domains, limits, idempotency, events")
struct TenantStoreTests {
    /// 2026-12-05 01:30:00 UTC: 30 min before the hour ends, 22 h 30 min before the day ends.
    static let now = TenantWindows.calendar.date(from: DateComponents(year: 2026, month: 12, day: 5, hour: 1, minute: 30))!
    static let nextMonth = TenantWindows.calendar.date(from: DateComponents(year: 2027, month: 1, day: 1))!

    static func tenant(_ name: String, limits: TenantLimits = TenantLimits()) -> Tenant {
        Tenant(name: name, limits: limits, createdAt: 1_800_000_000)
    }

    static func message(_ id: String, tenant: String?, rcpts: [String] = ["a@x.test", "b@y.test"], idempotency: IdempotencyRecord? = nil) -> NewMessage {
        NewMessage(id: id, reversePath: "app@sender.test", recipients: rcpts, pool: "t", content: Array("Subject: \(id)\r\n\r\nbody\r\n".utf8),
                   heloName: "c", clientAddress: "127.0.0.1", receivedAt: now, tenant: tenant, idempotency: idempotency)
    }

    /// Every octet value, twice: a sealed key must come back exactly.
    static let sealed: [UInt8] = (0...255).map { UInt8($0) } + (0...255).reversed().map { UInt8($0) }

    static func domain(_ name: String, tenant: String) -> SendingDomain {
        SendingDomain(domain: name, tenant: tenant, keys: [
            DomainSigningKey(selector: "hato20261205e", algorithm: "ed25519-sha256", sealedPrivateKey: sealed, publicKey: "MCowBQYDK2VwAyEA"),
            DomainSigningKey(selector: "hato20261205r", algorithm: "rsa-sha256", sealedPrivateKey: [0, 0, 1, 0xFF], publicKey: "MIIBIjANBgkq"),
        ], createdAt: 1_800_000_100)
    }

    @Test("tenants: create, get, list by name, update, delete; duplicates exist, unknown ones are not found", arguments: StoreKind.allCases)
    func tenants(kind: StoreKind) throws {
        let place = try TestStore(kind)
        let q = try place.open()
        try q.createTenant(Self.tenant("zeta"))
        var acme = Self.tenant("acme", limits: TenantLimits(messagesPerHour: 100, messagesPerDay: nil, messagesPerMonth: 10_000, recipientsPerMessage: 50))
        acme.pool = "bulk"; acme.webhookURL = "https://hooks.acme.test/hato"; acme.webhookSecret = "sealed-secret"
        try q.createTenant(acme)
        #expect(throws: TenantStoreError.exists("tenant acme")) { try q.createTenant(Self.tenant("acme")) }
        #expect(try q.tenant(named: "acme") == acme)
        #expect(try q.tenant(named: "nobody") == nil)
        #expect(try q.tenants().map(\.name) == ["acme", "zeta"])

        var changed = acme
        changed.state = .suspended; changed.stateReason = "unpaid invoice"; changed.pool = nil
        changed.limits = TenantLimits(messagesPerHour: 5); changed.webhookURL = nil; changed.webhookSecret = nil
        changed.createdAt = 1 // not changed by an update
        try q.updateTenant(changed)
        changed.createdAt = acme.createdAt
        #expect(try q.tenant(named: "acme") == changed)
        #expect(throws: TenantStoreError.notFound("tenant nobody")) { try q.updateTenant(Self.tenant("nobody")) }

        try q.deleteTenant(named: "zeta")
        #expect(try q.tenants().map(\.name) == ["acme"])
        #expect(throws: TenantStoreError.notFound("tenant zeta")) { try q.deleteTenant(named: "zeta") }
        #expect(TenantStoreError.exists("tenant acme").description == "tenant acme already exists")
    }

    @Test("SMTP users: unique across tenants, need their tenant, listed by name per tenant or all", arguments: StoreKind.allCases)
    func users(kind: StoreKind) throws {
        let place = try TestStore(kind)
        let q = try place.open()
        try q.createTenant(Self.tenant("acme"))
        try q.createTenant(Self.tenant("beta"))
        let u1 = TenantSMTPUser(name: "billing", tenant: "acme", passwordHash: "$pbkdf2-sha256$1$a$b", createdAt: 1)
        let u2 = TenantSMTPUser(name: "alerts", tenant: "acme", passwordHash: "$pbkdf2-sha256$1$c$d", createdAt: 2)
        let u3 = TenantSMTPUser(name: "beta-app", tenant: "beta", passwordHash: "$pbkdf2-sha256$1$e$f", createdAt: 3)
        for u in [u1, u2, u3] { try q.addTenantUser(u) }
        #expect(throws: TenantStoreError.exists("SMTP user billing")) {
            try q.addTenantUser(TenantSMTPUser(name: "billing", tenant: "beta", passwordHash: "x", createdAt: 4))
        }
        #expect(throws: TenantStoreError.notFound("tenant nobody")) {
            try q.addTenantUser(TenantSMTPUser(name: "new", tenant: "nobody", passwordHash: "x", createdAt: 4))
        }
        #expect(try q.tenantUsers(tenant: "acme") == [u2, u1])
        #expect(try q.tenantUsers(tenant: nil) == [u2, u3, u1])
        #expect(try q.removeTenantUser(name: "alerts"))
        #expect(try !q.removeTenantUser(name: "alerts"))
        #expect(try q.tenantUsers(tenant: "acme") == [u1])
    }

    @Test("API keys: stored, read by id, newest first, revoked once and only by their tenant, touched", arguments: StoreKind.allCases)
    func apiKeys(kind: StoreKind) throws {
        let place = try TestStore(kind)
        let q = try place.open()
        try q.createTenant(Self.tenant("acme"))
        try q.createTenant(Self.tenant("beta"))
        let hash = Array(repeating: UInt8(0), count: 8) + (1...24).map { UInt8($0 * 10) }
        let k1 = APIKeyRecord(id: "00000000000000a1", tenant: "acme", label: "billing app", secretHash: hash, createdAt: 100)
        let k2 = APIKeyRecord(id: "00000000000000a2", tenant: "acme", label: "crm, production", secretHash: hash.reversed(), createdAt: 200)
        let k3 = APIKeyRecord(id: "00000000000000b1", tenant: "beta", label: "beta", secretHash: hash, createdAt: 150)
        for k in [k1, k2, k3] { try q.addAPIKey(k) }
        #expect(throws: TenantStoreError.exists("API key 00000000000000a1")) { try q.addAPIKey(APIKeyRecord(id: k1.id, tenant: "beta", label: "x", secretHash: hash, createdAt: 1)) }
        #expect(throws: TenantStoreError.notFound("tenant nobody")) { try q.addAPIKey(APIKeyRecord(id: "ff", tenant: "nobody", label: "x", secretHash: hash, createdAt: 1)) }
        #expect(try q.apiKey(id: k1.id) == k1)
        #expect(try q.apiKey(id: "unknown") == nil)
        #expect(try q.apiKeys(tenant: "acme") == [k2, k1])
        #expect(try q.apiKeys(tenant: nil).map(\.id) == [k2.id, k3.id, k1.id])

        let t = Date(timeIntervalSince1970: 1_800_000_500)
        #expect(try !q.revokeAPIKey(id: k1.id, tenant: "beta", now: t), "another tenant's key")
        #expect(try q.apiKey(id: k1.id)?.revokedAt == nil)
        #expect(try q.revokeAPIKey(id: k1.id, tenant: "acme", now: t))
        #expect(try !q.revokeAPIKey(id: k1.id, tenant: nil, now: t + 10), "already revoked")
        #expect(try q.apiKey(id: k1.id)?.revokedAt == t.timeIntervalSince1970)
        #expect(try q.revokeAPIKey(id: k3.id, tenant: nil, now: t))

        try q.touchAPIKeys([k2.id, k3.id, k2.id], now: t + 60)
        #expect(try q.apiKey(id: k2.id)?.lastUsedAt == t.timeIntervalSince1970 + 60)
        #expect(try q.apiKey(id: k1.id)?.lastUsedAt == nil)
        try q.touchAPIKeys([], now: t)
    }

    @Test("sending domains: two keys round-trip byte for byte; a domain belongs to one tenant; removed only by its tenant", arguments: StoreKind.allCases)
    func domains(kind: StoreKind) throws {
        let place = try TestStore(kind)
        let q = try place.open()
        try q.createTenant(Self.tenant("acme"))
        try q.createTenant(Self.tenant("beta"))
        let d1 = Self.domain("mail.acme.test", tenant: "acme")
        var d2 = Self.domain("acme.test", tenant: "acme")
        d2.keys.removeLast()
        try q.addSendingDomain(d1)
        try q.addSendingDomain(d2)
        #expect(throws: TenantStoreError.exists("sending domain mail.acme.test")) { try q.addSendingDomain(Self.domain("mail.acme.test", tenant: "beta")) }
        #expect(throws: TenantStoreError.notFound("tenant nobody")) { try q.addSendingDomain(Self.domain("n.test", tenant: "nobody")) }
        let read = try q.sendingDomains(tenant: "acme")
        #expect(read == [d2, d1])
        #expect(read.last?.keys.first?.sealedPrivateKey == Self.sealed)
        #expect(try q.sendingDomains(tenant: "beta").isEmpty)
        #expect(try q.sendingDomains(tenant: nil).count == 2)

        #expect(try !q.removeSendingDomain("mail.acme.test", tenant: "beta"))
        #expect(try q.removeSendingDomain("mail.acme.test", tenant: "acme"))
        #expect(try q.sendingDomains(tenant: nil) == [d2])
        // Free again, and without the old keys.
        var again = Self.domain("mail.acme.test", tenant: "beta")
        again.keys = [again.keys[1]]
        try q.addSendingDomain(again)
        #expect(try q.sendingDomains(tenant: "beta") == [again])
    }

    @Test("tenantsVersion increases on every write of a tenant, user, key or domain, not on reads or touches", arguments: StoreKind.allCases)
    func version(kind: StoreKind) throws {
        let place = try TestStore(kind)
        let q = try place.open()
        var last = try q.tenantsVersion()
        #expect(last == 0)
        func expectBumped(_ what: String, _ write: () throws -> Void) throws {
            try write()
            let v = try q.tenantsVersion()
            #expect(v > last, "\(what)")
            last = v
        }
        try expectBumped("create") { try q.createTenant(Self.tenant("acme")) }
        try expectBumped("update") { try q.updateTenant(Self.tenant("acme", limits: TenantLimits(messagesPerHour: 1))) }
        try expectBumped("add user") { try q.addTenantUser(TenantSMTPUser(name: "u", tenant: "acme", passwordHash: "h", createdAt: 1)) }
        try expectBumped("remove user") { try q.removeTenantUser(name: "u") }
        try expectBumped("add key") { try q.addAPIKey(APIKeyRecord(id: "k", tenant: "acme", label: "l", secretHash: [1], createdAt: 1)) }
        try expectBumped("revoke key") { try q.revokeAPIKey(id: "k", tenant: nil, now: Self.now) }
        try expectBumped("add domain") { try q.addSendingDomain(Self.domain("acme.test", tenant: "acme")) }
        try expectBumped("remove domain") { try q.removeSendingDomain("acme.test", tenant: "acme") }
        try expectBumped("delete") { try q.deleteTenant(named: "acme") }
        _ = try q.tenants()
        try q.touchAPIKeys(["k"], now: Self.now)
        #expect(throws: TenantStoreError.self) { try q.createTenant(Self.tenant("x")); try q.createTenant(Self.tenant("x")) }
        #expect(try q.tenantsVersion() == last + 1, "only the create that succeeded counts")
        #expect(try place.open().tenantsVersion() == last + 1, "durable")
    }

    @Test("limits: the first full window refuses with the seconds until it ends; nothing is counted then; release gives back", arguments: StoreKind.allCases)
    func quota(kind: StoreKind) throws {
        let place = try TestStore(kind)
        let q = try place.open()
        let now = Self.now
        let hourly = TenantLimits(messagesPerHour: 5, messagesPerDay: 100, messagesPerMonth: 1000)
        #expect(try q.reserveQuota(tenant: "acme", limits: hourly, messages: 3, now: now) == .reserved)
        #expect(try q.reserveQuota(tenant: "acme", limits: hourly, messages: 2, now: now + 60) == .reserved)
        #expect(try q.reserveQuota(tenant: "acme", limits: hourly, messages: 1, now: now + 120) == .overLimit(window: "hour", limit: 5, retryAfter: 1680))
        #expect(try q.usage(tenant: "acme", now: now) == TenantUsage(hour: 5, day: 5, month: 5))
        // The next hour has room; the day and month go on counting.
        #expect(try q.reserveQuota(tenant: "acme", limits: hourly, messages: 1, now: now + 1800) == .reserved)
        #expect(try q.usage(tenant: "acme", now: now + 1800) == TenantUsage(hour: 1, day: 6, month: 6))
        // Just before the hour ends: at least one second.
        #expect(try q.reserveQuota(tenant: "acme", limits: TenantLimits(messagesPerHour: 1), messages: 1, now: now + 1800 + 3599.5)
                == .overLimit(window: "hour", limit: 1, retryAfter: 1))

        let daily = TenantLimits(messagesPerHour: nil, messagesPerDay: 4, messagesPerMonth: 1000)
        #expect(try q.reserveQuota(tenant: "beta", limits: daily, messages: 4, now: now) == .reserved)
        #expect(try q.reserveQuota(tenant: "beta", limits: daily, messages: 1, now: now) == .overLimit(window: "day", limit: 4, retryAfter: 22 * 3600 + 1800))
        let monthly = TenantLimits(messagesPerMonth: 6)
        #expect(try q.reserveQuota(tenant: "beta", limits: monthly, messages: 3, now: now) == .overLimit(window: "month", limit: 6,
                                                                                                          retryAfter: Int(Self.nextMonth.timeIntervalSince(now))))
        #expect(try q.usage(tenant: "beta", now: now) == TenantUsage(hour: 4, day: 4, month: 4), "refusals count nothing; unlimited windows count")

        try q.releaseQuota(tenant: "beta", messages: 1, reservedAt: now)
        #expect(try q.usage(tenant: "beta", now: now) == TenantUsage(hour: 3, day: 3, month: 3))
        try q.releaseQuota(tenant: "beta", messages: 10, reservedAt: now)
        #expect(try q.usage(tenant: "beta", now: now) == TenantUsage(hour: 0, day: 0, month: 0), "never below zero")
        #expect(try q.usage(tenant: "nobody", now: now) == TenantUsage(hour: 0, day: 0, month: 0))
    }

    @Test("purge: old events and idempotency records go; counts of windows that ended before this month go, this month's stay", arguments: StoreKind.allCases)
    func purge(kind: StoreKind) throws {
        let place = try TestStore(kind)
        let q = try place.open()
        let now = Self.now
        let lastMonth = TenantWindows.calendar.date(from: DateComponents(year: 2026, month: 11, day: 30, hour: 23, minute: 59))!
        let early = TenantWindows.calendar.date(from: DateComponents(year: 2026, month: 12, day: 1, hour: 0, minute: 1))!
        for t in [lastMonth, early, now] { _ = try q.reserveQuota(tenant: "acme", limits: TenantLimits(), messages: 1, now: t) }
        let old = IdempotencyRecord(tenant: "acme", key: "old", requestHash: "h", messageID: "M1", createdAt: now.timeIntervalSince1970 - 90_000)
        let recent = IdempotencyRecord(tenant: "acme", key: "new", requestHash: "h", messageID: "M2", createdAt: now.timeIntervalSince1970 - 60)
        try q.enqueue([Self.message("M1", tenant: "acme", idempotency: old), Self.message("M2", tenant: "acme", idempotency: recent)])
        let n = try q.purgeTenantData(eventsBefore: now - 86_400, idempotencyBefore: now - 86_400, now: now)
        #expect(n == 1 + 3, "one idempotency record and last month's hour, day and month")
        #expect(try q.idempotencyRecord(tenant: "acme", key: "old") == nil)
        #expect(try q.idempotencyRecord(tenant: "acme", key: "new") == recent)
        #expect(try q.usage(tenant: "acme", now: now) == TenantUsage(hour: 1, day: 1, month: 2))
        #expect(try q.usage(tenant: "acme", now: early) == TenantUsage(hour: 1, day: 1, month: 2), "this month's ended hours and days stay")
        #expect(try q.usage(tenant: "acme", now: lastMonth) == TenantUsage(hour: 0, day: 0, month: 0))
        #expect(try q.purgeTenantData(eventsBefore: now - 86_400, idempotencyBefore: now - 86_400, now: now) == 0)
    }

    @Test("enqueue keeps the tenant and the idempotency record in its transaction; a second record with the key never fails the batch", arguments: StoreKind.allCases)
    func enqueueWithTenant(kind: StoreKind) throws {
        let place = try TestStore(kind)
        let q = try place.open()
        let first = IdempotencyRecord(tenant: "acme", key: "order-42", requestHash: "aa11", messageID: "M1", createdAt: Self.now.timeIntervalSince1970)
        try q.enqueue(Self.message("M1", tenant: "acme", idempotency: first))
        #expect(try q.idempotencyRecord(tenant: "acme", key: "order-42") == first)
        #expect(try q.idempotencyRecord(tenant: "beta", key: "order-42") == nil)
        // The same key again (a race of two requests), alone and in a batch with others: both queued, the first record stays.
        var second = first
        second.messageID = "M2"; second.requestHash = "bb22"
        try q.enqueue(Self.message("M2", tenant: "acme", idempotency: second))
        try q.enqueue([Self.message("M3", tenant: "acme", idempotency: second), Self.message("M4", tenant: nil)])
        #expect(try q.idempotencyRecord(tenant: "acme", key: "order-42") == first)
        #expect(try q.message(id: "M1")?.tenant == "acme")
        #expect(try q.message(id: "M3")?.tenant == "acme")
        #expect(try q.message(id: "M4").map { $0.tenant == nil && $0.recipients.count == 2 } == true)
        #expect(try place.open().message(id: "M2")?.tenant == "acme", "durable")
    }

    @Test("RecipientSelector.tenant narrows counts, listings and actions to the tenant's messages; a tenant with waiting mail cannot be deleted",
          arguments: StoreKind.allCases)
    func selectorAndDelete(kind: StoreKind) throws {
        let place = try TestStore(kind)
        let q = try place.open()
        try q.createTenant(Self.tenant("acme"))
        try q.createTenant(Self.tenant("beta"))
        try q.addTenantUser(TenantSMTPUser(name: "acme-user", tenant: "acme", passwordHash: "h", createdAt: 1))
        try q.addAPIKey(APIKeyRecord(id: "acmekey", tenant: "acme", label: "l", secretHash: [1, 2], createdAt: 1))
        try q.addSendingDomain(Self.domain("acme.test", tenant: "acme"))
        _ = try q.reserveQuota(tenant: "acme", limits: TenantLimits(), messages: 3, now: Self.now)
        let record = IdempotencyRecord(tenant: "acme", key: "k", requestHash: "h", messageID: "A1", createdAt: Self.now.timeIntervalSince1970)
        try q.enqueue([Self.message("A1", tenant: "acme", idempotency: record), Self.message("A2", tenant: "acme", rcpts: ["c@z.test"]),
                       Self.message("B1", tenant: "beta"), Self.message("N1", tenant: nil)])
        #expect(try q.countWaiting(RecipientSelector(tenant: "acme")) == 3)
        #expect(try q.countWaiting(RecipientSelector(tenant: "beta")) == 2)
        #expect(try q.countWaiting(RecipientSelector()) == 7)
        #expect(try q.countWaiting(RecipientSelector(domains: ["x.test"], tenant: "acme")) == 1)
        #expect(try q.countWaiting(RecipientSelector(messageIDs: ["A1", "B1"], tenant: "beta")) == 2)
        #expect(try q.waitingRecipients(RecipientSelector(tenant: "acme"), after: 0, limit: 10).rows.map(\.messageId) == ["A1", "A1", "A2"])

        #expect(throws: TenantStoreError.conflict("tenant acme still has 3 waiting recipients: delete or bounce them first")) {
            try q.deleteTenant(named: "acme")
        }
        let held = try q.applyQueueAction(.hold, to: RecipientSelector(tenant: "acme"), by: "ops", target: "tenant acme", note: nil, now: { Self.now })
        #expect(held.changed == 3)
        #expect(try q.countWaiting(RecipientSelector(states: [.held])) == 3)
        #expect(throws: TenantStoreError.self) { try q.deleteTenant(named: "acme") }
        let deleted = try q.applyQueueAction(.delete, to: RecipientSelector(tenant: "acme"), by: "ops", target: "tenant acme", note: nil, now: { Self.now })
        #expect(deleted.changed == 3)
        #expect(try q.countWaiting(RecipientSelector()) == 4, "beta's and no tenant's untouched")

        try q.deleteTenant(named: "acme")
        #expect(try q.tenant(named: "acme") == nil)
        #expect(try q.tenantUsers(tenant: "acme").isEmpty)
        #expect(try q.apiKey(id: "acmekey") == nil)
        #expect(try q.sendingDomains(tenant: "acme").isEmpty)
        #expect(try q.usage(tenant: "acme", now: Self.now) == TenantUsage(hour: 0, day: 0, month: 0))
        #expect(try q.idempotencyRecord(tenant: "acme", key: "k") == nil)
        #expect(try q.message(id: "A1")?.tenant == "acme", "messages stay and name it still")
        // The names are free again.
        try q.createTenant(Self.tenant("acme"))
        try q.addSendingDomain(Self.domain("acme.test", tenant: "acme"))
        #expect(try q.tenants().map(\.name) == ["acme", "beta"])
    }

    @Test("processing the event outbox copies a tenant message's events into the tenant log (paged by id); other mail's events are not kept",
          arguments: StoreKind.allCases)
    func events(kind: StoreKind) throws {
        let f = try ReportingFixture(kind: kind)
        defer { f.cleanup() }
        try f.store.enqueue(NewMessage(id: "T1", reversePath: "app@acme.test", recipients: ["ok@hato.test", "bad@hato.test", "later@hato.test"], pool: "t",
                                       content: Array("Subject: x\r\n\r\nbody\r\n".utf8), heloName: "c", clientAddress: "127.0.0.1",
                                       receivedAt: f.clock.now(), tenant: "acme"))
        try f.store.enqueue(f.message("N1", ["n@hato.test"]))
        try f.report()
        #expect(try f.store.tenantEvents(tenant: "acme", after: 0, limit: 100).map(\.kind) == ["received"])
        let due = try f.store.dueRecipients(pools: ["t"], now: f.clock.now(), limit: 100).filter { $0.messageID == "T1" }
        let lease = LeaseRecord(id: "L1", node: "node-a", instance: "i1", sendingIP: "127.0.0.10", messageID: "T1", domain: "hato.test",
                                recipientIDs: due.map(\.id), grantedAt: f.clock.now(), expiresAt: f.clock.now() + 300)
        _ = try f.store.recordLeases([lease])
        f.clock.advance(2)
        let resultAt = f.clock.now()
        let replies: [(RecipientResult.Status, DeliveryStatus)] = [(.delivered, DeliveryStatus(code: 250, enhanced: "2.0.0", text: "queued as 1")),
                                                                   (.failed, DeliveryStatus(code: 550, enhanced: "5.1.1", text: "no such user")),
                                                                   (.deferred, DeliveryStatus(code: 451, enhanced: "4.7.1", text: "try later"))]
        let result = ResultMessage(leaseID: "L1", instanceID: "i1", sendingIP: "127.0.0.10", mxHost: "mx.hato.test", remoteAddress: "127.0.0.1",
                                   outcomes: zip(due, replies).map { RecipientResult(recipientID: $0.id, status: $1.0, reply: $1.1) },
                                   finishedAt: f.clock.now().timeIntervalSince1970)
        _ = try f.store.applyResult(result, node: "node-a", retry: f.retry, now: f.clock.now())
        try f.deliver("N1", status: .delivered, code: 250, enhanced: nil, text: "ok")
        try f.report()
        #expect(try f.store.pendingEventCount() == 0)

        let all = try f.store.tenantEvents(tenant: "acme", after: 0, limit: 100)
        #expect(all.map(\.kind) == ["received", "delivered", "failed", "deferred"])
        #expect(all.allSatisfy { $0.tenant == "acme" && $0.messageID == "T1" })
        #expect(all.map(\.id) == all.map(\.id).sorted() && Set(all.map(\.id)).count == 4)
        let failed = try #require(all.first { $0.kind == "failed" })
        #expect(failed.recipient == "bad@hato.test" && failed.code == 550 && failed.enhanced == "5.1.1" && failed.text == "no such user")
        #expect(failed.mx == "mx.hato.test" && failed.sendingIP == "127.0.0.10" && failed.at == resultAt.timeIntervalSince1970)
        #expect(all.first?.recipient == nil && all.first?.code == nil)
        // Paging by id.
        let page1 = try f.store.tenantEvents(tenant: "acme", after: 0, limit: 2)
        let page2 = try f.store.tenantEvents(tenant: "acme", after: page1.last?.id ?? 0, limit: 2)
        let page3 = try f.store.tenantEvents(tenant: "acme", after: page2.last?.id ?? 0, limit: 2)
        #expect(page1 + page2 == all && page3.isEmpty)
        #expect(try f.store.tenantEvents(tenant: "acme", after: 0, limit: 0).isEmpty)
        #expect(try f.store.tenantEvents(messageID: "T1") == all)
        #expect(try f.store.tenantEvents(messageID: "N1").isEmpty, "mail of no tenant")
        #expect(try f.store.tenantEvents(tenant: "beta", after: 0, limit: 10).isEmpty)

        // Kept `http_api.event_retention`: the purge removes them by age.
        let now = f.clock.now()
        #expect(try f.store.purgeTenantData(eventsBefore: resultAt - 1, idempotencyBefore: now, now: now) == 1, "the received event is older")
        #expect(try f.store.purgeTenantData(eventsBefore: resultAt + 1, idempotencyBefore: now, now: now) == 3)
        #expect(try f.store.tenantEvents(messageID: "T1").isEmpty)
    }

    @Test("windows: UTC hour, day and calendar month keys and ends")
    func windows() {
        let w = TenantWindows(Self.now)
        let t = Self.now.timeIntervalSince1970
        #expect(w.hour == .init(name: "hour", key: "h:\(Int(t) / 3600)", end: t + 1800))
        #expect(w.day == .init(name: "day", key: "d:\(Int(t) / 86_400)", end: t + 22 * 3600 + 1800))
        #expect(w.month == .init(name: "month", key: "m:202612", end: Self.nextMonth.timeIntervalSince1970))
        #expect(w.monthStart == t - 4 * 86_400 - 5400)
        #expect(TenantWindows(Date(timeIntervalSince1970: 0)).month.key == "m:197001")
        let feb = TenantWindows(TenantWindows.calendar.date(from: DateComponents(year: 2028, month: 2, day: 29, hour: 23, minute: 59, second: 59))!)
        #expect(feb.month.key == "m:202802" && feb.month.end == TenantWindows.calendar.date(from: DateComponents(year: 2028, month: 3, day: 1))!.timeIntervalSince1970)
    }

    @Test("two coordinators racing on one PostgreSQL database reserve exactly the limit (2 × 40 attempts, 50 per hour)")
    func quotaRace() throws {
        let place = try TestStore(.postgresql)
        let a = try place.open(), b = try place.open()
        let limits = TenantLimits(messagesPerHour: 50)
        let reserved = Locked(0), refused = Locked(0), failures = Locked<[String]>([])
        let done = DispatchGroup()
        for store in [a, b] {
            done.enter()
            Thread {
                for _ in 0..<40 {
                    do {
                        switch try store.reserveQuota(tenant: "acme", limits: limits, messages: 1, now: Self.now) {
                        case .reserved: reserved.withLock { $0 += 1 }
                        case .overLimit: refused.withLock { $0 += 1 }
                        }
                    } catch {
                        failures.withLock { $0.append("\(error)") }
                    }
                }
                done.leave()
            }.start()
        }
        done.wait()
        #expect(failures.snapshot.isEmpty)
        #expect(reserved.snapshot == 50)
        #expect(refused.snapshot == 30)
        #expect(try a.usage(tenant: "acme", now: Self.now) == TenantUsage(hour: 50, day: 50, month: 50))
    }
}
