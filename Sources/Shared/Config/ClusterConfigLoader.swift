#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import HatoCrypto
import HatoIO
import SMTPCore

extension ClusterConfig {
    /// Reads and validates a cluster configuration file.
    /// - Parameter path: the file; relative paths are taken from the current directory.
    ///   Relative paths inside the file are resolved against the file's directory.
    /// - Throws: `ConfigError` when the file cannot be read (`cluster.yml: cannot read: No such
    ///   file or directory`), is not UTF-8, is not valid YAML-subset, or fails validation.
    public static func load(path: String) throws -> ClusterConfig {
        let bytes: [UInt8]
        do {
            bytes = try ConfigFiles.readFile(path)
        } catch {
            throw ConfigError(file: path, line: nil, key: nil, message: "cannot read: \(error.message)")
        }
        let text = String(decoding: bytes, as: UTF8.self)
        guard text.utf8.elementsEqual(bytes) else {
            throw ConfigError(file: path, line: nil, key: nil, message: "not valid UTF-8")
        }
        var config = try parse(text, path: path)
        config.sourceDigest = Hex.encode(Crypto.sha256(bytes))
        return config
    }

    /// Parses and validates configuration text.
    /// - Parameters:
    ///   - text: the YAML text.
    ///   - path: the file name used in errors and as the base for relative paths
    ///     (`data_dir`, `secret_file` are resolved against its directory). The file itself is
    ///     not read, but a `secret_file` is.
    /// - Throws: `ConfigError` with file, line and key path of the first problem.
    public static func parse(_ text: String, path: String) throws -> ClusterConfig {
        let root: YAMLNode
        do {
            root = try YAML.parse(text, file: path)
        } catch {
            throw ConfigError(file: path, line: error.line, key: nil, message: error.message)
        }
        let source = ConfigFiles.absolute(path, relativeTo: FileManager.default.currentDirectoryPath)
        let decoder = ClusterConfigDecoder(file: path, sourcePath: source, baseDirectory: ConfigFiles.directory(of: source))
        return try decoder.decode(root)
    }
}

// MARK: - Decoding

/// Builds a `ClusterConfig` from the YAML tree, validating as it goes.
struct ClusterConfigDecoder {
    let file: String
    let sourcePath: String
    let baseDirectory: String

    func decode(_ root: YAMLNode) throws -> ClusterConfig {
        if case .scalar = root, !root.isNull {
            throw ConfigError(file: file, line: root.line, key: nil, message: "expected a map of sections (cluster, coordinator, …) at the top level")
        }
        let top = try ConfigSection(root.isNull ? .map([], line: 1, column: 1) : root, file: file, path: "", line: nil,
                                    allowed: ["cluster", "coordinator", "smtp", "nodes", "pools", "ips", "routing",
                                              "routes", "dns", "retry", "delivery", "dsn", "suppression", "webhooks", "log",
                                              "dkim", "shaping", "warmup", "backoff", "reputation", "store", "coordinators", "http_api", "tenants", "priority"])
        let cluster = try decodeCluster(top)
        let instances = try decodeCoordinatorList(top)
        let coordinator = try decodeCoordinator(top, instances: instances)
        let smtp = try decodeSMTP(top, coordinator: coordinator, instances: instances)
        let nodes = try decodeNodes(top, coordinator: coordinator, clusterTLS: cluster.tls != nil)
        let pools = try decodePools(top)
        let ips = try decodeIPs(top, nodes: nodes, pools: pools)
        let routing = try decodeRouting(top, pools: pools, ips: ips)
        var config = ClusterConfig(sourcePath: sourcePath, cluster: cluster, coordinator: coordinator, smtp: smtp,
                                   nodes: nodes, pools: pools, ips: ips, routing: routing,
                                   routes: try decodeRoutes(top), dns: try decodeDNS(top),
                                   retry: try decodeRetry(top), delivery: try decodeDelivery(top))
        try decodeReporting(top, into: &config)  // ReportingSettings.swift
        try decodeOutbound(top, into: &config)  // OutboundSettings.swift
        try decodeDeliverability(top, into: &config)  // DeliverabilitySettings.swift
        try decodeReputation(top, into: &config)  // ReputationSettings.swift
        try decodeStore(top, into: &config)  // StoreSettings.swift
        try decodeTenants(top, into: &config)  // TenantSettings.swift
        try decodePriority(top, into: &config)  // PrioritySettings.swift
        config.coordinators = instances
        try decodeHTTPAPI(top, into: &config)  // HTTPAPISettings.swift
        if instances.count > 1 && config.store.kind != .postgresql {
            throw fail(top.entryLine("coordinators"), "coordinators",
                       "\(instances.count) coordinators share one queue only on PostgreSQL: set store: { kind: postgresql, url: … }")
        }
        return config
    }

