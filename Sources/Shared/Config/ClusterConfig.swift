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

/// `cluster:` the cluster's name and the secret shared by the coordinator and nodes.
public struct ClusterIdentity: Sendable, Equatable {
    /// `name`: identifier (`[A-Za-z0-9._-]{1,64}`). Required.
    public var name: String
    /// The shared secret, at least 16 characters: `secret` inline, or the contents of
    /// `secret_file` (relative to the config's directory; trailing line breaks removed).
    /// Exactly one of the two is required.
    public var secret: String
    /// `tls`: TLS for the cluster protocol (`certificate`, `private_key`, `ca`). Default none:
    /// plaintext TCP (the HMAC challenge–response still authenticates both sides).
    public var tls: ClusterTLSSettings? = nil

    /// Creates an identity.
    public init(name: String, secret: String) { self.name = name; self.secret = secret }
}

/// `coordinator:` where the coordinator listens, its storage and cluster timers.
public struct CoordinatorSettings: Sendable, Equatable {
    /// `listen`: the cluster protocol address nodes connect to (numeric IP, `[v6]:port`). Required.
    public var listen: SocketAddress
    /// `admin_listen`: the admin HTTP API address. Required.
    public var adminListen: SocketAddress
    /// The bearer token of the admin API (printable ASCII, no spaces): `admin_token` inline, or
    /// the contents of `admin_token_file` (trailing line breaks removed). Exactly one of the two
    /// is required. Empty when `admin_token_file` could not be read at load time (see
    /// `adminTokenError`; use `requireAdminToken()` where the token is needed).
    public var adminToken: String
    /// `admin_token_file`: absolute path of the file holding the token, nil when inline. Node
    /// hosts need not have the file. Default nil.
    public var adminTokenFile: String? = nil
    /// Why `admin_token_file` could not be read at load time; nil when the token is resolved.
    public var adminTokenError: String? = nil
    /// `admin_tls`: HTTPS on `admin_listen` (`certificate`, `private_key`, and `ca` the CLI
    /// trusts). Default none: plain HTTP.
    public var adminTLS: AdminTLSSettings? = nil
    /// `data_dir`: absolute directory for the coordinator's database. Required.
    public var dataDir: String
    /// `lease_time`: seconds a node holds a message lease before it may be re-assigned. Default 300 (5m).
    public var leaseTime: TimeInterval
    /// `node_timeout`: seconds without a heartbeat after which a node is considered down. Default 10.
    public var nodeTimeout: TimeInterval
    /// `heartbeat_interval`: seconds between node heartbeats; must be below `node_timeout`. Default 2.
    public var heartbeatInterval: TimeInterval
    /// `auto_rebalance`: re-spread floating sending IPs when a node becomes active or leaves. Default false.
    public var autoRebalance: Bool = false

    /// Creates coordinator settings.
    public init(listen: SocketAddress, adminListen: SocketAddress, adminToken: String, dataDir: String,
                leaseTime: TimeInterval = 300, nodeTimeout: TimeInterval = 10, heartbeatInterval: TimeInterval = 2) {
        self.listen = listen; self.adminListen = adminListen; self.adminToken = adminToken; self.dataDir = dataDir
        self.leaseTime = leaseTime; self.nodeTimeout = nodeTimeout; self.heartbeatInterval = heartbeatInterval
    }
}

