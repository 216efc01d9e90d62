import ClusterProtocol
import Foundation
import HatoCrypto
import HatoSupport
import SMTPCore

/// What one simulated node counted since the process started (all connections together).
///
/// Recipients are counted one per `LeasedRecipient`; leases one per `Lease` of a grant.
struct SimNodeCounts: Sendable, Equatable {
    /// Welcomes received (1 for a node that never lost its link).
    var joins = 0
    /// `lease_grant` frames received.
    var grants = 0
    /// Leases received for a sending IP this node owns.
    var leases = 0
    /// Recipients in those leases.
    var leasedRecipients = 0
    /// Recipients reported delivered in `result` frames (first reports only, not re-reports).
    var reportedRecipients = 0
    /// Recipients whose lease the coordinator acknowledged (`result_ack`: on its disk).
    var ackedRecipients = 0
    /// Leases for a sending IP this node does not own (left to expire, as a real node does).
    var foreignLeases = 0
    /// `signing_keys` frames received.
    var signingKeys = 0
    /// `config_changed` frames answered.
    var configChanges = 0
    /// Heartbeats received from the coordinator.
    var heartbeats = 0

    /// Adds `other` field by field (for the process's totals).
    mutating func add(_ other: SimNodeCounts) {
        joins += other.joins; grants += other.grants; leases += other.leases
        leasedRecipients += other.leasedRecipients; reportedRecipients += other.reportedRecipients
        ackedRecipients += other.ackedRecipients; foreignLeases += other.foreignLeases
        signingKeys += other.signingKeys; configChanges += other.configChanges; heartbeats += other.heartbeats
    }
}

/// Why a simulated node's connection ended (the driver reconnects unless `isFinal`).
enum SimNodeError: Error, CustomStringConvertible, Equatable {
    /// The coordinator speaks none of our protocol versions.
    case versionMismatch([Int])
    /// The coordinator belongs to another cluster (cluster.yml `cluster.name`).
    case otherCluster(String)
    /// The coordinator's `welcome` proof does not verify with our cluster secret.
    case coordinatorProof
    /// The coordinator refused us (`reject`).
    case rejected(String, retryable: Bool)
    /// A standby named the leader: connect there (`address` `host:port`, nil: unknown).
    case redirected(address: String?)
    /// A frame from an older leadership term than one already seen (fencing, `TermFence`).
    case staleTerm(String)
    /// A frame that has no place at this point of the protocol.
    case unexpected(String)

    /// Whether retrying cannot help (wrong secret, cluster or version, a final reject).
    var isFinal: Bool {
        switch self {
        case .versionMismatch, .otherCluster, .coordinatorProof: return true
        case .rejected(_, let retryable): return !retryable
        default: return false
        }
    }

    var description: String {
        switch self {
        case .versionMismatch(let v): return "coordinator speaks protocol versions \(v), this build \(clusterProtocolVersion)"
        case .otherCluster(let c): return "coordinator belongs to cluster \(c)"
        case .coordinatorProof: return "coordinator failed authentication (cluster secret differs)"
        case .rejected(let r, let retryable): return "rejected by the coordinator: \(r)\(retryable ? " (retryable)" : "")"
        case .redirected(let a): return "a standby coordinator; the leader is at \(a ?? "(unknown)")"
        case .staleTerm(let r): return "refused the coordinator: \(r)"
        case .unexpected(let s): return "unexpected \(s)"
        }
    }
}

/// The cluster protocol decisions of one simulated worker node: a pure value that takes the
/// coordinator's messages and returns the messages to send, in order (docs/protocol.md).
///
/// It behaves as `NodeAgent` does on the wire, with the delivery replaced by an immediate
/// success: the same `hello` (all features, the node's configured sending IPs as bindable, a
/// capacity of `window` leases per IP), the same credits (`window` per owned IP at the start
/// and on `ip_assign`, one more after each lease), a `result` per lease with every recipient
/// `delivered` (250 2.0.0), `ip_released` at once on `ip_revoke` (nothing is ever in
/// progress), `config_applied` for `config_changed`, term fencing of grants, assignments,
/// revocations and key sets. Results not yet acknowledged are re-reported on the next
/// connection before the first credit, as a real node replays its journal.
///
/// The coordinator's secret-bearing frames (`signing_keys`) are counted, never opened or logged.
struct SimNodeState: Sendable {
    /// Where a connection is in the handshake.
    enum Phase: Sendable, Equatable {
        /// Waiting for the coordinator's `challenge`.
        case challenge
        /// `hello` sent with this nonce; waiting for `welcome`.
        case welcome(nodeNonce: String)
        /// Joined: leases flow.
        case joined
    }