    private func fail(_ line: Int?, _ key: String?, _ message: String) -> ConfigError {
        ConfigError(file: file, line: line, key: key, message: message)
    }

    private func decodeCluster(_ top: ConfigSection) throws -> ClusterIdentity {
        let sec = try top.requiredSection("cluster", allowed: ["name", "secret", "secret_file", "tls"])
        let name = try sec.require("name", ConfigValue.identifier)
        let inline = try sec.scalar("secret")
        let fromFile = try sec.scalar("secret_file")
        let secret: String
        let secretAt: ConfigScalar
        switch (inline, fromFile) {
        case (nil, nil):
            throw fail(sec.line, sec.keyPath("secret"), "required key is missing (set secret, or secret_file in production)")
        case (.some, .some(let f)):
            throw fail(f.line, f.path, "use either secret or secret_file, not both")
        case (.some(let s), nil):
            secret = s.text; secretAt = s
        case (nil, .some(let f)):
            guard !f.text.isEmpty else { throw fail(f.line, f.path, "must not be empty") }
            let path = ConfigFiles.absolute(f.text, relativeTo: baseDirectory)
            let bytes: [UInt8]
            do {
                bytes = try ConfigFiles.readFile(path)
            } catch {
                throw fail(f.line, f.path, "cannot read \(path): \(error.message)")
            }
            var text = String(decoding: bytes, as: UTF8.self)
            guard text.utf8.elementsEqual(bytes) else { throw fail(f.line, f.path, "\(path) is not valid UTF-8") }
            while let last = text.unicodeScalars.last, last == "\n" || last == "\r" { text.unicodeScalars.removeLast() }
            secret = text; secretAt = f
        }
        guard secret.count >= 16 else {
            throw fail(secretAt.line, secretAt.path, "the secret must be at least 16 characters (found \(secret.count))")
        }
        var identity = ClusterIdentity(name: name, secret: secret)
        identity.tls = try decodeClusterTLS(sec)  // SecuritySettings.swift
        return identity
    }

