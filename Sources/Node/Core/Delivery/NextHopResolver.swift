import Foundation
import HatoShared

/// Why no next hop could be found for a domain.
public struct NextHopFailure: Error, Sendable, Equatable, CustomStringConvertible {
    /// True when retrying cannot help (NXDOMAIN, null MX, no MX/A/AAAA): bounce the recipients.
    public let permanent: Bool
    /// The RFC 3463 enhanced status code, e.g. `5.1.10` or `4.4.3`.
    public let enhanced: String
    /// A human-readable explanation (without the enhanced code).
    public let text: String

    /// A failure from its parts.
    public init(permanent: Bool, enhanced: String, text: String) {
        self.permanent = permanent; self.enhanced = enhanced; self.text = text
    }

    /// `enhanced text`, e.g. `5.1.10 domain … does not accept mail (null MX)`.
    public var description: String { "\(enhanced) \(text)" }
}

/// Turns a recipient domain (or a configured static next hop) into connection targets.
public struct NextHopResolver: Sendable {
    /// The DNS resolver used for MX and address lookups.
    public let resolver: DNSResolver
    /// The TCP port used for MX delivery (25 in production, RFC 5321 §4.5.4 / IANA "smtp").
    public let mxPort: UInt16

    /// - Parameters:
    ///   - resolver: the DNS resolver.
    ///   - mxPort: the port for targets found through MX resolution.
    public init(resolver: DNSResolver, mxPort: UInt16 = 25) {
        self.resolver = resolver; self.mxPort = mxPort
    }

    /// The delivery targets for `domain`, in the order to try them.
    ///
    /// - With `staticNextHop`: an IP address (bare or as an RFC 5321 address literal) is used
    ///   as is; a host name is resolved to its A then AAAA addresses (no MX lookup). A static next
    ///   hop that does not resolve is a temporary failure (a configuration problem never bounces mail).
    /// - Otherwise MX resolution (RFC 5321 §5.1, see `DNSResolver.resolveMailExchangers`): all
    ///   addresses of the most preferred MX, then the next MX, …, on `mxPort`; repeated addresses
    ///   are dropped.
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
                return .failure(NextHopFailure(permanent: false, enhanced: "4.4.3", text: "static next hop \(hop.host) does not resolve: \(why)"))
            }
        }
        switch resolver.resolveMailExchangers(domain: domain) {
        case .hosts(let exchangers):
            var targets: [DeliveryTarget] = []
            for mx in exchangers {
                for address in mx.addresses {
                    targets.append(DeliveryTarget(host: mx.name, address: address, port: mxPort))
                }
            }
            let result = NextHopResolver.unique(targets)
            if result.isEmpty {
                return .failure(NextHopFailure(permanent: false, enhanced: "4.4.4", text: "no address for any MX host of \(domain)"))
            }
            return .success(result)
        case .permanentFailure(let message):
            let (enhanced, text) = NextHopResolver.split(message, default: "5.1.2")
            return .failure(NextHopFailure(permanent: true, enhanced: enhanced, text: text))
        case .temporaryFailure(let message):
            let (enhanced, text) = NextHopResolver.split(message, default: "4.4.3")
            return .failure(NextHopFailure(permanent: false, enhanced: enhanced, text: text))
        }
    }

    /// Drops targets whose address already appeared (keeps the first, most preferred).
    static func unique(_ targets: [DeliveryTarget]) -> [DeliveryTarget] {
        var seen = Set<String>()
        return targets.filter { seen.insert("\($0.address)|\($0.port)").inserted }
    }

    /// Splits `"5.1.10 text"` into the enhanced code and the text.
    static func split(_ message: String, default fallback: String) -> (String, String) {
        let token = message.prefix { $0 != " " }
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy { $0.isASCII && $0.isNumber } }) else {
            return (fallback, message)
        }
        return (String(token), String(message.dropFirst(token.count).drop { $0 == " " }))
    }
}
