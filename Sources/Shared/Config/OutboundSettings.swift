import Foundation

/// Outbound STARTTLS use (`delivery.tls`, `routes[].tls`).
public enum OutboundTLSMode: String, Sendable, Equatable, CaseIterable {
    /// Never send STARTTLS.
    case disabled
    /// Use STARTTLS when the server offers it; deliver in plaintext otherwise, and retry a server
    /// whose TLS handshake failed in plaintext (RFC 7435 opportunistic security).
    case opportunistic
    /// Deliver only over TLS; no STARTTLS or a failed handshake defers the message.
    case required
}

/// `delivery.timeouts:` seconds to wait at each step of an outbound SMTP session
/// (RFC 5321 §4.5.3.2 gives the minimums the defaults follow).
public struct DeliveryTimeouts: Sendable, Equatable {
    /// `connect`: the TCP handshake. Default 30s.
    public var connect: TimeInterval
    /// `greeting`: the 220 banner (§4.5.3.2.1). Default 5m.
    public var greeting: TimeInterval
    /// `ehlo`: the reply to EHLO/HELO. Default 5m.
    public var ehlo: TimeInterval
    /// `starttls`: the reply to STARTTLS and the TLS handshake. Default 5m.
    public var startTLS: TimeInterval
    /// `mail`: the reply to MAIL (§4.5.3.2.2). Default 5m.
    public var mail: TimeInterval
    /// `rcpt`: the reply to each RCPT (§4.5.3.2.3). Default 5m.
    public var rcpt: TimeInterval
    /// `data_init`: the 354 reply to DATA (§4.5.3.2.4). Default 2m.
    public var dataInit: TimeInterval
    /// `data_block`: each write of the content (§4.5.3.2.5). Default 3m.
    public var dataBlock: TimeInterval
    /// `data_done`: the reply after the final dot or the last BDAT chunk (§4.5.3.2.6). Default 10m.
    public var dataDone: TimeInterval
    /// `rset`: the reply to RSET before a reused session's next message. Default 20s.
    public var rset: TimeInterval
    /// `quit`: the reply to QUIT. Default 10s.
    public var quit: TimeInterval
    /// How long a session may have been idle and still be reused without an RSET probe, in
    /// seconds (not in cluster.yml; the SMTP client's `prepareForReuse`). Default 5.
    public var unprobedIdle: TimeInterval = 5

    /// Timeouts in seconds; the defaults are the RFC 5321 §4.5.3.2 values.
    public init(connect: TimeInterval = 30, greeting: TimeInterval = 300, ehlo: TimeInterval = 300, startTLS: TimeInterval = 300,
                mail: TimeInterval = 300, rcpt: TimeInterval = 300, dataInit: TimeInterval = 120, dataBlock: TimeInterval = 180,
                dataDone: TimeInterval = 600, rset: TimeInterval = 20, quit: TimeInterval = 10) {
        self.connect = connect; self.greeting = greeting; self.ehlo = ehlo; self.startTLS = startTLS
        self.mail = mail; self.rcpt = rcpt; self.dataInit = dataInit; self.dataBlock = dataBlock
        self.dataDone = dataDone; self.rset = rset; self.quit = quit
    }
}

/// A message rate such as `100/min` (`shaping…max_rate`).
public struct MessageRate: Sendable, Equatable, CustomStringConvertible {
    /// Messages allowed per `period`.
    public var count: Int
    /// The period in seconds.
    public var period: TimeInterval

    /// A rate from its parts.
    public init(count: Int, period: TimeInterval) { self.count = count; self.period = period }

    /// Parses `N/s`, `N/sec`, `N/m`, `N/min`, `N/h`, `N/hour`, `N/d`, `N/day` (N ≥ 1).
    /// - Throws: `ConfigValueError` for anything else.
    public init(parsing text: String) throws {
        let parts = text.replacingOccurrences(of: " ", with: "").split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let n = Int(parts[0]), n >= 1, n <= 100_000_000 else {
            throw ConfigValueError("invalid rate \"\(text)\": expected messages per unit, e.g. \"100/min\"")
        }
        switch parts[1].lowercased() {
        case "s", "sec", "second": period = 1
        case "m", "min", "minute": period = 60
        case "h", "hour": period = 3600
        case "d", "day": period = 86_400
        default: throw ConfigValueError("invalid rate \"\(text)\": unknown unit \"\(parts[1])\" (use s, min, h or d)")
        }
        count = n
    }

    /// Seconds between two messages when they are spread evenly.
    public var interval: TimeInterval { period / Double(count) }

