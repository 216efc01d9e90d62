import ClusterProtocol
import Foundation
import HatoConfig
import HatoCrypto
import HatoDelivery
import HatoSupport
import SMTPCore

/// Turns the queue's recorded events into what the sender and the operator see: delivery
/// log lines, metrics, webhook deliveries, DSNs (RFC 3464) and suppression entries.
///
/// It drains `recipient_events` (filled by triggers in the same transactions as the state
/// changes, see QueueStore+Reporting.swift) on one background thread: every 250 ms, or
/// sooner when woken. Each batch is applied with one transaction (`completeEvents`), so
/// reporting is at-least-once: after a crash a batch may be logged or counted twice, but a
/// failure is never left without its DSN.
///
/// DSNs: one per message, to the reverse-path, from `<>`, routed to the default pool.
/// Failed, expired and suppressed recipients are reported unless NOTIFY excludes FAILURE
/// (RFC 3461 §4.1; no NOTIFY means FAILURE and DELAY); SUCCESS gives a `relayed` report
/// (the next hop is not asked for DSNs); DELAY gives one `delayed` report once a recipient
/// has waited `dsn.delay_warning` — deferred, or never attempted (paused, over a warm-up cap,
/// suspended) or held by an operator, whose diagnostic then says why it waits (RFC 3464 §2.3.6,
/// type `X-Hato`). Operators' actions (queue control) are logged and sent to webhooks with
/// who did them; an operator's bounce is a `failed` with a local diagnostic and category
/// `admin`. A message's failures are held until each of its
/// recipients has had a first result (at most `dsnHold`), so they share one DSN.
/// Messages from `<>` never get a DSN: a DSN that fails is logged and dropped.
public final class DeliveryReporter: Sendable {
    /// How often the reporter works (seconds); settable for tests.
    public struct Pace: Sendable {
        /// Seconds between polls of the event table when not woken.
        public var pollInterval: TimeInterval = 0.25
        /// The least time between the starts of two passes (seconds): a wake-up sooner than that
        /// waits, so events that come together share one transaction, and at light load the
        /// reporter takes the queue's lock at most ten times a second — not at the moment the
        /// scheduler leases the message that woke it.
        public var minimumPassInterval: TimeInterval = 0.1
        /// The least time between a wake-up and the pass it starts (seconds): the new message
        /// that woke the reporter is leased first (the scheduler was woken at the same moment
        /// and needs the same write lock). Measured at light load: without it the reporter's
        /// transaction ran first and the lease waited for it.
        public var settleDelay: TimeInterval = 0.02
        /// Seconds between scans for delay warnings.
        public var delayScanInterval: TimeInterval = 30
        /// The longest a failure waits for the message's other recipients before its DSN goes out (seconds).
        public var dsnHold: TimeInterval = 600
    }

    /// Where the passes stand (touched by the loop thread, or by a test calling `runOnce`).
    private struct Progress: Sendable {
        var lastDelayScan = Date.distantPast
        /// Messages received at or before this time (seconds since 1970) were scanned for delay warnings.
        var delayScanWatermark: Double = 0
        var lastSuppressionPurge = Date.distantPast
        var lastRetentionPass = Date.distantPast
        /// The last retention pass deleted a full batch: the next reporter pass runs one too.
        var retentionBacklog = false
        var lastPass = ContinuousClock.now - .seconds(3600)
    }

    /// The most finished messages deleted per retention pass (a pass a minute, or at once
    /// after a full one).
    static let retentionBatch = 2000

    private let config: ClusterConfig
    private let store: any QueueStore
    private let deliveryLog: DeliveryLog
    private let metrics: CoordinatorMetrics
    private let webhooks: WebhookDispatcher?
    private let clock: any WallClock
    private let onEnqueued: @Sendable () -> Void
    private let waitReason: (@Sendable (_ pool: String, _ domain: String, _ state: String, _ nextAttemptAt: Date?) -> String)?
    private let log = Logger(label: "coordinator.reporting")
    private let pace = Locked(Pace())
    private let progress = Locked(Progress())
    private let loop = Locked<BackgroundLoop?>(nil)
    /// Session details of recent outcomes by recipient id (TLS, timings), which the queue does not
    /// store: informational, kept in memory until the recipient's event is reported (bounded).
    private let details = Locked<[Int64: RecipientResult]>([:])
    private static let maxDetails = 50_000

