import Foundation
import HatoConfig
import HatoDNS

/// The SPF `check_host()` function (RFC 7208 §4) for one IP and one domain, as `doctor` needs
/// it: would a receiver's SPF check pass mail from this sending IP for this domain?
///
/// Evaluates `ip4:`, `ip6:`, `a`, `mx`, `include:`, `exists:`, `all` and `redirect=` with their
/// CIDR lengths (§5), the limit of 10 DNS-querying terms (`include`, `a`, `mx`, `ptr`,
/// `exists`, `redirect`; §4.6.4) across the whole evaluation, at most 10 MX names per `mx`
/// (§4.6.4), and at most 2 void lookups (§4.6.4). `ptr` (discouraged, §5.5) counts as a lookup
/// and does not match; a domain-spec with macros (`%{…}`, §7) is not expanded and does not
/// match. Lookups go through `lookup` (the cluster's resolvers). A pure value but for `lookup`.
public struct SPFEvaluator {
    /// The result of `check_host()` (RFC 7208 §2.6).
    public enum Result: Sendable, Equatable {
        case pass, fail, softfail, neutral, none
        /// A DNS error (RFC 7208 §2.6.6): nothing can be said now.
        case temperror(String)
        /// The record could not be interpreted, or a limit was passed (§2.6.7).
        case permerror(String)

        /// The result's name as RFC 7208 writes it (`pass`, `permerror`, …).
        public var name: String {
            switch self {
            case .pass: return "pass"
            case .fail: return "fail"
            case .softfail: return "softfail"
            case .neutral: return "neutral"
            case .none: return "none"
            case .temperror: return "temperror"
            case .permerror: return "permerror"
            }
        }
    }

    /// The most DNS-querying terms one evaluation may use (RFC 7208 §4.6.4).
    public static let lookupLimit = 10
    /// The most void lookups (NXDOMAIN or no data) one evaluation may have (§4.6.4).
    public static let voidLookupLimit = 2

    private let lookup: (String, DNSRecordType) -> DNSAnswer
    /// DNS-querying terms used so far.
    public private(set) var lookups = 0
    private var voids = 0

    /// - Parameter lookup: answers one query (name, type); e.g. `DNSResolver.query`.
    public init(lookup: @escaping (String, DNSRecordType) -> DNSAnswer) { self.lookup = lookup }

    /// `check_host(ip, domain)`.
    /// - Parameters:
    ///   - ip: the sending IP (IPv4 or IPv6 text).
    ///   - domain: the domain whose SPF record is evaluated (a MAIL FROM or HELO domain).
    /// - Returns: the result.
    public mutating func check(ip: String, domain: String) -> Result {
        guard let address = try? IPNetwork(parsing: ip).addressBytes else { return .permerror("not an IP address: \(ip)") }
        return checkHost(address, Self.normalize(domain), depth: 0)
    }

    private static func normalize(_ d: some StringProtocol) -> String {
        let l = d.lowercased()
        return l.hasSuffix(".") ? String(l.dropLast()) : l
    }

    private mutating func checkHost(_ ip: [UInt8], _ domain: String, depth: Int) -> Result {
        guard depth < 20 else { return .permerror("include/redirect nested too deeply") }
        let records: [String]
        switch lookup(domain, .txt) {
        case .temporaryFailure(let why): return .temperror("TXT \(domain): \(why)")
        case .nxdomain, .noData: return .none
        case .records(let rs):
            records = rs.compactMap { if case .txt(let s) = $0.data { return s.joined() } else { return nil } }
                .filter { let l = $0.lowercased(); return l == "v=spf1" || l.hasPrefix("v=spf1 ") }
        }
        guard !records.isEmpty else { return .none }
        guard records.count == 1 else { return .permerror("\(records.count) SPF records at \(domain) (RFC 7208 §4.5)") }
        let terms = records[0].split(separator: " ").dropFirst().map(String.init)
        var redirect: String?
        for term in terms {
            let lower = term.lowercased()
            if let eq = lower.firstIndex(of: "="), !lower[..<eq].contains(":") {
                let name = lower[..<eq], value = String(lower[lower.index(after: eq)...])
                if name == "redirect" { if redirect != nil { return .permerror("two redirect= at \(domain)") }; redirect = value }
                continue  // exp= and unknown modifiers (§6) do not change the result
            }
            var body = Substring(lower)
            var qualifier: Result = .pass
            switch body.first {
            case "+": body = body.dropFirst()
            case "-": qualifier = .fail; body = body.dropFirst()
            case "~": qualifier = .softfail; body = body.dropFirst()
            case "?": qualifier = .neutral; body = body.dropFirst()
            default: break
            }
            switch match(String(body), ip: ip, domain: domain, depth: depth) {
            case .matched: return qualifier
            case .noMatch: continue
            case .error(let e): return e
            }
        }
        if let redirect {
            if let e = countLookup() { return e }
            guard !redirect.contains("%") else { return .permerror("redirect=\(redirect) uses macros, not evaluated") }
            let r = checkHost(ip, Self.normalize(redirect), depth: depth + 1)
            if r == .none { return .permerror("redirect=\(redirect) has no SPF record") }
            return r
        }
        return .neutral
    }

    private enum Match { case matched, noMatch, error(Result) }

    private mutating func countLookup() -> Result? {
        lookups += 1
        return lookups > Self.lookupLimit ? .permerror("more than \(Self.lookupLimit) DNS lookups (RFC 7208 §4.6.4)") : nil
    }

