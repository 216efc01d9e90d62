import Foundation
import SMTPCore

/// `warmup: [ { name, daily: [...] } ]` — a per-IP daily volume ramp for new sending IPs.
public struct WarmupPlan: Sendable, Equatable {
    /// The plan's name, referenced by `ips[].warmup.plan`.
    public var name: String
    /// Deliveries (recipients attempted) allowed on day 1, 2, …; after the last day the IP is warmed (no cap).
    public var daily: [Int]
    /// `providers: { gmail: [50, 100] }`: per provider label (`gmail`, `microsoft`, `yahoo`, a
    /// `shaping.providers` name, …), deliveries one IP may make to that provider on day 1, 2, …
    /// of the plan, counted cluster-wide inside the IP's total `daily` cap. After a provider's
    /// last listed day only the total applies. Default none.
    public var providers: [String: [Int]]

    /// - Parameters:
    ///   - name: the plan's name.
    ///   - daily: the total daily caps, day 1 first.
    ///   - providers: per provider label, its daily caps, day 1 first.
    public init(name: String, daily: [Int], providers: [String: [Int]] = [:]) { self.name = name; self.daily = daily; self.providers = providers }
}

/// `ips[].warmup: { plan, start }` — which plan an IP follows and from which UTC day.
public struct IPWarmup: Sendable, Equatable {
    /// The plan name.
    public var plan: String
    /// Day 1 of the plan, as seconds since 1970 at 00:00 UTC.
    public var start: TimeInterval

    public init(plan: String, start: TimeInterval) { self.plan = plan; self.start = start }
}

/// One `routing.rules` entry: the first matching rule picks the message's pool.
public struct RoutingRule: Sendable, Equatable {
    /// What a rule matches.
    public enum Match: Sendable, Equatable {
        /// `auth_user: NAME` — the authenticated submitter (RFC 4954).
        case authUser(String)
        /// `sender_domain: example.com` or `*.example.com` — the reverse-path's domain.
        case senderDomain(DomainPattern)
        /// `header: X-Hato-Pool` — the header's value names the pool (the header is removed before sending).
        case header(String)
    }
    public var match: Match
    /// The pool (nil for `header` rules: the header's value is the pool).
    public var pool: String?

    public init(match: Match, pool: String?) { self.match = match; self.pool = pool }
}

/// One `backoff.rules` entry: a remote reply that slows or stops a (sending IP, provider) pair.
public struct BackoffRule: Sendable, Equatable {
    /// What to do when the rule matches.
    public enum Action: String, Sendable, Equatable, Codable {
        /// No new deliveries for the pair until the duration has passed.
        case suspend
        /// At most `rate` deliveries per minute for the pair until the duration has passed.
        case throttle
        /// The reply concerns one mailbox (e.g. Gmail's `450 4.2.1` "receiving mail at a rate"):
        /// only that recipient is deferred (its retry schedule applies); the IP is not slowed.
        /// A rule with this action stops the later rules from matching the reply.
        case none
    }
    /// A regular expression (NSRegularExpression, case-insensitive) matched against
    /// `"<code> <enhanced> <text>"` of a deferral or failure reply.
    public var match: String
    /// Only for this provider (shaping provider name, or the MX host's domain); nil = any.
    public var provider: String?
    public var action: Action
    /// Seconds the suspension or throttle lasts.
    public var duration: TimeInterval
    /// For `throttle`: deliveries per minute.
    public var ratePerMinute: Int?

    public init(match: String, provider: String? = nil, action: Action, duration: TimeInterval, ratePerMinute: Int? = nil) {
        self.match = match; self.provider = provider; self.action = action; self.duration = duration; self.ratePerMinute = ratePerMinute
    }
}

/// `backoff:` adaptive backoff rules. Configured rules are tried before the defaults.
public struct BackoffSettings: Sendable, Equatable {
    /// The rules, first match wins.
    public var rules: [BackoffRule]
    /// Whether the built-in rules for common throttling replies apply after the configured ones. Default true.
    public var useDefaults: Bool

