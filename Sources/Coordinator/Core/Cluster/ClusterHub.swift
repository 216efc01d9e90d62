import Foundation
import HatoShared

/// Maximum cluster frame size for a configuration: two maximum messages plus headers.
public func clusterMaximumFrameSize(maxMessageSize: Int) -> Int { maxMessageSize * 2 + 1 << 20 }

/// Node membership states (docs/operations.md).
public enum NodeState: String, Codable, Sendable, CaseIterable {
    /// Connected and authenticated, re-reporting its journal; no leases yet.
    case joining
    /// Receiving leases.
    case active
    /// An operator asked for a drain: no new leases; in-flight work finishes; floating IPs move away.
    case draining
    /// Drain complete: no leases, no floating IPs. Safe to stop.
    case drained
    /// Not connected (missed heartbeats for `node_timeout`, crashed, or never started).
    case down
    /// Drained and disconnected, or removed from cluster.yml.
    case left
}

/// One connected node (an instance of a node process on one connection).
final class NodeSession: @unchecked Sendable {
    let nodeID: String
    let instanceID: String
    let connection: ClusterConnection
    let peer: SocketAddress
    // Mutable fields below are guarded by ClusterHub.lock.
    var credits = 0
    var inFlightPerIP: [String: Int] = [:]
    var leases: [String: String] = [:] // lease id → sending IP
    var leaseDomains: [String: String] = [:] // lease id → destination domain
    var reconciled = false
    var lastHeard: Date
    var lastGrantExpiry = Date.distantPast
    var closed = false

    init(nodeID: String, instanceID: String, connection: ClusterConnection, peer: SocketAddress, now: Date) {
        self.nodeID = nodeID; self.instanceID = instanceID; self.connection = connection; self.peer = peer; self.lastHeard = now
    }
}

/// A node's state as the admin API shows it.
public struct NodeStatus: Codable, Sendable, Equatable {
    public var state: NodeState
    public var id: String
    public var instance: String?
    public var address: String?
    /// Sending IPs the node owns.
    public var ips: [String]
    /// Floating IPs still to hand over (non-empty only while draining).
    public var ipsToHandOver: [String]
    public var leasesInFlight: Int
    public var lastSeen: Double?
}

/// What a configuration reload changed.
public struct ReloadReport: Codable, Sendable, Equatable {
    public var ipsAdded: [String]
    public var ipsRemoved: [String]
    public var nodesAdded: [String]
    public var nodesRemoved: [String]
    public var poolsAdded: [String]
    public var poolsRemoved: [String]
    /// Settings that changed but only take effect after a restart.
    public var restartRequired: [String]
}

/// The coordinator's side of the cluster protocol: membership, the IP assignment
/// table and its handovers, and the scheduler that turns due recipients into leases.
///
/// Threads: one accept loop, one reader per node connection, one scheduler loop
/// (woken by new mail, new credits and results, and at least once a second), one
/// heartbeat loop. Shared state lives under `lock`; SQLite work happens outside it.
public final class ClusterHub: @unchecked Sendable {
    private var config: ClusterConfig
    private let store: QueueStore
    private let clock: any WallClock
    private let log = Logger(label: "coordinator.cluster")
    private let lock = NSLock()
    private let wakeCondition = NSCondition()
    private var wakePending = false
    /// Held for each scheduler pass (the scheduler thread's, or one run inline by `dispatchNewMail`):
    /// passes never overlap, so the round state below needs no other lock.
    private let roundLock = NSLock()
    private var sessions: [String: NodeSession] = [:]
    private var lastSeen: [String: (instance: String, address: String, at: Date)] = [:]
    private var left: Set<String> = []
    private var draining: Set<String>
    private var table: IPAssignmentTable
    private var listener: Socket?
    private var running = true
    private var lastExpirySweep = Date.distantPast
    private var roundRobin = 0
    private var rebalanceWanted = false
    private var backoffs = BackoffTable()
    /// Destination domain → provider, learned from results' MX hosts and backoff reports.
    private var providerOfDomain: [String: String] = [:]
    /// Warm-up: attempts per IP on `warmupDay` (UTC day number), persisted in the queue db.
    private var warmupDay = -1
    private var warmupUsed: [String: Int] = [:]
    /// Called with every node result once applied (reporting keeps its TLS and timing details). Set before `start()`.
    public var onResult: (@Sendable (ResultMessage) -> Void)?
    /// No new lease before this time (after a host restart that may have lost lease records,
    /// see `QueueStore.beginRun`). Set before `start()`.
    public var leaseHoldUntil: Date?
    private var holdLogged = false

    /// - Parameters:
    ///   - config: the cluster configuration.
    ///   - store: the durable queue.
    ///   - clock: time source.
    /// - Throws: `SQLiteError` reading persisted drain state.
    public init(config: ClusterConfig, store: QueueStore, clock: any WallClock = SystemClock()) throws {
        self.config = config
        self.store = store
        self.clock = clock
        self.table = IPAssignmentTable(ips: ClusterHub.tableRows(config))
        self.draining = try store.drainingNodes()
        self.backoffs = BackoffTable(entries: try store.activeBackoffs(now: clock.now()))
    }

