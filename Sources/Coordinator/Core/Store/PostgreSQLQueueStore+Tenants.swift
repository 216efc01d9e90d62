import Foundation

// PLACEHOLDER (replaced by the tenant store implementation): every tenant method refuses.
extension PostgreSQLQueueStore {
    private var missing: TenantStoreError { .conflict("tenants are not implemented in this store yet") }
    public func createTenant(_ tenant: Tenant) throws { throw missing }
    public func tenant(named name: String) throws -> Tenant? { nil }
    public func tenants() throws -> [Tenant] { [] }
    public func updateTenant(_ tenant: Tenant) throws { throw missing }
    public func deleteTenant(named name: String) throws { throw missing }
    public func tenantsVersion() throws -> Int64 { 0 }
    public func addTenantUser(_ user: TenantSMTPUser) throws { throw missing }
    public func removeTenantUser(name: String) throws -> Bool { false }
    public func tenantUsers(tenant: String?) throws -> [TenantSMTPUser] { [] }
    public func addAPIKey(_ key: APIKeyRecord) throws { throw missing }
    public func apiKey(id: String) throws -> APIKeyRecord? { nil }
    public func apiKeys(tenant: String?) throws -> [APIKeyRecord] { [] }
    public func revokeAPIKey(id: String, tenant: String?, now: Date) throws -> Bool { false }
    public func touchAPIKeys(_ ids: [String], now: Date) throws {}
    public func addSendingDomain(_ domain: SendingDomain) throws { throw missing }
    public func removeSendingDomain(_ domain: String, tenant: String) throws -> Bool { false }
    public func sendingDomains(tenant: String?) throws -> [SendingDomain] { [] }
    public func reserveQuota(tenant: String, limits: TenantLimits, messages: Int, now: Date) throws -> QuotaDecision { .reserved }
    public func releaseQuota(tenant: String, messages: Int, reservedAt at: Date) throws {}
    public func usage(tenant: String, now: Date) throws -> TenantUsage { TenantUsage(hour: 0, day: 0, month: 0) }
    public func idempotencyRecord(tenant: String, key: String) throws -> IdempotencyRecord? { nil }
    public func tenantEvents(tenant: String, after: Int64, limit: Int) throws -> [TenantEvent] { [] }
    public func tenantEvents(messageID: String) throws -> [TenantEvent] { [] }
    public func purgeTenantData(eventsBefore: Date, idempotencyBefore: Date, now: Date) throws -> Int { 0 }
}
