import Foundation
import HatoTestKit
import Testing

extension Integration {
/// Queue visibility and control end to end: a real coordinator and nodes, Python's smtplib
/// submitting, the operator CLI (`hato-coordinator queue …`, `hold`, `release`, `flush`,
/// `delete`, `bounce`, `pause`, `resume`, `lift`) as an operator runs it, the capture MX
/// receiving what is sent, and Python's `email` package parsing the DSNs. Every address, MX,
/// DSN and DNS server is on 127.0.0.0/8: each domain has a route to the capture MX, and the
/// only nameserver configured is a dead loopback port, so a stray lookup fails the test
/// instead of leaving the machine.
@Suite("Queue control end to end")
struct QueueControlIntegrationTests {
    static let domains = ["gmail.com", "googlemail.com", "outlook.com", "yahoo.com", "shop.hato.test"]

    /// Adds routes to the capture MX for `domains` to the cluster's configuration.
    static func route(_ domains: [String], in cluster: LocalCluster) throws {
        let yaml = try String(contentsOfFile: cluster.configPath, encoding: .utf8)
        let hop = "next_hop: \"127.0.0.1:\(cluster.capture.address.port)\""
        let extra = domains.map { "  - { domain: \($0), \(hop) }\n" }.joined()
        try yaml.replacingOccurrences(of: "routes:\n", with: "routes:\n" + extra).write(toFile: cluster.configPath, atomically: true, encoding: .utf8)
    }

    /// `dns:` pointing at a loopback port where nothing answers.
    static func deadDNS() throws -> String {
        "dns: { nameservers: [\"127.0.0.1:\(try freePort())\"], timeout: 1s }\n"
    }

    /// Runs the CLI as operator `tester` (`--operator`); returns (exit status, output).
    static func cli(_ cluster: LocalCluster, _ args: [String]) throws -> (Int32, String) {
        try cluster.cli(args + ["--operator", "tester"])
    }

    /// Parses every DSN with Python's `email` package: per DSN its content type, report type,
    /// defects, and the per-recipient fields of its `message/delivery-status` part.
    static let parseDSNs = """
        import base64, email, json, sys
        from email import policy
        out = []
        for raw in json.load(open(sys.argv[1])):
            msg = email.message_from_bytes(base64.b64decode(raw), policy=policy.compat32)
            status = [p for p in msg.get_payload() if p.get_content_type() == 'message/delivery-status'] if msg.is_multipart() else []
            blocks = [dict(b.items()) for b in status[0].get_payload()] if status else []
            out.append({'content_type': msg.get_content_type(), 'report_type': msg.get_param('report-type'),
                        'defects': [str(d) for m in msg.walk() for d in m.defects],
                        'parts': [p.get_content_type() for p in msg.get_payload()] if msg.is_multipart() else [],
                        'recipients': blocks[1:]})
        json.dump(out, open(sys.argv[2], 'w'))
        """

    /// The delivery log's lines as JSON objects, waiting (bounded) until `condition` holds for them.
    static func deliveryLog(_ cluster: LocalCluster, until what: String, _ condition: ([[String: Any]]) -> Bool) throws -> [[String: Any]] {
        let path = (cluster.dir as NSString).appendingPathComponent("var/coordinator/log/delivery.jsonl")
        var lines: [[String: Any]] = []
        try waitUntil(what, timeout: 30) {
            lines = ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n")
                .compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            return condition(lines)
        }
        return lines
    }

    /// Runs the CLI with `--json` and decodes its output.
    static func json(_ cluster: LocalCluster, _ args: [String]) throws -> Any {
        let (status, out) = try cli(cluster, args + ["--json"])
        guard status == 0, let v = try? JSONSerialization.jsonObject(with: Data(out.utf8)) else { throw HarnessError("\(args): exit \(status): \(out)") }
        return v
    }

