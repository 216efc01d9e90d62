import Foundation
import HatoCrypto
import HatoIO
import HatoSupport
import SMTPCore

/// `challenge` (coordinator → node), the first frame on every connection.
public struct ChallengeMessage: Codable, Sendable, Equatable {
    /// Protocol versions the coordinator accepts.
    public var versions: [Int]
    /// A fresh random nonce (hex, 32 octets).
    public var nonce: String
    /// The cluster name from cluster.yml (a node of another cluster refuses at once).
    public var cluster: String
    public init(versions: [Int], nonce: String, cluster: String) { self.versions = versions; self.nonce = nonce; self.cluster = cluster }
}

/// Optional parts of the protocol a node speaks beyond version 1, named in `hello.features`.
/// A peer sends a frame of a feature only to a node that named it, so nodes and coordinators
/// of different builds keep working together (an unknown frame type closes a connection).
public enum ClusterFeature {
    /// `config_changed` / `config_applied`: the node re-reads cluster.yml when the coordinator
    /// reloads it, applies what it can and answers.
    public static let configChanged = "config_changed"
    /// Leadership terms: frames carry the coordinator's term, and a standby coordinator answers
    /// `hello` with `redirect` instead of `welcome` (several coordinators, issue 15).
    public static let terms = "terms"
    /// `signing_keys`: the coordinator sends the tenants' sealed DKIM keys (issue 16); the node
    /// signs tenants' mail with them.
    public static let signingKeys = "signing_keys"
    /// Every feature this build speaks.
    public static let all = [configChanged, terms, signingKeys]
}

/// `hello` (node → coordinator): identity, proof of the cluster secret and what the node can do.
public struct HelloMessage: Codable, Sendable, Equatable {
    /// The protocol version the node speaks.
    public var version: Int
    /// The node id from cluster.yml `nodes[].id`.
    public var nodeID: String
    /// A random id for this node process; a restart is a new instance.
    public var instanceID: String
    /// HMAC-SHA256 (hex) over the coordinator's nonce: see `ClusterAuth.nodeProof`.
    public var proof: String
    /// The node's nonce (hex) that the coordinator proves itself over in `welcome`.
    public var nodeNonce: String
    /// Configured sending IPs that this host can bind.
    public var bindableIPs: [String]
    /// Concurrent leases the node can work on (its initial lease credit).
    public var capacity: Int
    /// Optional features the node speaks (`ClusterFeature`); absent from older nodes.
    public var features: [String]?
    public init(version: Int, nodeID: String, instanceID: String, proof: String, nodeNonce: String, bindableIPs: [String], capacity: Int,
                features: [String]? = nil) {
        self.version = version; self.nodeID = nodeID; self.instanceID = instanceID; self.proof = proof
        self.nodeNonce = nodeNonce; self.bindableIPs = bindableIPs; self.capacity = capacity; self.features = features
    }
}

/// One sending IP as assigned to a node.
public struct AssignedIP: Codable, Sendable, Equatable, Hashable {
    /// Numeric address the node binds before connect.
    public var address: String
    /// The HELO/EHLO name to present from this address.
    public var helo: String
    /// The pool the address belongs to.
    public var pool: String
    public init(address: String, helo: String, pool: String) { self.address = address; self.helo = helo; self.pool = pool }
}

/// `welcome` (coordinator → node): accepted; the coordinator's own proof and the node's sending IPs.
public struct WelcomeMessage: Codable, Sendable, Equatable {
    /// HMAC-SHA256 (hex) over the node's nonce: see `ClusterAuth.coordinatorProof`.
    public var proof: String
    /// Sending IPs the node owns from now on.
    public var assignedIPs: [AssignedIP]
    /// Seconds between heartbeats each side sends.
    public var heartbeatInterval: Double
    /// Seconds of silence after which the peer is considered gone.
    public var peerTimeout: Double
    /// The coordinator's leadership term (absent from coordinators before terms): the node
    /// refuses a welcome, and any later frame, from a term below the highest it has seen of the
    /// same store (`TermFence`).
    public var term: Int64? = nil
    /// The store's identity: terms are compared only within one store.
    public var storeID: String? = nil
    /// The coordinator's id (`coordinators[].id`), for logs.
    public var coordinatorID: String? = nil
    public init(proof: String, assignedIPs: [AssignedIP], heartbeatInterval: Double, peerTimeout: Double,
                term: Int64? = nil, storeID: String? = nil, coordinatorID: String? = nil) {
        self.proof = proof; self.assignedIPs = assignedIPs; self.heartbeatInterval = heartbeatInterval; self.peerTimeout = peerTimeout
        self.term = term; self.storeID = storeID; self.coordinatorID = coordinatorID
    }
}

/// `redirect` (standby coordinator → node, instead of `welcome`): this coordinator does not lead;
/// connect to the leader instead. Sent only to a node that named the `terms` feature.
public struct RedirectMessage: Codable, Sendable, Equatable {
    /// The leader's id, nil when no leader is known right now (the node tries the next coordinator).
    public var leader: String?
    /// The leader's cluster address (`host:port`), nil when unknown.
    public var address: String?
    /// The highest term this coordinator has seen.
    public var term: Int64
    public init(leader: String?, address: String?, term: Int64) { self.leader = leader; self.address = address; self.term = term }
}

/// `reject` (either way): the connection is refused or ended; `reason` is for the operator.
public struct RejectMessage: Codable, Sendable, Equatable {
    /// A one-line reason.
    public var reason: String
    /// Whether retrying later can help (false for a version mismatch or bad secret).
    public var retryable: Bool
    public init(reason: String, retryable: Bool) { self.reason = reason; self.retryable = retryable }
}

/// `heartbeat` (either way).
public struct HeartbeatMessage: Codable, Sendable, Equatable {
    /// Leases the sender is working on (node) or has granted to this node (coordinator).
    public var leasesInFlight: Int
    /// The sender's wall clock when it sent the heartbeat, seconds since 1970 (UTC). Nodes send
    /// it from issue 18 on so that `doctor` can show clock skew; absent from older nodes (and
    /// ignored by older coordinators: unknown keys are skipped), so old and new interoperate.
    public var sentAt: Double?
    /// - Parameters:
    ///   - leasesInFlight: leases in flight.
    ///   - sentAt: the sender's wall clock (seconds since 1970), nil to leave it out.
    public init(leasesInFlight: Int, sentAt: Double? = nil) { self.leasesInFlight = leasesInFlight; self.sentAt = sentAt }
}
