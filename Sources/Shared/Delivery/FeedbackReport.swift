import Foundation
import SMTPCore

/// An abuse feedback report (ARF, RFC 5965): what a mailbox provider's feedback loop sends
/// back when a user presses "this is spam". A `multipart/report; report-type=feedback-report`
/// message whose second part (`message/feedback-report`) holds the machine-readable fields,
/// and whose third part is the complained-about message (`message/rfc822`) or its header
/// (`text/rfc822-headers`).
///
/// Providers often redact the complainant's address (RFC 6590): then the recipient is found
/// through the returned message — its `Message-ID`, Hato's `X-Hato-Recipient` tracking field,
/// or the queue id in Hato's `Received:` field.
public struct FeedbackReport: Sendable, Equatable {
    /// `Feedback-Type` (RFC 5965 §7.3): `abuse`, `fraud`, `virus`, `other`, `not-spam`, `auth-failure`, … (lower case).
    public var feedbackType: String
    /// `User-Agent`: the generator.
    public var userAgent: String?
    /// `Version` (1).
    public var version: String?
    /// `Original-Mail-From`: the reverse-path of the reported message, without angle brackets.
    public var originalMailFrom: String?
    /// `Original-Rcpt-To`: the complainants' addresses, when the provider did not redact them.
    public var originalRecipients: [String]
    /// `Arrival-Date` (or the obsolete `Received-Date`), read leniently (`RFC5322Date.parseLenient`).
    public var arrivalDate: Date?
    /// `Reporting-MTA`, without its `dns;` type.
    public var reportingMTA: String?
    /// `Source-IP`: the IP the reported message came from (one of ours, for our mail).
    public var sourceIP: String?
    /// `Incidents` (default 1).
    public var incidents: Int
    /// `Reported-Domain` values.
    public var reportedDomains: [String]
    /// The returned message's `Message-ID`, without angle brackets.
    public var originalMessageID: String?
    /// The returned message's `X-Hato-Recipient` tracking value (`<queue id>.<recipient id>`), if any.
    public var trackingID: String?
    /// Queue ids named by Hato's `Received:` fields of the returned message (`… (Hato) with … id ID`).
    public var queueIDs: [String]
    /// The returned message's `To:` value (a hint when the recipient was redacted elsewhere).
    public var originalTo: String?

    /// Why a message is not a usable feedback report. Such a message is logged and dropped,
    /// never bounced (a report about a report would loop).
    public enum ParseError: Error, Equatable, Sendable, CustomStringConvertible {
        /// Not `multipart/report` with `report-type=feedback-report`.
        case notAFeedbackReport(String)
        /// No `message/feedback-report` part.
        case missingReportPart
        /// The report part has no `Feedback-Type`.
        case missingFeedbackType

        public var description: String {
            switch self {
            case .notAFeedbackReport(let t): return "not a feedback report (Content-Type \(t))"
            case .missingReportPart: return "no message/feedback-report part"
            case .missingFeedbackType: return "the feedback report has no Feedback-Type"
            }
        }
    }

    /// The most octets of a report read (a report with a whole returned message is rarely over 1 MiB).
    public static let maximumSize = 4 << 20

    /// Reads a feedback report.
    /// - Parameter message: the whole message as received (header and body).
    /// - Throws: `ParseError` when it is not an RFC 5965 report with a `Feedback-Type`.
    public static func parse(_ message: [UInt8]) throws(ParseError) -> FeedbackReport {
        let entity = MIMEEntity(parsing: Array(message.prefix(maximumSize)))
        let type = entity.mediaType
        guard type == "multipart/report", entity.parameter("report-type", of: "content-type")?.lowercased() == "feedback-report" else {
            throw .notAFeedbackReport(entity.field("content-type") ?? "none")
        }
        guard let reportPart = entity.parts.first(where: { $0.mediaType == "message/feedback-report" }) else { throw .missingReportPart }
        // The report part's body is itself a block of header-like fields (RFC 5965 §3.1).
        let (fields, _) = MIMEEntity.readHeader(reportPart.decodedBody[...])
        let report = MIMEEntity(fields: fields)
        guard let feedbackType = report.field("feedback-type")?.trimmingCharacters(in: .whitespaces).lowercased(), !feedbackType.isEmpty else {
            throw .missingFeedbackType
        }
        func address(_ value: String) -> String {
            var v = value.trimmingCharacters(in: .whitespaces)
            if v.hasPrefix("<"), let end = v.firstIndex(of: ">") { v = String(v[v.index(after: v.startIndex)..<end]) }
            return v
        }
        var r = FeedbackReport(feedbackType: feedbackType, userAgent: report.field("user-agent"), version: report.field("version"),
                               originalMailFrom: report.field("original-mail-from").map(address),
                               originalRecipients: report.fieldValues("original-rcpt-to").map(address).filter { !$0.isEmpty },
                               arrivalDate: (report.field("arrival-date") ?? report.field("received-date")).flatMap { RFC5322Date.parseLenient($0) },
                               reportingMTA: report.field("reporting-mta").map { v in
                                   let parts = v.split(separator: ";", maxSplits: 1)
                                   return String(parts.count == 2 ? parts[1] : parts[0]).trimmingCharacters(in: .whitespaces)
                               },
                               sourceIP: report.field("source-ip")?.trimmingCharacters(in: .whitespaces),
                               incidents: report.field("incidents").flatMap { Int($0.trimmingCharacters(in: .whitespaces)) } ?? 1,
                               reportedDomains: report.fieldValues("reported-domain").map { $0.trimmingCharacters(in: .whitespaces).lowercased() },
                               originalMessageID: nil, trackingID: nil, queueIDs: [], originalTo: nil)
        // The returned message, or only its header.
        if let returned = entity.parts.first(where: { $0.mediaType == "message/rfc822" || $0.mediaType == "text/rfc822-headers" }) {
            let original = MIMEEntity(parsing: returned.decodedBody)
            r.originalMessageID = original.field("message-id").map(address)
            r.trackingID = original.field("x-hato-recipient")?.trimmingCharacters(in: .whitespaces)
            r.originalTo = original.field("to")
            r.queueIDs = original.fieldValues("received").compactMap(FeedbackReport.hatoQueueID)
        }
        return r
    }

    /// The queue id in a `Received:` value written by Hato: `… by HOST (Hato) with PROTO … id ID …`.
    static func hatoQueueID(_ received: String) -> String? {
        let words = received.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == ";" })
        guard words.contains("(Hato)"), let i = words.lastIndex(of: "id"), i + 1 < words.count else { return nil }
        let id = String(words[i + 1])
        return id.allSatisfy { $0.isLetter || $0.isNumber } ? id : nil
    }
}

extension MIMEEntity {
    /// An entity made of header fields only.
    init(fields: [(name: String, value: String)]) {
        self.fields = fields
        self.body = []
        self.parts = []
    }
}
