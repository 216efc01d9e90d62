import Foundation
import SMTPCore

/// The body of a send request (`POST /api/v1/messages`, JSON with snake_case keys): either the
/// parts of a message for `MessageBuilder` to write, or a complete message (`raw`) with its
/// envelope.
///
/// Decoding checks only the JSON shapes (and refuses unknown keys); `MessageBuilder.build`
/// checks the values. Lists of addresses also accept a single address.
public struct SendRequest: Sendable, Hashable, Codable {
    /// The SMTP envelope (RFC 5321 §3.3): required with `raw`, optional otherwise.
    public struct Envelope: Sendable, Hashable, Codable {
        /// The reverse-path (`MAIL FROM`), a mailbox; without it, the `from` address.
        public var mailFrom: String?
        /// The forward-paths (`RCPT TO`); without them, `to` + `cc` + `bcc`.
        public var rcptTo: [String]?

        /// Creates an envelope.
        /// - Parameters:
        ///   - mailFrom: the reverse-path mailbox, or nil.
        ///   - rcptTo: the forward-path mailboxes, or nil.
        public init(mailFrom: String? = nil, rcptTo: [String]? = nil) {
            self.mailFrom = mailFrom
            self.rcptTo = rcptTo
        }

        private enum CodingKeys: String, CodingKey, CaseIterable {
            case mailFrom = "mail_from"
            case rcptTo = "rcpt_to"
        }

