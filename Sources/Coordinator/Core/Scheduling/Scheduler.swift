import ClusterProtocol
import Foundation
import HatoConfig
import HatoCrypto
import HatoDelivery
import HatoSupport

/// A backoff's start or end, as the delivery log and webhooks report it.
public enum BackoffEvent: Sendable, Equatable {
    /// The pair became suspended or throttled.
    case started(BackoffTable.Entry)
    /// Its backoff ran out (an operator's lift is recorded by the lift itself).
    case ended(BackoffTable.Entry)
}

/// What the scheduler reads from the queue while it plans: due recipients and the day's
/// warm-up counts. `QueueStore` is the production implementation.
public protocol SchedulerQueue {
    /// Recipients whose next attempt is due, oldest first (see `QueueStore.dueRecipients`).
    /// - Throws: a store error; the round is abandoned and retried.
    func dueRecipients(pools: Set<String>, now: Date, limit: Int) throws -> [DueRecipient]
    /// Recipients leased per sending IP on a UTC day (warm-up counts).
    /// - Throws: a store error.
    func dailyAttempts(day: Int) throws -> [String: Int]
    /// Recipients leased per sending IP and provider label on a UTC day (per-provider warm-up
    /// caps): IP → provider → count.
    /// - Throws: a store error.
    func dailyProviderAttempts(day: Int) throws -> [String: [String: Int]]
}

extension SchedulerQueue {
    /// None (a queue without per-provider counts).
    public func dailyProviderAttempts(day: Int) throws -> [String: [String: Int]] { [:] }
}

/// A log line the scheduler asks its shell to write.
public struct SchedulerLogLine: Sendable, Equatable {
    /// Severity.
    public enum Level: Sendable, Equatable { case info, warning, error }
    public var level: Level
    public var message: String
    public var fields: [String: String]
    init(_ level: Level, _ message: String, _ fields: [String: String] = [:]) {
        self.level = level; self.message = message; self.fields = fields
    }
}

/// Leases planned for one node in one round: recorded in the queue first, then sent.
public struct PlannedGrant: Sendable {
    /// The node and the connection the leases go to.
    public var node: String
    public var connection: ConnectionID
    /// The lease records (recipient ids, sending IP, expiry) to store.
    public var records: [LeaseRecord]
    /// Per lease id: the delivery group (envelope, recipients' addresses) and the sending IP.
    public var planned: [String: (group: DeliveryGroup, ip: AssignedIP)]
    /// Seconds each lease lasts.
    public var leaseTime: TimeInterval
    /// The leadership term the grant is made under (nil before terms).
    public var term: Int64? = nil
}

/// The coordinator's scheduling core, as a value: node membership and the IP assignment
/// table (`Membership`), leases in flight and credits (`LeaseTable`), backoffs, warm-up
/// counts, drains, rebalances and reloads.
///
/// Every input is a method that changes the value and returns `Directive`s — messages to
/// send, queue writes, log lines, when to tick next — which a thin shell (`ClusterHub`)
/// carries out (the shape of swift-cluster-membership's `SWIMInstance`). It never touches a
/// socket or a clock: time is passed in, and the only reads it makes are through the
/// `SchedulerQueue` passed to `tick`. So it is tested with a manual clock and no sockets.
public struct Scheduler: Sendable {
    /// What the shell must do.
    public enum Directive: Sendable {
        /// Send `message` on `connection` (dropped when that connection is gone).
        case send(ConnectionID, ClusterMessage)
        /// Record the planned leases in the queue (one transaction for all grants of a round),
        /// report back with `grantsRecorded` or `grantsFailed`, then send each node its grant
        /// with the message bodies.
        case grant([PlannedGrant])
        /// Close `connection` (after the messages sent to it before).
        case disconnect(ConnectionID)
        /// Return the recipients of expired leases to the queue; report with `leasesExpired`.
        case requeueExpired
        /// Expire waiting recipients older than `maxAge` seconds (retry.max_age).
        case expireOld(maxAge: TimeInterval)
        /// Return the leases of `node`'s other instances to the queue (the node re-reported its journal).
        case reconcile(node: String, exceptInstance: String)
        /// Store an active backoff (it survives a restart).
        case persistBackoff(BackoffTable.Entry)
        /// A (sending IP, provider) pair became suspended or throttled (`started`), or its backoff
        /// ran out (`ended`): record the `suspended` / `lifted` event (delivery log, webhooks).
        case backoffEvent(BackoffEvent)
        /// Store the owner of every owned sending IP (restored after a restart): IP → node.
        case persistIPOwners([String: String])
        /// Add reputation signal counts to the store (`QueueStore.addReputationCounts`).
        case persistSignals([ReputationCount])
        /// Forget a (sending IP, provider) pair's stored signal counts (after a lift, or when a
        /// rule's action ended).
        case forgetSignals(ip: String, provider: String)
        /// Write a log line.
        case log(SchedulerLogLine)
        /// Run `tick` again after this many seconds at the latest.
        case scheduleNextTick(after: TimeInterval)
    }

    /// The configuration in force.
    public private(set) var config: ClusterConfig
    /// Nodes, their states and the IP assignment table.
    public private(set) var membership: Membership
    /// Leases in flight and credits.
    public private(set) var leases = LeaseTable()
    /// Active suspensions and throttles per (sending IP, provider).
    public private(set) var backoffs: BackoffTable
    /// Destination domain → shaping group (the key of backoffs: a `shaping.providers` name or
    /// `mx:<host>`), learned from results' MX hosts and backoff reports.
    public private(set) var providerOfDomain: [String: String] = [:]
    /// Destination domain → provider label (`gmail`, `microsoft`, a `shaping.providers` name,
    /// `other`), learned from results' MX hosts; well-known domains are known from the start.
    public private(set) var labelOfDomain: [String: String] = [:]
    /// Operator pauses (providers, pools, sending IPs).
    public private(set) var pauses: [PauseTarget: Pause] = [:]
    /// Warm-up: recipients leased per sending IP on `warmupDay` (UTC day number).
    public private(set) var warmupDay = -1
    public private(set) var warmupUsed: [String: Int] = [:]
    /// No new lease before this time (after a host restart that may have lost lease records).
    public private(set) var leaseHoldUntil: Date?
    private var holdLogged = false
    private var rebalanceWanted = false
    private var nextHeartbeat = Date.distantPast
    private var nextExpirySweep = Date.distantPast
    private var nextAgeSweep = Date.distantPast
    private var roundRobin = 0
    /// The weighted round robin over each pool's IPs, per (pool, provider).
    public private(set) var spread = SpreadState()
    /// Recipients leased per sending IP since the scheduler started (`ips --detail`: each IP's
    /// share of its pool's mail next to its weight).
    public private(set) var recipientsLeased: [String: Int] = [:]
    /// The IP owners last handed to the shell to store.
    private var storedOwners: [String: String]?
    /// The leadership this scheduler acts under (nil: no terms, as before issue 15).
    public private(set) var leadership: LeadershipStamp?
    /// Sending IPs a DNS blocklist lists (`reputation.dnsbl`): address → why. No new lease
    /// goes to them (unless `hold_when_all_listed: false` and their whole pool is listed).
    public private(set) var blocklisted: [String: String] = [:]
    /// Sending IPs whose forward-confirmed reverse DNS fails under `reputation.require_fcrdns`:
    /// address → why. No new lease goes to them, whatever `hold_when_all_listed` says.
    public private(set) var fcrdnsHeld: [String: String] = [:]
    /// Every held sending IP with why: blocklist listings and FCrDNS failures, joined.
    public var heldIPs: [String: String] {
        blocklisted.merging(fcrdnsHeld) { listed, fcrdns in listed + "; " + fcrdns }
    }
    /// Rolling per (sending IP, provider) counts of outcomes and complaints (`reputation.rules`).
    public private(set) var signals: ReputationSignals
    /// Sending IPs on the re-warm ramp (`reputation.rewarm`): address → when it resumed.
    public private(set) var rewarmSince: [String: Date] = [:]
    /// Per-provider warm-up counts on `warmupDay`: sending IP → provider label → recipients leased.
    public private(set) var warmupProviderUsed: [String: [String: Int]] = [:]
    /// Whether the last round that read the queue leased everything due it found, with rows
    /// to spare under its limit: nothing older waits, so new mail may be leased from its
    /// inserted rows at once (`leaseFresh`). False until a first round, and after any round
    /// that left due recipients behind (credits, caps, backoffs or pauses held them).
    public private(set) var queueDrained = false
    /// How many due recipients the last round that read the queue found.
    public private(set) var lastDueCount = 0
    /// `leaseFresh` applies to batches of at most this many new recipients after a round that
    /// found at most this many due: a light load, where each message's latency is its own. Under
    /// load the rounds lease many rows at once anyway, and a second planning and lease commit
    /// per batch would only add work (at 1800 msg/s, 18 % of leases went this way and the
    /// coordinator's CPU per message rose).
    public static let freshLeaseMaximumRows = 4

