/// Reads one JSON text (RFC 8259) in place, value by value, for decoders written by hand —
/// the counterpart of `JSONObjectWriter` for the frames of every delivery (issue 19: decoding
/// them with `JSONDecoder` was a tenth of a node's CPU and the largest part of the
/// coordinator's frame handling).
///
/// A pull reader over the bytes: `object(_:)` calls its body once per member with the key, and
/// the body reads the value (`string()`, `int64()`, …) or skips it (`skipValue()`); nothing is
/// built but what the caller keeps. Strict where `JSONDecoder` is: the RFC 8259 grammar (no
/// leading zeros, no unescaped control characters, valid UTF-8, paired surrogates; a trailing
/// comma and repeated keys are taken as `JSONDecoder` takes them), nesting
/// at most `maximumDepth` deep; anything else throws `JSONReadError` with the offset, never
/// traps, whatever the input.
public struct JSONObjectReader {
    /// The deepest nesting of arrays and objects accepted.
    public static let maximumDepth = 64

    private let bytes: [UInt8]
    private var i = 0
    private var depth = 0

    /// - Parameter bytes: one JSON text, UTF-8.
    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    /// Reads a whole text with `body`, then requires that only whitespace follows.
    /// - Throws: `JSONReadError`, or what `body` throws.
    public static func read<T>(_ bytes: [UInt8], _ body: (inout JSONObjectReader) throws -> T) throws -> T {
        var r = JSONObjectReader(bytes)
        let value = try body(&r)
        r.skipWhitespace()
        guard r.i == r.bytes.count else { throw r.error("data after the JSON value") }
        return value
    }

    // MARK: - Structure

    /// Reads an object, calling `member` with each key; `member` must read or skip the value.
    /// As `JSONDecoder` does, a repeated key keeps its first value (the later ones are skipped)
    /// and a comma before the closing brace is accepted.
    /// - Throws: `JSONReadError` when the next value is not a well-formed object.
    public mutating func object(_ member: (inout JSONObjectReader, String) throws -> Void) throws {
        try expect(UInt8(ascii: "{"), "an object")
        try enter()
        // Keys seen: a list while short (the frames' objects have a dozen keys), a set beyond,
        // so that a header of thousands of keys costs linear time.
        var seenList: [String] = []
        var seenSet: Set<String>?
        while true {
            skipWhitespace()
            if peek() == UInt8(ascii: "}") { i += 1; depth -= 1; return }
            guard peek() == UInt8(ascii: "\"") else { throw error("expected a member name") }
            let key = try string()
            try expect(UInt8(ascii: ":"), "':'")
            let repeated: Bool
            if seenSet != nil {
                repeated = !seenSet!.insert(key).inserted
            } else if seenList.contains(key) {
                repeated = true
            } else {
                repeated = false
                seenList.append(key)
                if seenList.count > 16 { seenSet = Set(seenList); seenList = [] }
            }
            if repeated { try skipValue() } else { try member(&self, key) }
            skipWhitespace()
            switch peek() {
            case UInt8(ascii: ","): i += 1
            case UInt8(ascii: "}"): i += 1; depth -= 1; return
            default: throw error("expected ',' or '}'")
            }
        }
    }

    /// Reads an array, calling `element` once per element; `element` must read or skip it.
    /// - Throws: `JSONReadError` when the next value is not a well-formed array.
    public mutating func array(_ element: (inout JSONObjectReader) throws -> Void) throws {
        try expect(UInt8(ascii: "["), "an array")
        try enter()
        while true {
            skipWhitespace()
            // `[]`, and a comma before the closing bracket (accepted, as `JSONDecoder` does).
            if peek() == UInt8(ascii: "]") { i += 1; depth -= 1; return }
            try element(&self)
            skipWhitespace()
            switch peek() {
            case UInt8(ascii: ","): i += 1
            case UInt8(ascii: "]"): i += 1; depth -= 1; return
            default: throw error("expected ',' or ']'")
            }
        }
    }

