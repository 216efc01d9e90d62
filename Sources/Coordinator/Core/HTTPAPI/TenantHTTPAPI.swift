import Foundation
import HatoConfig
import HatoCrypto
import HatoHTTP
import HatoIO
import HatoMIME
import HatoSupport
import SMTPCore

/// The tenants' HTTP send API (issue 16; docs/http-api.md): answers one request at a time on
/// the caller's thread (the listener's connection thread), blocking on the store.
///
/// Routes:
/// - `POST /api/v1/messages`: builds a message from a `SendRequest` and queues it durably for
///   the key's tenant; `202 {"id": "<queue id>"}` only after the same synced commit as SMTP's
///   `250` (`TenantHTTPAPI+Send.swift`).
/// - `GET /api/v1/messages/{id}`: one of the tenant's messages with its recipients and events.
/// - `GET /api/v1/events?since=&limit=`: the tenant's delivery events, paged.
/// - `GET /api/v1/suppressions[?address=]`, `DELETE /api/v1/suppressions/{address}`: the
///   tenant's suppression list (entries scoped to its sending domains).
/// - `GET /api/v1/stats`: the tenant's state, limits and counts this hour, day and month.
///
/// Every request needs `Authorization: Bearer <api key>` (RFC 6750 §2.1); a missing, malformed,
/// unknown or revoked key gets `401` with `WWW-Authenticate: Bearer` (RFC 9110 §11.6.1). A key
/// sees only its tenant's messages and events: another tenant's id answers exactly as an
/// unknown one (`404`). Errors are JSON `{"error": {"code", "message"}}` (`APIError`).
public final class TenantHTTPAPI: Sendable {
    /// What the API takes from cluster.yml.
    public struct Settings: Sendable {
        /// `smtp.hostname`: the `Message-ID` domain and the `Received:` `by` host.
        public var hostname: String
        /// `smtp.max_message_size`: the largest built message (with its `Received:`), octets.
        public var maxMessageSize: Int
        /// `http_api.max_recipients` (default `smtp.max_recipients`).
        public var maxRecipients: Int
        /// `http_api.idempotency_ttl`, seconds.
        public var idempotencyTTL: TimeInterval
        /// `suppression:` (`reject_at_rcpt` refuses suppressed recipients with `422`).
        public var suppression: SuppressionSettings
        /// The configured pool names (a tenant's pool must be one).
        public var pools: Set<String>

        /// The settings of `config` (its `http_api:` section, or the defaults without one).
        public init(_ config: ClusterConfig) {
            let api = config.httpAPI ?? HTTPAPISettings(listen: [])
            hostname = config.smtp.hostname
            maxMessageSize = config.smtp.maxMessageSize
            maxRecipients = api.maxRecipients ?? config.smtp.maxRecipients
            idempotencyTTL = api.idempotencyTTL
            suppression = config.suppression
            pools = Set(config.pools.map(\.name))
        }
    }

    let store: any QueueStore
    let tenants: TenantDirectory
    let clock: any WallClock
    let headroom: QueueHeadroom?
    let metrics: CoordinatorMetrics?
    let onAccepted: @Sendable () -> Void
    /// The settings and router in force (`apply` swaps them on reload).
    let current: Locked<(settings: Settings, router: PoolRouter)>
    /// One lock per (tenant, Idempotency-Key) being served.
    let idempotencyLocks = KeyedLocks()
    let log = Logger(label: "coordinator.http_api")

    /// Creates the API.
    /// - Parameters:
    ///   - config: the configuration (`smtp`, `http_api`, `routing`, `pools`, `suppression`).
    ///   - store: the durable queue (with the tenant tables).
    ///   - tenants: the cached tenant tables (keys, domains, limits).
    ///   - clock: the wall clock for `Date:`, `Received:` and the limits' windows.
    ///   - headroom: the queue's disk headroom check (`smtp.queue_min_free`; `507` below it), nil for none.
    ///   - metrics: where accepted messages are counted (`hato_tenant_messages_total`), nil for nowhere.
    ///   - onAccepted: called after a message was queued and before the `202` is returned
    ///     (wakes the scheduler and the reporter, as SMTP's).
    public init(config: ClusterConfig, store: any QueueStore, tenants: TenantDirectory, clock: any WallClock = SystemClock(),
                headroom: QueueHeadroom? = nil, metrics: CoordinatorMetrics? = nil, onAccepted: @escaping @Sendable () -> Void = {}) {
        self.store = store; self.tenants = tenants; self.clock = clock; self.headroom = headroom; self.metrics = metrics
        self.onAccepted = onAccepted
        current = Locked((Settings(config), PoolRouter(routing: config.routing, pools: config.pools)))
    }

    /// Applies a reloaded configuration's routing and pools (from the next request on); the
    /// `http_api` keys themselves wait for a restart.
    public func apply(_ config: ClusterConfig) {
        var settings = Settings(config)
        let before = current.withLock { $0.settings }
        settings.maxRecipients = before.maxRecipients
        settings.idempotencyTTL = before.idempotencyTTL
        settings.maxMessageSize = before.maxMessageSize
        let router = PoolRouter(routing: config.routing, pools: config.pools)
        current.withLock { $0 = (settings, router) }
    }

