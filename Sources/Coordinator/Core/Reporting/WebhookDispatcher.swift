import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import HatoConfig
import HatoCrypto
import HatoSupport

/// Signs webhook bodies: `X-Hato-Signature: sha256=<hex HMAC-SHA256(secret, body)>`.
public enum WebhookSignature {
    /// The signature header's value for `body`.
    public static func header(secret: String, body: [UInt8]) -> String {
        "sha256=" + Hex.encode(Crypto.hmacSHA256(key: Array(secret.utf8), data: body))
    }

    /// Whether `header` is the right signature of `body` (constant-time comparison).
    public static func verify(header: String, secret: String, body: [UInt8]) -> Bool {
        Crypto.constantTimeEquals(Array(header.utf8), Array(Self.header(secret: secret, body: body).utf8))
    }

    /// The POST body for a batch: `{"timestamp":<unix seconds>,"events":[<event>,…]}`.
    /// The timestamp (also sent as `X-Hato-Timestamp`) is inside the signed body, so a receiver
    /// can refuse stale or replayed deliveries; each event's `id` is unique for deduplication.
    public static func body(events: [[UInt8]], timestamp: Int) -> [UInt8] {
        var out = Array("{\"timestamp\":\(timestamp),\"events\":[".utf8)
        for (i, e) in events.enumerated() {
            if i > 0 { out.append(UInt8(ascii: ",")) }
            out += e
        }
        out += Array("]}".utf8)
        return out
    }
}

/// Delivers the webhook outbox: one background thread per configured webhook POSTs due
/// events in batches with URLSession, deletes them on a 2xx answer, and otherwise retries
/// with exponential backoff (`initial_backoff` doubling up to `max_backoff`) until `max_age`.
///
/// The outbox lives in the queue database, so undelivered events survive a coordinator
/// restart. Delivery is at-least-once: receivers deduplicate on the event `id`.
/// Threads, not Tasks: each POST blocks its own thread on a semaphore (never a pool thread).
public final class WebhookDispatcher: Sendable {
    private let hooks: [WebhookSettings]
    /// The tenants' webhooks now (issue 16): outbox key `tenant:<name>` and its settings.
    private let tenantHooks: (@Sendable () throws -> [(key: String, hook: WebhookSettings)])?
    private let store: any QueueStore
    private let clock: any WallClock
    private let metrics: CoordinatorMetrics?
    private let log = Logger(label: "coordinator.webhooks")
    /// One loop per hook, once started.
    private let loops = Locked<[BackgroundLoop]>([])
    private let session: URLSession

    /// - Parameters:
    ///   - hooks: the configured webhooks (URLs are unique).
    ///   - store: the queue holding the outbox.
    ///   - metrics: counters for posts (optional).
    ///   - clock: time source for backoff and ages.
    ///   - tenantHooks: the tenants' webhooks, read at every pass of their thread (throws: a
    ///     store error, the pass is skipped); nil without tenants.
    public init(hooks: [WebhookSettings], store: any QueueStore, metrics: CoordinatorMetrics? = nil, clock: any WallClock = SystemClock(),
                tenantHooks: (@Sendable () throws -> [(key: String, hook: WebhookSettings)])? = nil) {
        self.hooks = hooks; self.store = store; self.metrics = metrics; self.clock = clock; self.tenantHooks = tenantHooks
        let cfg = URLSessionConfiguration.ephemeral
        cfg.httpMaximumConnectionsPerHost = 2
        session = URLSession(configuration: cfg)
    }

    /// Whether the threads post (several coordinators: only the leader empties the shared
    /// outbox, so no event is posted by two coordinators).
    public let active = Locked(true)

    /// Drops outbox rows of hooks no longer configured (and of tenants without a webhook now)
    /// and starts one thread per configured hook, and one for every tenant's hook.
    public func start() {
        do {
            var keep = Set(hooks.map(\.url))
            if let tenantHooks { keep.formUnion(try tenantHooks().map(\.key)) }
            let dropped = try store.dropWebhooks(notIn: keep)
            if dropped > 0 { log.warning("dropped webhook events of hooks no longer configured", ["events": "\(dropped)"]) }
        } catch {
            log.error("cannot clean the webhook outbox", ["error": "\(error)"])
        }
        var started = hooks.map { hook in BackgroundLoop(name: "webhook") { [self] in pass(hook) } }
        if tenantHooks != nil { started.append(BackgroundLoop(name: "webhook-tenants") { [self] in tenantPass() }) }
        loops.withLock { $0 = started }
        for loop in started { loop.start() }
    }

    /// Stops the threads after their current POST.
    public func stop() {
        for loop in loops.withLock({ $0 }) { loop.stop() }
        session.invalidateAndCancel()
    }

    /// New events are in the outbox.
    public func wake() {
        for loop in loops.withLock({ $0 }) { loop.wake() }
    }

    /// The URL for logs and metric labels: without user, password and query (they may hold credentials).
    static func redacted(_ url: String) -> String {
        guard var c = URLComponents(string: url) else { return "invalid-url" }
        c.user = nil; c.password = nil; c.query = nil; c.fragment = nil
        return c.string ?? "invalid-url"
    }

    /// The wait after `attempts` failed attempts (1-based): initial × 2^(attempts-1), at most max.
    static func backoff(attempts: Int, hook: WebhookSettings) -> TimeInterval {
        let exp = min(max(attempts - 1, 0), 30)
        return min(hook.maxBackoff, hook.initialBackoff * pow(2, Double(exp)))
    }

