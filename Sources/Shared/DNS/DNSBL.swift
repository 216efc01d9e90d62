#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// DNS blocklists (DNSBLs, RFC 5782): whether a sending IP is listed in a zone such as
/// `zen.spamhaus.org`, `b.barracudacentral.org` or `bl.spamcop.net`.
///
/// The query name is the address in reverse order under the zone (RFC 5782 §2.1: IPv4 octets,
/// IPv6 nibbles, §2.4); an A record in 127.0.0.0/8 is a listing (its address is the list's
/// return code), and a TXT record at the same name gives the reason. NXDOMAIN means not listed.
/// A resolver error or timeout is **not** a listing (an unreachable blocklist must never pause
/// an IP); neither are the answers lists use to refuse a query rather than answer it (Spamhaus'
/// `127.255.255.x`: public resolver, excessive queries, …).
public enum DNSBL {
    /// What one lookup found.
    public enum Verdict: Sendable, Equatable {
        /// Listed: the return codes (e.g. `127.0.0.2`) and the TXT reason, if any.
        case listed(codes: [String], reason: String?)
        /// Not listed (NXDOMAIN, or no A record).
        case notListed
        /// Unknown: the lookup failed or the list refused to answer; never acted upon.
        case unknown(String)
    }

    /// The query name for `ip` in `zone`, or nil when `ip` is not a numeric address.
    /// - Parameters:
    ///   - ip: an IPv4 (`192.0.2.10`) or IPv6 (`2001:db8::1`) address.
    ///   - zone: the blocklist zone, e.g. `zen.spamhaus.org`.
    /// - Returns: e.g. `10.2.0.192.zen.spamhaus.org` (RFC 5782 §2.1, §2.4).
    public static func queryName(for ip: String, zone: String) -> String? {
        let zone = zone.hasSuffix(".") ? String(zone.dropLast()) : zone
        if ip.contains(":") {
            var addr = in6_addr()
            guard inet_pton(AF_INET6, ip, &addr) == 1 else { return nil }
            let bytes = withUnsafeBytes(of: &addr) { Array($0) }
            let hex = Array("0123456789abcdef")
            var nibbles: [String] = []
            for b in bytes.reversed() {
                nibbles.append(String(hex[Int(b & 0x0F)]))
                nibbles.append(String(hex[Int(b >> 4)]))
            }
            return nibbles.joined(separator: ".") + "." + zone
        }
        let octets = ip.split(separator: ".", omittingEmptySubsequences: false)
        guard octets.count == 4, octets.allSatisfy({ UInt8($0) != nil && ($0.count == 1 || !$0.hasPrefix("0")) }) else { return nil }
        return octets.reversed().joined(separator: ".") + "." + zone
    }

    /// Interprets a blocklist's answers.
    /// - Parameters:
    ///   - a: the answer to the A query.
    ///   - txt: the answer to the TXT query (asked only when listed), if any.
    public static func verdict(a: DNSAnswer, txt: DNSAnswer?) -> Verdict {
        switch a {
        case .nxdomain, .noData:
            return .notListed
        case .temporaryFailure(let why):
            return .unknown(why)
        case .records(let records):
            let codes = records.compactMap { r -> String? in if case .a(let v) = r.data { return v } else { return nil } }
            guard !codes.isEmpty else { return .notListed }
            if codes.contains(where: { $0.hasPrefix("127.255.255.") }) {
                return .unknown("the list refused the query (\(codes.joined(separator: ",")): public or over-used resolver)")
            }
            let listing = codes.filter { $0.hasPrefix("127.") }
            guard !listing.isEmpty else { return .unknown("answer outside 127.0.0.0/8 (\(codes.joined(separator: ","))): a wildcard or a dead list") }
            var reason: String?
            if case .records(let t)? = txt {
                reason = t.compactMap { r -> String? in if case .txt(let s) = r.data { return s.joined() } else { return nil } }.first
            }
            return .listed(codes: listing.sorted(), reason: reason.map { String($0.prefix(300)) })
        }
    }

    /// Looks `ip` up in `zone` through `resolver` (A, then TXT when listed).
    public static func check(_ ip: String, zone: String, resolver: DNSResolver) -> Verdict {
        guard let name = queryName(for: ip, zone: zone) else { return .unknown("not a numeric address: \(ip)") }
        let a = resolver.query(name, type: .a)
        var txt: DNSAnswer?
        if case .records = a { txt = resolver.query(name, type: .txt) }
        return verdict(a: a, txt: txt)
    }
}
