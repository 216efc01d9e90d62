import Foundation
import HatoConfig
import HatoDKIM

/// The DNS records a tenant publishes for a sending domain, and those the operator publishes
/// for the cluster's sending IPs (issue 16): what `domain add` prints and `domain check` looks up.
///
/// - DKIM (RFC 6376 §3.6.1, RFC 8463 §4): one TXT per key at `<selector>._domainkey.<domain>`,
///   split into strings of at most 255 octets (RFC 6376 §3.6.2.2).
/// - SPF (RFC 7208 §3): `v=spf1 include:<tenants.spf_include> ~all`, or without an include
///   name every sending IP (`ip4:`/`ip6:`, RFC 7208 §5.6).
/// - DMARC (RFC 7489 §6.1): a suggestion, `p=none` with aggregate reports to the domain.
/// - Per sending IP: its PTR (reverse DNS) names its HELO name, and the HELO name resolves back
///   to the IP (forward-confirmed reverse DNS), which many receivers require.
public struct DomainRecords: Sendable, Equatable, Codable {
    /// What a record is for.
    public enum Kind: String, Sendable, Equatable, Codable {
        /// A DKIM key record of the tenant's domain.
        case dkim
        /// The SPF record of the tenant's domain.
        case spf
        /// The suggested DMARC record of the tenant's domain.
        case dmarc
        /// The PTR of a sending IP (published by whoever holds its reverse zone).
        case ptr
        /// The A or AAAA record of a sending IP's HELO name.
        case forward
    }

    /// One record to publish.
    public struct Record: Sendable, Equatable, Codable {
        /// What it is for.
        public var kind: Kind
        /// The owner name, lower-case, without the trailing dot.
        public var name: String
        /// `TXT`, `PTR`, `A` or `AAAA`.
        public var type: String
        /// The value: the whole TXT text (before splitting), the PTR target, or the address.
        public var value: String
        /// For TXT: the character-strings to publish (each at most 255 octets).
        public var strings: [String]?
        /// The DKIM selector (kind `dkim`).
        public var selector: String?
        /// The sending IP (kinds `ptr` and `forward`).
        public var address: String?
        /// Whether this is a suggestion rather than a requirement (DMARC).
        public var suggestion: Bool

        /// A record from its parts.
        public init(kind: Kind, name: String, type: String, value: String, strings: [String]? = nil,
                    selector: String? = nil, address: String? = nil, suggestion: Bool = false) {
            self.kind = kind; self.name = name; self.type = type; self.value = value; self.strings = strings
            self.selector = selector; self.address = address; self.suggestion = suggestion
        }
    }

    /// The tenant's domain.
    public var domain: String
    /// The SPF include name in force (`tenants.spf_include`), nil when the IPs are listed.
    public var spfInclude: String?
    /// Every record: DKIM keys, SPF, DMARC, then PTR and forward record of each sending IP.
    public var records: [Record]

    /// The records for `domain` under `config` (`ips`, `tenants.spf_include`).
    public init(domain: SendingDomain, config: ClusterConfig) {
        self.init(domain: domain.domain, keys: domain.keys, ips: config.ips.map { (address: $0.address, helo: $0.helo) },
                  spfInclude: config.tenants.spfInclude)
    }

    /// The records from their parts.
    /// - Parameters:
    ///   - domain: the tenant's domain (lower-case, no trailing dot).
    ///   - keys: its DKIM keys.
    ///   - ips: every sending IP of the cluster with its HELO name, in configuration order.
    ///   - spfInclude: the cluster's SPF include name, nil to list the IPs.
    public init(domain: String, keys: [DomainSigningKey], ips: [(address: String, helo: String)], spfInclude: String?) {
        self.domain = domain
        self.spfInclude = spfInclude
        var out: [Record] = []
        for key in keys {
            let keyType = DKIMAlgorithm(rawValue: key.algorithm)?.keyType ?? "rsa"
            let value = "v=DKIM1; k=\(keyType); p=\(key.publicKey)"
            out.append(Record(kind: .dkim, name: "\(key.selector)._domainkey.\(domain)", type: "TXT", value: value,
                              strings: TXTStrings.split(value), selector: key.selector))
        }
        let spf = DomainRecords.spfValue(ips: ips.map(\.address), include: spfInclude)
        out.append(Record(kind: .spf, name: domain, type: "TXT", value: spf, strings: TXTStrings.split(spf)))
        let dmarc = "v=DMARC1; p=none; rua=mailto:dmarc-reports@\(domain)"
        out.append(Record(kind: .dmarc, name: "_dmarc.\(domain)", type: "TXT", value: dmarc, strings: [dmarc], suggestion: true))
        for ip in ips {
            let isV6 = ip.address.contains(":")
            if let reverse = DomainRecords.reverseName(ip.address) {
                out.append(Record(kind: .ptr, name: reverse, type: "PTR", value: ip.helo, address: ip.address))
            }
            out.append(Record(kind: .forward, name: ip.helo, type: isV6 ? "AAAA" : "A", value: ip.address, address: ip.address))
        }
        records = out
    }

