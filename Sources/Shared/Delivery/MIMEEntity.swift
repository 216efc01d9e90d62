import Foundation

/// A MIME entity read from bytes: its header fields and its body, with multipart bodies split
/// into their parts (RFC 2045, RFC 2046 §5.1). Enough to read reports sent back to a sender —
/// delivery status notifications (RFC 3464) and abuse feedback reports (RFC 5965) — not a
/// general mail parser: no charset conversion of header values, no encoded-words.
///
/// Bounded: at most `maximumDepth` levels of nested multiparts and `maximumParts` parts in
/// all, so hostile input cannot make it recurse or allocate without limit.
public struct MIMEEntity: Sendable, Equatable {
    /// Header fields in order: (name as written, unfolded value without leading white space).
    public var fields: [(name: String, value: String)]
    /// The body: the octets after the empty line that ends the header section (CRLF or LF).
    public var body: [UInt8]
    /// For a `multipart/*` entity: its parts, in order.
    public var parts: [MIMEEntity]

    /// The deepest nesting of multiparts read.
    public static let maximumDepth = 8
    /// The most parts read in one message.
    public static let maximumParts = 256

    public static func == (a: MIMEEntity, b: MIMEEntity) -> Bool {
        a.fields.map(\.name) == b.fields.map(\.name) && a.fields.map(\.value) == b.fields.map(\.value) && a.body == b.body && a.parts == b.parts
    }

    /// Reads an entity (a whole message, or a part).
    /// - Parameter bytes: the entity's octets; CRLF or bare LF line ends.
    public init(parsing bytes: [UInt8]) {
        var budget = MIMEEntity.maximumParts
        self.init(bytes[...], depth: 0, budget: &budget)
    }

    private init(_ bytes: ArraySlice<UInt8>, depth: Int, budget: inout Int) {
        let (fields, bodyStart) = MIMEEntity.readHeader(bytes)
        self.fields = fields
        self.body = Array(bytes[bodyStart...])
        self.parts = []
        if depth < MIMEEntity.maximumDepth, mediaType.hasPrefix("multipart/"), let boundary = parameter("boundary", of: "content-type"),
           !boundary.isEmpty {
            for part in MIMEEntity.split(bytes[bodyStart...], boundary: boundary) {
                guard budget > 0 else { break }
                budget -= 1
                parts.append(MIMEEntity(part, depth: depth + 1, budget: &budget))
            }
        }
    }

    /// The first value of field `name` (case-insensitive).
    public func field(_ name: String) -> String? {
        let lower = name.lowercased()
        return fields.first { $0.name.lowercased() == lower }?.value
    }

    /// Every value of field `name` (case-insensitive), in order.
    public func fieldValues(_ name: String) -> [String] {
        let lower = name.lowercased()
        return fields.filter { $0.name.lowercased() == lower }.map(\.value)
    }