    /// Whether `leaseFresh` would lease a batch of new mail now (of at most
    /// `freshLeaseMaximumRows` recipients): the last round drained the queue at a light load.
    public var takesFreshRows: Bool { queueDrained && lastDueCount <= Self.freshLeaseMaximumRows }
    private var nextSignalPrune = Date.distantPast
    /// Signal counts not yet handed to the shell to store (written at most once per second).
    private var pendingSignalRows: [ReputationCount] = []
    private var nextSignalFlush = Date.distantPast

    /// How often leases past their expiry are looked for in the queue, seconds.
    public static let expirySweepInterval: TimeInterval = 1
    /// How often recipients past `retry.max_age` are expired, seconds.
    public static let ageSweepInterval: TimeInterval = 30
    /// The longest pause between two ticks, seconds.
    public static let maximumTickInterval: TimeInterval = 1

    /// - Parameters:
    ///   - config: the cluster configuration.
    ///   - draining: nodes in drain when the coordinator started (from the queue).
    ///   - backoffs: backoffs still active at start (from the queue).
    ///   - pauses: operator pauses (from the queue).
    ///   - leaseHoldUntil: no new lease before this time (see `QueueStore.beginRun`).
    ///   - leadership: the term, store and coordinator id to stamp on frames (nil: none).
    ///   - signals: reputation signal counts as stored (`QueueStore.reputationCounts`).
    public init(config: ClusterConfig, draining: Set<String> = [], backoffs: [BackoffTable.Entry] = [], pauses: [Pause] = [],
                leaseHoldUntil: Date? = nil, leadership: LeadershipStamp? = nil, signals: [ReputationCount] = []) {
        self.config = config
        self.signals = ReputationSignals(history: config.reputation.signalHistory)
        self.signals.load(signals)
        self.leadership = leadership
        for p in pauses { self.pauses[p.target] = p }
        self.membership = Membership(nodes: config.nodes.map(\.id), ips: Scheduler.tableRows(config), draining: draining)
        self.backoffs = BackoffTable(entries: backoffs)
        self.leaseHoldUntil = leaseHoldUntil
    }

    /// Keeps each sending IP for the node that owned it before the coordinator restarted, until
    /// that node rejoins or its reservation ends (`until`: by then its earlier leases have expired).
    /// - Parameters:
    ///   - owners: IP → node, as stored.
    ///   - until: per node, when its IPs may go to others.
    public mutating func restoreOwners(_ owners: [String: String], until: [String: Date]) {
        membership.restore(owners: owners, until: until)
        storedOwners = owners
    }

    /// No new lease before `date` (see `QueueStore.beginRun`).
    public mutating func holdLeases(until date: Date) {
        leaseHoldUntil = date
        holdLogged = false
    }

    static func tableRows(_ config: ClusterConfig) -> [(AssignedIP, [String])] {
        config.ips.map { (AssignedIP(address: $0.address, helo: $0.helo, pool: $0.pool), $0.nodes) }
    }

    // MARK: - Nodes

    /// An authenticated node (its `hello` proof was verified) asks to join on `connection`.
    /// - Returns: `welcome` with the IPs it owns, or `reject` and a disconnect.
    public mutating func joinRequested(_ hello: HelloMessage, connection: ConnectionID, peer: String, now: Date) -> [Directive] {
        let owned: [AssignedIP]
        do {
            owned = try membership.join(node: hello.nodeID, instance: hello.instanceID, connection: connection, address: peer,
                                        bindable: hello.bindableIPs, now: now)
        } catch {
            return [.send(connection, .reject(RejectMessage(reason: error.description, retryable: error.retryable))),
                    .disconnect(connection),
                    .log(.init(.warning, "node connection refused", ["node": hello.nodeID, "peer": peer, "reason": error.description]))]
        }
        leases.nodeConnected(hello.nodeID)
        let proof = ClusterAuth.coordinatorProof(secret: config.cluster.secret, nodeNonce: hello.nodeNonce, nodeID: hello.nodeID)
        return [.send(connection, .welcome(WelcomeMessage(proof: proof, assignedIPs: owned, heartbeatInterval: config.coordinator.heartbeatInterval,
                                                          peerTimeout: config.coordinator.nodeTimeout, term: leadership?.term,
                                                          storeID: leadership?.storeID, coordinatorID: leadership?.coordinatorID))),
                .log(.init(.info, "node joined", ["node": hello.nodeID, "instance": hello.instanceID, "peer": peer,
                                                  "ips": owned.map(\.address).joined(separator: ",")]))]
    }

    /// A frame arrived on `connection`.
    public mutating func heard(on connection: ConnectionID, now: Date) {
        membership.heard(on: connection, now: now)
    }

    /// A node asked for `credits` more leases. Its first request on a connection means it has
    /// re-reported its journal (the shell applied those results first): leases of its earlier
    /// instances are reconciled and it becomes active.
    public mutating func leaseRequested(_ credits: Int, on connection: ConnectionID, now: Date) -> [Directive] {
        guard let s = membership.session(on: connection) else { return [] }
        leases.addCredits(credits, node: s.nodeID)
        var out: [Directive] = []
        if membership.reconciled(on: connection) {
            out.append(.reconcile(node: s.nodeID, exceptInstance: s.instanceID))
            out.append(.log(.init(.info, "node active", ["node": s.nodeID, "state": state(of: s.nodeID).rawValue])))
            if config.coordinator.autoRebalance { rebalanceWanted = true }
        }
        out.append(.scheduleNextTick(after: 0))
        return out
    }

