import Foundation
import HatoShared

/// Recipients of one message for one destination domain: the unit of a lease.
public struct DeliveryGroup: Sendable, Equatable {
    public var messageID: String
    public var domain: String
    public var pool: String
    public var reversePath: String
    public var recipients: [DueRecipient]
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
                groups[key] = DeliveryGroup(messageID: r.messageID, domain: r.domain, pool: r.pool, reversePath: r.reversePath, recipients: [])
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
