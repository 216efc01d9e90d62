import Foundation

/// The tenant layer's durable state (issue 16), kept by both queue stores beside the queue:
/// tenants, their SMTP users, API keys, sending domains with sealed DKIM keys, message counts
/// for the limits, idempotency records and the events API's log.
///
/// Same promises as `QueueStore`: each method is one transaction, committed durably before it
/// returns; it blocks the calling thread; a thrown error means nothing was written. Refusals
/// of a valid store are `TenantStoreError`; other errors are the store's own.
///
/// Messages carry their tenant (`NewMessage.tenant`, `MessageRecord.tenant`) in the queue's own
/// tables; `enqueue` writes a message's `IdempotencyRecord` (`NewMessage.idempotency`) in the
/// same transaction as the message (ignored when the key is already recorded). Processing the
/// event outbox (`completeEvents`) copies the events of tenants' messages into the tenant
/// event log in the same transaction.
///
/// Several coordinators (PostgreSQL) share these rows; counts (`reserveQuota`) are atomic
/// across them.
public protocol TenantStore: AnyObject, Sendable {
    // MARK: Tenants

    /// Creates a tenant. - Throws: `TenantStoreError.exists`, or a store error.
    func createTenant(_ tenant: Tenant) throws
    /// The tenant named `name`, nil when unknown. - Throws: a store error.
    func tenant(named name: String) throws -> Tenant?
    /// Every tenant, by name. - Throws: a store error.
    func tenants() throws -> [Tenant]
    /// Replaces a tenant's state, reason, pool, limits and webhook (not its name or creation time).
    /// - Throws: `TenantStoreError.notFound`, or a store error.
    func updateTenant(_ tenant: Tenant) throws
    /// Deletes a tenant with its users, keys, domains, counts and idempotency records. Its
    /// messages and events stay (they name it still).
    /// - Throws: `TenantStoreError.notFound`, `.conflict` while it has waiting recipients, or a store error.
    func deleteTenant(named name: String) throws
    /// Increments every time a tenant, user, key or domain changes (cheap to poll: the
    /// coordinator's caches and the nodes' signing keys follow it).
    /// - Throws: a store error.
    func tenantsVersion() throws -> Int64

    // MARK: SMTP users

    /// Adds an SMTP user. - Throws: `TenantStoreError.exists` (the name is taken),
    /// `.notFound` (no such tenant), or a store error.
    func addTenantUser(_ user: TenantSMTPUser) throws
    /// Removes an SMTP user. - Returns: whether it existed. - Throws: a store error.
    @discardableResult func removeTenantUser(name: String) throws -> Bool
    /// SMTP users of `tenant` (nil: of every tenant), by name. - Throws: a store error.
    func tenantUsers(tenant: String?) throws -> [TenantSMTPUser]

    // MARK: API keys

    /// Stores a new API key. - Throws: `TenantStoreError.exists`, `.notFound` (no such tenant), or a store error.
    func addAPIKey(_ key: APIKeyRecord) throws
    /// The key with public id `id` (revoked ones too), nil when unknown. - Throws: a store error.
    func apiKey(id: String) throws -> APIKeyRecord?
    /// The keys of `tenant` (nil: of every tenant), newest first, revoked ones included.
    /// - Throws: a store error.
    func apiKeys(tenant: String?) throws -> [APIKeyRecord]
    /// Revokes a key (it stops working at once on this coordinator, within the cache refresh on others).
    /// - Parameter tenant: when given, only a key of this tenant is revoked.
    /// - Returns: whether a valid key was revoked. - Throws: a store error.
    @discardableResult func revokeAPIKey(id: String, tenant: String?, now: Date) throws -> Bool
    /// Records that keys were used at `now` (not synced to disk: losing it loses nothing but
    /// the time; written at most once a minute per key by the caller).
    /// - Throws: a store error.
    func touchAPIKeys(_ ids: [String], now: Date) throws

    // MARK: Sending domains

    /// Adds a sending domain with its keys.
    /// - Throws: `TenantStoreError.exists` (any tenant has it), `.notFound` (no such tenant), or a store error.
    func addSendingDomain(_ domain: SendingDomain) throws
    /// Removes a domain of `tenant`. - Returns: whether it existed. - Throws: a store error.
    @discardableResult func removeSendingDomain(_ domain: String, tenant: String) throws -> Bool
    /// The domains of `tenant` (nil: of every tenant) with their keys, by domain. - Throws: a store error.
    func sendingDomains(tenant: String?) throws -> [SendingDomain]

    // MARK: Limits

    /// Counts `messages` against the tenant's hour, day and month at `now`, atomically (across
    /// coordinators too), unless that would pass one of `limits` (then nothing is counted).
    /// - Returns: `.reserved`, or `.overLimit` naming the first window that is full.
    /// - Throws: a store error (nothing counted).
    func reserveQuota(tenant: String, limits: TenantLimits, messages: Int, now: Date) throws -> QuotaDecision
    /// Gives back a reservation made at `at` whose message was not queued after all.
    /// - Throws: a store error.
    func releaseQuota(tenant: String, messages: Int, reservedAt at: Date) throws
    /// The tenant's counts in the windows holding `now`. - Throws: a store error.
    func usage(tenant: String, now: Date) throws -> TenantUsage

    // MARK: Idempotency, events

    /// The record of an earlier request with `key`, nil when none (or older than the TTL and purged).
    /// - Throws: a store error.
    func idempotencyRecord(tenant: String, key: String) throws -> IdempotencyRecord?
    /// The tenant's events with an id above `after`, oldest first, at most `limit`.
    /// - Throws: a store error.
    func tenantEvents(tenant: String, after: Int64, limit: Int) throws -> [TenantEvent]
    /// The events of one message (of any tenant; the caller checks ownership), oldest first.
    /// - Throws: a store error.
    func tenantEvents(messageID: String) throws -> [TenantEvent]
    /// Deletes events older than `eventsBefore`, idempotency records older than
    /// `idempotencyBefore`, and counts of windows that ended before the current month.
    /// - Returns: rows deleted. - Throws: a store error.
    @discardableResult func purgeTenantData(eventsBefore: Date, idempotencyBefore: Date, now: Date) throws -> Int
}
