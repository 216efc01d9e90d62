#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
@testable import ClusterProtocol
@testable import HatoConfig
@testable import HatoCrypto
@testable import HatoDNS
@testable import HatoIO
@testable import HatoNode

/// MX resolution through a real DNS server (dnsmasq on loopback) into real deliveries to
/// scripted MX servers, through the same `DeliveryEngine` the node agent uses
/// (filter: `DeliveryDNSTests`).
@Suite("DeliveryDNSTests", .serialized)
struct DeliveryDNSTests {}

/// A private dnsmasq answering the `test` zone on a free UDP port of 127.0.0.1.
final class TestDNSServer: @unchecked Sendable {
    let port: UInt16
    private let process: Spawned

    init(records: [String], dir: String) throws {
        guard let binary = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw TestFailure("dnsmasq is not installed (Debian package dnsmasq-base; scripts/install-test-deps.sh)")
        }
        for attempt in 0..<5 {
            let port = TestDNSServer.freeUDPPort()
            let p = try Spawned(binary, [
                "--no-daemon", "--port=\(port)", "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
                "--local=/test/", "--conf-file=/dev/null", "--pid-file=", "--local-ttl=300", "--user=root",
                "--host-record=ready.test,127.0.0.99",
            ] + records, logPath: dir + "/dnsmasq-\(attempt).log")
            let probe = DNSResolver(nameservers: [SocketAddress(host: "127.0.0.1", port: port)], timeout: 1)
            let deadline = Date().addingTimeInterval(5)
            while Date() < deadline && p.isRunning {
                if case .records = probe.query("ready.test", type: .a) {
                    self.port = port
                    self.process = p
                    return
                }
                usleep(50_000)
            }
            p.stop()
        }
        throw TestFailure("dnsmasq did not start")
    }

    var address: SocketAddress { SocketAddress(host: "127.0.0.1", port: port) }

    func stop() { process.stop() }

    static func freeUDPPort() -> UInt16 {
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
}

/// Scripted MX servers on several loopback addresses, all on one port (the MX port).
func scriptedMXs(_ hosts: [String], _ script: ScriptedMX.Script = ScriptedMX.Script()) throws -> [ScriptedMX] {
    for _ in 0..<20 {
        let first = try ScriptedMX(script, host: hosts[0])
        var all = [first]
        do {
            for h in hosts.dropFirst() { all.append(try ScriptedMX(script, host: h, port: first.port)) }
            return all
        } catch {
            for s in all { s.stop() }
        }
    }
    throw TestFailure("no common free port on \(hosts)")
}

/// A configuration for the engine: DNS at `dns`, MX port `port`, extra YAML appended.
func engineConfig(dns: SocketAddress?, port: UInt16, delivery: String = "", dir: String, extra: String = "") throws -> ClusterConfig {
    let yaml = """
        cluster: { name: t, secret: "test-secret-0123456789abcdef" }
        coordinator: { listen: 127.0.0.1:1, admin_listen: 127.0.0.1:2, admin_token: tok, data_dir: \(dir)/c }
        smtp: { listen: [127.0.0.1:3], hostname: relay.test }
        nodes: [ { id: n1, data_dir: \(dir)/n1 } ]
        pools: [ { name: p } ]
        ips: [ { address: 127.0.0.10, helo: mta10.example.org, pool: p } ]
        routing: { default_pool: p }
        \(dns.map { "dns: { nameservers: [\"127.0.0.1:\($0.port)\"], timeout: 2s }" } ?? "")
        delivery: { port: \(port), connect_timeout: 2s, command_timeout: 5s, data_timeout: 5s\(delivery) }
        \(extra)
        """
    return try ClusterConfig.parse(yaml, path: dir + "/cluster.yml")
}

func lease(_ domain: String, recipients n: Int = 1, ip: String = "127.0.0.10", body: [UInt8] = sampleMessage()) -> Lease {
    Lease(leaseID: "L-\(Identifier.random(bytes: 3))", sendingIP: ip, helo: "mta10.example.org", messageID: "M1",
          reversePath: "news@example.org", domain: domain,
          recipients: (1...n).map { LeasedRecipient(id: Int64($0), address: "u\($0)@\(domain)") }, expiresIn: 30,
          bodyOffset: 0, bodyLength: body.count)
}

