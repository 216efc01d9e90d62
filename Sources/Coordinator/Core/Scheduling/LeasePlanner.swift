import ClusterProtocol
import Foundation
import SMTPCore

/// Recipients of one message for one destination domain: the unit of a lease.
public struct DeliveryGroup: Sendable, Equatable {
    public var messageID: String
    public var domain: String
    public var pool: String
    public var reversePath: String
    public var recipients: [DueRecipient]
    /// The message's priority class (issue 18).
    public var priority: MessagePriority = .transactional
}

/// The scheduler's pure planning: grouping due recipients and choosing sending IPs.
public enum LeasePlanner {
    /// Groups due recipients by (message, destination domain), keeping the order in which
    /// each group first appears (oldest due first). A group larger than
    /// `maxRecipientsPerLease` is split (RFC 5321 §4.5.3.1.8 only promises 100 per transaction).
    public static func group(_ due: [DueRecipient], maxRecipientsPerLease: Int = 100) -> [DeliveryGroup] {
        var order: [String] = []
        var groups: [String: DeliveryGroup] = [:]
        for r in due {
            let key = r.messageID + "\u{0}" + r.domain
            if groups[key] == nil {
                order.append(key)
                groups[key] = DeliveryGroup(messageID: r.messageID, domain: r.domain, pool: r.pool, reversePath: r.reversePath, recipients: [],
                                            priority: r.priority)
            }
            groups[key]?.recipients.append(r)
        }
        var out: [DeliveryGroup] = []
        for key in order {
            guard let g = groups[key] else { continue }
            var i = 0
            while i < g.recipients.count {
                var part = g
                part.recipients = Array(g.recipients[i..<min(i + maxRecipientsPerLease, g.recipients.count)])
                out.append(part)
                i += maxRecipientsPerLease
            }
        }
        return out
    }

    /// Assigns each group to the node's sending IP of the group's pool that has the fewest
    /// leases in flight (ties: the order of `ips`), at most `limit` groups.
    /// Groups whose pool has no IP on this node are skipped.
    /// - Parameters:
    ///   - groups: candidate groups, in priority order.
    ///   - ips: the node's sending IPs.
    ///   - inFlight: leases in flight per sending IP address; updated as groups are assigned.
    ///   - limit: the most groups to assign (the node's lease credits).
    /// - Returns: (group, chosen IP) pairs.
    public static func assign(_ groups: [DeliveryGroup], ips: [AssignedIP], inFlight: inout [String: Int], limit: Int) -> [(DeliveryGroup, AssignedIP)] {
        var budget: [String: Int] = [:]
        return assign(groups, ips: ips, inFlight: &inFlight, limit: limit, budget: &budget, allow: { _, _ in true })
    }

    /// As `assign(_:ips:inFlight:limit:)`, with warm-up budgets and a backoff filter.
    /// - Parameters:
    ///   - budget: recipients each IP may still take today (warm-up); IPs absent are unlimited.
    ///     A group goes only to an IP whose budget covers all its recipients; budgets are reduced.
    ///   - allow: whether an IP may take a group now (e.g. no suspension for the group's provider);
    ///     called only for the IP about to be chosen.
    public static func assign(_ groups: [DeliveryGroup], ips: [AssignedIP], inFlight: inout [String: Int], limit: Int,
                              budget: inout [String: Int], allow: (AssignedIP, DeliveryGroup) -> Bool) -> [(DeliveryGroup, AssignedIP)] {
        var out: [(DeliveryGroup, AssignedIP)] = []
        guard limit > 0 else { return out }
        for g in groups {
            let need = g.recipients.count
            let budgets = budget
            let sorted = ips.filter { $0.pool == g.pool && (budgets[$0.address].map { $0 >= need } ?? true) }
                .enumerated().sorted { (inFlight[$0.element.address, default: 0], $0.offset) < (inFlight[$1.element.address, default: 0], $1.offset) }
                .map(\.element)
            guard let best = sorted.first(where: { allow($0, g) }) else { continue }
            if let b = budget[best.address] { budget[best.address] = b - g.recipients.count }
            inFlight[best.address, default: 0] += 1
            out.append((g, best))
            if out.count >= limit { break }
        }
        return out
    }
}

/// Smooth weighted round robin over a pool's sending IPs, one rotation per (pool, provider)
/// (the algorithm of nginx's upstream balancer): each pick adds every eligible IP's weight to
/// its running score, takes the highest, and subtracts the eligible weights' sum from it. Over
/// any stretch of picks each IP's share follows its weight, interleaved rather than in runs, so
/// no IP of a pool goes cold at low load (a cold IP loses reputation with providers).
public struct SpreadState: Sendable, Equatable {
    /// Running score per rotation key, per sending IP.
    private var scores: [String: [String: Int]] = [:]

    /// An empty state (every IP starts at score 0).
    public init() {}

