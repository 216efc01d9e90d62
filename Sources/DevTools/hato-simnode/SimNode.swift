import ClusterProtocol
import Foundation
import HatoConfig
import HatoCrypto
import HatoIO
import HatoSupport

/// The thin I/O driver of one simulated node: one cluster connection (plaintext, or TLS when
/// cluster.yml sets `cluster.tls`) from the node's first sending IP when it is local, read on
/// the node's own thread, each message handed to
/// `SimNodeState` and its answers written back at once; heartbeats come from `SimNodeFleet`'s
/// shared loop. A lost connection is retried after 0.5 s (1 s after a refusal), against the
/// next configured coordinator or the leader a standby named; a final refusal (wrong secret,
/// cluster or version) stops the node.
final class SimNode: Sendable {
    private struct Link: Sendable {
        var connection: ClusterConnection?
        var nextHeartbeat: ContinuousClock.Instant = .now
        var running = true
        var reconnects = 0
        var lastError: String?
    }

    /// The node id.
    let nodeID: String
    private let config: ClusterConfig
    private let tls: TLSContext?
    private let state: Locked<SimNodeState>
    private let link = LockedCondition(Link())
    private let log: Logger
    /// The local address the connection is opened from: the node's first configured sending IP
    /// when this host can bind it (each simulated node then is a peer of its own, as real nodes on
    /// their own hosts are, and the coordinator's per-peer admission limits apply per node), else
    /// nil (the kernel's choice).
    private let source: String?

    /// - Parameters:
    ///   - config: the cluster configuration (coordinator addresses, secret, frame size).
    ///   - nodeID: a `nodes[].id` of that configuration.
    ///   - window: leases per owned sending IP in flight.
    /// - Throws: `TLSError` when `cluster.tls` is set and the node's pair or CA cannot be loaded.
    init(config: ClusterConfig, nodeID: String, window: Int) throws {
        self.config = config
        self.nodeID = nodeID
        let ips = config.ips.filter { $0.nodes.isEmpty || $0.nodes.contains(nodeID) }.map(\.address)
        state = Locked(SimNodeState(nodeID: nodeID, clusterName: config.cluster.name, secret: config.cluster.secret,
                                    configuredIPs: ips, window: window))
        log = Logger(label: "simnode.\(nodeID)")
        source = ips.first { addr in
            guard let s = try? Socket.listen(on: SocketAddress(host: addr, port: 0), backlog: 1) else { return false }
            s.close()
            return true
        }
        if let t = config.cluster.tls, let pair = config.clusterTLSPair(forNode: nodeID) {
            tls = try TLSContext.client(verifyPeer: true, trustedCAFile: t.caPath, certificateChainPath: pair.certificatePath,
                                        privateKeyPath: pair.privateKeyPath)
        } else {
            tls = nil
        }
    }

    /// The counts so far.
    var counts: SimNodeCounts { state.withLock { $0.counts } }
    /// Whether the node is joined right now.
    var isJoined: Bool { state.withLock { $0.isJoined } && link.withLock { $0.connection != nil } }
    /// Connections lost and retried.
    var reconnects: Int { link.withLock { $0.reconnects } }
    /// Why the last connection ended, nil while none did.
    var lastError: String? { link.withLock { $0.lastError } }
    /// Whether the node still runs (false after `stop()` or a final refusal).
    var isRunning: Bool { link.withLock { $0.running } }
    /// Results sent and not yet acknowledged.
    var unacked: Int { state.withLock { $0.unacked.count } }

    /// Runs until `stop()` or a final refusal: connect, serve, retry.
    func run() {
        let targets = config.coordinatorAddresses
        var index = 0
        var redirect: SocketAddress?
        while link.withLock({ $0.running }) {
            let target = redirect ?? targets[index % targets.count]
            redirect = nil
            var wait = Duration.milliseconds(500)
            do {
                try session(to: target)
            } catch let e as SimNodeError {
                if case .redirected(let address) = e, let address, let a = try? ConfigValue.socketAddress(address, defaultPort: nil) {
                    redirect = a
                    wait = .milliseconds(50)
                } else {
                    index += 1
                }
                link.withLock { $0.lastError = e.description }
                if e.isFinal {
                    log.error("coordinator refused this simulated node; not retrying", ["reason": e.description])
                    link.withLock { $0.running = false }
                    break
                }
                if case .rejected = e { wait = .seconds(1) }
                log.warning("cluster connection ended", ["coordinator": target.description, "reason": e.description])
            } catch {
                index += 1
                link.withLock { $0.lastError = "\(error)" }
                if link.withLock({ $0.running }) {
                    log.warning("cluster connection ended", ["coordinator": target.description, "reason": "\(error)"])
                }
            }
            link.withLock { $0.connection = nil; $0.reconnects += 1 }
            link.wait(until: .now + wait, for: { !$0.running }) { _, _ in }
        }
    }

