import Foundation
import HatoTestKit
import Testing
@testable import ClusterProtocol
@testable import HatoConfig
@testable import HatoCoordinator
import HatoMIME
@testable import HatoSupport
@testable import SMTPCore

/// Issue 18, priority: transactional before bulk, as values (manual clock) and in both stores
/// (filter: `PriorityTests`).
@Suite("PriorityTests")
struct PriorityTests {
    static let yaml = """
        cluster: { name: t, secret: "0123456789abcdef0123" }
        coordinator: { listen: 127.0.0.1:7601, admin_listen: 127.0.0.1:7680, admin_token: tok, data_dir: DATA_DIR/c, lease_time: 60s, node_timeout: 10s, heartbeat_interval: 2s }
        smtp: { listen: [127.0.0.1:2525], hostname: relay.test }
        nodes: [ { id: node-a, data_dir: DATA_DIR/a } ]
        pools: [ { name: t }, { name: news, priority: bulk } ]
        ips:
          - { address: 127.0.0.10, helo: a.test, pool: t, nodes: [node-a] }
        routing: { default_pool: t }
        delivery: { connections_per_ip: 2 }
        priority: { bulk_reserve: 1 }
        """

    /// Queues one message of `recipients` recipients to x.test with `priority`.
    static func enqueue(_ d: SchedulerDriver, id: String, recipients: Int = 1, priority: MessagePriority) throws {
        var m = NewMessage(id: id, reversePath: "s@example.org", recipients: (0..<recipients).map { "\(id.lowercased())r\($0)@x.test" }, pool: "t",
                           content: Array("Subject: \(id)\r\n\r\nbody\r\n".utf8), heloName: "c", clientAddress: "127.0.0.1", receivedAt: d.now)
        m.priority = priority
        try d.store.enqueue(m)
    }

    @Test("the lease query reads every due transactional recipient before bulk ones, oldest first in each class", arguments: StoreKind.allCases)
    func dueOrder(kind: StoreKind) throws {
        let d = try SchedulerDriver(yaml: Self.yaml, kind: kind)
        try Self.enqueue(d, id: "B1", recipients: 3, priority: .bulk)
        d.clock.advance(1)
        try Self.enqueue(d, id: "T1", priority: .transactional)
        d.clock.advance(1)
        try Self.enqueue(d, id: "B2", priority: .bulk)
        d.clock.advance(1)
        try Self.enqueue(d, id: "T2", priority: .transactional)
        let due = try d.store.dueRecipients(pools: ["t"], now: d.now, limit: 10)
        #expect(due.map(\.messageID) == ["T1", "T2", "B1", "B1", "B1", "B2"])
        #expect(due.map(\.priority) == [.transactional, .transactional, .bulk, .bulk, .bulk, .bulk])
        let limited = try d.store.dueRecipients(pools: ["t"], now: d.now, limit: 3)
        #expect(limited.map(\.messageID) == ["T1", "T2", "B1"])
        #expect(try d.store.message(id: "B2")?.priority == .bulk)
        #expect(try d.store.message(id: "T1")?.priority == .transactional)
        let summary = try d.store.waitingSummary(by: .priority, providerLabel: { $0 }, now: d.now)
        #expect(Dictionary(uniqueKeysWithValues: summary.map { ($0.key, $0.total) }) == ["bulk": 4, "transactional": 2])
    }

