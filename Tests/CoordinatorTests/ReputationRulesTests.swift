import Foundation
import Testing
@testable import ClusterProtocol
@testable import HatoConfig
@testable import HatoCoordinator
@testable import HatoDelivery
@testable import HatoSupport
@testable import SMTPCore

extension SchedulerDriver {
    /// The node on `connection` reports every lease granted so far: `outcome` decides each
    /// recipient's reply; the MX host is `mx.<domain>` (Google's for gmail.com). Results are applied, then committed
    /// to the reputation signals, as `ClusterHub` does.
    func report(_ connection: ConnectionID, outcome: (LeaseRecord) -> (RecipientResult.Status, DeliveryStatus)) {
        let leases = granted[connection] ?? []
        granted[connection] = []
        guard !leases.isEmpty else { return }
        let results = leases.map { l in
            let (status, reply) = outcome(l)
            return ResultMessage(leaseID: l.id, instanceID: "i1", sendingIP: l.sendingIP, mxHost: l.domain == "gmail.com" ? "gmail-smtp-in.l.google.com" : "mx." + l.domain, remoteAddress: "127.0.0.1",
                                 outcomes: l.recipientIDs.map { RecipientResult(recipientID: $0, status: status, reply: reply) },
                                 finishedAt: now.timeIntervalSince1970)
        }
        _ = try! store.applyResults(results.map { ($0, "n") }, retry: RetryPolicy(schedule: [60], maxAge: 86_400), now: now)
        perform(scheduler.resultsApplied(results.map { (leaseID: $0.leaseID, connection: connection, mxHost: $0.mxHost) }, now: now))
        perform(scheduler.resultsCommitted(results, now: now))
        perform(scheduler.leaseRequested(leases.count, on: connection, now: now))
    }
}

@Suite("Reputation signals, rules, per-provider warm-up caps and the re-warm ramp (manual clock)")
struct ReputationRulesTests {
    static let t0 = Date(timeIntervalSince1970: 1_800_000_000)
    static let spam = DeliveryStatus(code: 550, enhanced: "5.7.1", text: "Message rejected as spam")
    static let ok = DeliveryStatus(code: 250, enhanced: nil, text: "ok")

    // MARK: Pure values

    @Test("signals count per pair in one-minute buckets, over a rolling window; reset and prune forget")
    func signalsWindow() {
        var s = ReputationSignals(history: 3600)
        let t = Self.t0
        for i in 0..<10 { s.record(.delivered, ip: "a", provider: "p", at: t.addingTimeInterval(Double(i) * 60)) }
        s.record(.bounced(.spamRelated), ip: "a", provider: "p", at: t.addingTimeInterval(300))
        s.record(.deferred(.rateLimited), ip: "a", provider: "p", at: t.addingTimeInterval(300))
        s.record(.complaint, ip: "a", provider: "p", at: t.addingTimeInterval(300))
        s.record(.delivered, ip: "a", provider: "q", at: t)
        s.record(.delivered, ip: "b", provider: "p", at: t)
        let now = t.addingTimeInterval(600)
        let c = s.counts(ip: "a", provider: "p", window: 3600, now: now)
        #expect(c.delivered == 10 && c.bounced == 1 && c.deferred == 1 && c.complaints == 1 && c.attempts == 12)
        #expect(c.bouncedBy == ["spam-related": 1] && c.deferredBy == ["rate-limited": 1])
        #expect(c.value(of: .categoryBounces("spam-related")) == 1 && c.value(of: .categoryBounces("bad-mailbox")) == 0)
        // The last 3 minutes: buckets at +7, +8, +9 minutes (and the one overlapping the edge).
        #expect(s.counts(ip: "a", provider: "p", window: 180, now: now).delivered == 3)
        #expect(s.counts(ip: "a", provider: "q", window: 3600, now: now).attempts == 1)
        s.reset(ip: "a", provider: "p")
        #expect(s.counts(ip: "a", provider: "p", window: 3600, now: now).attempts == 0)
        #expect(s.counts(ip: "b", provider: "p", window: 3600, now: now).attempts == 1)
        s.prune(now: t.addingTimeInterval(3 * 3600))
        #expect(s.pairs.isEmpty)
    }

