import Foundation
import HatoConfig
import HatoCrypto
import HatoSupport
import SMTPCore

/// The coordinator's view of the tenant tables for submission (SMTP and the HTTP API): a
/// snapshot of tenants, SMTP users, API keys and sending domains, re-read from the store when
/// `tenantsVersion()` changes (checked at most every `refreshInterval` seconds, and at once
/// by `invalidate()`), so a change made on another coordinator takes effect within that
/// interval (and the time to read the tables), one made through this coordinator at once.
///
/// Lookups never wait for the store once the tables were read: a due check runs on a thread
/// of its own while the lookup answers from the snapshot — SMTP sessions look tenants up on
/// the submission event loop, which must not stop for a slow or unreachable database.
/// Thread-safe; `invalidate`, the first lookup, `admit`, `release` and `usageRefusal` block on
/// the store.
public final class TenantDirectory: Sendable {
    /// The tables as last read.
    struct Snapshot: Sendable {
        var version: Int64 = -1
        /// The number of the read that made it (`readsStarted`).
        var ticket: UInt64 = 0
        var rules = TenantRules(tenants: [], domains: [])
        var users: [String: (tenant: String, hash: PasswordHash)] = [:]
        var keys: [String: APIKeyRecord] = [:]
        var checkedAt: ContinuousClock.Instant?
    }

    private let store: any TenantStore
    private let clock: any WallClock
    private let snapshot = Locked(Snapshot())
    /// A background check of the version is running.
    private let refreshing = Locked(false)
    /// Reads of the tables started so far (a snapshot keeps the number of the read that made it).
    private let readsStarted = Locked<UInt64>(0)
    /// Key ids used since the last flush, with the minute they were last recorded.
    private let used = Locked<(pending: Set<String>, recorded: [String: Int])>(([], [:]))
    private let log = Logger(label: "coordinator.tenants")
    /// Seconds between version checks.
    public let refreshInterval: Double

    /// A directory over `store`.
    /// - Parameters:
    ///   - refreshInterval: seconds between checks of the store's version (default 2).
    public init(store: any TenantStore, clock: any WallClock = SystemClock(), refreshInterval: Double = 2) {
        self.store = store; self.clock = clock; self.refreshInterval = refreshInterval
    }

    /// Re-reads the tables now, on the caller's thread (after a change through this process).
    public func invalidate() {
        if !reload(now: .now).fresh {
            // The store could not be read: the next lookup starts a background read at once.
            snapshot.withLock { $0.checkedAt = ContinuousClock.now - .seconds(refreshInterval) }
        }
    }

    /// The current snapshot. Read on the caller's thread only the first time; a due check of
    /// the version runs in the background (the lookup answers from the snapshot meanwhile).
    func current() -> Snapshot {
        let now = ContinuousClock.now
        let (due, loaded) = snapshot.withLock { s -> (Bool, Bool) in
            guard let at = s.checkedAt else { return (true, false) }
            return (at.duration(to: now) >= .seconds(refreshInterval), true)
        }
        guard due else { return snapshot.snapshot }
        guard loaded else { return reload(now: now).snapshot }
        let start = refreshing.withLock { r -> Bool in defer { r = true }; return !r }
        if start {
            Thread.startNamed("tenant-tables") { [self] in
                _ = reload(now: .now)
                refreshing.withLock { $0 = false }
            }
        }
        return snapshot.snapshot
    }

    /// Reads the version, and the tables when it changed. A store error keeps the last
    /// snapshot (logged); with none yet, the tables look empty.
    /// - Returns: the snapshot now, and whether the store was read.
    private func reload(now: ContinuousClock.Instant) -> (snapshot: Snapshot, fresh: Bool) {
        let ticket = readsStarted.withLock { n -> UInt64 in n += 1; return n }
        do {
            let version = try store.tenantsVersion()
            if version == snapshot.withLock({ $0.version }) {
                return (snapshot.withLock { $0.checkedAt = now; return $0 }, true)
            }
            var fresh = Snapshot(version: version, checkedAt: now)
            fresh.rules = TenantRules(tenants: try store.tenants(), domains: try store.sendingDomains(tenant: nil))
            for u in try store.tenantUsers(tenant: nil) {
                if let hash = try? PasswordHash(parsing: u.passwordHash) { fresh.users[u.name] = (u.tenant, hash) }
            }
            for k in try store.apiKeys(tenant: nil) where k.revokedAt == nil { fresh.keys[k.id] = k }
            fresh.ticket = ticket
            // A read that started before the installed one's must not undo it (a background
            // check racing `invalidate`).
            return (snapshot.withLock { s in
                if ticket > s.ticket { s = fresh }
                return s
            }, true)
        } catch {
            log.warning("cannot read the tenant tables; using the last copy", ["error": "\(error)"])
            return (snapshot.withLock { $0.checkedAt = now; return $0 }, false)
        }
    }

    /// The rules over the current tables.
    public var rules: TenantRules { current().rules }

