import Foundation
import HatoCrypto
import HatoDNS
import HatoIO
import HatoTestKit
import Testing

/// A dnsmasq instance serving a test zone on a loopback port (Debian's dnsmasq-base).
final class TestDNS: @unchecked Sendable {
    let port: UInt16
    private let process: ChildProcess

    /// - Parameter records: dnsmasq options such as `--mx-host=…`, `--host-record=…`.
    init(records: [String], logDirectory: String) throws {
        guard let dnsmasq = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw HarnessError("dnsmasq is not installed (Debian package dnsmasq-base; scripts/install-test-deps.sh installs it)")
        }
        port = try freePort()
        process = try ChildProcess(name: "dnsmasq", executable: dnsmasq, arguments: [
            "--no-daemon", "--port=\(port)", "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
            "--local=/test/", "--log-facility=-", "--user=root", "--pid-file=",
        ] + records, logDirectory: logDirectory)
        let resolver = DNSResolver(nameservers: [SocketAddress(host: "127.0.0.1", port: port)], timeout: 1)
        try waitUntil("dnsmasq answering", timeout: 10) {
            guard process.isRunning else { throw HarnessError("dnsmasq exited: \(process.log)") }
            if case .records = resolver.query("probe-\(Identifier.random(bytes: 3)).test", type: .a) { return true }
            if case .nxdomain = resolver.query("probe-\(Identifier.random(bytes: 3)).test", type: .a) { return true }
            return false
        }
    }

    func stop() { process.stop() }
}

extension Integration {
@Suite("MX path")
struct MXPathTests {
    @Test("mail for a domain without a static route goes to its MX found through a real DNS server")
    func deliversThroughMX() throws {
        // The MX's address is 127.0.0.60; the capture server listens there on a free port
        // and `delivery.port` points the nodes at it.
        let mxAddress = "127.0.0.60"
        let dir = NSTemporaryDirectory() + "hato-dns-" + Identifier.random(bytes: 4)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let dns = try TestDNS(records: [
            "--mx-host=mxpath.test,mx-low.mxpath.test,20",
            "--mx-host=mxpath.test,mx1.mxpath.test,10",
            "--host-record=mx1.mxpath.test,\(mxAddress)",
            // The preference-20 MX has no listener: it must not be tried first.
            "--host-record=mx-low.mxpath.test,127.0.0.61",
            // A domain with no MX: the implicit MX is its A record (RFC 5321 §5.1).
            "--host-record=implicit.test,\(mxAddress)",
        ], logDirectory: dir)
        defer { dns.stop() }
        let cluster = try LocalCluster(routesYAML: "routes: []\n",
                                       extraYAML: "dns: { nameservers: [\"127.0.0.1:\(dns.port)\"], timeout: 2s }\n",
                                       captureAddress: mxAddress)
        defer { cluster.shutdown() }
        // Re-point delivery at the capture server's port.
        let yaml = try String(contentsOfFile: cluster.configPath, encoding: .utf8)
            // The test MX hosts are loopback addresses: allowed here only (`allow_loopback_mx`, default false).
            .replacingOccurrences(of: "delivery: { connections_per_ip: 4,", with: "delivery: { port: \(cluster.capture.address.port), allow_loopback_mx: true, connections_per_ip: 4,")
        try yaml.write(toFile: cluster.configPath, atomically: true, encoding: .utf8)
        do {
            try cluster.startCoordinator()
            try cluster.startNodesAndWait()
            let count = 10
            var msgs: [(from: String, to: [String], content: [UInt8])] = (0..<count).map { i in
                ("sender@example.org", ["u\(i)@mxpath.test"], testMessage(i, to: "u\(i)@mxpath.test"))
            }
            msgs.append(("sender@example.org", ["x@implicit.test"], testMessage(99, to: "x@implicit.test")))
            // The NXDOMAIN failure's DSN goes to sender@mxpath.test, i.e. to the same test MX.
            msgs.append(("sender@mxpath.test", ["x@nonexistent.test"], testMessage(98, to: "x@nonexistent.test")))
            let ids = try submitWithSmtplib(port: cluster.smtpPort, messages: msgs, connections: 2, dir: cluster.dir)
            try cluster.waitForQueue(final: count + 3, timeout: 60)
            #expect(cluster.capture.received.filter { $0.reversePath.isEmpty }.map(\.recipients) == [["sender@mxpath.test"]], "one DSN")
            let received = cluster.capture.received.filter { !$0.reversePath.isEmpty }
            #expect(received.count == count + 1)
            #expect(Set(received.flatMap(\.recipients)) == Set((0..<count).map { "u\($0)@mxpath.test" } + ["x@implicit.test"]))
            #expect(received.allSatisfy { $0.localAddress == mxAddress })
            let first = ((try cluster.message(ids[0]))["recipients"] as? [[String: Any]])?.first ?? [:]
            #expect(first["mx_host"] as? String == "mx1.mxpath.test")
            // NXDOMAIN is permanent: the recipient fails without retries.
            let nx = ((try cluster.message(ids[count + 1]))["recipients"] as? [[String: Any]])?.first ?? [:]
            #expect(nx["state"] as? String == "failed")
            #expect(nx["attempts"] as? Int == 1)
        } catch {
            Issue.record("\(error)\n\(cluster.logs)")
            throw error
        }
    }
}
}
