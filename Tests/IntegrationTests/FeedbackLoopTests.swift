import Foundation
import HatoCrypto
import HatoSupport
import HatoTestKit
import Testing

/// Sends one message over SMTP with Python's smtplib from `source` (a loopback address that has
/// no relay rights in the test's configuration).
/// - Returns: the reply codes of RCPT for each recipient and of the end of DATA (nil when no
///   recipient was accepted).
func sendAsOutsider(port: UInt16, source: String, from: String, to: [String], content: [UInt8], dir: String) throws -> (rcpt: [Int], data: Int?) {
    let base = (dir as NSString).appendingPathComponent("outsider-\(Identifier.random(bytes: 4))")
    try Data(content).write(to: URL(fileURLWithPath: base + ".eml"))
    try """
        import json, smtplib, sys
        s = smtplib.SMTP("127.0.0.1", int(sys.argv[2]), timeout=30, source_address=(sys.argv[3], 0))
        s.ehlo("feedback.provider.test")
        code, _ = s.mail(sys.argv[4])
        assert code == 250, code
        rcpt = [s.rcpt(r)[0] for r in sys.argv[5].split(",")]
        data = None
        if 250 in rcpt:
            data = s.data(open(sys.argv[1], "rb").read())[0]
        s.quit()
        json.dump({"rcpt": rcpt, "data": data}, open(sys.argv[1] + ".out", "w"))
        """.write(toFile: base + ".py", atomically: true, encoding: .utf8)
    let p = try ChildProcess(name: "outsider-\(Identifier.random(bytes: 3))", executable: "/usr/bin/python3",
                             arguments: [base + ".py", base + ".eml", "\(port)", source, from, to.joined(separator: ",")], logDirectory: dir)
    guard let status = p.wait(timeout: 60) else { p.stop(signal: SIGKILL); throw HarnessError("smtplib hung") }
    guard status == 0 else { throw HarnessError("smtplib failed: \(p.log)") }
    let out = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: base + ".eml.out"))) as? [String: Any] ?? [:]
    return ((out["rcpt"] as? [Int]) ?? [], out["data"] as? Int)
}

