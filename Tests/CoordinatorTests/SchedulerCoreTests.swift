import Foundation
import HatoTestKit
import Testing
@testable import ClusterProtocol
@testable import HatoConfig
@testable import HatoCoordinator
@testable import HatoCrypto
@testable import HatoSupport
@testable import SMTPCore

/// Plays `ClusterHub`'s part for a `Scheduler` without sockets or threads: directives are
/// carried out against a real queue in a temporary directory, frames are collected per
/// connection, and time is a manual clock.
final class SchedulerDriver {
    var scheduler: Scheduler
    let store: any QueueStore
    let clock: ManualClock
    let dir: String
    /// Frames sent, per connection, in order.
    var sent: [ConnectionID: [ClusterMessage]] = [:]
    /// Lease records granted (recorded and sent), per connection.
    var granted: [ConnectionID: [LeaseRecord]] = [:]
    /// Every grant planned, with the records the queue kept.
    var plannedGrants: [(grant: PlannedGrant, records: [LeaseRecord])] = []
    var disconnected: Set<ConnectionID> = []
    var logs: [SchedulerLogLine] = []
    var backoffEvents: [BackoffEvent] = []
    var backedUp: Set<String> = []
    var nextTick: Date
    private var messageCount = 0

    /// Where the queue lives (a directory or a PostgreSQL schema, removed with the driver).
    let place: TestStore

    init(yaml: String, start: Date = Date(timeIntervalSince1970: 1_800_000_000), kind: StoreKind = .sqlite) throws {
        dir = NSTemporaryDirectory() + "hato-sched-" + Identifier.random(bytes: 5)
        let config = try ClusterConfig.parse(yaml.replacingOccurrences(of: "DATA_DIR", with: dir), path: dir + "/cluster.yml")
        place = try TestStore(kind, directory: dir + "/queue")
        store = try place.open()
        clock = ManualClock(start)
        scheduler = Scheduler(config: config)
        nextTick = start
    }

    deinit { try? FileManager.default.removeItem(atPath: dir) }

    var now: Date { clock.now() }

    func perform(_ directives: [Scheduler.Directive]) {
        for d in directives {
            switch d {
            case .send(let c, let m): sent[c, default: []].append(m)
            case .grant(let grants):
                let all = try! store.recordLeases(grants.flatMap(\.records), countAttemptsOnDay: Queue.utcDay(now))
                scheduler.grantsRecorded(grants, granted: all)
                let ids = Set(all.map(\.id))
                for g in grants { plannedGrants.append((g, all.filter { r in g.records.contains { $0.id == r.id } })) }
                for g in grants { granted[g.connection, default: []] += all.filter { r in ids.contains(r.id) && g.records.contains { $0.id == r.id } } }
            case .disconnect(let c): disconnected.insert(c)
            case .requeueExpired: perform(scheduler.leasesExpired(try! store.requeueExpiredLeases(now: now)))
            case .expireOld(let age): _ = try! store.expireOld(maxAge: age, now: now)
            case .reconcile(let node, let instance): _ = try! store.requeueLeases(node: node, exceptInstance: instance, now: now)
            case .persistBackoff(let e): try! store.saveBackoff(e)
            case .backoffEvent(let e): backoffEvents.append(e)
            case .persistIPOwners(let owners): try! store.saveIPOwners(owners)
            case .persistSignals(let rows): try! store.addReputationCounts(rows)
            case .forgetSignals(let ip, let provider): try! store.deleteReputationCounts(ip: ip, provider: provider)
            case .log(let line): logs.append(line)
            case .scheduleNextTick(let after): nextTick = min(nextTick, now.addingTimeInterval(after))
            }
        }
    }

    /// One scheduling pass now.
    func tick() {
        nextTick = now.addingTimeInterval(Scheduler.maximumTickInterval)
        perform(try! scheduler.tick(now: now, queue: store, canSend: { !self.backedUp.contains($0) }))
    }

    /// A node joins on `connection` and asks for `credits` leases.
    func join(_ node: String, _ connection: ConnectionID, bindable: [String], credits: Int = 100, instance: String = "i1") {
        let hello = HelloMessage(version: clusterProtocolVersion, nodeID: node, instanceID: instance, proof: "", nodeNonce: "n",
                                 bindableIPs: bindable, capacity: credits)
        perform(scheduler.joinRequested(hello, connection: connection, peer: "127.0.0.1", now: now))
        if credits > 0 { perform(scheduler.leaseRequested(credits, on: connection, now: now)) }
    }