    /// `coordinators:` the list form (several coordinators); empty when absent.
    private func decodeCoordinatorList(_ top: ConfigSection) throws -> [CoordinatorInstance] {
        guard let items = try top.list("coordinators") else { return [] }
        guard !items.isEmpty else { throw fail(top.entryLine("coordinators"), "coordinators", "must list at least one coordinator") }
        var out: [CoordinatorInstance] = []
        var used: [SocketAddress: String] = [:]
        for item in items {
            let sec = try item.section(allowed: ["id", "listen", "admin_listen", "smtp_listen"])
            let id = try sec.require("id", ConfigValue.identifier)
            if out.contains(where: { $0.id == id }), let at = try sec.scalar("id") {
                throw fail(at.line, at.path, "duplicate coordinator id \"\(id)\"")
            }
            func address(_ key: String) throws -> SocketAddress {
                try sec.require(key) { try ConfigValue.socketAddress($0, defaultPort: nil, allowZeroPort: true) }
            }
            let listen = try address("listen"), admin = try address("admin_listen")
            if items.count > 1 {
                // The others reach these: nodes (listen) and standbys forwarding (admin_listen).
                for (key, a) in [("listen", listen), ("admin_listen", admin)] where a.host == "0.0.0.0" || a.host == "::" || a.port == 0 {
                    let at = try sec.scalar(key)
                    throw fail(at?.line ?? sec.entryLine(key), sec.keyPath(key),
                               "\(a): with several coordinators, give the address the others reach this one at (not a wildcard host or port 0)")
                }
            }
            var smtp: [SocketAddress] = []
            for s in try sec.requireList("smtp_listen", allowScalar: true) {
                let scalar = try s.scalar()
                smtp.append(try scalar.convert { try ConfigValue.socketAddress($0, defaultPort: nil, allowZeroPort: true) })
            }
            guard !smtp.isEmpty else { throw fail(sec.entryLine("smtp_listen"), sec.keyPath("smtp_listen"), "must list at least one address") }
            for (key, a) in [("listen", listen), ("admin_listen", admin)] + smtp.map({ ("smtp_listen", $0) }) where a.port != 0 {
                if let other = used[a] {
                    let at = try sec.scalar(key)
                    throw fail(at?.line ?? sec.entryLine(key), sec.keyPath(key), "\(a) is already used by \(other)")
                }
                used[a] = "\(id).\(key)"
            }
            out.append(CoordinatorInstance(id: id, listen: listen, adminListen: admin, smtpListen: smtp))
        }
        return out
    }

    private func decodeCoordinator(_ top: ConfigSection, instances: [CoordinatorInstance]) throws -> CoordinatorSettings {
        let sec = try top.requiredSection("coordinator", allowed: ["listen", "admin_listen", "admin_token", "admin_token_file", "admin_tls",
                                                                   "data_dir", "lease_time", "node_timeout", "heartbeat_interval", "auto_rebalance",
                                                                   "leadership_lease", "message_retention"])
        if !instances.isEmpty {
            // With a coordinators: list, each one's addresses are given there only.
            for key in ["listen", "admin_listen"] {
                if let at = try sec.scalar(key) {
                    throw fail(at.line, at.path, "with a coordinators: list, give each coordinator's \(key) there (coordinators[].\(key))")
                }
            }
        }
        let listen = try instances.first?.listen
            ?? sec.require("listen") { try ConfigValue.socketAddress($0, defaultPort: nil, allowZeroPort: true) }
        let admin = try instances.first?.adminListen
            ?? sec.require("admin_listen") { try ConfigValue.socketAddress($0, defaultPort: nil, allowZeroPort: true) }
        if admin == listen && admin.port != 0, let at = try sec.scalar("admin_listen") {
            throw fail(at.line, at.path, "same address as coordinator.listen")
        }
        let token = try decodeAdminToken(sec)  // SecuritySettings.swift
        let dataDir = try sec.require("data_dir", resolvePath)
        var settings = CoordinatorSettings(listen: listen, adminListen: admin, adminToken: token.token, dataDir: dataDir)
        settings.adminTokenFile = token.file
        settings.adminTokenError = token.error
        settings.adminTLS = try decodeAdminTLS(sec)
        if let v = try sec.get("lease_time", { try ConfigValue.duration($0) }) { settings.leaseTime = v }
        if let v = try sec.get("node_timeout", { try ConfigValue.duration($0) }) { settings.nodeTimeout = v }
        if let v = try sec.get("leadership_lease", { try ConfigValue.duration($0) }) {
            if v < 3 {
                let at = try sec.scalar("leadership_lease")
                throw fail(at?.line ?? sec.line, at?.path ?? sec.keyPath("leadership_lease"), "must be at least 3s (renewed every third of it)")
            }
            settings.leadershipLease = v
        }
        if let v = try sec.get("message_retention", { try ConfigValue.duration($0) }) {
            if v < 86_400 {
                let at = try sec.scalar("message_retention")
                throw fail(at?.line ?? sec.line, at?.path ?? sec.keyPath("message_retention"),
                           "must be at least 1d (finished messages stay that long for `queue show`, the API's message status and matching complaints)")
            }
            settings.messageRetention = v
        }
        if let v = try sec.get("heartbeat_interval", { try ConfigValue.duration($0) }) { settings.heartbeatInterval = v }
        if let v = try sec.get("auto_rebalance", { try ConfigValue.bool($0) }) { settings.autoRebalance = v }
        if settings.heartbeatInterval >= settings.nodeTimeout {
            let at = try sec.scalar("heartbeat_interval") ?? sec.scalar("node_timeout")
            throw fail(at?.line ?? sec.line, at?.path ?? sec.keyPath("heartbeat_interval"),
                       "heartbeat_interval (\(seconds(settings.heartbeatInterval))) must be shorter than node_timeout (\(seconds(settings.nodeTimeout)))")
        }
        return settings
    }