    /// Seconds between polls of the event table when not woken.
    public var pollInterval: TimeInterval {
        get { pace.withLock { $0.pollInterval } }
        set { pace.withLock { $0.pollInterval = newValue } }
    }
    /// The least time between the starts of two passes (seconds).
    public var minimumPassInterval: TimeInterval {
        get { pace.withLock { $0.minimumPassInterval } }
        set { pace.withLock { $0.minimumPassInterval = newValue } }
    }
    /// Seconds between scans for delay warnings.
    public var delayScanInterval: TimeInterval {
        get { pace.withLock { $0.delayScanInterval } }
        set { pace.withLock { $0.delayScanInterval = newValue } }
    }
    /// The longest a failure waits for the message's other recipients before its DSN goes out (seconds).
    public var dsnHold: TimeInterval {
        get { pace.withLock { $0.dsnHold } }
        set { pace.withLock { $0.dsnHold = newValue } }
    }

    /// - Parameters:
    ///   - config: the cluster configuration (`dsn`, `suppression`, `webhooks`, `smtp.hostname`, `routing.default_pool`).
    ///   - store: the queue.
    ///   - deliveryLog: where log lines go.
    ///   - metrics: counters to update.
    ///   - webhooks: the dispatcher to wake after queueing webhook events, if any.
    ///   - clock: time source.
    ///   - onEnqueued: called after a DSN was queued (wakes the scheduler).
    ///   - waitReason: why a waiting recipient waits (pool, domain, state, next attempt), for the
    ///     delay notice of one never attempted or held (`ClusterHub.waitReason`); nil: a generic text.
    public init(config: ClusterConfig, store: any QueueStore, deliveryLog: DeliveryLog, metrics: CoordinatorMetrics, webhooks: WebhookDispatcher?,
                clock: any WallClock = SystemClock(), onEnqueued: @escaping @Sendable () -> Void,
                waitReason: (@Sendable (_ pool: String, _ domain: String, _ state: String, _ nextAttemptAt: Date?) -> String)? = nil,
                tenantWebhooks: (@Sendable () -> Set<String>)? = nil) {
        self.config = config; self.store = store; self.deliveryLog = deliveryLog; self.metrics = metrics
        self.webhooks = webhooks; self.clock = clock; self.onEnqueued = onEnqueued; self.waitReason = waitReason
        self.tenantWebhooks = tenantWebhooks
    }

    /// The tenants that have a webhook now (issue 16); nil without tenants.
    private let tenantWebhooks: (@Sendable () -> Set<String>)?
    /// Told of each reported complaint whose delivery is known (sending IP, MX host, when).
    private let complaintObserver = Locked<Callback<(ip: String, mxHost: String, at: Date), Void>?>(nil)

    /// Sets what is told of each `complained` event this reporter processes whose sending IP
    /// and MX host are known: the leader counts it in the (IP, provider) reputation signals
    /// (`ClusterHub.recordComplaint`). Events are reported once by the leader whichever
    /// coordinator took the report in (at least once: after a crash a batch may repeat).
    /// - Parameter observer: called on the reporting thread with the sending IP, the MX host
    ///   and the complaint's time.
    public func observeComplaints(_ observer: @escaping @Sendable (_ ip: String, _ mxHost: String, _ at: Date) -> Void) {
        complaintObserver.withLock { $0 = Callback { observer($0.ip, $0.mxHost, $0.at) } }
    }

    /// The events a tenant's webhook gets: those about its own messages.
    static let tenantWebhookEvents: Set<DeliveryEventKind> = [.received, .delivered, .deferred, .failed, .expired, .suppressed,
                                                              .held, .released, .deleted, .dsnSent, .complained]

