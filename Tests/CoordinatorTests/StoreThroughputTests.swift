import Foundation
import HatoTestKit
import Testing
@testable import ClusterProtocol
@testable import HatoConfig
@testable import HatoCoordinator
@testable import HatoCrypto
import HatoSupport
import SMTPCore

/// The hot path on both stores: group-committed submissions from several threads, leases and
/// result application, with the rates printed (figures for the issue note, not limits).
@Suite("Queue store throughput (figures)")
struct StoreThroughputTests {
    @Test("2000 messages from 8 threads, leased in 100s and applied in batches of 50 results: every recipient delivered", arguments: StoreKind.allCases)
    func hotPath(kind: StoreKind) throws {
        let place = try TestStore(kind)
        let q = try place.open()
        let t0 = Date()
        let count = 2000, threads = 8
        let body = Array(("Subject: x\r\n\r\n" + String(repeating: "y", count: 2000) + "\r\n").utf8)
        let group = DispatchGroup()
        let failures = Locked(0)
        let start = ContinuousClock.now
        for t in 0..<threads {
            group.enter()
            Thread.detachNewThread {
                for i in stride(from: t, to: count, by: threads) {
                    do {
                        try q.enqueue(NewMessage(id: "T\(i)", reversePath: "s@example.org", recipients: ["r\(i)@x.test"], pool: "t", content: body,
                                                 heloName: "c", clientAddress: "127.0.0.1", receivedAt: t0))
                    } catch { failures.withLock { $0 += 1 } }
                }
                group.leave()
            }
        }
        #expect(group.wait(timeout: .now() + 120) == .success)
        let enqueueTime = ContinuousClock.now - start
        #expect(failures.withLock { $0 } == 0)
        #expect(try q.countsByState()[.queued] == count)
        let batches = TestStore.batchesCommitted(q)

        let leaseStart = ContinuousClock.now
        var leased: [LeaseRecord] = []
        while true {
            let due = try q.dueRecipients(pools: ["t"], now: t0, limit: 100)
            if due.isEmpty { break }
            leased += try q.recordLeases(due.map {
                LeaseRecord(id: "L\($0.id)", node: "node-a", instance: "i1", sendingIP: "127.0.0.10", messageID: $0.messageID, domain: $0.domain,
                            recipientIDs: [$0.id], grantedAt: t0, expiresAt: t0 + 300)
            }, countAttemptsOnDay: Queue.utcDay(t0))
        }
        let leaseTime = ContinuousClock.now - leaseStart
        #expect(leased.count == count)
        #expect(try q.dailyAttempts(day: Queue.utcDay(t0))["127.0.0.10"] == count)

        let applyStart = ContinuousClock.now
        let retry = RetryPolicy(schedule: [60], maxAge: 3600)
        for chunk in stride(from: 0, to: leased.count, by: 50) {
            let results = leased[chunk..<min(chunk + 50, leased.count)].map { l in
                (result: ResultMessage(leaseID: l.id, instanceID: "i1", sendingIP: "127.0.0.10", mxHost: "mx.x.test", remoteAddress: "127.0.0.1",
                                       outcomes: [RecipientResult(recipientID: l.recipientIDs[0], status: .delivered, reply: DeliveryStatus(code: 250, enhanced: "2.0.0", text: "ok"))],
                                       finishedAt: 0), node: "node-a")
            }
            let apps = try q.applyResults(results, retry: retry, now: t0 + 1)
            #expect(apps.allSatisfy { $0.applied == 1 && $0.leaseKnown })
        }
        let applyTime = ContinuousClock.now - applyStart
        #expect(try q.countsByState()[.delivered] == count)
        #expect(try q.allLeases().isEmpty)
        func rate(_ d: Duration) -> String {
            String(format: "%.0f/s", Double(count) / (Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18))
        }
        print("store throughput [\(kind)]: enqueue \(rate(enqueueTime)) (\(batches) group commits for \(count) messages, \(threads) threads), "
              + "lease \(rate(leaseTime)) (100 per commit), apply \(rate(applyTime)) (50 results per commit)")
    }
}