    /// `count/unit`.
    public var description: String {
        let unit = period == 1 ? "s" : period == 60 ? "min" : period == 3600 ? "h" : period == 86_400 ? "d" : "\(period)s"
        return "\(count)/\(unit)"
    }
}

/// Limits for one (sending IP, provider) pair.
public struct ShapingLimits: Sendable, Equatable {
    /// `max_connections`: most simultaneous connections (busy and idle). Default 10.
    public var maxConnections: Int
    /// `messages_per_connection`: most messages (mail transactions) on one connection. Default 100.
    public var messagesPerConnection: Int
    /// `max_rate`: most messages per time, spread evenly; nil (`unlimited`) for no limit. Default unlimited.
    public var maxRate: MessageRate?

    /// Limits from their parts.
    public init(maxConnections: Int = 10, messagesPerConnection: Int = 100, maxRate: MessageRate? = nil) {
        self.maxConnections = maxConnections; self.messagesPerConnection = messagesPerConnection; self.maxRate = maxRate
    }
}

/// One `shaping.providers[]` entry: a mailbox provider recognised by its MX host suffixes.
public struct ShapingProvider: Sendable, Equatable {
    /// `name`: unique identifier, e.g. `gmail`. Required.
    public var name: String
    /// `mx_suffixes`: MX host suffixes, e.g. `google.com` (matches `google.com` and `*.google.com`). Required.
    public var mxSuffixes: [String]
    /// The limits: each key not given takes the `shaping.default` value.
    public var limits: ShapingLimits

    /// A provider from its parts.
    public init(name: String, mxSuffixes: [String], limits: ShapingLimits) {
        self.name = name; self.mxSuffixes = mxSuffixes; self.limits = limits
    }

    /// Whether `host` (lowercase, no trailing dot) is one of this provider's MX hosts.
    public func matches(_ host: String) -> Bool {
        mxSuffixes.contains { host == $0 || host.hasSuffix("." + $0) }
    }
}

/// `shaping:` per (sending IP, provider) limits. An MX host no provider matches is shaped on
/// its own (per sending IP and MX host) with the default limits.
public struct ShapingSettings: Sendable, Equatable {
    /// `default`: the limits for destinations without a provider rule.
    public var defaults: ShapingLimits
    /// `providers`: rules matched by MX host suffix, first match wins.
    public var providers: [ShapingProvider]

    /// Shaping settings from their parts.
    public init(defaults: ShapingLimits = ShapingLimits(), providers: [ShapingProvider] = []) {
        self.defaults = defaults; self.providers = providers
    }

    /// The shaping group and limits for an MX host: `provider name` when a rule matches,
    /// else `mx:<host>` with the defaults.
    public func group(forMXHost host: String) -> (name: String, limits: ShapingLimits) {
        var h = host.lowercased()
        if h.hasSuffix(".") { h.removeLast() }
        if let p = providers.first(where: { $0.matches(h) }) { return (p.name, p.limits) }
        return ("mx:" + h, defaults)
    }
}

/// One `dkim:` entry: a signing key for a sender domain (RFC 6376, RFC 8463).
public struct DKIMKeySettings: Sendable, Equatable {
    /// `domain`: the `d=` domain; messages whose From domain is this domain or a subdomain are signed. Required.
    public var domain: String
    /// `selector`: the `s=` selector (`[A-Za-z0-9_-]` labels). Required.
    public var selector: String
    /// `private_key`: absolute path of the PEM private key (relative to the config file). Required.
    public var privateKeyPath: String
    /// `algorithm`: `rsa-sha256` or `ed25519-sha256`; must match the key. Default `rsa-sha256`.
    public var algorithm: String
    /// `canonicalization`: header part (`relaxed` or `simple`). Default relaxed.
    public var headerCanonicalization: String
    /// `canonicalization`: body part. Default relaxed (`c=relaxed` alone means relaxed/simple, RFC 6376 §3.5).
    public var bodyCanonicalization: String
    /// `headers`: field names to sign, lowercase; must include `from`. Default: From, To, Cc, Subject,
    /// Date, Message-ID, Reply-To, In-Reply-To, References, MIME and List-Unsubscribe fields.
    public var headers: [String]?

    /// Settings from their parts.
    public init(domain: String, selector: String, privateKeyPath: String, algorithm: String = "rsa-sha256",
                headerCanonicalization: String = "relaxed", bodyCanonicalization: String = "relaxed", headers: [String]? = nil) {
        self.domain = domain; self.selector = selector; self.privateKeyPath = privateKeyPath; self.algorithm = algorithm
        self.headerCanonicalization = headerCanonicalization; self.bodyCanonicalization = bodyCanonicalization
        self.headers = headers
    }
}

