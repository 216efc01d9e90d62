import Foundation
import HatoTestKit
import Testing
@testable import HatoMIME

/// Messages built by `MessageBuilder` read back by an independent reader: Python 3's `email`
/// package (`policy.default`, Debian's `/usr/bin/python3`), which must find the same subject,
/// addresses and display names, bodies, attachments (octet for octet) and filenames, the same
/// multipart tree, and no defects.
@Suite("Message builder: read back by Python's email package")
struct MessageBuilderInteropTests {
    /// Writes each message to `<temp>/NN.eml`, runs the reader over the directory and returns one
    /// report per message, in order. The directory is removed afterwards.
    static func readWithPython(_ messages: [[UInt8]]) throws -> [[String: Any]] {
        let dir = NSTemporaryDirectory() + "hato-mime-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (index, message) in messages.enumerated() {
            try Data(message).write(to: URL(fileURLWithPath: dir + String(format: "/%02d.eml", index)))
        }
        let script = dir + "/read.py", output = dir + "/out.json", log = dir + "/python.log"
        try reader.write(toFile: script, atomically: true, encoding: .utf8)
        let pid = try spawnChild("/usr/bin/python3", [script, dir, output], logPath: log, truncate: true)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
        let exited = status & 0x7F == 0 && (status >> 8) & 0xFF == 0
        guard exited else {
            throw PythonFailure(description: "python failed (status \(status)): \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
        }
        let reports = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: output)))
        return try #require(reports as? [[String: Any]])
    }

    struct PythonFailure: Error, CustomStringConvertible { var description: String }

    static let reader = #"""
        import base64, email, email.utils, json, os, sys
        from email import policy
        from email.header import decode_header, make_header

        def shape(part):
            if part.is_multipart():
                return part.get_content_type() + '[' + ','.join(shape(p) for p in part.iter_parts()) + ']'
            return part.get_content_type()

        def addresses(msg, name):
            header = msg[name]
            if header is None:
                return None
            return [[a.display_name, a.addr_spec] for a in header.addresses]

        def body(msg, kind):
            part = msg.get_body(preferencelist=(kind,))
            if part is None or part.get_content_type() != 'text/' + kind:
                return None
            return part.get_content()

        def legacy_addresses(msg, name):
            # The compat32 reading: getaddresses, then decode_header, which ignores the white
            # space between adjacent encoded-words as RFC 2047 §6.2 says.
            raw = msg.get(name)
            if raw is None:
                return None
            return [[str(make_header(decode_header(n))), a] for n, a in email.utils.getaddresses([raw])]

        reports = []
        directory = sys.argv[1]
        for name in sorted(n for n in os.listdir(directory) if n.endswith('.eml')):
            raw = open(os.path.join(directory, name), 'rb').read()
            msg = email.message_from_bytes(raw, policy=policy.default)
            legacy = email.message_from_bytes(raw, policy=policy.compat32)
            defects = []
            leaves = []
            for part in msg.walk():
                defects += [type(d).__name__ for d in part.defects]
                for key in part.keys():
                    defects += [key + ': ' + type(d).__name__ for d in part[key].defects]
                if part.is_multipart():
                    continue
                disposition = part.get('Content-Disposition')
                leaves.append({
                    'content_type': part.get_content_type(),
                    'disposition': part.get_content_disposition(),
                    'filename': part.get_filename(),
                    'filename_params': disposition.params.get('filename') if disposition is not None else None,
                    'name_param': part['Content-Type'].params.get('name') if part['Content-Type'] is not None else None,
                    'content_id': part.get('Content-ID'),
                    'payload': base64.b64encode(part.get_payload(decode=True)).decode('ascii'),
                    'charset': part.get_content_charset(),
                })
            reports.append({
                'subject': None if msg['Subject'] is None else str(msg['Subject']),
                'from': addresses(msg, 'From'), 'to': addresses(msg, 'To'), 'cc': addresses(msg, 'Cc'),
                'reply_to': addresses(msg, 'Reply-To'), 'bcc': msg['Bcc'],
                'legacy': {key: legacy_addresses(legacy, key) for key in ['From', 'To', 'Cc', 'Reply-To']},
                'extra': None if msg['X-Campaign'] is None else str(msg['X-Campaign']),
                'message_id': msg['Message-ID'], 'date': None if msg['Date'] is None else msg['Date'].datetime.isoformat(),
                'mime_version': msg['MIME-Version'],
                'shape': shape(msg), 'text': body(msg, 'plain'), 'html': body(msg, 'html'),
                'leaves': leaves, 'defects': defects,
            })
        json.dump(reports, open(sys.argv[2], 'w'))
        """#

    static let allOctets = [UInt8]((0...255).map { UInt8($0) }) + [UInt8]((0...255).reversed().map { UInt8($0) })
    static let pixel: [UInt8] = [0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0xFF, 0xFF, 0xFF,
                                 0x00, 0x00, 0x00, 0x21, 0xF9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2C, 0x00, 0x00, 0x00, 0x00,
                                 0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3B]

    struct Case {
        var request: SendRequest
        var shape: String
    }

    static let subject = "注文確認 🎉 Your order #1042 has shipped — 配送状況のお知らせ 👨‍👩‍👧‍👦 ¡Gracias por su compra! 🚚📦✨"
    static let japaneseFilename = "請求書_2026年4月分_株式会社ハト配送センター御中_最終版 (コピー).bin"
    static let text = "こんにちは山田様、\n\nご注文ありがとうございます。 Thank you for your order!\n"
        + String(repeating: "A long line of ASCII text that goes on and on ", count: 5) + "\n"
        + "Trailing spaces here   \nTabs\there\t\nEquals = sign, dots\n.\n..leading dots\nLast line without a line break"
    static let html = "<html><body><p>こんにちは <b>山田様</b></p><img src=\"cid:pixel@hato.test\" alt=\"\">"
        + String(repeating: "<span>text &amp; more</span>", count: 10) + "</body></html>\n"

    static func cases() -> [Case] {
        let full = SendRequest(
            from: EmailAddress("taro@example.jp", name: "山田太郎"),
            to: [EmailAddress("ana@example.net", name: "Ana Díaz"), EmailAddress("doe@example.net", name: "Doe, John \"JD\""),
                 EmailAddress("li@example.cn", name: "李小龙 🐉"), EmailAddress("plain@example.net")],
            cc: [EmailAddress("cc@example.org", name: String(repeating: "株式会社ハト配送センター", count: 4))],
            bcc: [EmailAddress("hidden@example.org", name: "Hidden")],
            replyTo: [EmailAddress("support@example.jp", name: "サポート")],
            subject: subject, text: text, html: html,
            headers: ["X-Campaign": "Été 2026 — 夏"],
            attachments: [
                MessageAttachment(filename: "pixel.gif", contentType: "image/gif", content: Data(pixel).base64EncodedString(),
                                  contentID: "<pixel@hato.test>", disposition: .inline),
                MessageAttachment(filename: japaneseFilename, contentType: "application/octet-stream",
                                  content: Data(allOctets).base64EncodedString(options: .lineLength64Characters)),
                MessageAttachment(filename: "résumé \"final\".pdf", contentType: "application/pdf", content: Data(allOctets.prefix(100)).base64EncodedString()),
            ])
        let ascii = SendRequest(from: EmailAddress("a@example.com"), to: [EmailAddress("b@example.net")], subject: "Plain", text: "Hello\r\nWorld\r\n")
        let htmlOnly = SendRequest(from: EmailAddress("a@example.com", name: "Ünïcödé Sender"), to: [EmailAddress("b@example.net")],
                                   subject: "=?utf-8?Q?not_an_encoded_word?= (literally)", html: html)
        let attachmentsOnly = SendRequest(from: EmailAddress("a@example.com"), bcc: [EmailAddress("b@example.net")],
                                          subject: String(repeating: "x", count: 100),
                                          attachments: [MessageAttachment(filename: "data.bin", content: Data(allOctets).base64EncodedString())])
        return [
            Case(request: full, shape: "multipart/mixed[multipart/alternative[text/plain,multipart/related[text/html,image/gif]],"
                 + "application/octet-stream,application/pdf]"),
            Case(request: ascii, shape: "text/plain"),
            Case(request: htmlOnly, shape: "text/html"),
            Case(request: attachmentsOnly, shape: "multipart/mixed[application/octet-stream]"),
        ]
    }

    static func normalized(_ text: String) -> String {
        text.replacingOccurrences(of: "\r\n", with: "\n").replacingOccurrences(of: "\r", with: "\n")
    }

    @Test("Python reads back subjects, display names, bodies, binary attachments, non-ASCII filenames and the tree, without defects")
    func pythonReadsBack() throws {
        let builder = MessageBuilder(hostname: "mail.hato.test")
        let cases = Self.cases()
        let date = Date(timeIntervalSince1970: 1_780_000_000)
        var messages: [BuiltMessage] = []
        for (index, c) in cases.enumerated() {
            var generator = SplitMix64(seed: UInt64(index + 1))
            messages.append(try builder.build(c.request, date: date, using: &generator))
        }
        for message in messages {
            // Every header line within 78 characters (76 here), every line within 998.
            let text = String(decoding: message.content, as: UTF8.self)
            let header = text.components(separatedBy: "\r\n\r\n")[0]
            #expect(header.components(separatedBy: "\r\n").allSatisfy { $0.utf8.count <= 76 })
            #expect(text.components(separatedBy: "\r\n").allSatisfy { $0.utf8.count <= 998 })
        }
        let reports = try Self.readWithPython(messages.map(\.content))
        try #require(reports.count == cases.count)

        for (index, (c, report)) in zip(cases, reports).enumerated() {
            let request = c.request
            #expect(report["defects"] as? [String] == [], "message \(index): \(report["defects"] ?? "")")
            #expect(report["shape"] as? String == c.shape, "message \(index)")
            #expect(report["subject"] as? String == request.subject, "message \(index)")
            #expect(report["bcc"] is NSNull, "message \(index)")
            #expect(report["message_id"] as? String == messages[index].messageID)
            #expect(report["date"] as? String == "2026-05-28T20:26:40+00:00")
            #expect(report["mime_version"] as? String == "1.0")
            let legacy = try #require(report["legacy"] as? [String: Any])
            func expectAddresses(_ key: String, _ field: String, _ list: [EmailAddress]) {
                let expected = list.map { [$0.name ?? "", $0.address] }
                if list.isEmpty {
                    #expect(report[key] is NSNull, "message \(index) \(key)")
                    #expect(legacy[field] is NSNull, "message \(index) \(field)")
                    return
                }
                // getaddresses + decode_header: exact.
                #expect(legacy[field] as? [[String]] == expected, "message \(index) \(field)")
                // policy.default: exact, except that Python 3.11 keeps the white space between
                // adjacent encoded-words of a phrase (RFC 2047 §6.2 says to ignore it), so a name
                // long enough for several words comes back with spaces where the words were cut.
                let actual = report[key] as? [[String]] ?? []
                #expect(actual.count == expected.count, "message \(index) \(key)")
                for (got, want) in zip(actual, expected) {
                    #expect(got[1] == want[1], "message \(index) \(key)")
                    if EncodedWord.words(for: want[0]).count > 1 {
                        #expect(got[0].filter { !$0.isWhitespace } == want[0].filter { !$0.isWhitespace }, "message \(index) \(key)")
                    } else {
                        #expect(got[0] == want[0], "message \(index) \(key)")
                    }
                }
            }
            expectAddresses("from", "From", request.from.map { [$0] } ?? [])
            expectAddresses("to", "To", request.to)
            expectAddresses("cc", "Cc", request.cc)
            expectAddresses("reply_to", "Reply-To", request.replyTo)
            if let extra = request.headers["X-Campaign"] { #expect(report["extra"] as? String == extra) }

            // Bodies: equal up to line endings (CRLF on the wire); a single-part message ends with CRLF.
            for (key, expected) in [("text", request.text), ("html", request.html)] {
                if let expected {
                    let actual = Self.normalized(try #require(report[key] as? String, "message \(index) \(key)"))
                    let want = Self.normalized(expected)
                    #expect(actual == want || (c.shape.hasPrefix("text/") && actual == want + "\n"), "message \(index) \(key)")
                } else {
                    #expect(report[key] is NSNull, "message \(index) \(key)")
                }
            }
            // Attachments: octet for octet, filenames decoded both by get_filename() and by the
            // new header parser (which decodes each RFC 2231 section alone).
            let leaves = try #require(report["leaves"] as? [[String: Any]])
            let attachmentLeaves = leaves.filter { !($0["content_type"] as? String ?? "").hasPrefix("text/") }
            try #require(attachmentLeaves.count == request.attachments.count, "message \(index)")
            for (attachment, leaf) in zip(request.attachments, attachmentLeaves) {
                let payload = try #require(Data(base64Encoded: leaf["payload"] as? String ?? ""))
                #expect(Array(payload) == Base64Body.decode(attachment.content), "\(attachment.filename)")
                #expect(leaf["filename"] as? String == attachment.filename)
                #expect(leaf["filename_params"] as? String == attachment.filename)
                #expect(leaf["name_param"] as? String == attachment.filename)
                #expect(leaf["content_type"] as? String == attachment.contentType ?? "application/octet-stream")
                #expect(leaf["disposition"] as? String == (attachment.disposition ?? .attachment).rawValue)
                if let id = attachment.contentID {
                    let bare = id.hasPrefix("<") ? String(id.dropFirst().dropLast()) : id
                    #expect(leaf["content_id"] as? String == "<\(bare)>")
                }
            }
            for leaf in leaves where (leaf["content_type"] as? String ?? "").hasPrefix("text/") {
                #expect(leaf["charset"] as? String == "utf-8")
            }
        }
        // The binary attachment went through whole: all 256 octet values, both ways.
        let binary = try #require((reports[0]["leaves"] as? [[String: Any]])?.first { $0["filename"] as? String == Self.japaneseFilename })
        #expect(Data(base64Encoded: binary["payload"] as? String ?? "").map(Array.init) == Self.allOctets)
    }
}