/// `smtp:` the inbound SMTP listener every node runs.
public struct SMTPSettings: Sendable, Equatable {
    /// `listen`: addresses to accept SMTP on (a list, or one address); at least one. Required.
    public var listen: [SocketAddress]
    /// `hostname`: the name used in the greeting and `Received:` headers. Required.
    public var hostname: String
    /// `relay_networks`: client networks allowed to relay (CIDRs). Default `[127.0.0.0/8, ::1/128]`.
    public var relayNetworks: [IPNetwork]
    /// `max_message_size`: largest accepted message in octets (1 KiB … 1 GiB). Default 25 MiB.
    public var maxMessageSize: Int
    /// `max_recipients`: most RCPT TO per message (≥ 1). Default 1000.
    public var maxRecipients: Int
    /// `tls`: `{ certificate, private_key }` PEM paths for STARTTLS (RFC 3207); nil: not offered. Default nil.
    public var tls: SMTPTLSSettings? = nil
    /// `require_tls`: refuse MAIL with `530 5.7.0` until STARTTLS (needs `tls`). Default false.
    public var requireTLS = false
    /// `users`: `[{ name, password_hash }]` accounts for AUTH PLAIN/LOGIN (RFC 4954); AUTH is offered
    /// only over TLS unless `auth_allow_plaintext_loopback`. Authenticated clients may relay. Default none.
    public var users: [SMTPUser] = []
    /// `auth_allow_plaintext_loopback`: also offer AUTH without TLS to clients on 127.0.0.0/8 or ::1
    /// (local apps; never off-host). Default false.
    public var authAllowPlaintextLoopback = false
    /// `max_connections`: most simultaneous SMTP sessions; more get `421 4.7.0`. Default 1000.
    public var maxConnections = 1000
    /// `max_connections_per_client`: most simultaneous sessions from one client address; more get
    /// `421 4.7.0`. Default 50.
    public var maxConnectionsPerClient = 50
    /// `command_timeout`: seconds a client may take to send one complete command line, counted
    /// from the previous reply (RFC 5321 §4.5.3.2.7); then `421 4.4.2`. Default 300 (5m).
    public var commandTimeout: TimeInterval = 300
    /// `data_timeout`: seconds without progress allowed while reading DATA or BDAT content (a
    /// deadline extended by received octets at 500 octets/s, capped at this); then `421 4.4.2`. Default 300 (5m).
    public var dataTimeout: TimeInterval = 300
    /// `auth_failure_limit`: failed AUTH attempts per client address within `auth_failure_window`
    /// before further attempts get `454 4.7.0` without a check. Default 10.
    public var authFailureLimit = 10
    /// `auth_failure_window`: seconds failed AUTH attempts are remembered. Default 900 (15m).
    public var authFailureWindow: TimeInterval = 900
    /// `queue_min_free`: free space the queue's file system keeps (Postfix's `queue_minfree`); below
    /// it MAIL gets `452 4.3.1` while delivery and result recording go on in the headroom. A size
    /// (`512MiB`), a share of the file system (`5%`), or `0` to disable. Default: 1 GiB or 5 %,
    /// whichever is smaller.
    public var queueMinFree: QueueMinFree = .default
    /// `max_content_memory`: octets of message content all sessions together may hold in memory
    /// while receiving it (DATA or BDAT). A message whose content would go past it is read to its
    /// end and refused with `452 4.3.1` (the client retries later), and MAIL gets `452 4.3.1`
    /// while less than its declared `SIZE` (or 1 MiB) is left, so many large transactions held
    /// open cannot exhaust the coordinator's memory. Nil (the default): 128 MiB, or
    /// 2 × `max_message_size` when that is larger (see `contentMemoryLimit`).
    public var maxContentMemory: Int? = nil

    /// The content memory limit in force, in octets: `max_content_memory`, or by default the
    /// larger of 128 MiB and 2 × `max_message_size` (one message of the largest size always fits).
    public var contentMemoryLimit: Int { maxContentMemory ?? max(128 << 20, 2 * maxMessageSize) }
    /// `postmaster`: the operator mailbox that `postmaster` and `postmaster@<hostname>` are delivered to,
    /// accepted from any client (RFC 5321 §4.5.1). Default none: clients that may not relay get
    /// `550 5.3.5` for postmaster, relaying clients relay it as `postmaster@<hostname>`.
    public var postmaster: Mailbox? = nil
    /// `postmaster_rate_limit`: postmaster recipients accepted per client address that may not relay
    /// within `postmaster_rate_window`; more get `452 4.7.1`. Default 10.
    public var postmasterRateLimit = 10
    /// `postmaster_rate_window`: the sliding window of `postmaster_rate_limit`, in seconds. Default 3600 (1h).
    public var postmasterRateWindow: TimeInterval = 3600

    /// The default `relay_networks`: loopback only.
    public static let defaultRelayNetworks: [IPNetwork] = {
        var nets: [IPNetwork] = []
        if let v4 = try? IPNetwork(parsing: "127.0.0.0/8") { nets.append(v4) }
        if let v6 = try? IPNetwork(parsing: "::1/128") { nets.append(v6) }
        return nets
    }()

    /// Creates SMTP settings.
    public init(listen: [SocketAddress], hostname: String, relayNetworks: [IPNetwork] = SMTPSettings.defaultRelayNetworks,
                maxMessageSize: Int = 25 * 1024 * 1024, maxRecipients: Int = 1000) {
        self.listen = listen; self.hostname = hostname; self.relayNetworks = relayNetworks
        self.maxMessageSize = maxMessageSize; self.maxRecipients = maxRecipients
    }

    /// Whether a client at `host` (numeric address) may relay.
    public func mayRelay(_ host: String) -> Bool { relayNetworks.contains { $0.contains(host) } }
}

/// One `nodes:` entry: a relay node.
public struct NodeSettings: Sendable, Equatable {
    /// `id`: unique node id (`[A-Za-z0-9._-]{1,64}`). Required.
    public var id: String
    /// `data_dir`: absolute directory for the node's spool; unique across the cluster. Required.
    public var dataDir: String
    /// `metrics_listen`: where the node serves `/metrics` (Prometheus text format); nil for none. Default none.
    public var metricsListen: SocketAddress? = nil
    /// `tls`: this node's own client certificate and key for the cluster link, overriding the
    /// `cluster.tls` pair (so each node host holds only its own key). Default none.
    public var tls: TLSPairSettings? = nil

