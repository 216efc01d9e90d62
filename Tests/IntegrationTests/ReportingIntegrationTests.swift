import Foundation
import HatoCrypto
import HatoHTTP
import HatoTestKit
import Testing

/// Submits one message with Python's smtplib, with ESMTP MAIL and RCPT parameters (RFC 3461).
/// - Returns: the queue id from the `250 … queued as <id>` reply.
func submitWithOptions(port: UInt16, from: String, to: [String], content: [UInt8], mailOptions: [String] = [], rcptOptions: [String] = [],
                       dir: String) throws -> String {
    struct Job: Codable { var from: String; var to: [String]; var content: String; var mail: [String]; var rcpt: [String] }
    let job = Job(from: from, to: to, content: Data(content).base64EncodedString(), mail: mailOptions, rcpt: rcptOptions)
    let base = (dir as NSString).appendingPathComponent("submit-\(Identifier.random(bytes: 4))")
    try JSONEncoder().encode(job).write(to: URL(fileURLWithPath: base + ".json"))
    try """
        import base64, json, smtplib, sys
        j = json.load(open(sys.argv[1])); s = smtplib.SMTP("127.0.0.1", int(sys.argv[2]), timeout=30)
        s.ehlo("client.it.test")
        code, msg = s.mail(j["from"], j["mail"])
        assert code == 250, (code, msg)
        for r in j["to"]:
            code, msg = s.rcpt(r, j["rcpt"])
            assert code == 250, (r, code, msg)
        code, msg = s.data(base64.b64decode(j["content"]))
        assert code == 250, (code, msg)
        s.quit()
        open(sys.argv[3], "w").write(msg.decode().rsplit(" ", 1)[-1])
        """.write(toFile: base + ".py", atomically: true, encoding: .utf8)
    let p = try ChildProcess(name: "smtplib-\(Identifier.random(bytes: 3))", executable: "/usr/bin/python3",
                             arguments: [base + ".py", base + ".json", "\(port)", base + ".out"], logDirectory: dir)
    guard let status = p.wait(timeout: 60) else { p.stop(signal: SIGKILL); throw HarnessError("smtplib hung") }
    guard status == 0 else { throw HarnessError("smtplib failed: \(p.log)") }
    return try String(contentsOfFile: base + ".out", encoding: .utf8)
}

/// Runs `/usr/bin/python3 script input output` and returns the JSON it wrote.
func runPython(_ script: String, input: [UInt8], dir: String) throws -> Any {
    let base = (dir as NSString).appendingPathComponent("py-\(Identifier.random(bytes: 4))")
    try script.write(toFile: base + ".py", atomically: true, encoding: .utf8)
    try Data(input).write(to: URL(fileURLWithPath: base + ".in"))
    let p = try ChildProcess(name: "python-\(Identifier.random(bytes: 3))", executable: "/usr/bin/python3",
                             arguments: [base + ".py", base + ".in", base + ".out"], logDirectory: dir)
    guard let status = p.wait(timeout: 30) else { p.stop(signal: SIGKILL); throw HarnessError("python hung") }
    guard status == 0 else { throw HarnessError("python failed: \(p.log)") }
    return try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: base + ".out")))
}

/// GETs a path over plain HTTP and returns the body (no authentication).
func httpGet(port: UInt16, path: String) throws -> String {
    String(decoding: try httpGetBody(port: port, path: path), as: UTF8.self)
}

/// Thread-safe RCPT attempt counts per address, fed by a capture policy.
final class RcptCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var counts: [String: Int] = [:]
    func note(_ rcpt: String) { lock.withLock { counts[rcpt, default: 0] += 1 } }
    func count(_ rcpt: String) -> Int { lock.withLock { counts[rcpt] ?? 0 } }
}

