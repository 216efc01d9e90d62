import ClusterProtocol
import Foundation
import HatoConfig
import HatoCrypto
import HatoIO
import HatoSupport
import SMTPCore

/// A lease as held by the node, with its body and local deadline.
struct HeldLease: Sendable {
    var lease: Lease
    var body: [UInt8]
    /// The local deadline on the monotonic clock (`NodeAgent.deadline(for:receivedAt:wallNow:)`).
    var deadline: ContinuousClock.Instant
}

/// A FIFO of leases (one priority class's).
private struct LeaseFIFO: Sendable {
    var items: [HeldLease] = []
    var head = 0
    var count: Int { items.count - head }
    mutating func append(_ l: HeldLease) { items.append(l) }
    mutating func removeFirst() -> HeldLease {
        let next = items[head]
        head += 1
        if head > 64 && head * 2 > items.count { items.removeFirst(head); head = 0 }
        return next
    }
}

/// A blocking queue for one sending IP's leases: transactional leases leave before bulk ones
/// (each class in arrival order), and a worker kept for transactional mail never takes a bulk
/// one (issue 18).
final class LeaseQueue: Sendable {
    private struct State: Sendable {
        var transactional = LeaseFIFO()
        var bulk = LeaseFIFO()
        var closed = false
        /// Workers kept for transactional leases that are waiting or about to wait: a bulk
        /// lease must not be handed to a wake-up only one of them may get.
        var transactionalOnlyWaiters = 0
        var count: Int { transactional.count + bulk.count }
    }
    private let state = LockedCondition(State())

    /// Whom to wake for the leases queued: nobody when none is, every waiter when a bulk lease
    /// is queued while a worker kept for transactional mail waits (one wake-up might reach only
    /// that worker, which would not take it), else one waiter (any waiter takes any lease).
    private static func wake(for s: State) -> LockedConditionWake {
        if s.count == 0 { return .none }
        return s.bulk.count > 0 && s.transactionalOnlyWaiters > 0 ? .all : .one
    }

    /// Appends a lease and wakes one waiting worker (all only as `wake(for:)` says). One
    /// wake-up per lease instead of a broadcast: with `connections_per_ip` workers idle on an
    /// IP, a broadcast woke all of them to let one win (measured: 8 threads woken and 16
    /// context switches per granted lease at light load).
    func push(_ l: HeldLease) {
        state.withLockThenWake { s in
            if l.lease.effectivePriority == .bulk { s.bulk.append(l) } else { s.transactional.append(l) }
            return ((), LeaseQueue.wake(for: s))
        }
    }

    /// The next lease — the oldest transactional one, else (when `takingBulk`) the oldest bulk
    /// one — waiting for one; nil once closed and nothing this caller takes is left. A worker
    /// that leaves leases queued passes a wake-up on: the one it used may have been meant for
    /// another lease (a bulk lease's wake-up used by a general worker that took a transactional
    /// lease pushed after it, whose own wake-up went to a worker kept for transactional mail).
    /// - Parameter takingBulk: false for a worker kept for transactional leases.
    func pop(takingBulk: Bool = true) -> HeldLease? {
        if !takingBulk { state.withLock { $0.transactionalOnlyWaiters += 1 } }
        return state.wait(until: nil, for: { $0.transactional.count > 0 || (takingBulk && $0.bulk.count > 0) || $0.closed }) { s, _ -> (HeldLease?, LockedConditionWake) in
            if !takingBulk { s.transactionalOnlyWaiters -= 1 }
            var taken: HeldLease?
            if s.transactional.count > 0 {
                taken = s.transactional.removeFirst()
            } else if takingBulk && s.bulk.count > 0 {
                taken = s.bulk.removeFirst()
            }
            return (taken, LeaseQueue.wake(for: s))
        }
    }

    /// No more leases: `pop` returns what is queued, then nil.
    func close() { state.withLockAndBroadcast { $0.closed = true } }
    /// Leases queued.
    var count: Int { state.withLock { $0.count } }
}

