import Foundation
import HatoDKIM
import SMTPCore

/// Why a tenant's submission is refused, in both protocols' terms (issue 16).
public struct TenantRefusal: Error, Sendable, Equatable {
    /// The SMTP reply (RFC 5321 §4.2, enhanced codes RFC 3463): `550 5.7.1` for a permanent
    /// refusal (suspended, a domain not added), `452 4.7.1`/`452 4.5.3` for limits.
    public var reply: SMTPReply
    /// The HTTP status: 403 (refused), 429 (over a limit), 400 (too many recipients).
    public var httpStatus: Int
    /// A stable machine code for the HTTP API's error body: `tenant_suspended`,
    /// `sender_domain_not_allowed`, `from_domain_not_allowed`, `rate_limited`, `too_many_recipients`.
    public var code: String
    /// The human-readable reason (both protocols).
    public var message: String
    /// Seconds until a limit's window ends (HTTP `Retry-After`), nil for permanent refusals.
    public var retryAfter: Int?

    /// A refusal from its parts.
    public init(reply: SMTPReply, httpStatus: Int, code: String, message: String, retryAfter: Int? = nil) {
        self.reply = reply; self.httpStatus = httpStatus; self.code = code; self.message = message; self.retryAfter = retryAfter
    }
}

/// The tenant rules as pure functions over a snapshot of the tenant tables (no I/O): what
/// SMTP and the HTTP API both enforce.
public struct TenantRules: Sendable {
    /// Tenants by name.
    public var tenants: [String: Tenant]
    /// The owning tenant of each sending domain (lower-case).
    public var domainOwners: [String: String]

    /// Rules over the given tables.
    public init(tenants: [Tenant], domains: [SendingDomain]) {
        var t: [String: Tenant] = [:]
        for x in tenants { t[x.name] = x }
        var d: [String: String] = [:]
        for x in domains { d[x.domain.lowercased()] = x.tenant }
        self.tenants = t; self.domainOwners = d
    }

    /// A suspended tenant's refusal (`550 5.7.1`, HTTP 403), nil when it may send.
    public func stateRefusal(_ tenant: Tenant) -> TenantRefusal? {
        guard tenant.state == .suspended else { return nil }
        let why = tenant.stateReason.map { ": \($0)" } ?? ""
        let text = "tenant \(tenant.name) is suspended\(why)"
        return TenantRefusal(reply: SMTPReply(550, "5.7.1", text), httpStatus: 403, code: "tenant_suspended", message: text)
    }

    /// The refusal of a reverse-path whose domain the tenant has not added (`550 5.7.1`, 403).
    /// The null reverse-path `<>` is refused too: a tenant's mail always has a sender of its own
    /// domains, so bounces reach it (RFC 5321 §4.5.5 reserves `<>` for notifications).
    public func senderRefusal(tenant: String, reversePath: String) -> TenantRefusal? {
        guard reversePath.contains("@") else {
            let text = "tenant \(tenant) must send with an envelope sender of one of its domains, not <>"
            return TenantRefusal(reply: SMTPReply(550, "5.7.1", text), httpStatus: 403, code: "sender_domain_not_allowed", message: text)
        }
        let domain = Queue.senderDomain(of: reversePath)
        guard domainOwners[domain] != tenant else { return nil }
        let text = "sender domain \(domain) is not a sending domain of tenant \(tenant)"
        return TenantRefusal(reply: SMTPReply(550, "5.7.1", text), httpStatus: 403, code: "sender_domain_not_allowed", message: text)
    }

    /// The refusal of a message whose `From:` (RFC 5322 §3.6.2) is missing or names a domain
    /// the tenant has not added (`550 5.7.1`, 403): every author address must be of its domains.
    /// - Parameter content: the message (header section first).
    public func authorRefusal(tenant: String, content: [UInt8]) -> TenantRefusal? {
        let domains = TenantRules.authorDomains(content)
        guard let domains, !domains.isEmpty else {
            let text = "the message has no From: address of a sending domain of tenant \(tenant)"
            return TenantRefusal(reply: SMTPReply(550, "5.7.1", text), httpStatus: 403, code: "from_domain_not_allowed", message: text)
        }
        for d in domains where domainOwners[d] != tenant {
            let text = d.isEmpty ? "a From: address cannot be read as RFC 5322 section 3.4 writes one; tenant \(tenant) must send from its own domains"
                : "From: domain \(d) is not a sending domain of tenant \(tenant)"
            return TenantRefusal(reply: SMTPReply(550, "5.7.1", text), httpStatus: 403, code: "from_domain_not_allowed", message: text)
        }
        return nil
    }

