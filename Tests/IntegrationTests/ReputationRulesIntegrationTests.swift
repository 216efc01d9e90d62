import Foundation
import HatoCrypto
import HatoIO
import HatoTestKit
import Testing

extension Integration {
    /// Reputation rules end to end: a real coordinator and two nodes, two capture MXs (two
    /// providers: x.test on 127.0.0.1, y.test on 127.0.0.2), and x.test answering `550 5.7.1 …
    /// spam` to every 4th recipient from 127.0.0.10.
    @Suite("Reputation rules: spam bounces pause one (IP, provider) pair only; lift undoes it",
           .serialized, .timeLimit(.minutes(4)))
    struct ReputationRulesIntegrationTests {
        /// Counts RCPTs per source address at the x.test MX, and whether it still answers spam.
        final class Script: @unchecked Sendable {
            let lock = NSLock()
            var rcpts: [String: Int] = [:]
            var spam = true
            func verdict(_ peer: String) -> CaptureVerdict {
                lock.withLock {
                    rcpts[peer, default: 0] += 1
                    guard spam, peer == "127.0.0.10", rcpts[peer]! % 4 == 0 else { return .accept }
                    return .reject(550, "5.7.1 Message rejected as spam")
                }
            }
            func count(_ peer: String) -> Int { lock.withLock { rcpts[peer, default: 0] } }
        }

        @Test("spam_bounces > 2% of ≥20 attempts pauses 127.0.0.10 → x.test only; the other IPs keep x.test, 127.0.0.10 keeps y.test; lift resumes it without re-firing")
        func spamBouncesPauseOnePair() throws {
            let script = Script()
            let second = try CaptureServer(address: SocketAddress(host: "127.0.0.2", port: 0))
            defer { second.stop() }
            let cluster = try LocalCluster(
                routesYAML: """
                    routes:
                      - { domain: x.test, next_hop: "127.0.0.1:PORT1" }
                      - { domain: y.test, next_hop: "127.0.0.2:\(second.address.port)" }

                    """,
                extraYAML: """
                    reputation:
                      rules:
                        - { signal: spam_bounces, above: 2%, min_volume: 20, window: 10m, action: pause, duration: 1h }
                    """,
                captureSourcePolicy: { script.verdict($0) })
            defer { cluster.shutdown() }
            // The first capture's port is known only now: patch the route.
            let yaml = try String(contentsOfFile: cluster.configPath, encoding: .utf8)
                .replacingOccurrences(of: "127.0.0.1:PORT1", with: "127.0.0.1:\(cluster.capture.address.port)")
            try yaml.write(toFile: cluster.configPath, atomically: true, encoding: .utf8)
            do {
                try cluster.startCoordinator()
                try cluster.startNodesAndWait()
                var n = 0
                func send(x: Int, y: Int) throws {
                    let msgs = (0..<(x + y)).map { i -> (from: String, to: [String], content: [UInt8]) in
                        n += 1
                        let rcpt = i < x ? "u\(n)@x.test" : "u\(n)@y.test"
                        return (from: "", to: [rcpt], content: testMessage(n, to: rcpt))
                    }
                    _ = try submitWithSmtplib(port: cluster.smtpPort, messages: msgs, connections: 4, dir: cluster.dir)
                }
                func suspensions() throws -> [[String: Any]] { try cluster.admin("/v1/suspensions") as? [[String: Any]] ?? [] }

                // Until the rule fires: mail to both providers from every IP.
                var pair: [String: Any]?
                for _ in 0..<20 where pair == nil {
                    try send(x: 40, y: 20)
                    try? waitUntil("the rule to fire", timeout: 5) {
                        pair = try suspensions().first { $0["sending_ip"] as? String == "127.0.0.10" }
                        return pair != nil
                    }
                }
                let entry = try #require(pair, "the rule never fired\n\(cluster.logs)")
                let provider = try #require(entry["provider"] as? String)
                let reason = entry["reason"] as? String ?? ""
                let pausedAt = Date().timeIntervalSince1970
                let rcptsAtPause = script.count("127.0.0.10")
                #expect(reason.hasPrefix("reputation rule 1 (spam_bounces > 2% of ≥20 attempts in 10m → pause 1h): "), "\(reason)")
                let all = try suspensions()
                #expect(all.count == 1, "only the offending pair: \(all)")

                // While paused: nothing from 127.0.0.10 to x.test; others carry x.test; 127.0.0.10 keeps y.test.
                let before = cluster.capture.received.count, beforeY = second.received.count
                try send(x: 80, y: 40)
                try waitUntil("the paused batch delivered", timeout: 60) {
                    cluster.capture.received.count >= before + 80 - 0 && second.received.count >= beforeY + 40
                }
                let xAfter = cluster.capture.received[before...].filter { $0.receivedAt > pausedAt }
                let fromPaused = xAfter.filter { $0.peerAddress == "127.0.0.10" }.count
                let rcptsAfterPause = script.count("127.0.0.10") - rcptsAtPause
                #expect(fromPaused == 0 && rcptsAfterPause == 0, "deliveries from the paused pair after the pause: \(fromPaused) (RCPTs \(rcptsAfterPause))")
                #expect(Set(xAfter.map(\.peerAddress)) == ["127.0.0.11", "127.0.0.12", "127.0.0.13"], "\(Set(xAfter.map(\.peerAddress)))")
                #expect(second.received[beforeY...].contains { $0.peerAddress == "127.0.0.10" }, "127.0.0.10 keeps delivering to y.test")

                // Visible with its figures.
                let rep = try cluster.admin("/v1/reputation") as? [[String: Any]] ?? []
                let row = rep.first { $0["ip"] as? String == "127.0.0.10" && $0["provider"] as? String == provider }
                #expect((row?["rule_action"] as? String)?.hasPrefix("pause: reputation rule 1") == true, "\(rep)")
                let (status, text) = try cluster.cli(["ips", "--detail"])
                #expect(status == 0 && text.contains("pause: reputation rule 1"), "\(text)")

                // The event with its reason, by hato.
                let log = try QueueControlIntegrationTests.deliveryLog(cluster, until: "the rule's suspended event") { lines in
                    lines.contains { $0["event"] as? String == "suspended" && ($0["note"] as? String)?.contains("reputation rule 1") == true }
                }
                let event = log.first { $0["event"] as? String == "suspended" }
                #expect(event?["operator"] as? String == "hato" && event?["target"] as? String == "ip 127.0.0.10 provider \(provider)")

                // Lift: the pair delivers again, and the rule does not fire again on the old figures.
                script.lock.withLock { script.spam = false }
                let (liftStatus, liftText) = try cluster.cli(["lift", "127.0.0.10", provider])
                #expect(liftStatus == 0, "\(liftText)")
                #expect(try suspensions().isEmpty)
                let liftedAt = Date().timeIntervalSince1970
                let beforeLift = cluster.capture.received.count
                try send(x: 80, y: 0)
                try waitUntil("the batch after the lift delivered", timeout: 60) { cluster.capture.received.count >= beforeLift + 80 }
                #expect(cluster.capture.received[beforeLift...].contains { $0.peerAddress == "127.0.0.10" && $0.receivedAt > liftedAt },
                        "127.0.0.10 delivers to x.test again after the lift")
                #expect(try suspensions().isEmpty, "no re-firing on the old figures")
                print("reputation rule: fired after \(rcptsAtPause) RCPTs from 127.0.0.10 to x.test (\(reason)); RCPTs from the paused pair after the pause: \(rcptsAfterPause); deliveries: \(fromPaused)")
            } catch {
                Issue.record("\(error)\n\(cluster.logs)")
                throw error
            }
        }
    