    /// Results were applied to the queue: each lease ends, its provider is learned from the MX
    /// host, and the node gets its `result_ack` (only now: the ack promises durability).
    /// - Parameter results: per result, the lease, the connection it came on, and the MX host.
    public mutating func resultsApplied(_ results: [(leaseID: String, connection: ConnectionID, mxHost: String?)], now: Date) -> [Directive] {
        var out: [Directive] = []
        out.reserveCapacity(results.count + 1)
        for r in results {
            if let lease = leases.finished(r.leaseID), let mx = r.mxHost {
                providerOfDomain[lease.domain] = config.shaping.group(forMXHost: mx).name
                // A well-known domain keeps its label when its MX host says nothing more (a
                // route to a smarthost): gmail.com stays gmail (pauses, per-provider warm-up caps).
                let label = config.providerName(forMXHost: mx)
                if label != "other" || MailboxProvider.name(forDomain: lease.domain) == nil { labelOfDomain[lease.domain] = label }
            }
            out.append(.send(r.connection, .resultAck(ResultAckMessage(leaseID: r.leaseID))))
        }
        out.append(.scheduleNextTick(after: 0))
        return out
    }

    /// The node on `connection` released sending IPs; completed handovers are assigned.
    public mutating func ipReleased(_ addresses: [String], on connection: ConnectionID, now: Date) -> [Directive] {
        guard let s = membership.session(on: connection) else { return [] }
        var out: [Directive] = addresses.map { a in
            .log(.init(.info, "node released sending IP", ["node": s.nodeID, "ip": a, "to": membership.table.entries.first { $0.ip.address == a }?.handoverTo ?? "-"]))
        }
        out += send(membership.released(addresses, by: s.nodeID))
        out.append(.scheduleNextTick(after: 0))
        return out
    }

    /// The node on `connection` reported a reply that matched a backoff rule.
    public mutating func backoffReported(_ m: BackoffMessage, on connection: ConnectionID, now: Date) -> [Directive] {
        let node = membership.session(on: connection)?.nodeID ?? "-"
        let action = BackoffRule.Action(rawValue: m.action) ?? .suspend
        providerOfDomain[m.domain] = m.provider
        guard action != .none else { return [] }
        let wasActive = backoffs.isActive(ip: m.sendingIP, provider: m.provider, now: now)
        backoffs.apply(ip: m.sendingIP, provider: m.provider, action: action, duration: max(1, min(m.duration, 7 * 86_400)),
                       ratePerMinute: m.ratePerMinute, reason: String(m.reply.prefix(512)), now: now)
        var out: [Directive] = []
        if let entry = backoffs.entry(ip: m.sendingIP, provider: m.provider) {
            out.append(.persistBackoff(entry))
            // One event when the pair becomes blocked; reports that extend it are logged only.
            if !wasActive { out.append(.backoffEvent(.started(entry))) }
        }
        out.append(.log(.init(.warning, "backoff", ["node": node, "ip": m.sendingIP, "provider": m.provider, "action": action.rawValue,
                                                     "seconds": "\(Int(m.duration))", "reply": String(m.reply.prefix(200))])))
        return out
    }

    /// The node on `connection` announced the configured IPs it can bind now.
    public mutating func announced(_ bindable: [String], on connection: ConnectionID, now: Date) -> [Directive] {
        guard let s = membership.session(on: connection) else { return [] }
        let added = membership.announced(node: s.nodeID, bindable: bindable, now: now)
        var out: [Directive] = [.log(.init(.info, "node announced bindable IPs", ["node": s.nodeID, "bindable": bindable.joined(separator: ","),
                                                                                  "assigned": added.map(\.address).joined(separator: ",")]))]
        if !added.isEmpty { out.append(.send(s.connection, .ipAssign(IPAssignMessage(ips: added, term: leadership?.term)))) }
        out.append(.scheduleNextTick(after: 0))
        return out
    }

    /// `connection` ended. If it was a node's current one the node is down: its credits and
    /// in-flight view go; its floating IPs may move once every lease it could still be working
    /// on has expired (the later of last heard + lease time and its last grant's expiry).
    public mutating func connectionClosed(_ connection: ConnectionID, reason: String, now: Date) -> [Directive] {
        guard let s = membership.session(on: connection) else { return [] }
        let leaseTime = config.coordinator.leaseTime
        let lastGrant = leases.lastGrantExpiry[s.nodeID] ?? .distantPast
        membership.disconnected(connection, leasesInFlight: leases.count(node: s.nodeID)) { session in
            max(session.lastHeard.addingTimeInterval(leaseTime), lastGrant)
        }
        leases.nodeDisconnected(s.nodeID)
        if config.coordinator.autoRebalance { rebalanceWanted = true }
        return [.log(.init(.warning, "node connection ended", ["node": s.nodeID, "instance": s.instanceID, "reason": reason])),
                .scheduleNextTick(after: 0)]
    }

    /// The state of `node`.
    public func state(of node: String) -> NodeState { membership.state(of: node, leasesInFlight: leases.count(node: node)) }

    // MARK: - Operators

    /// Puts `node` into drain: no new leases; its floating IPs are handed over to active nodes.
    /// The shell has stored the drain first.
    /// - Throws: `AdminError.unknownNode`.
    public mutating func drainRequested(_ node: String) throws(AdminError) -> [Directive] {
        guard membership.drain(node) else { throw .unknownNode(node) }
        return [.log(.init(.info, "node draining", ["node": node])), .scheduleNextTick(after: 0)]
    }

    /// Makes a draining or drained node active again. The shell has stored it first.
    /// - Throws: `AdminError.unknownNode`.
    public mutating func resumeRequested(_ node: String) throws(AdminError) -> [Directive] {
        guard membership.resume(node) else { throw .unknownNode(node) }
        if config.coordinator.autoRebalance { rebalanceWanted = true }
        return [.log(.init(.info, "node resumed", ["node": node])), .scheduleNextTick(after: 0)]
    }

    /// Computes and starts a rebalance (unowned IPs are assigned at once, owned ones by handover).
    /// - Returns: the plan being applied and what to send.
    public mutating func rebalanceRequested() -> (plan: [IPAssignmentTable.Move], directives: [Directive]) {
        let (plan, changes) = membership.rebalance()
        var out: [Directive] = []
        if !plan.isEmpty {
            out.append(.log(.init(.info, "rebalance", ["moves": plan.map { "\($0.address):\($0.from ?? "-")→\($0.to)" }.joined(separator: ",")])))
        }
        out += send(changes)
        out.append(.scheduleNextTick(after: 0))
        return (plan, out)
    }

    /// Lifts a backoff early (the shell deleted the stored one first).
    /// - Returns: whether one was active.
    /// The pair's signal counts are forgotten too (the shell deletes the stored ones), so a
    /// reputation rule does not fire again on the figures that made it act.
    public mutating func liftRequested(ip: String, provider: String) -> Bool {
        forgetSignals(ip: ip, provider: provider)
        return backoffs.lift(ip: ip, provider: provider)
    }

    /// The provider label of a destination domain: learned from its MX hosts, else the
    /// well-known domain table, else `unknown`.
    public func providerLabel(ofDomain domain: String) -> String {
        labelOfDomain[domain] ?? MailboxProvider.name(forDomain: domain) ?? "unknown"
    }

    /// The provider label of a backoff key (a `shaping.providers` name, or `mx:<host>` →
    /// the label of that host).
    public func providerLabel(ofBackoffKey key: String) -> String {
        if key.hasPrefix("mx:") { return config.providerName(forMXHost: String(key.dropFirst(3))) }
        if key.hasPrefix("domain:") { return providerLabel(ofDomain: String(key.dropFirst(7))) }
        return key
    }