    /// Queues `count` one-recipient messages to `domain` in `pool`.
    func enqueue(_ count: Int, domain: String = "x.test", pool: String = "t") throws {
        for _ in 0..<count {
            messageCount += 1
            try store.enqueue(NewMessage(id: "M\(messageCount)", reversePath: "s@example.org", recipients: ["r\(messageCount)@\(domain)"], pool: pool,
                                         content: Array("Subject: \(messageCount)\r\n\r\nbody\r\n".utf8), heloName: "c", clientAddress: "127.0.0.1",
                                         receivedAt: now))
        }
    }

    /// The node on `connection` reports every lease granted to it so far with `status` (results applied, then acks).
    func reportAll(_ connection: ConnectionID, status: RecipientResult.Status = .delivered, code: Int = 250, mx: String = "mx.x.test") {
        let leases = granted[connection] ?? []
        granted[connection] = []
        guard !leases.isEmpty else { return }
        let results = leases.map { l in
            ResultMessage(leaseID: l.id, instanceID: "i1", sendingIP: l.sendingIP, mxHost: mx, remoteAddress: "127.0.0.1",
                          outcomes: l.recipientIDs.map { RecipientResult(recipientID: $0, status: status, reply: DeliveryStatus(code: code, enhanced: nil, text: "ok")) },
                          finishedAt: now.timeIntervalSince1970)
        }
        _ = try! store.applyResults(results.map { ($0, "n") }, retry: RetryPolicy(schedule: [60], maxAge: 86_400), now: now)
        perform(scheduler.resultsApplied(results.map { (leaseID: $0.leaseID, connection: connection, mxHost: $0.mxHost) }, now: now))
        perform(scheduler.leaseRequested(leases.count, on: connection, now: now))
    }

    /// Recipients granted per sending IP, over every grant so far on `connection`, plus those already reported.
    func messages(_ connection: ConnectionID) -> [ClusterMessage] { sent[connection] ?? [] }

    func assigned(_ connection: ConnectionID) -> [String] {
        messages(connection).flatMap { if case .ipAssign(let m) = $0 { return m.ips.map(\.address) } else { return [] } }
    }

    func revoked(_ connection: ConnectionID) -> [String] {
        messages(connection).flatMap { if case .ipRevoke(let m) = $0 { return m.addresses } else { return [] } }
    }
}

@Suite("Scheduler and membership as values (manual clock, no sockets)")
struct SchedulerCoreTests {
    static let yaml = """
        cluster: { name: t, secret: "0123456789abcdef0123" }
        coordinator: { listen: 127.0.0.1:7601, admin_listen: 127.0.0.1:7680, admin_token: tok, data_dir: DATA_DIR/c, lease_time: 60s, node_timeout: 10s, heartbeat_interval: 2s }
        smtp: { listen: [127.0.0.1:2525], hostname: relay.test }
        nodes: [ { id: node-a, data_dir: DATA_DIR/a }, { id: node-b, data_dir: DATA_DIR/b }, { id: node-c, data_dir: DATA_DIR/n3 } ]
        pools: [ { name: t } ]
        warmup:
          - { name: gentle, daily: [50, 100] }
        ips:
          - { address: 127.0.0.10, helo: a.test, pool: t, nodes: [node-a] }
          - { address: 127.0.0.11, helo: b.test, pool: t, nodes: [node-b] }
          - { address: 127.0.0.20, helo: f.test, pool: t, nodes: [node-a, node-b, node-c] }
          - { address: 127.0.0.21, helo: g.test, pool: t, nodes: [node-a, node-b, node-c] }
        routing: { default_pool: t }
        delivery: { connections_per_ip: 50 }
        """

    /// Nodes a and b with their bindable IPs: a gets .10, .20, .21; b gets .11.
    func twoNodes(_ kind: StoreKind = .sqlite) throws -> SchedulerDriver {
        let d = try SchedulerDriver(yaml: Self.yaml, kind: kind)
        d.join("node-a", 1, bindable: ["127.0.0.10", "127.0.0.20", "127.0.0.21"])
        d.join("node-b", 2, bindable: ["127.0.0.11", "127.0.0.20", "127.0.0.21"])
        return d
    }