    /// The refusal of mail of no tenant (a `smtp.users` account, a relay network) that uses a
    /// tenant's sending domain as its envelope sender or in `From:` (`550 5.7.1`): a sending
    /// domain is its tenant's alone — the nodes sign its mail with the tenant's keys, so other
    /// mail from it would pass DMARC in the tenant's name. Nil when no domain involved is a
    /// tenant's (also for `<>` and a message without `From:`).
    /// - Parameters:
    ///   - reversePath: the envelope sender.
    ///   - content: the message, or nil at MAIL (only the envelope is checked then).
    public func foreignDomainRefusal(reversePath: String, content: [UInt8]?) -> TenantRefusal? {
        guard !domainOwners.isEmpty else { return nil }
        var domains = reversePath.contains("@") ? [Queue.senderDomain(of: reversePath)] : []
        if let content { domains += TenantRules.authorDomains(content) ?? [] }
        for d in domains {
            // The domain or a parent of it (nodes sign a subdomain's mail with its parent's tenant keys).
            var candidate = Substring(d)
            while !candidate.isEmpty {
                if let owner = domainOwners[String(candidate)] {
                    let text = "\(d) is \(candidate == d ? "" : "under ")a sending domain of tenant \(owner): send with one of its SMTP users or API keys"
                    return TenantRefusal(reply: SMTPReply(550, "5.7.1", text), httpStatus: 403, code: "sender_domain_not_allowed", message: text)
                }
                guard let dot = candidate.firstIndex(of: ".") else { break }
                candidate = candidate[candidate.index(after: dot)...]
            }
        }
        return nil
    }

    /// The refusal of one recipient more than the tenant's `recipients_per_message`
    /// (`452 4.5.3`, RFC 5321 §4.5.3.1.10; HTTP 400), nil when `count` (this one included) fits.
    public func recipientRefusal(_ tenant: Tenant, count: Int) -> TenantRefusal? {
        guard let limit = tenant.limits.recipientsPerMessage, count > limit else { return nil }
        let text = "tenant \(tenant.name) may send to at most \(limit) recipients per message"
        return TenantRefusal(reply: SMTPReply(452, "4.5.3", text), httpStatus: 400, code: "too_many_recipients", message: text)
    }

    /// The refusal for a full window (`452 4.7.1`, HTTP 429 with `Retry-After`).
    public static func quotaRefusal(tenant: String, window: String, limit: Int, retryAfter: Int) -> TenantRefusal {
        let per = window == "hour" ? "hourly" : window == "day" ? "daily" : "monthly"
        let text = "tenant \(tenant) has reached its \(per) limit of \(limit) messages; try again in \(retryAfter) s"
        return TenantRefusal(reply: SMTPReply(452, "4.7.1", text), httpStatus: 429, code: "rate_limited", message: text, retryAfter: retryAfter)
    }

    /// The refusal a usage already at a limit gets before any counting (an early `452` at the
    /// first RCPT, so a client does not send DATA in vain), nil when every window has room.
    public static func usageRefusal(_ tenant: Tenant, usage: TenantUsage, now: Date) -> TenantRefusal? {
        // The store's window rules (`TenantWindows`): at a limit means one more would pass it.
        let windows = TenantWindows(now)
        let counts = [windows.hour.key: usage.hour, windows.day.key: usage.day, windows.month.key: usage.month]
        guard case .overLimit(let window, let limit, let retryAfter)? = windows.decision(counts: counts, adding: 1, limits: tenant.limits, now: now)
        else { return nil }
        return quotaRefusal(tenant: tenant.name, window: window, limit: limit, retryAfter: retryAfter)
    }

