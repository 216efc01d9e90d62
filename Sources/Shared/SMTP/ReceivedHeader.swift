import Foundation
import HatoIO

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

    /// RFC 5322 §3.3 `date-time` in UTC; see `RFC5322Date.format`.
    public static func rfc5322Date(_ date: Date) -> String { RFC5322Date.format(date) }
}
