import Foundation
import HatoTestKit
import Testing

extension Integration {
@Suite("Admin API over HTTPS and admin_token_file")
struct AdminTLSTests {
    @Test("curl with --cacert reads /v1/status over HTTPS; the CLI uses admin_token_file and the pinned certificate; a node host without the token file still loads the config")
    func adminOverHTTPS() throws {
        let cluster = try LocalCluster()
        defer { cluster.shutdown() }
        do {
            let cert = try TestCertificate.make(in: cluster.dir, name: "admin", commonName: "admin.it.test", subjectAltName: "IP:127.0.0.1")
            let tokenFile = (cluster.dir as NSString).appendingPathComponent("admin.token")
            try (cluster.token + "\n").write(toFile: tokenFile, atomically: true, encoding: .utf8)
            chmod(tokenFile, 0o600)
            let original = try String(contentsOfFile: cluster.configPath, encoding: .utf8)
            let yaml = original.replacingOccurrences(of: "admin_token: \"\(cluster.token)\"",
                                                     with: "admin_token_file: admin.token\n  admin_tls: { certificate: admin-cert.pem, private_key: admin-key.pem }")
            #expect(yaml != original)
            try yaml.write(toFile: cluster.configPath, atomically: true, encoding: .utf8)
            try cluster.startCoordinator()
            let url = "https://127.0.0.1:\(cluster.adminPort)/v1/status"
            let (ok, body) = try runProgram("/usr/bin/curl", ["--silent", "--show-error", "--max-time", "10", "--cacert", cert.certificate,
                                                             "-H", "Authorization: Bearer \(cluster.token)", url], dir: cluster.dir)
            #expect(ok == 0, "curl: \(body)")
            let json = try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]
            #expect(json?["cluster"] as? String == "it", "\(body)")
            let (untrusted, why) = try runProgram("/usr/bin/curl", ["--silent", "--show-error", "--max-time", "10", url], dir: cluster.dir)
            #expect(untrusted == 60, "an unknown certificate is refused by curl: \(why)")
            let (_, code) = try runProgram("/usr/bin/curl", ["--silent", "--max-time", "10", "--cacert", cert.certificate, "-o", "/dev/null",
                                                            "-w", "%{http_code}", "-H", "Authorization: Bearer wrong", url], dir: cluster.dir)
            #expect(code == "401")
            let (plain, _) = try runProgram("/usr/bin/curl", ["--silent", "--max-time", "10", "http://127.0.0.1:\(cluster.adminPort)/v1/status"], dir: cluster.dir)
            #expect(plain != 0, "plain HTTP gets no answer from the HTTPS listener")

            let (status, out) = try cluster.cli(["status"])
            #expect(status == 0 && out.contains("cluster it"), "CLI over HTTPS with admin_token_file: \(out)")

            // A host without the token file: the CLI says which key, a node still loads the file.
            let elsewhere = (cluster.dir as NSString).appendingPathComponent("no-token.yml")
            try yaml.replacingOccurrences(of: "admin_token_file: admin.token", with: "admin_token_file: missing.token")
                .write(toFile: elsewhere, atomically: true, encoding: .utf8)
            let (refused, refusal) = try runProgram(try executablePath("hato-coordinator"), ["status", "--config", elsewhere], dir: cluster.dir)
            #expect(refused == 1 && refusal.contains("admin_token_file") && refusal.contains("missing.token"), "\(refusal)")
            let (node, nodeOut) = try runProgram(try executablePath("hato-node"), ["bindable", "--config", elsewhere, "--id", "node-a"], dir: cluster.dir)
            #expect(node == 0, "a node host needs no admin token: \(nodeOut)")
            let log = cluster.coordinator?.log ?? ""
            #expect(log.contains("https://127.0.0.1:\(cluster.adminPort)") && !log.contains(cluster.token), "served over HTTPS; the token is never logged")
        } catch {
            Issue.record("\(error)\n\(cluster.logs)")
            throw error
        }
    }
}
}