    @Test("bulk never takes the reserved lease slots of an IP: a transactional message queued behind a bulk backlog is leased at once", arguments: StoreKind.allCases)
    func reserveAtTheCoordinator(kind: StoreKind) throws {
        let d = try SchedulerDriver(yaml: Self.yaml, kind: kind)
        d.join("node-a", 1, bindable: ["127.0.0.10"], credits: 100)
        for i in 0..<50 { try Self.enqueue(d, id: "B\(i)", recipients: 100, priority: .bulk) }
        d.tick()
        // connections_per_ip 2, bulk_reserve 1: bulk holds at most (2 − 1) × 2 leases in flight.
        #expect((d.granted[1] ?? []).count == 2)
        #expect((d.granted[1] ?? []).allSatisfy { $0.messageID.hasPrefix("B") })
        d.tick()
        #expect((d.granted[1] ?? []).count == 2, "no more bulk while the reserve is all that is left")
        d.clock.advance(1)
        try Self.enqueue(d, id: "T1", priority: .transactional)
        d.tick()
        #expect((d.granted[1] ?? []).map(\.messageID).last == "T1", "the transactional message takes a reserved slot")
        // The lease_grant frames tell the node each lease's class.
        let classes = d.plannedGrants.flatMap { g in
            ClusterHub.grantMessages(g.grant, records: g.records, maxSize: 1 << 24, store: d.store, log: Logger(label: "t")).flatMap { m -> [MessagePriority?] in
                if case .leaseGrant(let grant, _) = m { return grant.leases.map(\.priority) } else { return [] }
            }
        }
        #expect(classes == [.bulk, .bulk, .transactional])
        // Results free the slots; transactional mail comes first again, and bulk counts every
        // lease in flight against its cap (here: T2 and one bulk lease, two slots kept free).
        try Self.enqueue(d, id: "T2", priority: .transactional)
        d.reportAll(1)
        d.tick()
        let next = (d.granted[1] ?? []).map(\.messageID)
        #expect(next == ["T2", "B2"], "\(next)")
    }

    @Test("planning as a value: transactional groups first, bulk up to its own cap per IP")
    func planner() {
        let ip = AssignedIP(address: "127.0.0.10", helo: "a.test", pool: "t")
        func group(_ id: String, _ p: MessagePriority) -> DeliveryGroup {
            DeliveryGroup(messageID: id, domain: "x.test", pool: "t", reversePath: "",
                          recipients: [DueRecipient(id: 1, messageID: id, address: "u@x.test", domain: "x.test", pool: "t", reversePath: "", priority: p)],
                          priority: p)
        }
        var credits = ["n": 10], inFlight: [String: Int] = [:], budget: [String: Int] = [:], spread = SpreadState()
        let plan = LeasePlanner.spread([group("B1", .bulk), group("B2", .bulk), group("B3", .bulk), group("T1", .transactional), group("T2", .transactional)],
                                       candidates: [.init(ip: ip, node: "n", weight: 1)], credits: &credits, inFlight: &inFlight, perIPCap: 4,
                                       bulkPerIPCap: 2, budget: &budget, spread: &spread, provider: { _ in "p" }, allow: { _, _ in true })
        #expect(plan.map(\.0.messageID) == ["B1", "B2", "T1", "T2"])
        #expect(inFlight["127.0.0.10"] == 4)
    }

    @Test("the class of a message: the lowest its pool, tenant and request name; transactional by default")
    func resolution() {
        #expect(MessagePriority.resolved([]) == .transactional)
        #expect(MessagePriority.resolved([nil, nil]) == .transactional)
        #expect(MessagePriority.resolved([.transactional, nil, .bulk]) == .bulk, "a header may lower")
        #expect(MessagePriority.resolved([.bulk, nil, .transactional]) == .bulk, "a bulk pool cannot be raised")
        #expect(MessagePriority.resolved([.transactional, .bulk, .transactional]) == .bulk, "a bulk tenant cannot be raised")
        #expect(MessagePriority(parsing: " Bulk ") == .bulk && MessagePriority(parsing: "urgent") == nil)
        #expect(MessagePriority.transactional > MessagePriority.bulk)
    }

    @Test("X-Hato-Priority is removed at routing (folded too) and reported; an unknown value is removed and ignored")
    func headerRemoved() throws {
        let config = try ClusterConfig.parse(Self.yaml.replacingOccurrences(of: "DATA_DIR", with: "/tmp/x"), path: "/tmp/x/cluster.yml")
        let router = PoolRouter(routing: config.routing, pools: config.pools)
        #expect(router.priority(ofPool: "news") == .bulk && router.priority(ofPool: "t") == .transactional)
        let content = Array("Subject: hi\r\nX-Hato-Priority:\r\n  bulk\r\nTo: a@x.test\r\n\r\nX-Hato-Priority: body text stays\r\n".utf8)
        let d = try router.route(authUser: nil, reversePath: "s@example.org", content: content)
        #expect(d.requestedPriority == .bulk && d.unknownPriority == nil)
        #expect(String(decoding: d.content, as: UTF8.self) == "Subject: hi\r\nTo: a@x.test\r\n\r\nX-Hato-Priority: body text stays\r\n")
        let odd = try router.route(authUser: nil, reversePath: "", content: Array("x-hato-priority: urgent\r\n\r\nb\r\n".utf8))
        #expect(odd.requestedPriority == nil && odd.unknownPriority == "urgent")
        #expect(odd.content == Array("\r\nb\r\n".utf8))
        let none = try router.route(authUser: nil, reversePath: "", content: Array("Subject: x\r\n\r\nb\r\n".utf8))
        #expect(none.requestedPriority == nil && none.content == Array("Subject: x\r\n\r\nb\r\n".utf8))
    }

