import Foundation
import HatoCrypto
import HatoHTTP
import HatoSupport
import SMTPCore

/// The tenant routes of the admin API (issue 16; bearer `admin_token`, JSON in snake_case):
///
/// | method | path | body | what |
/// |---|---|---|---|
/// | GET | `/v1/tenants` | | every tenant with its usage |
/// | POST | `/v1/tenants` | `TenantRequest` | create (201: `Created`, with its first API key, shown this once) |
/// | GET | `/v1/tenants/{t}` | | one tenant: usage, SMTP users, API keys (never secrets), domains |
/// | PATCH | `/v1/tenants/{t}` | `TenantRequest` | change pool, priority, limits, webhook (absent keys unchanged) |
/// | DELETE | `/v1/tenants/{t}` | | delete (409 while it has waiting mail) |
/// | POST | `/v1/tenants/{t}/suspend` | `{"reason": …}` | refuse its new mail, hold its waiting mail |
/// | POST | `/v1/tenants/{t}/resume` | | accept again, release the held mail |
/// | POST | `/v1/tenants/{t}/users` | `{"name", "password_hash"}` | add an SMTP user (201) |
/// | DELETE | `/v1/tenants/{t}/users/{u}` | | remove it |
/// | GET, POST | `/v1/tenants/{t}/keys` | `{"label"}` | list; create an API key (201: the key, shown this once) |
/// | DELETE | `/v1/tenants/{t}/keys/{id}` | | revoke |
///
/// Errors: 400 (bad body), 404 (no such tenant, user, key), 409 (exists, or waiting mail).
public struct TenantAdminAPI: Sendable {
    let store: any QueueStore
    let directory: TenantDirectory
    let clock: any WallClock
    /// Called after mail was released (wakes the scheduler).
    let onReleased: @Sendable () -> Void
    /// The pools of the configuration in force (a tenant's pool must be one); nil: not checked.
    let pools: (@Sendable () -> Set<String>)?
    private let log = Logger(label: "coordinator.tenants")

    /// The routes over `store`.
    /// - Parameters:
    ///   - onReleased: called after a resume released held mail.
    ///   - pools: the configured pool names (a tenant's pool must be one; nil: not checked).
    public init(store: any QueueStore, directory: TenantDirectory, clock: any WallClock = SystemClock(),
                pools: (@Sendable () -> Set<String>)? = nil, onReleased: @escaping @Sendable () -> Void) {
        self.store = store; self.directory = directory; self.clock = clock; self.onReleased = onReleased; self.pools = pools
    }

    /// A tenant as the API shows it.
    public struct TenantView: Codable, Sendable, Equatable {
        public var name: String
        public var state: String
        public var stateReason: String?
        public var pool: String?
        /// `transactional` or `bulk` (issue 18); nil: the pool's class.
        public var priority: String?
        public var limits: TenantLimits
        public var webhookUrl: String?
        /// The webhook signing secret Hato generated, in the answer that generated it only.
        public var webhookSecret: String?
        public var usage: TenantUsage?
        public var createdAt: Double

        /// The view of `t` with its counts (never its webhook secret).
        public init(_ t: Tenant, usage: TenantUsage?) {
            name = t.name; state = t.state.rawValue; stateReason = t.stateReason; pool = t.pool; limits = t.limits
            priority = t.priority?.rawValue
            webhookUrl = t.webhookURL; webhookSecret = nil; self.usage = usage; createdAt = t.createdAt
        }
    }

    /// One SMTP user as the API shows it (no hash).
    public struct UserView: Codable, Sendable, Equatable {
        public var name: String
        public var createdAt: Double
    }

    /// One API key as the API shows it (never the secret; `key` only in the creation answer).
    public struct KeyView: Codable, Sendable, Equatable {
        public var id: String
        public var label: String
        public var createdAt: Double
        public var lastUsedAt: Double?
        public var revokedAt: Double?
        /// The whole key, in the creation answer only.
        public var key: String?
    }

    /// `GET /v1/tenants/{t}`.
    public struct TenantDetail: Codable, Sendable {
        public var tenant: TenantView
        public var users: [UserView]
        public var keys: [KeyView]
        public var domains: [String]
    }

