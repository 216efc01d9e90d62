import Foundation
import HatoIO
import Testing

/// hato-simnode (bench/coordinator-ceiling's simulated worker nodes) against a real coordinator:
/// the handshake, the leases and the results over the real cluster protocol.
@Suite("hato-simnode", .serialized)
struct SimNodeTests {
    /// The last stats line (`{"t": …}`) in the simulated nodes' log, as numbers.
    static func lastStats(_ p: ChildProcess) -> [String: Double] {
        guard let line = p.log.split(separator: "\n").last(where: { $0.hasPrefix("{\"t\": ") }),
              let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { return [:] }
        return object.compactMapValues { ($0 as? NSNumber)?.doubleValue }
    }

    @Test("two simulated nodes join with their own ids and IPs, take the leases and report every recipient delivered; nothing is sent")
    func simulatedNodesReportDelivered() throws {
        let cluster = try LocalCluster()
        var sim: ChildProcess?
        defer {
            sim?.stop()
            cluster.shutdown()
        }
        try cluster.startCoordinator()
        sim = try ChildProcess(name: "simnode", executable: executablePath("hato-simnode"),
                               arguments: ["--config", cluster.configPath, "--stats-interval", "0.2"], logDirectory: cluster.dir)
        try cluster.waitForNodes(["node-a", "node-b"], state: "active", timeout: 15)
        for id in ["node-a", "node-b"] {
            let ips = Set(try cluster.node(id)["ips"] as? [String] ?? [])
            #expect(ips == LocalCluster.ipsOf[id], "node \(id) owns its configured IPs")
        }
        // 20 messages × 2 recipients of one domain.
        let messages = (0..<20).map { i in
            ("sender@example.org", ["r\(i)@hato.test", "s\(i)@hato.test"], testMessage(i, to: "r\(i)@hato.test", extraLines: 2))
        }
        let ids = try submitWithSmtplib(port: cluster.smtpPort, messages: messages, connections: 2, dir: cluster.dir)
        #expect(ids.count == 20)
        try cluster.waitForQueue(final: 40, timeout: 15)
        #expect(try cluster.queue()["delivered"] == 40)
        #expect(cluster.capture.received.isEmpty, "a simulated node sends nothing")
        guard let sim else { return }
        try waitUntil("the simulated nodes' counts of 40 acknowledged recipients", timeout: 5) { SimNodeTests.lastStats(sim)["acked"] == 40 }
        let stats = SimNodeTests.lastStats(sim)
        #expect(stats["nodes"] == 2)
        #expect(stats["joined"] == 2)
        #expect(stats["leased"] == 40)
        #expect(stats["reported"] == 40)
        // One lease per (message, domain); the planner may split a group (never more than one per recipient).
        #expect((20...40).contains(Int(stats["leases"] ?? 0)))
        #expect(stats["foreign_leases"] == 0)
        #expect(stats["unacked"] == 0)
        #expect(sim.isRunning)
    }
}
