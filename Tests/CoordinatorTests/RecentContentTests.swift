import Foundation
import Testing
@testable import ClusterProtocol
@testable import HatoConfig
@testable import HatoCoordinator
@testable import HatoSupport

/// Issue 19: the content of just-queued messages kept for their grants (filter: `RecentContentTests`).
@Suite("RecentContentTests")
struct RecentContentTests {
    @Test("bounded by octets, oldest out first; content over a quarter of the budget is not kept; a message kept again replaces itself; taking empties")
    func budget() {
        let r = RecentContent(budget: 1000)
        r.insert("A", Array(repeating: 1, count: 200))
        r.insert("B", Array(repeating: 2, count: 200))
        r.insert("C", Array(repeating: 3, count: 251))  // over a quarter: not kept
        #expect(r.take("C") == nil)
        r.insert("D", Array(repeating: 4, count: 250))
        r.insert("E", Array(repeating: 5, count: 250))
        #expect(r.usage.octets == 900 && r.usage.messages == 4)
        r.insert("F", Array(repeating: 6, count: 250))  // 1150 > 1000: A leaves
        #expect(r.take("A") == nil)
        #expect(r.usage.octets == 950)
        r.insert("B", Array(repeating: 7, count: 100))
        #expect(r.usage.octets == 850 && r.usage.messages == 4)
        #expect(r.take("B") == Array(repeating: 7, count: 100))
        #expect(r.take("B") == nil, "taken once")
        #expect(r.usage.octets == 750 && r.usage.messages == 3)
        for i in 0..<5000 { r.insert("M\(i)", Array(repeating: 8, count: 100)) }
        #expect(r.usage.octets <= 1000 && r.usage.messages == 10)
        #expect(r.take("M4999") != nil && r.take("M4989") == nil)
        // Content taken as fast as it comes (the usual case) leaves no trail of ids behind.
        for i in 0..<100_000 { r.insert("N\(i)", [1]); _ = r.take("N\(i)") }
        #expect(r.usage.listed < 2 * r.usage.messages + 1100, "\(r.usage)")
    }

    @Test("a grant sends the kept content without reading the store, and reads the store for a message no longer kept", arguments: StoreKind.allCases)
    func grantUsesKeptContent(kind: StoreKind) throws {
        let d = try SchedulerDriver(yaml: PriorityTests.yaml, kind: kind)
        d.join("node-a", 1, bindable: ["127.0.0.10"], credits: 100)
        try PriorityTests.enqueue(d, id: "T1", priority: .transactional)
        d.tick()
        let grant = try #require(d.plannedGrants.first)
        func payloads(_ recent: RecentContent?) -> [[UInt8]] {
            ClusterHub.grantMessages(grant.grant, records: grant.records, maxSize: 1 << 24, store: d.store, recent: recent, log: Logger(label: "t"))
                .compactMap { m -> [UInt8]? in if case .leaseGrant(_, let payload) = m { return payload } else { return nil } }
        }
        // A marker the store never held: proves the grant took the kept copy.
        let kept = RecentContent()
        kept.insert("T1", Array("kept copy\r\n".utf8))
        #expect(payloads(kept) == [Array("kept copy\r\n".utf8)])
        #expect(kept.usage.messages == 0, "the grant took it")
        #expect(payloads(RecentContent()) == [Array("Subject: T1\r\n\r\nbody\r\n".utf8)])
        #expect(payloads(nil) == [Array("Subject: T1\r\n\r\nbody\r\n".utf8)])
    }

    @Test("a grant of several messages: each lease's offset and length find its own body in the payload, also where the size limit splits the frames")
    func severalBodiesInOneGrant() throws {
        let d = try SchedulerDriver(yaml: PriorityTests.yaml, kind: .sqlite)
        d.join("node-a", 1, bindable: ["127.0.0.10"], credits: 100)
        for id in ["T1", "T2", "T3"] { try PriorityTests.enqueue(d, id: id, priority: .transactional) }
        d.tick()
        let grant = try #require(d.plannedGrants.first)
        try #require(grant.records.count == 3)
        for maxSize in [1 << 24, 40] {
            let frames = ClusterHub.grantMessages(grant.grant, records: grant.records, maxSize: maxSize, store: d.store, log: Logger(label: "t"))
            var seen: [String] = []
            for case .leaseGrant(let m, let payload) in frames {
                #expect(payload.count == m.leases.reduce(0) { $0 + $1.bodyLength }, "no slack in the payload")
                for lease in m.leases {
                    let body = Array(payload[lease.bodyOffset..<(lease.bodyOffset + lease.bodyLength)])
                    #expect(body == Array("Subject: \(lease.messageID)\r\n\r\nbody\r\n".utf8), "\(lease.messageID), limit \(maxSize)")
                    seen.append(lease.messageID)
                }
            }
            #expect(seen.sorted() == ["T1", "T2", "T3"])
            #expect(frames.count == (maxSize == 40 ? 3 : 1), "limit \(maxSize): \(frames.count) frames")
        }
    }

    @Test("a lease whose body cannot be read is not sent (it expires and is leased again), never sent with an empty body; the others of the round go")
    func unreadableBodyNotSent() throws {
        let d = try SchedulerDriver(yaml: PriorityTests.yaml, kind: .sqlite)
        d.join("node-a", 1, bindable: ["127.0.0.10"], credits: 100)
        let q = try #require(d.store as? SQLiteQueueStore)
        let large = Array("Subject: L\r\n\r\n".utf8) + Array(repeating: 0x6C, count: 40 << 10)
        try d.store.enqueue(NewMessage(id: "L", reversePath: "s@example.org", recipients: ["l@x.test"], pool: "t", content: large,
                                       heloName: "c", clientAddress: "127.0.0.1", receivedAt: d.now))
        try PriorityTests.enqueue(d, id: "T1", priority: .transactional)
        // The spooled body's segment gone (a disk error, an operator's mistake).
        let segment = try #require(q.spool.currentSegment)
        try FileManager.default.removeItem(atPath: q.spool.path(of: segment))
        #expect(throws: BodySpool.MissingBody.self) { try q.content(of: "L") }
        d.tick()
        let grant = try #require(d.plannedGrants.first)
        #expect(Set(grant.records.map(\.messageID)) == ["L", "T1"])
        let frames = ClusterHub.grantMessages(grant.grant, records: grant.records, maxSize: 1 << 24, store: d.store, log: Logger(label: "t"))
        var sent: [String] = []
        for case .leaseGrant(let m, _) in frames { sent += m.leases.map(\.messageID) }
        #expect(sent == ["T1"])
    }

    @Test("only the leading coordinator keeps content: a standby (elected mode, not leading) keeps none")
    func onlyTheLeaderKeeps() throws {
        let f = try ReportingFixture()
        defer { f.cleanup() }
        let config = f.config, store = f.store
        let leader = try ClusterHub(config: config, store: store)
        leader.keepContent("M1", [1, 2, 3])
        #expect(leader.recentContent.usage.messages == 1)
        let standby = try ClusterHub(config: config, store: store, mode: .elected(coordinatorID: "c2", storeID: "s", mayLead: { _ in false }))
        standby.keepContent("M2", [1])
        #expect(standby.recentContent.usage.messages == 0)
    }
}
