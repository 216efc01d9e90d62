import Foundation
import HatoConfig
import HatoDNS

/// What `domain check` found for one record.
public struct DomainCheckItem: Sendable, Equatable, Codable, CustomStringConvertible {
    /// The verdict.
    public enum Status: String, Sendable, Equatable, Codable {
        /// Published as required.
        case ok
        /// Not published (NXDOMAIN, no records of the type, or none of the right kind).
        case missing
        /// Published, but not as required (`found` says what is there).
        case wrong
        /// The lookup failed (SERVFAIL, timeout): nothing can be said; try again.
        case lookupFailed = "lookup_failed"
    }

    /// What the record is for.
    public var kind: DomainRecords.Kind
    /// The name looked up.
    public var name: String
    /// The verdict.
    public var status: Status
    /// What should be there.
    public var expected: String
    /// What is there (TXT values joined, PTR targets, addresses), in answer order.
    public var found: [String]
    /// Why the verdict, for `missing`, `wrong` and `lookup_failed`.
    public var detail: String?

    /// An item from its parts.
    public init(kind: DomainRecords.Kind, name: String, status: Status, expected: String, found: [String] = [], detail: String? = nil) {
        self.kind = kind; self.name = name; self.status = status; self.expected = expected; self.found = found; self.detail = detail
    }

    /// One line for the CLI: `ok      dkim  hato20261205e._domainkey.shop.example`, then for
    /// anything not ok the reason and what was found.
    public var description: String {
        var line = status.rawValue.padding(toLength: 14, withPad: " ", startingAt: 0) + kind.rawValue.padding(toLength: 8, withPad: " ", startingAt: 0) + name
        if status != .ok {
            if let detail { line += ": \(detail)" }
            if !found.isEmpty { line += " (found: \(found.map { "\"\($0)\"" }.joined(separator: ", ")))" }
        }
        return line
    }
}

/// `hato-coordinator domain check`: looks up every record of `DomainRecords` through the
/// cluster's resolvers (`dns:`) and says of each whether it is published as required.
///
/// - DKIM: a TXT at `<selector>._domainkey.<domain>` whose `p=` is the key's (RFC 6376 §3.6.1).
/// - SPF: the one `v=spf1` TXT at the domain (RFC 7208 §4.5: several are an error) holds the
///   include, or covers every sending IP with `ip4:`/`ip6:`; a record without either is `wrong`.
/// - DMARC: a `v=DMARC1` TXT at `_dmarc.<domain>` (RFC 7489 §6.6.3); any policy is ok.
/// - Each sending IP: its PTR names its HELO name, and that name's A/AAAA has the IP (FCrDNS).
public struct DomainCheck: Sendable {
    /// What should be published.
    public let records: DomainRecords

    /// A check of `records`.
    public init(records: DomainRecords) { self.records = records }

    /// Looks every record up through the resolvers of `config.dns` (the system's only when
    /// `dns.nameservers` is empty, as for delivery).
    /// - Returns: one item per record, in the order of `records`.
    public func run(config: ClusterConfig) -> [DomainCheckItem] {
        run(using: DNSResolver(nameservers: config.dns.nameservers, timeout: config.dns.timeout))
    }

    /// Looks every record up.
    /// - Parameter resolver: the cluster's resolver (`DNSResolver(nameservers: config.dns.nameservers,
    ///   timeout: config.dns.timeout)`); its calls block, so run this off the cooperative pool.
    /// - Returns: one item per record of `records`, in its order (SPF and DMARC once each).
    public func run(using resolver: DNSResolver) -> [DomainCheckItem] {
        records.records.map { r in
            switch r.kind {
            case .dkim: return checkDKIM(r, resolver)
            case .spf: return checkSPF(r, resolver)
            case .dmarc: return checkDMARC(r, resolver)
            case .ptr: return checkPTR(r, resolver)
            case .forward: return checkForward(r, resolver)
            }
        }
    }

    private enum TXTLookup { case values([String]), failed(DomainCheckItem) }