extension Integration {
/// DSNs, suppression, delivery log, webhooks and metrics, end to end: coordinator and node
/// processes, the capture MX playing both the recipient's and the sender's server, Python's
/// smtplib submitting with RFC 3461 parameters, Python's `email` and `prometheus_client`
/// parsing what comes out, and Python's http.server receiving webhooks.
@Suite("Reporting end to end")
struct ReportingIntegrationTests {
    static let parseDSN = """
        import email, json, sys
        from email import policy
        msg = email.message_from_bytes(open(sys.argv[1], 'rb').read(), policy=policy.compat32)
        out = {'content_type': msg.get_content_type(), 'report_type': msg.get_param('report-type'), 'from': msg['From'], 'to': msg['To'],
               'auto_submitted': msg['Auto-Submitted'], 'defects': [str(d) for m in msg.walk() for d in m.defects], 'parts': []}
        for part in msg.get_payload():
            p = {'content_type': part.get_content_type()}
            if part.get_content_type() == 'message/delivery-status':
                p['blocks'] = [dict(b.items()) for b in part.get_payload()]
            else:
                p['text'] = part.get_payload(decode=True).decode('utf-8', 'replace')
            out['parts'].append(p)
        json.dump(out, open(sys.argv[2], 'w'))
        """

    static let parseMetrics = """
        import json, sys
        from prometheus_client.parser import text_string_to_metric_families
        out = []
        for fam in text_string_to_metric_families(open(sys.argv[1]).read()):
            for s in fam.samples:
                out.append({'name': s.name, 'labels': s.labels, 'value': s.value})
        json.dump(out, open(sys.argv[2], 'w'))
        """

    static let webhookReceiver = """
        import hashlib, hmac, http.server, json, sys
        port, out_path, secret = int(sys.argv[1]), sys.argv[2], sys.argv[3].encode()
        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers['Content-Length']))
                expected = 'sha256=' + hmac.new(secret, body, hashlib.sha256).hexdigest()
                valid = hmac.compare_digest(self.headers.get('X-Hato-Signature', ''), expected)
                with open(out_path, 'a') as f:
                    f.write(json.dumps({'valid': valid, 'body': json.loads(body)}) + '\\n')
                self.send_response(200 if valid else 401); self.end_headers()
            def log_message(self, *args): pass
        http.server.HTTPServer(('127.0.0.1', port), H).serve_forever()
        """

    /// Captured messages from `<>` (DSNs), in arrival order.
    static func dsns(_ cluster: LocalCluster) -> [CapturedMessage] { cluster.capture.received.filter { $0.reversePath.isEmpty } }

