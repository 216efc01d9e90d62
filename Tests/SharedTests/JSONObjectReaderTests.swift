import Foundation
import HatoTestKit
import Testing
@testable import ClusterProtocol
@testable import HatoSupport
@testable import SMTPCore

/// Issue 19: the delivery frames read by hand (`JSONObjectReader`, `ClusterMessage.readDeliveryHeader`)
/// give what `JSONDecoder` gives — for every header, well formed or not (filter: `JSONObjectReaderTests`).
@Suite("JSONObjectReaderTests")
struct JSONObjectReaderTests {
    /// Both decoders' outcome for one frame: the same message, or both an error.
    private static func agree(_ frame: Frame, _ note: @autoclosure () -> String) -> Bool {
        let byHand = Result { try ClusterMessage.decode(frame) }
        let reference = Result { try ClusterMessage.decodeWithJSONDecoder(frame) }
        switch (byHand, reference) {
        case (.success(let a), .success(let b)) where a == b: return true
        case (.failure(let e), .failure):
            guard e is ClusterProtocolError else { Issue.record("\(note()): by hand threw \(e), not a ClusterProtocolError"); return false }
            return true
        default:
            Issue.record("\(note()): by hand \(byHand), JSONDecoder \(reference)")
            return false
        }
    }

    private static func deliveryMessages(_ rng: inout SplitMix64) -> [ClusterMessage] {
        var grant = FrameEncodingTests.grant(&rng)
        grant.term = Bool.random(using: &rng) ? Int64.random(in: 1...99, using: &rng) : nil
        for k in grant.leases.indices { grant.leases[k].priority = [nil, .transactional, .bulk].randomElement(using: &rng)! }
        var result = FrameEncodingTests.result(&rng)
        if let k = result.outcomes.indices.randomElement(using: &rng) {
            result.outcomes[k].connectionFailure = ConnectionFailureContext(mxHost: "mx.x.test", remoteAddress: Bool.random(using: &rng) ? "127.0.0.9" : "::1")
        }
        let payload = [UInt8](repeating: 7, count: 200_000)
        return [.leaseGrant(grant, payload: payload), .result(result), .resultAck(ResultAckMessage(leaseID: FrameEncodingTests.s(&rng))),
                .leaseRequest(LeaseRequestMessage(credits: Int.random(in: 0...64, using: &rng))),
                .heartbeat(HeartbeatMessage(leasesInFlight: Int.random(in: 0...64, using: &rng), sentAt: FrameEncodingTests.od(&rng)))]
    }

    @Test("2000 random delivery frames, written by JSONObjectWriter and by JSONEncoder: read by hand, the message itself")
    func roundTrip() throws {
        var rng = SplitMix64(seed: 19)
        for _ in 0..<400 {
            for m in Self.deliveryMessages(&rng) {
                #expect(try ClusterMessage.decode(m.frame()) == m)
                #expect(try ClusterMessage.decode(m.codableFrame()) == m)
            }
        }
    }