    /// Remembers the session details of a node's result (TLS, timings) for the log lines of its
    /// recipients. Call it for every result the coordinator applies, before its transaction
    /// (`ClusterHub.setResultPreview`): this reporter may read the result's events as soon as
    /// they are committed. A result that is never applied leaves its entries until the bound
    /// (50 000) clears them or a re-sent copy replaces them.
    public func noteResult(_ result: ResultMessage) {
        details.withLock { details in
            if details.count + result.outcomes.count > Self.maxDetails { details.removeAll() }
            for o in result.outcomes { details[o.recipientID] = o }
        }
    }

    /// Whether the background thread works (several coordinators: only the leader processes
    /// the shared store's events, DSNs and delay warnings, so nothing is reported twice).
    public let active = Locked(true)

    /// Starts the background thread.
    public func start() {
        let background = BackgroundLoop(name: "reporter") { [self] in pass() }
        loop.withLock { $0 = background }
        background.start()
    }

    /// Stops the background thread after its current pass.
    public func stop() {
        loop.withLock { $0 }?.stop()
    }

    /// Asks for a pass now (new mail, new results).
    public func wake() {
        loop.withLock { $0 }?.wake()
    }

    /// One pass of the background loop: waits out `minimumPassInterval` since the last pass
    /// started (and at least `settleDelay`), then works until no work is left. - Returns: the pause before the next poll.
    private func pass() -> Duration {
        let (minimum, poll, settle) = pace.withLock { ($0.minimumPassInterval, $0.pollInterval, $0.settleDelay) }
        guard active.snapshot else { return .milliseconds(Int(poll * 1000)) }
        let since = progress.withLock { $0.lastPass }.duration(to: .now)
        let wait = max(Duration.milliseconds(Int(minimum * 1000)) - since, .milliseconds(Int(settle * 1000)))
        if wait > .zero { Thread.sleep(forTimeInterval: Double(wait.components.seconds) + Double(wait.components.attoseconds) / 1e18) }
        progress.withLock { $0.lastPass = .now }
        do {
            // Stops between batches once this coordinator no longer leads.
            while active.snapshot, try runOnce() {}
        } catch {
            log.error("reporting pass failed; retried", ["error": "\(error)"])
        }
        return .milliseconds(Int(poll * 1000))
    }

