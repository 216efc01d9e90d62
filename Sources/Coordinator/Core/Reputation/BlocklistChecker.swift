import Foundation
import HatoConfig
import HatoDNS
import HatoSupport

/// Looks every configured sending IP up in every `reputation.dnsbl` zone every
/// `reputation.check_interval`, through the configured resolvers (`dns:`), and hands what
/// changed to `onChange` (the coordinator holds or resumes the IP and records the event).
///
/// One thread (`hato-dnsbl`). The first check runs at start. A lookup that fails is not a
/// listing and not a delisting (`BlocklistWatch`).
public final class BlocklistChecker: Sendable {
    /// One change to act upon.
    public struct Change: Sendable, Equatable {
        /// The sending IP.
        public var ip: String
        /// Why it is held now, nil when it is listed nowhere.
        public var holdReason: String?
        /// `listed` or `delisted`.
        public var kind: DeliveryEventKind
        /// The event's note: zone, return codes and reason, or how long the listing lasted.
        public var note: String
        /// The row for the stored health history (`IPHealthStore`).
        public var history: BlocklistWatch.Change?
    }

    private let settings: ReputationSettings
    private let ips: [String]
    private let resolver: DNSResolver
    private let clock: any WallClock
    private let onChange: @Sendable (Change) -> Void
    private let watch = Locked(BlocklistWatch())
    private let lookups = Locked((checks: 0, errors: 0))
    private let loop = Locked<BackgroundLoop?>(nil)
    private let log = Logger(label: "coordinator.dnsbl")

    /// - Parameters:
    ///   - config: the cluster configuration (`reputation`, `ips`, `dns`).
    ///   - clock: the wall clock for listing times.
    ///   - onChange: called on the checker's thread for every listing and delisting.
    public init(config: ClusterConfig, clock: any WallClock = SystemClock(), onChange: @escaping @Sendable (Change) -> Void) {
        settings = config.reputation
        ips = config.ips.map(\.address)
        resolver = DNSResolver(nameservers: config.dns.nameservers, timeout: config.dns.timeout)
        self.clock = clock
        self.onChange = onChange
    }

    /// Starts the thread (nothing when no zone is configured).
    public func start() {
        guard settings.checksBlocklists else { return }
        let interval = Duration.seconds(settings.checkInterval)
        let l = BackgroundLoop(name: "hato-dnsbl") { [weak self] in
            self?.checkAll()
            return interval
        }
        loop.withLock { $0 = l }
        l.start()
        log.info("blocklist checks started", ["zones": settings.dnsblZones.joined(separator: ","), "interval": "\(settings.checkInterval)s",
                                              "ips": "\(ips.count)"])
    }

    /// Stops the thread.
    public func stop() { _ = loop.withLock { $0 }?.stop(waiting: true) }

    /// What the checks found so far.
    public var snapshot: BlocklistWatch { watch.withLock { $0 } }

    /// Lookups made and lookups that gave no answer, since start (`hato_dnsbl_checks_total`).
    public var counts: (checks: Int, errors: Int) { lookups.snapshot }

    /// Starts from the listings a stored history implies (after a restart or on a new leader),
    /// before the first round: a still-listed IP stays held and is not announced again.
    /// - Parameter listings: sending IP → zone → listing (`IPHealthHistory.listings(from:)`).
    /// - Returns: the hold reason of each restored IP.
    @discardableResult
    public func restore(_ listings: [String: [String: BlocklistWatch.Listing]]) -> [String: String] {
        let ips = Set(self.ips), zones = Set(settings.dnsblZones)
        return watch.withLock { w in
            w = BlocklistWatch(listings: listings)
            _ = w.keep(ips: ips, zones: zones)
            var holds: [String: String] = [:]
            for ip in w.listings.keys { holds[ip] = w.holdReason(ip) }
            return holds
        }
    }

    /// One round: every IP on every zone.
    public func checkAll() {
        for ip in ips {
            for zone in settings.dnsblZones {
                let verdict = DNSBL.check(ip, zone: zone, resolver: resolver)
                let now = clock.now()
                let (events, reason) = watch.withLock { w in (w.record(verdict, ip: ip, zone: zone, now: now), w.holdReason(ip)) }
                lookups.withLock { c in
                    c.checks += 1
                    if case .unknown = verdict { c.errors += 1 }
                }
                if case .unknown(let why) = verdict {
                    log.warning("blocklist lookup gave no answer (the IP is not held for it)", ["ip": ip, "zone": zone, "reason": why])
                }
                for event in events {
                    switch event {
                    case .listed(_, let listing, _):
                        let note = "\(zone) \(listing.codes.joined(separator: ","))\(listing.reason.map { ": " + $0 } ?? "")"
                        log.warning("sending IP is on a blocklist: held", ["ip": ip, "zone": zone, "codes": listing.codes.joined(separator: ","),
                                                                          "reason": listing.reason ?? ""])
                        onChange(Change(ip: ip, holdReason: reason, kind: .listed, note: note,
                                        history: .init(at: now, ip: ip, zone: zone, event: "listed", codes: listing.codes, reason: listing.reason)))
                    case .delisted(_, _, let seconds, let clear):
                        log.info(clear ? "sending IP is off every blocklist: resumed" : "sending IP is off one blocklist",
                                 ["ip": ip, "zone": zone, "listed_for": "\(Int(seconds))s"])
                        onChange(Change(ip: ip, holdReason: reason, kind: .delisted, note: "\(zone) after \(Int(seconds))s",
                                        history: .init(at: now, ip: ip, zone: zone, event: "delisted", codes: [], reason: nil)))
                    }
                }
            }
        }
    }
}
