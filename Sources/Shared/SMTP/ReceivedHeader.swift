import Foundation

/// Builds the `Received:` trace field a relay prepends (RFC 5321 §4.4; RFC 5322 §3.6.7).
public enum ReceivedHeader {
    /// The trace field, folded with CRLF + TAB between clauses and CRLF-terminated:
    ///
    ///     Received: from client.example ([192.0.2.1])
    ///     \tby relay.example (Hato) with ESMTP id 0123ABCD
    ///     \tfor <user@example.com>; Tue, 14 Nov 2023 12:00:00 +0000
    ///
    /// `TCP-info` is the peer's address literal (RFC 5321 §4.4, `[IPv6:…]` for
    /// IPv6, §4.1.3). The date is RFC 5322 §3.3 `date-time` in UTC (`+0000`).
    /// Header text is restricted to printable US-ASCII: other characters in
    /// the names or id are replaced with `?`.
    /// - Parameters:
    ///   - heloName: the client's EHLO/HELO argument.
    ///   - peer: the client's address.
    ///   - hostname: this server's name.
    ///   - withESMTP: `with ESMTP` when the client used EHLO, else `with SMTP` (RFC 3848).
    ///   - id: the queue id.
    ///   - recipient: the `for` clause; pass it only for single-recipient
    ///     messages (RFC 5321 §7.2: do not disclose other recipients).
    ///   - date: the receipt time.
    /// - Returns: the field bytes, ending in CRLF.
    public static func build(heloName: String, peer: SocketAddress, hostname: String, withESMTP: Bool,
                             id: String, recipient: Mailbox?, date: Date) -> [UInt8] {
        build(heloName: heloName, peer: peer, hostname: hostname, protocol: withESMTP ? "ESMTP" : "SMTP", tls: nil,
              id: id, recipient: recipient, date: date)
    }

    /// The trace field for a submission, with the RFC 3848 / RFC 6531 §4.3 protocol keyword
    /// (`ESMTPSA`, `UTF8SMTPS`, …) and, over TLS, a comment naming the protocol and cipher:
    ///
    ///     Received: from client.example ([192.0.2.1])
    ///     \tby relay.example (Hato) with ESMTPSA
    ///     \t(TLSv1.3 TLS_AES_256_GCM_SHA384) id 0123ABCD
    ///     \tfor <user@example.com>; Tue, 14 Nov 2023 12:00:00 +0000
    ///
    /// Every value is printable US-ASCII after `clean` (others become `?`); the `for` clause is
    /// left out for a UTF-8 address rather than mangled.
    /// - Parameters:
    ///   - heloName: the client's EHLO/HELO argument (validated by the parser).
    ///   - peer: the client's address.
    ///   - hostname: this server's name.
    ///   - protocol: the `with` keyword, e.g. `SubmittedMessage.protocolKeyword`.
    ///   - tls: the TLS parameters, if the session was encrypted.
    ///   - id: the queue id.
    ///   - recipient: the `for` clause (single-recipient messages only, RFC 5321 §7.2).
    ///   - date: the receipt time.
    /// - Returns: the field bytes, ending in CRLF.
    public static func build(heloName: String, peer: SocketAddress, hostname: String, protocol keyword: String,
                             tls: NegotiatedTLS?, id: String, recipient: Mailbox?, date: Date) -> [UInt8] {
        var host = peer.host
        if let zone = host.firstIndex(of: "%") { host = String(host[..<zone]) }
        let literal = peer.isIPv6 ? "[IPv6:\(host)]" : "[\(host)]"
        let helo = heloName.isEmpty ? "unknown" : heloName
        var lines = ["Received: from \(clean(helo)) (\(clean(literal)))"]
        if let tls {
            lines.append("\tby \(clean(hostname)) (Hato) with \(clean(keyword))")
            lines.append("\t(\(clean(tls.protocolVersion)) \(clean(tls.cipher))) id \(clean(id))")
        } else {
            lines.append("\tby \(clean(hostname)) (Hato) with \(clean(keyword)) id \(clean(id))")
        }
        if let recipient, recipient.address.unicodeScalars.allSatisfy({ $0.isASCII }) {
            lines.append("\tfor <\(clean(recipient.address, allowSpace: true))>")
        }
        let stamp = rfc5322Date(date)
        let last = lines.count - 1
        if lines[last].utf8.count + 2 + stamp.utf8.count <= 78 {
            lines[last] += "; " + stamp
        } else {
            lines[last] += ";"
            lines.append("\t" + stamp)
        }
        return Array((lines.joined(separator: "\r\n") + "\r\n").utf8)
    }

    /// Keeps printable US-ASCII (and optionally space); anything else becomes `?`.
    private static func clean(_ text: String, allowSpace: Bool = false) -> String {
        String(String.UnicodeScalarView(text.unicodeScalars.map { scalar in
            (scalar.value > 0x20 && scalar.value < 0x7F) || (allowSpace && scalar.value == 0x20) ? scalar : "?"
        }))
    }

    private static let dayNames = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    private static let monthNames = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

    /// RFC 5322 §3.3 `date-time` in UTC, e.g. `Tue, 14 Nov 2023 12:00:00 +0000`.
    /// Locale-independent; times outside years 1–9999 are clamped.
    /// - Parameter date: the instant to format.
    /// - Returns: the date text.
    public static func rfc5322Date(_ date: Date) -> String {
        // 0001-01-01 .. 9999-12-31T23:59:59 in seconds since 1970.
        let lower = -62_135_596_800.0, upper = 253_402_300_799.0
        var t = date.timeIntervalSince1970
        if !t.isFinite { t = 0 }
        t = Swift.min(Swift.max(t.rounded(.down), lower), upper)
        let seconds = Int(t)
        let days = seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400
        let secondOfDay = seconds - days * 86_400
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yoe + era * 400 + (month <= 2 ? 1 : 0)
        let weekday = ((days % 7) + 11) % 7  // 1970-01-01 was a Thursday (index 4)
        func two(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }
        let yearText = String(repeating: "0", count: Swift.max(0, 4 - String(year).count)) + String(year)
        return "\(dayNames[weekday]), \(day) \(monthNames[month - 1]) \(yearText) "
            + "\(two(secondOfDay / 3600)):\(two(secondOfDay % 3600 / 60)):\(two(secondOfDay % 60)) +0000"
    }
}
