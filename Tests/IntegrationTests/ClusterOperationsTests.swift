import Foundation
import HatoCoordinator
import HatoTestKit
import Testing

/// Delivery accounting of one run: what the capture MX saw, against what was accepted.
struct DeliveryAccount: CustomStringConvertible {
    var sent: Int
    var delivered: Int
    var unique: Int
    var duplicates: Int
    var missing: [Int]
    var description: String { "sent \(sent), delivered \(delivered) (unique \(unique)), duplicated \(duplicates), missing \(missing.count)" }

    init(sent: Int, received: [CapturedMessage]) {
        self.sent = sent
        let numbers = received.compactMap(subjectNumber)
        delivered = numbers.count
        unique = Set(numbers).count
        duplicates = numbers.count - unique
        missing = (0..<sent).filter { !Set(numbers).contains($0) }
    }
}

/// (source IP → [(time, node)]) from the capture log, nodes from the coordinator's records.
/// Returns the IPs that were used by two nodes in overlapping time intervals.
func overlappingIPUse(_ cluster: LocalCluster, ids: [String]) throws -> [String] {
    var nodeOfMessage: [Int: String] = [:]
    for (i, id) in ids.enumerated() {
        let r = ((try cluster.message(id))["recipients"] as? [[String: Any]])?.first
        if let n = r?["node"] as? String { nodeOfMessage[i] = n }
    }
    var intervals: [String: [String: (Double, Double)]] = [:]
    for m in cluster.capture.received {
        guard let n = subjectNumber(m), let node = nodeOfMessage[n] else { continue }
        let t = m.receivedAt
        let cur = intervals[m.peerAddress, default: [:]][node] ?? (t, t)
        intervals[m.peerAddress, default: [:]][node] = (min(cur.0, t), max(cur.1, t))
    }
    var bad: [String] = []
    for (ip, byNode) in intervals {
        let spans = byNode.values.sorted { $0.0 < $1.0 }
        for k in spans.indices.dropFirst() where spans[k].0 < spans[k - 1].1 { bad.append(ip) }
    }
    return bad
}

extension Integration {
@Suite("Cluster operations")
struct ClusterOperationsTests {
    /// Starts nodes, waits for them to be active, and evens out the floating IPs.
    func startBalanced(_ cluster: LocalCluster, _ ids: [String]) throws {
        try cluster.startCoordinator()
        for id in ids { try cluster.startNode(id) }
        try cluster.waitForNodes(ids, state: "active")
        let (status, out) = try cluster.cli(["rebalance"])
        #expect(status == 0, "rebalance: \(out)")
        try waitUntil("IPs balanced", timeout: 20) {
            let owned = try ids.map { ((try cluster.node($0))["ips"] as? [String])?.count ?? 0 }
            return try (owned.max() ?? 0) - (owned.min() ?? 0) <= 1 && owned.reduce(0, +) == ((try cluster.admin("/v1/ips") as? [Any])?.count ?? -1)
        }
    }

    @Test("scale out under load: a third node joins mid-stream, gets IPs by rebalance, delivers part of the stream; every message exactly once")
    func scaleOut() throws {
        let cluster = try LocalCluster(captureDelay: 0.01, nodeIDs: ["node-a", "node-b", "node-c"], ipsYAML: LocalCluster.floatingIPs(6),
                                       leaseTime: "20s", nodeTimeout: "3s", heartbeat: "0.5s", connectionsPerIP: 2)
        defer { cluster.shutdown() }
        do {
            try startBalanced(cluster, ["node-a", "node-b"])
            let count = 2000
            let stream = BackgroundSubmission(cluster: cluster, count: count)
            try waitUntil("300 delivered", timeout: 60) { cluster.capture.received.count >= 300 }
            try cluster.startNode("node-c")
            try cluster.waitForNodes(["node-c"], state: "active")
            let (status, out) = try cluster.cli(["rebalance"])
            #expect(status == 0)
            #expect(out.contains("applying 2 move(s)"), "plan: \(out)")
            try waitUntil("node-c owns two IPs", timeout: 30) { ((try cluster.node("node-c"))["ips"] as? [String])?.count == 2 }
            let ids = try stream.wait(timeout: 120)
            try cluster.waitForQueue(final: count, timeout: 120)
            let account = DeliveryAccount(sent: count, received: cluster.capture.received)
            print("scale out: \(account)")
            #expect(account.unique == count && account.duplicates == 0, "\(account)")
            let nodeC = try ids.filter { id in (((try cluster.message(id))["recipients"] as? [[String: Any]])?.first?["node"] as? String) == "node-c" }
            print("scale out: node-c delivered \(nodeC.count) of \(count)")
            #expect(nodeC.count > 0, "node-c delivered part of the stream")
            #expect(try overlappingIPUse(cluster, ids: ids).isEmpty, "no IP used by two nodes at once")
        } catch {
            Issue.record("\(error)\n\(cluster.logs)")
            throw error
        }
    }

