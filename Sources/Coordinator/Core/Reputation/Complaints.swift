import Foundation
import HatoConfig
import HatoDelivery
import SMTPCore

/// One complaint: a mailbox provider's feedback loop reported a message as spam (ARF,
/// RFC 5965), as stored in the `complaints` table of both stores.
public struct Complaint: Sendable, Equatable, Codable {
    /// When the report was taken in (seconds since 1970).
    public var at: Double
    /// The sending IP the message left from (`Source-IP`, else the attempt's recorded IP); `""` when unknown.
    public var ip: String
    /// The mailbox provider (`gmail`, `yahoo`, `microsoft`, … as `MailboxProvider` names it; `other`, `unknown`).
    public var provider: String
    /// The domain of the message's reverse-path (else of `Original-Mail-From`); `""` when unknown.
    public var senderDomain: String
    /// The message's tenant (issue 16), nil for mail of no tenant or an unmatched message.
    public var tenant: String?
    /// The complained-about recipient, lower-cased; nil when the report did not let it be found.
    public var recipient: String?
    /// The original message's queue id, nil when not matched.
    public var queueID: String?
    /// The recipient's row id, nil when not matched.
    public var recipientID: Int64?
    /// `Feedback-Type` (`abuse`, `fraud`, `virus`, `other`).
    public var feedbackType: String
    /// `Reporting-MTA`, if given.
    public var reportingMTA: String?

    /// A complaint from its fields (see the properties).
    public init(at: Double, ip: String, provider: String, senderDomain: String, tenant: String?, recipient: String?, queueID: String?,
                recipientID: Int64?, feedbackType: String, reportingMTA: String?) {
        self.at = at; self.ip = ip; self.provider = provider; self.senderDomain = senderDomain; self.tenant = tenant
        self.recipient = recipient?.lowercased(); self.queueID = queueID; self.recipientID = recipientID
        self.feedbackType = feedbackType; self.reportingMTA = reportingMTA
    }
}

/// Complaints per (sending IP, provider) since a time: what reputation rules read.
public struct ComplaintCount: Sendable, Equatable, Codable {
    /// The sending IP (`""` when unknown).
    public var ip: String
    /// The provider.
    public var provider: String
    /// Complaints.
    public var count: Int

    /// A count from its fields.
    public init(ip: String, provider: String, count: Int) { self.ip = ip; self.provider = provider; self.count = count }
}

/// Complaints per (sending IP, provider, sender domain, tenant) since a time: the admin API's
/// aggregations are sums over these.
public struct ComplaintGroup: Sendable, Equatable, Codable {
    /// The sending IP (`""` when unknown).
    public var ip: String
    /// The provider.
    public var provider: String
    /// The sender domain (`""` when unknown).
    public var senderDomain: String
    /// The tenant, nil for none.
    public var tenant: String?
    /// Complaints.
    public var count: Int

    /// A group from its fields.
    public init(ip: String, provider: String, senderDomain: String, tenant: String?, count: Int) {
        self.ip = ip; self.provider = provider; self.senderDomain = senderDomain; self.tenant = tenant; self.count = count
    }
}

/// What the store knows about a message a report is about.
public struct ComplaintOriginal: Sendable, Equatable {
    /// One recipient of the message.
    public struct Recipient: Sendable, Equatable {
        /// Its row id.
        public var id: Int64
        /// Its forward-path.
        public var address: String
        /// The sending IP of its last attempt, if any.
        public var ip: String?
        /// The MX host of its last attempt, if any.
        public var mx: String?

        /// A recipient from its fields.
        public init(id: Int64, address: String, ip: String?, mx: String?) { self.id = id; self.address = address; self.ip = ip; self.mx = mx }
    }

    /// The queue id.
    public var queueID: String
    /// The reverse-path (`""` for `<>`).
    public var reversePath: String
    /// The tenant, nil for none.
    public var tenant: String?
    /// Its recipients, by id.
    public var recipients: [Recipient]

    /// An original from its fields.
    public init(queueID: String, reversePath: String, tenant: String?, recipients: [Recipient]) {
        self.queueID = queueID; self.reversePath = reversePath; self.tenant = tenant; self.recipients = recipients
    }
}

/// The complaints table of a store (SQLite and PostgreSQL alike).
public protocol ComplaintStore {
    /// The message with queue id `queueID` and its recipients, nil when unknown (never queued
    /// here, or removed).
    /// - Throws: the store's error.
    func complaintOriginal(queueID: String) throws -> ComplaintOriginal?

    /// Records a complaint in one durable transaction: the `complaints` row, the suppression
    /// entry (replacing one of the same address and scope), and a `complained` event for the
    /// delivery log and webhooks (when the reporting tables exist; the leading coordinator's
    /// reporter sends it out). A second complaint about the same recipient of the same message
    /// (a replayed or repeated report) writes nothing: one delivery is one complaint at most.
    /// - Returns: whether it was recorded (false: a duplicate).
    /// - Throws: the store's error; nothing is written then.
    @discardableResult
    func recordComplaint(_ complaint: Complaint, suppression: SuppressionEntry?) throws -> Bool

