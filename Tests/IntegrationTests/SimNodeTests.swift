import Foundation
import HatoIO
import Testing

/// hato-simnode (bench/coordinator-ceiling's simulated worker nodes) against a real coordinator:
/// the handshake, the leases and the results over the real cluster protocol.
extension Integration {
    @Suite("hato-simnode", .serialized)
    struct SimNodeTests {
        /// The last stats line (`{"t": …}`) in the simulated nodes' log, as numbers.
        static func lastStats(_ p: ChildProcess) -> [String: Double] {
            guard let line = p.log.split(separator: "\n").last(where: { $0.hasPrefix("{\"t\": ") }),
                  let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { return [:] }
            return object.compactMapValues { ($0 as? NSNumber)?.doubleValue }
        }

        /// Submits `count` messages of two recipients each (`r<i>@hato.test`, `s<i>@hato.test`) from index `first`.
        static func submit(_ cluster: LocalCluster, first: Int, count: Int) throws -> [String] {
            let messages = (first..<(first + count)).map { i in
                ("sender@example.org", ["r\(i)@hato.test", "s\(i)@hato.test"], testMessage(i, to: "r\(i)@hato.test", extraLines: 2))
            }
            return try submitWithSmtplib(port: cluster.smtpPort, messages: messages, connections: 2, dir: cluster.dir)
        }

        @Test("two simulated nodes join with their own ids and IPs, take the leases, report every recipient delivered and answer a reload; nothing is sent")
        func simulatedNodesReportDelivered() throws {
            let cluster = try LocalCluster()
            var sim: ChildProcess?
            defer {
                sim?.stop()
                cluster.shutdown()
            }
            do {
                try cluster.startCoordinator()
                let p = try ChildProcess(name: "simnode", executable: executablePath("hato-simnode"),
                                         arguments: ["--config", cluster.configPath, "--stats-interval", "0.2"], logDirectory: cluster.dir)
                sim = p
                try cluster.waitForNodes(["node-a", "node-b"], state: "active", timeout: 15)
                for id in ["node-a", "node-b"] {
                    let ips = Set(try cluster.node(id)["ips"] as? [String] ?? [])
                    #expect(ips == LocalCluster.ipsOf[id], "node \(id) owns its configured IPs")
                }
                #expect(try Self.submit(cluster, first: 0, count: 20).count == 20)
                try cluster.waitForQueue(final: 40, timeout: 15)
                #expect(try cluster.queue()["delivered"] == 40)
                try waitUntil("the simulated nodes' count of 40 acknowledged recipients", timeout: 5) { SimNodeTests.lastStats(p)["acked"] == 40 }
                var stats = SimNodeTests.lastStats(p)
                #expect(stats["nodes"] == 2)
                #expect(stats["joined"] == 2)
                #expect(stats["leased"] == 40)
                #expect(stats["reported"] == 40)
                // One lease per (message, domain); the planner may split a group (never more than one per recipient).
                #expect((20...40).contains(Int(stats["leases"] ?? 0)))
                #expect(stats["foreign_leases"] == 0)
                #expect(stats["unacked"] == 0)
                #expect((stats["signing_keys"] ?? 0) >= 2, "the key set follows every welcome")

                // A reload pushes config_changed: each simulated node answers, stays joined and keeps working.
                let text = try String(contentsOfFile: cluster.configPath, encoding: .utf8)
                try text.replacingOccurrences(of: "retry: { schedule: [1s]", with: "retry: { schedule: [2s]")
                    .write(toFile: cluster.configPath, atomically: true, encoding: .utf8)
                let (status, out) = try cluster.cli(["reload"])
                #expect(status == 0, "\(out)")
                #expect(out.contains("node node-a: applied") && out.contains("node node-b: applied"), "\(out)")
                #expect(try Self.submit(cluster, first: 20, count: 5).count == 5)
                try cluster.waitForQueue(final: 50, timeout: 15)
                try waitUntil("50 acknowledged recipients", timeout: 5) { SimNodeTests.lastStats(p)["acked"] == 50 }
                stats = SimNodeTests.lastStats(p)
                #expect(stats["config_changes"] == 2)
                #expect(stats["joins"] == 2, "no reconnect")
                #expect(cluster.capture.received.isEmpty, "a simulated node sends nothing")
                #expect(p.isRunning)
            } catch {
                Issue.record("\(error)\n\(cluster.logs)\n==== simnode\n\(sim?.log.suffix(4000) ?? "")")
                throw error
            }
        }
    }
}
