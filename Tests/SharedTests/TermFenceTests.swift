import Foundation
import Testing
@testable import ClusterProtocol

/// The node's memory of leadership terms, and the term fields on the wire.
@Suite struct TermFenceTests {
    @Test func aWelcomeRaisesTheTermAndAnOlderOneOfTheSameStoreIsRefused() throws {
        var fence = TermFence()
        #expect(try fence.admitWelcome(term: 3, storeID: "s") == 3)
        #expect(try fence.admitWelcome(term: 5, storeID: "s") == 5)
        #expect(try fence.admitWelcome(term: 5, storeID: "s") == 5)  // a reconnect to the same leader
        #expect(throws: TermFence.Refusal(term: 4, highest: 5)) { try fence.admitWelcome(term: 4, storeID: "s") }
        #expect(fence.highest == 5)
    }

    @Test func anotherStoreStartsAfreshAndNoTermChangesNothing() throws {
        var fence = TermFence()
        _ = try fence.admitWelcome(term: 9, storeID: "old")
        #expect(try fence.admitWelcome(term: 1, storeID: "new") == 1)
        #expect(fence.storeID == "new" && fence.highest == 1)
        #expect(try fence.admitWelcome(term: nil, storeID: nil) == nil)
        #expect(fence.highest == 1)
        // A welcome with a term but no store id is compared with the current store's.
        #expect(throws: TermFence.Refusal(term: 0, highest: 1)) { try fence.admitWelcome(term: 0, storeID: nil) }
    }

    @Test func framesMustCarryTheirConnectionsTermAndNotBeOvertaken() throws {
        var fence = TermFence()
        let old = try fence.admitWelcome(term: 2, storeID: "s")
        try fence.admitFrame(term: 2, connectionTerm: old)
        try fence.admitFrame(term: nil, connectionTerm: nil)  // a coordinator without terms
        #expect(throws: TermFence.Refusal(term: 0, highest: 2)) { try fence.admitFrame(term: nil, connectionTerm: old) }
        #expect(throws: TermFence.Refusal(term: 1, highest: 2)) { try fence.admitFrame(term: 1, connectionTerm: old) }
        #expect(throws: TermFence.Refusal(term: 3, highest: 2)) { try fence.admitFrame(term: 3, connectionTerm: old) }
        // Another connection welcomed a newer leader: the old connection's frames are refused.
        _ = try fence.admitWelcome(term: 4, storeID: "s")
        #expect(throws: TermFence.Refusal(term: 2, highest: 4)) { try fence.admitFrame(term: 2, connectionTerm: old) }
    }

    @Test func termFieldsRoundTripAndFramesWithoutThemStillDecode() throws {
        let grant = ClusterMessage.leaseGrant(LeaseGrantMessage(leases: [], term: 7), payload: [])
        let header = String(decoding: grant.frame().header, as: UTF8.self)
        #expect(header == #"{"leases":[],"term":7}"#)
        #expect(try ClusterMessage.decode(grant.frame()) == grant)
        // The JSONObjectWriter bytes equal JSONEncoder's (sorted keys).
        #expect(grant.frame().header == grant.codableFrame().header)
        let legacy = Frame(type: .leaseGrant, header: Array(#"{"leases":[]}"#.utf8))
        #expect(try ClusterMessage.decode(legacy) == .leaseGrant(LeaseGrantMessage(leases: []), payload: []))
        let oldWelcome = Frame(type: .welcome, header: Array(#"{"assignedIPs":[],"heartbeatInterval":2,"peerTimeout":10,"proof":"ab"}"#.utf8))
        guard case .welcome(let w) = try ClusterMessage.decode(oldWelcome) else { Issue.record("not a welcome"); return }
        #expect(w.term == nil && w.storeID == nil)
        for m: ClusterMessage in [.redirect(RedirectMessage(leader: "coord-2", address: "127.0.0.2:7601", term: 8)),
                                  .ipAssign(IPAssignMessage(ips: [], term: 8)), .ipRevoke(IPRevokeMessage(addresses: ["127.0.0.9"], term: 8)),
                                  .welcome(WelcomeMessage(proof: "p", assignedIPs: [], heartbeatInterval: 1, peerTimeout: 5,
                                                          term: 8, storeID: "s", coordinatorID: "coord-1"))] {
            #expect(try ClusterMessage.decode(m.frame()) == m)
        }
        #expect(FrameType(rawValue: 17) == .redirect)
    }
}
