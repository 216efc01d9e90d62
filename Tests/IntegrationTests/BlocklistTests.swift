import Foundation
import HatoCrypto
import HatoIO
import HatoTestKit
import Testing

extension Integration {
    /// DNS blocklist watch end to end: a real coordinator and nodes, a dnsmasq serving a
    /// blocklist zone whose listings change at run time (SIGHUP re-reads its hosts file), and a
    /// capture MX that records each message's source address.
    @Suite("Blocklists: a listed sending IP is held, a delisted one resumes, a dead list holds nothing",
           .serialized, .timeLimit(.minutes(3)))
    struct BlocklistTests {
        @Test("listing 127.0.0.12 on bl.test holds it within one check while the other IPs carry the mail; delisting resumes it; lookups that fail on dead.test hold nothing")
        func listHoldDelistResume() throws {
            let dir = NSTemporaryDirectory() + "hato-dnsbl-" + Identifier.random(bytes: 4)
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let hosts = dir + "/bl.hosts"
            try "".write(toFile: hosts, atomically: true, encoding: .utf8)
            // bl.test answers from the hosts file; dead.test is forwarded to a port where nothing
            // answers (every lookup there fails: never a listing).
            let dns = try TestDNS(records: ["--addn-hosts=\(hosts)", "--txt-record=12.0.0.127.bl.test,listed for a test",
                                            "--server=/dead.test/127.0.0.1#9"], logDirectory: dir)
            defer { dns.stop() }
            let cluster = try LocalCluster(extraYAML: """
                dns: { nameservers: ["127.0.0.1:\(dns.port)"], timeout: 1s }
                reputation: { dnsbl: [bl.test, dead.test], check_interval: 1s }
                """)
            defer { cluster.shutdown() }
            try cluster.startCoordinator()
            try cluster.startNodesAndWait()

            func health() throws -> [String: String] {
                let rows = try cluster.admin("/v1/ips") as? [[String: Any]] ?? []
                return Dictionary(uniqueKeysWithValues: rows.map { ($0["address"] as? String ?? "", $0["health"] as? String ?? "?") })
            }
            func send(_ count: Int, from first: Int) throws -> [String] {
                let before = cluster.capture.received.count
                _ = try submitWithSmtplib(port: cluster.smtpPort, messages: (first..<(first + count)).map {
                    (from: "app@example.org", to: ["user\($0)@hato.test"], content: testMessage($0, to: "user\($0)@hato.test"))
                }, dir: dir)
                try waitUntil("\(count) messages delivered", timeout: 60) { cluster.capture.received.count >= before + count }
                return cluster.capture.received[before...].map(\.peerAddress)
            }

            // Nothing listed: every IP is ok, and dead.test's failing lookups hold none of them.
            try waitUntil("a first round of checks", timeout: 20) { cluster.coordinator?.log.contains("blocklist lookup gave no answer") == true }
            #expect(try health() == ["127.0.0.10": "ok", "127.0.0.11": "ok", "127.0.0.12": "ok", "127.0.0.13": "ok"])
            let first = try send(40, from: 0)
            #expect(Set(first).contains("127.0.0.12"), "before the listing every IP sends: \(Set(first).sorted())")

            // List 127.0.0.12.
            try "127.0.0.2 12.0.0.127.bl.test\n".write(toFile: hosts, atomically: true, encoding: .utf8)
            dns.reload()
            let listedAt = ContinuousClock.now
            try waitUntil("127.0.0.12 held", timeout: 20) { try health()["127.0.0.12"] == "listed" }
            let timeToHold = ContinuousClock.now - listedAt
            let rows = try cluster.admin("/v1/ips") as? [[String: Any]] ?? []
            let reason = rows.first { $0["address"] as? String == "127.0.0.12" }?["health_reason"] as? String
            #expect(reason == "listed on bl.test (127.0.0.2: listed for a test)")
            let listedMetrics = String(decoding: try httpGetBody(port: cluster.adminPort, path: "/metrics", bearer: cluster.token), as: UTF8.self)
            #expect(listedMetrics.contains("hato_ip_listed{ip=\"127.0.0.12\",zone=\"bl.test\"} 1"))
            #expect(listedMetrics.contains("hato_ip_listed{ip=\"127.0.0.10\",zone=\"bl.test\"} 0"))
            #expect(listedMetrics.contains("hato_dnsbl_check_errors_total"))
            let listing = (rows.first { $0["address"] as? String == "127.0.0.12" }?["reputation"] as? [String: Any])?["listings"] as? [[String: Any]] ?? []
            #expect(listing.first?["zone"] as? String == "bl.test" && listing.first?["codes"] as? [String] == ["127.0.0.2"]
                    && listing.first?["reason"] as? String == "listed for a test" && listing.first?["since"] as? String != nil)
            let during = try send(60, from: 100)
            let fromListed = during.filter { $0 == "127.0.0.12" }.count
            #expect(fromListed == 0, "deliveries from the listed IP after the hold: \(fromListed)")
            #expect(Set(during) == ["127.0.0.10", "127.0.0.11", "127.0.0.13"], "the others carry the mail: \(Set(during).sorted())")

            // Delist it: it resumes.
            try "".write(toFile: hosts, atomically: true, encoding: .utf8)
            dns.reload()
            try waitUntil("127.0.0.12 resumed", timeout: 20) { try health()["127.0.0.12"] == "ok" }
            let health = try cluster.admin("/v1/ips/127.0.0.12/health") as? [String: Any] ?? [:]
            #expect((health["history"] as? [[String: Any]] ?? []).map { "\($0["event"] ?? "") \($0["zone"] ?? "")" } == ["listed bl.test", "delisted bl.test"])
            let after = try send(60, from: 200)
            #expect(after.contains("127.0.0.12"), "the delisted IP sends again: \(Set(after).sorted())")
            let log = cluster.coordinator?.log ?? ""
            #expect(log.contains("sending IP is on a blocklist: held") && log.contains("sending IP is off every blocklist: resumed"))
            print("blocklist hold: \(timeToHold) after the listing appeared in DNS (check_interval 1s); deliveries from the listed IP while held: \(fromListed) of \(during.count)")
        }
    }
}
