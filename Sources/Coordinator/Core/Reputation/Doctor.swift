import Foundation
import HatoConfig
import HatoDNS
import HatoDKIM
import HatoIO

/// One thing `hato-coordinator doctor` found.
public struct DoctorFinding: Sendable, Equatable, Codable {
    /// How bad it is.
    public enum Severity: String, Sendable, Equatable, Codable, Comparable {
        case ok, warning, error
        private var rank: Int { self == .ok ? 0 : self == .warning ? 1 : 2 }
        public static func < (a: Severity, b: Severity) -> Bool { a.rank < b.rank }
    }

    /// The check: `fcrdns`, `helo`, `spf`, `dkim`, `tls`, `clock`.
    public var check: String
    /// What it is about: a sending IP, a domain, a listener, a node.
    public var subject: String
    /// The verdict.
    public var severity: Severity
    /// What was found, one line.
    public var message: String
    /// How to fix it, one line (nil for `ok`).
    public var fix: String?

    /// A finding from its parts.
    public init(check: String, subject: String, severity: Severity, message: String, fix: String?) {
        self.check = check; self.subject = subject; self.severity = severity; self.message = message; self.fix = fix
    }

    /// One line for the CLI: `error    spf     shop.example  message — fix: hint`.
    public var line: String {
        severity.rawValue.padding(toLength: 9, withPad: " ", startingAt: 0) + check.padding(toLength: 8, withPad: " ", startingAt: 0)
            + subject + "  " + message + (fix.map { " — fix: \($0)" } ?? "")
    }
}

/// `GET /v1/doctor`: every finding for the whole cluster.
public struct DoctorReport: Sendable, Equatable, Codable {
    /// When it was made (ISO 8601, UTC).
    public var generatedAt: String
    /// The findings: per sending IP, then per domain, listener and node.
    public var findings: [DoctorFinding]
    /// Counts by severity.
    public var ok: Int, warnings: Int, errors: Int

    /// A report of `findings`.
    public init(findings: [DoctorFinding], now: Date) {
        generatedAt = ISO8601DateFormatter().string(from: now)
        self.findings = findings
        ok = findings.filter { $0.severity == .ok }.count
        warnings = findings.filter { $0.severity == .warning }.count
        errors = findings.filter { $0.severity == .error }.count
    }
}

/// The checks of `hato-coordinator doctor` (issue 18): PTR/FCrDNS and HELO of every sending IP,
/// SPF coverage of the sending IPs for every sending domain, DKIM records, the coordinator's
/// TLS certificates, and clock skew between nodes and coordinator.
///
/// The judging functions are pure (`fcrdns`, `spf`, `dkim`, `certificate`, `ClockSkew.finding`);
/// `run` gathers the answers through the cluster's resolvers (`dns:`) and the files.
public enum Doctor {
    /// A certificate expiring sooner than this (seconds; 14 days) is a warning.
    public static let certificateWarning = 14 * 86_400

    /// The FCrDNS and HELO findings of one sending IP.
    /// - Parameters:
    ///   - ip: the sending IP.
    ///   - verdict: its FCrDNS verdict.
    ///   - required: `reputation.require_fcrdns` (a failing IP is then held: an error).
    /// - Returns: one `fcrdns` finding, and a `helo` finding unless the lookup failed.
    public static func fcrdns(ip: String, verdict v: FCrDNS.Verdict, required: Bool) -> [DoctorFinding] {
        let ptrs = v.ptr.joined(separator: ", ")
        let reverse = DomainRecords.reverseName(ip) ?? ip
        switch v.status {
        case .unknown:
            return [DoctorFinding(check: "fcrdns", subject: ip, severity: .warning, message: "could not check: \(v.detail ?? "lookup failed")",
                                  fix: "check the resolvers in dns: and run doctor again")]
        case .noPTR, .notConfirmed:
            let fix = v.status == .noPTR
                ? "ask the address owner to publish PTR \(reverse) → \(v.helo), and A/AAAA \(v.helo) → \(ip)"
                : "publish A/AAAA \(v.ptr.first ?? v.helo) → \(ip), or point the PTR at a name that resolves to \(ip)"
            return [DoctorFinding(check: "fcrdns", subject: ip, severity: required ? .error : .warning,
                                  message: (v.detail ?? "FCrDNS fails") + (required ? " (held: require_fcrdns)" : ""), fix: fix),
                    DoctorFinding(check: "helo", subject: ip, severity: .warning, message: "HELO \(v.helo) cannot match: no forward-confirmed PTR",
                                  fix: "fix FCrDNS first; the PTR name should be \(v.helo)")]
        case .heloMismatch:
            return [DoctorFinding(check: "fcrdns", subject: ip, severity: .ok, message: "PTR \(ptrs) resolves back to \(ip)", fix: nil),
                    DoctorFinding(check: "helo", subject: ip, severity: .warning, message: v.detail ?? "HELO is not the PTR name",
                                  fix: "set ips[].helo of \(ip) to \(v.ptr.first ?? "") in cluster.yml (and reload), or change the PTR to \(v.helo)")]
        case .ok:
            return [DoctorFinding(check: "fcrdns", subject: ip, severity: .ok, message: "PTR \(ptrs) resolves back to \(ip)", fix: nil),
                    DoctorFinding(check: "helo", subject: ip, severity: .ok, message: "HELO \(v.helo) is the PTR name", fix: nil)]
        }
    }