    /// Consumes `null` when it is next.
    /// - Returns: whether it was (an optional field then stays nil, as `decodeIfPresent` does).
    public mutating func readNull() -> Bool {
        skipWhitespace()
        guard matches("null") else { return false }
        i += 4
        return true
    }

    /// Skips the next value, whatever it is (an unknown member: newer peers add fields).
    /// - Throws: `JSONReadError` when it is not well formed.
    public mutating func skipValue() throws {
        skipWhitespace()
        switch peek() {
        case UInt8(ascii: "{"): try object { r, _ in try r.skipValue() }
        case UInt8(ascii: "["): try array { r in try r.skipValue() }
        case UInt8(ascii: "\""):
            // A string nobody reads is taken as `JSONDecoder` takes it: up to the closing
            // quote, its escapes and bytes checked only when read.
            i += 1
            while i < bytes.count, bytes[i] != UInt8(ascii: "\"") {
                guard bytes[i] == UInt8(ascii: "\\") else { i += 1; continue }
                // `\u` needs four more bytes, none of them the closing quote (as JSONDecoder scans).
                if i + 1 < bytes.count, bytes[i + 1] == UInt8(ascii: "u") {
                    guard i + 6 <= bytes.count, !bytes[(i + 2)..<(i + 6)].contains(UInt8(ascii: "\"")) else { throw error("short \\u escape") }
                    i += 6
                } else {
                    i += 2
                }
            }
            guard i < bytes.count else { throw error("unterminated string") }
            i += 1
        case UInt8(ascii: "t"), UInt8(ascii: "f"): _ = try bool()
        case UInt8(ascii: "n"): if !readNull() { throw error("expected a value") }
        default:
            // A number nobody reads is taken as `JSONDecoder` takes it: a run of number
            // characters starting with '-' or a digit, checked only when read.
            guard let first = peek(), first == UInt8(ascii: "-") || isDigit(first) else { throw error("expected a value") }
            while let b = peek(), isDigit(b) || b == UInt8(ascii: "-") || b == UInt8(ascii: "+") || b == UInt8(ascii: ".")
                    || b == UInt8(ascii: "e") || b == UInt8(ascii: "E") { i += 1 }
        }
    }

    // MARK: - Scalars

