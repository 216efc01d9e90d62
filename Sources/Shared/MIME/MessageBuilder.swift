import Foundation
import SMTPCore

/// Turns a `SendRequest` into a complete RFC 5322 message and its SMTP envelope: the pure core
/// of the HTTP send API (no clock, no randomness of its own, no I/O).
///
/// What it writes, from the request's fields:
/// - `Date:` (RFC 5322 §3.3, from the given instant, UTC), `From:`, `Reply-To:`, `To:`, `Cc:`,
///   `Subject:`, `Message-ID: <random@hostname>` (§3.6.4), the extra `headers` in order of name,
///   `MIME-Version: 1.0` (RFC 2045 §4). Never `Bcc:` (§3.6.3: the blind recipients are in the
///   envelope only). Lines are folded to 76 characters; non-ASCII subjects and display names are
///   RFC 2047 encoded-words.
/// - The body: `text` alone is `text/plain`, `html` alone `text/html`, both a
///   `multipart/alternative` (RFC 2046 §5.1.4); inline attachments with a `content_id` go with
///   the HTML in a `multipart/related` (RFC 2387); other attachments make a `multipart/mixed`
///   around all that (RFC 2046 §5.1.3). Text is UTF-8, `7bit` when it is short-lined printable
///   ASCII, quoted-printable otherwise (RFC 2045 §6.7); attachments are base64 (§6.8).
/// - The envelope: the reverse-path is `envelope.mail_from`, else the `from` address; the
///   forward-paths are `envelope.rcpt_to`, else `to` + `cc` + `bcc`, each distinct mailbox once.
///
/// A `raw` message is taken as it is, with its line endings made CRLF, its `Bcc:` fields removed
/// and `Date:`/`Message-ID:` added when missing (RFC 6409 §8.3).
public struct MessageBuilder: Sendable {
    /// The domain written on the right of each `Message-ID` (this host's name).
    public var hostname: String
    /// The largest message built, in octets (the whole content, header included). Default
    /// 25 MiB, as `smtp.max_message_size`.
    public var maximumSize: Int
    /// The most distinct recipients of one message. Default 1000, as `smtp.max_recipients`.
    public var maximumRecipients: Int

    /// Creates a builder.
    /// - Parameters:
    ///   - hostname: the domain for `Message-ID`s, e.g. `mail.example.com`.
    ///   - maximumSize: the largest message in octets.
    ///   - maximumRecipients: the most distinct recipients per message.
    public init(hostname: String, maximumSize: Int = 25 * 1024 * 1024, maximumRecipients: Int = 1000) {
        self.hostname = hostname
        self.maximumSize = maximumSize
        self.maximumRecipients = maximumRecipients
    }

    /// Builds a message with the system's random number generator for the Message-ID and the
    /// MIME boundaries.
    /// - Parameters:
    ///   - request: the send request.
    ///   - date: the instant written in `Date:` (the time of the request).
    /// - Returns: the message and its envelope.
    /// - Throws: `MessageBuildError` naming the first field that cannot be used.
    public func build(_ request: SendRequest, date: Date) throws(MessageBuildError) -> BuiltMessage {
        var generator = SystemRandomNumberGenerator()
        return try build(request, date: date, using: &generator)
    }

