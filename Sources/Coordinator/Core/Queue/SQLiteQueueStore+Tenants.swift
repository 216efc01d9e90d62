import Foundation
import SMTPCore

// The tenant layer's tables in the SQLite store (issue 16; `TenantStore` has the contract):
// tenants, their SMTP users, API keys, sending domains with their DKIM keys, and the version
// counter the caches poll. Counts, idempotency records and the event log are in
// SQLiteQueueStore+TenantUsage.swift. Every write here is one synced transaction under the
// queue's lock; refusals (`exists`, `notFound`) are decided inside it, before anything is written.

extension SQLiteQueueStore {
    /// The tenant tables (created by `init`; idempotent). `messages.tenant` is added by `init`'s
    /// column loop before this runs (the partial index names it).
    static let tenantSchema = """
        CREATE TABLE IF NOT EXISTS tenants(
          name TEXT PRIMARY KEY, state TEXT NOT NULL, state_reason TEXT, pool TEXT,
          messages_per_hour INTEGER, messages_per_day INTEGER, messages_per_month INTEGER, recipients_per_message INTEGER,
          webhook_url TEXT, webhook_secret TEXT, created_at REAL NOT NULL);
        CREATE TABLE IF NOT EXISTS tenant_users(name TEXT PRIMARY KEY, tenant TEXT NOT NULL, password_hash TEXT NOT NULL, created_at REAL NOT NULL);
        CREATE INDEX IF NOT EXISTS tenant_users_tenant ON tenant_users(tenant);
        CREATE TABLE IF NOT EXISTS api_keys(
          id TEXT PRIMARY KEY, tenant TEXT NOT NULL, label TEXT NOT NULL, secret_hash BLOB NOT NULL, created_at REAL NOT NULL,
          last_used_at REAL, revoked_at REAL);
        CREATE INDEX IF NOT EXISTS api_keys_tenant ON api_keys(tenant);
        CREATE TABLE IF NOT EXISTS sending_domains(domain TEXT PRIMARY KEY, tenant TEXT NOT NULL, created_at REAL NOT NULL);
        CREATE INDEX IF NOT EXISTS sending_domains_tenant ON sending_domains(tenant);
        CREATE TABLE IF NOT EXISTS sending_domain_keys(
          domain TEXT NOT NULL, selector TEXT NOT NULL, algorithm TEXT NOT NULL, sealed_private_key BLOB NOT NULL, public_key TEXT NOT NULL,
          PRIMARY KEY(domain, selector));
        CREATE TABLE IF NOT EXISTS tenant_usage(tenant TEXT NOT NULL, time_window TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY(tenant, time_window));
        CREATE TABLE IF NOT EXISTS idempotency_keys(
          tenant TEXT NOT NULL, key TEXT NOT NULL, request_hash TEXT NOT NULL, message_id TEXT NOT NULL, created_at REAL NOT NULL,
          PRIMARY KEY(tenant, key));
        CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys(created_at);
        CREATE TABLE IF NOT EXISTS tenant_events(
          id INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, kind TEXT NOT NULL, message_id TEXT NOT NULL, recipient TEXT,
          code INTEGER, enhanced TEXT, text TEXT, mx TEXT, ip TEXT, at REAL NOT NULL);
        CREATE INDEX IF NOT EXISTS tenant_events_tenant ON tenant_events(tenant, id);
        CREATE INDEX IF NOT EXISTS tenant_events_message ON tenant_events(message_id);
        CREATE TABLE IF NOT EXISTS tenant_version(id INTEGER PRIMARY KEY, version INTEGER NOT NULL);
        CREATE INDEX IF NOT EXISTS messages_tenant_open ON messages(tenant) WHERE tenant IS NOT NULL AND open_recipients > 0;
        """

    /// Runs `body` in one synced transaction under the queue's lock.
    private func tenantWrite<T>(_ body: () throws -> T) throws -> T {
        try lock.withLock { try db.transaction(body) }
    }

    /// Increments the tenants' version (the caller holds the lock in a transaction).
    private func bumpTenantsVersion() throws {
        try db.prepare("INSERT INTO tenant_version(id, version) VALUES(1, 1) ON CONFLICT(id) DO UPDATE SET version = version + 1").run()
    }

    /// Whether tenant `name` exists (the caller holds the lock).
    private func tenantExists(_ name: String) throws -> Bool {
        !(try db.prepare("SELECT 1 FROM tenants WHERE name=?").query([.text(name)]) { $0.int(0) }.isEmpty)
    }

