import Foundation
import HatoCrypto
import SMTPCore

/// RFC 3461 §4 `xtext`: printable ASCII except `+` and `=` as is, anything else as `+XX`.
public enum XText {
    /// Decodes `+XX` escapes; nil when an escape is malformed (RFC 3461 §4: two upper-case hex digits).
    public static func decode(_ text: String) -> String? {
        var out: [UInt8] = []
        let b = Array(text.utf8)
        var i = 0
        while i < b.count {
            if b[i] == UInt8(ascii: "+") {
                guard i + 2 < b.count, let v = Hex.decode(String(decoding: b[(i + 1)...(i + 2)], as: UTF8.self))?.first else { return nil }
                out.append(v); i += 3
            } else {
                out.append(b[i]); i += 1
            }
        }
        return String(bytes: out, encoding: .utf8)
    }

    /// Encodes every octet outside `!`…`~` (and `+`, `=`) as `+XX`.
    public static func encode(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            if byte >= 0x21 && byte <= 0x7E && byte != UInt8(ascii: "+") && byte != UInt8(ascii: "=") {
                out.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                out += "+" + Hex.encode([byte]).uppercased()
            }
        }
        return out
    }
}

/// A delivery status notification (RFC 3464) for one message, built as a complete
/// RFC 5322 message: `multipart/report; report-type=delivery-status` (RFC 6522) with a
/// human-readable part, the `message/delivery-status` part and the returned original
/// headers (`text/rfc822-headers`) or message (`message/rfc822`, when RET=FULL, RFC 3461 §4.3).
///
/// When an address or the returned headers need UTF-8, the report uses RFC 6533's
/// `message/global-delivery-status`, `message/global-headers` / `message/global`
/// and the `utf-8` address type.
///
/// `build()` is a pure function of the value: no clock, no randomness (the caller passes
/// the date, the Message-ID and the boundary).
public struct DeliveryStatusNotification: Sendable {
    /// RFC 3464 §2.3.3 `Action`.
    public enum Action: String, Sendable, Codable {
        case failed, delayed, delivered, relayed, expanded
    }

    /// What RET asked to return (RFC 3461 §4.3); headers only when absent.
    public enum Return: String, Sendable {
        case headers = "HDRS", full = "FULL"
    }

    /// One recipient's per-recipient fields (RFC 3464 §2.3).
    public struct Recipient: Sendable, Equatable {
        /// The forward-path the status is about (`Final-Recipient`, §2.3.2).
        public var finalRecipient: String
        /// The ORCPT parameter as received: `addr-type;xtext` (RFC 3461 §4.2), or nil.
        public var originalRecipient: String?
        /// `Action` (§2.3.3).
        public var action: Action
        /// `Status`: an RFC 3463 code such as `5.1.1` (§2.3.4).
        public var status: EnhancedStatusCode
        /// The MX host that gave the reply, if any (`Remote-MTA: dns; host`, §2.3.5).
        public var remoteMTA: String?
        /// The remote reply, e.g. `550 5.1.1 no such user` (`Diagnostic-Code: smtp; …`, §2.3.6), or nil.
        public var diagnostic: String?
        /// The diagnostic type: `smtp` for a remote SMTP reply, `X-Hato` for a locally generated one.
        public var diagnosticType: String
        /// When the last attempt was made (§2.3.7), or nil.
        public var lastAttempt: Date?
        /// For `delayed`: until when delivery is retried (§2.3.9), or nil.
        public var willRetryUntil: Date?

        /// Creates a recipient entry.
        public init(finalRecipient: String, originalRecipient: String? = nil, action: Action, status: EnhancedStatusCode, remoteMTA: String? = nil,
                    diagnostic: String? = nil, diagnosticType: String = "smtp", lastAttempt: Date? = nil, willRetryUntil: Date? = nil) {
            self.finalRecipient = finalRecipient; self.originalRecipient = originalRecipient; self.action = action; self.status = status
            self.remoteMTA = remoteMTA; self.diagnostic = diagnostic; self.diagnosticType = diagnosticType
            self.lastAttempt = lastAttempt; self.willRetryUntil = willRetryUntil
        }
    }