    /// `v=spf1 include:<name> ~all`, or `v=spf1 ip4:… ip6:… ~all` listing `ips` once each
    /// (RFC 7208 §5.2, §5.6; `~all`: softfail for the rest, §8.5).
    public static func spfValue(ips: [String], include: String?) -> String {
        if let include { return "v=spf1 include:\(include) ~all" }
        var seen = Set<String>()
        let mechanisms = ips.filter { seen.insert($0).inserted }.map { ($0.contains(":") ? "ip6:" : "ip4:") + $0 }
        return (["v=spf1"] + mechanisms + ["~all"]).joined(separator: " ")
    }

    /// The reverse-lookup name of a numeric address: `4.3.2.192.in-addr.arpa` (RFC 1035 §3.5)
    /// or 32 nibbles under `ip6.arpa` (RFC 3596 §2.5); nil for anything else.
    public static func reverseName(_ address: String) -> String? {
        guard let bytes = try? IPNetwork(parsing: address).addressBytes else { return nil }
        if bytes.count == 4 { return bytes.reversed().map(String.init).joined(separator: ".") + ".in-addr.arpa" }
        let hex = Array("0123456789abcdef")
        var nibbles: [String] = []
        for b in bytes.reversed() {
            nibbles.append(String(hex[Int(b & 0x0F)]))
            nibbles.append(String(hex[Int(b >> 4)]))
        }
        return nibbles.joined(separator: ".") + ".ip6.arpa"
    }

    /// The records as zone-file text (RFC 1035 §5.1), absolute names, with comments saying what
    /// each group is for and who publishes it.
    public var zoneText: String {
        var lines: [String] = ["; DNS records for \(domain)"]
        func txt(_ r: Record) -> String {
            let strings = (r.strings ?? [r.value]).map { "\"\($0)\"" }
            return strings.count == 1 ? "\(r.name). IN TXT \(strings[0])" : "\(r.name). IN TXT ( \(strings.joined(separator: " ")) )"
        }
        let dkim = records.filter { $0.kind == .dkim }
        if !dkim.isEmpty {
            lines.append("; DKIM keys (RFC 6376, RFC 8463): mail is signed with each of them.")
            lines += dkim.map(txt)
        }
        for r in records where r.kind == .spf {
            lines.append(spfInclude == nil
                         ? "; SPF (RFC 7208): the cluster's sending IPs. A domain has one SPF record: merge these into an existing one."
                         : "; SPF (RFC 7208): the relay's sending IPs by include. A domain has one SPF record: add the include to an existing one.")
            lines.append(txt(r))
        }
        for r in records where r.kind == .dmarc {
            lines.append("; DMARC (RFC 7489), a suggestion: start with p=none, read the reports, then move to quarantine or reject.")
            lines.append(txt(r))
        }
        let hosts = records.filter { $0.kind == .ptr || $0.kind == .forward }
        if !hosts.isEmpty {
            lines.append("; Sending IPs (published by the relay's operator): each IP's PTR names its HELO name, and that name")
            lines.append("; resolves back to the IP (forward-confirmed reverse DNS).")
            for r in hosts { lines.append(r.type == "PTR" ? "\(r.name). IN PTR \(r.value)." : "\(r.name). IN \(r.type) \(r.value)") }
        }
        return lines.joined(separator: "\n") + "\n"
    }
}
