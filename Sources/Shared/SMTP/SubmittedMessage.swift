import HatoIO

/// A complete message accepted at the end of DATA or the last BDAT chunk, to be stored
/// durably before the `250` is sent (RFC 5321 §4.1.1.4, §6.1).
public struct SubmittedMessage: Sendable, Equatable {
    /// The EHLO/HELO argument.
    public var heloName: String
    /// The client's address.
    public var peer: SocketAddress
    /// The `MAIL FROM:` path.
    public var reversePath: ReversePath
    /// Accepted recipients in `RCPT` order (duplicates kept). `<Postmaster>` and
    /// `postmaster@<hostname>` are here as the configured operator mailbox (`smtp.postmaster`), or
    /// as `postmaster@<hostname>` when none is configured (relaying clients only).
    public var recipients: [Mailbox]
    /// For each recipient (parallel to `recipients`), the address the client gave when the server
    /// rewrote it (postmaster to `smtp.postmaster`, RFC 5321 §4.5.1); nil when kept as given.
    public var originalRecipients: [Mailbox?]
    /// Dot-unstuffed content with CRLF line endings, without the terminating `.CRLF`.
    public var body: [UInt8]
    /// The declared `BODY=` (RFC 6152), `.sevenBit` when not declared.
    public var bodyType: BodyType
    /// The declared `SIZE=` (RFC 1870), if any.
    public var declaredSize: Int?
    /// Whether the client greeted with EHLO (for `with ESMTP` in `Received:`, RFC 3848).
    public var esmtp: Bool
    /// The NOTIFY/ORCPT parameters of each recipient, parallel to `recipients` (RFC 3461).
    public var recipientParameters: [RecipientParameters]
    /// Whether MAIL declared `SMTPUTF8` (RFC 6531).
    public var smtputf8: Bool
    /// `RET=` (RFC 3461 §4.3), if given.
    public var dsnReturn: DSNReturn?
    /// `ENVID=` as received (xtext, RFC 3461 §4.4), if given.
    public var envelopeID: String?
    /// The user the session authenticated as (RFC 4954), nil when it did not.
    public var authenticatedUser: String?
    /// The TLS parameters when the message came over TLS (RFC 3207).
    public var tls: NegotiatedTLS?
    /// Whether the content came by BDAT (RFC 3030) rather than DATA.
    public var chunked: Bool

    /// Creates a message record.
    /// - Parameters: see the properties.
    public init(heloName: String, peer: SocketAddress, reversePath: ReversePath, recipients: [Mailbox],
                body: [UInt8], bodyType: BodyType, declaredSize: Int?, esmtp: Bool,
                recipientParameters: [RecipientParameters]? = nil, smtputf8: Bool = false, dsnReturn: DSNReturn? = nil,
                envelopeID: String? = nil, authenticatedUser: String? = nil, tls: NegotiatedTLS? = nil, chunked: Bool = false,
                originalRecipients: [Mailbox?]? = nil) {
        self.heloName = heloName
        self.peer = peer
        self.reversePath = reversePath
        self.recipients = recipients
        self.body = body
        self.bodyType = bodyType
        self.declaredSize = declaredSize
        self.esmtp = esmtp
        self.recipientParameters = recipientParameters ?? Array(repeating: RecipientParameters(), count: recipients.count)
        self.smtputf8 = smtputf8
        self.dsnReturn = dsnReturn
        self.envelopeID = envelopeID
        self.authenticatedUser = authenticatedUser
        self.tls = tls
        self.chunked = chunked
        self.originalRecipients = originalRecipients ?? Array(repeating: nil, count: recipients.count)
    }

    /// The `with` keyword for `Received:` (RFC 3848, RFC 6531 §4.3): `SMTP`, `ESMTP`,
    /// `ESMTPS` (TLS), `ESMTPA` (AUTH), `ESMTPSA`, or the `UTF8SMTP…` forms under SMTPUTF8.
    public var protocolKeyword: String {
        guard esmtp else { return "SMTP" }
        let base = smtputf8 ? "UTF8SMTP" : "ESMTP"
        return base + (tls != nil ? "S" : "") + (authenticatedUser != nil ? "A" : "")
    }
}

/// Why the driver could not store a message (`SMTPServerSession.messageStoreFailed(_:)`).
public enum StoreFailure: Error, Sendable, Equatable {
    /// A transient failure (an I/O error, a busy database): `451 4.3.0`.
    case temporary
    /// The queue's file system is full (`SQLITE_FULL`): `452 4.3.1 Insufficient system storage`.
    case insufficientStorage
    /// The message is refused for good by the relay's policy (e.g. `550 5.7.1 unknown pool`):
    /// this reply is sent, nothing is queued.
    case refused(SMTPReply)
}
