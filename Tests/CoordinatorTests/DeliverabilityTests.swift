import Foundation
import Testing
@testable import ClusterProtocol
@testable import HatoConfig
@testable import HatoCoordinator
@testable import SMTPCore

@Suite("Deliverability: routing, warm-up, backoff")
struct DeliverabilityTests {
    static let yaml = """
        cluster: { name: t, secret: "0123456789abcdef0123" }
        coordinator: { listen: 127.0.0.1:7601, admin_listen: 127.0.0.1:7680, admin_token: tok, data_dir: /tmp/x }
        smtp: { listen: [127.0.0.1:2525], hostname: relay.test }
        nodes: [ { id: node-a, data_dir: /tmp/a } ]
        pools: [ { name: transactional }, { name: bulk } ]
        warmup:
          - { name: standard, daily: [50, 100, 200] }
        ips:
          - { address: 127.0.0.10, helo: a.test, pool: transactional, warmup: { plan: standard, start: 2026-12-01 } }
          - { address: 127.0.0.11, helo: b.test, pool: transactional }
          - { address: 127.0.0.12, helo: c.test, pool: bulk }
        routing:
          default_pool: transactional
          rules:
            - { header: X-Hato-Pool }
            - { auth_user: newsletter, pool: bulk }
            - { sender_domain: "*.news.example", pool: bulk }
        backoff:
          rules:
            - { match: "quota exceeded", action: throttle, duration: 10m, rate: 5/min }
        """

    func config() throws -> ClusterConfig { try ClusterConfig.parse(Self.yaml, path: "/tmp/cluster.yml") }