/// A worker node: joins the coordinator, owns the sending IPs it is given,
/// pulls leases (credit-based flow control), delivers each from its leased
/// sending IP, journals and reports every recipient's outcome, and reconnects
/// with backoff (`ReconnectBackoff`) when the coordinator is gone.
///
/// Threads: `run()`'s thread reads the cluster connection; a heartbeat loop per session;
/// `connections_per_ip` delivery workers per owned sending IP. What they share is in one
/// `LockedCondition`; everything else is immutable.
public final class NodeAgent: Sendable {
    /// What the agent's threads share.
    private struct State: Sendable {
        var connection: ClusterConnection?
        /// The highest coordinator term seen (kept across connections for the process's life).
        var fence = TermFence()
        var ips: [String: AssignedIP] = [:]
        var queues: [String: LeaseQueue] = [:]
        var workers: [String: Int] = [:]
        var revoking: Set<String> = []
        var inFlight = 0
        var running = true
    }

    /// What a reload replaces while the node runs: the configuration in force (the file as
    /// last applied, with the keys that wait for a restart at their start-up values) and the
    /// parts built from it.
    private struct LiveParts: Sendable {
        var config: ClusterConfig
        var engine: DeliveryEngine
        var backoffMatcher: BackoffMatcher
    }

    /// The configuration the process started with: what only a restart changes (the cluster
    /// link, `coordinator.listen`, `smtp.max_message_size`, `delivery.connections_per_ip`).
    private let config: ClusterConfig
    /// The configuration in force and what is built from it (`reload()` replaces them).
    private let live: Locked<LiveParts>
    /// One reload at a time (SIGHUP and `config_changed` may overlap).
    private let reloadLock = NSLock()
    /// This node's id (`nodes[].id`).
    public let nodeID: String
    /// A fresh id per process start: a restart is a new instance.
    public let instanceID = Identifier.random(bytes: 8)
    private let journal: OutcomeJournal
    /// Outbound delivery: MX resolution, the shared session pool with shaping, DKIM, STARTTLS.
    /// One per agent at a time, so the shaping limits hold across all its delivery threads; a
    /// reload that changes what it is built from replaces it.
    var engine: DeliveryEngine { live.withLock { $0.engine } }
    private let log: Logger
    private let state = LockedCondition(State())
    /// Prometheus metrics (served on `nodes[].metrics_listen` by the CLI; NodeMetrics.swift).
    public let metrics: NodeMetrics
    /// `cluster.tls`: the client context of the cluster link (this node's certificate, the
    /// trusted CA); nil for plaintext.
    private let clusterTLS: TLSContext?
    /// The tenants' DKIM keys the coordinator sent (`signing_keys`); every engine signs with them.
    public let tenantKeys = TenantSigningKeys()

    /// - Parameters:
    ///   - config: the cluster configuration.
    ///   - nodeID: which `nodes[]` entry this process is.
    /// - Throws: `NodeError.unknownNode`, a journal error, `DKIMKeyError`, or `TLSError` when the
    ///   cluster TLS certificate, key or CA cannot be loaded.
    public init(config: ClusterConfig, nodeID: String) throws {
        guard let me = config.nodes.first(where: { $0.id == nodeID }) else { throw NodeError.unknownNode(nodeID, known: config.nodes.map(\.id)) }
        clusterTLS = try NodeAgent.clusterTLSContext(config, nodeID: nodeID)
        self.config = config
        self.nodeID = nodeID
        self.journal = try OutcomeJournal(directory: me.dataDir)
        self.log = Logger(label: "node.\(nodeID)")
        let engine = try DeliveryEngine(config: config, log: Logger(label: "node.\(nodeID).delivery"), tenantKeys: tenantKeys)
        self.live = Locked(LiveParts(config: config, engine: engine, backoffMatcher: BackoffMatcher(settings: config.backoff)))
        self.metrics = NodeMetrics(shaping: config.shaping)
        metrics.observe { [unowned self] in state.withLock { ($0.connection != nil, $0.ips.count, $0.inFlight) } }
    }

    /// The client context for the cluster link: verifies the coordinator against `cluster.tls.ca`
    /// (the system roots without one) and presents this node's pair (`nodes[].tls`, or the
    /// cluster-wide one).
    static func clusterTLSContext(_ config: ClusterConfig, nodeID: String) throws -> TLSContext? {
        guard let tls = config.cluster.tls, let pair = config.clusterTLSPair(forNode: nodeID) else { return nil }
        return try TLSContext.client(verifyPeer: true, trustedCAFile: tls.caPath,
                                     certificateChainPath: pair.certificatePath, privateKeyPath: pair.privateKeyPath)
    }

