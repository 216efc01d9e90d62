import Foundation
import HatoIO
import HatoTestKit
import Testing

extension Integration {
/// `reload` (the CLI, the admin API, SIGHUP) against real processes on loopback: every changed
/// key applies live or is listed as needing a restart; nodes are told over the cluster protocol
/// (`config_changed`) and never need a SIGHUP; a file that would break a process is refused.
@Suite("Reload")
struct ReloadTests {
    /// Rewrites the cluster's file with `edit` applied to its text.
    static func rewrite(_ cluster: LocalCluster, _ edit: (String) -> String) throws {
        let text = try String(contentsOfFile: cluster.configPath, encoding: .utf8)
        let edited = edit(text)
        guard edited != text else { throw HarnessError("the edit changed nothing") }
        try edited.write(toFile: cluster.configPath, atomically: true, encoding: .utf8)
    }

    /// The recipient's node and the source address the capture MX saw for message `number`.
    static func delivery(_ cluster: LocalCluster, number: Int) -> CapturedMessage? {
        cluster.capture.received.first { subjectNumber($0) == number }
    }

    @Test("Reload: a routing rule added by reload applies to the next message")
    func routingRuleAppliesToNextMessage() throws {
        let ips = """
            ips:
              - { address: 127.0.0.10, helo: mta10.it.test, pool: transactional, nodes: [node-a] }
              - { address: 127.0.0.11, helo: mta11.it.test, pool: bulk, nodes: [node-a] }
            """
        let cluster = try LocalCluster(nodeIDs: ["node-a"], ipsYAML: ips, poolsYAML: "pools:\n  - { name: transactional }\n  - { name: bulk }",
                                       routingYAML: "routing:\n  default_pool: transactional\n  rules:\n    - { auth_user: nobody, pool: bulk }")
        defer { cluster.shutdown() }
        do {
            try cluster.startCoordinator()
            try cluster.startNode("node-a")
            try cluster.waitForNodes(["node-a"], state: "active")
            try waitUntil("node-a owns both IPs", timeout: 20) { ((try cluster.node("node-a"))["ips"] as? [String])?.count == 2 }
            _ = try submitWithSmtplib(port: cluster.smtpPort, messages: [("news@news.example", ["r1@hato.test"], testMessage(1, to: "r1@hato.test"))], dir: cluster.dir)
            try waitUntil("message 1 delivered", timeout: 20) { Self.delivery(cluster, number: 1) != nil }
            #expect(Self.delivery(cluster, number: 1)?.peerAddress == "127.0.0.10", "before the reload: the default pool")

            try Self.rewrite(cluster) {
                $0.replacingOccurrences(of: "    - { auth_user: nobody, pool: bulk }", with: "    - { auth_user: nobody, pool: bulk }\n    - { sender_domain: news.example, pool: bulk }")
            }
            let (status, out) = try cluster.cli(["reload"])
            #expect(status == 0, "\(out)")
            #expect(out.contains("applied live: routing.rules"), "\(out)")
            #expect(!out.contains("needs restart"), "a routing change needs no restart: \(out)")
            #expect(out.contains("node node-a: applied"), "\(out)")

            _ = try submitWithSmtplib(port: cluster.smtpPort, messages: [("news@news.example", ["r2@hato.test"], testMessage(2, to: "r2@hato.test"))], dir: cluster.dir)
            try waitUntil("message 2 delivered", timeout: 20) { Self.delivery(cluster, number: 2) != nil }
            #expect(Self.delivery(cluster, number: 2)?.peerAddress == "127.0.0.11", "the next message takes the new rule: the bulk pool's IP")
        } catch {
            Issue.record("\(error)\n\(cluster.logs)")
            throw error
        }
    }

