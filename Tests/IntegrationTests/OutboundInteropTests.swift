import Foundation
import HatoCrypto
import HatoIO
import HatoTestKit
import Testing

/// Outbound delivery from a real cluster to receivers nobody here wrote: Python's aiosmtpd
/// (shaping observed by the receiver, DKIM verified by dkimpy) and a private Postfix
/// instance with STARTTLS (TLS, CHUNKING, connection reuse seen in Postfix's own log).
extension Integration {
@Suite("Outbound interop")
struct OutboundInteropTests {
    /// Runs `hato-node dkim-keygen` and returns the TXT value it printed.
    static func keygen(_ dir: String, domain: String, selector: String, algorithm: String) throws -> String {
        let p = try ChildProcess(name: "keygen-\(selector)", executable: executablePath("hato-node"),
                                 arguments: ["dkim-keygen", "--domain", domain, "--selector", selector, "--algorithm", algorithm,
                                             "--out", "\(dir)/\(selector).pem"], logDirectory: dir)
        guard p.wait(timeout: 60) == 0 else { throw HarnessError("dkim-keygen failed: \(p.log)") }
        guard let line = p.log.split(separator: "\n").first(where: { $0.hasPrefix("\(selector)._domainkey.\(domain). IN TXT (") }) else {
            throw HarnessError("no TXT line in \(p.log)")
        }
        return line.split(separator: "\"", omittingEmptySubsequences: false).enumerated().filter { $0.offset % 2 == 1 }.map { String($0.element) }.joined()
    }

    /// Runs a Python script with Debian's interpreter to completion.
    static func python(_ script: String, _ args: [String], dir: String, timeout: TimeInterval = 120) throws -> String {
        let path = "\(dir)/script-\(Identifier.random(bytes: 3)).py"
        try script.write(toFile: path, atomically: true, encoding: .utf8)
        let p = try ChildProcess(name: "py-\(Identifier.random(bytes: 3))", executable: "/usr/bin/python3", arguments: [path] + args, logDirectory: dir)
        guard let status = p.wait(timeout: timeout) else { p.stop(signal: SIGKILL); throw HarnessError("python timed out") }
        guard status == 0 else { throw HarnessError("python failed: \(p.log)") }
        return p.log
    }

    /// dkimpy's verdicts (one list per file, one Bool per signature), keys served by a `dnsfunc`.
    static func dkimpy(_ files: [String], records: [String: String], dir: String) throws -> [[Bool]] {
        try JSONSerialization.data(withJSONObject: records).write(to: URL(fileURLWithPath: "\(dir)/keys.json"))
        _ = try python(dkimVerifyScript, ["\(dir)/keys.json", "\(dir)/dkim-out.json"] + files, dir: dir)
        let data = try Data(contentsOf: URL(fileURLWithPath: "\(dir)/dkim-out.json"))
        return try JSONSerialization.jsonObject(with: data) as? [[Bool]] ?? []
    }