    /// `queue --by KEY --json` as key → group.
    static func groups(_ cluster: LocalCluster, by: String) throws -> [String: [String: Any]] {
        let r = try json(cluster, ["queue", "--by", by]) as? [String: Any] ?? [:]
        let groups = r["groups"] as? [[String: Any]] ?? []
        return Dictionary(uniqueKeysWithValues: groups.map { ($0["key"] as? String ?? "", $0) })
    }

    /// Every row of `queue list ARGS --json`, following `next`.
    static func listAll(_ cluster: LocalCluster, _ args: [String], limit: Int) throws -> [[String: Any]] {
        var rows: [[String: Any]] = []
        var after: String?
        for _ in 0..<1000 {
            let page = try json(cluster, ["queue", "list"] + args + ["--limit", "\(limit)"] + (after.map { ["--after", $0] } ?? [])) as? [String: Any] ?? [:]
            rows += page["recipients"] as? [[String: Any]] ?? []
            guard let next = page["next"] as? String else { return rows }
            after = next
        }
        throw HarnessError("pagination did not end")
    }

    /// The number in `u<n>@domain`.
    static func index(_ address: String) -> Int? { Int(address.dropFirst().prefix { $0.isNumber }) }

    @Test("3000 recipients over 5 domains and 2 pools: queue --by, queue list, dry runs, hold, release, delete, bounce, pause/resume, flush — exact counts after each; every action in the delivery log with its operator (--operator, $USER, X-Hato-Operator); the 300 bounce DSNs parsed by Python")
    func queueControl() throws {
        let ips = """
            ips:
              - { address: 127.0.0.10, helo: mta10.it.test, pool: transactional, nodes: [node-a] }
              - { address: 127.0.0.11, helo: mta11.it.test, pool: transactional, nodes: [node-a] }
              - { address: 127.0.0.12, helo: mta12.it.test, pool: bulk, nodes: [node-b] }
              - { address: 127.0.0.13, helo: mta13.it.test, pool: bulk, nodes: [node-b] }
            """
        // googlemail.com defers its first attempt of each recipient, then accepts.
        let cluster = try LocalCluster(extraYAML: try Self.deadDNS(), retrySchedule: "[30m]", ipsYAML: ips,
                                       poolsYAML: "pools:\n  - { name: transactional }\n  - { name: bulk }",
                                       routingYAML: "routing:\n  default_pool: transactional\n  rules:\n    - { header: X-Hato-Pool }") { rcpt, attempt in
            rcpt.hasSuffix("@googlemail.com") && attempt == 1 ? .reject(451, "4.3.0 temporary local problem") : .accept
        }
        defer { cluster.shutdown() }
        try Self.route(Self.domains + ["sender.test"], in: cluster)
        do {
            try cluster.startCoordinator()
            // Phase A: no node runs, so nothing is attempted and every count is exact.
            let messages = (0..<600).map { i -> (from: String, to: [String], content: [UInt8]) in
                let to = Self.domains.map { "u\(i)@\($0)" }
                let header = i % 2 == 0 ? "X-Hato-Pool: bulk\r\n" : ""
                return ("app@sender.test", to, Array(header.utf8) + testMessage(i, to: to[0], extraLines: 2))
            }
            let ids = try submitWithSmtplib(port: cluster.smtpPort, messages: messages, connections: 4, dir: cluster.dir)
            #expect(try cluster.queue()["queued"] == 3000)

            let byDomain = try Self.groups(cluster, by: "domain")
            #expect(Set(byDomain.keys) == Set(Self.domains))
            for d in Self.domains {
                #expect(byDomain[d]?["queued"] as? Int == 600 && byDomain[d]?["total"] as? Int == 600, "\(d): \(byDomain[d] ?? [:])")
            }
            let oldest = Set(byDomain.values.compactMap { $0["oldest_message_id"] as? String })
            #expect(oldest.count == 1 && ids.contains(oldest.first ?? ""), "every domain's oldest recipient is in the first message queued")
            let byProvider = try Self.groups(cluster, by: "provider").mapValues { $0["total"] as? Int ?? 0 }
            #expect(byProvider == ["gmail": 1200, "microsoft": 600, "yahoo": 600, "unknown": 600])
            #expect(try Self.groups(cluster, by: "pool").mapValues { $0["queued"] as? Int ?? 0 } == ["bulk": 1500, "transactional": 1500])
            #expect(try Self.groups(cluster, by: "ip").mapValues { $0["total"] as? Int ?? 0 } == ["-": 3000])
            let (tableStatus, table) = try Self.cli(cluster, ["queue", "--by", "pool"])
            #expect(tableStatus == 0 && table.contains("POOL") && table.contains("OLDEST MESSAGE") && table.contains("3000 waiting recipients"), "\(table)")
            let (badBy, badByOut) = try Self.cli(cluster, ["queue", "--by", "colour"])
            #expect(badBy == 1 && badByOut.contains("by= must be one of"), "\(badByOut)")
            // Invalid numbers are usage errors (exit 2) that say what is allowed; --help pages.
            for (args, message) in [(["queue", "list", "--limit", "abc"], "--limit: 'abc' is not a whole number from 1 to 1000"),
                                    (["queue", "list", "--limit", "0"], "--limit: '0' is not a whole number from 1 to 1000"),
                                    (["queue", "--by", "domain", "--limit", "0"], "--limit: '0' is not a whole number from 1 to 100000"),
                                    (["queue", "list", "--after", "next"], "--after: 'next' is not a cursor")] {
                let (status, out) = try Self.cli(cluster, args)
                #expect(status == 2 && out.contains("hato-coordinator: " + message) && out.contains("--help"), "\(args): \(status) \(out)")
            }
            for command in ["queue", "hold", "release", "flush", "delete", "bounce", "pause"] {
                let (status, out) = try Self.cli(cluster, [command, "--help"])
                #expect(status == 0 && out.hasPrefix("usage: hato-coordinator \(command)") && out.contains("\narguments:\n") && out.contains("\nexamples:\n"),
                        "\(command) --help: \(out)")
            }

            // queue list: every outlook.com recipient once, in id order, with why it waits.
            let outlook = try Self.listAll(cluster, ["--domain", "outlook.com"], limit: 250)
            let outlookIDs = outlook.compactMap { $0["recipient_id"] as? Int }
            #expect(outlookIDs.count == 600 && Set(outlookIDs).count == 600 && outlookIDs == outlookIDs.sorted())
            #expect(outlook.filter { $0["pool"] as? String == "transactional" }.allSatisfy {
                $0["reason"] as? String == "no eligible IP in pool transactional: none is owned by an active node (127.0.0.10 unowned, 127.0.0.11 unowned)"
            }, "\(outlook.first ?? [:])")

