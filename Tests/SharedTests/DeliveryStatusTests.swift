import Foundation
import Testing
@testable import ClusterProtocol
@testable import SMTPCore

/// `DeliveryStatus`: the one code / enhanced code / text value carried from connect to bounce.
@Suite("Delivery status")
struct DeliveryStatusTests {
    @Test("the disposition follows the reply code's class (RFC 5321 §4.2.1)", arguments: [
        (250, DeliveryStatus.Disposition.delivered), (251, .delivered), (421, .deferred), (451, .deferred), (452, .deferred),
        (354, .deferred), (199, .deferred), (600, .deferred), (550, .failed), (554, .failed),
    ])
    func disposition(code: Int, expected: DeliveryStatus.Disposition) {
        let s = DeliveryStatus(code: code, enhanced: nil, text: "")
        #expect(s.disposition == expected, "\(code)")
        #expect(s.replyClass == ReplyCode(code).replyClass)
    }

    @Test("local failures are precise: 451 4.x.x deferrals and 5yz 5.x.x failures")
    func localConstructors() {
        let d = DeliveryStatus.localDeferral(4, 1, "cannot connect: refused")
        #expect(d.code == 451 && d.enhanced == EnhancedStatusCode(.persistentTransientFailure, 4, 1))
        #expect(d.description == "451 4.4.1 cannot connect: refused")
        #expect(d.disposition == .deferred && d.enhancedAgreesWithCode)
        #expect(DeliveryStatus.localDeferral(7, 4, "x", code: 454).code == 454)
        let f = DeliveryStatus.localFailure(553, 1, 3, "invalid recipient address syntax")
        #expect(f.code == 553 && f.enhanced?.description == "5.1.3")
        #expect(f.disposition == .failed && f.enhancedAgreesWithCode)
    }

    @Test("enhanced codes are parsed from stored text; malformed ones are dropped")
    func parsing() {
        #expect(DeliveryStatus(code: 550, enhanced: "5.1.1", text: "no").enhanced == EnhancedStatusCode(.permanentFailure, 1, 1))
        #expect(DeliveryStatus(code: 451, enhanced: "4.7.651", text: "").enhanced?.description == "4.7.651")
        for bad in ["", "5.1", "5.x.1", "3.1.1", "5.1.1000", "garbage"] {
            #expect(DeliveryStatus(code: 550, enhanced: bad, text: "").enhanced == nil, "\(bad)")
        }
        #expect(DeliveryStatus(code: 550, enhanced: nil, text: "no such user").description == "550 no such user")
        #expect(DeliveryStatus(code: 250, enhanced: nil, text: "").description == "250")
    }

    @Test("a server reply gives its code, its enhanced code and its lines joined by spaces")
    func fromReply() {
        let s = DeliveryStatus(reply: SMTPReply(code: 550, enhanced: "5.1.1", lines: ["no such user", "see https://x.test"]))
        #expect(s == DeliveryStatus(550, EnhancedStatusCode(.permanentFailure, 1, 1), "no such user see https://x.test"))
        #expect(DeliveryStatus(reply: SMTPReply(421, nil, "busy")).enhanced == nil)
    }

    @Test("an enhanced code whose class differs from the reply code's is kept but flagged, and the DSN status falls back")
    func mismatch() {
        let s = DeliveryStatus(code: 550, enhanced: "4.2.2", text: "mailbox full")
        #expect(s.enhanced?.description == "4.2.2")
        #expect(!s.enhancedAgreesWithCode)
        #expect(s.disposition == .failed)
        #expect(s.enhancedStatus(ofClass: .permanentFailure, orElse: EnhancedStatusCode(.permanentFailure, 0, 0)).description == "5.0.0")
        #expect(s.enhancedStatus(ofClass: .persistentTransientFailure, orElse: EnhancedStatusCode(.persistentTransientFailure, 0, 0)).description == "4.2.2")
        #expect(DeliveryStatus(code: 250, enhanced: "2.0.0", text: "").enhancedAgreesWithCode)
        #expect(DeliveryStatus(code: 250, enhanced: "5.0.0", text: "").enhancedAgreesWithCode == false)
        #expect(DeliveryStatus(code: 999, enhanced: "5.0.0", text: "").enhancedAgreesWithCode == false)
        #expect(DeliveryStatus(code: 451, enhanced: nil, text: "").enhancedAgreesWithCode)
    }

