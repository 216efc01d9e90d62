import Foundation
import HatoSupport
import SMTPCore

/// The coordinator's Prometheus metrics (served at `/metrics` on `admin_listen`).
///
/// Counters are fed by the `DeliveryReporter` from the queue's event outbox; gauges
/// (queue depth, leases, node states, suppressions, webhook backlog) are computed on scrape.
public final class CoordinatorMetrics: Sendable {
    /// The registry rendered at `/metrics`.
    public let registry = MetricsRegistry()
    /// Per-minute counts of the last 24 hours for the dashboard's chart (this process only).
    public let activity = ActivityRecorder()
    /// `hato_messages_received_total{pool}`.
    public let received: Counter
    /// `hato_recipients_delivered_total{pool,sending_ip,provider}`.
    public let delivered: Counter
    /// `hato_recipients_deferred_total{pool,sending_ip,provider,category}`.
    public let deferred: Counter
    /// `hato_recipients_failed_total{pool,sending_ip,provider,category}`.
    public let failed: Counter
    /// `hato_recipients_expired_total{pool}`.
    public let expired: Counter
    /// `hato_recipients_suppressed_total{pool}`.
    public let suppressed: Counter
    /// `hato_dsn_queued_total{action}`.
    public let dsnQueued: Counter
    /// `hato_messages_expunged_total`: finished messages deleted from the queue store after
    /// `coordinator.message_retention`.
    public let messagesExpunged: Counter
    /// `hato_delivery_latency_seconds{pool}`: acceptance to delivery.
    public let latency: Histogram
    /// `hato_webhook_posts_total{url,result}` (`ok`, `failed`, `abandoned`).
    public let webhookPosts: Counter
    /// `hato_delivery_log_errors_total`.
    public let logErrors: Counter
    /// `hato_tenant_messages_total{tenant,event}` (issue 16): a tenant's messages `accepted`
    /// (SMTP or HTTP) and recipients `delivered`, `deferred`, `bounced` (failed or expired) and
    /// `suppressed`. One series per tenant and event: a relay service has hundreds of tenants,
    /// not millions; mail of no tenant is not counted here.
    public let tenantMessages: Counter
    /// `hato_complaints_total{provider}` (issue 18): complaints from feedback loops (ARF
    /// reports), counted as their `complained` events are reported (the leader's reporter).
    public let complaints: Counter
    /// `hato_feedback_reports_total{result}`: reports taken in by this coordinator's SMTP
    /// listener: `complaint`, `ignored` (not-spam, auth-failure), `malformed`.
    public let feedbackReports: Counter
    /// `hato_queue_recipients{state}`.
    public let queueDepth: Gauge
    /// `hato_queue_waiting_recipients{priority}`: recipients waiting (queued, deferred, leased,
    /// held) per priority class, `transactional` or `bulk` (issue 18).
    public let queueWaitingByPriority: Gauge
    /// `hato_leases{node}`.
    public let leases: Gauge
    /// `hato_node_up{node}`: 1 while the node is connected.
    public let nodeUp: Gauge
    /// `hato_node_state{node,state}`: 1 for the node's current state.
    public let nodeState: Gauge
    /// `hato_node_sending_ips{node}`: sending IPs the node owns.
    public let nodeIPs: Gauge
    /// `hato_suppressions`: unexpired suppression entries.
    public let suppressions: Gauge
    /// `hato_webhook_outbox`: events waiting to be POSTed.
    public let webhookOutbox: Gauge
    /// `hato_events_pending`: queue events not yet reported.
    public let eventsPending: Gauge
    /// `hato_queue_free_bytes`: free octets of the queue's file system (`statvfs` f_bavail × f_frsize),
    /// set by the submission server's headroom check (`smtp.queue_min_free`).
    public let queueFreeBytes: Gauge
    /// `hato_smtp_refusals_total{reason}`: submissions refused to protect the queue or the relay:
    /// `queue_min_free` (`452 4.3.1` at MAIL), `storage_full` (`452 4.3.1` after DATA, `SQLITE_FULL`),
    /// `postmaster_rate_limit` (`452 4.7.1` at RCPT), `max_content_memory` (`452 4.3.1` at MAIL, or
    /// at the end of a message whose content did not fit `smtp.max_content_memory`).
    public let smtpRefusals: Counter
    /// `hato_smtp_sessions_total`: inbound SMTP sessions admitted.
    public let smtpSessions: Counter
    /// `hato_smtp_sessions_open`: inbound SMTP sessions open now.
    public let smtpSessionsOpen: Gauge
    /// `hato_smtp_content_memory_bytes`: octets of message content held by sessions receiving it (at most `smtp.max_content_memory`).
    public let smtpContentMemory: Gauge
    /// `hato_smtp_replies_total{code}`: replies the submission server sent, by reply code (RFC 5321 §4.2).
    public let smtpReplies: Counter
    /// `hato_tls_rpt_sessions_total{policy_type,result}`: outbound TLS sessions under an MTA-STS
    /// (`sts`) or DANE (`tlsa`) policy the nodes reported, by `success` or RFC 8460 result type.
    public let tlsReportSessions: Counter
    /// `hato_ip_suspended{ip,provider,reason}`: 1 per (sending IP, provider) pair held back
    /// (`reason`: `suspend`, `throttle`).
    public let ipSuspended: Gauge
    /// `hato_paused{kind,name}`: 1 per operator pause (provider, pool, ip).
    public let paused: Gauge
    /// `hato_warmup_cap{ip}`: today's warm-up cap of a warming IP (recipients).
    public let warmupCap: Gauge
    /// `hato_warmup_sent{ip}`: recipients leased today from a warming IP.
    public let warmupSent: Gauge
    /// `hato_leader`: 1 while this coordinator leads, else 0 (issue 15).
    public let leader: Gauge
    /// `hato_leadership_term`: the highest leadership term this coordinator has seen.
    public let leadershipTerm: Gauge
    /// `hato_leases_granted`: leases this coordinator process has granted (recorded and sent)
    /// since it started; a stale leader's figure stops growing.
    public let leasesGranted: Gauge
    /// `hato_leases_granted_at_queueing`: of those, leases planned from new mail's rows while
    /// its commit ran (`Scheduler.leaseFresh`), without a due query: at a light load most are.
    public let leasesGrantedAtQueueing: Gauge