extension Integration {
/// Feedback loops end to end (issue 18): a coordinator and two node processes, the capture MX
/// as every recipient's server, ARF reports shaped as Yahoo/AOL, Microsoft JMRP (redacted) and a
/// headers-only loop send them, over SMTP from an address without relay rights.
@Suite("Feedback loop complaints end to end")
struct FeedbackLoopTests {
    @Test("ARF reports suppress the recipient (next message not attempted), count per IP/provider/domain, reach a webhook; malformed and not-spam reports change nothing")
    func complaintsEndToEnd() throws {
        let hookPort = try freePort()
        let secret = "integration-webhook-secret-fbl"
        let counter = RcptCounter()
        let cluster = try LocalCluster(extraYAML: """
            reputation: { feedback_addresses: [fbl@relay.it.test] }
            webhooks:
              - { url: "http://127.0.0.1:\(hookPort)/hato", events: [complained], secret: "\(secret)", initial_backoff: 200ms, max_backoff: 1s }
            """) { rcpt, _ in counter.note(rcpt); return .accept }
        defer { cluster.shutdown() }
        // Only 127.0.0.1 may relay: the feedback loop sends from 127.0.0.77, like a provider from the internet.
        let yaml = try String(contentsOfFile: cluster.configPath, encoding: .utf8)
            .replacingOccurrences(of: "relay_networks: [127.0.0.0/8]", with: "relay_networks: [127.0.0.1/32]")
        try yaml.write(toFile: cluster.configPath, atomically: true, encoding: .utf8)
        let receiverScript = (cluster.dir as NSString).appendingPathComponent("receiver.py")
        try ReportingIntegrationTests.webhookReceiver.write(toFile: receiverScript, atomically: true, encoding: .utf8)
        let hooksPath = (cluster.dir as NSString).appendingPathComponent("hooks.jsonl")
        let receiver = try ChildProcess(name: "webhook-receiver", executable: "/usr/bin/python3",
                                        arguments: [receiverScript, "\(hookPort)", hooksPath, secret], logDirectory: cluster.dir)
        defer { receiver.stop(signal: SIGKILL) }
        do {
            try cluster.startCoordinator()
            try cluster.startNodesAndWait()
            let people = ["alice", "bob", "carol", "dave", "erin"]
            var ids: [String: String] = [:]
            for p in people {
                let content = Array("From: Shop <news@shop.test>\r\nTo: <\(p)@hato.test>\r\nSubject: sale for \(p)\r\n\r\nBuy now\r\n".utf8)
                ids[p] = try submitWithOptions(port: cluster.smtpPort, from: "bounce@shop.test", to: ["\(p)@hato.test"], content: content, dir: cluster.dir)
            }
            try waitUntil("every message reaches the MX", timeout: 30) { people.allSatisfy { counter.count("\($0)@hato.test") == 1 } }
            func captured(_ p: String) throws -> CapturedMessage {
                try #require(cluster.capture.received.first { $0.recipients == ["\(p)@hato.test"] })
            }
            // Nodes add the tracking field ahead of signing: queue id and recipient id.
            let aliceMessage = try captured("alice")
            let tracking = headerFieldValue("X-Hato-Recipient", in: String(decoding: aliceMessage.content, as: UTF8.self))
            #expect(tracking?.hasPrefix(ids["alice"]! + ".") == true, "\(tracking ?? "none")")
            let suppressionsBefore = (try cluster.admin("/v1/suppressions") as? [[String: Any]] ?? []).count
            #expect(suppressionsBefore == 0)

            // The outsider may not relay, but may send to the feedback address.
            let relay = try sendAsOutsider(port: cluster.smtpPort, source: "127.0.0.77", from: "x@provider.test", to: ["someone@hato.test"],
                                           content: Array("Subject: x\r\n\r\nx\r\n".utf8), dir: cluster.dir)
            #expect(relay.rcpt == [554], "no relay rights: \(relay)")

            // A malformed report (no Feedback-Type) and a not-spam report: 250, and nothing else happens.
            let queuedBefore = try cluster.queue().values.reduce(0, +)
            let bad = try sendAsOutsider(port: cluster.smtpPort, source: "127.0.0.77", from: "", to: ["fbl@relay.it.test"],
                                         content: ARFSamples.malformed(returned: try captured("dave").content, recipient: "dave@hato.test"), dir: cluster.dir)
            #expect(bad.rcpt == [250] && bad.data == 250, "\(bad)")
            let notSpam = try sendAsOutsider(port: cluster.smtpPort, source: "127.0.0.77", from: "", to: ["fbl@relay.it.test"],
                                             content: ARFSamples.notSpam(returned: try captured("dave").content, recipient: "dave@hato.test"), dir: cluster.dir)
            #expect(notSpam.data == 250)

            // Yahoo/AOL style (full message, recipient given), Microsoft JMRP (recipient redacted), headers only.
            let aliceIP = aliceMessage.peerAddress
            let reports: [(String, [UInt8])] = [
                ("alice", ARFSamples.yahoo(returned: aliceMessage.content, recipient: "alice@hato.test", mailFrom: "bounce@shop.test", sourceIP: aliceIP)),
                ("bob", ARFSamples.microsoftJMRP(returned: try captured("bob").content, mailFrom: "bounce@shop.test")),
                ("carol", ARFSamples.headersOnly(returned: try captured("carol").content, sourceIP: try captured("carol").peerAddress)),
            ]
            var visibleAfter: [Double] = []
            for (p, report) in reports {
                let sent = ContinuousClock.now
                let r = try sendAsOutsider(port: cluster.smtpPort, source: "127.0.0.77", from: "", to: ["fbl@relay.it.test"], content: report, dir: cluster.dir)
                #expect(r.rcpt == [250] && r.data == 250, "\(p): \(r)")
                // The suppression is written before the 250: visible at once through the admin API.
                try waitUntil("\(p) is suppressed", timeout: 10) {
                    ((try? cluster.admin("/v1/suppressions?address=\(p)@hato.test")) as? [[String: Any]] ?? []).contains { $0["source"] as? String == "complaint" }
                }
                visibleAfter.append((ContinuousClock.now - sent).inSeconds)
            }
            print("feedback loop: report sent → suppression visible (incl. the python client): \(visibleAfter.map { String(format: "%.3f s", $0) })")
            let suppressed = Set((try cluster.admin("/v1/suppressions") as? [[String: Any]] ?? []).compactMap { $0["address"] as? String })
            #expect(suppressed == ["alice@hato.test", "bob@hato.test", "carol@hato.test"], "never dave, never the redacted address: \(suppressed)")
            let entry = (try cluster.admin("/v1/suppressions?address=bob@hato.test") as? [[String: Any]] ?? []).first ?? [:]
            #expect(entry["category"] as? String == "complaint" && entry["message_id"] as? String == ids["bob"])

            // Nothing was queued for the reports (consumed, never bounced or relayed).
            let queueAfter = try cluster.queue()
            #expect(queueAfter.values.reduce(0, +) == queuedBefore, "no message queued for any report: \(queueAfter)")

            // The next message to alice is not attempted; erin's in the same message is delivered.
            let next = try submitWithOptions(port: cluster.smtpPort, from: "bounce@shop.test", to: ["alice@hato.test", "erin@hato.test"],
                                             content: Array("From: <news@shop.test>\r\nSubject: again\r\n\r\nx\r\n".utf8), dir: cluster.dir)
            try waitUntil("the second message is done", timeout: 30) {
                let states = ((try? cluster.message(next))?["recipients"] as? [[String: Any]] ?? []).compactMap { $0["state"] as? String }
                return states.sorted() == ["delivered", "suppressed"]
            }
            Thread.sleep(forTimeInterval: 1)
            #expect(counter.count("alice@hato.test") == 1, "the complained-about recipient was not tried again")
            #expect(counter.count("erin@hato.test") == 2)

            // The webhook receives one complained event per complaint, signed.
            try waitUntil("complained events reach the webhook", timeout: 20) {
                let posts = ((try? String(contentsOfFile: hooksPath, encoding: .utf8)) ?? "").split(separator: "\n")
                let events = posts.compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
                    .flatMap { (($0["body"] as? [String: Any])?["events"] as? [[String: Any]]) ?? [] }
                return events.filter { $0["event"] as? String == "complained" }.count >= 3
            }
            let posts = ((try? String(contentsOfFile: hooksPath, encoding: .utf8)) ?? "").split(separator: "\n")
                .compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            #expect(posts.allSatisfy { $0["valid"] as? Bool == true })
            let events = posts.flatMap { (($0["body"] as? [String: Any])?["events"] as? [[String: Any]]) ?? [] }
            #expect(events.count == 3, "only the three complaints: \(events)")
            let alice = events.first { $0["recipient"] as? String == "alice@hato.test" } ?? [:]
            #expect(alice["message_id"] as? String == ids["alice"] && alice["sending_ip"] as? String == aliceIP && alice["category"] as? String == "abuse")
            #expect(alice["note"] as? String == "reported by mta1.mail.gq1.yahoo.com")
            #expect(Set(events.compactMap { $0["recipient"] as? String }) == ["alice@hato.test", "bob@hato.test", "carol@hato.test"])

            // Counts per IP, provider, sender domain and tenant (mail of no tenant): admin API and CLI.
            var expectedIPs: [String: Int] = [:]
            for p in ["alice", "bob", "carol"] { expectedIPs[try captured(p).peerAddress, default: 0] += 1 }
            let summary = try cluster.admin("/v1/complaints?since=1h") as? [String: Any] ?? [:]
            #expect(summary["total"] as? Int == 3, "\(summary)")
            func counts(_ key: String) -> [String: Int] {
                Dictionary(((summary[key] as? [[String: Any]]) ?? []).map { ($0["key"] as? String ?? "?", $0["count"] as? Int ?? -1) }, uniquingKeysWith: +)
            }
            #expect(counts("by_ip") == expectedIPs)
            #expect(counts("by_provider") == ["other": 3], "the capture MX (127.0.0.1) is no known provider")
            #expect(counts("by_sender_domain") == ["shop.test": 3])
            #expect(counts("by_tenant") == ["": 3])
            let (status, out) = try cluster.cli(["complaints", "--since", "1h"])
            #expect(status == 0 && out.contains("3 complaints") && out.contains("shop.test"), "\(out)")
            let (jsonStatus, jsonOut) = try cluster.cli(["complaints", "--json"])
            #expect(jsonStatus == 0 && ((try? JSONSerialization.jsonObject(with: Data(jsonOut.utf8))) as? [String: Any])?["total"] as? Int == 3, "\(jsonOut)")

            // Metrics: complaints by provider; reports by result.
            let text = try httpGet(port: cluster.adminPort, path: "/metrics")
            #expect(text.contains("hato_complaints_total{provider=\"other\"} 3"), "\(text.split(separator: "\n").filter { $0.contains("complaint") })")
            #expect(text.contains("hato_feedback_reports_total{result=\"malformed\"} 1") && text.contains("hato_feedback_reports_total{result=\"ignored\"} 1"))
            // No DSN (no message from <>) was generated by any report.
            #expect(cluster.capture.received.filter { $0.reversePath.isEmpty }.isEmpty)
            #expect(!((try cluster.admin("/v1/log?recipient=dave@hato.test") as? [[String: Any]] ?? []).contains { $0["event"] as? String == "complained" }))
        } catch {
            Issue.record("\(error)\n\(cluster.logs)")
            throw error
        }
    }