    /// One pass for `hook`: POSTs what is due. - Returns: the pause before the next pass
    /// (none after a full batch, until the next row is due otherwise, at most a second).
    private func pass(_ hook: WebhookSettings) -> Duration {
        guard active.snapshot else { return .seconds(1) }
        do {
            if try deliverDue(hook) { return .zero }
            if let due = try store.nextWebhookDue() {
                return .milliseconds(Int(min(1, max(0.05, due.timeIntervalSince(clock.now()))) * 1000))
            }
        } catch {
            log.error("webhook outbox failed", ["url": Self.redacted(hook.url), "error": "\(error)"])
        }
        return .seconds(1)
    }

    /// One pass over the tenants' hooks. - Returns: the pause before the next (none after a
    /// full batch of any tenant, else a second).
    private func tenantPass() -> Duration {
        guard active.snapshot, let tenantHooks else { return .seconds(1) }
        var more = false
        do {
            for (key, hook) in try tenantHooks() {
                do { if try deliverDue(hook, key: key) { more = true } } catch {
                    log.error("webhook outbox failed", ["tenant_hook": key, "error": "\(error)"])
                }
            }
        } catch {
            log.error("cannot read the tenants' webhooks", ["error": "\(error)"])
        }
        return more ? .zero : .seconds(1)
    }

    /// POSTs one batch of due events for `hook`.
    /// - Parameter key: the outbox rows' hook key (default: the hook's URL; `tenant:<name>` for a tenant's).
    /// - Returns: true when a full batch went out (more may be due at once).
    @discardableResult
    func deliverDue(_ hook: WebhookSettings, key: String? = nil) throws -> Bool {
        let key = key ?? hook.url
        let now = clock.now()
        var rows = try store.dueWebhooks(hook: key, now: now, limit: hook.batchSize)
        guard !rows.isEmpty else { return false }
        let stale = rows.filter { now.timeIntervalSince($0.createdAt) > hook.maxAge }
        if !stale.isEmpty {
            try store.deleteWebhooks(stale.map(\.id))
            metrics?.webhookPosts.inc(Self.redacted(hook.url), "abandoned", by: Double(stale.count))
            log.warning("webhook events abandoned after max_age", ["url": Self.redacted(hook.url), "events": "\(stale.count)",
                                                                   "first": stale.first?.eventID ?? ""])
            rows.removeAll { r in stale.contains { $0.id == r.id } }
            if rows.isEmpty { return true }
        }
        let timestamp = Int(now.timeIntervalSince1970)
        let body = WebhookSignature.body(events: rows.map(\.body), timestamp: timestamp)
        switch post(hook, body: body, timestamp: timestamp, attempt: (rows.map(\.attempts).max() ?? 0) + 1) {
        case .success:
            try store.deleteWebhooks(rows.map(\.id))
            metrics?.webhookPosts.inc(Self.redacted(hook.url), "ok")
            return rows.count == hook.batchSize
        case .failure(let why):
            let attempts = (rows.map(\.attempts).max() ?? 0) + 1
            let wait = Self.backoff(attempts: attempts, hook: hook)
            try store.deferWebhooks(rows.map(\.id), next: now.addingTimeInterval(wait), error: why)
            // The whole hook waits, not just this batch: a receiver that is down gets one POST
            // per back-off interval (the oldest batch again, its attempts doubling the wait).
            try store.holdWebhooks(hook: key, until: now.addingTimeInterval(wait))
            metrics?.webhookPosts.inc(Self.redacted(hook.url), "failed")
            log.warning("webhook delivery failed; will retry", ["url": Self.redacted(hook.url), "events": "\(rows.count)", "attempt": "\(attempts)",
                                                                "retry_in": "\(Int(wait))s", "error": why])
            return false
        }
    }

    private enum PostResult: Sendable { case success, failure(String) }

    private func post(_ hook: WebhookSettings, body: [UInt8], timestamp: Int, attempt: Int) -> PostResult {
        guard let url = URL(string: hook.url) else { return .failure("bad URL") }
        var req = URLRequest(url: url, timeoutInterval: hook.timeout)
        req.httpMethod = "POST"
        req.httpBody = Data(body)
        req.setValue("application/json", forHTTPHeaderField: "Content-Type")
        req.setValue("hato-coordinator", forHTTPHeaderField: "User-Agent")
        req.setValue(WebhookSignature.header(secret: hook.secret, body: body), forHTTPHeaderField: "X-Hato-Signature")
        req.setValue("\(timestamp)", forHTTPHeaderField: "X-Hato-Timestamp")
        req.setValue("\(attempt)", forHTTPHeaderField: "X-Hato-Attempt")
        let box = Locked<PostResult>(.failure("no response"))
        let done = DispatchSemaphore(value: 0)
        session.dataTask(with: req) { _, resp, err in
            if let err {
                box.withLock { $0 = .failure(err.localizedDescription) }
            } else if let status = (resp as? HTTPURLResponse)?.statusCode {
                box.withLock { $0 = (200..<300).contains(status) ? .success : .failure("HTTP \(status)") }
            }
            done.signal()
        }.resume()
        // URLSession enforces the request timeout; this bound only guards against a lost callback.
        if done.wait(timeout: .now() + hook.timeout + 5) == .timedOut { return .failure("timeout") }
        return box.snapshot
    }
}
