import Foundation
import SMTPCore

/// `reputation:` how the coordinator looks after its sending IPs' reputation on its own
/// (issue 18). Absent: no blocklist checks, no rules, no re-warm ramp.
///
/// ```yaml
/// reputation:
///   dnsbl: [zen.spamhaus.org, b.barracudacentral.org, bl.spamcop.net]
///   check_interval: 1h
///   rules:
///   feedback_addresses: [fbl@relay.example]
///   require_fcrdns: true
///   fcrdns_interval: 1d
///     - { signal: spam_bounces, above: 2%, min_volume: 500, window: 1h, action: pause, duration: 2h }
///     - { signal: deferrals, above: 30%, min_volume: 200, window: 30m, action: throttle, rate: 10/min, duration: 1h }
///   rewarm: { start: 25%, over: 3d, daily: 20000 }
/// ```
public struct ReputationSettings: Sendable, Equatable {
    /// `dnsbl`: DNS blocklist zones each sending IP is looked up in (RFC 5782), through the
    /// configured `dns:` resolvers. Default none.
    public var dnsblZones: [String] = []
    /// `check_interval`: seconds between two checks of every IP on every zone. Default 3600 (1h);
    /// at least 1 s.
    public var checkInterval: TimeInterval = 3600
    /// `hold_when_all_listed`: when every IP of a pool is listed, hold the pool's mail (true) or
    /// send from the listed IPs after all (false). Default true.
    public var holdWhenAllListed = true
    /// `feedback_addresses`: the addresses mailbox providers' feedback loops send abuse reports
    /// to (ARF, RFC 5965), e.g. `fbl@relay.example`. The coordinator's SMTP listener accepts mail
    /// to them from any client (no relay rights needed) and consumes it: each report suppresses
    /// the complained-about recipient and counts a complaint; nothing is queued for delivery.
    /// When set, nodes also add `X-Hato-Recipient: <queue id>.<recipient id>` to every message
    /// they send, so that redacted reports (RFC 6590) still name the recipient. Default none.
    public var feedbackAddresses: [Mailbox] = []
    /// `require_fcrdns`: hold a sending IP whose forward-confirmed reverse DNS fails (no PTR, or
    /// a PTR that does not resolve back to it) like a listed IP, until a check finds it fixed.
    /// Default false: such an IP is only a warning (`ips`, `doctor`).
    public var requireFCrDNS = false
    /// `fcrdns_interval`: seconds between two FCrDNS/HELO checks of every IP (also run at start
    /// and on reload). Default 86400 (1 d); at least 1 s.
    public var fcrdnsInterval: TimeInterval = 86_400
    /// `rules`: thresholds on the rolling per (sending IP, provider) signals that pause or
    /// throttle the pair cluster-wide, tried in order (the first that fires acts). Default none.
    public var rules: [ReputationRule] = []
    /// `rewarm`: the ramp a sending IP resumes on after a blocklist delisting. Default nil: it
    /// resumes at once at its full pace.
    public var rewarm: RewarmSettings? = nil

    /// Defaults: no zones, hourly, hold, no rules, no re-warm.
    public init() {}

    /// Whether blocklist checks run at all.
    public var checksBlocklists: Bool { !dnsblZones.isEmpty }

    /// Whether abuse reports are taken in (and nodes add the tracking field).
    public var acceptsFeedback: Bool { !feedbackAddresses.isEmpty }

    /// Whether `mailbox` is one of `feedback_addresses` (both parts compared case-insensitively).
    public func isFeedbackAddress(_ mailbox: Mailbox) -> Bool {
        feedbackAddresses.contains { $0.localPart.lowercased() == mailbox.localPart.lowercased() && $0.domain.lowercased() == mailbox.domain.lowercased() }
    }
    /// The longest rule window, seconds (how much signal history is kept); 3600 without rules.
    public var signalHistory: TimeInterval { rules.map(\.window).max() ?? 3600 }
}

