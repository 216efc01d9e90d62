import Foundation
import HatoTestKit
import Testing
@testable import HatoCrypto
@testable import HatoDelivery

@Suite("Abuse feedback reports (RFC 5965)")
struct FeedbackReportTests {
    static func crlf(_ s: String) -> [UInt8] { Array(s.replacingOccurrences(of: "\r\n", with: "\n").replacingOccurrences(of: "\n", with: "\r\n").utf8) }

    /// RFC 5965 Appendix B.1: the minimal report.
    static let minimal = crlf("""
        From: <abusedesk@example.com>
        Date: Thu, 8 Mar 2005 17:40:36 EDT
        Subject: FW: Earn money
        To: <abuse@example.net>
        MIME-Version: 1.0
        Content-Type: multipart/report; report-type=feedback-report;
             boundary="part1_13d.2e68ed54_boundary"

        --part1_13d.2e68ed54_boundary
        Content-Type: text/plain; charset="US-ASCII"
        Content-Transfer-Encoding: 7bit

        This is an email abuse report for an email message received from IP
        192.0.2.1 on Thu, 8 Mar 2005 14:00:00 EDT.  For more information
        about this format please see http://www.mipassoc.org/arf/.

        --part1_13d.2e68ed54_boundary
        Content-Type: message/feedback-report

        Feedback-Type: abuse
        User-Agent: SomeGenerator/1.0
        Version: 1

        --part1_13d.2e68ed54_boundary
        Content-Type: message/rfc822
        Content-Disposition: inline

        Received: from mailserver.example.net
                (mailserver.example.net [192.0.2.1])
                by example.com with ESMTP id M63d4137594e46;
                Thu, 08 Mar 2005 14:00:00 -0400
        From: <somespammer@example.net>
        To: <Undisclosed Recipients>
        Subject: Earn money
        MIME-Version: 1.0
        Content-type: text/plain
        Message-ID: 8787KJKJ3K4J3K4J3K4J3.mail@example.net
        Date: Thu, 02 Sep 2004 12:31:03 -0500

        Spam Spam Spam
        Spam Spam Spam
        --part1_13d.2e68ed54_boundary--
        """)

    /// RFC 5965 Appendix B.2 (the fuller report), with the returned message as Hato sent it.
    static let full = crlf("""
        From: <abusedesk@example.com>
        Date: Thu, 8 Mar 2005 17:40:36 EDT
        Subject: FW: Earn money
        To: <abuse@example.net>
        MIME-Version: 1.0
        Content-Type: multipart/report; report-type=feedback-report;
             boundary="part1_13d.2e68ed54_boundary"

        --part1_13d.2e68ed54_boundary
        Content-Type: text/plain; charset="US-ASCII"
        Content-Transfer-Encoding: 7bit

        This is an email abuse report for an email message received from IP
        192.0.2.1 on Thu, 8 Mar 2005 14:00:00 EDT.

        --part1_13d.2e68ed54_boundary
        Content-Type: message/feedback-report

        Feedback-Type: abuse
        User-Agent: SomeGenerator/1.0
        Version: 1
        Original-Mail-From: <somespammer@example.net>
        Original-Rcpt-To: <user@example.com>
        Arrival-Date: Thu, 8 Mar 2005 14:00:00 -0400
        Reporting-MTA: dns; mail.example.com
        Source-IP: 192.0.2.1
        Authentication-Results: mail.example.com;
                        spf=fail smtp.mail=somespammer@example.com
        Reported-Domain: example.net
        Reported-Uri: http://example.net/earn_money.html
        Reported-Uri: mailto:user@example.com
        Removal-Recipient: user@example.com

        --part1_13d.2e68ed54_boundary
        Content-Type: message/rfc822
        Content-Disposition: inline

        Received: from client.example.org ([198.51.100.7])
        \tby relay.example.net (Hato) with ESMTPSA id 2392XSGSQPB28PKSTK
        \tfor <user@example.com>; Thu, 8 Mar 2005 13:59:58 +0000
        From: <somespammer@example.net>
        To: <user@example.com>
        Subject: Earn money
        X-Hato-Recipient: 2392XSGSQPB28PKSTK.17
        Message-ID: <8787KJKJ3K4J3K4J3K4J3.mail@example.net>

        Spam Spam Spam
        --part1_13d.2e68ed54_boundary--
        """)