    @Test("Reload: an IP moved by reload to a running node is owned and used by it without a SIGHUP to the node")
    func ipMovedToRunningNode() throws {
        let ips = """
            ips:
              - { address: 127.0.0.10, helo: mta10.it.test, pool: transactional, nodes: [node-a] }
              - { address: 127.0.0.12, helo: mta12.it.test, pool: transactional, nodes: [node-b] }
              - { address: 127.0.0.14, helo: mta14.it.test, pool: moving, nodes: [node-a] }
            """
        let cluster = try LocalCluster(ipsYAML: ips, poolsYAML: "pools:\n  - { name: transactional }\n  - { name: moving }",
                                       routingYAML: "routing:\n  default_pool: transactional\n  rules:\n    - { sender_domain: moving.example, pool: moving }")
        defer { cluster.shutdown() }
        do {
            try cluster.startCoordinator()
            try cluster.startNode("node-a"); try cluster.startNode("node-b")
            try cluster.waitForNodes(["node-a", "node-b"], state: "active")
            try waitUntil("node-a owns 127.0.0.14", timeout: 20) { ((try cluster.node("node-a"))["ips"] as? [String])?.contains("127.0.0.14") == true }
            let before = try submitWithSmtplib(port: cluster.smtpPort, messages: [("s@moving.example", ["m1@hato.test"], testMessage(1, to: "m1@hato.test"))], dir: cluster.dir)
            try waitUntil("message 1 delivered", timeout: 20) { Self.delivery(cluster, number: 1) != nil }
            #expect(Self.delivery(cluster, number: 1)?.peerAddress == "127.0.0.14")
            #expect(((try cluster.message(before[0]))["recipients"] as? [[String: Any]])?.first?["node"] as? String == "node-a")

            try Self.rewrite(cluster) {
                $0.replacingOccurrences(of: "pool: moving, nodes: [node-a]", with: "pool: moving, nodes: [node-b]")
            }
            let (status, out) = try cluster.cli(["reload"])
            #expect(status == 0, "\(out)")
            #expect(out.contains("applied live: ips"), "\(out)")
            #expect(out.contains("node node-a: applied") && out.contains("node node-b: applied"), "\(out)")
            // No SIGHUP: node-b learns of the move by config_changed, re-reads and announces it.
            try waitUntil("node-b owns 127.0.0.14", timeout: 30) { ((try cluster.node("node-b"))["ips"] as? [String])?.contains("127.0.0.14") == true }
            #expect(((try cluster.node("node-a"))["ips"] as? [String])?.contains("127.0.0.14") == false)

            let after = try submitWithSmtplib(port: cluster.smtpPort, messages: [("s@moving.example", ["m2@hato.test"], testMessage(2, to: "m2@hato.test"))], dir: cluster.dir)
            try waitUntil("message 2 delivered", timeout: 20) { Self.delivery(cluster, number: 2) != nil }
            #expect(Self.delivery(cluster, number: 2)?.peerAddress == "127.0.0.14", "sent from the moved IP")
            #expect(((try cluster.message(after[0]))["recipients"] as? [[String: Any]])?.first?["node"] as? String == "node-b", "by the node it moved to")
            for id in ["node-a", "node-b"] {
                #expect(cluster.nodeProcess(id)?.log.contains("configuration reloaded") == true, "\(id) re-read the file on config_changed")
            }
        } catch {
            Issue.record("\(error)\n\(cluster.logs)")
            throw error
        }
    }

    @Test("Reload: a reload naming a missing DKIM key file is refused with the file named; the running configuration stays")
    func missingDKIMKeyRefused() throws {
        let cluster = try LocalCluster(nodeIDs: ["node-a"], ipsYAML: LocalCluster.floatingIPs(1))
        defer { cluster.shutdown() }
        do {
            try cluster.startCoordinator()
            try cluster.startNode("node-a")
            try cluster.waitForNodes(["node-a"], state: "active")
            let original = try String(contentsOfFile: cluster.configPath, encoding: .utf8)
            // The same edit adds an IP: refused as a whole, it must not appear.
            try Self.rewrite(cluster) {
                $0.replacingOccurrences(of: "ips:\n", with: "ips:\n  - { address: 127.0.0.29, helo: mta29.it.test, pool: transactional }\n")
                    + "\ndkim:\n  - { domain: example.org, selector: s1, private_key: keys/nosuch.pem, algorithm: rsa-sha256 }\n"
            }
            let missing = (cluster.dir as NSString).appendingPathComponent("keys/nosuch.pem")
            let (status, out) = try cluster.cli(["reload"])
            #expect(status != 0, "\(out)")
            #expect(out.contains("reload refused") && out.contains("dkim[0].private_key") && out.contains(missing), "names key and file: \(out)")
            #expect(((try cluster.admin("/v1/ips")) as? [Any])?.count == 1, "the added IP did not apply")
            #expect(cluster.coordinator?.log.contains("reload refused; running configuration unchanged") == true)
            #expect(cluster.nodeProcess("node-a")?.log.contains("configuration reloaded") == false, "the node was not told")
            // Mail still flows on the configuration in force.
            _ = try submitWithSmtplib(port: cluster.smtpPort, messages: [("s@example.org", ["d1@hato.test"], testMessage(1, to: "d1@hato.test"))], dir: cluster.dir)
            try waitUntil("delivered after the refusal", timeout: 20) { Self.delivery(cluster, number: 1) != nil }
            // SIGHUP runs the same check and refuses the same way.
            if let c = cluster.coordinator { kill(c.pid, SIGHUP) }
            try waitUntil("SIGHUP refused", timeout: 10) {
                (cluster.coordinator?.log.components(separatedBy: "reload refused; running configuration unchanged").count ?? 0) >= 3
            }
            #expect(((try cluster.admin("/v1/ips")) as? [Any])?.count == 1)
            // The file fixed, the reload goes through.
            try original.replacingOccurrences(of: "ips:\n", with: "ips:\n  - { address: 127.0.0.29, helo: mta29.it.test, pool: transactional }\n")
                .write(toFile: cluster.configPath, atomically: true, encoding: .utf8)
            let (ok, okOut) = try cluster.cli(["reload"])
            #expect(ok == 0 && okOut.contains("127.0.0.29"), "\(okOut)")
            try waitUntil("node-a owns the added IP", timeout: 20) { ((try cluster.node("node-a"))["ips"] as? [String])?.contains("127.0.0.29") == true }
        } catch {
            Issue.record("\(error)\n\(cluster.logs)")
            throw error
        }
    }

