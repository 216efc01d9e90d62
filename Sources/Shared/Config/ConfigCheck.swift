#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HatoDKIM
import HatoIO

/// The result of checking a configuration for one process: one line per item, each `ok`,
/// `warning` or `error`.
public struct ConfigCheckReport: Sendable, Equatable {
    /// How an item fared.
    public enum Level: String, Sendable, Equatable, Codable {
        /// Loaded, readable, bindable.
        case ok
        /// Works, but probably not as meant (an address another host may hold, a certificate
        /// about to expire).
        case warning
        /// The process would not start, or would not work, with this.
        case error
    }

    /// One checked item.
    public struct Item: Sendable, Equatable, Codable {
        /// The outcome.
        public var level: Level
        /// The key checked, e.g. `dkim[0].private_key` or `coordinator.listen`.
        public var key: String
        /// What was found: the value and why it is fine or not.
        public var detail: String

        /// An item from its parts.
        public init(_ level: Level, _ key: String, _ detail: String) { self.level = level; self.key = key; self.detail = detail }
    }

    /// The items in check order.
    public var items: [Item] = []

    /// An empty report.
    public init() {}

    mutating func ok(_ key: String, _ detail: String) { items.append(Item(.ok, key, detail)) }
    mutating func warning(_ key: String, _ detail: String) { items.append(Item(.warning, key, detail)) }
    mutating func error(_ key: String, _ detail: String) { items.append(Item(.error, key, detail)) }

    /// The items that are errors.
    public var errors: [Item] { items.filter { $0.level == .error } }
    /// The items that are warnings.
    public var warnings: [Item] { items.filter { $0.level == .warning } }
    /// Whether any item is an error (the process would not start, or a reload is refused).
    public var hasErrors: Bool { items.contains { $0.level == .error } }

    /// The report as text: `ok       key: detail` per item, then a summary line.
    public func rendered() -> String {
        var out = items.map { "\($0.level.rawValue.padding(toLength: 8, withPad: " ", startingAt: 0)) \($0.key): \($0.detail)" }
        let e = errors.count, w = warnings.count
        out.append(e == 0 ? "check passed: \(items.count - w) ok, \(w) warning\(w == 1 ? "" : "s")"
                          : "check failed: \(e) error\(e == 1 ? "" : "s"), \(w) warning\(w == 1 ? "" : "s")")
        return out.joined(separator: "\n")
    }
}

/// Validates everything a process needs at start, beyond what `ClusterConfig.load` validates:
/// the files (certificates, keys, CA bundles, DKIM keys, the admin token file) are loaded the way
/// the process loads them — PEM parsed, each key against its certificate, each DKIM key against
/// its `algorithm` — data directories are writable, and local addresses bindable.
///
/// `hato-coordinator check` and `hato-node check` print the report; the coordinator's `reload`
/// runs the coordinator check (without the bind tests: it holds those addresses itself) and
/// refuses a configuration with errors.
public enum ConfigCheck {
    /// A certificate that expires within this many seconds is a warning: 14 days.
    public static let expiryWarning = 14 * 86_400

    /// Loads a configuration file for a check.
    /// - Returns: the configuration, or nil and a report with the load error.
    public static func load(path: String) -> (ClusterConfig?, ConfigCheckReport) {
        var report = ConfigCheckReport()
        do {
            let config = try ClusterConfig.load(path: path)
            report.ok("config", "\(config.sourcePath): \(config.nodes.count) node(s), \(config.pools.count) pool(s), \(config.ips.count) sending IP(s)")
            return (config, report)
        } catch {
            report.error("config", "\(error)")
            return (nil, report)
        }
    }