    /// TXT values at `name` (each record's strings joined), or the item to report instead.
    private func txt(_ r: DomainRecords.Record, _ resolver: DNSResolver) -> TXTLookup {
        switch resolver.query(r.name, type: .txt) {
        case .records(let rs):
            return .values(rs.compactMap { if case .txt(let s) = $0.data { return s.joined() } else { return nil } })
        case .noData, .nxdomain:
            return .values([])
        case .temporaryFailure(let why):
            return .failed(DomainCheckItem(kind: r.kind, name: r.name, status: .lookupFailed, expected: r.value, detail: why))
        }
    }

    private func checkDKIM(_ r: DomainRecords.Record, _ resolver: DNSResolver) -> DomainCheckItem {
        let values: [String]
        switch txt(r, resolver) {
        case .failed(let item): return item
        case .values(let v): values = v
        }
        let wanted = DomainCheck.tags(r.value)["p"] ?? ""
        let keys = values.filter { DomainCheck.tags($0)["p"] != nil }
        if keys.contains(where: { DomainCheck.tags($0)["p"] == wanted }) {
            return DomainCheckItem(kind: .dkim, name: r.name, status: .ok, expected: r.value, found: values)
        }
        if keys.isEmpty {
            return DomainCheckItem(kind: .dkim, name: r.name, status: .missing, expected: r.value, found: values, detail: "no DKIM key record")
        }
        return DomainCheckItem(kind: .dkim, name: r.name, status: .wrong, expected: r.value, found: values, detail: "the published p= is another key")
    }

    private func checkSPF(_ r: DomainRecords.Record, _ resolver: DNSResolver) -> DomainCheckItem {
        let values: [String]
        switch txt(r, resolver) {
        case .failed(let item): return item
        case .values(let v): values = v
        }
        let spf = values.filter { v in
            let l = v.lowercased()
            return l == "v=spf1" || l.hasPrefix("v=spf1 ")
        }
        guard let record = spf.first else {
            return DomainCheckItem(kind: .spf, name: r.name, status: .missing, expected: r.value, found: values, detail: "no v=spf1 record")
        }
        guard spf.count == 1 else {
            return DomainCheckItem(kind: .spf, name: r.name, status: .wrong, expected: r.value, found: spf,
                                   detail: "\(spf.count) SPF records: receivers treat that as an error (RFC 7208 §4.5); merge them")
        }
        let terms = record.split(separator: " ").map { $0.lowercased() }
        if let include = records.spfInclude, terms.contains(where: { $0 == "include:\(include)" || $0 == "+include:\(include)" }) {
            return DomainCheckItem(kind: .spf, name: r.name, status: .ok, expected: r.value, found: spf)
        }
        let addresses = records.records.filter { $0.kind == .forward }.compactMap(\.address)
        let uncovered = addresses.filter { ip in !terms.contains { DomainCheck.spfTerm($0, covers: ip) } }
        if !addresses.isEmpty && uncovered.isEmpty {
            return DomainCheckItem(kind: .spf, name: r.name, status: .ok, expected: r.value, found: spf)
        }
        let missing = records.spfInclude.map { "include:\($0)" } ?? uncovered.joined(separator: ", ")
        return DomainCheckItem(kind: .spf, name: r.name, status: .wrong, expected: r.value, found: spf, detail: "the SPF record lacks \(missing)")
    }

    private func checkDMARC(_ r: DomainRecords.Record, _ resolver: DNSResolver) -> DomainCheckItem {
        let values: [String]
        switch txt(r, resolver) {
        case .failed(let item): return item
        case .values(let v): values = v
        }
        let dmarc = values.filter { DomainCheck.tags($0)["v"] == "DMARC1" && $0.hasPrefix("v=") }
        if dmarc.count == 1 { return DomainCheckItem(kind: .dmarc, name: r.name, status: .ok, expected: r.value, found: dmarc) }
        if values.isEmpty {
            return DomainCheckItem(kind: .dmarc, name: r.name, status: .missing, expected: r.value, detail: "no DMARC record (the value shown is a suggestion)")
        }
        let why = dmarc.isEmpty ? "no record starts with v=DMARC1" : "\(dmarc.count) DMARC records: receivers ignore them all (RFC 7489 §6.6.3)"
        return DomainCheckItem(kind: .dmarc, name: r.name, status: .wrong, expected: r.value, found: values, detail: why)
    }

