import ClusterProtocol
import Foundation
import HatoConfig
import HatoCrypto
import HatoHTTP
import HatoSupport
import SMTPCore

/// The coordinator's reporting side wired together: delivery log, metrics, webhooks,
/// DSN/suppression reporter, and their admin API routes.
public final class ReportingService: Sendable {
    /// The delivery log (`<data_dir>/log/delivery.jsonl`).
    public let deliveryLog: DeliveryLog
    /// The metrics served at `/metrics`.
    public let metrics: CoordinatorMetrics
    /// The webhook dispatcher (nil without `webhooks:`).
    public let webhooks: WebhookDispatcher?
    /// The event reporter.
    public let reporter: DeliveryReporter
    /// The admin API routes of this part.
    public let api: ReportingAPI
    /// TLS-RPT counts from the nodes' results (RFC 8460), per day and policy domain (in memory).
    public let tlsReports: TLSReportBook

    /// Prepares the queue's reporting tables and triggers and builds the parts (nothing runs yet).
    /// - Parameters:
    ///   - config: the cluster configuration.
    ///   - store: the queue.
    ///   - clock: time source.
    ///   - nodes: the cluster hub's node statuses, for the node gauges.
    ///   - cluster: the hub's backoffs, pauses and warm-up counts, for their gauges.
    ///   - onEnqueued: called after a DSN was queued (wakes the scheduler).
    ///   - waitReason: why a waiting recipient waits (pool, domain, state, next attempt), for the
    ///     delay notices of recipients never attempted or held (`ClusterHub.waitReason`).
    ///   - tenants: the tenant tables: each tenant's webhook gets its events (issue 16).
    /// - Throws: `SQLiteError`, or a file system error for the log directory.
    public init(config: ClusterConfig, store: any QueueStore, clock: any WallClock = SystemClock(),
                nodes: (@Sendable () throws -> [NodeStatus])? = nil, cluster: (@Sendable () -> CoordinatorMetrics.ClusterGauges)? = nil,
                onEnqueued: @escaping @Sendable () -> Void,
                waitReason: (@Sendable (_ pool: String, _ domain: String, _ state: String, _ nextAttemptAt: Date?) -> String)? = nil,
                tenants: TenantDirectory? = nil) throws {
        try store.installReportingSchema()
        try store.configureSuppressionAtEnqueue(scope: config.suppression.mode == .markSuppressed ? config.suppression.scope : nil)
        deliveryLog = try DeliveryLog(directory: (config.coordinator.dataDir as NSString).appendingPathComponent("log"),
                                      maxFileSize: config.log.maxFileSize, keepFiles: config.log.keepFiles)
        let metrics = CoordinatorMetrics()
        metrics.collect(from: store, nodes: nodes, clock: clock, cluster: cluster)
        self.metrics = metrics
        webhooks = config.webhooks.isEmpty && tenants == nil ? nil
            : WebhookDispatcher(hooks: config.webhooks, store: store, metrics: metrics, clock: clock,
                                tenantHooks: ReportingService.tenantHooks(tenants))
        reporter = DeliveryReporter(config: config, store: store, deliveryLog: deliveryLog, metrics: metrics, webhooks: webhooks,
                                    clock: clock, onEnqueued: onEnqueued, waitReason: waitReason,
                                    tenantWebhooks: ReportingService.tenantsWithWebhooks(tenants))
        let book = TLSReportBook(clock: clock)
        tlsReports = book
        api = ReportingAPI(config: config, store: store, deliveryLog: deliveryLog, metrics: metrics.registry, clock: clock, tlsReports: book)
    }

    /// The tenants' webhooks for the dispatcher (nil without tenants).
    private static func tenantHooks(_ tenants: TenantDirectory?) -> (@Sendable () throws -> [(key: String, hook: WebhookSettings)])? {
        guard let tenants else { return nil }
        return { tenants.webhooks() }
    }

