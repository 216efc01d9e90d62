/// Parameters of `Content-Type` and `Content-Disposition` (RFC 2045 §5.1, RFC 2183 §2),
/// with RFC 2231 encoding for values that are not short ASCII.
enum MIMEParameter {
    /// The longest `name=value` segment written, so that a continuation line (a space, the
    /// segment and `;`) stays within 76 characters.
    static let maximumSegmentLength = 70

    /// RFC 2045 §5.1 `token` characters: printable ASCII except space and `tspecials`.
    static func isTokenCharacter(_ b: UInt8) -> Bool {
        guard b > 0x20, b < 0x7F else { return false }
        return !"()<>@,;:\\\"/[]?=".utf8.contains(b)
    }

    /// Whether `text` is an RFC 2045 `token`.
    static func isToken(_ text: String) -> Bool {
        !text.isEmpty && text.utf8.allSatisfy(isTokenCharacter)
    }

    /// RFC 2231 §7 `attribute-char` as written here unencoded: letters, digits and `!#$&+-.^_`|~`.
    private static func isAttributeCharacter(_ b: UInt8) -> Bool {
        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || "!#$&+-.^_`|~".utf8.contains(b)
    }

    /// The segments of one parameter: `name="value"` when the value is printable ASCII and
    /// short; otherwise `name*=utf-8''%XX…` (RFC 2231 §4), cut into numbered sections
    /// `name*0*=utf-8''…`, `name*1*=…` (§3) when long. A section never ends inside a `%XX`
    /// or a UTF-8 sequence (decoders may decode each section alone).
    /// - Parameters:
    ///   - name: the parameter name, a token (e.g. `filename`).
    ///   - value: the value; control characters are the caller's to refuse.
    /// - Returns: the segments, to be written separated by `;` and white space.
    static func segments(name: String, value: String) -> [String] {
        if value.utf8.allSatisfy({ $0 >= 0x20 && $0 <= 0x7E }) {
            var quoted = "\""
            for scalar in value.unicodeScalars {
                if scalar == "\"" || scalar == "\\" { quoted += "\\" }
                quoted.unicodeScalars.append(scalar)
            }
            quoted += "\""
            let segment = "\(name)=\(quoted)"
            if segment.utf8.count <= maximumSegmentLength { return [segment] }
        }
        // Percent-encode character by character, so sections can be cut between characters.
        let hex = Array("0123456789ABCDEF".utf8)
        let encoded: [String] = value.unicodeScalars.map { scalar in
            var out: [UInt8] = []
            for b in String(scalar).utf8 {
                if isAttributeCharacter(b) { out.append(b) } else { out += [0x25, hex[Int(b >> 4)], hex[Int(b & 0x0F)]] }
            }
            return String(decoding: out, as: UTF8.self)
        }
        let whole = "\(name)*=utf-8''" + encoded.joined()
        if whole.utf8.count <= maximumSegmentLength { return [whole] }
        var sections: [String] = []
        var current = ""
        func prefix(_ n: Int) -> String { n == 0 ? "\(name)*0*=utf-8''" : "\(name)*\(n)*=" }
        for piece in encoded {
            if !current.isEmpty, prefix(sections.count).utf8.count + current.utf8.count + piece.utf8.count > maximumSegmentLength {
                sections.append(prefix(sections.count) + current)
                current = ""
            }
            current += piece
        }
        if !current.isEmpty { sections.append(prefix(sections.count) + current) }
        return sections
    }
}