    /// The body of `POST /v1/tenants` and `PATCH /v1/tenants/{t}` (absent: unchanged / default).
    public struct TenantRequest: Codable, Sendable {
        public var name: String?
        public var pool: String?
        public var limits: TenantLimits?
        public var webhookUrl: String?
        public var webhookSecret: String?
        /// `transactional` or `bulk` (issue 18); empty: back to the pool's class.
        public var priority: String?
        public init(name: String? = nil, pool: String? = nil, limits: TenantLimits? = nil, webhookUrl: String? = nil, webhookSecret: String? = nil,
                    priority: String? = nil) {
            self.name = name; self.pool = pool; self.limits = limits; self.webhookUrl = webhookUrl; self.webhookSecret = webhookSecret
            self.priority = priority
        }
    }

    /// The answer of `POST /v1/tenants`: the tenant and its first API key (shown this once).
    public struct Created: Codable, Sendable {
        public var tenant: TenantView
        public var apiKey: String
        public var apiKeyId: String
    }

    /// The body of `POST /v1/tenants/{t}/users`.
    public struct UserRequest: Codable, Sendable {
        public var name: String
        public var passwordHash: String
        public init(name: String, passwordHash: String) { self.name = name; self.passwordHash = passwordHash }
    }

    /// The answer of suspend and resume: the tenant and the recipients held or released.
    public struct StateChange: Codable, Sendable {
        public var tenant: TenantView
        public var recipients: Int
    }

    /// Handles the request when its route is a tenant route (the caller checked the token); nil otherwise.
    public func handle(_ req: HTTPRequest) -> HTTPResponse? {
        let p = req.path.split(separator: "/").map(String.init)
        guard p.count >= 2, p[0] == "v1", p[1] == "tenants" else { return nil }
        do {
            switch (req.method, Array(p.dropFirst(2))) {
            case ("GET", []):
                return .json(try store.tenants().map { view($0, usage: try store.usage(tenant: $0.name, now: clock.now())) })
            case ("POST", []):
                return try create(req)
            case ("GET", let r) where r.count == 1:
                return try detail(r[0])
            case ("PATCH", let r) where r.count == 1:
                return try update(r[0], req)
            case ("DELETE", let r) where r.count == 1:
                try store.deleteTenant(named: r[0])
                directory.invalidate()
                log.info("tenant deleted", ["tenant": r[0], "by": QueueControlAPI.operatorName(req)])
                return .json(["deleted": r[0]])
            case ("POST", let r) where r.count == 2 && (r[1] == "suspend" || r[1] == "resume"):
                return try setState(r[0], suspend: r[1] == "suspend", req)
            case ("POST", let r) where r.count == 2 && r[1] == "users":
                return try addUser(r[0], req)
            case ("DELETE", let r) where r.count == 3 && r[1] == "users":
                guard try store.tenantUsers(tenant: r[0]).contains(where: { $0.name == r[2] }) else {
                    return .error(404, "tenant \(r[0]) has no SMTP user \(r[2])")
                }
                try store.removeTenantUser(name: r[2])
                directory.invalidate()
                return .json(["removed": r[2]])
            case ("GET", let r) where r.count == 2 && r[1] == "keys":
                guard try store.tenant(named: r[0]) != nil else { return .error(404, "no tenant \(r[0])") }
                return .json(try store.apiKeys(tenant: r[0]).map { keyView($0) })
            case ("POST", let r) where r.count == 2 && r[1] == "keys":
                return try createKey(r[0], req)
            case ("DELETE", let r) where r.count == 3 && r[1] == "keys":
                guard try store.revokeAPIKey(id: r[2], tenant: r[0], now: clock.now()) else {
                    return .error(404, "tenant \(r[0]) has no valid API key \(r[2])")
                }
                directory.invalidate()
                log.info("API key revoked", ["tenant": r[0], "key": r[2], "by": QueueControlAPI.operatorName(req)])
                return .json(["revoked": r[2]])
            default:
                return nil
            }
        } catch let e as TenantStoreError {
            switch e {
            case .exists: return .error(409, e.description)
            case .notFound: return .error(404, e.description)
            case .conflict: return .error(409, e.description)
            }
        } catch let e as TenantRequestError {
            return .error(400, e.message)
        } catch {
            log.error("tenant request failed", ["path": req.path, "error": "\(error)"])
            return .error(500, "\(error)")
        }
    }

    /// A refused request body.
    struct TenantRequestError: Error { let message: String }

    private static func decode<T: Decodable>(_ type: T.Type, _ req: HTTPRequest) throws -> T {
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        do { return try d.decode(T.self, from: Data(req.body.isEmpty ? Array("{}".utf8) : req.body)) } catch {
            throw TenantRequestError(message: "invalid JSON body: \(error)")
        }
    }