    private func decodeSMTP(_ top: ConfigSection, coordinator: CoordinatorSettings, instances: [CoordinatorInstance]) throws -> SMTPSettings {
        let sec = try top.requiredSection("smtp", allowed: ["listen", "hostname", "relay_networks", "max_message_size", "max_recipients"]
                                          + SMTPSettings.submissionKeys)
        if let first = instances.first {
            if let at = sec.item("listen") {
                throw fail(at.node.line, sec.keyPath("listen"), "with a coordinators: list, give each coordinator's SMTP addresses there (coordinators[].smtp_listen)")
            }
            return try decodeSMTPRest(sec, listen: first.smtpListen)
        }
        let listenItems = try sec.requireList("listen", allowScalar: true)
        guard !listenItems.isEmpty else { throw fail(sec.entryLine("listen"), sec.keyPath("listen"), "must list at least one address") }
        var listen: [SocketAddress] = []
        for item in listenItems {
            let s = try item.scalar()
            let address = try s.convert { try ConfigValue.socketAddress($0, defaultPort: nil, allowZeroPort: true) }
            if address.port != 0 {
                if listen.contains(address) { throw fail(s.line, s.path, "\(address) is listed twice") }
                if address == coordinator.listen || address == coordinator.adminListen {
                    throw fail(s.line, s.path, "\(address) is already used by the coordinator")
                }
            }
            listen.append(address)
        }
        return try decodeSMTPRest(sec, listen: listen)
    }

    private func decodeSMTPRest(_ sec: ConfigSection, listen: [SocketAddress]) throws -> SMTPSettings {
        let hostname = try sec.require("hostname", ConfigValue.hostname)
        var settings = SMTPSettings(listen: listen, hostname: hostname)
        if let items = try sec.list("relay_networks") {
            settings.relayNetworks = try items.map { try $0.scalar().convert { try IPNetwork(parsing: $0) } }
        }
        if let v = try sec.get("max_message_size", { text -> Int in
            let size = try ConfigValue.size(text)
            guard size >= 1024 && size <= 1 << 30 else {
                throw ConfigValueError("\(text) is out of range (1KiB…1GiB)")
            }
            return size
        }) { settings.maxMessageSize = v }
        if let v = try sec.get("max_recipients", { try ConfigValue.integer($0, in: 1...1_000_000) }) { settings.maxRecipients = v }
        try decodeSubmission(sec, into: &settings)  // SubmissionSettings.swift
        return settings
    }

    private func decodeNodes(_ top: ConfigSection, coordinator: CoordinatorSettings, clusterTLS: Bool) throws -> [NodeSettings] {
        let items = try top.requireList("nodes")
        guard !items.isEmpty else { throw fail(top.entryLine("nodes"), "nodes", "must list at least one node") }
        var nodes: [NodeSettings] = []
        var ids: [String: Int] = [:]
        var dirs: [String: String] = [coordinator.dataDir: "coordinator.data_dir"]
        for item in items {
            let sec = try item.section(allowed: ["id", "data_dir", "metrics_listen", "tls"])
            let id = try sec.require("id", ConfigValue.identifier)
            if let first = ids[id], let at = try sec.scalar("id") {
                throw fail(at.line, at.path, "duplicate node id \"\(id)\" (first on line \(first))")
            }
            ids[id] = try sec.scalar("id")?.line ?? item.node.line
            let dir = try sec.require("data_dir", resolvePath)
            if let other = dirs[dir], let at = try sec.scalar("data_dir") {
                throw fail(at.line, at.path, "\(dir) is already used by \(other)")
            }
            dirs[dir] = sec.keyPath("data_dir")
            var node = NodeSettings(id: id, dataDir: dir)
            node.metricsListen = try decodeMetricsListen(sec)
            node.tls = try decodeNodeTLS(sec)
            if node.tls != nil && !clusterTLS {
                throw fail(sec.entryLine("tls"), sec.keyPath("tls"), "a node's tls pair needs cluster.tls (certificate, private_key, ca)")
            }
            nodes.append(node)
        }
        return nodes
    }

