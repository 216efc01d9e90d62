import Foundation
import SMTPCore

/// `priority:` how transactional mail keeps ahead of bulk mail (issue 18). All optional.
///
/// ```yaml
/// priority:
///   bulk_reserve: 1      # connections per (sending IP, provider) only transactional mail may use
/// pools:
///   - { name: newsletters, priority: bulk }
/// ```
public struct PrioritySettings: Sendable, Equatable {
    /// `bulk_reserve`: connection slots of every (sending IP, provider) pair — and delivery
    /// workers of every sending IP on its node, and their leases in flight at the coordinator —
    /// that bulk mail never takes, so a transactional message finds a free one under any bulk
    /// backlog. Clamped per pair to one less than its limit (a pair with `max_connections: 1`
    /// or `connections_per_ip: 1` keeps no reserve: bulk could not send at all). 0–1000.
    /// Default 1.
    public var bulkReserve: Int = 1

    /// The header field that sets a message's class (`X-Hato-Priority: bulk|transactional`);
    /// removed at submission, before the message is stored, so it is never sent.
    public static let headerField = "X-Hato-Priority"

    /// Settings with the defaults.
    public init(bulkReserve: Int = 1) { self.bulkReserve = bulkReserve }

    /// The reserve that applies to a limit of `slots` (connections, workers): `bulkReserve`,
    /// but at most `slots - 1`, never negative.
    /// - Parameter slots: the pair's or IP's limit (e.g. `max_connections`).
    /// - Returns: slots bulk mail may not take.
    public func reserve(of slots: Int) -> Int { max(0, min(bulkReserve, slots - 1)) }

    /// Slots of a limit of `slots` that mail of `priority` may take: all for transactional,
    /// `slots - reserve(of: slots)` for bulk.
    public func usable(_ slots: Int, by priority: MessagePriority) -> Int {
        priority == .bulk ? slots - reserve(of: slots) : slots
    }
}

extension ClusterConfigDecoder {
    /// Decodes `priority:`.
    func decodePriority(_ top: ConfigSection, into config: inout ClusterConfig) throws {
        guard let sec = try top.section("priority", allowed: ["bulk_reserve"]) else { return }
        var settings = PrioritySettings()
        if let v = try sec.get("bulk_reserve", { try ConfigValue.integer($0, in: 0...1000) }) { settings.bulkReserve = v }
        config.priority = settings
    }
}
