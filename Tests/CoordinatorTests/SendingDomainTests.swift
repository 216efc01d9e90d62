import Foundation
import HatoTestKit
import Testing
@testable import ClusterProtocol
@testable import HatoConfig
@testable import HatoCoordinator
@testable import HatoCrypto
@testable import HatoDKIM

/// Issue 16: a tenant's sending domain — its keys, the records to publish, and the coordinator's
/// feed of keys to the nodes. `DomainCheck` against a real DNS server: DomainCheckTests.swift.
@Suite("Sending domains")
struct SendingDomainTests {
    static let secret = "0123456789abcdef0123"
    static let date = Date(timeIntervalSince1970: 1_796_428_800)  // 2026-12-05 00:00 UTC

    @Test("domain keys: ed25519 and rsa-2048, dated selectors, sealed PEM that opens with the secret and signs")
    func generate() throws {
        let d = try SendingDomainKeys.generate(domain: "Shop.Example.", tenant: "acme", date: Self.date.addingTimeInterval(86_399), clusterSecret: Self.secret)
        #expect(d.domain == "shop.example" && d.tenant == "acme" && d.createdAt == Self.date.timeIntervalSince1970 + 86_399)
        #expect(d.keys.map(\.selector) == ["hato20261205e", "hato20261205r"])
        #expect(d.keys.map(\.algorithm) == ["ed25519-sha256", "rsa-sha256"])
        for k in d.keys {
            // Sealed: no PEM text in the stored octets.
            #expect(!String(decoding: k.sealedPrivateKey, as: UTF8.self).contains("PRIVATE KEY"))
            let key = try SendingDomainKeys.open(k, clusterSecret: Self.secret)
            #expect(key.algorithm.rawValue == k.algorithm)
            #expect(try key.publicKeyBase64() == k.publicKey)
            #expect(key.bits == (k.algorithm == "rsa-sha256" ? 2048 : 256))
            let message = Array("From: a@shop.example\r\nSubject: x\r\n\r\nbody\r\n".utf8)
            let signed = try DKIMSigner(domain: d.domain, selector: k.selector, key: key).sign(message)
            #expect(String(decoding: signed, as: UTF8.self).hasPrefix("DKIM-Signature: v=1; a=\(k.algorithm);"))
            #expect(throws: SecretBoxError.authenticationFailed) { try SendingDomainKeys.open(k, clusterSecret: "another-secret-0123") }
        }
        #expect(d.keys[0].publicKey != (try SendingDomainKeys.generate(domain: "shop.example", tenant: "acme", date: Self.date, clusterSecret: Self.secret).keys[0].publicKey))
        for bad in ["", "localhost", "a..b", "-a.example", "a b.example", "shop_1.example"] {
            #expect(throws: SendingDomainKeys.InvalidDomain.self, "\(bad)") {
                try SendingDomainKeys.generate(domain: bad, tenant: "acme", date: Self.date, clusterSecret: Self.secret)
            }
        }
        #expect(SendingDomainKeys.selector(for: .rsaSHA256, date: Date(timeIntervalSince1970: 0)) == "hato19700101r")
    }

    /// Two keys with fixed public keys: ed25519 from RFC 8463 appendix A.2, and a 392-character
    /// stand-in for an rsa-2048 SubjectPublicKeyInfo.
    static let edKey = DomainSigningKey(selector: "hato20261205e", algorithm: "ed25519-sha256", sealedPrivateKey: [1],
                                        publicKey: "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=")
    static let rsaP = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA" + String(repeating: "x", count: 340) + "IDAQAB"
    static let rsaKey = DomainSigningKey(selector: "hato20261205r", algorithm: "rsa-sha256", sealedPrivateKey: [2], publicKey: rsaP)
    static let ips = [(address: "192.0.2.4", helo: "mta1.relay.example"), (address: "2001:db8::7", helo: "mta2.relay.example")]

    @Test("DNS records: DKIM split at 255 octets, SPF include, DMARC suggestion, PTR and forward names, as zone text")
    func recordsWithInclude() throws {
        let r = DomainRecords(domain: "shop.example", keys: [Self.edKey, Self.rsaKey], ips: Self.ips, spfInclude: "_spf.relay.example")
        let rsaValue = "v=DKIM1; k=rsa; p=" + Self.rsaP
        #expect(rsaValue.utf8.count == 408)
        let rsaSplit = [String(rsaValue.prefix(255)), String(rsaValue.dropFirst(255))]
        #expect(r.zoneText == """
            ; DNS records for shop.example
            ; DKIM keys (RFC 6376, RFC 8463): mail is signed with each of them.
            hato20261205e._domainkey.shop.example. IN TXT "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
            hato20261205r._domainkey.shop.example. IN TXT ( "\(rsaSplit[0])" "\(rsaSplit[1])" )
            ; SPF (RFC 7208): the relay's sending IPs by include. A domain has one SPF record: add the include to an existing one.
            shop.example. IN TXT "v=spf1 include:_spf.relay.example ~all"
            ; DMARC (RFC 7489), a suggestion: start with p=none, read the reports, then move to quarantine or reject.
            _dmarc.shop.example. IN TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@shop.example"
            ; Sending IPs (published by the relay's operator): each IP's PTR names its HELO name, and that name
            ; resolves back to the IP (forward-confirmed reverse DNS).
            4.2.0.192.in-addr.arpa. IN PTR mta1.relay.example.
            mta1.relay.example. IN A 192.0.2.4
            7.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. IN PTR mta2.relay.example.
            mta2.relay.example. IN AAAA 2001:db8::7

            """)
        let dkim = r.records.filter { $0.kind == .dkim }
        #expect(dkim.map(\.name) == ["hato20261205e._domainkey.shop.example", "hato20261205r._domainkey.shop.example"])
        #expect(dkim[1].strings == rsaSplit)
        #expect(dkim[1].strings?.allSatisfy { $0.utf8.count <= 255 } == true)
        #expect(r.records.first { $0.kind == .dmarc }?.suggestion == true)
        // The JSON form for the admin API round-trips.
        let json = try JSONEncoder().encode(r)
        #expect(try JSONDecoder().decode(DomainRecords.self, from: json) == r)
        #expect(String(decoding: json, as: UTF8.self).contains("\"kind\":\"ptr\""))
    }

    @Test("DNS records without an SPF include list every sending IP once; the config form reads ips and tenants")
    func recordsWithoutInclude() throws {
        let ips = Self.ips + [(address: "192.0.2.4", helo: "mta1.relay.example")]
        #expect(DomainRecords.spfValue(ips: ips.map(\.address), include: nil) == "v=spf1 ip4:192.0.2.4 ip6:2001:db8::7 ~all")
        let config = try ClusterConfig.parse("""
            cluster: { name: t, secret: "\(Self.secret)" }
            coordinator: { listen: 127.0.0.1:7601, admin_listen: 127.0.0.1:7680, admin_token: tok, data_dir: /tmp/x }
            smtp: { listen: [127.0.0.1:2525], hostname: relay.hato.test }
            nodes: [ { id: node-a, data_dir: /tmp/a } ]
            pools: [ { name: t } ]
            ips: [ { address: 192.0.2.4, helo: mta1.relay.example, pool: t }, { address: 192.0.2.5, helo: mta2.relay.example, pool: t } ]
            routing: { default_pool: t }
            """, path: "/tmp/cluster.yml")
        let domain = SendingDomain(domain: "shop.example", tenant: "acme", keys: [Self.edKey], createdAt: 0)
        let r = DomainRecords(domain: domain, config: config)
        #expect(r.records.map(\.kind) == [.dkim, .spf, .dmarc, .ptr, .forward, .ptr, .forward])
        #expect(r.records[1].value == "v=spf1 ip4:192.0.2.4 ip4:192.0.2.5 ~all")
        #expect(r.zoneText.contains("shop.example. IN TXT \"v=spf1 ip4:192.0.2.4 ip4:192.0.2.5 ~all\""))
        var withInclude = config
        withInclude.tenants.spfInclude = "_spf.relay.example"
        #expect(DomainRecords(domain: domain, config: withInclude).records[1].value == "v=spf1 include:_spf.relay.example ~all")
        #expect(DomainRecords.reverseName("not an ip") == nil)
    }

    @Test("SPF terms cover an IP exactly or by prefix; DKIM tags ignore whitespace in p=")
    func parsing() {
        #expect(DomainCheck.spfTerm("ip4:192.0.2.0/24", covers: "192.0.2.4"))
        #expect(DomainCheck.spfTerm("+ip4:192.0.2.4", covers: "192.0.2.4"))
        #expect(!DomainCheck.spfTerm("ip4:192.0.2.0/25", covers: "192.0.2.200"))
        #expect(!DomainCheck.spfTerm("-ip4:192.0.2.4", covers: "192.0.2.4"))
        #expect(DomainCheck.spfTerm("ip6:2001:db8::/32", covers: "2001:db8::7"))
        #expect(!DomainCheck.spfTerm("ip6:2001:db8::/32", covers: "192.0.2.4"))
        #expect(!DomainCheck.spfTerm("ip4:192.0.2.0/33", covers: "192.0.2.4"))
        #expect(DomainCheck.tags("v=DKIM1; k=rsa; p=MIIB AAA\t BBB")["p"] == "MIIBAAABBB")
    }
}

/// A tenant store in memory with only what the signing key feed reads.
final class KeyFeedStore: TenantStore, @unchecked Sendable {
    private let lock = NSLock()
    private var _version: Int64 = 1
    private var _domains: [SendingDomain] = []
    private var _reads = 0
    private var _failing = false

    var reads: Int { lock.withLock { _reads } }
    func set(version: Int64, domains: [SendingDomain]? = nil) { lock.withLock { _version = version; if let domains { _domains = domains } } }
    func fail(_ on: Bool) { lock.withLock { _failing = on } }

    struct Down: Error {}
    func tenantsVersion() throws -> Int64 { try lock.withLock { if _failing { throw Down() }; return _version } }
    func sendingDomains(tenant: String?) throws -> [SendingDomain] { lock.withLock { _reads += 1; return _domains } }

    private var unused: TenantStoreError { .conflict("not in this test store") }
    func createTenant(_ tenant: Tenant) throws { throw unused }
    func tenant(named name: String) throws -> Tenant? { nil }
    func tenants() throws -> [Tenant] { [] }
    func updateTenant(_ tenant: Tenant) throws { throw unused }
    func deleteTenant(named name: String) throws { throw unused }
    func addTenantUser(_ user: TenantSMTPUser) throws { throw unused }
    func removeTenantUser(name: String) throws -> Bool { false }
    func tenantUsers(tenant: String?) throws -> [TenantSMTPUser] { [] }
    func addAPIKey(_ key: APIKeyRecord) throws { throw unused }
    func apiKey(id: String) throws -> APIKeyRecord? { nil }
    func apiKeys(tenant: String?) throws -> [APIKeyRecord] { [] }
    func revokeAPIKey(id: String, tenant: String?, now: Date) throws -> Bool { false }
    func touchAPIKeys(_ ids: [String], now: Date) throws {}
    func addSendingDomain(_ domain: SendingDomain) throws { lock.withLock { _domains.append(domain); _version += 1 } }
    func removeSendingDomain(_ domain: String, tenant: String) throws -> Bool { false }
    func reserveQuota(tenant: String, limits: TenantLimits, messages: Int, now: Date) throws -> QuotaDecision { .reserved }
    func releaseQuota(tenant: String, messages: Int, reservedAt at: Date) throws {}
    func usage(tenant: String, now: Date) throws -> TenantUsage { TenantUsage(hour: 0, day: 0, month: 0) }
    func idempotencyRecord(tenant: String, key: String) throws -> IdempotencyRecord? { nil }
    func tenantEvents(tenant: String, after: Int64, limit: Int) throws -> [TenantEvent] { [] }
    func tenantEvents(messageID: String) throws -> [TenantEvent] { [] }
    func purgeTenantData(eventsBefore: Date, idempotencyBefore: Date, now: Date) throws -> Int { 0 }
}

extension SendingDomainTests {
    @Test("the key feed reads the version at most every 2 s and the domains only when it moved; keys stay sealed")
    func keyFeed() throws {
        let store = KeyFeedStore()
        let domain = SendingDomain(domain: "shop.example", tenant: "acme", keys: [Self.rsaKey, Self.edKey], createdAt: 0)
        store.set(version: 1, domains: [domain])
        var feed = SigningKeyFeed()
        let t0 = ContinuousClock.now
        guard case .changed(let first) = feed.poll(store, now: t0) else { Issue.record("first poll must read the set"); return }
        #expect(first.version == 1)
        #expect(first.keys == [
            SealedSigningKey(domain: "shop.example", selector: "hato20261205e", algorithm: "ed25519-sha256", sealedPrivateKey: "AQ=="),
            SealedSigningKey(domain: "shop.example", selector: "hato20261205r", algorithm: "rsa-sha256", sealedPrivateKey: "Ag=="),
        ])
        #expect(store.reads == 1)
        store.set(version: 2)
        #expect(feed.poll(store, now: t0 + .seconds(1)) == .unchanged)  // not due
        guard case .changed(let second) = feed.poll(store, now: t0 + .seconds(2)) else { Issue.record("a new version is read"); return }
        #expect(second.version == 2 && store.reads == 2)
        #expect(feed.poll(store, now: t0 + .seconds(5)) == .unchanged)  // same version: domains not read
        #expect(store.reads == 2)
        store.fail(true)
        #expect(feed.poll(store, now: t0 + .seconds(8)) == .failed("Down()", firstFailure: true))
        #expect(feed.poll(store, now: t0 + .seconds(11)) == .failed("Down()", firstFailure: false))
        #expect(feed.message?.version == 2)  // the last good set stays
        store.fail(false)
        try store.addSendingDomain(SendingDomain(domain: "b.example", tenant: "acme", keys: [Self.edKey], createdAt: 0))
        guard case .changed(let third) = feed.poll(store, now: t0 + .seconds(11), force: true) else { Issue.record("forced read"); return }
        #expect(third.keys.map(\.description) == ["b.example/hato20261205e", "shop.example/hato20261205e", "shop.example/hato20261205r"])
    }
}