    /// Creates node settings.
    public init(id: String, dataDir: String) { self.id = id; self.dataDir = dataDir }
}

/// One `pools:` entry: a named group of sending IPs.
public struct PoolSettings: Sendable, Equatable {
    /// `name`: unique pool name (`[A-Za-z0-9._-]{1,64}`). Required.
    public var name: String

    /// Creates pool settings.
    public init(name: String) { self.name = name }
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

/// `dns:` resolver settings for MX/A/AAAA lookups.
public struct DNSSettings: Sendable, Equatable {
    /// `nameservers`: resolvers as `ip[:port]` (port default 53). Default empty: use `/etc/resolv.conf`.
    public var nameservers: [SocketAddress]
    /// `timeout`: seconds to wait for one DNS answer. Default 5.
    public var timeout: TimeInterval

    /// Creates DNS settings.
    public init(nameservers: [SocketAddress] = [], timeout: TimeInterval = 5) {
        self.nameservers = nameservers; self.timeout = timeout
    }
}

/// `retry:` when temporarily failed deliveries are retried.
public struct RetrySettings: Sendable, Equatable {
    /// `schedule`: seconds to wait before each retry; after the last step the last
    /// interval repeats. Non-empty. Default `[60, 300, 900, 3600, 14400]` (1m, 5m, 15m, 1h, 4h).
    public var schedule: [TimeInterval]
    /// `max_age`: seconds after which a message that is still failing temporarily is bounced. Default 432000 (5d).
    public var maxAge: TimeInterval

    /// The default schedule: 1m, 5m, 15m, 1h, 4h.
    public static let defaultSchedule: [TimeInterval] = [60, 300, 900, 3600, 14_400]

    /// Creates retry settings.
    public init(schedule: [TimeInterval] = RetrySettings.defaultSchedule, maxAge: TimeInterval = 5 * 86_400) {
        self.schedule = schedule; self.maxAge = maxAge
    }

    /// Seconds to wait after failed attempt `n` (1-based): attempt 1 → `schedule[0]`;
    /// beyond the schedule, the last interval. `n < 1` counts as 1; an empty schedule gives 60.
    public func delay(afterAttempt n: Int) -> TimeInterval {
        guard let last = schedule.last else { return 60 }
        let index = max(0, n - 1)
        return index < schedule.count ? schedule[index] : last
    }
}

/// `delivery:` outbound SMTP settings (all optional).
public struct DeliverySettings: Sendable, Equatable {
    /// `connections_per_ip`: most simultaneous outbound connections per sending IP. Default 8.
    public var connectionsPerIP: Int
    /// `port`: TCP port used for MX hosts. Default 25 (tests point it elsewhere).
    public var port: UInt16
    /// `connect_timeout`: seconds to wait for the TCP connection and greeting. Default 30.
    public var connectTimeout: TimeInterval
    /// `command_timeout`: seconds to wait for a reply to each SMTP command. Default 300 (5m).
    public var commandTimeout: TimeInterval
    /// `data_timeout`: seconds to wait for the reply to the end of DATA. Default 600 (10m).
    public var dataTimeout: TimeInterval
    /// `tls`: outbound STARTTLS policy. Default opportunistic.
    public var tls: OutboundTLSMode = .opportunistic
    /// `timeouts`: per-step timeouts (the flat `*_timeout` keys above set the matching ones). Default RFC 5321 values.
    public var timeouts = DeliveryTimeouts()
    /// `idle_timeout` (or `timeouts.idle`): seconds an unused outbound connection stays open for reuse. Default 30.
    public var idleTimeout: TimeInterval = 30
    /// `allow_loopback_mx`: accept MX hosts that resolve to loopback addresses (tests only; the node's
    /// own addresses are still refused). Default false: such mail fails as a loop (5.4.6).
    public var allowLoopbackMX = false

    /// Creates delivery settings.
    public init(connectionsPerIP: Int = 8, port: UInt16 = 25, connectTimeout: TimeInterval = 30,
                commandTimeout: TimeInterval = 300, dataTimeout: TimeInterval = 600) {
        self.connectionsPerIP = connectionsPerIP; self.port = port; self.connectTimeout = connectTimeout
        self.commandTimeout = commandTimeout; self.dataTimeout = dataTimeout
        // The flat timeouts set the matching per-step ones.
        timeouts = DeliveryTimeouts(connect: connectTimeout, greeting: commandTimeout, ehlo: commandTimeout, startTLS: commandTimeout,
                                    mail: commandTimeout, rcpt: commandTimeout, dataDone: dataTimeout)
    }
}
