import Foundation
import Testing
@testable import HatoCrypto
@testable import HatoDelivery
@testable import SMTPCore

/// Runs Debian's Python (`/usr/bin/python3`) on a script with one input file and returns its JSON output.
enum PythonCheck {
    struct Failure: Error, CustomStringConvertible { var description: String }

    static func run(_ script: String, input: [UInt8]) throws -> Any {
        let dir = NSTemporaryDirectory() + "hato-py-" + Identifier.random(bytes: 5)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let scriptPath = dir + "/check.py", inPath = dir + "/input", outPath = dir + "/out.json", errPath = dir + "/err.txt"
        try script.write(toFile: scriptPath, atomically: true, encoding: .utf8)
        try Data(input).write(to: URL(fileURLWithPath: inPath))
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        p.arguments = [scriptPath, inPath, outPath]
        _ = FileManager.default.createFile(atPath: errPath, contents: nil)
        p.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errPath))
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw Failure(description: "python failed: \((try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "")")
        }
        return try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: outPath)))
    }

    /// Parses a message with Python's `email` package and dumps the report's structure as JSON.
    static let parseReport = """
        import email, json, sys
        from email import policy
        raw = open(sys.argv[1], 'rb').read()
        msg = email.message_from_bytes(raw, policy=policy.compat32)
        out = {'headers': {k: str(v) for k, v in msg.items()}, 'content_type': msg.get_content_type(),
               'report_type': msg.get_param('report-type'), 'defects': [str(d) for m in msg.walk() for d in m.defects], 'parts': []}
        for part in (msg.get_payload() if msg.is_multipart() else []):
            p = {'content_type': part.get_content_type(), 'description': part.get('Content-Description')}
            if part.get_content_type() == 'message/delivery-status':
                p['blocks'] = [dict(b.items()) for b in part.get_payload()]
            elif part.get_content_type() == 'message/rfc822':
                inner = part.get_payload()[0]
                p['inner_subject'] = inner['Subject']
                p['inner_body'] = inner.get_payload()
            else:
                payload = part.get_payload(decode=True)
                p['text'] = payload.decode('utf-8', 'replace') if payload is not None else part.as_string()
            out['parts'].append(p)
        json.dump(out, open(sys.argv[2], 'w'))
        """
}

@Suite("Delivery status notifications")
struct DSNTests {
    static let original = Array(("Received: from client.test by relay.hato.test with ESMTP id Q1; Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        + "From: App <app@example.org>\r\nTo: <nobody@hato.test>\r\nSubject: order 42\r\nMessage-ID: <o42@example.org>\r\n\r\n"
        + "Secret body line.\r\n").utf8)

    static func dsn(_ recipients: [DeliveryStatusNotification.Recipient], ret: DeliveryStatusNotification.Return = .headers,
                    content: [UInt8] = original, sender: String = "app@example.org", envid: String? = "ENV+2B42") -> DeliveryStatusNotification {
        DeliveryStatusNotification(reportingMTA: "relay.hato.test", originalSender: sender, originalQueueID: "Q1", envelopeID: envid,
                                   arrivalDate: Date(timeIntervalSince1970: 1_767_225_600), receivedFromMTA: "client.test",
                                   recipients: recipients, returnContent: ret, originalContent: content,
                                   date: Date(timeIntervalSince1970: 1_767_229_200), messageID: "dsn.Q1@relay.hato.test", boundary: "hato-b1")
    }

    static let failed = DeliveryStatusNotification.Recipient(
        finalRecipient: "nobody@hato.test", originalRecipient: "rfc822;Nobody+40hato.test", action: .failed, status: EnhancedStatusCode("5.1.1")!,
        remoteMTA: "mx.hato.test", diagnostic: "550 5.1.1 <nobody@hato.test>: Recipient address rejected: User unknown in virtual mailbox table",
        lastAttempt: Date(timeIntervalSince1970: 1_767_229_000))
    static let expired = DeliveryStatusNotification.Recipient(
        finalRecipient: "later@hato.test", action: .failed, status: EnhancedStatusCode("4.4.7")!, remoteMTA: "mx2.hato.test",
        diagnostic: "451 4.7.1 try again later")