    /// Latency buckets in seconds: 100 ms to 1 day.
    public static let latencyBuckets: [Double] = [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14_400, 86_400]

    /// Registers every family (no samples yet).
    public init() {
        let r = registry
        received = r.counter("hato_messages_received_total", help: "Messages accepted and queued.", labels: ["pool"])
        delivered = r.counter("hato_recipients_delivered_total", help: "Recipients delivered (remote 2xx).", labels: ["pool", "sending_ip", "provider"])
        deferred = r.counter("hato_recipients_deferred_total", help: "Recipient deferrals (4xx, timeouts).",
                             labels: ["pool", "sending_ip", "provider", "category"])
        failed = r.counter("hato_recipients_failed_total", help: "Recipients failed permanently (5xx).",
                           labels: ["pool", "sending_ip", "provider", "category"])
        expired = r.counter("hato_recipients_expired_total", help: "Recipients expired after retry.max_age.", labels: ["pool"])
        suppressed = r.counter("hato_recipients_suppressed_total", help: "Recipients not attempted: on the suppression list.", labels: ["pool"])
        dsnQueued = r.counter("hato_dsn_queued_total", help: "Delivery status notifications queued, by report kind.", labels: ["action"])
        messagesExpunged = r.counter("hato_messages_expunged_total", help: "Finished messages deleted from the queue store after coordinator.message_retention.")
        latency = r.histogram("hato_delivery_latency_seconds", help: "Time from acceptance to delivery.", labels: ["pool"], buckets: Self.latencyBuckets)
        webhookPosts = r.counter("hato_webhook_posts_total", help: "Webhook POSTs by result.", labels: ["url", "result"])
        logErrors = r.counter("hato_delivery_log_errors_total", help: "Delivery log write failures.")
        tenantMessages = r.counter("hato_tenant_messages_total", help: "A tenant's messages accepted and recipients delivered, deferred, bounced, suppressed.",
                                   labels: ["tenant", "event"])
        complaints = r.counter("hato_complaints_total", help: "Complaints from feedback loops (ARF reports), by provider.", labels: ["provider"])
        feedbackReports = r.counter("hato_feedback_reports_total", help: "Feedback reports received: complaint, ignored, malformed.",
                                    labels: ["result"])
        queueDepth = r.gauge("hato_queue_recipients", help: "Recipients in the queue by state.", labels: ["state"])
        queueWaitingByPriority = r.gauge("hato_queue_waiting_recipients", help: "Recipients waiting (queued, deferred, leased, held) by priority class.",
                                         labels: ["priority"])
        leases = r.gauge("hato_leases", help: "Leases in flight by node.", labels: ["node"])
        nodeUp = r.gauge("hato_node_up", help: "1 while the node is connected, else 0.", labels: ["node"])
        nodeState = r.gauge("hato_node_state", help: "1 for the node's current state (joining, active, draining, drained, down, left).",
                            labels: ["node", "state"])
        nodeIPs = r.gauge("hato_node_sending_ips", help: "Sending IPs owned by the node.", labels: ["node"])
        suppressions = r.gauge("hato_suppressions", help: "Unexpired suppression list entries.")
        webhookOutbox = r.gauge("hato_webhook_outbox", help: "Webhook events waiting to be delivered.")
        eventsPending = r.gauge("hato_events_pending", help: "Queue events not yet reported.")
        queueFreeBytes = r.gauge("hato_queue_free_bytes", help: "Free bytes of the queue's file system (statvfs f_bavail x f_frsize).")
        smtpRefusals = r.counter("hato_smtp_refusals_total", help: "SMTP submissions refused to protect the queue or the relay, by reason.",
                                 labels: ["reason"])
        smtpSessions = r.counter("hato_smtp_sessions_total", help: "Inbound SMTP sessions admitted.")
        smtpSessionsOpen = r.gauge("hato_smtp_sessions_open", help: "Inbound SMTP sessions open now.")
        smtpContentMemory = r.gauge("hato_smtp_content_memory_bytes", help: "Octets of message content held in memory by sessions receiving it (limit smtp.max_content_memory).")
        smtpReplies = r.counter("hato_smtp_replies_total", help: "Replies of the submission server by reply code.", labels: ["code"])
        tlsReportSessions = r.counter("hato_tls_rpt_sessions_total", help: "Outbound TLS sessions under an MTA-STS or DANE policy, by result (RFC 8460).",
                                      labels: ["policy_type", "result"])
        ipSuspended = r.gauge("hato_ip_suspended", help: "1 per (sending IP, provider) held back by a backoff.", labels: ["ip", "provider", "reason"])
        paused = r.gauge("hato_paused", help: "1 per operator pause of a provider, pool or sending IP.", labels: ["kind", "name"])
        warmupCap = r.gauge("hato_warmup_cap", help: "Today's warm-up cap of a warming sending IP (recipients).", labels: ["ip"])
        warmupSent = r.gauge("hato_warmup_sent", help: "Recipients leased today from a warming sending IP.", labels: ["ip"])
        leader = r.gauge("hato_leader", help: "1 while this coordinator leads the cluster, else 0.")
        leadershipTerm = r.gauge("hato_leadership_term", help: "The highest leadership term this coordinator has seen.")
        leasesGranted = r.gauge("hato_leases_granted", help: "Leases this coordinator process has granted since it started.")
        leasesGrantedAtQueueing = r.gauge("hato_leases_granted_at_queueing",
                                          help: "Leases granted from new mail's rows while its commit ran, without a due query, since the process started.")
    }

