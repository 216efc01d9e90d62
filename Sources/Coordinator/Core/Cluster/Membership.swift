import ClusterProtocol
import Foundation

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
    /// Seconds since 1970 when the node was last heard from.
    public var lastSeen: Double?
}

/// Identifies one cluster connection for the life of the process (a node that reconnects
/// gets a new one, so events of its old connection can be told apart).
public typealias ConnectionID = UInt64

/// Who is in the cluster: the node sessions (one authenticated connection per node at most)
/// and their states, drains, and the IP assignment table with its handovers.
///
/// A pure value: time, liveness and lease counts are passed in; operations return what to
/// tell which node (`Membership.Change`), and the caller sends it.
public struct Membership: Sendable, Equatable {
    /// One connected node.
    public struct Session: Sendable, Equatable {
        /// The node id (`nodes[].id`).
        public var nodeID: String
        /// The node process's instance id (new at every start of the process).
        public var instanceID: String
        /// The connection it came on.
        public var connection: ConnectionID
        /// The peer's numeric address.
        public var address: String
        /// Whether its first `lease_request` arrived (its journal was re-reported and leases
        /// of its earlier instances were reconciled).
        public var reconciled = false
        /// When a frame last arrived from it.
        public var lastHeard: Date
    }

    /// What the node was when last connected.
    public struct Seen: Sendable, Equatable {
        public var instanceID: String
        public var address: String
        public var at: Date
    }

    /// A message for a node that an operation produced.
    public enum Change: Sendable, Equatable {
        /// Give `ips` to `node` (`ip_assign`).
        case assign(node: String, ips: [AssignedIP])
        /// Take `addresses` from `node` (`ip_revoke`); it answers `ip_released` when done.
        case revoke(node: String, addresses: [String])
    }

    /// Why a node may not join.
    public enum JoinRefusal: Error, Equatable, Sendable, CustomStringConvertible {
        /// The id is not in cluster.yml.
        case unknownNode(String)
        /// Another connection of this node is live.
        case alreadyConnected(node: String, instance: String)

        public var description: String {
            switch self {
            case .unknownNode(let n): return "node id \(n) is not in cluster.yml nodes (add it and run hato-coordinator reload)"
            case .alreadyConnected(let n, let i): return "node \(n) is already connected (instance \(i))"
            }
        }

        /// Whether the node should try again later.
        public var retryable: Bool { if case .alreadyConnected = self { return true } else { return false } }
    }

    /// Configured node ids, in file order.
    public private(set) var nodes: [String]
    /// Connected nodes by id.
    public private(set) var sessions: [String: Session] = [:]
    /// What each node was when last connected.
    public private(set) var lastSeen: [String: Seen] = [:]
    /// Nodes that finished a drain and disconnected (or were removed).
    public private(set) var left: Set<String> = []
    /// Nodes an operator put into drain (persisted by the caller).
    public private(set) var draining: Set<String>
    /// The IP assignment table.
    public private(set) var table: IPAssignmentTable

    /// - Parameters:
    ///   - nodes: the configured node ids.
    ///   - ips: the configured sending IPs with their eligible nodes.
    ///   - draining: nodes in drain when the coordinator started.
    public init(nodes: [String], ips: [(AssignedIP, [String])], draining: Set<String> = []) {
        self.nodes = nodes
        self.draining = draining
        self.table = IPAssignmentTable(ips: ips)
    }

    /// The state of `node`, given the leases it has in flight.
    public func state(of node: String, leasesInFlight: Int) -> NodeState {
        guard nodes.contains(node) else { return .left }
        guard let s = sessions[node] else { return left.contains(node) ? .left : .down }
        if !s.reconciled { return .joining }
        if draining.contains(node) {
            return leasesInFlight == 0 && table.floatingOwned(by: node).isEmpty ? .drained : .draining
        }
        return .active
    }

    /// Whether `node` may get new leases (connected, reconciled, not draining).
    public func isActive(_ node: String) -> Bool {
        guard let s = sessions[node], s.reconciled, nodes.contains(node) else { return false }
        return !draining.contains(node)
    }

    /// Connected, reconciled, non-draining nodes, sorted by id.
    public var activeNodes: [String] { sessions.keys.sorted().filter { isActive($0) } }