    @Test("join: welcome with the IPs owned; an unknown node and a second connection of a node are refused and disconnected", arguments: StoreKind.allCases)
    func joining(kind: StoreKind) throws {
        let d = try twoNodes(kind)
        guard case .welcome(let w) = d.messages(1).first else { Issue.record("no welcome: \(d.messages(1))"); return }
        #expect(w.assignedIPs.map(\.address) == ["127.0.0.10", "127.0.0.20", "127.0.0.21"])
        #expect(w.proof == ClusterAuth.coordinatorProof(secret: "0123456789abcdef0123", nodeNonce: "n", nodeID: "node-a"))
        d.join("node-z", 3, bindable: [], credits: 0)
        d.join("node-a", 4, bindable: ["127.0.0.10"], credits: 0, instance: "i2")
        guard case .reject(let unknown) = d.messages(3).first, case .reject(let dup) = d.messages(4).first else {
            Issue.record("expected rejects: \(d.messages(3)) \(d.messages(4))"); return
        }
        #expect(!unknown.retryable && unknown.reason.contains("not in cluster.yml"))
        #expect(dup.retryable && dup.reason.contains("already connected"))
        #expect(d.disconnected == [3, 4])
        #expect(d.scheduler.state(of: "node-a") == .active)
        #expect(d.scheduler.state(of: "node-c") == .down)
    }

    @Test("the first lease request reconciles the node's earlier instances; a heartbeat goes to each node per interval", arguments: StoreKind.allCases)
    func reconcileAndHeartbeats(kind: StoreKind) throws {
        let d = try SchedulerDriver(yaml: Self.yaml, kind: kind)
        let hello = HelloMessage(version: 1, nodeID: "node-a", instanceID: "i7", proof: "", nodeNonce: "n", bindableIPs: ["127.0.0.10"], capacity: 4)
        d.perform(d.scheduler.joinRequested(hello, connection: 9, peer: "127.0.0.1", now: d.now))
        #expect(d.scheduler.state(of: "node-a") == .joining)
        let first = d.scheduler.leaseRequested(4, on: 9, now: d.now)
        #expect(first.contains { if case .reconcile("node-a", "i7") = $0 { return true } else { return false } })
        let second = d.scheduler.leaseRequested(1, on: 9, now: d.now)
        #expect(!second.contains { if case .reconcile = $0 { return true } else { return false } })
        #expect(d.scheduler.leases.credits["node-a"] == 5)
        d.tick()
        d.clock.advance(1)
        d.tick()
        d.clock.advance(1)
        d.tick()
        let beats = d.messages(9).filter { if case .heartbeat = $0 { return true } else { return false } }
        #expect(beats.count == 2, "at 0 s and 2 s (interval 2 s), not at 1 s")
    }

    @Test("warm-up: a day-1 IP never takes more than its cap over many rounds; the other IP takes the rest; the next UTC day raises the cap", arguments: StoreKind.allCases)
    func warmupCapAcrossRounds(kind: StoreKind) throws {
        let start = Date(timeIntervalSince1970: 1_800_000_000)   // 2027-01-15T08:00:00Z
        let day = Queue.utcDay(start)
        let iso = RFC5322Date.isoDate(daysSince1970: day)
        let yaml = Self.yaml.replacingOccurrences(of: "{ address: 127.0.0.10, helo: a.test, pool: t, nodes: [node-a] }",
                                                  with: "{ address: 127.0.0.10, helo: a.test, pool: t, nodes: [node-a], warmup: { plan: gentle, start: \(iso) } }")
        let d = try SchedulerDriver(yaml: yaml, start: start, kind: kind)
        d.join("node-a", 1, bindable: ["127.0.0.10", "127.0.0.11"], credits: 20)
        try d.enqueue(300)
        var perIP: [String: Int] = [:]
        for _ in 0..<40 {
            d.tick()
            for l in d.granted[1] ?? [] { perIP[l.sendingIP, default: 0] += l.recipientIDs.count }
            d.reportAll(1)
            d.clock.advance(1)
            #expect(perIP["127.0.0.10", default: 0] <= 50)
        }
        // .11 is node-b's fixed IP: node-a owns only .10 of the fixed ones here, and .20/.21 are not bindable.
        #expect(perIP["127.0.0.10"] == 50, "\(perIP)")
        #expect(perIP.values.reduce(0, +) == 50, "only the warming IP is leasable by node-a: the rest waits: \(perIP)")
        #expect(d.scheduler.warmupStatus("127.0.0.10", now: d.now)! == (1, 50, 50))
        // The next UTC day: cap 100, counted afresh.
        d.clock.advance(TimeInterval(86_400 - (Int(d.now.timeIntervalSince1970) % 86_400)) + 1)
        var nextDay = 0
        for _ in 0..<20 {
            d.tick()
            for l in d.granted[1] ?? [] { nextDay += l.recipientIDs.count }
            d.reportAll(1)
            d.clock.advance(1)
        }
        #expect(nextDay == 100)
        #expect(d.scheduler.warmupStatus("127.0.0.10", now: d.now)! == (2, 100, 100))
    }

