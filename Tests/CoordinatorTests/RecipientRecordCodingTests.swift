import Foundation
import Testing
@testable import HatoCoordinator
import HatoShared

/// The admin API's recipient record keeps its flat `lastCode`/`lastEnhanced`/`lastText` JSON
/// while it holds one `DeliveryStatus`.
@Suite("Recipient record JSON")
struct RecipientRecordCodingTests {
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
}