    private static func tableRows(_ config: ClusterConfig) -> [(AssignedIP, [String])] {
        config.ips.map { (AssignedIP(address: $0.address, helo: $0.helo, pool: $0.pool), $0.nodes) }
    }

    private var maxFrame: Int { clusterMaximumFrameSize(maxMessageSize: lock.withLock { config.smtp.maxMessageSize }) }

    /// Binds the cluster listener and starts the accept, scheduler and heartbeat threads.
    /// - Throws: `SocketError` when the listen address cannot be bound.
    public func start() throws {
        let sock = try Socket.listen(on: config.coordinator.listen)
        listener = sock
        log.info("cluster listener ready", ["listen": config.coordinator.listen.description])
        Thread.detachNewThread { [self] in acceptLoop(sock) }
        Thread.detachNewThread { [self] in schedulerLoop() }
        Thread.detachNewThread { [self] in heartbeatLoop() }
        Thread.detachNewThread { [self] in resultWriterLoop() }
    }

    /// Stops accepting and closes every node connection.
    public func stop() {
        lock.withLock { running = false }
        listener?.close()
        for s in lock.withLock({ Array(sessions.values) }) { s.connection.close() }
        wake()
    }

    /// Wakes the scheduler (new mail, new credits, results).
    public func wake() {
        wakeCondition.lock(); wakePending = true; wakeCondition.signal(); wakeCondition.unlock()
    }

    // MARK: Connections

    private func acceptLoop(_ sock: Socket) {
        while lock.withLock({ running }) {
            guard let (client, peer) = try? sock.accept() else { break }
            Thread.detachNewThread { [self] in handle(client, peer: peer) }
        }
    }

    private func handle(_ sock: Socket, peer: SocketAddress) {
        let conn = ClusterConnection(socket: sock, maximumFrameSize: maxFrame)
        sock.setTimeouts(read: 10, write: 30)
        let nonce = Identifier.random(bytes: 32)
        var session: NodeSession?
        do {
            let name = lock.withLock { config.cluster.name }
            try conn.send(.challenge(ChallengeMessage(versions: [clusterProtocolVersion], nonce: nonce, cluster: name)))
            guard case .hello(let hello) = try conn.receive() else {
                throw ClusterProtocolError.unexpected("expected hello")
            }
            session = try admit(hello, nonce: nonce, conn: conn, peer: peer)
            guard let session else { return }
            sock.setTimeouts(read: lock.withLock { config.coordinator.nodeTimeout }, write: 30)
            while true {
                let msg = try conn.receive()
                lock.withLock { session.lastHeard = clock.now() }
                try handleMessage(msg, from: session)
            }
        } catch {
            if let session {
                log.warning("node connection ended", ["node": session.nodeID, "instance": session.instanceID, "reason": "\(error)"])
            } else {
                log.warning("node connection refused", ["peer": peer.description, "reason": "\(error)"])
                if let pe = error as? ClusterProtocolError {
                    var retryable = true
                    switch pe {
                    case .versionMismatch, .authenticationFailed: retryable = false
                    case .rejected(_, let r): retryable = r
                    default: break
                    }
                    try? conn.send(.reject(RejectMessage(reason: pe.description, retryable: retryable)))
                }
            }
        }
        conn.close()
        if let session { detach(session) }
    }

    /// Checks version and proof and registers the session.
    private func admit(_ hello: HelloMessage, nonce: String, conn: ClusterConnection, peer: SocketAddress) throws -> NodeSession {
        guard hello.version == clusterProtocolVersion else {
            throw ClusterProtocolError.versionMismatch(ours: clusterProtocolVersion, theirs: [hello.version])
        }
        let cfg = lock.withLock { config }
        let expected = ClusterAuth.nodeProof(secret: cfg.cluster.secret, nonce: nonce, nodeID: hello.nodeID, instanceID: hello.instanceID)
        guard ClusterAuth.verify(hello.proof, expected: expected) else { throw ClusterProtocolError.authenticationFailed }
        guard cfg.nodes.contains(where: { $0.id == hello.nodeID }) else {
            throw ClusterProtocolError.rejected("node id \(hello.nodeID) is not in cluster.yml nodes (add it and run hato-coordinator reload)", retryable: false)
        }
        let now = clock.now()
        let session = NodeSession(nodeID: hello.nodeID, instanceID: hello.instanceID, connection: conn, peer: peer, now: now)
        let owned: [AssignedIP] = try lock.withLock {
            if let existing = sessions[hello.nodeID], !existing.closed {
                throw ClusterProtocolError.rejected("node \(hello.nodeID) is already connected (instance \(existing.instanceID))", retryable: true)
            }
            sessions[hello.nodeID] = session
            left.remove(hello.nodeID)
            lastSeen[hello.nodeID] = (hello.instanceID, peer.host, now)
            return table.nodeConnected(hello.nodeID, bindable: hello.bindableIPs, takeUnowned: !draining.contains(hello.nodeID))
        }
        let proof = ClusterAuth.coordinatorProof(secret: cfg.cluster.secret, nodeNonce: hello.nodeNonce, nodeID: hello.nodeID)
        try conn.send(.welcome(WelcomeMessage(proof: proof, assignedIPs: owned, heartbeatInterval: cfg.coordinator.heartbeatInterval,
                                              peerTimeout: cfg.coordinator.nodeTimeout)))
        log.info("node joined", ["node": hello.nodeID, "instance": hello.instanceID, "peer": peer.description,
                                 "ips": owned.map(\.address).joined(separator: ",")])
        return session
    }

