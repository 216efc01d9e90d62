import Foundation
import HatoIO
import SMTPCore

/// One `pools:` entry: a named group of sending IPs.
public struct PoolSettings: Sendable, Equatable {
    /// `name`: unique pool name (`[A-Za-z0-9._-]{1,64}`). Required.
    public var name: String
    /// `priority`: the class of the pool's mail, `transactional` or `bulk` (issue 18); a
    /// message's header or API field may lower it to bulk, never raise it. Default transactional.
    public var priority: MessagePriority

    /// Creates pool settings.
    public init(name: String, priority: MessagePriority = .transactional) { self.name = name; self.priority = priority }
}

/// One `ips:` entry: a local address outbound connections are bound to.
public struct SendingIPSettings: Sendable, Equatable {
    /// `address`: numeric IPv4 or IPv6 address, normalised (e.g. `2001:db8::1`); unique. Required.
    public var address: String
    /// `helo`: the host name sent in EHLO/HELO from this IP (lowercased). Required.
    public var helo: String
    /// `pool`: the pool this IP belongs to (must be listed in `pools`). Required.
    public var pool: String
    /// `nodes`: ids of the nodes that may send from this IP; empty means any node. Default empty.
    public var nodes: [String]
    /// `warmup`: the warm-up plan this IP follows; nil = warmed (no daily cap). Default nil.
    public var warmup: IPWarmup? = nil
    /// `weight`: this IP's share of its pool's mail relative to the pool's other IPs (1–1000),
    /// per mailbox provider, by smooth weighted round robin. Default 1 (an even spread).
    public var weight: Int = 1

    /// Creates sending-IP settings.
    public init(address: String, helo: String, pool: String, nodes: [String] = []) {
        self.address = address; self.helo = helo; self.pool = pool; self.nodes = nodes
    }

    /// Whether node `id` may send from this IP.
    public func isAllowed(onNode id: String) -> Bool { nodes.isEmpty || nodes.contains(id) }
}