    @Test("routing rules: header (removed, folded lines too), authenticated user, sender domain wildcard, default")
    func routing() throws {
        let c = try config()
        let router = PoolRouter(routing: c.routing, pools: c.pools)
        let msg = Array("From: a@b.test\r\nX-Hato-Pool: bulk\r\nSubject: hi\r\n\r\nbody\r\n".utf8)
        let d = try router.route(authUser: nil, reversePath: "a@b.test", content: msg)
        #expect(d.pool == "bulk")
        #expect(d.content == Array("From: a@b.test\r\nSubject: hi\r\n\r\nbody\r\n".utf8))
        let folded = Array("x-hato-pool:\r\n bulk\r\nSubject: s\r\n\r\nX-Hato-Pool: in the body stays\r\n".utf8)
        let f = try router.route(authUser: nil, reversePath: "", content: folded)
        #expect(f.pool == "bulk")
        #expect(f.content == Array("Subject: s\r\n\r\nX-Hato-Pool: in the body stays\r\n".utf8))
        // Nothing to remove: the content as it came (issue 19: returned without a copy).
        let plain = Array("From: a@b.test\r\nSubject: hi\r\n \tfolded\r\n\r\nX-Hato-Pool: bulk\r\n".utf8)
        let p = try router.route(authUser: nil, reversePath: "a@x.test", content: plain)
        #expect(p.content == plain && p.pool == "transactional")
        // A header section with no body: the field removed, the lines around it kept.
        let headerOnly = Array("Subject: s\r\nX-Hato-Pool: bulk\r\nTo: t@x.test\r\n".utf8)
        let h = try router.route(authUser: nil, reversePath: "", content: headerOnly)
        #expect(h.pool == "bulk" && h.content == Array("Subject: s\r\nTo: t@x.test\r\n".utf8))
        // An unknown pool in the header is refused (550 5.7.1), never the default pool in silence.
        #expect(throws: PoolRouter.UnknownPool(header: "X-Hato-Pool", pool: "nope")) {
            try router.route(authUser: nil, reversePath: "a@x.test", content: Array("X-Hato-Pool: nope\r\n\r\nb\r\n".utf8))
        }
        #expect(PoolRouter.UnknownPool(header: "X-Hato-Pool", pool: "nope").reply.encoded() == Array("550 5.7.1 unknown pool \"nope\" in X-Hato-Pool\r\n".utf8))
        #expect(try router.route(authUser: "newsletter", reversePath: "a@x.test", content: []).pool == "bulk")
        #expect(try router.route(authUser: "other", reversePath: "a@mail.news.example", content: []).pool == "bulk")
        #expect(try router.route(authUser: "other", reversePath: "a@news.example", content: []).pool == "transactional")
    }

    @Test("config: warm-up caps by UTC day, unknown plan and bad rules are errors naming line and key")
    func warmupConfig() throws {
        let c = try config()
        let day1 = Date(timeIntervalSince1970: 1_796_083_200) // 2026-12-01T00:00:00Z
        #expect(c.warmupCap(for: "127.0.0.10", now: day1.addingTimeInterval(3600))! == (1, 50))
        #expect(c.warmupCap(for: "127.0.0.10", now: day1.addingTimeInterval(86400 * 2 + 5))! == (3, 200))
        #expect(c.warmupCap(for: "127.0.0.10", now: day1.addingTimeInterval(86400 * 3)) == nil, "warmed after the last day")
        #expect(c.warmupCap(for: "127.0.0.10", now: day1.addingTimeInterval(-10))! == (0, 0), "before the start: nothing")
        #expect(c.warmupCap(for: "127.0.0.11", now: day1) == nil)
        #expect(throws: ConfigError.self) { try ClusterConfig.parse(Self.yaml.replacingOccurrences(of: "plan: standard", with: "plan: fast"), path: "c.yml") }
        do {
            _ = try ClusterConfig.parse(Self.yaml.replacingOccurrences(of: "rate: 5/min", with: "rate: fast"), path: "c.yml")
            Issue.record("bad rate accepted")
        } catch let e as ConfigError {
            #expect(e.line == 20 && e.key == "backoff.rules[0].rate", "\(e)")
        }
        #expect(throws: ConfigError.self) { try ClusterConfig.parse(Self.yaml.replacingOccurrences(of: "{ auth_user: newsletter, pool: bulk }", with: "{ auth_user: newsletter, pool: nosuch }"), path: "c.yml") }
    }

    @Test("warm-up budgets: a capped IP never takes more than its budget; overflow goes to the warmed IP; none → the group waits")
    func warmupBudgets() {
        let ips = [AssignedIP(address: "10", helo: "a", pool: "t"), AssignedIP(address: "11", helo: "b", pool: "t")]
        let groups = (0..<10).map { i in
            DeliveryGroup(messageID: "M\(i)", domain: "x.test", pool: "t", reversePath: "", recipients: [DueRecipient(id: Int64(i), messageID: "M\(i)", address: "u@x.test", domain: "x.test", pool: "t", reversePath: "")])
        }
        var inFlight: [String: Int] = [:]
        var budget = ["10": 3]
        let plan = LeasePlanner.assign(groups, ips: ips, inFlight: &inFlight, limit: 100, budget: &budget) { _, _ in true }
        #expect(plan.filter { $0.1.address == "10" }.count == 3)
        #expect(plan.filter { $0.1.address == "11" }.count == 7)
        #expect(budget["10"] == 0)
        var inFlight2: [String: Int] = [:]
        var budget2 = ["10": 2]
        let onlyWarming = LeasePlanner.assign(groups, ips: [ips[0]], inFlight: &inFlight2, limit: 100, budget: &budget2) { _, _ in true }
        #expect(onlyWarming.count == 2, "the rest waits")
    }

    @Test("backoff table: a suspension blocks only its pair until it expires; a throttle admits its rate per minute; lift ends it")
    func backoffTable() {
        var t = BackoffTable()
        let t0 = Date(timeIntervalSince1970: 1000)
        t.apply(ip: "10", provider: "gmail", action: .suspend, duration: 60, ratePerMinute: nil, reason: "421 4.7.0 try again later", now: t0)
        let r1 = t.admit(ip: "10", provider: "gmail", now: t0 + 1)
        #expect(!r1)
        let r2 = t.admit(ip: "11", provider: "gmail", now: t0 + 1)
        #expect(r2)
        let r3 = t.admit(ip: "10", provider: "outlook", now: t0 + 1)
        #expect(r3)
        #expect(t.active(now: t0 + 59).count == 1)
        let r4 = t.admit(ip: "10", provider: "gmail", now: t0 + 60)
        #expect(r4)
        #expect(t.active(now: t0 + 60).isEmpty)
        t.apply(ip: "10", provider: "yahoo", action: .throttle, duration: 600, ratePerMinute: 2, reason: "rate", now: t0)
        let r5 = t.admit(ip: "10", provider: "yahoo", now: t0 + 1)
        #expect(r5)
        let r6 = t.admit(ip: "10", provider: "yahoo", now: t0 + 2)
        #expect(r6)
        let r7 = t.admit(ip: "10", provider: "yahoo", now: t0 + 3)
        #expect(!r7)
        let r8 = t.admit(ip: "10", provider: "yahoo", now: t0 + 62)
        #expect(r8, "a new minute")
        let r9 = t.lift(ip: "10", provider: "yahoo")
        #expect(r9)
        let r10 = t.lift(ip: "10", provider: "yahoo")
        #expect(!r10)
    }

    @Test("default backoff rules follow what each provider's reply means: one mailbox defers only that recipient; IP-level replies slow the pair", arguments: [
        // Gmail (support.google.com/a/answer/3726730).
        (450, "4.2.1", "The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered. Please resend your message at a later time.", BackoffRule.Action.none, 0.0),
        (450, "4.2.1", "The user you are trying to contact is receiving mail too quickly. Please resend your message at a later time.", .none, 0),
        (421, "4.7.28", "Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited.", .suspend, 3600),
        (421, "4.7.0", "Try again later, closing connection. (EHLO)", .suspend, 900),
        // Microsoft (learn.microsoft.com, Exchange Online NDRs 4.7.650-4.7.652).
        (451, "4.7.650", "The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation.", .throttle, 1800),
        (451, "4.7.651", "The mail server [192.0.2.1] has been temporarily rate limited.", .throttle, 1800),
        // Yahoo/AOL (senders.yahooinc.com/smtp-error-codes).
        (421, "4.7.0", "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes", .suspend, 3600),
        (421, "4.7.0", "[TSS09] All messages from 192.0.2.1 will be permanently deferred; Retrying will NOT succeed. See https://postmaster.yahooinc.com/error-codes", .suspend, 14_400),
        // Apple iCloud, GMX.
        (421, "4.7.1", "Too many concurrent SMTP connections; please try again later.", .throttle, 900),
        (421, "", "gmx.net (mxgmx116) Nemesis ESMTP Service not available. Too many connections from your IP", .throttle, 900),
    ])
    func defaultRules(code: Int, enhanced: String, text: String, action: BackoffRule.Action, duration: Double) {
        let m = BackoffMatcher(settings: BackoffSettings())
        let rule = m.match(DeliveryStatus(code: code, enhanced: enhanced.isEmpty ? nil : enhanced, text: text), provider: "gmail")
        #expect(rule?.action == action, "\(code) \(enhanced) \(text)")
        #expect(rule?.duration == duration)
    }

    @Test("mailbox-level replies never slow a sending IP")
    func mailboxReplies() {
        let m = BackoffMatcher(settings: BackoffSettings())
        for (code, enhanced, text) in [(452, "4.2.2", "The email account that you tried to reach is over quota."),
                                       (450, "4.2.1", "The user you are trying to contact is receiving mail at a rate that prevents additional messages"),
                                       (421, "4.2.1", "mailbox temporarily unavailable, too many messages for this user, try again later"),
                                       (452, "4.5.3", "Your message has too many recipients.")] {
            let action = m.match(DeliveryStatus(code: code, enhanced: enhanced, text: text), provider: "gmail")?.action
            #expect(action == nil || action == BackoffRule.Action.none, "\(code) \(enhanced) \(text): \(String(describing: action))")
        }
    }

    @Test("ordinary failures do not trigger backoff; configured rules come first and can be provider-specific")
    func noFalsePositives() throws {
        let m = BackoffMatcher(settings: try config().backoff)
        #expect(m.match(DeliveryStatus(code: 550, enhanced: "5.1.1", text: "The email account that you tried to reach does not exist"), provider: "gmail") == nil)
        #expect(m.match(DeliveryStatus(code: 452, enhanced: "4.2.2", text: "The email account that you tried to reach is over quota"), provider: "gmail") == nil)
        #expect(m.match(DeliveryStatus(code: 451, enhanced: "4.3.0", text: "quota exceeded for sender"), provider: "x")?.ratePerMinute == 5)
        let scoped = BackoffMatcher(settings: BackoffSettings(rules: [BackoffRule(match: "slow down", provider: "gmail", action: .suspend, duration: 60)], useDefaults: false))
        #expect(scoped.match(DeliveryStatus(code: 451, enhanced: nil, text: "slow down"), provider: "gmail") != nil)
        #expect(scoped.match(DeliveryStatus(code: 451, enhanced: nil, text: "slow down"), provider: "outlook") == nil)
    }
}