    /// One pass: process a batch of events, scan for delay warnings when due, send ready DSNs.
    /// - Returns: whether there was work (another pass may find more).
    /// - Throws: `SQLiteError`; nothing of the failed step is applied.
    @discardableResult
    public func runOnce() throws -> Bool {
        let now = clock.now()
        var worked = false
        let events = try store.pendingEvents(limit: 500)
        if !events.isEmpty {
            worked = true
            var d = EventDisposition()
            var records: [DeliveryLogRecord] = []
            records.reserveCapacity(events.count)
            for e in events { records.append(process(e, into: &d, now: now)) }
            do {
                try deliveryLog.append(records)
            } catch {
                metrics.logErrors.inc()
                log.error("delivery log write failed", ["error": "\(error)"])
            }
            try store.completeEvents(d, now: now)
            if !d.webhooks.isEmpty { webhooks?.wake() }
            if let age = config.dsn.delayWarning { try warnLateDeferrals(events, age: age, now: now) }
        }
        var (scanInterval, hold) = pace.withLock { ($0.delayScanInterval, $0.dsnHold) }
        // A short delay warning is looked for more often: at least twice per warning period (≥ 1 s).
        if let age = config.dsn.delayWarning { scanInterval = min(scanInterval, max(1, age / 2)) }
        if let age = config.dsn.delayWarning, progress.withLock({ p in
            defer { if now.timeIntervalSince(p.lastDelayScan) >= scanInterval { p.lastDelayScan = now } }
            return now.timeIntervalSince(p.lastDelayScan) >= scanInterval
        }) {
            try scanDelays(age: age, now: now)
        }
        for source in try store.readyDSNs(now: now, hold: hold, limit: 50) {
            try send(source, now: now)
            worked = true
        }
        if progress.withLock({ p in
            defer { if now.timeIntervalSince(p.lastSuppressionPurge) >= 3600 { p.lastSuppressionPurge = now } }
            return now.timeIntervalSince(p.lastSuppressionPurge) >= 3600
        }) {
            let n = try store.purgeExpiredSuppressions(now: now)
            if n > 0 { log.info("expired suppression entries removed", ["entries": "\(n)"]) }
        }
        // Finished messages past `coordinator.message_retention`: a pass a minute of at most
        // `retentionBatch` (bounded transactions that let the queue's lock go, paced by the
        // store); after a full batch the next pass runs with the reporter's next one (every
        // 250 ms at most, not at once: a backlog of millions after an upgrade must not crowd
        // submissions, leases and results off the lock) — up to ~8000 messages a second, more
        // than the relay accepts. A failed pass waits a minute like any other.
        if progress.withLock({ p in
            let due = p.retentionBacklog || now.timeIntervalSince(p.lastRetentionPass) >= 60
            if due { p.lastRetentionPass = now; p.retentionBacklog = false }
            return due
        }) {
            let n = try store.deleteFinishedMessages(receivedBefore: now.addingTimeInterval(-config.coordinator.messageRetention),
                                                     now: now, limit: Self.retentionBatch)
            let backlog = n >= Self.retentionBatch
            progress.withLock { $0.retentionBacklog = backlog }
            if n > 0 {
                metrics.messagesExpunged.inc(by: Double(n))
                log.debug("finished messages past their retention deleted", ["messages": "\(n)"])
            }
        }
        return worked
    }

    // MARK: Events