    private func detach(_ session: NodeSession) {
        let auto = lock.withLock { () -> Bool in
            session.closed = true
            guard sessions[session.nodeID] === session else { return false }
            sessions[session.nodeID] = nil
            let leaseTime = config.coordinator.leaseTime
            // Fencing: the node's floating IPs may move once every lease it could still be
            // working on has expired.
            let fence = max(session.lastHeard.addingTimeInterval(leaseTime), session.lastGrantExpiry)
            table.nodeDisconnected(session.nodeID, fenceUntil: fence)
            lastSeen[session.nodeID] = (session.instanceID, session.peer.host, session.lastHeard)
            if draining.contains(session.nodeID) && session.leases.isEmpty && table.floatingOwned(by: session.nodeID).isEmpty {
                left.insert(session.nodeID)
            }
            return config.coordinator.autoRebalance
        }
        if auto { lock.withLock { rebalanceWanted = true }; wake() }
    }

    private func handleMessage(_ msg: ClusterMessage, from session: NodeSession) throws {
        switch msg {
        case .heartbeat:
            break
        case .leaseRequest(let req):
            let first = lock.withLock { () -> Bool in
                session.credits = max(0, min(session.credits + req.credits, 100_000))
                defer { session.reconciled = true }
                return !session.reconciled
            }
            if first {
                // The node re-reported its journal before its first request: once those results
                // are applied, leases of earlier instances of this node are known lost and go back to the queue.
                flushResults()
                let n = try store.requeueLeases(node: session.nodeID, exceptInstance: session.instanceID, now: clock.now())
                if n > 0 { log.info("requeued leases of a previous instance", ["node": session.nodeID, "leases": "\(n)"]) }
                log.info("node active", ["node": session.nodeID, "state": state(of: session.nodeID).rawValue])
                if lock.withLock({ config.coordinator.autoRebalance }) { lock.withLock { rebalanceWanted = true } }
            }
            wake()
        case .result(let result):
            // Applied by the result writer in batches (one transaction and fsync for all
            // results waiting); the ack follows the commit.
            resultCondition.lock()
            pendingResults.append((result, session))
            resultCondition.broadcast()
            resultCondition.unlock()
        case .ipReleased(let m):
            for address in m.addresses {
                let target: (String, NodeSession?)? = lock.withLock {
                    guard let t = table.released(address, by: session.nodeID) else { return nil }
                    return (t, sessions[t])
                }
                log.info("node released sending IP", ["node": session.nodeID, "ip": address, "to": target?.0 ?? "-"])
                if let (t, s) = target, let ip = lock.withLock({ table.entries.first { $0.ip.address == address }?.ip }) {
                    log.info("sending IP assigned", ["node": t, "ip": address])
                    try? s?.connection.send(.ipAssign(IPAssignMessage(ips: [ip])))
                }
            }
            wake()
        case .backoff(let m):
            let action = BackoffRule.Action(rawValue: m.action) ?? .suspend
            let entry = lock.withLock { () -> BackoffTable.Entry? in
                providerOfDomain[m.domain] = m.provider
                backoffs.apply(ip: m.sendingIP, provider: m.provider, action: action, duration: max(1, min(m.duration, 7 * 86400)),
                               ratePerMinute: m.ratePerMinute, reason: String(m.reply.prefix(512)), now: clock.now())
                return backoffs.entry(ip: m.sendingIP, provider: m.provider)
            }
            if let entry { try store.saveBackoff(entry) }
            log.warning("backoff", ["node": session.nodeID, "ip": m.sendingIP, "provider": m.provider, "action": action.rawValue,
                                    "seconds": "\(Int(m.duration))", "reply": String(m.reply.prefix(200))])
        case .announce(let m):
            let (before, after) = lock.withLock { () -> ([AssignedIP], [AssignedIP]) in
                let before = table.owned(by: session.nodeID)
                return (before, table.nodeConnected(session.nodeID, bindable: m.bindableIPs, takeUnowned: !draining.contains(session.nodeID)))
            }
            let added = after.filter { !before.contains($0) }
            log.info("node announced bindable IPs", ["node": session.nodeID, "bindable": m.bindableIPs.joined(separator: ","),
                                                     "assigned": added.map(\.address).joined(separator: ",")])
            if !added.isEmpty { try session.connection.send(.ipAssign(IPAssignMessage(ips: added))) }
            wake()
        case .reject(let r):
            throw ClusterProtocolError.rejected(r.reason, retryable: r.retryable)
        default:
            throw ClusterProtocolError.unexpected("\(msg.frameType) from a node")
        }
    }

