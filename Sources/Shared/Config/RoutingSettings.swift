import Foundation
import HatoIO
import SMTPCore

/// `routing:` pool selection.
public struct RoutingSettings: Sendable, Equatable {
    /// `default_pool`: the pool used when nothing else selects one (must exist and have IPs). Required.
    public var defaultPool: String
    /// `rules`: pool selection by authenticated user, sender domain or header; first match wins. Default none.
    public var rules: [RoutingRule] = []

    /// Creates routing settings.
    public init(defaultPool: String) { self.defaultPool = defaultPool }
}

/// One `routes:` entry: send mail for a domain to a fixed next hop instead of its MX hosts.
public struct RouteSettings: Sendable, Equatable {
    /// `domain`: the exact domain or `*.domain` wildcard. Required; unique.
    public var domain: DomainPattern
    /// `next_hop`: `host[:port]` (port default 25). Required.
    public var nextHop: NextHop
    /// `tls`: STARTTLS policy for this route, overriding `delivery.tls`. Default: nil (use `delivery.tls`).
    public var tls: OutboundTLSMode? = nil

    /// Creates a route.
    public init(domain: DomainPattern, nextHop: NextHop) { self.domain = domain; self.nextHop = nextHop }
}