    /// Leases per sending IP worked on at once.
    private var perIP: Int { max(1, config.delivery.connectionsPerIP) }

    /// The configuration in force (the last file applied, restart-bound keys at their start-up values).
    public var configInForce: ClusterConfig { live.withLock { $0.config } }

    /// What a node did with a re-read cluster.yml.
    public struct ReloadOutcome: Sendable, Equatable {
        /// Whether the file was taken (false: refused; the node runs on unchanged).
        public var applied: Bool
        /// SHA-256 (hex) of the file read (empty when it could not be read).
        public var digest: String
        /// Changed keys that applied on this node at once.
        public var live: [String]
        /// Changed keys that wait for a restart of this node.
        public var restartRequired: [String]
        /// Why the file was refused: each names the key and the file.
        public var errors: [String]
    }

    /// Keys (and their sub-keys) a node applies live: which IPs it may own, and what its delivery
    /// engine and backoff rules are built from.
    static let liveKeys = ["nodes", "pools", "ips", "routes", "dns", "delivery", "dkim", "shaping", "backoff"]
    /// Keys whose change rebuilds the delivery engine (a new session pool; the old one's idle
    /// sessions are closed and it is shut down once its deliveries in flight are past their leases).
    static let engineKeys = ["ips", "routes", "dns", "delivery.port", "delivery.tls", "delivery.allow_loopback_mx", "delivery.mta_sts",
                             "delivery.dane", "dkim", "shaping"]

    /// Re-reads cluster.yml (the path this node started from), checks it as `hato-node check`
    /// does (without bind tests), and applies it: the sending IPs it may own (re-announced to the
    /// coordinator, which assigns those it can bind), DKIM keys, shaping, routes, DNS, outbound
    /// TLS and port, backoff rules. Keys that need a restart (`ConfigReload.restartKeys(forNode:)`)
    /// keep their values in force and are listed. On SIGHUP and on `config_changed`.
    /// - Returns: what was applied, or why the file was refused (then nothing changed).
    @discardableResult
    public func reload() -> ReloadOutcome {
        reloadLock.withLock {
            let path = config.sourcePath
            let new: ClusterConfig
            do { new = try ClusterConfig.load(path: path) } catch {
                log.error("reload refused; running configuration unchanged", ["error": "\(error)"])
                return ReloadOutcome(applied: false, digest: "", live: [], restartRequired: [], errors: ["\(error)"])
            }
            let check = ConfigCheck.node(new, id: nodeID, bindAddresses: false)
            guard !check.hasErrors else {
                let errors = check.errors.map { "\($0.key): \($0.detail)" }
                log.error("reload refused; running configuration unchanged", ["file": path, "errors": errors.joined(separator: "; ")])
                return ReloadOutcome(applied: false, digest: new.sourceDigest, live: [], restartRequired: [], errors: errors)
            }
            let old = live.withLock { $0.config }
            let diff = ConfigReload(from: old, to: new)
            let applied = diff.nodeConfig(nodeID)
            let changed = Set(diff.changes.map(\.key))
            let matches = { (keys: [String], key: String) in keys.contains { key == $0 || key.hasPrefix($0 + ".") || key.hasPrefix($0 + "[") } }
            var replaced: DeliveryEngine?
            if changed.contains(where: { matches(NodeAgent.engineKeys, $0) }) {
                do {
                    let engine = try DeliveryEngine(config: applied, log: Logger(label: "node.\(nodeID).delivery"), tenantKeys: tenantKeys)
                    for ip in state.withLock({ Set($0.revoking).union($0.workers.keys).subtracting($0.ips.keys) }) { engine.revokeSendingIP(ip) }
                    replaced = live.withLock { l in defer { l.engine = engine }; return l.engine }
                } catch {
                    log.error("reload refused; running configuration unchanged", ["error": "\(error)"])
                    return ReloadOutcome(applied: false, digest: new.sourceDigest, live: [], restartRequired: [], errors: ["\(error)"])
                }
            }
            live.withLock { $0.config = applied; $0.backoffMatcher = BackoffMatcher(settings: applied.backoff) }
            metrics.setShaping(applied.shaping)
            if let replaced {
                // Deliveries in flight finish on the old engine (their sessions go back to its
                // pool); it is shut down once their leases are over.
                replaced.closeIdleSessions()
                let after = max(5, applied.coordinator.leaseTime) + 5
                DispatchQueue.global().asyncAfter(deadline: .now() + after) { replaced.shutdown() }
            }
            let outcome = ReloadOutcome(applied: true, digest: new.sourceDigest,
                                        live: diff.changes.filter { $0.live && matches(NodeAgent.liveKeys, $0.key) }.map(\.key),
                                        restartRequired: diff.restartKeys(forNode: nodeID), errors: [])
            let binds = bindableIPs()
            log.info("configuration reloaded", ["live": outcome.live.joined(separator: ","), "needs_restart": outcome.restartRequired.joined(separator: ","),
                                                "engine": replaced == nil ? "kept" : "rebuilt", "bindable": binds.joined(separator: ",")])
            // The coordinator assigns the IPs this node may own now and can bind (added, or moved here).
            try? state.withLock { $0.connection }?.send(.announce(AnnounceMessage(bindableIPs: binds)))
            return outcome
        }
    }

