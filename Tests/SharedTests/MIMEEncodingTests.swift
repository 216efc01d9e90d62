import Foundation
import HatoTestKit
import Testing
@testable import HatoDelivery
@testable import HatoMIME

/// Decodes a header value made only of RFC 2047 encoded-words (UTF-8, B or Q) separated by
/// white space, checking that each word alone is whole UTF-8 (RFC 2047 §5: no word carries
/// part of a character). Nil when a token is not such a word or a word is not whole UTF-8.
func decodeEncodedWords(_ value: String) -> String? {
    var out = ""
    for token in value.split(whereSeparator: \.isWhitespace) {  // "\r\n" is one Character
        let parts = token.split(separator: "?", omittingEmptySubsequences: false)
        guard parts.count == 5, parts[0] == "=", parts[4] == "=", parts[1].lowercased() == "utf-8" else { return nil }
        let octets: [UInt8]
        switch parts[2].uppercased() {
        case "B":
            guard let data = Data(base64Encoded: String(parts[3])) else { return nil }
            octets = [UInt8](data)
        case "Q":
            let q = Array(parts[3].utf8).map { $0 == UInt8(ascii: "_") ? UInt8(ascii: " ") : $0 }
            octets = MIMEEntity.decodeQuotedPrintable(q)
        default:
            return nil
        }
        guard let text = String(validating: octets, as: UTF8.self) else { return nil }
        out += text
    }
    return out
}

/// The lines of a header field as written (from `Name:` to the last continuation line).
func fieldLines(_ name: String, in content: [UInt8]) -> [String] {
    let text = String(decoding: content, as: UTF8.self)
    let header = text.components(separatedBy: "\r\n\r\n").first ?? ""
    var out: [String] = []
    var inField = false
    for line in header.components(separatedBy: "\r\n") {
        if line.first == " " || line.first == "\t" {
            if inField { out.append(line) }
        } else {
            inField = line.lowercased().hasPrefix(name.lowercased() + ":")
            if inField { out.append(line) }
        }
    }
    return out
}

@Suite("MIME encodings: quoted-printable, encoded-words, folding, RFC 2231 parameters, base64")
struct MIMEEncodingTests {
    // MARK: Quoted-printable (RFC 2045 §6.7)

    @Test("quoted-printable keeps printable ASCII, escapes =, 8-bit octets and control characters with upper-case hex")
    func quotedPrintableEscapes() {
        let encoded = QuotedPrintable.encode(Array("a=b café\u{1}".utf8))
        #expect(String(decoding: encoded, as: UTF8.self) == "a=3Db caf=C3=A9=01")
    }

    @Test("quoted-printable encodes a space or tab at the end of a line and of the text, and keeps CRLF as hard breaks")
    func quotedPrintableTrailingWhitespace() {
        let encoded = String(decoding: QuotedPrintable.encode(Array("one \r\ntwo\t\r\nthree  four \t".utf8)), as: UTF8.self)
        #expect(encoded == "one=20\r\ntwo=09\r\nthree  four =09")
    }

    @Test("quoted-printable cuts long lines with soft breaks at 76 characters and never inside an =XX escape")
    func quotedPrintableSoftBreaks() {
        let text = String(repeating: "x", count: 74) + "é" + String(repeating: "日本語", count: 30) + "\r\n" + String(repeating: "y", count: 76)
        let encoded = QuotedPrintable.encode(Array(text.utf8))
        let lines = String(decoding: encoded, as: UTF8.self).components(separatedBy: "\r\n")
        #expect(lines.allSatisfy { $0.utf8.count <= 76 })
        // A line of exactly 76 characters needs no soft break.
        #expect(lines.last == String(repeating: "y", count: 76))
        // Every escape is whole: no line ends with "=X" or a lone "=" other than the soft break.
        for line in lines.dropLast() where line.hasSuffix("=") {
            let body = line.dropLast()
            #expect(!body.hasSuffix("=") && !(body.count >= 2 && body.dropLast().hasSuffix("=")))
        }
        #expect(lines[0] == String(repeating: "x", count: 74) + "=")
        #expect(MIMEEntity.decodeQuotedPrintable(encoded) == Array(text.utf8))
    }

