#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import HatoIO

/// Parsers for the scalar value syntaxes of `cluster.yml` (durations, sizes,
/// addresses, names). Each returns the parsed value or throws `ConfigValueError`.
public enum ConfigValue {
    /// The longest duration accepted: 3650 days, in seconds.
    public static let maxDuration: TimeInterval = 3650 * 86_400

    /// Parses a boolean: `true`/`false`, `yes`/`no`, `on`/`off` (case-insensitive).
    /// - Throws: `ConfigValueError` for anything else.
    public static func bool(_ text: String) throws -> Bool {
        switch text.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default: throw ConfigValueError("expected true or false, got \"\(text)\"")
        }
    }

    /// Parses a duration: a non-negative decimal number followed by a unit, `ms`, `s`,
    /// `m`, `h` or `d` (lowercase; optional spaces between), e.g. `90s`, `1.5h`, `250ms`.
    /// - Parameters:
    ///   - text: the value.
    ///   - allowZero: whether zero is acceptable (default: no, a zero duration is meaningless for most settings).
    /// - Returns: seconds.
    /// - Throws: `ConfigValueError` for a malformed, negative, zero (unless allowed) or over-long (> 3650 days) duration.
    public static func duration(_ text: String, allowZero: Bool = false) throws -> TimeInterval {
        func fail(_ why: String) -> ConfigValueError { ConfigValueError("invalid duration \"\(text)\": \(why)") }
        if text.hasPrefix("-") { throw fail("must not be negative") }
        let (number, unit) = splitNumber(text)
        guard let digits = number else { throw fail("expected a number and a unit (ms, s, m, h or d), e.g. \"30s\"") }
        let multiplier: Double
        switch unit {
        case "ms": multiplier = 0.001
        case "s": multiplier = 1
        case "m": multiplier = 60
        case "h": multiplier = 3600
        case "d": multiplier = 86_400
        case "": throw fail("missing unit (ms, s, m, h or d), e.g. \"\(digits)s\"")
        default: throw fail("unknown unit \"\(unit)\" (use ms, s, m, h or d)")
        }
        let integerDigits = digits.prefix { $0 != "." }.count
        guard integerDigits <= 12, let value = Double(digits) else { throw fail("too large (at most 3650d)") }
        let seconds = value * multiplier
        guard seconds <= maxDuration else { throw fail("too large (at most 3650d)") }
        if seconds == 0 && !allowZero { throw fail("must be greater than zero") }
        return seconds
    }

    /// Parses a size: a non-negative integer with an optional unit (case-insensitive,
    /// optional spaces between): `B`, `KB` (1000), `KiB` (1024), `MB`, `MiB`, `GB`, `GiB`.
    /// A plain integer is a number of bytes.
    /// - Returns: octets.
    /// - Throws: `ConfigValueError` for a malformed, negative, fractional or overflowing size.
    public static func size(_ text: String) throws -> Int {
        func fail(_ why: String) -> ConfigValueError { ConfigValueError("invalid size \"\(text)\": \(why)") }
        if text.hasPrefix("-") { throw fail("must not be negative") }
        let (number, unit) = splitNumber(text)
        guard let digits = number else { throw fail("expected a number of bytes with an optional unit, e.g. \"25MiB\"") }
        if digits.contains(".") { throw fail("must be a whole number (use a smaller unit)") }
        let multiplier: Int
        switch unit.lowercased() {
        case "", "b": multiplier = 1
        case "kb": multiplier = 1000
        case "kib": multiplier = 1024
        case "mb": multiplier = 1_000_000
        case "mib": multiplier = 1 << 20
        case "gb": multiplier = 1_000_000_000
        case "gib": multiplier = 1 << 30
        default: throw fail("unknown unit \"\(unit)\" (use B, KB, KiB, MB, MiB, GB or GiB)")
        }
        guard digits.count <= 19, let value = Int(digits) else { throw fail("too large") }
        let (bytes, overflow) = value.multipliedReportingOverflow(by: multiplier)
        if overflow { throw fail("too large") }
        return bytes
    }

    /// Parses a whole decimal number within `range`.
    /// - Throws: `ConfigValueError` when the text is not a plain decimal integer or is out of range.
    public static func integer(_ text: String, in range: ClosedRange<Int>) throws -> Int {
        guard !text.isEmpty, text.utf8.count <= 19, text.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else {
            if text.hasPrefix("-") { throw ConfigValueError("\"\(text)\" must not be negative") }
            throw ConfigValueError("expected a whole number, found \"\(text)\"")
        }
        guard let value = Int(text), range.contains(value) else {
            throw ConfigValueError("\(text) is out of range (\(range.lowerBound)…\(range.upperBound))")
        }
        return value
    }

    /// Parses `host[:port]`: `host` is an IPv4 literal, a bracketed IPv6 literal
    /// (`[::1]:25`) or a DNS name.
    /// - Parameters:
    ///   - text: the value.
    ///   - defaultPort: the port when none is given; nil makes the port required.
    ///   - allowZeroPort: whether port 0 ("any free port", for listeners) is acceptable.
    /// - Returns: the endpoint; IP literals are normalised, DNS names lowercased without a trailing dot.
    /// - Throws: `ConfigValueError` for a malformed host or port.
    public static func hostPort(_ text: String, defaultPort: UInt16?, allowZeroPort: Bool = false) throws -> NextHop {
        func fail(_ why: String) -> ConfigValueError { ConfigValueError("invalid address \"\(text)\": \(why)") }
        guard !text.isEmpty else { throw fail("empty") }
        if text.unicodeScalars.contains(where: { $0 == " " || $0 == "\t" || $0.value < 0x20 }) {
            throw fail("contains whitespace")
        }
        var host: String
        var portText: String?
        var bracketed = false
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw fail("missing ']'") }
            host = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            if !rest.isEmpty {
                guard rest.hasPrefix(":") else { throw fail("expected ':port' after ']'") }
                portText = String(rest.dropFirst())
            }
            bracketed = true
        } else {
            let parts = text.split(separator: ":", omittingEmptySubsequences: false)
            switch parts.count {
            case 1: host = text
            case 2: host = String(parts[0]); portText = String(parts[1])
            default: throw fail("an IPv6 address must be written in brackets, e.g. [::1]:25")
            }
        }
        let port: UInt16
        if let portText {
            guard !portText.isEmpty, portText.utf8.count <= 5, portText.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                  let p = Int(portText), p <= 65_535 else {
                throw fail("port must be a number from \(allowZeroPort ? 0 : 1) to 65535")
            }
            if p == 0 && !allowZeroPort { throw fail("port must be a number from 1 to 65535") }
            port = UInt16(p)
        } else if let defaultPort {
            port = defaultPort
        } else {
            throw fail("missing port (expected host:port)")
        }
        if bracketed {
            guard host.contains(":"), let normal = ConfigIP.normalize(host) else { throw fail("brackets must contain an IPv6 address") }
            return NextHop(host: normal, port: port, isIPLiteral: true)
        }
        if let bytes = ConfigIP.parse(host), bytes.count == 4 {
            return NextHop(host: ConfigIP.format(bytes), port: port, isIPLiteral: true)
        }
        do {
            host = try hostname(host)
        } catch {
            throw fail("not an IP address or a valid host name")
        }
        return NextHop(host: host, port: port, isIPLiteral: false)
    }

    /// Parses `address[:port]` where the address must be a numeric IPv4 literal or a
    /// bracketed IPv6 literal (`[::1]:7601`).
    /// - Parameters:
    ///   - text: the value.
    ///   - defaultPort: the port when none is given; nil makes the port required.
    ///   - allowZeroPort: whether port 0 ("any free port", for listeners) is acceptable.
    /// - Throws: `ConfigValueError` for a host name, malformed address or port.
    public static func socketAddress(_ text: String, defaultPort: UInt16?, allowZeroPort: Bool = false) throws -> SocketAddress {
        let hop = try hostPort(text, defaultPort: defaultPort, allowZeroPort: allowZeroPort)
        guard hop.isIPLiteral else {
            throw ConfigValueError("invalid address \"\(text)\": must be a numeric IP address, not a host name")
        }
        return SocketAddress(host: hop.host, port: hop.port)
    }

    /// Parses a numeric IPv4 or IPv6 address (no brackets, no port).
    /// - Returns: the normalised text form (`inet_ntop`), e.g. `2001:db8::1`.
    /// - Throws: `ConfigValueError` when the text is not a numeric IP address.
    public static func ipAddress(_ text: String) throws -> String {
        guard let normal = ConfigIP.normalize(text) else {
            throw ConfigValueError("\"\(text)\" is not a numeric IPv4 or IPv6 address")
        }
        return normal
    }

    /// Validates a DNS host name: dot-separated labels of letters, digits and `-`
    /// (1–63 octets each, not starting or ending with `-`), at most 253 octets, the last
    /// label not all-numeric. A single trailing dot is allowed.
    /// - Returns: the name lowercased, without the trailing dot.
    /// - Throws: `ConfigValueError` naming the problem.
    public static func hostname(_ text: String) throws -> String {
        var name = text
        if name.hasSuffix(".") { name.removeLast() }
        guard !name.isEmpty else { throw ConfigValueError("empty host name") }
        guard name.utf8.count <= 253 else { throw ConfigValueError("host name \"\(text)\" is longer than 253 characters") }
        let labels = name.split(separator: ".", omittingEmptySubsequences: false)
        for label in labels {
            let bytes = Array(label.utf8)
            guard !bytes.isEmpty, bytes.count <= 63 else {
                throw ConfigValueError("invalid host name \"\(text)\": labels must be 1 to 63 characters")
            }
            guard bytes.allSatisfy({ isAlphanumeric($0) || $0 == 0x2D }) else {
                throw ConfigValueError("invalid host name \"\(text)\": only letters, digits, '-' and '.' are allowed")
            }
            guard bytes.first != 0x2D, bytes.last != 0x2D else {
                throw ConfigValueError("invalid host name \"\(text)\": a label cannot start or end with '-'")
            }
        }
        if let last = labels.last, last.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) {
            throw ConfigValueError("invalid host name \"\(text)\": looks numeric but is not a valid IP address")
        }
        return name.lowercased()
    }

    /// Validates an identifier (node id, pool name, cluster name): 1–64 characters
    /// from `A-Z a-z 0-9 . _ -`.
    /// - Returns: the identifier unchanged.
    /// - Throws: `ConfigValueError` when empty, too long or containing other characters.
    public static func identifier(_ text: String) throws -> String {
        let bytes = Array(text.utf8)
        guard !bytes.isEmpty, bytes.count <= 64,
              bytes.allSatisfy({ isAlphanumeric($0) || $0 == 0x2E || $0 == 0x5F || $0 == 0x2D }) else {
            throw ConfigValueError("invalid name \"\(text)\": use 1 to 64 characters from A-Z a-z 0-9 . _ -")
        }
        return text
    }

    /// Splits `"12.5 MiB"` into the number (`"12.5"`, nil when malformed) and the unit (`"MiB"`).
    private static func splitNumber(_ text: String) -> (String?, String) {
        let scalars = Array(text.unicodeScalars)
        var i = 0
        while i < scalars.count, (scalars[i] >= "0" && scalars[i] <= "9") || scalars[i] == "." { i += 1 }
        var number = String(String.UnicodeScalarView(scalars[0..<i]))
        while i < scalars.count, scalars[i] == " " { i += 1 }
        let unit = String(String.UnicodeScalarView(scalars[i...]))
        let parts = number.split(separator: ".", omittingEmptySubsequences: false)
        if number.isEmpty || parts.count > 2 || parts.contains(where: \.isEmpty) { number = "" }
        return (number.isEmpty ? nil : number, unit)
    }

    private static func isAlphanumeric(_ b: UInt8) -> Bool {
        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A)
    }
}

