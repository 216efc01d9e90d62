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
    }
}
