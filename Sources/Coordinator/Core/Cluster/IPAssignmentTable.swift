import ClusterProtocol
import Foundation

/// The IP assignment table: which node owns each sending IP, and the handovers in progress.
///
/// Invariant (DESIGN.md): at any moment an IP is owned by at most one node.
/// Ownership moves only by handover — revoke from the old owner, wait until it
/// reports the IP released, then assign — or, for a floating IP whose owner went
/// silent, after a fencing delay by which every lease that owner held has expired.
/// A fixed IP (exactly one eligible node) waits for its node.
/// Pure value type: time and node liveness are passed in.
public struct IPAssignmentTable: Sendable, Equatable {
    /// One row of the table.
    public struct Entry: Sendable, Equatable {
        /// Address, HELO name and pool.
        public var ip: AssignedIP
        /// Nodes allowed to own the IP; empty = any node.
        public var eligible: [String]
        /// The current owner.
        public var owner: String?
        /// While a handover is in progress: the node the IP goes to once the owner released it.
        public var handoverTo: String?
        /// Whether the IP may move between nodes.
        public var isFloating: Bool { eligible.count != 1 }
        /// `owned`, `handover`, or `unowned`.
        public var state: String { owner == nil ? "unowned" : (handoverTo != nil ? "handover" : "owned") }
    }

    /// A planned move of one IP.
    public struct Move: Sendable, Equatable, Codable {
        public var address: String
        public var from: String?
        public var to: String
    }

    /// Rows in configuration order.
    public private(set) var entries: [Entry]
    /// Connected nodes and the configured IPs each can bind.
    private var bindable: [String: Set<String>] = [:]
    /// For each disconnected node: the time after which its floating IPs may move.
    private var fencedUntil: [String: Date] = [:]
    /// IPs kept for their owner before a coordinator restart until it rejoins, or until the
    /// time given (by then every lease it held has expired): IP → (node, until).
    public private(set) var reservations: [String: Reservation] = [:]

    /// An IP kept for a node.
    public struct Reservation: Sendable, Equatable {
        public var node: String
        public var until: Date
    }

    /// - Parameter ips: the configured sending IPs with their eligible nodes (empty = any).
    public init(ips: [(AssignedIP, [String])]) {
        entries = ips.map { Entry(ip: $0.0, eligible: $0.1, owner: nil, handoverTo: nil) }
    }

    /// The IPs owned by `node` (including those being handed over away from it).
    public func owned(by node: String) -> [AssignedIP] { entries.filter { $0.owner == node }.map(\.ip) }

    /// The IPs on which `node` may be given new leases: owned and not being handed over.
    public func leasable(by node: String) -> [AssignedIP] { entries.filter { $0.owner == node && $0.handoverTo == nil }.map(\.ip) }

    /// The owner of `address`, if any.
    public func owner(of address: String) -> String? { entries.first { $0.ip.address == address }?.owner }

    /// Whether `node` could own `entry` now (connected, can bind it, eligible).
    public func canOwn(_ node: String, _ e: Entry) -> Bool {
        guard let binds = bindable[node], binds.contains(e.ip.address) else { return false }
        return e.eligible.isEmpty || e.eligible.contains(node)
    }

    /// Whether `address` is kept for a node other than `node` at `now`.
    func isReserved(_ address: String, against node: String, now: Date) -> Bool {
        guard let r = reservations[address] else { return false }
        return r.node != node && now < r.until
    }

    /// Keeps IPs for their previous owners (after a coordinator restart): an unowned IP in
    /// `owners` goes to no other node before its owner's `until` time; when the owner
    /// connects and can bind it, it gets it back.
    /// - Parameters:
    ///   - owners: IP → node as stored before the restart.
    ///   - until: per node, when its reservations end.
    public mutating func reserve(_ owners: [String: String], until: [String: Date]) {
        for (address, node) in owners where entries.contains(where: { $0.ip.address == address && $0.owner == nil }) {
            reservations[address] = Reservation(node: node, until: until[node] ?? .distantPast)
        }
    }