    /// The session on `connection`, if that connection is the node's current one.
    public func session(on connection: ConnectionID) -> Session? {
        sessions.values.first { $0.connection == connection }
    }

    /// An authenticated node asks to join on `connection`.
    /// - Returns: the sending IPs it owns from now on (for its `welcome`).
    /// - Throws: `JoinRefusal` when the id is unknown or another connection of it is live.
    public mutating func join(node: String, instance: String, connection: ConnectionID, address: String,
                              bindable: [String], now: Date) throws(JoinRefusal) -> [AssignedIP] {
        guard nodes.contains(node) else { throw .unknownNode(node) }
        if let existing = sessions[node] { throw .alreadyConnected(node: node, instance: existing.instanceID) }
        sessions[node] = Session(nodeID: node, instanceID: instance, connection: connection, address: address, lastHeard: now)
        left.remove(node)
        lastSeen[node] = Seen(instanceID: instance, address: address, at: now)
        return table.nodeConnected(node, bindable: bindable, takeUnowned: !draining.contains(node), now: now)
    }

    /// Keeps IPs for the nodes that owned them before a coordinator restart (see `IPAssignmentTable.reserve`).
    public mutating func restore(owners: [String: String], until: [String: Date]) {
        table.reserve(owners, until: until)
    }

    /// The owner of each owned sending IP.
    public var owners: [String: String] {
        Dictionary(table.entries.compactMap { e in e.owner.map { (e.ip.address, $0) } }, uniquingKeysWith: { a, _ in a })
    }

    /// A frame arrived from `connection`.
    public mutating func heard(on connection: ConnectionID, now: Date) {
        guard let s = session(on: connection) else { return }
        sessions[s.nodeID]?.lastHeard = now
    }

    /// The node's first lease request arrived: it is reconciled.
    /// - Returns: whether this was the first one on this connection.
    public mutating func reconciled(on connection: ConnectionID) -> Bool {
        guard let s = session(on: connection), !s.reconciled else { return false }
        sessions[s.nodeID]?.reconciled = true
        return true
    }

    /// A connection ended. If it was a node's current one, the node is down; its floating
    /// IPs may move after `fence` (the later of last heard + lease time and its last grant's
    /// expiry, computed by the caller from `lastHeard`).
    /// - Parameters:
    ///   - connection: the connection that ended.
    ///   - fence: computes the fence from the session.
    ///   - leasesInFlight: leases the node still had (a drained node with none has left).
    /// - Returns: the node that went down, if any.
    @discardableResult
    public mutating func disconnected(_ connection: ConnectionID, leasesInFlight: Int, fence: (Session) -> Date) -> String? {
        guard let s = session(on: connection) else { return nil }
        sessions[s.nodeID] = nil
        table.nodeDisconnected(s.nodeID, fenceUntil: fence(s))
        lastSeen[s.nodeID] = Seen(instanceID: s.instanceID, address: s.address, at: s.lastHeard)
        if draining.contains(s.nodeID) && leasesInFlight == 0 && table.floatingOwned(by: s.nodeID).isEmpty {
            left.insert(s.nodeID)
        }
        return s.nodeID
    }

    /// A node announced the configured IPs it can bind now (e.g. after its host's addresses changed).
    /// - Returns: the IPs newly assigned to it.
    public mutating func announced(node: String, bindable: [String], now: Date) -> [AssignedIP] {
        guard sessions[node] != nil else { return [] }
        let before = table.owned(by: node)
        let after = table.nodeConnected(node, bindable: bindable, takeUnowned: !draining.contains(node), now: now)
        return after.filter { !before.contains($0) }
    }

    /// The owner reported IPs released.
    /// - Returns: the assignments of completed handovers, one per target node.
    public mutating func released(_ addresses: [String], by node: String) -> [Change] {
        var out: [Change] = []
        for address in addresses {
            guard let target = table.released(address, by: node),
                  let ip = table.entries.first(where: { $0.ip.address == address })?.ip,
                  sessions[target] != nil else { continue }
            out.append(.assign(node: target, ips: [ip]))
        }
        return out
    }