    @Test("a 550 gives exactly one DSN to the sender from <>, a valid delivery-status report; webhooks, log and metrics show it")
    func hardBounceDSN() throws {
        let hookPort = try freePort()
        let secret = "integration-webhook-secret-42"
        let counter = RcptCounter()
        let cluster = try LocalCluster(extraYAML: """
            webhooks:
              - { url: "http://127.0.0.1:\(hookPort)/hato", events: [failed, dsn-sent, delivered], secret: "\(secret)", initial_backoff: 200ms, max_backoff: 1s }
            """) { rcpt, _ in
            counter.note(rcpt)
            return rcpt == "nobody@hato.test" ? .reject(550, "5.1.1 <nobody@hato.test>: Recipient address rejected: User unknown") : .accept
        }
        defer { cluster.shutdown() }
        // Node metrics: give node-a a metrics listener.
        let nodeMetricsPort = try freePort()
        let yaml = try String(contentsOfFile: cluster.configPath, encoding: .utf8)
            .replacingOccurrences(of: "{ id: node-a, data_dir: var/node-a }", with: "{ id: node-a, data_dir: var/node-a, metrics_listen: \"127.0.0.1:\(nodeMetricsPort)\" }")
        try yaml.write(toFile: cluster.configPath, atomically: true, encoding: .utf8)
        let receiverScript = (cluster.dir as NSString).appendingPathComponent("receiver.py")
        try Self.webhookReceiver.write(toFile: receiverScript, atomically: true, encoding: .utf8)
        let hooksPath = (cluster.dir as NSString).appendingPathComponent("hooks.jsonl")
        do {
            try cluster.startCoordinator()
            try cluster.startNodesAndWait()
            let content = Array("From: App <sender@hato.test>\r\nTo: <nobody@hato.test>\r\nSubject: order 42\r\nMessage-ID: <o42@hato.test>\r\n\r\nthe body\r\n".utf8)
            let id = try submitWithOptions(port: cluster.smtpPort, from: "sender@hato.test", to: ["nobody@hato.test"], content: content,
                                           mailOptions: ["RET=HDRS", "ENVID=QQ314159"], rcptOptions: ["NOTIFY=FAILURE", "ORCPT=rfc822;nobody@hato.test"],
                                           dir: cluster.dir)
            try waitUntil("the DSN arrives at the sender's MX", timeout: 30) { !Self.dsns(cluster).isEmpty }
            // The webhook receiver comes up only now: events queued meanwhile are retried until it answers.
            let receiver = try ChildProcess(name: "webhook-receiver", executable: "/usr/bin/python3",
                                            arguments: [receiverScript, "\(hookPort)", hooksPath, secret], logDirectory: cluster.dir)
            defer { receiver.stop(signal: SIGKILL) }
            Thread.sleep(forTimeInterval: 2)  // anything else (a second DSN) would arrive by now
            let dsns = Self.dsns(cluster)
            #expect(dsns.count == 1, "exactly one DSN")
            guard let dsn = dsns.first else { return }
            #expect(dsn.recipients == ["sender@hato.test"])
            #expect(counter.count("nobody@hato.test") == 1, "a hard bounce is not retried")

            let report = try runPython(Self.parseDSN, input: dsn.content, dir: cluster.dir) as? [String: Any] ?? [:]
            #expect(report["content_type"] as? String == "multipart/report")
            #expect(report["report_type"] as? String == "delivery-status")
            #expect((report["defects"] as? [Any])?.isEmpty == true)
            #expect(report["from"] as? String == "Mail Delivery System <MAILER-DAEMON@relay.it.test>")
            #expect(report["to"] as? String == "<sender@hato.test>")
            #expect(report["auto_submitted"] as? String == "auto-replied")
            let parts = report["parts"] as? [[String: Any]] ?? []
            #expect(parts.map { $0["content_type"] as? String ?? "" } == ["text/plain", "message/delivery-status", "text/rfc822-headers"])
            let blocks = parts.count > 1 ? parts[1]["blocks"] as? [[String: String]] ?? [] : []
            #expect(blocks.count == 2)
            if blocks.count == 2 {
                #expect(blocks[0]["Reporting-MTA"] == "dns; relay.it.test")
                #expect(blocks[0]["Original-Envelope-Id"] == "QQ314159")
                #expect(blocks[0]["X-Hato-Queue-ID"] == id)
                #expect(blocks[0]["Arrival-Date"]?.hasSuffix("+0000") == true)
                #expect(blocks[1]["Final-Recipient"] == "rfc822; nobody@hato.test")
                #expect(blocks[1]["Original-Recipient"] == "rfc822; nobody@hato.test")
                #expect(blocks[1]["Action"] == "failed")
                #expect(blocks[1]["Status"] == "5.1.1")
                #expect(blocks[1]["Remote-MTA"]?.hasPrefix("dns; ") == true)
                #expect(blocks[1]["Diagnostic-Code"]?.replacingOccurrences(of: "\n", with: "").replacingOccurrences(of: "\r", with: "")
                        .contains("smtp; 550 5.1.1 <nobody@hato.test>: Recipient address rejected: User unknown") == true)
            }
            let returned = parts.count > 2 ? parts[2]["text"] as? String ?? "" : ""
            #expect(returned.contains("Subject: order 42"))
            #expect(!returned.contains("the body"))

            // Delivery log through the CLI.
            let (status, out) = try cluster.cli(["log", "--message", id])
            #expect(status == 0, "\(out)")
            #expect(out.contains("received") && out.contains("failed") && out.contains("dsn-sent") && out.contains("bad-mailbox"), "\(out)")
            let (jsonStatus, jsonOut) = try cluster.cli(["log", "--recipient", "nobody@hato.test", "--json"])
            #expect(jsonStatus == 0)
            let logged = (try? JSONSerialization.jsonObject(with: Data(jsonOut.utf8))) as? [[String: Any]] ?? []
            #expect(logged.map { $0["event"] as? String ?? "" } == ["failed"], "\(jsonOut)")
            #expect(logged.first?["sending_ip"] as? String != nil && logged.first?["node"] as? String != nil)
            #expect(logged.first?["tls"] as? Bool == false, "the capture MX offers no STARTTLS: \(logged.first ?? [:])")
            #expect((logged.first?["timings"] as? [String: Any])?["transaction"] != nil, "the node's timings reach the log")

            // Suppression list through the CLI: the hard bounce is listed.
            let (sStatus, sOut) = try cluster.cli(["suppressions", "list"])
            #expect(sStatus == 0 && sOut.contains("nobody@hato.test") && sOut.contains("bad-mailbox"), "\(sOut)")

            // Webhooks: failed, dsn-sent, and the DSN's own delivery, all signed correctly.
            try waitUntil("webhook events", timeout: 20) {
                let posts = ((try? String(contentsOfFile: hooksPath, encoding: .utf8)) ?? "").split(separator: "\n")
                let events = posts.compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
                    .flatMap { (($0["body"] as? [String: Any])?["events"] as? [[String: Any]]) ?? [] }
                return Set(events.compactMap { $0["event"] as? String }) == ["failed", "dsn-sent", "delivered"]
            }
            let posts = ((try? String(contentsOfFile: hooksPath, encoding: .utf8)) ?? "").split(separator: "\n")
                .compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            #expect(!posts.isEmpty && posts.allSatisfy { $0["valid"] as? Bool == true }, "every POST carries a valid signature")

            // Coordinator metrics, parsed by prometheus_client.
            let text = try httpGet(port: cluster.adminPort, path: "/metrics")
            let samples = try runPython(Self.parseMetrics, input: Array(text.utf8), dir: cluster.dir) as? [[String: Any]] ?? []
            func value(_ name: String, _ match: [String: String]) -> Double {
                samples.filter { s in s["name"] as? String == name && match.allSatisfy { (s["labels"] as? [String: String])?[$0.key] == $0.value } }
                    .compactMap { $0["value"] as? Double }.reduce(0, +)
            }
            #expect(value("hato_messages_received_total", ["pool": "transactional"]) == 2, "the original and its DSN")
            #expect(value("hato_recipients_failed_total", ["pool": "transactional", "category": "bad-mailbox"]) == 1)
            #expect(value("hato_recipients_delivered_total", ["pool": "transactional"]) == 1, "the DSN was delivered")
            #expect(value("hato_dsn_queued_total", ["action": "failed"]) == 1)
            #expect(value("hato_delivery_latency_seconds_count", ["pool": "transactional"]) == 1)
            #expect(value("hato_queue_recipients", ["state": "failed"]) == 1)
            #expect(value("hato_node_up", ["node": "node-a"]) == 1 && value("hato_node_up", ["node": "node-b"]) == 1)
            #expect(value("hato_suppressions", [:]) == 1)
            // Inbound SMTP: the client's session and the coordinator's own DSN are not counted
            // alike — only sessions of the submission server are.
            #expect(value("hato_smtp_sessions_total", [:]) >= 1)
            #expect(value("hato_smtp_replies_total", ["code": "354"]) >= 1)
            #expect(value("hato_smtp_replies_total", ["code": "250"]) >= 4, "EHLO, MAIL, RCPT, end of DATA")
            #expect(value("hato_smtp_replies_total", ["code": "220"]) >= 1)

            // Node metrics.
            let nodeText = try httpGet(port: nodeMetricsPort, path: "/metrics")
            let nodeSamples = try runPython(Self.parseMetrics, input: Array(nodeText.utf8), dir: cluster.dir) as? [[String: Any]] ?? []
            #expect(nodeSamples.contains { $0["name"] as? String == "hato_node_connected" && $0["value"] as? Double == 1 })
            #expect(nodeSamples.contains { $0["name"] as? String == "hato_node_sending_ips" && $0["value"] as? Double == 2 })
        } catch {
            Issue.record("\(error)\n\(cluster.logs)")
            throw error
        }
    }