    private func decodePools(_ top: ConfigSection) throws -> [PoolSettings] {
        let items = try top.requireList("pools")
        guard !items.isEmpty else { throw fail(top.entryLine("pools"), "pools", "must list at least one pool") }
        var pools: [PoolSettings] = []
        var names: [String: Int] = [:]
        for item in items {
            let sec = try item.section(allowed: ["name", "priority"])
            let name = try sec.require("name", ConfigValue.identifier)
            let priority = try sec.get("priority") { text -> MessagePriority in
                guard let p = MessagePriority(parsing: text) else { throw ConfigValueError("must be transactional or bulk, not \"\(text.prefix(64))\"") }
                return p
            }
            let line = try sec.scalar("name")?.line ?? item.node.line
            if let first = names[name] {
                throw fail(line, sec.keyPath("name"), "duplicate pool name \"\(name)\" (first on line \(first))")
            }
            names[name] = line
            pools.append(PoolSettings(name: name, priority: priority ?? .transactional))
        }
        return pools
    }

    private func decodeIPs(_ top: ConfigSection, nodes: [NodeSettings], pools: [PoolSettings]) throws -> [SendingIPSettings] {
        let items = try top.requireList("ips")
        guard !items.isEmpty else { throw fail(top.entryLine("ips"), "ips", "must list at least one sending IP") }
        let poolNames = pools.map(\.name)
        let nodeIDs = nodes.map(\.id)
        var ips: [SendingIPSettings] = []
        var seen: [String: Int] = [:]
        for item in items {
            let sec = try item.section(allowed: ["address", "helo", "pool", "nodes", "warmup", "weight"])
            let address = try sec.require("address", ConfigValue.ipAddress)
            let addressLine = try sec.scalar("address")?.line ?? item.node.line
            if let first = seen[address] {
                throw fail(addressLine, sec.keyPath("address"), "duplicate sending IP \(address) (first on line \(first))")
            }
            seen[address] = addressLine
            let helo = try sec.require("helo", ConfigValue.hostname)
            let pool = try sec.require("pool") { name -> String in
                guard poolNames.contains(name) else {
                    throw ConfigValueError("unknown pool \"\(name)\" (known: \(poolNames.joined(separator: ", ")))")
                }
                return name
            }
            var allowed: [String] = []
            for n in try sec.list("nodes") ?? [] {
                let s = try n.scalar()
                guard nodeIDs.contains(s.text) else {
                    throw fail(s.line, s.path, "unknown node \"\(s.text)\" (known: \(nodeIDs.joined(separator: ", ")))")
                }
                if allowed.contains(s.text) { throw fail(s.line, s.path, "node \"\(s.text)\" is listed twice") }
                allowed.append(s.text)
            }
            var ip = SendingIPSettings(address: address, helo: helo, pool: pool, nodes: allowed)
            if let weight = try sec.get("weight", { try ConfigValue.integer($0, in: 1...1000) }) { ip.weight = weight }
            ips.append(ip)
        }
        return ips
    }