    /// The media type of `Content-Type`, lower-cased (`text/plain` when absent, RFC 2045 §5.2).
    public var mediaType: String {
        guard let ct = field("content-type") else { return "text/plain" }
        return ct.split(separator: ";", maxSplits: 1).first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() } ?? "text/plain"
    }

    /// A parameter of a structured field such as `Content-Type: multipart/report; report-type=feedback-report`
    /// (RFC 2045 §5.1; quoted values unquoted, backslash escapes removed).
    public func parameter(_ name: String, of fieldName: String) -> String? {
        guard let value = field(fieldName) else { return nil }
        return MIMEEntity.parameters(of: value)[name.lowercased()]
    }

    /// The body decoded from its `Content-Transfer-Encoding` (base64 and quoted-printable;
    /// anything else is returned as is). Undecodable base64 gives the raw body.
    public var decodedBody: [UInt8] {
        switch field("content-transfer-encoding")?.trimmingCharacters(in: .whitespaces).lowercased() {
        case "base64":
            let text = String(decoding: body.filter { !($0 == 0x0D || $0 == 0x0A || $0 == 0x20 || $0 == 0x09) }, as: UTF8.self)
            return Data(base64Encoded: text, options: .ignoreUnknownCharacters).map { [UInt8]($0) } ?? body
        case "quoted-printable":
            return MIMEEntity.decodeQuotedPrintable(body)
        default:
            return body
        }
    }

    // MARK: - Reading

    /// The header fields and the offset of the body (after the empty line; the end when there is none).
    static func readHeader(_ bytes: ArraySlice<UInt8>) -> ([(name: String, value: String)], Int) {
        var fields: [(name: String, value: String)] = []
        var i = bytes.startIndex
        var current: (name: String, value: [UInt8])?
        func flush() {
            if let c = current {
                let value = String(decoding: c.value, as: UTF8.self).trimmingCharacters(in: .whitespaces)
                fields.append((c.name, value))
            }
            current = nil
        }
        while i < bytes.endIndex {
            var end = bytes[i...].firstIndex(of: 0x0A) ?? bytes.endIndex
            let next = end < bytes.endIndex ? end + 1 : end
            if end > i && bytes[end - 1] == 0x0D { end -= 1 }
            let line = bytes[i..<end]
            if line.isEmpty { flush(); return (fields, next) }
            if let first = line.first, first == 0x20 || first == 0x09 {
                // A folded continuation (RFC 5322 §2.2.3): unfold.
                if current != nil { current!.value += [0x20] + line.drop { $0 == 0x20 || $0 == 0x09 } }
            } else if let colon = line.firstIndex(of: 0x3A), colon > line.startIndex {
                flush()
                let name = String(decoding: line[..<colon], as: UTF8.self).trimmingCharacters(in: .whitespaces)
                current = (name, Array(line[(colon + 1)...]))
            } else {
                // Not a header line: the header section ended without an empty line.
                flush()
                return (fields, i)
            }
            i = next
        }
        flush()
        return (fields, bytes.endIndex)
    }

    /// The parts of a multipart body: between delimiter lines `--boundary`, up to the close
    /// delimiter `--boundary--` (RFC 2046 §5.1.1); the CRLF before a delimiter belongs to it.
    static func split(_ body: ArraySlice<UInt8>, boundary: String) -> [ArraySlice<UInt8>] {
        let delimiter = Array(("--" + boundary).utf8)
        var parts: [ArraySlice<UInt8>] = []
        var partStart: Int?
        var i = body.startIndex
        while i < body.endIndex {
            var end = body[i...].firstIndex(of: 0x0A) ?? body.endIndex
            let next = end < body.endIndex ? end + 1 : end
            if end > i && body[end - 1] == 0x0D { end -= 1 }
            let line = body[i..<end]
            if line.starts(with: delimiter) {
                let rest = line.dropFirst(delimiter.count)
                let isClose = rest.starts(with: [0x2D, 0x2D])
                if rest.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) || isClose {
                    if let s = partStart {
                        // Drop the line break before the delimiter.
                        var e = i
                        if e > s && body[e - 1] == 0x0A { e -= 1 }
                        if e > s && body[e - 1] == 0x0D { e -= 1 }
                        parts.append(body[s..<e])
                    }
                    if isClose { return parts }
                    partStart = next
                }
            }
            i = next
        }
        if let s = partStart, s < body.endIndex { parts.append(body[s...]) }
        return parts
    }

    /// Parameters of a structured field value, names lower-cased.
    static func parameters(of value: String) -> [String: String] {
        var out: [String: String] = [:]
        let scalars = Array(value.unicodeScalars)
        var i = scalars.firstIndex(of: ";") ?? scalars.endIndex
        while i < scalars.endIndex {
            i += 1  // past ';'
            while i < scalars.endIndex && (scalars[i] == " " || scalars[i] == "\t") { i += 1 }
            var name = ""
            while i < scalars.endIndex && scalars[i] != "=" && scalars[i] != ";" { name.unicodeScalars.append(scalars[i]); i += 1 }
            guard i < scalars.endIndex, scalars[i] == "=" else { continue }
            i += 1
            while i < scalars.endIndex && (scalars[i] == " " || scalars[i] == "\t") { i += 1 }
            var v = ""
            if i < scalars.endIndex && scalars[i] == "\"" {
                i += 1
                while i < scalars.endIndex && scalars[i] != "\"" {
                    if scalars[i] == "\\" && i + 1 < scalars.endIndex { i += 1 }
                    v.unicodeScalars.append(scalars[i]); i += 1
                }
                if i < scalars.endIndex { i += 1 }
                while i < scalars.endIndex && scalars[i] != ";" { i += 1 }
            } else {
                while i < scalars.endIndex && scalars[i] != ";" { v.unicodeScalars.append(scalars[i]); i += 1 }
                v = v.trimmingCharacters(in: .whitespaces)
            }
            out[name.trimmingCharacters(in: .whitespaces).lowercased()] = v
        }
        return out
    }

    /// Quoted-printable decoding (RFC 2045 §6.7): `=XX` octets, soft line breaks `=CRLF`.
    static func decodeQuotedPrintable(_ bytes: [UInt8]) -> [UInt8] {
        func hex(_ b: UInt8) -> UInt8? {
            switch b {
            case 0x30...0x39: return b - 0x30
            case 0x41...0x46: return b - 0x41 + 10
            case 0x61...0x66: return b - 0x61 + 10
            default: return nil
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var i = 0
        while i < bytes.count {
            let b = bytes[i]
            if b == 0x3D {
                if i + 2 < bytes.count, let h = hex(bytes[i + 1]), let l = hex(bytes[i + 2]) {
                    out.append(h << 4 | l); i += 3; continue
                }
                if i + 1 < bytes.count && bytes[i + 1] == 0x0A { i += 2; continue }
                if i + 2 < bytes.count && bytes[i + 1] == 0x0D && bytes[i + 2] == 0x0A { i += 3; continue }
            }
            out.append(b); i += 1
        }
        return out
    }
}
