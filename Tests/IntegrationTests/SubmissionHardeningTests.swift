import Foundation
import HatoCoordinator
import HatoCrypto
import HatoIO
import HatoTestKit
import Testing

/// A tmpfs mounted for one test (CI runs as root), unmounted by `unmount()`.
final class TmpfsMount: @unchecked Sendable {
    let path: String
    private let logDirectory: String
    private var mounted = true

    private init(path: String, logDirectory: String) {
        self.path = path
        self.logDirectory = logDirectory
    }

    /// Mounts a tmpfs of `size` (e.g. `24m`) at `path` (created when missing).
    /// - Returns: the mount, or why it could not be made (not root, no mount(8), …).
    static func mount(at path: String, size: String) -> Result<TmpfsMount, HarnessError> {
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            let logs = try makeTempDirectory("hato-mount-")
            let (status, output) = try runProgram("/usr/bin/mount", ["-t", "tmpfs", "-o", "size=\(size)", "tmpfs", path], dir: logs, timeout: 20)
            guard status == 0 else {
                try? FileManager.default.removeItem(atPath: logs)
                return .failure(HarnessError("mount -t tmpfs failed (exit \(status), uid \(getuid())): \(output)"))
            }
            return .success(TmpfsMount(path: path, logDirectory: logs))
        } catch {
            return .failure(HarnessError("mount -t tmpfs failed: \(error)"))
        }
    }

    /// Free octets for unprivileged writers on the mount.
    var available: Int { (try? FileSystemSpace.of(path: path).available) ?? -1 }

    /// Unmounts (lazily if busy) and removes the log directory; safe to call twice.
    func unmount() {
        guard mounted else { return }
        mounted = false
        if (try? runProgram("/usr/bin/umount", [path], dir: logDirectory, timeout: 20))?.status != 0 {
            _ = try? runProgram("/usr/bin/umount", ["-l", path], dir: logDirectory, timeout: 20)
        }
        try? FileManager.default.removeItem(atPath: logDirectory)
    }
}

/// Writes a file of `size` octets (zeros written for real, so tmpfs accounts them).
func writeFiller(_ path: String, size: Int) throws {
    guard FileManager.default.createFile(atPath: path, contents: nil) else { throw HarnessError("cannot create \(path)") }
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
    defer { try? handle.close() }
    let block = Data(count: 1 << 20)
    var left = size
    while left > 0 {
        let n = min(left, block.count)
        try handle.write(contentsOf: block.prefix(n))
        left -= n
    }
}

/// A test message of about `size` octets: headers, then 100-octet lines.
func sizedMessage(_ i: Int, to: String, size: Int) -> String {
    var s = "From: App <app@example.org>\r\nTo: <\(to)>\r\nSubject: message \(i)\r\nDate: Mon, 2 Nov 2026 10:00:00 +0000\r\n"
        + "Message-ID: <h\(i).\(Identifier.random(bytes: 4))@example.org>\r\n\r\n"
    let line = String(repeating: "m", count: 98) + "\r\n"
    s += String(repeating: line, count: max(1, size / 100))
    return s
}

private let ehlo = "EHLO client.it.test\r\n"
private let bareLF = "500 5.5.2 Syntax error: bare LF in command line; lines end with CRLF (RFC 5321 section 2.3.8)"
private let bareCR = "500 5.5.2 Syntax error: bare CR in command line; lines end with CRLF (RFC 5321 section 2.3.8)"

extension Integration {
    @Suite("SMTP submission hardening: bare LF/CR command lines, queue_min_free on a full file system, postmaster")
    struct SubmissionHardeningTests {

        // MARK: - Bare LF / CR inside command lines (RFC 5321 §2.3.8)

        /// Sends `input` then `QUIT` and returns every final reply line until the 221.
        static func transcript(_ server: InProcessSubmission, _ parts: [String], from source: String? = nil) throws -> [String] {
            let client = try RawSMTPClient(server.address, from: source)
            defer { client.close() }
            for part in parts { try client.send(part) }
            try client.send("QUIT\r\n")
            var finals: [String] = []
            while true {
                let r = try client.reply()
                finals.append(r.lines.last ?? "")
                if r.code == 221 || finals.count > 50 { return finals }
            }
        }