    /// Builds the log record of one event and adds its webhook, DSN and suppression consequences.
    func process(_ event: QueueEvent, into d: inout EventDisposition, now: Date) -> DeliveryLogRecord {
        var e = event
        if e.kind == .failed && e.by != nil {
            // An operator's bounce: the node, sending IP and MX of an earlier attempt had no part
            // in it (the DSN's diagnostic is local: `X-Hato`, no Remote-MTA).
            e.node = nil; e.sendingIP = nil; e.mxHost = nil; e.leaseGrantedAt = nil
        }
        // An operator's event about no message (a pause, a lift) has no message id.
        let id = e.messageID.isEmpty ? (e.kind == .complained ? "complaint.\(e.seq)" : "operator.\(e.seq)") : "\(e.messageID).\(e.seq)"
        var r = DeliveryLogRecord(id: id, ts: DeliveryLogRecord.timestamp(e.at), event: e.kind.rawValue, messageId: e.messageID.isEmpty ? nil : e.messageID)
        if !e.messageID.isEmpty {
            r.reversePath = e.reversePath
            r.pool = e.pool
            r.tenant = e.tenant
            r.queueTime = Self.rounded(max(0, e.at.timeIntervalSince(e.receivedAt)))
        }
        if e.by != nil {
            r.operatorName = e.by; r.target = e.detail; r.note = e.note
        }
        switch e.kind {
        case .received:
            r.size = e.size; r.recipients = e.recipientCount; r.client = e.clientAddress
            metrics.received.inc(e.pool)
            metrics.activity.record(.accepted, at: e.at, tenant: e.tenant)
        case .dsnSent:
            r.dsnMessageId = e.detail
        case .delivered, .deferred, .failed, .expired, .suppressed:
            r.recipient = e.address
            r.node = e.node; r.sendingIp = e.sendingIP; r.mx = e.mxHost
            r.provider = e.mxHost.map { config.providerName(forMXHost: $0) }
            var providerHost = e.mxHost
            r.setReply(e.reply, textWithoutReply: e.textWithoutReply)
            r.attempt = e.attempts
            r.attemptTime = e.leaseGrantedAt.map { Self.rounded(max(0, e.at.timeIntervalSince($0))) }
            if let rid = e.recipientID, let o = details.withLock({ $0.removeValue(forKey: rid) }) {
                if o.mxHost != nil { r.tls = o.tlsVersion != nil }
                r.tlsVersion = o.tlsVersion; r.tlsCipher = o.tlsCipher; r.remoteAddress = o.remoteAddress
                r.reusedConnection = o.reusedConnection; r.dkim = o.dkim; r.timings = o.timings
                if e.kind == .deferred, e.mxHost == nil, let failure = o.connectionFailure {
                    // No MX answered: keep where it failed, so metrics and the log name its provider.
                    r.mx = failure.mxHost; r.remoteAddress = failure.remoteAddress
                    r.addressFamily = failure.addressFamily; r.connectFailed = true
                    r.provider = config.providerName(forMXHost: failure.mxHost)
                    providerHost = failure.mxHost
                }
            }
            let category = e.kind == .delivered || e.kind == .suppressed ? nil : e.reply.map(BounceClassifier.classify)
            r.category = category?.rawValue
            if e.kind == .deferred, let next = e.nextAttemptAt { r.nextAttempt = DeliveryLogRecord.timestamp(next) }
            count(e, category: category, providerHost: providerHost)
            schedule(e, category: category, into: &d, now: now)
        case .held, .released, .deleted, .flushed:
            // The recipient and its last reply for context; no category (nobody answered).
            r.recipient = e.address
            r.setReply(e.reply, textWithoutReply: e.textWithoutReply)
            r.attempt = e.attempts
            if e.kind != .deleted, let next = e.nextAttemptAt { r.nextAttempt = DeliveryLogRecord.timestamp(next) }
        case .complained:
            // From a feedback loop (ComplaintIntake): the feedback type in `text`, the provider
            // in `detail`, the reporting MTA in `note` (RecordComplaint).
            r.recipient = e.address
            r.sendingIp = e.sendingIP
            r.provider = e.detail
            r.category = e.textWithoutReply
            r.note = e.note.map { "reported by " + $0 }
            metrics.complaints.inc(e.detail ?? "unknown")
            if let ip = e.sendingIP, !ip.isEmpty, let mx = e.mxHost, !mx.isEmpty, let observer = complaintObserver.snapshot { observer((ip, mx, e.at)) }
            if let tenant = e.tenant { metrics.tenantMessages.inc(tenant, "complained") }
        case .paused, .resumed, .lifted, .suspended, .listed, .delisted:
            break
        }
        let hooks = config.webhooks.filter { $0.events.contains(e.kind) }
        let tenantHook = e.tenant.flatMap { t in
            Self.tenantWebhookEvents.contains(e.kind) && (tenantWebhooks?().contains(t) ?? false) ? TenantDirectory.webhookKey(t) : nil
        }
        if !hooks.isEmpty || tenantHook != nil {
            let body = r.json()
            for hook in hooks { d.webhooks.append((hook: hook.url, eventID: id, body: body)) }
            if let tenantHook { d.webhooks.append((hook: tenantHook, eventID: id, body: body)) }
        }
        d.processed.append(e.seq)
        return r
    }