            // Pause by provider and by pool: the reasons say so, with the operator.
            var (status, out) = try Self.cli(cluster, ["pause", "--provider", "microsoft", "--reason", "complaint rate"])
            #expect(status == 0 && out.contains("paused provider microsoft as tester"), "\(out)")
            (status, out) = try Self.cli(cluster, ["pause", "--pool", "bulk"])
            #expect(status == 0, "\(out)")
            (status, out) = try Self.cli(cluster, ["pauses"])
            #expect(status == 0 && out.contains("provider microsoft") && out.contains("pool bulk") && out.contains("complaint rate"), "\(out)")
            try waitUntil("the pauses to show in queue list", timeout: 10) {
                let rows = try Self.listAll(cluster, ["--provider", "microsoft"], limit: 1000)
                return rows.count == 600
                    && rows.filter { $0["pool"] as? String == "transactional" }.allSatisfy { $0["reason"] as? String == "paused: provider microsoft (by tester: complaint rate)" }
                    && rows.filter { $0["pool"] as? String == "bulk" }.allSatisfy { $0["reason"] as? String == "paused: pool bulk (by tester)" }
            }
            (status, out) = try Self.cli(cluster, ["resume", "--provider", "microsoft"])
            #expect(status == 0 && out.contains("resumed provider microsoft"), "\(out)")
            (status, out) = try Self.cli(cluster, ["resume", "--provider", "microsoft"])
            #expect(status == 1 && out.contains("not paused"), "\(out)")

