import Foundation
import HatoShared

/// Maximum cluster frame size for a configuration: two maximum messages plus headers.
public func clusterMaximumFrameSize(maxMessageSize: Int) -> Int { maxMessageSize * 2 + 1 << 20 }

/// One connected node (an instance of a node process on one connection).
final class NodeSession: @unchecked Sendable {
    let nodeID: String
    let instanceID: String
    let connection: ClusterConnection
    let peer: SocketAddress
    // Mutable fields below are guarded by ClusterHub.lock.
    var credits = 0
    var ips: [AssignedIP] = []
    var inFlightPerIP: [String: Int] = [:]
    var leases: [String: String] = [:] // lease id → sending IP
    var reconciled = false
    var lastHeard: Date
    var closed = false

    init(nodeID: String, instanceID: String, connection: ClusterConnection, peer: SocketAddress, now: Date) {
        self.nodeID = nodeID; self.instanceID = instanceID; self.connection = connection; self.peer = peer; self.lastHeard = now
    }
}

/// A node's state as the status API shows it.
public struct NodeStatus: Codable, Sendable, Equatable {
    /// `active` (connected), `down` (was connected, now silent) or `unknown` (never seen since start).
    public var state: String
    public var id: String
    public var instance: String?
    public var address: String?
    public var ips: [String]
    public var leasesInFlight: Int
    public var lastSeen: Double?
}

/// The coordinator's side of the cluster protocol: accepts node connections,
/// authenticates them, keeps the IP assignment table, and runs the scheduler that
/// turns due recipients into leases.
///
/// Threads: one accept loop, one reader per node connection, one scheduler loop
/// (woken by new mail, new credits and results, and at least once a second), one
/// heartbeat loop. Shared state lives under `lock`; SQLite work happens outside it.
public final class ClusterHub: @unchecked Sendable {
    private let config: ClusterConfig
    private let store: QueueStore
    private let clock: any WallClock
    private let log = Logger(label: "coordinator.cluster")
    private let retry: RetryPolicy
    private let lock = NSLock()
    private let wakeCondition = NSCondition()
    private var wakePending = false
    private var sessions: [String: NodeSession] = [:]
    private var lastSeen: [String: (instance: String, address: String, at: Date)] = [:]
    private var table: IPAssignmentTable
    private var listener: Socket?
    private var running = true
    private var lastExpirySweep = Date.distantPast
    private var roundRobin = 0

    /// - Parameters:
    ///   - config: the cluster configuration.
    ///   - store: the durable queue.
    ///   - clock: time source.
    public init(config: ClusterConfig, store: QueueStore, clock: any WallClock = SystemClock()) {
        self.config = config
        self.store = store
        self.clock = clock
        self.retry = RetryPolicy(schedule: config.retry.schedule, maxAge: config.retry.maxAge)
        self.table = IPAssignmentTable(ips: config.ips.map {
            (AssignedIP(address: $0.address, helo: $0.helo, pool: $0.pool), $0.nodes)
        })
    }

    private var maxFrame: Int { clusterMaximumFrameSize(maxMessageSize: config.smtp.maxMessageSize) }

    /// Binds the cluster listener and starts the accept, scheduler and heartbeat threads.
    /// - Throws: `SocketError` when the listen address cannot be bound.
    public func start() throws {
        let sock = try Socket.listen(on: config.coordinator.listen)
        listener = sock
        log.info("cluster listener ready", ["listen": config.coordinator.listen.description])
        Thread.detachNewThread { [self] in acceptLoop(sock) }
        Thread.detachNewThread { [self] in schedulerLoop() }
        Thread.detachNewThread { [self] in heartbeatLoop() }
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
            try conn.send(.challenge(ChallengeMessage(versions: [clusterProtocolVersion], nonce: nonce, cluster: config.cluster.name)))
            guard case .hello(let hello) = try conn.receive() else {
                throw ClusterProtocolError.unexpected("expected hello")
            }
            session = try admit(hello, nonce: nonce, conn: conn, peer: peer)
            guard let session else { return }
            sock.setTimeouts(read: config.coordinator.nodeTimeout, write: 30)
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
                    let retryable: Bool
                    switch pe { case .versionMismatch, .authenticationFailed: retryable = false; default: retryable = true }
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
        guard config.nodes.contains(where: { $0.id == hello.nodeID }) else {
            throw ClusterProtocolError.rejected("unknown node id \(hello.nodeID)", retryable: false)
        }
        let expected = ClusterAuth.nodeProof(secret: config.cluster.secret, nonce: nonce, nodeID: hello.nodeID, instanceID: hello.instanceID)
        guard ClusterAuth.verify(hello.proof, expected: expected) else { throw ClusterProtocolError.authenticationFailed }
        let now = clock.now()
        let session = NodeSession(nodeID: hello.nodeID, instanceID: hello.instanceID, connection: conn, peer: peer, now: now)
        let owned: [AssignedIP] = try lock.withLock {
            if let existing = sessions[hello.nodeID], !existing.closed {
                throw ClusterProtocolError.rejected("node \(hello.nodeID) is already connected (instance \(existing.instanceID))", retryable: true)
            }
            sessions[hello.nodeID] = session
            lastSeen[hello.nodeID] = (hello.instanceID, peer.host, now)
            let owned = table.nodeConnected(hello.nodeID, bindable: hello.bindableIPs)
            session.ips = owned
            return owned
        }
        let proof = ClusterAuth.coordinatorProof(secret: config.cluster.secret, nodeNonce: hello.nodeNonce, nodeID: hello.nodeID)
        try conn.send(.welcome(WelcomeMessage(proof: proof, assignedIPs: owned, heartbeatInterval: config.coordinator.heartbeatInterval,
                                              peerTimeout: config.coordinator.nodeTimeout)))
        log.info("node joined", ["node": hello.nodeID, "instance": hello.instanceID, "peer": peer.description,
                                 "ips": owned.map(\.address).joined(separator: ",")])
        return session
    }

