import Foundation
import Testing
@testable import ClusterProtocol
@testable import HatoDNS
@testable import HatoIO
@testable import HatoNode
import HatoSupport

/// MTA-STS (RFC 8461) and DANE (RFC 7672) decisions as values: the TXT record, the policy body,
/// MX matching, the policy cache with a manual clock, the per-target plan, TLSA usability
/// (filter: `TransportSecurityTests`).
@Suite("TransportSecurityTests")
struct TransportSecurityTests {
    @Test("the _mta-sts TXT record: v=STSv1 first, an alphanumeric id of 1–32, exactly one record")
    func txtRecord() {
        #expect(MTASTSRecord.parse("v=STSv1; id=20160831085700Z;") == MTASTSRecord(id: "20160831085700Z"))
        #expect(MTASTSRecord.parse("v=STSv1;id=abc") == MTASTSRecord(id: "abc"))
        #expect(MTASTSRecord.parse("id=abc; v=STSv1") == nil)
        #expect(MTASTSRecord.parse("v=STSv1; id=") == nil)
        #expect(MTASTSRecord.parse("v=STSv1; id=has-dash") == nil)
        #expect(MTASTSRecord.parse("v=STSv1; id=" + String(repeating: "a", count: 33)) == nil)
        #expect(MTASTSRecord.find(in: [["v=spf1 -all"], ["v=STSv1; ", "id=x1"]]) == MTASTSRecord(id: "x1"))
        #expect(MTASTSRecord.find(in: [["v=STSv1; id=a"], ["v=STSv1; id=b"]]) == nil, "two records: no policy")
        #expect(MTASTSRecord.find(in: []) == nil)
    }

    @Test("the policy body: fields, CRLF or LF, unknown keys ignored, errors named, size cap")
    func policyBody() throws {
        let p = try MTASTSPolicy.parse(Array("version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\nextension: x\r\n".utf8))
        #expect(p == MTASTSPolicy(mode: .enforce, mx: ["mx1.example.com", "*.example.net"], maxAge: 604_800))
        let lf = try MTASTSPolicy.parse(Array("version: STSv1\nmode: testing\nmx: MX.Example.COM\nmax_age: 9999999999\n".utf8))
        #expect(lf.mode == .testing)
        #expect(lf.mx == ["mx.example.com"])
        #expect(lf.maxAge == MTASTSPolicy.maxMaxAge, "capped at one year")
        #expect(try MTASTSPolicy.parse(Array("version: STSv1\nmode: none\nmax_age: 86400\n".utf8)).mode == .none)
        func error(_ text: String) -> String {
            do { _ = try MTASTSPolicy.parse(Array(text.utf8)); return "accepted" } catch { return error.description }
        }
        #expect(error("mode: enforce\nmx: a.b\nmax_age: 1\n") == "version is not STSv1")
        #expect(error("version: STSv1\nmode: strict\nmx: a.b\nmax_age: 1\n") == "unknown mode \"strict\"")
        #expect(error("version: STSv1\nmode: enforce\nmax_age: 1\n") == "no mx pattern")
        #expect(error("version: STSv1\nmode: enforce\nmx: a.b\n") == "no max_age")
        #expect(error("version: STSv1\nmode: enforce\nmx: a.b\nmax_age: -5\n") == "invalid max_age")
        #expect(error("version: STSv1\nmode: enforce\nmx: bad host\nmax_age: 5\n") == "invalid mx pattern \"bad host\"")
        #expect(error("<html>not a policy</html>") == "policy line without a colon")
        #expect(error(String(repeating: "x", count: MTASTSPolicy.maxBodySize + 1)) == "policy larger than 65536 octets")
    }

    @Test("MX matching: exact names, and *. covering exactly one leftmost label (RFC 8461 §4.1)")
    func mxMatching() {
        let p = MTASTSPolicy(mode: .enforce, mx: ["mx.example.com", "*.example.net"], maxAge: 60)
        #expect(p.matches("mx.example.com"))
        #expect(p.matches("MX.EXAMPLE.COM."))
        #expect(p.matches("a.example.net"))
        #expect(!p.matches("example.net"))
        #expect(!p.matches("a.b.example.net"))
        #expect(!p.matches("mx2.example.com"))
        #expect(!p.matches("xexample.net"))
    }