extension DeliveryDNSTests {
    @Test("null MX, no MX → A, CNAME'd MX, equal-preference spread, MX on 127.0.0.1 without a route")
    func mxCases() throws {
        let dir = try temporaryDirectory("hato-dnsdel")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let mxs = try scriptedMXs(["127.0.0.51", "127.0.0.52", "127.0.0.53", "127.0.0.54", "127.0.0.55", "127.0.0.56", "127.0.0.1"])
        defer { for m in mxs { m.stop() } }
        let (nullA, aOnly, cnamed, s1, s2, s3, localhost) = (mxs[0], mxs[1], mxs[2], mxs[3], mxs[4], mxs[5], mxs[6])
        let dns = try TestDNSServer(records: [
            // Null MX, with an A record that must never be tried (RFC 7505 §3).
            "--mx-host=nullmx.test,.,0", "--host-record=nullmx.test,127.0.0.51",
            // No MX: the implicit MX is the A record (RFC 5321 §5.1).
            "--host-record=aonly.test,127.0.0.52",
            // The MX host is a CNAME.
            "--mx-host=cn.test,alias.cn.test,10", "--cname=alias.cn.test,real.cn.test", "--host-record=real.cn.test,127.0.0.53",
            // Three MX hosts of equal preference.
            "--mx-host=spread.test,mx1.spread.test,10", "--mx-host=spread.test,mx2.spread.test,10", "--mx-host=spread.test,mx3.spread.test,10",
            "--host-record=mx1.spread.test,127.0.0.54", "--host-record=mx2.spread.test,127.0.0.55", "--host-record=mx3.spread.test,127.0.0.56",
            // An MX on this host's loopback address.
            "--mx-host=selfloop.test,mx.selfloop.test,10", "--host-record=mx.selfloop.test,127.0.0.1",
        ], dir: dir)
        defer { dns.stop() }
        let lenient = try DeliveryEngine(config: engineConfig(dns: dns.address, port: nullA.port, delivery: ", allow_loopback_mx: true", dir: dir),
                                         tlsClient: .some(nil))
        defer { lenient.shutdown() }
        let deadline = Date().addingTimeInterval(30)

        let null = lenient.deliver(lease: lease("nullmx.test"), body: sampleMessage(), deadline: deadline)
        #expect(null.results.map(\.status) == [.failed])
        #expect(null.results.first?.reply.enhanced?.description == "5.1.10")
        #expect(nullA.connectionCount == 0)

        let implicit = lenient.deliver(lease: lease("aonly.test", recipients: 2), body: sampleMessage(), deadline: deadline)
        #expect(implicit.results.map(\.status) == [.delivered, .delivered])
        #expect(implicit.results.first?.mxHost == "aonly.test")
        #expect(aOnly.messages.count == 1)
        #expect(aOnly.connections.first?.peer == "127.0.0.10")

        let viaCNAME = lenient.deliver(lease: lease("cn.test"), body: sampleMessage(), deadline: deadline)
        #expect(viaCNAME.results.map(\.status) == [.delivered])
        #expect(viaCNAME.results.first?.mxHost == "alias.cn.test")
        #expect(viaCNAME.results.first?.remoteAddress == "127.0.0.53")
        #expect(cnamed.messages.count == 1)

        // Equal preference: the first host tried is spread evenly over 600 resolutions.
        var first: [String: Int] = [:]
        for _ in 0..<600 {
            guard case .success(let targets) = lenient.nextHops.targets(for: "spread.test", staticNextHop: nil) else {
                Issue.record("spread.test did not resolve"); return
            }
            #expect(Set(targets.map(\.host)) == ["mx1.spread.test", "mx2.spread.test", "mx3.spread.test"])
            first[targets[0].host, default: 0] += 1
        }
        for host in ["mx1.spread.test", "mx2.spread.test", "mx3.spread.test"] {
            let share = Double(first[host] ?? 0) / 600
            #expect(share >= 0.25 && share <= 0.42, "\(host): \(first[host] ?? 0) of 600")
        }
        print("equal-preference spread of 600 first attempts: \(first.sorted { $0.key < $1.key })")
        // …and real deliveries land on all three (60 deliveries: the chance that one host gets
        // none is 3 × (2/3)^60 ≈ 1e-10; with 12 it was 2 %, a flaky test).
        for i in 0..<60 { _ = lenient.deliver(lease: lease("spread.test"), body: sampleMessage("s\(i)"), deadline: deadline) }
        #expect([s1, s2, s3].allSatisfy { $0.messages.count >= 1 }, "\([s1, s2, s3].map(\.messages.count))")
        #expect(s1.messages.count + s2.messages.count + s3.messages.count == 60)

        // An MX on 127.0.0.1 without an explicit route: no self-delivery.
        let strict = try DeliveryEngine(config: engineConfig(dns: dns.address, port: nullA.port, dir: dir), tlsClient: .some(nil))
        defer { strict.shutdown() }
        let loop = strict.deliver(lease: lease("selfloop.test"), body: sampleMessage(), deadline: deadline)
        #expect(loop.results.map(\.status) == [.failed])
        #expect(loop.results.first?.reply.enhanced?.description == "5.4.6")
        #expect(loop.results.first?.reply.text.contains("loops back to myself") == true)
        #expect(localhost.connectionCount == 0)
        // The strict engine also refuses the loopback test MX hosts; an explicit route is honoured.
        #expect(strict.deliver(lease: lease("aonly.test"), body: sampleMessage(), deadline: deadline).results.first?.reply.enhanced?.description == "5.4.6")
        let routed = try DeliveryEngine(config: engineConfig(dns: dns.address, port: nullA.port, dir: dir,
                                                             extra: "routes: [ { domain: selfloop.test, next_hop: \"127.0.0.1:\(localhost.port)\" } ]"),
                                        tlsClient: .some(nil))
        defer { routed.shutdown() }
        #expect(routed.deliver(lease: lease("selfloop.test"), body: sampleMessage(), deadline: deadline).results.map(\.status) == [.delivered])
        #expect(localhost.messages.count == 1)
    }

