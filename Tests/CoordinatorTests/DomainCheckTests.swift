#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HatoTestKit
import Testing
@testable import HatoCoordinator
@testable import HatoDKIM
@testable import HatoDNS
@testable import HatoIO

/// `domain check` (issue 16) against a real DNS server: a private dnsmasq on 127.0.0.1 serving
/// the `test` zone and the reverse zones, never the system resolver.
@Suite("Domain check", .serialized)
struct DomainCheckTests {
    static let edKey = SendingDomainTests.edKey
    static let rsaKey = SendingDomainTests.rsaKey
    static let ips = [(address: "192.0.2.4", helo: "mta1.relay.test"), (address: "192.0.2.5", helo: "mta2.relay.test"),
                      (address: "2001:db8::7", helo: "mta3.relay.test")]

    /// dnsmasq `--txt-record` for a value: its 255-octet strings as separate arguments.
    static func txt(_ name: String, _ value: String) -> String {
        "--txt-record=\(name)," + TXTStrings.split(value).joined(separator: ",")
    }

    @Test("ok, missing and wrong: DKIM keys, SPF include or IPs, DMARC, PTR and FCrDNS of each sending IP")
    func check() throws {
        let rsaValue = "v=DKIM1; k=rsa; p=" + SendingDomainTests.rsaP
        let records = [
            // ok.test: everything as required (DMARC with another policy is still ok).
            Self.txt("hato20261205e._domainkey.ok.test", "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="),
            Self.txt("hato20261205r._domainkey.ok.test", rsaValue),
            Self.txt("ok.test", "v=spf1 include:_spf.relay.test ~all"), Self.txt("ok.test", "google-site-verification=abc"),
            Self.txt("_dmarc.ok.test", "v=DMARC1; p=reject"),
            // bad.test: another ed25519 key, no rsa key, an SPF record without the include, no v=DMARC1.
            Self.txt("hato20261205e._domainkey.bad.test", "v=DKIM1; k=ed25519; p=AAAAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="),
            Self.txt("bad.test", "v=spf1 ip4:198.51.100.0/24 -all"),
            Self.txt("_dmarc.bad.test", "hello"),
            // ips.test: SPF by addresses; two SPF records at twice.test.
            Self.txt("ips.test", "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 ~all"),
            Self.txt("twice.test", "v=spf1 include:_spf.relay.test ~all"), Self.txt("twice.test", "v=spf1 -all"),
            // The sending IPs: 192.0.2.4 right both ways; 192.0.2.5's PTR names another host and its
            // HELO name resolves elsewhere; 2001:db8::7 has neither.
            "--host-record=mta1.relay.test,192.0.2.4",
            "--ptr-record=5.2.0.192.in-addr.arpa,other.relay.test",
            "--host-record=mta2.relay.test,198.51.100.9",
        ]
        try withDnsmasq(records) { server in
            let resolver = DNSResolver(nameservers: [server], timeout: 2)
            func run(_ domain: String, include: String? = "_spf.relay.test", keys: [DomainSigningKey] = [Self.edKey, Self.rsaKey]) -> [DomainCheckItem] {
                DomainCheck(records: DomainRecords(domain: domain, keys: keys, ips: Self.ips, spfInclude: include)).run(using: resolver)
            }
            func statuses(_ items: [DomainCheckItem]) -> [String] { items.map { "\($0.kind.rawValue) \($0.name) \($0.status.rawValue)" } }

            let ok = run("ok.test")
            #expect(statuses(ok) == [
                "dkim hato20261205e._domainkey.ok.test ok", "dkim hato20261205r._domainkey.ok.test ok",
                "spf ok.test ok", "dmarc _dmarc.ok.test ok",
                "ptr 4.2.0.192.in-addr.arpa ok", "forward mta1.relay.test ok",
                "ptr 5.2.0.192.in-addr.arpa wrong", "forward mta2.relay.test wrong",
                "ptr 7.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa missing", "forward mta3.relay.test missing",
            ])
            #expect(ok[2].found == ["v=spf1 include:_spf.relay.test ~all"])
            #expect(ok[6].found == ["other.relay.test"])
            #expect(ok[7].found == ["198.51.100.9"])
            #expect(ok[7].detail == "mta2.relay.test does not resolve back to 192.0.2.5")