    @Test("the text is bounded to 512 characters (not octets)")
    func textBound() {
        #expect(DeliveryStatus.maxTextLength == 512)
        let long = String(repeating: "é", count: 600)
        let s = DeliveryStatus(code: 451, enhanced: nil, text: long)
        #expect(s.text.count == 512)
        #expect(s.text == String(long.prefix(512)))
        #expect(DeliveryStatus.localDeferral(4, 2, String(repeating: "x", count: 1000)).text.count == 512)
        let exact = String(repeating: "y", count: 512)
        #expect(DeliveryStatus(code: 250, enhanced: nil, text: exact).text == exact)
    }

    @Test("Codable: the flat code/enhanced/text keys, today's JSON decodes and re-encodes byte for byte")
    func codable() throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        for json in [#"{"code":550,"enhanced":"5.1.1","text":"no such user"}"#, #"{"code":451,"text":"timeout: waiting for the DATA reply"}"#,
                     #"{"code":250,"enhanced":"2.0.0","text":""}"#] {
            let s = try JSONDecoder().decode(DeliveryStatus.self, from: Data(json.utf8))
            #expect(String(decoding: try encoder.encode(s), as: UTF8.self) == json)
        }
        let s = try JSONDecoder().decode(DeliveryStatus.self, from: Data(#"{"code":550,"enhanced":"5.1.1","text":"no"}"#.utf8))
        #expect(s == DeliveryStatus.localFailure(550, 1, 1, "no"))
        // A malformed enhanced code decodes as none; a missing code is an error.
        #expect(try JSONDecoder().decode(DeliveryStatus.self, from: Data(#"{"code":550,"enhanced":"x","text":"no"}"#.utf8)).enhanced == nil)
        #expect(throws: DecodingError.self) { try JSONDecoder().decode(DeliveryStatus.self, from: Data(#"{"text":"no"}"#.utf8)) }
    }

    @Test("a result frame's recipient keeps the flat keys: an older node's JSON decodes and re-encodes identically")
    func legacyRecipientResult() throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let legacy = [
            #"{"code":550,"enhanced":"5.1.1","recipientID":7,"status":"failed","text":"no such user"}"#,
            #"{"code":250,"dkim":["hato.test/s1/rsa-sha256"],"enhanced":"2.0.0","mxHost":"mx.x.test","recipientID":1,"remoteAddress":"192.0.2.1","reusedConnection":false,"status":"delivered","text":"ok: queued as X","timings":{"connect":0.01,"transaction":0.2},"tlsCipher":"TLS_AES_256_GCM_SHA384","tlsVersion":"TLSv1.3"}"#,
            #"{"code":451,"connectionFailure":{"addressFamily":"ipv4","mxHost":"mx.x.test","remoteAddress":"192.0.2.9"},"enhanced":"4.4.1","recipientID":3,"status":"deferred","text":"cannot connect: refused"}"#,
            #"{"code":552,"enhanced":"5.5.3","recipientID":4,"status":"deferred","text":"too many recipients"}"#,
        ]
        for json in legacy {
            let r = try JSONDecoder().decode(RecipientResult.self, from: Data(json.utf8))
            #expect(String(decoding: try encoder.encode(r), as: UTF8.self) == json)
        }
        let r = try JSONDecoder().decode(RecipientResult.self, from: Data(legacy[0].utf8))
        #expect(r.reply == DeliveryStatus.localFailure(550, 1, 1, "no such user"))
        #expect(r.status == .failed)
        // The status stays the node's decision: a carried-over 552 5.5.3 is deferred.
        #expect(try JSONDecoder().decode(RecipientResult.self, from: Data(legacy[3].utf8)).status == .deferred)

        // The hand-built frame header writes the same bytes as JSONEncoder.
        let message = ClusterMessage.result(ResultMessage(leaseID: "l1", instanceID: "i1", sendingIP: "192.0.2.7", mxHost: nil, remoteAddress: nil,
                                                          outcomes: try legacy.map { try JSONDecoder().decode(RecipientResult.self, from: Data($0.utf8)) },
                                                          finishedAt: 1_795_967_950.25))
        let fast = message.frame(), slow = message.codableFrame()
        #expect(fast.header == slow.header)
        #expect(try ClusterMessage.decode(fast) == message)
    }
}
