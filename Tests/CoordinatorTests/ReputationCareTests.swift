import Foundation
#if canImport(Glibc)
import Glibc
#endif
import ClusterProtocol
import HatoConfig
import HatoDNS
import HatoSupport
import HatoTestKit
import Testing
@testable import HatoCoordinator

/// Issue 18, FCrDNS/HELO, SPF evaluation, doctor findings, clock skew and the stored IP health
/// history: pure values with injected answers and times, and the history on both stores.
@Suite("Reputation care: FCrDNS, SPF, doctor findings, clock skew, IP health history")
struct ReputationCareTests {
    static func ptr(_ names: String...) -> DNSAnswer {
        .records(names.map { DNSRecord(name: "x.in-addr.arpa", type: .ptr, ttl: 60, data: .ptr($0)) })
    }
    static func a(_ addresses: String...) -> DNSAnswer {
        .records(addresses.map { DNSRecord(name: "h", type: .a, ttl: 60, data: .a($0)) })
    }
    static func txt(_ values: String...) -> DNSAnswer {
        .records(values.map { DNSRecord(name: "t", type: .txt, ttl: 60, data: .txt([$0])) })
    }

    @Test("FCrDNS verdicts: ok, no PTR, PTR not resolving back, HELO mismatch, lookup failure is unknown")
    func fcrdnsVerdicts() {
        let ip = "192.0.2.10"
        #expect(FCrDNS.verdict(ip: ip, helo: "MTA1.example", ptr: Self.ptr("mta1.example"), forward: ["mta1.example": Self.a(ip)]).status == .ok)
        #expect(FCrDNS.verdict(ip: ip, helo: "mta1.example", ptr: .nxdomain, forward: [:]).status == .noPTR)
        #expect(FCrDNS.verdict(ip: ip, helo: "mta1.example", ptr: .noData, forward: [:]).status == .noPTR)
        let elsewhere = FCrDNS.verdict(ip: ip, helo: "mta1.example", ptr: Self.ptr("mta1.example"), forward: ["mta1.example": Self.a("192.0.2.99")])
        #expect(elsewhere.status == .notConfirmed && elsewhere.failsFCrDNS)
        #expect(elsewhere.detail?.contains("192.0.2.99") == true)
        #expect(FCrDNS.verdict(ip: ip, helo: "mta1.example", ptr: Self.ptr("mta1.example"), forward: ["mta1.example": .nxdomain]).status == .notConfirmed)
        let mismatch = FCrDNS.verdict(ip: ip, helo: "mail.example", ptr: Self.ptr("mta1.example"), forward: ["mta1.example": Self.a(ip)])
        #expect(mismatch.status == .heloMismatch && !mismatch.failsFCrDNS)
        #expect(FCrDNS.verdict(ip: ip, helo: "h", ptr: .temporaryFailure("timeout"), forward: [:]).status == .unknown)
        #expect(FCrDNS.verdict(ip: ip, helo: "h", ptr: Self.ptr("h"), forward: ["h": .temporaryFailure("timeout")]).status == .unknown)
        // One of two PTR names confirmed and equal to HELO: ok.
        #expect(FCrDNS.verdict(ip: ip, helo: "b.example", ptr: Self.ptr("a.example", "b.example"),
                               forward: ["a.example": .nxdomain, "b.example": Self.a(ip)]).status == .ok)
        // IPv6 compares addresses, not text.
        #expect(FCrDNS.verdict(ip: "2001:db8::1", helo: "v6.example", ptr: Self.ptr("v6.example"),
                               forward: ["v6.example": .records([DNSRecord(name: "v6.example", type: .aaaa, ttl: 60, data: .aaaa("2001:0db8:0:0::1"))])]).status == .ok)
    }

    @Test("FCrDNSWatch: a failure and a recovery are changes; unknown changes nothing; the hold only under require_fcrdns")
    func fcrdnsWatch() {
        var w = FCrDNSWatch()
        let t0 = Date(timeIntervalSince1970: 1_000_000)
        let bad = FCrDNS.Verdict(status: .noPTR, helo: "h", detail: "no PTR")
        let good = FCrDNS.Verdict(status: .ok, ptr: ["h"], helo: "h")
        #expect(w.record(good, ip: "1.2.3.4", now: t0).isEmpty)
        #expect(w.record(bad, ip: "1.2.3.4", now: t0 + 10) == [.failed(ip: "1.2.3.4", verdict: bad)])
        #expect(w.record(bad, ip: "1.2.3.4", now: t0 + 20).isEmpty)
        #expect(w.record(FCrDNS.Verdict(status: .unknown, helo: "h", detail: "timeout"), ip: "1.2.3.4", now: t0 + 30).isEmpty)
        #expect(w.failing == ["1.2.3.4"] && w.verdicts["1.2.3.4"] == bad, "a timeout keeps the last real verdict")
        #expect(w.holdReason("1.2.3.4", required: false) == nil)
        #expect(w.holdReason("1.2.3.4", required: true)?.contains("no_ptr") == true)
        #expect(w.record(FCrDNS.Verdict(status: .heloMismatch, ptr: ["x"], helo: "h"), ip: "1.2.3.4", now: t0 + 40).count == 1)
        #expect(w.holdReason("1.2.3.4", required: true) == nil)
        // A timeout never holds an IP that was never seen failing.
        #expect(w.record(FCrDNS.Verdict(status: .unknown, helo: "h"), ip: "5.6.7.8", now: t0).isEmpty)
        #expect(w.holdReason("5.6.7.8", required: true) == nil)
        // Restored failures are not announced again.
        var restored = FCrDNSWatch(failing: ["1.2.3.4"])
        #expect(restored.record(bad, ip: "1.2.3.4", now: t0).isEmpty)
        #expect(restored.holdReason("1.2.3.4", required: true) != nil)
    }

    /// An SPF evaluator over a fixed zone; counts queries.
    static func spf(_ zone: [String: DNSAnswer]) -> SPFEvaluator {
        SPFEvaluator { name, type in zone["\(type) \(name)"] ?? .nxdomain }
    }

    @Test("SPF check_host: ip4/ip6 with CIDR, a, mx, include, redirect, qualifiers, none, two records, the 10-lookup limit")
    func spfEvaluation() {
        let zone: [String: DNSAnswer] = [
            "TXT shop.example": Self.txt("v=spf1 ip4:192.0.2.0/28 a:web.shop.example mx include:_spf.relay.example -all"),
            "A web.shop.example": Self.a("198.51.100.7"),
            "MX shop.example": .records([DNSRecord(name: "shop.example", type: .mx, ttl: 60, data: .mx(preference: 10, exchange: "mx.shop.example"))]),
            "A mx.shop.example": Self.a("198.51.100.25"),
            "TXT _spf.relay.example": Self.txt("v=spf1 ip4:203.0.113.0/24 ip6:2001:db8::/32 ~all"),
            "TXT redir.example": Self.txt("v=spf1 redirect=shop.example"),
            "TXT soft.example": Self.txt("v=spf1 ip4:192.0.2.1 ~all"),
            "TXT two.example": Self.txt("v=spf1 -all", "v=spf1 +all"),
            "TXT neutral.example": Self.txt("v=spf1 ip4:192.0.2.1"),
            "TXT temp.example": .temporaryFailure("timeout"),
        ]
        func check(_ ip: String, _ domain: String) -> SPFEvaluator.Result { var e = Self.spf(zone); return e.check(ip: ip, domain: domain) }
        #expect(check("192.0.2.15", "shop.example") == .pass)
        #expect(check("192.0.2.16", "shop.example") == .fail)
        #expect(check("198.51.100.7", "shop.example") == .pass)
        #expect(check("198.51.100.25", "shop.example") == .pass)
        #expect(check("203.0.113.200", "shop.example") == .pass)
        #expect(check("2001:db8::25", "shop.example") == .pass)
        #expect(check("203.0.113.200", "redir.example") == .pass)
        #expect(check("10.0.0.1", "redir.example") == .fail)
        #expect(check("10.0.0.1", "soft.example") == .softfail)
        #expect(check("10.0.0.1", "neutral.example") == .neutral)
        #expect(check("10.0.0.1", "nothing.example") == .none)
        if case .permerror = check("10.0.0.1", "two.example") {} else { Issue.record("two SPF records must be a permerror") }
        if case .temperror = check("10.0.0.1", "temp.example") {} else { Issue.record("a timeout must be a temperror") }
        // 11 includes in a chain: the 11th lookup is a permerror (RFC 7208 §4.6.4).
        var chain: [String: DNSAnswer] = [:]
        for i in 0..<11 { chain["TXT l\(i).example"] = Self.txt("v=spf1 include:l\(i + 1).example -all") }
        chain["TXT l11.example"] = Self.txt("v=spf1 ip4:192.0.2.1 -all")
        var e = Self.spf(chain)
        let r = e.check(ip: "192.0.2.1", domain: "l0.example")
        if case .permerror(let why) = r { #expect(why.contains("10 DNS lookups")) } else { Issue.record("expected permerror, got \(r)") }
        // Ten are allowed.
        var e10 = Self.spf(chain)
        #expect(e10.check(ip: "192.0.2.1", domain: "l1.example") == .pass && e10.lookups == 10)
    }

    @Test("doctor findings: FCrDNS/HELO, SPF not covering an IP, a missing DKIM record, certificate expiry")
    func doctorFindings() {
        let ok = Doctor.fcrdns(ip: "192.0.2.1", verdict: .init(status: .ok, ptr: ["m.example"], helo: "m.example"), required: true)
        #expect(ok.map(\.severity) == [.ok, .ok])
        let mismatch = Doctor.fcrdns(ip: "192.0.2.1", verdict: .init(status: .heloMismatch, ptr: ["p.example"], helo: "m.example", detail: "x"), required: true)
        #expect(mismatch.map(\.severity) == [.ok, .warning] && mismatch[1].fix?.contains("p.example") == true)
        let noPTR = FCrDNS.Verdict(status: .noPTR, helo: "m.example", detail: "no PTR")
        #expect(Doctor.fcrdns(ip: "192.0.2.1", verdict: noPTR, required: false)[0].severity == .warning)
        #expect(Doctor.fcrdns(ip: "192.0.2.1", verdict: noPTR, required: true)[0].severity == .error)
        #expect(Doctor.fcrdns(ip: "192.0.2.1", verdict: noPTR, required: true)[0].fix?.contains("1.2.0.192.in-addr.arpa") == true)
        #expect(Doctor.fcrdns(ip: "192.0.2.1", verdict: .init(status: .unknown, helo: "m"), required: true).map(\.severity) == [.warning])

        let spf = Doctor.spf(domain: "shop.example", results: [("192.0.2.1", .pass), ("192.0.2.2", .fail)])
        #expect(spf.severity == .error && spf.fix?.contains("ip4:192.0.2.2") == true && spf.message.contains("1 of 2"))
        #expect(Doctor.spf(domain: "shop.example", results: [("192.0.2.1", .pass), ("192.0.2.2", .softfail)]).severity == .warning)
        #expect(Doctor.spf(domain: "shop.example", results: [("192.0.2.1", .pass)]).severity == .ok)
        #expect(Doctor.spf(domain: "shop.example", results: [("192.0.2.1", .none)]).fix?.hasPrefix("publish a TXT record") == true)

        let missing = Doctor.dkim(DomainCheckItem(kind: .dkim, name: "s1._domainkey.shop.example", status: .missing, expected: "v=DKIM1; k=ed25519; p=AAAA",
                                                  detail: "no DKIM key record"))
        #expect(missing.severity == .error && missing.fix?.contains("v=DKIM1; k=ed25519; p=AAAA") == true)

        #expect(Doctor.certificate(listener: "smtp.tls", path: "c.pem", secondsUntilExpiry: -86_400).severity == .error)
        #expect(Doctor.certificate(listener: "smtp.tls", path: "c.pem", secondsUntilExpiry: 13 * 86_400).severity == .warning)
        #expect(Doctor.certificate(listener: "smtp.tls", path: "c.pem", secondsUntilExpiry: 15 * 86_400).severity == .ok)
        #expect(Doctor.certificate(listener: "smtp.tls", path: "c.pem", secondsUntilExpiry: nil, error: "gone").severity == .error)
        let report = DoctorReport(findings: ok + [spf, missing], now: Date(timeIntervalSince1970: 0))
        #expect(report.errors == 2 && report.ok == 2 && report.warnings == 0 && report.generatedAt == "1970-01-01T00:00:00Z")
    }

    @Test("clock skew from heartbeat times: within 2 s ok, beyond a warning either way, no recent reading a warning")
    func clockSkew() {
        let now = Date(timeIntervalSince1970: 2_000_000)
        let near = ClockSkew.Sample(nodeTime: now.addingTimeInterval(-1.5), receivedAt: now)
        #expect(near.skew == -1.5)
        #expect(ClockSkew.finding(node: "n1", sample: near, now: now).severity == .ok)
        let ahead = ClockSkew.Sample(nodeTime: now.addingTimeInterval(2.5), receivedAt: now)
        let f = ClockSkew.finding(node: "n1", sample: ahead, now: now)
        #expect(f.severity == .warning && f.message.contains("+2.500 s"))
        #expect(ClockSkew.finding(node: "n1", sample: .init(nodeTime: now.addingTimeInterval(-3), receivedAt: now), now: now).severity == .warning)
        #expect(ClockSkew.finding(node: "n1", sample: near, now: now.addingTimeInterval(301)).severity == .warning)
        #expect(ClockSkew.finding(node: "n1", sample: nil, now: now).severity == .warning)
    }

    @Test("a heartbeat carries the node's clock; one without it (an older node) still decodes")
    func heartbeatClock() throws {
        let frame = ClusterMessage.heartbeat(HeartbeatMessage(leasesInFlight: 3, sentAt: 1_700_000_000.25)).frame()
        guard case .heartbeat(let back) = try ClusterMessage.decode(frame) else { Issue.record("not a heartbeat"); return }
        #expect(back == HeartbeatMessage(leasesInFlight: 3, sentAt: 1_700_000_000.25))
        guard case .heartbeat(let old) = try ClusterMessage.decode(Frame(type: .heartbeat, header: Array(#"{"leasesInFlight":2}"#.utf8))) else {
            Issue.record("not a heartbeat"); return
        }
        #expect(old.sentAt == nil && old.leasesInFlight == 2)
    }

    @Test("the stored history gives back current listings and FCrDNS failures (what a restart resumes from)")
    func historyRestore() {
        let t = Date(timeIntervalSince1970: 1_000)
        let h: [BlocklistWatch.Change] = [
            .init(at: t, ip: "a", zone: "z1", event: "listed", codes: ["127.0.0.2"], reason: "r"),
            .init(at: t + 1, ip: "a", zone: "z2", event: "listed", codes: ["127.0.0.3"], reason: nil),
            .init(at: t + 2, ip: "a", zone: "z1", event: "delisted", codes: [], reason: nil),
            .init(at: t + 3, ip: "b", zone: "z1", event: "listed", codes: ["127.0.0.2"], reason: nil),
            .init(at: t + 4, ip: "b", zone: "z1", event: "delisted", codes: [], reason: nil),
            .init(at: t + 5, ip: "c", zone: "fcrdns", event: "fcrdns_failed", codes: ["no_ptr"], reason: nil),
            .init(at: t + 6, ip: "d", zone: "fcrdns", event: "fcrdns_failed", codes: ["no_ptr"], reason: nil),
            .init(at: t + 7, ip: "d", zone: "fcrdns", event: "fcrdns_ok", codes: ["ok"], reason: nil),
        ]
        let listings = IPHealthHistory.listings(from: h)
        #expect(listings.keys.sorted() == ["a"] && listings["a"]?.keys.sorted() == ["z2"] && listings["a"]?["z2"]?.since == t + 1)
        #expect(IPHealthHistory.fcrdnsFailing(from: h) == ["c"])
        let w = BlocklistWatch(listings: listings)
        #expect(w.holdReason("a") == "listed on z2 (127.0.0.3)")
    }

    @Test("IP health history: recorded, read per IP oldest first, survives reopening, bounded by retention", arguments: StoreKind.allCases)
    func historyStore(kind: StoreKind) throws {
        let place = try TestStore(kind)
        let t = Date(timeIntervalSince1970: 1_800_000_000)
        do {
            let store = try place.open()
            try store.recordIPHealthChange(.init(at: t, ip: "127.0.0.12", zone: "bl.test", event: "listed", codes: ["127.0.0.2", "127.0.0.4"], reason: "why"))
            try store.recordIPHealthChange(.init(at: t + 60, ip: "127.0.0.12", zone: "bl.test", event: "delisted", codes: [], reason: nil))
            try store.recordIPHealthChange(.init(at: t + 61, ip: "127.0.0.11", zone: "fcrdns", event: "fcrdns_failed", codes: ["no_ptr"], reason: "no PTR"))
            try store.endRun()
        }
        let store = try place.open()
        let all = try store.ipHealthHistory(ip: nil, limit: 100)
        #expect(all.map(\.event) == ["listed", "delisted", "fcrdns_failed"])
        #expect(all[0] == .init(at: t, ip: "127.0.0.12", zone: "bl.test", event: "listed", codes: ["127.0.0.2", "127.0.0.4"], reason: "why"))
        #expect(try store.ipHealthHistory(ip: "127.0.0.12", limit: 1).map(\.event) == ["delisted"])
        // A change far later drops what is older than the retention.
        try store.recordIPHealthChange(.init(at: t + IPHealthHistory.retention + 120, ip: "127.0.0.12", zone: "bl.test", event: "listed", codes: ["127.0.0.2"], reason: nil))
        #expect(try store.ipHealthHistory(ip: nil, limit: 100).map(\.at) == [t + IPHealthHistory.retention + 120])
    }

    @Test("a DNS timeout pauses nothing: blocklist and FCrDNS checks against a resolver that never answers hold no IP")
    func dnsTimeoutHoldsNothing() throws {
        // A UDP socket on loopback that reads nothing and answers nothing: every query times out.
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        #expect(fd >= 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        #expect(bound)
        let port = UInt16(bigEndian: addr.sin_port)
        let config = try ClusterConfig.parse("""
            cluster: { name: t, secret: "0123456789abcdef0123" }
            coordinator: { listen: 127.0.0.1:7601, admin_listen: 127.0.0.1:7680, admin_token: tok, data_dir: /tmp/x }
            smtp: { listen: [127.0.0.1:2525], hostname: relay.test }
            nodes: [ { id: node-a, data_dir: /tmp/a } ]
            pools: [ { name: transactional } ]
            ips:
              - { address: 127.0.0.10, helo: a.test, pool: transactional }
            routing: { default_pool: transactional }
            dns: { nameservers: ["127.0.0.1:\(port)"], timeout: 1s }
            reputation: { dnsbl: [bl.test], require_fcrdns: true }
            """, path: "/tmp/cluster.yml")
        let changes = Locked<[String]>([])
        let blocklists = BlocklistChecker(config: config) { c in changes.withLock { $0.append("dnsbl \(c.ip) \(c.holdReason ?? "-")") } }
        let began = ContinuousClock.now
        blocklists.checkAll()
        #expect(blocklists.snapshot.listings.isEmpty && blocklists.snapshot.unanswered["127.0.0.10"]?["bl.test"] != nil)
        #expect(blocklists.counts == (checks: 1, errors: 1))
        let fcrdns = FCrDNSChecker(config: { config }) { c in changes.withLock { $0.append("fcrdns \(c.ip) \(c.holdReason ?? "-")") } }
        fcrdns.checkAll(config)
        #expect(fcrdns.snapshot.verdicts["127.0.0.10"]?.status == .unknown && fcrdns.snapshot.failing.isEmpty)
        #expect(changes.snapshot.isEmpty, "a timeout changed something: \(changes.snapshot)")
        // An IP held before a restart stays held through a round of timeouts (never released by one).
        let restarted = FCrDNSChecker(config: { config }) { c in changes.withLock { $0.append("fcrdns \(c.ip) \(c.holdReason == nil ? "released" : "held")") } }
        #expect(restarted.restore(failing: ["127.0.0.10"], required: true).keys.sorted() == ["127.0.0.10"])
        restarted.checkAll(config)
        #expect(!changes.snapshot.contains("fcrdns 127.0.0.10 released"), "\(changes.snapshot)")
        #expect(restarted.snapshot.holdReason("127.0.0.10", required: true)?.contains("no answer") == true)
        #expect(ContinuousClock.now - began >= .seconds(2), "the lookups really waited for the timeout")
    }
}