        @Test("a per-provider warm-up cap (gmail 5/day per IP on day 1) is exact cluster-wide over two nodes and a coordinator restart; other mail flows")
        func providerCapClusterWide() throws {
            waitOutUTCMidnight(ifWithin: 90)
            let today = Integration.DeliverabilityIntegrationTests.today()
            let ips = "ips:\n" + [(10, "node-a"), (11, "node-a"), (12, "node-b"), (13, "node-b")].map { n, node in
                "  - { address: 127.0.0.\(n), helo: mta\(n).it.test, pool: transactional, nodes: [\(node)], warmup: { plan: w, start: \(today) } }"
            }.joined(separator: "\n") + "\nwarmup:\n  - { name: w, daily: [1000], providers: { gmail: [5] } }"
            let cluster = try LocalCluster(routesYAML: """
                routes:
                  - { domain: hato.test, next_hop: "127.0.0.1:PORT1" }
                  - { domain: gmail.com, next_hop: "127.0.0.1:PORT1" }

                """, ipsYAML: ips)
            defer { cluster.shutdown() }
            let yaml = try String(contentsOfFile: cluster.configPath, encoding: .utf8)
                .replacingOccurrences(of: "127.0.0.1:PORT1", with: "127.0.0.1:\(cluster.capture.address.port)")
            try yaml.write(toFile: cluster.configPath, atomically: true, encoding: .utf8)
            do {
                try cluster.startCoordinator()
                try cluster.startNodesAndWait()
                func send(_ range: Range<Int>, domain: String) throws {
                    _ = try submitWithSmtplib(port: cluster.smtpPort, messages: range.map { i in
                        ("", ["u\(i)@\(domain)"], testMessage(i, to: "u\(i)@\(domain)"))
                    }, connections: 4, dir: cluster.dir)
                }
                func gmail() -> [String: Int] {
                    Dictionary(grouping: cluster.capture.received.filter { $0.recipients.first?.hasSuffix("@gmail.com") == true }, by: \.peerAddress)
                        .mapValues(\.count)
                }
                try send(0..<40, domain: "gmail.com")
                try send(100..<140, domain: "hato.test")
                try waitUntil("20 gmail and 40 other delivered", timeout: 60) { cluster.capture.received.count >= 60 }
                Thread.sleep(forTimeInterval: 2)  // time to (wrongly) send more
                #expect(gmail() == ["127.0.0.10": 5, "127.0.0.11": 5, "127.0.0.12": 5, "127.0.0.13": 5], "\(gmail())")
                #expect(cluster.capture.received.count == 60)
                let rows = try cluster.admin("/v1/ips") as? [[String: Any]] ?? []
                let caps = rows.compactMap { ($0["warmup_providers"] as? [[String: Any]])?.first }
                #expect(caps.count == 4 && caps.allSatisfy { $0["provider"] as? String == "gmail" && $0["cap"] as? Int == 5 && $0["sent"] as? Int == 5 }, "\(rows)")
                let (_, list) = try cluster.cli(["queue", "list", "--domain", "gmail.com"])
                #expect(list.contains("warm-up cap for provider gmail"), "\(list)")

                // A restarted coordinator (a new leader) counts from the store: still none over the cap.
                cluster.stopCoordinator()
                try cluster.startCoordinator()
                try cluster.waitForNodes(["node-a", "node-b"], state: "active", timeout: 60)
                try send(200..<210, domain: "hato.test")
                try waitUntil("10 more other delivered", timeout: 60) { cluster.capture.received.count >= 70 }
                Thread.sleep(forTimeInterval: 2)
                #expect(gmail().values.reduce(0, +) == 20, "after the restart: \(gmail())")
                print("per-provider cap: gmail deliveries per IP \(gmail().sorted { $0.key < $1.key }) (cap 5 each), 20 still waiting; after a coordinator restart still \(gmail().values.reduce(0, +))")
            } catch {
                Issue.record("\(error)\n\(cluster.logs)")
                throw error
            }
        }
    
