import Foundation
import Testing
@testable import HatoSupport

@Suite("Logger")
struct LoggerTests {
    @Test("log lines are valid JSON: control characters, quotes and non-ASCII survive a round trip")
    func escaping() throws {
        var out: [UInt8] = []
        let nasty = "a\"b\\c\nd\re\tf\u{01}g é 鳩 \u{7F}"
        Logger.appendJSONString(nasty, to: &out)
        #expect(String(decoding: out, as: UTF8.self) == #""a\"b\\c\nd\re\tf\u0001g é 鳩 \#u{7F}""#)
        let back = try JSONSerialization.jsonObject(with: Data([0x5B] + out + [0x5D]), options: []) as? [String]
        #expect(back == [nasty])
        var plain: [UInt8] = []
        Logger.appendJSONString("plain ascii", to: &plain)
        #expect(plain == Array(#""plain ascii""#.utf8))
    }

    @Test("a line is one JSON object with sorted keys; fields cannot replace component, level, msg or ts")
    func line() throws {
        let at = Date(timeIntervalSince1970: 1_796_083_200.5)
        let bytes = Logger.line(level: .warning, label: "node.delivery", message: "delivery", fields: ["zeta": "1", "code": "250", "msg": "forged", "ts": "x"], at: at)
        #expect(String(decoding: bytes, as: UTF8.self)
                == #"{"code":"250","component":"node.delivery","level":"warning","msg":"delivery","ts":"2026-12-01T00:00:00.500Z","zeta":"1"}"# + "\n")
        #expect(try JSONSerialization.jsonObject(with: Data(bytes.dropLast())) is [String: String])
    }

    @Test("timestamps are RFC 3339 UTC with milliseconds")
    func timestamp() {
        #expect(Logger.timestamp(Date(timeIntervalSince1970: 1_796_083_200.0456)) == "2026-12-01T00:00:00.045Z")
        #expect(Logger.timestamp(Date(timeIntervalSince1970: 0)) == "1970-01-01T00:00:00.000Z")
        #expect(Logger.timestamp(Date(timeIntervalSince1970: 1_800_000_000.999)) == "2027-01-15T08:00:00.999Z")
    }
}
