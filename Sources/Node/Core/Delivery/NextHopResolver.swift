#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HatoDNS
import SMTPCore

/// Why no next hop could be found for a domain.
public struct NextHopFailure: Error, Sendable, Equatable, CustomStringConvertible {
    /// The outcome for every recipient of the domain: 550 when retrying cannot help (NXDOMAIN,
    /// null MX, no MX/A/AAAA: bounce), 451 otherwise, with the RFC 3463 enhanced status code
    /// (e.g. `5.1.10`, `4.4.3`) and a human-readable explanation (without the enhanced code).
    public let reply: DeliveryStatus

    /// A failure from its parts.
    /// - Parameters:
    ///   - permanent: whether retrying cannot help (550) or can (451).
    ///   - enhanced: the enhanced status code.
    ///   - text: the explanation.
    public init(permanent: Bool, enhanced: EnhancedStatusCode, text: String) {
        reply = DeliveryStatus(permanent ? 550 : 451, enhanced, text)
    }

    /// True when retrying cannot help: bounce the recipients.
    public var permanent: Bool { reply.code.isPermanent }

    /// `enhanced text`, e.g. `5.1.10 domain … does not accept mail (null MX)`.
    public var description: String { "\(reply.enhanced?.description ?? "") \(reply.text)" }
}

/// Turns a recipient domain (or a configured static next hop) into connection targets.
public struct NextHopResolver: Sendable {
    /// The DNS resolver used for MX and address lookups.
    public let resolver: DNSResolver
    /// The TCP port used for MX delivery (25 in production, RFC 5321 §4.5.4 / IANA "smtp").
    public let mxPort: UInt16
    /// This node's own addresses (interfaces, sending IPs, its listeners): an MX there is a loop.
    public let localAddresses: Set<String>
    /// Whether MX hosts on loopback addresses are accepted (tests only; `delivery.allow_loopback_mx`).
    public let allowLoopback: Bool

    /// - Parameters:
    ///   - resolver: the DNS resolver.
    ///   - mxPort: the port for targets found through MX resolution.
    ///   - localAddresses: addresses that belong to this node (numeric; compared after normalisation).
    ///   - allowLoopback: accept loopback MX addresses (the addresses in `localAddresses` stay refused).
    public init(resolver: DNSResolver, mxPort: UInt16 = 25, localAddresses: Set<String> = [], allowLoopback: Bool = false) {
        self.resolver = resolver; self.mxPort = mxPort
        self.localAddresses = Set(localAddresses.compactMap(NextHopResolver.normalizedAddress))
        self.allowLoopback = allowLoopback
    }

    /// The delivery targets for `domain`, in the order to try them.
    ///
    /// - With `staticNextHop`: an IP address (bare or as an RFC 5321 address literal) is used
    ///   as is; a host name is resolved to its A then AAAA addresses (no MX lookup). A static next
    ///   hop that does not resolve is a temporary failure (a configuration problem never bounces mail).
    /// - Otherwise MX resolution (RFC 5321 §5.1, see `DNSResolver.resolveMailExchangers`): all
    ///   addresses of the most preferred MX, then the next MX, …, on `mxPort`; repeated addresses
    ///   are dropped. Addresses that are loopback (unless `allowLoopback`), unspecified, or this
    ///   node's own are refused; when nothing else is left the mail loops back to this node: a
    ///   permanent `5.4.6` failure (as Postfix's "mail for … loops back to myself"). Only an
    ///   explicit route (`staticNextHop`) may point at such an address.
    /// - Parameters:
    ///   - domain: the recipient domain (or an address literal such as `[192.0.2.1]`).
    ///   - staticNextHop: a relay host and port that overrides MX resolution, or nil.
    /// - Returns: at least one target, or the failure (permanent or temporary).
    public func targets(for domain: String, staticNextHop: (host: String, port: UInt16)?) -> Result<[DeliveryTarget], NextHopFailure> {
        if let hop = staticNextHop {
            switch resolver.resolveHostAddresses(hop.host) {
            case .addresses(let addresses):
                return .success(NextHopResolver.unique(addresses.map { DeliveryTarget(host: hop.host, address: $0, port: hop.port) }))
            case .notFound(let why), .temporaryFailure(let why):
                return .failure(NextHopFailure(permanent: false, enhanced: EnhancedStatusCode(.persistentTransientFailure, 4, 3), text: "static next hop \(hop.host) does not resolve: \(why)"))
            }
        }
        switch resolver.resolveMailExchangers(domain: domain) {
        case .hosts(let exchangers):
            var targets: [DeliveryTarget] = []
            var loops: [String] = []
            for mx in exchangers {
                for address in mx.addresses {
                    if isLoop(address) {
                        loops.append("\(mx.name)[\(address)]")
                        continue
                    }
                    targets.append(DeliveryTarget(host: mx.name, address: address, port: mxPort))
                }
            }
            let result = NextHopResolver.unique(targets)
            if result.isEmpty && !loops.isEmpty {
                return .failure(NextHopFailure(permanent: true, enhanced: EnhancedStatusCode(.permanentFailure, 4, 6),
                                               text: "mail for \(domain) loops back to myself (MX \(loops.prefix(3).joined(separator: ", ")))"))
            }
            if result.isEmpty {
                return .failure(NextHopFailure(permanent: false, enhanced: EnhancedStatusCode(.persistentTransientFailure, 4, 4), text: "no address for any MX host of \(domain)"))
            }
            return .success(result)
        case .permanentFailure(let message):
            let (enhanced, text) = NextHopResolver.split(message, default: EnhancedStatusCode(.permanentFailure, 1, 2))
            return .failure(NextHopFailure(permanent: true, enhanced: enhanced, text: text))
        case .temporaryFailure(let message):
            let (enhanced, text) = NextHopResolver.split(message, default: EnhancedStatusCode(.persistentTransientFailure, 4, 3))
            return .failure(NextHopFailure(permanent: false, enhanced: enhanced, text: text))
        }
    }

