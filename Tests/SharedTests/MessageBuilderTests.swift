import Foundation
import HatoTestKit
import Testing
@testable import HatoDelivery
@testable import HatoMIME
@testable import SMTPCore

/// The shape of a MIME tree, e.g. `multipart/mixed[text/plain,image/png]`.
func mimeShape(_ entity: MIMEEntity) -> String {
    entity.parts.isEmpty ? entity.mediaType : entity.mediaType + "[" + entity.parts.map(mimeShape).joined(separator: ",") + "]"
}

@Suite("Message builder: structure, header fields, envelope, refusals, limits, raw messages")
struct MessageBuilderTests {
    static let date = Date(timeIntervalSince1970: 1_780_000_000)  // Thu, 28 May 2026 20:26:40 +0000
    static let builder = MessageBuilder(hostname: "mail.hato.test", maximumSize: 1 << 20, maximumRecipients: 10)
    static let png: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A] + (0..<64).map { UInt8($0 * 3 & 0xFF) }

    static func request(text: String? = "Hello", html: String? = nil, attachments: [MessageAttachment] = []) -> SendRequest {
        SendRequest(from: EmailAddress("sender@example.com", name: "Sender"), to: [EmailAddress("ana@example.net")],
                    subject: "Hi", text: text, html: html, attachments: attachments)
    }

    static func build(_ request: SendRequest, seed: UInt64 = 1, builder: MessageBuilder = builder) throws -> BuiltMessage {
        var generator = SplitMix64(seed: seed)
        return try builder.build(request, date: date, using: &generator)
    }

    static func error(_ request: SendRequest, builder: MessageBuilder = builder) -> MessageBuildError? {
        do {
            _ = try build(request, builder: builder)
            return nil
        } catch {
            return error as? MessageBuildError
        }
    }

    static let image = MessageAttachment(filename: "logo.png", contentType: "image/png", content: Data(png).base64EncodedString(),
                                         contentID: "logo@hato.test", disposition: .inline)
    static let pdf = MessageAttachment(filename: "invoice.pdf", contentType: "application/pdf", content: Data("%PDF-1.4".utf8).base64EncodedString())

    // MARK: Structure

    @Test("the MIME tree for each combination of text, html, inline images and attachments", arguments: [
        ("text", "text/plain"),
        ("html", "text/html"),
        ("text+html", "multipart/alternative[text/plain,text/html]"),
        ("text+attachment", "multipart/mixed[text/plain,application/pdf]"),
        ("html+attachment", "multipart/mixed[text/html,application/pdf]"),
        ("text+html+attachment", "multipart/mixed[multipart/alternative[text/plain,text/html],application/pdf]"),
        ("html+inline", "multipart/related[text/html,image/png]"),
        ("text+html+inline", "multipart/alternative[text/plain,multipart/related[text/html,image/png]]"),
        ("text+html+inline+attachment",
         "multipart/mixed[multipart/alternative[text/plain,multipart/related[text/html,image/png]],application/pdf]"),
        ("text+inline", "multipart/mixed[text/plain,image/png]"),
        ("attachment", "multipart/mixed[application/pdf]"),
    ])
    func structure(combination: String, expected: String) throws {
        let parts = Set(combination.split(separator: "+").map(String.init))
        var attachments: [MessageAttachment] = []
        if parts.contains("inline") { attachments.append(Self.image) }
        if parts.contains("attachment") { attachments.append(Self.pdf) }
        let request = Self.request(text: parts.contains("text") ? "Hello" : nil,
                                   html: parts.contains("html") ? "<p>Hello <img src=\"cid:logo@hato.test\"></p>" : nil,
                                   attachments: attachments)
        let message = try Self.build(request)
        let entity = MIMEEntity(parsing: message.content)
        #expect(mimeShape(entity) == expected)
        if parts.contains("inline") {
            let leaves = Self.leaves(entity)
            let image = try #require(leaves.first { $0.mediaType == "image/png" })
            #expect(image.decodedBody == Self.png)
            #expect(image.field("content-id") == "<logo@hato.test>")
            #expect(image.field("content-disposition") == "inline; filename=\"logo.png\"")
        }
    }

    static func leaves(_ entity: MIMEEntity) -> [MIMEEntity] {
        entity.parts.isEmpty ? [entity] : entity.parts.flatMap(leaves)
    }

    @Test("the header: Date from the clock, From, To, Subject, Message-ID <random@hostname>, MIME-Version, in order; CRLF only")
    func headerFields() throws {
        let message = try Self.build(Self.request())
        let text = String(decoding: message.content, as: UTF8.self)
        let header = try #require(text.components(separatedBy: "\r\n\r\n").first)
        let names = header.components(separatedBy: "\r\n").map { String($0.prefix { $0 != ":" }) }
        #expect(names == ["Date", "From", "To", "Subject", "Message-ID", "MIME-Version", "Content-Type", "Content-Transfer-Encoding"])
        #expect(headerFieldValue("Date", in: text) == "Thu, 28 May 2026 20:26:40 +0000")
        #expect(headerFieldValue("From", in: text) == "Sender <sender@example.com>")
        #expect(headerFieldValue("MIME-Version", in: text) == "1.0")
        let id = try #require(headerFieldValue("Message-ID", in: text))
        #expect(id == message.messageID)
        #expect(id.wholeMatch(of: /<[0-9a-z]{24}@mail\.hato\.test>/) != nil)
        #expect(text.hasSuffix("\r\n\r\nHello\r\n"))
        // CRLF everywhere: no lone CR or LF.
        let bytes = message.content
        for i in bytes.indices where bytes[i] == 0x0A { #expect(i > 0 && bytes[i - 1] == 0x0D) }
        for i in bytes.indices where bytes[i] == 0x0D { #expect(i + 1 < bytes.count && bytes[i + 1] == 0x0A) }
        #expect(message.bodyType == .sevenBit)
    }

    @Test("text bodies: short ASCII as 7bit, non-ASCII or long lines as quoted-printable, LF and CR made CRLF, decoded exactly")
    func textEncodings() throws {
        let ascii = try Self.build(Self.request(text: "line one\nline two\r\nline three\rend"))
        let asciiEntity = MIMEEntity(parsing: ascii.content)
        #expect(asciiEntity.field("content-transfer-encoding") == "7bit")
        #expect(asciiEntity.field("content-type") == "text/plain; charset=utf-8")
        #expect(asciiEntity.body == Array("line one\r\nline two\r\nline three\r\nend\r\n".utf8))

        let unicode = "Grüße aus Köln — こんにちは\n" + String(repeating: "long line ", count: 20) + "\nend with space "
        let qp = try Self.build(Self.request(text: unicode))
        let qpEntity = MIMEEntity(parsing: qp.content)
        #expect(qpEntity.field("content-transfer-encoding") == "quoted-printable")
        #expect(qp.content.allSatisfy { $0 < 0x80 })
        #expect(String(decoding: qpEntity.decodedBody, as: UTF8.self) == unicode.replacingOccurrences(of: "\n", with: "\r\n") + "\r\n")
    }

    @Test("Bcc recipients are in the envelope only; recipients are distinct with the domain compared without case")
    func bccAndEnvelope() throws {
        var request = Self.request()
        request.to = [EmailAddress("Ana@Example.NET", name: "Ana"), EmailAddress("bob@example.net")]
        request.cc = [EmailAddress("ana@example.net"), EmailAddress("carol@example.org")]
        request.bcc = [EmailAddress("dave@example.org", name: "Dave Secret"), EmailAddress("BOB@example.net"), EmailAddress("bob@EXAMPLE.net")]
        let message = try Self.build(request)
        let text = String(decoding: message.content, as: UTF8.self)
        #expect(!text.lowercased().contains("bcc"))
        #expect(!text.contains("dave"))
        #expect(!text.contains("Secret"))
        #expect(message.recipients.map(\.address) == ["Ana@Example.NET", "bob@example.net", "ana@example.net", "carol@example.org",
                                                      "dave@example.org", "BOB@example.net"])
        #expect(message.reversePath == .mailbox(Mailbox(localPart: "sender", domain: "example.com")))
        #expect(headerFieldValue("To", in: text) == "Ana <Ana@Example.NET>, bob@example.net")
        #expect(headerFieldValue("Cc", in: text) == "ana@example.net, carol@example.org")
    }

    @Test("envelope.mail_from replaces the reverse-path and envelope.rcpt_to the forward-paths; the header is unchanged")
    func envelopeOverride() throws {
        var request = Self.request()
        request.replyTo = [EmailAddress("help@example.com", name: "Help desk")]
        request.envelope = SendRequest.Envelope(mailFrom: "bounces+123@example.com", rcptTo: ["x@example.org", "x@EXAMPLE.ORG", "y@example.org"])
        let message = try Self.build(request)
        let text = String(decoding: message.content, as: UTF8.self)
        #expect(message.reversePath.address == "bounces+123@example.com")
        #expect(message.recipients.map(\.address) == ["x@example.org", "y@example.org"])
        #expect(headerFieldValue("To", in: text) == "ana@example.net")
        #expect(headerFieldValue("Reply-To", in: text) == "Help desk <help@example.com>")
        #expect(headerFieldValue("From", in: text) == "Sender <sender@example.com>")
    }

    @Test("the same seed gives the same octets; another seed another Message-ID and other boundaries")
    func randomness() throws {
        let request = Self.request(text: "t", html: "<p>h</p>", attachments: [Self.pdf])
        let a = try Self.build(request, seed: 7), b = try Self.build(request, seed: 7), c = try Self.build(request, seed: 8)
        #expect(a.content == b.content)
        #expect(a.messageID != c.messageID)
        let boundaries = { (m: BuiltMessage) in Set(String(decoding: m.content, as: UTF8.self).matches(of: /boundary="([^"]+)"/).map { String($0.1) }) }
        #expect(boundaries(a).count == 2)
        #expect(boundaries(a).isDisjoint(with: boundaries(c)))
        #expect(boundaries(a).allSatisfy { $0.hasPrefix("=_hato_") && $0.utf8.count == 31 })
    }

    @Test("a boundary that occurs in the content is drawn again")
    func boundaryCollision() throws {
        let first = try Self.build(Self.request(text: "plain", html: "<p>x</p>"), seed: 42)
        let boundary = try #require(String(decoding: first.content, as: UTF8.self).firstMatch(of: /boundary="([^"]+)"/)?.1)
        // The same seed draws the same boundary first; now the text contains it.
        let second = try Self.build(Self.request(text: "see --\(boundary) here", html: "<p>x</p>"), seed: 42)
        let secondText = String(decoding: second.content, as: UTF8.self)
        let chosen = try #require(secondText.firstMatch(of: /boundary="([^"]+)"/)?.1)
        #expect(chosen != boundary)
        let entity = MIMEEntity(parsing: second.content)
        #expect(entity.parts.count == 2)
        #expect(entity.parts.first?.body == Array("see --\(boundary) here".utf8))
    }

    @Test("non-ASCII subject and display names are encoded-words; every line of the header is at most 76 characters")
    func encodedHeader() throws {
        var request = Self.request()
        request.from = EmailAddress("taro@example.jp", name: "山田太郎")
        request.to = [EmailAddress("ana@example.net", name: "Ana Díaz"), EmailAddress("li@example.cn", name: "李小龙 🐉")]
        request.subject = MIMEEncodingTests.emojiSubject
        let message = try Self.build(request)
        let text = String(decoding: message.content, as: UTF8.self)
        let header = try #require(text.components(separatedBy: "\r\n\r\n").first)
        #expect(header.components(separatedBy: "\r\n").allSatisfy { $0.utf8.count <= 76 })
        #expect(message.content.allSatisfy { $0 < 0x80 })
        #expect(decodeEncodedWords(try #require(headerFieldValue("Subject", in: text))) == MIMEEncodingTests.emojiSubject)
        #expect(headerFieldValue("From", in: text) == "=?utf-8?B?5bGx55Sw5aSq6YOO?= <taro@example.jp>")
        let to = try #require(headerFieldValue("To", in: text))
        let ana = try #require(to.firstRange(of: " <ana@example.net>, "))
        #expect(decodeEncodedWords(String(to[..<ana.lowerBound])) == "Ana Díaz")
        #expect(to.hasSuffix(" <li@example.cn>"))
        #expect(decodeEncodedWords(String(to[ana.upperBound...].dropLast(" <li@example.cn>".count))) == "李小龙 🐉")
    }

    // MARK: Extra header fields

    @Test("extra header fields are written in order of name; a non-ASCII value is encoded; a long structured value is left whole")
    func extraHeaders() throws {
        var request = Self.request()
        let url = "<https://example.com/u/" + String(repeating: "z", count: 90) + ">"
        request.headers = ["X-Campaign": "Été 2026", "List-Unsubscribe": url, "x-b": "  two  ", "In-Reply-To": "<a@b>"]
        let message = try Self.build(request)
        let text = String(decoding: message.content, as: UTF8.self)
        let names = text.components(separatedBy: "\r\n\r\n")[0].components(separatedBy: "\r\n").map { String($0.prefix { $0 != ":" }) }
        #expect(names == ["Date", "From", "To", "Subject", "Message-ID", "In-Reply-To", "List-Unsubscribe", "x-b", "X-Campaign",
                          "MIME-Version", "Content-Type", "Content-Transfer-Encoding"])
        #expect(headerFieldValue("List-Unsubscribe", in: text) == url)
        #expect(headerFieldValue("x-b", in: text) == "two")
        #expect(decodeEncodedWords(try #require(headerFieldValue("X-Campaign", in: text))) == "Été 2026")
    }

    @Test("header fields Hato writes, Bcc, and names or values that would break the message are refused with bad_header", arguments: [
        ("Date", "x", "headers.Date"), ("message-id", "<x@y>", "headers.message-id"), ("MIME-Version", "1.0", "headers.MIME-Version"),
        ("Content-Type", "text/plain", "headers.Content-Type"), ("content-transfer-encoding", "8bit", "headers.content-transfer-encoding"),
        ("Content-Disposition", "inline", "headers.Content-Disposition"), ("BCC", "x@example.com", "headers.BCC"),
        ("Subject", "s", "headers.Subject"), ("From", "a@b.c", "headers.From"), ("Return-Path", "<a@b.c>", "headers.Return-Path"),
        ("X-Evil", "a\r\nBcc: victim@example.com", "headers.X-Evil"), ("X-Evil", "a\nb", "headers.X-Evil"),
        ("X-Nul", "a\u{0}b", "headers.X-Nul"), ("X-Esc", "\u{1B}[31m", "headers.X-Esc"),
        ("X Space", "v", "headers.X Space"), ("X:Colon", "v", "headers.X:Colon"), ("X-Ünicode", "v", "headers.X-Ünicode"),
        ("", "v", "headers."), ("X-Long", "a" + String(repeating: "b", count: 1000), "headers.X-Long"),
    ])
    func headerRefused(name: String, value: String, field: String) throws {
        var request = Self.request()
        request.headers = [name: value]
        let error = try #require(Self.error(request))
        #expect(error.code == .badHeader)
        #expect(error.field == field)
        #expect(error.httpStatus == 400)
    }

    @Test("the same header name twice in different case is refused")
    func duplicateHeader() throws {
        var request = Self.request()
        request.headers = ["X-Tag": "a", "x-tag": "b"]
        let error = try #require(Self.error(request))
        #expect(error.code == .badHeader)
        #expect(error.message.contains("twice"))
    }

    // MARK: Refusals

    @Test("missing and invalid fields get precise codes and JSON paths")
    func refusals() throws {
        func expectError(_ code: MessageBuildError.Code, _ field: String?, _ change: (inout SendRequest) -> Void,
                         sourceLocation: SourceLocation = #_sourceLocation) {
            var request = Self.request()
            change(&request)
            let error = Self.error(request)
            #expect(error?.code == code, "\(String(describing: error))", sourceLocation: sourceLocation)
            #expect(error?.field == field, "\(String(describing: error))", sourceLocation: sourceLocation)
        }
        expectError(.missingField, "from") { $0.from = nil }
        expectError(.missingField, "to") { $0.to = [] }
        expectError(.missingField, "text") { $0.text = nil }
        expectError(.invalidAddress, "from") { $0.from = EmailAddress("not an address") }
        expectError(.invalidAddress, "to[1]") { $0.to.append(EmailAddress("a@@b")) }
        expectError(.invalidAddress, "cc[0]") { $0.cc = [EmailAddress("<a@b.c>")] }
        expectError(.invalidAddress, "bcc[0]") { $0.bcc = [EmailAddress(String(repeating: "a", count: 65) + "@example.com")] }
        expectError(.invalidAddress, "to[0].name") { $0.to = [EmailAddress("a@b.c", name: "Eve\r\nBcc: x@y.z")] }
        expectError(.invalidAddress, "from.name") { $0.from = EmailAddress("a@b.c", name: "tab\tname") }
        expectError(.invalidAddress, "envelope.mail_from") { $0.envelope = SendRequest.Envelope(mailFrom: "nope") }
        expectError(.invalidAddress, "envelope.rcpt_to[0]") { $0.envelope = SendRequest.Envelope(rcptTo: ["nope"]) }
        expectError(.unsupportedAddress, "to[0]") { $0.to = [EmailAddress("用户@例子.中国")] }
        expectError(.unsupportedAddress, "reply_to[0]") { $0.replyTo = [EmailAddress("josé@example.com")] }
        expectError(.invalidField, "subject") { $0.subject = "two\nlines" }
        expectError(.badBase64, "attachments[0].content") { $0.attachments = [MessageAttachment(filename: "a", content: "not*base64")] }
        expectError(.invalidField, "attachments[0].content_type") {
            $0.attachments = [MessageAttachment(filename: "a", contentType: "text/plain; charset=utf-8", content: "")]
        }
        expectError(.invalidField, "attachments[0].content_type") {
            $0.attachments = [MessageAttachment(filename: "a", contentType: "message/rfc822", content: "")]
        }
        expectError(.invalidField, "attachments[0].content_type") {
            $0.attachments = [MessageAttachment(filename: "a", contentType: "image", content: "")]
        }
        expectError(.invalidField, "attachments[0].filename") { $0.attachments = [MessageAttachment(filename: "", content: "")] }
        expectError(.invalidField, "attachments[0].filename") { $0.attachments = [MessageAttachment(filename: "a\nb", content: "")] }
        expectError(.invalidField, "attachments[0].filename") {
            $0.attachments = [MessageAttachment(filename: String(repeating: "é", count: 128), content: "")]
        }
        expectError(.invalidField, "attachments[0].content_id") {
            $0.attachments = [MessageAttachment(filename: "a", content: "", contentID: "has space")]
        }
        expectError(.invalidField, "attachments[1].content_id") {
            $0.attachments = [MessageAttachment(filename: "a", content: "", contentID: "<same@x>"),
                              MessageAttachment(filename: "b", content: "", contentID: "same@x")]
        }
    }

    // MARK: Limits

    @Test("recipients are counted once each, after removing duplicates, against the limit")
    func recipientLimit() throws {
        let builder = MessageBuilder(hostname: "h.test", maximumRecipients: 3)
        var request = Self.request()
        request.to = [EmailAddress("a@x.test"), EmailAddress("b@x.test")]
        request.cc = [EmailAddress("a@X.test"), EmailAddress("b@x.TEST")]
        request.bcc = [EmailAddress("c@x.test"), EmailAddress("a@x.test")]
        #expect(try Self.build(request, builder: builder).recipients.map(\.address) == ["a@x.test", "b@x.test", "c@x.test"])
        request.bcc.append(EmailAddress("d@x.test"))
        let error = try #require(Self.error(request, builder: builder))
        #expect(error.code == .tooManyRecipients)
        #expect(error.code.rawValue == "too_many_recipients")
        #expect(error.message == "4 distinct recipients; at most 3 per message")
    }

    @Test("the size limit applies to the whole message: a message of exactly the limit passes, one octet less fails; a large attachment fails before it is encoded")
    func sizeLimit() throws {
        let request = Self.request(text: "t", attachments: [Self.pdf])
        let size = try Self.build(request).content.count
        #expect(try Self.build(request, builder: MessageBuilder(hostname: "mail.hato.test", maximumSize: size)).content.count == size)
        let error = try #require(Self.error(request, builder: MessageBuilder(hostname: "mail.hato.test", maximumSize: size - 1)))
        #expect(error.code == .messageTooLarge)
        #expect(error.httpStatus == 413)
        #expect(error.message == "the message is \(size) octets; at most \(size - 1) are accepted")

        let big = MessageAttachment(filename: "big.bin", content: Data(count: 3000).base64EncodedString())
        let early = try #require(Self.error(Self.request(attachments: [big]), builder: MessageBuilder(hostname: "h", maximumSize: 2000)))
        #expect(early.code == .messageTooLarge)
        #expect(early.message.contains("over"))
    }

    // MARK: JSON

    @Test("a JSON body with snake_case keys decodes; a single address may stand for a list; tags and metadata are carried, not written")
    func json() throws {
        let body = """
            {"from": {"name": "Shop", "address": "shop@example.com"}, "to": "ana@example.net",
             "cc": ["b@example.net", {"address": "c@example.net"}], "reply_to": {"address": "help@example.com"},
             "subject": "Order", "text": "Thanks", "headers": {"X-Order": "42"},
             "attachments": [{"filename": "a.txt", "content_type": "text/plain", "content": "aGk=", "content_id": "a@x", "disposition": "inline"}],
             "tags": ["receipt"], "metadata": {"order": "42"}, "envelope": {"mail_from": "b@example.com"}}
            """
        let request = try SendRequest(json: Array(body.utf8))
        #expect(request.from == EmailAddress("shop@example.com", name: "Shop"))
        #expect(request.to == [EmailAddress("ana@example.net")])
        #expect(request.cc == [EmailAddress("b@example.net"), EmailAddress("c@example.net")])
        #expect(request.replyTo == [EmailAddress("help@example.com")])
        #expect(request.attachments == [MessageAttachment(filename: "a.txt", contentType: "text/plain", content: "aGk=", contentID: "a@x",
                                                          disposition: .inline)])
        #expect(request.envelope?.mailFrom == "b@example.com")
        let message = try Self.build(request)
        #expect(message.tags == ["receipt"])
        #expect(message.metadata == ["order": "42"])
        let text = String(decoding: message.content, as: UTF8.self)
        #expect(!text.contains("receipt"))
        #expect(headerFieldValue("X-Order", in: text) == "42")
        // Encoding and decoding again gives the same request.
        let again = try SendRequest(json: Array(try JSONEncoder().encode(request)))
        #expect(again == request)
    }

    @Test("bad JSON bodies name the field", arguments: [
        ("not json", MessageBuildError.Code.invalidJSON, nil as String?),
        ("[1, 2]", .invalidJSON, nil),
        ("{\"from\": \"a@b.c\", \"too\": [\"x@y.z\"]}", .invalidField, "too"),
        ("{\"to\": [\"a@b.c\", 5]}", .invalidField, "to[1]"),
        ("{\"to\": [{\"adress\": \"a@b.c\"}]}", .invalidField, "to[0].adress"),
        ("{\"to\": [{\"name\": \"A\"}]}", .missingField, "to[0].address"),
        ("{\"attachments\": [{\"filename\": \"a\"}]}", .missingField, "attachments[0].content"),
        ("{\"attachments\": [{\"filename\": \"a\", \"content\": \"\", \"disposition\": \"sideways\"}]}", .invalidField, "attachments[0].disposition"),
        ("{\"headers\": {\"X-A\": 1}}", .invalidField, "headers.X-A"),
        ("{\"envelope\": {\"rcpt_to\": \"a@b.c\"}}", .invalidField, "envelope.rcpt_to"),
    ])
    func badJSON(body: String, code: MessageBuildError.Code, field: String?) {
        do {
            _ = try SendRequest(json: Array(body.utf8))
            Issue.record("decoded \(body)")
        } catch {
            #expect(error.code == code, "\(error)")
            #expect(error.field == field, "\(error)")
            if body.contains("5]") { #expect(error.message == "`to[1]` should be an address string or an object {\"name\", \"address\"}") }
        }
    }

    // MARK: Raw messages

    static func raw(_ text: String) -> String { Data(text.utf8).base64EncodedString() }

    @Test("a raw message: line endings made CRLF, Bcc removed with its continuation lines, Date and Message-ID added when missing")
    func rawMessage() throws {
        let original = "From: a@example.com\nTo: b@example.net\nBcc: secret@example.org,\n  other@example.org\nSubject: raw\n\nbody line\n"
        let request = SendRequest(tags: ["t"], raw: Self.raw(original),
                                  envelope: SendRequest.Envelope(mailFrom: "a@example.com", rcptTo: ["b@example.net", "secret@example.org"]))
        let message = try Self.build(request)
        let text = String(decoding: message.content, as: UTF8.self)
        #expect(!text.contains("secret") && !text.contains("other@"))
        #expect(text.hasPrefix("From: a@example.com\r\nTo: b@example.net\r\nSubject: raw\r\nDate: Thu, 28 May 2026 20:26:40 +0000\r\nMessage-ID: <"))
        #expect(text.hasSuffix("\r\n\r\nbody line\r\n"))
        #expect(headerFieldValue("Message-ID", in: text) == message.messageID)
        #expect(message.recipients.map(\.address) == ["b@example.net", "secret@example.org"])
        #expect(message.reversePath.address == "a@example.com")
        #expect(message.bodyType == .sevenBit)
        #expect(message.tags == ["t"])
    }

    @Test("a raw message keeps its own Date and Message-ID; 8-bit octets in its body make it 8BITMIME")
    func rawKeepsFields() throws {
        let original = "From: a@example.com\r\nDate: Mon, 1 Jun 2026 10:00:00 +0200\r\nMessage-ID:\r\n <own@example.com>\r\n\r\ncafé\r\n"
        let message = try Self.build(SendRequest(raw: Self.raw(original),
                                                 envelope: SendRequest.Envelope(mailFrom: "a@example.com", rcptTo: ["b@example.net"])))
        #expect(message.content == Array(original.utf8))
        #expect(message.messageID == "<own@example.com>")
        #expect(message.bodyType == .eightBitMIME)
    }

    @Test("raw messages are refused with fields that describe the message, without an envelope, or when malformed")
    func rawRefusals() throws {
        let envelope = SendRequest.Envelope(mailFrom: "a@example.com", rcptTo: ["b@example.net"])
        let good = Self.raw("From: a@example.com\r\n\r\nx\r\n")
        func expectError(_ request: SendRequest, _ code: MessageBuildError.Code, _ field: String?, sourceLocation: SourceLocation = #_sourceLocation) {
            let error = Self.error(request)
            #expect(error?.code == code, "\(String(describing: error))", sourceLocation: sourceLocation)
            #expect(error?.field == field, "\(String(describing: error))", sourceLocation: sourceLocation)
        }
        expectError(SendRequest(from: EmailAddress("a@example.com"), raw: good, envelope: envelope), .invalidField, "from")
        expectError(SendRequest(subject: "s", raw: good, envelope: envelope), .invalidField, "subject")
        expectError(SendRequest(raw: good), .missingField, "envelope.mail_from")
        expectError(SendRequest(raw: good, envelope: SendRequest.Envelope(mailFrom: "a@example.com", rcptTo: [])), .missingField, "envelope.rcpt_to")
        expectError(SendRequest(raw: "%%%", envelope: envelope), .badBase64, "raw")
        expectError(SendRequest(raw: "", envelope: envelope), .invalidField, "raw")
        expectError(SendRequest(raw: Self.raw("Subject: no from\r\n\r\nx\r\n"), envelope: envelope), .missingField, "raw")
        expectError(SendRequest(raw: Self.raw("Hello there\r\n"), envelope: envelope), .invalidField, "raw")
        expectError(SendRequest(raw: Self.raw("From: a@example.com\r\nSubject: \u{E9}\r\n\r\nx\r\n"), envelope: envelope), .invalidField, "raw")
        expectError(SendRequest(raw: Self.raw("From: a@example.com\r\n\r\n" + String(repeating: "x", count: 999) + "\r\n"), envelope: envelope),
                    .invalidField, "raw")
        let many = SendRequest.Envelope(mailFrom: "a@example.com", rcptTo: (0..<11).map { "r\($0)@example.net" })
        expectError(SendRequest(raw: good, envelope: many), .tooManyRecipients, nil)
        let error = Self.error(SendRequest(raw: good, envelope: envelope), builder: MessageBuilder(hostname: "h", maximumSize: 10))
        #expect(error?.code == .messageTooLarge)
    }
}
