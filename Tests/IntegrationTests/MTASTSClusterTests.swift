import Foundation
import HatoHTTP
import HatoIO
import HatoCrypto
import HatoTestKit
import Testing

extension Integration {
@Suite("MTA-STS in a cluster")
struct MTASTSClusterTests {
    @Test("enforce with a wrong MX defers and the MX records nothing; testing delivers; the nodes' TLS-RPT counts reach /v1/tls-reports and the CLI")
    func enforceAndTestingReported() throws {
        // Every MX host resolves to 127.0.0.91, where the capture MX (no STARTTLS) listens.
        let mxAddress = "127.0.0.91"
        let dir = NSTemporaryDirectory() + "hato-mtasts-" + Identifier.random(bytes: 4)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ca = try TestCA.make(in: dir)
        let policyCert = try ca.issue("policy", commonName: "mta-sts.enforce.test",
                                      subjectAltName: "DNS:mta-sts.enforce.test,DNS:mta-sts.testing.test")
        let https = try HTTPServer(address: SocketAddress(host: "127.0.0.90", port: 0),
                                   tls: try TLSContext.server(certificateChainPath: policyCert.certificate, privateKeyPath: policyCert.key)) { request in
            switch (request.headers["host"] ?? "").lowercased() {
            case "mta-sts.enforce.test":
                return HTTPResponse(status: 200, contentType: "text/plain", body: Array("version: STSv1\nmode: enforce\nmx: mx.enforce.test\nmax_age: 86400\n".utf8))
            case "mta-sts.testing.test":
                return HTTPResponse(status: 200, contentType: "text/plain", body: Array("version: STSv1\nmode: testing\nmx: mx.testing.test\nmax_age: 86400\n".utf8))
            default:
                return HTTPResponse(status: 404, contentType: "text/plain", body: [])
            }
        }
        https.start()
        defer { https.stop() }
        let dns = try TestDNS(records: [
            // enforce.test's policy names mx.enforce.test, but its MX record points elsewhere.
            "--mx-host=enforce.test,mx.outside.test,10", "--host-record=mx.outside.test,\(mxAddress)",
            "--txt-record=_mta-sts.enforce.test,v=STSv1; id=e1", "--host-record=mta-sts.enforce.test,127.0.0.90",
            "--mx-host=testing.test,mx.testing.test,10", "--host-record=mx.testing.test,\(mxAddress)",
            "--txt-record=_mta-sts.testing.test,v=STSv1; id=t1", "--host-record=mta-sts.testing.test,127.0.0.90",
        ], logDirectory: dir)
        defer { dns.stop() }
        let cluster = try LocalCluster(routesYAML: "routes: []\n",
                                       extraYAML: "dns: { nameservers: [\"127.0.0.1:\(dns.port)\"], timeout: 2s }\n",
                                       captureAddress: mxAddress)
        defer { cluster.shutdown() }
        let yaml = try String(contentsOfFile: cluster.configPath, encoding: .utf8)
            .replacingOccurrences(of: "delivery: { connections_per_ip: 4,", with: """
                delivery: { port: \(cluster.capture.address.port), allow_loopback_mx: true, mta_sts: { enabled: true, ca_file: \(ca.certificate), https_port: \(https.address.port) }, connections_per_ip: 4,
                """)
        try yaml.write(toFile: cluster.configPath, atomically: true, encoding: .utf8)
        do {
            try cluster.startCoordinator()
            try cluster.startNodesAndWait()
            let ids = try submitWithSmtplib(port: cluster.smtpPort, messages: [
                ("sender@example.org", ["a@enforce.test"], testMessage(1, to: "a@enforce.test")),
                ("sender@example.org", ["b@testing.test"], testMessage(2, to: "b@testing.test")),
            ], connections: 1, dir: cluster.dir)
            var enforced: [String: Any] = [:]
            try waitUntil("enforce.test deferred and testing.test delivered", timeout: 30) {
                enforced = ((try cluster.message(ids[0]))["recipients"] as? [[String: Any]])?.first ?? [:]
                let testing = ((try cluster.message(ids[1]))["recipients"] as? [[String: Any]])?.first ?? [:]
                return enforced["state"] as? String == "deferred" && testing["state"] as? String == "delivered"
            }
            let reply = "\(enforced["reply"] ?? enforced["text"] ?? enforced)"
            #expect(reply.contains("MTA-STS policy of enforce.test: mx.outside.test does not match the policy"), "\(enforced)")
            #expect(cluster.capture.received.allSatisfy { !$0.recipients.contains("a@enforce.test") }, "never sent, in clear or otherwise")
            #expect(cluster.capture.received.map(\.recipients) == [["b@testing.test"]])

            var rows: [[String: Any]] = []
            do {
                try waitUntil("TLS-RPT rows for both domains", timeout: 10) {
                    rows = try cluster.admin("/v1/tls-reports") as? [[String: Any]] ?? []
                    return Set(rows.compactMap { $0["policy_domain"] as? String }) == ["enforce.test", "testing.test"]
                }
            } catch {
                Issue.record("rows: \(rows)")
                throw error
            }
            let byDomain = Dictionary(rows.map { ($0["policy_domain"] as? String ?? "", $0) }, uniquingKeysWith: { a, _ in a })
            #expect(((byDomain["enforce.test"]?["failures"] as? [String: Int])?["validation-failure"] ?? 0) >= 1, "\(rows)")
            #expect((byDomain["testing.test"]?["failures"] as? [String: Int])?["starttls-not-supported"] == 1, "\(rows)")
            #expect(byDomain["testing.test"]?["policy_type"] as? String == "sts")
            let (status, output) = try cluster.cli(["tls-reports"])
            #expect(status == 0)
            #expect(output.contains("testing.test") && output.contains("starttls-not-supported=1"), "\(output)")
        } catch {
            Issue.record("\(error)\n\(cluster.logs)")
            throw error
        }
    }
}
}
