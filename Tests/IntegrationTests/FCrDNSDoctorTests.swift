import Foundation
import HatoCrypto
import HatoDKIM
import HatoIO
import HatoTestKit
import Testing

extension Integration {
    /// FCrDNS/HELO checks and `doctor` end to end: a real coordinator and nodes, a dnsmasq
    /// serving PTR/A/TXT records for the sending IPs 127.0.0.10–13, and a capture MX that
    /// records each message's source address.
    @Suite("FCrDNS and doctor: require_fcrdns holds failing IPs, doctor reports the cluster, history survives a restart",
           .serialized, .timeLimit(.minutes(3)))
    struct FCrDNSDoctorTests {
        @Test("127.0.0.10 ok, .11 PTR not resolving back, .12 no PTR, .13 HELO mismatch: .11/.12 send nothing under require_fcrdns; doctor finds SPF, DKIM, TLS; history survives a restart")
        func fcrdnsHoldAndDoctor() throws {
            let dir = NSTemporaryDirectory() + "hato-fcrdns-" + Identifier.random(bytes: 4)
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let dns = try TestDNS(records: [
                "--local=/in-addr.arpa/",
                "--host-record=mta10.it.test,127.0.0.10",                         // A + PTR: FCrDNS ok, HELO matches
                "--ptr-record=11.0.0.127.in-addr.arpa,elsewhere.it.test",          // PTR names a host …
                "--host-record=elsewhere.it.test,127.0.0.99",                     // … that resolves elsewhere
                "--host-record=other13.it.test,127.0.0.13",                       // FCrDNS ok, HELO is mta13.it.test
                "--txt-record=shop.it.test,v=spf1 ip4:127.0.0.10 include:_spf.it.test -all",
                "--txt-record=_spf.it.test,v=spf1 ip4:127.0.0.11 -all",           // .12 and .13 not covered
            ], logDirectory: dir)
            defer { dns.stop() }
            let ca = try TestCA.make(in: dir)
            let cert = try ca.issue("smtp", commonName: "relay.it.test")          // valid 2 days: expiring soon
            let keyPath = dir + "/dkim-s1.pem"
            try Data(try DKIMPrivateKey.generate(.ed25519SHA256).pem()).write(to: URL(fileURLWithPath: keyPath))
            let cluster = try LocalCluster(extraYAML: """
                dns: { nameservers: ["127.0.0.1:\(dns.port)"], timeout: 1s }
                reputation: { require_fcrdns: true }
                dkim:
                  - { domain: shop.it.test, selector: s1, private_key: "\(keyPath)", algorithm: ed25519-sha256 }
                """, smtpYAML: "tls: { certificate: \"\(cert.certificate)\", private_key: \"\(cert.key)\" }")
            defer { cluster.shutdown() }
            let started = ContinuousClock.now
            try cluster.startCoordinator()
            func rows() throws -> [String: [String: Any]] {
                let raw = try httpGetBody(port: cluster.adminPort, path: "/v1/ips", bearer: cluster.token)
                guard let parsed = try? JSONSerialization.jsonObject(with: Data(raw)) else {
                    throw HarnessError("GET /v1/ips is not JSON: \(String(decoding: raw, as: UTF8.self))")
                }
                let list = parsed as? [[String: Any]] ?? []
                return Dictionary(uniqueKeysWithValues: list.map { ($0["address"] as? String ?? "", $0) })
            }
            try waitUntil("the FCrDNS verdicts", timeout: 20) { try rows().values.allSatisfy { $0["fcrdns"] as? String != nil } }
            let verdictAfter = ContinuousClock.now - started
            let r = try rows()
            #expect(r["127.0.0.10"]?["fcrdns"] as? String == "ok")
            #expect(r["127.0.0.11"]?["fcrdns"] as? String == "not_confirmed")
            #expect(r["127.0.0.12"]?["fcrdns"] as? String == "no_ptr")
            #expect(r["127.0.0.13"]?["fcrdns"] as? String == "helo_mismatch")
            #expect(r.mapValues { $0["health"] as? String ?? "?" } == ["127.0.0.10": "ok", "127.0.0.11": "fcrdns", "127.0.0.12": "fcrdns", "127.0.0.13": "ok"])
            #expect((r["127.0.0.12"]?["health_reason"] as? String)?.contains("require_fcrdns") == true)

            try cluster.startNodesAndWait()
            _ = try submitWithSmtplib(port: cluster.smtpPort, messages: (0..<40).map {
                (from: "app@example.org", to: ["user\($0)@hato.test"], content: testMessage($0, to: "user\($0)@hato.test"))
            }, dir: dir)
            try waitUntil("40 messages delivered", timeout: 60) { cluster.capture.received.count >= 40 }
            let sources = cluster.capture.received.map(\.peerAddress)
            let fromFailing = sources.filter { $0 == "127.0.0.11" || $0 == "127.0.0.12" }.count
            #expect(fromFailing == 0, "deliveries from IPs failing FCrDNS: \(fromFailing)")
            #expect(Set(sources) == ["127.0.0.10", "127.0.0.13"], "the others carry the mail: \(Set(sources).sorted())")

            // doctor (admin API and CLI): every finding, exit status 1 with errors.
            try waitUntil("a heartbeat with the nodes' clocks", timeout: 10) {
                let d = try cluster.admin("/v1/doctor") as? [String: Any] ?? [:]
                return (d["findings"] as? [[String: Any]] ?? []).filter { $0["check"] as? String == "clock" && $0["severity"] as? String == "ok" }.count == 2
            }
            let (status, output) = try cluster.cli(["doctor"])
            #expect(status == 1, "doctor exits 1 with errors: \(output)")
            let (jsonStatus, jsonOutput) = try cluster.cli(["doctor", "--json"])
            #expect(jsonStatus == 1)
            // The CLI's log holds stdout (the JSON) and then stderr ("doctor: N error(s)").
            let start = jsonOutput.firstIndex(of: "{") ?? jsonOutput.startIndex
            let end = jsonOutput.lastIndex(of: "}").map { jsonOutput.index(after: $0) } ?? jsonOutput.endIndex
            let report = try JSONSerialization.jsonObject(with: Data(jsonOutput[start..<end].utf8)) as? [String: Any] ?? [:]
            let findings = report["findings"] as? [[String: Any]] ?? []
            func finding(_ check: String, _ subject: String) -> [String: Any]? {
                findings.first { $0["check"] as? String == check && $0["subject"] as? String == subject }
            }
            #expect(finding("fcrdns", "127.0.0.10")?["severity"] as? String == "ok")
            #expect(finding("fcrdns", "127.0.0.11")?["severity"] as? String == "error")
            #expect(finding("fcrdns", "127.0.0.12")?["severity"] as? String == "error")
            #expect(finding("helo", "127.0.0.13")?["severity"] as? String == "warning")
            let spf = finding("spf", "shop.it.test")
            #expect(spf?["severity"] as? String == "error")
            #expect((spf?["fix"] as? String)?.contains("ip4:127.0.0.12 ip4:127.0.0.13") == true, "\(spf ?? [:])")
            #expect(finding("dkim", "s1._domainkey.shop.it.test")?["severity"] as? String == "error")
            #expect(finding("tls", "smtp.tls")?["severity"] as? String == "warning")
            #expect(output.contains("error    spf     shop.it.test") && output.contains("— fix: "), "\(output)")

            // The history survives a restart of the coordinator.
            let before = try cluster.admin("/v1/ips/127.0.0.11/health") as? [String: Any] ?? [:]
            let history = before["history"] as? [[String: Any]] ?? []
            #expect(history.map { $0["event"] as? String ?? "" } == ["fcrdns_failed"])
            cluster.stopCoordinator()
            try cluster.startCoordinator()
            try waitUntil("the restarted coordinator answers", timeout: 20) { (try? cluster.admin("/v1/ips/127.0.0.11/health")) != nil }
            let after = try cluster.admin("/v1/ips/127.0.0.11/health") as? [String: Any] ?? [:]
            #expect((after["history"] as? [[String: Any]] ?? []).map { $0["at"] as? String ?? "" } == history.map { $0["at"] as? String ?? "" },
                    "history after the restart: \(after)")
            try waitUntil("the FCrDNS gauge after the restart", timeout: 20) {
                String(decoding: try httpGetBody(port: cluster.adminPort, path: "/metrics", bearer: cluster.token), as: UTF8.self)
                    .contains("hato_ip_fcrdns_ok{ip=\"127.0.0.12\"} 0")
            }
            let metrics = String(decoding: try httpGetBody(port: cluster.adminPort, path: "/metrics", bearer: cluster.token), as: UTF8.self)
            #expect(metrics.contains("hato_ip_helo_matches_ptr{ip=\"127.0.0.13\"} 0"), "\(metrics)")
            print("FCrDNS verdict \(verdictAfter) after the coordinator started; deliveries from the IPs failing FCrDNS (require_fcrdns): \(fromFailing) of \(sources.count)")
        }
    }
}