    /// One connection: handshake, then frames until it ends.
    private func session(to target: SocketAddress) throws {
        let sock = try Socket.connect(to: target, from: source, timeout: 5)
        let conn = try ClusterConnection.open(over: sock, tls: tls, serverName: target.host,
                                              maximumFrameSize: clusterMaximumFrameSize(maxMessageSize: config.smtp.maxMessageSize))
        defer {
            link.withLock { if $0.connection === conn { $0.connection = nil } }
            conn.close()
        }
        state.withLock { $0.connectionStarted() }
        link.withLock { $0.connection = conn }
        guard link.withLock({ $0.running }) else { return }
        while true {
            let message = try conn.receive()
            let nonce = Identifier.random(bytes: 32)
            let (out, joinedNow, timeout, interval) = try state.withLock { s -> ([ClusterMessage], Bool, Double, Double) in
                let wasJoined = s.isJoined
                let out = try s.received(message, nodeNonce: nonce, wallNow: Date().timeIntervalSince1970)
                return (out, !wasJoined && s.isJoined, s.peerTimeout, s.heartbeatInterval)
            }
            if joinedNow {
                conn.setTimeouts(read: .seconds(timeout), write: .seconds(30))
                link.withLock { $0.nextHeartbeat = .now + .seconds(max(0.2, interval)) }
                log.info("joined cluster", ["coordinator": target.description])
            }
            for m in out { try conn.send(m) }
        }
    }

    /// Sends a heartbeat when one is due (called by the fleet's heartbeat loop); a failed send
    /// ends the connection (its reader then reconnects).
    func heartbeatIfDue(now: ContinuousClock.Instant) {
        guard state.withLock({ $0.isJoined }) else { return }
        let interval = state.withLock { max(0.2, $0.heartbeatInterval) }
        guard let conn = link.withLock({ l -> ClusterConnection? in
            guard let c = l.connection, now >= l.nextHeartbeat else { return nil }
            l.nextHeartbeat = now + .seconds(interval)
            return c
        }) else { return }
        // Nothing is ever in progress: every lease is answered as it arrives.
        do { try conn.send(.heartbeat(HeartbeatMessage(leasesInFlight: 0, sentAt: Date().timeIntervalSince1970))) } catch { conn.shutdown() }
    }

    /// Stops the node: no reconnect; the current connection is shut down (its reader closes it).
    func stop() {
        let conn = link.withLockAndBroadcast { l -> ClusterConnection? in l.running = false; return l.connection }
        conn?.shutdown()
    }
}

/// The simulated nodes of one process, their shared heartbeat loop and their totals.
final class SimNodeFleet: Sendable {
    /// The nodes, in the order given.
    let nodes: [SimNode]
    private let heartbeat: BackgroundLoop

    /// - Parameter nodes: the nodes to run (each on a thread of its own once `start()`ed).
    init(nodes: [SimNode]) {
        self.nodes = nodes
        heartbeat = BackgroundLoop(name: "hato-simnode-heartbeat", every: .milliseconds(100)) {
            let now = ContinuousClock.now
            for n in nodes { n.heartbeatIfDue(now: now) }
        }
    }

    /// Starts every node's thread and the heartbeat loop.
    func start() {
        for n in nodes {
            Thread.startNamed("sim \(n.nodeID)") { n.run() }
        }
        heartbeat.start()
    }

    /// Stops the nodes and the heartbeat loop.
    func stop() {
        for n in nodes { n.stop() }
        heartbeat.stop()
    }

    /// The totals as one JSON object on one line (the bench script reads the last one):
    /// `t` (seconds since 1970), `nodes`, `joined` (nodes joined now), `reconnects`, `unacked`
    /// (results not yet acknowledged) and the `SimNodeCounts` fields in snake_case.
    func statsLine() -> String {
        var total = SimNodeCounts()
        var joined = 0, reconnects = 0, unacked = 0
        for n in nodes {
            total.add(n.counts)
            if n.isJoined { joined += 1 }
            reconnects += n.reconnects
            unacked += n.unacked
        }
        let fields: [(String, String)] = [
            ("t", String(format: "%.3f", Date().timeIntervalSince1970)), ("nodes", "\(nodes.count)"), ("joined", "\(joined)"),
            ("joins", "\(total.joins)"), ("reconnects", "\(reconnects)"), ("grants", "\(total.grants)"), ("leases", "\(total.leases)"),
            ("leased", "\(total.leasedRecipients)"), ("reported", "\(total.reportedRecipients)"), ("acked", "\(total.ackedRecipients)"),
            ("unacked", "\(unacked)"), ("foreign_leases", "\(total.foreignLeases)"), ("signing_keys", "\(total.signingKeys)"),
            ("config_changes", "\(total.configChanges)"), ("heartbeats", "\(total.heartbeats)"),
        ]
        return "{" + fields.map { "\"\($0.0)\": \($0.1)" }.joined(separator: ", ") + "}"
    }
}