    /// The SPF finding of one domain from each sending IP's `check_host()` result.
    /// - Parameters:
    ///   - domain: the sending domain.
    ///   - results: sending IP → result, for the IPs that send its mail.
    /// - Returns: `ok` when every IP passes; `error` when one fails, has no record or a broken
    ///   one (`fail`, `none`, `permerror`); else `warning` (`softfail`, `neutral`, `temperror`).
    public static func spf(domain: String, results: [(ip: String, result: SPFEvaluator.Result)]) -> DoctorFinding {
        let bad = results.filter { $0.result != .pass }
        guard !bad.isEmpty else {
            return DoctorFinding(check: "spf", subject: domain, severity: .ok, message: "SPF passes for all \(results.count) sending IP(s)", fix: nil)
        }
        let severe = bad.contains { switch $0.result { case .fail, .none, .permerror: return true; default: return false } }
        let details = bad.map { r -> String in
            switch r.result {
            case .permerror(let why), .temperror(let why): return "\(r.ip): \(r.result.name) (\(why))"
            default: return "\(r.ip): \(r.result.name)"
            }
        }
        let uncovered = bad.filter { $0.result != .none && !$0.result.name.hasSuffix("error") }.map(\.ip)
        let fix: String
        if bad.allSatisfy({ $0.result == .none }) {
            fix = "publish a TXT record at \(domain): \(DomainRecords.spfValue(ips: results.map(\.ip), include: nil))"
        } else if !uncovered.isEmpty {
            fix = "add \(uncovered.map { ($0.contains(":") ? "ip6:" : "ip4:") + $0 }.joined(separator: " ")) (or an include: that covers them) to the SPF record of \(domain)"
        } else {
            fix = "fix the SPF record of \(domain) (RFC 7208: one v=spf1 record, at most 10 DNS lookups) and check the resolvers"
        }
        return DoctorFinding(check: "spf", subject: domain, severity: severe ? .error : .warning,
                             message: "SPF does not pass for \(bad.count) of \(results.count) sending IP(s): \(details.joined(separator: "; "))", fix: fix)
    }

    /// A DKIM finding from `DomainCheck`'s item for one key record.
    public static func dkim(_ item: DomainCheckItem) -> DoctorFinding {
        switch item.status {
        case .ok:
            return DoctorFinding(check: "dkim", subject: item.name, severity: .ok, message: "the published key matches", fix: nil)
        case .lookupFailed:
            return DoctorFinding(check: "dkim", subject: item.name, severity: .warning, message: "could not check: \(item.detail ?? "")",
                                 fix: "check the resolvers in dns: and run doctor again")
        case .missing, .wrong:
            return DoctorFinding(check: "dkim", subject: item.name, severity: .error,
                                 message: (item.detail ?? "not as required") + (item.found.isEmpty ? "" : " (found: \(item.found.joined(separator: " | ")))"),
                                 fix: "publish TXT \(item.name) \"\(item.expected)\"")
        }
    }

    /// A listener certificate's finding.
    /// - Parameters:
    ///   - listener: the configuration key, e.g. `smtp.tls.certificate`.
    ///   - path: the certificate file.
    ///   - secondsUntilExpiry: seconds until its first certificate expires (negative: expired),
    ///     nil with `error` when it could not be read.
    ///   - error: why it could not be read.
    /// - Returns: `error` when expired or unreadable, `warning` under 14 days, else `ok`.
    public static func certificate(listener: String, path: String, secondsUntilExpiry: Int?, error: String? = nil) -> DoctorFinding {
        guard let s = secondsUntilExpiry else {
            return DoctorFinding(check: "tls", subject: listener, severity: .error, message: "\(path): \(error ?? "unreadable")",
                                 fix: "install a readable PEM certificate at \(path)")
        }
        if s <= 0 {
            return DoctorFinding(check: "tls", subject: listener, severity: .error, message: "\(path) expired \(-s / 86_400) day(s) ago",
                                 fix: "renew the certificate at \(path) and restart or reload")
        }
        if s < certificateWarning {
            return DoctorFinding(check: "tls", subject: listener, severity: .warning, message: "\(path) expires in \(s / 86_400) day(s)",
                                 fix: "renew the certificate at \(path) before it expires")
        }
        return DoctorFinding(check: "tls", subject: listener, severity: .ok, message: "\(path) expires in \(s / 86_400) days", fix: nil)
    }