    /// Lifts every active backoff of one provider label (all its sending IPs at once).
    /// The shell deletes the stored ones (the returned entries).
    /// - Returns: the backoffs lifted.
    public mutating func liftProvider(_ label: String, now: Date) -> [BackoffTable.Entry] {
        let lifted = backoffs.active(now: now).filter { $0.provider == label || providerLabel(ofBackoffKey: $0.provider) == label }
        for e in lifted {
            _ = backoffs.lift(ip: e.sendingIP, provider: e.provider)
            forgetSignals(ip: e.sendingIP, provider: e.provider)
        }
        return lifted
    }

    /// Pauses a provider, pool or sending IP (the shell stored it first): no new leases for
    /// its mail (or from that IP) until resumed; leases in flight finish.
    public mutating func paused(_ pause: Pause) -> [Directive] {
        pauses[pause.target] = pause
        return [.log(.init(.warning, "paused", ["target": pause.target.description, "by": pause.by, "reason": pause.reason])),
                .scheduleNextTick(after: 0)]
    }

    /// A blocklist check changed whether `ip` is listed (`BlocklistWatch`): nil `holdReason`
    /// resumes it.
    /// - Returns: a log line and a tick, when something changed.
    /// With `reputation.rewarm`, an IP that resumes starts on the re-warm ramp at `now`.
    public mutating func blocklistChanged(ip: String, holdReason: String?, now: Date) -> [Directive] {
        guard blocklisted[ip] != holdReason else { return [] }
        let was = blocklisted[ip] != nil
        blocklisted[ip] = holdReason
        if let holdReason {
            rewarmSince[ip] = nil
            return [.log(.init(.warning, was ? "sending IP still held: blocklist" : "sending IP held: blocklist", ["ip": ip, "reason": holdReason])),
                    .scheduleNextTick(after: 0)]
        }
        var fields = ["ip": ip]
        if was, let rewarm = config.reputation.rewarm {
            rewarmSince[ip] = now
            fields["rewarm"] = "from \(ReputationRule.percent(rewarm.start)) over \(ReputationRule.span(rewarm.over))"
        }
        return [.log(.init(.info, "sending IP resumed: no longer on a blocklist", fields)), .scheduleNextTick(after: 0)]
    }

    /// An FCrDNS check changed whether `ip` is held (`reputation.require_fcrdns`): no new
    /// leases while it is. A release does not start the re-warm ramp (nothing was listed).
    /// - Parameters:
    ///   - ip: the sending IP.
    ///   - holdReason: why it is held, nil when it is not.
    /// - Returns: a log line and a tick when it changed.
    public mutating func fcrdnsChanged(ip: String, holdReason: String?) -> [Directive] {
        guard fcrdnsHeld[ip] != holdReason else { return [] }
        fcrdnsHeld[ip] = holdReason
        if let holdReason {
            return [.log(.init(.warning, "sending IP held: FCrDNS", ["ip": ip, "reason": holdReason])), .scheduleNextTick(after: 0)]
        }
        return [.log(.init(.info, "sending IP resumed: FCrDNS confirmed", ["ip": ip])), .scheduleNextTick(after: 0)]
    }

    /// Puts sending IPs on the re-warm ramp as another coordinator saw them resume (a new
    /// leader's start): address → when it resumed.
    public mutating func restoreRewarm(_ since: [String: Date]) {
        for (ip, at) in since where blocklisted[ip] == nil { rewarmSince[ip] = at }
    }

    /// Whether the blocklist holds leave `ip` leasable.
    private func blocklistAllows(_ ip: AssignedIP) -> Bool {
        // `require_fcrdns` is strict: an IP failing FCrDNS never sends.
        guard fcrdnsHeld[ip.address] == nil else { return false }
        guard blocklisted[ip.address] != nil else { return true }
        guard !config.reputation.holdWhenAllListed else { return false }
        // The whole pool is listed and the operator chose to send anyway.
        return config.ips.filter { $0.pool == ip.pool }.allSatisfy { blocklisted[$0.address] != nil }
    }

    /// Ends a pause (the shell deleted it first).
    /// - Returns: whether it was paused, and what to do.
    public mutating func unpaused(_ target: PauseTarget, by: String) -> (Bool, [Directive]) {
        guard pauses.removeValue(forKey: target) != nil else { return (false, []) }
        return (true, [.log(.init(.info, "resumed", ["target": target.description, "by": by])), .scheduleNextTick(after: 0)])
    }

    /// Applies a newly loaded, checked configuration file: the keys that apply live on the
    /// coordinator (`ConfigReload.coordinatorConfig`: IPs, pools and nodes added or removed,
    /// eligibility, lease and retry settings, warm-up, routing); the others keep their values in
    /// force and are listed as needing a restart. Work in flight is not dropped: removed IPs are
    /// revoked from their owners; removed nodes are refused and disconnected.
    /// - Parameter loaded: the file as loaded (`ClusterConfig.load`).
    /// - Returns: what changed and what to send.
    public mutating func reloaded(_ loaded: ClusterConfig) -> (report: ReloadReport, directives: [Directive]) {
        let old = config
        let diff = ConfigReload(from: old, to: loaded)
        let new = diff.coordinatorConfig
        let report = ReloadReport(
            ipsAdded: new.ips.map(\.address).filter { a in !old.ips.contains { $0.address == a } },
            ipsRemoved: old.ips.map(\.address).filter { a in !new.ips.contains { $0.address == a } },
            nodesAdded: new.nodes.map(\.id).filter { n in !old.nodes.contains { $0.id == n } },
            nodesRemoved: old.nodes.map(\.id).filter { n in !new.nodes.contains { $0.id == n } },
            poolsAdded: new.pools.map(\.name).filter { p in !old.pools.contains { $0.name == p } },
            poolsRemoved: old.pools.map(\.name).filter { p in !new.pools.contains { $0.name == p } },
            live: diff.liveKeys, restartRequired: diff.restartRequired)
        let connections = membership.sessions.mapValues(\.connection)
        let (changes, removed) = membership.reconfigure(nodes: new.nodes.map(\.id), ips: Scheduler.tableRows(new))
        config = new
        signals.history = new.reputation.signalHistory
        var out = send(changes)
        for node in removed {
            guard let c = connections[node] else { continue }
            out.append(.send(c, .reject(RejectMessage(reason: "node removed from cluster.yml", retryable: false))))
            out.append(.disconnect(c))
        }
        out.append(.log(.init(.info, "configuration reloaded", ["ips_added": report.ipsAdded.joined(separator: ","),
                                                                 "ips_removed": report.ipsRemoved.joined(separator: ","),
                                                                 "nodes_added": report.nodesAdded.joined(separator: ","),
                                                                 "nodes_removed": report.nodesRemoved.joined(separator: ","),
                                                                 "live": report.live.joined(separator: ","),
                                                                 "needs_restart": report.restartRequired.joined(separator: "; ")])))
        out.append(.scheduleNextTick(after: 0))
        return (report, out)
    }

    // MARK: - Ticks