            // hold by provider, dry runs, no selector, release by domain (the operator from $USER).
            (status, out) = try Self.cli(cluster, ["hold", "--provider", "gmail", "--reason", "ticket 7"])
            #expect(status == 0 && out.contains("held 1200 recipients (provider gmail) as tester"), "\(out)")
            var q = try cluster.queue()
            #expect(q["held"] == 1200 && q["queued"] == 1800, "\(q)")
            for (args, line) in [(["hold", "--pool", "bulk"], "dry run: hold would touch 900 recipients (pool bulk); nothing changed"),
                                 (["release", "--provider", "gmail"], "dry run: release would touch 1200 recipients (provider gmail); nothing changed"),
                                 (["flush", "--domain", "outlook.com"], "dry run: flush would touch 600 recipients (domain outlook.com); nothing changed"),
                                 (["delete", "--sender", "app@sender.test", "--state", "held"], "dry run: delete would touch 1200 recipients"),
                                 (["bounce", "--provider", "microsoft", "--pool", "bulk"], "dry run: bounce would touch 300 recipients")] {
                (status, out) = try Self.cli(cluster, args + ["--dry-run"])
                #expect(status == 0 && out.contains(line), "\(args): \(out)")
            }
            (status, out) = try Self.cli(cluster, ["hold"])
            #expect(status == 1 && out.contains("--all selects every waiting recipient"), "\(out)")
            q = try cluster.queue()
            #expect(q["held"] == 1200 && q["queued"] == 1800 && q.count { $0.value > 0 } == 2, "no dry run changed anything: \(q)")
            (status, out) = try cluster.cli(["release", "--domain", "gmail.com"], environment: ["USER": "alice", "PATH": "/usr/bin:/bin"])
            #expect(status == 0 && out.contains("released 600 recipients (domain gmail.com) as alice"), "\(out)")
            (status, out) = try Self.cli(cluster, ["queue", "list", "--state", "held"])
            #expect(status == 0 && out.contains("held by an operator (release to send)") && out.contains("more: add --after"), "\(out)")
            #expect(out.split(separator: "\n").filter { $0.contains("@googlemail.com") }.count == 100, "the first page: 100 rows")
            #expect(try Self.listAll(cluster, ["--state", "held"], limit: 1000).count == 600)