// MARK: - Decoding

extension ClusterConfigDecoder {
    /// Decodes `dkim:`, `shaping:`, and the outbound keys of `delivery:` and `routes:`.
    func decodeOutbound(_ top: ConfigSection, into config: inout ClusterConfig) throws {
        config.dkim = try decodeDKIM(top)
        config.shaping = try decodeShaping(top)
    }

    /// The outbound keys of `delivery:` (`tls`, `timeouts`, `idle_timeout`, `allow_loopback_mx`).
    func decodeDeliveryOutbound(_ sec: ConfigSection, into s: inout DeliverySettings) throws {
        // The older flat keys set the matching per-step timeouts; `timeouts:` overrides them.
        let flat = DeliverySettings(connectionsPerIP: s.connectionsPerIP, port: s.port, connectTimeout: s.connectTimeout,
                                    commandTimeout: s.commandTimeout, dataTimeout: s.dataTimeout)
        s.timeouts = flat.timeouts
        if let v = try sec.get("tls", Self.tlsMode) { s.tls = v }
        if let v = try sec.get("allow_loopback_mx", ConfigValue.bool) { s.allowLoopbackMX = v }
        if let m = try sec.section("mta_sts", allowed: ["enabled", "ca_file", "fetch_timeout", "cache_size", "https_port"]) {
            if let v = try m.get("enabled", ConfigValue.bool) { s.mtaSTS.enabled = v }
            s.mtaSTS.caFile = try decodeOptionalPath(m, "ca_file")
            if let v = try m.get("fetch_timeout", { try ConfigValue.duration($0) }) { s.mtaSTS.fetchTimeout = v }
            if let v = try m.get("cache_size", { try ConfigValue.integer($0, in: 1...1_000_000) }) { s.mtaSTS.cacheSize = v }
            if let v = try m.get("https_port", { try ConfigValue.integer($0, in: 1...65_535) }) { s.mtaSTS.httpsPort = UInt16(truncatingIfNeeded: v) }
        }
        if let d = try sec.section("dane", allowed: ["enabled"]) {
            if let v = try d.get("enabled", ConfigValue.bool) { s.daneEnabled = v }
        }
        let idle = try sec.get("idle_timeout") { try ConfigValue.duration($0) }
        if let t = try sec.section("timeouts", allowed: ["connect", "greeting", "ehlo", "starttls", "mail", "rcpt", "data_init",
                                                         "data_block", "data_done", "rset", "quit", "idle"]) {
            let keys: [(String, WritableKeyPath<DeliveryTimeouts, TimeInterval>)] = [
                ("connect", \.connect), ("greeting", \.greeting), ("ehlo", \.ehlo), ("starttls", \.startTLS), ("mail", \.mail),
                ("rcpt", \.rcpt), ("data_init", \.dataInit), ("data_block", \.dataBlock), ("data_done", \.dataDone),
                ("rset", \.rset), ("quit", \.quit),
            ]
            for (key, path) in keys {
                if let v = try t.get(key, { try ConfigValue.duration($0) }) { s.timeouts[keyPath: path] = v }
            }
            if let v = try t.get("idle", { try ConfigValue.duration($0) }) {
                if let idle, idle != v {
                    throw ConfigError(file: file, line: t.entryLine("idle"), key: t.keyPath("idle"),
                                      message: "differs from delivery.idle_timeout (set only one)")
                }
                s.idleTimeout = v
            }
        }
        if let idle { s.idleTimeout = idle }
    }

    static func tlsMode(_ text: String) throws -> OutboundTLSMode {
        guard let m = OutboundTLSMode(rawValue: text) else {
            throw ConfigValueError("expected disabled, opportunistic or required, got \"\(text)\"")
        }
        return m
    }