    @Test("RFC 5965 B.1: the minimal report gives the feedback type and the returned message's id")
    func minimalReport() throws {
        let r = try FeedbackReport.parse(Self.minimal)
        #expect(r.feedbackType == "abuse")
        #expect(r.userAgent == "SomeGenerator/1.0" && r.version == "1")
        #expect(r.originalRecipients.isEmpty)
        #expect(r.originalMessageID == "8787KJKJ3K4J3K4J3K4J3.mail@example.net")
        #expect(r.queueIDs.isEmpty, "not Hato's Received field")
        #expect(r.incidents == 1)
    }

    @Test("RFC 5965 B.2: every field, the recipient, and Hato's queue id and tracking field in the returned message")
    func fullReport() throws {
        let r = try FeedbackReport.parse(Self.full)
        #expect(r.originalMailFrom == "somespammer@example.net")
        #expect(r.originalRecipients == ["user@example.com"])
        #expect(r.arrivalDate == Date(timeIntervalSince1970: 1_110_304_800))
        #expect(r.reportingMTA == "mail.example.com")
        #expect(r.sourceIP == "192.0.2.1")
        #expect(r.reportedDomains == ["example.net"])
        #expect(r.originalMessageID == "8787KJKJ3K4J3K4J3K4J3.mail@example.net")
        #expect(r.trackingID == "2392XSGSQPB28PKSTK.17")
        #expect(r.queueIDs == ["2392XSGSQPB28PKSTK"])
        #expect(r.originalTo == "<user@example.com>")
    }

    @Test("a provider that redacts the recipient and returns only the header (text/rfc822-headers), base64-encoded")
    func redactedHeadersOnly() throws {
        let header = "Received: from c.test ([192.0.2.5])\r\n\tby relay.test (Hato) with ESMTP id ABCDEF123\r\n\tfor <redacted@example.com>; Tue, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <m1@shop.example>\r\nX-Hato-Recipient: ABCDEF123.5\r\n"
        let b64 = Data(header.utf8).base64EncodedString(options: [.lineLength76Characters, .endLineWithCarriageReturn, .endLineWithLineFeed])
        let msg = Self.crlf("""
            From: feedbackloop@provider.example
            Content-Type: multipart/report; report-type="feedback-report"; boundary=xyz

            --xyz
            Content-Type: text/plain

            A complaint.
            --xyz
            Content-Type: message/feedback-report

            Feedback-Type: abuse
            User-Agent: ProviderFBL/2.1
            Version: 1
            Original-Rcpt-To: redacted@example.com
            Source-IP: 192.0.2.10

            --xyz
            Content-Type: text/rfc822-headers
            Content-Transfer-Encoding: base64

            \(b64)
            --xyz--
            """)
        let r = try FeedbackReport.parse(msg)
        #expect(r.originalMessageID == "m1@shop.example")
        #expect(r.trackingID == "ABCDEF123.5")
        #expect(r.queueIDs == ["ABCDEF123"])
        #expect(r.sourceIP == "192.0.2.10")
    }

