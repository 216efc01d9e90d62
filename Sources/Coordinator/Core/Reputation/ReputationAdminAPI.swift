import Foundation
import HatoConfig
import HatoHTTP
import HatoSupport

/// One sending IP's health for `GET /v1/ips` and `GET /v1/ips/{ip}/health` (issue 18): the
/// blocklists that list it, its FCrDNS/HELO verdict, and its stored history.
public struct IPHealthView: Sendable, Equatable, Codable {
    /// One current listing.
    public struct ListingView: Sendable, Equatable, Codable {
        /// The zone.
        public var zone: String
        /// The return codes (`127.0.0.x`).
        public var codes: [String]
        /// The list's TXT reason.
        public var reason: String?
        /// Since when (ISO 8601, UTC).
        public var since: String
    }
    /// One history row.
    public struct ChangeView: Sendable, Equatable, Codable {
        /// When (ISO 8601, UTC).
        public var at: String
        /// The zone, or `fcrdns`.
        public var zone: String
        /// `listed`, `delisted`, `fcrdns_failed`, `fcrdns_ok`.
        public var event: String
        /// Return codes of a listing; the FCrDNS status of a verdict change.
        public var codes: [String]
        /// The list's reason, or the verdict's detail.
        public var reason: String?
    }

    /// Current listings, by zone.
    public var listings: [ListingView]
    /// Zones whose last lookup gave no answer: zone → why (never a listing).
    public var unanswered: [String: String]
    /// The FCrDNS verdict (`FCrDNS.Status`), nil before the first check.
    public var fcrdns: String?
    /// The PTR names found.
    public var ptr: [String]?
    /// Why the verdict is not `ok`.
    public var fcrdnsDetail: String?
    /// Whether `require_fcrdns` holds it now.
    public var fcrdnsHeld: Bool
    /// The last blocklist check (ISO 8601), nil before the first.
    public var lastChecked: String?
    /// Listing/delisting and FCrDNS changes, oldest first (stored: they survive a restart).
    public var history: [ChangeView]
}

/// What the reputation checks know, for the admin API, the metrics and `doctor`.
public struct ReputationAdminAPI: Sendable {
    let blocklists: BlocklistChecker
    let fcrdns: FCrDNSChecker
    let store: any QueueStore
    let hub: ClusterHub
    let clock: any WallClock

    /// - Parameters:
    ///   - blocklists: the DNSBL checker.
    ///   - fcrdns: the FCrDNS checker.
    ///   - store: the health history and the tenants' domains.
    ///   - hub: the configuration in force, the holds and the nodes' clocks.
    ///   - clock: the wall clock.
    public init(blocklists: BlocklistChecker, fcrdns: FCrDNSChecker, store: any QueueStore, hub: ClusterHub, clock: any WallClock = SystemClock()) {
        self.blocklists = blocklists; self.fcrdns = fcrdns; self.store = store; self.hub = hub; self.clock = clock
    }

    /// How many history rows `/v1/ips` shows per IP (the newest).
    public static let historyPerIP = 20

    private static func iso(_ d: Date) -> String { ISO8601DateFormatter().string(from: d) }

    /// The health of every IP in `ips`.
    /// - Parameters:
    ///   - ips: the sending IPs.
    ///   - historyLimit: history rows per IP.
    /// - Returns: address → health.
    public func health(_ ips: [String], historyLimit: Int = historyPerIP) -> [String: IPHealthView] {
        let watch = blocklists.snapshot
        let identity = fcrdns.snapshot
        let held = hub.fcrdnsHoldReasons()
        var out: [String: IPHealthView] = [:]
        for ip in ips {
            let v = identity.verdicts[ip]
            out[ip] = IPHealthView(
                listings: (watch.listings[ip] ?? [:]).values.sorted { $0.zone < $1.zone }.map {
                    .init(zone: $0.zone, codes: $0.codes, reason: $0.reason, since: Self.iso($0.since))
                },
                unanswered: watch.unanswered[ip] ?? [:], fcrdns: v?.status.rawValue, ptr: v?.ptr, fcrdnsDetail: v?.detail,
                fcrdnsHeld: held[ip] != nil, lastChecked: watch.lastChecked[ip].map(Self.iso),
                history: ((try? store.ipHealthHistory(ip: ip, limit: historyLimit)) ?? []).map {
                    .init(at: Self.iso($0.at), zone: $0.zone, event: $0.event, codes: $0.codes, reason: $0.reason)
                })
        }
        return out
    }

    /// Updates the reputation gauges (`hato_ip_listed`, `hato_ip_fcrdns_ok`) at scrape time.
    public func registerMetrics(_ registry: MetricsRegistry) {
        let listed = registry.gauge("hato_ip_listed", help: "1 while a DNS blocklist zone lists the sending IP, else 0.", labels: ["ip", "zone"])
        let fcrdnsOK = registry.gauge("hato_ip_fcrdns_ok", help: "1 while the sending IP's PTR resolves back to it (FCrDNS), 0 when it does not; absent before a check.",
                                      labels: ["ip"])
        let heloOK = registry.gauge("hato_ip_helo_matches_ptr", help: "1 while the sending IP's HELO name is its forward-confirmed PTR name, else 0.",
                                    labels: ["ip"])
        let checks = registry.counter("hato_dnsbl_checks_total", help: "DNS blocklist lookups made by this coordinator.")
        let errors = registry.counter("hato_dnsbl_check_errors_total", help: "DNS blocklist lookups that gave no answer (timeouts, errors, refusals): never a listing.")
        let reported = Locked((checks: 0, errors: 0))
        let blocklists = self.blocklists, fcrdns = self.fcrdns, hub = self.hub
        registry.addCollector {
            let config = hub.currentConfig
            let watch = blocklists.snapshot
            listed.reset(); fcrdnsOK.reset(); heloOK.reset()
            for ip in config.ips.map(\.address) {
                for zone in config.reputation.dnsblZones {
                    listed.set(watch.listings[ip]?[zone] == nil ? 0 : 1, labels: [ip, zone])
                }
                if let v = fcrdns.snapshot.verdicts[ip], v.status != .unknown {
                    fcrdnsOK.set(v.failsFCrDNS ? 0 : 1, labels: [ip])
                    heloOK.set(v.status == .ok ? 1 : 0, labels: [ip])
                }
            }
            let counts = blocklists.counts
            let before = reported.withLock { r in defer { r = counts }; return r }
            checks.inc(labels: [], by: Double(max(0, counts.checks - before.checks)))
            errors.inc(labels: [], by: Double(max(0, counts.errors - before.errors)))
        }
    }

    /// `GET /v1/doctor` (every finding of `Doctor.run`) and `GET /v1/ips/{ip}/health` (one IP's
    /// health with up to 500 history rows); nil for other routes.
    public func handle(_ req: HTTPRequest) -> HTTPResponse? {
        let p = req.path.split(separator: "/").map(String.init)
        switch (req.method, p) {
        case ("GET", ["v1", "doctor"]):
            return .json(Doctor.run(config: hub.currentConfig, store: store, nodeClocks: hub.nodeClockSamples(), now: clock.now()))
        case ("GET", let p) where p.count == 4 && p[0] == "v1" && p[1] == "ips" && p[3] == "health":
            guard hub.currentConfig.ips.contains(where: { $0.address == p[2] }) else { return .error(404, "no sending IP \(p[2])") }
            return .json(health([p[2]], historyLimit: BlocklistWatch.historyLimit)[p[2]])
        default:
            return nil
        }
    }
}
