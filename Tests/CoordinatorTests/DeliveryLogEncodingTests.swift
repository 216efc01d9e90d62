import Foundation
import Testing
@testable import ClusterProtocol
@testable import HatoCoordinator

/// The hand-built delivery log line against Foundation's encoder: the same bytes.
@Suite("Delivery log encoding")
struct DeliveryLogEncodingTests {
    static func foundation(_ r: DeliveryLogRecord) -> [UInt8] {
        let e = JSONEncoder()
        e.keyEncodingStrategy = .convertToSnakeCase
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array(try! e.encode(r))
    }

    static let strings = ["", "plain", "quote \" and \\ backslash", "a/b", "tab\there\r\nnewline", "\u{1}\u{8}\u{C}\u{1F}\u{7F}",
                          "caf\u{E9} \u{2028} 😀", "550 5.1.1 <x@y.test>: Recipient address rejected"]
    static let doubles: [Double] = [0, 0.003, 1.049041748046875e-05, 300, 1e20, 0.1 + 0.2, 123456789.123, 1e16, 2.5e-7, 86400]

    static func randomRecord(_ rng: inout some RandomNumberGenerator) -> DeliveryLogRecord {
        func s() -> String? { Bool.random(using: &rng) ? strings.randomElement(using: &rng)! : nil }
        func d() -> Double? { Bool.random(using: &rng) ? doubles.randomElement(using: &rng)! : nil }
        func i() -> Int? { Bool.random(using: &rng) ? Int.random(in: -5...100_000, using: &rng) : nil }
        func b() -> Bool? { Bool.random(using: &rng) ? Bool.random(using: &rng) : nil }
        var r = DeliveryLogRecord(id: strings.randomElement(using: &rng)!, ts: "2026-11-29T16:03:32.641Z",
                                  event: strings.randomElement(using: &rng)!, messageId: s())
        r.recipient = s(); r.reversePath = s(); r.pool = s(); r.node = s(); r.sendingIp = s(); r.mx = s(); r.provider = s()
        r.code = i(); r.enhanced = s(); r.reply = s(); r.category = s(); r.attempt = i(); r.queueTime = d(); r.attemptTime = d()
        r.nextAttempt = s(); r.size = i(); r.recipients = i(); r.client = s(); r.dsnMessageId = s(); r.tls = b(); r.tlsVersion = s()
        r.tlsCipher = s(); r.remoteAddress = s(); r.reusedConnection = b(); r.operatorName = s(); r.target = s(); r.note = s()
        if Bool.random(using: &rng) { r.dkim = (0..<Int.random(in: 0...3, using: &rng)).map { _ in strings.randomElement(using: &rng)! } }
        if Bool.random(using: &rng) { r.timings = DeliveryTimings(resolve: d(), shapingWait: d(), connect: d(), setup: d(), transaction: d()) }
        return r
    }

    @Test("2000 random records: byte-identical to JSONEncoder (snake_case, sorted keys, slashes unescaped), and they decode back")
    func identical() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let r = Self.randomRecord(&rng)
            let ours = r.json(), theirs = Self.foundation(r)
            if ours != theirs {
                Issue.record("differs:\n\(String(decoding: ours, as: UTF8.self))\n\(String(decoding: theirs, as: UTF8.self))")
                return
            }
            #expect(DeliveryLogRecord.decode(ours) == r)
        }
    }

    @Test("a value JSON cannot carry (NaN) still gives valid JSON")
    func nonFinite() throws {
        var r = DeliveryLogRecord(id: "m.1", ts: "t", event: "delivered", messageId: "m")
        r.queueTime = .nan
        let json = r.json()
        #expect(String(decoding: json, as: UTF8.self).contains("\"queue_time\":0"))
        #expect(try JSONSerialization.jsonObject(with: Data(json)) is [String: Any])
    }
}