    /// The names of the tenants with a webhook, for the reporter (nil without tenants).
    private static func tenantsWithWebhooks(_ tenants: TenantDirectory?) -> (@Sendable () -> Set<String>)? {
        guard let tenants else { return nil }
        return { Set(tenants.webhooks().map { String($0.key.dropFirst("tenant:".count)) }) }
    }

    /// Starts the reporter and webhook threads.
    public func start() {
        reporter.start()
        webhooks?.start()
    }

    /// Stops them.
    public func stop() {
        reporter.stop()
        webhooks?.stop()
    }

    /// New mail or results: report soon.
    public func wake() { reporter.wake() }

    /// Whether this coordinator works the shared outboxes (events, DSNs, delay warnings,
    /// webhooks): always with one coordinator; with several, only while it leads. The delivery
    /// log is written by whichever coordinator leads at the time, in its own `data_dir/log`.
    /// - Parameter active: true to work them, false to leave them to the leader.
    public func setActive(_ active: Bool) {
        reporter.active.withLock { $0 = active }
        webhooks?.active.withLock { $0 = active }
        if active { reporter.wake(); webhooks?.wake() }
    }

    /// A node's result is about to be applied: keep its session details (TLS, timings) for the
    /// log lines of the events it writes, which the reporter may read once they are committed.
    public func noteDetails(_ result: ResultMessage) {
        reporter.noteResult(result)
    }

    /// A node's result was applied and synced: count its TLS reports and report soon.
    public func noteResult(_ result: ResultMessage) {
        tlsReports.note(result)
        for o in result.outcomes { for e in o.tlsReports ?? [] { metrics.tlsReportSessions.inc(e.policyType, e.result) } }
        reporter.wake()
    }
}

/// Admin API routes for suppressions, the delivery log and metrics.
///
/// - `GET /metrics`: Prometheus text format, **without** the bearer token (scrapers get no
///   admin rights; keep `admin_listen` on a private interface).
/// - `GET /v1/suppressions[?address=A]`, `POST /v1/suppressions` with
///   `{"address": A, "scope": "domain"|null, "reason": R, "expires_in": seconds|null}`,
///   `DELETE /v1/suppressions/{address}[?scope=domain|global]`.
/// - `GET /v1/log?message=ID` or `?recipient=ADDR` (`&limit=N`, default 1000).
/// - `GET /v1/tls-reports[?day=YYYY-MM-DD][&domain=D]`: TLS-RPT counts (RFC 8460) per UTC day and
///   policy domain: `[{day, policy_domain, policy_type, successes, failures: {result-type: n}, mx_hosts}]`,
///   newest day first; counted by this coordinator since it started.
/// - `GET /v1/complaints[?since=24h]`: complaints from feedback loops since a duration back
///   from now (`ComplaintSummary`: total, per sending IP, provider, sender domain, tenant and
///   (IP, provider) pair).
/// Every `/v1/` route needs `Authorization: Bearer <admin_token>`.
public struct ReportingAPI: Sendable {
    let config: ClusterConfig
    let store: any QueueStore
    let deliveryLog: DeliveryLog
    let metrics: MetricsRegistry
    let clock: any WallClock
    var tlsReports: TLSReportBook = TLSReportBook()

    /// The body of `POST /v1/suppressions`.
    public struct AddSuppression: Codable, Sendable {
        /// The recipient address.
        public var address: String
        /// A sender domain, or nil for every sender.
        public var scope: String?
        /// A note (e.g. "complaint").
        public var reason: String?
        /// Seconds until the entry expires; nil for never.
        public var expiresIn: Double?
        /// Creates a request body.
        public init(address: String, scope: String? = nil, reason: String? = nil, expiresIn: Double? = nil) {
            self.address = address; self.scope = scope; self.reason = reason; self.expiresIn = expiresIn
        }
    }

