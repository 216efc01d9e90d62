import Foundation
import Testing
@testable import ClusterProtocol
@testable import HatoCrypto
@testable import HatoNode
@testable import SMTPCore

@Suite("Outcome journal")
struct JournalTests {
    func result(_ id: String) -> ResultMessage {
        ResultMessage(leaseID: id, instanceID: "i", sendingIP: "127.0.0.10", mxHost: nil, remoteAddress: nil,
                      outcomes: [RecipientResult(recipientID: 1, status: .delivered, reply: DeliveryStatus(code: 250, enhanced: "2.0.0", text: "ok"))], finishedAt: 1)
    }

    @Test("unacknowledged results survive a restart in order; acknowledged ones and torn lines do not")
    func survivesRestart() throws {
        let dir = NSTemporaryDirectory() + "hato-j-" + Identifier.random(bytes: 5)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var j: OutcomeJournal? = try OutcomeJournal(directory: dir)
        try j!.record(result("A")); try j!.record(result("B")); try j!.record(result("C"))
        j!.acknowledge(leaseID: "B")
        j = nil
        // A crash mid-write leaves a torn last line.
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: dir + "/journal.jsonl"))
        try h.seekToEnd(); try h.write(contentsOf: Data("{\"result\":{\"lea".utf8)); try h.close()
        let reopened = try OutcomeJournal(directory: dir)
        #expect(reopened.pending.map(\.leaseID) == ["A", "C"])
        reopened.acknowledge(leaseID: "A")
        #expect(try OutcomeJournal(directory: dir).pending.map(\.leaseID) == ["C"])
    }

    @Test("concurrent records from many delivery workers are all durable and survive a reopen")
    func concurrentRecords() throws {
        let dir = NSTemporaryDirectory() + "hato-j-" + Identifier.random(bytes: 5)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let j = try OutcomeJournal(directory: dir)
        let group = DispatchGroup()
        for i in 0..<40 {
            group.enter()
            Thread.detachNewThread {
                try? j.record(result("L\(i)"))
                group.leave()
            }
        }
        #expect(group.wait(timeout: .now() + 30) == .success)
        #expect(Set(j.pending.map(\.leaseID)) == Set((0..<40).map { "L\($0)" }))
        #expect(Set(try OutcomeJournal(directory: dir).pending.map(\.leaseID)).count == 40)
    }
}
