import Foundation

/// Abuse feedback reports (ARF, RFC 5965) shaped as mailbox providers send them, built around a
/// returned message, for tests of the complaint intake. CRLF line ends throughout.
public enum ARFSamples {
    /// `text` with every line end made CRLF.
    public static func crlf(_ text: String) -> [UInt8] {
        Array(text.replacingOccurrences(of: "\r\n", with: "\n").replacingOccurrences(of: "\n", with: "\r\n").utf8)
    }

    /// The header section of `message` (up to the first empty line), CRLF line ends.
    public static func header(of message: [UInt8]) -> String {
        let text = String(decoding: message, as: UTF8.self).replacingOccurrences(of: "\r\n", with: "\n")
        let head = text.components(separatedBy: "\n\n").first ?? text
        return head.replacingOccurrences(of: "\n", with: "\r\n") + "\r\n"
    }

    /// Yahoo / AOL style (Yahoo's Complaint Feedback Loop, AOL's SCOMP): the whole message
    /// returned as `message/rfc822`, `Original-Rcpt-To` given, `Received-Date` (the obsolete
    /// name), version `0.1`.
    public static func yahoo(returned: [UInt8], recipient: String, mailFrom: String, sourceIP: String) -> [UInt8] {
        crlf("""
            Return-Path: <>
            From: Yahoo! Mail AntiSpam Feedback <feedback@arf.mail.yahoo.com>
            To: fbl@relay.it.test
            Subject: FW: complaint
            Date: Thu, 3 Dec 2026 10:00:05 +0000
            MIME-Version: 1.0
            Content-Type: multipart/report; report-type=feedback-report;
            \tboundary="----=_Part_442_1199.1607000000000"

            ------=_Part_442_1199.1607000000000
            Content-Type: text/plain; charset=us-ascii
            Content-Transfer-Encoding: 7bit

            This is an email abuse report for an email message from \(sourceIP) on Thu, 3 Dec 2026 09:58:00 +0000

            ------=_Part_442_1199.1607000000000
            Content-Type: message/feedback-report

            Feedback-Type: abuse
            User-Agent: Yahoo!-Mail-Feedback/2.0
            Version: 0.1
            Original-Mail-From: <\(mailFrom)>
            Original-Rcpt-To: \(recipient)
            Received-Date: Thu, 3 Dec 2026 09:58:00 +0000
            Source-IP: \(sourceIP)
            Reporting-MTA: dns; mta1.mail.gq1.yahoo.com
            Authentication-Results: mta1.mail.gq1.yahoo.com  header.from=hato.test; dkim=neutral (no sig)

            ------=_Part_442_1199.1607000000000
            Content-Type: message/rfc822
            Content-Disposition: inline


            """) + returned + crlf("\n------=_Part_442_1199.1607000000000--\n")
    }

    /// Microsoft JMRP style (Outlook.com's Junk Mail Reporting Program): the recipient redacted
    /// (RFC 6590) in `Original-Rcpt-To` and in the returned message's `To:`, which is otherwise
    /// returned whole (`message/rfc822`); no `Source-IP`.
    public static func microsoftJMRP(returned: [UInt8], mailFrom: String) -> [UInt8] {
        var text = String(decoding: returned, as: UTF8.self)
        // Redact the To: field's value as JMRP does.
        var lines = text.components(separatedBy: "\r\n")
        if let i = lines.firstIndex(where: { $0.lowercased().hasPrefix("to:") }) { lines[i] = "To: redacted@outlook.test" }
        text = lines.joined(separator: "\r\n")
        return crlf("""
            From: staff@hotmail.com
            To: fbl@relay.it.test
            Subject: complaint about message from 127.0.0.1
            Date: Thu, 03 Dec 2026 10:10:00 -0800
            MIME-Version: 1.0
            Content-Type: multipart/report; report-type=feedback-report; boundary="07c6b5d1-bb0c-4df6-9bd5-0cf9b30dca1e"
            X-HmXmrOriginalRecipient: <redacted@outlook.test>

            This is a multi-part message in MIME format.

            --07c6b5d1-bb0c-4df6-9bd5-0cf9b30dca1e
            Content-Type: text/plain; charset="us-ascii"
            Content-Transfer-Encoding: 7bit

            This is an email abuse report for an email message received from IP  on Thu, 03 Dec 2026 10:08:00 -0800.
            For more information about this format please see http://www.mipassoc.org/arf/.

            --07c6b5d1-bb0c-4df6-9bd5-0cf9b30dca1e
            Content-Type: message/feedback-report

            Feedback-Type: abuse
            User-Agent: Microsoft JMRP/1.0
            Version: 1.0
            Original-Mail-From: <\(mailFrom)>
            Original-Rcpt-To: redacted@outlook.test
            Arrival-Date: Thu, 03 Dec 2026 10:08:00 -0800
            Reporting-MTA: dns; hotmail.com

            --07c6b5d1-bb0c-4df6-9bd5-0cf9b30dca1e
            Content-Type: message/rfc822
            Content-Disposition: inline


            """) + Array(text.utf8) + crlf("\n--07c6b5d1-bb0c-4df6-9bd5-0cf9b30dca1e--\n")
    }

    /// Only the returned message's header (`text/rfc822-headers`, RFC 6522 as RFC 5965 §2 allows),
    /// as Comcast-style loops send it; `Original-Rcpt-To` absent.
    public static func headersOnly(returned: [UInt8], sourceIP: String) -> [UInt8] {
        crlf("""
            From: Feedback Loop <fbl@feedback.comcast.test>
            To: fbl@relay.it.test
            Subject: Abuse report
            MIME-Version: 1.0
            Content-Type: multipart/report; report-type="feedback-report"; boundary="==boundary-cc=="

            --==boundary-cc==
            Content-Type: text/plain

            A customer marked this message as spam.
            --==boundary-cc==
            Content-Type: message/feedback-report

            Feedback-Type: abuse
            User-Agent: ReturnPathFBL/2.0
            Version: 1
            Source-IP: \(sourceIP)
            Reporting-MTA: dns; fbl.comcast.test

            --==boundary-cc==
            Content-Type: text/rfc822-headers


            """) + Array(header(of: returned).utf8) + crlf("\n--==boundary-cc==--\n")
    }

    /// A `not-spam` report (RFC 6430) about `returned`: recorded nowhere, suppresses nothing.
    public static func notSpam(returned: [UInt8], recipient: String) -> [UInt8] {
        crlf("""
            From: fbl@isp.test
            MIME-Version: 1.0
            Content-Type: multipart/report; report-type=feedback-report; boundary=ns

            --ns
            Content-Type: text/plain

            The user says this is not spam.
            --ns
            Content-Type: message/feedback-report

            Feedback-Type: not-spam
            User-Agent: ISP/1
            Version: 1
            Original-Rcpt-To: \(recipient)

            --ns
            Content-Type: text/rfc822-headers


            """) + Array(header(of: returned).utf8) + crlf("\n--ns--\n")
    }

    /// Malformed: a `multipart/report` whose report part has no `Feedback-Type`, naming a
    /// recipient and Hato's tracking field all the same (nothing may come of it).
    public static func malformed(returned: [UInt8], recipient: String) -> [UInt8] {
        crlf("""
            From: fbl@isp.test
            MIME-Version: 1.0
            Content-Type: multipart/report; report-type=feedback-report; boundary=mf

            --mf
            Content-Type: message/feedback-report

            User-Agent: Broken/1
            Original-Rcpt-To: \(recipient)

            --mf
            Content-Type: text/rfc822-headers


            """) + Array(header(of: returned).utf8) + crlf("\n--mf--\n")
    }
}