    /// Builds a message.
    /// - Parameters:
    ///   - request: the send request.
    ///   - date: the instant written in `Date:`.
    ///   - generator: the source of the Message-ID's random part and of the boundaries (seed
    ///     one in tests for reproducible output).
    /// - Returns: the message and its envelope.
    /// - Throws: `MessageBuildError` naming the first field that cannot be used.
    public func build(_ request: SendRequest, date: Date, using generator: inout some RandomNumberGenerator)
        throws(MessageBuildError) -> BuiltMessage {
        let messageID = "<" + RandomText.alphanumeric(24, lowercase: true, using: &generator) + "@" + hostname + ">"
        if let raw = request.raw {
            return try buildRaw(request, raw: raw, date: date, messageID: messageID)
        }
        guard let from = request.from else {
            throw .missingField("from", "`from` is required unless a `raw` message is given")
        }
        let author = try Self.mailbox(from.address, field: "from")
        try Self.checkDisplayName(from.name, field: "from.name")
        let to = try Self.mailboxes(request.to, field: "to")
        let cc = try Self.mailboxes(request.cc, field: "cc")
        let bcc = try Self.mailboxes(request.bcc, field: "bcc")
        let replyTo = try Self.mailboxes(request.replyTo, field: "reply_to")
        let recipients: [Mailbox]
        if let rcptTo = request.envelope?.rcptTo {
            recipients = try Self.distinct(Self.envelopeMailboxes(rcptTo))
        } else {
            recipients = Self.distinct(to + cc + bcc)
        }
        guard !recipients.isEmpty else {
            throw .missingField("to", "give at least one recipient in `to`, `cc` or `bcc`")
        }
        guard recipients.count <= maximumRecipients else { throw .tooManyRecipients(recipients.count, limit: maximumRecipients) }
        var reversePath = author
        if let mailFrom = request.envelope?.mailFrom { reversePath = try Self.mailbox(mailFrom, field: "envelope.mail_from") }

        var header: [String] = ["Date: " + RFC5322Date.format(date)]
        header.append(Self.addressField("From", [(from, author)]))
        if !replyTo.isEmpty { header.append(Self.addressField("Reply-To", Array(zip(request.replyTo, replyTo)))) }
        if !to.isEmpty { header.append(Self.addressField("To", Array(zip(request.to, to)))) }
        if !cc.isEmpty { header.append(Self.addressField("Cc", Array(zip(request.cc, cc)))) }
        if let subject = request.subject {
            guard !subject.unicodeScalars.contains(where: { ($0.value < 0x20 && $0 != "\t") || $0.value == 0x7F }) else {
                throw .invalidField("subject", "`subject` has a line break or another control character")
            }
            var writer = HeaderFieldWriter(name: "Subject")
            writer.appendUnstructured(subject, encodeUnfoldable: true)
            header.append(writer.text)
        }
        header.append("Message-ID: " + messageID)
        header += try Self.extraFields(request.headers)
        header.append("MIME-Version: 1.0")

        let body = try bodyPart(request)
        let (contentFields, bodyOctets) = body.render(using: &generator)
        header += contentFields

        var content: [UInt8] = []
        content.reserveCapacity(bodyOctets.count + 2048)
        for field in header { content += Array(field.utf8) + [0x0D, 0x0A] }
        content += [0x0D, 0x0A]
        content += bodyOctets
        if !bodyOctets.isEmpty && !bodyOctets.suffix(2).elementsEqual([0x0D, 0x0A]) { content += [0x0D, 0x0A] }
        guard content.count <= maximumSize else { throw .messageTooLarge(content.count, limit: maximumSize) }
        return BuiltMessage(content: content, reversePath: .mailbox(reversePath), recipients: recipients, messageID: messageID,
                            bodyType: .sevenBit, tags: request.tags, metadata: request.metadata)
    }

    // MARK: - Body

    /// The MIME tree of the body.
    private func bodyPart(_ request: SendRequest) throws(MessageBuildError) -> MIMEPart {
        guard request.text != nil || request.html != nil || !request.attachments.isEmpty else {
            throw .missingField("text", "give `text`, `html` or at least one attachment")
        }
        // The decoded content alone is a lower bound of the message's size: stop early.
        var size = (request.text?.utf8.count ?? 0) + (request.html?.utf8.count ?? 0)
        guard size <= maximumSize else { throw .messageTooLarge(size, limit: maximumSize, lowerBound: true) }
        var related: [MIMEPart] = []
        var mixed: [MIMEPart] = []
        var contentIDs: Set<String> = []
        for (index, attachment) in request.attachments.enumerated() {
            let field = "attachments[\(index)]"
            let (part, contentID, octets) = try Self.attachmentPart(attachment, field: field)
            size += octets
            guard size <= maximumSize else { throw .messageTooLarge(size, limit: maximumSize, lowerBound: true) }
            if let contentID {
                guard contentIDs.insert(contentID).inserted else {
                    throw .invalidField("\(field).content_id", "`\(field).content_id` <\(contentID)> is used by an earlier attachment")
                }
            }
            if attachment.disposition == .inline, contentID != nil, request.html != nil {
                related.append(part)
            } else {
                mixed.append(part)
            }
        }
        let text = request.text.map { Self.textPart(subtype: "plain", $0) }
        var html = request.html.map { Self.textPart(subtype: "html", $0) }
        if let part = html, !related.isEmpty { html = .multipart("related", [part] + related) }
        var body: MIMEPart?
        switch (text, html) {
        case let (text?, html?): body = .multipart("alternative", [text, html])
        case let (text?, nil): body = text
        case let (nil, html?): body = html
        case (nil, nil): body = nil
        }
        if !mixed.isEmpty { body = .multipart("mixed", (body.map { [$0] } ?? []) + mixed) }
        guard let body else { throw .missingField("text", "give `text`, `html` or at least one attachment") }
        return body
    }