    /// The reporting MTA's host name (`Reporting-MTA: dns; …`, From: `MAILER-DAEMON@…`).
    public var reportingMTA: String
    /// The original message's reverse-path: the DSN's `To:` (and envelope recipient).
    public var originalSender: String
    /// The original queue id (`X-Hato-Queue-ID`, RFC 3464 §2.2.2 extension field).
    public var originalQueueID: String
    /// The ENVID parameter as received (xtext), or nil (`Original-Envelope-Id`, §2.2.1).
    public var envelopeID: String?
    /// When the original was accepted (`Arrival-Date`, §2.2.5).
    public var arrivalDate: Date
    /// The client that submitted it, e.g. its HELO name (`Received-From-MTA: dns; …`, §2.2.4), or nil.
    public var receivedFromMTA: String?
    /// The recipients reported on (at least one).
    public var recipients: [Recipient]
    /// RET: what of the original to return.
    public var returnContent: Return
    /// The original content (header and body, CRLF line endings).
    public var originalContent: [UInt8]
    /// Above this size the full original is not returned, only its header (octets).
    public var maximumReturnedSize: Int
    /// The DSN's `Date:`.
    public var date: Date
    /// The DSN's Message-ID, without angle brackets.
    public var messageID: String
    /// The MIME boundary (must not occur in the content; the builder checks and extends it).
    public var boundary: String

    /// Creates a notification; see the properties.
    public init(reportingMTA: String, originalSender: String, originalQueueID: String, envelopeID: String? = nil, arrivalDate: Date,
                receivedFromMTA: String? = nil, recipients: [Recipient], returnContent: Return = .headers, originalContent: [UInt8],
                maximumReturnedSize: Int = 10 << 20, date: Date, messageID: String, boundary: String) {
        self.reportingMTA = reportingMTA; self.originalSender = originalSender; self.originalQueueID = originalQueueID
        self.envelopeID = envelopeID; self.arrivalDate = arrivalDate; self.receivedFromMTA = receivedFromMTA
        self.recipients = recipients; self.returnContent = returnContent; self.originalContent = originalContent
        self.maximumReturnedSize = maximumReturnedSize; self.date = date; self.messageID = messageID; self.boundary = boundary
    }

    /// Whether RFC 6533 (UTF-8) report types are needed: a non-ASCII address or returned header.
    public var needsUTF8: Bool {
        let addresses = [originalSender] + recipients.flatMap { [$0.finalRecipient, $0.originalRecipient.flatMap(XText.decode) ?? ""] }
        if addresses.contains(where: { $0.utf8.contains { $0 >= 0x80 } }) { return true }
        return Self.header(of: originalContent).contains { $0 >= 0x80 }
    }

    /// The kind of report, for the subject and the human-readable text.
    private var kind: Action {
        if recipients.contains(where: { $0.action == .failed }) { return .failed }
        if recipients.contains(where: { $0.action == .delayed }) { return .delayed }
        return .delivered
    }