    @Test("config: pools[].priority and priority.bulk_reserve are read; a bad value names file, line and key")
    func config() throws {
        let config = try ClusterConfig.parse(Self.yaml.replacingOccurrences(of: "DATA_DIR", with: "/tmp/x"), path: "/tmp/x/cluster.yml")
        #expect(config.pools.map(\.priority) == [.transactional, .bulk])
        #expect(config.priority.bulkReserve == 1)
        #expect(config.priority.usable(2, by: .bulk) == 1 && config.priority.usable(1, by: .bulk) == 1 && config.priority.usable(8, by: .transactional) == 8)
        let defaults = try ClusterConfig.parse(Self.yaml.replacingOccurrences(of: "DATA_DIR", with: "/tmp/x").replacingOccurrences(of: "priority: { bulk_reserve: 1 }", with: ""),
                                               path: "/tmp/x/cluster.yml")
        #expect(defaults.priority == PrioritySettings())
        do {
            _ = try ClusterConfig.parse(Self.yaml.replacingOccurrences(of: "DATA_DIR", with: "/tmp/x").replacingOccurrences(of: "priority: bulk }", with: "priority: urgent }"),
                                        path: "/tmp/x/cluster.yml")
            Issue.record("an unknown class was accepted")
        } catch let e as ConfigError {
            #expect(e.description.contains("cluster.yml") && e.description.contains(":5") && e.description.contains("priority") && e.description.contains("transactional or bulk"), "\(e)")
        }
        #expect(throws: ConfigError.self) {
            try ClusterConfig.parse(Self.yaml.replacingOccurrences(of: "DATA_DIR", with: "/tmp/x").replacingOccurrences(of: "bulk_reserve: 1", with: "bulk_reserve: -1"),
                                    path: "/tmp/x/cluster.yml")
        }
    }

    @Test("the HTTP send API's priority field: transactional or bulk; anything else is refused as invalid_field")
    func sendRequestField() throws {
        let bulk = try SendRequest(json: Array(#"{"from":"a@x.test","to":"b@y.test","text":"hi","priority":"bulk"}"#.utf8))
        #expect(bulk.priority == .bulk)
        let none = try SendRequest(json: Array(#"{"from":"a@x.test","to":"b@y.test","text":"hi"}"#.utf8))
        #expect(none.priority == nil)
        #expect(throws: MessageBuildError.self) { try SendRequest(json: Array(#"{"from":"a@x.test","to":"b@y.test","priority":"urgent"}"#.utf8)) }
        do {
            _ = try SendRequest(json: Array(#"{"from":"a@x.test","to":"b@y.test","priority":"urgent"}"#.utf8))
        } catch {
            #expect("\(error)".contains("priority"), "\(error)")
        }
        let round = try SendRequest(json: Array(try JSONEncoder().encode(bulk)))
        #expect(round.priority == .bulk)
    }

    @Test("a tenant's class is stored and read back, and cleared", arguments: StoreKind.allCases)
    func tenantPriority(kind: StoreKind) throws {
        let place = try TestStore(kind)
        let store = try place.open()
        try store.createTenant(Tenant(name: "acme", createdAt: 1, priority: .bulk))
        #expect(try store.tenant(named: "acme")?.priority == .bulk)
        var t = try #require(try store.tenant(named: "acme"))
        t.priority = nil
        try store.updateTenant(t)
        #expect(try store.tenant(named: "acme")?.priority == nil)
        t.priority = .transactional
        try store.updateTenant(t)
        #expect(try store.tenants().first?.priority == .transactional)
    }
}