        @Test("a bare LF or CR inside a command line: exactly one 500 per line, nothing of it runs, nothing stored")
        func bareLineEndings() throws {
            let server = try InProcessSubmission(smtpExtra: "relay_networks: [127.0.0.1/32]")
            defer { server.shutdown() }
            let cases: [(name: String, parts: [String], expected: [String])] = [
                ("after EHLO: RSET<LF>MAIL", [ehlo + "RSET\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@hato.test>\r\nDATA\r\n"],
                 ["250 CHUNKING", bareLF, "503 5.5.1 Error: need MAIL command", "503 5.5.1 Error: need MAIL command"]),
                ("at the start: EHLO<LF>MAIL", ["EHLO foo\nMAIL FROM:<x@example.org>\r\nMAIL FROM:<x@example.org>\r\n"],
                 [bareLF, "503 5.5.1 Error: send HELO/EHLO first"]),
                ("inside MAIL", [ehlo + "MAIL FROM:<a@exam\nple.org>\r\nRCPT TO:<b@hato.test>\r\n"],
                 ["250 CHUNKING", bareLF, "503 5.5.1 Error: need MAIL command"]),
                ("inside RCPT: RCPT<LF>DATA", [ehlo + "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@hato.test>\nDATA\r\nDATA\r\n"],
                 ["250 CHUNKING", "250 2.1.0 Ok", bareLF, "503 5.5.1 Error: need RCPT command"]),
                ("bare CR: RSET<CR>MAIL", [ehlo + "RSET\rMAIL FROM:<a@example.org>\r\nRCPT TO:<b@hato.test>\r\n"],
                 ["250 CHUNKING", bareCR, "503 5.5.1 Error: need MAIL command"]),
                ("bare CR at the start", ["EHLO foo\rMAIL FROM:<x@example.org>\r\nNOOP\r\n"], [bareCR, "250 2.0.0 Ok"]),
                ("a bare LF line split across two TCP writes", [ehlo + "RSET\nMAIL FROM:<a@exa", "mple.org>\r\nRCPT TO:<b@hato.test>\r\n"],
                 ["250 CHUNKING", bareLF, "503 5.5.1 Error: need MAIL command"]),
                ("split right after the bare LF", [ehlo + "RSET\n", "MAIL FROM:<a@example.org>\r", "\nRCPT TO:<b@hato.test>\r\n"],
                 ["250 CHUNKING", bareLF, "503 5.5.1 Error: need MAIL command"]),
                ("pipelined commands after the bad line run one by one; an overlong line keeps its own reply",
                 [ehlo + "RSET\nMAIL FROM:<a@example.org>\r\nNOOP " + String(repeating: "z", count: 600) + "\r\nMAIL FROM:<a@example.org>\r\n"
                  + "RCPT TO:<b@hato.test>\r\nRSET\r\n"],
                 ["250 CHUNKING", bareLF, "500 5.5.2 Error: line too long", "250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 Ok"]),
            ]
            var report: [String] = []
            for c in cases {
                let got = try Self.transcript(server, c.parts)
                #expect(got == c.expected + ["221 2.0.0 Bye"], "\(c.name): \(got)")
                report.append("\(c.name): \(got.dropLast().joined(separator: " | "))")
            }
            #expect(try server.messageIDs().isEmpty, "no message was stored")
            // DATA content rules are unchanged: a bare LF in the content is 550 5.6.0 after the dot.
            let data = try Self.transcript(server, [ehlo + "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@hato.test>\r\nDATA\r\nSubject: x\r\n\r\na\nb\r\n.\r\n"])
            #expect(data.suffix(2) == ["550 5.6.0 bare LF/CR not allowed", "221 2.0.0 Bye"])
            #expect(try server.messageIDs().isEmpty)
            print("bare LF/CR in command lines:\n  " + report.joined(separator: "\n  "))
        }

        // MARK: - postmaster (RFC 5321 §4.5.1)