    @Test("a failure report parses in Python's email package with every RFC 3464 field")
    func failureReport() throws {
        let bytes = Self.dsn([Self.failed, Self.expired]).build()
        #expect(!bytes.contains(where: { $0 >= 0x80 }), "an ASCII report stays 7-bit")
        let out = try PythonCheck.run(PythonCheck.parseReport, input: bytes) as? [String: Any] ?? [:]
        #expect(out["content_type"] as? String == "multipart/report")
        #expect(out["report_type"] as? String == "delivery-status")
        #expect((out["defects"] as? [String])?.isEmpty == true, "no MIME defects: \(out["defects"] ?? "")")
        let headers = out["headers"] as? [String: String] ?? [:]
        #expect(headers["From"] == "Mail Delivery System <MAILER-DAEMON@relay.hato.test>")
        #expect(headers["To"] == "<app@example.org>")
        #expect(headers["Subject"] == "Undelivered Mail Returned to Sender")
        #expect(headers["Auto-Submitted"] == "auto-replied")
        #expect(headers["Date"] == "Thu, 1 Jan 2026 01:00:00 +0000")
        #expect(headers["Message-ID"] == "<dsn.Q1@relay.hato.test>")
        let parts = out["parts"] as? [[String: Any]] ?? []
        #expect(parts.map { $0["content_type"] as? String ?? "" } == ["text/plain", "message/delivery-status", "text/rfc822-headers"])
        guard parts.count == 3 else { return }
        let human = parts[0]["text"] as? String ?? ""
        #expect(human.contains("<nobody@hato.test>: delivery failed; host mx.hato.test said: 550 5.1.1"))
        let blocks = parts[1]["blocks"] as? [[String: String]] ?? []
        #expect(blocks.count == 3)
        guard blocks.count == 3 else { return }
        #expect(blocks[0]["Reporting-MTA"] == "dns; relay.hato.test")
        #expect(blocks[0]["Arrival-Date"] == "Thu, 1 Jan 2026 00:00:00 +0000")
        #expect(blocks[0]["Original-Envelope-Id"] == "ENV+42")
        #expect(blocks[0]["Received-From-MTA"] == "dns; client.test")
        #expect(blocks[0]["X-Hato-Queue-ID"] == "Q1")
        #expect(blocks[1]["Final-Recipient"] == "rfc822; nobody@hato.test")
        #expect(blocks[1]["Original-Recipient"] == "rfc822; Nobody@hato.test")
        #expect(blocks[1]["Action"] == "failed")
        #expect(blocks[1]["Status"] == "5.1.1")
        #expect(blocks[1]["Remote-MTA"] == "dns; mx.hato.test")
        // The long Diagnostic-Code is folded on the wire; unfolded it is the reply again.
        let diag = (blocks[1]["Diagnostic-Code"] ?? "").replacingOccurrences(of: "\r\n", with: "").replacingOccurrences(of: "\n", with: "")
        #expect(diag == "smtp; 550 5.1.1 <nobody@hato.test>: Recipient address rejected: User unknown in virtual mailbox table")
        #expect(blocks[1]["Last-Attempt-Date"] == "Thu, 1 Jan 2026 00:56:40 +0000")
        #expect(blocks[2]["Final-Recipient"] == "rfc822; later@hato.test")
        #expect(blocks[2]["Original-Recipient"] == nil)
        #expect(blocks[2]["Status"] == "4.4.7")
        let returned = parts[2]["text"] as? String ?? ""
        #expect(returned.contains("Subject: order 42"))
        #expect(returned.contains("Message-ID: <o42@example.org>"))
        #expect(!returned.contains("Secret body line"), "RET=HDRS returns the header only")
    }

    @Test("RET=FULL returns the whole message as message/rfc822")
    func fullReturn() throws {
        let bytes = Self.dsn([Self.failed], ret: .full).build()
        let out = try PythonCheck.run(PythonCheck.parseReport, input: bytes) as? [String: Any] ?? [:]
        let parts = out["parts"] as? [[String: Any]] ?? []
        #expect(parts.count == 3)
        guard parts.count == 3 else { return }
        #expect(parts[2]["content_type"] as? String == "message/rfc822")
        #expect(parts[2]["inner_subject"] as? String == "order 42")
        #expect((parts[2]["inner_body"] as? String)?.contains("Secret body line.") == true)
    }