/// One `reputation.rules` entry: when `signal` is more than `above` of the attempts of a
/// (sending IP, provider) pair within `window`, and there were at least `minVolume` attempts,
/// pause or throttle that pair for `duration`.
public struct ReputationRule: Sendable, Equatable {
    /// What a rule counts (the numerator; the denominator is every attempt of the pair in the
    /// window: deliveries + deferrals + bounces).
    public enum Signal: Sendable, Equatable, CustomStringConvertible {
        /// `deferrals`: every temporary failure (4xx, timeouts, connection failures).
        case deferrals
        /// `bounces`: every permanent failure (5xx).
        case bounces
        /// `complaints`: feedback-loop complaints (RFC 5965) counted against the pair.
        case complaints
        /// `<category>_bounces`, e.g. `spam_bounces`: bounces of one `BounceCategory` (its raw value).
        case categoryBounces(String)
        /// `<category>_deferrals`, e.g. `policy_deferrals`: deferrals of one category.
        case categoryDeferrals(String)

        /// The category names a signal may start with → `BounceCategory` raw values
        /// (docs/bounces.md). `spam` and `policy` stand for `spam-related` and `policy-related`.
        public static let categoryNames: [String: String] = [
            "bad_mailbox": "bad-mailbox", "bad_domain": "bad-domain", "mailbox_full": "mailbox-full",
            "message_too_large": "message-too-large", "policy": "policy-related", "spam": "spam-related",
            "reputation": "reputation", "rate_limited": "rate-limited", "dns_failure": "dns-failure",
            "tls_failure": "tls-failure", "routing": "routing", "protocol_error": "protocol-error", "other": "other",
        ]

        /// Parses a signal name (`spam_bounces`, `deferrals`, …).
        /// - Throws: `ConfigValueError` naming the known signals.
        public init(parsing text: String) throws {
            switch text {
            case "deferrals": self = .deferrals
            case "bounces": self = .bounces
            case "complaints": self = .complaints
            default:
                for (suffix, make) in [("_bounces", Signal.categoryBounces), ("_deferrals", Signal.categoryDeferrals)] where text.hasSuffix(suffix) {
                    if let raw = Signal.categoryNames[String(text.dropLast(suffix.count))] { self = make(raw); return }
                }
                throw ConfigValueError("unknown signal \"\(text)\" (known: deferrals, bounces, complaints, <category>_bounces, <category>_deferrals "
                                       + "with category one of \(Signal.categoryNames.keys.sorted().joined(separator: ", ")))")
            }
        }

        /// The name as written in cluster.yml.
        public var description: String {
            func name(_ raw: String) -> String { Signal.categoryNames.first { $0.value == raw }?.key ?? raw }
            switch self {
            case .deferrals: return "deferrals"
            case .bounces: return "bounces"
            case .complaints: return "complaints"
            case .categoryBounces(let c): return name(c) + "_bounces"
            case .categoryDeferrals(let c): return name(c) + "_deferrals"
            }
        }
    }

    /// What a rule does to the pair.
    public enum Action: String, Sendable, Equatable {
        /// No new deliveries for the pair (a `suspend` backoff).
        case pause
        /// At most `ratePerMinute` deliveries per minute for the pair (a `throttle` backoff).
        case throttle
    }

    /// `signal`: what is counted.
    public var signal: Signal
    /// `above`: the share of attempts (0…1, written `2%`) the signal must exceed.
    public var above: Double
    /// `min_volume`: attempts in the window before the rule may fire. Default 100.
    public var minVolume: Int
    /// `window`: seconds of history the rule looks at. Default 3600 (1h).
    public var window: TimeInterval
    /// `action`: pause or throttle.
    public var action: Action
    /// `rate`: for throttle, deliveries per minute (`10/min`).
    public var ratePerMinute: Int?
    /// `duration`: seconds the pause or throttle lasts.
    public var duration: TimeInterval

    /// - Parameters: as the properties.
    public init(signal: Signal, above: Double, minVolume: Int = 100, window: TimeInterval = 3600, action: Action,
                ratePerMinute: Int? = nil, duration: TimeInterval) {
        self.signal = signal; self.above = above; self.minVolume = minVolume; self.window = window
        self.action = action; self.ratePerMinute = ratePerMinute; self.duration = duration
    }

