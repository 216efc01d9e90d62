import Foundation
import HatoConfig
import HatoCoordinator
import HatoCrypto
import HatoIO
import HatoTestKit
import SMTPCore
import Testing

extension Integration {
/// Tenants end to end (issue 16): a real coordinator and node, tenants made with the real CLI,
/// mail sent with real clients (swaks and smtplib over SMTP AUTH; curl and urllib over the HTTP
/// API), delivered to a capture MX that records the source address and the exact bytes.
@Suite("Tenants end to end", .serialized)
struct TenantEndToEndTests {
    /// A cluster with two pools of one IP each (`transactional` 127.0.0.10, `bulk` 127.0.0.11)
    /// on one node, the HTTP API, and two tenants: `acme` (pool transactional, acme.example,
    /// SMTP user acme-app) and `beta` (pool bulk, beta.example, SMTP user beta-app).
    final class Setup: @unchecked Sendable {
        let cluster: LocalCluster
        let httpPort: UInt16
        var keys: [String: String] = [:]
        var dkim: [String: String] = [:]

        init(acmeLimit: String? = nil, startNode: Bool = true) throws {
            let httpPort = try freePort()
            self.httpPort = httpPort
            cluster = try LocalCluster(extraYAML: "http_api: { listen: [127.0.0.1:\(httpPort)] }", nodeIDs: ["node-a"], ipsYAML: """
                ips:
                  - { address: 127.0.0.10, helo: mta10.it.test, pool: transactional, nodes: [node-a] }
                  - { address: 127.0.0.11, helo: mta11.it.test, pool: bulk, nodes: [node-a] }
                """, smtpYAML: "auth_allow_plaintext_loopback: true",
                poolsYAML: "pools:\n  - { name: transactional }\n  - { name: bulk }")
            // A set-up that fails stops what it started (the test's `defer` does not exist yet).
            do { try prepare(acmeLimit: acmeLimit, startNode: startNode) } catch {
                cluster.shutdown()
                throw error
            }
        }

        private func prepare(acmeLimit: String?, startNode: Bool) throws {
            try cluster.startCoordinator()
            if startNode {
                try cluster.startNode("node-a")
                try cluster.waitForNodes(["node-a"], state: "active")
            }
            for (tenant, pool) in [("acme", "transactional"), ("beta", "bulk")] {
                var args = ["tenant", "create", tenant, "--pool", pool, "--json"]
                if tenant == "acme", let acmeLimit { args += ["--limit", acmeLimit] }
                let (status, out) = try cluster.cli(args)
                guard status == 0, let json = (try? JSONSerialization.jsonObject(with: Data(Self.lastLine(out).utf8))) as? [String: Any],
                      let key = json["api_key"] as? String else { throw HarnessError("tenant create \(tenant): \(out)") }
                keys[tenant] = key
                let (dStatus, dOut) = try cluster.cli(["domain", "add", "\(tenant).example", "--tenant", tenant, "--json"])
                guard dStatus == 0, let answer = (try? JSONSerialization.jsonObject(with: Data(Self.lastLine(dOut).utf8))) as? [String: Any],
                      let records = (answer["records"] as? [String: Any])?["records"] as? [[String: Any]] else {
                    throw HarnessError("domain add: \(dOut)")
                }
                for r in records where r["kind"] as? String == "dkim" { dkim[r["name"] as? String ?? ""] = r["value"] as? String }
                let hash = PasswordHash.make(password: Array("\(tenant)-password".utf8), iterations: 10_000).encoded
                let (code, body) = try httpRequest(port: cluster.adminPort, method: "POST", path: "/v1/tenants/\(tenant)/users", bearer: cluster.token,
                                                   body: Array(#"{"name": "\#(tenant)-app", "password_hash": "\#(hash)"}"#.utf8))
                guard code == 201 else { throw HarnessError("smtp user: \(code) \(String(decoding: body, as: UTF8.self))") }
            }
        }

        /// The JSON document in a program's output: from the first line that opens an object to the end.
        static func lastLine(_ s: String) -> String {
            let lines = s.split(separator: "\n", omittingEmptySubsequences: false)
            guard let i = lines.firstIndex(where: { $0.hasPrefix("{") }) else { return s }
            return lines[i...].joined(separator: "\n")
        }

        /// POSTs a JSON body to the HTTP API with `tenant`'s key.
        func send(_ tenant: String, _ json: String, headers: [String: String] = [:]) throws -> (status: Int, body: [String: Any]) {
            let (status, body) = try httpRequest(port: httpPort, method: "POST", path: "/api/v1/messages", bearer: keys[tenant], headers: headers,
                                                 body: Array(json.utf8))
            return (status, (try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any]) ?? [:])
        }

        func get(_ tenant: String, _ path: String) throws -> (status: Int, body: Any?) {
            let (status, body) = try httpRequest(port: httpPort, method: "GET", path: path, bearer: keys[tenant])
            return (status, try? JSONSerialization.jsonObject(with: Data(body)))
        }

        /// An SMTP transaction with `tenant`'s user: the reply to RCPT and, when accepted, to the end of DATA.
        func smtp(_ tenant: String, from: String, to: String = "x@hato.test") throws -> [String] {
            let c = try RawSMTPClient(SocketAddress(host: "127.0.0.1", port: cluster.smtpPort))
            _ = try c.exchange("EHLO raw.test\r\n")
            let plain = Data("\0\(tenant)-app\0\(tenant)-password".utf8).base64EncodedString()
            guard try c.exchange("AUTH PLAIN \(plain)\r\n")[0].hasPrefix("235") else { throw HarnessError("AUTH failed") }
            var replies = [try c.exchange("MAIL FROM:<\(from)>\r\n")[0]]
            guard replies[0].hasPrefix("250") else { return replies }
            replies.append(try c.exchange("RCPT TO:<\(to)>\r\n")[0])
            guard replies[1].hasPrefix("250") else { return replies }
            _ = try c.exchange("DATA\r\n")
            replies.append(try c.exchange("From: <\(from)>\r\nSubject: raw\r\n\r\nhi\r\n.\r\n")[0])
            _ = try? c.exchange("QUIT\r\n")
            return replies
        }

        func shutdown() { cluster.shutdown() }
    }

