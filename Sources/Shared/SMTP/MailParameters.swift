
/// The declared body type of a message (RFC 6152 §2, `BODY=` MAIL parameter).
public enum BodyType: Sendable, Hashable {
    /// `BODY=7BIT`, or no BODY parameter (RFC 6152 §3).
    case sevenBit
    /// `BODY=8BITMIME` (RFC 6152 §2).
    case eightBitMIME
}

/// What a DSN should return of the message (RFC 3461 §4.3 `RET`).
public enum DSNReturn: String, Sendable, Hashable {
    /// `RET=FULL`: the whole message.
    case full = "FULL"
    /// `RET=HDRS`: the header section only.
    case headers = "HDRS"
}

/// When DSNs are wanted for a recipient (RFC 3461 §4.1 `NOTIFY`).
public enum DSNNotify: Sendable, Hashable {
    /// `NOTIFY=NEVER`.
    case never
    /// `NOTIFY=` a non-empty comma list of `SUCCESS`, `FAILURE`, `DELAY`.
    case on(success: Bool, failure: Bool, delay: Bool)

    /// The canonical parameter value: `NEVER`, or the list in the order SUCCESS,FAILURE,DELAY.
    public var text: String {
        switch self {
        case .never:
            return "NEVER"
        case .on(let success, let failure, let delay):
            var items: [String] = []
            if success { items.append("SUCCESS") }
            if failure { items.append("FAILURE") }
            if delay { items.append("DELAY") }
            return items.joined(separator: ",")
        }
    }
}

/// The ESMTP parameters of `MAIL FROM:` this server understands.
public struct MailParameters: Sendable, Hashable {
    /// `SIZE=n`: the client's size estimate in octets (RFC 1870 §3). Saturates at `Int.max`.
    public var size: Int?
    /// `BODY=7BIT|8BITMIME` (RFC 6152 §2).
    public var body: BodyType?
    /// `SMTPUTF8` (RFC 6531 §3.4): UTF-8 addresses and header fields in this transaction.
    public var smtputf8: Bool
    /// `RET=FULL|HDRS` (RFC 3461 §4.3).
    public var ret: DSNReturn?
    /// `ENVID=` (RFC 3461 §4.4) as received: `xtext`, at most 100 octets.
    public var envelopeID: String?
    /// `AUTH=` (RFC 4954 §5) as received: `<>` or an `xtext` mailbox. Accepted and not trusted.
    public var auth: String?

    /// Creates a parameter set.
    /// - Parameters:
    ///   - size: the declared `SIZE`, if any.
    ///   - body: the declared `BODY`, if any.
    ///   - smtputf8: whether `SMTPUTF8` was given.
    ///   - ret: the `RET` value, if any.
    ///   - envelopeID: the `ENVID` xtext, if any.
    ///   - auth: the `AUTH` value, if any.
    public init(size: Int? = nil, body: BodyType? = nil, smtputf8: Bool = false, ret: DSNReturn? = nil,
                envelopeID: String? = nil, auth: String? = nil) {
        self.size = size
        self.body = body
        self.smtputf8 = smtputf8
        self.ret = ret
        self.envelopeID = envelopeID
        self.auth = auth
    }
}

/// The ESMTP parameters of `RCPT TO:` this server understands (RFC 3461 §4.1, §4.2).
public struct RecipientParameters: Sendable, Hashable {
    /// `NOTIFY=` (RFC 3461 §4.1), nil when not given (then failures and delays are reported).
    public var notify: DSNNotify?
    /// `ORCPT=addr-type;xtext` (RFC 3461 §4.2) exactly as received, at most 500 octets.
    public var originalRecipient: String?

    /// Creates a parameter set.
    /// - Parameters:
    ///   - notify: the `NOTIFY` value, if any.
    ///   - originalRecipient: the `ORCPT` value, if any.
    public init(notify: DSNNotify? = nil, originalRecipient: String? = nil) {
        self.notify = notify
        self.originalRecipient = originalRecipient
    }
}