            // delete through the admin API as a script would (the operator in X-Hato-Operator), then bounce.
            (status, out) = try Self.cli(cluster, ["delete", "--domain", "yahoo.com", "--pool", "bulk", "--dry-run"])
            #expect(status == 0 && out.contains("dry run: delete would touch 300 recipients (domain yahoo.com pool bulk)"), "\(out)")
            let deleted = try httpRequest(port: cluster.adminPort, method: "POST", path: "/v1/queue/delete", bearer: cluster.token,
                                          headers: ["X-Hato-Operator": "ops-bot"], body: Array(#"{"domain": "yahoo.com", "pool": "bulk", "reason": "INC-42"}"#.utf8))
            let deleteReport = try JSONSerialization.jsonObject(with: Data(deleted.body)) as? [String: Any] ?? [:]
            #expect(deleted.status == 200 && deleteReport["changed"] as? Int == 300 && deleteReport["matched"] as? Int == 300
                    && deleteReport["by"] as? String == "ops-bot" && deleteReport["dry_run"] as? Bool == false, "\(deleteReport)")
            (status, out) = try Self.cli(cluster, ["bounce", "--domain", "outlook.com", "--pool", "transactional", "--dry-run"])
            #expect(status == 0 && out.contains("dry run: bounce would touch 300 recipients"), "\(out)")
            #expect(try cluster.queue()["failed"] == 0)
            (status, out) = try cluster.cli(["bounce", "--domain", "outlook.com", "--pool", "transactional", "--as", "tester"])
            #expect(status == 0 && out.contains("bounced 300 recipients (domain outlook.com pool transactional) as tester"), "\(out)")
            q = try cluster.queue()
            #expect(q["queued"] == 1800 && q["held"] == 600 && q["deleted"] == 300 && q["failed"] == 300, "\(q)")

            // Phase B: the nodes deliver what may go: transactional mail (and the 300 DSNs); bulk stays paused.
            try cluster.startNodesAndWait()
            try waitUntil("transactional mail and the DSNs delivered", timeout: 120) { try cluster.queue()["delivered"] == 1200 }
            // The scheduler runs passes all along: none may lease the paused pool's mail.
            try expectStays("bulk mail waits while its pool is paused", for: 1) {
                let q = try cluster.queue()
                return q["delivered"] == 1200 && q["queued"] == 900 && q["held"] == 600 && (q["leased"] ?? 0) == 0
            }
            let bulk = try Self.groups(cluster, by: "pool")["bulk"] ?? [:]
            #expect(bulk["queued"] as? Int == 900 && bulk["held"] as? Int == 300, "\(bulk)")
            let dsns = cluster.capture.received.filter { $0.reversePath.isEmpty }
            #expect(dsns.count == 300, "one DSN per bounced message")
            #expect(dsns.allSatisfy { $0.recipients == ["app@sender.test"] })
            // All 300 parsed by Python: one failed 5.x.x recipient each, together exactly the bounced ones.
            let parsed = try runPython(Self.parseDSNs, input: Array(try JSONEncoder().encode(dsns.map { Data($0.content).base64EncodedString() })),
                                       dir: cluster.dir) as? [[String: Any]] ?? []
            #expect(parsed.count == 300)
            #expect(parsed.allSatisfy {
                $0["content_type"] as? String == "multipart/report" && $0["report_type"] as? String == "delivery-status"
                    && ($0["defects"] as? [Any])?.isEmpty == true
                    && $0["parts"] as? [String] == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
            }, "\(parsed.first ?? [:])")
            let failedBlocks = parsed.flatMap { $0["recipients"] as? [[String: String]] ?? [] }
            #expect(failedBlocks.count == 300 && failedBlocks.allSatisfy {
                $0["Action"] == "failed" && $0["Status"]?.wholeMatch(of: /5\.\d{1,3}\.\d{1,3}/) != nil
            }, "\(failedBlocks.first ?? [:])")
            #expect(Set(failedBlocks.compactMap { $0["Final-Recipient"] }) == Set((0..<600).filter { $0 % 2 == 1 }.map { "rfc822; u\($0)@outlook.com" }))
            if let dsn = dsns.first {
                let report = try runPython(ReportingIntegrationTests.parseDSN, input: dsn.content, dir: cluster.dir) as? [String: Any] ?? [:]
                #expect(report["content_type"] as? String == "multipart/report" && report["report_type"] as? String == "delivery-status")
                #expect((report["defects"] as? [Any])?.isEmpty == true)
                let parts = report["parts"] as? [[String: Any]] ?? []
                let blocks = parts.count > 1 ? parts[1]["blocks"] as? [[String: String]] ?? [] : []
                #expect(blocks.count == 2, "the message block and one recipient: only the bounce is reported")
                if blocks.count == 2 {
                    #expect(blocks[1]["Final-Recipient"]?.hasSuffix("@outlook.com") == true)
                    #expect(blocks[1]["Action"] == "failed")
                    #expect(blocks[1]["Status"] == "5.0.0")
                    #expect(blocks[1]["Remote-MTA"] == nil)
                    let diagnostic = blocks[1]["Diagnostic-Code"]?.replacingOccurrences(of: "\r\n", with: "").replacingOccurrences(of: "\n", with: "") ?? ""
                    #expect(diagnostic.contains("X-Hato; 550 5.0.0 bounced by operator tester"), "\(diagnostic)")
                }
            }
            (status, out) = try Self.cli(cluster, ["resume", "--pool", "bulk"])
            #expect(status == 0, "\(out)")
            try waitUntil("bulk mail delivered after the pool is resumed", timeout: 120) { try cluster.queue()["delivered"] == 2100 }

            // Released googlemail.com recipients are deferred once (451), then flushed.
            (status, out) = try Self.cli(cluster, ["release", "--provider", "gmail"])
            #expect(status == 0 && out.contains("released 600 recipients (provider gmail)"), "\(out)")
            try waitUntil("googlemail.com deferred", timeout: 120) { try cluster.queue()["deferred"] == 600 }
            let byIP = try Self.groups(cluster, by: "ip")
            #expect(byIP.values.reduce(0) { $0 + ($1["deferred"] as? Int ?? 0) } == 600)
            #expect(Set(byIP.keys).isSubset(of: ["127.0.0.10", "127.0.0.11", "127.0.0.12", "127.0.0.13"]), "\(byIP.keys)")
            let deferred = try Self.listAll(cluster, ["--state", "deferred"], limit: 1000)
            #expect(deferred.count == 600 && deferred.allSatisfy { ($0["reason"] as? String)?.hasPrefix("retry at ") == true })
            #expect(deferred.first?["last_reply"] as? String == "451 4.3.0 temporary local problem")
            (status, out) = try Self.cli(cluster, ["flush", "--domain", "googlemail.com", "--dry-run"])
            #expect(status == 0 && out.contains("dry run: flush would touch 600 recipients (domain googlemail.com); nothing changed"), "\(out)")
            #expect(try cluster.queue()["deferred"] == 600)
            let flushStarted = ContinuousClock.now
            (status, out) = try Self.cli(cluster, ["flush", "--domain", "googlemail.com"])
            #expect(status == 0 && out.contains("flushed 600 recipients (domain googlemail.com) as tester"), "\(out)")
            try waitUntil("flushed recipients delivered", timeout: 120) { try cluster.queue()["delivered"] == 2700 }
            print("queue control: 600 flushed recipients (next attempt 30 min away) delivered \(flushStarted.duration(to: .now)) after the flush")
            q = try cluster.queue()
            #expect(q["delivered"] == 2700 && q["failed"] == 300 && q["deleted"] == 300
                    && (q["queued"] ?? 0) + (q["deferred"] ?? 0) + (q["held"] ?? 0) + (q["leased"] ?? 0) == 0, "\(q)")
            (status, out) = try Self.cli(cluster, ["lift", "--provider", "gmail"])
            #expect(status == 0 && out.contains("lifted 0 backoffs of provider gmail"), "\(out)")

            // What reached the MX: no deleted recipient, no bounced one.
            let delivered = cluster.capture.received.filter { !$0.reversePath.isEmpty }.flatMap(\.recipients)
            #expect(delivered.count == 2400)
            #expect(delivered.filter { $0.hasSuffix("@yahoo.com") }.allSatisfy { (Self.index($0) ?? 0) % 2 == 1 }, "deleted bulk yahoo.com never sent")
            #expect(delivered.filter { $0.hasSuffix("@outlook.com") }.allSatisfy { (Self.index($0) ?? 1) % 2 == 0 }, "bounced outlook.com never sent")

            // The delivery log: each recipient's story, and the operator's events without a message.
            let story = try Self.json(cluster, ["log", "--recipient", "u1@gmail.com"]) as? [[String: Any]] ?? []
            #expect(story.map { $0["event"] as? String ?? "" } == ["held", "released", "delivered"], "\(story)")
            #expect(story.first?["operator"] as? String == "tester" && story.first?["target"] as? String == "provider gmail"
                    && story.first?["note"] as? String == "ticket 7")
            #expect(story.count == 3 && story[1]["operator"] as? String == "alice" && story[1]["target"] as? String == "domain gmail.com")
            let bouncedStory = try Self.json(cluster, ["log", "--recipient", "u1@outlook.com"]) as? [[String: Any]] ?? []
            #expect(bouncedStory.map { $0["event"] as? String ?? "" } == ["failed"])
            #expect(bouncedStory.first?["category"] as? String == "admin" && bouncedStory.first?["operator"] as? String == "tester")
            let deletedStory = try Self.json(cluster, ["log", "--recipient", "u0@yahoo.com"]) as? [[String: Any]] ?? []
            #expect(deletedStory.map { $0["event"] as? String ?? "" } == ["deleted"])
            #expect(deletedStory.first?["operator"] as? String == "ops-bot" && deletedStory.first?["note"] as? String == "INC-42")
            let flushed = try Self.json(cluster, ["log", "--recipient", "u0@googlemail.com"]) as? [[String: Any]] ?? []
            #expect(flushed.map { $0["event"] as? String ?? "" } == ["held", "released", "deferred", "flushed", "delivered"], "\(flushed)")

            // Every action, recipient by recipient, with who did it and to what: exact counts.
            let expected = ["held tester provider gmail": 1200, "released alice domain gmail.com": 600, "released tester provider gmail": 600,
                            "deleted ops-bot domain yahoo.com pool bulk": 300, "failed tester domain outlook.com pool transactional": 300,
                            "flushed tester domain googlemail.com": 600]
            func tally(_ lines: [[String: Any]]) -> [String: Int] {
                var t: [String: Int] = [:]
                for l in lines where l["message_id"] != nil && l["operator"] != nil {
                    t["\(l["event"] ?? "") \(l["operator"] ?? "") \(l["target"] ?? "")", default: 0] += 1
                }
                return t
            }
            let log = try Self.deliveryLog(cluster, until: "every operator's recipient event in the delivery log") { tally($0) == expected }
            #expect(log.filter { $0["event"] as? String == "failed" && $0["operator"] != nil }.allSatisfy { $0["category"] as? String == "admin" })
            let operatorEvents = log.filter { $0["message_id"] == nil }
            #expect(operatorEvents.map { "\($0["event"] ?? "") \($0["target"] ?? "")" }
                    == ["paused provider microsoft", "paused pool bulk", "resumed provider microsoft", "resumed pool bulk", "lifted provider gmail"])
            #expect(operatorEvents.allSatisfy { $0["operator"] as? String == "tester" })
            // Every action is in the coordinator's log with who did it.
            let actions = cluster.coordinator?.log.split(separator: "\n").filter { $0.contains("\"msg\":\"queue action\"") } ?? []
            #expect(actions.count == 6, "\(actions)")
            for a in actions {
                let f = (try? JSONSerialization.jsonObject(with: Data(a.utf8)) as? [String: Any]) ?? [:]
                print("queue control: \(f["action"] ?? "?") of \(f["changed"] ?? "?") recipients by \(f["by"] ?? "?") in \(f["seconds"] ?? "?") s")
            }
            #expect(actions.filter { $0.contains("\"by\":\"tester\"") }.count == 4 && actions.filter { $0.contains("\"by\":\"alice\"") }.count == 1
                    && actions.filter { $0.contains("\"by\":\"ops-bot\"") }.count == 1, "\(actions)")
        } catch {
            Issue.record("\(error)\n\(cluster.logs)")
            throw error
        }
    }

    @Test("a recipient never attempted because its IP's warm-up cap is used up gets a delayed DSN after delay_warning, naming the cap")
    func warmupDelayNotice() throws {
        // The cap counts per UTC day: a run across midnight would start a new day's count.
        waitOutUTCMidnight(ifWithin: 60)
        let ips = """
            ips:
              - { address: 127.0.0.11, helo: mta11.it.test, pool: transactional, nodes: [node-a] }
              - { address: 127.0.0.12, helo: mta12.it.test, pool: fresh, nodes: [node-a], warmup: { plan: tiny, start: \(DeliverabilityIntegrationTests.today()) } }
            warmup:
              - { name: tiny, daily: [1, 2] }
            """
        let cluster = try LocalCluster(extraYAML: "dsn: { delay_warning: 2s }\n" + (try Self.deadDNS()), nodeIDs: ["node-a"], ipsYAML: ips,
                                       poolsYAML: "pools:\n  - { name: transactional }\n  - { name: fresh }",
                                       routingYAML: "routing:\n  default_pool: transactional\n  rules:\n    - { sender_domain: fresh.example, pool: fresh }")
        defer { cluster.shutdown() }
        try Self.route(["fresh.example"], in: cluster)
        do {
            try cluster.startCoordinator()
            try cluster.startNode("node-a")
            try cluster.waitForNodes(["node-a"], state: "active")
            let started = Date()
            let msgs = (1...2).map { i in ("s@fresh.example", ["w\(i)@hato.test"], testMessage(i, to: "w\(i)@hato.test", extraLines: 2)) }
            _ = try submitWithSmtplib(port: cluster.smtpPort, messages: msgs, connections: 1, dir: cluster.dir)
            try waitUntil("one delivered within the cap, one waiting", timeout: 30) {
                let q = try cluster.queue()
                return q["delivered"] == 1 && q["queued"] == 1
            }
            let waiting = try Self.listAll(cluster, [], limit: 10)
            #expect(waiting.count == 1 && waiting.first?["attempts"] as? Int == 0)
            #expect(waiting.first?["reason"] as? String == "warm-up cap of 127.0.0.12 reached until 00:00 UTC", "\(waiting)")
            try waitUntil("the delayed DSN at the sender's MX", timeout: 30) {
                cluster.capture.received.contains { $0.reversePath.isEmpty && $0.recipients == ["s@fresh.example"] }
            }
            #expect(Date().timeIntervalSince(started) >= 2, "not before delay_warning")
            let dsns = cluster.capture.received.filter { $0.reversePath.isEmpty }
            #expect(dsns.count == 1)
            let report = try runPython(ReportingIntegrationTests.parseDSN, input: dsns.first?.content ?? [], dir: cluster.dir) as? [String: Any] ?? [:]
            #expect(report["content_type"] as? String == "multipart/report" && report["report_type"] as? String == "delivery-status"
                    && (report["defects"] as? [Any])?.isEmpty == true)
            let parts = report["parts"] as? [[String: Any]] ?? []
            let blocks = parts.count > 1 ? parts[1]["blocks"] as? [[String: String]] ?? [] : []
            #expect(blocks.count == 2)
            if blocks.count == 2 {
                #expect(blocks[1]["Final-Recipient"] == "rfc822; \(waiting.first?["address"] as? String ?? "?")", "the waiting one")
                #expect(blocks[1]["Action"] == "delayed" && blocks[1]["Status"] == "4.0.0")
                #expect(blocks[1]["Will-Retry-Until"] != nil && blocks[1]["Remote-MTA"] == nil)
                let diagnostic = blocks[1]["Diagnostic-Code"]?.replacingOccurrences(of: "\r\n", with: "").replacingOccurrences(of: "\n", with: "") ?? ""
                #expect(diagnostic.contains("X-Hato; not yet attempted: warm-up cap of 127.0.0.12 reached until 00:00 UTC"), "\(diagnostic)")
            }
            let text = (parts.first?["text"] as? String ?? "").split(whereSeparator: \.isWhitespace).joined(separator: " ")
            #expect(text.contains("not yet attempted: warm-up cap of 127.0.0.12 reached"), "the human-readable part says why too: \(text)")
            try expectStays("one delay notice per recipient, and it still waits", for: 3) {
                try cluster.capture.received.filter { $0.reversePath.isEmpty }.count == 1 && cluster.queue()["queued"] == 1
            }
        } catch {
            Issue.record("\(error)\n\(cluster.logs)")
            throw error
        }
    }
}
}