    @Test("Reload: a changed restart-only key is listed as needing a restart of the coordinator, every node or that node")
    func restartKeysListed() throws {
        let cluster = try LocalCluster(nodeIDs: ["node-a"], ipsYAML: LocalCluster.floatingIPs(1))
        defer { cluster.shutdown() }
        do {
            try cluster.startCoordinator()
            try cluster.startNode("node-a")
            try cluster.waitForNodes(["node-a"], state: "active")
            try Self.rewrite(cluster) {
                $0.replacingOccurrences(of: "hostname: relay.it.test", with: "hostname: relay2.it.test")
                    .replacingOccurrences(of: "connections_per_ip: 4", with: "connections_per_ip: 3")
                    .replacingOccurrences(of: "data_dir: var/node-a }", with: "data_dir: var/node-a2 }")
            }
            let (status, out) = try cluster.cli(["reload"])
            #expect(status == 0, "\(out)")
            #expect(out.contains("needs restart of coordinator: smtp.hostname, delivery.connections_per_ip"), "\(out)")
            #expect(out.contains("needs restart of every node: delivery.connections_per_ip"), "\(out)")
            #expect(out.contains("needs restart of node node-a: nodes[0].data_dir"), "\(out)")
            #expect(out.contains("node node-a: applied; needs restart of node node-a: nodes[0].data_dir, delivery.connections_per_ip"), "the node's own answer: \(out)")
        } catch {
            Issue.record("\(error)\n\(cluster.logs)")
            throw error
        }
    }

    @Test("Reload: X-Hato-Pool naming an unknown pool gets 550 5.7.1 at the end of data and nothing is queued")
    func unknownPoolRefused() throws {
        let cluster = try LocalCluster(nodeIDs: ["node-a"], ipsYAML: LocalCluster.floatingIPs(1),
                                       routingYAML: "routing:\n  default_pool: transactional\n  rules:\n    - { header: X-Hato-Pool }")
        defer { cluster.shutdown() }
        do {
            try cluster.startCoordinator()
            try waitUntil("admin API up", timeout: 20) { (try? cluster.queue()) != nil }
            let client = try RawSMTPClient(SocketAddress(host: "127.0.0.1", port: cluster.smtpPort))
            defer { client.close() }
            #expect(try client.exchange("EHLO client.test\r\n").first?.hasPrefix("250") == true)
            let replies = try client.exchange("MAIL FROM:<s@example.org>\r\nRCPT TO:<u@hato.test>\r\nDATA\r\n", replies: 3)
            #expect(replies.map { String($0.prefix(3)) } == ["250", "250", "354"], "\(replies)")
            let end = try client.exchange("From: s@example.org\r\nX-Hato-Pool: nosuchpool\r\nSubject: t\r\n\r\nbody\r\n.\r\n")
            #expect(end.first?.hasPrefix("550 5.7.1 unknown pool") == true, "\(end)")
            // The session goes on; a known pool is queued.
            #expect(try client.exchange("MAIL FROM:<s@example.org>\r\nRCPT TO:<u@hato.test>\r\nDATA\r\n", replies: 3).last?.hasPrefix("354") == true)
            let ok = try client.exchange("From: s@example.org\r\nX-Hato-Pool: transactional\r\nSubject: t\r\n\r\nbody\r\n.\r\n")
            #expect(ok.first?.hasPrefix("250") == true, "\(ok)")
            _ = try? client.exchange("QUIT\r\n")
            let messages = try cluster.admin("/v1/messages") as? [String] ?? []
            #expect(messages.count == 1, "only the known pool's message is queued: \(messages)")
            #expect(cluster.coordinator?.log.contains("message refused: unknown pool") == true)
        } catch {
            Issue.record("\(error)\n\(cluster.logs)")
            throw error
        }
    }
}
}