    /// One scheduling pass at `now`: heartbeats when due, the expiry sweeps when due, orphaned
    /// IPs assigned, drains and a wanted rebalance progressed, then due recipients planned
    /// into leases for every active node with credits.
    /// - Parameters:
    ///   - now: the current time.
    ///   - queue: where due recipients and warm-up counts are read.
    ///   - canSend: whether a node's connection can take more frames now (false for a node that
    ///     stopped reading: it gets nothing this round, so it never holds up the others).
    ///   - leasesPerNode: the most leases one node gets in this pass.
    /// - Returns: the directives, ending with when to tick next.
    /// - Throws: what `queue` throws; the state is unchanged then but for the sweeps and
    ///   assignments already returned — call again later.
    public mutating func tick(now: Date, queue: any SchedulerQueue, canSend: (String) -> Bool = { _ in true },
                              leasesPerNode: Int = .max) throws -> [Directive] {
        var out: [Directive] = []
        if now >= nextHeartbeat {
            nextHeartbeat = now.addingTimeInterval(config.coordinator.heartbeatInterval)
            for s in membership.sessions.values.sorted(by: { $0.nodeID < $1.nodeID }) {
                out.append(.send(s.connection, .heartbeat(HeartbeatMessage(leasesInFlight: leases.count(node: s.nodeID)))))
            }
        }
        for ended in backoffs.takeEnded(now: now) {
            out.append(.backoffEvent(.ended(ended)))
            if ended.reason.hasPrefix(RuleFiring.prefix) {
                // A rule's action ran out: start the pair's figures afresh.
                forgetSignals(ip: ended.sendingIP, provider: ended.provider)
                out.append(.forgetSignals(ip: ended.sendingIP, provider: ended.provider))
            }
        }
        if now >= nextSignalFlush, !pendingSignalRows.isEmpty {
            nextSignalFlush = now.addingTimeInterval(1)
            out.append(.persistSignals(Self.merged(pendingSignalRows)))
            pendingSignalRows = []
        }
        if now >= nextSignalPrune {
            nextSignalPrune = now.addingTimeInterval(60)
            signals.prune(now: now)
            for (ip, since) in rewarmSince where rewarmCap(ip, full: 1, since: since, now: now) == nil { rewarmSince[ip] = nil }
        }
        let expired = leases.expired(now: now)
        if now >= nextExpirySweep || !expired.isEmpty {
            nextExpirySweep = now.addingTimeInterval(Self.expirySweepInterval)
            for id in expired { leases.finished(id) }
            out.append(.requeueExpired)
        }
        if now >= nextAgeSweep {
            nextAgeSweep = now.addingTimeInterval(Self.ageSweepInterval)
            out.append(.expireOld(maxAge: config.retry.maxAge))
        }
        for change in membership.assignOrphans(now: now) {
            if case .assign(let node, let ips) = change {
                out.append(.log(.init(.info, "sending IP assigned", ["node": node, "ip": ips.map(\.address).joined(separator: ",")])))
            }
            out += send([change])
        }
        for change in membership.progressDrains() {
            if case .revoke(let node, let addresses) = change {
                out.append(.log(.init(.info, "handing over sending IP", ["from": node, "ip": addresses.joined(separator: ",")])))
            }
            out += send([change])
        }
        if rebalanceWanted {
            rebalanceWanted = false
            out += rebalanceRequested().directives.filter { if case .scheduleNextTick = $0 { return false } else { return true } }
        }
        out += try planGrants(now: now, queue: queue, canSend: canSend, leasesPerNode: leasesPerNode)
        let owners = membership.owners
        if owners != storedOwners && (!owners.isEmpty || storedOwners != nil) {
            // Reserved (not yet rejoined) owners stay stored until their IPs move.
            var stored = owners
            for (ip, r) in membership.table.reservations where stored[ip] == nil { stored[ip] = r.node }
            if stored != storedOwners {
                storedOwners = stored
                out.append(.persistIPOwners(stored))
            }
        }
        var next = Self.maximumTickInterval
        next = min(next, max(0, nextHeartbeat.timeIntervalSince(now)))
        if let hold = leaseHoldUntil { next = min(next, max(0, hold.timeIntervalSince(now))) }
        out.append(.scheduleNextTick(after: next))
        return out
    }

    /// Leases just-queued mail from its inserted rows (`SQLiteQueueStore.observeInsertedRecipients`)
    /// instead of the queue's due query, with every rule of a round (pauses, blocklist holds,
    /// backoffs, warm-up caps, per-IP caps, credits, the IP spread) — only while nothing older
    /// waits (`queueDrained`) and the load is light (`freshLeaseMaximumRows`); otherwise nothing,
    /// and the next round's due query takes the new rows in their turn. The rows may not be
    /// committed yet: recording the leases keeps only the ones that exist and wait
    /// (`QueueStore.recordLeases`).
    /// - Parameters:
    ///   - rows: the new recipients, as the due query would return them.
    ///   - now: the current time.
    ///   - queue: where warm-up counts are read (its due query is not used).
    ///   - canSend: as for `tick`.
    /// - Returns: the directives (a `grant`, log lines); empty when the fast path does not apply.
    /// - Throws: what `queue` throws for warm-up counts.
    public mutating func leaseFresh(_ rows: [DueRecipient], now: Date, queue: any SchedulerQueue,
                                    canSend: (String) -> Bool = { _ in true }) throws -> [Directive] {
        guard queueDrained, !rows.isEmpty, rows.count <= Self.freshLeaseMaximumRows, lastDueCount <= Self.freshLeaseMaximumRows else { return [] }
        return try planGrants(now: now, queue: FreshRows(rows: rows, base: queue), canSend: canSend, leasesPerNode: .max, freshRows: rows.count)
    }

    /// The queue as `leaseFresh` shows it to `planGrants`: the new rows are all that is due.
    private struct FreshRows: SchedulerQueue {
        let rows: [DueRecipient]
        let base: any SchedulerQueue
        /// Transactional rows before bulk ones, as the due query orders them (issue 18).
        func dueRecipients(pools: Set<String>, now: Date, limit: Int) throws -> [DueRecipient] {
            let wanted = rows.filter { pools.contains($0.pool) }
            return Array((wanted.filter { $0.priority == .transactional } + wanted.filter { $0.priority != .transactional }).prefix(limit))
        }
        func dailyAttempts(day: Int) throws -> [String: Int] { try base.dailyAttempts(day: day) }
        func dailyProviderAttempts(day: Int) throws -> [String: [String: Int]] { try base.dailyProviderAttempts(day: day) }
    }

    /// The queue returned expired leases to the waiting state.
    public mutating func leasesExpired(_ ids: [String]) -> [Directive] {
        for id in ids { leases.finished(id) }
        guard !ids.isEmpty else { return [] }
        return [.log(.init(.warning, "leases expired; recipients requeued", ["leases": "\(ids.count)"])), .scheduleNextTick(after: 0)]
    }

    /// The queue recorded the planned leases: `granted` holds the ones kept (recipients no longer
    /// waiting are trimmed from their lease, and a lease left empty is dropped). What was
    /// planned but not granted gives its credit and warm-up count back.
    public mutating func grantsRecorded(_ grants: [PlannedGrant], granted: [LeaseRecord]) {
        let kept = Dictionary(uniqueKeysWithValues: granted.map { ($0.id, $0) })
        for k in granted { recipientsLeased[k.sendingIP, default: 0] += k.recipientIDs.count }
        for g in grants {
            for rec in g.records {
                let label = providerLabel(ofDomain: rec.domain)
                if let k = kept[rec.id] {
                    if k.recipientIDs.count < rec.recipientIDs.count {
                        warmupUsed[rec.sendingIP, default: 0] -= rec.recipientIDs.count - k.recipientIDs.count
                        warmupProviderUsed[rec.sendingIP, default: [:]][label, default: 0] -= rec.recipientIDs.count - k.recipientIDs.count
                    }
                } else {
                    leases.withdrawn(rec)
                    warmupUsed[rec.sendingIP, default: 0] -= rec.recipientIDs.count
                    warmupProviderUsed[rec.sendingIP, default: [:]][label, default: 0] -= rec.recipientIDs.count
                }
            }
        }
    }