    @Test("a backoff stops only its (IP, provider) pair: other providers still use that IP; the pair resumes after it expires", arguments: StoreKind.allCases)
    func backoffOnlyItsPair(kind: StoreKind) throws {
        let d = try SchedulerDriver(yaml: Self.yaml, kind: kind)
        d.join("node-a", 1, bindable: ["127.0.0.10", "127.0.0.20"], credits: 1000)
        d.perform(d.scheduler.backoffReported(BackoffMessage(sendingIP: "127.0.0.10", provider: "gmail", domain: "gmail.com", action: "suspend",
                                                             duration: 300, ratePerMinute: nil, reply: "421 4.7.0 try again later"),
                                              on: 1, now: d.now))
        #expect((try d.store.activeBackoffs(now: d.now)).map(\.sendingIP) == ["127.0.0.10"], "persisted")
        try d.enqueue(20, domain: "gmail.com")
        try d.enqueue(20, domain: "other.test")
        d.tick()
        let leases = d.granted[1] ?? []
        #expect(leases.count == 40)
        #expect(!leases.contains { $0.domain == "gmail.com" && $0.sendingIP == "127.0.0.10" }, "the suspended pair gets nothing")
        // gmail.com went to .20 only; other.test alternates over both: the IP still serves other providers.
        #expect(leases.filter { $0.domain == "gmail.com" }.allSatisfy { $0.sendingIP == "127.0.0.20" })
        #expect(leases.filter { $0.domain == "other.test" && $0.sendingIP == "127.0.0.10" }.count == 10)
        d.reportAll(1)
        try d.enqueue(10, domain: "gmail.com")
        d.clock.advance(301)
        d.tick()
        #expect((d.granted[1] ?? []).filter { $0.sendingIP == "127.0.0.10" }.count == 5, "after expiry the pair takes its share again")
    }

    @Test("a backoff's start and end are one event each: suspended when the pair becomes blocked (not again when a report extends it), lifted when it runs out", arguments: StoreKind.allCases)
    func backoffEvents(kind: StoreKind) throws {
        let d = try SchedulerDriver(yaml: Self.yaml, kind: kind)
        d.join("node-a", 1, bindable: ["127.0.0.10", "127.0.0.20"], credits: 10)
        func report(_ seconds: Double) {
            d.perform(d.scheduler.backoffReported(BackoffMessage(sendingIP: "127.0.0.10", provider: "gmail", domain: "gmail.com", action: "suspend",
                                                                 duration: seconds, ratePerMinute: nil, reply: "421 4.7.28 rate limited"),
                                                  on: 1, now: d.now))
        }
        report(300)
        guard case .started(let started)? = d.backoffEvents.first else { Issue.record("no start event"); return }
        #expect(started.sendingIP == "127.0.0.10" && started.provider == "gmail" && started.action == .suspend)
        #expect(started.until == d.now.timeIntervalSince1970 + 300)
        d.clock.advance(100)
        report(300)  // extends to now + 300
        #expect(d.backoffEvents.count == 1, "an extension is not a new suspension")
        d.clock.advance(299)
        d.tick()
        #expect(d.backoffEvents.count == 1, "still suspended 1 s before its end")
        d.clock.advance(1)
        d.tick()
        guard d.backoffEvents.count == 2, case .ended(let ended) = d.backoffEvents[1] else { Issue.record("no end event: \(d.backoffEvents)"); return }
        #expect(ended.sendingIP == "127.0.0.10" && ended.provider == "gmail")
        d.tick()
        #expect(d.backoffEvents.count == 2, "one end event")
        report(60)
        #expect(d.backoffEvents.count == 3, "a new suspension after the end is an event again")
    }