    /// A node connected and can bind `bindableIPs`. It keeps what it owns and can still bind,
    /// and takes every unowned IP it is eligible for and can bind (if `takeUnowned`).
    /// - Returns: the IPs the node owns now.
    public mutating func nodeConnected(_ node: String, bindable binds: [String], takeUnowned: Bool = true, now: Date = .distantPast) -> [AssignedIP] {
        bindable[node] = Set(binds)
        fencedUntil[node] = nil
        for i in entries.indices {
            let address = entries[i].ip.address
            if entries[i].owner == node && !binds.contains(address) {
                entries[i].owner = nil; entries[i].handoverTo = nil
            }
            guard entries[i].owner == nil, canOwn(node, entries[i]) else { continue }
            if reservations[address]?.node == node {
                // Its own IP from before the coordinator restarted.
                entries[i].owner = node
                reservations[address] = nil
            } else if takeUnowned && !isReserved(address, against: node, now: now) {
                entries[i].owner = node
            }
        }
        return owned(by: node)
    }

    /// A node's connection ended. Its floating IPs may move after `fenceUntil`
    /// (the later of last-heard + lease time and the expiry of the last lease granted to it).
    /// Handovers from or to it are cancelled.
    public mutating func nodeDisconnected(_ node: String, fenceUntil: Date) {
        bindable[node] = nil
        fencedUntil[node] = fenceUntil
        for i in entries.indices where entries[i].handoverTo == node { entries[i].handoverTo = nil }
        for i in entries.indices where entries[i].owner == node { entries[i].handoverTo = nil }
    }

    /// Forgets a node entirely (removed from the configuration): its IPs become unowned
    /// once fenced; callers must only do this for a node that is disconnected and fenced.
    public mutating func forget(_ node: String) {
        bindable[node] = nil
        fencedUntil[node] = nil
        for i in entries.indices where entries[i].owner == node { entries[i].owner = nil; entries[i].handoverTo = nil }
    }

    /// Starts handing `address` over to `target`.
    /// - Returns: false if the IP is unknown, unowned, already moving, or `target` cannot own it.
    public mutating func beginHandover(_ address: String, to target: String) -> Bool {
        guard let i = entries.firstIndex(where: { $0.ip.address == address }), entries[i].owner != nil,
              entries[i].owner != target, entries[i].handoverTo == nil, canOwn(target, entries[i]) else { return false }
        entries[i].handoverTo = target
        return true
    }

    /// The owner reported `address` released.
    /// - Returns: the new owner if a handover completed (the caller sends it `ip_assign`), else nil.
    public mutating func released(_ address: String, by node: String) -> String? {
        guard let i = entries.firstIndex(where: { $0.ip.address == address }), entries[i].owner == node else { return nil }
        let target = entries[i].handoverTo
        entries[i].handoverTo = nil
        if let target, canOwn(target, entries[i]) {
            entries[i].owner = target
            return target
        }
        entries[i].owner = nil
        return nil
    }

    /// Gives an unowned IP to `node` if it can own it.
    /// - Returns: the IP when assigned.
    public mutating func assignUnowned(_ address: String, to node: String) -> AssignedIP? {
        guard let i = entries.firstIndex(where: { $0.ip.address == address }), entries[i].owner == nil, canOwn(node, entries[i]),
              reservations[address] == nil || reservations[address]?.node == node else { return nil }
        reservations[address] = nil
        entries[i].owner = node
        return entries[i].ip
    }

    /// Whether a floating IP is owned by `node` (drain is complete only when none is).
    public func floatingOwned(by node: String) -> [AssignedIP] { entries.filter { $0.owner == node && $0.isFloating }.map(\.ip) }

    /// Moves floating IPs of nodes whose fence has passed to live eligible nodes (fewest IPs first),
    /// and gives unowned IPs to live eligible nodes. Nodes in `excluded` (draining) get nothing.
    /// - Returns: the new assignments as (node, IP).
    public mutating func assignOrphans(now: Date, excluded: Set<String> = []) -> [(String, AssignedIP)] {
        var moves: [(String, AssignedIP)] = []
        for i in entries.indices {
            if let o = entries[i].owner, bindable[o] == nil {
                guard entries[i].isFloating, let until = fencedUntil[o], now >= until else { continue }
                entries[i].owner = nil
            }
            guard entries[i].owner == nil else { continue }
            let address = entries[i].ip.address
            if let r = reservations[address] {
                if now < r.until { continue }
                reservations[address] = nil
            }
            let candidates = bindable.keys.sorted().filter { !excluded.contains($0) && canOwn($0, entries[i]) }
            guard let target = candidates.min(by: { owned(by: $0).count < owned(by: $1).count }) else { continue }
            entries[i].owner = target
            moves.append((target, entries[i].ip))
        }
        return moves
    }

