import Foundation

/// One changed configuration key and what applying it takes.
public struct ConfigChange: Sendable, Equatable, Codable {
    /// Processes whose restart a change waits for.
    public struct Restart: Sendable, Equatable, Codable {
        /// The coordinator.
        public var coordinator = false
        /// Every node.
        public var everyNode = false
        /// These nodes.
        public var nodes: [String] = []

        /// No restart.
        public static let none = Restart()
        /// The coordinator only.
        public static let coordinator = Restart(coordinator: true)
        /// Every node.
        public static let nodes = Restart(everyNode: true)
        /// The coordinator and every node.
        public static let all = Restart(coordinator: true, everyNode: true)
        /// One node.
        public static func node(_ id: String) -> Restart { Restart(nodes: [id]) }

        /// Whether no process needs a restart.
        public var isEmpty: Bool { !coordinator && !everyNode && nodes.isEmpty }
        /// Whether node `id` needs a restart.
        public func includes(node id: String) -> Bool { everyNode || nodes.contains(id) }
    }

    /// The dotted key, e.g. `routing.rules` or `nodes[0].tls`.
    public var key: String
    /// Whether (some of) it applies at once, without a restart.
    public var live: Bool
    /// Which processes it (or a part of it, see `note`) needs restarted.
    public var restart: Restart
    /// What part waits for a restart, when only a part does (e.g. `DSNs`).
    public var note: String?

    /// A change from its parts.
    public init(key: String, live: Bool, restart: Restart, note: String? = nil) {
        self.key = key; self.live = live; self.restart = restart; self.note = note
    }

    /// The key with its note, e.g. `routing.default_pool (DSNs)`.
    public var label: String { note.map { "\(key) (\($0))" } ?? key }
}

/// What a reload of cluster.yml changes, key by key, and the configuration each process runs
/// with afterwards: every key either applies live or is listed as needing a restart of the
/// coordinator or of a named node (never silently ignored).
///
/// Pure: the coordinator computes it from the configuration in force and the new file; each
/// node computes it again for itself when told the file changed (`config_changed`).
///
/// | applies live | needs a restart |
/// |---|---|
/// | `coordinator.lease_time`, `coordinator.auto_rebalance` | `cluster.*`, `coordinator.listen`, `smtp.max_message_size`, `delivery.connections_per_ip`: coordinator and every node |
/// | `smtp.relay_networks`, `max_recipients`, `auth_allow_plaintext_loopback`, `command_timeout`, `data_timeout` (next session) | `coordinator.admin_listen`, `admin_token(_file)`, `admin_tls`, `data_dir`, `node_timeout`, `heartbeat_interval`, `leadership_lease`, `message_retention`: coordinator |
/// | `nodes` added or removed, `pools`, `ips` (nodes re-announce what they can bind), `warmup`, `tenants` (read by `domain` commands), `reputation.hold_when_all_listed`, `require_fcrdns`, `fcrdns_interval`, `rules`, `rewarm`, `reputation.feedback_addresses` (the nodes' tracking field: every node) | `smtp.listen`, `hostname`, `tls`, `require_tls`, `users`, `max_connections(_per_client)`, `auth_failure_*`, `queue_min_free`, `max_content_memory`, `postmaster*`: coordinator |
/// | `routing.default_pool`, `routing.rules` (next submission) | `dsn`, `suppression`, `webhooks`, `log`, `http_api`, `reputation.dnsbl`, `reputation.check_interval`: coordinator |
/// | `retry` | `delivery` timeouts and `idle_timeout`: every node |
/// | `routes`, `dns`, `delivery.tls`, `delivery.port`, `delivery.allow_loopback_mx`, `dkim`, `shaping`, `backoff` (nodes rebuild those parts) | `nodes[].data_dir`, `metrics_listen`, `tls`: that node |
///
/// Two live keys also wait for a coordinator restart in part: `routing.default_pool` (DSNs the
/// coordinator queues), and the provider names and MX suffixes of `shaping.providers` (provider
/// labels in the coordinator's delivery log and metrics).
public struct ConfigReload: Sendable {
    /// The configuration in force before.
    public let old: ClusterConfig
    /// The file as loaded.
    public let new: ClusterConfig
    /// Every changed key, in file order of sections.
    public let changes: [ConfigChange]

