import SMTPCore
/// What kind of problem a failed or deferred delivery ran into: the category of a
/// bounce (5xx) or deferral (4xx, timeout). The rules are documented in docs/bounces.md.
public enum BounceCategory: String, Sendable, Codable, CaseIterable {
    /// The mailbox does not exist or is disabled (RFC 3463 X.1.1, X.1.3, X.1.6, X.2.1).
    case badMailbox = "bad-mailbox"
    /// The recipient domain does not exist or accepts no mail (X.1.2, X.1.10 null MX, RFC 7505).
    case badDomain = "bad-domain"
    /// The mailbox is over quota (X.2.2).
    case mailboxFull = "mailbox-full"
    /// The message is larger than the receiver accepts (X.2.3, X.3.4).
    case messageTooLarge = "message-too-large"
    /// Refused by the receiver's policy: authentication (SPF, DKIM, DMARC), PTR, relaying, generic X.7.x.
    case policyRelated = "policy-related"
    /// The content was judged spam, phishing or malware.
    case spamRelated = "spam-related"
    /// The sending IP or domain is blocked or has a poor reputation (blocklists, permanent deferral).
    case reputation = "reputation"
    /// The receiver asks us to slow down: throttling, too many connections, "try again later" (X.4.5, X.5.3).
    case rateLimited = "rate-limited"
    /// A DNS lookup failed temporarily (X.4.3).
    case dnsFailure = "dns-failure"
    /// TLS was required, failed, or the certificate was refused (X.7.5, X.7.10).
    case tlsFailure = "tls-failure"
    /// No route, no answer, a lost connection, or a mail loop (X.4.x, X.4.6).
    case routing = "routing"
    /// The SMTP dialogue went wrong: syntax, sequence, unsupported parameter or media (X.5.x, X.6.x).
    case protocolError = "protocol-error"
    /// Nothing more specific is known.
    case other = "other"
    /// Failed by an operator (`hato-coordinator bounce`: `550 5.0.0 bounced by operator <who>`),
    /// not by the receiver.
    case admin = "admin"

    /// Whether a permanent failure of this category means the address should not be tried
    /// again: the input to the suppression list.
    public var isHardBounce: Bool { self == .badMailbox || self == .badDomain }
}

/// Assigns a `BounceCategory` to a failure from its reply code, enhanced status code
/// (RFC 3463) and reply text.
///
/// Three stages, first match wins (docs/bounces.md has the full table):
/// 1. **Text rules** (`textRules`, in order): phrases that real receivers use
///    (Gmail, Outlook, Yahoo, Postfix, Exim), matched case-insensitively. Text comes
///    first because many receivers send generic or misused enhanced codes
///    (`5.7.1` for everything, Microsoft's `5.4.1 Recipient address rejected: Access denied`).
/// 2. **Enhanced status code** (`category(enhanced:)`): RFC 3463 subject.detail.
/// 3. **Basic reply code** (`category(code:)`, RFC 5321 §4.2.3).
///
/// Pure: no I/O, no state. Thread-safe.
public enum BounceClassifier {
    /// One text rule: when the reply text contains any of `phrases` (case-insensitive;
    /// `*` inside a phrase matches any run of characters), the category is `category`.
    public struct TextRule: Sendable {
        /// The category this rule assigns.
        public var category: BounceCategory
        /// Lower-case phrases, any of which matches.
        public var phrases: [String]
        /// Only for these reply classes (4 = transient, 5 = permanent); nil for both.
        public var replyClass: Int?

        /// Creates a rule.
        public init(_ category: BounceCategory, _ phrases: [String], replyClass: Int? = nil) {
            self.category = category; self.phrases = phrases; self.replyClass = replyClass
        }
    }