    private func decodeRouting(_ top: ConfigSection, pools: [PoolSettings], ips: [SendingIPSettings]) throws -> RoutingSettings {
        let sec = try top.requiredSection("routing", allowed: ["default_pool", "rules"])
        let poolNames = pools.map(\.name)
        let name = try sec.require("default_pool") { name -> String in
            guard poolNames.contains(name) else {
                throw ConfigValueError("unknown pool \"\(name)\" (known: \(poolNames.joined(separator: ", ")))")
            }
            guard ips.contains(where: { $0.pool == name }) else {
                throw ConfigValueError("pool \"\(name)\" has no sending IPs")
            }
            return name
        }
        return RoutingSettings(defaultPool: name)
    }

    private func decodeRoutes(_ top: ConfigSection) throws -> [RouteSettings] {
        var routes: [RouteSettings] = []
        var seen: [String: Int] = [:]
        for item in try top.list("routes") ?? [] {
            let sec = try item.section(allowed: ["domain", "next_hop", "tls"])
            let domain = try sec.require("domain") { try DomainPattern(parsing: $0) }
            let line = try sec.scalar("domain")?.line ?? item.node.line
            if let first = seen[domain.pattern] {
                throw fail(line, sec.keyPath("domain"), "duplicate route for \(domain.pattern) (first on line \(first))")
            }
            seen[domain.pattern] = line
            let hop = try sec.require("next_hop") { try ConfigValue.hostPort($0, defaultPort: 25) }
            var route = RouteSettings(domain: domain, nextHop: hop)
            route.tls = try sec.get("tls", Self.tlsMode)
            routes.append(route)
        }
        return routes
    }

    private func decodeDNS(_ top: ConfigSection) throws -> DNSSettings {
        guard let sec = try top.section("dns", allowed: ["nameservers", "timeout"]) else { return DNSSettings() }
        var settings = DNSSettings()
        if let items = try sec.list("nameservers") {
            settings.nameservers = try items.map { try $0.scalar().convert { try ConfigValue.socketAddress($0, defaultPort: 53) } }
        }
        if let v = try sec.get("timeout", { try ConfigValue.duration($0) }) { settings.timeout = v }
        return settings
    }

    private func decodeRetry(_ top: ConfigSection) throws -> RetrySettings {
        guard let sec = try top.section("retry", allowed: ["schedule", "max_age"]) else { return RetrySettings() }
        var settings = RetrySettings()
        if let items = try sec.list("schedule") {
            guard !items.isEmpty else { throw fail(sec.entryLine("schedule"), sec.keyPath("schedule"), "must not be empty") }
            settings.schedule = try items.map { try $0.scalar().convert { try ConfigValue.duration($0) } }
        }
        if let v = try sec.get("max_age", { try ConfigValue.duration($0) }) { settings.maxAge = v }
        return settings
    }

    private func decodeDelivery(_ top: ConfigSection) throws -> DeliverySettings {
        guard let sec = try top.section("delivery", allowed: ["connections_per_ip", "port", "connect_timeout",
                                                              "command_timeout", "data_timeout", "tls", "timeouts",
                                                              "idle_timeout", "allow_loopback_mx", "mta_sts", "dane"]) else { return DeliverySettings() }
        var s = DeliverySettings()
        if let v = try sec.get("connections_per_ip", { try ConfigValue.integer($0, in: 1...10_000) }) { s.connectionsPerIP = v }
        if let v = try sec.get("port", { try ConfigValue.integer($0, in: 1...65_535) }) { s.port = UInt16(truncatingIfNeeded: v) }
        if let v = try sec.get("connect_timeout", { try ConfigValue.duration($0) }) { s.connectTimeout = v }
        if let v = try sec.get("command_timeout", { try ConfigValue.duration($0) }) { s.commandTimeout = v }
        if let v = try sec.get("data_timeout", { try ConfigValue.duration($0) }) { s.dataTimeout = v }
        try decodeDeliveryOutbound(sec, into: &s)  // OutboundSettings.swift
        return s
    }

    private func seconds(_ t: TimeInterval) -> String {
        t == t.rounded() && t < 1e12 ? "\(Int(t))s" : "\(t)s"
    }

