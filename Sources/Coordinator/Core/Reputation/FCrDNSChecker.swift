import Foundation
import HatoConfig
import HatoDNS
import HatoSupport

/// Checks every configured sending IP's FCrDNS and HELO name (`FCrDNS`) at start, after a
/// reload (within `pollInterval`) and every `reputation.fcrdns_interval`, through the
/// configured resolvers (`dns:`, never the system's when they are set), and hands each IP's
/// hold under `reputation.require_fcrdns` to `onHold` and each change to `onChange`.
///
/// Idle while `dns.nameservers` is empty (the system's resolver is never used for it).
/// One thread (`hato-fcrdns`). A new resolver per round, so that a fixed record is seen at the
/// next round rather than after its cached TTL.
public final class FCrDNSChecker: Sendable {
    /// One change to act upon.
    public struct Change: Sendable, Equatable {
        /// The sending IP.
        public var ip: String
        /// Why it is held now (nil: not held).
        public var holdReason: String?
        /// The history row (`zone` `fcrdns`, event `fcrdns_failed` or `fcrdns_ok`), nil when
        /// only the hold changed (`require_fcrdns` switched by a reload).
        public var history: BlocklistWatch.Change?
    }

    /// How often the thread looks for a reloaded configuration (seconds).
    public static let pollInterval: TimeInterval = 2

    private let configSource: @Sendable () -> ClusterConfig
    private let clock: any WallClock
    private let onChange: @Sendable (Change) -> Void
    private let watch = Locked(FCrDNSWatch())
    /// The fingerprint of the configuration last checked, the time of that round, the holds given.
    private let round = Locked<(fingerprint: String, at: Date?, holds: [String: String])>(("", nil, [:]))
    private let loop = Locked<BackgroundLoop?>(nil)
    private let rounds = Locked(0)
    private let idleLogged = Locked(false)
    private let log = Logger(label: "coordinator.fcrdns")

    /// - Parameters:
    ///   - config: the configuration in force (read at every pass: `ips`, `dns`, `reputation`).
    ///   - clock: the wall clock.
    ///   - onChange: called on the checker's thread for every change of an IP's hold or verdict.
    public init(config: @escaping @Sendable () -> ClusterConfig, clock: any WallClock = SystemClock(),
                onChange: @escaping @Sendable (Change) -> Void) {
        configSource = config
        self.clock = clock
        self.onChange = onChange
    }

    /// Starts the thread; the first round runs at once.
    public func start() {
        let l = BackgroundLoop(name: "hato-fcrdns") { [weak self] in
            guard let self else { return nil }
            return .milliseconds(Int(self.pass() * 1000))
        }
        loop.withLock { $0 = l }
        l.start()
    }

    /// Stops the thread.
    public func stop() { _ = loop.withLock { $0 }?.stop(waiting: true) }

    /// Starts from the failures of a stored history (before `start`), so that a restart does
    /// not record them again, and — under `require_fcrdns` — keeps them held until the first
    /// round has answered.
    /// - Parameters:
    ///   - failing: `IPHealthHistory.fcrdnsFailing(from:)`.
    ///   - required: `reputation.require_fcrdns`.
    /// - Returns: the holds to apply now (sending IP → why).
    @discardableResult
    public func restore(failing: Set<String>, required: Bool) -> [String: String] {
        watch.withLock { $0 = FCrDNSWatch(failing: failing) }
        let holds = required ? Dictionary(uniqueKeysWithValues: failing.map {
            ($0, "FCrDNS failed at the last check before this start — require_fcrdns holds it until the next check")
        }) : [:]
        round.withLock { $0.holds = holds }
        return holds
    }

    /// The verdicts so far.
    public var snapshot: FCrDNSWatch { watch.withLock { $0 } }
    /// Rounds completed since start.
    public var roundsDone: Int { rounds.snapshot }

    /// The fingerprint of what a round depends on: IPs with their HELO names, resolvers, the
    /// `require_fcrdns` switch and the interval.
    static func fingerprint(_ c: ClusterConfig) -> String {
        let ips = c.ips.map { "\($0.address)=\($0.helo)" }.sorted().joined(separator: ",")
        return "\(ips)|\(c.dns.nameservers.map { "\($0)" }.joined(separator: ","))|\(c.dns.timeout)|\(c.reputation.requireFCrDNS)|\(c.reputation.fcrdnsInterval)"
    }