    static let attachment: [UInt8] = (0..<300).map { UInt8(($0 * 7 + 3) % 256) }

    static let smtplibScript = """
        import smtplib, sys
        port, user, password, sender, rcpt = sys.argv[1:6]
        s = smtplib.SMTP('127.0.0.1', int(port), local_hostname='smtplib.test', timeout=20)
        s.login(user, password)
        s.sendmail(sender, [rcpt], 'From: Beta <%s>\\r\\nTo: <%s>\\r\\nSubject: via smtplib\\r\\n\\r\\nhello from smtplib\\r\\n' % (sender, rcpt))
        s.quit()
        """

    static let urllibScript = """
        import json, sys, urllib.request
        port, key, body = sys.argv[1], sys.argv[2], open(sys.argv[3], 'rb').read()
        req = urllib.request.Request('http://127.0.0.1:%s/api/v1/messages' % port, data=body, method='POST',
                                     headers={'Authorization': 'Bearer ' + key, 'Content-Type': 'application/json'})
        with urllib.request.urlopen(req, timeout=20) as r:
            print(json.dumps({'status': r.status, 'body': json.loads(r.read())}))
        """

    /// Parses a captured message with Python's `email` package (the modern policy).
    static let emailScript = """
        import email, email.policy, hashlib, json, sys
        m = email.message_from_bytes(open(sys.argv[1], 'rb').read(), policy=email.policy.default)
        out = {'subject': str(m['subject']), 'from_name': m['from'].addresses[0].display_name, 'from_addr': m['from'].addresses[0].addr_spec,
               'to_names': [a.display_name for a in m['to'].addresses], 'type': m.get_content_type(),
               'parts': [p.get_content_type() for p in m.walk()],
               'text': m.get_body(preferencelist=('plain',)).get_content(), 'html': m.get_body(preferencelist=('html',)).get_content(),
               'attachments': [{'filename': p.get_filename(), 'type': p.get_content_type(), 'sha256': hashlib.sha256(p.get_content()).hexdigest()}
                               for p in m.iter_attachments()]}
        print(json.dumps(out))
        """

