#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// Why a DNS message could not be parsed. Parsing never traps: every malformed input ends here.
public enum DNSParseError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The message ended before a field that its header or a length promised.
    case truncated
    /// A name compression pointer chain was too long or looped (RFC 1035 §4.1.4).
    case pointerLoop
    /// A name exceeded 255 octets or used a reserved label type (RFC 1035 §3.1, RFC 6891 §5).
    case badName
    /// A record's RDATA did not match its TYPE (e.g. an A record whose RDLENGTH is not 4).
    case badRecord(String)

    /// A short explanation for logs.
    public var description: String {
        switch self {
        case .truncated: return "truncated DNS message"
        case .pointerLoop: return "DNS name compression loop"
        case .badName: return "malformed DNS name"
        case .badRecord(let what): return "malformed DNS record: \(what)"
        }
    }
}

/// A parsed DNS response: the header fields and the answer section (RFC 1035 §4.1).
///
/// Only the answer section is decoded; the question section is skipped and the
/// authority and additional sections are ignored. Records of class other than IN
/// are dropped.
public struct DNSMessage: Sendable, Equatable {
    /// The transaction ID.
    public var id: UInt16
    /// Whether this is a response (QR bit).
    public var isResponse: Bool
    /// Whether the message was truncated (TC bit); libresolv retries such answers over TCP.
    public var isTruncated: Bool
    /// Whether the answer is authoritative (AA bit).
    public var isAuthoritative: Bool
    /// Whether the resolver vouches that every record of the answer was validated with DNSSEC
    /// (AD bit, RFC 4035 §3.2.3, RFC 6840 §5.8). Only meaningful from a trusted, validating resolver.
    public var isAuthenticData: Bool = false
    /// The response code (RCODE, RFC 1035 §4.1.1): 0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN, 5 REFUSED.
    public var rcode: UInt8
    /// The answer section's IN-class records, in message order.
    public var answers: [DNSRecord]

    /// RCODE 0: no error.
    public static let noError: UInt8 = 0
    /// RCODE 2: server failure.
    public static let serverFailure: UInt8 = 2
    /// RCODE 3: the name does not exist.
    public static let nameError: UInt8 = 3
    /// RCODE 5: refused.
    public static let refused: UInt8 = 5

    /// A message from its parts (for tests and injected resolvers: see `DNSResolver.init(clock:exchange:)`).
    public init(id: UInt16 = 0, isResponse: Bool = true, isTruncated: Bool = false,
                isAuthoritative: Bool = false, isAuthenticData: Bool = false, rcode: UInt8, answers: [DNSRecord]) {
        self.id = id; self.isResponse = isResponse; self.isTruncated = isTruncated
        self.isAuthoritative = isAuthoritative; self.isAuthenticData = isAuthenticData; self.rcode = rcode; self.answers = answers
    }

    /// Parses a DNS message in wire format (RFC 1035 §4.1).
    /// - Parameter bytes: the whole message (a UDP payload, or a TCP message without its length prefix).
    /// - Throws: `DNSParseError` for any malformed or truncated input; never traps.
    public static func parse(_ bytes: [UInt8]) throws(DNSParseError) -> DNSMessage {
        var r = WireReader(bytes: bytes)
        let id = try r.u16()
        let flags = try r.u16()
        let qd = Int(try r.u16())
        let an = Int(try r.u16())
        _ = try r.u16() // NSCOUNT
        _ = try r.u16() // ARCOUNT
        for _ in 0..<qd {
            try r.skipName()
            _ = try r.u16(); _ = try r.u16() // QTYPE, QCLASS
        }
        var answers: [DNSRecord] = []
        answers.reserveCapacity(min(an, 64))
        for _ in 0..<an {
            let name = try r.name()
            let type = try r.u16()
            let cls = try r.u16()
            let rawTTL = try r.u32()
            let rdLength = Int(try r.u16())
            let rdStart = r.position
            let rdEnd = rdStart + rdLength
            guard rdEnd <= bytes.count else { throw .truncated }
            // RFC 2181 §8: a TTL with the most significant bit set is treated as zero.
            let ttl = rawTTL & 0x8000_0000 != 0 ? 0 : rawTTL
            if cls == 1 {
                let data = try decodeRData(type: type, reader: &r, start: rdStart, end: rdEnd)
                answers.append(DNSRecord(name: name, type: type, ttl: ttl, data: data))
            }
            r.position = rdEnd
        }
        return DNSMessage(
            id: id,
            isResponse: flags & 0x8000 != 0,
            isTruncated: flags & 0x0200 != 0,
            isAuthoritative: flags & 0x0400 != 0,
            isAuthenticData: flags & 0x0020 != 0,
            rcode: UInt8(flags & 0x000F),
            answers: answers)
    }