    /// Compares the configuration in force with a newly loaded one.
    public init(from old: ClusterConfig, to new: ClusterConfig) {
        self.old = old
        self.new = new
        var c: [ConfigChange] = []
        func diff<T: Equatable>(_ key: String, _ a: T, _ b: T, live: Bool = false, restart: ConfigChange.Restart = .none, note: String? = nil) {
            if a != b { c.append(ConfigChange(key: key, live: live, restart: restart, note: note)) }
        }
        // cluster: every process authenticates (and encrypts) with it.
        diff("cluster.name", old.cluster.name, new.cluster.name, restart: .all)
        diff("cluster.secret", old.cluster.secret, new.cluster.secret, restart: .all)
        diff("cluster.tls", old.cluster.tls, new.cluster.tls, restart: .all)
        // coordinator
        let oc = old.coordinator, nc = new.coordinator
        diff("coordinator.listen", oc.listen, nc.listen, restart: .all)
        diff("coordinator.admin_listen", oc.adminListen, nc.adminListen, restart: .coordinator)
        diff(nc.adminTokenFile == nil ? "coordinator.admin_token" : "coordinator.admin_token_file",
             [oc.adminToken, oc.adminTokenFile ?? ""], [nc.adminToken, nc.adminTokenFile ?? ""], restart: .coordinator)
        diff("coordinator.admin_tls", oc.adminTLS, nc.adminTLS, restart: .coordinator)
        diff("coordinator.data_dir", oc.dataDir, nc.dataDir, restart: .coordinator)
        diff("coordinator.lease_time", oc.leaseTime, nc.leaseTime, live: true)
        diff("coordinator.node_timeout", oc.nodeTimeout, nc.nodeTimeout, restart: .coordinator)
        diff("coordinator.heartbeat_interval", oc.heartbeatInterval, nc.heartbeatInterval, restart: .coordinator)
        diff("coordinator.auto_rebalance", oc.autoRebalance, nc.autoRebalance, live: true)
        diff("coordinator.leadership_lease", oc.leadershipLease, nc.leadershipLease, restart: .coordinator)
        diff("coordinator.message_retention", oc.messageRetention, nc.messageRetention, restart: .coordinator)
        diff("coordinators", old.coordinators, new.coordinators, restart: .all)
        // smtp: session settings apply to the next session; listeners, TLS, users, limits and
        // the guards are built at start.
        let os = old.smtp, ns = new.smtp
        diff("smtp.listen", os.listen, ns.listen, restart: .coordinator)
        diff("smtp.hostname", os.hostname, ns.hostname, restart: .coordinator)
        diff("smtp.relay_networks", os.relayNetworks, ns.relayNetworks, live: true)
        diff("smtp.max_message_size", os.maxMessageSize, ns.maxMessageSize, restart: .all)
        diff("smtp.max_recipients", os.maxRecipients, ns.maxRecipients, live: true)
        diff("smtp.tls", os.tls, ns.tls, restart: .coordinator)
        diff("smtp.require_tls", os.requireTLS, ns.requireTLS, restart: .coordinator)
        diff("smtp.users", os.users, ns.users, restart: .coordinator)
        diff("smtp.auth_allow_plaintext_loopback", os.authAllowPlaintextLoopback, ns.authAllowPlaintextLoopback, live: true)
        diff("smtp.max_connections", os.maxConnections, ns.maxConnections, restart: .coordinator)
        diff("smtp.max_connections_per_client", os.maxConnectionsPerClient, ns.maxConnectionsPerClient, restart: .coordinator)
        diff("smtp.command_timeout", os.commandTimeout, ns.commandTimeout, live: true)
        diff("smtp.data_timeout", os.dataTimeout, ns.dataTimeout, live: true)
        diff("smtp.auth_failure_limit", os.authFailureLimit, ns.authFailureLimit, restart: .coordinator)
        diff("smtp.auth_failure_window", os.authFailureWindow, ns.authFailureWindow, restart: .coordinator)
        diff("smtp.queue_min_free", os.queueMinFree, ns.queueMinFree, restart: .coordinator)
        diff("smtp.max_content_memory", os.maxContentMemory, ns.maxContentMemory, restart: .coordinator)
        diff("smtp.postmaster", os.postmaster, ns.postmaster, restart: .coordinator)
        diff("smtp.postmaster_rate_limit", os.postmasterRateLimit, ns.postmasterRateLimit, restart: .coordinator)
        diff("smtp.postmaster_rate_window", os.postmasterRateWindow, ns.postmasterRateWindow, restart: .coordinator)
        // http_api: the listener, its TLS and limits are built at start.
        diff("http_api", old.httpAPI, new.httpAPI, restart: .coordinator)
        // nodes: membership is live; a node's own settings need that node restarted.
        diff("nodes", old.nodes.map(\.id), new.nodes.map(\.id), live: true)
        for (i, n) in new.nodes.enumerated() {
            guard let o = old.node(id: n.id) else { continue }
            diff("nodes[\(i)].data_dir", o.dataDir, n.dataDir, restart: .node(n.id))
            diff("nodes[\(i)].metrics_listen", o.metricsListen, n.metricsListen, restart: .node(n.id))
            diff("nodes[\(i)].tls", o.tls, n.tls, restart: .node(n.id))
        }
        diff("pools", old.pools, new.pools, live: true)
        diff("ips", old.ips, new.ips, live: true)
        diff("routing.default_pool", old.routing.defaultPool, new.routing.defaultPool, live: true, restart: .coordinator, note: "DSNs")
        diff("routing.rules", old.routing.rules, new.routing.rules, live: true)
        diff("routes", old.routes, new.routes, live: true)
        diff("dns", old.dns, new.dns, live: true)
        diff("retry", old.retry, new.retry, live: true)
        // delivery: the policy, port and loopback rule are read per lease; the worker count and
        // the client's timeouts are fixed at start.
        let od = old.delivery, nd = new.delivery
        diff("delivery.connections_per_ip", od.connectionsPerIP, nd.connectionsPerIP, restart: .all)
        // The reserve splits the workers (fixed at start) and the lease cap: both sides at once.
        diff("priority", old.priority, new.priority, restart: .all)
        diff("delivery.port", od.port, nd.port, live: true)
        diff("delivery.tls", od.tls, nd.tls, live: true)
        diff("delivery.allow_loopback_mx", od.allowLoopbackMX, nd.allowLoopbackMX, live: true)
        diff("delivery.mta_sts", od.mtaSTS, nd.mtaSTS, live: true)
        diff("delivery.dane", od.daneEnabled, nd.daneEnabled, live: true)
        diff("delivery.timeouts", [od.connectTimeout, od.commandTimeout, od.dataTimeout], [nd.connectTimeout, nd.commandTimeout, nd.dataTimeout],
             restart: .nodes)
        diff("delivery.timeouts", od.timeouts, nd.timeouts, restart: .nodes)
        diff("delivery.idle_timeout", od.idleTimeout, nd.idleTimeout, restart: .nodes)
        diff("dsn", old.dsn, new.dsn, restart: .coordinator)
        diff("suppression", old.suppression, new.suppression, restart: .coordinator)
        diff("webhooks", old.webhooks, new.webhooks, restart: .coordinator)
        diff("log", old.log, new.log, restart: .coordinator)
        diff("store", old.store, new.store, restart: .coordinator)
        diff("dkim", old.dkim, new.dkim, live: true)
        let labels = { (s: ShapingSettings) in s.providers.map { [$0.name] + $0.mxSuffixes } }
        if old.shaping != new.shaping {
            let relabelled = labels(old.shaping) != labels(new.shaping)
            c.append(ConfigChange(key: "shaping", live: true, restart: relabelled ? .coordinator : .none,
                                  note: relabelled ? "provider labels in the delivery log and metrics" : nil))
        }
        diff("warmup", old.warmup, new.warmup, live: true)
        diff("backoff", old.backoff, new.backoff, live: true)
        // Read by the scheduler at each result and each round.
        diff("reputation.rules", old.reputation.rules, new.reputation.rules, live: true)
        // The blocklist checker reads its zones and interval once, at start.
        diff("reputation.dnsbl", old.reputation.dnsblZones, new.reputation.dnsblZones, restart: .coordinator)
        diff("reputation.check_interval", old.reputation.checkInterval, new.reputation.checkInterval, restart: .coordinator)
        // The scheduler (holds) and the FCrDNS checker follow the configuration in force.
        diff("reputation.hold_when_all_listed", old.reputation.holdWhenAllListed, new.reputation.holdWhenAllListed, live: true)
        diff("reputation.require_fcrdns", old.reputation.requireFCrDNS, new.reputation.requireFCrDNS, live: true)
        diff("reputation.fcrdns_interval", old.reputation.fcrdnsInterval, new.reputation.fcrdnsInterval, live: true)
        diff("reputation.rewarm", old.reputation.rewarm, new.reputation.rewarm, live: true)
        // Read by `domain add`/`domain check` each time they run.
        diff("tenants", old.tenants, new.tenants, live: true)
        // The SMTP listener takes reports at the new addresses from the next session on; the
        // nodes add (or stop adding) the X-Hato-Recipient field only once restarted.
        if old.reputation.feedbackAddresses != new.reputation.feedbackAddresses {
            let nodes = old.reputation.acceptsFeedback != new.reputation.acceptsFeedback
            c.append(ConfigChange(key: "reputation.feedback_addresses", live: true, restart: nodes ? .nodes : .none,
                                  note: nodes ? "the nodes' X-Hato-Recipient field" : nil))
        }
        // The same key may be listed twice (flat and per-step timeouts): keep the first.
        var seen = Set<String>()
        changes = c.filter { seen.insert($0.key).inserted }
    }

