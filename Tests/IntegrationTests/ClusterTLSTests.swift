import Foundation
import HatoTestKit
import Testing

extension Integration {
@Suite("Cluster protocol over TLS")
struct ClusterTLSTests {
    /// The PKI of a test cluster: one CA, the coordinator's certificate (IP SAN 127.0.0.1), a
    /// certificate per node, and a node-b certificate from another CA.
    struct PKI {
        let ca: TestCA
        let coordinator: TestCertificate
        let nodeA: TestCertificate
        let nodeB: TestCertificate
        let intruderB: TestCertificate
    }

    static func makePKI(in dir: String) throws -> PKI {
        let ca = try TestCA.make(in: dir, name: "cluster-ca")
        let other = try TestCA.make(in: dir, name: "other-ca")
        return PKI(ca: ca, coordinator: try ca.issue("coordinator", commonName: "coordinator.it.test", subjectAltName: "IP:127.0.0.1"),
                   nodeA: try ca.issue("node-a", commonName: "node-a"), nodeB: try ca.issue("node-b", commonName: "node-b"),
                   intruderB: try other.issue("intruder-b", commonName: "node-b"))
    }

    /// cluster.yml text with `cluster.tls` and per-node pairs (`nodeB` replaces node-b's pair);
    /// `tls: false` removes every TLS key (a node configured for plaintext).
    static func tlsYAML(_ original: String, _ pki: PKI, nodeB: TestCertificate? = nil, tls: Bool = true) -> String {
        guard tls else { return original }
        let b = nodeB ?? pki.nodeB
        return original
            .replacingOccurrences(of: "secret: \"integration-test-secret-0123456789\" }",
                                  with: "secret: \"integration-test-secret-0123456789\", tls: { certificate: \(pki.coordinator.certificate), private_key: \(pki.coordinator.key), ca: \(pki.ca.certificate) } }")
            .replacingOccurrences(of: "{ id: node-a, data_dir: var/node-a }",
                                  with: "{ id: node-a, data_dir: var/node-a, tls: { certificate: \(pki.nodeA.certificate), private_key: \(pki.nodeA.key) } }")
            .replacingOccurrences(of: "{ id: node-b, data_dir: var/node-b }",
                                  with: "{ id: node-b, data_dir: var/node-b, tls: { certificate: \(b.certificate), private_key: \(b.key) } }")
    }

    @Test("a coordinator and two nodes over mutual TLS deliver mail; a node with another CA's certificate and a plaintext node are refused and logged")
    func clusterOverTLS() throws {
        let cluster = try LocalCluster()
        defer { cluster.shutdown() }
        do {
            let pki = try Self.makePKI(in: cluster.dir)
            let plain = try String(contentsOfFile: cluster.configPath, encoding: .utf8)
            try Self.tlsYAML(plain, pki).write(toFile: cluster.configPath, atomically: true, encoding: .utf8)
            try cluster.startCoordinator()
            try cluster.startNodesAndWait()
            let log = cluster.coordinator?.log ?? ""
            #expect(log.contains("node link over TLS") && log.contains("\"certificate\":\"node-a\"") && log.contains("\"certificate\":\"node-b\""),
                    "both links encrypted, with the nodes' client certificates")
            let ids = try submitWithSmtplib(port: cluster.smtpPort, messages: (0..<20).map { i in
                ("sender@example.org", ["tls\(i)@hato.test"], testMessage(i, to: "tls\(i)@hato.test"))
            }, dir: cluster.dir)
            #expect(ids.count == 20)
            try cluster.waitForQueue(final: 20, timeout: 60)
            let bySource = Dictionary(grouping: cluster.capture.received, by: \.peerAddress).mapValues(\.count)
            #expect(cluster.capture.received.count == 20)
            #expect(Set(bySource.keys).isSubset(of: ["127.0.0.10", "127.0.0.11", "127.0.0.12", "127.0.0.13"]))

            // node-b restarted with a certificate of another CA: refused at the TLS handshake.
            cluster.nodeProcess("node-b")?.stop()
            try cluster.waitForNodes(["node-b"], state: "down", timeout: 20)
            let intruderConfig = (cluster.dir as NSString).appendingPathComponent("intruder.yml")
            try Self.tlsYAML(plain, pki, nodeB: pki.intruderB).write(toFile: intruderConfig, atomically: true, encoding: .utf8)
            let intruder = try ChildProcess(name: "intruder-b", executable: executablePath("hato-node"),
                                            arguments: ["run", "--config", intruderConfig, "--id", "node-b"], logDirectory: cluster.dir)
            defer { intruder.stop() }
            try waitUntil("the coordinator refuses the foreign certificate", timeout: 20) {
                (cluster.coordinator?.log ?? "").components(separatedBy: "\n").contains {
                    $0.contains("node connection refused") && $0.contains("certificate")
                }
            }
            Thread.sleep(forTimeInterval: 1)
            #expect((try cluster.node("node-b"))["state"] as? String == "down", "the intruder never joined")
            intruder.stop()

            // node-b without cluster.tls (plaintext) against the TLS coordinator: no handshake, refused.
            let plainConfig = (cluster.dir as NSString).appendingPathComponent("plaintext.yml")
            try plain.write(toFile: plainConfig, atomically: true, encoding: .utf8)
            let before = (cluster.coordinator?.log ?? "").components(separatedBy: "\n").filter { $0.contains("no TLS handshake") }.count
            let plaintext = try ChildProcess(name: "plaintext-b", executable: executablePath("hato-node"),
                                             arguments: ["run", "--config", plainConfig, "--id", "node-b"], logDirectory: cluster.dir)
            defer { plaintext.stop() }
            try waitUntil("the coordinator refuses the plaintext node", timeout: 25) {
                (cluster.coordinator?.log ?? "").components(separatedBy: "\n").filter { $0.contains("no TLS handshake") }.count > before
            }
            #expect((try cluster.node("node-b"))["state"] as? String == "down", "the plaintext node never joined")
            try waitUntil("the plaintext node says why", timeout: 15) { plaintext.log.contains("does it require TLS") }
            plaintext.stop()
            let finalLog = cluster.coordinator?.log ?? ""
            #expect(!finalLog.contains("integration-test-secret"), "the secret is never logged")
        } catch {
            Issue.record("\(error)\n\(cluster.logs)")
            throw error
        }
    }
}
}
