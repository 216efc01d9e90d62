import SMTPCore

/// A message ready to enqueue: the content and its SMTP envelope, with what the request
/// carried for reporting.
public struct BuiltMessage: Sendable, Equatable {
    /// The complete RFC 5322 message: CRLF line endings, ending with CRLF, no `Bcc:` field.
    public var content: [UInt8]
    /// The reverse-path (`MAIL FROM`, RFC 5321 §4.1.1.2).
    public var reversePath: ReversePath
    /// The forward-paths (`RCPT TO`), each distinct mailbox once (the local part compared
    /// exactly, the domain without regard to case), in the order first given.
    public var recipients: [Mailbox]
    /// The `Message-ID` field's value with its angle brackets, e.g. `<k3j…@mail.example.com>`
    /// (RFC 5322 §3.6.4): the one written, or the one a raw message already had.
    public var messageID: String
    /// `.eightBitMIME` when the content has octets over 127 (only a raw message can, in its
    /// body), to be declared as `BODY=8BITMIME` (RFC 6152); `.sevenBit` otherwise.
    public var bodyType: BodyType
    /// The request's tags, unchanged.
    public var tags: [String]
    /// The request's metadata, unchanged.
    public var metadata: [String: String]

    /// Creates a built message.
    /// - Parameters: see the properties.
    public init(content: [UInt8], reversePath: ReversePath, recipients: [Mailbox], messageID: String, bodyType: BodyType,
                tags: [String], metadata: [String: String]) {
        self.content = content
        self.reversePath = reversePath
        self.recipients = recipients
        self.messageID = messageID
        self.bodyType = bodyType
        self.tags = tags
        self.metadata = metadata
    }
}