    @Test("a rule fires only above its share and with its minimum volume; the first matching rule acts, with its figures")
    func ruleEvaluation() throws {
        let rules = [ReputationRule(signal: .categoryBounces("spam-related"), above: 0.02, minVolume: 100, window: 3600, action: .pause, duration: 7200),
                     ReputationRule(signal: .deferrals, above: 0.5, minVolume: 10, window: 600, action: .throttle, ratePerMinute: 5, duration: 600)]
        var s = ReputationSignals(history: 3600)
        let t = Self.t0
        for _ in 0..<97 { s.record(.delivered, ip: "a", provider: "p", at: t) }
        for _ in 0..<2 { s.record(.bounced(.spamRelated), ip: "a", provider: "p", at: t) }
        #expect(s.evaluate(rules, ip: "a", provider: "p", now: t) == nil, "99 attempts: below min_volume 100")
        s.record(.delivered, ip: "a", provider: "p", at: t)
        #expect(s.evaluate(rules, ip: "a", provider: "p", now: t) == nil, "2 of 100 = 2%: not above 2%")
        s.record(.bounced(.spamRelated), ip: "a", provider: "p", at: t)
        let f = try #require(s.evaluate(rules, ip: "a", provider: "p", now: t))
        #expect(f.ruleNumber == 1 && f.count == 3 && f.attempts == 101)
        #expect(f.reason == "reputation rule 1 (spam_bounces > 2% of ≥100 attempts in 1h → pause 2h): 3 spam_bounces in 101 attempts (3.0%)")
        // Two hours later the window is empty; ten deferrals out of twelve fire rule 2.
        let later = t.addingTimeInterval(7200)
        for _ in 0..<10 { s.record(.deferred(.routing), ip: "a", provider: "p", at: later) }
        for _ in 0..<2 { s.record(.delivered, ip: "a", provider: "p", at: later) }
        let g = try #require(s.evaluate(rules, ip: "a", provider: "p", now: later))
        #expect(g.ruleNumber == 2 && g.count == 10 && g.attempts == 12)
    }

    @Test("the re-warm ramp rises linearly from its start share to the full cap, then ends")
    func rewarmRamp() {
        let r = RewarmSettings(start: 0.25, over: 4 * 86_400)
        let t = Self.t0
        #expect(RewarmRamp.cap(full: 1000, since: t, now: t, settings: r) == 250)
        #expect(RewarmRamp.cap(full: 1000, since: t, now: t.addingTimeInterval(2 * 86_400), settings: r) == 625)
        #expect(RewarmRamp.cap(full: 1000, since: t, now: t.addingTimeInterval(4 * 86_400), settings: r) == nil)
        #expect(RewarmRamp.cap(full: 1, since: t, now: t, settings: r) == 1)
    }

