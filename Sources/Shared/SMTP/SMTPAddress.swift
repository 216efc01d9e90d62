/// An SMTP mailbox `local-part@domain` (RFC 5321 §4.1.2).
///
/// `localPart` holds the *decoded* local part: a quoted-string local part such as
/// `"john doe"` is stored as `john doe` (quotes and quoted-pair backslashes
/// removed). `domain` is a domain name or an address literal including its
/// brackets (`[192.0.2.1]`, `[IPv6:2001:db8::1]`), as the peer spelled it.
public struct Mailbox: Sendable, Hashable, CustomStringConvertible {
    /// The decoded local part (at most 64 octets on the wire, RFC 5321 §4.5.3.1.1).
    public var localPart: String
    /// The domain or bracketed address literal (at most 255 octets, RFC 5321 §4.5.3.1.2).
    public var domain: String

    /// Creates a mailbox from already-validated parts (no validation is done).
    /// - Parameters:
    ///   - localPart: the decoded local part.
    ///   - domain: the domain or bracketed address literal.
    public init(localPart: String, domain: String) {
        self.localPart = localPart
        self.domain = domain
    }

    /// Parses `local-part@domain` without angle brackets (RFC 5321 §4.1.2 `Mailbox`).
    /// - Parameter text: e.g. `user@example.com` or `"john doe"@[192.0.2.1]`.
    /// - Throws: `SMTPAddressError` when the text is not a valid ASCII mailbox or is too long.
    public init(parsing text: String) throws(SMTPAddressError) {
        let bytes = Array(text.utf8)
        if bytes.contains(where: { $0 >= 0x80 }) { throw .nonASCII }
        switch SMTPAddressSyntax.parseMailbox(bytes[...]) {
        case .success(let mailbox): self = mailbox
        case .failure(let error): throw error
        }
    }

    /// `local@domain`, with the local part re-quoted (RFC 5321 §4.1.2
    /// `Quoted-string`) only when it is not a valid `Dot-string`.
    public var address: String {
        if SMTPAddressSyntax.isDotString(Array(localPart.utf8)[...], utf8: true) {
            return "\(localPart)@\(domain)"
        }
        var quoted = "\""
        for scalar in localPart.unicodeScalars {
            if scalar == "\"" || scalar == "\\" { quoted.append("\\") }
            quoted.unicodeScalars.append(scalar)
        }
        quoted.append("\"")
        return "\(quoted)@\(domain)"
    }

    /// The same as `address`.
    public var description: String { address }
}

/// The argument of `MAIL FROM:` (RFC 5321 §4.1.1.2, §4.5.5): a mailbox, or the
/// null reverse-path `<>` used for notifications (bounces).
public enum ReversePath: Sendable, Hashable, CustomStringConvertible {
    /// The null reverse-path `<>`.
    case null
    /// A sender mailbox.
    case mailbox(Mailbox)

    /// The address without brackets; the empty string for the null path.
    public var address: String {
        switch self {
        case .null: return ""
        case .mailbox(let mailbox): return mailbox.address
        }
    }

    /// The path in angle brackets, e.g. `<>` or `<user@example.com>`.
    public var description: String { "<\(address)>" }
}

/// The argument of `RCPT TO:` (RFC 5321 §4.1.1.3): a mailbox, or the special
/// domain-less `<Postmaster>` every server must accept.
public enum ForwardPath: Sendable, Hashable {
    /// `<Postmaster>` without a domain (case-insensitive, RFC 5321 §4.1.1.3).
    case postmaster
    /// A recipient mailbox (a source route, if any, has been dropped, RFC 5321 §4.1.1.3, Appendix C).
    case mailbox(Mailbox)
}