    @Test("malformed reports are refused with the reason: not a report, no report part, no Feedback-Type")
    func malformed() {
        #expect(throws: FeedbackReport.ParseError.self) { try FeedbackReport.parse(Self.crlf("Subject: hi\n\nplain mail\n")) }
        let dsn = Self.crlf("Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n--b\nContent-Type: text/plain\n\nx\n--b--\n")
        #expect(throws: FeedbackReport.ParseError.notAFeedbackReport("multipart/report; report-type=delivery-status; boundary=b")) { try FeedbackReport.parse(dsn) }
        let noPart = Self.crlf("Content-Type: multipart/report; report-type=feedback-report; boundary=b\n\n--b\nContent-Type: text/plain\n\nx\n--b--\n")
        #expect(throws: FeedbackReport.ParseError.missingReportPart) { try FeedbackReport.parse(noPart) }
        let noType = Self.crlf("Content-Type: multipart/report; report-type=feedback-report; boundary=b\n\n--b\nContent-Type: message/feedback-report\n\nVersion: 1\n--b--\n")
        #expect(throws: FeedbackReport.ParseError.missingFeedbackType) { try FeedbackReport.parse(noType) }
    }

    @Test("random and mutated input never crashes and stays bounded (nested multiparts, missing boundaries)")
    func hostileInput() {
        var rng = SplitMix64(seed: 5965)
        let base = Self.full
        for round in 0..<2000 {
            var bytes = base
            for _ in 0..<Int.random(in: 1...20, using: &rng) {
                let i = Int.random(in: 0..<bytes.count, using: &rng)
                bytes[i] = [0x0A, 0x0D, 0x2D, 0x3A, 0x3B, 0x22, UInt8.random(in: 0...255, using: &rng)].randomElement(using: &rng)!
            }
            if round % 100 == 0 {
                // Deep nesting: every level a multipart with the same boundary.
                bytes = Array(String(repeating: "Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\n", count: 500).utf8)
            }
            _ = try? FeedbackReport.parse(bytes)
        }
        let deep = MIMEEntity(parsing: Array(String(repeating: "Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\n", count: 500).utf8))
        var depth = 0
        var e: MIMEEntity? = deep
        while let x = e { depth += 1; e = x.parts.first }
        #expect(depth <= MIMEEntity.maximumDepth + 1)
    }

    @Test("a report built by Python's email package (as feedback loops generate them) parses the same")
    func pythonBuiltReport() throws {
        let script = """
            import sys
            from email.message import EmailMessage, Message
            from email.mime.multipart import MIMEMultipart
            from email.mime.text import MIMEText
            from email.mime.message import MIMEMessage
            from email import message_from_bytes
            from email.policy import SMTP
            orig = EmailMessage()
            orig['From'] = 'Shop <news@shop.example>'
            orig['To'] = 'victim@example.com'
            orig['Subject'] = 'Sale'
            orig['Message-ID'] = '<sale-42@shop.example>'
            orig['X-Hato-Recipient'] = 'QID123.9'
            orig.set_content('Buy now')
            outer = MIMEMultipart('report', report_type='feedback-report')
            outer['From'] = 'fbl@isp.example'
            outer.attach(MIMEText('This is an abuse report'))
            fb = Message()
            fb.set_type('message/feedback-report')
            fb.set_payload('Feedback-Type: abuse\\r\\nUser-Agent: ISP-FBL/1.0\\r\\nVersion: 1\\r\\nOriginal-Rcpt-To: victim@example.com\\r\\nSource-IP: 192.0.2.10\\r\\n')
            outer.attach(fb)
            outer.attach(MIMEMessage(orig))
            open(sys.argv[2], 'wb').write(outer.as_bytes(policy=SMTP))
            """
        let dir = NSTemporaryDirectory() + "hato-arf-" + Identifier.random(bytes: 4)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try script.write(toFile: dir + "/make.py", atomically: true, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        p.arguments = [dir + "/make.py", "-", dir + "/report.eml"]
        try p.run()
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        let r = try FeedbackReport.parse(Array(try Data(contentsOf: URL(fileURLWithPath: dir + "/report.eml"))))
        #expect(r.feedbackType == "abuse")
        #expect(r.userAgent == "ISP-FBL/1.0")
        #expect(r.originalRecipients == ["victim@example.com"])
        #expect(r.originalMessageID == "sale-42@shop.example")
        #expect(r.trackingID == "QID123.9")
    }
}
