import Foundation
import Testing
@testable import HatoSupport

@Suite("Logger")
struct LoggerTests {
    @Test("log lines are valid JSON: control characters, quotes and non-ASCII survive a round trip")
    func escaping() throws {
        var out = ""
        let nasty = "a\"b\\c\nd\re\tf\u{01}g é 鳩 \u{7F}"
        Logger.appendJSONString(nasty, to: &out)
        let back = try JSONSerialization.jsonObject(with: Data(("[" + out + "]").utf8), options: []) as? [String]
        #expect(back == [nasty])
    }

    @Test("timestamps are RFC 3339 UTC with milliseconds")
    func timestamp() {
        #expect(Logger.timestamp(Date(timeIntervalSince1970: 1_796_083_200.0456)) == "2026-12-01T00:00:00.045Z")
        #expect(Logger.timestamp(Date(timeIntervalSince1970: 0)) == "1970-01-01T00:00:00.000Z")
        #expect(Logger.timestamp(Date(timeIntervalSince1970: 1_800_000_000.999)) == "2027-01-15T08:00:00.999Z")
    }
}
