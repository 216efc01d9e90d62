/// The quoted-printable content transfer encoding (RFC 2045 §6.7) for text bodies.
public enum QuotedPrintable {
    /// The longest encoded line, in characters, without its CRLF (RFC 2045 §6.7 rule 5).
    public static let maximumLineLength = 76

    /// Encodes text whose line breaks are CRLF.
    ///
    /// Each CRLF stays a hard line break (rule 4); printable ASCII other than `=` stays as is
    /// (rule 2); `=`, 8-bit octets, control characters, a lone CR or LF, and a space or tab at
    /// the end of a line become `=XX` with upper-case hex (rules 1 and 3); a line longer than
    /// 76 characters is cut with soft line breaks (`=` CRLF, rule 5), never inside an `=XX`.
    /// - Parameter bytes: the octets, e.g. UTF-8 text with CRLF line breaks.
    /// - Returns: the encoded octets, all printable ASCII and CRLF, no line over 76 characters.
    public static func encode(_ bytes: [UInt8]) -> [UInt8] {
        let hex = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count + bytes.count / 8)
        var lineLength = 0
        var i = 0
        while i < bytes.count {
            let b = bytes[i]
            if b == 0x0D, i + 1 < bytes.count, bytes[i + 1] == 0x0A {
                out += [0x0D, 0x0A]
                lineLength = 0
                i += 2
                continue
            }
            let atLineEnd = i + 1 == bytes.count || (bytes[i + 1] == 0x0D && i + 2 < bytes.count && bytes[i + 2] == 0x0A)
            let literal = (b >= 0x21 && b <= 0x7E && b != 0x3D) || ((b == 0x20 || b == 0x09) && !atLineEnd)
            let width = literal ? 1 : 3
            // The last character of a line may use column 76; any other leaves room for the
            // `=` of a soft line break.
            if lineLength + width > (atLineEnd ? maximumLineLength : maximumLineLength - 1) {
                out += [0x3D, 0x0D, 0x0A]
                lineLength = 0
            }
            if literal {
                out.append(b)
            } else {
                out += [0x3D, hex[Int(b >> 4)], hex[Int(b & 0x0F)]]
            }
            lineLength += width
            i += 1
        }
        return out
    }

    /// Whether text with CRLF line breaks can go as `7bit` (RFC 2045 §2.7) without change by
    /// any transport: printable ASCII and tab only, no line over `maximumLineLength` octets,
    /// no space or tab at the end of a line (which transports may strip), lone CR or LF nowhere.
    /// - Parameter bytes: the text's octets.
    public static func isSafeAsSevenBit(_ bytes: [UInt8]) -> Bool {
        var lineLength = 0
        var i = 0
        while i < bytes.count {
            let b = bytes[i]
            if b == 0x0D {
                guard i + 1 < bytes.count, bytes[i + 1] == 0x0A else { return false }
                if i > 0, bytes[i - 1] == 0x20 || bytes[i - 1] == 0x09 { return false }
                lineLength = 0
                i += 2
                continue
            }
            guard (b >= 0x20 && b <= 0x7E) || b == 0x09 else { return false }
            lineLength += 1
            if lineLength > maximumLineLength { return false }
            i += 1
        }
        if let last = bytes.last, last == 0x20 || last == 0x09 { return false }
        return true
    }
}