    @Test("drain under load: the node finishes its work, hands its floating IPs over and reaches drained; nothing lost or doubled")
    func drainUnderLoad() throws {
        let cluster = try LocalCluster(captureDelay: 0.01, ipsYAML: LocalCluster.floatingIPs(4),
                                       leaseTime: "20s", nodeTimeout: "3s", heartbeat: "0.5s", connectionsPerIP: 2)
        defer { cluster.shutdown() }
        do {
            try startBalanced(cluster, ["node-a", "node-b"])
            let count = 1000
            let stream = BackgroundSubmission(cluster: cluster, count: count)
            try waitUntil("200 delivered", timeout: 60) { cluster.capture.received.count >= 200 }
            let started = Date()
            let (status, out) = try cluster.cli(["drain", "node-a", "--wait", "--timeout", "60s"])
            let took = Date().timeIntervalSince(started)
            print("drain: node-a drained in \(String(format: "%.2f", took)) s\n\(out)")
            #expect(status == 0, "drain --wait: \(out)")
            #expect(out.contains("node node-a is drained"))
            let a = try cluster.node("node-a")
            #expect(a["state"] as? String == "drained")
            #expect(a["leases_in_flight"] as? Int == 0)
            #expect((a["ips"] as? [String])?.isEmpty == true)
            #expect(((try cluster.node("node-b"))["ips"] as? [String])?.count == 4)
            let deliveredAtDrain = cluster.capture.received.count
            let ids = try stream.wait(timeout: 120)
            try cluster.waitForQueue(final: count, timeout: 120)
            let account = DeliveryAccount(sent: count, received: cluster.capture.received)
            print("drain: \(account); \(deliveredAtDrain) delivered when drained")
            #expect(account.unique == count && account.duplicates == 0, "\(account)")
            #expect(try overlappingIPUse(cluster, ids: ids).isEmpty, "no IP used by two nodes at once")
            // Nothing goes to a drained node; resume makes it active again.
            let (rs, rout) = try cluster.cli(["resume", "node-a"])
            #expect(rs == 0, "\(rout)")
            try cluster.waitForNodes(["node-a"], state: "active")
        } catch {
            Issue.record("\(error)\n\(cluster.logs)")
            throw error
        }
    }