    /// Keys that applied at once.
    public var liveKeys: [String] { changes.filter(\.live).map(\.key) }

    /// The keys that need node `id` restarted.
    public func restartKeys(forNode id: String) -> [String] { changes.filter { $0.restart.includes(node: id) }.map(\.label) }

    /// The keys that need the coordinator restarted.
    public var coordinatorRestartKeys: [String] { changes.filter(\.restart.coordinator).map(\.label) }

    /// `needs restart of coordinator: key, …`, `needs restart of every node: key, …` and
    /// `needs restart of node X: key, …` lines: the coordinator, every node, then each node of
    /// the new configuration with keys of its own.
    public var restartRequired: [String] {
        var out: [String] = []
        if !coordinatorRestartKeys.isEmpty { out.append("needs restart of coordinator: " + coordinatorRestartKeys.joined(separator: ", ")) }
        let every = changes.filter(\.restart.everyNode).map(\.label)
        if !every.isEmpty { out.append("needs restart of every node: " + every.joined(separator: ", ")) }
        for id in new.nodes.map(\.id) {
            let keys = changes.filter { !$0.restart.everyNode && $0.restart.nodes.contains(id) }.map(\.label)
            if !keys.isEmpty { out.append("needs restart of node \(id): " + keys.joined(separator: ", ")) }
        }
        return out
    }