    // MARK: Results

    private let resultCondition = NSCondition()
    private var pendingResults: [(ResultMessage, NodeSession)] = []
    private var writingResults = false

    /// Blocks until every result received so far is applied.
    private func flushResults() {
        resultCondition.lock()
        while !pendingResults.isEmpty || writingResults { resultCondition.wait() }
        resultCondition.unlock()
    }

    /// The result writer: applies every waiting result in one transaction, then acknowledges each.
    private func resultWriterLoop() {
        while lock.withLock({ running }) {
            resultCondition.lock()
            while pendingResults.isEmpty { _ = resultCondition.wait(until: Date().addingTimeInterval(1)); if !lock.withLock({ running }) { resultCondition.unlock(); return } }
            let batch = pendingResults
            pendingResults.removeAll(keepingCapacity: true)
            writingResults = true
            resultCondition.unlock()
            let applied: [ResultApplication]?
            do {
                applied = try store.applyResults(batch.map { ($0.0, $0.1.nodeID) }, retry: retryPolicy, now: clock.now())
            } catch {
                // Not acknowledged: the nodes keep the results in their journals and re-send them.
                log.error("applying results failed; nodes will re-send", ["results": "\(batch.count)", "error": "\(error)"])
                applied = nil
            }
            if let applied {
                for ((result, session), app) in zip(batch, applied) {
                    onResult?(result)
                    lock.withLock {
                        if let ip = session.leases.removeValue(forKey: result.leaseID) {
                            session.inFlightPerIP[ip, default: 1] -= 1
                        }
                        if let domain = session.leaseDomains.removeValue(forKey: result.leaseID), let mx = result.mxHost {
                            providerOfDomain[domain] = config.shaping.group(forMXHost: mx).name
                        }
                    }
                    try? session.connection.send(.resultAck(ResultAckMessage(leaseID: result.leaseID)))
                    for o in result.outcomes {
                        log.debug("recipient result", ["lease": result.leaseID, "node": session.nodeID, "ip": result.sendingIP, "recipient": "\(o.recipientID)",
                                                      "status": o.status.rawValue, "code": "\(o.code)", "mx": result.mxHost ?? ""])
                    }
                    if !app.leaseKnown { log.info("late or duplicate result applied idempotently", ["lease": result.leaseID, "applied": "\(app.applied)", "ignored": "\(app.ignored)"]) }
                }
            }
            resultCondition.lock()
            writingResults = false
            resultCondition.broadcast()
            resultCondition.unlock()
            wake()
        }
    }

    private var retryPolicy: RetryPolicy {
        lock.withLock { RetryPolicy(schedule: config.retry.schedule, maxAge: config.retry.maxAge) }
    }

    // MARK: Membership

    /// The state of `node` (caller must not hold `lock`).
    public func state(of node: String) -> NodeState { lock.withLock { stateLocked(node) } }

    private func stateLocked(_ node: String) -> NodeState {
        if !config.nodes.contains(where: { $0.id == node }) { return .left }
        guard let s = sessions[node] else { return left.contains(node) ? .left : .down }
        if !s.reconciled { return .joining }
        if draining.contains(node) {
            return s.leases.isEmpty && table.floatingOwned(by: node).isEmpty ? .drained : .draining
        }
        return .active
    }

    /// Puts `node` into drain: no new leases; its floating IPs are handed over to active nodes.
    /// - Throws: `AdminError.unknownNode`, `SQLiteError`.
    public func drain(_ node: String) throws {
        guard lock.withLock({ config.nodes.contains { $0.id == node } }) else { throw AdminError.unknownNode(node) }
        try store.setDraining(node, true, now: clock.now())
        lock.withLock { _ = draining.insert(node) }
        log.info("node draining", ["node": node])
        wake()
    }

    /// Makes a draining or drained node active again.
    /// - Throws: `AdminError.unknownNode`, `SQLiteError`.
    public func resume(_ node: String) throws {
        guard lock.withLock({ config.nodes.contains { $0.id == node } }) else { throw AdminError.unknownNode(node) }
        try store.setDraining(node, false, now: clock.now())
        let auto = lock.withLock { () -> Bool in draining.remove(node); left.remove(node); return config.coordinator.autoRebalance }
        if auto { lock.withLock { rebalanceWanted = true } }
        log.info("node resumed", ["node": node])
        wake()
    }

