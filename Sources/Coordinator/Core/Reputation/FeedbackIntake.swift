import Foundation
import HatoConfig
import HatoDelivery
import HatoSupport

/// Takes in abuse feedback reports (ARF, RFC 5965) that reached a `reputation.feedback_addresses`
/// address: parses the report, finds the message and recipient it is about (`ComplaintIntake`),
/// and records the complaint, the recipient's suppression and the `complained` event in one
/// store transaction before the SMTP listener answers `250`.
///
/// Nothing is ever bounced: a malformed report, or one that is no complaint (`not-spam`,
/// `auth-failure`), is logged without its content and dropped with `250` — a bounce to a
/// feedback loop's (usually null) sender would at best be discarded, at worst loop (a report
/// about a report). Only a store that cannot write makes the client retry (`451 4.3.0`), so
/// that no accepted complaint is lost.
///
/// Any coordinator may take a report in: the store is shared; with several coordinators the
/// leader's reporter sends the event out (delivery log, webhooks, metrics).
public final class FeedbackIntake: Sendable {
    private let store: any QueueStore
    private let config: Locked<ClusterConfig>
    private let metrics: CoordinatorMetrics?
    private let clock: any WallClock
    private let log = Logger(label: "coordinator.feedback")

    /// What one report came to.
    public enum Outcome: Sendable, Equatable {
        /// A complaint was recorded (with how the message and the recipient were found).
        case complaint(ComplaintIntake.Decision)
        /// A valid report that is no complaint (`not-spam`, `auth-failure`): nothing recorded.
        case ignored(feedbackType: String)
        /// Not a feedback report: nothing recorded.
        case malformed(String)
    }

    /// - Parameters:
    ///   - config: the configuration (sending IPs, shaping providers, `suppression:`).
    ///   - store: where complaints and suppressions are written.
    ///   - metrics: where `hato_feedback_reports_total` is counted (nil: nowhere).
    ///   - clock: time source.
    public init(config: ClusterConfig, store: any QueueStore, metrics: CoordinatorMetrics? = nil, clock: any WallClock = SystemClock()) {
        self.store = store; self.config = Locked(config); self.metrics = metrics; self.clock = clock
    }

    /// Applies a reloaded configuration from the next report on.
    public func apply(_ config: ClusterConfig) { self.config.withLock { $0 = config } }

    /// Consumes one report.
    /// - Parameters:
    ///   - content: the whole message as received.
    ///   - client: the sending client's address (for the log).
    /// - Returns: what it came to.
    /// - Throws: the store's error when the complaint cannot be recorded (the client retries).
    @discardableResult
    public func consume(_ content: [UInt8], client: String) throws -> Outcome {
        let report: FeedbackReport
        do {
            report = try FeedbackReport.parse(content)
        } catch {
            metrics?.feedbackReports.inc("malformed")
            log.warning("feedback report dropped: malformed", ["client": client, "size": "\(content.count)", "reason": error.description])
            return .malformed(error.description)
        }
        if ComplaintIntake.notComplaints.contains(report.feedbackType) {
            metrics?.feedbackReports.inc("ignored")
            log.info("feedback report ignored: no complaint", ["client": client, "feedback_type": report.feedbackType,
                                                                "reporting_mta": report.reportingMTA ?? ""])
            return .ignored(feedbackType: report.feedbackType)
        }
        let config = self.config.snapshot
        var original: ComplaintOriginal?
        var matchedBy = "none"
        for id in ComplaintIntake.candidateQueueIDs(report) {
            if let found = try store.complaintOriginal(queueID: id) {
                original = found
                matchedBy = ComplaintIntake.matchSource(report, queueID: id)
                break
            }
        }
        let now = clock.now()
        let decision = ComplaintIntake.decide(report, original: original, matchedBy: matchedBy, sendingIPs: Set(config.ips.map(\.address)),
                                              providerName: { config.providerName(forMXHost: $0) }, suppression: config.suppression, now: now)
        guard try store.recordComplaint(decision.complaint, suppression: decision.suppression) else {
            metrics?.feedbackReports.inc("duplicate")
            log.info("feedback report ignored: this recipient's complaint about this message is recorded already",
                     ["client": client, "id": decision.complaint.queueID ?? "", "reporting_mta": report.reportingMTA ?? ""])
            return .ignored(feedbackType: report.feedbackType)
        }
        metrics?.feedbackReports.inc("complaint")
        let c = decision.complaint
        var fields = ["client": client, "feedback_type": c.feedbackType, "ip": c.ip, "provider": c.provider, "sender_domain": c.senderDomain,
                      "matched_by": decision.matchedBy, "recipient_by": decision.recipientBy]
        if let id = c.queueID { fields["id"] = id }
        if let t = c.tenant { fields["tenant"] = t }
        if let m = c.reportingMTA { fields["reporting_mta"] = m }
        if decision.suppression == nil {
            log.warning("complaint recorded; no recipient found to suppress", fields)
        } else {
            fields["scope"] = decision.suppression?.scope ?? "global"
            log.info("complaint recorded; recipient suppressed", fields)
        }
        return .complaint(decision)
    }
}