    @Test("the policy cache: fetch when absent, use while the id is unchanged and max_age lasts, refetch on a new id, fall back, bounded")
    func cache() {
        var cache = MTASTSPolicyCache(capacity: 2)
        let p1 = MTASTSPolicy(mode: .enforce, mx: ["mx.a.test"], maxAge: 100)
        #expect(cache.decide(domain: "a.test", record: nil, now: 0) == .noPolicy)
        #expect(cache.decide(domain: "a.test", record: MTASTSRecord(id: "1"), now: 0) == .fetch(fallback: nil))
        cache.store(domain: "A.test", policy: p1, id: "1", now: 0)
        #expect(cache.decide(domain: "a.test", record: MTASTSRecord(id: "1"), now: 50) == .use(p1))
        #expect(cache.decide(domain: "a.test", record: nil, now: 50) == .use(p1), "a vanished TXT record keeps the cached policy")
        #expect(cache.decide(domain: "a.test", record: MTASTSRecord(id: "2"), now: 50) == .fetch(fallback: p1))
        #expect(cache.decide(domain: "a.test", record: MTASTSRecord(id: "1"), now: 100) == .fetch(fallback: nil), "expired after max_age")
        #expect(cache.decide(domain: "a.test", record: nil, now: 101) == .noPolicy)
        cache.store(domain: "b.test", policy: p1, id: "1", now: 10)
        cache.store(domain: "c.test", policy: p1, id: "1", now: 20)
        #expect(cache.entries.count == 2)
        #expect(cache.entries["a.test"] == nil, "the oldest entry made room")
    }

    @Test("the plan: enforce drops MX hosts outside the policy, defers when none is left, testing keeps and reports, DANE first")
    func plan() {
        let t1 = DeliveryTarget(host: "mx1.example.com", address: "127.0.0.1", port: 25)
        let t2 = DeliveryTarget(host: "mx2.example.net", address: "127.0.0.2", port: 25)
        let enforce = MTASTSPolicy(mode: .enforce, mx: ["mx1.example.com"], maxAge: 60)
        let p = TransportSecurityPlan.plan(domain: "Example.com", targets: [t1, t2], policy: enforce, dane: [:])
        #expect(p.targets == [t1])
        #expect(p.requirements == ["mx1.example.com": .mtaSTS(domain: "example.com", enforce: true)])
        #expect(p.reports == [TLSReportEntry(policyDomain: "example.com", policyType: "sts", result: "validation-failure", mxHost: "mx2.example.net")])
        #expect(p.failure == nil)

        let none = TransportSecurityPlan.plan(domain: "example.com", targets: [t2], policy: enforce, dane: [:])
        #expect(none.targets.isEmpty)
        #expect(none.failure?.description == "4.7.5 MTA-STS policy of example.com: mx2.example.net does not match the policy")
        #expect(none.failure?.permanent == false)

        let testing = TransportSecurityPlan.plan(domain: "example.com", targets: [t2], policy: MTASTSPolicy(mode: .testing, mx: ["mx1.example.com"], maxAge: 60), dane: [:])
        #expect(testing.targets == [t2])
        #expect(testing.requirements["mx2.example.net"] == .mtaSTS(domain: "example.com", enforce: false))
        #expect(testing.reports.map(\.result) == ["validation-failure"])
        #expect(testing.failure == nil)

        let ee = TLSAssociation(usage: 3, selector: 1, matchingType: 1, data: [UInt8](repeating: 7, count: 32))
        let dane = TransportSecurityPlan.plan(domain: "example.com", targets: [t1, t2], policy: enforce,
                                              dane: ["mx2.example.net": .secure(usable: [ee], total: 1)])
        #expect(dane.targets == [t1, t2], "a DANE host is not subject to the MTA-STS mx list (RFC 8461 §2)")
        #expect(dane.requirements["mx2.example.net"] == .dane([ee]))
        #expect(dane.requirements["mx2.example.net"]?.tag == "dane")

        let unusable = TransportSecurityPlan.plan(domain: "example.com", targets: [t1], policy: nil,
                                                  dane: ["mx1.example.com": .secure(usable: [], total: 2)])
        #expect(unusable.requirements.isEmpty)
        #expect(unusable.reports == [TLSReportEntry(policyDomain: "mx1.example.com", policyType: "tlsa", result: "tlsa-invalid", mxHost: "mx1.example.com")])

        let noPolicy = TransportSecurityPlan.plan(domain: "example.com", targets: [t1, t2], policy: MTASTSPolicy(mode: .none, mx: [], maxAge: 60), dane: [:])
        #expect(noPolicy.targets == [t1, t2] && noPolicy.requirements.isEmpty && noPolicy.reports.isEmpty)
    }