    @Test("several coordinators on PostgreSQL: a report taken in by the standby suppresses at once, and the leader reports its complained event exactly once")
    func reportToStandby() throws {
        let schema = try TestSchema()
        let ha = try HACluster(storeYAML: schema.storeYAML + "\nreputation: { feedback_addresses: [fbl@relay.it.test] }")
        defer { ha.shutdown() }
        try ha.recordingLogs {
            try ha.startLeaderAndStandby()
            try waitUntil("the standby knows the leader", timeout: 10) { (try ha.status("coord-2"))["leader"] as? String == "coord-1" }
            try ha.startNodesAndWait(via: "coord-1")
            let content = Array("From: <news@shop.test>\r\nTo: <frank@hato.test>\r\nSubject: hi\r\n\r\nx\r\n".utf8)
            let id = try submitWithOptions(port: ha.smtpPorts[0], from: "bounce@shop.test", to: ["frank@hato.test"], content: content, dir: ha.dir)
            try waitUntil("delivered", timeout: 30) { ha.capture.received.contains { $0.recipients == ["frank@hato.test"] } }
            let delivered = try #require(ha.capture.received.first { $0.recipients == ["frank@hato.test"] })
            let report = ARFSamples.microsoftJMRP(returned: delivered.content, mailFrom: "bounce@shop.test")
            let r = try sendAsOutsider(port: ha.smtpPorts[1], source: "127.0.0.1", from: "", to: ["fbl@relay.it.test"], content: report, dir: ha.dir)
            #expect(r.data == 250, "\(r)")
            // Written by the standby into the shared store before its 250: the leader sees it at once.
            let entries = try ha.admin("coord-1", "/v1/suppressions?address=frank@hato.test") as? [[String: Any]] ?? []
            #expect(entries.first?["source"] as? String == "complaint" && entries.first?["message_id"] as? String == id, "\(entries)")
            try waitUntil("the leader logs the complained event", timeout: 15) {
                ((try? ha.admin("coord-1", "/v1/log?recipient=frank@hato.test")) as? [[String: Any]] ?? []).contains { $0["event"] as? String == "complained" }
            }
            Thread.sleep(forTimeInterval: 1)
            let events = (try ha.admin("coord-1", "/v1/log?recipient=frank@hato.test") as? [[String: Any]] ?? []).compactMap { $0["event"] as? String }
            #expect(events.filter { $0 == "complained" }.count == 1, "\(events)")
            #expect(try ha.metrics("coord-1").contains("hato_complaints_total{provider=\"other\"} 1"))
            #expect(!(try ha.metrics("coord-2").contains("hato_complaints_total{")), "the standby reports nothing")
            let summary = try ha.admin("coord-2", "/v1/complaints") as? [String: Any] ?? [:]
            #expect(summary["total"] as? Int == 1, "\(summary)")
        }
    }
}
}
