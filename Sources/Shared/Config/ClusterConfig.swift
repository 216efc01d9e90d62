import Foundation
import HatoIO
import SMTPCore

/// The whole cluster's configuration, loaded from `cluster.yml` and shared by the
/// coordinator and every node. Load with `ClusterConfig.load(path:)`; every value is
/// validated at load time (see `ConfigError`). Relative paths in the file are resolved
/// against the file's directory; the stored paths are absolute.
public struct ClusterConfig: Sendable, Equatable {
    /// Absolute path of the file the configuration was parsed from.
    public var sourcePath: String
    /// SHA-256 (hex) of the file's bytes as loaded (empty for text given to `parse`): tells
    /// whether two hosts read the same cluster.yml.
    public var sourceDigest = ""
    /// `cluster:` name and shared secret. Required.
    public var cluster: ClusterIdentity
    /// `coordinator:` addresses, admin token, storage and timers. Required.
    public var coordinator: CoordinatorSettings
    /// `smtp:` inbound listener settings. Required.
    public var smtp: SMTPSettings
    /// `nodes:` the relay nodes (at least one), in file order. Required.
    public var nodes: [NodeSettings]
    /// `pools:` named groups of sending IPs (at least one), in file order. Required.
    public var pools: [PoolSettings]
    /// `ips:` the sending IPs (at least one), in file order. Required.
    public var ips: [SendingIPSettings]
    /// `routing:` which pool mail uses. Required.
    public var routing: RoutingSettings
    /// `routes:` per-domain next hops overriding MX lookup, in file order. Default: none.
    public var routes: [RouteSettings]
    /// `dns:` resolver settings. Default: system resolvers, 5 s timeout.
    public var dns: DNSSettings
    /// `retry:` the retry schedule for temporary failures. Default: 1m, 5m, 15m, 1h, 4h; 5 days.
    public var retry: RetrySettings
    /// `delivery:` outbound SMTP settings. Default: see `DeliverySettings`.
    public var delivery: DeliverySettings
    /// `store:` where the coordinator keeps its queue. Default SQLite in `coordinator.data_dir`.
    public var store = StoreSettings()
    /// `coordinators:` several coordinators, each with its own addresses (empty for the single
    /// `coordinator:` form). With a list, `coordinator.listen`, `coordinator.admin_listen` and
    /// `smtp.listen` hold the first entry's until `selectingCoordinator` picks one.
    public var coordinators: [CoordinatorInstance] = []
    /// `dsn:` delivery status notifications. Default: see `DSNSettings`.
    public var dsn = DSNSettings()
    /// `suppression:` the hard-bounce suppression list. Default: see `SuppressionSettings`.
    public var suppression = SuppressionSettings()
    /// `webhooks:` where delivery events are POSTed. Default: none.
    public var webhooks: [WebhookSettings] = []
    /// `log:` the delivery log's rotation. Default: see `DeliveryLogSettings`.
    public var log = DeliveryLogSettings()
    /// `dkim:` DKIM signing keys per sender domain. Default: none (nothing is signed).
    public var dkim: [DKIMKeySettings] = []
    /// `shaping:` per (sending IP, provider) connection and rate limits. Default: see `ShapingSettings`.
    public var shaping = ShapingSettings()
    /// `warmup:` warm-up plans referenced by `ips[].warmup`. Default: none.
    public var warmup: [WarmupPlan] = []
    /// `backoff:` adaptive backoff rules. Default: the built-in rules.
    public var backoff = BackoffSettings()
    /// `reputation:` blocklist checks of the sending IPs (issue 18). Default none.
    public var reputation = ReputationSettings()
    /// `tenants:` cluster-wide tenant settings (issue 16). Default: see `TenantSettings`.
    public var tenants = TenantSettings()
    /// `priority`: transactional before bulk (issue 18).
    public var priority = PrioritySettings()
    /// `http_api:` the tenants' HTTP send API (issue 16). Default nil: no listener.
    public var httpAPI: HTTPAPISettings?

    /// Creates a configuration from parts (no validation; `load`/`parse` validate).
    public init(sourcePath: String, cluster: ClusterIdentity, coordinator: CoordinatorSettings, smtp: SMTPSettings,
                nodes: [NodeSettings], pools: [PoolSettings], ips: [SendingIPSettings], routing: RoutingSettings,
                routes: [RouteSettings] = [], dns: DNSSettings = DNSSettings(), retry: RetrySettings = RetrySettings(),
                delivery: DeliverySettings = DeliverySettings()) {
        self.sourcePath = sourcePath; self.cluster = cluster; self.coordinator = coordinator; self.smtp = smtp
        self.nodes = nodes; self.pools = pools; self.ips = ips; self.routing = routing
        self.routes = routes; self.dns = dns; self.retry = retry; self.delivery = delivery
    }

    /// The node with this id, or nil.
    public func node(id: String) -> NodeSettings? { nodes.first { $0.id == id } }

    /// The pool with this name, or nil.
    public func pool(named name: String) -> PoolSettings? { pools.first { $0.name == name } }

    /// The sending IPs of `pool`, in file order; with `node`, only those that node may use.
    public func sendingIPs(inPool pool: String, onNode node: String? = nil) -> [SendingIPSettings] {
        ips.filter { $0.pool == pool && (node.map($0.isAllowed(onNode:)) ?? true) }
    }

    /// The route for a recipient domain, or nil to use MX lookup. An exact-domain route
    /// wins over wildcards; among matching wildcards the longest (most specific) wins.
    /// Matching is case-insensitive and ignores a trailing dot.
    public func route(for domain: String) -> RouteSettings? {
        let d = DomainPattern.normalize(domain)
        if let exact = routes.first(where: { !$0.domain.isWildcard && $0.domain.pattern == d }) { return exact }
        var best: RouteSettings?
        for r in routes where r.domain.isWildcard && r.domain.matches(d) {
            if best.map({ r.domain.pattern.count > $0.domain.pattern.count }) ?? true { best = r }
        }
        return best
    }
}

extension ClusterConfig {
    /// The cluster addresses of every coordinator, in configuration order (one for the single form).
    public var coordinatorAddresses: [SocketAddress] {
        coordinators.isEmpty ? [coordinator.listen] : coordinators.map(\.listen)
    }

    /// This configuration as coordinator `id` runs it: its own cluster, admin and SMTP addresses.
    /// - Parameter id: a `coordinators[].id`; nil picks the only one (or the single form).
    /// - Returns: the configuration with `coordinator.listen`, `coordinator.admin_listen` and
    ///   `smtp.listen` taken from that entry.
    /// - Throws: `ConfigValueError` naming the known ids when `id` is unknown, or missing while
    ///   several coordinators are configured.
    public func selectingCoordinator(_ id: String?) throws -> ClusterConfig {
        guard !coordinators.isEmpty else {
            if let id { throw ConfigValueError("--id \(id): \(sourcePath) has no coordinators: list (one coordinator)") }
            return self
        }
        let known = coordinators.map(\.id).joined(separator: ", ")
        let chosen: CoordinatorInstance
        if let id {
            guard let c = coordinators.first(where: { $0.id == id }) else {
                throw ConfigValueError("--id \(id) is not in coordinators: of \(sourcePath) (known: \(known))")
            }
            chosen = c
        } else {
            guard coordinators.count == 1 else { throw ConfigValueError("several coordinators are configured: pass --id (one of \(known))") }
            chosen = coordinators[0]
        }
        var c = self
        c.coordinator.listen = chosen.listen
        c.coordinator.adminListen = chosen.adminListen
        c.smtp.listen = chosen.smtpListen
        return c
    }
}
