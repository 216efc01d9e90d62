import HatoIO
/// An IPv4 or IPv6 network in CIDR form (`127.0.0.0/8`, `::1/128`); a bare address is a
/// single-host network (/32 or /128).
public struct IPNetwork: Sendable, Hashable, CustomStringConvertible {
    /// The network address in network byte order: 4 bytes (IPv4) or 16 (IPv6); host bits are zero.
    public let addressBytes: [UInt8]
    /// The prefix length in bits (0…32 for IPv4, 0…128 for IPv6).
    public let prefixLength: Int

    /// Parses a CIDR network or a bare address.
    /// - Throws: `ConfigValueError` for a malformed address or prefix, or when host bits
    ///   are set (`127.0.0.1/8`; the message suggests `127.0.0.0/8`).
    public init(parsing text: String) throws {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2 else { throw ConfigValueError("invalid network \"\(text)\": expected address/prefix") }
        guard let bytes = ConfigIP.parse(String(parts[0])) else {
            throw ConfigValueError("invalid network \"\(text)\": \"\(parts[0])\" is not a numeric IP address")
        }
        let bits = bytes.count * 8
        var prefix = bits
        if parts.count == 2 {
            let p = parts[1]
            guard !p.isEmpty, p.utf8.count <= 3, p.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                  let n = Int(p), n <= bits else {
                throw ConfigValueError("invalid network \"\(text)\": prefix length must be 0 to \(bits)")
            }
            prefix = n
        }
        let masked = Self.mask(bytes, prefix)
        guard masked == bytes else {
            throw ConfigValueError("invalid network \"\(text)\": host bits are set (did you mean \(ConfigIP.format(masked))/\(prefix)?)")
        }
        self.addressBytes = bytes
        self.prefixLength = prefix
    }

    /// Whether this is an IPv6 network.
    public var isIPv6: Bool { addressBytes.count == 16 }

    /// `address/prefix`, e.g. `127.0.0.0/8`.
    public var description: String { "\(ConfigIP.format(addressBytes))/\(prefixLength)" }

    /// Whether the numeric address `host` lies in this network. An IPv4-mapped IPv6
    /// address (`::ffff:127.0.0.1`) matches IPv4 networks. Returns false for anything
    /// that is not a numeric address.
    public func contains(_ host: String) -> Bool {
        guard var bytes = ConfigIP.parse(host) else { return false }
        if addressBytes.count == 4 && bytes.count == 16
            && bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xFF && bytes[11] == 0xFF {
            bytes = Array(bytes[12..<16])
        }
        guard bytes.count == addressBytes.count else { return false }
        return Self.mask(bytes, prefixLength) == addressBytes
    }

    /// Whether the host of `address` lies in this network.
    public func contains(_ address: SocketAddress) -> Bool { contains(address.host) }

    /// Whether `address` and `network` (numeric addresses of the same family, network byte
    /// order) agree in their first `prefix` bits — the CIDR test without requiring the
    /// network's host bits to be zero, as SPF's `ip4:192.0.2.1/24` allows (RFC 7208 §5.6).
    /// - Returns: false for different families or a prefix out of range.
    public static func covers(network: [UInt8], prefix: Int, address: [UInt8]) -> Bool {
        guard network.count == address.count, (0...network.count * 8).contains(prefix) else { return false }
        return mask(network, prefix) == mask(address, prefix)
    }

    private static func mask(_ bytes: [UInt8], _ prefix: Int) -> [UInt8] {
        var out = bytes
        for i in out.indices {
            let bitsHere = max(0, min(8, prefix - i * 8))
            let m: UInt8 = bitsHere == 0 ? 0 : UInt8(truncatingIfNeeded: 0xFF << (8 - bitsHere))
            out[i] &= m
        }
        return out
    }
}
