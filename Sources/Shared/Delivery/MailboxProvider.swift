import HatoConfig
/// Recognises a mailbox provider by the suffix of an MX host name (DESIGN.md: "provider").
///
/// Used as a metrics and delivery-log label. The table is small on purpose: the big
/// providers whose pushback matters; everything else is `other`.
public enum MailboxProvider {
    /// (MX host suffix, provider name), most specific first.
    public static let suffixes: [(suffix: String, provider: String)] = [
        ("google.com", "gmail"), ("googlemail.com", "gmail"),
        ("protection.outlook.com", "microsoft"), ("outlook.com", "microsoft"), ("hotmail.com", "microsoft"),
        ("yahoodns.net", "yahoo"), ("yahoo.com", "yahoo"), ("aol.com", "yahoo"),
        ("icloud.com", "apple"), ("me.com", "apple"),
        ("mail.ru", "mailru"), ("yandex.net", "yandex"), ("yandex.ru", "yandex"),
        ("gmx.net", "gmx"), ("web.de", "gmx"), ("1and1.com", "ionos"), ("ionos.com", "ionos"),
        ("protonmail.ch", "proton"), ("zoho.com", "zoho"), ("messagingengine.com", "fastmail"),
        ("comcast.net", "comcast"), ("mimecast.com", "mimecast"), ("pphosted.com", "proofpoint"),
        ("barracudanetworks.com", "barracuda"),
    ]

    /// Well-known mailbox domains and their provider, for destinations whose MX hosts have not
    /// been seen yet (a provider pause or report applies to them from the first message).
    public static let domains: [String: String] = [
        "gmail.com": "gmail", "googlemail.com": "gmail",
        "outlook.com": "microsoft", "hotmail.com": "microsoft", "live.com": "microsoft", "msn.com": "microsoft",
        "hotmail.co.uk": "microsoft", "outlook.de": "microsoft", "hotmail.fr": "microsoft",
        "yahoo.com": "yahoo", "ymail.com": "yahoo", "aol.com": "yahoo", "yahoo.co.uk": "yahoo", "yahoo.co.jp": "yahoo",
        "yahoo.fr": "yahoo", "yahoo.de": "yahoo",
        "icloud.com": "apple", "me.com": "apple", "mac.com": "apple",
        "gmx.de": "gmx", "gmx.net": "gmx", "gmx.com": "gmx", "web.de": "gmx",
        "mail.ru": "mailru", "yandex.ru": "yandex", "yandex.com": "yandex",
        "protonmail.com": "proton", "proton.me": "proton", "zoho.com": "zoho", "fastmail.com": "fastmail", "comcast.net": "comcast",
    ]

    /// The provider of a well-known mailbox domain, nil for others (learn it from the MX host).
    public static func name(forDomain domain: String) -> String? { domains[domain.lowercased()] }

    /// The provider for an MX host (case-insensitive, trailing dot ignored): `gmail` for
    /// `gmail-smtp-in.l.google.com`, `other` when unknown, `unknown` without a host.
    public static func name(forMXHost host: String?) -> String {
        guard var h = host?.lowercased(), !h.isEmpty else { return "unknown" }
        if h.hasSuffix(".") { h.removeLast() }
        for (suffix, provider) in suffixes where h == suffix || h.hasSuffix("." + suffix) { return provider }
        return "other"
    }
}

extension MailboxProvider {
    /// The provider label of an MX host for metrics and the delivery log: the operator's
    /// `shaping.providers` name when one matches, else the built-in table (`other` when
    /// unknown, `unknown` without a host). Bounded: never the host name itself.
    public static func name(forMXHost host: String?, shaping: ShapingSettings) -> String {
        guard var h = host?.lowercased(), !h.isEmpty else { return "unknown" }
        if h.hasSuffix(".") { h.removeLast() }
        if let p = shaping.providers.first(where: { $0.matches(h) }) { return p.name }
        return name(forMXHost: h)
    }
}

extension ClusterConfig {
    /// `MailboxProvider.name(forMXHost:shaping:)` with this configuration's shaping rules.
    public func providerName(forMXHost host: String?) -> String { MailboxProvider.name(forMXHost: host, shaping: shaping) }
}