    /// Hands each draining node's floating IPs to active nodes, one revoke per IP.
    private func progressDrains() {
        let revokes: [(NodeSession, String)] = lock.withLock {
            var out: [(NodeSession, String)] = []
            for node in draining.sorted() {
                guard let s = sessions[node] else { continue }
                for e in table.entries where e.owner == node && e.isFloating && e.handoverTo == nil {
                    let targets = activeNodesLocked().filter { table.canOwn($0, e) }
                    guard let t = targets.min(by: { (table.owned(by: $0).count, $0) < (table.owned(by: $1).count, $1) }) else { continue }
                    if table.beginHandover(e.ip.address, to: t) { out.append((s, e.ip.address)) }
                }
            }
            return out
        }
        for (s, address) in revokes {
            log.info("handing over sending IP", ["from": s.nodeID, "ip": address])
            try? s.connection.send(.ipRevoke(IPRevokeMessage(addresses: [address])))
        }
    }

    private func activeNodesLocked() -> [String] {
        sessions.keys.sorted().filter { stateLocked($0) == .active }
    }

    // MARK: Rebalance

    /// The moves that would even out sending IPs over active nodes.
    public func rebalancePlan() -> [IPAssignmentTable.Move] {
        lock.withLock { table.planRebalance(nodes: activeNodesLocked()) }
    }

    /// Computes and starts a rebalance: unowned IPs are assigned at once, owned ones by handover.
    /// - Returns: the plan being applied.
    @discardableResult
    public func rebalance() -> [IPAssignmentTable.Move] {
        let (plan, assigns, revokes): ([IPAssignmentTable.Move], [(NodeSession, AssignedIP)], [(NodeSession, String)]) = lock.withLock {
            let plan = table.planRebalance(nodes: activeNodesLocked())
            var assigns: [(NodeSession, AssignedIP)] = []
            var revokes: [(NodeSession, String)] = []
            for m in plan {
                if let from = m.from {
                    if let s = sessions[from], table.beginHandover(m.address, to: m.to) { revokes.append((s, m.address)) }
                } else if let ip = table.assignUnowned(m.address, to: m.to), let s = sessions[m.to] {
                    assigns.append((s, ip))
                }
            }
            return (plan, assigns, revokes)
        }
        if !plan.isEmpty { log.info("rebalance", ["moves": plan.map { "\($0.address):\($0.from ?? "-")→\($0.to)" }.joined(separator: ",")]) }
        for (s, ip) in assigns { try? s.connection.send(.ipAssign(IPAssignMessage(ips: [ip]))) }
        for (s, a) in revokes { try? s.connection.send(.ipRevoke(IPRevokeMessage(addresses: [a]))) }
        wake()
        return plan
    }

    // MARK: Reload

    /// Applies a new, already validated configuration: IPs, pools and nodes added or removed,
    /// lease/retry settings. Work in flight is not dropped: removed IPs are revoked from their owners.
    /// - Returns: what changed.
    public func reload(_ new: ClusterConfig) -> ReloadReport {
        let (report, revokes, kicked): (ReloadReport, [(NodeSession, String)], [NodeSession]) = lock.withLock {
            let old = config
            var report = ReloadReport(
                ipsAdded: new.ips.map(\.address).filter { a in !old.ips.contains { $0.address == a } },
                ipsRemoved: old.ips.map(\.address).filter { a in !new.ips.contains { $0.address == a } },
                nodesAdded: new.nodes.map(\.id).filter { n in !old.nodes.contains { $0.id == n } },
                nodesRemoved: old.nodes.map(\.id).filter { n in !new.nodes.contains { $0.id == n } },
                poolsAdded: new.pools.map(\.name).filter { p in !old.pools.contains { $0.name == p } },
                poolsRemoved: old.pools.map(\.name).filter { p in !new.pools.contains { $0.name == p } },
                restartRequired: [])
            if old.smtp != new.smtp { report.restartRequired.append("smtp") }
            if old.coordinator.listen != new.coordinator.listen || old.coordinator.adminListen != new.coordinator.adminListen
                || old.coordinator.dataDir != new.coordinator.dataDir || old.coordinator.adminToken != new.coordinator.adminToken {
                report.restartRequired.append("coordinator listen/admin_listen/admin_token/data_dir")
            }
            if old.cluster != new.cluster { report.restartRequired.append("cluster") }
            var revokes: [(NodeSession, String)] = []
            for (address, owner) in table.reconfigure(ClusterHub.tableRows(new)) {
                if let s = sessions[owner] { revokes.append((s, address)) }
            }
            var kicked: [NodeSession] = []
            for n in report.nodesRemoved {
                if let s = sessions[n] { kicked.append(s) }
                left.insert(n)
            }
            config = new
            return (report, revokes, kicked)
        }
        for (s, a) in revokes { try? s.connection.send(.ipRevoke(IPRevokeMessage(addresses: [a]))) }
        for s in kicked {
            try? s.connection.send(.reject(RejectMessage(reason: "node removed from cluster.yml", retryable: false)))
            s.connection.close()
        }
        log.info("configuration reloaded", ["ips_added": report.ipsAdded.joined(separator: ","), "ips_removed": report.ipsRemoved.joined(separator: ","),
                                            "nodes_added": report.nodesAdded.joined(separator: ","), "nodes_removed": report.nodesRemoved.joined(separator: ",")])
        wake()
        return report
    }