    public init(rules: [BackoffRule] = [], useDefaults: Bool = true) { self.rules = rules; self.useDefaults = useDefaults }

    /// Built-in rules for the throttling replies of large mailbox providers, as each provider
    /// documents them (docs/bounces.md "Backoff rules" has the table with sources). Replies
    /// about one mailbox come first, so a generic "rate" rule never slows an IP for them.
    public static let defaultRules: [BackoffRule] = [
        // Gmail, one mailbox: "450-4.2.1 The user you are trying to contact is receiving mail at a
        // rate that prevents additional messages from being delivered" / "…receiving mail too quickly".
        BackoffRule(match: #"^45\d 4\.2\.1\b.*receiving mail (at a rate|too quickly)"#, action: .none, duration: 0),
        // Gmail, the sending IP: "421-4.7.28 … unusual rate of unsolicited mail originating from your IP address".
        BackoffRule(match: #"^4\d\d 4\.7\.28\b|unusual rate of unsolicited"#, action: .suspend, duration: 3600),
        // Microsoft: "451 4.7.650 The mail server [IP] has been temporarily rate limited due to IP reputation";
        // 4.7.651/4.7.652: rate limited / too many connections from this IP.
        BackoffRule(match: #"4\.7\.65[0-2]\b|rate limited due to IP reputation"#, action: .throttle, duration: 1800, ratePerMinute: 10),
        // Yahoo/AOL: "[TSS09] All messages from IP will be permanently deferred" / "[TS03] …permanently deferred": a long stop.
        BackoffRule(match: #"\[TSS09\]|\[TS03\]|permanently deferred"#, action: .suspend, duration: 4 * 3600),
        // Yahoo/AOL: "421 4.7.0 [TSS04] Messages from IP temporarily deferred due to unexpected volume or user complaints" ([TS01], [TS02]).
        BackoffRule(match: #"\[TSS0[1-8]\]|\[TS0[12]\]|temporarily deferred due to"#, action: .suspend, duration: 3600),
        // Apple iCloud, GMX/web.de and others: "421 4.7.1 Too many concurrent SMTP connections; please try again later".
        BackoffRule(match: #"^4\d\d .*too many (concurrent )?(smtp )?connections"#, action: .throttle, duration: 900, ratePerMinute: 20),
        // Generic: "421 4.7.0 try again later", "throttl…", "rate limit" — not about one mailbox.
        BackoffRule(match: #"^421 (?!.*\b(mailbox|user|recipient)\b).*(try again later|too many|throttl|rate limit)"#, action: .suspend, duration: 900),
        BackoffRule(match: #"^4\d\d (?!.*\b(mailbox|user|recipient)\b).*(rate limit|throttl|too many messages)"#, action: .throttle, duration: 900, ratePerMinute: 20),
    ]

    /// The rules in force, configured first.
    public var effectiveRules: [BackoffRule] { rules + (useDefaults ? BackoffSettings.defaultRules : []) }
}

extension ClusterConfigDecoder {
    /// Decodes `warmup`, `ips[].warmup`, `routing.rules` and `backoff` into `config`.
    func decodeDeliverability(_ top: ConfigSection, into config: inout ClusterConfig) throws {
        var plans: [WarmupPlan] = []
        for item in try top.list("warmup") ?? [] {
            let sec = try item.section(allowed: ["name", "daily", "providers"])
            let name = try sec.require("name", ConfigValue.identifier)
            if plans.contains(where: { $0.name == name }) {
                throw ConfigError(file: file, line: try sec.scalar("name")?.line, key: sec.keyPath("name"), message: "duplicate warm-up plan \"\(name)\"")
            }
            var daily: [Int] = []
            for d in try sec.requireList("daily") {
                let s = try d.scalar()
                daily.append(try s.convert { try ConfigValue.integer($0, in: 1...100_000_000) })
            }
            guard !daily.isEmpty else { throw ConfigError(file: file, line: sec.entryLine("daily"), key: sec.keyPath("daily"), message: "must list at least one daily cap") }
            var providers: [String: [Int]] = [:]
            if let ps = try sec.openSection("providers") {
                for label in ps.allKeys {
                    let name = label.lowercased()
                    guard !name.isEmpty, name.utf8.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D || $0 == 0x5F || $0 == 0x2E }) else {
                        throw ConfigError(file: file, line: ps.entryLine(label), key: ps.keyPath(label), message: "not a provider name (e.g. gmail, microsoft, yahoo)")
                    }
                    var caps: [Int] = []
                    for d in try ps.requireList(label, allowScalar: true) {
                        caps.append(try d.scalar().convert { try ConfigValue.integer($0, in: 0...100_000_000) })
                    }
                    guard !caps.isEmpty else { throw ConfigError(file: file, line: ps.entryLine(label), key: ps.keyPath(label), message: "must list at least one daily cap") }
                    providers[name] = caps
                }
            }
            plans.append(WarmupPlan(name: name, daily: daily, providers: providers))
        }
        config.warmup = plans
        for (i, item) in (try top.list("ips") ?? []).enumerated() where i < config.ips.count {
            let ipSec = try item.section(allowed: ["address", "helo", "pool", "nodes", "warmup", "weight"])
            guard let w = try ipSec.section("warmup", allowed: ["plan", "start"]) else { continue }
            let plan = try w.require("plan") { name -> String in
                guard plans.contains(where: { $0.name == name }) else {
                    throw ConfigValueError("unknown warm-up plan \"\(name)\" (known: \(plans.map(\.name).joined(separator: ", ")))")
                }
                return name
            }
            let start = try w.require("start") { text -> TimeInterval in
                // A UTC calendar day, read without a locale or time zone: warm-up days start at 00:00 UTC.
                guard let days = RFC5322Date.daysSince1970(isoDate: text) else {
                    throw ConfigValueError("expected a date like 2026-12-01, got \"\(text)\"")
                }
                return TimeInterval(days * 86_400)
            }
            config.ips[i].warmup = IPWarmup(plan: plan, start: start)
        }
        let poolNames = config.pools.map(\.name)
        if let routing = try top.section("routing", allowed: ["default_pool", "rules"]) {
            var rules: [RoutingRule] = []
            for item in try routing.list("rules") ?? [] {
                let sec = try item.section(allowed: ["auth_user", "sender_domain", "header", "pool"])
                let pool = try sec.get("pool") { name -> String in
                    guard poolNames.contains(name) else { throw ConfigValueError("unknown pool \"\(name)\" (known: \(poolNames.joined(separator: ", ")))") }
                    return name
                }
                let kinds = try ["auth_user", "sender_domain", "header"].filter { try sec.scalar($0) != nil }
                guard kinds.count == 1 else {
                    throw ConfigError(file: file, line: item.node.line, key: item.path, message: "a rule needs exactly one of auth_user, sender_domain, header")
                }
                if let u = try sec.get("auth_user", { $0 }) {
                    guard let pool else { throw ConfigError(file: file, line: item.node.line, key: sec.keyPath("pool"), message: "required key is missing") }
                    rules.append(RoutingRule(match: .authUser(u), pool: pool))
                } else if let d = try sec.get("sender_domain", { try DomainPattern(parsing: $0) }) {
                    guard let pool else { throw ConfigError(file: file, line: item.node.line, key: sec.keyPath("pool"), message: "required key is missing") }
                    rules.append(RoutingRule(match: .senderDomain(d), pool: pool))
                } else if let h = try sec.get("header", { text -> String in
                    guard !text.isEmpty, text.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != 0x3A }) else { throw ConfigValueError("not a header field name") }
                    return text
                }) {
                    rules.append(RoutingRule(match: .header(h), pool: pool))
                }
            }
            config.routing.rules = rules
        }
        if let sec = try top.section("backoff", allowed: ["rules", "use_defaults"]) {
            if let v = try sec.get("use_defaults", ConfigValue.bool) { config.backoff.useDefaults = v }
            var rules: [BackoffRule] = []
            for item in try sec.list("rules") ?? [] {
                let r = try item.section(allowed: ["match", "provider", "action", "duration", "rate"])
                let pattern = try r.require("match") { text -> String in
                    do { _ = try NSRegularExpression(pattern: text, options: [.caseInsensitive]) } catch {
                        throw ConfigValueError("not a valid regular expression: \(text)")
                    }
                    return text
                }
                let action = try r.require("action") { text -> BackoffRule.Action in
                    guard let a = BackoffRule.Action(rawValue: text) else { throw ConfigValueError("expected suspend, throttle or none, got \"\(text)\"") }
                    return a
                }
                let duration = action == .none ? (try r.get("duration") { try ConfigValue.duration($0) } ?? 0)
                    : try r.require("duration") { try ConfigValue.duration($0) }
                let rate = try r.get("rate") { text -> Int in
                    let parts = text.split(separator: "/")
                    guard parts.count == 2, let n = Int(parts[0]), n > 0, ["min", "m", "minute"].contains(parts[1].lowercased()) else {
                        throw ConfigValueError("expected a rate like 10/min, got \"\(text)\"")
                    }
                    return n
                }
                if action == .throttle && rate == nil {
                    throw ConfigError(file: file, line: item.node.line, key: r.keyPath("rate"), message: "throttle needs a rate such as 10/min")
                }
                rules.append(BackoffRule(match: pattern, provider: try r.get("provider") { $0.lowercased() }, action: action, duration: duration, ratePerMinute: rate))
            }
            config.backoff.rules = rules
        }
    }
}

extension ClusterConfig {
    /// The warm-up cap of `address` on the UTC day containing `now`: nil when the IP has no
    /// plan, the plan has not started, or the IP has passed its last day (warmed).
    /// - Returns: (day number from 1, cap in deliveries).
    public func warmupCap(for address: String, now: Date) -> (day: Int, cap: Int)? {
        guard let ip = ips.first(where: { $0.address == address }), let w = ip.warmup,
              let plan = warmup.first(where: { $0.name == w.plan }) else { return nil }
        let day = Int(floor((now.timeIntervalSince1970 - w.start) / 86400)) + 1
        guard day >= 1 else { return (day, 0) }
        guard day <= plan.daily.count else { return nil }
        return (day, plan.daily[day - 1])
    }

    /// The per-provider warm-up cap of `address` towards provider `label` on the UTC day
    /// containing `now` (`warmup[].providers`): nil when none applies that day.
    /// - Returns: deliveries allowed to that provider from that IP on that day.
    public func warmupProviderCap(for address: String, provider label: String, now: Date) -> Int? {
        guard let (day, _) = warmupCap(for: address, now: now), day >= 1,
              let ip = ips.first(where: { $0.address == address }), let w = ip.warmup,
              let caps = warmup.first(where: { $0.name == w.plan })?.providers[label], day <= caps.count else { return nil }
        return caps[day - 1]
    }

    /// Every per-provider cap of `address` on the UTC day containing `now`: provider label → cap.
    public func warmupProviderCaps(for address: String, now: Date) -> [String: Int] {
        guard let ip = ips.first(where: { $0.address == address }), let w = ip.warmup,
              let plan = warmup.first(where: { $0.name == w.plan }) else { return [:] }
        var out: [String: Int] = [:]
        for label in plan.providers.keys { if let c = warmupProviderCap(for: address, provider: label, now: now) { out[label] = c } }
        return out
    }
}
