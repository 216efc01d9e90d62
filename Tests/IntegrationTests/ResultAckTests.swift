import ClusterProtocol
import Foundation
import HatoIO
import SMTPCore
import HatoTestKit
import Testing

extension Integration {
    /// Issue 19: a batch of results is acknowledged to its node in one write, and a `result_ack`
    /// held for a grant to ride with still goes when no grant follows (`OutgoingFrames`).
    @Suite("Result acks without a grant to ride with", .timeLimit(.minutes(2)))
    struct ResultAckTests {
        @Test("results reported with no more mail queued are acknowledged, each once, within the hold and the commit")
        func acksGoWithoutAGrant() throws {
            // Coordinator heartbeats (frames of their own, which take held acks along) far apart:
            // the acks must go by their hold.
            let cluster = try TenantDKIMTests.coordinatorForScriptedNode(nodeTimeout: "60s", heartbeat: "20s")
            defer { cluster.shutdown() }
            let node = try TenantDKIMTests.join(cluster, features: ClusterFeature.all)
            defer { node.close() }
            _ = try submitWithSmtplib(port: cluster.smtpPort, messages: [
                (from: "a@example.org", to: ["u1@hato.test"], content: testMessage(1, to: "u1@hato.test")),
                (from: "a@example.org", to: ["u2@hato.test"], content: testMessage(2, to: "u2@hato.test")),
            ], connections: 1, dir: cluster.dir)
            try node.send(.leaseRequest(LeaseRequestMessage(credits: 4)))
            // Both messages leased (in one grant or two).
            var leases: [Lease] = []
            let until = ContinuousClock.now + .seconds(20)
            while leases.count < 2, ContinuousClock.now < until {
                if case .leaseGrant(let g, _) = try node.receive(deadline: until) { leases += g.leases }
            }
            try #require(leases.count == 2, "leases received: \(leases.count)\n\(cluster.logs)")
            // Both results in one write: the coordinator applies them in one batch, and nothing
            // else is queued, so no grant follows for the acks to ride with.
            let results = leases.map { l in
                ClusterMessage.result(ResultMessage(leaseID: l.leaseID, instanceID: "scripted", sendingIP: l.sendingIP, mxHost: "mx.hato.test",
                                                    remoteAddress: "127.0.0.1",
                                                    outcomes: l.recipients.map { RecipientResult(recipientID: $0.id, status: .delivered,
                                                                                                 reply: DeliveryStatus(code: 250, enhanced: "2.0.0", text: "ok")) },
                                                    finishedAt: Date().timeIntervalSince1970))
            }
            let sent = ContinuousClock.now
            try node.send(results)
            var acked: [String] = []
            var grants = 0
            let ackDeadline = ContinuousClock.now + .seconds(5)
            while acked.count < 2, ContinuousClock.now < ackDeadline {
                switch try? node.receive(deadline: ackDeadline) {
                case .resultAck(let a): acked.append(a.leaseID)
                case .leaseGrant: grants += 1
                default: break
                }
            }
            let waited = ContinuousClock.now - sent
            #expect(acked.sorted() == leases.map(\.leaseID).sorted(), "acks: \(acked)\n\(cluster.logs)")
            #expect(grants == 0, "no mail was left to lease")
            // The hold (20 ms) plus the batch's commit and sync; seconds would mean the acks
            // waited for something else (a grant, a heartbeat).
            #expect(waited < .milliseconds(500), "acks took \(waited)")
            // Nothing more for these leases: each acknowledged once.
            let more = TenantDKIMTests.frames(node, for: 1).filter { if case .resultAck = $0 { return true } else { return false } }
            #expect(more.isEmpty, "extra acks: \(more)")
            try cluster.waitForQueue(final: 2, timeout: 20)
        }
    }
}