    /// The configuration in force.
    public var currentConfig: ClusterConfig { lock.withLock { config } }

    // MARK: Scheduler

    private func schedulerLoop() {
        while lock.withLock({ running }) {
            wakeCondition.lock()
            if !wakePending { _ = wakeCondition.wait(until: Date().addingTimeInterval(1)) }
            wakePending = false
            wakeCondition.unlock()
            roundLock.lock()
            do { try schedulerRound() } catch { log.error("scheduler round failed", ["error": "\(error)"]) }
            roundLock.unlock()
        }
    }

    /// New mail was queued: grants due work at once on the calling thread when no scheduler
    /// pass is running, which spares the scheduler thread's wake-up on the way from the
    /// client's `250` to the lease (only the grant step runs here; the sweeps stay with the
    /// scheduler thread; at most `inlineLeasesPerNode` leases per node, the rest of a backlog
    /// is left to the scheduler). When a pass is running, wakes the scheduler for another one.
    /// Call it after the `250` was written, so the client does not wait for it. A node whose
    /// connection has more than `inlineBacklogLimit` unsent bytes (it stopped reading) is
    /// left to the scheduler thread.
    public func dispatchNewMail() {
        guard roundLock.try() else { wake(); return }
        defer { roundLock.unlock() }
        do {
            // A write to a backed-up node could block this client's session.
            let all = readyNodes()
            let ready = all.filter { $0.connection.socket.unsentBytes < ClusterHub.inlineBacklogLimit }
            if try grantRound(ready, now: clock.now(), leasesPerNode: ClusterHub.inlineLeasesPerNode) || ready.count < all.count { wake() }
        } catch {
            log.error("scheduler round failed", ["error": "\(error)"])
            wake()
        }
    }

    /// The most leases per node that `dispatchNewMail` grants on a session's thread.
    static let inlineLeasesPerNode = 8
    /// Unsent bytes on a node's connection from which `dispatchNewMail` leaves it to the scheduler.
    static let inlineBacklogLimit = 64 * 1024

    /// Active nodes with credits, rotated so each pass starts with another node. Call under `roundLock`.
    private func readyNodes() -> [NodeSession] {
        lock.withLock {
            let all = sessions.values.filter { $0.credits > 0 && stateLocked($0.nodeID) == .active }.sorted { $0.nodeID < $1.nodeID }
            guard !all.isEmpty else { return [] }
            roundRobin += 1
            let k = roundRobin % all.count
            return Array(all[k...] + all[..<k])
        }
    }

    /// One pass: sweep expired leases and too-old recipients, hand out orphaned IPs,
    /// progress drains and rebalances, then grant due work to every active node with credits.
    func schedulerRound() throws {
        let now = clock.now()
        let expired = try store.requeueExpiredLeases(now: now)
        if !expired.isEmpty {
            log.warning("leases expired; recipients requeued", ["leases": "\(expired.count)"])
            lock.withLock {
                for s in sessions.values {
                    for id in expired {
                        if let ip = s.leases.removeValue(forKey: id) { s.inFlightPerIP[ip, default: 1] -= 1 }
                    }
                }
            }
        }
        let maxAge = lock.withLock { config.retry.maxAge }
        if now.timeIntervalSince(lastExpirySweep) >= 30 {
            lastExpirySweep = now
            let n = try store.expireOld(maxAge: maxAge, now: now)
            if n > 0 { log.warning("recipients expired (maximum queue age)", ["recipients": "\(n)"]) }
        }
        let moves: [(NodeSession?, AssignedIP, String)] = lock.withLock {
            table.assignOrphans(now: now, excluded: draining).map { (sessions[$0.0], $0.1, $0.0) }
        }
        for (s, ip, node) in moves {
            log.info("sending IP assigned", ["node": node, "ip": ip.address])
            try? s?.connection.send(.ipAssign(IPAssignMessage(ips: [ip])))
        }
        progressDrains()
        if lock.withLock({ () -> Bool in defer { rebalanceWanted = false }; return rebalanceWanted }) { rebalance() }
        try grantRound(readyNodes(), now: now)
    }

    /// Leases planned for one node in one scheduler round.
    private struct GrantPlan {
        var session: NodeSession
        var records: [LeaseRecord]
        var planned: [String: (DeliveryGroup, AssignedIP)]
        var leaseTime: TimeInterval
        var maxSize: Int
        var expiresAt: Date
    }