    @Test("outcomes take their category from the bounce classifier")
    func outcomes() {
        #expect(SignalOutcome(RecipientResult(recipientID: 1, status: .failed, reply: Self.spam)) == .bounced(.spamRelated))
        #expect(SignalOutcome(RecipientResult(recipientID: 1, status: .delivered, reply: Self.ok)) == .delivered)
        #expect(SignalOutcome(RecipientResult(recipientID: 1, status: .deferred,
                                              reply: DeliveryStatus(code: 450, enhanced: "4.2.2", text: "mailbox full"))).kind == "deferred:mailbox-full")
        // Every category has a signal name in cluster.yml.
        for c in BounceCategory.allCases where c != .admin {
            #expect(ReputationRule.Signal.categoryNames.values.contains(c.rawValue), "\(c)")
        }
    }

    // MARK: Configuration

    static let base = """
        cluster: { name: t, secret: "0123456789abcdef0123" }
        coordinator: { listen: 127.0.0.1:7601, admin_listen: 127.0.0.1:7680, admin_token: tok, data_dir: /tmp/x }
        smtp: { listen: [127.0.0.1:2525], hostname: relay.test }
        nodes: [ { id: n1, data_dir: /tmp/n1 } ]
        pools: [ { name: t } ]
        ips: [ { address: 127.0.0.10, helo: a.test, pool: t } ]
        routing: { default_pool: t }

        """

    @Test("reputation.rules, reputation.rewarm and warmup[].providers decode; bad values name file, line and key")
    func config() throws {
        let c = try ClusterConfig.parse(Self.base + """
            warmup:
              - { name: w, daily: [200, 400], providers: { gmail: [50, 100], Microsoft: 80 } }
            reputation:
              rules:
                - { signal: spam_bounces, above: 2%, min_volume: 500, window: 1h, action: pause, duration: 2h }
                - { signal: policy_deferrals, above: 0.5%, action: throttle, rate: 10/min, duration: 30m }
              rewarm: { start: 25%, over: 3d, daily: 5000 }
            """, path: "/etc/hato/cluster.yml")
        #expect(c.warmup[0].providers == ["gmail": [50, 100], "microsoft": [80]])
        #expect(c.reputation.rules == [
            ReputationRule(signal: .categoryBounces("spam-related"), above: 0.02, minVolume: 500, window: 3600, action: .pause, duration: 7200),
            ReputationRule(signal: .categoryDeferrals("policy-related"), above: 0.005, minVolume: 100, window: 3600, action: .throttle,
                           ratePerMinute: 10, duration: 1800),
        ])
        #expect(c.reputation.rewarm == RewarmSettings(start: 0.25, over: 3 * 86_400, daily: 5000))
        #expect(c.reputation.rules[0].summary == "spam_bounces > 2% of ≥500 attempts in 1h → pause 2h")
        // Rules and the ramp apply on reload, without a restart.
        let reload = ConfigReload(from: try ClusterConfig.parse(Self.base, path: "/etc/hato/cluster.yml"), to: c)
        #expect(reload.liveKeys.contains("reputation.rules") && reload.liveKeys.contains("reputation.rewarm") && reload.restartRequired.isEmpty)
        let bad: [(String, String, Int)] = [
            ("reputation: { rules: [ { signal: spammy, above: 2%, action: pause, duration: 1h } ] }", "reputation.rules[0].signal", 8),
            ("reputation: { rules: [ { signal: bounces, above: 2, action: pause, duration: 1h } ] }", "reputation.rules[0].above", 8),
            ("reputation:\n  rules:\n    - { signal: bounces, above: 2%, action: throttle, duration: 1h }", "reputation.rules[0].rate", 10),
            ("reputation: { rules: [ { signal: bounces, above: 2%, action: stop, duration: 1h } ] }", "reputation.rules[0].action", 8),
            ("reputation: { rewarm: { start: 0% } }", "reputation.rewarm.start", 8),
            ("warmup: [ { name: w, daily: [10], providers: { gmail: [x] } } ]", "warmup[0].providers.gmail[0]", 8),
        ]
        for (yaml, key, line) in bad {
            #expect {
                _ = try ClusterConfig.parse(Self.base + yaml, path: "/etc/hato/cluster.yml")
            } throws: { e in
                guard let e = e as? ConfigError else { return false }
                return e.key == key && e.file == "/etc/hato/cluster.yml" && e.line == line
            }
        }
    }

    // MARK: The scheduler with a real store

    static let yaml = """
        cluster: { name: t, secret: "0123456789abcdef0123" }
        coordinator: { listen: 127.0.0.1:7601, admin_listen: 127.0.0.1:7680, admin_token: tok, data_dir: DATA_DIR/c, lease_time: 60s, node_timeout: 10s, heartbeat_interval: 2s }
        smtp: { listen: [127.0.0.1:2525], hostname: relay.test }
        nodes: [ { id: node-a, data_dir: DATA_DIR/a }, { id: node-b, data_dir: DATA_DIR/b } ]
        pools: [ { name: t } ]
        ips:
          - { address: 127.0.0.10, helo: a.test, pool: t, nodes: [node-a] }
          - { address: 127.0.0.11, helo: b.test, pool: t, nodes: [node-b] }
        routing: { default_pool: t }
        delivery: { connections_per_ip: 50 }
        reputation:
          rules:
            - { signal: spam_bounces, above: 2%, min_volume: 50, window: 1h, action: pause, duration: 2h }

        """

    @Test("spam bounces from one IP at one provider pause that pair only; lift undoes it without re-firing on the old figures; a new leader starts from the stored counts",
          arguments: StoreKind.allCases)
    func ruleFiresForOnePair(kind: StoreKind) throws {
        let d = try SchedulerDriver(yaml: Self.yaml, start: Self.t0, kind: kind)
        d.join("node-a", 1, bindable: ["127.0.0.10"], credits: 20)
        d.join("node-b", 2, bindable: ["127.0.0.11"], credits: 20)
        // x.test answers 550 5.7.1 spam to every 10th delivery from 127.0.0.10; y.test accepts everything.
        var fromA = 0
        let outcome: (LeaseRecord) -> (RecipientResult.Status, DeliveryStatus) = { l in
            guard l.sendingIP == "127.0.0.10", l.domain == "x.test" else { return (.delivered, Self.ok) }
            fromA += 1
            return fromA % 10 == 0 ? (.failed, Self.spam) : (.delivered, Self.ok)
        }
        var sent: [String: Int] = [:]   // "ip domain" → recipients leased
        var firedAfter: Int?
        var firedAt: Date?
        func round() {
            d.tick()
            for c: ConnectionID in [1, 2] {
                for l in d.granted[c] ?? [] { sent["\(l.sendingIP) \(l.domain)", default: 0] += l.recipientIDs.count }
                d.report(c, outcome: outcome)
            }
            if firedAfter == nil, d.backoffEvents.contains(where: { if case .started = $0 { return true } else { return false } }) {
                firedAfter = sent["127.0.0.10 x.test", default: 0]
                firedAt = d.now
            }
            d.clock.advance(1)
        }
        try d.enqueue(400, domain: "x.test")
        try d.enqueue(200, domain: "y.test")
        for _ in 0..<80 { round() }
        let pair = (ip: "127.0.0.10", provider: "mx:mx.x.test")
        let fired = try #require(firedAfter, "the rule never fired: \(sent)")
        // Min volume 50 with one spam bounce per 10; results arrive 20 per round from each
        // node, so the rule is evaluated at 20, 40, 60 attempts and fires at 60 (6 bounces, 10% > 2%).
        #expect(fired == 60, "deliveries from the pair until the rule fired")
        let entry = try #require(d.scheduler.backoffs.entry(ip: pair.ip, provider: pair.provider))
        #expect(entry.action == .suspend && entry.until == firedAt!.timeIntervalSince1970 + 7200)
        #expect(entry.reason.hasPrefix("reputation rule 1 (spam_bounces > 2% of ≥50 attempts in 1h → pause 2h): 6 spam_bounces in 60 attempts (10.0%)"))
        #expect(try d.store.activeBackoffs(now: d.now).contains { $0.sendingIP == pair.ip && $0.provider == pair.provider })
        // After the pause: nothing more from the pair; the other IP took x.test, the paused IP kept y.test.
        #expect(sent["127.0.0.10 x.test"] == fired, "deliveries from the paused pair after the pause: \(sent["127.0.0.10 x.test", default: 0] - fired)")
        #expect(sent["127.0.0.11 x.test", default: 0] == 400 - fired)
        #expect(sent["127.0.0.10 y.test", default: 0] > 0 && sent["127.0.0.10 y.test", default: 0] + sent["127.0.0.11 y.test", default: 0] == 200)
        // Visible per pair with the rule action.
        let view = try #require(d.scheduler.pairSignals(now: d.now).first { $0.ip == pair.ip && $0.provider == pair.provider })
        #expect(view.attempts == 60 && view.counts.bouncedBy["spam-related"] == 6 && view.ruleAction?.hasPrefix("pause: reputation rule 1") == true)

        // A new leader (restart or takeover) starts from the stored counts (written once a second).
        d.clock.advance(1)
        d.tick()
        let stored = try d.store.reputationCounts(since: 0)
        let fresh = Scheduler(config: d.scheduler.config, backoffs: try d.store.activeBackoffs(now: d.now), signals: stored)
        #expect(fresh.signals.counts(ip: pair.ip, provider: pair.provider, window: 3600, now: d.now)
                == d.scheduler.signals.counts(ip: pair.ip, provider: pair.provider, window: 3600, now: d.now))
        #expect(fresh.backoffs.isActive(ip: pair.ip, provider: pair.provider, now: d.now))

        // Lift (as ClusterHub.liftBackoff does): the pair sends again and the old figures are gone.
        try d.store.deleteBackoff(ip: pair.ip, provider: pair.provider)
        try d.store.deleteReputationCounts(ip: pair.ip, provider: pair.provider)
        let wasActive = d.scheduler.liftRequested(ip: pair.ip, provider: pair.provider)
        #expect(wasActive)
        #expect(try d.store.reputationCounts(since: 0).allSatisfy { !($0.ip == pair.ip && $0.provider == pair.provider) })
        let before = sent["127.0.0.10 x.test", default: 0]
        try d.enqueue(40, domain: "x.test")
        fromA = 1   // no spam bounce among the next deliveries
        let eventsBefore = d.backoffEvents.count
        for _ in 0..<10 { round() }
        #expect(sent["127.0.0.10 x.test", default: 0] > before, "the lifted pair delivers again")
        #expect(d.backoffEvents.count == eventsBefore, "no re-firing on the old figures")
    }

    @Test("complaints count against their pair and fire a complaints rule; a pair already paused is not evaluated again")
    func complaints() throws {
        let yaml = Self.yaml.replacingOccurrences(of: "- { signal: spam_bounces, above: 2%, min_volume: 50, window: 1h, action: pause, duration: 2h }",
                                                  with: "- { signal: complaints, above: 1%, min_volume: 100, window: 1d, action: throttle, rate: 5/min, duration: 1h }")
        let d = try SchedulerDriver(yaml: yaml, start: Self.t0, kind: .sqlite)
        d.join("node-a", 1, bindable: ["127.0.0.10"], credits: 200)
        try d.enqueue(150, domain: "x.test")
        for _ in 0..<2 {   // at most 100 leases in flight per IP: two rounds
            d.tick()
            d.report(1) { _ in (.delivered, Self.ok) }
        }
        let provider = "mx:mx.x.test"
        #expect(d.scheduler.signals.counts(ip: "127.0.0.10", provider: provider, window: 86_400, now: d.now).delivered == 150)
        d.perform(d.scheduler.complaintRecorded(ip: "127.0.0.10", provider: provider, at: d.now, now: d.now))
        #expect(d.backoffEvents.isEmpty, "1 of 150 is not above 1%")
        d.perform(d.scheduler.complaintRecorded(ip: "127.0.0.10", provider: provider, at: d.now, now: d.now))
        let e = try #require(d.scheduler.backoffs.entry(ip: "127.0.0.10", provider: provider))
        #expect(e.action == .throttle && e.ratePerMinute == 5)
        #expect(e.reason == "reputation rule 1 (complaints > 1% of ≥100 attempts in 1d → throttle 5/min 1h): 2 complaints in 150 attempts (1.3%)")
        #expect(try d.store.reputationCounts(since: 0).filter { $0.kind == "complaint" }.map(\.count).reduce(0, +) == 2)
        d.perform(d.scheduler.complaintRecorded(ip: "127.0.0.10", provider: provider, at: d.now, now: d.now))
        #expect(d.backoffEvents.count == 1, "one event per action")
        // When the action runs out, the pair's figures start afresh (no immediate re-firing).
        d.clock.advance(3601)
        d.tick()
        #expect(d.backoffEvents.count == 2 && d.scheduler.signals.counts(ip: "127.0.0.10", provider: provider, window: 86_400, now: d.now).attempts == 0)
        #expect(try d.store.reputationCounts(since: 0).isEmpty)
    }

    @Test("a per-provider warm-up cap holds one IP's mail to that provider, counted with what the store already holds (other coordinators' leases)",
          arguments: StoreKind.allCases)
    func providerCap(kind: StoreKind) throws {
        let day = Queue.utcDay(Self.t0)
        let iso = RFC5322Date.isoDate(daysSince1970: day)
        let yaml = Self.yaml
            .replacingOccurrences(of: "{ address: 127.0.0.10, helo: a.test, pool: t, nodes: [node-a] }",
                                  with: "{ address: 127.0.0.10, helo: a.test, pool: t, nodes: [node-a], warmup: { plan: w, start: \(iso) } }")
            + "warmup:\n  - { name: w, daily: [30], providers: { gmail: [8] } }\n"
        let d = try SchedulerDriver(yaml: yaml, start: Self.t0, kind: kind)
        // 3 gmail recipients were leased today already (another leader's term).
        try d.store.addDailyProviderAttempts(["127.0.0.10": ["gmail": 3]], day: day)
        #expect(try d.store.dailyProviderAttempts(day: day) == ["127.0.0.10": ["gmail": 3]])
        d.join("node-a", 1, bindable: ["127.0.0.10"], credits: 50)
        try d.enqueue(20, domain: "gmail.com")
        try d.enqueue(20, domain: "y.test")
        var sent: [String: Int] = [:]
        for _ in 0..<20 {
            d.tick()
            for l in d.granted[1] ?? [] { sent[l.domain, default: 0] += l.recipientIDs.count }
            d.report(1) { _ in (.delivered, Self.ok) }
            d.clock.advance(1)
        }
        #expect(sent["gmail.com"] == 5, "8 per day minus the 3 already counted")
        #expect(sent["y.test"] == 20)
        let gmail = try #require(d.scheduler.warmupProviderStatus("127.0.0.10", now: d.now)["gmail"])
        #expect(gmail.cap == 8 && gmail.used == 8)
        #expect(d.scheduler.waitReason(pool: "t", domain: "gmail.com", state: "queued", nextAttemptAt: nil, now: d.now)
                == "warm-up cap for provider gmail of 127.0.0.10 reached until 00:00 UTC")
        // The next UTC day: the plan is over, no cap.
        d.clock.advance(86_400)
        for _ in 0..<5 {
            d.tick()
            for l in d.granted[1] ?? [] { sent[l.domain, default: 0] += l.recipientIDs.count }
            d.report(1) { _ in (.delivered, Self.ok) }
            d.clock.advance(1)
        }
        #expect(sent["gmail.com"] == 20)
    }

    @Test("after a delisting an IP resumes at the ramp's share of its daily cap, rising to the full cap, then unramped",
          arguments: [StoreKind.sqlite])
    func rewarmAfterDelisting(kind: StoreKind) throws {
        let yaml = Self.yaml + "  rewarm: { start: 25%, over: 4d, daily: 40 }\n"
        let d = try SchedulerDriver(yaml: yaml, start: Self.t0, kind: kind)
        d.join("node-a", 1, bindable: ["127.0.0.10"], credits: 100)
        d.perform(d.scheduler.blocklistChanged(ip: "127.0.0.10", holdReason: "listed on bl.test (127.0.0.2)", now: d.now))
        #expect(d.scheduler.dailyCap(for: "127.0.0.10", now: d.now) == nil)
        d.perform(d.scheduler.blocklistChanged(ip: "127.0.0.10", holdReason: nil, now: d.now))
        #expect(d.scheduler.dailyCap(for: "127.0.0.10", now: d.now) == 10)
        #expect(d.scheduler.dailyCap(for: "127.0.0.10", now: d.now.addingTimeInterval(2 * 86_400)) == 25)
        #expect(d.scheduler.dailyCap(for: "127.0.0.10", now: d.now.addingTimeInterval(4 * 86_400)) == nil)
        try d.enqueue(30, domain: "y.test")
        var leased = 0
        for _ in 0..<10 {
            d.tick()
            leased += (d.granted[1] ?? []).reduce(0) { $0 + $1.recipientIDs.count }
            d.report(1) { _ in (.delivered, Self.ok) }
            d.clock.advance(1)
        }
        #expect(leased == 10, "25% of 40 on the day it resumed")
        let status = try #require(d.scheduler.warmupStatus("127.0.0.10", now: d.now))
        #expect(status.day == 0 && status.cap == 10 && status.used == 10)
    }
}