    @Test("kill -9 of a node mid-stream: every message delivered, duplicates at most its in-flight work, its floating IPs move only after fencing")
    func nodeKilled() throws {
        let leaseTime = 6.0
        let cluster = try LocalCluster(captureDelay: 0.02, ipsYAML: LocalCluster.floatingIPs(4),
                                       leaseTime: "6s", nodeTimeout: "2s", heartbeat: "0.5s", connectionsPerIP: 2)
        defer { cluster.shutdown() }
        do {
            try startBalanced(cluster, ["node-a", "node-b"])
            let aIPs = Set(((try cluster.node("node-a"))["ips"] as? [String]) ?? [])
            #expect(aIPs.count == 2)
            let count = 600
            let stream = BackgroundSubmission(cluster: cluster, count: count)
            try waitUntil("100 delivered", timeout: 60) { cluster.capture.received.count >= 100 }
            let killedAt = Date().timeIntervalSince1970
            cluster.nodeProcess("node-a")?.stop(signal: SIGKILL)
            _ = try stream.wait(timeout: 120)
            try cluster.waitForQueue(final: count, timeout: 120)
            let account = DeliveryAccount(sent: count, received: cluster.capture.received)
            print("node kill -9: \(account)")
            #expect(account.missing.isEmpty, "\(account)")
            #expect(account.duplicates <= 2 * 2, "duplicates at most node-a's in-flight deliveries (2 IPs × 2 connections): \(account)")
            // node-a's IPs move to node-b once the fence has passed. The stream may be over by then
            // (it is when results commit quickly): wait for the move, then send more mail, some
            // of which goes out from those IPs.
            try waitUntil("node-b owns node-a's IPs", timeout: 30) { ((try cluster.node("node-b"))["ips"] as? [String])?.count == 4 }
            let more = (0..<40).map { i in ("sender@example.org", ["k\(i)@hato.test"], testMessage(count + i, to: "k\(i)@hato.test", extraLines: 10)) }
            _ = try submitWithSmtplib(port: cluster.smtpPort, messages: more, dir: cluster.dir)
            try cluster.waitForQueue(final: count + more.count, timeout: 60)
            // node-a's IPs were used again only after the fence (lease time after it was last heard).
            // Not counted as reuse: node-a's own last deliveries, which the capture MX may record a
            // moment after the kill (a message sent whole just before it, recorded when the capture's
            // thread gets to it) — node-a never reported them, so each is the first copy of a
            // duplicated message.
            let received = cluster.capture.received
            let copies = Dictionary(grouping: received.indices) { subjectNumber(received[$0]) ?? -1 }
            let unreportedByNodeA = Set(copies.values.filter { $0.count > 1 }.compactMap { $0.min { received[$0].receivedAt < received[$1].receivedAt } })
            let reuse = received.indices.filter {
                !unreportedByNodeA.contains($0) && aIPs.contains(received[$0].peerAddress) && received[$0].receivedAt > killedAt + 0.5
            }.map { received[$0] }
            #expect(!reuse.isEmpty, "node-a's floating IPs moved to node-b")
            if let first = reuse.map(\.receivedAt).min() {
                print("node kill -9: node-a's IPs back in use \(String(format: "%.2f", first - killedAt)) s after the kill (lease time \(leaseTime) s)")
                #expect(first - killedAt >= leaseTime - 1.0, "IPs moved before the fencing delay")
            }
            #expect(((try cluster.node("node-b"))["ips"] as? [String])?.count == 4)
            #expect((try cluster.node("node-a"))["state"] as? String == "down")
        } catch {
            Issue.record("\(error)\n\(cluster.logs)")
            throw error
        }
    }

    @Test("a partitioned node (SIGSTOP beyond the timeout, then SIGCONT) does not deliver its expired leases; its late reports are reconciled")
    func partitionedNode() throws {
        let cluster = try LocalCluster(captureDelay: 0.02, leaseTime: "5s", nodeTimeout: "2s", heartbeat: "0.5s", connectionsPerIP: 2)
        defer { cluster.shutdown() }
        do {
            try cluster.startCoordinator()
            try cluster.startNodesAndWait()
            let aIPs: Set<String> = ["127.0.0.10", "127.0.0.11"]
            let count = 600
            let stream = BackgroundSubmission(cluster: cluster, count: count)
            try waitUntil("100 delivered", timeout: 60) { cluster.capture.received.count >= 100 }
            guard let a = cluster.nodeProcess("node-a") else { throw HarnessError("no node-a") }
            kill(a.pid, SIGSTOP)
            let stoppedAt = Date().timeIntervalSince1970
            try cluster.waitForNodes(["node-a"], state: "down", timeout: 10)
            Thread.sleep(forTimeInterval: 7)  // beyond the lease time: node-a's leases expire and are re-leased to node-b
            kill(a.pid, SIGCONT)
            let resumedAt = Date().timeIntervalSince1970
            try cluster.waitForNodes(["node-a"], state: "active", timeout: 30)
            _ = try stream.wait(timeout: 120)
            try cluster.waitForQueue(final: count, timeout: 120)
            let received = cluster.capture.received
            let account = DeliveryAccount(sent: count, received: received)
            print("partition: \(account); node-a stopped \(String(format: "%.1f", resumedAt - stoppedAt)) s")
            #expect(account.missing.isEmpty, "\(account)")
            // Any duplicate must have node-a's copy completed before the stop (the at-least-once
            // window: the MX accepted it but node-a could not report). After resuming, node-a
            // never completes a delivery from a lease that expired while it was stopped.
            var byNumber: [Int: [CapturedMessage]] = [:]
            for m in received { if let n = subjectNumber(m) { byNumber[n, default: []].append(m) } }
            let lateDoubles = byNumber.values.filter { $0.count > 1 }.filter { copies in
                copies.contains { aIPs.contains($0.peerAddress) && $0.receivedAt > stoppedAt + 0.05 }
            }
            #expect(lateDoubles.isEmpty, "node-a delivered \(lateDoubles.count) message(s) from expired leases after the partition")
            #expect(account.duplicates <= 4, "\(account)")
        } catch {
            Issue.record("\(error)\n\(cluster.logs)")
            throw error
        }
    }

