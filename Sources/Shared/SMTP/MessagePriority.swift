import Foundation

/// A message's priority class (issue 18): `transactional` mail (password resets, receipts) is
/// leased before `bulk` mail (newsletters) for the same sending IPs, and bulk never takes the
/// last connection slots of a (sending IP, provider) pair.
///
/// Sources, combined by `resolved(_:)`: the pool (`pools: - {name, priority}`), the tenant
/// (`tenant create/set --priority`), and per message the `X-Hato-Priority` header or the HTTP
/// send API's `priority` field. The lowest class named wins: a request may lower its mail to
/// bulk, but never raise mail that its pool or tenant marks bulk (as PowerMTA/KumoMTA
/// operators set the class by virtual MTA/pool and tenant, not by what the sender asks).
public enum MessagePriority: String, Sendable, Equatable, Hashable, Codable, CaseIterable, Comparable {
    /// Leased first; may use the reserved connection slots. The default (the behaviour before priorities).
    case transactional
    /// Leased after every due transactional recipient of the same IPs; never uses the reserve.
    case bulk

    /// The order in which due recipients are leased: 0 for transactional, 1 for bulk.
    public var rank: Int { self == .transactional ? 0 : 1 }

    /// `transactional > bulk`: a priority is "less" when it is leased later.
    public static func < (a: MessagePriority, b: MessagePriority) -> Bool { a.rank > b.rank }

    /// Parses `transactional` or `bulk` (case-insensitive, trimmed); nil for anything else.
    public init?(parsing text: some StringProtocol) {
        switch text.trimmingCharacters(in: .whitespaces).lowercased() {
        case "transactional": self = .transactional
        case "bulk": self = .bulk
        default: return nil
        }
    }

    /// The effective class of a message from the classes its sources name (nil: not set):
    /// the lowest one, `transactional` when none is set.
    /// - Parameter sources: e.g. `[pool, tenant, header]`.
    /// - Returns: `bulk` when any source says bulk, else `transactional`.
    public static func resolved(_ sources: [MessagePriority?]) -> MessagePriority {
        sources.compactMap { $0 }.min() ?? .transactional
    }
}