    /// Resolves a (non-empty) path against the config file's directory.
    private func resolvePath(_ text: String) throws -> String {
        guard !text.isEmpty else { throw ConfigValueError("must not be empty") }
        return ConfigFiles.absolute(text, relativeTo: baseDirectory)
    }
}

// MARK: - Typed access to YAML nodes

/// A scalar value with where it came from.
struct ConfigScalar {
    let text: String
    let line: Int
    let path: String
    let file: String

    /// Runs a value parser, turning its `ConfigValueError` into a `ConfigError` at this value.
    func convert<T>(_ body: (String) throws -> T) throws -> T {
        do {
            return try body(text)
        } catch let e as ConfigValueError {
            throw ConfigError(file: file, line: line, key: path, message: e.message)
        }
    }
}

/// A YAML node at a key path.
struct ConfigItem {
    let node: YAMLNode
    let path: String
    let file: String

    /// The node as a scalar, or a `ConfigError` saying what was found instead.
    func scalar() throws -> ConfigScalar {
        guard case .scalar(let text, _, let line, _) = node else {
            throw ConfigError(file: file, line: node.line, key: path, message: "expected a single value, found \(node.kindDescription)")
        }
        if node.isNull { throw ConfigError(file: file, line: line, key: path, message: "missing value") }
        return ConfigScalar(text: text, line: line, path: path, file: file)
    }

    /// The node as a map with only the `allowed` keys.
    func section(allowed: [String]) throws -> ConfigSection {
        try ConfigSection(node, file: file, path: path, line: node.line, allowed: allowed)
    }
}

/// One YAML map of the configuration, reporting errors with file, line and dotted key path.
struct ConfigSection {
    let file: String
    /// The dotted path of this map (empty at the top level).
    let path: String
    /// The line cited for a missing required key: the parent key's line (nil at the top level).
    let line: Int?
    private let entries: [YAMLNode.Entry]

    /// - Throws: `ConfigError` when `node` is not a map, or has a key not in `allowed`.
    init(_ node: YAMLNode, file: String, path: String, line: Int?, allowed: [String]) throws {
        self.file = file; self.path = path; self.line = line
        guard case .map(let entries, _, _) = node else {
            let what = node.isNull ? "missing value (expected a map with \(allowed.joined(separator: ", ")))"
                                   : "expected a map, found \(node.kindDescription)"
            throw ConfigError(file: file, line: node.line, key: path.isEmpty ? nil : path, message: what)
        }
        for e in entries where !allowed.contains(e.key) {
            let key = path.isEmpty ? e.key : path + "." + e.key
            throw ConfigError(file: file, line: e.keyLine, key: key, message: "unknown key (allowed: \(allowed.joined(separator: ", ")))")
        }
        self.entries = entries
    }

    func keyPath(_ key: String) -> String { path.isEmpty ? key : path + "." + key }

    private func entry(_ key: String) -> YAMLNode.Entry? { entries.first { $0.key == key } }

    /// The line of `key`, or this map's line when absent.
    func entryLine(_ key: String) -> Int? { entry(key)?.keyLine ?? line }

    /// The value of `key`, nil when absent or null (`key:` with nothing after it).
    func item(_ key: String) -> ConfigItem? {
        guard let e = entry(key), !e.value.isNull else { return nil }
        return ConfigItem(node: e.value, path: keyPath(key), file: file)
    }

    /// The value of a required `key`.
    func requireItem(_ key: String) throws -> ConfigItem {
        guard let e = entry(key) else {
            throw ConfigError(file: file, line: line, key: keyPath(key), message: "required key is missing")
        }
        guard !e.value.isNull else {
            throw ConfigError(file: file, line: e.keyLine, key: keyPath(key), message: "missing value")
        }
        return ConfigItem(node: e.value, path: keyPath(key), file: file)
    }

    /// The scalar value of an optional `key`.
    func scalar(_ key: String) throws -> ConfigScalar? { try item(key)?.scalar() }

    /// Parses an optional scalar `key` with `body`.
    func get<T>(_ key: String, _ body: (String) throws -> T) throws -> T? {
        guard let s = try scalar(key) else { return nil }
        return try s.convert(body)
    }