    /// Grants due work to every ready node: plans per node, records every lease of the round
    /// (and the warm-up counts) in one transaction, then sends the grants.
    /// - Returns: whether some node's grant stopped at `leasesPerNode` (more may be due).
    @discardableResult
    private func grantRound(_ ready: [NodeSession], now: Date, leasesPerNode: Int = .max) throws -> Bool {
        if let hold = leaseHoldUntil {
            if now < hold {
                if !holdLogged {
                    holdLogged = true
                    log.warning("host restarted after an unclean stop: no new leases until every earlier lease has expired",
                                ["until": Logger.timestamp(hold)])
                }
                return false
            }
            leaseHoldUntil = nil
            log.info("lease hold over; leasing resumes")
        }
        let day = QueueStore.utcDay(now)
        if lock.withLock({ warmupDay != day }) {
            let used = try store.dailyAttempts(day: day)
            lock.withLock { warmupDay = day; warmupUsed = used }
        }
        var taken = Set<Int64>()
        var plans: [GrantPlan] = []
        var dueCache: DueCache? = nil
        for session in ready {
            if let p = try planGrant(for: session, now: now, excluding: &taken, cache: &dueCache, cap: leasesPerNode) { plans.append(p) }
        }
        guard !plans.isEmpty else { return false }
        let capped = plans.contains { $0.records.count >= leasesPerNode }
        let granted = try store.recordLeases(plans.flatMap(\.records), countAttemptsOnDay: day)
        guard !granted.isEmpty else { return capped }
        var attempts: [String: Int] = [:]
        for rec in granted { attempts[rec.sendingIP, default: 0] += rec.recipientIDs.count }
        lock.withLock { for (ip, n) in attempts { warmupUsed[ip, default: 0] += n } }
        let byID = Dictionary(uniqueKeysWithValues: granted.map { ($0.id, $0) })
        for p in plans { send(p, granted: p.records.compactMap { byID[$0.id] }) }
        return capped
    }

    /// Due rows fetched in this round: nodes of the same pools share one query.
    private struct DueCache {
        var pools: Set<String>
        var limit: Int
        var rows: [DueRecipient]
        /// Rows for `pools` (a subset of the cached pools) and at most `limit`, or nil when the
        /// cache cannot answer: other pools, or a fetch cut at its limit that is smaller than
        /// this one or spread over more pools (it may hold fewer of the wanted rows than exist).
        func rows(pools wantedPools: Set<String>, limit wantedLimit: Int) -> [DueRecipient]? {
            let complete = rows.count < limit
            guard wantedPools.isSubset(of: pools), complete || (wantedPools == pools && limit >= wantedLimit) else { return nil }
            let matching = wantedPools == pools ? rows : rows.filter { wantedPools.contains($0.pool) }
            return Array(matching.prefix(wantedLimit))
        }
    }

    private func planGrant(for session: NodeSession, now: Date, excluding taken: inout Set<Int64>, cache: inout DueCache?, cap: Int) throws -> GrantPlan? {
        let (available, ips, leaseTime, maxSize) = lock.withLock {
            (session.credits, table.leasable(by: session.nodeID), config.coordinator.leaseTime, config.smtp.maxMessageSize)
        }
        let credits = min(available, cap)
        guard credits > 0, !ips.isEmpty else { return nil }
        // A few rows per credit first (most messages have one recipient per domain; a bigger
        // group is leased in parts); when that does not fill the credits — rows held back by
        // warm-up caps or backoffs — look further, up to 5000 rows.
        var limit = min(max(credits * 4, 64), 5000)
        var plan: [(DeliveryGroup, AssignedIP)] = []
        while true {
            let pools = Set(ips.map(\.pool))
            let fetched: [DueRecipient]
            if let hit = cache?.rows(pools: pools, limit: limit + taken.count) {
                fetched = hit
            } else {
                fetched = try store.dueRecipients(pools: pools, now: now, limit: limit + taken.count)
                cache = DueCache(pools: pools, limit: limit + taken.count, rows: fetched)
            }
            let due = fetched.filter { !taken.contains($0.id) }
            guard !due.isEmpty else { return nil }
            let groups = LeasePlanner.group(due)
            plan = lock.withLock {
                var inFlight = session.inFlightPerIP
                var budget: [String: Int] = [:]
                for ip in ips { if let (_, cap) = config.warmupCap(for: ip.address, now: now) { budget[ip.address] = max(0, cap - warmupUsed[ip.address, default: 0]) } }
                return LeasePlanner.assign(groups, ips: ips, inFlight: &inFlight, limit: credits, budget: &budget) { ip, g in
                    backoffs.admit(ip: ip.address, provider: providerOfDomain[g.domain] ?? "domain:" + g.domain, now: now)
                }
            }
            if plan.count >= credits || fetched.count < limit + taken.count || limit >= 5000 { break }
            limit = min(limit * 8, 5000)
        }
        guard !plan.isEmpty else { return nil }
        let expiresAt = now.addingTimeInterval(leaseTime)
        var planned: [String: (DeliveryGroup, AssignedIP)] = [:]
        let records = plan.map { g, ip in
            let rec = LeaseRecord(id: Identifier.random(bytes: 12), node: session.nodeID, instance: session.instanceID, sendingIP: ip.address,
                                  messageID: g.messageID, domain: g.domain, recipientIDs: g.recipients.map(\.id), grantedAt: now, expiresAt: expiresAt)
            planned[rec.id] = (g, ip)
            return rec
        }
        for r in records { taken.formUnion(r.recipientIDs) }
        lock.withLock { session.lastGrantExpiry = max(session.lastGrantExpiry, expiresAt) }
        return GrantPlan(session: session, records: records, planned: planned, leaseTime: leaseTime, maxSize: maxSize, expiresAt: expiresAt)
    }