    /// What the coordinator needs: the admin token, its data directory, its listen addresses,
    /// the SMTP, cluster and admin TLS files, and the DKIM keys (checked here too, so a reload
    /// that would leave nodes unable to sign is refused; keep the keys readable on the
    /// coordinator's host as well).
    /// - Parameters:
    ///   - config: the loaded configuration.
    ///   - bindAddresses: test that `coordinator.listen`, `admin_listen` and `smtp.listen` can be
    ///     bound (false for a reload: the running coordinator holds them).
    /// - Returns: the items checked.
    public static func coordinator(_ config: ClusterConfig, bindAddresses: Bool = true) -> ConfigCheckReport {
        var r = ConfigCheckReport()
        let c = config.coordinator
        if let file = c.adminTokenFile {
            if let e = c.adminTokenError { r.error("coordinator.admin_token_file", e) } else { r.ok("coordinator.admin_token_file", "\(file): token read") }
        } else {
            r.ok("coordinator.admin_token", "set inline (admin_token_file keeps it out of cluster.yml)")
        }
        checkDirectory(c.dataDir, key: "coordinator.data_dir", into: &r)
        // The reputation checks use only the configured resolvers (issue 18).
        if config.dns.nameservers.isEmpty && (config.reputation.requireFCrDNS || config.reputation.checksBlocklists) {
            r.warning("reputation", "dns.nameservers is empty: the DNSBL checks use the system's resolver and FCrDNS is not checked (require_fcrdns holds nothing)")
        }
        if bindAddresses {
            checkBind(c.listen, key: "coordinator.listen", into: &r)
            checkBind(c.adminListen, key: "coordinator.admin_listen", into: &r)
            for (i, a) in config.smtp.listen.enumerated() { checkBind(a, key: "smtp.listen[\(i)]", into: &r) }
            for (i, a) in (config.httpAPI?.listen ?? []).enumerated() { checkBind(a, key: "http_api.listen[\(i)]", into: &r) }
        }
        if let tls = config.cluster.tls {
            r.record("cluster.tls") {
                _ = try TLSContext.server(certificateChainPath: tls.pair.certificatePath, privateKeyPath: tls.pair.privateKeyPath,
                                          clientCAFile: tls.caPath)
                return tls.caPath == nil ? "certificate and key match; nodes are asked for no client certificate (no ca)"
                                         : "certificate and key match; nodes must present a certificate from \(tls.caPath ?? "")"
            }
            checkCertificate(tls.pair.certificatePath, key: "cluster.tls.certificate", names: c.listen.host, into: &r,
                             mismatch: .error, why: "nodes connect to coordinator.listen and verify this name")
            if let ca = tls.caPath { checkCertificateFile(ca, key: "cluster.tls.ca", into: &r) }
        } else {
            r.ok("cluster.tls", "not set: the cluster protocol is plaintext TCP (authenticated by HMAC, not encrypted)")
        }
        if let tls = c.adminTLS {
            r.record("coordinator.admin_tls") {
                _ = try TLSContext.server(certificateChainPath: tls.pair.certificatePath, privateKeyPath: tls.pair.privateKeyPath)
                return "certificate and key match"
            }
            let host = c.adminListen.host == "0.0.0.0" ? "127.0.0.1" : c.adminListen.host == "::" ? "::1" : c.adminListen.host
            checkCertificate(tls.pair.certificatePath, key: "coordinator.admin_tls.certificate", names: host, into: &r,
                             mismatch: .warning, why: "the CLI connects to \(host) and checks that name")
            if let ca = tls.caPath { checkCertificateFile(ca, key: "coordinator.admin_tls.ca", into: &r) }
        }
        if let tls = config.smtp.tls {
            r.record("smtp.tls") {
                _ = try TLSContext.server(certificateChainPath: tls.certificatePath, privateKeyPath: tls.privateKeyPath)
                return "certificate and key match"
            }
            checkCertificate(tls.certificatePath, key: "smtp.tls.certificate", names: nil, into: &r, mismatch: .warning, why: "")
        }
        if let api = config.httpAPI {
            if let tls = api.tls {
                r.record("http_api.tls") {
                    _ = try TLSContext.server(certificateChainPath: tls.certificatePath, privateKeyPath: tls.privateKeyPath)
                    return "certificate and key match"
                }
                checkCertificate(tls.certificatePath, key: "http_api.tls.certificate", names: nil, into: &r, mismatch: .warning, why: "")
            } else if api.listen.contains(where: { !SMTPSettings.isLoopback($0.host) }) {
                r.warning("http_api.tls", "not set on a non-loopback address: API keys would cross the network in clear text")
            }
        }
        checkDKIM(config, into: &r)
        return r
    }