    /// Complaints per (sending IP, provider) at or after `since`, by IP then provider.
    /// - Throws: the store's error.
    func complaintCounts(since: Date) throws -> [ComplaintCount]

    /// Complaints per (sending IP, provider, sender domain, tenant) at or after `since`.
    /// - Throws: the store's error.
    func complaintGroups(since: Date) throws -> [ComplaintGroup]

    /// A tenant's complaints at or after `since`: their times (seconds since 1970), oldest
    /// first, at most `limit`.
    /// - Throws: the store's error.
    func complaintTimes(tenant: String, since: Date, limit: Int) throws -> [Double]
}

/// How an abuse report becomes a complaint: which message and recipient it is about, which IP,
/// provider, sender domain and tenant it counts against, and what is suppressed. Pure.
///
/// The returned message is matched by (first that names a known message): the
/// `X-Hato-Recipient: <queue id>.<recipient id>` field nodes add, the queue id in Hato's
/// `Received:` field, or a Message-ID Hato generated (`<queue id>@host`). The recipient is the
/// tracked recipient id; else the `Original-Rcpt-To` (or the returned `To:`) address when it is
/// one of the message's recipients; else the message's only recipient. A redacted
/// `Original-Rcpt-To` (RFC 6590) is used only when it is one of them; without a matched message
/// an unredacted `Original-Rcpt-To` is still suppressed.
public enum ComplaintIntake {
    /// Feedback types that are no complaint about unwanted mail: a `not-spam` report (RFC 6430)
    /// and DMARC/SPF/DKIM failure reports (`auth-failure`, RFC 6591).
    public static let notComplaints: Set<String> = ["not-spam", "auth-failure"]

    /// What one report decided.
    public struct Decision: Sendable, Equatable {
        /// The complaint to store.
        public var complaint: Complaint
        /// The suppression entry to add, nil when no recipient was found.
        public var suppression: SuppressionEntry?
        /// How the message was matched: `tracking`, `received`, `message-id`, or `none`.
        public var matchedBy: String
        /// How the recipient was found: `tracking`, `original-rcpt-to`, `to`, `only-recipient`, or `none`.
        public var recipientBy: String
    }

    /// Queue ids to look up, in order of trust: the tracking field's, the `Received:` ones, the
    /// Message-ID's local part (when it looks like a queue id).
    public static func candidateQueueIDs(_ report: FeedbackReport) -> [String] {
        var out: [String] = []
        func add(_ id: String) { if isQueueIDLike(id), !out.contains(id) { out.append(id) } }
        if let t = report.trackingID { add(String(t.split(separator: ".", maxSplits: 1).first ?? "")) }
        for q in report.queueIDs { add(q) }
        if let mid = report.originalMessageID, let at = mid.firstIndex(of: "@") { add(String(mid[..<at])) }
        return out
    }

    /// How the original was found, given the candidates of `candidateQueueIDs` in order.
    public static func matchSource(_ report: FeedbackReport, queueID: String) -> String {
        if let t = report.trackingID, t.split(separator: ".", maxSplits: 1).first.map(String.init) == queueID { return "tracking" }
        if report.queueIDs.contains(queueID) { return "received" }
        return "message-id"
    }