    /// The text rules in the order they are tried.
    public static let textRules: [TextRule] = [
        // An operator's bounce (queue control) first: its text names the operator, whatever that name says.
        TextRule(.admin, ["bounced by operator"], replyClass: 5),
        TextRule(.tlsFailure, ["starttls", " tls ", " tls:", "tls negotiation", "tls handshake", "tls required", "tls is required",
                               "tls not available", "ssl handshake", "certificate", "encryption required", "encryption needed"]),
        TextRule(.routing, ["mail loop", "routing loop", "loops back to myself", "hop count exceeded", "too many hops", "loop detected"]),
        TextRule(.reputation, ["permanently deferred", "blocked using", "blacklist", "blocklist", "block list", "spamhaus", "spamcop",
                               "barracuda", "sorbs", "dnsbl", "listed at", "listed on", "listed in", "banned sending ip",
                               "traffic not accepted from this ip", "poor reputation", "bad reputation", "low reputation",
                               "sender reputation", "ip reputation is"]),
        TextRule(.rateLimited, ["rate limit", "rate-limit", "ratelimit", "unusual rate", "too many connections", "too many concurrent",
                                "maximum number of concurrent", "too many messages", "too many recipients", "try again later",
                                "try later", "please retry later", "temporarily deferred", "message temporarily deferred",
                                "throttl", "unexpected volume", "sending quota", "sending limit", "slow down", "server busy",
                                "exceeded the rate", "connection rate", "too many emails"]),
        TextRule(.spamRelated, ["spam", "unsolicited", "bulk mail", "junk mail", "phishing", "virus", "malware",
                                "content presents a potential security issue", "content rejected",
                                "rejected due to content", "suspicious", "looks like spam"]),
        TextRule(.messageTooLarge, ["too large", "too big", "size exceeds", "exceeds size", "message size", "size limit",
                                    "exceeds the maximum size", "maximum message size"]),
        TextRule(.mailboxFull, ["over quota", "overquota", "quota exceeded", "quotaexceeded", "exceeded storage", "storage allocation",
                                "mailbox full", "mailbox is full", "mailbox has exceeded", "insufficient storage", "out of storage",
                                "mailbox size limit"]),
        TextRule(.badDomain, ["host or domain name not found"], replyClass: 5),
        TextRule(.badDomain, ["domain does not exist", "domain * does not exist", "domain not found", "no such domain",
                              "unrouteable address", "unroutable address", "null mx", "does not accept mail",
                              "domain has no mx", "unknown domain", "domain is not valid"]),
        TextRule(.badMailbox, ["user unknown", "unknown user", "no such user", "no such mailbox", "no such recipient",
                               "no such address", "user not found", "recipient not found", "recipientnotfound",
                               "mailbox not found", "mailbox unavailable", "mailbox does not exist", "address does not exist",
                               "does not exist", "invalid recipient", "invalid mailbox", "recipient unknown", "unknown recipient",
                               "not a valid mailbox", "account is disabled", "account has been disabled", "account disabled",
                               "is disabled", "account is inactive", "inactive account", "doesn't have a * account",
                               "does not have a * account", "address rejected: access denied", "mailbox is unavailable",
                               "no mailbox", "user doesn't exist", "bad destination mailbox"]),
        TextRule(.dnsFailure, ["name service error", "host or domain name not found", "dns lookup", "lookup failed",
                               "temporary lookup failure", "servfail", "dns error", "dns failure"]),
        TextRule(.policyRelated, ["dmarc", "spf", "dkim", "unauthenticated", "authentication", "ptr record", "reverse dns",
                                  "rdns", "relay access denied", "relaying denied", "relay not permitted", "not permitted to relay",
                                  "unable to relay", "policy", "not authorized", "not allowed", "access denied", "prohibited"]),
        TextRule(.reputation, ["reputation", "blocked", "banned", "denied access"]),
        TextRule(.protocolError, ["syntax error", "command unrecognized", "command not recognized", "unrecognized command",
                                  "bad sequence", "line too long", "command not implemented", "protocol error",
                                  "parameter not implemented", "malformed"]),
    ]

    /// Classifies one failure or deferral.
    /// - Parameter status: the reply (remote or locally generated: 4xx/5xx too): its code (RFC 5321
    ///   §4.2), its enhanced status code (RFC 3463), if any, and its text (lines joined by spaces).
    /// - Returns: the first matching category of the text rules, the enhanced code, the basic code; `.other` otherwise.
    public static func classify(_ status: DeliveryStatus) -> BounceCategory {
        let code = status.code.rawValue
        let replyClass = status.enhanced?.statusClass.rawValue ?? status.code.replyClass?.rawValue ?? code / 100
        // Pad with spaces so phrases like " tls " match at either end.
        let haystack = " " + status.text.lowercased() + " "
        for rule in textRules where rule.replyClass.map({ $0 == replyClass }) ?? true {
            if rule.phrases.contains(where: { matches(haystack, $0) }) { return rule.category }
        }
        if let enhanced = status.enhanced, let c = category(enhanced: enhanced) { return c }
        return category(code: code)
    }

    /// The category of an enhanced status code alone (RFC 3463 §3), nil for codes that
    /// say nothing specific (`X.0.0`, success codes, unknown subjects).
    public static func category(enhanced: EnhancedStatusCode) -> BounceCategory? {
        guard !enhanced.isSuccess else { return nil }
        let cls = enhanced.statusClass.rawValue, subject = enhanced.subject, detail = enhanced.detail
        switch (subject, detail) {
        case (1, 1), (1, 3), (1, 4), (1, 6), (2, 1): return .badMailbox
        case (1, 2), (1, 10): return .badDomain
        case (1, 7), (1, 8): return .policyRelated
        case (2, 2): return .mailboxFull
        case (2, 3), (3, 4): return .messageTooLarge
        case (4, 1), (4, 2), (4, 0): return .routing
        case (4, 3): return .dnsFailure
        case (4, 4): return cls == 5 ? .badDomain : .dnsFailure
        case (4, 5): return .rateLimited
        case (4, 6): return .routing
        case (5, 3): return .rateLimited
        case (5, _): return .protocolError
        case (6, _): return .protocolError
        case (7, 5), (7, 6), (7, 10), (7, 11): return .tlsFailure
        case (7, _): return .policyRelated
        default: return nil
        }
    }

    /// The category of a basic reply code alone (RFC 5321 §4.2.2–4.2.3).
    public static func category(code: Int) -> BounceCategory {
        switch code {
        case 500, 501, 502, 503, 504, 555: return .protocolError
        case 530, 535, 534, 538: return .policyRelated
        case 551: return .badMailbox
        case 552: return .mailboxFull
        default: return .other
        }
    }

    /// Whether `haystack` contains `phrase`, where `*` in the phrase matches any run of characters.
    static func matches(_ haystack: String, _ phrase: String) -> Bool {
        guard phrase.contains("*") else { return haystack.contains(phrase) }
        var rest = haystack[...]
        for piece in phrase.split(separator: "*", omittingEmptySubsequences: true) {
            guard let r = rest.range(of: piece) else { return false }
            rest = rest[r.upperBound...]
        }
        return true
    }
}
