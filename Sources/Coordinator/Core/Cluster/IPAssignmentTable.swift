import Foundation
import HatoShared

/// The IP assignment table: which node owns each sending IP.
///
/// Invariant (DESIGN.md): at any moment an IP is owned by at most one node.
/// A fixed IP (exactly one eligible node) waits for its node. A floating IP
/// (several eligible nodes, or any node) whose owner is down moves only after
/// `fence` seconds have passed since the owner was last heard from — by then
/// every lease the old owner held has expired, so two nodes never send from one IP.
/// Pure value type: time is passed in.
public struct IPAssignmentTable: Sendable, Equatable {
    /// One row of the table.
    public struct Entry: Sendable, Equatable {
        /// Address, HELO name and pool.
        public var ip: AssignedIP
        /// Nodes allowed to own the IP; empty = any node.
        public var eligible: [String]
        /// The current owner.
        public var owner: String?
        /// Whether the IP may move between nodes.
        public var isFloating: Bool { eligible.count != 1 }
    }

    /// Rows in configuration order.
    public private(set) var entries: [Entry]
    /// Nodes that are connected, with the configured IPs they can bind.
    private var live: [String: Set<String>] = [:]
    /// When each disconnected node was last heard from.
    private var downSince: [String: Date] = [:]

    /// - Parameter ips: the configured sending IPs with their eligible nodes (empty = any).
    public init(ips: [(AssignedIP, [String])]) {
        entries = ips.map { Entry(ip: $0.0, eligible: $0.1, owner: nil) }
    }

    /// The IPs owned by `node`.
    public func owned(by node: String) -> [AssignedIP] { entries.filter { $0.owner == node }.map(\.ip) }

    /// The owner of `address`, if any.
    public func owner(of address: String) -> String? { entries.first { $0.ip.address == address }?.owner }

    /// A node connected and can bind `bindable`. It keeps what it already owns and takes
    /// every unowned IP it is eligible for and can bind.
    /// - Returns: the IPs the node owns now.
    public mutating func nodeConnected(_ node: String, bindable: [String]) -> [AssignedIP] {
        live[node] = Set(bindable)
        downSince[node] = nil
        for i in entries.indices where entries[i].owner == nil && canOwn(node, entries[i]) {
            entries[i].owner = node
        }
        return owned(by: node)
    }

    /// A node's connection ended at `at` (it keeps its IPs until fenced).
    public mutating func nodeDisconnected(_ node: String, at: Date) {
        live[node] = nil
        downSince[node] = at
    }

    private func canOwn(_ node: String, _ e: Entry) -> Bool {
        guard let binds = live[node], binds.contains(e.ip.address) else { return false }
        return e.eligible.isEmpty || e.eligible.contains(node)
    }

    /// Moves floating IPs away from nodes down for at least `fence` seconds to a live eligible node
    /// (the one owning the fewest IPs), and gives unowned IPs to live eligible nodes.
    /// - Returns: the new assignments as (node, IP).
    public mutating func rebalanceOrphans(now: Date, fence: TimeInterval) -> [(String, AssignedIP)] {
        var moves: [(String, AssignedIP)] = []
        for i in entries.indices {
            if let o = entries[i].owner, live[o] == nil {
                guard entries[i].isFloating, let since = downSince[o], now.timeIntervalSince(since) >= fence else { continue }
                entries[i].owner = nil
            }
            guard entries[i].owner == nil else { continue }
            let candidates = live.keys.sorted().filter { canOwn($0, entries[i]) }
            guard let target = candidates.min(by: { owned(by: $0).count < owned(by: $1).count }) else { continue }
            entries[i].owner = target
            moves.append((target, entries[i].ip))
        }
        return moves
    }
}