    private func detach(_ session: NodeSession) {
        lock.withLock {
            session.closed = true
            if sessions[session.nodeID] === session {
                sessions[session.nodeID] = nil
                table.nodeDisconnected(session.nodeID, at: session.lastHeard)
                lastSeen[session.nodeID] = (session.instanceID, session.peer.host, session.lastHeard)
            }
        }
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
                // The node re-reported its journal before its first request: leases of
                // earlier instances of this node are now known lost and go back to the queue.
                let n = try store.requeueLeases(node: session.nodeID, exceptInstance: session.instanceID, now: clock.now())
                if n > 0 { log.info("requeued leases of a previous instance", ["node": session.nodeID, "leases": "\(n)"]) }
            }
            wake()
        case .result(let result):
            let app = try store.applyResult(result, node: session.nodeID, retry: retry, now: clock.now())
            lock.withLock {
                if let ip = session.leases.removeValue(forKey: result.leaseID) {
                    session.inFlightPerIP[ip, default: 1] -= 1
                }
            }
            try session.connection.send(.resultAck(ResultAckMessage(leaseID: result.leaseID)))
            for o in result.outcomes {
                log.info("recipient result", ["lease": result.leaseID, "node": session.nodeID, "ip": result.sendingIP, "recipient": "\(o.recipientID)",
                                              "status": o.status.rawValue, "code": "\(o.code)", "mx": result.mxHost ?? ""])
            }
            if !app.leaseKnown { log.info("late or duplicate result applied idempotently", ["lease": result.leaseID, "applied": "\(app.applied)", "ignored": "\(app.ignored)"]) }
            wake()
        case .ipReleased(let m):
            log.info("node released IPs", ["node": session.nodeID, "ips": m.addresses.joined(separator: ",")])
        case .reject(let r):
            throw ClusterProtocolError.rejected(r.reason, retryable: r.retryable)
        default:
            throw ClusterProtocolError.unexpected("\(msg.frameType) from a node")
        }
    }

    // MARK: Scheduler

    private func schedulerLoop() {
        while lock.withLock({ running }) {
            wakeCondition.lock()
            if !wakePending { _ = wakeCondition.wait(until: Date().addingTimeInterval(1)) }
            wakePending = false
            wakeCondition.unlock()
            do { try schedulerRound() } catch { log.error("scheduler round failed", ["error": "\(error)"]) }
        }
    }

    /// One pass: sweep expired leases and too-old recipients, hand out IPs left without
    /// owners, then grant due work to every node that has credits.
    func schedulerRound() throws {
        let now = clock.now()
        let expired = try store.requeueExpiredLeases(now: now)
        if !expired.isEmpty {
            log.warning("leases expired; recipients requeued", ["leases": "\(expired.count)"])
            lock.withLock {
                let gone = Set(expired)
                for s in sessions.values {
                    for id in gone where s.leases[id] != nil {
                        if let ip = s.leases.removeValue(forKey: id) { s.inFlightPerIP[ip, default: 1] -= 1 }
                    }
                }
            }
        }
        if now.timeIntervalSince(lastExpirySweep) >= 30 {
            lastExpirySweep = now
            let n = try store.expireOld(maxAge: config.retry.maxAge, now: now)
            if n > 0 { log.warning("recipients expired (maximum queue age)", ["recipients": "\(n)"]) }
        }
        let moves = lock.withLock { table.rebalanceOrphans(now: now, fence: config.coordinator.leaseTime) }
        for (node, ip) in moves {
            let s = lock.withLock { () -> NodeSession? in
                guard let s = sessions[node] else { return nil }
                s.ips.append(ip)
                return s
            }
            log.info("sending IP assigned", ["node": node, "ip": ip.address])
            try? s?.connection.send(.ipAssign(IPAssignMessage(ips: [ip])))
        }
        let ready: [NodeSession] = lock.withLock {
            let all = sessions.values.filter { $0.credits > 0 && $0.reconciled && !$0.ips.isEmpty }.sorted { $0.nodeID < $1.nodeID }
            guard !all.isEmpty else { return [] }
            roundRobin += 1
            let k = roundRobin % all.count
            return Array(all[k...] + all[..<k])
        }
        for session in ready { try grant(to: session, now: now) }
    }

    private func grant(to session: NodeSession, now: Date) throws {
        let (credits, ips, pools) = lock.withLock { (session.credits, session.ips, Set(session.ips.map(\.pool))) }
        guard credits > 0 else { return }
        let due = try store.dueRecipients(pools: pools, now: now, limit: min(credits * 100, 5000))
        guard !due.isEmpty else { return }
        let groups = LeasePlanner.group(due)
        var inFlight = lock.withLock { session.inFlightPerIP }
        let plan = LeasePlanner.assign(groups, ips: ips, inFlight: &inFlight, limit: credits)
        let expiresAt = now.addingTimeInterval(config.coordinator.leaseTime)
        var planned: [String: (DeliveryGroup, AssignedIP)] = [:]
        let records = plan.map { g, ip in
            let rec = LeaseRecord(id: Identifier.random(bytes: 12), node: session.nodeID, instance: session.instanceID, sendingIP: ip.address,
                                  messageID: g.messageID, domain: g.domain, recipientIDs: g.recipients.map(\.id), grantedAt: now, expiresAt: expiresAt)
            planned[rec.id] = (g, ip)
            return rec
        }
        let granted = try store.recordLeases(records)
        guard !granted.isEmpty else { return }
        var bodies: [String: [UInt8]] = [:]
        var batch: [Lease] = []
        var payload: [UInt8] = []
        func flush() throws {
            guard !batch.isEmpty else { return }
            try session.connection.send(.leaseGrant(LeaseGrantMessage(leases: batch), payload: payload))
            batch = []; payload = []
        }
        for rec in granted {
            guard let (group, ip) = planned[rec.id] else { continue }
            if bodies[rec.messageID] == nil { bodies[rec.messageID] = try store.content(of: rec.messageID) ?? [] }
            let body = bodies[rec.messageID] ?? []
            if payload.count + body.count > config.smtp.maxMessageSize { try flush() }
            let recips = group.recipients.filter { rec.recipientIDs.contains($0.id) }.map { LeasedRecipient(id: $0.id, address: $0.address) }
            batch.append(Lease(leaseID: rec.id, sendingIP: ip.address, helo: ip.helo, messageID: rec.messageID, reversePath: group.reversePath,
                               domain: rec.domain, recipients: recips, expiresIn: config.coordinator.leaseTime,
                               bodyOffset: payload.count, bodyLength: body.count))
            payload.append(contentsOf: body)
            lock.withLock {
                session.credits -= 1
                session.leases[rec.id] = ip.address
                session.inFlightPerIP[ip.address, default: 0] += 1
            }
        }
        do { try flush() } catch {
            // The connection is gone: the leases stay recorded and expire, as for a dead node.
            log.warning("lease grant not sent", ["node": session.nodeID, "error": "\(error)"])
        }
    }

    private func heartbeatLoop() {
        while lock.withLock({ running }) {
            Thread.sleep(forTimeInterval: config.coordinator.heartbeatInterval)
            let all = lock.withLock { sessions.values.map { ($0, $0.leases.count) } }
            for (s, n) in all { try? s.connection.send(.heartbeat(HeartbeatMessage(leasesInFlight: n))) }
        }
    }

    // MARK: Status

    /// Every configured node with its state, owned IPs and leases in flight.
    public func nodeStatuses() throws -> [NodeStatus] {
        let perNode = try store.leasesPerNode()
        return lock.withLock {
            config.nodes.map { n in
                let s = sessions[n.id]
                let seen = lastSeen[n.id]
                return NodeStatus(state: s != nil ? "active" : (seen != nil ? "down" : "unknown"), id: n.id,
                                  instance: s?.instanceID ?? seen?.instance, address: s?.peer.host ?? seen?.address,
                                  ips: table.owned(by: n.id).map(\.address), leasesInFlight: perNode[n.id] ?? 0,
                                  lastSeen: (s?.lastHeard ?? seen?.at)?.timeIntervalSince1970)
            }
        }
    }

    /// The IP assignment table rows.
    public func ipTable() -> [IPAssignmentTable.Entry] { lock.withLock { table.entries } }
}
