import HatoIO

/// Limits and identity for an SMTP server session.
public struct SMTPServerPolicy: Sendable, Equatable {
    /// The name in the greeting, the EHLO reply and `Received:` (RFC 5321 §4.1.3, §4.3.1).
    public var hostname: String
    /// The largest accepted message in octets, advertised as `SIZE` (RFC 1870 §4).
    public var maxMessageSize: Int
    /// Recipients per transaction; more get `452 4.5.3` (RFC 5321 §4.5.3.1.8, at least 100 recommended).
    public var maxRecipients: Int
    /// Longest command line in octets including CRLF (RFC 5321 §4.5.3.1.4: 512).
    public var maxCommandLength: Int
    /// Longest text line in DATA in octets including CRLF (RFC 5321 §4.5.3.1.6: 1000).
    public var maxTextLineLength: Int
    /// `Received:` fields at which a message is treated as looping (RFC 5321 §6.3); 0 disables.
    public var maxReceivedHeaders: Int
    /// Whether STARTTLS is offered (a certificate is configured, RFC 3207).
    public var tlsAvailable: Bool
    /// Whether MAIL is refused with `530 5.7.0` until TLS is active (RFC 3207 §4).
    public var requireTLS: Bool
    /// Whether AUTH PLAIN/LOGIN can be offered at all (users are configured, RFC 4954). It is
    /// advertised only over TLS, or in plaintext where the session allows it.
    public var authAvailable: Bool
    /// Longest AUTH command or SASL response line in octets including CRLF (RFC 4954 §4: 12288).
    public var maxAuthLineLength: Int
    /// The operator mailbox that `postmaster` is delivered to (`smtp.postmaster`), nil when none is
    /// configured. RFC 5321 §4.5.1: a server must accept mail to `<postmaster>` and
    /// `postmaster@<its domain>` (here `hostname`, local part case-insensitive) from anyone.
    public var postmaster: Mailbox?
    /// Addresses that take abuse feedback reports (`reputation.feedback_addresses`, RFC 5965):
    /// like postmaster, accepted from any client, relay rights or not (providers' feedback loops
    /// send from the internet), but not under postmaster's per-client rate limit (a provider's
    /// loop sends many reports an hour from few addresses). Default none.
    public var feedbackAddresses: [Mailbox] = []

    /// Whether `mailbox` is one of `feedbackAddresses` (both parts case-insensitive).
    public func isFeedbackAddress(_ mailbox: Mailbox) -> Bool {
        feedbackAddresses.contains { $0.localPart.lowercased() == mailbox.localPart.lowercased() && $0.domain.lowercased() == mailbox.domain.lowercased() }
    }

    /// Creates a policy.
    /// - Parameters:
    ///   - hostname: this server's name.
    ///   - maxMessageSize: octets (default 10,240,000 like Postfix).
    ///   - maxRecipients: per transaction (default 1000).
    ///   - maxCommandLength: octets including CRLF (default 512).
    ///   - maxTextLineLength: octets including CRLF (default 1000).
    ///   - maxReceivedHeaders: hop limit (default 100).
    ///   - tlsAvailable: offer STARTTLS (default false).
    ///   - requireTLS: refuse MAIL before TLS (default false).
    ///   - authAvailable: AUTH can be offered (default false).
    ///   - maxAuthLineLength: octets including CRLF (default 12288).
    ///   - postmaster: where `postmaster` is delivered (default none).
    public init(hostname: String, maxMessageSize: Int = 10_240_000, maxRecipients: Int = 1000,
                maxCommandLength: Int = 512, maxTextLineLength: Int = 1000, maxReceivedHeaders: Int = 100,
                tlsAvailable: Bool = false, requireTLS: Bool = false, authAvailable: Bool = false,
                maxAuthLineLength: Int = 12_288, postmaster: Mailbox? = nil) {
        self.hostname = hostname
        self.maxMessageSize = maxMessageSize
        self.maxRecipients = maxRecipients
        self.maxCommandLength = maxCommandLength
        self.maxTextLineLength = maxTextLineLength
        self.maxReceivedHeaders = maxReceivedHeaders
        self.tlsAvailable = tlsAvailable
        self.requireTLS = requireTLS
        self.authAvailable = authAvailable
        self.maxAuthLineLength = maxAuthLineLength
        self.postmaster = postmaster
    }
}

/// The TLS parameters a session runs under after STARTTLS.
public struct NegotiatedTLS: Sendable, Equatable {
    /// e.g. `TLSv1.3`.
    public var protocolVersion: String
    /// e.g. `TLS_AES_256_GCM_SHA384`.
    public var cipher: String

    /// Creates a record.
    public init(protocolVersion: String, cipher: String) {
        self.protocolVersion = protocolVersion
        self.cipher = cipher
    }
}