    @Test("SERVFAIL-like failures defer, NXDOMAIN fails, and the next MX is tried when the first refuses")
    func failuresAndFallback() throws {
        let dir = try temporaryDirectory("hato-dnsdel")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let mxs = try scriptedMXs(["127.0.0.57", "127.0.0.58"])
        defer { for m in mxs { m.stop() } }
        let dns = try TestDNSServer(records: [
            "--mx-host=fallback.test,mx1.fallback.test,10", "--mx-host=fallback.test,mx2.fallback.test,20",
            // mx1 has no listener on the MX port; mx2 is the scripted MX.
            "--host-record=mx1.fallback.test,127.0.0.59", "--host-record=mx2.fallback.test,127.0.0.58",
        ], dir: dir)
        defer { dns.stop() }
        let engine = try DeliveryEngine(config: engineConfig(dns: dns.address, port: mxs[0].port, delivery: ", allow_loopback_mx: true", dir: dir),
                                        tlsClient: .some(nil))
        defer { engine.shutdown() }
        let deadline = Date().addingTimeInterval(30)
        let fb = engine.deliver(lease: lease("fallback.test"), body: sampleMessage(), deadline: deadline)
        #expect(fb.results.map(\.status) == [.delivered])
        #expect(fb.results.first?.mxHost == "mx2.fallback.test")
        let nx = engine.deliver(lease: lease("nothere.test"), body: sampleMessage(), deadline: deadline)
        #expect(nx.results.first?.status == .failed)
        #expect(nx.results.first?.reply.enhanced?.description == "5.1.2")
        // Outside the test zone dnsmasq refuses: temporary.
        let refused = engine.deliver(lease: lease("example.invalid"), body: sampleMessage(), deadline: deadline)
        #expect(refused.results.first?.status == .deferred)
        #expect(refused.results.first?.reply.enhanced?.description == "4.4.3")
    }
}
