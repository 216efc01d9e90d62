import Foundation
import HatoTestKit
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

    @Test("long plain runs between the bytes that matter (the word-at-a-time path) agree with the reference, for the analysis and the CRLF check")
    func longRuns() {
        var rng = SplitMix64(seed: 1919)
        let specials: [[UInt8]] = [[0x0D, 0x0A], [0x0A], [0x0D], [0xC3, 0xA9], [0x80], [0x2E], [0x3A, 0x20], [0x0D, 0x0A, 0x0D, 0x0A]]
        for _ in 0..<3000 {
            var content: [UInt8] = []
            for _ in 0..<Int(rng.next() % 12) {
                content += Array(repeating: 0x41, count: Int(rng.next() % 30))
                content += specials[Int(rng.next() % UInt64(specials.count))]
            }
            let fast = Self.analysed(content), ref = Self.reference(content)
            if fast != ref {
                Issue.record("differs for \(content): \(fast) vs \(ref)")
                return
            }
            // The plain definition of canonical line endings: ends with CRLF (or is empty), every
            // CR is followed by LF and every LF follows a CR.
            var canonical = content.isEmpty || content.suffix(2) == [0x0D, 0x0A]
            for (k, b) in content.enumerated() {
                if b == 0x0D && (k + 1 >= content.count || content[k + 1] != 0x0A) { canonical = false }
                if b == 0x0A && (k == 0 || content[k - 1] != 0x0D) { canonical = false }
            }
            if MessageText.hasCanonicalLineEndings(content) != canonical {
                Issue.record("hasCanonicalLineEndings differs for \(content)")
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
