import Foundation
import SMTPCore

// The tenant layer's tables on PostgreSQL (issue 16; migration 3; `TenantStore` has the
// contract, SQLiteQueueStore+Tenants.swift the same rules on SQLite). Several coordinators share
// these rows: a write that needs its tenant to exist locks the tenant's row (`FOR SHARE`), so a
// concurrent `deleteTenant` (which locks it `FOR UPDATE`) either sees the new row or waits;
// names, ids and domains are claimed by `INSERT … ON CONFLICT DO NOTHING`, whose row count says
// whether it was free (no failed statement, so the transaction stays usable).

extension PostgreSQLQueueStore {
    /// Increments the tenants' version inside the caller's transaction.
    private static func bumpTenantsVersion(on c: PostgreSQLConnection) throws {
        try c.run("INSERT INTO tenant_version(id, version) VALUES(1, 1) ON CONFLICT(id) DO UPDATE SET version = tenant_version.version + 1")
    }

    /// Locks tenant `name`'s row against deletion for the transaction.
    /// - Throws: `TenantStoreError.notFound` when there is no such tenant.
    private static func requireTenant(_ name: String, lock: String = "FOR SHARE", on c: PostgreSQLConnection) throws {
        guard !(try c.query("SELECT 1 FROM tenants WHERE name = $1 \(lock)", [.text(name)]).isEmpty) else {
            throw TenantStoreError.notFound("tenant \(name)")
        }
    }

    private static func optional(_ text: String?) -> PostgreSQLValue { text.map { .text($0) } ?? .null }
    private static func optional(_ n: Int?) -> PostgreSQLValue { n.map { .int(Int64($0)) } ?? .null }
    private static func optional(_ d: Double?) -> PostgreSQLValue { d.map { .double($0) } ?? .null }

    // MARK: Tenants

    private static let tenantColumns = """
        name, state, state_reason, pool, messages_per_hour, messages_per_day, messages_per_month, recipients_per_message,
        webhook_url, webhook_secret, created_at, priority
        """

    private static func tenantRow(_ s: PostgreSQLRow) throws -> Tenant {
        func int(_ c: Int) throws -> Int? { try s.optionalInt(c).map { Int($0) } }
        return Tenant(name: try s.text(0), state: TenantState(rawValue: try s.text(1)) ?? .suspended, stateReason: try s.optionalText(2),
                      pool: try s.optionalText(3),
                      limits: TenantLimits(messagesPerHour: try int(4), messagesPerDay: try int(5), messagesPerMonth: try int(6), recipientsPerMessage: try int(7)),
                      webhookURL: try s.optionalText(8), webhookSecret: try s.optionalText(9), createdAt: try s.double(10),
                      priority: try s.optionalText(11).flatMap { MessagePriority(parsing: $0) })
    }

    /// The values of every column but `name` and `created_at`, in `tenantColumns` order.
    private static func tenantValues(_ t: Tenant) -> [PostgreSQLValue] {
        [.text(t.state.rawValue), optional(t.stateReason), optional(t.pool), optional(t.limits.messagesPerHour), optional(t.limits.messagesPerDay),
         optional(t.limits.messagesPerMonth), optional(t.limits.recipientsPerMessage), optional(t.webhookURL), optional(t.webhookSecret)]
    }

    /// Creates a tenant. - Throws: `TenantStoreError.exists`, or `PostgreSQLError`.
    public func createTenant(_ tenant: Tenant) throws {
        try pool.transaction { c in
            let n = try c.run("INSERT INTO tenants(\(Self.tenantColumns)) VALUES($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING",
                              [.text(tenant.name)] + Self.tenantValues(tenant) + [.double(tenant.createdAt), Self.optional(tenant.priority?.rawValue)])
            guard n == 1 else { throw TenantStoreError.exists("tenant \(tenant.name)") }
            try Self.bumpTenantsVersion(on: c)
        }
    }