    /// The node id (`nodes[].id`).
    let nodeID: String
    /// A random id for this simulated node's life (a restart of the process is a new instance).
    let instanceID: String
    /// The cluster name (`cluster.name`).
    let clusterName: String
    /// The cluster secret (`cluster.secret`); used for the proofs only.
    let secret: String
    /// The configured sending IPs this node may own, announced as bindable.
    let configuredIPs: [String]
    /// Leases per owned sending IP taken at once (a real node: `connections_per_ip` × 2).
    let window: Int

    /// The connection's handshake phase.
    private(set) var phase: Phase = .challenge
    /// The sending IPs owned now.
    private(set) var owned: Set<String> = []
    /// The term the current connection was welcomed under (nil: a coordinator without terms).
    private(set) var connectionTerm: Int64?
    /// The highest term seen, kept across connections.
    private(set) var fence = TermFence()
    /// Results sent and not yet acknowledged, by lease id, with their recipient count.
    private(set) var unacked: [String: ResultMessage] = [:]
    /// Counts since the start.
    private(set) var counts = SimNodeCounts()
    /// The heartbeat interval the coordinator asked for (seconds), once welcomed.
    private(set) var heartbeatInterval: Double = 1
    /// The read timeout the coordinator implies (seconds): its peer timeout, at least three heartbeats.
    private(set) var peerTimeout: Double = 10

    /// The reply every recipient gets.
    static let deliveredReply = DeliveryStatus(code: 250, enhanced: "2.0.0", text: "Ok: simulated delivery (hato-simnode, nothing sent)")
    /// The MX host named in the results (a reserved name, RFC 2606: nothing was connected to).
    static let mxHost = "simnode.invalid"

    /// - Parameters:
    ///   - nodeID: the `nodes[].id` this simulated node registers as.
    ///   - clusterName: `cluster.name`.
    ///   - secret: `cluster.secret`.
    ///   - configuredIPs: the sending IPs cluster.yml lets this node own.
    ///   - window: leases per owned IP in flight (at least 1).
    ///   - instanceID: the instance id (random by default).
    init(nodeID: String, clusterName: String, secret: String, configuredIPs: [String], window: Int,
         instanceID: String = Identifier.random(bytes: 8)) {
        self.nodeID = nodeID; self.clusterName = clusterName; self.secret = secret
        self.configuredIPs = configuredIPs; self.window = max(1, window); self.instanceID = instanceID
    }

    /// Whether the current connection is past its handshake.
    var isJoined: Bool { phase == .joined }

    /// A new connection starts: back to waiting for the challenge (owned IPs are re-sent in `welcome`).
    mutating func connectionStarted() {
        phase = .challenge
        connectionTerm = nil
    }