    private static func optional(_ text: String?) -> SQLiteStatement.Value { text.map { .text($0) } ?? .null }
    private static func optional(_ n: Int?) -> SQLiteStatement.Value { n.map { .int(Int64($0)) } ?? .null }
    private static func optional(_ d: Double?) -> SQLiteStatement.Value { d.map { .double($0) } ?? .null }

    // MARK: Tenants

    private static let tenantColumns = """
        name, state, state_reason, pool, messages_per_hour, messages_per_day, messages_per_month, recipients_per_message,
        webhook_url, webhook_secret, created_at, priority
        """

    private static func tenantRow(_ s: SQLiteStatement) -> Tenant {
        func int(_ c: Int32) -> Int? { s.isNull(c) ? nil : Int(s.int(c)) }
        return Tenant(name: s.text(0), state: TenantState(rawValue: s.text(1)) ?? .suspended, stateReason: s.optionalText(2), pool: s.optionalText(3),
                      limits: TenantLimits(messagesPerHour: int(4), messagesPerDay: int(5), messagesPerMonth: int(6), recipientsPerMessage: int(7)),
                      webhookURL: s.optionalText(8), webhookSecret: s.optionalText(9), createdAt: s.double(10),
                      priority: s.optionalText(11).flatMap { MessagePriority(parsing: $0) })
    }

    /// The values of every column but `name` and `created_at`, in `tenantColumns` order.
    private static func tenantValues(_ t: Tenant) -> [SQLiteStatement.Value] {
        [.text(t.state.rawValue), optional(t.stateReason), optional(t.pool), optional(t.limits.messagesPerHour), optional(t.limits.messagesPerDay),
         optional(t.limits.messagesPerMonth), optional(t.limits.recipientsPerMessage), optional(t.webhookURL), optional(t.webhookSecret)]
    }

    /// Creates a tenant. - Throws: `TenantStoreError.exists`, or `SQLiteError`.
    public func createTenant(_ tenant: Tenant) throws {
        try tenantWrite {
            try db.prepare("INSERT INTO tenants(\(Self.tenantColumns)) VALUES(?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING")
                .run([.text(tenant.name)] + Self.tenantValues(tenant) + [.double(tenant.createdAt), Self.optional(tenant.priority?.rawValue)])
            guard db.changes == 1 else { throw TenantStoreError.exists("tenant \(tenant.name)") }
            try bumpTenantsVersion()
        }
    }

    /// The tenant named `name`, nil when unknown. - Throws: `SQLiteError`.
    public func tenant(named name: String) throws -> Tenant? {
        try lock.withLock { try db.prepare("SELECT \(Self.tenantColumns) FROM tenants WHERE name=?").query([.text(name)], Self.tenantRow).first }
    }

    /// Every tenant, by name. - Throws: `SQLiteError`.
    public func tenants() throws -> [Tenant] {
        try lock.withLock { try db.prepare("SELECT \(Self.tenantColumns) FROM tenants ORDER BY name").query([], Self.tenantRow) }
    }

    /// Replaces a tenant's state, reason, pool, limits and webhook.
    /// - Throws: `TenantStoreError.notFound`, or `SQLiteError`.
    public func updateTenant(_ tenant: Tenant) throws {
        try tenantWrite {
            try db.prepare("""
                UPDATE tenants SET state=?, state_reason=?, pool=?, messages_per_hour=?, messages_per_day=?, messages_per_month=?,
                  recipients_per_message=?, webhook_url=?, webhook_secret=?, priority=? WHERE name=?
                """).run(Self.tenantValues(tenant) + [Self.optional(tenant.priority?.rawValue), .text(tenant.name)])
            guard db.changes == 1 else { throw TenantStoreError.notFound("tenant \(tenant.name)") }
            try bumpTenantsVersion()
        }
    }

    /// Deletes a tenant with its users, keys, domains (and their keys), counts and idempotency
    /// records; its messages and events stay.
    /// - Throws: `TenantStoreError.notFound`, `.conflict` while a recipient of its messages is
    ///   waiting (queued, deferred, leased, held), or `SQLiteError`.
    public func deleteTenant(named name: String) throws {
        try tenantWrite {
            guard try tenantExists(name) else { throw TenantStoreError.notFound("tenant \(name)") }
            let waiting = try db.prepare("""
                SELECT COUNT(*) FROM messages m JOIN recipients r ON r.message_id = m.id
                WHERE m.tenant = ? AND m.open_recipients > 0 AND \(Self.waitingStateTerm)
                """).query([.text(name)]) { Int($0.int(0)) }.first ?? 0
            guard waiting == 0 else {
                throw TenantStoreError.conflict("tenant \(name) still has \(waiting) waiting recipient\(waiting == 1 ? "" : "s"): delete or bounce them first")
            }
            for sql in ["DELETE FROM sending_domain_keys WHERE domain IN (SELECT domain FROM sending_domains WHERE tenant=?)",
                        "DELETE FROM sending_domains WHERE tenant=?", "DELETE FROM tenant_users WHERE tenant=?", "DELETE FROM api_keys WHERE tenant=?",
                        "DELETE FROM tenant_usage WHERE tenant=?", "DELETE FROM idempotency_keys WHERE tenant=?", "DELETE FROM tenants WHERE name=?"] {
                try db.prepare(sql).run([.text(name)])
            }
            try bumpTenantsVersion()
        }
    }