    @Test("quoted-printable round-trips random octets with random line breaks (seeded), every line at most 76 characters")
    func quotedPrintableRoundTrip() {
        var generator = SplitMix64(seed: 0x51_2045)
        for _ in 0..<200 {
            var octets: [UInt8] = []
            for _ in 0..<Int.random(in: 0...400, using: &generator) {
                switch Int.random(in: 0..<10, using: &generator) {
                case 0: octets += [0x0D, 0x0A]
                case 1: octets.append(0x20)
                case 2: octets.append(UInt8.random(in: 0...255, using: &generator))
                default: octets.append(UInt8.random(in: 0x21...0x7E, using: &generator))
                }
            }
            let encoded = QuotedPrintable.encode(octets)
            #expect(MIMEEntity.decodeQuotedPrintable(encoded) == octets)
            let text = String(decoding: encoded, as: UTF8.self)
            #expect(encoded.allSatisfy { ($0 >= 0x20 && $0 <= 0x7E) || $0 == 0x09 || $0 == 0x0D || $0 == 0x0A })
            for line in text.components(separatedBy: "\r\n") {
                #expect(line.utf8.count <= 76)
                #expect(!(line.hasSuffix(" ") || line.hasSuffix("\t")))
            }
        }
    }

    @Test("7bit only for printable ASCII in lines of at most 76 octets without trailing white space")
    func sevenBitDecision() {
        #expect(QuotedPrintable.isSafeAsSevenBit(Array("Hello,\r\n\r\nall fine = ok\r\n".utf8)))
        #expect(QuotedPrintable.isSafeAsSevenBit(Array(String(repeating: "a", count: 76).utf8)))
        #expect(!QuotedPrintable.isSafeAsSevenBit(Array(String(repeating: "a", count: 77).utf8)))
        #expect(!QuotedPrintable.isSafeAsSevenBit(Array("café".utf8)))
        #expect(!QuotedPrintable.isSafeAsSevenBit(Array("trailing \r\nx".utf8)))
        #expect(!QuotedPrintable.isSafeAsSevenBit(Array("trailing\t".utf8)))
        #expect(!QuotedPrintable.isSafeAsSevenBit(Array("bare\nLF".utf8)))
        #expect(!QuotedPrintable.isSafeAsSevenBit([0x41, 0x00]))
    }

    // MARK: Encoded-words (RFC 2047)

    static let emojiSubject = "Your order 🎉 has shipped — 配送状況のお知らせ 👨‍👩‍👧‍👦 with a long tail of text so that it needs several encoded words 🚚📦✨"

    @Test("a long non-ASCII subject with emoji: encoded-words of at most 75 characters, lines of at most 76, each word whole UTF-8, decoding gives the subject back")
    func longEmojiSubject() {
        var writer = HeaderFieldWriter(name: "Subject")
        writer.appendUnstructured(Self.emojiSubject, encodeUnfoldable: true)
        let lines = writer.allLines
        #expect(lines.count > 2)
        #expect(lines.allSatisfy { $0.utf8.count <= 76 })
        #expect(lines.dropFirst().allSatisfy { $0.hasPrefix(" =?utf-8?") })
        let value = String(writer.text.dropFirst("Subject:".count))
        let words = value.split(whereSeparator: \.isWhitespace)
        #expect(words.allSatisfy { $0.utf8.count <= 75 && $0.hasPrefix("=?utf-8?") && $0.hasSuffix("?=") })
        #expect(decodeEncodedWords(value) == Self.emojiSubject)
        // The family emoji (one grapheme cluster of 25 octets) is never cut between words.
        #expect(words.contains { decodeEncodedWords(String($0))?.contains("👨‍👩‍👧‍👦") == true })
    }