    @Test("aiosmtpd receives shaped, DKIM-signed mail: ≤ max_connections per sending IP, ≤ messages_per_connection")
    func aiosmtpdShapingAndDKIM() throws {
        let host = "127.0.0.62"
        let port = try freePort(host: host)
        let work = NSTemporaryDirectory() + "hato-aiosmtpd-" + Identifier.random(bytes: 4)
        try FileManager.default.createDirectory(atPath: work + "/mail", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }
        var records: [String: String] = [:]
        records["rsa1._domainkey.example.org"] = try Self.keygen(work, domain: "example.org", selector: "rsa1", algorithm: "rsa-sha256")
        records["ed1._domainkey.example.org"] = try Self.keygen(work, domain: "example.org", selector: "ed1", algorithm: "ed25519-sha256")
        let serverScript = "\(work)/server.py"
        try """
            import asyncio, json, os, sys, threading
            from aiosmtpd.controller import Controller
            from aiosmtpd.smtp import SMTP
            host, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
            lock = threading.Lock()
            state = {"active": {}, "peak": {}, "sessions": {}, "messages": 0, "connections": 0}
            def dump():
                tmp = os.path.join(out, "stats.tmp")
                with open(tmp, "w") as f: json.dump(state, f)
                os.replace(tmp, os.path.join(out, "stats.json"))
            class CountingSMTP(SMTP):
                def connection_made(self, transport):
                    peer = transport.get_extra_info("peername")[0]
                    with lock:
                        state["connections"] += 1
                        self.hato_id = str(state["connections"])
                        self.hato_peer = peer
                        state["active"][peer] = state["active"].get(peer, 0) + 1
                        state["peak"][peer] = max(state["peak"].get(peer, 0), state["active"][peer])
                        state["sessions"][self.hato_id] = {"peer": peer, "messages": 0}
                        dump()
                    super().connection_made(transport)
                def connection_lost(self, exc):
                    with lock:
                        state["active"][self.hato_peer] -= 1
                        dump()
                    super().connection_lost(exc)
            class Handler:
                async def handle_DATA(self, server, session, envelope):
                    await asyncio.sleep(0.03)
                    with lock:
                        state["messages"] += 1
                        state["sessions"][server.hato_id]["messages"] += 1
                        with open(os.path.join(out, "mail", "%d.eml" % state["messages"]), "wb") as f:
                            f.write(envelope.original_content or envelope.content)
                        dump()
                    return "250 2.0.0 Ok: queued"
            class C(Controller):
                def factory(self):
                    return CountingSMTP(self.handler, **self.SMTP_kwargs)
            C(Handler(), hostname=host, port=port, enable_SMTPUTF8=True).start()
            threading.Event().wait()
            """.write(toFile: serverScript, atomically: true, encoding: .utf8)
        let server = try ChildProcess(name: "aiosmtpd", executable: "/usr/bin/python3", arguments: [serverScript, host, "\(port)", work], logDirectory: work)
        defer { server.stop() }
        try waitUntil("aiosmtpd listening", timeout: 20) {
            guard server.isRunning else { throw HarnessError("aiosmtpd exited: \(server.log)") }
            return (try? Socket.connect(to: SocketAddress(host: host, port: port), timeout: 1)) != nil
        }
        let cluster = try LocalCluster(
            routesYAML: "routes:\n  - { domain: shaped.test, next_hop: \"\(host):\(port)\" }\n",
            extraYAML: """
                shaping:
                  default: { max_connections: 2, messages_per_connection: 5 }
                dkim:
                  - { domain: example.org, selector: rsa1, private_key: \(work)/rsa1.pem }
                  - { domain: example.org, selector: ed1, private_key: \(work)/ed1.pem, algorithm: ed25519-sha256 }
                """)
        defer { cluster.shutdown() }
        do {
            try cluster.startCoordinator()
            try cluster.startNodesAndWait()
            let count = 80
            let msgs = (0..<count).map { i in ("app@example.org", ["u\(i)@shaped.test"], testMessage(i, to: "u\(i)@shaped.test", extraLines: 3)) }
            _ = try submitWithSmtplib(port: cluster.smtpPort, messages: msgs, connections: 4, dir: cluster.dir)
            try cluster.waitForQueue(final: count, timeout: 120)
            #expect(try cluster.queue()["delivered"] == count)
            try waitUntil("aiosmtpd stored every message", timeout: 10) {
                let d = try Data(contentsOf: URL(fileURLWithPath: work + "/stats.json"))
                return ((try JSONSerialization.jsonObject(with: d) as? [String: Any])?["messages"] as? Int) == count
            }
            let stats = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: work + "/stats.json"))) as? [String: Any] ?? [:]
            // Only the cluster's sending IPs (the readiness probe above came from 127.0.0.1).
            let sendingIPs: Set<String> = ["127.0.0.10", "127.0.0.11", "127.0.0.12", "127.0.0.13"]
            let peaks = (stats["peak"] as? [String: Int] ?? [:]).filter { sendingIPs.contains($0.key) }
            let sessions = (stats["sessions"] as? [String: [String: Any]] ?? [:]).values.filter { sendingIPs.contains($0["peer"] as? String ?? "") }
            let perConnection = sessions.compactMap { $0["messages"] as? Int }.sorted(by: >)
            #expect(Set(peaks.keys) == sendingIPs)
            #expect(peaks.values.allSatisfy { $0 <= 2 })
            #expect(perConnection.allSatisfy { $0 <= 5 })
            #expect(perConnection.reduce(0, +) == count)
            #expect(perConnection.filter { $0 > 1 }.count > 0)
            print("aiosmtpd under shaping (max_connections 2, messages_per_connection 5): peak connections per sending IP \(peaks.sorted { $0.key < $1.key }), \(sessions.count) connections, messages per connection \(perConnection)")
            let files = (1...count).map { "\(work)/mail/\($0).eml" }
            let verdicts = try Self.dkimpy(files, records: records, dir: work)
            #expect(verdicts.count == count)
            #expect(verdicts.allSatisfy { $0 == [true, true] })
            print("DKIM on \(count) messages received by aiosmtpd: \(verdicts.filter { $0 == [true, true] }.count) verified with both rsa-sha256 and ed25519-sha256 by dkimpy")
        } catch {
            Issue.record("\(error)\n\(cluster.logs)\n==== aiosmtpd\n\(server.log)")
            throw error
        }
    }

    @Test("a private Postfix with STARTTLS and CHUNKING: every recipient delivered over TLS, sessions reused and shaped")
    func postfix() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/sbin/postfix") else { throw HarnessError("postfix is not installed") }
        let host = "127.0.0.70"
        let port = try freePort(host: host)
        let dir = NSTemporaryDirectory() + "hato-postfix-" + Identifier.random(bytes: 4)
        for sub in ["conf", "queue", "data"] { try FileManager.default.createDirectory(atPath: "\(dir)/\(sub)", withIntermediateDirectories: true) }
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.setAttributes([.ownerAccountName: "postfix"], ofItemAtPath: "\(dir)/data")
        let cert = try ChildProcess(name: "openssl", executable: "/usr/bin/openssl", arguments: [
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "\(dir)/conf/key.pem", "-out", "\(dir)/conf/cert.pem",
            "-days", "2", "-subj", "/CN=mx.postfix.test"], logDirectory: dir)
        guard cert.wait(timeout: 30) == 0 else { throw HarnessError("openssl: \(cert.log)") }
        try """
            compatibility_level = 3.6
            queue_directory = \(dir)/queue
            data_directory = \(dir)/data
            mail_owner = postfix
            setgid_group = postdrop
            inet_interfaces = loopback-only
            inet_protocols = ipv4
            myhostname = mx.postfix.test
            mydestination = postfix.test
            mynetworks = 127.0.0.0/8
            local_transport = discard
            local_recipient_maps =
            smtpd_recipient_restrictions = permit_mynetworks, reject
            smtpd_peername_lookup = no
            smtp_dns_support_level = disabled
            smtpd_tls_cert_file = \(dir)/conf/cert.pem
            smtpd_tls_key_file = \(dir)/conf/key.pem
            smtpd_tls_security_level = may
            smtpd_tls_loglevel = 1
            maillog_file = \(dir)/maillog
            maillog_file_prefixes = \(dir)
            biff = no

            """.write(toFile: "\(dir)/conf/main.cf", atomically: true, encoding: .utf8)
        let master = try String(contentsOfFile: "/etc/postfix/master.cf", encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false).map { line -> String in
            guard line.hasPrefix("smtp      inet") || line.hasPrefix("smtp inet") else { return String(line) }
            return "\(host):\(port) inet n - n - - smtpd"
        }.joined(separator: "\n")
        try master.write(toFile: "\(dir)/conf/master.cf", atomically: true, encoding: .utf8)
        func postfixCommand(_ args: [String]) throws -> String {
            let p = try ChildProcess(name: "postfix-cmd-\(Identifier.random(bytes: 3))", executable: args[0],
                                     arguments: Array(args.dropFirst()), logDirectory: dir)
            guard p.wait(timeout: 60) == 0 else { throw HarnessError("\(args.joined(separator: " ")) failed: \(p.log)") }
            return p.log
        }
        _ = try postfixCommand(["/usr/sbin/postconf", "-c", "\(dir)/conf", "-F", "*/*/chroot = n"])
        _ = try postfixCommand(["/usr/sbin/postfix", "-c", "\(dir)/conf", "start"])
        defer { _ = try? postfixCommand(["/usr/sbin/postfix", "-c", "\(dir)/conf", "stop"]) }
        try waitUntil("Postfix listening", timeout: 20) {
            (try? Socket.connect(to: SocketAddress(host: host, port: port), timeout: 1)) != nil
        }
        let cluster = try LocalCluster(
            routesYAML: "routes:\n  - { domain: postfix.test, next_hop: \"\(host):\(port)\" }\n",
            extraYAML: "shaping: { default: { max_connections: 2, messages_per_connection: 4 } }\n")
        defer { cluster.shutdown() }
        do {
            try cluster.startCoordinator()
            try cluster.startNodesAndWait()
            let count = 12
            let msgs = (0..<count).map { i in ("app@example.org", ["a\(i)@postfix.test", "b\(i)@postfix.test"],
                                               testMessage(i, to: "a\(i)@postfix.test", extraLines: 5)) }
            _ = try submitWithSmtplib(port: cluster.smtpPort, messages: msgs, connections: 2, dir: cluster.dir)
            try cluster.waitForQueue(final: 2 * count, timeout: 120)
            #expect(try cluster.queue()["delivered"] == 2 * count)
            // Stop Postfix so its log is complete (sessions closed, disconnect lines written).
            for n in cluster.nodes.values { n.stop() }
            try waitUntil("Postfix logged every delivery", timeout: 20) {
                let log = (try? String(contentsOfFile: "\(dir)/maillog", encoding: .utf8)) ?? ""
                return log.components(separatedBy: "status=sent").count - 1 == 2 * count
                    && log.components(separatedBy: "disconnect from").count == log.components(separatedBy: "]: connect from").count
            }
            let log = try String(contentsOfFile: "\(dir)/maillog", encoding: .utf8)
            // Only the cluster's sending IPs (the readiness probe above came from 127.0.0.1).
            let lines = log.split(separator: "\n").map(String.init).filter { line in
                !line.contains("smtpd") || ["[127.0.0.10]", "[127.0.0.11]", "[127.0.0.12]", "[127.0.0.13]"].contains { line.contains($0) }
            }
            let tlsLines = lines.filter { $0.contains("TLS connection established from") }
            let connects = lines.filter { $0.contains("smtpd") && $0.contains("]: connect from") }
            let disconnects = lines.filter { $0.contains("smtpd") && $0.contains("disconnect from") }
            #expect(!connects.isEmpty)
            #expect(tlsLines.count == connects.count)
            #expect(tlsLines.allSatisfy { $0.contains("TLSv1.3") })
            // Postfix's per-session command counts: mail=N is the messages on that connection.
            let perConnection = disconnects.compactMap { line -> Int? in
                line.split(separator: " ").first { $0.hasPrefix("mail=") }.flatMap { Int($0.dropFirst(5)) }
            }
            #expect(perConnection.reduce(0, +) == count)
            #expect(perConnection.allSatisfy { $0 <= 4 })
            #expect(disconnects.allSatisfy { $0.contains("starttls=1") && $0.contains("ehlo=2") })
            #expect(disconnects.contains { $0.contains("bdat=") })
            // Postfix offers PIPELINING and CHUNKING, and these messages are under the 64 KiB limit:
            // MAIL, the RCPTs and BDAT LAST with the content went in one write (RFC 3030 §4.2; the
            // one write itself is checked against a scripted MX in DeliveryScriptTests). Postfix's
            // smtpd, which logs a client that runs ahead of it, took it as proper pipelining.
            #expect(!log.contains("improper command pipelining"))
            // Sessions were reused, and a reuse after a completed transaction needs no RSET
            // (RFC 5321 §4.1.1.4): Postfix counts fewer RSETs than reuses.
            let reuses = perConnection.map { $0 - 1 }.reduce(0, +)
            let resets = disconnects.compactMap { line -> Int? in
                line.split(separator: " ").first { $0.hasPrefix("rset=") }.flatMap { Int($0.dropFirst(5)) }
            }.reduce(0, +)
            #expect(reuses > 0)
            #expect(resets < reuses, "\(resets) RSET for \(reuses) reuses")
            // Sessions at once per sending IP, from Postfix's connect/disconnect order.
            var active: [String: Int] = [:]
            var peak: [String: Int] = [:]
            for line in lines where line.contains("smtpd") {
                guard let from = line.range(of: "from "), let open = line.range(of: "[", range: from.upperBound..<line.endIndex),
                      let close = line.range(of: "]", range: open.upperBound..<line.endIndex) else { continue }
                let ip = String(line[open.upperBound..<close.lowerBound])
                if line.contains("]: connect from") { active[ip, default: 0] += 1; peak[ip] = max(peak[ip] ?? 0, active[ip] ?? 0) }
                if line.contains("disconnect from") { active[ip, default: 1] -= 1 }
            }
            #expect(peak.values.allSatisfy { $0 <= 2 })
            let nodeLogs = cluster.logs
            #expect(nodeLogs.contains("\"tls\":\"TLSv1.3\""))
            print("Postfix: \(connects.count) TLS sessions (\(tlsLines.first.map { String($0.split(separator: ": ", maxSplits: 1).last ?? "") } ?? "")), messages per connection \(perConnection), peak sessions per sending IP \(peak.sorted { $0.key < $1.key })")
        } catch {
            let maillog = (try? String(contentsOfFile: "\(dir)/maillog", encoding: .utf8)) ?? ""
            Issue.record("\(error)\n\(cluster.logs)\n==== maillog\n\(maillog.suffix(6000))")
            throw error
        }
    }
}
}