    /// Increments on every change of a tenant, user, key or domain. - Throws: `SQLiteError`.
    public func tenantsVersion() throws -> Int64 {
        try lock.withLock { try db.prepare("SELECT version FROM tenant_version WHERE id=1").query { $0.int(0) }.first ?? 0 }
    }

    // MARK: SMTP users

    /// Adds an SMTP user. - Throws: `TenantStoreError.exists`, `.notFound`, or `SQLiteError`.
    public func addTenantUser(_ user: TenantSMTPUser) throws {
        try tenantWrite {
            guard try tenantExists(user.tenant) else { throw TenantStoreError.notFound("tenant \(user.tenant)") }
            try db.prepare("INSERT INTO tenant_users(name, tenant, password_hash, created_at) VALUES(?,?,?,?) ON CONFLICT DO NOTHING")
                .run([.text(user.name), .text(user.tenant), .text(user.passwordHash), .double(user.createdAt)])
            guard db.changes == 1 else { throw TenantStoreError.exists("SMTP user \(user.name)") }
            try bumpTenantsVersion()
        }
    }

    /// Removes an SMTP user. - Returns: whether it existed. - Throws: `SQLiteError`.
    @discardableResult
    public func removeTenantUser(name: String) throws -> Bool {
        try tenantWrite {
            try db.prepare("DELETE FROM tenant_users WHERE name=?").run([.text(name)])
            guard db.changes > 0 else { return false }
            try bumpTenantsVersion()
            return true
        }
    }

    /// SMTP users of `tenant` (nil: of every tenant), by name. - Throws: `SQLiteError`.
    public func tenantUsers(tenant: String?) throws -> [TenantSMTPUser] {
        try lock.withLock {
            try db.prepare("SELECT name, tenant, password_hash, created_at FROM tenant_users WHERE ?1 IS NULL OR tenant = ?1 ORDER BY name")
                .query([Self.optional(tenant)]) { TenantSMTPUser(name: $0.text(0), tenant: $0.text(1), passwordHash: $0.text(2), createdAt: $0.double(3)) }
        }
    }

    // MARK: API keys

    private static func apiKeyRow(_ s: SQLiteStatement) -> APIKeyRecord {
        APIKeyRecord(id: s.text(0), tenant: s.text(1), label: s.text(2), secretHash: s.blob(3), createdAt: s.double(4),
                     lastUsedAt: s.isNull(5) ? nil : s.double(5), revokedAt: s.isNull(6) ? nil : s.double(6))
    }

    private static let apiKeyColumns = "id, tenant, label, secret_hash, created_at, last_used_at, revoked_at"

    /// Stores a new API key. - Throws: `TenantStoreError.exists`, `.notFound`, or `SQLiteError`.
    public func addAPIKey(_ key: APIKeyRecord) throws {
        try tenantWrite {
            guard try tenantExists(key.tenant) else { throw TenantStoreError.notFound("tenant \(key.tenant)") }
            try db.prepare("INSERT INTO api_keys(\(Self.apiKeyColumns)) VALUES(?,?,?,?,?,?,?) ON CONFLICT DO NOTHING")
                .run([.text(key.id), .text(key.tenant), .text(key.label), .blob(key.secretHash), .double(key.createdAt),
                      Self.optional(key.lastUsedAt), Self.optional(key.revokedAt)])
            guard db.changes == 1 else { throw TenantStoreError.exists("API key \(key.id)") }
            try bumpTenantsVersion()
        }
    }

    /// The key with public id `id` (revoked ones too), nil when unknown. - Throws: `SQLiteError`.
    public func apiKey(id: String) throws -> APIKeyRecord? {
        try lock.withLock { try db.prepare("SELECT \(Self.apiKeyColumns) FROM api_keys WHERE id=?").query([.text(id)], Self.apiKeyRow).first }
    }