    /// The notification as a complete message (CRLF line endings), ready to enqueue from `<>`.
    public func build() -> [UInt8] {
        let utf8 = needsUTF8
        let header = Self.header(of: originalContent)
        let returnFull = returnContent == .full && originalContent.count <= maximumReturnedSize
        let returned = returnFull ? originalContent : header
        var boundary = self.boundary
        while returned.firstRange(of: Array(boundary.utf8)) != nil { boundary += "=_" }

        var out: [UInt8] = []
        func line(_ s: String) { out.append(contentsOf: s.utf8); out.append(contentsOf: [13, 10]) }
        let subject: String
        switch kind {
        case .failed: subject = "Undelivered Mail Returned to Sender"
        case .delayed: subject = "Delayed Mail (still being retried)"
        default: subject = "Successful Mail Delivery Report"
        }
        let eightBit = utf8 || returned.contains { $0 >= 0x80 }
        line("From: Mail Delivery System <MAILER-DAEMON@\(reportingMTA)>")
        line("To: <\(Self.sanitize(originalSender, utf8: utf8))>")
        line("Subject: \(subject)")
        line("Date: \(Self.rfc5322Date(date))")
        line("Message-ID: <\(messageID)>")
        line("Auto-Submitted: auto-replied")  // RFC 3834 §5
        line("MIME-Version: 1.0")
        line("Content-Type: multipart/report; report-type=\(utf8 ? "global-delivery-status" : "delivery-status");")
        line("\tboundary=\"\(boundary)\"")
        if eightBit { line("Content-Transfer-Encoding: 8bit") }
        line("")
        line("This is a MIME-encapsulated message.")
        line("")

        // 1. Human-readable explanation.
        line("--\(boundary)")
        line("Content-Description: Notification")
        line("Content-Type: text/plain; charset=\(utf8 ? "utf-8" : "us-ascii")")
        line("")
        for l in humanReadable(utf8: utf8) { line(l) }
        line("")

        // 2. The machine-readable report (RFC 3464 §2).
        line("--\(boundary)")
        line("Content-Description: Delivery report")
        line("Content-Type: \(utf8 ? "message/global-delivery-status" : "message/delivery-status")")
        line("")
        line("Reporting-MTA: dns; \(reportingMTA)")
        line("X-Hato-Queue-ID: \(originalQueueID)")
        if let envelopeID, let decoded = XText.decode(envelopeID) {
            line(Self.fold("Original-Envelope-Id: \(Self.sanitize(decoded, utf8: false))"))
        }
        if let receivedFromMTA { line("Received-From-MTA: dns; \(Self.sanitize(receivedFromMTA, utf8: false))") }
        line("Arrival-Date: \(Self.rfc5322Date(arrivalDate))")
        for r in recipients {
            line("")
            line("Final-Recipient: \(Self.addressField(r.finalRecipient, utf8: utf8))")
            if let orcpt = r.originalRecipient, let semi = orcpt.firstIndex(of: ";"),
               let addr = XText.decode(String(orcpt[orcpt.index(after: semi)...])) {
                let type = orcpt[..<semi].trimmingCharacters(in: .whitespaces).lowercased()
                let isUTF8Address = addr.utf8.contains { $0 >= 0x80 }
                line(Self.fold("Original-Recipient: \(isUTF8Address && utf8 ? "utf-8" : Self.sanitize(type, utf8: false)); \(Self.sanitize(addr, utf8: utf8))"))
            }
            line("Action: \(r.action.rawValue)")
            line("Status: \(r.status)")
            if let mta = r.remoteMTA, !mta.isEmpty { line("Remote-MTA: dns; \(Self.sanitize(mta, utf8: false))") }
            if let d = r.diagnostic, !d.isEmpty { line(Self.fold("Diagnostic-Code: \(Self.sanitize(r.diagnosticType, utf8: false)); \(Self.sanitize(d, utf8: utf8))")) }
            if let t = r.lastAttempt { line("Last-Attempt-Date: \(Self.rfc5322Date(t))") }
            if let t = r.willRetryUntil { line("Will-Retry-Until: \(Self.rfc5322Date(t))") }
        }
        line("")

        // 3. The original: headers, or the whole message for RET=FULL.
        line("--\(boundary)")
        if returnFull {
            line("Content-Description: Undelivered Message")
            line("Content-Type: \(utf8 ? "message/global" : "message/rfc822")")
        } else {
            line("Content-Description: Undelivered Message Headers")
            line("Content-Type: \(utf8 ? "message/global-headers" : "text/rfc822-headers")")
        }
        if returned.contains(where: { $0 >= 0x80 }) { line("Content-Transfer-Encoding: 8bit") }
        line("")
        out.append(contentsOf: returned)
        if !returned.isEmpty && !returned.hasSuffix([13, 10]) { out.append(contentsOf: [13, 10]) }
        line("")
        line("--\(boundary)--")
        return out
    }