    /// One pass: a round when the configuration changed or the interval passed.
    /// - Returns: seconds until the next pass.
    @discardableResult
    public func pass() -> TimeInterval {
        let config = configSource()
        let now = clock.now()
        guard !config.dns.nameservers.isEmpty else {
            // Never the system's resolver: without `dns.nameservers` nothing is checked.
            if !idleLogged.withLock({ l in defer { l = true }; return l }) {
                log.info("FCrDNS checks need dns.nameservers; none configured, so none run")
            }
            return Self.pollInterval
        }
        let fp = Self.fingerprint(config)
        let (lastFP, lastAt, _) = round.snapshot
        let interval = config.reputation.fcrdnsInterval
        if fp != lastFP || lastAt.map({ now.timeIntervalSince($0) >= interval }) ?? true {
            checkAll(config)
            return min(Self.pollInterval, interval)
        }
        let due = lastAt.map { interval - now.timeIntervalSince($0) } ?? 0
        return max(0.05, min(Self.pollInterval, due))
    }

    /// One round over every IP of `config`.
    public func checkAll(_ config: ClusterConfig) {
        let started = ContinuousClock.now
        let resolver = DNSResolver(nameservers: config.dns.nameservers, timeout: config.dns.timeout)
        let addresses = Set(config.ips.map(\.address))
        watch.withLock { $0.keep(ips: addresses) }
        var holds: [String: String] = [:]
        var problems = 0
        for ip in config.ips {
            let verdict = FCrDNS.check(ip: ip.address, helo: ip.helo, resolver: resolver)
            let now = clock.now()
            let (events, reason) = watch.withLock { w in (w.record(verdict, ip: ip.address, now: now),
                                                          w.holdReason(ip.address, required: config.reputation.requireFCrDNS)) }
            if verdict.status != .ok { problems += 1 }
            switch verdict.status {
            case .ok: break
            case .unknown: log.warning("FCrDNS lookup gave no answer (the IP is not held for it)", ["ip": ip.address, "reason": verdict.detail ?? ""])
            case .heloMismatch: log.warning("HELO name is not the PTR name", ["ip": ip.address, "helo": ip.helo, "ptr": verdict.ptr.joined(separator: ",")])
            case .noPTR, .notConfirmed:
                log.warning(reason == nil ? "FCrDNS fails" : "FCrDNS fails: held (require_fcrdns)",
                            ["ip": ip.address, "status": verdict.status.rawValue, "reason": verdict.detail ?? ""])
            }
            if let reason { holds[ip.address] = reason }
            for event in events {
                let row: BlocklistWatch.Change
                switch event {
                case .failed(_, let v):
                    row = .init(at: now, ip: ip.address, zone: FCrDNSWatch.historyZone, event: "fcrdns_failed", codes: [v.status.rawValue], reason: v.detail)
                case .recovered(_, let v):
                    log.info("FCrDNS passes again", ["ip": ip.address])
                    row = .init(at: now, ip: ip.address, zone: FCrDNSWatch.historyZone, event: "fcrdns_ok", codes: [v.status.rawValue], reason: v.detail)
                }
                onChange(Change(ip: ip.address, holdReason: reason, history: row))
            }
        }
        let previous = round.withLock { r -> [String: String] in
            let old = r.holds
            r = (Self.fingerprint(config), clock.now(), holds)
            return old
        }
        // Holds that changed without an event (require_fcrdns switched, an IP removed).
        for ip in Set(previous.keys).union(holds.keys).sorted() where previous[ip] != holds[ip] {
            onChange(Change(ip: ip, holdReason: holds[ip], history: nil))
        }
        rounds.withLock { $0 += 1 }
        log.info("FCrDNS round done", ["ips": "\(config.ips.count)", "not_ok": "\(problems)", "held": "\(holds.count)",
                                       "took": "\(ContinuousClock.now - started)"])
    }
}