    /// `name[:domain][/cidr4][//cidr6]` → (domain or nil, cidr4, cidr6).
    private static func split(_ rest: Substring) -> (domain: String?, v4: Int, v6: Int)? {
        var spec = rest, v4 = 32, v6 = 128
        if let r = spec.range(of: "//") {
            guard let n = Int(spec[r.upperBound...]), (0...128).contains(n) else { return nil }
            v6 = n; spec = spec[..<r.lowerBound]
        }
        if let slash = spec.lastIndex(of: "/") {
            guard let n = Int(spec[spec.index(after: slash)...]), (0...32).contains(n) else { return nil }
            v4 = n; spec = spec[..<slash]
        }
        if spec.isEmpty { return (nil, v4, v6) }
        guard spec.first == ":" else { return nil }
        let d = spec.dropFirst()
        return d.isEmpty ? nil : (String(d), v4, v6)
    }

    private mutating func match(_ mechanism: String, ip: [UInt8], domain: String, depth: Int) -> Match {
        let name = mechanism.prefix { $0 != ":" && $0 != "/" }
        let rest = mechanism.dropFirst(name.count)
        switch name {
        case "all":
            return rest.isEmpty ? .matched : .error(.permerror("bad term \(mechanism)"))
        case "ip4", "ip6":
            guard rest.first == ":" else { return .error(.permerror("bad term \(mechanism)")) }
            let parts = rest.dropFirst().split(separator: "/", maxSplits: 1)
            guard let first = parts.first, let net = try? IPNetwork(parsing: String(first)).addressBytes,
                  net.count == (name == "ip4" ? 4 : 16) else { return .error(.permerror("bad term \(mechanism)")) }
            let prefix = parts.count == 2 ? (Int(parts[1]) ?? -1) : net.count * 8
            guard prefix >= 0, prefix <= net.count * 8 else { return .error(.permerror("bad term \(mechanism)")) }
            return IPNetwork.covers(network: net, prefix: prefix, address: ip) ? .matched : .noMatch
        case "a", "mx":
            if let e = countLookup() { return .error(e) }
            guard let (d, v4, v6) = Self.split(rest) else { return .error(.permerror("bad term \(mechanism)")) }
            let target = d.map { Self.normalize($0) } ?? domain
            if target.contains("%") { return .noMatch }
            var hosts = [target]
            if name == "mx" {
                switch lookup(target, .mx) {
                case .temporaryFailure(let why): return .error(.temperror("MX \(target): \(why)"))
                case .nxdomain, .noData: if let e = void() { return .error(e) }; hosts = []
                case .records(let rs):
                    hosts = rs.compactMap { if case .mx(_, let x) = $0.data, !x.isEmpty { return x } else { return nil } }
                    guard hosts.count <= 10 else { return .error(.permerror("more than 10 MX names at \(target) (RFC 7208 §4.6.4)")) }
                }
            }
            for host in hosts {
                switch addressMatch(host, ip: ip, v4: v4, v6: v6, countVoid: name == "a") {
                case .matched: return .matched
                case .noMatch: continue
                case .error(let e): return .error(e)
                }
            }
            return .noMatch
        case "include":
            if let e = countLookup() { return .error(e) }
            guard rest.first == ":", rest.count > 1 else { return .error(.permerror("bad term \(mechanism)")) }
            let target = Self.normalize(rest.dropFirst())
            if target.contains("%") { return .noMatch }
            switch checkHost(ip, target, depth: depth + 1) {
            case .pass: return .matched
            case .fail, .softfail, .neutral: return .noMatch
            case .temperror(let e): return .error(.temperror(e))
            case .permerror(let e): return .error(.permerror(e))
            case .none: return .error(.permerror("include:\(target) has no SPF record"))
            }
        case "exists":
            if let e = countLookup() { return .error(e) }
            guard rest.first == ":", rest.count > 1 else { return .error(.permerror("bad term \(mechanism)")) }
            let target = Self.normalize(rest.dropFirst())
            if target.contains("%") { return .noMatch }
            switch lookup(target, .a) {
            case .temporaryFailure(let why): return .error(.temperror("A \(target): \(why)"))
            case .nxdomain, .noData: if let e = void() { return .error(e) }; return .noMatch
            case .records(let rs): return rs.contains { if case .a = $0.data { return true } else { return false } } ? .matched : .noMatch
            }
        case "ptr":
            if let e = countLookup() { return .error(e) }
            return .noMatch
        default:
            return .error(.permerror("unknown mechanism \(mechanism)"))
        }
    }

    private mutating func void() -> Result? {
        voids += 1
        return voids > Self.voidLookupLimit ? .permerror("more than \(Self.voidLookupLimit) void lookups (RFC 7208 §4.6.4)") : nil
    }

    private mutating func addressMatch(_ host: String, ip: [UInt8], v4: Int, v6: Int, countVoid: Bool) -> Match {
        let type: DNSRecordType = ip.count == 4 ? .a : .aaaa
        switch lookup(host, type) {
        case .temporaryFailure(let why): return .error(.temperror("\(type) \(host): \(why)"))
        case .nxdomain, .noData:
            if countVoid, let e = void() { return .error(e) }
            return .noMatch
        case .records(let rs):
            for r in rs {
                switch r.data {
                case .a(let a), .aaaa(let a):
                    if let net = try? IPNetwork(parsing: a).addressBytes, net.count == ip.count,
                       IPNetwork.covers(network: net, prefix: ip.count == 4 ? v4 : v6, address: ip) { return .matched }
                default: continue
                }
            }
            return .noMatch
        }
    }
}
