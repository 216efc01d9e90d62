import Foundation
import HatoIO
import HatoTestKit
import Testing

/// Reads one `/proc/<pid>/status` field in kB (`VmHWM` peak resident, `VmRSS` current).
func procStatusKiB(_ pid: pid_t, _ field: String) -> Int? {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    for line in status.split(separator: "\n") where line.hasPrefix(field + ":") {
        return Int(line.split(separator: " ").dropFirst().first { !$0.isEmpty }?.trimmingCharacters(in: .whitespaces) ?? "")
    }
    return nil
}

extension Integration {
@Suite("Cluster listener under hostile peers")
struct ClusterListenerTests {
    /// A raw TCP client of the cluster port, bound to `source`.
    final class RawPeer {
        let socket: Socket
        init(port: UInt16, source: String) throws {
            socket = try Socket.connect(to: SocketAddress(host: "127.0.0.1", port: port), from: source, timeout: 5)
            socket.setTimeouts(read: 5, write: 5)
        }
        /// Reads whatever arrives within the read timeout: the bytes, or nil at end of stream / reset.
        func read() -> [UInt8]? {
            var buf = [UInt8](repeating: 0, count: 65536)
            guard let n = try? buf.withUnsafeMutableBytes({ try socket.read(into: $0) }), n > 0 else { return nil }
            return Array(buf[0..<n])
        }
        /// Whether the coordinator closed the connection within `seconds` (EOF or reset, after any pending bytes).
        func closedWithin(_ seconds: TimeInterval) -> Bool {
            socket.setTimeouts(read: seconds, write: 5)
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                do {
                    let n = try buf.withUnsafeMutableBytes { try socket.read(into: $0) }
                    if n == 0 { return true }
                } catch let e as SocketError {
                    return e.kind != .timeout
                } catch { return true }
            }
        }
        /// A frame header: length prefix, type 2 (hello), header length.
        func sendFrameStart(length: Int, headerLength: Int) throws {
            var b: [UInt8] = []
            for shift in [24, 16, 8, 0] { b.append(UInt8((length >> shift) & 0xFF)) }
            b.append(2)
            for shift in [24, 16, 8, 0] { b.append(UInt8((headerLength >> shift) & 0xFF)) }
            try socket.write(b)
        }
        func close() { socket.close() }
    }

    @Test("pre-authentication: frames over 64 KiB close the connection, the handshake has a 10 s deadline, at most 8 unauthenticated connections per peer; 50 hostile connections keep the coordinator small; a node still joins")
    func hostilePeers() throws {
        let cluster = try LocalCluster(nodeIDs: ["node-a"], ipsYAML: "ips:\n  - { address: 127.0.0.10, helo: mta10.it.test, pool: transactional, nodes: [node-a] }")
        defer { cluster.shutdown() }
        var peers: [RawPeer] = []
        defer { for p in peers { p.close() } }
        do {
            try cluster.startCoordinator()
            let pid = try #require(cluster.coordinator?.pid)
            try waitUntil("the cluster port listens", timeout: 10) { (try? RawPeer(port: cluster.clusterPort, source: "127.0.2.1")).map { $0.close(); return true } ?? false }
            let baseline = try #require(procStatusKiB(pid, "VmRSS"))

            // 1. The old attack: a frame just under 2 × max_message_size + 1 MiB (21 MiB) before hello. Refused at the prefix.
            let big = try RawPeer(port: cluster.clusterPort, source: "127.0.2.2")
            #expect(big.read() != nil, "the challenge arrives first")
            try big.sendFrameStart(length: 21 << 20, headerLength: 100)
            try? big.socket.write([UInt8](repeating: 0x41, count: 4096))
            #expect(big.closedWithin(3), "an oversized frame before authentication closes the connection")
            big.close()
            // Just over the 64 KiB bound: also closed.
            let over = try RawPeer(port: cluster.clusterPort, source: "127.0.2.2")
            _ = over.read()
            try over.sendFrameStart(length: 64 * 1024 + 1, headerLength: 10)
            #expect(over.closedWithin(3))
            over.close()

            // 2. 50 hostile connections from 10 addresses, each holding a frame just under the bound, unfinished.
            let started = Date()
            let trickler = try RawPeer(port: cluster.clusterPort, source: "127.0.3.1")
            _ = trickler.read()
            for i in 0..<50 {
                let p = try RawPeer(port: cluster.clusterPort, source: "127.0.4.\(1 + i / 5)")
                _ = p.read()
                try p.sendFrameStart(length: 64 * 1024 - 8, headerLength: 64 * 1024 - 20)
                try p.socket.write([UInt8](repeating: 0x7B, count: 60 * 1024))
                peers.append(p)
            }
            // 3. Per peer: 8 unauthenticated connections from one address; the 9th is closed without a challenge.
            var samePeer: [RawPeer] = []
            for _ in 0..<8 {
                let p = try RawPeer(port: cluster.clusterPort, source: "127.0.5.1")
                #expect(p.read() != nil, "within the per-peer limit: challenged")
                samePeer.append(p)
            }
            let ninth = try RawPeer(port: cluster.clusterPort, source: "127.0.5.1")
            #expect(ninth.read() == nil, "over the per-peer limit: closed at once")
            ninth.close()
            peers += samePeer

            // 4. A real node still joins while 58 unauthenticated connections are held.
            try cluster.startNode("node-a")
            try cluster.waitForNodes(["node-a"], state: "active", timeout: 20)

            // 5. The trickler (one byte a second) is cut off by the 10 s handshake deadline, not kept forever.
            var trickleClosedAt: TimeInterval?
            // A valid start of a 100-octet hello frame, one byte at a time.
            let slow: [UInt8] = [0, 0, 0, 100, 2, 0, 0, 0, 90] + Array(repeating: 0x7B, count: 40)
            for byte in slow {
                if (try? trickler.socket.write([byte])) == nil || trickler.closedWithin(1) {
                    trickleClosedAt = Date().timeIntervalSince(started); break
                }
            }
            let closedAt = try #require(trickleClosedAt, "the trickling peer was never cut off")
            #expect(closedAt >= 9 && closedAt <= 14, "cut off after \(closedAt) s")
            // …and so were the 58 others (their deadlines passed too): nothing is held for them any more.
            #expect(peers.allSatisfy { $0.closedWithin(2) })
            let peak = try #require(procStatusKiB(pid, "VmHWM"))
            let after = try #require(procStatusKiB(pid, "VmRSS"))
            print("pre-auth: coordinator VmRSS \(baseline) kB before, VmHWM \(peak) kB with 58 hostile connections, VmRSS \(after) kB after; trickler cut off after \(String(format: "%.1f", closedAt)) s")
            #expect(peak - baseline < 64 * 1024, "58 unauthenticated connections cost less than 64 MiB (\(peak - baseline) kB)")
            #expect(try cluster.node("node-a")["state"] as? String == "active")
        } catch {
            Issue.record("\(error)\n\(cluster.logs)")
            throw error
        }
    }
}
}
