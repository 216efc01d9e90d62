import Foundation
import Testing
@testable import HatoCoordinator
@testable import SMTPCore

/// The admin API's recipient record and the delivery log/webhook record keep their flat reply
/// JSON (`lastCode`/`lastEnhanced`/`lastText`; `code`/`enhanced`/`reply`) while the code holds
/// one `DeliveryStatus`.
@Suite("Flat reply JSON")
struct FlatReplyJSONTests {
    @Test("today's JSON decodes to a DeliveryStatus (or a bare text) and re-encodes identically")
    func legacyJSON() throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let documents = [
            #"{"address":"a@x.test","attempts":1,"id":1,"lastCode":550,"lastEnhanced":"5.1.1","lastText":"no such user","mxHost":"mx.x.test","node":"node-a","sendingIp":"192.0.2.7","state":"failed","updatedAt":1800000000.5}"#,
            #"{"address":"b@x.test","attempts":2,"id":2,"lastCode":451,"lastText":"try later","nextAttemptAt":1800000600,"state":"deferred","updatedAt":1800000000}"#,
            #"{"address":"c@x.test","attempts":0,"id":3,"lastText":"not yet attempted (expired: maximum queue age reached)","state":"expired","updatedAt":1800000000}"#,
            #"{"address":"d@x.test","attempts":0,"id":4,"state":"queued","updatedAt":1800000000}"#,
        ]
        for json in documents {
            let r = try JSONDecoder().decode(RecipientRecord.self, from: Data(json.utf8))
            #expect(String(decoding: try encoder.encode(r), as: UTF8.self) == json)
        }
        let failed = try JSONDecoder().decode(RecipientRecord.self, from: Data(documents[0].utf8))
        #expect(failed.lastReply == DeliveryStatus.localFailure(550, 1, 1, "no such user"))
        let expired = try JSONDecoder().decode(RecipientRecord.self, from: Data(documents[2].utf8))
        #expect(expired.lastReply == nil && expired.lastTextWithoutReply?.hasPrefix("not yet attempted") == true)
    }

    @Test("the delivery log and webhook record: code, enhanced and reply from a DeliveryStatus, or the reply text alone")
    func deliveryLogRecord() throws {
        var r = DeliveryLogRecord(id: "m1.1", ts: "2026-12-04T19:00:00.000Z", event: "failed", messageId: "m1")
        r.setReply(DeliveryStatus.localFailure(550, 1, 1, "no such user"))
        #expect(String(decoding: r.json(), as: UTF8.self)
                == #"{"code":550,"enhanced":"5.1.1","event":"failed","id":"m1.1","message_id":"m1","reply":"no such user","ts":"2026-12-04T19:00:00.000Z"}"#)
        r.setReply(DeliveryStatus(code: 451, enhanced: nil, text: "try later"))
        #expect(String(decoding: r.json(), as: UTF8.self)
                == #"{"code":451,"event":"failed","id":"m1.1","message_id":"m1","reply":"try later","ts":"2026-12-04T19:00:00.000Z"}"#)
        r.event = "expired"
        r.setReply(nil, textWithoutReply: "not yet attempted (expired: maximum queue age reached)")
        #expect(String(decoding: r.json(), as: UTF8.self)
                == #"{"event":"expired","id":"m1.1","message_id":"m1","reply":"not yet attempted (expired: maximum queue age reached)","ts":"2026-12-04T19:00:00.000Z"}"#)
        // The same bytes as JSONEncoder gives for the record.
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        #expect(try encoder.encode(r) == Data(r.json()))
    }
}
