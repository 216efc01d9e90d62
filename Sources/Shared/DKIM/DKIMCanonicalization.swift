import Foundation
import HatoSupport

/// A DKIM canonicalization algorithm (RFC 6376 §3.4).
public enum DKIMCanonicalization: String, Sendable, Hashable, CaseIterable {
    /// `simple`: headers exactly as they are (§3.4.1); the body with trailing empty lines
    /// removed and an empty body read as one CRLF (§3.4.3).
    case simple
    /// `relaxed`: header names lowercased, values unfolded and whitespace runs reduced (§3.4.2);
    /// body whitespace reduced, trailing whitespace and trailing empty lines removed (§3.4.4).
    case relaxed
}

/// One header field of a message, as it appears on the wire.
public struct MessageHeaderField: Sendable, Equatable {
    /// The field name exactly as written (before the colon, no trailing whitespace).
    public let name: String
    /// The whole field, name and folded value, with its terminating CRLF.
    public let raw: [UInt8]

    /// A field from its name and raw bytes.
    public init(name: String, raw: [UInt8]) { self.name = name; self.raw = raw }
}

/// A message split into its header fields and body (RFC 5322 §2.1), for signing and rewriting.
///
/// The split is at the first empty line (CRLF CRLF). A message without an empty line is all
/// header and has an empty body. Lines that are neither a field (`name:`) nor a continuation
/// (starting with SP/HTAB) are kept as nameless fields so that re-assembly is exact.
public struct ParsedMessage: Sendable, Equatable {
    /// The header fields in order.
    public var fields: [MessageHeaderField]
    /// The body after the empty line (empty when there is none).
    public var body: [UInt8]
    /// Whether the header section was followed by an empty line.
    public var hasSeparator: Bool

    /// Splits CRLF-terminated message bytes (see `MessageText.canonicalLineEndings`).
    public init(_ message: [UInt8]) {
        var fields: [MessageHeaderField] = []
        var i = 0
        let n = message.count
        var separator = false
        while i < n {
            // An empty line ends the header section.
            if message[i] == 0x0D, i + 1 < n, message[i + 1] == 0x0A {
                separator = true
                i += 2
                break
            }
            // One field: this line plus continuation lines starting with SP/HTAB.
            let start = i
            var end = i
            while true {
                guard let lf = message[end..<n].firstIndex(of: 0x0A) else { end = n; break }
                end = lf + 1
                if end < n, message[end] == 0x20 || message[end] == 0x09 { continue }
                break
            }
            let raw = Array(message[start..<end])
            let nameBytes = raw.prefix { $0 != 0x3A && $0 != 0x0D && $0 != 0x0A }
            let name = raw.contains(0x3A) && nameBytes.count < raw.count && raw[nameBytes.count] == 0x3A
                ? String(decoding: nameBytes, as: UTF8.self).trimmingCharacters(in: .whitespaces) : ""
            fields.append(MessageHeaderField(name: name, raw: raw))
            i = end
        }
        self.fields = fields
        self.body = i < n ? Array(message[i..<n]) : []
        self.hasSeparator = separator
    }

    /// The message bytes re-assembled (identical to the input when unchanged).
    public var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(fields.reduce(0) { $0 + $1.raw.count } + body.count + 2)
        for f in fields { out.append(contentsOf: f.raw) }
        if hasSeparator || !body.isEmpty { out.append(contentsOf: [0x0D, 0x0A]) }
        out.append(contentsOf: body)
        return out
    }

    /// The unfolded value of the last field named `name` (case-insensitive), without the name and colon.
    public func lastValue(_ name: String) -> String? {
        let lower = name.lowercased()
        guard let f = fields.last(where: { $0.name.lowercased() == lower }) else { return nil }
        return MessageText.unfoldedValue(f.raw)
    }

    /// The unfolded values of every field named `name`, in order.
    public func values(_ name: String) -> [String] {
        let lower = name.lowercased()
        return fields.filter { $0.name.lowercased() == lower }.map { MessageText.unfoldedValue($0.raw) }
    }
}

/// Line-level helpers for message text.
public enum MessageText {
    /// The longest line RFC 5322 §2.1.1 allows, without its CRLF.
    public static let maxLineLength = 998

    /// Whether `text` is already what `canonicalLineEndings` would make of it: every CR
    /// followed by LF, every LF preceded by CR, and a final CRLF unless empty.
    public static func hasCanonicalLineEndings(_ text: [UInt8]) -> Bool {
        text.withUnsafeBufferPointer { p in
            let n = p.count
            guard n > 0 else { return true }
            guard n >= 2, p[n - 2] == 0x0D, p[n - 1] == 0x0A else { return false }
            // Every CR is followed by LF, and every LF follows a CR: two `memchr` walks.
            var i = 0
            while let cr = ByteScan.index(of: 0x0D, in: p, from: i) {
                guard cr + 1 < n, p[cr + 1] == 0x0A else { return false }
                i = cr + 2
            }
            i = 0
            while let lf = ByteScan.index(of: 0x0A, in: p, from: i) {
                guard lf > 0, p[lf - 1] == 0x0D else { return false }
                i = lf + 1
            }
            return true
        }
    }