    @Test("words(for:) splits at scalar boundaries when one grapheme cluster is too long for a word")
    func overlongCluster() {
        let cluster = "e" + String(repeating: "\u{301}", count: 40)  // one character, 81 octets
        let words = EncodedWord.words(for: cluster, encoding: .base64)
        #expect(words.count > 1)
        #expect(words.allSatisfy { $0.utf8.count <= 75 })
        #expect(decodeEncodedWords(words.joined(separator: " ")) == cluster)
    }

    @Test("Q for mostly-ASCII text, B for Japanese; Q keeps only the phrase-safe characters literal")
    func encodingChoice() {
        #expect(EncodedWord.preferredEncoding(for: "Café au lait") == .q)
        #expect(EncodedWord.preferredEncoding(for: "山田太郎") == .base64)
        #expect(EncodedWord.words(for: "Café, \"au\" lait?", encoding: .q) == ["=?utf-8?Q?Caf=C3=A9=2C_=22au=22_lait=3F?="])
        #expect(EncodedWord.words(for: "山田太郎", encoding: .base64) == ["=?utf-8?B?5bGx55Sw5aSq6YOO?="])
        #expect(EncodedWord.words(for: "").isEmpty)
    }

    @Test("a Japanese display name is one B encoded-word before the address")
    func japaneseDisplayName() {
        var writer = HeaderFieldWriter(name: "From")
        writer.appendMailbox(name: "山田太郎", address: "taro@example.jp", last: true)
        #expect(writer.text == "From: =?utf-8?B?5bGx55Sw5aSq6YOO?= <taro@example.jp>")
    }

    @Test("a long Japanese display name is spread over words and lines, each line at most 76 characters")
    func longJapaneseDisplayName() {
        let name = String(repeating: "株式会社ハト配送センター", count: 6)
        var writer = HeaderFieldWriter(name: "To")
        writer.appendMailbox(name: name, address: "center@example.jp", last: false)
        writer.appendMailbox(name: "Ana", address: "ana@example.com", last: true)
        let lines = writer.allLines
        #expect(lines.allSatisfy { $0.utf8.count <= 76 })
        let unfolded = writer.text.replacingOccurrences(of: "\r\n", with: "")
        let encoded = unfolded.dropFirst("To: ".count).prefix { $0 != "<" }
        #expect(decodeEncodedWords(String(encoded)) == name)
        #expect(unfolded.hasSuffix("<center@example.jp>, Ana <ana@example.com>"))
    }

    // MARK: Folding (RFC 5322 §2.2.3)

    @Test("a long ASCII subject folds before white space, lines of at most 76, and unfolds to the exact text")
    func asciiFolding() {
        let subject = "Weekly report:  numbers for the north-east region,\tthe south and all the others we track in this long line of text"
        var writer = HeaderFieldWriter(name: "Subject")
        writer.appendUnstructured(subject, encodeUnfoldable: true)
        #expect(writer.allLines.count >= 2)
        #expect(writer.allLines.allSatisfy { $0.utf8.count <= 76 })
        #expect(writer.allLines.dropFirst().allSatisfy { $0.first == " " || $0.first == "\t" })
        #expect(writer.text.replacingOccurrences(of: "\r\n", with: "") == "Subject: " + subject)
    }

    @Test("ASCII that plain folding cannot keep (a word over a line, =?, white space at either end) is encoded")
    func asciiThatMustBeEncoded() {
        for subject in [String(repeating: "x", count: 90), "see =?utf-8?Q?this?= literally", " leading space", "trailing tab\t"] {
            var writer = HeaderFieldWriter(name: "Subject")
            writer.appendUnstructured(subject, encodeUnfoldable: true)
            #expect(writer.allLines.allSatisfy { $0.utf8.count <= 76 }, "\(subject)")
            #expect(decodeEncodedWords(String(writer.text.dropFirst("Subject:".count))) == subject, "\(subject)")
        }
        // An extra field may be structured: a long word is left whole instead.
        let url = "<https://example.com/unsubscribe/" + String(repeating: "a", count: 80) + ">"
        var writer = HeaderFieldWriter(name: "List-Unsubscribe")
        writer.appendUnstructured(url, encodeUnfoldable: false)
        #expect(writer.text == "List-Unsubscribe: " + url)
    }