    @Test("RET=FULL above the size limit falls back to the header")
    func fullReturnTooLarge() throws {
        var d = Self.dsn([Self.failed], ret: .full)
        d.maximumReturnedSize = 100
        let text = String(decoding: d.build(), as: UTF8.self)
        #expect(text.contains("Content-Type: text/rfc822-headers"))
        #expect(!text.contains("Secret body line"))
    }

    @Test("a delay warning says delayed with Will-Retry-Until")
    func delayWarning() throws {
        let r = DeliveryStatusNotification.Recipient(finalRecipient: "slow@hato.test", action: .delayed, status: EnhancedStatusCode("4.7.1")!, remoteMTA: "mx.hato.test",
                                                     diagnostic: "451 4.7.1 greylisted", willRetryUntil: Date(timeIntervalSince1970: 1_767_657_600))
        let out = try PythonCheck.run(PythonCheck.parseReport, input: Self.dsn([r]).build()) as? [String: Any] ?? [:]
        #expect((out["headers"] as? [String: String])?["Subject"] == "Delayed Mail (still being retried)")
        let blocks = ((out["parts"] as? [[String: Any]])?[1]["blocks"] as? [[String: String]]) ?? []
        #expect(blocks.count == 2)
        #expect(blocks.last?["Action"] == "delayed")
        #expect(blocks.last?["Will-Retry-Until"] == "Tue, 6 Jan 2026 00:00:00 +0000")
    }

    @Test("a UTF-8 recipient gives an RFC 6533 report with the utf-8 address type")
    func utf8Report() throws {
        let r = DeliveryStatusNotification.Recipient(finalRecipient: "用户@例子.test", action: .failed, status: EnhancedStatusCode("5.1.1")!, diagnostic: "550 5.1.1 unknown")
        let bytes = Self.dsn([r]).build()
        let text = String(decoding: bytes, as: UTF8.self)
        #expect(text.contains("report-type=global-delivery-status"))
        #expect(text.contains("Content-Type: message/global-delivery-status"))
        #expect(text.contains("Final-Recipient: utf-8; 用户@例子.test\r\n"))
        #expect(text.contains("Content-Type: message/global-headers"))
        #expect(text.contains("Content-Transfer-Encoding: 8bit"))
        let out = try PythonCheck.run(PythonCheck.parseReport, input: bytes) as? [String: Any] ?? [:]
        #expect(out["report_type"] as? String == "global-delivery-status")
        #expect((out["parts"] as? [[String: Any]])?.count == 3)
    }

    @Test("the boundary is extended when the returned content contains it; control characters in replies are neutralised")
    func boundaryAndSanitising() throws {
        let content = Array("Subject: x\r\nX-Trap: --hato-b1\r\n\r\nbody\r\n".utf8)
        let r = DeliveryStatusNotification.Recipient(finalRecipient: "a@hato.test", action: .failed, status: EnhancedStatusCode("5.0.0")!,
                                                     diagnostic: "550 evil\r\nInjected: yes")
        let bytes = Self.dsn([r], content: content).build()
        let text = String(decoding: bytes, as: UTF8.self)
        #expect(text.contains("boundary=\"hato-b1=_\""))
        #expect(!text.contains("\r\nInjected: yes"))
        let out = try PythonCheck.run(PythonCheck.parseReport, input: bytes) as? [String: Any] ?? [:]
        let parts = out["parts"] as? [[String: Any]] ?? []
        #expect(parts.count == 3)
        #expect((parts.last?["text"] as? String)?.contains("X-Trap: --hato-b1") == true)
    }

    @Test("xtext round-trips and rejects malformed escapes")
    func xtext() {
        #expect(XText.decode("a+2Bb+3Dc") == "a+b=c")
        #expect(XText.encode("a+b=c d") == "a+2Bb+3Dc+20d")
        #expect(XText.decode(XText.encode("用户@例子")) == "用户@例子")
        #expect(XText.decode("bad+4") == nil)
        #expect(XText.decode("bad+ZZ") == nil)
    }
}