    /// Puts `node` into drain (the caller persists it).
    /// - Returns: false when the node is not configured.
    public mutating func drain(_ node: String) -> Bool {
        guard nodes.contains(node) else { return false }
        draining.insert(node)
        return true
    }

    /// Ends `node`'s drain (the caller persists it).
    /// - Returns: false when the node is not configured.
    public mutating func resume(_ node: String) -> Bool {
        guard nodes.contains(node) else { return false }
        draining.remove(node)
        left.remove(node)
        return true
    }

    /// Floating IPs of fenced, silent nodes and unowned IPs go to live nodes (not draining ones).
    public mutating func assignOrphans(now: Date) -> [Change] {
        table.assignOrphans(now: now, excluded: draining).map { .assign(node: $0.0, ips: [$0.1]) }
    }

    /// Starts handing each draining node's floating IPs to the active node with the fewest IPs
    /// (one revoke per IP; `released` completes the move).
    public mutating func progressDrains() -> [Change] {
        var out: [Change] = []
        for node in draining.sorted() where sessions[node] != nil {
            for e in table.entries where e.owner == node && e.isFloating && e.handoverTo == nil {
                let targets = activeNodes.filter { table.canOwn($0, e) }
                guard let t = targets.min(by: { (table.owned(by: $0).count, $0) < (table.owned(by: $1).count, $1) }) else { continue }
                if table.beginHandover(e.ip.address, to: t) { out.append(.revoke(node: node, addresses: [e.ip.address])) }
            }
        }
        return out
    }

    /// The moves that would even out sending IPs over active nodes (a dry run).
    public func rebalancePlan() -> [IPAssignmentTable.Move] { table.planRebalance(nodes: activeNodes) }

    /// Computes and starts a rebalance: unowned IPs are assigned at once, owned ones by handover.
    /// - Returns: the plan and the messages that start it.
    public mutating func rebalance() -> (plan: [IPAssignmentTable.Move], changes: [Change]) {
        let plan = rebalancePlan()
        var changes: [Change] = []
        for m in plan {
            if let from = m.from {
                if sessions[from] != nil, table.beginHandover(m.address, to: m.to) { changes.append(.revoke(node: from, addresses: [m.address])) }
            } else if let ip = table.assignUnowned(m.address, to: m.to), sessions[m.to] != nil {
                changes.append(.assign(node: m.to, ips: [ip]))
            }
        }
        return (plan, changes)
    }

    /// Applies a reloaded configuration's nodes and IPs. IPs removed (or no longer eligible)
    /// while owned are revoked; removed nodes are marked left (the caller disconnects them).
    /// - Returns: the revocations and the connected nodes that were removed.
    public mutating func reconfigure(nodes newNodes: [String], ips: [(AssignedIP, [String])]) -> (changes: [Change], removed: [String]) {
        var changes: [Change] = []
        for (address, owner) in table.reconfigure(ips) where sessions[owner] != nil {
            changes.append(.revoke(node: owner, addresses: [address]))
        }
        let removed = nodes.filter { !newNodes.contains($0) }
        for n in removed { left.insert(n) }
        nodes = newNodes
        return (changes, removed.filter { sessions[$0] != nil })
    }

    /// The status rows of every configured node (and any removed node still known).
    /// - Parameters:
    ///   - leasesInFlight: leases in flight per node on its current connection (decides drained).
    ///   - recorded: leases recorded in the queue per node (shown).
    public func statuses(leasesInFlight: [String: Int], recorded: [String: Int]) -> [NodeStatus] {
        let ids = nodes + lastSeen.keys.sorted().filter { !nodes.contains($0) }
        return ids.map { id in
            let s = sessions[id]
            let seen = lastSeen[id]
            return NodeStatus(state: state(of: id, leasesInFlight: leasesInFlight[id] ?? 0), id: id,
                              instance: s?.instanceID ?? seen?.instanceID, address: s?.address ?? seen?.address,
                              ips: table.owned(by: id).map(\.address),
                              ipsToHandOver: draining.contains(id) ? table.floatingOwned(by: id).map(\.address) : [],
                              leasesInFlight: recorded[id] ?? 0, lastSeen: (s?.lastHeard ?? seen?.at)?.timeIntervalSince1970)
        }
    }
}