    /// The keys of `tenant` (nil: every tenant's), newest first, revoked ones included. - Throws: `SQLiteError`.
    public func apiKeys(tenant: String?) throws -> [APIKeyRecord] {
        try lock.withLock {
            try db.prepare("SELECT \(Self.apiKeyColumns) FROM api_keys WHERE ?1 IS NULL OR tenant = ?1 ORDER BY created_at DESC, id DESC")
                .query([Self.optional(tenant)], Self.apiKeyRow)
        }
    }

    /// Revokes a valid key (of `tenant` only, when given). - Returns: whether one was revoked. - Throws: `SQLiteError`.
    @discardableResult
    public func revokeAPIKey(id: String, tenant: String?, now: Date) throws -> Bool {
        try tenantWrite {
            try db.prepare("UPDATE api_keys SET revoked_at=?1 WHERE id=?2 AND revoked_at IS NULL AND (?3 IS NULL OR tenant = ?3)")
                .run([.double(now.timeIntervalSince1970), .text(id), Self.optional(tenant)])
            guard db.changes == 1 else { return false }
            try bumpTenantsVersion()
            return true
        }
    }

    /// Records that keys were used at `now`, without waiting for fsync (the tenants' version is
    /// not changed: the time is not cached state). - Throws: `SQLiteError`.
    public func touchAPIKeys(_ ids: [String], now: Date) throws {
        guard !ids.isEmpty else { return }
        try lock.withLock {
            try db.transaction(durability: .processCrashSafe) {
                let touch = try db.prepare("UPDATE api_keys SET last_used_at=? WHERE id=?")
                for id in Set(ids).sorted() { try touch.run([.double(now.timeIntervalSince1970), .text(id)]) }
            }
        }
    }

    // MARK: Sending domains

    /// Adds a sending domain with its keys.
    /// - Throws: `TenantStoreError.exists` (any tenant has it), `.notFound`, or `SQLiteError`.
    public func addSendingDomain(_ domain: SendingDomain) throws {
        try tenantWrite {
            guard try tenantExists(domain.tenant) else { throw TenantStoreError.notFound("tenant \(domain.tenant)") }
            try db.prepare("INSERT INTO sending_domains(domain, tenant, created_at) VALUES(?,?,?) ON CONFLICT DO NOTHING")
                .run([.text(domain.domain), .text(domain.tenant), .double(domain.createdAt)])
            guard db.changes == 1 else { throw TenantStoreError.exists("sending domain \(domain.domain)") }
            try db.prepare("DELETE FROM sending_domain_keys WHERE domain=?").run([.text(domain.domain)])
            let key = try db.prepare("INSERT INTO sending_domain_keys(domain, selector, algorithm, sealed_private_key, public_key) VALUES(?,?,?,?,?)")
            for k in domain.keys {
                try key.run([.text(domain.domain), .text(k.selector), .text(k.algorithm), .blob(k.sealedPrivateKey), .text(k.publicKey)])
            }
            try bumpTenantsVersion()
        }
    }

    /// Removes a domain of `tenant` with its keys. - Returns: whether it existed. - Throws: `SQLiteError`.
    @discardableResult
    public func removeSendingDomain(_ domain: String, tenant: String) throws -> Bool {
        try tenantWrite {
            try db.prepare("DELETE FROM sending_domains WHERE domain=? AND tenant=?").run([.text(domain), .text(tenant)])
            guard db.changes == 1 else { return false }
            try db.prepare("DELETE FROM sending_domain_keys WHERE domain=?").run([.text(domain)])
            try bumpTenantsVersion()
            return true
        }
    }

    /// The domains of `tenant` (nil: every tenant's) with their keys (by selector), by domain.
    /// - Throws: `SQLiteError`.
    public func sendingDomains(tenant: String?) throws -> [SendingDomain] {
        try lock.withLock {
            let domains = try db.prepare("SELECT domain, tenant, created_at FROM sending_domains WHERE ?1 IS NULL OR tenant = ?1 ORDER BY domain")
                .query([Self.optional(tenant)]) { SendingDomain(domain: $0.text(0), tenant: $0.text(1), keys: [], createdAt: $0.double(2)) }
            let keys = try db.prepare("SELECT selector, algorithm, sealed_private_key, public_key FROM sending_domain_keys WHERE domain=? ORDER BY selector")
            return try domains.map { d in
                var d = d
                d.keys = try keys.query([.text(d.domain)]) {
                    DomainSigningKey(selector: $0.text(0), algorithm: $0.text(1), sealedPrivateKey: $0.blob(2), publicKey: $0.text(3))
                }
                return d
            }
        }
    }
}
