#if canImport(Glibc)
import Glibc
#endif
import HatoSupport

/// What `AdmissionControl.admit` decided.
public enum AdmissionDecision: Sendable {
    /// Admitted: the token holds the connection's slot until released.
    case admitted(AdmissionToken)
    /// Refused because of this limit.
    case refused(AdmissionRefusal)
}

/// Why a connection was refused.
public enum AdmissionRefusal: Sendable, Equatable, CustomStringConvertible {
    /// `AdmissionLimits.maxConnections` are open.
    case listenerFull
    /// `AdmissionLimits.maxConnectionsPerPeer` are open from this peer.
    case peerFull
    /// `PreAuthenticationLimits.maxConnections` unauthenticated connections are open.
    case unauthenticatedFull
    /// `PreAuthenticationLimits.maxConnectionsPerPeer` unauthenticated connections are open from this peer.
    case unauthenticatedPeerFull

    /// The limit's name for logs, e.g. `max_connections`.
    public var description: String {
        switch self {
        case .listenerFull: return "max_connections"
        case .peerFull: return "max_connections_per_peer"
        case .unauthenticatedFull: return "max_unauthenticated"
        case .unauthenticatedPeerFull: return "max_unauthenticated_per_peer"
        }
    }

    /// Whether the limit is about this peer (rather than everyone).
    public var isPerPeer: Bool { self == .peerFull || self == .unauthenticatedPeerFull }
}

/// The unit connections are counted per: an IPv4 address (/32; an IPv4-mapped IPv6 address
/// counts as its IPv4 address) or an IPv6 /64 (one host or one customer network; hosts get a
/// whole /64 and can pick any address in it).
public struct PeerKey: Hashable, Sendable, CustomStringConvertible {
    private let high: UInt64
    private let low: UInt64
    private let isIPv6: Bool

    /// The key of `address` (an unparsable host text counts as one peer of its own).
    public init(_ address: SocketAddress) {
        var v6 = in6_addr()
        var v4 = in_addr()
        if inet_pton(AF_INET, address.host, &v4) == 1 {
            self.init(high: UInt64(UInt32(bigEndian: v4.s_addr)), low: 0, isIPv6: false)
        } else if inet_pton(AF_INET6, address.host, &v6) == 1 {
            let bytes = withUnsafeBytes(of: &v6) { Array($0) }
            let isMapped = bytes[0..<10].allSatisfy { $0 == 0 } && bytes[10] == 0xFF && bytes[11] == 0xFF
            if isMapped {
                self.init(high: bytes[12..<16].reduce(0) { $0 << 8 | UInt64($1) }, low: 0, isIPv6: false)
            } else {
                self.init(high: bytes[0..<8].reduce(0) { $0 << 8 | UInt64($1) }, low: 0, isIPv6: true)
            }
        } else {
            // Not an address (never from accept): a key of its own that no address can have.
            var hasher = Hasher()
            hasher.combine(address.host)
            self.init(high: UInt64(bitPattern: Int64(hasher.finalize())), low: 1, isIPv6: true)
        }
    }

    private init(high: UInt64, low: UInt64, isIPv6: Bool) {
        self.high = high
        self.low = low
        self.isIPv6 = isIPv6
    }

    /// `192.0.2.1` or `2001:db8:1:2::/64`.
    public var description: String {
        if !isIPv6 { return "\(high >> 24).\(high >> 16 & 0xFF).\(high >> 8 & 0xFF).\(high & 0xFF)" }
        let groups = (0..<4).map { String(high >> (48 - 16 * UInt64($0)) & 0xFFFF, radix: 16) }
        return groups.joined(separator: ":") + "::/64"
    }
}

/// The connection counts of one or more listeners that share limits (the SMTP listen
/// addresses share `smtp.max_connections`): admits or refuses each new connection, and hands
/// an admitted one an `AdmissionToken` that holds its slot until released.
///
/// With `PreAuthenticationLimits`, a connection is born unauthenticated: it counts against
/// both tiers until `promote()`, and is shut down at its handshake deadline by the `Acceptor`
/// loop (`expireHandshakes`).
public final class AdmissionControl: Sendable {
    /// The limits of every connection.
    public let limits: AdmissionLimits
    /// The unauthenticated tier, if the listener has one.
    public let preAuthentication: PreAuthenticationLimits?

