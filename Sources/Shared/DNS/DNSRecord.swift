#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// A DNS resource record TYPE that Hato queries (RFC 1035 §3.2.2, RFC 3596 §2.1).
public enum DNSRecordType: UInt16, Sendable, Hashable, CustomStringConvertible {
    /// An IPv4 host address (RFC 1035 §3.4.1).
    case a = 1
    /// A canonical name alias (RFC 1035 §3.3.1).
    case cname = 5
    /// A domain name pointer, e.g. the name of an address in `in-addr.arpa` (RFC 1035 §3.3.12).
    case ptr = 12
    /// A mail exchanger (RFC 1035 §3.3.9).
    case mx = 15
    /// Text strings (RFC 1035 §3.3.14), e.g. DKIM keys.
    case txt = 16
    /// An IPv6 host address (RFC 3596 §2.1).
    case aaaa = 28
    /// A TLS certificate association for DANE (RFC 6698 §2, RFC 7672 for SMTP).
    case tlsa = 52

    /// The type mnemonic, e.g. `MX`.
    public var description: String {
        switch self {
        case .a: return "A"
        case .cname: return "CNAME"
        case .ptr: return "PTR"
        case .mx: return "MX"
        case .txt: return "TXT"
        case .aaaa: return "AAAA"
        case .tlsa: return "TLSA"
        }
    }
}

/// The decoded RDATA of one resource record.
public enum DNSRecordData: Sendable, Hashable {
    /// An IPv4 address in dotted-quad text, e.g. `192.0.2.1`.
    case a(String)
    /// An IPv6 address in RFC 5952 text, e.g. `2001:db8::1`.
    case aaaa(String)
    /// The canonical name an alias points at (lowercase, no trailing dot).
    case cname(String)
    /// The name a PTR record points at (lowercase, no trailing dot).
    case ptr(String)
    /// A mail exchanger: `preference` (lower is preferred) and the `exchange` host name
    /// (lowercase, no trailing dot; the root name is `""`, which is a null MX per RFC 7505).
    case mx(preference: UInt16, exchange: String)
    /// The character-strings of a TXT record, in order (each at most 255 octets on the wire,
    /// decoded as UTF-8 with invalid bytes replaced). Join them for DKIM keys (RFC 6376 §3.6.2.2).
    case txt([String])
    /// A TLSA record (RFC 6698 §2.1): certificate usage (0–3), selector (0 full certificate,
    /// 1 SubjectPublicKeyInfo), matching type (0 exact, 1 SHA-256, 2 SHA-512) and the
    /// certificate association data octets.
    case tlsa(usage: UInt8, selector: UInt8, matchingType: UInt8, data: [UInt8])
    /// Any other TYPE: the raw RDATA octets.
    case other([UInt8])
}

/// One resource record from the answer section (RFC 1035 §4.1.3).
public struct DNSRecord: Sendable, Hashable {
    /// The owner name, lowercase, without the trailing dot (`""` for the root).
    public let name: String
    /// The raw RR TYPE code (see `DNSRecordType`).
    public let type: UInt16
    /// Time to live in seconds (RFC 2181 §8: values with the top bit set are read as 0).
    public let ttl: UInt32
    /// The decoded RDATA.
    public let data: DNSRecordData

    /// A record with a raw TYPE code; `ttl` in seconds.
    public init(name: String, type: UInt16, ttl: UInt32, data: DNSRecordData) {
        self.name = name; self.type = type; self.ttl = ttl; self.data = data
    }

    /// Convenience initialiser for a known type.
    public init(name: String, type: DNSRecordType, ttl: UInt32, data: DNSRecordData) {
        self.init(name: name, type: type.rawValue, ttl: ttl, data: data)
    }

    /// The record's type, when it is one Hato knows.
    public var recordType: DNSRecordType? { DNSRecordType(rawValue: type) }
}