    @Test("TLSA records usable for SMTP: DANE-TA/EE, selector 0/1, matching 0/1/2 with the digest's length (RFC 7672 §3.1)")
    func tlsaUsability() {
        let d32 = [UInt8](repeating: 1, count: 32), d64 = [UInt8](repeating: 1, count: 64)
        #expect(TLSAssociation(usage: 3, selector: 1, matchingType: 1, data: d32).isUsable)
        #expect(TLSAssociation(usage: 2, selector: 0, matchingType: 2, data: d64).isUsable)
        #expect(TLSAssociation(usage: 3, selector: 0, matchingType: 0, data: [0x30, 0x82]).isUsable)
        #expect(!TLSAssociation(usage: 1, selector: 1, matchingType: 1, data: d32).isUsable, "PKIX-EE is not for SMTP")
        #expect(!TLSAssociation(usage: 3, selector: 2, matchingType: 1, data: d32).isUsable)
        #expect(!TLSAssociation(usage: 3, selector: 1, matchingType: 1, data: d64).isUsable, "wrong digest length")
        #expect(!TLSAssociation(usage: 3, selector: 1, matchingType: 3, data: d32).isUsable)
        #expect(TLSAssociation(usage: 3, selector: 1, matchingType: 1, data: [0xAB, 0x01]).description == "3 1 1 ab01")
    }

    @Test("result types from OpenSSL verification codes")
    func resultTypes() {
        #expect(TransportSecurityPlan.resultType(verificationResult: 62) == .certificateHostMismatch)
        #expect(TransportSecurityPlan.resultType(verificationResult: 10) == .certificateExpired)
        #expect(TransportSecurityPlan.resultType(verificationResult: 20) == .validationFailure)
    }

    @Test("DNS: TLSA records and the AD bit are parsed; the DNSSEC query sets AD and EDNS0 DO")
    func dnsWire() throws {
        // Response: id 7, QR RD RA AD, 1 question, 1 answer (TLSA 3 1 1 + 4 octets).
        var m: [UInt8] = [0, 7, 0x81, 0xA0, 0, 1, 0, 1, 0, 0, 0, 0]
        let qname = SecureTestDNS.wireName("_25._tcp.mx.test")
        m += qname + [0, 52, 0, 1]
        m += [0xC0, 0x0C, 0, 52, 0, 1, 0, 0, 0, 60, 0, 7, 3, 1, 1, 0xDE, 0xAD, 0xBE, 0xEF]
        let msg = try DNSMessage.parse(m)
        #expect(msg.isAuthenticData)
        #expect(msg.answers.first?.data == .tlsa(usage: 3, selector: 1, matchingType: 1, data: [0xDE, 0xAD, 0xBE, 0xEF]))
        m[3] = 0x80
        #expect(try DNSMessage.parse(m).isAuthenticData == false)
        let q = try #require(DNSResolver.dnssecQuery(name: "_25._tcp.mx.test", type: .tlsa, id: 0x1234))
        #expect(Array(q[0..<12]) == [0x12, 0x34, 0x01, 0x20, 0, 1, 0, 0, 0, 0, 0, 1])
        #expect(Array(q.suffix(11)) == [0, 0, 41, 0x04, 0xD0, 0, 0, 0x80, 0, 0, 0])
        #expect(DNSResolver.dnssecQuery(name: "a..b", type: .tlsa, id: 1) == nil)
    }

    @Test("secureQuery through an injected exchange: authenticated only with AD, cached, failures not cached")
    func secureQuery() {
        let calls = Locked(0)
        let ad = Locked(true)
        let resolver = DNSResolver { name, type in
            calls.withLock { $0 += 1 }
            if name == "fail.test" { return .failure("timeout") }
            return .response(DNSMessage(isAuthenticData: ad.withLock { $0 }, rcode: 0, answers: [
                DNSRecord(name: name, type: .tlsa, ttl: 300, data: .tlsa(usage: 3, selector: 1, matchingType: 1, data: [1]))]))
        }
        let a = resolver.secureQuery("_25._tcp.MX.test.", type: .tlsa)
        #expect(a.authenticated)
        guard case .records(let rs) = a.answer else { Issue.record("no records"); return }
        #expect(rs.count == 1)
        ad.withLock { $0 = false }
        #expect(resolver.secureQuery("_25._tcp.mx.test", type: .tlsa).authenticated, "cached")
        #expect(calls.withLock { $0 } == 1)
        #expect(resolver.secureQuery("_25._tcp.other.test", type: .tlsa).authenticated == false)
        _ = resolver.secureQuery("fail.test", type: .tlsa)
        _ = resolver.secureQuery("fail.test", type: .tlsa)
        #expect(calls.withLock { $0 } == 4)
    }
}