    /// Answers `config_changed` on a thread of its own (the reader keeps reading meanwhile).
    private func configChanged(_ m: ConfigChangedMessage, on conn: ClusterConnection) {
        Thread.startNamed("hato-node-reload") { [self] in
            let o = reload()
            var errors = o.errors
            if o.applied && o.digest != m.digest {
                errors.append("\(config.sourcePath) differs from the coordinator's cluster.yml (SHA-256 \(o.digest.prefix(12)) here, \(m.digest.prefix(12)) there)")
            }
            try? conn.send(.configApplied(ConfigAppliedMessage(generation: m.generation, applied: o.applied, digest: o.digest, live: o.live,
                                                               restartRequired: o.restartRequired, errors: errors)))
        }
    }

    /// Configured sending IPs this node may own and this host can bind (bind test on port 0).
    public func bindableIPs() -> [String] {
        let ips = live.withLock { $0.config.ips }
        return ips.filter { $0.nodes.isEmpty || $0.nodes.contains(nodeID) }.map(\.address).filter { addr in
            guard let s = try? Socket.listen(on: SocketAddress(host: addr, port: 0), backlog: 1) else { return false }
            s.close(); return true
        }
    }

    /// Runs until `stop()`: connect, serve, and reconnect after a wait from `ReconnectBackoff`
    /// (0.5 s up to 10 s with jitter; back to the start after every successful join).
    public func run() {
        var backoff = ReconnectBackoff()
        var random = SystemRandomNumberGenerator()
        var targets = CoordinatorTargets(configured: config.coordinatorAddresses)
        while state.withLock({ $0.running }) {
            let target = targets.next
            do {
                try session(to: target, joined: { backoff.joined(); targets.joined() })
                backoff.joined()
            } catch ClusterProtocolError.redirected(let r) {
                // A standby named the leader: go there at once (a loop of redirects falls back
                // to the configured order and the backoff).
                log.info("coordinator is a standby; following its redirect",
                         ["coordinator": target.description, "leader": r.leader ?? "(unknown)", "address": r.address ?? "(unknown)", "term": String(r.term)])
                targets.redirected(to: r.address)
                // A coordinator answered: the cluster is there, only its leader moved. The
                // backoff starts over, so the node finds the new leader within a second or so.
                backoff.joined()
                if targets.followingRedirect { continue }
                if r.address == nil {
                    // A live standby that knows no leader: an election is under way. Ask the
                    // next coordinator soon rather than after a growing backoff.
                    state.withLock { $0.connection = nil }
                    let wait = Duration.milliseconds(Int.random(in: 300...700))
                    state.wait(until: .now + wait, for: { !$0.running }) { _, _ in }
                    continue
                }
            } catch let e as ClusterProtocolError {
                if case .rejected(let reason, retryable: false) = e {
                    log.error("coordinator refused this node; not retrying", ["reason": reason])
                    return
                }
                if case .authenticationFailed = e {
                    log.error("coordinator failed authentication (cluster secret differs); not retrying")
                    return
                }
                if case .versionMismatch = e { log.error("\(e)"); return }
                log.warning("cluster connection ended", ["coordinator": target.description, "reason": e.description])
                targets.failed()
            } catch {
                log.warning("cluster connection ended", ["coordinator": target.description, "reason": "\(error)"])
                targets.failed()
            }
            state.withLock { $0.connection = nil }
            let wait = backoff.next(using: &random)
            // Waits on the monotonic clock; `stop()` cuts the wait short.
            state.wait(until: .now + wait, for: { !$0.running }) { _, _ in }
        }
    }