    private struct Pending: Sendable {
        var deadline: ContinuousClock.Instant
        var socket: Socket
        var key: PeerKey
    }

    private struct State: Sendable {
        var open = 0
        var openPerPeer: [PeerKey: Int] = [:]
        var unauthenticated = 0
        var unauthenticatedPerPeer: [PeerKey: Int] = [:]
        var nextID: UInt64 = 0
        /// Unauthenticated connections by token id, with their deadlines.
        var pending: [UInt64: Pending] = [:]
        /// Unauthenticated connections evicted for a newcomer: already out of the
        /// unauthenticated counts, their slots held until the owner releases them.
        var evicted: Set<UInt64> = []
        /// Connections evicted so far.
        var evictions = 0
    }

    private let state = Locked(State())

    /// - Parameters:
    ///   - limits: connections open at once, in total and per peer.
    ///   - preAuthentication: the unauthenticated tier, or nil when connections need no handshake.
    public init(limits: AdmissionLimits, preAuthentication: PreAuthenticationLimits? = nil) {
        self.limits = limits
        self.preAuthentication = preAuthentication
    }

    /// Admits `socket` from `peer`, or says which limit is reached.
    /// - Parameters:
    ///   - socket: the new connection (shut down at its handshake deadline, with a pre-authentication tier).
    ///   - peer: where it comes from.
    /// - Returns: the token holding the connection's slot, or the refusal.
    public func admit(_ socket: Socket, from peer: SocketAddress) -> AdmissionDecision {
        let key = PeerKey(peer)
        let now = ContinuousClock.now
        let outcome = state.withLock { s -> (id: UInt64, refusal: AdmissionRefusal?, evicted: Socket?) in
            if s.open >= limits.maxConnections { return (0, .listenerFull, nil) }
            if s.openPerPeer[key, default: 0] >= limits.maxConnectionsPerPeer { return (0, .peerFull, nil) }
            var evicted: Socket?
            if let pre = preAuthentication {
                if s.unauthenticatedPerPeer[key, default: 0] >= pre.maxConnectionsPerPeer { return (0, .unauthenticatedPeerFull, nil) }
                if s.unauthenticated >= pre.maxConnections {
                    guard let victim = Self.evictionVictim(&s, for: key) else { return (0, .unauthenticatedFull, nil) }
                    evicted = victim
                }
            }
            s.nextID += 1
            s.open += 1
            s.openPerPeer[key, default: 0] += 1
            if let pre = preAuthentication {
                s.unauthenticated += 1
                s.unauthenticatedPerPeer[key, default: 0] += 1
                s.pending[s.nextID] = Pending(deadline: now + pre.handshakeDeadline, socket: socket, key: key)
            }
            return (s.nextID, nil, evicted)
        }
        outcome.evicted?.shutdown()
        if let refusal = outcome.refusal { return .refused(refusal) }
        return .admitted(AdmissionToken(control: self, id: outcome.id, peer: peer, key: key, authenticated: preAuthentication == nil))
    }

    /// The unauthenticated tier is full and a connection from `newcomer` arrives: the oldest
    /// unauthenticated connection of the peer holding the most of them makes room, when that
    /// peer holds at least two more than the newcomer's (fair shares: a flood from a few
    /// addresses can fill the tier but not keep a node from another address out of it; only
    /// as many flooding addresses as the tier has slots could). The victim leaves the
    /// unauthenticated counts at once; its socket is returned to be shut down outside the lock.
    private static func evictionVictim(_ s: inout State, for newcomer: PeerKey) -> Socket? {
        guard let (heaviest, count) = s.unauthenticatedPerPeer.max(by: { $0.value < $1.value }),
              count >= s.unauthenticatedPerPeer[newcomer, default: 0] + 2,
              let (id, victim) = s.pending.filter({ $0.value.key == heaviest }).min(by: { $0.key < $1.key }) else { return nil }
        s.pending[id] = nil
        s.evicted.insert(id)
        s.evictions += 1
        s.unauthenticated -= 1
        decrement(&s.unauthenticatedPerPeer, heaviest)
        return victim.socket
    }

    /// Connections holding a slot now.
    public var openConnections: Int { state.withLock { $0.open } }

    /// Unauthenticated connections shut down so far to make room for a connection from a peer
    /// holding fewer (see `admit`).
    public var evictions: Int { state.withLock { $0.evictions } }

