import Foundation
import HatoIO
import HatoTestKit
import Testing

/// Real processes on loopback: coordinator + two nodes (two sending IPs each),
/// a recording capture MX, Python's smtplib as the submitting client.
extension Integration {
@Suite("End to end")
struct EndToEndTests {
    /// Splits captured content into the prepended trace header field and the rest.
    static func splitTrace(_ content: [UInt8]) -> (header: String, rest: [UInt8])? {
        // The trace header is one field: "Received:" up to the first CRLF not followed by WSP.
        guard content.starts(with: Array("Received: ".utf8)) else { return nil }
        var i = 0
        while i + 2 < content.count {
            if content[i] == 13 && content[i + 1] == 10 && content[i + 2] != 0x20 && content[i + 2] != 0x09 {
                return (String(decoding: content[0..<(i + 2)], as: UTF8.self), Array(content[(i + 2)...]))
            }
            i += 1
        }
        return nil
    }

    @Test("200 messages arrive exactly once, byte-identical but for the trace header, from the reporting node's IPs, over all four IPs")
    func twoHundredMessages() throws {
        let cluster = try LocalCluster()
        defer { cluster.shutdown() }
        do {
            try cluster.startCoordinator()
            try cluster.startNodesAndWait()
            let count = 200
            let originals = (0..<count).map { testMessage($0, to: "user\($0)@hato.test") }
            let started = Date()
            let ids = try submitWithSmtplib(port: cluster.smtpPort,
                                            messages: originals.enumerated().map { ("sender@example.org", ["user\($0.offset)@hato.test"], $0.element) },
                                            connections: 4, dir: cluster.dir)
            #expect(ids.count == count)
            #expect(Set(ids).count == count)
            try cluster.waitForQueue(final: count, timeout: 120)
            let elapsed = Date().timeIntervalSince(started)
            print("end-to-end: \(count) messages in \(String(format: "%.2f", elapsed)) s = \(String(format: "%.1f", Double(count) / elapsed)) msg/s")
            #expect(try cluster.queue()["delivered"] == count)

            let received = cluster.capture.received
            #expect(received.count == count, "every message arrives exactly once")
            // Match captured messages to originals by their unique Subject line.
            var bySubject: [String: [CapturedMessage]] = [:]
            for m in received {
                let text = String(decoding: m.content, as: UTF8.self)
                if let r = text.range(of: "Subject: message ") {
                    let n = text[r.upperBound...].prefix { $0.isNumber }
                    bySubject[String(n), default: []].append(m)
                }
            }
            var usedIPs = Set<String>()
            for (i, original) in originals.enumerated() {
                guard let copies = bySubject["\(i)"] else { Issue.record("message \(i) never arrived"); continue }
                #expect(copies.count == 1, "message \(i) arrived \(copies.count) times")
                let m = copies[0]
                guard let (trace, rest) = Self.splitTrace(m.content) else { Issue.record("message \(i) has no leading trace header"); continue }
                #expect(rest == original, "message \(i) differs from what was submitted")
                #expect(trace.contains("by relay.it.test"))
                #expect(trace.contains("id \(ids[i])"))
                #expect(m.recipients == ["user\(i)@hato.test"])
                #expect(m.reversePath == "sender@example.org")
                // The node that reported the delivery owns the IP the capture server saw.
                let record = try cluster.message(ids[i])
                let rcpt = (record["recipients"] as? [[String: Any]])?.first ?? [:]
                let node = rcpt["node"] as? String ?? "?"
                let ip = rcpt["sending_ip"] as? String ?? "?"
                #expect(rcpt["state"] as? String == "delivered")
                #expect(ip == m.peerAddress, "reported IP \(ip) but the MX saw \(m.peerAddress)")
                #expect(LocalCluster.ipsOf[node]?.contains(m.peerAddress) == true, "\(m.peerAddress) is not an IP of \(node)")
                #expect(m.helo == "mta\(m.peerAddress.split(separator: ".").last ?? "").it.test", "HELO name matches the sending IP")
                usedIPs.insert(m.peerAddress)
            }
            #expect(usedIPs == ["127.0.0.10", "127.0.0.11", "127.0.0.12", "127.0.0.13"])
        } catch {
            Issue.record("\(error)\n\(cluster.logs)")
            throw error
        }
    }

    @Test("kill -9 of the coordinator after 250 replies loses nothing: every accepted message is delivered after restart")
    func durabilityAcrossCoordinatorCrash() throws {
        let cluster = try LocalCluster()
        defer { cluster.shutdown() }
        do {
            try cluster.startCoordinator()
            // No node is running yet: accepted mail can only be in the coordinator's queue.
            let count = 40
            let originals = (0..<count).map { testMessage($0, to: "crash\($0)@hato.test", extraLines: 5) }
            let ids = try submitWithSmtplib(port: cluster.smtpPort,
                                            messages: originals.enumerated().map { ("sender@example.org", ["crash\($0.offset)@hato.test"], $0.element) },
                                            connections: 4, dir: cluster.dir)
            #expect(ids.count == count)
            cluster.killCoordinator()
            #expect(cluster.capture.received.isEmpty)
            try cluster.startCoordinator()
            try cluster.startNodesAndWait()
            try cluster.waitForQueue(final: count, timeout: 60)
            #expect(try cluster.queue()["delivered"] == count)
            let subjects = Set(cluster.capture.received.compactMap { m -> String? in
                let t = String(decoding: m.content, as: UTF8.self)
                return t.range(of: "Subject: message ").map { String(t[$0.upperBound...].prefix { $0.isNumber }) }
            })
            #expect(subjects == Set((0..<count).map(String.init)))
            #expect(cluster.capture.received.count == count)
        } catch {
            Issue.record("\(error)\n\(cluster.logs)")
            throw error
        }
    }