    @Test("drain: no new leases, floating IPs handed over one by one after release, drained once its leases finished", arguments: StoreKind.allCases)
    func drainHandsOver(kind: StoreKind) throws {
        let d = try twoNodes(kind)
        try d.enqueue(10)
        d.backedUp = ["node-b"]
        d.tick()
        d.backedUp = []
        #expect(!(d.granted[1] ?? []).isEmpty)
        _ = try d.scheduler.drainRequested("node-a")
        d.tick()
        #expect(Set(d.revoked(1)) == ["127.0.0.20", "127.0.0.21"], "both floating IPs revoked; the fixed .10 stays")
        #expect(d.scheduler.membership.table.leasable(by: "node-a").map(\.address) == ["127.0.0.10"])
        try d.enqueue(10)
        let before = d.granted[1]?.count ?? 0
        d.tick()
        #expect((d.granted[1]?.count ?? 0) == before, "a draining node gets no new leases")
        #expect(d.scheduler.state(of: "node-a") == .draining)
        d.reportAll(1)
        d.perform(d.scheduler.ipReleased(["127.0.0.20", "127.0.0.21"], on: 1, now: d.now))
        #expect(Set(d.assigned(2)) == ["127.0.0.20", "127.0.0.21"])
        #expect(d.scheduler.state(of: "node-a") == .drained)
        #expect(d.scheduler.membership.table.owner(of: "127.0.0.20") == "node-b")
        // Resuming makes it active again (it does not take the IPs back by itself).
        _ = try d.scheduler.resumeRequested("node-a")
        #expect(d.scheduler.state(of: "node-a") == .active)
        #expect(throws: AdminError.self) { try d.scheduler.drainRequested("node-x") }
    }

    @Test("a node lost mid-lease: its floating IPs move only once its last grant has expired (fencing)", arguments: StoreKind.allCases)
    func fencingAfterNodeLoss(kind: StoreKind) throws {
        let d = try twoNodes(kind)
        try d.enqueue(4)
        d.backedUp = ["node-b"]
        d.tick()
        d.backedUp = []
        let grants = d.granted[1] ?? []
        #expect(!grants.isEmpty)
        let lastExpiry = grants.map(\.expiresAt).max()!
        d.clock.advance(5)
        d.perform(d.scheduler.connectionClosed(1, reason: "reset", now: d.now))
        #expect(d.scheduler.state(of: "node-a") == .down)
        // lease_time 60 s: lastHeard (t0) + 60 and the grant's expiry (t0 + 60) — nothing moves before.
        while d.now.addingTimeInterval(5) < lastExpiry {
            d.clock.advance(5)
            d.tick()
            #expect(d.assigned(2).isEmpty, "moved \(lastExpiry.timeIntervalSince(d.now)) s before the fence")
        }
        d.clock.advance(lastExpiry.timeIntervalSince(d.now) - 0.001)
        d.tick()
        #expect(d.assigned(2).isEmpty, "moved 1 ms before the fence")
        d.clock.advance(0.001)
        d.tick()
        #expect(Set(d.assigned(2)) == ["127.0.0.20", "127.0.0.21"])
        #expect(d.scheduler.membership.table.owner(of: "127.0.0.10") == "node-a", "a fixed IP waits for its node")
        // The expired leases go back to the queue at the next sweep (at most a second later) and node-b delivers them.
        d.clock.advance(Scheduler.expirySweepInterval)
        d.tick()
        #expect(d.logs.contains { $0.message == "leases expired; recipients requeued" })
        #expect(d.nextTick == d.now, "requeued recipients ask for another pass at once")
        d.tick()
        #expect(Set((d.granted[2] ?? []).flatMap(\.recipientIDs)) == Set(grants.flatMap(\.recipientIDs)))
    }