    /// The tenant named `name`, nil when unknown. - Throws: `PostgreSQLError`.
    public func tenant(named name: String) throws -> Tenant? {
        try pool.withConnection { c in try c.query("SELECT \(Self.tenantColumns) FROM tenants WHERE name = $1", [.text(name)]).first.map(Self.tenantRow) }
    }

    /// Every tenant, by name. - Throws: `PostgreSQLError`.
    public func tenants() throws -> [Tenant] {
        try pool.withConnection { c in try c.query("SELECT \(Self.tenantColumns) FROM tenants ORDER BY name COLLATE \"C\"").map(Self.tenantRow) }
    }

    /// Replaces a tenant's state, reason, pool, limits and webhook.
    /// - Throws: `TenantStoreError.notFound`, or `PostgreSQLError`.
    public func updateTenant(_ tenant: Tenant) throws {
        try pool.transaction { c in
            let n = try c.run("""
                UPDATE tenants SET state = $1, state_reason = $2, pool = $3, messages_per_hour = $4, messages_per_day = $5, messages_per_month = $6,
                  recipients_per_message = $7, webhook_url = $8, webhook_secret = $9, priority = $10 WHERE name = $11
                """, Self.tenantValues(tenant) + [Self.optional(tenant.priority?.rawValue), .text(tenant.name)])
            guard n == 1 else { throw TenantStoreError.notFound("tenant \(tenant.name)") }
            try Self.bumpTenantsVersion(on: c)
        }
    }

    /// Deletes a tenant with its users, keys, domains (and their keys), counts and idempotency
    /// records; its messages and events stay.
    /// - Throws: `TenantStoreError.notFound`, `.conflict` while a recipient of its messages is
    ///   waiting (queued, deferred, leased, held), or `PostgreSQLError`.
    public func deleteTenant(named name: String) throws {
        try pool.transaction { c in
            try Self.requireTenant(name, lock: "FOR UPDATE", on: c)
            let waiting = Int(try c.query("""
                SELECT COUNT(*) FROM messages m JOIN recipients r ON r.message_id = m.id
                WHERE m.tenant = $1 AND m.open_recipients > 0 AND r.state IN ('queued','deferred','leased','held')
                """, [.text(name)]).first?.int(0) ?? 0)
            guard waiting == 0 else {
                throw TenantStoreError.conflict("tenant \(name) still has \(waiting) waiting recipient\(waiting == 1 ? "" : "s"): delete or bounce them first")
            }
            for sql in ["DELETE FROM sending_domain_keys WHERE domain IN (SELECT domain FROM sending_domains WHERE tenant = $1)",
                        "DELETE FROM sending_domains WHERE tenant = $1", "DELETE FROM tenant_users WHERE tenant = $1", "DELETE FROM api_keys WHERE tenant = $1",
                        "DELETE FROM tenant_usage WHERE tenant = $1", "DELETE FROM idempotency_keys WHERE tenant = $1", "DELETE FROM tenants WHERE name = $1"] {
                try c.run(sql, [.text(name)])
            }
            try Self.bumpTenantsVersion(on: c)
        }
    }

    /// Increments on every change of a tenant, user, key or domain. - Throws: `PostgreSQLError`.
    public func tenantsVersion() throws -> Int64 {
        try pool.withConnection { c in try c.query("SELECT version FROM tenant_version WHERE id = 1").first?.int(0) ?? 0 }
    }

    // MARK: SMTP users