/// Numeric IP address parsing and formatting via `inet_pton`/`inet_ntop`.
enum ConfigIP {
    /// The address's network-order bytes (4 or 16), or nil when `text` is not a numeric address.
    static func parse(_ text: String) -> [UInt8]? {
        guard !text.isEmpty, text.utf8.count <= 64, !text.utf8.contains(0) else { return nil }
        if text.contains(":") {
            var addr = in6_addr()
            guard inet_pton(AF_INET6, text, &addr) == 1 else { return nil }
            return withUnsafeBytes(of: &addr) { Array($0) }
        }
        var addr = in_addr()
        guard inet_pton(AF_INET, text, &addr) == 1 else { return nil }
        return withUnsafeBytes(of: &addr) { Array($0) }
    }

    /// The text form of 4 or 16 address bytes (empty for other lengths).
    static func format(_ bytes: [UInt8]) -> String {
        var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        let ok: Bool
        switch bytes.count {
        case 4:
            var addr = in_addr()
            withUnsafeMutableBytes(of: &addr) { $0.copyBytes(from: bytes) }
            ok = inet_ntop(AF_INET, &addr, &buf, socklen_t(buf.count)) != nil
        case 16:
            var addr = in6_addr()
            withUnsafeMutableBytes(of: &addr) { $0.copyBytes(from: bytes) }
            ok = inet_ntop(AF_INET6, &addr, &buf, socklen_t(buf.count)) != nil
        default:
            return ""
        }
        guard ok else { return "" }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The normalised text form of a numeric address, or nil.
    static func normalize(_ text: String) -> String? {
        guard let bytes = parse(text) else { return nil }
        let normal = format(bytes)
        return normal.isEmpty ? nil : normal
    }
}