    private func humanReadable(utf8: Bool) -> [String] {
        var lines = ["This is the mail system at host \(reportingMTA).", ""]
        switch kind {
        case .failed:
            lines += ["I'm sorry to have to inform you that your message could not",
                      "be delivered to one or more recipients. It's attached below.", "",
                      "The mail system"]
        case .delayed:
            lines += ["####################################################################",
                      "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #",
                      "####################################################################", "",
                      "Your message could not be delivered for some time to one or more",
                      "recipients. Delivery will be retried until it succeeds or the",
                      "message expires.", "",
                      "The mail system"]
        default:
            lines += ["Your message was successfully delivered to the destination(s)",
                      "listed below, as you asked for a delivery notification.", "",
                      "The mail system"]
        }
        for r in recipients {
            lines.append("")
            var s = "<\(Self.sanitize(r.finalRecipient, utf8: utf8))>: "
            switch r.action {
            case .delivered: s += "delivered"
            case .delayed: s += "delivery temporarily suspended"
            default: s += "delivery failed"
            }
            if let mta = r.remoteMTA, !mta.isEmpty { s += "; host \(Self.sanitize(mta, utf8: false)) said" }
            s += ": \(Self.sanitize(r.diagnostic ?? r.status.description, utf8: utf8))"
            lines += Self.wrap(s, width: 76)
        }
        return lines
    }

    /// `rfc822; addr`, or `utf-8; addr` (RFC 6533 §3) for a non-ASCII address in a UTF-8 report.
    static func addressField(_ address: String, utf8: Bool) -> String {
        let nonASCII = address.utf8.contains { $0 >= 0x80 }
        if nonASCII && utf8 { return "utf-8; \(sanitize(address, utf8: true))" }
        return "rfc822; \(sanitize(address, utf8: false))"
    }

    /// The header section of a message: everything up to and including the first empty line's CRLF
    /// (the whole content when there is no body).
    public static func header(of content: [UInt8]) -> [UInt8] {
        if content.starts(with: [13, 10]) { return [] }
        if let r = content.firstRange(of: [13, 10, 13, 10]) { return Array(content[..<(r.lowerBound + 2)]) }
        return content
    }

    /// Control characters become spaces; without `utf8`, non-ASCII characters become `?`.
    static func sanitize(_ s: String, utf8: Bool) -> String {
        var out = ""
        for u in s.unicodeScalars {
            if u.value < 0x20 || u.value == 0x7F { out += " " } else if u.value >= 0x80 && !utf8 { out += "?" } else { out.unicodeScalars.append(u) }
        }
        return out
    }

    /// Folds a header field longer than 78 characters at spaces (RFC 5322 §2.2.3).
    static func fold(_ field: String) -> String {
        guard field.count > 78 else { return field }
        var lines: [String] = []
        var current = ""
        for word in field.split(separator: " ", omittingEmptySubsequences: false) {
            if !current.isEmpty && current.count + 1 + word.count > 78 {
                lines.append(current)
                current = " " + word
            } else {
                current += current.isEmpty && lines.isEmpty ? String(word) : " " + word
            }
        }
        lines.append(current)
        return lines.joined(separator: "\r\n")
    }

    static func wrap(_ text: String, width: Int) -> [String] {
        var lines: [String] = []
        var current = ""
        for word in text.split(separator: " ") {
            if !current.isEmpty && current.count + 1 + word.count > width {
                lines.append(current); current = "    " + word
            } else {
                current += current.isEmpty ? String(word) : " " + word
            }
        }
        if !current.isEmpty { lines.append(current) }
        return lines
    }

    /// An RFC 5322 §3.3 date in UTC, e.g. `Thu, 1 Jan 2026 00:00:00 +0000` (`RFC5322Date.format`).
    public static func rfc5322Date(_ d: Date) -> String { RFC5322Date.format(d) }
}

private extension Array where Element == UInt8 {
    func hasSuffix(_ s: [UInt8]) -> Bool { count >= s.count && Array(self[(count - s.count)...]) == s }
}