    @Test("two tenants send by SMTP (swaks, smtplib) and the HTTP API (curl, urllib): each message leaves from its tenant's pool, signed with its domain's two keys (dkimpy), and each key sees only its own messages and events")
    func twoTenants() throws {
        let s = try Setup()
        defer { s.shutdown() }
        let c = s.cluster, dir = c.dir
        // acme over SMTP: swaks with AUTH PLAIN.
        let (swaks, swaksOut) = try runProgram("/usr/bin/swaks", [
            "--server", "127.0.0.1:\(c.smtpPort)", "--auth", "PLAIN", "--auth-user", "acme-app", "--auth-password", "acme-password",
            "--from", "billing@acme.example", "--to", "a-smtp@hato.test", "--helo", "swaks.it.test", "--timeout", "20"], dir: dir)
        #expect(swaks == 0, "\(swaksOut)")
        // beta over SMTP: smtplib login().
        _ = try OutboundInteropTests.python(Self.smtplibScript, ["\(c.smtpPort)", "beta-app", "beta-password", "news@beta.example", "b-smtp@hato.test"], dir: dir)
        // acme over HTTP with curl: non-ASCII subject and names, text + HTML, a binary attachment.
        let acmeBody = """
            {"from": {"name": "Ünïcode Billing", "address": "billing@acme.example"},
             "to": [{"name": "José Müller", "address": "a-http@hato.test"}],
             "subject": "Rechnung für Dezember — ✓ 請求書",
             "text": "Grüße aus Köln\\n", "html": "<p>Grüße aus <b>Köln</b></p>",
             "attachments": [{"filename": "data.bin", "content_type": "application/octet-stream", "content": "\(Data(Self.attachment).base64EncodedString())"}]}
            """
        try acmeBody.write(toFile: dir + "/acme.json", atomically: true, encoding: .utf8)
        let (curl, curlOut) = try runProgram("/usr/bin/curl", [
            "-sS", "-w", "\n%{http_code}", "-H", "Authorization: Bearer \(s.keys["acme"]!)", "-H", "Content-Type: application/json",
            "--data-binary", "@\(dir)/acme.json", "http://127.0.0.1:\(s.httpPort)/api/v1/messages"], dir: dir)
        #expect(curl == 0)
        let curlLines = curlOut.split(separator: "\n")
        #expect(curlLines.last == "202", "\(curlOut)")
        let acmeHTTPID = (try? JSONSerialization.jsonObject(with: Data((curlLines.first ?? "").utf8)) as? [String: Any])?["id"] as? String
        // beta over HTTP with urllib.
        try #"{"from": "news@beta.example", "to": "b-http@hato.test", "subject": "via urllib", "text": "hi"}"#
            .write(toFile: dir + "/beta.json", atomically: true, encoding: .utf8)
        let urllibOut = try OutboundInteropTests.python(Self.urllibScript, ["\(s.httpPort)", s.keys["beta"]!, dir + "/beta.json"], dir: dir)
        let betaHTTP = try JSONSerialization.jsonObject(with: Data(Setup.lastLine(urllibOut).utf8)) as? [String: Any]
        #expect(betaHTTP?["status"] as? Int == 202)
        let betaHTTPID = (betaHTTP?["body"] as? [String: Any])?["id"] as? String

        try c.waitForQueue(final: 4, timeout: 60)
        let captured = c.capture.received
        #expect(captured.count == 4, "\(c.logs)")
        var files: [String] = []
        for m in captured {
            let rcpt = m.recipients.first ?? ""
            // Each tenant's pool: acme → transactional (127.0.0.10), beta → bulk (127.0.0.11).
            #expect(m.peerAddress == (rcpt.hasPrefix("a-") ? "127.0.0.10" : "127.0.0.11"), "\(rcpt) from \(m.peerAddress)")
            let path = dir + "/\(rcpt).eml"
            try Data(m.content).write(to: URL(fileURLWithPath: path))
            files.append(path)
        }
        let verdicts = try OutboundInteropTests.dkimpy(files, records: s.dkim, dir: dir)
        #expect(verdicts == Array(repeating: [true, true], count: 4), "ed25519 and rsa signatures of the tenant's domain on every message")
        for (file, m) in zip(files, captured) {
            let text = String(decoding: m.content, as: UTF8.self)
            let domain = (m.recipients.first ?? "").hasPrefix("a-") ? "acme.example" : "beta.example"
            #expect(text.components(separatedBy: "DKIM-Signature:").count == 3, "\(file)")
            #expect(text.contains("d=\(domain);"), "\(file) signed by its own tenant's domain")
        }

        // The HTTP-built message, parsed by Python's email package.
        let httpFile = try #require(zip(files, captured).first { $0.1.recipients == ["a-http@hato.test"] }?.0)
        let parsed = try JSONSerialization.jsonObject(with: Data(Setup.lastLine(try OutboundInteropTests.python(Self.emailScript, [httpFile], dir: dir)).utf8))
            as? [String: Any]
        #expect(parsed?["subject"] as? String == "Rechnung für Dezember — ✓ 請求書")
        #expect(parsed?["from_name"] as? String == "Ünïcode Billing")
        #expect(parsed?["to_names"] as? [String] == ["José Müller"])
        #expect(parsed?["type"] as? String == "multipart/mixed")
        #expect((parsed?["text"] as? String)?.hasPrefix("Grüße aus Köln") == true)
        #expect((parsed?["html"] as? String)?.contains("<b>Köln</b>") == true)
        let attachments = parsed?["attachments"] as? [[String: Any]]
        #expect(attachments?.first?["filename"] as? String == "data.bin")
        #expect(attachments?.first?["sha256"] as? String == Hex.encode(Crypto.sha256(Self.attachment)), "the binary attachment arrives intact")

        // Isolation: each key reads its own message and events, and never the other's.
        let acmeID = try #require(acmeHTTPID), betaID = try #require(betaHTTPID)
        #expect(try s.get("acme", "/api/v1/messages/\(acmeID)").status == 200)
        #expect(try s.get("acme", "/api/v1/messages/\(betaID)").status == 404)
        #expect(try s.get("beta", "/api/v1/messages/\(acmeID)").status == 404)
        #expect(try s.get("beta", "/api/v1/messages/\(betaID)").status == 200)
        try waitUntil("delivered events reach the tenants' event logs", timeout: 20) {
            let events = (try s.get("acme", "/api/v1/events?since=0").body as? [String: Any])?["events"] as? [[String: Any]] ?? []
            return events.filter { $0["kind"] as? String == "delivered" }.count == 2
        }
        for tenant in ["acme", "beta"] {
            let events = (try s.get(tenant, "/api/v1/events?since=0").body as? [String: Any])?["events"] as? [[String: Any]] ?? []
            let ids = Set(events.compactMap { $0["message_id"] as? String })
            #expect(ids.count == 2, "\(tenant): its SMTP and its HTTP message")
            #expect(!ids.contains(tenant == "acme" ? betaID : acmeID))
        }
        // The admin view shows the tenant with the message.
        #expect(try c.message(acmeID)["tenant"] as? String == "acme")
    }