        @Test("postmaster from a non-relay client: queued for smtp.postmaster with X-Original-To; other domains refused; rate limited")
        func postmasterFromOutside() throws {
            let server = try InProcessSubmission(smtpExtra: """
                relay_networks: [127.0.0.1/32]
                postmaster: ops@example.com
                postmaster_rate_limit: 3
                postmaster_rate_window: 1h
                """)
            defer { server.shutdown() }
            // 127.0.0.77 is outside relay_networks and does not authenticate.
            let client = try RawSMTPClient(server.address, from: "127.0.0.77")
            defer { client.close() }
            let body = "From: <someone@outside.test>\r\nTo: <postmaster@relay.it.test>\r\nSubject: abuse report\r\n\r\nhello\r\n.\r\n"
            let first = try client.exchange(ehlo + "MAIL FROM:<someone@outside.test>\r\nRCPT TO:<postmaster>\r\nRCPT TO:<victim@hato.test>\r\n"
                                            + "RCPT TO:<postmaster@hato.test>\r\nDATA\r\n" + body, replies: 7)
            #expect(first == ["250 CHUNKING", "250 2.1.0 Ok", "250 2.1.5 Ok", "554 5.7.1 Relay access denied",
                              "554 5.7.1 Relay access denied", "354 End data with <CR><LF>.<CR><LF>", first[6]])
            #expect(first[6].hasPrefix("250 2.0.0 Ok: queued as "))
            let id = try #require(first[6].split(separator: " ").last.map(String.init))
            let record = try #require(try server.store.submissionRecord(messageID: id))
            #expect(record.recipients == [SubmissionRecord.Recipient(address: "ops@example.com", notify: nil,
                                                                     originalRecipient: "rfc822;postmaster@relay.it.test")])
            let content = String(decoding: try #require(try server.store.content(of: id)), as: UTF8.self)
            #expect(content.contains("\tfor <postmaster@relay.it.test>; "), "Received names the recipient as given")
            #expect(content.contains("\r\nX-Original-To: postmaster@relay.it.test\r\nFrom: <someone@outside.test>\r\nTo: <postmaster@relay.it.test>\r\n"),
                    "X-Original-To after Received; To: kept as is")
            #expect(!content.contains("ops@example.com"), "the operator's address is not in the content")
            // The domain form, case-insensitive; two more fill the limit of 3, the fourth is 452 4.7.1.
            let more = try client.exchange("MAIL FROM:<someone@outside.test>\r\nRCPT TO:<PostMaster@Relay.IT.test>\r\nRCPT TO:<postmaster>\r\n"
                                           + "RCPT TO:<postmaster>\r\nDATA\r\n" + body, replies: 6)
            #expect(Array(more.prefix(5)) == ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok",
                                              "452 4.7.1 Error: too much mail to postmaster from this client, try again later",
                                              "354 End data with <CR><LF>.<CR><LF>"])
            #expect(more[5].hasPrefix("250 2.0.0 Ok: queued as "))
            #expect(try client.exchange("MAIL FROM:<someone@outside.test>\r\nRCPT TO:<postmaster>\r\nRSET\r\n", replies: 3)
                    == ["250 2.1.0 Ok", "452 4.7.1 Error: too much mail to postmaster from this client, try again later", "250 2.0.0 Ok"])
            // Another client address has its own count; a relaying client is not limited and is rewritten too.
            let other = try RawSMTPClient(server.address, from: "127.0.0.78")
            defer { other.close() }
            #expect(try other.exchange(ehlo + "MAIL FROM:<x@outside.test>\r\nRCPT TO:<postmaster>\r\n", replies: 3).last == "250 2.1.5 Ok")
            let relay = try RawSMTPClient(server.address)
            defer { relay.close() }
            let relayed = try relay.exchange(ehlo + "MAIL FROM:<app@example.org>\r\n" + String(repeating: "RCPT TO:<postmaster>\r\n", count: 5)
                                             + "RCPT TO:<user@hato.test>\r\nDATA\r\nSubject: mixed\r\n\r\nhi\r\n.\r\n", replies: 10)
            #expect(relayed.dropFirst(2).prefix(6).allSatisfy { $0 == "250 2.1.5 Ok" }, "\(relayed)")
            let relayedID = try #require(relayed.last?.split(separator: " ").last.map(String.init))
            let relayedRecord = try #require(try server.store.submissionRecord(messageID: relayedID))
            #expect(relayedRecord.recipients.map(\.address) == Array(repeating: "ops@example.com", count: 5) + ["user@hato.test"])
            let mixed = String(decoding: try #require(try server.store.content(of: relayedID)), as: UTF8.self)
            #expect(!mixed.contains("X-Original-To"), "a mixed message carries no X-Original-To; the ORCPT does")
            #expect(try server.messageIDs().count == 3)
        }

        // MARK: - queue_min_free on a real, small file system

        @Test("queue_min_free on a 24 MiB tmpfs: 452 4.3.1 at MAIL below it, accepted mail drains, 250 again once space returns")
        func queueMinFreeOnTmpfs() throws {
            // The queue must be on the tmpfs it fills: SQLite in coordinator.data_dir.
            let cluster = try LocalCluster(extraYAML: "store: { kind: sqlite }", smtpYAML: "queue_min_free: 8MiB")
            let queueDir = (cluster.dir as NSString).appendingPathComponent("var/coordinator")
            let mount: TmpfsMount
            switch TmpfsMount.mount(at: queueDir, size: "24m") {
            case .success(let m): mount = m
            case .failure(let why):
                cluster.shutdown()
                Issue.record("SKIPPED: this test needs a tmpfs mount (CI runs as root): \(why)")
                return
            }
            defer {
                for id in ["node-a", "node-b"] { cluster.nodeProcess(id)?.stop() }
                cluster.stopCoordinator()
                mount.unmount()
                cluster.shutdown()
            }
            do {
                // The coordinator alone first: what is accepted stays queued until the nodes start,
                // so the drain below happens entirely under queue_min_free.
                try cluster.startCoordinator()
                let minFree = 8 << 20
                let afterStart = mount.available
                // Leave 2 MiB above queue_min_free: a filler file of our own takes the rest.
                let filler = (queueDir as NSString).appendingPathComponent("filler")
                let fillerSize = afterStart - minFree - (2 << 20)
                try #require(fillerSize > 0, "free after start: \(afterStart)")
                try writeFiller(filler, size: fillerSize)
                let atStart = mount.available
                let client = try RawSMTPClient(SocketAddress(host: "127.0.0.1", port: cluster.smtpPort), timeout: 30)
                defer { client.close() }
                _ = try client.exchange(ehlo)
                // 40 KiB messages until MAIL is refused (bounded: 2 MiB cannot take 300). Each stays
                // below the 64 KiB the node writes at once, so the capture MX reads it whole.
                var accepted: [String] = []
                var refusal: String?
                var freeAtRefusal = 0
                let messageSize = 40 << 10
                for i in 0..<300 {
                    let mail = try client.exchange("MAIL FROM:<sender@example.org>\r\n")[0]
                    if mail.hasPrefix("452") {
                        refusal = mail
                        freeAtRefusal = mount.available
                        break
                    }
                    #expect(mail == "250 2.1.0 Ok")
                    let r = try client.exchange("RCPT TO:<user\(i)@hato.test>\r\nDATA\r\n" + sizedMessage(i, to: "user\(i)@hato.test", size: messageSize) + ".\r\n",
                                                replies: 3)
                    #expect(r[0] == "250 2.1.5 Ok" && r[1].hasPrefix("354"))
                    #expect(r[2].hasPrefix("250 2.0.0 Ok: queued as "), "message \(i): \(r[2]) — never a 250 without the queue write")
                    if let id = r[2].split(separator: " ").last { accepted.append(String(id)) }
                }
                #expect(refusal == "452 4.3.1 Insufficient system storage")
                #expect(accepted.count >= 2, "some messages fit above the minimum: \(accepted.count)")
                #expect(abs(freeAtRefusal - minFree) < 1 << 20,
                        "refused near the minimum (mail queued since the last measurement counts): \(freeAtRefusal) free")
                #expect(try cluster.queue()["queued"] == accepted.count)
                // Pin the state: our filler grows by 2 MiB, so the file system is clearly below the
                // minimum whatever the next measurement finds (the estimate between two may differ a little).
                try FileManager.default.removeItem(atPath: filler)
                try writeFiller(filler, size: fillerSize + (2 << 20))
                let freePinned = mount.available
                #expect(freePinned < minFree - (1 << 20))
                // Still refused on a new connection; EHLO still advertises SIZE.
                let second = try RawSMTPClient(SocketAddress(host: "127.0.0.1", port: cluster.smtpPort))
                defer { second.close() }
                try second.send(ehlo)
                #expect(try second.reply().lines.contains("250-SIZE 10485760"))
                #expect(try second.exchange("MAIL FROM:<sender@example.org>\r\n") == ["452 4.3.1 Insufficient system storage"])
                // The queue drains by itself in the headroom: every accepted message is delivered once.
                let drainStart = Date()
                try cluster.startNodesAndWait()
                try cluster.waitForQueue(final: accepted.count, timeout: 90)
                let drainTime = Date().timeIntervalSince(drainStart)
                #expect(try cluster.queue()["delivered"] == accepted.count)
                let subjects = cluster.capture.received.compactMap(subjectNumber).sorted()
                #expect(subjects == Array(0..<accepted.count), "each accepted message arrived exactly once")
                let freeAfterDrain = mount.available
                let metrics = try httpGet(port: cluster.adminPort, path: "/metrics")
                #expect(metrics.contains("hato_queue_free_bytes "))
                #expect(metrics.split(separator: "\n").contains { $0.hasPrefix("hato_smtp_refusals_total{reason=\"queue_min_free\"} ") && !$0.hasSuffix(" 0") })
                // Space returns (our filler goes): 250 again within the recheck interval.
                try FileManager.default.removeItem(atPath: filler)
                let freeAfterDelete = mount.available
                var resumedAfter: TimeInterval = -1
                let resumeStart = Date()
                try waitUntil("MAIL accepted again", timeout: 10) {
                    let r = try second.exchange("MAIL FROM:<sender@example.org>\r\n")[0]
                    if r == "250 2.1.0 Ok" { resumedAfter = Date().timeIntervalSince(resumeStart); return true }
                    return false
                }
                let last = try second.exchange("RCPT TO:<late@hato.test>\r\nDATA\r\n" + sizedMessage(99, to: "late@hato.test", size: 4096) + ".\r\n", replies: 3)
                #expect(last[2].hasPrefix("250 2.0.0 Ok: queued as "))
                try cluster.waitForQueue(final: accepted.count + 1, timeout: 60)
                let log = cluster.coordinator?.log ?? ""
                #expect(log.contains("submission refused: the queue's file system is below smtp.queue_min_free"))
                #expect(log.contains("submission resumed: the queue's file system is above smtp.queue_min_free again"))
                print("queue_min_free on tmpfs 24 MiB, queue_min_free 8 MiB: free after start \(afterStart) B, filler \(fillerSize) B, "
                      + "free before submitting \(atStart) B; \(accepted.count) messages of 40 KiB accepted, then \(refusal ?? "-") at "
                      + "\(freeAtRefusal) B free (\(freePinned) B with the filler grown by 2 MiB); drained in \(String(format: "%.1f", drainTime)) s (free then \(freeAfterDrain) B); "
                      + "filler deleted: \(freeAfterDelete) B free, MAIL 250 again after \(String(format: "%.2f", resumedAfter)) s")
            } catch {
                Issue.record("\(error)\n\(cluster.logs)")
                throw error
            }
        }

        @Test("a queue write that finds the file system full at the end of DATA (the spool's ENOSPC for these 768 KiB messages, SQLITE_FULL for small ones) is 452 4.3.1, never 250; accepted mail is kept")
        func sqliteFullAtEndOfData() throws {
            let dir = try makeTempDirectory("hato-full-")
            let queueDir = (dir as NSString).appendingPathComponent("var/coordinator")
            let mount: TmpfsMount
            switch TmpfsMount.mount(at: queueDir, size: "8m") {
            case .success(let m): mount = m
            case .failure(let why):
                try? FileManager.default.removeItem(atPath: dir)
                Issue.record("SKIPPED: this test needs a tmpfs mount (CI runs as root): \(why)")
                return
            }
            // queue_min_free: 0 disables the MAIL check, so the commit itself meets the full disk.
            let server = try InProcessSubmission(smtpExtra: """
                relay_networks: [127.0.0.1/32]
                max_message_size: 4MiB
                queue_min_free: 0
                """, dir: dir)
            defer {
                server.server.stop()
                mount.unmount()
                try? FileManager.default.removeItem(atPath: dir)
            }
            let client = try RawSMTPClient(server.address, timeout: 30)
            defer { client.close() }
            _ = try client.exchange(ehlo)
            func send(_ i: Int, size: Int) throws -> String {
                try client.exchange("MAIL FROM:<a@example.org>\r\nRCPT TO:<u\(i)@hato.test>\r\nDATA\r\n" + sizedMessage(i, to: "u\(i)@hato.test", size: size) + ".\r\n",
                                    replies: 4)[3]
            }
            #expect(try send(0, size: 64 << 10).hasPrefix("250 2.0.0 Ok: queued as "))
            let filler = (queueDir as NSString).appendingPathComponent("filler")
            try writeFiller(filler, size: max(0, mount.available - (1 << 20)))
            let freeBefore = mount.available
            var outcomes: [String] = []
            for i in 1...6 {
                let r = try send(i, size: 768 << 10)
                outcomes.append(r)
                if r.hasPrefix("452") { break }
            }
            #expect(outcomes.last == "452 4.3.1 Insufficient system storage", "\(outcomes)")
            #expect(!outcomes.contains { $0.hasPrefix("451") }, "a full file system is told apart from other write errors: \(outcomes)")
            let accepted = outcomes.filter { $0.hasPrefix("250") }.count + 1
            #expect(try client.exchange("NOOP\r\n") == ["250 2.0.0 Ok"], "the session stays in sync")
            let ids = try server.messageIDs()
            #expect(ids.count == accepted, "every message answered 250 is in the queue, nothing else")
            for id in ids { #expect(try server.store.content(of: id)?.isEmpty == false) }
            // Space returns: the next message is queued.
            try FileManager.default.removeItem(atPath: filler)
            #expect(try send(9, size: 64 << 10).hasPrefix("250 2.0.0 Ok: queued as "))
            print("SQLITE_FULL on an 8 MiB tmpfs: \(freeBefore) B free before, replies \(outcomes); \(accepted) messages kept")
        }
    }
}