    /// Recording the planned leases failed: nothing was granted.
    public mutating func grantsFailed(_ grants: [PlannedGrant]) {
        grantsRecorded(grants, granted: [])
        queueDrained = false  // what was planned still waits
    }

    /// Active nodes with credits, rotated so each round starts with another node.
    private mutating func readyNodes(canSend: (String) -> Bool) -> [Membership.Session] {
        let all = membership.activeNodes.filter { (leases.credits[$0] ?? 0) > 0 && canSend($0) }.compactMap { membership.sessions[$0] }
        guard !all.isEmpty else { return [] }
        roundRobin &+= 1
        let k = roundRobin % all.count
        return Array(all[k...] + all[..<k])
    }

    /// - Parameter freshRows: for `leaseFresh`, how many new rows it was given (rows of a pool no
    ///   IP can take now are not even offered to the plan, yet they wait); nil for a round that
    ///   reads the queue.
    private mutating func planGrants(now: Date, queue: any SchedulerQueue, canSend: (String) -> Bool, leasesPerNode: Int,
                                     freshRows: Int? = nil) throws -> [Directive] {
        // A round says afterwards whether it left anything due behind (for `leaseFresh`, whether
        // it left any of the new rows); on any early return below it did (no node ready, a hold, …).
        queueDrained = false
        let fresh = freshRows != nil
        var out: [Directive] = []
        if let hold = leaseHoldUntil {
            if now < hold {
                if holdLogged { return [] }
                holdLogged = true
                return [.log(.init(.warning, "restarted after an unclean stop on a new boot, or after a failed sync of the queue: no new leases until every earlier lease has expired",
                                   ["until": Logger.timestamp(hold)]))]
            }
            leaseHoldUntil = nil
            if holdLogged { out.append(.log(.init(.info, "lease hold over; leasing resumes"))) }
        }
        let ready = readyNodes(canSend: canSend)
        guard !ready.isEmpty else { return out }
        let day = Queue.utcDay(now)
        if warmupDay != day {
            warmupUsed = try queue.dailyAttempts(day: day)
            warmupProviderUsed = try queue.dailyProviderAttempts(day: day)
            warmupDay = day
        }
        let weights = Dictionary(config.ips.map { ($0.address, $0.weight) }, uniquingKeysWith: { a, _ in a })
        let candidates = ready.flatMap { s in
            membership.table.leasable(by: s.nodeID).filter { ip in
                pauses[PauseTarget(kind: .ip, name: ip.address)] == nil && pauses[PauseTarget(kind: .pool, name: ip.pool)] == nil
                    && blocklistAllows(ip)
            }.map { LeasePlanner.Candidate(ip: $0, node: s.nodeID, weight: weights[$0.address] ?? 1) }
        }
        guard !candidates.isEmpty else { return out }
        var credits: [String: Int] = [:]
        for s in ready { credits[s.nodeID] = min(leases.credits[s.nodeID] ?? 0, leasesPerNode) }
        let totalCredits = credits.values.reduce(0, +)
        var inFlight: [String: Int] = [:]
        for s in ready { for (ip, n) in leases.inFlight(node: s.nodeID) { inFlight[ip, default: 0] += n } }
        // Leases in flight per IP at most: what the owner's delivery workers for it hold
        // (connections_per_ip workers, each with one lease in progress and one waiting).
        let perIPCap = max(1, config.delivery.connectionsPerIP * 2)
        // Bulk leases stop short of the workers kept for transactional mail (priority.bulk_reserve),
        // so a transactional lease always finds a slot, and a free worker at the node.
        let bulkPerIPCap = max(1, config.priority.usable(config.delivery.connectionsPerIP, by: .bulk) * 2)
        let pools = Set(candidates.map(\.ip.pool))
        // A few rows per credit first (most messages have one recipient per domain; a bigger group
        // is leased in parts); when that does not fill the credits — rows held back by warm-up
        // caps, backoffs or busy IPs — look further, up to 5000 rows.
        var limit = min(max(totalCredits * 4, 64), 5000)
        var plan: [(DeliveryGroup, LeasePlanner.Candidate)] = []
        var admitted = backoffs
        var rotated = spread
        var dueCount = 0
        while true {
            let due = try queue.dueRecipients(pools: pools, now: now, limit: limit)
            guard !due.isEmpty else {
                if !fresh {
                    lastDueCount = 0
                    queueDrained = pools == Set(config.ips.map(\.pool))
                }
                return out
            }
            dueCount = due.count
            if !fresh { lastDueCount = due.count }
            var groups = LeasePlanner.group(due)
            if pauses.keys.contains(where: { $0.kind == .provider }) {
                groups.removeAll { pauses[PauseTarget(kind: .provider, name: providerLabel(ofDomain: $0.domain))] != nil }
            }
            var budget: [String: Int] = [:]
            var providerBudget: [String: [String: Int]] = [:]
            for c in candidates {
                if let dayCap = dailyCap(for: c.ip.address, now: now) { budget[c.ip.address] = max(0, dayCap - warmupUsed[c.ip.address, default: 0]) }
                for (label, cap) in config.warmupProviderCaps(for: c.ip.address, now: now) {
                    providerBudget[c.ip.address, default: [:]][label] = max(0, cap - (warmupProviderUsed[c.ip.address]?[label] ?? 0))
                }
            }
            // A throttle counts the grants it admits, and the rotation moves: both on copies,
            // kept for the final plan only.
            var trialBackoffs = backoffs
            var trialSpread = spread
            var trialCredits = credits
            var trialInFlight = inFlight
            let providers = providerOfDomain
            let me = self
            plan = LeasePlanner.spread(groups, candidates: candidates, credits: &trialCredits, inFlight: &trialInFlight, perIPCap: perIPCap,
                                       bulkPerIPCap: bulkPerIPCap, budget: &budget, spread: &trialSpread,
                                       provider: { providers[$0.domain] ?? "domain:" + $0.domain }) { ip, g in
                // A per-provider warm-up cap (warmup[].providers) must cover the whole group.
                let label = providerBudget[ip.address] == nil ? nil : me.providerLabel(ofDomain: g.domain)
                if let label, let left = providerBudget[ip.address]?[label], left < g.recipients.count { return false }
                guard trialBackoffs.admit(ip: ip.address, provider: providers[g.domain] ?? "domain:" + g.domain, now: now) else { return false }
                if let label, let left = providerBudget[ip.address]?[label] { providerBudget[ip.address]?[label] = left - g.recipients.count }
                return true
            }
            admitted = trialBackoffs
            rotated = trialSpread
            if plan.count >= totalCredits || due.count < limit || limit >= 5000 { break }
            limit = min(limit * 8, 5000)
        }
        let planned = plan.reduce(0) { $0 + $1.0.recipients.count }
        // (New rows left waiting: the next new mail must not pass them.)
        queueDrained = planned == (freshRows ?? dueCount) && (fresh || (dueCount < limit && pools == Set(config.ips.map(\.pool))))
        guard !plan.isEmpty else { return out }
        backoffs = admitted
        spread = rotated
        let leaseTime = config.coordinator.leaseTime
        let expiresAt = now.addingTimeInterval(leaseTime)
        var grants: [String: PlannedGrant] = [:]
        for (g, c) in plan {
            guard let session = membership.sessions[c.node] else { continue }
            let rec = LeaseRecord(id: Identifier.random(bytes: 12), node: c.node, instance: session.instanceID, sendingIP: c.ip.address,
                                  messageID: g.messageID, domain: g.domain, recipientIDs: g.recipients.map(\.id), grantedAt: now, expiresAt: expiresAt)
            grants[c.node, default: PlannedGrant(node: c.node, connection: session.connection, records: [], planned: [:], leaseTime: leaseTime,
                                                    term: leadership?.term)]
                .records.append(rec)
            grants[c.node]?.planned[rec.id] = (g, c.ip)
            leases.granted(rec)
            warmupUsed[c.ip.address, default: 0] += rec.recipientIDs.count
            warmupProviderUsed[c.ip.address, default: [:]][providerLabel(ofDomain: rec.domain), default: 0] += rec.recipientIDs.count
        }
        out.append(.grant(grants.values.sorted { $0.node < $1.node }))
        return out
    }