    private static func decodeRData(type: UInt16, reader r: inout WireReader, start: Int, end: Int) throws(DNSParseError) -> DNSRecordData {
        let length = end - start
        switch DNSRecordType(rawValue: type) {
        case .a:
            guard length == 4 else { throw .badRecord("A RDLENGTH \(length)") }
            let b = r.bytes
            return .a("\(b[start]).\(b[start + 1]).\(b[start + 2]).\(b[start + 3])")
        case .aaaa:
            guard length == 16 else { throw .badRecord("AAAA RDLENGTH \(length)") }
            return .aaaa(formatIPv6(r.bytes[start..<end]))
        case .cname:
            r.position = start
            let target = try r.name()
            guard r.position <= end else { throw .badRecord("CNAME overruns RDATA") }
            return .cname(target)
        case .ptr:
            r.position = start
            let target = try r.name()
            guard r.position <= end else { throw .badRecord("PTR overruns RDATA") }
            return .ptr(target)
        case .mx:
            guard length >= 3 else { throw .badRecord("MX RDLENGTH \(length)") }
            r.position = start
            let pref = try r.u16()
            let exchange = try r.name()
            guard r.position <= end else { throw .badRecord("MX overruns RDATA") }
            return .mx(preference: pref, exchange: exchange)
        case .txt:
            var strings: [String] = []
            var p = start
            while p < end {
                let n = Int(r.bytes[p])
                guard p + 1 + n <= end else { throw .badRecord("TXT string overruns RDATA") }
                strings.append(String(decoding: r.bytes[(p + 1)..<(p + 1 + n)], as: UTF8.self))
                p += 1 + n
            }
            return .txt(strings)
        case .tlsa:
            guard length >= 3 else { throw .badRecord("TLSA RDLENGTH \(length)") }
            let b = r.bytes
            return .tlsa(usage: b[start], selector: b[start + 1], matchingType: b[start + 2], data: Array(b[(start + 3)..<end]))
        case nil:
            return .other(Array(r.bytes[start..<end]))
        }
    }

    /// Formats 16 octets as RFC 5952 text with `inet_ntop`.
    static func formatIPv6(_ b: ArraySlice<UInt8>) -> String {
        var addr = in6_addr()
        withUnsafeMutableBytes(of: &addr) { raw in
            for (i, byte) in b.prefix(16).enumerated() { raw[i] = byte }
        }
        var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        guard inet_ntop(AF_INET6, &addr, &buf, socklen_t(buf.count)) != nil else { return "::" }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// A bounds-checked cursor over a DNS message.
struct WireReader {
    let bytes: [UInt8]
    var position = 0

    /// The most compression pointers one name may follow before it is called a loop.
    static let maxPointerJumps = 64

    init(bytes: [UInt8]) { self.bytes = bytes }

    mutating func u16() throws(DNSParseError) -> UInt16 {
        guard position >= 0, position + 2 <= bytes.count else { throw .truncated }
        defer { position += 2 }
        return UInt16(bytes[position]) << 8 | UInt16(bytes[position + 1])
    }

    mutating func u32() throws(DNSParseError) -> UInt32 {
        let hi = try u16()
        let lo = try u16()
        return UInt32(hi) << 16 | UInt32(lo)
    }

    mutating func skipName() throws(DNSParseError) { _ = try name() }

    /// Reads a possibly compressed domain name (RFC 1035 §4.1.4) and advances past it.
    /// - Returns: the name in lowercase presentation form without the trailing dot
    ///   (`""` for the root); `.` and non-printable octets inside labels are escaped as `\.` and `\DDD`.
    mutating func name() throws(DNSParseError) -> String {
        var pos = position
        var resume: Int? = nil
        var jumps = 0
        var wireLength = 0
        var out: [UInt8] = []
        while true {
            guard pos >= 0, pos < bytes.count else { throw .truncated }
            let len = Int(bytes[pos])
            switch len & 0xC0 {
            case 0x00:
                if len == 0 {
                    wireLength += 1
                    guard wireLength <= 255 else { throw .badName }
                    position = resume ?? (pos + 1)
                    return String(decoding: out, as: UTF8.self)
                }
                guard pos + 1 + len <= bytes.count else { throw .truncated }
                wireLength += 1 + len
                guard wireLength <= 255 else { throw .badName }
                if !out.isEmpty { out.append(0x2E) }
                for b in bytes[(pos + 1)...(pos + len)] {
                    switch b {
                    case 0x41...0x5A: out.append(b + 0x20) // A-Z to lowercase
                    case 0x2E, 0x5C: out.append(0x5C); out.append(b)
                    case 0x21...0x7E: out.append(b)
                    default:
                        out.append(0x5C)
                        out.append(0x30 + b / 100); out.append(0x30 + (b / 10) % 10); out.append(0x30 + b % 10)
                    }
                }
                pos += 1 + len
            case 0xC0:
                guard pos + 1 < bytes.count else { throw .truncated }
                let target = (len & 0x3F) << 8 | Int(bytes[pos + 1])
                if resume == nil { resume = pos + 2 }
                jumps += 1
                guard jumps <= WireReader.maxPointerJumps else { throw .pointerLoop }
                guard target < bytes.count else { throw .truncated }
                pos = target
            default:
                // 0x40 (extended label, RFC 6891 §5) and 0x80 are not valid here.
                throw .badName
            }
        }
    }
}