    func view(_ t: Tenant, usage: TenantUsage?) -> TenantView { TenantView(t, usage: usage) }

    private func keyView(_ k: APIKeyRecord, text: String? = nil) -> KeyView {
        KeyView(id: k.id, label: k.label, createdAt: k.createdAt, lastUsedAt: k.lastUsedAt, revokedAt: k.revokedAt, key: text)
    }

    /// The class a request's `priority` names: nil for absent, `.some(nil)` for empty (the pool's).
    /// - Throws: `TenantRequestError` for anything but `transactional`, `bulk` or empty.
    private static func priority(_ text: String?) throws -> MessagePriority?? {
        guard let text else { return .none }
        if text.isEmpty { return .some(nil) }
        guard let p = MessagePriority(parsing: text) else { throw TenantRequestError(message: "priority must be transactional or bulk (empty: the pool's)") }
        return .some(p)
    }

    /// Checks that `pool` (when given and not empty) is a configured pool.
    private func validate(pool: String?) throws {
        guard let pool, !pool.isEmpty, let known = pools?(), !known.contains(pool) else { return }
        throw TenantRequestError(message: "pool \(pool) is not configured (pools: \(known.sorted().joined(separator: ", ")))")
    }

    /// Checks limits (positive) and the webhook URL (http or https).
    private static func validate(_ limits: TenantLimits?, webhook: String?) throws {
        if let l = limits {
            for (name, v) in [("messages_per_hour", l.messagesPerHour), ("messages_per_day", l.messagesPerDay),
                              ("messages_per_month", l.messagesPerMonth), ("recipients_per_message", l.recipientsPerMessage)] {
                if let v, v < 1 { throw TenantRequestError(message: "limits.\(name) must be at least 1 (omit it for no limit)") }
            }
        }
        if let w = webhook, !w.isEmpty {
            guard let u = URL(string: w), u.scheme == "https" || u.scheme == "http", u.host != nil else {
                throw TenantRequestError(message: "webhook_url must be an http or https URL")
            }
        }
    }

    /// A tenant with a webhook URL and no secret gets a random one (32 octets, hex), returned
    /// to be shown once: its webhook bodies are always signed (`X-Hato-Signature`).
    private static func generateSecretIfNeeded(_ t: inout Tenant) -> String? {
        guard t.webhookURL != nil, t.webhookSecret == nil else { return nil }
        let secret = Hex.encode(Crypto.randomBytes(32))
        t.webhookSecret = secret
        return secret
    }

    private func create(_ req: HTTPRequest) throws -> HTTPResponse {
        let body = try Self.decode(TenantRequest.self, req)
        guard let name = body.name, Tenant.isValidName(name) else {
            throw TenantRequestError(message: "name is required: 1-64 of a-z, 0-9, '-', '_', '.'")
        }
        try Self.validate(body.limits, webhook: body.webhookUrl)
        try validate(pool: body.pool)
        let priority = try Self.priority(body.priority)
        var t = Tenant(name: name, pool: body.pool, limits: body.limits ?? TenantLimits(), webhookURL: body.webhookUrl,
                       webhookSecret: body.webhookSecret, createdAt: clock.now().timeIntervalSince1970, priority: priority ?? nil)
        let generated = Self.generateSecretIfNeeded(&t)
        try store.createTenant(t)
        // Its first API key, shown once in this answer.
        let made = APIKeyText.generate()
        let key = APIKeyRecord(id: made.id, tenant: name, label: "first key", secretHash: made.secretHash, createdAt: clock.now().timeIntervalSince1970)
        try store.addAPIKey(key)
        directory.invalidate()
        log.info("tenant created", ["tenant": name, "key": made.id, "by": QueueControlAPI.operatorName(req)])
        var v = view(t, usage: TenantUsage(hour: 0, day: 0, month: 0))
        v.webhookSecret = generated
        return .json(Created(tenant: v, apiKey: made.text, apiKeyId: made.id), status: 201)
    }

    private func detail(_ name: String) throws -> HTTPResponse {
        guard let t = try store.tenant(named: name) else { return .error(404, "no tenant \(name)") }
        return .json(TenantDetail(tenant: view(t, usage: try store.usage(tenant: name, now: clock.now())),
                                  users: try store.tenantUsers(tenant: name).map { UserView(name: $0.name, createdAt: $0.createdAt) },
                                  keys: try store.apiKeys(tenant: name).map { keyView($0) },
                                  domains: try store.sendingDomains(tenant: name).map(\.domain)))
    }