    /// What node `id` needs: its data directory, its cluster TLS pair and CA, the DKIM keys, its
    /// metrics address, and the sending IPs it may own (those it cannot bind are warnings: a
    /// floating IP may live on another host); whether the coordinator answers is a warning too.
    /// - Parameters:
    ///   - config: the loaded configuration.
    ///   - id: the node's `nodes[].id`.
    ///   - bindAddresses: test `metrics_listen`, the sending IPs and the coordinator's address
    ///     (false for a reload: the running node holds them and announces what it can bind).
    /// - Returns: the items checked.
    public static func node(_ config: ClusterConfig, id: String, bindAddresses: Bool = true) -> ConfigCheckReport {
        var r = ConfigCheckReport()
        guard let index = config.nodes.firstIndex(where: { $0.id == id }) else {
            r.error("nodes", "no node \"\(id)\" (cluster.yml nodes: \(config.nodes.map(\.id).joined(separator: ", ")))")
            return r
        }
        let me = config.nodes[index]
        checkDirectory(me.dataDir, key: "nodes[\(index)].data_dir", into: &r)
        if let tls = config.cluster.tls, let pair = config.clusterTLSPair(forNode: id) {
            let key = me.tls == nil ? "cluster.tls" : "nodes[\(index)].tls"
            r.record(key) {
                _ = try TLSContext.client(verifyPeer: true, trustedCAFile: tls.caPath, certificateChainPath: pair.certificatePath,
                                          privateKeyPath: pair.privateKeyPath)
                return "client certificate and key match" + (tls.caPath.map { "; the coordinator is verified against \($0)" } ?? "; the coordinator is verified against the system's roots")
            }
            checkCertificate(pair.certificatePath, key: key + ".certificate", names: nil, into: &r, mismatch: .warning, why: "")
            if let ca = tls.caPath { checkCertificateFile(ca, key: "cluster.tls.ca", into: &r) }
        } else {
            r.ok("cluster.tls", "not set: the cluster protocol is plaintext TCP")
        }
        checkDKIM(config, into: &r)
        checkTransportSecurity(config, into: &r)
        guard bindAddresses else { return r }
        if let metrics = me.metricsListen { checkBind(metrics, key: "nodes[\(index)].metrics_listen", into: &r) }
        for (i, ip) in config.ips.enumerated() where ip.isAllowed(onNode: id) {
            let key = "ips[\(i)] \(ip.address)"
            do {
                let s = try Socket.listen(on: SocketAddress(host: ip.address, port: 0), backlog: 1)
                s.close()
                r.ok(key, "bindable on this host (pool \(ip.pool))")
            } catch {
                let floating = ip.nodes.count != 1
                r.warning(key, "cannot bind on this host (\(error))" + (floating ? "; a floating IP may be on another host now" : "; this node is its only owner"))
            }
        }
        do {
            let s = try Socket.connect(to: config.coordinator.listen, timeout: 2)
            s.close()
            r.ok("coordinator.listen", "\(config.coordinator.listen) accepts connections")
        } catch {
            r.warning("coordinator.listen", "\(config.coordinator.listen) does not answer now (\(error))")
        }
        return r
    }

    /// `delivery.mta_sts` and `delivery.dane` (RFC 8461, RFC 7672): the CA file loads, and DANE
    /// has configured (validating) resolvers rather than the system's.
    static func checkTransportSecurity(_ config: ClusterConfig, into r: inout ConfigCheckReport) {
        let d = config.delivery
        if d.mtaSTS.enabled {
            if let ca = d.mtaSTS.caFile {
                checkCertificateFile(ca, key: "delivery.mta_sts.ca_file", into: &r)
            } else {
                r.ok("delivery.mta_sts", "enabled; policy hosts and MX certificates are verified against the system's roots")
            }
        }
        if d.daneEnabled {
            if config.dns.nameservers.isEmpty {
                r.warning("delivery.dane", "enabled with the system's resolvers: DANE needs dns.nameservers that validate DNSSEC (the AD bit is trusted from them)")
            } else {
                r.ok("delivery.dane", "enabled; TLSA answers with the AD bit from \(config.dns.nameservers.map(\.description).joined(separator: ", ")) are trusted")
            }
        }
    }