    /// The certificates of the coordinator's listeners (`coordinator.admin_tls`, `smtp.tls`,
    /// `http_api.tls`, `cluster.tls`): configuration key and file.
    public static func listenerCertificates(_ c: ClusterConfig) -> [(listener: String, path: String)] {
        var out: [(String, String)] = []
        if let t = c.coordinator.adminTLS { out.append(("coordinator.admin_tls", t.pair.certificatePath)) }
        if let t = c.smtp.tls { out.append(("smtp.tls", t.certificatePath)) }
        if let t = c.httpAPI?.tls { out.append(("http_api.tls", t.certificatePath)) }
        if let t = c.cluster.tls { out.append(("cluster.tls", t.pair.certificatePath)) }
        return out
    }

    /// Runs every check.
    /// - Parameters:
    ///   - config: the configuration in force.
    ///   - store: the tenants' sending domains and keys.
    ///   - nodeClocks: the nodes' last heartbeat clock readings (`ClusterHub.nodeClockSamples`).
    ///   - now: the coordinator's clock.
    /// - Returns: the report. Blocks on DNS (run it off the cooperative pool).
    public static func run(config: ClusterConfig, store: any QueueStore, nodeClocks: [String: ClockSkew.Sample], now: Date) -> DoctorReport {
        var findings: [DoctorFinding] = []
        if config.dns.nameservers.isEmpty {
            findings.append(DoctorFinding(check: "dns", subject: "dns.nameservers", severity: .warning,
                                          message: "no resolvers configured: PTR, FCrDNS, SPF and DKIM were not checked",
                                          fix: "set dns: { nameservers: [...] } in cluster.yml"))
        } else {
            findings += dnsFindings(config: config, store: store)
        }
        for (listener, path) in listenerCertificates(config) {
            do { findings.append(certificate(listener: listener, path: path, secondsUntilExpiry: try TLSCertificateFile.inspect(path).secondsUntilExpiry)) }
            catch { findings.append(certificate(listener: listener, path: path, secondsUntilExpiry: nil, error: "\(error)")) }
        }
        for node in config.nodes.map(\.id).sorted() {
            findings.append(ClockSkew.finding(node: node, sample: nodeClocks[node], now: now))
        }
        return DoctorReport(findings: findings, now: now)
    }

    /// The findings that need DNS: FCrDNS/HELO per IP, DKIM and SPF per domain.
    static func dnsFindings(config: ClusterConfig, store: any QueueStore) -> [DoctorFinding] {
        let resolver = DNSResolver(nameservers: config.dns.nameservers, timeout: config.dns.timeout)
        var findings: [DoctorFinding] = []
        for ip in config.ips {
            findings += fcrdns(ip: ip.address, verdict: FCrDNS.check(ip: ip.address, helo: ip.helo, resolver: resolver),
                               required: config.reputation.requireFCrDNS)
        }
        // The domains: the tenants' (sent from their pool's IPs) and cluster.yml's DKIM domains.
        var domains: [(domain: String, ips: [String], records: DomainRecords?)] = []
        do {
            let pools = Dictionary(try store.tenants().map { ($0.name, $0.pool) }, uniquingKeysWith: { a, _ in a })
            for d in try store.sendingDomains(tenant: nil) {
                let pool = pools[d.tenant] ?? nil
                let ips = config.ips.filter { pool == nil || $0.pool == pool }
                domains.append((d.domain, ips.map(\.address), DomainRecords(domain: d, config: config)))
            }
        } catch {
            findings.append(DoctorFinding(check: "spf", subject: "(tenants)", severity: .warning, message: "the sending domains could not be read: \(error)",
                                          fix: "check the store"))
        }
        var configKeys: [String: [DomainRecords.Record]] = [:]
        for k in config.dkim {
            let name = "\(k.selector)._domainkey.\(k.domain)"
            do {
                let value = try k.loadKey().dnsRecord()
                configKeys[k.domain, default: []].append(.init(kind: .dkim, name: name, type: "TXT", value: value))
            } catch {
                findings.append(DoctorFinding(check: "dkim", subject: name, severity: .error, message: "\(error)", fix: "fix dkim: in cluster.yml"))
            }
        }
        for domain in configKeys.keys.sorted() where !domains.contains(where: { $0.domain == domain }) {
            var records = DomainRecords(domain: domain, keys: [], ips: [], spfInclude: nil)
            records.records = configKeys[domain] ?? []
            domains.append((domain, config.ips.map(\.address), records))
        }
        var cache: [String: DNSAnswer] = [:]
        for d in domains {
            if let records = d.records {
                var onlyKeys = records
                onlyKeys.records = records.records.filter { $0.kind == .dkim } + (configKeys[d.domain] ?? []).filter { k in
                    !records.records.contains { $0.name == k.name }
                }
                findings += DomainCheck(records: onlyKeys).run(using: resolver).map(dkim)
            }
            guard !d.ips.isEmpty else { continue }
            let results = d.ips.map { ip -> (ip: String, result: SPFEvaluator.Result) in
                var e = SPFEvaluator { name, type in
                    let key = "\(type) \(name)"
                    if let a = cache[key] { return a }
                    let a = resolver.query(name, type: type)
                    cache[key] = a
                    return a
                }
                return (ip, e.check(ip: ip, domain: d.domain))
            }
            findings.append(spf(domain: d.domain, results: results))
        }
        return findings
    }
}