    @Test("the 101st message of a 100/hour tenant gets 429 over HTTP and 452 over SMTP, also after a coordinator restart, while the other tenant is unaffected")
    func hourlyLimitAcrossRestart() throws {
        let s = try Setup(acmeLimit: "100/hour", startNode: false)
        defer { s.shutdown() }
        for i in 1...100 {
            let r = try s.send("acme", #"{"from": "billing@acme.example", "to": "n\#(i)@hato.test", "subject": "n", "text": "x"}"#)
            try #require(r.status == 202, "message \(i): \(r.body)")
        }
        let over = try s.send("acme", #"{"from": "billing@acme.example", "to": "n101@hato.test", "subject": "n", "text": "x"}"#)
        #expect(over.status == 429)
        #expect((over.body["error"] as? [String: Any])?["code"] as? String == "rate_limited")
        let smtp = try s.smtp("acme", from: "billing@acme.example")
        #expect(smtp.last?.hasPrefix("452 4.7.1 tenant acme has reached its hourly limit of 100 messages") == true, "\(smtp)")
        #expect(try s.send("beta", #"{"from": "news@beta.example", "to": "b@hato.test", "subject": "n", "text": "x"}"#).status == 202)
        #expect(try s.smtp("beta", from: "news@beta.example").last?.hasPrefix("250 2.0.0 Ok: queued as ") == true)

        s.cluster.stopCoordinator()
        try s.cluster.startCoordinator()
        try waitUntil("the coordinator answers again", timeout: 20) { (try? s.cluster.status()) != nil }
        #expect(try s.send("acme", #"{"from": "billing@acme.example", "to": "n102@hato.test", "subject": "n", "text": "x"}"#).status == 429)
        #expect(try s.smtp("acme", from: "billing@acme.example").last?.hasPrefix("452 4.7.1 ") == true)
        #expect(try s.send("beta", #"{"from": "news@beta.example", "to": "b2@hato.test", "subject": "n", "text": "x"}"#).status == 202)
        let (_, show) = try s.cluster.cli(["tenant", "show", "acme"])
        #expect(show.contains("this hour:  100 of 100 messages"), "\(show)")
    }

    @Test("an unknown sending domain is refused; a suspended tenant is refused and its held mail is delivered after resume; an Idempotency-Key retried 3 times queues one message")
    func domainsSuspensionIdempotency() throws {
        let s = try Setup(startNode: false)
        defer { s.shutdown() }
        let c = s.cluster
        let stranger = try s.send("acme", #"{"from": "x@stranger.example", "to": "u@hato.test", "subject": "s", "text": "x"}"#)
        #expect(stranger.status == 403)
        #expect((stranger.body["error"] as? [String: Any])?["code"] as? String == "sender_domain_not_allowed")
        #expect(try s.smtp("acme", from: "x@stranger.example").first == "550 5.7.1 sender domain stranger.example is not a sending domain of tenant acme")
        #expect(try s.smtp("acme", from: "billing@beta.example").first?.hasPrefix("550 5.7.1 ") == true, "another tenant's domain")
        let (typo, typoOut) = try c.cli(["tenant", "create", "typo", "--pool", "transactinal"])
        #expect(typo != 0)
        #expect(typoOut.contains("pool transactinal is not configured (pools: bulk, transactional)"), "\(typoOut)")

        // Idempotency-Key: three tries, one message.
        var ids: Set<String> = []
        for _ in 1...3 {
            let r = try s.send("acme", #"{"from": "billing@acme.example", "to": "once@hato.test", "subject": "once", "text": "x"}"#,
                               headers: ["Idempotency-Key": "order-4711"])
            #expect(r.status == 202)
            if let id = r.body["id"] as? String { ids.insert(id) }
        }
        #expect(ids.count == 1)
        // Waiting mail (no node yet), then the suspension.
        #expect(try s.send("acme", #"{"from": "billing@acme.example", "to": "held@hato.test", "subject": "held", "text": "x"}"#).status == 202)
        let (status, out) = try c.cli(["tenant", "suspend", "acme", "--reason", "unpaid invoice"])
        #expect(status == 0)
        #expect(out.contains("2 waiting recipients held"), "\(out)")
        #expect(try c.queue()["held"] == 2)
        let refused = try s.send("acme", #"{"from": "billing@acme.example", "to": "u@hato.test", "subject": "s", "text": "x"}"#)
        #expect(refused.status == 403)
        #expect((refused.body["error"] as? [String: Any])?["code"] as? String == "tenant_suspended")
        #expect(try s.smtp("acme", from: "billing@acme.example").first == "550 5.7.1 tenant acme is suspended: unpaid invoice")
        try c.startNode("node-a")
        try c.waitForNodes(["node-a"], state: "active")
        try expectStays("held mail stays held while suspended", for: 2) { try c.queue()["held"] == 2 }
        #expect(try c.cli(["tenant", "resume", "acme"]).0 == 0)
        try c.waitForQueue(final: 2, timeout: 30)
        #expect(Set(c.capture.received.flatMap(\.recipients)) == ["once@hato.test", "held@hato.test"])
        #expect(c.capture.received.count == 2, "the idempotent message once")
    }
}
}
