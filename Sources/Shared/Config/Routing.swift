import HatoIO
/// A domain a route applies to: an exact domain (`hato.test`) or a wildcard
/// (`*.example`, any subdomain of `example` at any depth, but not `example` itself).
/// Matching is case-insensitive and ignores a trailing dot.
public struct DomainPattern: Sendable, Hashable, CustomStringConvertible {
    /// The normalised pattern: lowercase, no trailing dot, e.g. `hato.test` or `*.example`.
    public let pattern: String

    /// Parses a pattern.
    /// - Throws: `ConfigValueError` when the domain (after an optional `*.`) is not a valid host name.
    public init(parsing text: String) throws {
        let wildcard = text.hasPrefix("*.")
        let base = wildcard ? String(text.dropFirst(2)) : text
        if base.contains("*") {
            throw ConfigValueError("invalid domain \"\(text)\": a wildcard must be the whole first label, as in \"*.example.com\"")
        }
        let name: String
        do {
            name = try ConfigValue.hostname(base)
        } catch let e as ConfigValueError {
            throw ConfigValueError("invalid domain \"\(text)\": \(e.message)")
        }
        pattern = wildcard ? "*." + name : name
    }

    /// Whether this is a `*.` wildcard pattern.
    public var isWildcard: Bool { pattern.hasPrefix("*.") }

    /// The domain without the `*.` prefix.
    public var base: String { isWildcard ? String(pattern.dropFirst(2)) : pattern }

    /// Whether `domain` matches: equal for exact patterns; a proper subdomain of `base` for wildcards.
    public func matches(_ domain: String) -> Bool {
        let d = Self.normalize(domain)
        if !isWildcard { return d == pattern }
        let b = base
        return d.count > b.count + 1 && d.hasSuffix("." + b)
    }

    /// The pattern text.
    public var description: String { pattern }

    /// Lowercases `domain` and removes one trailing dot.
    static func normalize(_ domain: String) -> String {
        var d = domain.lowercased()
        if d.hasSuffix(".") { d.removeLast() }
        return d
    }
}

/// Where a route sends mail instead of the domain's MX hosts: `host[:port]`.
public struct NextHop: Sendable, Hashable, CustomStringConvertible {
    /// An IP literal (normalised, IPv6 without brackets) or a lowercase DNS name to resolve (A/AAAA).
    public let host: String
    /// The TCP port (default 25 in `next_hop`).
    public let port: UInt16
    /// Whether `host` is a numeric IP address (no DNS lookup needed).
    public let isIPLiteral: Bool

    /// Creates a next hop. `host` is used as given (see `ConfigValue.hostPort` for parsing).
    public init(host: String, port: UInt16, isIPLiteral: Bool) {
        self.host = host; self.port = port; self.isIPLiteral = isIPLiteral
    }

    /// The socket address when `host` is an IP literal, else nil.
    public var socketAddress: SocketAddress? { isIPLiteral ? SocketAddress(host: host, port: port) : nil }

    /// `host:port`, IPv6 in brackets.
    public var description: String { host.utf8.contains(UInt8(ascii: ":")) ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