    @Test("display names: atoms as they are, specials in a quoted-string with escapes, =? encoded, long lists folded between mailboxes")
    func displayNames() {
        func field(_ name: String?) -> String {
            var writer = HeaderFieldWriter(name: "To")
            writer.appendMailbox(name: name, address: "x@example.com", last: true)
            return writer.text
        }
        #expect(field(nil) == "To: x@example.com")
        #expect(field("") == "To: x@example.com")
        #expect(field("Ana Maria") == "To: Ana Maria <x@example.com>")
        #expect(field("Doe, John Q.") == "To: \"Doe, John Q.\" <x@example.com>")
        #expect(field("say \"hi\" \\o/") == "To: \"say \\\"hi\\\" \\\\o/\" <x@example.com>")
        #expect(field("two  spaces") == "To: \"two  spaces\" <x@example.com>")
        let lookalike = field("=?utf-8?Q?x?=")
        #expect(lookalike.hasSuffix(" <x@example.com>"))
        #expect(decodeEncodedWords(String(lookalike.dropFirst("To: ".count).dropLast(" <x@example.com>".count))) == "=?utf-8?Q?x?=")

        var writer = HeaderFieldWriter(name: "Cc")
        for i in 0..<8 { writer.appendMailbox(name: "Person \(i)", address: "person\(i)@example.com", last: i == 7) }
        #expect(writer.allLines.count > 1)
        #expect(writer.allLines.allSatisfy { $0.utf8.count <= 76 })
        #expect(writer.allLines.dropFirst().allSatisfy { $0.hasPrefix(" ") })
    }

    // MARK: RFC 2231 parameters

    @Test("filenames: short ASCII quoted; non-ASCII as filename*=utf-8''; long names in sections that never cut a %XX or a character")
    func filenameParameters() throws {
        #expect(MIMEParameter.segments(name: "filename", value: "report.pdf") == ["filename=\"report.pdf\""])
        #expect(MIMEParameter.segments(name: "filename", value: "a \"b\".txt") == ["filename=\"a \\\"b\\\".txt\""])
        #expect(MIMEParameter.segments(name: "filename", value: "résumé.pdf") == ["filename*=utf-8''r%C3%A9sum%C3%A9.pdf"])
        let long = "請求書_2026年4月分_株式会社ハト配送センター御中_最終版.pdf"
        let sections = MIMEParameter.segments(name: "filename", value: long)
        #expect(sections.count > 1)
        #expect(sections[0].hasPrefix("filename*0*=utf-8''"))
        var joined: [UInt8] = []
        for (i, section) in sections.enumerated() {
            #expect(section.utf8.count <= 70)
            let value = section.split(separator: "=", maxSplits: 1)[1]
            let encoded = i == 0 ? String(value.dropFirst("utf-8''".count)) : String(value)
            #expect(section.hasPrefix("filename*\(i)*="))
            let octets = try #require(encoded.removingPercentEncoding.map { Array($0.utf8) }, "\(section)")
            joined += octets
        }
        #expect(String(decoding: joined, as: UTF8.self) == long)
        // A long ASCII name goes in sections too.
        let longASCII = String(repeating: "quarterly-report-", count: 6) + ".pdf"
        #expect(MIMEParameter.segments(name: "filename", value: longASCII).count > 1)
    }

    // MARK: Base64

    @Test("base64 bodies in lines of 76 characters; the reader ignores white space and accepts missing padding")
    func base64() {
        let octets = (0..<200).map { UInt8($0) }
        let text = Base64Body.encode(octets)
        let lines = text.components(separatedBy: "\r\n")
        #expect(lines.dropLast().allSatisfy { $0.utf8.count == 76 })
        #expect(Base64Body.decode(text) == octets)
        #expect(Base64Body.decode("aGVs\n bG8") == Array("hello".utf8))
        #expect(Base64Body.decode("aGVsbG8=") == Array("hello".utf8))
        #expect(Base64Body.decode("aGVsbG8*") == nil)
        #expect(Base64Body.decode("a") == nil)
        #expect(Base64Body.decode("") == [])
    }
}