/// Why an address did not parse.
public enum SMTPAddressError: Error, Sendable, Equatable {
    /// Not RFC 5321 §4.1.2 path/mailbox syntax.
    case syntax
    /// Local part over 64, domain over 255 or path over 256 octets (RFC 5321 §4.5.3.1.1–3).
    case tooLong
    /// Contains 8-bit octets without SMTPUTF8 declared on MAIL (RFC 6531 §3.4), or octets
    /// that are not well-formed UTF-8 even with it.
    case nonASCII
}

/// The RFC 5321 §4.1.2/§4.1.3 address grammar over raw octets.
package enum SMTPAddressSyntax {
    static let maxLocalPart = 64
    static let maxDomain = 255
    static let maxPath = 256

    package static func isAlpha(_ b: UInt8) -> Bool { (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) }
    package static func isDigit(_ b: UInt8) -> Bool { b >= 0x30 && b <= 0x39 }
    package static func isLetDig(_ b: UInt8) -> Bool { isAlpha(b) || isDigit(b) }
    static func isHex(_ b: UInt8) -> Bool { isDigit(b) || (b >= 0x41 && b <= 0x46) || (b >= 0x61 && b <= 0x66) }

    /// RFC 5322 §3.2.3 `atext`.
    static func isAtext(_ b: UInt8) -> Bool {
        if isLetDig(b) { return true }
        switch b {
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"),
             UInt8(ascii: "'"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "/"),
             UInt8(ascii: "="), UInt8(ascii: "?"), UInt8(ascii: "^"), UInt8(ascii: "_"), UInt8(ascii: "`"),
             UInt8(ascii: "{"), UInt8(ascii: "|"), UInt8(ascii: "}"), UInt8(ascii: "~"):
            return true
        default:
            return false
        }
    }

    /// RFC 5321 §4.1.2 `Dot-string = Atom *("." Atom)`; with `utf8`, RFC 6531 §3.3
    /// `atext =/ UTF8-non-ascii` (the caller has checked UTF-8 well-formedness).
    static func isDotString(_ bytes: ArraySlice<UInt8>, utf8: Bool = false) -> Bool {
        guard let first = bytes.first, let last = bytes.last, first != 0x2E, last != 0x2E else { return false }
        var previousDot = false
        for b in bytes {
            if b == 0x2E {
                if previousDot { return false }
                previousDot = true
            } else if isAtext(b) || (utf8 && b >= 0x80) {
                previousDot = false
            } else {
                return false
            }
        }
        return true
    }

    /// RFC 5321 §4.1.2 `Domain = sub-domain *("." sub-domain)`, labels of at most
    /// 63 octets (RFC 1035 §2.3.4), `sub-domain = Let-dig [Ldh-str]`; with `utf8`, RFC 6531
    /// §3.3 `sub-domain =/ U-label` (non-ASCII octets allowed where letters are; the caller
    /// has checked UTF-8 well-formedness). The total length (255, §4.5.3.1.2) is the caller's check.
    static func isDomain(_ bytes: ArraySlice<UInt8>, utf8: Bool = false) -> Bool {
        guard !bytes.isEmpty else { return false }
        func letter(_ b: UInt8) -> Bool { isLetDig(b) || (utf8 && b >= 0x80) }
        for label in bytes.split(separator: 0x2E, omittingEmptySubsequences: false) {
            guard let first = label.first, let last = label.last, label.count <= 63,
                  letter(first), letter(last) else { return false }
            if !label.allSatisfy({ letter($0) || $0 == 0x2D }) { return false }
        }
        return true
    }

    /// RFC 5321 §4.1.3 `Snum 3("." Snum)`, each 0–255 in at most three digits.
    static func isIPv4(_ bytes: ArraySlice<UInt8>) -> Bool {
        let parts = bytes.split(separator: 0x2E, omittingEmptySubsequences: false)
        guard parts.count == 4 else { return false }
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy(isDigit) else { return false }
            let value = part.reduce(0) { $0 * 10 + Int($1 - 0x30) }
            if value > 255 { return false }
        }
        return true
    }

    /// RFC 5321 §4.1.3 `IPv6-addr`: full, `::`-compressed, and with an embedded
    /// IPv4 tail. Accepts `::` standing for a single group (RFC 4291 §2.2).
    static func isIPv6(_ bytes: ArraySlice<UInt8>) -> Bool {
        guard !bytes.isEmpty, bytes.count <= 45 else { return false }
        let text = Array(bytes)
        // Locate a single "::".
        var compression: Int? = nil
        var i = 0
        while i + 1 < text.count {
            if text[i] == 0x3A && text[i + 1] == 0x3A {
                if compression != nil { return false }
                compression = i
                i += 2
            } else {
                i += 1
            }
        }
        func groups(_ part: ArraySlice<UInt8>, allowIPv4Tail: Bool) -> Int? {
            if part.isEmpty { return 0 }
            let fields = part.split(separator: 0x3A, omittingEmptySubsequences: false)
            var count = 0
            for (index, field) in fields.enumerated() {
                if allowIPv4Tail, index == fields.count - 1, field.contains(0x2E) {
                    guard isIPv4(field) else { return nil }
                    count += 2
                } else {
                    guard !field.isEmpty, field.count <= 4, field.allSatisfy(isHex) else { return nil }
                    count += 1
                }
            }
            return count
        }
        if let c = compression {
            let head = text[0..<c]
            let tail = text[(c + 2)...]
            guard let h = groups(head, allowIPv4Tail: false),
                  let t = groups(tail, allowIPv4Tail: true) else { return false }
            return h + t <= 7
        }
        return groups(text[...], allowIPv4Tail: true) == 8
    }

    /// RFC 5321 §4.1.3 `address-literal` including brackets. Only the IPv4 and
    /// `IPv6:` forms: no General-address-literal tag is standardized.
    static func isAddressLiteral(_ bytes: ArraySlice<UInt8>) -> Bool {
        guard bytes.count >= 3, bytes.first == 0x5B, bytes.last == 0x5D else { return false }
        let inner = bytes.dropFirst().dropLast()
        let prefix = Array("ipv6:".utf8)
        if inner.count > prefix.count,
           zip(inner.prefix(prefix.count), prefix).allSatisfy({ lower($0) == $1 }) {
            return isIPv6(inner.dropFirst(prefix.count))
        }
        return isIPv4(inner)
    }

    /// `Domain / address-literal`, as in EHLO and mailboxes (`utf8`: U-labels allowed, RFC 6531).
    static func isDomainOrLiteral(_ bytes: ArraySlice<UInt8>, utf8: Bool = false) -> Bool {
        bytes.first == 0x5B ? isAddressLiteral(bytes) : isDomain(bytes, utf8: utf8)
    }

    static func lower(_ b: UInt8) -> UInt8 { b >= 0x41 && b <= 0x5A ? b + 0x20 : b }

    static func equalsIgnoringCase(_ bytes: ArraySlice<UInt8>, _ text: String) -> Bool {
        let other = Array(text.utf8)
        return bytes.count == other.count && zip(bytes, other).allSatisfy { lower($0) == lower($1) }
    }

    static func hasPrefixIgnoringCase(_ bytes: ArraySlice<UInt8>, _ text: String) -> Bool {
        let other = Array(text.utf8)
        return bytes.count >= other.count && zip(bytes, other).allSatisfy { lower($0) == lower($1) }
    }

    /// RFC 5321 §4.1.2 `Mailbox = Local-part "@" ( Domain / address-literal )`.
    /// Without `utf8` the caller has already rejected 8-bit octets; with it (SMTPUTF8, RFC 6531
    /// §3.3) the caller has checked they are well-formed UTF-8.
    static func parseMailbox(_ bytes: ArraySlice<UInt8>, utf8: Bool = false) -> Result<Mailbox, SMTPAddressError> {
        guard let first = bytes.first else { return .failure(.syntax) }
        var local: [UInt8] = []
        let at: Int
        if first == 0x22 {
            // Quoted-string: qtextSMTP = %d32-33 / %d35-91 / %d93-126, quoted-pairSMTP = "\" %d32-126.
            var i = bytes.startIndex + 1
            var closed = false
            while i < bytes.endIndex {
                let b = bytes[i]
                if b == 0x22 { closed = true; break }
                if b == 0x5C {
                    let next = i + 1
                    guard next < bytes.endIndex, bytes[next] >= 0x20, bytes[next] <= 0x7E else { return .failure(.syntax) }
                    local.append(bytes[next])
                    i += 2
                    continue
                }
                guard (b >= 0x20 && b <= 0x7E) || (utf8 && b >= 0x80) else { return .failure(.syntax) }
                local.append(b)
                i += 1
            }
            guard closed, i + 1 < bytes.endIndex, bytes[i + 1] == 0x40 else { return .failure(.syntax) }
            at = i + 1
        } else {
            guard let index = bytes.firstIndex(of: 0x40) else { return .failure(.syntax) }
            let dotString = bytes[bytes.startIndex..<index]
            guard isDotString(dotString, utf8: utf8) else { return .failure(.syntax) }
            local = Array(dotString)
            at = index
        }
        let wireLocal = bytes[bytes.startIndex..<at]
        let domain = bytes[(at + 1)...]
        guard isDomainOrLiteral(domain, utf8: utf8) else { return .failure(.syntax) }
        if wireLocal.count > maxLocalPart || domain.count > maxDomain { return .failure(.tooLong) }
        return .success(Mailbox(localPart: String(decoding: local, as: UTF8.self),
                                domain: String(decoding: domain, as: UTF8.self)))
    }

    /// The decoded form of a path.
    enum Path: Equatable {
        case null
        case postmaster
        case mailbox(Mailbox)
    }

    /// RFC 5321 §4.1.2 `Path = "<" [ A-d-l ":" ] Mailbox ">"` plus `<>` and `<Postmaster>`.
    /// - Parameters:
    ///   - bytes: the path including its angle brackets.
    ///   - allowNull: accept `<>` (reverse-path only, RFC 5321 §4.1.1.2).
    ///   - allowPostmaster: accept the domain-less `<Postmaster>` (forward-path only, §4.1.1.3).
    ///   - utf8: the transaction declared SMTPUTF8: UTF-8 local parts and U-label domains are
    ///     allowed (RFC 6531 §3.3); without it any 8-bit octet is `.nonASCII`.
    static func parsePath(_ bytes: ArraySlice<UInt8>, allowNull: Bool, allowPostmaster: Bool, utf8: Bool = false) -> Result<Path, SMTPAddressError> {
        if bytes.contains(where: { $0 >= 0x80 }) {
            guard utf8, String(validating: bytes, as: UTF8.self) != nil else { return .failure(.nonASCII) }
        }
        guard bytes.count >= 2, bytes.first == 0x3C, bytes.last == 0x3E else { return .failure(.syntax) }
        var inner = bytes.dropFirst().dropLast()
        if inner.isEmpty { return allowNull ? .success(.null) : .failure(.syntax) }
        if bytes.count > maxPath { return .failure(.tooLong) }
        if allowPostmaster, equalsIgnoringCase(inner, "postmaster") { return .success(.postmaster) }
        if inner.first == 0x40 {
            // A-d-l = At-domain *( "," At-domain ), At-domain = "@" Domain; accepted and ignored (§4.1.1.3, Appendix C).
            guard let colon = inner.firstIndex(of: 0x3A) else { return .failure(.syntax) }
            for hop in inner[inner.startIndex..<colon].split(separator: 0x2C, omittingEmptySubsequences: false) {
                guard hop.first == 0x40, isDomain(hop.dropFirst()) else { return .failure(.syntax) }
            }
            inner = inner[(colon + 1)...]
        }
        return parseMailbox(inner, utf8: utf8).map { .mailbox($0) }
    }
}
