import Foundation
import HatoIO
import HatoTestKit
import Testing

extension Integration {
@Suite("hato-coordinator check and hato-node check")
struct ConfigCheckTests {
    /// A directory with a certificate pair, a second certificate, a DKIM key and a cluster.yml
    /// template (`{SMTP_TLS}`, `{DKIM}`, `{LISTEN}`, `{IPS}` filled in per case).
    struct Fixture {
        let dir: String
        let cert: TestCertificate
        let other: TestCertificate
        let smtpPort: UInt16
        let adminPort: UInt16

        init() throws {
            dir = try makeTempDirectory("hato-check-")
            cert = try TestCertificate.make(in: dir, name: "relay")
            other = try TestCertificate.make(in: dir, name: "other", commonName: "other.it.test", subjectAltName: "DNS:other.it.test")
            smtpPort = try freePort()
            adminPort = try freePort()
            let (status, out) = try runProgram(try executablePath("hato-node"), ["dkim-keygen", "--domain", "example.org", "--selector", "s1",
                                                                                 "--out", (dir as NSString).appendingPathComponent("dkim.pem")], dir: dir)
            guard status == 0 else { throw HarnessError("dkim-keygen: \(out)") }
        }

        /// Writes cluster.yml and returns its path.
        func write(name: String = "cluster.yml", listen: String? = nil, smtpTLS: String? = nil, dkimKey: String = "dkim.pem",
                   ips: String = "- { address: 127.0.0.10, helo: mta10.it.test, pool: transactional, nodes: [node-a] }") throws -> String {
            let listenAddress = try listen ?? "127.0.0.1:\(freePort())"
            let yaml = """
                cluster: { name: it, secret: "integration-test-secret-0123456789" }
                coordinator:
                  listen: \(listenAddress)
                  admin_listen: 127.0.0.1:\(adminPort)
                  admin_token: "check-test-token"
                  data_dir: var/coordinator
                smtp:
                  listen: [127.0.0.1:\(smtpPort)]
                  hostname: relay.it.test
                  tls: { certificate: \(smtpTLS ?? "relay-cert.pem"), private_key: relay-key.pem }
                nodes:
                  - { id: node-a, data_dir: var/node-a }
                pools:
                  - { name: transactional }
                ips:
                  \(ips)
                routing: { default_pool: transactional }
                dkim:
                  - { domain: example.org, selector: s1, private_key: \(dkimKey), algorithm: rsa-sha256 }
                """
            let path = (dir as NSString).appendingPathComponent(name)
            try yaml.write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }

        func coordinatorCheck(_ path: String) throws -> (Int32, String) {
            try runProgram(try executablePath("hato-coordinator"), ["check", "--config", path], dir: dir)
        }
    }

    /// The report line of `key`, if any.
    func line(_ output: String, _ key: String) -> String? {
        output.components(separatedBy: "\n").first { $0.dropFirst(9).hasPrefix(key + ":") }
    }

    @Test("a good file passes (exit 0, an ok line per item); a missing DKIM key, a key of another certificate and an unbindable listen address are errors (exit 1) naming the file or address")
    func coordinatorCheck() throws {
        let f = try Fixture()
        defer { try? FileManager.default.removeItem(atPath: f.dir) }
        let (good, goodOut) = try f.coordinatorCheck(try f.write())
        #expect(good == 0, "\(goodOut)")
        #expect(line(goodOut, "smtp.tls")?.hasPrefix("ok ") == true, "\(goodOut)")
        #expect(line(goodOut, "dkim[0].private_key")?.contains("rsa-sha256") == true)
        #expect(line(goodOut, "coordinator.listen")?.hasPrefix("ok ") == true)
        #expect(goodOut.contains("check passed"))

        let (missing, missingOut) = try f.coordinatorCheck(try f.write(dkimKey: "keys/nosuch.pem"))
        #expect(missing == 1)
        let dkimLine = line(missingOut, "dkim[0].private_key") ?? ""
        #expect(dkimLine.hasPrefix("error ") && dkimLine.contains("\(f.dir)/keys/nosuch.pem"), "\(missingOut)")
        #expect(missingOut.contains("check failed: 1 error"))

        let (mismatch, mismatchOut) = try f.coordinatorCheck(try f.write(smtpTLS: "other-cert.pem"))
        #expect(mismatch == 1)
        let tlsLine = line(mismatchOut, "smtp.tls") ?? ""
        #expect(tlsLine.hasPrefix("error ") && tlsLine.contains("does not match") && tlsLine.contains("relay-key.pem"), "\(mismatchOut)")

        let busy = try Socket.listen(on: SocketAddress(host: "127.0.0.1", port: 0))
        defer { busy.close() }
        let port = busy.localAddress?.port ?? 0
        let (inUse, inUseOut) = try f.coordinatorCheck(try f.write(listen: "127.0.0.1:\(port)"))
        #expect(inUse == 1)
        let listenLine = line(inUseOut, "coordinator.listen") ?? ""
        #expect(listenLine.hasPrefix("error ") && listenLine.contains("127.0.0.1:\(port) cannot be bound"), "\(inUseOut)")
        let (foreign, foreignOut) = try f.coordinatorCheck(try f.write(listen: "192.0.2.1:7601"))
        #expect(foreign == 1 && line(foreignOut, "coordinator.listen")?.contains("192.0.2.1:7601 cannot be bound") == true, "\(foreignOut)")

        let (broken, brokenOut) = try f.coordinatorCheck(try f.write(ips: "- { address: 127.0.0.10, helo: mta10.it.test, pool: nosuch }"))
        #expect(broken == 1 && line(brokenOut, "config")?.contains("cluster.yml:16: ips[0].pool") == true, "\(brokenOut)")
    }

    @Test("hato-node check: a sending IP this host cannot bind is a warning (exit 0); a missing DKIM key is an error (exit 1); an unknown node id is an error")
    func nodeCheck() throws {
        let f = try Fixture()
        defer { try? FileManager.default.removeItem(atPath: f.dir) }
        let node = try executablePath("hato-node")
        let ips = "- { address: 127.0.0.10, helo: mta10.it.test, pool: transactional, nodes: [node-a] }\n  - { address: 192.0.2.55, helo: far.it.test, pool: transactional }"
        let (ok, okOut) = try runProgram(node, ["check", "--config", try f.write(ips: ips), "--id", "node-a"], dir: f.dir)
        #expect(ok == 0, "\(okOut)")
        #expect(line(okOut, "ips[0] 127.0.0.10")?.hasPrefix("ok ") == true, "\(okOut)")
        let far = line(okOut, "ips[1] 192.0.2.55") ?? ""
        #expect(far.hasPrefix("warning ") && far.contains("cannot bind"), "\(okOut)")
        let (bad, badOut) = try runProgram(node, ["check", "--config", try f.write(dkimKey: "gone.pem"), "--id", "node-a"], dir: f.dir)
        #expect(bad == 1 && line(badOut, "dkim[0].private_key")?.contains("gone.pem") == true, "\(badOut)")
        let (unknown, unknownOut) = try runProgram(node, ["check", "--config", try f.write(), "--id", "node-z"], dir: f.dir)
        #expect(unknown == 1 && unknownOut.contains("no node \"node-z\""), "\(unknownOut)")
    }
}
}