    /// Loads each `dkim[]` key and checks it against its `algorithm`.
    static func checkDKIM(_ config: ClusterConfig, into r: inout ConfigCheckReport) {
        for (i, k) in config.dkim.enumerated() {
            r.record("dkim[\(i)].private_key") {
                let key = try k.loadKey()
                return "\(k.privateKeyPath): \(key.algorithm.rawValue) \(key.bits) bits for \(k.selector)._domainkey.\(k.domain)"
            }
        }
    }

    /// A data directory: writable, or creatable under its nearest existing parent.
    static func checkDirectory(_ path: String, key: String, into r: inout ConfigCheckReport) {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDir) {
            guard isDir.boolValue else { return r.error(key, "\(path) is not a directory") }
            if access(path, W_OK | X_OK) == 0 { r.ok(key, "\(path) is writable") } else { r.error(key, "\(path) is not writable: \(SystemCall.errorText(errno))") }
            return
        }
        var parent = ConfigFiles.directory(of: path)
        while !FileManager.default.fileExists(atPath: parent) && parent != "/" { parent = ConfigFiles.directory(of: parent) }
        if access(parent, W_OK | X_OK) == 0 {
            r.ok(key, "\(path) does not exist yet; it will be created under \(parent)")
        } else {
            r.error(key, "\(path) does not exist and \(parent) is not writable: \(SystemCall.errorText(errno))")
        }
    }

    /// A local listen address: bound and released at once (port 0: any port).
    static func checkBind(_ address: SocketAddress, key: String, into r: inout ConfigCheckReport) {
        do {
            let s = try Socket.listen(on: address, backlog: 1)
            s.close()
            r.ok(key, "\(address) can be bound")
        } catch {
            r.error(key, "\(address) cannot be bound: \(error)")
        }
    }

    /// A certificate: its expiry, and whether it names `names` (an IP literal or host name).
    static func checkCertificate(_ path: String, key: String, names host: String?, into r: inout ConfigCheckReport,
                                 mismatch: ConfigCheckReport.Level, why: String) {
        do {
            let s = try TLSCertificateFile.inspect(path)
            let subject = s.commonName.map { "CN=\($0)" } ?? "no CN"
            if s.secondsUntilExpiry <= 0 {
                r.error(key, "\(path) (\(subject)) has expired")
            } else if s.secondsUntilExpiry < expiryWarning {
                r.warning(key, "\(path) (\(subject)) expires in \(s.secondsUntilExpiry / 86_400) day(s)")
            } else {
                r.ok(key, "\(path) (\(subject)), expires in \(s.secondsUntilExpiry / 86_400) days")
            }
            if let host, !(try TLSCertificateFile.matches(path, host: host)) {
                r.items.append(.init(mismatch, key, "\(path) does not name \(host) (\(why))"))
            }
        } catch {
            r.error(key, "\(error)")
        }
    }

    /// A CA bundle: at least one PEM certificate.
    static func checkCertificateFile(_ path: String, key: String, into r: inout ConfigCheckReport) {
        do {
            let s = try TLSCertificateFile.inspect(path)
            r.ok(key, "\(path): \(s.count) certificate(s)" + (s.commonName.map { ", first CN=\($0)" } ?? ""))
        } catch {
            r.error(key, "\(error)")
        }
    }
}

extension ConfigCheckReport {
    /// Runs `body`: an `ok` item with its text, or an `error` item with the error.
    mutating func record(_ key: String, _ body: () throws -> String) {
        do { ok(key, try body()) } catch { self.error(key, "\(error)") }
    }
}

extension DKIMKeySettings {
    /// Loads the private key and checks it against `algorithm`.
    /// - Returns: the key.
    /// - Throws: `DKIMKeyError` naming the file when it cannot be read or parsed, or holds a key
    ///   of the other algorithm.
    public func loadKey() throws -> DKIMPrivateKey {
        let key = try DKIMPrivateKey(pemFile: privateKeyPath)
        guard key.algorithm.rawValue == algorithm else {
            throw DKIMKeyError("\(privateKeyPath): the key is for \(key.algorithm.rawValue), but dkim \(selector)._domainkey.\(domain) says \(algorithm)")
        }
        return key
    }
}