    /// One connection's life: handshake, journal replay, credits, then read until it ends.
    /// - Parameter joined: called once the coordinator's `welcome` is verified.
    private func session(to listen: SocketAddress, joined: () -> Void) throws {
        let sock = try Socket.connect(to: listen, timeout: 5)
        sock.setTimeouts(read: 10, write: 30)
        // With TLS, the coordinator's certificate must verify against cluster.tls.ca and name
        // the host of coordinator.listen (an IP SAN for a numeric address).
        let conn = try ClusterConnection.open(over: sock, tls: clusterTLS, serverName: listen.host, maximumFrameSize: clusterFrameLimit)
        defer { conn.close() }
        let challenge: ChallengeMessage
        do {
            switch try conn.receive() {
            case .challenge(let c): challenge = c
            case .reject(let r): throw ClusterProtocolError.rejected(r.reason, retryable: r.retryable)
            default: throw ClusterProtocolError.unexpected("expected challenge")
            }
        } catch let e as SocketError where (e.kind == .timeout || e.kind == .closed) && clusterTLS == nil {
            // A coordinator that requires TLS waits for a ClientHello and cuts the link at its handshake deadline.
            throw SocketError(e.kind, "no challenge from the coordinator (does it require TLS? see cluster.tls)", code: e.code)
        }
        guard challenge.versions.contains(clusterProtocolVersion) else {
            throw ClusterProtocolError.versionMismatch(ours: clusterProtocolVersion, theirs: challenge.versions)
        }
        guard challenge.cluster == config.cluster.name else {
            throw ClusterProtocolError.rejected("coordinator belongs to cluster \(challenge.cluster), not \(config.cluster.name)", retryable: false)
        }
        let myNonce = Identifier.random(bytes: 32)
        let bindable = bindableIPs()
        let capacity = perIP * NodeAgent.prefetch * max(bindable.count, 1)
        try conn.send(.hello(HelloMessage(version: clusterProtocolVersion, nodeID: nodeID, instanceID: instanceID,
                                          proof: ClusterAuth.nodeProof(secret: config.cluster.secret, nonce: challenge.nonce, nodeID: nodeID, instanceID: instanceID),
                                          nodeNonce: myNonce, bindableIPs: bindable, capacity: capacity,
                                          features: ClusterFeature.all)))
        let welcome: WelcomeMessage
        switch try conn.receive() {
        case .welcome(let w): welcome = w
        case .reject(let r): throw ClusterProtocolError.rejected(r.reason, retryable: r.retryable)
        case .redirect(let r): throw ClusterProtocolError.redirected(r)
        default: throw ClusterProtocolError.unexpected("expected welcome")
        }
        guard ClusterAuth.verify(welcome.proof, expected: ClusterAuth.coordinatorProof(secret: config.cluster.secret, nodeNonce: myNonce, nodeID: nodeID)) else {
            throw ClusterProtocolError.authenticationFailed
        }
        // Fencing: a coordinator whose term is older than one this node has seen is a stale
        // leader; nothing it says is acted upon.
        let connectionTerm: Int64?
        do {
            connectionTerm = try state.withLock { try $0.fence.admitWelcome(term: welcome.term, storeID: welcome.storeID) }
        } catch let refusal as TermFence.Refusal {
            throw ClusterProtocolError.staleTerm(refusal)
        }
        func fenced(_ term: Int64?, _ what: String) throws {
            do {
                try state.withLock { try $0.fence.admitFrame(term: term, connectionTerm: connectionTerm) }
            } catch let refusal as TermFence.Refusal {
                log.warning("refused a frame from a stale coordinator; closing the connection", ["frame": what, "reason": refusal.description])
                throw ClusterProtocolError.staleTerm(refusal)
            }
        }
        joined()
        conn.setTimeouts(read: .seconds(max(welcome.peerTimeout, welcome.heartbeatInterval * 3)), write: .seconds(30))
        setOwned(welcome.assignedIPs)
        log.info("joined cluster", ["instance": instanceID, "ips": welcome.assignedIPs.map(\.address).joined(separator: ","),
                                    "term": connectionTerm.map(String.init) ?? "-", "coordinator": welcome.coordinatorID ?? "-"])
        // Re-report what the journal still holds before asking for work (the coordinator
        // reconciles older instances' leases on our first request).
        for r in journal.pending { try conn.send(.result(r)) }
        state.withLock { $0.connection = conn }
        try conn.send(.leaseRequest(LeaseRequestMessage(credits: freeCredits())))
        let heartbeat = heartbeats(conn, every: welcome.heartbeatInterval)
        heartbeat.start()
        defer {
            heartbeat.stop()
            state.withLock { if $0.connection === conn { $0.connection = nil } }
        }
        while true {
            switch try conn.receive() {
            case .heartbeat: break
            case .leaseGrant(let grant, let payload):
                try fenced(grant.term, "lease_grant")
                // The deadline is taken at receipt, on the monotonic clock.
                let now = ContinuousClock.now, wallNow = Date()
                for l in grant.leases {
                    // A grant of one message (the common case) carries just its body: no copy.
                    let body = l.bodyOffset == 0 && l.bodyLength == payload.count ? payload
                        : Array(payload[l.bodyOffset..<(l.bodyOffset + l.bodyLength)])
                    let held = HeldLease(lease: l, body: body, deadline: NodeAgent.deadline(for: l, receivedAt: now, wallNow: wallNow))
                    guard let q = state.withLock({ s -> LeaseQueue? in
                        guard let q = s.queues[l.sendingIP] else { return nil }
                        s.inFlight += 1
                        return q
                    }) else {
                        log.warning("lease for an IP this node does not own; left to expire", ["lease": l.leaseID, "ip": l.sendingIP])
                        continue
                    }
                    q.push(held)
                }
            case .resultAck(let ack):
                journal.acknowledge(leaseID: ack.leaseID)
            case .ipAssign(let m):
                try fenced(m.term, "ip_assign")
                assign(m.ips)
                try conn.send(.leaseRequest(LeaseRequestMessage(credits: perIP * NodeAgent.prefetch * m.ips.count)))
            case .ipRevoke(let m):
                try fenced(m.term, "ip_revoke")
                // Finish what is queued for these IPs, then report them released
                // (the coordinator hands them over only after that).
                revoke(m.addresses)
            case .configChanged(let m):
                configChanged(m, on: conn)
            case .signingKeys(let m):
                try fenced(m.term, "signing_keys")
                signingKeys(m)
            case .reject(let r):
                throw ClusterProtocolError.rejected(r.reason, retryable: r.retryable)
            case let other:
                throw ClusterProtocolError.unexpected("\(other.frameType) from the coordinator")
            }
        }
    }