    /// Parses a required scalar `key` with `body`.
    func require<T>(_ key: String, _ body: (String) throws -> T) throws -> T {
        try requireItem(key).scalar().convert(body)
    }

    /// An optional nested map.
    func section(_ key: String, allowed: [String]) throws -> ConfigSection? {
        guard let e = entry(key), !e.value.isNull else { return nil }
        return try ConfigSection(e.value, file: file, path: keyPath(key), line: e.keyLine, allowed: allowed)
    }

    /// An optional nested map whose keys the operator names (any key is allowed).
    func openSection(_ key: String) throws -> ConfigSection? {
        guard let e = entry(key), !e.value.isNull else { return nil }
        var keys: [String] = []
        if case .map(let entries, _, _) = e.value { keys = entries.map(\.key) }
        return try ConfigSection(e.value, file: file, path: keyPath(key), line: e.keyLine, allowed: keys)
    }

    /// This map's keys, in file order.
    var allKeys: [String] { entries.map(\.key) }

    /// A required nested map.
    func requiredSection(_ key: String, allowed: [String]) throws -> ConfigSection {
        let item = try requireItem(key)
        return try ConfigSection(item.node, file: file, path: item.path, line: entry(key)?.keyLine, allowed: allowed)
    }

    /// The items of an optional list `key` (a null value is an empty list).
    func list(_ key: String, allowScalar: Bool = false) throws -> [ConfigItem]? {
        guard let item = item(key) else { return entry(key) == nil ? nil : [] }
        return try Self.items(of: item, allowScalar: allowScalar)
    }

    /// The items of a required list `key`.
    func requireList(_ key: String, allowScalar: Bool = false) throws -> [ConfigItem] {
        try Self.items(of: requireItem(key), allowScalar: allowScalar)
    }

    private static func items(of item: ConfigItem, allowScalar: Bool) throws -> [ConfigItem] {
        switch item.node {
        case .list(let nodes, _, _):
            return nodes.enumerated().map { ConfigItem(node: $1, path: "\(item.path)[\($0)]", file: item.file) }
        case .scalar where allowScalar:
            return [item]
        default:
            throw ConfigError(file: item.file, line: item.node.line, key: item.path, message: "expected a list, found \(item.node.kindDescription)")
        }
    }
}

// MARK: - Files and paths

/// File reading and path arithmetic for the configuration (POSIX, so errors carry `strerror`).
enum ConfigFiles {
    /// The largest configuration or secret file read: 4 MiB.
    static let maxSize = 4 << 20

    /// Reads a whole file.
    /// - Throws: `ConfigValueError` whose message is the `strerror` text, e.g. `No such file or directory`.
    static func readFile(_ path: String) throws(ConfigValueError) -> [UInt8] {
        guard !path.utf8.contains(0) else { throw ConfigValueError("invalid path") }
        let bytes: [UInt8]?
        do { bytes = try File.readAll(path, limit: maxSize) } catch { throw ConfigValueError(error.reason) }
        guard let bytes else { throw ConfigValueError("file too large (more than 4 MiB)") }
        return bytes
    }

    /// `path` made absolute against `base` (unless already absolute), with `.`, `..` and repeated `/` removed.
    static func absolute(_ path: String, relativeTo base: String) -> String {
        normalize(path.hasPrefix("/") ? path : base + "/" + path)
    }

    /// The directory part of an absolute path (`/` for a file at the root).
    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let dir = String(path[..<slash])
        return dir.isEmpty ? "/" : dir
    }

    /// Collapses `.`, `..` and repeated slashes of an absolute path (purely textual).
    static func normalize(_ path: String) -> String {
        var parts: [Substring] = []
        for component in path.split(separator: "/") {
            if component == "." { continue }
            if component == ".." { if !parts.isEmpty { parts.removeLast() }; continue }
            parts.append(component)
        }
        return "/" + parts.joined(separator: "/")
    }
}
