import Foundation

/// `reputation:` how the coordinator looks after its sending IPs' reputation on its own
/// (issue 18). Absent: no blocklist checks.
///
/// ```yaml
/// reputation: { dnsbl: [zen.spamhaus.org, b.barracudacentral.org, bl.spamcop.net], check_interval: 1h,
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
}

extension ClusterConfigDecoder {
    /// Decodes `reputation:` into `config.reputation`.
    /// - Throws: `ConfigError` naming the file, line and key of a bad value.
    func decodeReputation(_ top: ConfigSection, into config: inout ClusterConfig) throws {
        guard let sec = try top.section("reputation", allowed: ["dnsbl", "check_interval", "hold_when_all_listed", "require_fcrdns", "fcrdns_interval"]) else { return }
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