    /// Turns membership changes into sends to the nodes' current connections.
    private func send(_ changes: [Membership.Change]) -> [Directive] {
        changes.compactMap { change in
            switch change {
            case .assign(let node, let ips):
                guard let c = membership.sessions[node]?.connection else { return nil }
                return .send(c, .ipAssign(IPAssignMessage(ips: ips, term: leadership?.term)))
            case .revoke(let node, let addresses):
                guard let c = membership.sessions[node]?.connection else { return nil }
                return .send(c, .ipRevoke(IPRevokeMessage(addresses: addresses, term: leadership?.term)))
            }
        }
    }

    // MARK: - Reading

    /// Why a waiting recipient waits, in an operator's words (`queue list`): `retry at …`,
    /// `paused: provider gmail (by ops: …)`, `no eligible IP in pool bulk`, `suspended: gmail
    /// backoff until …`, `warm-up cap of 192.0.2.13 reached until 00:00 UTC`, `shaping: …`, or
    /// `due: leased at the next scheduler pass`.
    /// - Parameters:
    ///   - pool: the message's pool.
    ///   - domain: the recipient's domain.
    ///   - state: its state (`queued`, `deferred`, `leased`, `held`).
    ///   - nextAttemptAt: when it is due.
    ///   - now: the current time.
    public func waitReason(pool: String, domain: String, state: String, nextAttemptAt: Date?, now: Date) -> String {
        func iso(_ d: Date) -> String { Logger.timestamp(d) }
        switch state {
        case "leased": return "leased: a delivery is in progress"
        case "held": return "held by an operator (release to send)"
        default: break
        }
        if let at = nextAttemptAt, at > now { return "retry at \(iso(at))" }
        if let p = pauses[PauseTarget(kind: .pool, name: pool)] { return "paused: pool \(pool) (by \(p.by)\(p.reason.isEmpty ? "" : ": " + p.reason))" }
        let label = providerLabel(ofDomain: domain)
        if let p = pauses[PauseTarget(kind: .provider, name: label)] { return "paused: provider \(label) (by \(p.by)\(p.reason.isEmpty ? "" : ": " + p.reason))" }
        if let hold = leaseHoldUntil, now < hold { return "restart hold: no leases until \(iso(hold))" }
        let inPool = membership.table.entries.filter { $0.ip.pool == pool }
        guard !inPool.isEmpty else { return "no sending IP in pool \(pool)" }
        let usable = inPool.filter { e in e.owner.map { membership.isActive($0) } == true && e.handoverTo == nil }
        guard !usable.isEmpty else {
            return "no eligible IP in pool \(pool): none is owned by an active node (\(inPool.map { "\($0.ip.address) \($0.owner.map { "on \($0) (\(self.state(of: $0).rawValue))" } ?? "unowned")" }.joined(separator: ", ")))"
        }
        let unpaused = usable.filter { pauses[PauseTarget(kind: .ip, name: $0.ip.address)] == nil }
        guard !unpaused.isEmpty else { return "paused: every IP of pool \(pool) (\(usable.map(\.ip.address).joined(separator: ", ")))" }
        let unlisted = unpaused.filter { blocklistAllows($0.ip) }
        guard !unlisted.isEmpty else {
            let held = heldIPs
            let what = unpaused.allSatisfy { blocklisted[$0.ip.address] != nil } ? "is on a blocklist" : "is held (blocklist or FCrDNS)"
            return "held: every IP of pool \(pool) \(what) (\(unpaused.map { "\($0.ip.address) \(held[$0.ip.address] ?? "")" }.joined(separator: "; ")))"
        }
        let key = providerOfDomain[domain] ?? "domain:" + domain
        let open = unlisted.filter { !backoffs.blocks(ip: $0.ip.address, provider: key, now: now) }
        guard !open.isEmpty else {
            let entries = unlisted.compactMap { backoffs.entry(ip: $0.ip.address, provider: key) }
            let until = entries.map(\.until).min().map { iso(Date(timeIntervalSince1970: $0)) } ?? "?"
            let what = entries.first?.action == .throttle ? "throttled" : "suspended"
            return "\(what): \(providerLabel(ofBackoffKey: key)) backoff on \(unlisted.map(\.ip.address).joined(separator: ", ")) until \(until) (\(entries.first?.reason ?? ""))"
        }
        let warm = open.filter { e in
            guard let cap = dailyCap(for: e.ip.address, now: now) else { return true }
            return warmupUsed[e.ip.address, default: 0] < cap || warmupDay != Queue.utcDay(now)
        }
        guard !warm.isEmpty else {
            let ramp = open.contains { rewarmSince[$0.ip.address] != nil } ? " (re-warm ramp after a delisting)" : ""
            return "warm-up cap of \(open.map(\.ip.address).joined(separator: ", ")) reached until 00:00 UTC\(ramp)"
        }
        let providerWarm = warm.filter { e in
            guard let cap = config.warmupProviderCap(for: e.ip.address, provider: label, now: now) else { return true }
            return (warmupProviderUsed[e.ip.address]?[label] ?? 0) < cap || warmupDay != Queue.utcDay(now)
        }
        guard !providerWarm.isEmpty else {
            return "warm-up cap for provider \(label) of \(warm.map(\.ip.address).joined(separator: ", ")) reached until 00:00 UTC"
        }
        let cap = max(1, config.delivery.connectionsPerIP * 2)
        var inFlight: [String: Int] = [:]
        for node in membership.sessions.keys { for (ip, n) in leases.inFlight(node: node) { inFlight[ip, default: 0] += n } }
        if warm.allSatisfy({ inFlight[$0.ip.address, default: 0] >= cap }) {
            return "shaping: every usable IP of pool \(pool) has \(cap) leases in flight"
        }
        return "due: leased at the next scheduler pass"
    }

    /// Warm-up state of an IP at `now`: (day of plan, cap, recipients leased today); nil when
    /// warmed or without a plan.
    /// On the re-warm ramp the cap is the ramp's (day 0 for an IP without a plan).
    public func warmupStatus(_ address: String, now: Date) -> (day: Int, cap: Int, used: Int)? {
        guard let cap = dailyCap(for: address, now: now) else { return nil }
        let day = config.warmupCap(for: address, now: now)?.day ?? 0
        let used = warmupDay == Queue.utcDay(now) ? warmupUsed[address, default: 0] : 0
        return (day, cap, used)
    }

    /// Per-provider warm-up caps of an IP today: provider label → (cap, recipients leased).
    public func warmupProviderStatus(_ address: String, now: Date) -> [String: (cap: Int, used: Int)] {
        let today = warmupDay == Queue.utcDay(now)
        return config.warmupProviderCaps(for: address, now: now).reduce(into: [:]) { out, e in
            out[e.key] = (e.value, today ? warmupProviderUsed[address]?[e.key] ?? 0 : 0)
        }
    }