    /// Adds, updates and removes rows to match a new configuration (reload).
    /// - Returns: addresses removed while owned (the caller revokes them from their owners).
    public mutating func reconfigure(_ ips: [(AssignedIP, [String])]) -> [(address: String, owner: String)] {
        var removed: [(String, String)] = []
        var next: [Entry] = []
        for (ip, eligible) in ips {
            if var e = entries.first(where: { $0.ip.address == ip.address }) {
                e.ip = ip; e.eligible = eligible
                if let o = e.owner, !(eligible.isEmpty || eligible.contains(o)) {
                    // No longer eligible: hand back like a removal.
                    removed.append((ip.address, o)); e.owner = nil; e.handoverTo = nil
                }
                next.append(e)
            } else {
                next.append(Entry(ip: ip, eligible: eligible, owner: nil, handoverTo: nil))
            }
        }
        for e in entries where !ips.contains(where: { $0.0.address == e.ip.address }) {
            if let o = e.owner { removed.append((e.ip.address, o)) }
        }
        entries = next
        return removed
    }

    /// A rebalance plan: moves that even out the number of IPs per node over `nodes`
    /// (active, not draining), pool by pool, with the fewest moves. Deterministic.
    ///
    /// Greedy per pool: while the most-loaded node of the pool has at least two IPs of
    /// that pool more than the least-loaded node that may own one of them, move the
    /// lowest-addressed such IP. Each move reduces the spread, so no move is wasted.
    /// Unowned IPs are placed first (they need no handover). Fixed IPs never move.
    public func planRebalance(nodes: [String]) -> [Move] {
        let live = nodes.filter { bindable[$0] != nil }.sorted()
        guard !live.isEmpty else { return [] }
        var owner: [String: String?] = [:]
        for e in entries { owner[e.ip.address] = e.owner }
        var moves: [Move] = []
        func count(_ n: String, pool: String?) -> Int {
            entries.filter { owner[$0.ip.address] == .some(n) && (pool == nil || $0.ip.pool == pool) }.count
        }
        let pools = Array(Set(entries.map(\.ip.pool))).sorted()
        // 1. Unowned IPs go to the eligible node with the fewest IPs of that pool.
        for e in entries.sorted(by: { $0.ip.address < $1.ip.address }) where owner[e.ip.address] == .some(nil) && e.handoverTo == nil
            && reservations[e.ip.address] == nil {
            let cands = live.filter { canOwn($0, e) }
            guard let t = cands.min(by: { (count($0, pool: e.ip.pool), count($0, pool: nil), $0) < (count($1, pool: e.ip.pool), count($1, pool: nil), $1) }) else { continue }
            owner[e.ip.address] = t
            moves.append(Move(address: e.ip.address, from: nil, to: t))
        }
        // 2. Even out each pool.
        for pool in pools {
            for _ in 0..<entries.count {
                let movable = entries.filter { $0.ip.pool == pool && $0.isFloating && $0.handoverTo == nil }
                var best: (Entry, String, String)?
                for from in live.sorted(by: { (count($0, pool: pool), $1) > (count($1, pool: pool), $0) }) {
                    for e in movable.sorted(by: { $0.ip.address < $1.ip.address }) where owner[e.ip.address] == .some(from) {
                        let targets = live.filter { $0 != from && canOwn($0, e) && count($0, pool: pool) + 2 <= count(from, pool: pool) }
                        if let t = targets.min(by: { (count($0, pool: pool), count($0, pool: nil), $0) < (count($1, pool: pool), count($1, pool: nil), $1) }) {
                            best = (e, from, t); break
                        }
                    }
                    if best != nil { break }
                }
                guard let (e, from, to) = best else { break }
                owner[e.ip.address] = to
                if let k = moves.firstIndex(where: { $0.address == e.ip.address }) { moves[k].to = to } else {
                    moves.append(Move(address: e.ip.address, from: from, to: to))
                }
            }
        }
        return moves.filter { $0.from != $0.to }
    }
}