    /// Whether `s` can be a queue id (letters and digits, 8–40 of them): nothing else is looked up.
    static func isQueueIDLike(_ s: String) -> Bool {
        (8...40).contains(s.count) && s.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber) }
    }

    /// Decides what a report does.
    /// - Parameters:
    ///   - report: the parsed report (its feedback type must be a complaint: not in `notComplaints`).
    ///   - original: the matched message, nil when none was found.
    ///   - matchedBy: how `original` was found (`matchSource`), ignored without it.
    ///   - sendingIPs: the configured sending IPs: a `Source-IP` among them stands in when the delivery (its recorded IP) is not known.
    ///   - providerName: the provider label of an MX host (`ClusterConfig.providerName(forMXHost:)`).
    ///   - suppression: `suppression:` (scope and expiry of the entry).
    ///   - now: the current time.
    public static func decide(_ report: FeedbackReport, original: ComplaintOriginal?, matchedBy: String, sendingIPs: Set<String>,
                              providerName: (String?) -> String, suppression: SuppressionSettings, now: Date) -> Decision {
        let reported = report.originalRecipients.map { $0.lowercased() }
        let toAddresses = (report.originalTo ?? "").split(whereSeparator: { ",; \t<>".contains($0) })
            .map { String($0).lowercased() }.filter { $0.contains("@") }
        var recipient: (address: String, row: ComplaintOriginal.Recipient?)?
        var recipientBy = "none"
        if let original {
            let rows = original.recipients
            if let t = report.trackingID, let dot = t.firstIndex(of: "."), let rid = Int64(t[t.index(after: dot)...]),
               let row = rows.first(where: { $0.id == rid }) {
                recipient = (row.address, row); recipientBy = "tracking"
            } else if let row = rows.first(where: { reported.contains($0.address.lowercased()) }) {
                recipient = (row.address, row); recipientBy = "original-rcpt-to"
            } else if let row = rows.first(where: { toAddresses.contains($0.address.lowercased()) }) {
                recipient = (row.address, row); recipientBy = "to"
            } else if rows.count == 1 {
                recipient = (rows[0].address, rows[0]); recipientBy = "only-recipient"
            }
        } else if reported.count == 1, let address = reported.first, (try? Mailbox(parsing: address)) != nil {
            recipient = (address, nil); recipientBy = "original-rcpt-to"
        }
        let row = recipient?.row
        // The IP Hato recorded for the delivery is authoritative; a report's Source-IP (which
        // anyone writing a report chooses) only stands in when the delivery is not known.
        let ip: String
        if let recorded = row?.ip, !recorded.isEmpty {
            ip = recorded
        } else if let source = report.sourceIP, sendingIPs.contains(source) {
            ip = source
        } else {
            ip = report.sourceIP ?? ""
        }
        let provider: String
        if let mx = row?.mx {
            provider = providerName(mx)
        } else if let address = recipient?.address, let known = MailboxProvider.name(forDomain: Queue.domain(of: address)) {
            provider = known
        } else {
            provider = providerName(report.reportingMTA)
        }
        var senderDomain = original.map { Queue.senderDomain(of: $0.reversePath) } ?? ""
        if senderDomain.isEmpty, let from = report.originalMailFrom { senderDomain = Queue.domain(of: from) }
        senderDomain = senderDomain.lowercased()
        let complaint = Complaint(at: now.timeIntervalSince1970, ip: ip, provider: provider, senderDomain: senderDomain,
                                  tenant: original?.tenant, recipient: recipient?.address, queueID: original?.queueID,
                                  recipientID: row?.id, feedbackType: report.feedbackType, reportingMTA: report.reportingMTA)
        // Only a recipient of a message Hato sent is suppressed: anyone can send a report, and a
        // report about a message that is not ours must not suppress an address of its choosing.
        let entry = row.flatMap { _ in recipient }.map { r in
            SuppressionEntry(address: r.address, scope: suppression.scope == .global || senderDomain.isEmpty ? nil : senderDomain,
                             category: "complaint",
                             reason: "complaint (\(report.feedbackType)\(report.reportingMTA.map { " reported by " + $0 } ?? ""))",
                             source: "complaint", messageID: original?.queueID, createdAt: now.timeIntervalSince1970,
                             expiresAt: suppression.expireAfter.map { now.timeIntervalSince1970 + $0 })
        }
        return Decision(complaint: complaint, suppression: entry, matchedBy: original == nil ? "none" : matchedBy, recipientBy: recipientBy)
    }
}

/// The admin API's answer to `GET /v1/complaints?since=24h`: complaints since a time, in total
/// and summed per sending IP, provider, sender domain, tenant, and (IP, provider) pair.
public struct ComplaintSummary: Sendable, Equatable, Codable {
    /// One key's count.
    public struct Entry: Sendable, Equatable, Codable {
        /// The IP, provider, domain or tenant (`""` when unknown; `""` is mail of no tenant in `byTenant`).
        public var key: String
        /// Complaints.
        public var count: Int
    }

    /// The start of the period (seconds since 1970).
    public var since: Double
    /// Complaints in the period.
    public var total: Int
    /// Per sending IP, most first (then by key).
    public var byIp: [Entry]
    /// Per provider.
    public var byProvider: [Entry]
    /// Per sender domain.
    public var bySenderDomain: [Entry]
    /// Per tenant.
    public var byTenant: [Entry]
    /// Per (sending IP, provider): what reputation rules read (`ComplaintStore.complaintCounts`).
    public var byIpProvider: [ComplaintCount]

    /// Sums `groups` (from `ComplaintStore.complaintGroups(since:)`).
    /// - Parameters:
    ///   - groups: the stored groups.
    ///   - since: the period's start.
    public init(groups: [ComplaintGroup], since: Date) {
        func sum(_ key: (ComplaintGroup) -> String) -> [Entry] {
            var totals: [String: Int] = [:]
            for g in groups { totals[key(g), default: 0] += g.count }
            return totals.map { Entry(key: $0.key, count: $0.value) }.sorted { ($0.count, $1.key) > ($1.count, $0.key) }
        }
        self.since = since.timeIntervalSince1970
        total = groups.reduce(0) { $0 + $1.count }
        byIp = sum(\.ip)
        byProvider = sum(\.provider)
        bySenderDomain = sum(\.senderDomain)
        byTenant = sum { $0.tenant ?? "" }
        var pairs: [String: ComplaintCount] = [:]
        for g in groups { pairs["\(g.ip)\u{0}\(g.provider)", default: ComplaintCount(ip: g.ip, provider: g.provider, count: 0)].count += g.count }
        byIpProvider = pairs.values.sorted { ($0.ip, $0.provider) < ($1.ip, $1.provider) }
    }
}