    /// `signing_keys`: opens the tenants' keys and replaces the table (the grants that follow
    /// on this link sign with them). Logs counts and `domain/selector` only.
    private func signingKeys(_ m: SigningKeysMessage) {
        let update = tenantKeys.replace(with: m, clusterSecret: config.cluster.secret)
        log.info("tenant signing keys updated", ["version": "\(update.version)", "domains": "\(update.domains)", "keys": "\(update.keys)"])
        if !update.failed.isEmpty {
            log.error("tenant signing keys that do not open with this node's cluster secret; their domains sign without them",
                      ["keys": update.failed.joined(separator: ",")])
        }
    }

    private var clusterFrameLimit: Int { clusterMaximumFrameSize(maxMessageSize: config.smtp.maxMessageSize) }

    /// Leases held per delivery worker: one in progress and one waiting, so a worker never
    /// idles for the round trip of result → credit → grant (the lease deadline covers the wait).
    static let prefetch = 2

    private func freeCredits() -> Int {
        state.withLock { max(0, perIP * NodeAgent.prefetch * $0.ips.count - $0.inFlight) }
    }

    /// The heartbeat loop of one session: a heartbeat every `interval` seconds (at least
    /// 0.2 s) while `conn` is the current connection; a failed send closes it.
    private func heartbeats(_ conn: ClusterConnection, every interval: Double) -> BackgroundLoop {
        let period = Duration.seconds(max(0.2, interval))
        let first = Locked(true)
        return BackgroundLoop(name: "hato-node-heartbeat") { [self] in
            // The first heartbeat goes one period after the join.
            if first.withLock({ f -> Bool in defer { f = false }; return f }) { return period }
            guard let n = state.withLock({ $0.connection === conn ? $0.inFlight : nil }) else { return period }
            do { try conn.send(.heartbeat(HeartbeatMessage(leasesInFlight: n, sentAt: Date().timeIntervalSince1970))) } catch { conn.close() }
            return period
        }
    }