    /// The rule as an operator reads it: `spam_bounces > 2% of ≥500 attempts in 1h → pause 2h`.
    public var summary: String {
        let act = action == .throttle ? "throttle \(ratePerMinute ?? 1)/min" : "pause"
        return "\(signal) > \(ReputationRule.percent(above)) of ≥\(minVolume) attempts in \(ReputationRule.span(window)) → \(act) \(ReputationRule.span(duration))"
    }

    /// `0.02` → `2%`, `0.005` → `0.5%`.
    public static func percent(_ share: Double) -> String {
        let p = share * 100
        return p == p.rounded() ? "\(Int(p))%" : String(format: "%.2g%%", p)
    }

    /// Seconds as `90s`, `30m`, `2h`, `3d` (the largest whole unit).
    public static func span(_ seconds: TimeInterval) -> String {
        let s = Int(seconds)
        if s > 0 && s % 86_400 == 0 { return "\(s / 86_400)d" }
        if s > 0 && s % 3600 == 0 { return "\(s / 3600)h" }
        if s > 0 && s % 60 == 0 { return "\(s / 60)m" }
        return "\(s)s"
    }
}

/// `reputation.rewarm: { start, over, daily }`: after a blocklist delisting a sending IP
/// resumes at `start` of its daily cap, rising linearly to the full cap over `over`.
///
/// The full cap is the IP's warm-up cap of the day when it follows a plan, the plan's last
/// daily cap when it has finished its plan, else `daily`; an IP with none of these is not
/// ramped.
public struct RewarmSettings: Sendable, Equatable {
    /// `start`: the share of the full cap on resuming (0 < start ≤ 1, written `25%`). Default 0.25.
    public var start: Double = 0.25
    /// `over`: seconds until the full cap is back. Default 3 days.
    public var over: TimeInterval = 3 * 86_400
    /// `daily`: the full daily cap of a sending IP without a warm-up plan (deliveries per
    /// UTC day). Default nil: such IPs are not ramped.
    public var daily: Int? = nil

    /// Defaults: 25% over 3 days.
    public init(start: Double = 0.25, over: TimeInterval = 3 * 86_400, daily: Int? = nil) {
        self.start = start; self.over = over; self.daily = daily
    }
}

extension ConfigValue {
    /// Parses a share written as a percentage, `2%` or `0.5%` (0 < share ≤ 100%).
    /// - Returns: the share as a fraction (0…1).
    /// - Throws: `ConfigValueError` for anything else.
    static func percentage(_ text: String) throws -> Double {
        let t = text.trimmingCharacters(in: .whitespaces)
        guard t.hasSuffix("%"), let v = Double(t.dropLast().trimmingCharacters(in: .whitespaces)), v > 0, v <= 100 else {
            throw ConfigValueError("expected a percentage such as 2% (more than 0, at most 100), got \"\(text)\"")
        }
        return v / 100
    }

    /// Parses a rate such as `10/min`.
    /// - Returns: per minute.
    /// - Throws: `ConfigValueError`.
    static func ratePerMinute(_ text: String) throws -> Int {
        let parts = text.split(separator: "/")
        guard parts.count == 2, let n = Int(parts[0]), n > 0, ["min", "m", "minute"].contains(parts[1].lowercased()) else {
            throw ConfigValueError("expected a rate like 10/min, got \"\(text)\"")
        }
        return n
    }
}