    /// Connections not yet promoted (0 without a pre-authentication tier).
    public var unauthenticatedConnections: Int { state.withLock { $0.unauthenticated } }

    /// Connections holding a slot now from `peer`'s `PeerKey`.
    public func openConnections(from peer: SocketAddress) -> Int {
        let key = PeerKey(peer)
        return state.withLock { $0.openPerPeer[key, default: 0] }
    }

    /// Shuts down every unauthenticated connection whose handshake deadline has passed (their
    /// readers see end of stream and close them; the slots are released when they do).
    /// - Parameter now: the current monotonic instant.
    /// - Returns: the next deadline still ahead, nil when none.
    @discardableResult
    public func expireHandshakes(now: ContinuousClock.Instant = .now) -> ContinuousClock.Instant? {
        guard preAuthentication != nil else { return nil }
        let (expired, next) = state.withLock { s -> ([Socket], ContinuousClock.Instant?) in
            var expired: [Socket] = []
            var next: ContinuousClock.Instant?
            for (id, p) in s.pending {
                if p.deadline <= now {
                    expired.append(p.socket)
                    s.pending[id] = nil  // the slot stays taken until the owner releases it
                } else if next == nil || p.deadline < next! {
                    next = p.deadline
                }
            }
            return (expired, next)
        }
        for socket in expired { socket.shutdown() }
        return next
    }

    /// - Returns: false when the connection was evicted (it is being shut down).
    fileprivate func promote(id: UInt64, key: PeerKey) -> Bool {
        state.withLock { s in
            if s.evicted.contains(id) { return false }
            s.pending[id] = nil
            s.unauthenticated -= 1
            Self.decrement(&s.unauthenticatedPerPeer, key)
            return true
        }
    }

    fileprivate func release(id: UInt64, key: PeerKey, authenticated: Bool) {
        state.withLock { s in
            s.open -= 1
            Self.decrement(&s.openPerPeer, key)
            let wasEvicted = s.evicted.remove(id) != nil
            if !authenticated && !wasEvicted {
                s.pending[id] = nil
                s.unauthenticated -= 1
                Self.decrement(&s.unauthenticatedPerPeer, key)
            }
        }
    }

    private static func decrement(_ counts: inout [PeerKey: Int], _ key: PeerKey) {
        let n = counts[key, default: 1] - 1
        counts[key] = n > 0 ? n : nil
    }
}

/// The slot of one admitted connection: counted until `release()` (or deinit). With a
/// pre-authentication tier it starts unauthenticated; `promote()` moves it to the
/// authenticated tier and cancels its handshake deadline.
public final class AdmissionToken: Sendable {
    /// The peer the connection came from.
    public let peer: SocketAddress
    private let control: AdmissionControl
    private let id: UInt64
    private let key: PeerKey
    private struct State: Sendable {
        var released = false
        var authenticated: Bool
    }
    private let state: Locked<State>

    fileprivate init(control: AdmissionControl, id: UInt64, peer: SocketAddress, key: PeerKey, authenticated: Bool) {
        self.control = control
        self.id = id
        self.peer = peer
        self.key = key
        self.state = Locked(State(authenticated: authenticated))
    }

    deinit { release() }

    /// Whether the connection counts as authenticated (always true without a pre-authentication tier).
    public var isAuthenticated: Bool { state.withLock { $0.authenticated } }

    /// Moves the connection to the authenticated tier: it no longer counts against the
    /// unauthenticated limits and its handshake deadline no longer applies. Idempotent.
    /// - Returns: false when the token was already released, or the connection was evicted
    ///   from the unauthenticated tier (it is being shut down: close it).
    @discardableResult
    public func promote() -> Bool {
        state.withLock { s -> Bool in
            guard !s.released else { return false }
            if s.authenticated { return true }
            guard control.promote(id: id, key: key) else { return false }
            s.authenticated = true
            return true
        }
    }

    /// Gives the slot back (idempotent). The `Acceptor` calls it when the connection's handler returns.
    public func release() {
        let wasAuthenticated = state.withLock { s -> Bool? in
            guard !s.released else { return nil }
            s.released = true
            return s.authenticated
        }
        if let wasAuthenticated { control.release(id: id, key: key, authenticated: wasAuthenticated) }
    }
}