    @Test("on an idle cluster new mail is leased from its inserted rows while its commit runs (hato_leases_granted_at_queueing), and delivered once")
    func leasedAtQueueing() throws {
        let cluster = try LocalCluster()
        defer { cluster.shutdown() }
        do {
            try cluster.startCoordinator()
            try cluster.startNodesAndWait()
            // One message at a time: each finds nothing else due (a first round drains the empty queue).
            for i in 1...5 {
                _ = try submitWithSmtplib(port: cluster.smtpPort, messages: [("sender@hato.test", ["r\(i)@hato.test"], testMessage(i, to: "r\(i)@hato.test"))],
                                          connections: 1, dir: cluster.dir)
                try cluster.waitForQueue(final: i, timeout: 30)
            }
            #expect(cluster.capture.received.count == 5)
            #expect(Set(cluster.capture.received.flatMap(\.recipients)).count == 5, "each recipient once")
            let metrics = try httpGet(port: cluster.adminPort, path: "/metrics")
            func value(_ name: String) -> Int? {
                metrics.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ").last ?? "").map { Int($0) } }
            }
            let all = try #require(value("hato_leases_granted"))
            let atQueueing = try #require(value("hato_leases_granted_at_queueing"))
            #expect(all == 5)
            if cluster.storeSchema != nil {
                #expect(atQueueing == 0, "PostgreSQL's store does not report inserted rows: every lease from the due query")
            } else {
                #expect(atQueueing >= 4, "all but perhaps the first (before any round had drained the queue): \(atQueueing) of \(all)")
            }
        } catch {
            Issue.record("\(error)\n\(cluster.logs)")
            throw error
        }
    }

    @Test("a 451 is retried and delivered; a 550 marks the recipient failed")
    func deferralAndFailure() throws {
        let cluster = try LocalCluster(retrySchedule: "[1s]") { rcpt, attempt in
            if rcpt == "later@hato.test" && attempt == 1 { return .reject(451, "4.7.1 try again later") }
            if rcpt == "nobody@hato.test" { return .reject(550, "5.1.1 no such user") }
            return .accept
        }
        defer { cluster.shutdown() }
        do {
            try cluster.startCoordinator()
            try cluster.startNodesAndWait()
            let ids = try submitWithSmtplib(port: cluster.smtpPort, messages: [
                ("sender@hato.test", ["later@hato.test"], testMessage(1, to: "later@hato.test")),
                ("sender@hato.test", ["nobody@hato.test"], testMessage(2, to: "nobody@hato.test")),
            ], connections: 1, dir: cluster.dir)
            // Three final recipients: the two, and the DSN for the 550 (delivered to sender@hato.test).
            try cluster.waitForQueue(final: 3, timeout: 60)
            let later = ((try cluster.message(ids[0]))["recipients"] as? [[String: Any]])?.first ?? [:]
            #expect(later["state"] as? String == "delivered")
            #expect(later["attempts"] as? Int == 2)
            let nobody = ((try cluster.message(ids[1]))["recipients"] as? [[String: Any]])?.first ?? [:]
            #expect(nobody["state"] as? String == "failed")
            #expect(nobody["last_code"] as? Int == 550)
            #expect(nobody["last_enhanced"] as? String == "5.1.1")
            let relayed = cluster.capture.received.filter { !$0.reversePath.isEmpty }
            #expect(relayed.count == 1, "only the retried message is delivered, once")
            #expect(relayed.first?.recipients == ["later@hato.test"])
            #expect(cluster.capture.received.filter { $0.reversePath.isEmpty }.map(\.recipients) == [["sender@hato.test"]], "one DSN for the 550")
        } catch {
            Issue.record("\(error)\n\(cluster.logs)")
            throw error
        }
    }

    @Test("a client outside relay_networks is refused with 554 5.7.1 at RCPT")
    func relayDenied() throws {
        // The listener's relay network excludes 127.0.0.77: connect from that source address.
        let cluster = try LocalCluster()
        defer { cluster.shutdown() }
        let yaml = try String(contentsOfFile: cluster.configPath, encoding: .utf8)
            .replacingOccurrences(of: "relay_networks: [127.0.0.0/8]", with: "relay_networks: [127.0.0.1/32]")
        try yaml.write(toFile: cluster.configPath, atomically: true, encoding: .utf8)
        try cluster.startCoordinator()
        let sock = try Socket.connect(to: SocketAddress(host: "127.0.0.1", port: cluster.smtpPort), from: "127.0.0.77", timeout: 5)
        sock.setTimeouts(read: 5, write: 5)
        let reader = BufferedReader(stream: sock)
        func line() throws -> String { String(decoding: try reader.readLine(maxLength: 1000) ?? [], as: UTF8.self) }
        #expect(try line().hasPrefix("220 "))
        try sock.write("HELO outsider.test\r\n")
        #expect(try line().hasPrefix("250 "))
        try sock.write("MAIL FROM:<a@outside.test>\r\n")
        #expect(try line().hasPrefix("250 "))
        try sock.write("RCPT TO:<victim@elsewhere.test>\r\n")
        #expect(try line().hasPrefix("554 5.7.1"))
        try sock.write("QUIT\r\n")
        #expect(try line().hasPrefix("221 "))
    }
}
}