    /// Whether delivering to `address` would loop back: unspecified, this node's, or loopback (unless allowed).
    public func isLoop(_ address: String) -> Bool {
        guard let normalized = NextHopResolver.normalizedAddress(address) else { return false }
        if NextHopResolver.isUnspecified(normalized) { return true }
        if localAddresses.contains(normalized) { return true }
        return !allowLoopback && NextHopResolver.isLoopback(normalized)
    }

    /// The canonical text of a numeric address (`inet_ntop` of `inet_pton`); IPv4-mapped IPv6
    /// addresses become their IPv4 form. Nil when not numeric.
    static func normalizedAddress(_ text: String) -> String? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            var buf = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
            guard inet_ntop(AF_INET, &v4, &buf, socklen_t(buf.count)) != nil else { return nil }
            return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        var v6 = in6_addr()
        guard inet_pton(AF_INET6, text, &v6) == 1 else { return nil }
        let bytes = withUnsafeBytes(of: &v6) { Array($0) }
        if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xFF && bytes[11] == 0xFF {
            return "\(bytes[12]).\(bytes[13]).\(bytes[14]).\(bytes[15])"
        }
        var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        guard inet_ntop(AF_INET6, &v6, &buf, socklen_t(buf.count)) != nil else { return nil }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// 127.0.0.0/8 and ::1.
    static func isLoopback(_ normalized: String) -> Bool {
        normalized.hasPrefix("127.") || normalized == "::1"
    }

    /// 0.0.0.0/8 and ::.
    static func isUnspecified(_ normalized: String) -> Bool {
        normalized.hasPrefix("0.") || normalized == "::"
    }

    /// The addresses of this host's network interfaces (`getifaddrs`), IPv4 and IPv6.
    public static func interfaceAddresses() -> Set<String> {
        var result = Set<String>()
        var list: UnsafeMutablePointer<ifaddrs>? = nil
        guard getifaddrs(&list) == 0, let first = list else { return result }
        defer { freeifaddrs(list) }
        var cursor: UnsafeMutablePointer<ifaddrs>? = first
        while let entry = cursor {
            defer { cursor = entry.pointee.ifa_next }
            guard let sa = entry.pointee.ifa_addr else { continue }
            let family = Int32(sa.pointee.sa_family)
            guard family == AF_INET || family == AF_INET6 else { continue }
            var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
            let length = socklen_t(family == AF_INET ? MemoryLayout<sockaddr_in>.size : MemoryLayout<sockaddr_in6>.size)
            guard getnameinfo(sa, length, &host, socklen_t(host.count), nil, 0, NI_NUMERICHOST) == 0 else { continue }
            var text = String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if let percent = text.firstIndex(of: "%") { text = String(text[..<percent]) }
            if let n = normalizedAddress(text) { result.insert(n) }
        }
        return result
    }

    /// Drops targets whose address already appeared (keeps the first, most preferred).
    static func unique(_ targets: [DeliveryTarget]) -> [DeliveryTarget] {
        var seen = Set<String>()
        return targets.filter { seen.insert("\($0.address)|\($0.port)").inserted }
    }

    /// Splits `"5.1.10 text"` into the enhanced code and the text.
    static func split(_ message: String, default fallback: EnhancedStatusCode) -> (EnhancedStatusCode, String) {
        let token = message.prefix { $0 != " " }
        guard let enhanced = EnhancedStatusCode(String(token)) else { return (fallback, message) }
        return (enhanced, String(message.dropFirst(token.count).drop { $0 == " " }))
    }
}
