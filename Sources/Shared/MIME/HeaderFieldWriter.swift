/// Writes one header field folded into lines of at most 76 characters (RFC 5322 §2.2.3
/// folding; 76 rather than §2.1.1's 78 because RFC 2047 §2 limits lines that carry
/// encoded-words to 76).
///
/// The value is given as tokens that must stay whole, each with the white space before it;
/// a fold goes before that white space (CRLF is inserted, nothing removed), so unfolding gives
/// back the value exactly. A token longer than a line is written on a line of its own, longer
/// than 76 characters; `lines` lets the caller check the RFC 5322 §2.1.1 limit of 998.
struct HeaderFieldWriter {
    /// The longest line the writer makes when it can choose.
    static let lineLimit = 76
    /// The longest line RFC 5322 §2.1.1 allows, CRLF excluded.
    static let hardLineLimit = 998

    /// The finished lines, without CRLF.
    private(set) var lines: [String] = []
    private var line: String
    private var lineLength: Int
    /// Whether the current line has any of the value (the first line starts with the name only).
    private var lineHasValue = false

    /// Starts a field.
    /// - Parameter name: the field name, e.g. `Subject`.
    init(name: String) {
        line = name + ":"
        lineLength = line.unicodeScalars.count
    }

    /// Appends a token.
    /// - Parameters:
    ///   - token: text that must not be split (an atom, a quoted string, an address, an
    ///     encoded-word); ASCII.
    ///   - separator: the white space before it (a fold point): `" "` by default; the original
    ///     white space in unstructured text.
    mutating func append(_ token: String, separator: String = " ") {
        let width = separator.unicodeScalars.count + token.unicodeScalars.count
        if lineHasValue, lineLength + width > Self.lineLimit {
            lines.append(line)
            line = ""
            lineLength = 0
        }
        line += separator + token
        lineLength += width
        lineHasValue = true
    }

    /// Appends `text` as RFC 2047 encoded-words (§5 (1) unstructured text or §5 (3) phrase),
    /// each as long as the room left on its line allows.
    /// - Parameters:
    ///   - text: the text; nothing is written for an empty text.
    ///   - encoding: B or Q; the shorter when nil.
    mutating func appendEncoded(_ text: String, encoding: EncodedWord.Encoding? = nil) {
        var splitter = EncodedWord.Splitter(text, encoding: encoding ?? EncodedWord.preferredEncoding(for: text))
        while let minimum = splitter.nextMinimumLength {
            var room = min(EncodedWord.maximumLength, Self.lineLimit - lineLength - 1)
            if room < minimum {
                // Fold first; on a fresh continuation line there is room for a whole word.
                lines.append(line)
                line = ""
                lineLength = 0
                room = EncodedWord.maximumLength
            }
            guard let word = splitter.next(maximumLength: room) else { break }
            line += " " + word
            lineLength += 1 + word.unicodeScalars.count
            lineHasValue = true
        }
    }

    /// The field: its lines joined with CRLF, without a final CRLF.
    var text: String { (lines + [line]).joined(separator: "\r\n") }

    /// The lines of the field, the last one included.
    var allLines: [String] { lines + [line] }

    // MARK: - Values

    /// Appends unstructured text (RFC 5322 §3.2.5 `unstructured`, e.g. `Subject:`), folded at
    /// its own white space. The text is written as encoded-words (RFC 2047 §5 (1)) when it has
    /// non-ASCII characters or `=?` (which a reader would try to decode), and, with
    /// `encodeUnfoldable`, when it starts or ends with white space (a reader strips it) or a
    /// run without white space does not fit on a line.
    /// - Parameters:
    ///   - text: the value, without CR, LF or other control characters except tab.
    ///   - encodeUnfoldable: also encode text that plain folding cannot keep exact within 76
    ///     characters a line (for fields Hato owns; an extra field of the request may be
    ///     structured and is left as it is).
    mutating func appendUnstructured(_ text: String, encodeUnfoldable: Bool) {
        let needsEncoding = text.unicodeScalars.contains { $0.value > 0x7E } || text.contains("=?")
        if !needsEncoding {
            var plain = self
            plain.appendFolded(text)
            let exact = !encodeUnfoldable
                || (plain.allLines.allSatisfy { $0.utf8.count <= Self.lineLimit }
                    && text.first.map { $0 != " " && $0 != "\t" } ?? true
                    && text.last.map { $0 != " " && $0 != "\t" } ?? true)
            if exact {
                self = plain
                return
            }
        }
        appendEncoded(text)
    }

    /// Appends text folded before each run of white space, the runs kept as they are (white
    /// space at the end stays with the last word: a line of white space alone is not allowed).
    private mutating func appendFolded(_ text: String) {
        var pairs: [(separator: String, word: String)] = []
        var separator = " "
        var word = ""
        for scalar in text.unicodeScalars {
            if scalar == " " || scalar == "\t" {
                if !word.isEmpty {
                    pairs.append((separator, word))
                    separator = ""
                    word = ""
                }
                separator.unicodeScalars.append(scalar)
            } else {
                word.unicodeScalars.append(scalar)
            }
        }
        if !word.isEmpty {
            pairs.append((separator, word))
        } else if let last = pairs.popLast() {
            pairs.append((last.separator, last.word + separator))
        } else {
            pairs.append((separator, ""))
        }
        for pair in pairs { append(pair.word, separator: pair.separator) }
    }

    /// Appends one mailbox of an address list (RFC 5322 §3.4): `addr-spec` alone without a
    /// display name, `display-name <addr-spec>` with one. The name is written as atoms when it
    /// is words of `atext` separated by single spaces, as a quoted-string when it is other
    /// printable ASCII that fits a line, and as encoded-words (RFC 2047 §5 (3)) otherwise
    /// (non-ASCII, `=?`, or too long).
    /// - Parameters:
    ///   - name: the display name without control characters, or nil.
    ///   - address: the `addr-spec` (already valid).
    ///   - last: no `,` after it.
    mutating func appendMailbox(name: String?, address: String, last: Bool) {
        let comma = last ? "" : ","
        guard let name, !name.isEmpty else {
            append(address + comma)
            return
        }
        let words = name.split(separator: " ", omittingEmptySubsequences: false)
        let ascii = name.unicodeScalars.allSatisfy { $0.value >= 0x20 && $0.value <= 0x7E }
        if ascii, !name.contains("=?"), words.allSatisfy({ !$0.isEmpty && $0.utf8.count <= 60 && $0.utf8.allSatisfy(Self.isAtext) }) {
            for word in words { append(String(word)) }
        } else if ascii, !name.contains("=?"), case let quoted = Self.quotedString(name), quoted.utf8.count <= 70 {
            append(quoted)
        } else {
            appendEncoded(name)
        }
        append("<\(address)>" + comma)
    }

    /// `text` as an RFC 5322 §3.2.4 `quoted-string`: in double quotes, with `"` and `\` escaped.
    static func quotedString(_ text: String) -> String {
        var quoted = "\""
        for scalar in text.unicodeScalars {
            if scalar == "\"" || scalar == "\\" { quoted += "\\" }
            quoted.unicodeScalars.append(scalar)
        }
        return quoted + "\""
    }

    /// RFC 5322 §3.2.3 `atext`.
    static func isAtext(_ b: UInt8) -> Bool {
        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || "!#$%&'*+-/=?^_`{|}~".utf8.contains(b)
    }
}