extension ClusterConfigDecoder {
    /// Decodes `reputation:` into `config.reputation`.
    /// - Throws: `ConfigError` naming the file, line and key of a bad value.
    func decodeReputation(_ top: ConfigSection, into config: inout ClusterConfig) throws {
        guard let sec = try top.section("reputation", allowed: ["dnsbl", "check_interval", "hold_when_all_listed", "feedback_addresses", "require_fcrdns", "fcrdns_interval", "rules", "rewarm"]) else { return }
        var settings = ReputationSettings()
        for item in try sec.list("dnsbl", allowScalar: true) ?? [] {
            let s = try item.scalar()
            let zone = try s.convert { text -> String in
                let name = try ConfigValue.hostname(text.hasSuffix(".") ? String(text.dropLast()) : text).lowercased()
                guard name.contains(".") else { throw ConfigValueError("\"\(text)\" is not a blocklist zone (e.g. zen.spamhaus.org)") }
                return name
            }
            if settings.dnsblZones.contains(zone) {
                throw ConfigError(file: file, line: s.line, key: s.path, message: "\(zone) is listed twice")
            }
            settings.dnsblZones.append(zone)
        }
        if let v = try sec.get("check_interval", { try ConfigValue.duration($0) }) {
            guard v >= 1 else {
                let at = try sec.scalar("check_interval")
                throw ConfigError(file: file, line: at?.line, key: at?.path, message: "must be at least 1s")
            }
            settings.checkInterval = v
        }
        if let v = try sec.get("hold_when_all_listed", { try ConfigValue.bool($0) }) { settings.holdWhenAllListed = v }
        for item in try sec.list("feedback_addresses", allowScalar: true) ?? [] {
            let s = try item.scalar()
            let mailbox = try s.convert { text -> Mailbox in
                do { return try Mailbox(parsing: text) } catch {
                    throw ConfigValueError("\"\(text)\" is not a mailbox (local-part@domain, ASCII), e.g. fbl@relay.example")
                }
            }
            if settings.isFeedbackAddress(mailbox) {
                throw ConfigError(file: file, line: s.line, key: s.path, message: "\(mailbox.address) is listed twice")
            }
            settings.feedbackAddresses.append(mailbox)
        }
        if let v = try sec.get("require_fcrdns", { try ConfigValue.bool($0) }) { settings.requireFCrDNS = v }
        if let v = try sec.get("fcrdns_interval", { try ConfigValue.duration($0) }) {
            guard v >= 1 else {
                let at = try sec.scalar("fcrdns_interval")
                throw ConfigError(file: file, line: at?.line, key: at?.path, message: "must be at least 1s")
            }
            settings.fcrdnsInterval = v
        }
        for item in try sec.list("rules") ?? [] {
            let r = try item.section(allowed: ["signal", "above", "min_volume", "window", "action", "rate", "duration"])
            let signal = try r.require("signal") { try ReputationRule.Signal(parsing: $0) }
            let above = try r.require("above", ConfigValue.percentage)
            let minVolume = try r.get("min_volume") { try ConfigValue.integer($0, in: 1...100_000_000) } ?? 100
            let window = try r.get("window") { try ConfigValue.duration($0) } ?? 3600
            guard window >= 60, window <= 7 * 86_400 else {
                throw ConfigError(file: file, line: r.entryLine("window"), key: r.keyPath("window"), message: "must be between 1m and 7d")
            }
            let action = try r.require("action") { text -> ReputationRule.Action in
                guard let a = ReputationRule.Action(rawValue: text) else { throw ConfigValueError("expected pause or throttle, got \"\(text)\"") }
                return a
            }
            let rate = try r.get("rate", ConfigValue.ratePerMinute)
            if action == .throttle && rate == nil {
                throw ConfigError(file: file, line: item.node.line, key: r.keyPath("rate"), message: "throttle needs a rate such as 10/min")
            }
            let duration = try r.require("duration") { try ConfigValue.duration($0) }
            guard duration <= 7 * 86_400 else {
                throw ConfigError(file: file, line: r.entryLine("duration"), key: r.keyPath("duration"), message: "must be at most 7d")
            }
            settings.rules.append(ReputationRule(signal: signal, above: above, minVolume: minVolume, window: window, action: action,
                                                 ratePerMinute: action == .throttle ? rate : nil, duration: duration))
        }
        if let w = try sec.section("rewarm", allowed: ["start", "over", "daily"]) {
            var rewarm = RewarmSettings()
            if let v = try w.get("start", ConfigValue.percentage) { rewarm.start = v }
            if let v = try w.get("over", { try ConfigValue.duration($0) }) { rewarm.over = v }
            rewarm.daily = try w.get("daily") { try ConfigValue.integer($0, in: 1...100_000_000) }
            settings.rewarm = rewarm
        }
        config.reputation = settings
    }
}
