/// RFC 2047 encoded-words for non-ASCII text in header fields: `=?utf-8?B?…?=` (base64) or
/// `=?utf-8?Q?…?=` (a quoted-printable variant).
///
/// Every word carries whole characters (RFC 2047 §5: never part of a UTF-8 sequence; whole
/// grapheme clusters where one fits in a word) and is at most 75 characters long (§2).
/// Adjacent encoded-words separated by folding white space decode to the concatenation of
/// their texts (§6.2), so a text may be spread over as many words and lines as it needs.
public enum EncodedWord {
    /// The longest encoded-word, in characters (RFC 2047 §2).
    public static let maximumLength = 75

    /// The two encodings (RFC 2047 §4).
    public enum Encoding: Sendable, Equatable {
        /// `B`: base64 of the UTF-8 octets (§4.1).
        case base64
        /// `Q`: letters, digits and `!*+-/` as is, space as `_`, other octets as `=XX` (§4.2,
        /// restricted to the characters §5 (3) allows in a phrase, so the same words are valid in
        /// `Subject:` and in a display name).
        case q

        fileprivate var letter: String { self == .base64 ? "B" : "Q" }
    }

    /// `=?utf-8?X?` plus `?=`.
    static let overhead = 12

    /// The encoding that gives the shorter text: Q for mostly-ASCII text, B otherwise.
    /// - Parameter text: the text to encode.
    public static func preferredEncoding(for text: String) -> Encoding {
        let octets = Array(text.utf8)
        return qLength(octets[...]) <= base64Length(octets.count) ? .q : .base64
    }

    /// Splits `text` into encoded-words of at most `maximumLength` characters.
    /// - Parameters:
    ///   - text: any Unicode text (an empty text gives no word).
    ///   - encoding: B or Q; the shorter one when nil.
    /// - Returns: the words, to be separated by white space (or folds) when written.
    public static func words(for text: String, encoding: Encoding? = nil) -> [String] {
        var splitter = Splitter(text, encoding: encoding ?? preferredEncoding(for: text))
        var out: [String] = []
        while let word = splitter.next(maximumLength: maximumLength) { out.append(word) }
        return out
    }

    /// Hands out the encoded-words of a text one at a time, each as long as a given room allows,
    /// so a header writer can fill the rest of a line before folding.
    struct Splitter {
        let encoding: Encoding
        /// The text in units that must not be split: grapheme clusters, or the scalars of a
        /// cluster too long for one word.
        private var units: [[UInt8]]
        private var index = 0

        init(_ text: String, encoding: Encoding) {
            self.encoding = encoding
            var units: [[UInt8]] = []
            for character in text {
                let octets = Array(character.utf8)
                if EncodedWord.length(of: octets[...], encoding: encoding) + overhead <= maximumLength {
                    units.append(octets)
                } else {
                    for scalar in character.unicodeScalars { units.append(Array(String(scalar).utf8)) }
                }
            }
            self.units = units
        }

        /// Whether every unit has been handed out.
        var isAtEnd: Bool { index == units.count }

        /// The length of the shortest next word (its first unit alone), or nil at the end.
        var nextMinimumLength: Int? {
            isAtEnd ? nil : EncodedWord.length(of: units[index][...], encoding: encoding) + overhead
        }

        /// The next word: as many units as fit in `maximumLength` characters (at least one).
        mutating func next(maximumLength: Int) -> String? {
            guard !isAtEnd else { return nil }
            var octets = units[index]
            index += 1
            while index < units.count {
                let candidate = octets + units[index]
                guard EncodedWord.length(of: candidate[...], encoding: encoding) + overhead <= maximumLength else { break }
                octets = candidate
                index += 1
            }
            return EncodedWord.word(octets, encoding: encoding)
        }
    }

    /// One encoded-word of `octets` (which must be whole UTF-8 characters).
    static func word(_ octets: [UInt8], encoding: Encoding) -> String {
        var out = "=?utf-8?\(encoding.letter)?"
        switch encoding {
        case .base64:
            out += Base64Body.encode(octets, lineLength: nil)
        case .q:
            let hex = Array("0123456789ABCDEF".unicodeScalars)
            for b in octets {
                if b == 0x20 {
                    out += "_"
                } else if isQLiteral(b) {
                    out.unicodeScalars.append(Unicode.Scalar(b))
                } else {
                    out += "="
                    out.unicodeScalars.append(hex[Int(b >> 4)])
                    out.unicodeScalars.append(hex[Int(b & 0x0F)])
                }
            }
        }
        return out + "?="
    }

    /// RFC 2047 §5 (3): the characters a Q-encoded word in a phrase may carry as is.
    static func isQLiteral(_ b: UInt8) -> Bool {
        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A)
            || b == 0x21 || b == 0x2A || b == 0x2B || b == 0x2D || b == 0x2F
    }

    static func length(of octets: ArraySlice<UInt8>, encoding: Encoding) -> Int {
        encoding == .base64 ? base64Length(octets.count) : qLength(octets)
    }

    private static func base64Length(_ count: Int) -> Int { (count + 2) / 3 * 4 }

    private static func qLength(_ octets: ArraySlice<UInt8>) -> Int {
        octets.reduce(0) { $0 + ($1 == 0x20 || isQLiteral($1) ? 1 : 3) }
    }
}