    /// The IPs of `eligible` in the order a pick for `key` prefers them (highest score after the
    /// weights are added first; ties by input order). Does not change the state.
    public func preference(_ key: String, eligible: [(address: String, weight: Int)]) -> [String] {
        let s = scores[key] ?? [:]
        // Each IP's score looked up once (one hash of its address), then a sort on integers: the
        // comparator used to hash two addresses per comparison, which topped the coordinator's
        // profile with tens of IPs per pool (issue 19, bench/coordinator-ceiling).
        var ranked: [(score: Int, offset: Int)] = []
        ranked.reserveCapacity(eligible.count)
        for (offset, e) in eligible.enumerated() { ranked.append((s[e.address, default: 0] + e.weight, offset)) }
        ranked.sort { $0.score != $1.score ? $0.score > $1.score : $0.offset < $1.offset }
        return ranked.map { eligible[$0.offset].address }
    }

    /// Records that `chosen` was picked for `key` among `eligible`.
    public mutating func picked(_ chosen: String, key: String, eligible: [(address: String, weight: Int)]) {
        let old = scores[key] ?? [:]
        // Rebuilt from the eligible IPs (so scores stay bounded), plus the nonzero scores of IPs
        // not eligible this time.
        var s: [String: Int] = [:]
        s.reserveCapacity(eligible.count)
        var total = 0
        for e in eligible { s[e.address, default: old[e.address, default: 0]] += e.weight; total += e.weight }
        s[chosen, default: old[chosen, default: 0]] -= total
        if old.count > 0 {
            for (address, score) in old where score != 0 && s[address] == nil { s[address] = score }
        }
        scores[key] = s
    }
}

extension LeasePlanner {
    /// A sending IP that can take leases now: the IP, the node that owns it, its weight.
    public struct Candidate: Sendable, Equatable {
        public var ip: AssignedIP
        public var node: String
        public var weight: Int
        public init(ip: AssignedIP, node: String, weight: Int) { self.ip = ip; self.node = node; self.weight = weight }
    }

    /// Assigns groups to sending IPs across nodes by smooth weighted round robin per
    /// (pool, provider), respecting node credits, a cap of leases in flight per IP, warm-up
    /// budgets and backoffs.
    /// - Parameters:
    ///   - groups: candidate groups, in priority order (oldest due first).
    ///   - candidates: the leasable IPs of ready nodes.
    ///   - credits: leases each node may still take; reduced as groups are assigned.
    ///   - inFlight: leases in flight per sending IP; increased as groups are assigned.
    ///   - perIPCap: the most leases in flight on one IP.
    ///   - bulkPerIPCap: the most leases in flight on one IP after which a bulk group may not
    ///     take another (issue 18: `perIPCap` less the transactional reserve); default `perIPCap`.
    ///   - budget: recipients each IP may still take today (warm-up); IPs absent are unlimited.
    ///     A group goes only to an IP whose budget covers all its recipients; budgets are reduced.
    ///   - spread: the rotation state, carried from round to round.
    ///   - provider: the provider a group's destination belongs to (the rotation key with the pool).
    ///   - allow: whether an IP may take a group now (e.g. no suspension for its provider); called
    ///     in preference order until one allows.
    /// - Returns: (group, chosen candidate) pairs, in group order.
    public static func spread(_ groups: [DeliveryGroup], candidates: [Candidate], credits: inout [String: Int],
                              inFlight: inout [String: Int], perIPCap: Int, bulkPerIPCap: Int? = nil, budget: inout [String: Int], spread: inout SpreadState,
                              provider: (DeliveryGroup) -> String,
                              allow: (AssignedIP, DeliveryGroup) -> Bool) -> [(DeliveryGroup, Candidate)] {
        var out: [(DeliveryGroup, Candidate)] = []
        let byAddress = Dictionary(candidates.map { ($0.ip.address, $0) }, uniquingKeysWith: { a, _ in a })
        for g in groups {
            let need = g.recipients.count
            let cap = g.priority == .bulk ? min(perIPCap, bulkPerIPCap ?? perIPCap) : perIPCap
            let eligible = candidates.filter { c in
                c.ip.pool == g.pool && credits[c.node, default: 0] > 0 && inFlight[c.ip.address, default: 0] < cap
                    && (budget[c.ip.address].map { $0 >= need } ?? true)
            }
            guard !eligible.isEmpty else { continue }
            let key = g.pool + "|" + provider(g)
            var weights = eligible.map { (address: $0.ip.address, weight: $0.weight) }
            var refused = Set<String>()
            guard let chosenAddress = spread.preference(key, eligible: weights).first(where: { address in
                if allow(byAddress[address]!.ip, g) { return true }
                refused.insert(address)
                return false
            }), let chosen = byAddress[chosenAddress] else { continue }
            // An IP that may not take this provider now (a backoff) does not gain score meanwhile:
            // it would otherwise get a burst when the backoff ends.
            weights.removeAll { refused.contains($0.address) }
            spread.picked(chosenAddress, key: key, eligible: weights)
            credits[chosen.node, default: 0] -= 1
            inFlight[chosenAddress, default: 0] += 1
            if let b = budget[chosenAddress] { budget[chosenAddress] = b - need }
            out.append((g, chosen))
        }
        return out
    }
}