    private func update(_ name: String, _ req: HTTPRequest) throws -> HTTPResponse {
        guard var t = try store.tenant(named: name) else { return .error(404, "no tenant \(name)") }
        let body = try Self.decode(TenantRequest.self, req)
        try Self.validate(body.limits, webhook: body.webhookUrl)
        try validate(pool: body.pool)
        if let pool = body.pool { t.pool = pool.isEmpty ? nil : pool }
        if let priority = try Self.priority(body.priority) { t.priority = priority }
        if let limits = body.limits { t.limits = limits }
        if let w = body.webhookUrl { t.webhookURL = w.isEmpty ? nil : w }
        if let s = body.webhookSecret { t.webhookSecret = s.isEmpty ? nil : s }
        let generated = Self.generateSecretIfNeeded(&t)
        try store.updateTenant(t)
        directory.invalidate()
        log.info("tenant changed", ["tenant": name, "by": QueueControlAPI.operatorName(req)])
        var v = view(t, usage: try store.usage(tenant: name, now: clock.now()))
        v.webhookSecret = generated
        return .json(v)
    }

    /// Suspends (state, then hold of its queued and deferred mail) or resumes (state, then
    /// release of its held mail). Mail in flight finishes; what comes back deferred is held by
    /// the next sweep (`TenantMaintenance`).
    private func setState(_ name: String, suspend: Bool, _ req: HTTPRequest) throws -> HTTPResponse {
        guard var t = try store.tenant(named: name) else { return .error(404, "no tenant \(name)") }
        struct Reason: Codable { var reason: String? }
        let reason = try Self.decode(Reason.self, req).reason
        let who = QueueControlAPI.operatorName(req)
        t.state = suspend ? .suspended : .active
        t.stateReason = suspend ? (reason ?? "suspended by \(who)") : nil
        try store.updateTenant(t)
        directory.invalidate()
        let selector = RecipientSelector(states: suspend ? [.queued, .deferred] : [.held], tenant: name)
        let result = try store.applyQueueAction(suspend ? .hold : .release, to: selector, by: who, target: "tenant \(name)",
                                                note: suspend ? t.stateReason : nil, now: { clock.now() })
        if !suspend && result.changed > 0 { onReleased() }
        log.info(suspend ? "tenant suspended" : "tenant resumed", ["tenant": name, "by": who, "recipients": "\(result.changed)"])
        return .json(StateChange(tenant: view(t, usage: nil), recipients: result.changed))
    }

    private func addUser(_ tenant: String, _ req: HTTPRequest) throws -> HTTPResponse {
        let body = try Self.decode(UserRequest.self, req)
        guard !body.name.isEmpty, body.name.utf8.count <= 128,
              body.name.unicodeScalars.allSatisfy({ $0.isASCII && (CharacterSet.alphanumerics.contains($0) || "._@+-".unicodeScalars.contains($0)) })
        else { throw TenantRequestError(message: "name: 1-128 of letters, digits, '.', '_', '@', '+', '-'") }
        do { _ = try PasswordHash(parsing: body.passwordHash) } catch {
            throw TenantRequestError(message: "password_hash: \(error)")
        }
        try store.addTenantUser(TenantSMTPUser(name: body.name, tenant: tenant, passwordHash: body.passwordHash,
                                               createdAt: clock.now().timeIntervalSince1970))
        directory.invalidate()
        log.info("tenant SMTP user added", ["tenant": tenant, "user": body.name, "by": QueueControlAPI.operatorName(req)])
        return .json(UserView(name: body.name, createdAt: clock.now().timeIntervalSince1970), status: 201)
    }

    private func createKey(_ tenant: String, _ req: HTTPRequest) throws -> HTTPResponse {
        struct Label: Codable { var label: String? }
        let label = try Self.decode(Label.self, req).label ?? ""
        guard label.count <= 200 else { throw TenantRequestError(message: "label: at most 200 characters") }
        let made = APIKeyText.generate()
        let record = APIKeyRecord(id: made.id, tenant: tenant, label: label, secretHash: made.secretHash, createdAt: clock.now().timeIntervalSince1970)
        try store.addAPIKey(record)
        directory.invalidate()
        log.info("API key created", ["tenant": tenant, "key": made.id, "by": QueueControlAPI.operatorName(req)])
        return .json(keyView(record, text: made.text), status: 201)
    }
}