    /// Handles the request when the route is one of these; nil otherwise (for the next handler).
    public func handle(_ req: HTTPRequest) -> HTTPResponse? {
        if req.path == "/metrics" {
            guard req.method == "GET" else { return .error(405, "method not allowed") }
            return HTTPResponse(status: 200, contentType: MetricsRegistry.contentType, body: Array(metrics.render().utf8))
        }
        let parts = req.path.split(separator: "/").map(String.init)
        guard parts.count >= 2, parts[0] == "v1", ["suppressions", "log", "tls-reports", "complaints"].contains(parts[1]) else { return nil }
        let expected = "Bearer " + config.coordinator.adminToken
        guard let auth = req.headers["authorization"], Crypto.constantTimeEquals(Array(auth.utf8), Array(expected.utf8)) else {
            return .error(401, "missing or wrong bearer token")
        }
        do {
            switch (req.method, parts.count, parts[1]) {
            case ("GET", 2, "log"):
                let limit = min(max(Int(req.query["limit"] ?? "") ?? 1000, 1), 10_000)
                let message = req.query["message"].flatMap { $0.isEmpty ? nil : $0 }
                let recipient = req.query["recipient"].flatMap { $0.isEmpty ? nil : $0 }
                guard (message == nil) != (recipient == nil) else { return .error(400, "give exactly one of message=ID or recipient=ADDR") }
                return .json(deliveryLog.query(messageID: message, recipient: recipient, limit: limit))
            case ("GET", 2, "tls-reports"):
                let day = req.query["day"].flatMap { $0.isEmpty ? nil : $0 }
                if let day, day.count != 10 || TLSReportTally.day(ISO8601DateFormatter().date(from: day + "T00:00:00Z") ?? .distantPast) != day {
                    return .error(400, "day must be YYYY-MM-DD")
                }
                return .json(tlsReports.report(day: day, domain: req.query["domain"].flatMap { $0.isEmpty ? nil : $0.lowercased() }))
            case ("GET", 2, "complaints"):
                // Complaints from feedback loops (issue 18) since `since` (a duration back from now, default 24h).
                let text = req.query["since"].flatMap { $0.isEmpty ? nil : $0 } ?? "24h"
                guard let back = try? ConfigValue.duration(text), back > 0 else {
                    return .error(400, "since must be a duration back from now, e.g. 1h, 24h, 7d (got \(text))")
                }
                let since = clock.now().addingTimeInterval(-back)
                return .json(ComplaintSummary(groups: try store.complaintGroups(since: since), since: since))
            case ("GET", 2, "suppressions"):
                return .json(try store.suppressions(address: req.query["address"], now: clock.now()))
            case ("POST", 2, "suppressions"):
                let d = JSONDecoder(); d.keyDecodingStrategy = .convertFromSnakeCase
                guard let body = try? d.decode(AddSuppression.self, from: Data(req.body)) else {
                    return .error(400, "expected JSON {\"address\": \"user@example.com\", \"scope\": null, \"reason\": null, \"expires_in\": null}")
                }
                guard (try? Mailbox(parsing: body.address)) != nil else { return .error(400, "not a valid address: \(body.address)") }
                if let s = body.scope, !s.isEmpty, (try? ConfigValue.hostname(s)) == nil { return .error(400, "scope must be a domain name") }
                if let e = body.expiresIn, !(e > 0) { return .error(400, "expires_in must be a positive number of seconds") }
                let now = clock.now().timeIntervalSince1970
                let entry = SuppressionEntry(address: body.address, scope: body.scope.flatMap { $0.isEmpty ? nil : $0 }, reason: body.reason,
                                             source: "operator", createdAt: now, expiresAt: body.expiresIn.map { now + $0 })
                try store.addSuppressions([entry])
                return .json(entry)
            case ("DELETE", 3, "suppressions"):
                let scope: String? = req.query["scope"].map { $0 == "global" ? "" : $0 }
                let n = try store.removeSuppression(address: parts[2], scope: scope)
                guard n > 0 else { return .error(404, "no suppression for \(parts[2])") }
                return .json(["removed": n])
            case ("GET", _, _), ("POST", _, _), ("DELETE", _, _):
                return .error(404, "no route \(req.method) \(req.path)")
            default:
                return .error(405, "method not allowed")
            }
        } catch {
            return .error(500, "\(error)")
        }
    }
}