    /// Takes one message from the coordinator.
    /// - Parameters:
    ///   - message: the decoded frame.
    ///   - nodeNonce: the nonce to send in `hello` (used only when `message` is the challenge).
    ///   - wallNow: the wall clock (seconds since 1970) for `finishedAt`.
    /// - Returns: the messages to send, in order.
    /// - Throws: `SimNodeError` when the connection must end.
    mutating func received(_ message: ClusterMessage, nodeNonce: String, wallNow: Double) throws -> [ClusterMessage] {
        switch (phase, message) {
        case (_, .reject(let r)):
            throw SimNodeError.rejected(r.reason, retryable: r.retryable)
        case (.challenge, .challenge(let c)):
            guard c.versions.contains(clusterProtocolVersion) else { throw SimNodeError.versionMismatch(c.versions) }
            guard c.cluster == clusterName else { throw SimNodeError.otherCluster(c.cluster) }
            phase = .welcome(nodeNonce: nodeNonce)
            let proof = ClusterAuth.nodeProof(secret: secret, nonce: c.nonce, nodeID: nodeID, instanceID: instanceID)
            return [.hello(HelloMessage(version: clusterProtocolVersion, nodeID: nodeID, instanceID: instanceID, proof: proof,
                                        nodeNonce: nodeNonce, bindableIPs: configuredIPs, capacity: window * max(configuredIPs.count, 1),
                                        features: ClusterFeature.all))]
        case (.welcome(let myNonce), .welcome(let w)):
            guard ClusterAuth.verify(w.proof, expected: ClusterAuth.coordinatorProof(secret: secret, nodeNonce: myNonce, nodeID: nodeID)) else {
                throw SimNodeError.coordinatorProof
            }
            do { connectionTerm = try fence.admitWelcome(term: w.term, storeID: w.storeID) } catch {
                throw SimNodeError.staleTerm("\(error)")
            }
            phase = .joined
            counts.joins += 1
            heartbeatInterval = w.heartbeatInterval
            peerTimeout = max(w.peerTimeout, w.heartbeatInterval * 3)
            owned = Set(w.assignedIPs.map(\.address))
            // The journal replay first, then the credits (the coordinator reconciles on the first request).
            var out: [ClusterMessage] = unacked.keys.sorted().compactMap { unacked[$0] }.map { .result($0) }
            out.append(.leaseRequest(LeaseRequestMessage(credits: window * owned.count)))
            return out
        case (.welcome, .redirect(let r)):
            throw SimNodeError.redirected(address: r.address)
        case (.joined, .heartbeat):
            counts.heartbeats += 1
            return []
        case (.joined, .leaseGrant(let grant, _)):
            try admit(grant.term, "lease_grant")
            counts.grants += 1
            var out: [ClusterMessage] = []
            out.reserveCapacity(grant.leases.count * 2)
            for l in grant.leases {
                guard owned.contains(l.sendingIP) else {
                    counts.foreignLeases += 1
                    continue
                }
                counts.leases += 1
                counts.leasedRecipients += l.recipients.count
                let outcomes = l.recipients.map { RecipientResult(recipientID: $0.id, status: .delivered, reply: SimNodeState.deliveredReply) }
                let result = ResultMessage(leaseID: l.leaseID, instanceID: instanceID, sendingIP: l.sendingIP, mxHost: SimNodeState.mxHost,
                                           remoteAddress: "127.0.0.1", outcomes: outcomes, finishedAt: wallNow)
                unacked[l.leaseID] = result
                counts.reportedRecipients += outcomes.count
                // As NodeAgent.finish: the result, then one credit for the lease it ends.
                out.append(.result(result))
                out.append(.leaseRequest(LeaseRequestMessage(credits: 1)))
            }
            return out
        case (.joined, .resultAck(let ack)):
            if let r = unacked.removeValue(forKey: ack.leaseID) { counts.ackedRecipients += r.outcomes.count }
            return []
        case (.joined, .ipAssign(let m)):
            try admit(m.term, "ip_assign")
            let new = Set(m.ips.map(\.address)).subtracting(owned)
            owned.formUnion(new)
            return new.isEmpty ? [] : [.leaseRequest(LeaseRequestMessage(credits: window * new.count))]
        case (.joined, .ipRevoke(let m)):
            try admit(m.term, "ip_revoke")
            owned.subtract(m.addresses)
            // Nothing is ever in progress: released at once.
            return [.ipReleased(IPReleasedMessage(addresses: m.addresses))]
        case (.joined, .signingKeys(let m)):
            try admit(m.term, "signing_keys")
            counts.signingKeys += 1
            return []
        case (.joined, .configChanged(let m)):
            counts.configChanges += 1
            // A simulated node has nothing to re-read: it takes the coordinator's file as its own.
            return [.configApplied(ConfigAppliedMessage(generation: m.generation, applied: true, digest: m.digest, live: [],
                                                        restartRequired: [], errors: []))]
        default:
            throw SimNodeError.unexpected("\(message.frameType) while \(phase)")
        }
    }

    /// Fencing of a frame on the current connection (`TermFence.admitFrame`).
    private func admit(_ term: Int64?, _ what: String) throws {
        do { try fence.admitFrame(term: term, connectionTerm: connectionTerm) } catch {
            throw SimNodeError.staleTerm("\(what): \(error)")
        }
    }
}