    /// The local deadline of a lease on the monotonic clock: `expiresIn` from its receipt,
    /// never after the coordinator's `expiresAt` (converted once, at receipt), minus a safety
    /// margin (10% of the lease time, at least 1 s, at most 10 s) so that this node has
    /// stopped before the coordinator re-leases the recipients or moves the IP (fencing).
    /// - Parameters:
    ///   - l: the lease.
    ///   - now: the monotonic instant of receipt.
    ///   - wallNow: the wall clock at receipt (to convert `expiresAt`).
    static func deadline(for l: Lease, receivedAt now: ContinuousClock.Instant, wallNow: Date) -> ContinuousClock.Instant {
        var end = now + .seconds(l.expiresIn)
        if let at = l.expiresAt {
            end = min(end, ContinuousClock.Instant.from(Date(timeIntervalSince1970: at), wallNow: wallNow, monotonicNow: now))
        }
        let margin = min(10, max(1, l.expiresIn * 0.1))
        return end - .seconds(margin)
    }

    /// Makes the owned set exactly `assigned` (welcome): new IPs get workers, IPs no longer
    /// owned are closed after their queued leases finish.
    private func setOwned(_ assigned: [AssignedIP]) {
        let stale = state.withLock { Set($0.ips.keys).subtracting(assigned.map(\.address)) }
        if !stale.isEmpty { revoke(Array(stale), report: false) }
        assign(assigned)
    }

    /// Takes ownership of sending IPs and starts their delivery workers.
    private func assign(_ assigned: [AssignedIP]) {
        for ip in assigned {
            engine.reinstateSendingIP(ip.address)
            let q: LeaseQueue? = state.withLock { s in
                s.ips[ip.address] = ip
                s.revoking.remove(ip.address)
                guard s.queues[ip.address] == nil else { return nil }
                let q = LeaseQueue(); s.queues[ip.address] = q
                s.workers[ip.address, default: 0] += perIP
                return q
            }
            guard let q else { continue }
            // Long-lived delivery workers: they end when the IP's queue is closed and empty. The
            // last `priority.bulk_reserve` of them take transactional leases only, so one is free
            // for a transactional lease under any bulk backlog (issue 18).
            let general = config.priority.usable(perIP, by: .bulk)
            for index in 0..<perIP {
                let takingBulk = index < general
                Thread.startNamed("delivery \(ip.address)") { [self] in worker(q, ip: ip.address, takingBulk: takingBulk) }
            }
        }
    }

    /// Stops taking leases for `addresses`; their workers finish what is queued, and the
    /// last one to exit reports the IP released. Idle sessions from them are closed (QUIT)
    /// at once, and none is kept or opened in the background from them any more.
    private func revoke(_ addresses: [String], report: Bool = true) {
        let (qs, immediately) = state.withLock { s -> ([LeaseQueue], [String]) in
            var immediately: [String] = []
            let qs = addresses.compactMap { a -> LeaseQueue? in
                s.ips[a] = nil
                if report { s.revoking.insert(a) }
                guard let q = s.queues.removeValue(forKey: a) else {
                    if report && (s.workers[a] ?? 0) == 0 { s.revoking.remove(a); immediately.append(a) }
                    return nil
                }
                return q
            }
            return (qs, immediately)
        }
        for a in addresses { engine.revokeSendingIP(a) }
        for q in qs { q.close() }
        if !immediately.isEmpty { sendReleased(immediately) }
    }

    private func sendReleased(_ addresses: [String]) {
        // No session from a released IP may stay open: close the idle pooled ones (QUIT).
        for a in addresses { engine.closeIdleSessions(sendingIP: a) }
        log.info("sending IPs released", ["ips": addresses.joined(separator: ",")])
        try? state.withLock { $0.connection }?.send(.ipReleased(IPReleasedMessage(addresses: addresses)))
    }