    /// The routes: `(method, path)` → what answers it.
    enum Route: Equatable {
        case send
        case message(id: String)
        case events
        case suppressions
        case removeSuppression(address: String)
        case stats
    }

    /// The route of `path`, or the error for an unknown path or a method the path does not take.
    static func route(method: String, path: String) -> Result<Route, APIError> {
        let messages = "/api/v1/messages"
        if path == messages || path == messages + "/" {
            return method == "POST" ? .success(.send) : .failure(.methodNotAllowed(method, allow: "POST"))
        }
        if path.hasPrefix(messages + "/") {
            let id = String(path.dropFirst(messages.count + 1))
            guard !id.isEmpty, id.utf8.count <= 64, !id.contains("/") else { return .failure(.notFound("no such path")) }
            return method == "GET" || method == "HEAD" ? .success(.message(id: id)) : .failure(.methodNotAllowed(method, allow: "GET"))
        }
        if path == "/api/v1/events" {
            return method == "GET" || method == "HEAD" ? .success(.events) : .failure(.methodNotAllowed(method, allow: "GET"))
        }
        if path == "/api/v1/stats" {
            return method == "GET" || method == "HEAD" ? .success(.stats) : .failure(.methodNotAllowed(method, allow: "GET"))
        }
        let suppressions = "/api/v1/suppressions"
        if path == suppressions {
            return method == "GET" || method == "HEAD" ? .success(.suppressions) : .failure(.methodNotAllowed(method, allow: "GET"))
        }
        if path.hasPrefix(suppressions + "/") {
            let address = String(path.dropFirst(suppressions.count + 1)).removingPercentEncoding ?? ""
            guard !address.isEmpty, address.utf8.count <= 320, !address.contains("/") else { return .failure(.notFound("no such path")) }
            return method == "DELETE" ? .success(.removeSuppression(address: address)) : .failure(.methodNotAllowed(method, allow: "DELETE"))
        }
        return .failure(.notFound("no such path; the API lives under /api/v1/ (docs/http-api.md)"))
    }

    /// The API key of `Authorization: Bearer <key>` (scheme case-insensitive, RFC 9110 §11.1).
    /// - Returns: the key text, or the `401` to answer.
    static func bearerToken(_ headers: [String: String]) -> Result<String, APIError> {
        guard let value = headers["authorization"], !value.isEmpty else {
            return .failure(.unauthorized("an API key is required: send Authorization: Bearer <api key>"))
        }
        let parts = value.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else {
            return .failure(.unauthorized("the Authorization field must be Bearer <api key>"))
        }
        return .success(parts[1].trimmingCharacters(in: .whitespaces))
    }

    /// Answers one request (never throws; every failure is a JSON error response).
    /// - Parameter request: the parsed request; `peer` and `isTLS` are used for `Received:`.
    /// - Returns: the response.
    public func handle(_ request: HTTPRequest) -> HTTPResponse {
        let route: Route
        switch Self.route(method: request.method, path: request.path) {
        case .success(let r): route = r
        case .failure(let e): return e.response
        }
        let caller: (tenant: Tenant, keyID: String)
        switch Self.bearerToken(request.headers) {
        case .failure(let e): return e.response
        case .success(let token):
            guard let found = tenants.verifyAPIKey(token) else {
                log.warning("API key refused", ["client": request.peer?.host ?? "-", "key": APIKeyText.parse(token)?.id ?? "(malformed)"])
                return APIError.unauthorized("the API key is not valid (unknown, revoked, or mistyped)").response
            }
            caller = found
        }
        var response: HTTPResponse
        switch route {
        case .send: response = send(request, tenant: caller.tenant, keyID: caller.keyID)
        case .message(let id): response = message(id: id, tenant: caller.tenant)
        case .events: response = events(request.query, tenant: caller.tenant)
        case .suppressions: response = suppressions(request.query, tenant: caller.tenant)
        case .removeSuppression(let address): response = removeSuppression(address, tenant: caller.tenant)
        case .stats: response = stats(tenant: caller.tenant)
        }
        if request.method == "HEAD" { response.body = [] }
        return response
    }
}

/// Locks by name, created on first use and dropped when the last holder leaves: serializes the
/// requests with one (tenant, `Idempotency-Key`) inside this process, so parallel retries of a
/// request queue it once.
final class KeyedLocks: Sendable {
    /// One key's lock and how many threads hold or wait for it.
    private final class Entry: @unchecked Sendable {  // `lock` is thread-safe; `users` is guarded by `KeyedLocks.entries`
        let lock = NSLock()
        var users = 0
    }
    private let entries = Locked<[String: Entry]>([:])

    /// Runs `body` holding the lock of `key`.
    func withLock<T>(_ key: String, _ body: () throws -> T) rethrows -> T {
        let entry = entries.withLock { e -> Entry in
            let entry = e[key] ?? Entry()
            entry.users += 1
            e[key] = entry
            return entry
        }
        entry.lock.lock()
        defer {
            entry.lock.unlock()
            entries.withLock { e in
                entry.users -= 1
                if entry.users == 0 { e[key] = nil }
            }
        }
        return try body()
    }

    /// Keys with a holder or a waiter now (for tests).
    var count: Int { entries.withLock { $0.count } }
}
