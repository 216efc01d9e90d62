import Foundation

/// The leases in flight as the scheduler sees them: each connected node's lease credits,
/// each lease's node, sending IP, destination and expiry, the leases in flight per
/// (node, sending IP), and per node the expiry of the last lease granted to it (the fence
/// for its floating IPs when it goes silent, DESIGN.md "The IP assignment table").
///
/// A pure value: time is passed in. The durable record of leases is the queue's; this
/// table is the scheduler's working view of the current connections, rebuilt as nodes
/// reconnect (a lease granted to an earlier connection is reconciled through the queue).
public struct LeaseTable: Sendable, Equatable {
    /// One lease the scheduler granted on a node's current connection.
    public struct InFlight: Sendable, Equatable {
        /// The node holding it.
        public var node: String
        /// The sending IP it was granted for.
        public var sendingIP: String
        /// The destination domain.
        public var domain: String
        /// When the coordinator stops waiting for its result.
        public var expiresAt: Date
    }

    /// The largest credit balance a node may hold (a node asking for more is capped).
    public static let maximumCredits = 100_000

    /// Lease credits per node: how many more leases it asked for.
    public private(set) var credits: [String: Int] = [:]
    /// Leases in flight by lease id.
    public private(set) var leases: [String: InFlight] = [:]
    /// Leases in flight per node and sending IP.
    public private(set) var inFlightPerIP: [String: [String: Int]] = [:]
    /// Per node: the latest expiry of any lease granted to it (kept after it disconnects,
    /// until it reconnects, so that its fence can be computed).
    public private(set) var lastGrantExpiry: [String: Date] = [:]

    /// An empty table.
    public init() {}

    /// Adds credits from a node's `lease_request` (negative counts are ignored; the balance
    /// is capped at `maximumCredits`).
    public mutating func addCredits(_ count: Int, node: String) {
        credits[node] = max(0, min(credits[node, default: 0] + max(0, count), Self.maximumCredits))
    }

    /// Records a lease granted to `node`: one credit spent, one more in flight on its IP.
    public mutating func granted(_ record: LeaseRecord) {
        credits[record.node] = max(0, credits[record.node, default: 0] - 1)
        leases[record.id] = InFlight(node: record.node, sendingIP: record.sendingIP, domain: record.domain, expiresAt: record.expiresAt)
        inFlightPerIP[record.node, default: [:]][record.sendingIP, default: 0] += 1
        lastGrantExpiry[record.node] = max(lastGrantExpiry[record.node] ?? .distantPast, record.expiresAt)
    }

    /// Undoes `granted` for a lease that was planned but not recorded (the queue refused it
    /// or its recipients were taken): the credit comes back.
    public mutating func withdrawn(_ record: LeaseRecord) {
        guard finished(record.id) != nil else { return }
        credits[record.node, default: 0] += 1
    }

    /// A lease ended (its result was applied, or it expired).
    /// - Returns: the lease, when it was in flight on a current connection.
    @discardableResult
    public mutating func finished(_ leaseID: String) -> InFlight? {
        guard let lease = leases.removeValue(forKey: leaseID) else { return nil }
        let left = (inFlightPerIP[lease.node]?[lease.sendingIP] ?? 1) - 1
        inFlightPerIP[lease.node]?[lease.sendingIP] = left > 0 ? left : nil
        return lease
    }

    /// Leases in flight on `node`'s current connection.
    public func count(node: String) -> Int { inFlightPerIP[node]?.values.reduce(0, +) ?? 0 }

    /// Leases in flight per sending IP of `node`.
    public func inFlight(node: String) -> [String: Int] { inFlightPerIP[node] ?? [:] }

    /// Leases whose expiry has passed at `now`, oldest first.
    public func expired(now: Date) -> [String] {
        leases.filter { $0.value.expiresAt <= now }.sorted { ($0.value.expiresAt, $0.key) < ($1.value.expiresAt, $1.key) }.map(\.key)
    }

    /// A node's connection ended: its credits and its view of leases in flight are dropped
    /// (the queue keeps the lease records until they expire or are reconciled); the expiry
    /// of its last grant stays for the fence.
    public mutating func nodeDisconnected(_ node: String) {
        credits[node] = nil
        inFlightPerIP[node] = nil
        leases = leases.filter { $0.value.node != node }
    }

    /// A node connected anew: it starts with no credits.
    public mutating func nodeConnected(_ node: String) {
        credits[node] = 0
        inFlightPerIP[node] = nil
        leases = leases.filter { $0.value.node != node }
    }
}
