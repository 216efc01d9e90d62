import Foundation
import Testing
@testable import HatoDKIM
@testable import HatoNode

/// `MessageAnalysis`'s one-pass fast path against the plain definition (canonical line
/// endings, then `ParsedMessage`'s header/body split, then the longest line).
@Suite("Message analysis")
struct MessageAnalysisTests {
    struct Reference: Equatable {
        var bytes: [UInt8]
        var headers8Bit: Bool
        var body8Bit: Bool
        var longestLine: Int
    }

    static func reference(_ content: [UInt8]) -> Reference {
        let bytes = MessageText.canonicalLineEndings(content)
        let parsed = ParsedMessage(bytes)
        return Reference(bytes: bytes, headers8Bit: parsed.fields.contains { $0.raw.contains { $0 >= 0x80 } },
                         body8Bit: parsed.body.contains { $0 >= 0x80 }, longestLine: MessageText.longestLine(bytes))
    }

    static func analysed(_ content: [UInt8]) -> Reference {
        let a = MessageAnalysis(content)
        return Reference(bytes: a.bytes, headers8Bit: a.headers8Bit, body8Bit: a.body8Bit, longestLine: a.longestLine)
    }

    @Test("crafted cases: bare LF/CR, no final CRLF, 8-bit in header or body only, empty header section, empty input",
          arguments: [
              "Subject: a\r\n\r\nbody\r\n", "Subject: a\n\nbody", "Subject: a\r\rbody\r", "", "\r\n", "\r\nbody only\r\n",
              "Subject: caf\u{E9}\r\n\r\nplain\r\n", "Subject: plain\r\n\r\ncaf\u{E9}\r\n", "A: b\r\n C\r\n\r\n\r\nx\r\n",
              "no header break at all\r\n", "X: y\r\n\r\n" + String(repeating: "z", count: 1200) + "\r\n", "a\rb\nc\r\nd",
          ])
    func crafted(_ text: String) {
        let content = Array(text.utf8)
        #expect(Self.analysed(content) == Self.reference(content))
    }

    @Test("10 000 random inputs over the bytes that matter agree with the reference")
    func random() {
        var rng = SystemRandomNumberGenerator()
        let alphabet: [UInt8] = [0x0D, 0x0A, 0x41, 0x3A, 0x20, 0xC3, 0xA9, 0x80, 0x2E]
        for _ in 0..<10_000 {
            let n = Int.random(in: 0...40, using: &rng)
            let content = (0..<n).map { _ in alphabet.randomElement(using: &rng)! }
            let fast = Self.analysed(content), ref = Self.reference(content)
            if fast != ref {
                Issue.record("differs for \(content): \(fast) vs \(ref)")
                return
            }
        }
    }

    @Test("canonical content is used as it is: same storage, no copy")
    func noCopy() {
        let content = Array("Subject: a\r\n\r\n".utf8) + Array(repeating: 0x78, count: 4000) + [0x0D, 0x0A]
        let a = MessageAnalysis(content)
        let same = content.withUnsafeBufferPointer { c in a.bytes.withUnsafeBufferPointer { $0.baseAddress == c.baseAddress } }
        #expect(same)
        #expect(MessageText.hasCanonicalLineEndings(content))
        #expect(!MessageText.hasCanonicalLineEndings(Array("a\nb\r\n".utf8)))
        #expect(!MessageText.hasCanonicalLineEndings(Array("a\r\nb".utf8)))
    }
}