    @Test("rebalance: the dry-run plan equals what apply does; the moves complete on release", arguments: StoreKind.allCases)
    func rebalancePlanEqualsApply(kind: StoreKind) throws {
        let d = try twoNodes(kind)
        d.join("node-c", 3, bindable: ["127.0.0.20", "127.0.0.21"])
        let plan = d.scheduler.membership.rebalancePlan()
        #expect(!plan.isEmpty)
        let (applied, directives) = d.scheduler.rebalanceRequested()
        #expect(applied == plan)
        d.perform(directives)
        for m in plan {
            if let from = m.from {
                #expect(d.revoked(from == "node-a" ? 1 : 2).contains(m.address))
                d.perform(d.scheduler.ipReleased([m.address], on: from == "node-a" ? 1 : 2, now: d.now))
            }
        }
        for m in plan { #expect(d.scheduler.membership.table.owner(of: m.address) == m.to) }
        #expect(d.scheduler.membership.rebalancePlan().isEmpty, "balanced: nothing more to move")
        let counts = ["node-a", "node-b", "node-c"].map { d.scheduler.membership.table.owned(by: $0).count }
        #expect(counts.max()! - counts.min()! <= 1, "\(counts)")
    }

    @Test("even spread: over 1 000 messages each IP of a pool gets its weight's share within ±15 %, per provider, at low and high load", arguments: StoreKind.allCases)
    func weightedSpread(kind: StoreKind) throws {
        let yaml = Self.yaml.replacingOccurrences(of: "{ address: 127.0.0.20, helo: f.test, pool: t, nodes: [node-a, node-b, node-c] }",
                                                  with: "{ address: 127.0.0.20, helo: f.test, pool: t, nodes: [node-a, node-b, node-c], weight: 2 }")
            .replacingOccurrences(of: "{ address: 127.0.0.21, helo: g.test, pool: t, nodes: [node-a, node-b, node-c] }",
                                  with: "{ address: 127.0.0.21, helo: g.test, pool: t, nodes: [node-a, node-b, node-c], weight: 4 }")
        let d = try SchedulerDriver(yaml: yaml, kind: kind)
        // Credits as a node asks for them: 2 IPs × 8 delivery workers × 2 leases each.
        d.join("node-a", 1, bindable: ["127.0.0.10", "127.0.0.20"], credits: 32)
        d.join("node-b", 2, bindable: ["127.0.0.11", "127.0.0.21"], credits: 32)
        // Weights 1 (.10), 1 (.11), 2 (.20), 4 (.21): shares 1/8, 1/8, 2/8, 4/8.
        var perIP: [String: Int] = [:]
        var perProvider: [String: [String: Int]] = [:]
        // Low load: one message at a time, each delivered before the next (the case that used
        // to pile onto the first IP); then bursts of 50.
        for i in 0..<1000 {
            try d.enqueue(1, domain: i % 3 == 0 ? "gmail.com" : "example.net")
            if i < 500 || i % 50 == 49 {
                d.tick()
                for c: ConnectionID in [1, 2] {
                    for l in d.granted[c] ?? [] { perIP[l.sendingIP, default: 0] += 1; perProvider[l.domain, default: [:]][l.sendingIP, default: 0] += 1 }
                    d.reportAll(c)
                }
            }
        }
        while perIP.values.reduce(0, +) < 1000 {
            d.tick()
            for c: ConnectionID in [1, 2] {
                for l in d.granted[c] ?? [] { perIP[l.sendingIP, default: 0] += 1; perProvider[l.domain, default: [:]][l.sendingIP, default: 0] += 1 }
                d.reportAll(c)
            }
        }
        let weights = ["127.0.0.10": 1.0, "127.0.0.11": 1.0, "127.0.0.20": 2.0, "127.0.0.21": 4.0]
        func check(_ counts: [String: Int], _ label: String) {
            let total = Double(counts.values.reduce(0, +))
            for (ip, w) in weights {
                let expected = total * w / 8
                let got = Double(counts[ip] ?? 0)
                #expect(abs(got - expected) <= 0.15 * expected, "\(label) \(ip): \(Int(got)) of \(Int(total)), expected \(Int(expected)) ± 15 %")
            }
        }
        print("spread per IP: \(perIP.sorted { $0.key < $1.key })")
        check(perIP, "all")
        check(perProvider["gmail.com"] ?? [:], "gmail")
        check(perProvider["example.net"] ?? [:], "example.net")
    }

    @Test("the IP table survives a coordinator restart: each IP waits for its owner to rejoin, then goes back to it; unclaimed IPs move after the reservation", arguments: StoreKind.allCases)
    func ownersRestored(kind: StoreKind) throws {
        let d = try twoNodes(kind)
        d.join("node-c", 3, bindable: ["127.0.0.20", "127.0.0.21"])
        d.perform(d.scheduler.rebalanceRequested().directives)
        for (c, from) in [(ConnectionID(1), "node-a"), (2, "node-b")] {
            let moving = d.scheduler.membership.table.entries.filter { $0.owner == from && $0.handoverTo != nil }.map(\.ip.address)
            if !moving.isEmpty { d.perform(d.scheduler.ipReleased(moving, on: c, now: d.now)) }
        }
        d.tick()
        let before = d.scheduler.membership.owners
        #expect(try d.store.ipOwners() == before, "stored after the pass")
        #expect(Set(before.values).count == 3, "\(before)")
        // A new coordinator process over the same queue: node-c and node-b come back first.
        var fresh = Scheduler(config: d.scheduler.config)
        fresh.restoreOwners(try d.store.ipOwners(), until: ["node-a": d.now + 30, "node-b": d.now + 30, "node-c": d.now + 30])
        d.scheduler = fresh
        d.sent = [:]
        d.join("node-c", 13, bindable: ["127.0.0.20", "127.0.0.21"])
        d.join("node-b", 12, bindable: ["127.0.0.11", "127.0.0.20", "127.0.0.21"])
        d.tick()
        #expect(d.scheduler.membership.owners.filter { $0.value == "node-a" }.isEmpty)
        #expect(d.scheduler.membership.owners.values.allSatisfy { $0 != "node-a" })
        for (ip, owner) in before where owner == "node-a" {
            #expect(d.scheduler.membership.table.owner(of: ip) == nil, "\(ip) waits for node-a")
        }
        d.clock.advance(5)
        d.join("node-a", 11, bindable: ["127.0.0.10", "127.0.0.20", "127.0.0.21"])
        d.tick()
        #expect(d.scheduler.membership.owners == before, "exactly the table from before the restart")
        #expect(d.scheduler.membership.rebalancePlan().isEmpty, "no rebalance needed")
        // Had node-a not come back, its floating IPs would have moved once its reservation ended.
        var lonely = Scheduler(config: d.scheduler.config)
        lonely.restoreOwners(before, until: ["node-a": d.now + 30])
        d.scheduler = lonely
        d.join("node-b", 22, bindable: ["127.0.0.11", "127.0.0.20", "127.0.0.21"])
        d.join("node-c", 23, bindable: ["127.0.0.20", "127.0.0.21"])
        d.tick()
        let floatingOfA = before.filter { $0.value == "node-a" && $0.key != "127.0.0.10" }.map(\.key)
        #expect(!floatingOfA.isEmpty, "node-a owned a floating IP: \(before)")
        for ip in floatingOfA { #expect(d.scheduler.membership.table.owner(of: ip) == nil) }
        d.clock.advance(31)
        d.tick()
        for ip in floatingOfA { #expect(d.scheduler.membership.table.owner(of: ip) != nil, "\(ip) moved after the reservation") }
    }

    @Test("pauses: a provider's mail waits while other mail flows; a paused IP and a paused pool take nothing; every waiting recipient says why", arguments: StoreKind.allCases)
    func pausesAndReasons(kind: StoreKind) throws {
        let d = try twoNodes(kind)
        let now = d.now
        d.perform(d.scheduler.paused(Pause(target: PauseTarget(kind: .provider, name: "gmail"), by: "ops", reason: "complaints", at: 0)))
        d.perform(d.scheduler.paused(Pause(target: PauseTarget(kind: .ip, name: "127.0.0.20"), by: "ops", reason: "", at: 0)))
        try d.enqueue(6, domain: "gmail.com")
        try d.enqueue(6, domain: "example.net")
        d.tick()
        let granted: [LeaseRecord] = (d.granted[1] ?? []) + (d.granted[2] ?? [])
        #expect(granted.count == 6 && granted.allSatisfy { $0.domain == "example.net" })
        #expect(!granted.contains { $0.sendingIP == "127.0.0.20" }, "a paused IP takes nothing")
        #expect(d.scheduler.waitReason(pool: "t", domain: "gmail.com", state: "queued", nextAttemptAt: now, now: now)
                == "paused: provider gmail (by ops: complaints)")
        #expect(d.scheduler.waitReason(pool: "t", domain: "x.test", state: "deferred", nextAttemptAt: now + 90, now: now)
                == "retry at \(Logger.timestamp(now + 90))")
        #expect(d.scheduler.waitReason(pool: "nope", domain: "x.test", state: "queued", nextAttemptAt: now, now: now) == "no sending IP in pool nope")
        let (was, directives) = d.scheduler.unpaused(PauseTarget(kind: .provider, name: "gmail"), by: "ops")
        #expect(was)
        d.perform(directives)
        d.tick()
        let afterResume: [LeaseRecord] = (d.granted[1] ?? []) + (d.granted[2] ?? [])
        #expect(afterResume.filter { $0.domain == "gmail.com" }.count == 6)
        d.perform(d.scheduler.paused(Pause(target: PauseTarget(kind: .pool, name: "t"), by: "ops", reason: "maintenance", at: 0)))
        try d.enqueue(3)
        func grantedCount() -> Int { (d.granted[1]?.count ?? 0) + (d.granted[2]?.count ?? 0) }
        let before = grantedCount()
        d.tick()
        #expect(grantedCount() == before)
        #expect(d.scheduler.waitReason(pool: "t", domain: "x.test", state: "queued", nextAttemptAt: now, now: d.now) == "paused: pool t (by ops: maintenance)")
        // A suspension of every IP for a provider is named with its expiry.
        _ = d.scheduler.unpaused(PauseTarget(kind: .pool, name: "t"), by: "ops")
        _ = d.scheduler.unpaused(PauseTarget(kind: .ip, name: "127.0.0.20"), by: "ops")
        for ip in ["127.0.0.10", "127.0.0.11", "127.0.0.20", "127.0.0.21"] {
            d.perform(d.scheduler.backoffReported(BackoffMessage(sendingIP: ip, provider: "mx:mx.y.test", domain: "y.test", action: "suspend",
                                                                 duration: 600, ratePerMinute: nil, reply: "421 4.7.0 slow down"), on: 1, now: d.now))
        }
        let reason = d.scheduler.waitReason(pool: "t", domain: "y.test", state: "queued", nextAttemptAt: d.now, now: d.now)
        #expect(reason.hasPrefix("suspended: other backoff on 127.0.0.10, 127.0.0.11, 127.0.0.20, 127.0.0.21 until \(Logger.timestamp(d.now + 600))"), "\(reason)")
        let lifted = d.scheduler.liftProvider("other", now: d.now)
        #expect(lifted.count == 4 && d.scheduler.backoffs.active(now: d.now).isEmpty)
    }

    @Test("a node whose connection is backed up gets no grant while the others do; results end leases, ack them and teach providers", arguments: StoreKind.allCases)
    func backedUpNodeAndResults(kind: StoreKind) throws {
        let d = try twoNodes(kind)
        d.backedUp = ["node-a"]
        try d.enqueue(6)
        d.tick()
        #expect((d.granted[1] ?? []).isEmpty)
        #expect((d.granted[2] ?? []).count == 6)
        #expect(d.scheduler.leases.count(node: "node-b") == 6)
        let leases = d.granted[2]!
        d.reportAll(2, mx: "alt1.gmail-smtp-in.l.google.com")
        #expect(d.scheduler.leases.count(node: "node-b") == 0)
        let acks = d.messages(2).compactMap { if case .resultAck(let a) = $0 { return a.leaseID } else { return nil } }
        #expect(Set(acks) == Set(leases.map(\.id)))
        #expect(d.scheduler.providerOfDomain["x.test"] == d.scheduler.config.shaping.group(forMXHost: "alt1.gmail-smtp-in.l.google.com").name)
    }

    @Test("planned leases the queue did not record give their credit and warm-up count back", arguments: StoreKind.allCases)
    func withdrawnGrants(kind: StoreKind) throws {
        let d = try twoNodes(kind)
        try d.enqueue(3)
        let credits = d.scheduler.leases.credits["node-a"]!
        let directives = try d.scheduler.tick(now: d.now, queue: d.store, canSend: { $0 == "node-a" })
        guard let grants = directives.lazy.compactMap({ if case .grant(let g) = $0 { return g } else { return nil } }).first else {
            Issue.record("no grant"); return
        }
        #expect(d.scheduler.leases.credits["node-a"] == credits - 3)
        d.scheduler.grantsFailed(grants)
        #expect(d.scheduler.leases.credits["node-a"] == credits)
        #expect(d.scheduler.leases.count(node: "node-a") == 0)
        #expect(d.scheduler.warmupUsed.values.reduce(0, +) == 0)
    }

    @Test("after an unclean host restart no lease is granted before the hold ends", arguments: StoreKind.allCases)
    func leaseHold(kind: StoreKind) throws {
        let d = try twoNodes(kind)
        d.scheduler.holdLeases(until: d.now.addingTimeInterval(30))
        try d.enqueue(2)
        d.tick()
        #expect(d.granted.values.allSatisfy { $0.isEmpty })
        #expect(d.logs.contains { $0.message.hasPrefix("restarted after an unclean stop on a new boot, or after a failed sync of the queue") })
        d.clock.advance(31)
        d.tick()
        #expect(d.granted.values.map(\.count).reduce(0, +) == 2)
        #expect(d.logs.contains { $0.message == "lease hold over; leasing resumes" })
    }
}