    @Test("kill -9 and restart of the coordinator during a stream loses nothing")
    func coordinatorRestartMidStream() throws {
        let cluster = try LocalCluster(captureDelay: 0.01, leaseTime: "10s", nodeTimeout: "3s", heartbeat: "0.5s", connectionsPerIP: 2)
        defer { cluster.shutdown() }
        do {
            try cluster.startCoordinator()
            try cluster.startNodesAndWait()
            let count = 600
            let stream = BackgroundSubmission(cluster: cluster, count: count)
            try waitUntil("100 delivered", timeout: 60) { cluster.capture.received.count >= 100 }
            cluster.killCoordinator()
            Thread.sleep(forTimeInterval: 1)
            try cluster.startCoordinator()
            let ids = try stream.wait(timeout: 180)
            #expect(ids.count == count)
            try cluster.waitForNodes(["node-a", "node-b"], state: "active")
            try waitUntil("every message delivered", timeout: 120) { Set(cluster.capture.received.compactMap(subjectNumber)).count == count }
            try cluster.waitForQueue(final: try cluster.queue().values.reduce(0, +), timeout: 60)
            let account = DeliveryAccount(sent: count, received: cluster.capture.received)
            print("coordinator restart: \(account)")
            #expect(account.missing.isEmpty, "\(account)")
            // A client re-submits a message whose 250 it did not see: at most one per session.
            #expect(account.duplicates <= 4, "\(account)")
        } catch {
            Issue.record("\(error)\n\(cluster.logs)")
            throw error
        }
    }

    @Test("a coordinator restart restores the IP assignment table exactly: every node gets its IPs back, no rebalance needed")
    func ipTableSurvivesRestart() throws {
        let cluster = try LocalCluster(nodeIDs: ["node-a", "node-b", "node-c"], ipsYAML: LocalCluster.floatingIPs(6))
        defer { cluster.shutdown() }
        do {
            try startBalanced(cluster, ["node-a", "node-b", "node-c"])
            func owners() throws -> [String: String] {
                var out: [String: String] = [:]
                for row in try cluster.admin("/v1/ips") as? [[String: Any]] ?? [] {
                    if let ip = row["address"] as? String, let owner = row["owner"] as? String { out[ip] = owner }
                }
                return out
            }
            let before = try owners()
            #expect(before.count == 6 && Set(before.values).count == 3, "\(before)")
            // Restart: the nodes reconnect in whatever order their back-off gives.
            #expect(cluster.stopCoordinator() == 0)
            try cluster.startCoordinator()
            try cluster.waitForNodes(["node-a", "node-b", "node-c"], state: "active")
            try waitUntil("every IP owned again", timeout: 20) { try owners().count == 6 }
            #expect(try owners() == before)
            let plan = try cluster.admin("/v1/rebalance") as? [String: Any] ?? [:]
            #expect((plan["moves"] as? [Any])?.isEmpty == true, "no rebalance needed: \(plan)")
        } catch {
            Issue.record("\(error)\n\(cluster.logs)")
            throw error
        }
    }