    /// Adds an SMTP user. - Throws: `TenantStoreError.exists`, `.notFound`, or `PostgreSQLError`.
    public func addTenantUser(_ user: TenantSMTPUser) throws {
        try pool.transaction { c in
            try Self.requireTenant(user.tenant, on: c)
            let n = try c.run("INSERT INTO tenant_users(name, tenant, password_hash, created_at) VALUES($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                              [.text(user.name), .text(user.tenant), .text(user.passwordHash), .double(user.createdAt)])
            guard n == 1 else { throw TenantStoreError.exists("SMTP user \(user.name)") }
            try Self.bumpTenantsVersion(on: c)
        }
    }

    /// Removes an SMTP user. - Returns: whether it existed. - Throws: `PostgreSQLError`.
    @discardableResult
    public func removeTenantUser(name: String) throws -> Bool {
        try pool.transaction { c in
            guard try c.run("DELETE FROM tenant_users WHERE name = $1", [.text(name)]) > 0 else { return false }
            try Self.bumpTenantsVersion(on: c)
            return true
        }
    }

    /// SMTP users of `tenant` (nil: of every tenant), by name. - Throws: `PostgreSQLError`.
    public func tenantUsers(tenant: String?) throws -> [TenantSMTPUser] {
        try pool.withConnection { c in
            try c.query("""
                SELECT name, tenant, password_hash, created_at FROM tenant_users WHERE $1::text IS NULL OR tenant = $1::text ORDER BY name COLLATE "C"
                """, [Self.optional(tenant)]).map {
                TenantSMTPUser(name: try $0.text(0), tenant: try $0.text(1), passwordHash: try $0.text(2), createdAt: try $0.double(3))
            }
        }
    }

    // MARK: API keys

    private static let apiKeyColumns = "id, tenant, label, secret_hash, created_at, last_used_at, revoked_at"

    private static func apiKeyRow(_ s: PostgreSQLRow) throws -> APIKeyRecord {
        APIKeyRecord(id: try s.text(0), tenant: try s.text(1), label: try s.text(2), secretHash: try s.bytea(3), createdAt: try s.double(4),
                     lastUsedAt: try s.optionalDouble(5), revokedAt: try s.optionalDouble(6))
    }

    /// Stores a new API key. - Throws: `TenantStoreError.exists`, `.notFound`, or `PostgreSQLError`.
    public func addAPIKey(_ key: APIKeyRecord) throws {
        try pool.transaction { c in
            try Self.requireTenant(key.tenant, on: c)
            let n = try c.run("INSERT INTO api_keys(\(Self.apiKeyColumns)) VALUES($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                              [.text(key.id), .text(key.tenant), .text(key.label), .bytea(key.secretHash), .double(key.createdAt),
                               Self.optional(key.lastUsedAt), Self.optional(key.revokedAt)])
            guard n == 1 else { throw TenantStoreError.exists("API key \(key.id)") }
            try Self.bumpTenantsVersion(on: c)
        }
    }

    /// The key with public id `id` (revoked ones too), nil when unknown. - Throws: `PostgreSQLError`.
    public func apiKey(id: String) throws -> APIKeyRecord? {
        try pool.withConnection { c in
            try c.query("SELECT \(Self.apiKeyColumns) FROM api_keys WHERE id = $1", [.text(id)], binaryResults: true).first.map(Self.apiKeyRow)
        }
    }

    /// The keys of `tenant` (nil: every tenant's), newest first, revoked ones included. - Throws: `PostgreSQLError`.
    public func apiKeys(tenant: String?) throws -> [APIKeyRecord] {
        try pool.withConnection { c in
            try c.query("""
                SELECT \(Self.apiKeyColumns) FROM api_keys WHERE $1::text IS NULL OR tenant = $1::text ORDER BY created_at DESC, id COLLATE "C" DESC
                """, [Self.optional(tenant)], binaryResults: true).map(Self.apiKeyRow)
        }
    }

    /// Revokes a valid key (of `tenant` only, when given). - Returns: whether one was revoked. - Throws: `PostgreSQLError`.
    @discardableResult
    public func revokeAPIKey(id: String, tenant: String?, now: Date) throws -> Bool {
        try pool.transaction { c in
            let n = try c.run("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL AND ($3::text IS NULL OR tenant = $3::text)",
                              [.double(now.timeIntervalSince1970), .text(id), Self.optional(tenant)])
            guard n == 1 else { return false }
            try Self.bumpTenantsVersion(on: c)
            return true
        }
    }