    @Test("hand-written headers: whitespace, unknown members of every shape, nulls, escapes, surrogate pairs, numbers — the same as JSONDecoder")
    func edgeCases() {
        let lease = #""bodyLength":0,"bodyOffset":0,"domain":"d","expiresIn":300,"helo":"h","leaseID":"L","messageID":"M","recipients":[{"address":"a@d","id":1}],"reversePath":"","sendingIP":"127.0.0.1""#
        let cases: [(FrameType, String)] = [
            (.resultAck, #" { "leaseID" : "x" } "#),
            (.resultAck, #"{"leaseID":"caf\u00e9 \ud83d\ude00 \"q\" \\ \/ \b\f\n\r\t","new":{"a":[1,2.5e-3,true,false,null,{"b":"c"}]}}"#),
            (.resultAck, #"{"leaseID":null}"#),
            (.resultAck, #"{"leaseID":"\ud83d"}"#),
            (.resultAck, #"{"leaseID":"\ude00x"}"#),
            (.resultAck, #"{"leaseID":"a","leaseID":"b"}"#),
            (.resultAck, #"{}"#),
            (.resultAck, #"[]"#),
            (.resultAck, #"{"leaseID":"x",}"#),
            (.resultAck, #"{"leaseID":"x"} x"#),
            (.resultAck, "{\"leaseID\":\"tab\tinside\"}"),
            (.leaseRequest, #"{"credits":12}"#),
            (.leaseRequest, #"{"credits":-0}"#),
            (.leaseRequest, #"{"credits":1.0}"#),
            (.leaseRequest, #"{"credits":1.5}"#),
            (.leaseRequest, #"{"credits":1e2}"#),
            (.leaseRequest, #"{"credits":012}"#),
            (.leaseRequest, #"{"credits":"12"}"#),
            (.leaseRequest, #"{"credits":99999999999999999999}"#),
            (.leaseRequest, #"{"credits":-}"#),
            (.heartbeat, #"{"leasesInFlight":3,"sentAt":null}"#),
            (.heartbeat, #"{"leasesInFlight":3,"sentAt":1795967950.25}"#),
            (.heartbeat, #"{"leasesInFlight":3,"sentAt":1e400}"#),
            (.heartbeat, #"{"sentAt":1}"#),
            (.leaseGrant, "{\"leases\":[{\(lease)}],\"term\":7}"),
            (.leaseGrant, "{\"leases\":[{\(lease),\"priority\":\"bulk\",\"expiresAt\":null}],\"term\":null}"),
            (.leaseGrant, "{\"leases\":[{\(lease),\"priority\":\"urgent\"}]}"),
            (.leaseGrant, "{\"leases\":[{\(lease),\"bodyLength\":5}]}"),
            (.leaseGrant, #"{"leases":[{"leaseID":"L"}]}"#),
            (.leaseGrant, #"{"leases":{}}"#),
            (.result, #"{"finishedAt":1,"instanceID":"i","leaseID":"L","outcomes":[{"code":250,"recipientID":9223372036854775807,"status":"delivered","text":"ok","enhanced":null,"dkim":null,"timings":{"connect":0.5,"x":1}}],"sendingIP":"s"}"#),
            (.result, #"{"finishedAt":1,"instanceID":"i","leaseID":"L","outcomes":[{"code":250,"recipientID":1,"status":"bounced","text":"ok"}],"sendingIP":"s"}"#),
            (.result, #"{"finishedAt":1,"instanceID":"i","leaseID":"L","outcomes":[{"code":250,"recipientID":1,"status":"delivered"}],"sendingIP":"s"}"#),
            (.result, #"{"finishedAt":1,"instanceID":"i","leaseID":"L","outcomes":[{"code":250,"recipientID":1,"status":"delivered","text":"t","connectionFailure":{"mxHost":"m","remoteAddress":"::1","addressFamily":"ipv4"}}],"sendingIP":"s"}"#),
            (.result, #"{"finishedAt":1,"instanceID":"i","leaseID":"L","outcomes":[{"code":250,"recipientID":1,"status":"delivered","text":"t","tlsReports":[{"policyDomain":"d","policyType":"sts","result":"success"}]}],"sendingIP":"s"}"#),
        ]
        for (type, text) in cases {
            _ = Self.agree(Frame(type: type, header: Array(text.utf8), payload: [1, 2, 3]), "\(type) \(text)")
        }
        // Invalid UTF-8 inside a string.
        _ = Self.agree(Frame(type: .resultAck, header: Array(#"{"leaseID":""#.utf8) + [0xC3, 0x28] + Array(#""}"#.utf8)), "invalid UTF-8")
    }

    @Test("every truncation and 20000 random byte changes of valid delivery headers: never a trap, and the same outcome as JSONDecoder")
    func malformed() {
        var rng = SplitMix64(seed: 1919)
        var frames: [Frame] = []
        for _ in 0..<6 { frames += Self.deliveryMessages(&rng).map { $0.frame() } }
        for frame in frames {
            for cut in stride(from: 0, to: frame.header.count, by: max(1, frame.header.count / 40)) {
                _ = Self.agree(Frame(type: frame.type, header: Array(frame.header.prefix(cut)), payload: frame.payload), "\(frame.type) cut at \(cut)")
                #expect(throws: JSONReadError.self, "\(frame.type) cut at \(cut)") {
                    try ClusterMessage.readDeliveryHeader(frame.type, Array(frame.header.prefix(cut)))
                }
            }
        }
        let alphabet = Array(#"{}[]:,"\ 0123456789.-+eEtrufalsn"#.utf8) + [0x00, 0x1F, 0x80, 0xC3, 0xFF]
        var disagreements = 0
        for n in 0..<20000 {
            let frame = frames.randomElement(using: &rng)!
            var header = frame.header
            guard !header.isEmpty else { continue }
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                header[Int.random(in: 0..<header.count, using: &rng)] = alphabet.randomElement(using: &rng)!
            }
            if !Self.agree(Frame(type: frame.type, header: header, payload: frame.payload), "mutation \(n): \(String(decoding: header, as: UTF8.self))") {
                disagreements += 1
                if disagreements > 20 { return }
            }
        }
    }

    @Test("linear in what a peer sends: 30000 leading zeros of an integer, 20000 keys of one object")
    func largeInputs() throws {
        let zeros = "{\"credits\":0." + String(repeating: "0", count: 29_999) + "1e30001}"
        #expect(try ClusterMessage.readDeliveryHeader(.leaseRequest, Array(zeros.utf8)) == .leaseRequest(LeaseRequestMessage(credits: 10)))
        let keys = "{" + (0..<20_000).map { "\"k\($0)\":\($0)," }.joined() + "\"credits\":3,\"k7\":\"again\"}"
        #expect(try ClusterMessage.readDeliveryHeader(.leaseRequest, Array(keys.utf8)) == .leaseRequest(LeaseRequestMessage(credits: 3)))
        #expect(throws: JSONReadError.self) { try ClusterMessage.readDeliveryHeader(.resultAck, Array(#"{"leaseID":"x","j":"\u"}"#.utf8)) }
    }

    @Test("nesting deeper than 64 in an unknown member is refused, not followed down the stack")
    func depth() throws {
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        let frame = Frame(type: .resultAck, header: Array("{\"leaseID\":\"x\",\"junk\":\(deep)}".utf8))
        #expect(throws: JSONReadError.self) { try ClusterMessage.readDeliveryHeader(.resultAck, frame.header) }
        #expect(throws: ClusterProtocolError.self) { try ClusterMessage.decode(frame) }
        let fine = String(repeating: "[", count: 60) + String(repeating: "]", count: 60)
        #expect(try ClusterMessage.decode(Frame(type: .resultAck, header: Array("{\"leaseID\":\"x\",\"junk\":\(fine)}".utf8)))
                == .resultAck(ResultAckMessage(leaseID: "x")))
    }
}