    /// - Parameter providerHost: the MX host whose provider the event counts under (the one that
    ///   answered, or the one a connection failed to).
    private func count(_ e: QueueEvent, category: BounceCategory?, providerHost: String?) {
        let ip = e.sendingIP ?? "none"
        let provider = config.providerName(forMXHost: providerHost)
        switch e.kind {
        case .delivered:
            metrics.delivered.inc(e.pool, ip, provider)
            metrics.latency.observe(max(0, e.at.timeIntervalSince(e.receivedAt)), labels: [e.pool])
            metrics.activity.record(.delivered, at: e.at, tenant: e.tenant)
        case .deferred:
            metrics.deferred.inc(e.pool, ip, provider, (category ?? .other).rawValue)
            metrics.activity.record(.deferred, at: e.at, tenant: e.tenant)
        case .failed:
            metrics.failed.inc(e.pool, ip, provider, (category ?? .other).rawValue)
            metrics.activity.record(.bounced, at: e.at, tenant: e.tenant)
        case .expired:
            metrics.expired.inc(e.pool)
            metrics.activity.record(.bounced, at: e.at, tenant: e.tenant)
        case .suppressed: metrics.suppressed.inc(e.pool)
        default: break
        }
        if let tenant = e.tenant {
            switch e.kind {
            case .delivered: metrics.tenantMessages.inc(tenant, "delivered")
            case .deferred: metrics.tenantMessages.inc(tenant, "deferred")
            case .failed, .expired: metrics.tenantMessages.inc(tenant, "bounced")
            case .suppressed: metrics.tenantMessages.inc(tenant, "suppressed")
            default: break
            }
        }
    }

    /// DSN entries and suppression entries for a recipient event.
    private func schedule(_ e: QueueEvent, category: BounceCategory?, into d: inout EventDisposition, now: Date) {
        guard let rid = e.recipientID, let address = e.address else { return }
        let reply = e.diagnostic
        let diagnosticType = e.mxHost == nil ? "X-Hato" : "smtp"
        if e.reversePath.isEmpty {
            if e.kind == .failed || e.kind == .expired {
                log.warning("undeliverable notification dropped (null reverse-path: never bounced)",
                            ["id": e.messageID, "recipient_id": "\(rid)", "code": "\(e.reply?.code.rawValue ?? 0)"])
            }
        } else {
            switch e.kind {
            case .failed where Self.notifyAllows(e.notify, "FAILURE"):
                let status = e.reply?.enhancedStatus(ofClass: .permanentFailure, orElse: EnhancedStatusCode(.permanentFailure, 0, 0))
                    ?? EnhancedStatusCode(.permanentFailure, 0, 0)
                d.dsn.append(PendingDSNEntry(recipientID: rid, messageID: e.messageID, action: .failed, status: status, diagnostic: reply,
                                             diagnosticType: diagnosticType, remoteMTA: e.mxHost, at: e.at))
            case .expired where Self.notifyAllows(e.notify, "FAILURE"):
                d.dsn.append(PendingDSNEntry(recipientID: rid, messageID: e.messageID, action: .failed, status: EnhancedStatusCode(.persistentTransientFailure, 4, 7),
                                             diagnostic: reply.isEmpty ? "delivery time expired" : reply,
                                             diagnosticType: reply.isEmpty ? "X-Hato" : diagnosticType, remoteMTA: e.mxHost, at: e.at))
            case .suppressed where Self.notifyAllows(e.notify, "FAILURE"):
                d.dsn.append(PendingDSNEntry(recipientID: rid, messageID: e.messageID, action: .failed, status: EnhancedStatusCode(.permanentFailure, 1, 1),
                                             diagnostic: reply.isEmpty ? "recipient address is on the suppression list" : reply,
                                             diagnosticType: "X-Hato", remoteMTA: nil, at: e.at))
            case .delivered where Self.notifyAllows(e.notify, "SUCCESS"):
                d.dsn.append(PendingDSNEntry(recipientID: rid, messageID: e.messageID, action: .relayed, status: EnhancedStatusCode(.success, 0, 0),
                                             diagnostic: reply, diagnosticType: diagnosticType, remoteMTA: e.mxHost, at: e.at))
            default:
                break
            }
        }
        if e.kind == .failed, config.suppression.autoAdd, (e.reply?.code.rawValue ?? 0) >= 500, let category, category.isHardBounce {
            let domain = Queue.senderDomain(of: e.reversePath)
            let scope: String? = config.suppression.scope == .global || domain.isEmpty ? nil : domain
            d.suppressions.append(SuppressionEntry(address: address, scope: scope, category: category.rawValue, reason: reply, source: "bounce",
                                                   messageID: e.messageID, createdAt: now.timeIntervalSince1970,
                                                   expiresAt: config.suppression.expireAfter.map { now.timeIntervalSince1970 + $0 }))
            log.info("recipient suppressed after a hard bounce", ["id": e.messageID, "category": category.rawValue, "scope": scope ?? "global"])
        }
    }