    @Test("messages from <> and recipients with NOTIFY=NEVER never produce a DSN")
    func noDSN() throws {
        let cluster = try LocalCluster { rcpt, _ in rcpt.hasPrefix("nobody") ? .reject(550, "5.1.1 no such user") : .accept }
        defer { cluster.shutdown() }
        do {
            try cluster.startCoordinator()
            try cluster.startNodesAndWait()
            let a = try submitWithOptions(port: cluster.smtpPort, from: "", to: ["nobody1@hato.test"], content: testMessage(1, to: "nobody1@hato.test"),
                                          dir: cluster.dir)
            let b = try submitWithOptions(port: cluster.smtpPort, from: "sender@hato.test", to: ["nobody2@hato.test"],
                                          content: testMessage(2, to: "nobody2@hato.test"), rcptOptions: ["NOTIFY=NEVER"], dir: cluster.dir)
            try cluster.waitForQueue(final: 2, timeout: 30)
            // The reporter has processed both failures once their log lines exist.
            try waitUntil("both failures logged", timeout: 10) {
                [a, b].allSatisfy { id in
                    ((try? cluster.admin("/v1/log?message=\(id)")) as? [[String: Any]] ?? []).contains { $0["event"] as? String == "failed" }
                }
            }
            Thread.sleep(forTimeInterval: 2)
            #expect(Self.dsns(cluster).isEmpty, "no DSN at all: \(Self.dsns(cluster).map(\.recipients))")
            #expect(try cluster.queue()["failed"] == 2)
            for id in [a, b] {
                let events = (try cluster.admin("/v1/log?message=\(id)") as? [[String: Any]] ?? []).compactMap { $0["event"] as? String }
                #expect(!events.contains("dsn-sent"), "\(id): \(events)")
            }
        } catch {
            Issue.record("\(error)\n\(cluster.logs)")
            throw error
        }
    }