            let bad = run("bad.test")
            #expect(statuses(bad).prefix(4) == [
                "dkim hato20261205e._domainkey.bad.test wrong", "dkim hato20261205r._domainkey.bad.test missing",
                "spf bad.test wrong", "dmarc _dmarc.bad.test wrong",
            ])
            #expect(bad[0].found == ["v=DKIM1; k=ed25519; p=AAAAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="])
            #expect(bad[2].detail == "the SPF record lacks include:_spf.relay.test")
            #expect(bad[2].description == "wrong         spf     bad.test: the SPF record lacks include:_spf.relay.test (found: \"v=spf1 ip4:198.51.100.0/24 -all\")")
            #expect(ok[0].description == "ok            dkim    hato20261205e._domainkey.ok.test")

            let none = run("none.test")
            #expect(none.prefix(4).map(\.status) == [.missing, .missing, .missing, .missing])

            // Without an include name, an SPF record that covers every sending IP is ok; one that
            // misses some is wrong, naming them.
            #expect(run("ips.test", include: nil).first { $0.kind == .spf }?.status == .ok)
            let partial = run("bad.test", include: nil).first { $0.kind == .spf }
            #expect(partial?.status == .wrong)
            #expect(partial?.detail == "the SPF record lacks 192.0.2.4, 192.0.2.5, 2001:db8::7")
            let twice = run("twice.test").first { $0.kind == .spf }
            #expect(twice?.status == .wrong)
            #expect(twice?.found.count == 2)
        }
        // A server that does not answer: lookups fail, nothing is called missing.
        let silent = DNSResolver(nameservers: [SocketAddress(host: "127.0.0.1", port: 9)], timeout: 1)
        let items = DomainCheck(records: DomainRecords(domain: "ok.test", keys: [Self.edKey], ips: [], spfInclude: nil)).run(using: silent)
        #expect(items.map(\.status) == [.lookupFailed, .lookupFailed, .lookupFailed])
    }
}

private struct DNSServerFailure: Error, CustomStringConvertible {
    let description: String
}

/// Runs `body` with a private dnsmasq on 127.0.0.1 (a free UDP port) answering for `test`,
/// `in-addr.arpa` and `ip6.arpa` from `records` only (NXDOMAIN for the rest). Stopped on every path.
private func withDnsmasq(_ records: [String], _ body: (SocketAddress) throws -> Void) throws {
    guard let binary = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
        throw DNSServerFailure(description: "dnsmasq is not installed (Debian package dnsmasq-base)")
    }
    let logPath = NSTemporaryDirectory() + "hato-dnsmasq-\(UUID().uuidString).log"
    defer { try? FileManager.default.removeItem(atPath: logPath) }
    for _ in 0..<5 {
        let port = freeUDPPort()
        let pid = try spawnChild(binary, [
            "--no-daemon", "--port=\(port)", "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
            "--local=/test/", "--local=/in-addr.arpa/", "--local=/ip6.arpa/", "--conf-file=/dev/null", "--pid-file=",
            "--host-record=ready.test,127.0.0.99",
        ] + records, logPath: logPath, truncate: true)
        defer {
            kill(pid, SIGTERM)
            var st: Int32 = 0
            while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
        }
        let server = SocketAddress(host: "127.0.0.1", port: port)
        let probe = DNSResolver(nameservers: [server], timeout: 1)
        let deadline = Date().addingTimeInterval(5)
        var st: Int32 = 0
        while Date() < deadline && waitpid(pid, &st, WNOHANG) == 0 {
            if case .records = probe.query("ready.test", type: .a) { try body(server); return }
            usleep(50_000)
        }
    }
    throw DNSServerFailure(description: "dnsmasq did not start: \((try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "")")
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
private func freeUDPPort() -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    defer { close(fd) }
    var sa = sockaddr_in()
    sa.sin_family = sa_family_t(AF_INET)
    sa.sin_addr.s_addr = inet_addr("127.0.0.1")
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
    _ = withUnsafeMutablePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    return UInt16(bigEndian: sa.sin_port)
}
