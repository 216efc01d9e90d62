import Foundation
import SMTPCore

/// `reputation:` how the coordinator looks after its sending IPs' reputation on its own
/// (issue 18). Absent: no blocklist checks.
///
/// ```yaml
/// reputation: { dnsbl: [zen.spamhaus.org, b.barracudacentral.org, bl.spamcop.net], check_interval: 1h,
///               feedback_addresses: [fbl@relay.example],
///               require_fcrdns: true, fcrdns_interval: 1d }
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

    /// Defaults: no zones, hourly, hold.
    public init() {}

    /// Whether blocklist checks run at all.
    public var checksBlocklists: Bool { !dnsblZones.isEmpty }

    /// Whether abuse reports are taken in (and nodes add the tracking field).
    public var acceptsFeedback: Bool { !feedbackAddresses.isEmpty }

    /// Whether `mailbox` is one of `feedback_addresses` (both parts compared case-insensitively).
    public func isFeedbackAddress(_ mailbox: Mailbox) -> Bool {
        feedbackAddresses.contains { $0.localPart.lowercased() == mailbox.localPart.lowercased() && $0.domain.lowercased() == mailbox.domain.lowercased() }
    }
}

extension ClusterConfigDecoder {
    /// Decodes `reputation:` into `config.reputation`.
    /// - Throws: `ConfigError` naming the file, line and key of a bad value.
    func decodeReputation(_ top: ConfigSection, into config: inout ClusterConfig) throws {
        guard let sec = try top.section("reputation", allowed: ["dnsbl", "check_interval", "hold_when_all_listed", "feedback_addresses", "require_fcrdns", "fcrdns_interval"]) else { return }
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
        config.reputation = settings
    }
}