        @Test("after a delisting 127.0.0.12 resumes on the re-warm ramp: 50% of 8/day, exactly 4 deliveries today while the others carry the rest")
        func rewarmAfterDelisting() throws {
            waitOutUTCMidnight(ifWithin: 120)
            let dir = NSTemporaryDirectory() + "hato-rewarm-" + Identifier.random(bytes: 4)
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let hosts = dir + "/bl.hosts"
            // Listed from the start: it sends nothing before its delisting.
            try "127.0.0.2 12.0.0.127.bl.test\n".write(toFile: hosts, atomically: true, encoding: .utf8)
            let dns = try TestDNS(records: ["--addn-hosts=\(hosts)"], logDirectory: dir)
            defer { dns.stop() }
            let cluster = try LocalCluster(extraYAML: """
                dns: { nameservers: ["127.0.0.1:\(dns.port)"], timeout: 1s }
                reputation: { dnsbl: [bl.test], check_interval: 1s, rewarm: { start: 50%, over: 1d, daily: 8 } }
                """)
            defer { cluster.shutdown() }
            do {
                try cluster.startCoordinator()
                try cluster.startNodesAndWait()
                func ip12() throws -> [String: Any] {
                    (try cluster.admin("/v1/ips") as? [[String: Any]] ?? []).first { $0["address"] as? String == "127.0.0.12" } ?? [:]
                }
                try waitUntil("127.0.0.12 held", timeout: 20) { try ip12()["health"] as? String == "listed" }
                try "".write(toFile: hosts, atomically: true, encoding: .utf8)
                dns.reload()
                try waitUntil("127.0.0.12 resumed", timeout: 20) { try ip12()["health"] as? String == "ok" }
                let row = try ip12()
                #expect(row["rewarming_since"] != nil && row["warmup_cap"] as? Int == 4, "\(row)")
                _ = try submitWithSmtplib(port: cluster.smtpPort, messages: (0..<80).map { i in
                    ("", ["r\(i)@hato.test"], testMessage(i, to: "r\(i)@hato.test"))
                }, connections: 4, dir: cluster.dir)
                try waitUntil("80 delivered", timeout: 60) { cluster.capture.received.count >= 80 }
                let by = Dictionary(grouping: cluster.capture.received, by: \.peerAddress).mapValues(\.count)
                #expect(by["127.0.0.12"] == 4, "the ramp's cap today: \(by)")
                #expect(try ip12()["warmup_sent"] as? Int == 4)
                print("re-warm: deliveries per IP after the delisting \(by.sorted { $0.key < $1.key }) (127.0.0.12 capped at 50% of 8)")
            } catch {
                Issue.record("\(error)\n\(cluster.logs)")
                throw error
            }
        }
    }
}