    /// The lower-case domains of every address in the `From:` fields of `content`, nil when it
    /// has none. Group syntax, comments and quoted strings are read as RFC 5322 §3.4 has them;
    /// a mailbox that cannot be read gets the domain `""` (which no tenant owns), so a field a
    /// mail reader might read differently is refused rather than guessed at.
    public static func authorDomains(_ content: [UInt8]) -> [String]? {
        let values = ParsedMessage(content).values("from")
        guard !values.isEmpty else { return nil }
        var domains: [String] = []
        for v in values {
            for part in splitAddressList(skeleton(v)) {
                if let d = mailboxDomain(part) { domains.append(d) }
            }
        }
        return domains
    }

    /// `value` without its comments and with each quoted string made `"q"` (RFC 5322 §3.2.2,
    /// §3.2.4), every non-ASCII scalar made `x` (RFC 6532 allows it only in atoms and quoted
    /// strings; read by scalar, so a combining mark cannot hide a `"` or `<`): what is left is
    /// ASCII with no `(`, `)`, `\` or `"` that could hide an address. An unterminated quoted
    /// string or comment makes the whole value `<>` (unreadable).
    static func skeleton(_ value: String) -> String {
        var out = ""
        var quoted = false, escaped = false, depth = 0
        for scalar in value.unicodeScalars {
            let ch = Character(scalar.isASCII ? scalar : "x")
            if escaped { escaped = false; continue }
            if quoted {
                if ch == "\\" { escaped = true } else if ch == "\"" { quoted = false; out += "q\"" }
                continue
            }
            if depth > 0 {
                if ch == "\\" { escaped = true } else if ch == "(" { depth += 1 } else if ch == ")" { depth -= 1 }
                if depth == 0 { out += " " }
                continue
            }
            switch ch {
            case "\"": quoted = true; out.append(ch)
            case "(": depth = 1
            default: out.append(ch)
            }
        }
        return quoted || depth > 0 || escaped ? "<>" : out
    }

    /// The lower-case domain of one mailbox of a skeleton address list (group name and `;`
    /// dropped): nil for an empty group member, `""` when the mailbox is not `addr-spec` or
    /// `[display-name] <addr-spec>` with a plain domain.
    static func mailboxDomain(_ part: String) -> String? {
        var text = Substring(part)
        // A group: `display-name ":" [group-list] ";"` (the ":" before any "<").
        if let colon = text.firstIndex(of: ":"), text.firstIndex(of: "<").map({ colon < $0 }) ?? true {
            text = text[text.index(after: colon)...]
        }
        text = Substring(text.trimmingCharacters(in: .whitespaces))
        if text.hasSuffix(";") { text = Substring(text.dropLast().trimmingCharacters(in: .whitespaces)) }
        guard !text.isEmpty else { return nil }
        var address = text
        if let open = text.firstIndex(of: "<") {
            guard let close = text.firstIndex(of: ">"), open < close,
                  !text[..<open].contains("@"), !text[..<open].contains(">"),
                  text[text.index(after: close)...].allSatisfy({ $0 == " " || $0 == "\t" }) else { return "" }
            address = text[text.index(after: open)..<close]
            if let route = address.lastIndex(of: ":") { address = address[address.index(after: route)...] }  // obs-route
        }
        let pieces = address.split(separator: "@", omittingEmptySubsequences: false)
        guard pieces.count == 2, !pieces[0].isEmpty else { return "" }
        let domain = pieces[1].lowercased()
        let plain = domain.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D || $0 == 0x2E }
        let literal = domain.hasPrefix("[") && domain.hasSuffix("]") && !domain.dropFirst().dropLast().contains { "[]\\ \t".contains($0) }
        return plain || literal ? domain : ""
    }

    /// Splits an RFC 5322 address list at commas outside quotes, comments and angle brackets.
    static func splitAddressList(_ value: String) -> [String] {
        var parts: [String] = []
        var current = ""
        var quoted = false, escaped = false, depth = 0, angle = false
        for ch in value {
            if escaped { escaped = false; current.append(ch); continue }
            switch ch {
            case "\\" where quoted: escaped = true
            case "\"" where depth == 0: quoted.toggle()
            case "(" where !quoted: depth += 1
            case ")" where !quoted && depth > 0: depth -= 1
            case "<" where !quoted && depth == 0: angle = true
            case ">" where !quoted && depth == 0: angle = false
            case "," where !quoted && depth == 0 && !angle:
                parts.append(current); current = ""; continue
            default: break
            }
            current.append(ch)
        }
        parts.append(current)
        return parts.map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }
}