    /// The configuration the coordinator runs with after the reload: the new file, but every
    /// key that waits for a coordinator restart still at its value in force.
    public var coordinatorConfig: ClusterConfig {
        var c = new
        c.cluster = old.cluster
        let keep = old.coordinator
        c.coordinator.listen = keep.listen
        c.coordinator.adminListen = keep.adminListen
        c.coordinator.adminToken = keep.adminToken
        c.coordinator.adminTokenFile = keep.adminTokenFile
        c.coordinator.adminTokenError = keep.adminTokenError
        c.coordinator.adminTLS = keep.adminTLS
        c.coordinator.dataDir = keep.dataDir
        c.coordinator.nodeTimeout = keep.nodeTimeout
        c.coordinator.heartbeatInterval = keep.heartbeatInterval
        c.coordinator.leadershipLease = keep.leadershipLease
        c.coordinator.messageRetention = keep.messageRetention
        var smtp = old.smtp
        smtp.relayNetworks = new.smtp.relayNetworks
        smtp.maxRecipients = new.smtp.maxRecipients
        smtp.authAllowPlaintextLoopback = new.smtp.authAllowPlaintextLoopback
        smtp.commandTimeout = new.smtp.commandTimeout
        smtp.dataTimeout = new.smtp.dataTimeout
        c.smtp = smtp
        c.httpAPI = old.httpAPI
        c.delivery.connectionsPerIP = old.delivery.connectionsPerIP
        c.priority = old.priority
        c.dsn = old.dsn
        c.store = old.store
        c.suppression = old.suppression
        c.webhooks = old.webhooks
        c.log = old.log
        return c
    }

    /// The configuration node `id` runs with after the reload: the new file, but what waits for
    /// that node's restart (its cluster link, worker count, client timeouts, its own node
    /// settings) still at the values in force.
    public func nodeConfig(_ id: String) -> ClusterConfig {
        var c = new
        c.cluster = old.cluster
        c.coordinator = old.coordinator
        c.smtp = old.smtp
        c.delivery.connectionsPerIP = old.delivery.connectionsPerIP
        c.priority = old.priority
        c.delivery.connectTimeout = old.delivery.connectTimeout
        c.delivery.commandTimeout = old.delivery.commandTimeout
        c.delivery.dataTimeout = old.delivery.dataTimeout
        c.delivery.timeouts = old.delivery.timeouts
        c.delivery.idleTimeout = old.delivery.idleTimeout
        if let mine = old.node(id: id), let i = c.nodes.firstIndex(where: { $0.id == id }) { c.nodes[i] = mine }
        c.dsn = old.dsn
        c.suppression = old.suppression
        c.webhooks = old.webhooks
        c.log = old.log
        return c
    }
}

/// A reload refused because the new file would break a process: the errors of its check
/// (`ConfigCheck`), each naming the key and the file. Nothing was changed.
public struct ConfigReloadRefused: Error, Sendable, Equatable, CustomStringConvertible {
    /// The configuration file.
    public var file: String
    /// The check's errors.
    public var errors: [ConfigCheckReport.Item]

    /// A refusal from the file and its check's errors.
    public init(file: String, errors: [ConfigCheckReport.Item]) { self.file = file; self.errors = errors }

    /// `reload refused (<file>): key: detail; …; the running configuration is unchanged`.
    public var description: String {
        "reload refused (\(file)): " + errors.map { "\($0.key): \($0.detail)" }.joined(separator: "; ") + "; the running configuration is unchanged"
    }
}