    private func worker(_ queue: LeaseQueue, ip: String, takingBulk: Bool) {
        while let held = queue.pop(takingBulk: takingBulk) {
            let result = deliver(held)
            if let result { reportBackoff(held.lease, result) }
            finish(result)
        }
        let released = state.withLock { s -> Bool in
            s.workers[ip, default: 1] -= 1
            guard s.workers[ip] == 0, s.queues[ip] == nil else { return false }
            return s.revoking.remove(ip) != nil
        }
        if released { sendReleased([ip]) }
    }

    /// Delivers one lease and builds its result.
    func deliver(_ held: HeldLease) -> ResultMessage? {
        let l = held.lease
        guard ContinuousClock.now < held.deadline else {
            log.warning("lease expired before delivery; the coordinator requeues it", ["lease": l.leaseID])
            return nil
        }
        let delivered = engine.deliver(lease: l, body: held.body, deadline: held.deadline)
        let outcomes = delivered.results
        let mx = delivered.mxHost
        let remote = delivered.remoteAddress
        for o in outcomes {
            log.info("delivery", ["lease": l.leaseID, "message": l.messageID, "ip": l.sendingIP, "mx": o.mxHost ?? mx ?? "",
                                  "status": o.status.rawValue, "code": "\(o.reply.code)", "tls": o.tlsVersion ?? "none",
                                  "reused": o.reusedConnection.map { "\($0)" } ?? "", "dkim": o.dkim?.joined(separator: ",") ?? ""])
        }
        return ResultMessage(leaseID: l.leaseID, instanceID: instanceID, sendingIP: l.sendingIP, mxHost: mx, remoteAddress: remote,
                             outcomes: outcomes, finishedAt: Date().timeIntervalSince1970)
    }

    /// Tells the coordinator when a reply matched a backoff rule, so it stops or slows
    /// leases for this (sending IP, provider) pair (one report per lease at most).
    private func reportBackoff(_ lease: Lease, _ result: ResultMessage) {
        let (shaping, backoffMatcher) = live.withLock { ($0.config.shaping, $0.backoffMatcher) }
        let provider = result.mxHost.map { shaping.group(forMXHost: $0).name } ?? "domain:" + lease.domain
        for o in result.outcomes where o.status != .delivered {
            guard let rule = backoffMatcher.match(o.reply, provider: provider) else { continue }
            // About one mailbox: that recipient is deferred, nothing is slowed.
            if rule.action == .none { continue }
            let reply = String("\(o.reply.code) \(o.reply.enhanced?.description ?? "") \(o.reply.text)".prefix(512))
            log.warning("backoff rule matched", ["ip": result.sendingIP, "provider": provider, "action": rule.action.rawValue, "reply": String(reply.prefix(200))])
            try? state.withLock { $0.connection }?.send(.backoff(BackoffMessage(
                sendingIP: result.sendingIP, provider: provider, domain: lease.domain, action: rule.action.rawValue,
                duration: rule.duration, ratePerMinute: rule.ratePerMinute, reply: reply)))
            return
        }
    }

    private func finish(_ result: ResultMessage?) {
        if let result {
            metrics.record(result)
            do { try journal.record(result) } catch {
                log.error("journal write failed; result kept in memory only", ["lease": result.leaseID, "error": "\(error)"])
            }
        }
        let conn = state.withLock { s -> ClusterConnection? in s.inFlight -= 1; return s.connection }
        guard let conn else { return }
        do {
            // The result and the credit it frees in one write: one send here, one read and
            // one wake-up of the coordinator's reader instead of two.
            let credit = ClusterMessage.leaseRequest(LeaseRequestMessage(credits: 1))
            try conn.send(result.map { [.result($0), credit] } ?? [credit])
        } catch {
            conn.close()
        }
    }

    /// Stops reconnecting (the current session ends when its connection does).
    public func stop() {
        let conn = state.withLockAndBroadcast { s -> ClusterConnection? in s.running = false; return s.connection }
        conn?.close()
    }
}

/// Node start-up errors.
public enum NodeError: Error, CustomStringConvertible {
    /// `--id` names no `nodes[]` entry.
    case unknownNode(String, known: [String])
    public var description: String {
        switch self {
        case .unknownNode(let id, let known): return "unknown node id \"\(id)\" (cluster.yml nodes: \(known.joined(separator: ", ")))"
        }
    }
}