    /// The daily cap of an IP at `now`: its warm-up cap, lowered by the re-warm ramp while it is
    /// on one; nil when neither applies.
    public func dailyCap(for address: String, now: Date) -> Int? {
        let warm = config.warmupCap(for: address, now: now)?.cap
        guard let since = rewarmSince[address] else { return warm }
        guard let full = warm ?? fullDailyCap(address) else { return nil }
        let ramp = rewarmCap(address, full: full, since: since, now: now)
        return ramp.map { min($0, full) } ?? warm
    }

    /// The full cap the re-warm ramp rises to for an IP past (or without) its plan: the plan's
    /// last daily cap, else `reputation.rewarm.daily`.
    private func fullDailyCap(_ address: String) -> Int? {
        if let w = config.ips.first(where: { $0.address == address })?.warmup, let last = config.warmup.first(where: { $0.name == w.plan })?.daily.last {
            return last
        }
        return config.reputation.rewarm?.daily
    }

    private func rewarmCap(_ address: String, full: Int, since: Date, now: Date) -> Int? {
        guard let settings = config.reputation.rewarm else { return nil }
        return RewarmRamp.cap(full: full, since: since, now: now, settings: settings)
    }

    // MARK: - Reputation signals

    /// Results were committed to the queue: each recipient's outcome is counted against its
    /// (sending IP, provider) pair (the provider of the MX host that answered; outcomes without
    /// an MX host, e.g. no server reachable, are not counted), and `reputation.rules` are
    /// evaluated for the pairs that changed. The counts are handed to the shell to store by
    /// `tick`, at most once per second (one write per second rather than one per batch), and at
    /// once when a rule fires.
    /// - Returns: for a rule that fired: the counts to store, the backoff, its event, a log line.
    public mutating func resultsCommitted(_ results: [ResultMessage], now: Date) -> [Directive] {
        var rows: [ReputationCount] = []
        var touched = Set<ReputationSignals.Pair>()
        for r in results {
            let at = min(now, Date(timeIntervalSince1970: r.finishedAt))
            for o in r.outcomes {
                guard let mx = o.mxHost ?? r.mxHost else { continue }
                let provider = config.shaping.group(forMXHost: mx).name
                rows.append(signals.record(SignalOutcome(o), ip: r.sendingIP, provider: provider, at: at))
                touched.insert(.init(ip: r.sendingIP, provider: provider))
            }
        }
        guard !rows.isEmpty else { return [] }
        pendingSignalRows += rows
        var out: [Directive] = []
        for pair in touched.sorted() { out += evaluateRules(pair, now: now) }
        if !out.isEmpty {
            out.insert(.persistSignals(Self.merged(pendingSignalRows)), at: 0)
            pendingSignalRows = []
        }
        return out
    }

    /// A feedback-loop complaint (RFC 5965) about mail a pair delivered.
    /// - Parameters:
    ///   - ip: the sending IP the complained-about message left from.
    ///   - provider: the provider key of its MX host (`config.shaping.group(forMXHost:)`, as
    ///     the recipient's stored `mx` gives it).
    ///   - at: when the complaint arrived.
    ///   - now: the current time.
    public mutating func complaintRecorded(ip: String, provider: String, at: Date, now: Date) -> [Directive] {
        let row = signals.record(.complaint, ip: ip, provider: provider, at: min(at, now))
        return [.persistSignals([row])] + evaluateRules(.init(ip: ip, provider: provider), now: now)
    }

    /// Forgets a pair's counts, in memory and not yet stored (the shell deletes the stored ones).
    private mutating func forgetSignals(ip: String, provider: String) {
        signals.reset(ip: ip, provider: provider)
        pendingSignalRows.removeAll { $0.ip == ip && $0.provider == provider }
    }

    private mutating func evaluateRules(_ pair: ReputationSignals.Pair, now: Date) -> [Directive] {
        guard !config.reputation.rules.isEmpty, !backoffs.isActive(ip: pair.ip, provider: pair.provider, now: now),
              let firing = signals.evaluate(config.reputation.rules, ip: pair.ip, provider: pair.provider, now: now) else { return [] }
        let action: BackoffRule.Action = firing.rule.action == .throttle ? .throttle : .suspend
        backoffs.apply(ip: pair.ip, provider: pair.provider, action: action, duration: firing.rule.duration,
                       ratePerMinute: firing.rule.ratePerMinute, reason: firing.reason, now: now)
        guard let entry = backoffs.entry(ip: pair.ip, provider: pair.provider) else { return [] }
        return [.persistBackoff(entry), .backoffEvent(.started(entry)),
                .log(.init(.warning, "reputation rule fired", ["ip": pair.ip, "provider": pair.provider, "action": firing.rule.action.rawValue,
                                                               "reason": firing.reason])),
                .scheduleNextTick(after: 0)]
    }

    private static func merged(_ rows: [ReputationCount]) -> [ReputationCount] {
        var sum: [String: ReputationCount] = [:]
        var order: [String] = []
        for r in rows {
            let k = "\(r.ip)\u{0}\(r.provider)\u{0}\(r.bucket)\u{0}\(r.kind)"
            if sum[k] == nil { order.append(k); sum[k] = r } else { sum[k]!.count += r.count }
        }
        return order.compactMap { sum[$0] }
    }

    /// One pair's figures for operators (`ips --detail`, `GET /v1/reputation`).
    public struct PairSignals: Sendable, Equatable, Codable {
        /// The sending IP.
        public var ip: String
        /// The provider key (as in the backoff table).
        public var provider: String
        /// Its label (`gmail`, …).
        public var providerLabel: String
        /// Seconds the figures cover (the longest rule window, 1h without rules).
        public var windowSeconds: Double
        /// The counts over that window.
        public var counts: SignalCounts
        /// Attempts in the window.
        public var attempts: Int
        /// Shares of attempts: deferrals, bounces, complaints (0…1).
        public var deferralRate: Double
        public var bounceRate: Double
        public var complaintRate: Double
        /// The active pause or throttle a reputation rule set on the pair (its reason), if any.
        public var ruleAction: String?
        /// Until when, for `ruleAction`.
        public var ruleActionUntil: Date?
    }

    /// Every pair with counts or an active rule action, by IP then provider.
    public func pairSignals(now: Date) -> [PairSignals] {
        let window = config.reputation.signalHistory
        var pairs = Set(signals.pairs)
        for e in backoffs.active(now: now) where e.reason.hasPrefix(RuleFiring.prefix) { pairs.insert(.init(ip: e.sendingIP, provider: e.provider)) }
        return pairs.sorted().map { p in
            let c = signals.counts(ip: p.ip, provider: p.provider, window: window, now: now)
            let n = Double(max(1, c.attempts))
            let e = backoffs.active(now: now).first { $0.sendingIP == p.ip && $0.provider == p.provider && $0.reason.hasPrefix(RuleFiring.prefix) }
            return PairSignals(ip: p.ip, provider: p.provider, providerLabel: providerLabel(ofBackoffKey: p.provider), windowSeconds: window, counts: c,
                               attempts: c.attempts, deferralRate: Double(c.deferred) / n, bounceRate: Double(c.bounced) / n,
                               complaintRate: Double(c.complaints) / n,
                               ruleAction: e.map { "\($0.action == .throttle ? "throttle \($0.ratePerMinute ?? 1)/min" : "pause"): \($0.reason)" },
                               ruleActionUntil: e.map { Date(timeIntervalSince1970: $0.until) })
        }
    }
}