    /// The tenants' webhooks: outbox key `tenant:<name>` with the tenant's URL and secret
    /// (the other settings are `WebhookSettings`' defaults: 10 s timeout, 5 s doubling to
    /// 600 s between attempts, abandoned after a day, 100 events a POST).
    public func webhooks() -> [(key: String, hook: WebhookSettings)] {
        current().rules.tenants.values.sorted { $0.name < $1.name }.compactMap { t in
            guard let url = t.webhookURL, let secret = t.webhookSecret else { return nil }
            return (TenantDirectory.webhookKey(t.name), WebhookSettings(url: url, secret: secret))
        }
    }

    /// The webhook outbox key of a tenant's hook.
    public static func webhookKey(_ tenant: String) -> String { "tenant:" + tenant }

    /// Whether any tenant has an SMTP user (then the submission server offers AUTH).
    public var hasSMTPUsers: Bool { !current().users.isEmpty }

    /// The tenant named `name`, nil when unknown.
    public func tenant(named name: String) -> Tenant? { current().rules.tenants[name] }

    /// The tenant and password hash of a tenant SMTP user, nil when `name` is no tenant's user.
    public func smtpUser(_ name: String) -> (tenant: String, hash: PasswordHash)? { current().users[name] }

    /// The tenant of the AUTH user `name`, nil when it is none's (a `smtp.users` account).
    public func tenant(ofUser name: String) -> Tenant? {
        let s = current()
        return s.users[name].flatMap { s.rules.tenants[$0.tenant] }
    }

    /// Checks a presented API key (`hato_<id>_<secret>`) in constant time against the stored
    /// hash; records its use (flushed by `flushKeyUse`).
    /// - Returns: the key's tenant and id, nil when the key is malformed, unknown or revoked.
    public func verifyAPIKey(_ presented: String) -> (tenant: Tenant, keyID: String)? {
        guard let (id, secret) = APIKeyText.parse(presented) else { return nil }
        let s = current()
        guard let record = s.keys[id], let tenant = s.rules.tenants[record.tenant],
              Crypto.constantTimeEquals(Crypto.sha256(Array(secret.utf8)), record.secretHash) else { return nil }
        used.withLock { _ = $0.pending.insert(id) }
        return (tenant, id)
    }

    /// Writes the last-used time of keys used since the last call, at most once a minute per key.
    public func flushKeyUse() {
        let now = clock.now()
        let minute = Int(now.timeIntervalSince1970 / 60)
        let ids: [String] = used.withLock { u in
            let due = u.pending.filter { u.recorded[$0] != minute }
            u.pending.removeAll()
            for id in due { u.recorded[id] = minute }
            if u.recorded.count > 10_000 { u.recorded.removeAll() }
            return Array(due)
        }
        guard !ids.isEmpty else { return }
        do { try store.touchAPIKeys(ids, now: now) } catch {
            log.warning("cannot record API key use", ["error": "\(error)"])
        }
    }

    /// Counts one message against the tenant's limits.
    /// - Returns: nil when counted (release it with `release` if queueing fails), else the refusal.
    /// - Throws: a store error (the caller answers with a temporary failure).
    public func admit(_ tenant: Tenant, now: Date) throws -> TenantRefusal? {
        switch try store.reserveQuota(tenant: tenant.name, limits: tenant.limits, messages: 1, now: now) {
        case .reserved: return nil
        case .overLimit(let window, let limit, let retryAfter):
            return TenantRules.quotaRefusal(tenant: tenant.name, window: window, limit: limit, retryAfter: retryAfter)
        }
    }

    /// Gives back a message counted by `admit` at `at` that was not queued.
    public func release(_ tenant: Tenant, reservedAt at: Date) {
        do { try store.releaseQuota(tenant: tenant.name, messages: 1, reservedAt: at) } catch {
            log.warning("cannot release a tenant's count", ["tenant": tenant.name, "error": "\(error)"])
        }
    }

    /// The early refusal when the tenant is already at a limit (read-only), nil when it has room
    /// or the counts cannot be read (the count at the end of DATA decides then).
    public func usageRefusal(_ tenant: Tenant, now: Date) -> TenantRefusal? {
        guard tenant.limits.messagesPerHour != nil || tenant.limits.messagesPerDay != nil || tenant.limits.messagesPerMonth != nil,
              let usage = try? store.usage(tenant: tenant.name, now: now) else { return nil }
        return TenantRules.usageRefusal(tenant, usage: usage, now: now)
    }
}

/// The text form of an API key: `hato_<id>_<secret>` (id: 16 lower-case hex digits; secret:
/// 43 base64url characters, 256 bits).
public enum APIKeyText {
    /// A new key: its id, the full text to show once, and the hash to store.
    public static func generate() -> (id: String, text: String, secretHash: [UInt8]) {
        let id = Hex.encode(Crypto.randomBytes(8))
        let secret = Data(Crypto.randomBytes(32)).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
        return (id, "hato_\(id)_\(secret)", Crypto.sha256(Array(secret.utf8)))
    }

    /// The id and secret of a presented key, nil when it is not of the form.
    public static func parse(_ text: String) -> (id: String, secret: String)? {
        let parts = text.split(separator: "_", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == "hato", parts[1].utf8.count == 16,
              parts[1].utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }),
              parts[2].utf8.count == 43 else { return nil }
        return (String(parts[1]), String(parts[2]))
    }
}