    /// Whether a NOTIFY parameter (RFC 3461 §4.1) asks for `what` (`SUCCESS`, `FAILURE`, `DELAY`).
    /// No parameter means FAILURE and DELAY.
    public static func notifyAllows(_ notify: String?, _ what: String) -> Bool {
        guard let notify, !notify.isEmpty else { return what != "SUCCESS" }
        let set = Set(notify.uppercased().split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
        return !set.contains("NEVER") && set.contains(what)
    }

    private static func rounded(_ t: TimeInterval) -> Double { (t * 1000).rounded() / 1000 }

    // MARK: Delay warnings

    /// Delay warnings for waiting recipients (deferred, queued, held) whose message has aged past `age`. Each scan
    /// starts where the last complete one ended (`delayScanWatermark`), so an old backlog
    /// that was already warned is not walked again every `delayScanInterval`; a recipient of
    /// a message behind the watermark that is deferred later is caught as its event is
    /// processed (`runOnce`).
    private func scanDelays(age: TimeInterval, now: Date) throws {
        let cutoff = now.timeIntervalSince1970 - age
        let limit = 500
        // At most 20 batches per scan: a large backlog is warned over a few scans.
        for _ in 0..<20 {
            let watermark = progress.withLock { $0.delayScanWatermark }
            let candidates = try store.delayWarningCandidates(receivedAfter: watermark, upTo: cutoff, limit: limit)
            try warnDelays(candidates, now: now)
            guard candidates.count == limit, let last = candidates.last?.receivedAt.timeIntervalSince1970 else {
                progress.withLock { $0.delayScanWatermark = max($0.delayScanWatermark, cutoff) }
                return
            }
            // Cut at the limit: the last message may have more candidates; scan it again.
            progress.withLock { $0.delayScanWatermark = max($0.delayScanWatermark, last.nextDown) }
        }
    }

    /// Delay warnings for recipients deferred, held or released only now, though their message is
    /// already behind the scan's watermark (the scan will not see them again).
    private func warnLateDeferrals(_ events: [QueueEvent], age: TimeInterval, now: Date) throws {
        let upTo = min(progress.withLock { $0.delayScanWatermark }, now.timeIntervalSince1970 - age)
        let late = events.filter {
            [.deferred, .held, .released].contains($0.kind) && $0.recipientID != nil && $0.receivedAt.timeIntervalSince1970 <= upTo
        }
        guard let oldest = late.map(\.receivedAt.timeIntervalSince1970).min() else { return }
        do {
            try warnDelays(try store.delayWarningCandidates(recipientIDs: late.compactMap(\.recipientID), receivedUpTo: upTo), now: now)
        } catch {
            // Their events are gone: let the scan reach their messages again.
            progress.withLock { $0.delayScanWatermark = min($0.delayScanWatermark, oldest.nextDown) }
            throw error
        }
    }

    /// Schedules DELAY DSNs for `candidates` (when NOTIFY allows) and marks them handled.
    private func warnDelays(_ candidates: [QueueEvent], now: Date) throws {
        guard !candidates.isEmpty else { return }
        var d = EventDisposition()
        for c in candidates {
            guard let rid = c.recipientID else { continue }
            d.delayHandled.append(rid)
            guard !c.reversePath.isEmpty, Self.notifyAllows(c.notify, "DELAY") else { continue }
            let reply = c.diagnostic
            let neverAttempted = c.attempts == 0 || c.reply == nil
            if neverAttempted || c.state == RecipientState.held.rawValue {
                // Nobody answered yet, or an operator holds it: the diagnostic says why it waits
                // (paused, warm-up cap, suspension, held), as `queue list` does.
                let why = reason(for: c, state: c.state ?? RecipientState.queued.rawValue)
                d.dsn.append(PendingDSNEntry(recipientID: rid, messageID: c.messageID, action: .delayed, status: EnhancedStatusCode(.persistentTransientFailure, 0, 0),
                                             diagnostic: neverAttempted ? "not yet attempted: \(why)" : "\(why); last reply: \(reply)",
                                             diagnosticType: "X-Hato", remoteMTA: nil, at: now))
                continue
            }
            let fallback = EnhancedStatusCode(.persistentTransientFailure, 0, 0)
            let status = c.reply?.enhancedStatus(ofClass: .persistentTransientFailure, orElse: fallback) ?? fallback
            d.dsn.append(PendingDSNEntry(recipientID: rid, messageID: c.messageID, action: .delayed, status: status,
                                         diagnostic: reply.isEmpty ? nil : reply, diagnosticType: c.mxHost == nil ? "X-Hato" : "smtp",
                                         remoteMTA: c.mxHost, at: now))
        }
        try store.completeEvents(d, now: now)
    }

    /// Why a waiting recipient waits, from the scheduler (`ClusterHub.waitReason`) when wired.
    private func reason(for c: QueueEvent, state: String) -> String {
        let domain = Queue.domain(of: c.address ?? "")
        if let waitReason { return waitReason(c.pool, domain, state, c.nextAttemptAt) }
        return state == RecipientState.held.rawValue ? "held by an operator (release to send)" : "waiting to be scheduled"
    }

    // MARK: DSNs

    private func send(_ source: DSNSource, now: Date) throws {
        let ids = source.entries.map(\.entry.recipientID)
        guard !source.reversePath.isEmpty, !source.entries.isEmpty else {
            try store.commitDSN(originalID: source.messageID, recipientIDs: ids, dsn: nil, now: now)
            return
        }
        if source.content == nil {
            log.warning("original content already purged; the DSN returns no headers", ["id": source.messageID])
        }
        let recipients = source.entries.map { item in
            DeliveryStatusNotification.Recipient(
                finalRecipient: item.address, originalRecipient: item.orcpt, action: item.entry.action, status: item.entry.status,
                remoteMTA: item.entry.remoteMTA, diagnostic: item.entry.diagnostic, diagnosticType: item.entry.diagnosticType,
                lastAttempt: item.entry.action == .delayed ? nil : item.entry.at,
                willRetryUntil: item.entry.action == .delayed ? source.receivedAt.addingTimeInterval(config.retry.maxAge) : nil)
        }
        let id = Identifier.queueID(now: now)
        let hostname = config.smtp.hostname
        let report = DeliveryStatusNotification(
            reportingMTA: hostname, originalSender: source.reversePath, originalQueueID: source.messageID, envelopeID: source.envelopeID,
            arrivalDate: source.receivedAt, receivedFromMTA: source.heloName.isEmpty ? nil : source.heloName, recipients: recipients,
            returnContent: source.ret?.uppercased() == "FULL" ? .full : .headers, originalContent: source.content ?? [],
            maximumReturnedSize: config.dsn.maxReturnedSize, date: now, messageID: "\(id).dsn@\(hostname)",
            boundary: "hato-dsn-\(Identifier.random(bytes: 8))")
        let message = NewMessage(id: id, reversePath: "", recipients: [source.reversePath], pool: config.routing.defaultPool,
                                 content: report.build(), heloName: hostname, clientAddress: "127.0.0.1", receivedAt: now)
        try store.commitDSN(originalID: source.messageID, recipientIDs: ids, dsn: message, now: now)
        let kind = recipients.contains { $0.action == .failed } ? "failed" : recipients.contains { $0.action == .delayed } ? "delayed" : "relayed"
        metrics.dsnQueued.inc(kind)
        log.info("DSN queued", ["id": source.messageID, "dsn": id, "kind": kind, "recipients": "\(recipients.count)"])
        onEnqueued()
    }
}
