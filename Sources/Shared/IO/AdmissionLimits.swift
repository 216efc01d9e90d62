#if canImport(Glibc)
import Glibc
#endif
import HatoSupport

/// How many connections a listener keeps open at once.
public struct AdmissionLimits: Sendable, Equatable {
    /// Connections open at once, in total (every tier).
    public var maxConnections: Int
    /// Connections open at once from one peer (`PeerKey`: an IPv4 address, an IPv6 /64).
    public var maxConnectionsPerPeer: Int

    /// Limits of `maxConnections` in total and `maxConnectionsPerPeer` per peer (each at least 1).
    public init(maxConnections: Int, maxConnectionsPerPeer: Int) {
        self.maxConnections = max(1, maxConnections)
        self.maxConnectionsPerPeer = max(1, maxConnectionsPerPeer)
    }

    /// The admin/metrics HTTP listener's built-in limits: 64 in total, 16 per peer.
    public static let adminHTTP = AdmissionLimits(maxConnections: 64, maxConnectionsPerPeer: 16)

    /// Suggested limits of the cluster listener: 256 node links in total, 8 per peer (a host
    /// runs one node; a restart briefly holds two links).
    public static let cluster = AdmissionLimits(maxConnections: 256, maxConnectionsPerPeer: 8)
}

/// The second tier of a listener whose peers must authenticate (the cluster listener, issue
/// 13): connections that have not yet completed their handshake are capped on their own, in
/// total and per peer, and are shut down when the handshake takes longer than the deadline.
/// When the tier is full, a newcomer from a peer holding fewer of its slots evicts the oldest
/// connection of the peer holding the most (`AdmissionControl.admit`).
/// The owner calls `AdmissionToken.promote()` once the peer has proven itself.
public struct PreAuthenticationLimits: Sendable, Equatable {
    /// Unauthenticated connections at once, in total.
    public var maxConnections: Int
    /// Unauthenticated connections at once from one peer.
    public var maxConnectionsPerPeer: Int
    /// How long a connection may stay unauthenticated before the acceptor shuts it down
    /// (its reader then sees end of stream and closes it).
    public var handshakeDeadline: Duration

    /// Pre-authentication limits (counts at least 1, the deadline at least 1 ms).
    public init(maxConnections: Int, maxConnectionsPerPeer: Int, handshakeDeadline: Duration) {
        self.maxConnections = max(1, maxConnections)
        self.maxConnectionsPerPeer = max(1, maxConnectionsPerPeer)
        self.handshakeDeadline = max(.milliseconds(1), handshakeDeadline)
    }

    /// Suggested pre-authentication tier of the cluster listener: 32 unauthenticated links at
    /// once, 2 per peer, 10 s to complete the challenge/hello exchange.
    public static let cluster = PreAuthenticationLimits(maxConnections: 32, maxConnectionsPerPeer: 2, handshakeDeadline: .seconds(10))
}