    /// A `text/<subtype>; charset=utf-8` leaf: line breaks made CRLF (RFC 2046 §4.1.1), `7bit`
    /// when safe, quoted-printable otherwise.
    static func textPart(subtype: String, _ text: String) -> MIMEPart {
        let octets = canonicalLineBreaks(Array(text.utf8))
        let contentType = "Content-Type: text/\(subtype); charset=utf-8"
        if QuotedPrintable.isSafeAsSevenBit(octets) {
            return .leaf(fields: [contentType, "Content-Transfer-Encoding: 7bit"], body: octets)
        }
        return .leaf(fields: [contentType, "Content-Transfer-Encoding: quoted-printable"], body: QuotedPrintable.encode(octets))
    }

    /// `octets` with every CRLF, lone LF and lone CR made CRLF.
    static func canonicalLineBreaks(_ octets: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(octets.count + octets.count / 32)
        var i = 0
        while i < octets.count {
            let b = octets[i]
            if b == 0x0D || b == 0x0A {
                out += [0x0D, 0x0A]
                i += (b == 0x0D && i + 1 < octets.count && octets[i + 1] == 0x0A) ? 2 : 1
            } else {
                out.append(b)
                i += 1
            }
        }
        return out
    }

    /// An attachment's leaf, its Content-ID (without brackets) and its size once encoded.
    static func attachmentPart(_ attachment: MessageAttachment, field: String) throws(MessageBuildError)
        -> (part: MIMEPart, contentID: String?, encodedSize: Int) {
        let filename = attachment.filename
        guard !filename.isEmpty, filename.utf8.count <= 255 else {
            throw .invalidField("\(field).filename", "`\(field).filename` must be 1 to 255 octets of UTF-8")
        }
        guard !filename.unicodeScalars.contains(where: { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) }) else {
            throw .invalidField("\(field).filename", "`\(field).filename` has a control character")
        }
        let mediaType = (attachment.contentType ?? "application/octet-stream").lowercased()
        let halves = mediaType.split(separator: "/", omittingEmptySubsequences: false)
        guard halves.count == 2, MIMEParameter.isToken(String(halves[0])), MIMEParameter.isToken(String(halves[1])) else {
            throw .invalidField("\(field).content_type",
                                "`\(field).content_type` must be a media type `type/subtype` without parameters (RFC 2045 §5.1)")
        }
        guard halves[0] != "multipart", halves[0] != "message" else {
            throw .invalidField("\(field).content_type",
                                "`\(field).content_type` \(mediaType) cannot be sent base64-encoded (RFC 2045 §6.4); send it as application/octet-stream")
        }
        var contentID: String?
        if let given = attachment.contentID {
            var id = Substring(given)
            if id.hasPrefix("<") && id.hasSuffix(">") && id.count >= 2 { id = id.dropFirst().dropLast() }
            guard !id.isEmpty, id.utf8.count <= 250,
                  id.utf8.allSatisfy({ HeaderFieldWriter.isAtext($0) || $0 == 0x2E || $0 == 0x40 }) else {
                throw .invalidField("\(field).content_id",
                                    "`\(field).content_id` must be printable ASCII without spaces or specials, e.g. logo@example.com (RFC 2392)")
            }
            contentID = String(id)
        }
        guard let octets = Base64Body.decode(attachment.content) else { throw .badBase64("\(field).content") }
        let disposition = attachment.disposition ?? .attachment