    /// What the cluster hub shows the metrics at scrape time.
    public struct ClusterGauges: Sendable {
        /// Active backoffs: sending IP, provider label, action.
        public var backoffs: [(ip: String, provider: String, reason: String)] = []
        /// Operator pauses.
        public var pauses: [PauseTarget] = []
        /// Warming IPs: today's cap and recipients leased so far.
        public var warmup: [(ip: String, cap: Int, sent: Int)] = []
        /// Whether this coordinator leads now.
        public var leader = false
        /// The highest leadership term seen.
        public var term: Int64 = 0
        /// Leases granted by this process since it started.
        public var leasesGranted = 0
        /// Of those, leases planned from new mail's inserted rows (`Scheduler.leaseFresh`).
        public var leasesGrantedAtQueueing = 0
        public init() {}
    }

    /// Registers the scrape-time collector for the gauges.
    /// - Parameters:
    ///   - store: the queue.
    ///   - nodes: the node statuses (the cluster hub's view), or nil when not running.
    ///   - clock: time source for suppression expiry.
    ///   - cluster: backoffs, pauses and warm-up counts (the hub's view), or nil.
    public func collect(from store: any QueueStore, nodes: (@Sendable () throws -> [NodeStatus])?, clock: any WallClock,
                        cluster: (@Sendable () -> ClusterGauges)? = nil) {
        registry.addCollector { [self] in
            if let g = cluster?() {
                ipSuspended.reset(); paused.reset(); warmupCap.reset(); warmupSent.reset()
                for b in g.backoffs { ipSuspended.set(1, labels: [b.ip, b.provider, b.reason]) }
                for p in g.pauses { paused.set(1, labels: [p.kind.rawValue, p.name]) }
                for w in g.warmup {
                    warmupCap.set(Double(w.cap), labels: [w.ip])
                    warmupSent.set(Double(w.sent), labels: [w.ip])
                }
                leader.set(g.leader ? 1 : 0)
                leadershipTerm.set(Double(g.term))
                leasesGranted.set(Double(g.leasesGranted))
                leasesGrantedAtQueueing.set(Double(g.leasesGrantedAtQueueing))
            }
            if let counts = try? store.countsByState() {
                for (state, n) in counts { queueDepth.set(Double(n), labels: [state.rawValue]) }
            }
            if let groups = try? store.waitingSummary(by: .priority, providerLabel: { $0 }, now: clock.now()) {
                for p in MessagePriority.allCases {
                    queueWaitingByPriority.set(Double(groups.first { $0.key == p.rawValue }?.total ?? 0), labels: [p.rawValue])
                }
            }
            if let nodes, let list = try? nodes() {
                leases.reset(); nodeUp.reset(); nodeIPs.reset(); nodeState.reset()
                for n in list {
                    let state = String(describing: n.state)
                    leases.set(Double(n.leasesInFlight), labels: [n.id])
                    nodeUp.set(state == "down" || state == "left" || state == "unknown" ? 0 : 1, labels: [n.id])
                    nodeState.set(1, labels: [n.id, state])
                    nodeIPs.set(Double(n.ips.count), labels: [n.id])
                }
            }
            if let n = try? store.suppressionCount(now: clock.now()) { suppressions.set(Double(n)) }
            if let n = try? store.webhookOutboxCount() { webhookOutbox.set(Double(n)) }
            if let n = try? store.pendingEventCount() { eventsPending.set(Double(n)) }
        }
    }
}