    /// Reads a string.
    /// - Throws: `JSONReadError` when the next value is not a well-formed string of valid UTF-8.
    public mutating func string() throws -> String {
        try expect(UInt8(ascii: "\""), "a string")
        let start = i
        // Fast path: no escapes — one validated copy of the bytes.
        while i < bytes.count {
            let b = bytes[i]
            if b == UInt8(ascii: "\"") {
                guard let s = String(validating: bytes[start..<i], as: UTF8.self) else { throw error("invalid UTF-8 in a string", at: start) }
                i += 1
                return s
            }
            if b == UInt8(ascii: "\\") { break }
            guard b >= 0x20 else { throw error("unescaped control character in a string") }
            i += 1
        }
        guard i < bytes.count else { throw error("unterminated string", at: start - 1) }
        var out = Array(bytes[start..<i])
        while i < bytes.count {
            let b = bytes[i]
            if b == UInt8(ascii: "\"") {
                guard let s = String(validating: out, as: UTF8.self) else { throw error("invalid UTF-8 in a string", at: start) }
                i += 1
                return s
            }
            guard b >= 0x20 else { throw error("unescaped control character in a string") }
            guard b == UInt8(ascii: "\\") else { out.append(b); i += 1; continue }
            i += 1
            guard i < bytes.count else { break }
            let e = bytes[i]
            i += 1
            switch e {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hex4()
                if (0xD800...0xDBFF).contains(scalar) {
                    guard i + 1 < bytes.count, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") else {
                        throw error("unpaired surrogate in a string")
                    }
                    i += 2
                    let low = try hex4()
                    guard (0xDC00...0xDFFF).contains(low) else { throw error("unpaired surrogate in a string") }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                } else if (0xDC00...0xDFFF).contains(scalar) {
                    throw error("unpaired surrogate in a string")
                }
                guard let u = Unicode.Scalar(scalar) else { throw error("invalid \\u escape") }
                out.append(contentsOf: String(Character(u)).utf8)
            default: throw error("invalid escape in a string")
            }
        }
        throw error("unterminated string", at: start - 1)
    }

    /// Reads a string, or nil for `null`.
    /// - Throws: `JSONReadError` when the next value is neither.
    public mutating func optionalString() throws -> String? { readNull() ? nil : try string() }

    /// Reads `true` or `false`.
    /// - Throws: `JSONReadError` otherwise.
    public mutating func bool() throws -> Bool {
        skipWhitespace()
        if matches("true") { i += 4; return true }
        if matches("false") { i += 5; return false }
        throw error("expected true or false")
    }

    /// Reads a number that is an integer within `Int64` (`3`, `-7`; also `3.0` or `3e2`, as
    /// `JSONDecoder` takes them).
    /// - Throws: `JSONReadError` when it is not a number, has a fraction, or does not fit.
    public mutating func int64() throws -> Int64 {
        let (range, integral) = try numberRange()
        var k = range.lowerBound
        let negative = bytes[k] == UInt8(ascii: "-")
        if negative { k += 1 }
        if integral {
            var value: Int64 = 0
            while k < range.upperBound {
                let digit = Int64(bytes[k] &- UInt8(ascii: "0"))
                let (m, o1) = value.multipliedReportingOverflow(by: 10)
                let (a, o2) = negative ? m.subtractingReportingOverflow(digit) : m.addingReportingOverflow(digit)
                guard !o1, !o2 else { throw error("integer out of range", at: range.lowerBound) }
                value = a
                k += 1
            }
            return value
        }
        // Exactly, from the digits: `d[.ddd][e±x]` is an integer when the exponent moves every
        // non-zero digit left of the point.
        var digits: [UInt8] = []
        var fractionDigits = 0
        var inFraction = false
        var exponent = 0
        while k < range.upperBound {
            let b = bytes[k]
            if b == UInt8(ascii: ".") { inFraction = true; k += 1; continue }
            if b == UInt8(ascii: "e") || b == UInt8(ascii: "E") {
                k += 1
                var sign = 1
                if bytes[k] == UInt8(ascii: "-") { sign = -1; k += 1 } else if bytes[k] == UInt8(ascii: "+") { k += 1 }
                while k < range.upperBound {
                    exponent = min(exponent * 10 + Int(bytes[k] &- UInt8(ascii: "0")), 1_000_000)
                    k += 1
                }
                exponent *= sign
                break
            }
            digits.append(b &- UInt8(ascii: "0"))
            if inFraction { fractionDigits += 1 }
            k += 1
        }
        guard let firstSignificant = digits.firstIndex(where: { $0 != 0 }) else { return 0 }
        digits.removeFirst(firstSignificant)
        let shift = exponent - fractionDigits
        if shift < 0 {
            guard -shift <= digits.count, digits.suffix(-shift).allSatisfy({ $0 == 0 }) else {
                throw error("not an integer", at: range.lowerBound)
            }
            digits.removeLast(-shift)
        } else {
            guard shift <= 19 else { throw error("integer out of range", at: range.lowerBound) }
            digits.append(contentsOf: repeatElement(0, count: shift))
        }
        var value: Int64 = 0
        for digit in digits {
            let (m, o1) = value.multipliedReportingOverflow(by: 10)
            let (a, o2) = negative ? m.subtractingReportingOverflow(Int64(digit)) : m.addingReportingOverflow(Int64(digit))
            guard !o1, !o2 else { throw error("integer out of range", at: range.lowerBound) }
            value = a
        }
        return value
    }

    /// Reads an integer within `Int`.
    /// - Throws: as `int64()`.
    public mutating func int() throws -> Int {
        let at = i
        guard let v = Int(exactly: try int64()) else { throw error("integer out of range", at: at) }
        return v
    }

    /// Reads a number.
    /// - Throws: `JSONReadError` when the next value is not a number, or is out of `Double`'s range.
    public mutating func double() throws -> Double {
        let (range, _) = try numberRange()
        guard let d = Double(String(decoding: bytes[range], as: UTF8.self)), d.isFinite else {
            throw error("number out of range", at: range.lowerBound)
        }
        return d
    }

    /// Reads a number, or nil for `null`.
    /// - Throws: as `double()`.
    public mutating func optionalDouble() throws -> Double? { readNull() ? nil : try double() }

    // MARK: - Lexing

    /// The bytes of the next number (RFC 8259 §6 grammar), and whether it has no fraction or exponent.
    private mutating func numberRange() throws -> (Range<Int>, Bool) {
        skipWhitespace()
        let start = i
        if peek() == UInt8(ascii: "-") { i += 1 }
        guard let first = peek(), isDigit(first) else { throw error("expected a value", at: start) }
        i += 1
        if first != UInt8(ascii: "0") { while let b = peek(), isDigit(b) { i += 1 } }
        var integral = true
        if peek() == UInt8(ascii: ".") {
            integral = false
            i += 1
            guard let b = peek(), isDigit(b) else { throw error("expected a digit after '.'") }
            while let b = peek(), isDigit(b) { i += 1 }
        }
        if peek() == UInt8(ascii: "e") || peek() == UInt8(ascii: "E") {
            integral = false
            i += 1
            if peek() == UInt8(ascii: "+") || peek() == UInt8(ascii: "-") { i += 1 }
            guard let b = peek(), isDigit(b) else { throw error("expected a digit in the exponent") }
            while let b = peek(), isDigit(b) { i += 1 }
        }
        return (start..<i, integral)
    }

    private mutating func hex4() throws -> UInt32 {
        guard i + 4 <= bytes.count else { throw error("short \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let b = bytes[i]
            let d: UInt8
            switch b {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = b - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = b - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = b - UInt8(ascii: "A") + 10
            default: throw error("invalid \\u escape")
            }
            v = v << 4 | UInt32(d)
            i += 1
        }
        return v
    }

    private mutating func enter() throws {
        depth += 1
        guard depth <= Self.maximumDepth else { throw error("nested deeper than \(Self.maximumDepth)") }
    }

    private mutating func expect(_ b: UInt8, _ what: String) throws {
        skipWhitespace()
        guard peek() == b else { throw error("expected \(what)") }
        i += 1
    }

    private mutating func skipWhitespace() {
        while i < bytes.count {
            switch bytes[i] {
            case 0x20, 0x09, 0x0A, 0x0D: i += 1
            default: return
            }
        }
    }

    private func peek() -> UInt8? { i < bytes.count ? bytes[i] : nil }

    private func matches(_ word: StaticString) -> Bool {
        let n = word.utf8CodeUnitCount
        guard i + n <= bytes.count else { return false }
        return word.withUTF8Buffer { w in
            for k in 0..<n where bytes[i + k] != w[k] { return false }
            return true
        }
    }

    private func isDigit(_ b: UInt8) -> Bool { b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") }

    private func error(_ reason: String, at offset: Int? = nil) -> JSONReadError {
        JSONReadError(reason: reason, offset: offset ?? i)
    }

    /// Throws `JSONReadError(reason, offset)` at the current position: a member the caller's
    /// type requires is missing, or a value is not one it accepts.
    public func invalid(_ reason: String) -> JSONReadError { error(reason) }
}

/// A JSON text `JSONObjectReader` could not read, or a value its caller does not accept.
public struct JSONReadError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What was wrong.
    public var reason: String
    /// Where, in bytes from the start of the text.
    public var offset: Int
    public var description: String { "\(reason) at byte \(offset)" }
}