        var fields: [String] = []
        var contentType = HeaderFieldWriter(name: "Content-Type")
        contentType.append(mediaType + ";")
        let names = MIMEParameter.segments(name: "name", value: filename)
        for (i, segment) in names.enumerated() { contentType.append(segment + (i + 1 < names.count ? ";" : "")) }
        fields.append(contentType.text)
        var contentDisposition = HeaderFieldWriter(name: "Content-Disposition")
        contentDisposition.append(disposition.rawValue + ";")
        let filenames = MIMEParameter.segments(name: "filename", value: filename)
        for (i, segment) in filenames.enumerated() { contentDisposition.append(segment + (i + 1 < filenames.count ? ";" : "")) }
        fields.append(contentDisposition.text)
        if let contentID { fields.append("Content-ID: <\(contentID)>") }
        fields.append("Content-Transfer-Encoding: base64")
        let body = Array(Base64Body.encode(octets).utf8)
        return (.leaf(fields: fields, body: body), contentID, body.count)
    }

    // MARK: - Header fields

    /// Fields the request sets through its own properties or Hato writes itself, with what to
    /// do instead.
    private static let reservedFields: [String: String] = [
        "date": "Hato writes `Date` itself",
        "message-id": "Hato writes `Message-ID` itself",
        "mime-version": "Hato writes `MIME-Version` itself",
        "from": "use the `from` field",
        "to": "use the `to` field",
        "cc": "use the `cc` field",
        "bcc": "use the `bcc` field; blind recipients are never written into the header (RFC 5322 §3.6.3)",
        "reply-to": "use the `reply_to` field",
        "subject": "use the `subject` field",
        "return-path": "`Return-Path` is added at final delivery (RFC 5321 §4.4)",
    ]

    /// The extra header fields, checked and written in order of name.
    static func extraFields(_ headers: [String: String]) throws(MessageBuildError) -> [String] {
        var out: [String] = []
        var seen: Set<String> = []
        for (name, value) in headers.sorted(by: { ($0.key.lowercased(), $0.key) < ($1.key.lowercased(), $1.key) }) {
            let field = "headers.\(name)"
            guard !name.isEmpty, name.utf8.count <= 76, name.utf8.allSatisfy({ $0 >= 33 && $0 <= 126 && $0 != 0x3A }) else {
                throw .badHeader(field, "a header field name is 1 to 76 printable ASCII characters without `:` or white space (RFC 5322 §3.6.8)")
            }
            let lower = name.lowercased()
            if let instead = reservedFields[lower] {
                throw .badHeader(field, "`\(name)` cannot be set in `headers`: \(instead)")
            }
            if lower.hasPrefix("content-") {
                throw .badHeader(field, "`\(name)` cannot be set in `headers`: Hato writes the MIME `Content-*` fields itself")
            }
            guard seen.insert(lower).inserted else {
                throw .badHeader(field, "`\(name)` is given twice (field names do not depend on case)")
            }
            if value.unicodeScalars.contains(where: { $0 == "\r" || $0 == "\n" }) {
                throw .badHeader(field, "the value of `\(name)` has a line break")
            }
            if value.unicodeScalars.contains(where: { ($0.value < 0x20 && $0 != "\t") || $0.value == 0x7F }) {
                throw .badHeader(field, "the value of `\(name)` has a control character")
            }
            var writer = HeaderFieldWriter(name: name)
            writer.appendUnstructured(value.trimmingCharacters(in: .whitespaces), encodeUnfoldable: false)
            guard writer.allLines.allSatisfy({ $0.utf8.count <= HeaderFieldWriter.hardLineLimit }) else {
                throw .badHeader(field, "the value of `\(name)` has a word too long for a header line (998 octets, RFC 5322 §2.1.1)")
            }
            out.append(writer.text)
        }
        return out
    }

    /// An address-list field (RFC 5322 §3.6.2, §3.6.3).
    static func addressField(_ name: String, _ entries: [(EmailAddress, Mailbox)]) -> String {
        var writer = HeaderFieldWriter(name: name)
        for (index, (given, mailbox)) in entries.enumerated() {
            writer.appendMailbox(name: given.name, address: mailbox.address, last: index + 1 == entries.count)
        }
        return writer.text
    }

    // MARK: - Addresses

    /// Parses a mailbox with SMTPCore's RFC 5321 §4.1.2 parser.
    static func mailbox(_ text: String, field: String) throws(MessageBuildError) -> Mailbox {
        do {
            return try Mailbox(parsing: text)
        } catch .nonASCII {
            throw .unsupportedAddress(field)
        } catch .tooLong {
            throw .invalidAddress(field, "`\(field)` is too long: a local part has at most 64 octets, a domain 255 (RFC 5321 §4.5.3.1)")
        } catch {
            throw .invalidAddress(field, "`\(field)` is not an address local-part@domain (RFC 5321 §4.1.2)")
        }
    }

    /// Checks and parses a list of addresses; each display name is checked too.
    static func mailboxes(_ list: [EmailAddress], field: String) throws(MessageBuildError) -> [Mailbox] {
        var out: [Mailbox] = []
        for (index, entry) in list.enumerated() {
            out.append(try mailbox(entry.address, field: "\(field)[\(index)]"))
            try checkDisplayName(entry.name, field: "\(field)[\(index)].name")
        }
        return out
    }

    /// Parses `envelope.rcpt_to`.
    private static func envelopeMailboxes(_ list: [String]) throws(MessageBuildError) -> [Mailbox] {
        var out: [Mailbox] = []
        for (index, text) in list.enumerated() { out.append(try mailbox(text, field: "envelope.rcpt_to[\(index)]")) }
        return out
    }

    /// A display name may be any text but control characters (it is written as atoms, a
    /// quoted-string or encoded-words).
    static func checkDisplayName(_ name: String?, field: String) throws(MessageBuildError) {
        guard let name else { return }
        if name.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
            throw .invalidAddress(field, "`\(field)` has a line break or another control character")
        }
    }

    /// Each mailbox once, in first-seen order: the local part compared exactly (RFC 5321 §2.4
    /// leaves its case to the receiving host), the domain without regard to case.
    static func distinct(_ list: [Mailbox]) -> [Mailbox] {
        var seen: Set<String> = []
        return list.filter { seen.insert($0.localPart + "@" + $0.domain.lowercased()).inserted }
    }

    // MARK: - Raw messages

    /// The fields that describe a message, which `raw` excludes.
    private static func structuredFieldsGiven(_ request: SendRequest) -> [String] {
        var given: [String] = []
        if request.from != nil { given.append("from") }
        if !request.to.isEmpty { given.append("to") }
        if !request.cc.isEmpty { given.append("cc") }
        if !request.bcc.isEmpty { given.append("bcc") }
        if !request.replyTo.isEmpty { given.append("reply_to") }
        if request.subject != nil { given.append("subject") }
        if request.text != nil { given.append("text") }
        if request.html != nil { given.append("html") }
        if !request.headers.isEmpty { given.append("headers") }
        if !request.attachments.isEmpty { given.append("attachments") }
        return given
    }

    private func buildRaw(_ request: SendRequest, raw: String, date: Date, messageID: String) throws(MessageBuildError) -> BuiltMessage {
        if let other = Self.structuredFieldsGiven(request).first {
            throw .invalidField(other, "`raw` is a complete message: leave out `\(other)`")
        }
        guard let mailFrom = request.envelope?.mailFrom else {
            throw .missingField("envelope.mail_from", "`envelope.mail_from` is required with `raw`")
        }
        guard let rcptTo = request.envelope?.rcptTo, !rcptTo.isEmpty else {
            throw .missingField("envelope.rcpt_to", "`envelope.rcpt_to` (at least one recipient) is required with `raw`")
        }
        let reversePath = try Self.mailbox(mailFrom, field: "envelope.mail_from")
        let recipients = Self.distinct(try Self.envelopeMailboxes(rcptTo))
        guard recipients.count <= maximumRecipients else { throw .tooManyRecipients(recipients.count, limit: maximumRecipients) }
        guard let octets = Base64Body.decode(raw) else { throw .badBase64("raw") }
        guard octets.count <= maximumSize else { throw .messageTooLarge(octets.count, limit: maximumSize) }
        let prepared = try RawMessage.prepare(octets, messageID: messageID, date: date)
        guard prepared.content.count <= maximumSize else { throw .messageTooLarge(prepared.content.count, limit: maximumSize) }
        return BuiltMessage(content: prepared.content, reversePath: .mailbox(reversePath), recipients: recipients,
                            messageID: prepared.messageID, bodyType: prepared.content.contains { $0 >= 0x80 } ? .eightBitMIME : .sevenBit,
                            tags: request.tags, metadata: request.metadata)
    }
}