    private func decodeDKIM(_ top: ConfigSection) throws -> [DKIMKeySettings] {
        var keys: [DKIMKeySettings] = []
        var seen: [String: Int] = [:]
        for item in try top.list("dkim") ?? [] {
            let sec = try item.section(allowed: ["domain", "selector", "private_key", "algorithm", "canonicalization", "headers"])
            let domain = try sec.require("domain", ConfigValue.hostname)
            let selector = try sec.require("selector") { text -> String in
                let labels = text.split(separator: ".", omittingEmptySubsequences: false)
                guard !text.isEmpty, text.count <= 63, labels.allSatisfy({ l in
                    !l.isEmpty && l.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7A) || $0 == 0x2D || $0 == 0x5F }
                }) else { throw ConfigValueError("invalid selector \"\(text)\" (letters, digits, '-' and '_' in dot-separated labels)") }
                return text
            }
            let line = try sec.scalar("selector")?.line ?? item.node.line
            let id = "\(selector)._domainkey.\(domain)"
            if let first = seen[id] {
                throw ConfigError(file: file, line: line, key: sec.keyPath("selector"), message: "duplicate DKIM key \(id) (first on line \(first))")
            }
            seen[id] = line
            let path = try sec.require("private_key") { text -> String in
                guard !text.isEmpty else { throw ConfigValueError("must not be empty") }
                return ConfigFiles.absolute(text, relativeTo: baseDirectory)
            }
            let algorithm = try sec.get("algorithm") { text -> String in
                guard ["rsa-sha256", "ed25519-sha256"].contains(text) else {
                    throw ConfigValueError("expected rsa-sha256 or ed25519-sha256, got \"\(text)\"")
                }
                return text
            } ?? "rsa-sha256"
            let (h, b) = try sec.get("canonicalization") { text -> (String, String) in
                let parts = text.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
                guard (1...2).contains(parts.count), parts.allSatisfy({ $0 == "relaxed" || $0 == "simple" }) else {
                    throw ConfigValueError("expected header/body canonicalization such as relaxed/relaxed or simple/simple, got \"\(text)\"")
                }
                return (parts[0], parts.count == 2 ? parts[1] : "simple")
            } ?? ("relaxed", "relaxed")
            var headers: [String]? = nil
            if let items = try sec.list("headers") {
                var names: [String] = []
                for h in items {
                    let s = try h.scalar()
                    let name = s.text.lowercased()
                    guard !name.isEmpty, name.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != 0x3A }) else {
                        throw ConfigError(file: file, line: s.line, key: s.path, message: "invalid header field name \"\(s.text)\"")
                    }
                    if !names.contains(name) { names.append(name) }
                }
                guard names.contains("from") else {
                    throw ConfigError(file: file, line: sec.entryLine("headers"), key: sec.keyPath("headers"),
                                      message: "must include from (RFC 6376 §5.4: the From field is always signed)")
                }
                headers = names
            }
            keys.append(DKIMKeySettings(domain: domain, selector: selector, privateKeyPath: path, algorithm: algorithm,
                                        headerCanonicalization: h, bodyCanonicalization: b, headers: headers))
        }
        return keys
    }

    private func decodeShaping(_ top: ConfigSection) throws -> ShapingSettings {
        guard let sec = try top.section("shaping", allowed: ["default", "providers"]) else { return ShapingSettings() }
        var settings = ShapingSettings()
        if let d = try sec.section("default", allowed: ["max_connections", "messages_per_connection", "max_rate"]) {
            settings.defaults = try decodeLimits(d, base: ShapingLimits())
        }
        var names: [String: Int] = [:]
        for item in try sec.list("providers") ?? [] {
            let p = try item.section(allowed: ["name", "mx_suffixes", "max_connections", "messages_per_connection", "max_rate"])
            let name = try p.require("name", ConfigValue.identifier)
            let line = try p.scalar("name")?.line ?? item.node.line
            if let first = names[name] {
                throw ConfigError(file: file, line: line, key: p.keyPath("name"), message: "duplicate provider \"\(name)\" (first on line \(first))")
            }
            names[name] = line
            let suffixItems = try p.requireList("mx_suffixes", allowScalar: true)
            guard !suffixItems.isEmpty else {
                throw ConfigError(file: file, line: p.entryLine("mx_suffixes"), key: p.keyPath("mx_suffixes"), message: "must list at least one MX host suffix")
            }
            let suffixes = try suffixItems.map { try $0.scalar().convert { text -> String in
                try ConfigValue.hostname(text.hasPrefix(".") ? String(text.dropFirst()) : text)
            } }
            settings.providers.append(ShapingProvider(name: name, mxSuffixes: suffixes, limits: try decodeLimits(p, base: settings.defaults)))
        }
        return settings
    }

    private func decodeLimits(_ sec: ConfigSection, base: ShapingLimits) throws -> ShapingLimits {
        var limits = base
        if let v = try sec.get("max_connections", { try ConfigValue.integer($0, in: 1...10_000) }) { limits.maxConnections = v }
        if let v = try sec.get("messages_per_connection", { try ConfigValue.integer($0, in: 1...1_000_000) }) { limits.messagesPerConnection = v }
        if let v = try sec.get("max_rate", { text -> MessageRate? in
            ["unlimited", "none", "off"].contains(text.lowercased()) ? nil : try MessageRate(parsing: text)
        }) { limits.maxRate = v }
        return limits
    }
}