    @Test("a second message to a hard-bounced address is not attempted: suppressed at enqueue, reported to the sender")
    func suppression() throws {
        let counter = RcptCounter()
        let cluster = try LocalCluster { rcpt, _ in
            counter.note(rcpt)
            return rcpt == "gone@hato.test" ? .reject(550, "5.1.1 user unknown") : .accept
        }
        defer { cluster.shutdown() }
        do {
            try cluster.startCoordinator()
            try cluster.startNodesAndWait()
            _ = try submitWithOptions(port: cluster.smtpPort, from: "app@hato.test", to: ["gone@hato.test"], content: testMessage(1, to: "gone@hato.test"),
                                      dir: cluster.dir)
            try waitUntil("the address is suppressed", timeout: 30) {
                ((try? cluster.admin("/v1/suppressions")) as? [[String: Any]] ?? []).contains { $0["address"] as? String == "gone@hato.test" }
            }
            #expect(counter.count("gone@hato.test") == 1)
            let second = try submitWithOptions(port: cluster.smtpPort, from: "app@hato.test", to: ["gone@hato.test", "fine@hato.test"],
                                               content: testMessage(2, to: "gone@hato.test"), dir: cluster.dir)
            try waitUntil("the second message is done", timeout: 30) {
                let states = ((try? cluster.message(second))?["recipients"] as? [[String: Any]] ?? []).compactMap { $0["state"] as? String }
                return states.sorted() == ["delivered", "suppressed"]
            }
            Thread.sleep(forTimeInterval: 1)
            #expect(counter.count("gone@hato.test") == 1, "the suppressed address was not tried again")
            #expect(counter.count("fine@hato.test") == 1)
            let events = (try cluster.admin("/v1/log?recipient=gone@hato.test") as? [[String: Any]] ?? []).compactMap { $0["event"] as? String }
            #expect(events == ["failed", "suppressed"], "\(events)")
            // Removing the entry makes the address deliverable again.
            let (status, out) = try cluster.cli(["suppressions", "remove", "gone@hato.test"])
            #expect(status == 0, "\(out)")
            #expect((try cluster.admin("/v1/suppressions") as? [[String: Any]] ?? []).isEmpty)
            let (addStatus, addOut) = try cluster.cli(["suppressions", "add", "Manual@hato.test", "--reason", "complaint", "--expires", "1d"])
            #expect(addStatus == 0, "\(addOut)")
            let listed = try cluster.admin("/v1/suppressions") as? [[String: Any]] ?? []
            #expect(listed.map { $0["address"] as? String ?? "" } == ["manual@hato.test"])
            #expect(listed.first?["source"] as? String == "operator" && listed.first?["reason"] as? String == "complaint")
            let (badStatus, badOut) = try cluster.cli(["suppressions", "add", "not an address"])
            #expect(badStatus != 0 && badOut.contains("not a valid address"), "\(badOut)")
        } catch {
            Issue.record("\(error)\n\(cluster.logs)")
            throw error
        }
    }
}
}