        /// Reads the JSON object; unknown keys are refused.
        /// - Throws: `DecodingError`, or `MessageBuildError` for an unknown key.
        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            try JSONFields.refuseUnknownKeys(in: decoder, known: CodingKeys.allCases.map(\.rawValue))
            self.init(mailFrom: try container.decodeIfPresent(String.self, forKey: .mailFrom),
                      rcptTo: try container.decodeIfPresent([String].self, forKey: .rcptTo))
        }
    }

    /// The author (`From:`, RFC 5322 §3.6.2); required unless `raw` is given.
    public var from: EmailAddress?
    /// `To:` recipients (RFC 5322 §3.6.3).
    public var to: [EmailAddress]
    /// `Cc:` recipients.
    public var cc: [EmailAddress]
    /// Blind recipients: in the envelope, never in the header.
    public var bcc: [EmailAddress]
    /// `Reply-To:` addresses (RFC 5322 §3.6.2).
    public var replyTo: [EmailAddress]
    /// The subject (RFC 5322 §3.6.5), any Unicode text without line breaks or control characters.
    public var subject: String?
    /// The plain-text body (any line breaks; written with CRLF).
    public var text: String?
    /// The HTML body.
    public var html: String?
    /// Extra header fields, name → value (RFC 5322 §3.6.8), written in order of name.
    public var headers: [String: String]
    /// Files to attach.
    public var attachments: [MessageAttachment]
    /// Labels for reporting; not written into the message.
    public var tags: [String]
    /// Key-value pairs for reporting and webhooks; not written into the message.
    public var metadata: [String: String]
    /// A complete RFC 5322 message, base64; excludes every field that describes the message.
    public var raw: String?
    /// The SMTP envelope; required with `raw`.
    public var envelope: Envelope?
    /// `priority`: `transactional` or `bulk` (issue 18); may lower the class the tenant's pool or
    /// the tenant sets, never raise it. Nil: theirs. Not written into the message.
    public var priority: MessagePriority?

    /// Creates a request.
    /// - Parameters: see the properties.
    public init(from: EmailAddress? = nil, to: [EmailAddress] = [], cc: [EmailAddress] = [], bcc: [EmailAddress] = [],
                replyTo: [EmailAddress] = [], subject: String? = nil, text: String? = nil, html: String? = nil,
                headers: [String: String] = [:], attachments: [MessageAttachment] = [], tags: [String] = [],
                metadata: [String: String] = [:], raw: String? = nil, envelope: Envelope? = nil, priority: MessagePriority? = nil) {
        self.priority = priority
        self.from = from; self.to = to; self.cc = cc; self.bcc = bcc; self.replyTo = replyTo
        self.subject = subject; self.text = text; self.html = html; self.headers = headers
        self.attachments = attachments; self.tags = tags; self.metadata = metadata
        self.raw = raw; self.envelope = envelope
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case from, to, cc, bcc
        case replyTo = "reply_to"
        case subject, text, html, headers, attachments, tags, metadata, raw, envelope, priority
    }

    /// Reads a request from a JSON body.
    /// - Parameter json: the body's octets (UTF-8 JSON).
    /// - Throws: `MessageBuildError`: `invalid_json` when the body is not a JSON object,
    ///   `missing_field`/`invalid_field` (with the JSON path) when a field has the wrong shape
    ///   or is unknown.
    public init(json: [UInt8]) throws(MessageBuildError) {
        do {
            self = try JSONDecoder().decode(SendRequest.self, from: Data(json))
        } catch {
            throw JSONFields.error(from: error)
        }
    }

    /// Reads the JSON object; unknown keys are refused.
    /// - Throws: `DecodingError`, or `MessageBuildError` for an unknown key.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        try JSONFields.refuseUnknownKeys(in: decoder, known: CodingKeys.allCases.map(\.rawValue))
        func addresses(_ key: CodingKeys) throws -> [EmailAddress] {
            guard c.contains(key), try !c.decodeNil(forKey: key) else { return [] }
            do {
                return try c.decode([EmailAddress].self, forKey: key)
            } catch DecodingError.typeMismatch(_, let context) where context.codingPath.count == c.codingPath.count + 1 {
                return [try c.decode(EmailAddress.self, forKey: key)]  // not a list: one address
            }
        }
        self.init(from: try c.decodeIfPresent(EmailAddress.self, forKey: .from),
                  to: try addresses(.to), cc: try addresses(.cc), bcc: try addresses(.bcc), replyTo: try addresses(.replyTo),
                  subject: try c.decodeIfPresent(String.self, forKey: .subject),
                  text: try c.decodeIfPresent(String.self, forKey: .text),
                  html: try c.decodeIfPresent(String.self, forKey: .html),
                  headers: try c.decodeIfPresent([String: String].self, forKey: .headers) ?? [:],
                  attachments: try c.decodeIfPresent([MessageAttachment].self, forKey: .attachments) ?? [],
                  tags: try c.decodeIfPresent([String].self, forKey: .tags) ?? [],
                  metadata: try c.decodeIfPresent([String: String].self, forKey: .metadata) ?? [:],
                  raw: try c.decodeIfPresent(String.self, forKey: .raw),
                  envelope: try c.decodeIfPresent(Envelope.self, forKey: .envelope),
                  priority: try c.decodeIfPresent(String.self, forKey: .priority).map { text throws(MessageBuildError) -> MessagePriority in
                      guard let p = MessagePriority(parsing: text) else { throw .invalidField("priority", "must be \"transactional\" or \"bulk\"") }
                      return p
                  })
    }

    /// Writes the JSON object (snake_case keys, empty lists and absent fields left out).
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encodeIfPresent(from, forKey: .from)
        if !to.isEmpty { try c.encode(to, forKey: .to) }
        if !cc.isEmpty { try c.encode(cc, forKey: .cc) }
        if !bcc.isEmpty { try c.encode(bcc, forKey: .bcc) }
        if !replyTo.isEmpty { try c.encode(replyTo, forKey: .replyTo) }
        try c.encodeIfPresent(subject, forKey: .subject)
        try c.encodeIfPresent(text, forKey: .text)
        try c.encodeIfPresent(html, forKey: .html)
        if !headers.isEmpty { try c.encode(headers, forKey: .headers) }
        if !attachments.isEmpty { try c.encode(attachments, forKey: .attachments) }
        if !tags.isEmpty { try c.encode(tags, forKey: .tags) }
        if !metadata.isEmpty { try c.encode(metadata, forKey: .metadata) }
        try c.encodeIfPresent(raw, forKey: .raw)
        try c.encodeIfPresent(envelope, forKey: .envelope)
        try c.encodeIfPresent(priority?.rawValue, forKey: .priority)
    }
}