    @Test("restart on a new boot after an unclean stop: no lease before the stored lease horizon; after a clean stop: no hold")
    func restartHoldAfterHostCrash() throws {
        // SQLite's fsync-free lease records and their hold (the PostgreSQL store commits every
        // lease durably): this test reads queue.db, so it names its store.
        let cluster = try LocalCluster(extraYAML: "store: { kind: sqlite }")
        defer { cluster.shutdown() }
        do {
            try cluster.startCoordinator()
            try cluster.startNodesAndWait()
            _ = try submitWithSmtplib(port: cluster.smtpPort, messages: [("sender@example.org", ["first@hato.test"], testMessage(0, to: "first@hato.test"))], dir: cluster.dir)
            try waitUntil("first message delivered", timeout: 30) { cluster.capture.received.count == 1 }
            cluster.killCoordinator()
            // What a kernel crash would leave: another boot id, an unclean stop, a horizon ahead.
            let horizon = Date().addingTimeInterval(5)
            do {
                let db = try SQLiteDatabase(path: cluster.queueDBPath)
                try db.execute("UPDATE run_state SET value='an-earlier-boot' WHERE key='boot_id'")
                try db.execute("UPDATE run_state SET value='\(horizon.timeIntervalSince1970)' WHERE key='lease_horizon'")
                #expect(try db.prepare("SELECT value FROM run_state WHERE key='clean_stop'").query { $0.text(0) } == ["0"])
            }
            try cluster.startCoordinator()
            try cluster.waitForNodes(["node-a", "node-b"], state: "active")
            let held = try submitWithSmtplib(port: cluster.smtpPort, messages: (1...3).map { ("sender@example.org", ["held\($0)@hato.test"], testMessage($0, to: "held\($0)@hato.test")) }, dir: cluster.dir)
            #expect(held.count == 3)
            try waitUntil("all delivered after the hold", timeout: 30) { cluster.capture.received.count == 4 }
            let firstAfter = Date(timeIntervalSince1970: cluster.capture.received.dropFirst().map(\.receivedAt).min() ?? 0)
            #expect(firstAfter >= horizon, "a message went out \(horizon.timeIntervalSince(firstAfter)) s before the horizon")
            #expect(cluster.coordinator?.log.contains("no new leases until") == true)

            // A clean stop (SIGTERM) marks the queue; a later start on another boot does not hold.
            #expect(cluster.stopCoordinator() == 0)
            do {
                let db = try SQLiteDatabase(path: cluster.queueDBPath)
                #expect(try db.prepare("SELECT value FROM run_state WHERE key='clean_stop'").query { $0.text(0) } == ["1"])
                try db.execute("UPDATE run_state SET value='yet-another-boot' WHERE key='boot_id'")
                try db.execute("UPDATE run_state SET value='\(Date().addingTimeInterval(60).timeIntervalSince1970)' WHERE key='lease_horizon'")
            }
            try cluster.startCoordinator()
            try cluster.waitForNodes(["node-a", "node-b"], state: "active")
            let start = Date()
            _ = try submitWithSmtplib(port: cluster.smtpPort, messages: [("sender@example.org", ["after@hato.test"], testMessage(9, to: "after@hato.test"))], dir: cluster.dir)
            try waitUntil("delivered without a hold", timeout: 20) { cluster.capture.received.count == 5 }
            #expect(Date().timeIntervalSince(start) < 10)
            #expect(cluster.coordinator?.log.contains("no new leases until") == false)
        } catch {
            Issue.record("\(error)\n\(cluster.logs)")
            throw error
        }
    }

    @Test("reload applies an added IP and refuses an invalid file, keeping the running configuration")
    func reload() throws {
        let cluster = try LocalCluster(ipsYAML: LocalCluster.floatingIPs(2))
        defer { cluster.shutdown() }
        do {
            try cluster.startCoordinator()
            try cluster.startNode("node-a")
            try cluster.waitForNodes(["node-a"], state: "active")
            let original = try String(contentsOfFile: cluster.configPath, encoding: .utf8)
            try (original.replacingOccurrences(of: "ips:\n", with: "ips:\n  - { address: 127.0.0.29, helo: mta29.it.test, pool: nosuchpool }\n"))
                .write(toFile: cluster.configPath, atomically: true, encoding: .utf8)
            let (bad, badOut) = try cluster.cli(["reload"])
            #expect(bad != 0)
            #expect(badOut.contains("cluster.yml:") && badOut.contains("pool"), "names file, line and key: \(badOut)")
            #expect(((try cluster.admin("/v1/ips")) as? [Any])?.count == 2)
            try (original.replacingOccurrences(of: "ips:\n", with: "ips:\n  - { address: 127.0.0.29, helo: mta29.it.test, pool: transactional }\n"))
                .write(toFile: cluster.configPath, atomically: true, encoding: .utf8)
            let (ok, okOut) = try cluster.cli(["reload"])
            #expect(ok == 0, "\(okOut)")
            #expect(okOut.contains("127.0.0.29"))
            // The node re-reads cluster.yml on SIGHUP and announces that it can bind the new IP.
            if let a = cluster.nodeProcess("node-a") { kill(a.pid, SIGHUP) }
            try waitUntil("node-a owns the new IP", timeout: 10) { ((try cluster.node("node-a"))["ips"] as? [String])?.contains("127.0.0.29") == true }
        } catch {
            Issue.record("\(error)\n\(cluster.logs)")
            throw error
        }
    }
}
}
