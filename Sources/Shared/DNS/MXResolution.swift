#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// One mail exchanger of a domain with its resolved addresses (RFC 5321 §5.1).
public struct MailExchanger: Sendable, Hashable {
    /// The MX host name (lowercase, no trailing dot), the domain itself for an implicit MX,
    /// or the address literal (e.g. `[192.0.2.1]`) for an address-literal domain.
    public let name: String
    /// The MX preference; lower is tried first (0 for an implicit MX or a literal).
    public let preference: Int
    /// Numeric addresses: the A records first, then the AAAA records.
    public let addresses: [String]

    /// A mail exchanger from its parts.
    public init(name: String, preference: Int, addresses: [String]) {
        self.name = name; self.preference = preference; self.addresses = addresses
    }
}

/// The outcome of resolving where mail for a domain goes (RFC 5321 §5.1).
public enum MXResult: Sendable, Equatable {
    /// The mail exchangers to try, in order: ascending preference, equal preferences shuffled.
    case hosts([MailExchanger])
    /// The domain cannot receive mail: the text starts with an RFC 3463 enhanced status
    /// code, e.g. `5.1.10 …` (null MX, RFC 7505) or `5.1.2 …` (NXDOMAIN).
    case permanentFailure(String)
    /// Resolution failed for now (SERVFAIL, timeout, no MX host resolves): the text starts
    /// with a `4.x.x` enhanced status code.
    case temporaryFailure(String)
}

/// The outcome of resolving one host name to addresses.
public enum HostAddressResult: Sendable, Equatable {
    /// Numeric addresses: the A records first, then the AAAA records.
    case addresses([String])
    /// NXDOMAIN, or the name has neither A nor AAAA records.
    case notFound(String)
    /// A lookup failed temporarily and nothing was found.
    case temporaryFailure(String)
}

extension DNSResolver {
    /// The most MX hosts resolved and returned for one domain (after ordering).
    public static let maxMailExchangers = 10

    /// Resolves the mail exchangers of `domain` (RFC 5321 §5.1) with the system random generator.
    /// See `resolveMailExchangers(domain:using:)`.
    public func resolveMailExchangers(domain: String) -> MXResult {
        var rng = SystemRandomNumberGenerator()
        return resolveMailExchangers(domain: domain, using: &rng)
    }

    /// Resolves the mail exchangers of `domain` (RFC 5321 §5.1):
    /// - an address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`, RFC 5321 §4.1.3) skips DNS;
    /// - MX records are sorted by preference, equal preferences shuffled with `rng`;
    /// - no MX records (NODATA) → the implicit MX: the domain itself, preference 0; if the
    ///   domain then has no A/AAAA either → permanent `5.4.4`;
    /// - a single MX whose exchange is the root (`0 .`) → permanent `5.1.10` (null MX, RFC 7505);
    /// - NXDOMAIN → permanent `5.1.2`; SERVFAIL/timeout → temporary `4.4.3`;
    /// - CNAMEs of the domain and of MX hosts are followed (at most 8 hops, see `query`);
    /// - each MX host is resolved to its A then AAAA addresses; a host that does not resolve is
    ///   skipped; if none resolves → temporary `4.4.4`. At most `maxMailExchangers` hosts are kept.
    public func resolveMailExchangers<G: RandomNumberGenerator>(domain: String, using rng: inout G) -> MXResult {
        if let literal = DNSResolver.addressLiteral(domain) {
            guard let address = literal else {
                return .permanentFailure("5.1.2 invalid address literal \(domain)")
            }
            return .hosts([MailExchanger(name: domain, preference: 0, addresses: [address])])
        }
        let name = DNSResolver.normalize(domain)
        guard DNSResolver.isValidName(name) else {
            return .permanentFailure("5.1.2 invalid domain name \(domain)")
        }
        switch query(name, type: .mx) {
        case .temporaryFailure(let why):
            return .temporaryFailure("4.4.3 MX lookup for \(name) failed: \(why)")
        case .nxdomain:
            return .permanentFailure("5.1.2 domain \(name) does not exist (NXDOMAIN)")
        case .noData:
            return implicitMailExchanger(name)
        case .records(let records):
            var entries: [(preference: Int, host: String)] = []
            for record in records {
                if case .mx(let preference, let exchange) = record.data {
                    entries.append((Int(preference), exchange))
                }
            }
            if entries.isEmpty { return implicitMailExchanger(name) }
            if entries.contains(where: { $0.host.isEmpty }) {
                // RFC 7505 §3: a null MX is the only MX of its domain. Among other MX records
                // a root exchange is unusable and ignored.
                if entries.count == 1 {
                    return .permanentFailure("5.1.10 domain \(name) does not accept mail (null MX)")
                }
                entries.removeAll { $0.host.isEmpty }
            }
            let ordered = DNSResolver.orderMailExchangers(entries, using: &rng)
            var exchangers: [MailExchanger] = []
            var problems: [String] = []
            for entry in ordered.prefix(DNSResolver.maxMailExchangers) {
                switch lookupAddresses(entry.host) {
                case .addresses(let addresses):
                    exchangers.append(MailExchanger(name: entry.host, preference: entry.preference, addresses: addresses))
                case .notFound(let why), .temporaryFailure(let why):
                    problems.append(why)
                }
            }
            if exchangers.isEmpty {
                let detail = problems.prefix(3).joined(separator: "; ")
                return .temporaryFailure("4.4.4 no MX host of \(name) resolves: \(detail)")
            }
            return .hosts(exchangers)
        }
    }