    /// Sends recorded leases with their bodies, batching frames up to the maximum message size.
    private func send(_ p: GrantPlan, granted: [LeaseRecord]) {
        let session = p.session
        var bodies: [String: [UInt8]] = [:]
        var batch: [Lease] = []
        var payload: [UInt8] = []
        func flush() throws {
            guard !batch.isEmpty else { return }
            try session.connection.send(.leaseGrant(LeaseGrantMessage(leases: batch), payload: payload))
            batch = []; payload = []
        }
        do {
            for rec in granted {
                guard let (group, ip) = p.planned[rec.id] else { continue }
                if bodies[rec.messageID] == nil { bodies[rec.messageID] = try store.content(of: rec.messageID) ?? [] }
                let body = bodies[rec.messageID] ?? []
                if payload.count + body.count > p.maxSize { try flush() }
                let recips = group.recipients.filter { rec.recipientIDs.contains($0.id) }.map { LeasedRecipient(id: $0.id, address: $0.address) }
                batch.append(Lease(leaseID: rec.id, sendingIP: ip.address, helo: ip.helo, messageID: rec.messageID, reversePath: group.reversePath,
                                   domain: rec.domain, recipients: recips, expiresIn: p.leaseTime, expiresAt: p.expiresAt.timeIntervalSince1970,
                                   bodyOffset: payload.count, bodyLength: body.count))
                payload.append(contentsOf: body)
                lock.withLock {
                    session.credits -= 1
                    session.leases[rec.id] = ip.address
                    session.leaseDomains[rec.id] = rec.domain
                    session.inFlightPerIP[ip.address, default: 0] += 1
                }
            }
            try flush()
        } catch {
            // The connection is gone: the leases stay recorded and expire, as for a dead node.
            log.warning("lease grant not sent", ["node": session.nodeID, "error": "\(error)"])
        }
    }

    private func heartbeatLoop() {
        while lock.withLock({ running }) {
            Thread.sleep(forTimeInterval: lock.withLock { config.coordinator.heartbeatInterval })
            let all = lock.withLock { sessions.values.map { ($0, $0.leases.count) } }
            for (s, n) in all { try? s.connection.send(.heartbeat(HeartbeatMessage(leasesInFlight: n))) }
        }
    }

    // MARK: Status

    /// Every configured node (and any removed node still known) with state, IPs and leases.
    public func nodeStatuses() throws -> [NodeStatus] {
        let perNode = try store.leasesPerNode()
        return lock.withLock {
            let ids = config.nodes.map(\.id) + lastSeen.keys.sorted().filter { id in !config.nodes.contains { $0.id == id } }
            return ids.map { id in
                let s = sessions[id]
                let seen = lastSeen[id]
                return NodeStatus(state: stateLocked(id), id: id,
                                  instance: s?.instanceID ?? seen?.instance, address: s?.peer.host ?? seen?.address,
                                  ips: table.owned(by: id).map(\.address),
                                  ipsToHandOver: draining.contains(id) ? table.floatingOwned(by: id).map(\.address) : [],
                                  leasesInFlight: perNode[id] ?? 0,
                                  lastSeen: (s?.lastHeard ?? seen?.at)?.timeIntervalSince1970)
            }
        }
    }

    /// Active backoffs (suspensions and throttles).
    public func activeBackoffs() -> [BackoffTable.Entry] { lock.withLock { backoffs.active(now: clock.now()) } }

    /// Lifts a backoff early. - Returns: whether one was active.
    public func liftBackoff(ip: String, provider: String) -> Bool {
        defer { wake() }
        try? store.deleteBackoff(ip: ip, provider: provider)
        return lock.withLock { backoffs.lift(ip: ip, provider: provider) }
    }

    /// Warm-up state of an IP today: (day of plan, cap, attempts so far); nil when warmed or without a plan.
    public func warmupStatus(_ address: String) -> (day: Int, cap: Int, used: Int)? {
        lock.withLock {
            let now = clock.now()
            guard let (day, cap) = config.warmupCap(for: address, now: now) else { return nil }
            let used = warmupDay == QueueStore.utcDay(now) ? warmupUsed[address, default: 0] : 0
            return (day, cap, used)
        }
    }

    /// The IP assignment table rows.
    public func ipTable() -> [IPAssignmentTable.Entry] { lock.withLock { table.entries } }
}

/// Errors of operator actions, rendered by the admin API.
public enum AdminError: Error, CustomStringConvertible, Sendable {
    case unknownNode(String)
    public var description: String {
        switch self {
        case .unknownNode(let n): return "unknown node \(n)"
        }
    }
}