    /// Rewrites every line ending (bare LF, bare CR, CRLF) as CRLF and makes sure the text ends
    /// with CRLF (RFC 5321 §2.3.8, done before dot-stuffing and before DKIM signing, so the
    /// signed bytes are the bytes on the wire).
    public static func canonicalLineEndings(_ text: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(text.count + text.count / 50 + 2)
        var i = 0
        let n = text.count
        while i < n {
            let b = text[i]
            if b == 0x0D {
                out.append(0x0D); out.append(0x0A)
                i += (i + 1 < n && text[i + 1] == 0x0A) ? 2 : 1
            } else if b == 0x0A {
                out.append(0x0D); out.append(0x0A)
                i += 1
            } else {
                out.append(b)
                i += 1
            }
        }
        if !out.isEmpty, out.last != 0x0A { out.append(0x0D); out.append(0x0A) }
        return out
    }

    /// The length in octets of the longest line (CRLF not counted) of CRLF text.
    public static func longestLine(_ text: [UInt8]) -> Int {
        var longest = 0
        var start = 0
        var i = 0
        let n = text.count
        while i < n {
            if text[i] == 0x0A {
                var len = i - start
                if len > 0, text[i - 1] == 0x0D { len -= 1 }
                longest = max(longest, len)
                start = i + 1
            }
            i += 1
        }
        return max(longest, n - start)
    }

    /// The value of a raw header field: after the first colon, unfolded (CRLFs removed), trimmed.
    public static func unfoldedValue(_ raw: [UInt8]) -> String {
        guard let colon = raw.firstIndex(of: 0x3A) else { return "" }
        let value = raw[(colon + 1)...].filter { $0 != 0x0D && $0 != 0x0A }
        return String(decoding: value, as: UTF8.self).trimmingCharacters(in: .whitespaces)
    }
}

extension DKIMCanonicalization {
    /// Canonicalizes one header field (RFC 6376 §3.4.1, §3.4.2).
    /// - Parameter raw: the field with its CRLF, folded as on the wire.
    /// - Returns: the canonical form, ending in CRLF (relaxed) or exactly `raw` (simple).
    public func header(_ raw: [UInt8]) -> [UInt8] {
        switch self {
        case .simple:
            return raw
        case .relaxed:
            guard let colon = raw.firstIndex(of: 0x3A) else { return raw }
            var out: [UInt8] = []
            out.reserveCapacity(raw.count)
            // Name: lowercased, whitespace before the colon removed.
            var name = Array(raw[..<colon])
            while let last = name.last, last == 0x20 || last == 0x09 { name.removeLast() }
            for b in name { out.append((0x41...0x5A).contains(b) ? b + 0x20 : b) }
            out.append(0x3A)
            // Value: unfolded, WSP runs → one SP, leading and trailing WSP removed.
            var pendingSpace = false
            var started = false
            for b in raw[(colon + 1)...] {
                if b == 0x0D || b == 0x0A { continue }
                if b == 0x20 || b == 0x09 {
                    pendingSpace = started
                    continue
                }
                if pendingSpace { out.append(0x20); pendingSpace = false }
                out.append(b)
                started = true
            }
            out.append(0x0D); out.append(0x0A)
            return out
        }
    }

    /// Canonicalizes a message body (RFC 6376 §3.4.3, §3.4.4).
    /// - Parameter body: the body with CRLF line ends (see `MessageText.canonicalLineEndings`).
    /// - Returns: the bytes the body hash is computed over (no `l=` limit).
    public func body(_ body: [UInt8]) -> [UInt8] {
        var out: [UInt8]
        switch self {
        case .simple:
            out = body
        case .relaxed:
            out = []
            out.reserveCapacity(body.count)
            var pendingSpace = false
            var i = 0
            let n = body.count
            while i < n {
                let b = body[i]
                if b == 0x20 || b == 0x09 {
                    pendingSpace = true
                } else if b == 0x0D, i + 1 < n, body[i + 1] == 0x0A {
                    // Whitespace at the end of a line is dropped.
                    pendingSpace = false
                    out.append(0x0D); out.append(0x0A)
                    i += 1
                } else {
                    if pendingSpace { out.append(0x20); pendingSpace = false }
                    out.append(b)
                }
                i += 1
            }
            if pendingSpace { /* trailing whitespace of an unterminated last line is dropped */ }
        }
        // Remove every empty line at the end: strip trailing CRLF pairs, then put one back.
        var end = out.count
        while end >= 2, out[end - 2] == 0x0D, out[end - 1] == 0x0A { end -= 2 }
        out.removeSubrange(end...)
        if out.isEmpty {
            // An empty body is CRLF for simple (§3.4.3) and empty for relaxed (§3.4.4).
            return self == .simple ? [0x0D, 0x0A] : []
        }
        out.append(0x0D); out.append(0x0A)
        return out
    }
}