extension Integration {
    @Suite("smtp.max_content_memory: large transactions held open cannot exhaust the coordinator's memory")
    struct ContentMemoryLimitTests {
        /// One content line: 998 octets and CRLF.
        static let line = String(repeating: "x", count: 998) + "\r\n"
        static let header = "Subject: big\r\n\r\n"
        static let lines = 9437
        /// The content one session holds: 9 437 016 octets (just over 9 MiB).
        static let contentSize = header.utf8.count + lines * line.utf8.count

        static func metric(_ text: String, _ name: String) -> Double {
            for l in text.split(separator: "\n") where l.hasPrefix(name + " ") {
                return Double(l.split(separator: " ").last ?? "") ?? -1
            }
            return 0
        }

        @Test("10 sessions of 9 MiB each held open under a 40 MiB budget: 4 are kept and queued, 6 get 452 4.3.1, MAIL SIZE beyond what is left gets 452; VmHWM stays near the budget")
        func heldTransactions() throws {
            let coordinator = try CoordinatorProcess(smtpExtra: "relay_networks: [127.0.0.0/8]\nmax_message_size: 10MiB\nmax_content_memory: 40MiB")
            defer { coordinator.shutdown() }
            try coordinator.start()
            let baselineKiB = coordinator.memoryKiB("VmRSS") ?? 0
            let address = SocketAddress(host: "127.0.0.1", port: coordinator.smtpPort)
            let body = [UInt8]((Self.header + String(repeating: Self.line, count: Self.lines)).utf8)
            var sessions: [RawSMTPClient] = []
            defer { sessions.forEach { $0.close() } }
            func metrics() throws -> String { try httpGet(port: coordinator.adminPort, path: "/metrics") }

            for i in 0..<10 {
                let s = try RawSMTPClient(address, timeout: 30)
                sessions.append(s)
                let r = try s.exchange("EHLO big\(i).it.test\r\nMAIL FROM:<app@example.org>\r\nRCPT TO:<user\(i)@hato.test>\r\nDATA\r\n", replies: 4)
                #expect(r[3].hasPrefix("354"), "session \(i): \(r)")
                try s.send(body)
                // Wait until the coordinator has read it all: kept (the gauge grows by it) or shed (a refusal is counted).
                let kept = min(i + 1, 4)
                try waitUntil("session \(i)'s content read", timeout: 30) {
                    let m = try metrics()
                    let held = Self.metric(m, "hato_smtp_content_memory_bytes")  // allocated: at most a segment of slack each
                    return held >= Double(kept * Self.contentSize) && held <= Double(kept * (Self.contentSize + (1 << 20) + 4096))
                        && Self.metric(m, "hato_smtp_refusals_total{reason=\"max_content_memory\"}") == Double(i + 1 - kept)
                }
            }
            // A new MAIL whose SIZE does not fit what is left (40 MiB − 4 × 9 MiB) is refused before any content.
            let late = try RawSMTPClient(address, timeout: 10)
            defer { late.close() }
            let lateReplies = try late.exchange("EHLO late.it.test\r\nMAIL FROM:<app@example.org> SIZE=\(Self.contentSize)\r\nMAIL FROM:<app@example.org> SIZE=1000\r\n", replies: 3)
            #expect(lateReplies[1] == "452 4.3.1 Insufficient system storage", "\(lateReplies)")
            #expect(lateReplies[2] == "250 2.1.0 Ok", "a small message still fits: \(lateReplies)")
            let peakKiB = coordinator.memoryKiB("VmHWM") ?? Int.max

            // End every message: the four kept ones are queued, the six shed ones get 452 4.3.1.
            var ends: [String] = []
            for s in sessions {
                ends.append(try s.exchange(".\r\n").first ?? "")
            }
            #expect(ends.prefix(4).allSatisfy { $0.hasPrefix("250 2.0.0 Ok: queued as ") }, "\(ends)")
            #expect(ends.dropFirst(4).allSatisfy { $0 == "452 4.3.1 Insufficient system storage" }, "\(ends)")
            #expect(try coordinator.queueCounts()["queued", default: 0] == 4)
            // Everything is given back; a full-size message fits again.
            try waitUntil("content memory released", timeout: 10) {
                Self.metric(try metrics(), "hato_smtp_content_memory_bytes") == 0
            }
            let again = try RawSMTPClient(address, timeout: 30)
            defer { again.close() }
            _ = try again.exchange("EHLO again.it.test\r\nMAIL FROM:<app@example.org> SIZE=\(Self.contentSize)\r\nRCPT TO:<again@hato.test>\r\nDATA\r\n", replies: 4)
            try again.send(body)
            #expect(try again.exchange(".\r\n").first?.hasPrefix("250 2.0.0 Ok: queued as ") == true)
            // Unbounded, the ten sessions would hold 10 × 9 MiB (and more while copying); bounded, the
            // peak stays within the budget plus the process's own working set.
            let growthMiB = (peakKiB - baselineKiB) / 1024
            #expect(growthMiB < 40 + 24, "VmHWM \(peakKiB) KiB, baseline \(baselineKiB) KiB")
            print("max_content_memory 40 MiB, 10 sessions × \(Self.contentSize) octets held open: kept 4, shed 6; coordinator VmRSS \(baselineKiB) KiB at start, VmHWM \(peakKiB) KiB (+\(growthMiB) MiB)")
        }
    }
}