    private func checkPTR(_ r: DomainRecords.Record, _ resolver: DNSResolver) -> DomainCheckItem {
        switch resolver.query(r.name, type: .ptr) {
        case .records(let rs):
            let names = rs.compactMap { if case .ptr(let n) = $0.data { return n } else { return nil } }
            if names.contains(r.value.lowercased()) { return DomainCheckItem(kind: .ptr, name: r.name, status: .ok, expected: r.value, found: names) }
            if names.isEmpty { return DomainCheckItem(kind: .ptr, name: r.name, status: .missing, expected: r.value, detail: "no PTR record") }
            return DomainCheckItem(kind: .ptr, name: r.name, status: .wrong, expected: r.value, found: names,
                                   detail: "the PTR of \(r.address ?? "") does not name its HELO name")
        case .noData, .nxdomain:
            return DomainCheckItem(kind: .ptr, name: r.name, status: .missing, expected: r.value, detail: "no PTR record")
        case .temporaryFailure(let why):
            return DomainCheckItem(kind: .ptr, name: r.name, status: .lookupFailed, expected: r.value, detail: why)
        }
    }

    private func checkForward(_ r: DomainRecords.Record, _ resolver: DNSResolver) -> DomainCheckItem {
        let type: DNSRecordType = r.type == "AAAA" ? .aaaa : .a
        switch resolver.query(r.name, type: type) {
        case .records(let rs):
            let addresses = rs.compactMap { rec -> String? in
                switch rec.data {
                case .a(let a), .aaaa(let a): return a
                default: return nil
                }
            }
            let wanted = (try? IPNetwork(parsing: r.value).addressBytes) ?? []
            if addresses.contains(where: { (try? IPNetwork(parsing: $0).addressBytes) == wanted }) {
                return DomainCheckItem(kind: .forward, name: r.name, status: .ok, expected: r.value, found: addresses)
            }
            if addresses.isEmpty { return DomainCheckItem(kind: .forward, name: r.name, status: .missing, expected: r.value, detail: "no \(r.type) record") }
            return DomainCheckItem(kind: .forward, name: r.name, status: .wrong, expected: r.value, found: addresses,
                                   detail: "\(r.name) does not resolve back to \(r.value)")
        case .noData, .nxdomain:
            return DomainCheckItem(kind: .forward, name: r.name, status: .missing, expected: r.value, detail: "no \(r.type) record")
        case .temporaryFailure(let why):
            return DomainCheckItem(kind: .forward, name: r.name, status: .lookupFailed, expected: r.value, detail: why)
        }
    }

    /// The `tag=value` pairs of a DKIM or DMARC record (RFC 6376 §3.2), values without
    /// whitespace (a `p=` may be folded with spaces).
    static func tags(_ record: String) -> [String: String] {
        var out: [String: String] = [:]
        for part in record.split(separator: ";") {
            guard let eq = part.firstIndex(of: "=") else { continue }
            let name = part[..<eq].trimmingCharacters(in: .whitespacesAndNewlines)
            let value = part[part.index(after: eq)...].filter { !$0.isWhitespace }
            if out[name] == nil { out[name] = String(value) }
        }
        return out
    }

    /// Whether an SPF term (lower-case) `ip4:a.b.c.d[/n]` or `ip6:…[/n]` with a pass
    /// qualifier covers `address` (RFC 7208 §5.6).
    static func spfTerm(_ term: String, covers address: String) -> Bool {
        var t = Substring(term)
        if t.hasPrefix("+") { t = t.dropFirst() }
        guard t.hasPrefix("ip4:") || t.hasPrefix("ip6:") else { return false }
        let spec = t.dropFirst(4)
        let parts = spec.split(separator: "/", maxSplits: 1)
        guard let first = parts.first, let net = try? IPNetwork(parsing: String(first)).addressBytes,
              let ip = try? IPNetwork(parsing: address).addressBytes, net.count == ip.count else { return false }
        return IPNetwork.covers(network: net, prefix: parts.count == 2 ? (Int(parts[1]) ?? -1) : net.count * 8, address: ip)
    }
}