    /// Records that keys were used at `now`, without waiting for `synchronous_commit` (the
    /// tenants' version is not changed: the time is not cached state). - Throws: `PostgreSQLError`.
    public func touchAPIKeys(_ ids: [String], now: Date) throws {
        guard !ids.isEmpty else { return }
        try pool.transaction(synchronousCommit: false) { c in
            try c.run("UPDATE api_keys SET last_used_at = $1 WHERE id = ANY($2::text[])", [.double(now.timeIntervalSince1970), .text(Self.array(Set(ids).sorted()))])
        }
    }

    // MARK: Sending domains

    /// Adds a sending domain with its keys.
    /// - Throws: `TenantStoreError.exists` (any tenant has it), `.notFound`, or `PostgreSQLError`.
    public func addSendingDomain(_ domain: SendingDomain) throws {
        try pool.transaction { c in
            try Self.requireTenant(domain.tenant, on: c)
            let n = try c.run("INSERT INTO sending_domains(domain, tenant, created_at) VALUES($1, $2, $3) ON CONFLICT DO NOTHING",
                              [.text(domain.domain), .text(domain.tenant), .double(domain.createdAt)])
            guard n == 1 else { throw TenantStoreError.exists("sending domain \(domain.domain)") }
            try c.run("DELETE FROM sending_domain_keys WHERE domain = $1", [.text(domain.domain)])
            for k in domain.keys {
                try c.run("INSERT INTO sending_domain_keys(domain, selector, algorithm, sealed_private_key, public_key) VALUES($1, $2, $3, $4, $5)",
                          [.text(domain.domain), .text(k.selector), .text(k.algorithm), .bytea(k.sealedPrivateKey), .text(k.publicKey)])
            }
            try Self.bumpTenantsVersion(on: c)
        }
    }

    /// Removes a domain of `tenant` with its keys. - Returns: whether it existed. - Throws: `PostgreSQLError`.
    @discardableResult
    public func removeSendingDomain(_ domain: String, tenant: String) throws -> Bool {
        try pool.transaction { c in
            guard try c.run("DELETE FROM sending_domains WHERE domain = $1 AND tenant = $2", [.text(domain), .text(tenant)]) == 1 else { return false }
            try c.run("DELETE FROM sending_domain_keys WHERE domain = $1", [.text(domain)])
            try Self.bumpTenantsVersion(on: c)
            return true
        }
    }

    /// The domains of `tenant` (nil: every tenant's) with their keys (by selector), by domain.
    /// - Throws: `PostgreSQLError`.
    public func sendingDomains(tenant: String?) throws -> [SendingDomain] {
        try pool.withConnection { c in
            var domains = try c.query("""
                SELECT domain, tenant, created_at FROM sending_domains WHERE $1::text IS NULL OR tenant = $1::text ORDER BY domain COLLATE "C"
                """, [Self.optional(tenant)]).map { SendingDomain(domain: try $0.text(0), tenant: try $0.text(1), keys: [], createdAt: try $0.double(2)) }
            guard !domains.isEmpty else { return [] }
            var keys: [String: [DomainSigningKey]] = [:]
            for r in try c.query("""
                SELECT domain, selector, algorithm, sealed_private_key, public_key FROM sending_domain_keys WHERE domain = ANY($1::text[])
                ORDER BY domain, selector COLLATE "C"
                """, [.text(Self.array(domains.map(\.domain)))], binaryResults: true) {
                keys[try r.text(0), default: []].append(DomainSigningKey(selector: try r.text(1), algorithm: try r.text(2),
                                                                         sealedPrivateKey: try r.bytea(3), publicKey: try r.text(4)))
            }
            for i in domains.indices { domains[i].keys = keys[domains[i].domain] ?? [] }
            return domains
        }
    }
}