    /// Resolves a host name to its A then AAAA addresses (no MX lookup). A numeric IPv4/IPv6
    /// address, bare or as an RFC 5321 address literal, is returned as is.
    public func resolveHostAddresses(_ host: String) -> HostAddressResult {
        if let literal = DNSResolver.addressLiteral(host) {
            guard let address = literal else { return .notFound("invalid address literal \(host)") }
            return .addresses([address])
        }
        if DNSResolver.isNumericAddress(host) { return .addresses([host]) }
        return lookupAddresses(DNSResolver.normalize(host))
    }

    private func implicitMailExchanger(_ name: String) -> MXResult {
        switch lookupAddresses(name) {
        case .addresses(let addresses):
            return .hosts([MailExchanger(name: name, preference: 0, addresses: addresses)])
        case .notFound:
            return .permanentFailure("5.4.4 domain \(name) has no MX, A or AAAA records")
        case .temporaryFailure(let why):
            return .temporaryFailure("4.4.3 address lookup for \(name) failed: \(why)")
        }
    }

    /// A then AAAA lookups for one host name.
    private func lookupAddresses(_ host: String) -> HostAddressResult {
        var addresses: [String] = []
        var temporary: String? = nil
        switch query(host, type: .a) {
        case .records(let records):
            for r in records { if case .a(let ip) = r.data { addresses.append(ip) } }
        case .nxdomain:
            return .notFound("\(host): NXDOMAIN")
        case .noData:
            break
        case .temporaryFailure(let why):
            temporary = why
        }
        switch query(host, type: .aaaa) {
        case .records(let records):
            for r in records { if case .aaaa(let ip) = r.data { addresses.append(ip) } }
        case .nxdomain, .noData:
            break
        case .temporaryFailure(let why):
            temporary = temporary ?? why
        }
        if !addresses.isEmpty { return .addresses(addresses) }
        if let temporary { return .temporaryFailure("\(host): \(temporary)") }
        return .notFound("\(host): no A or AAAA records")
    }

    /// Sorts MX entries by ascending preference, shuffling runs of equal preference
    /// (RFC 5321 §5.1), and drops repeated host names (keeping the most preferred).
    static func orderMailExchangers<G: RandomNumberGenerator>(_ entries: [(preference: Int, host: String)], using rng: inout G) -> [(preference: Int, host: String)] {
        var seen = Set<String>()
        var unique: [(preference: Int, host: String)] = []
        for e in entries.sorted(by: { $0.preference < $1.preference }) where seen.insert(e.host).inserted {
            unique.append(e)
        }
        var result: [(preference: Int, host: String)] = []
        var i = 0
        while i < unique.count {
            var j = i
            while j < unique.count && unique[j].preference == unique[i].preference { j += 1 }
            var group = Array(unique[i..<j])
            group.shuffle(using: &rng)
            result.append(contentsOf: group)
            i = j
        }
        return result
    }

    /// Parses an RFC 5321 §4.1.3 address literal. Returns nil when `text` is not in
    /// brackets, `.some(nil)` when it is but the address is invalid, else the numeric address.
    static func addressLiteral(_ text: String) -> String?? {
        guard text.hasPrefix("["), text.hasSuffix("]"), text.count >= 2 else { return nil }
        var inner = String(text.dropFirst().dropLast())
        if inner.lowercased().hasPrefix("ipv6:") {
            inner = String(inner.dropFirst(5))
            return .some(isNumericAddress(inner) && inner.contains(":") ? inner : nil)
        }
        return .some(isNumericAddress(inner) && !inner.contains(":") ? inner : nil)
    }

    /// Whether `text` is a numeric IPv4 or IPv6 address.
    static func isNumericAddress(_ text: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, text, &v4) == 1 || inet_pton(AF_INET6, text, &v6) == 1
    }
}
