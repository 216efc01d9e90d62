import Foundation
import HatoCoordinator
import HatoIO
import HatoTestKit
import SMTPCore
import Testing

/// Exact bytes in, exact reply codes out, against a real listener.
struct RawCase: Sendable, CustomTestStringConvertible {
    let name: String
    let input: [UInt8]
    /// The expected final reply lines, each as a prefix: `250`, `501 5.1.3`, ….
    let expected: [String]
    var testDescription: String { name }

    init(_ name: String, _ input: String, _ expected: [String]) {
        self.name = name
        self.input = Array(input.utf8)
        self.expected = expected
    }

    init(_ name: String, bytes: [UInt8], _ expected: [String]) {
        self.name = name
        self.input = bytes
        self.expected = expected
    }
}

private let ehlo = "EHLO client.it.test\r\n"
private let envelope = ehlo + "MAIL FROM:<app@example.org>\r\nRCPT TO:<user@hato.test>\r\nDATA\r\n"
private let envelopeReplies = ["250", "250 2.1.0", "250 2.1.5", "354"]
private let chunk = "MAIL FROM:<e@x.test>\r\nRCPT TO:<v@y.test>\r\n"

extension Integration {
    @Suite("SMTP submission server: raw sockets, STARTTLS, AUTH, limits, timeouts, real clients")
    struct SubmissionTests {

        // MARK: - Rules, byte for byte

        static let rules: [RawCase] = [
            RawCase("a bare LF ends no command: the whole line up to CRLF is one 500, then in sync",
                    "EHLO c.test\nNOOP\r\nNOOP\r\n", ["500 5.5.2", "250 2.0.0"]),
            RawCase("bare CR inside a command: 500", "NOOP\rQUIT\r\nNOOP\r\n", ["500 5.5.2", "250 2.0.0"]),
            RawCase("NUL inside a command: 500", "NO\u{0}OP\r\nNOOP\r\n", ["500 5.5.2", "250 2.0.0"]),
            RawCase("512-octet command accepted, 513 is 500 and the next command works",
                    "NOOP " + String(repeating: "z", count: 505) + "\r\nNOOP " + String(repeating: "z", count: 506) + "\r\nNOOP\r\n",
                    ["250 2.0.0", "500 5.5.2", "250 2.0.0"]),
            RawCase("unknown verb", "XYZZY\r\n", ["500 5.5.1"]),
            RawCase("MAIL before EHLO", "MAIL FROM:<a@example.org>\r\n", ["503 5.5.1"]),
            RawCase("quoted local part, address literals, source route, Postmaster",
                    ehlo + "MAIL FROM:<\"john doe\"@example.org>\r\nRCPT TO:<user@[192.0.2.1]>\r\nRCPT TO:<user@[IPv6:2001:db8::1]>\r\n"
                    + "RCPT TO:<@relay.example,@r2.example:user@example.net>\r\nRCPT TO:<Postmaster>\r\n",
                    ["250", "250 2.1.0", "250 2.1.5", "250 2.1.5", "250 2.1.5", "250 2.1.5"]),
            RawCase("null reverse-path", ehlo + "MAIL FROM:<>\r\n", ["250", "250 2.1.0"]),
            RawCase("invalid paths are permanent 501 with 5.1.7 / 5.1.3, never 4xx",
                    ehlo + "MAIL FROM:<a@b..c>\r\nMAIL FROM:user@example.org\r\nMAIL FROM:<>\r\nRCPT TO:<a b@c.d>\r\n"
                    + "RCPT TO:<a@[300.1.1.1]>\r\nRCPT TO:<>\r\nRCPT TO:<\"unterminated@x.test>\r\n",
                    ["250", "501 5.1.7", "501 5.1.7", "250 2.1.0", "501 5.1.3", "501 5.1.3", "501 5.1.3", "501 5.1.3"]),
            RawCase("UTF-8 addresses need SMTPUTF8 on MAIL",
                    ehlo + "MAIL FROM:<jöran@example.org>\r\nMAIL FROM:<jöran@example.org> SMTPUTF8\r\nRCPT TO:<ü@bücher.example>\r\n",
                    ["250", "553 5.6.7", "250 2.1.0", "250 2.1.5"]),
            RawCase("MAIL/RCPT parameters: BODY, RET, ENVID, NOTIFY, ORCPT accepted; unknown 555; malformed 501",
                    ehlo + "MAIL FROM:<a@example.org> BODY=8BITMIME RET=FULL ENVID=id+2B1\r\n"
                    + "RCPT TO:<b@hato.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b+40hato.test\r\nRCPT TO:<c@hato.test> XFOO=1\r\n"
                    + "RCPT TO:<c@hato.test> NOTIFY=NEVER,SUCCESS\r\nRSET\r\nMAIL FROM:<a@example.org> BODY=BINARYMIME\r\n"
                    + "MAIL FROM:<a@example.org> XFORWARD=x\r\n",
                    ["250", "250 2.1.0", "250 2.1.5", "555 5.5.4", "501 5.5.4", "250 2.0.0", "501 5.5.4", "555 5.5.4"]),
            RawCase("SIZE abuse: over the limit 552 at MAIL, malformed 501, at the limit 250",
                    ehlo + "MAIL FROM:<a@example.org> SIZE=1048577\r\nMAIL FROM:<a@example.org> SIZE=99999999999999999999\r\n"
                    + "MAIL FROM:<a@example.org> SIZE=abc\r\nMAIL FROM:<a@example.org> SIZE=-1\r\n"
                    + "MAIL FROM:<a@example.org> SIZE=123456789012345678901\r\nMAIL FROM:<a@example.org> SIZE=\r\n"
                    + "MAIL FROM:<a@example.org> SIZE=1 SIZE=2\r\nMAIL FROM:<a@example.org> SIZE=1048576\r\n",
                    ["250", "552 5.3.4", "552 5.3.4", "501 5.5.4", "501 5.5.4", "501 5.5.4", "501 5.5.4", "501 5.5.4", "250 2.1.0"]),
            RawCase("SIZE understated: the real size is enforced while reading DATA, 552 after the dot, then in sync",
                    ehlo + "MAIL FROM:<a@example.org> SIZE=10\r\nRCPT TO:<b@hato.test>\r\nDATA\r\n"
                    + String(repeating: String(repeating: "x", count: 998) + "\r\n", count: 1100) + ".\r\nNOOP\r\n",
                    ["250", "250 2.1.0", "250 2.1.5", "354", "552 5.3.4", "250 2.0.0"]),
            RawCase("DATA without recipients", ehlo + "MAIL FROM:<a@example.org>\r\nDATA\r\nRCPT TO:<bad>\r\nDATA\r\n",
                    ["250", "250 2.1.0", "503 5.5.1", "501 5.1.3", "554 5.5.1"]),
            RawCase("text line over 1000 octets: 550 5.6.0 after the dot",
                    envelope + String(repeating: "y", count: 999) + "\r\n.\r\nNOOP\r\n", envelopeReplies + ["550 5.6.0", "250 2.0.0"]),
            RawCase("100 Received fields: loop, 554 5.4.6",
                    envelope + String(repeating: "Received: from a by b; Tue, 1 Jan 2030 00:00:00 +0000\r\n", count: 100) + "\r\nx\r\n.\r\n",
                    envelopeReplies + ["554 5.4.6"]),
            RawCase("BDAT without a transaction consumes its chunk: the chunk's commands never run",
                    ehlo + "BDAT \(chunk.utf8.count)\r\n\(chunk)NOOP\r\n", ["250", "503 5.5.1", "250 2.0.0"]),
            RawCase("BDAT: a chunk with a bare LF is 550 5.6.0 on that chunk and ends the transaction",
                    ehlo + "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@hato.test>\r\nBDAT 5\r\na\n.\nbBDAT 0 LAST\r\nNOOP\r\n",
                    ["250", "250 2.1.0", "250 2.1.5", "550 5.6.0", "503 5.5.1", "250 2.0.0"]),
            RawCase("STARTTLS with arguments, EXPN, VRFY, HELP",
                    ehlo + "STARTTLS now\r\nEXPN list\r\nVRFY user\r\nHELP\r\n", ["250", "501 5.5.4", "502 5.5.1", "252 2.5.0", "214 2.0.0"]),
            RawCase("AUTH= on MAIL before STARTTLS, where AUTH is not offered: 555 5.5.4 (RFC 4954 §5, RFC 5321 §4.1.1.11)",
                    ehlo + "MAIL FROM:<a@example.org> AUTH=<>\r\nMAIL FROM:<a@example.org>\r\n", ["250", "555 5.5.4", "250 2.1.0"]),
            RawCase("AUTH before TLS without the loopback option: 538 5.7.11",
                    ehlo + "AUTH PLAIN \(base64("\u{0}app\u{0}app-password"))\r\n", ["250", "538 5.7.11"]),
        ]

        @Test("raw-socket rules: exact bytes in, exact reply codes out", arguments: rules)
        func rawRules(_ c: RawCase) throws {
            let dir = try makeTempDirectory("hato-sub-")
            let cert = try TestCertificate.make(in: dir)
            let server = try InProcessSubmission(smtpExtra: standardSubmissionSMTP(cert), dir: dir)
            defer { server.shutdown() }
            let client = try RawSMTPClient(server.address)
            defer { client.close() }
            try client.send(c.input)
            let got = try client.replies(c.expected.count)
            for (line, want) in zip(got, c.expected) {
                #expect(line.hasPrefix(want), "\(c.name): got \(got)")
            }
            #expect(try server.messageIDs().isEmpty)
        }

        /// RFC 5321 §4.1.1.4 / CVE-2023-51764 family.
        static let smugglingVariants: [(name: String, separator: String)] = [
            ("<LF>.<LF>", "\n.\n"),
            ("<LF>.<CR><LF>", "\n.\r\n"),
            ("<CR><LF>.<LF>", "\r\n.\n"),
            ("<CR>.<CR>", "\r.\r"),
            ("<CR>.<CR><LF>", "\r.\r\n"),
            ("<CR><LF>.<CR>", "\r\n.\r"),
            ("<LF>.<CR>", "\n.\r"),
            ("<CR><LF>.<CR><CR><LF>", "\r\n.\r\r\n"),
            ("<CR><CR><LF>.<CR><CR><LF>", "\r\r\n.\r\r\n"),
        ]

        @Test("SMTP smuggling: no <LF>/<CR> end-of-data variant ends a message or starts a second one")
        func smuggling() throws {
            let dir = try makeTempDirectory("hato-sub-")
            let cert = try TestCertificate.make(in: dir)
            let server = try InProcessSubmission(smtpExtra: standardSubmissionSMTP(cert), dir: dir)
            defer { server.shutdown() }
            var report: [String] = []
            for (name, separator) in Self.smugglingVariants {
                let client = try RawSMTPClient(server.address)
                defer { client.close() }
                let smuggled = "MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@hato.test>\r\nDATA\r\nSubject: forged\r\n\r\nforged\r\n"
                try client.send(envelope + "Subject: real\r\n\r\nreal" + separator + smuggled + ".\r\nNOOP\r\n")
                let got = try client.replies(6)
                #expect(Array(got.prefix(4)).enumerated().allSatisfy { $0.element.hasPrefix(envelopeReplies[$0.offset]) }, "\(name): \(got)")
                #expect(got[4] == "550 5.6.0 bare LF/CR not allowed", "\(name): \(got)")
                #expect(got[5] == "250 2.0.0 Ok", "\(name): \(got)")
                report.append("\(name) -> \(got[4]) | NOOP -> \(got[5])")
            }
            #expect(try server.messageIDs().isEmpty, "nothing stored, neither the real nor the smuggled message")
            // The control: a proper <CR><LF>.<CR><LF> ends the message and the next commands run.
            let client = try RawSMTPClient(server.address)
            defer { client.close() }
            try client.send(envelope + "Subject: real\r\n\r\nreal\r\n.\r\nNOOP\r\n")
            let got = try client.replies(6)
            #expect(got[4].hasPrefix("250 2.0.0 Ok: queued as "))
            #expect(try server.messageIDs().count == 1)
            print("smuggling replies:\n  " + report.joined(separator: "\n  "))
        }

        @Test("BDAT (CHUNKING): pipelined chunks are queued as sent, with the fix-ups and the Received field")
        func bdatQueued() throws {
            let dir = try makeTempDirectory("hato-sub-")
            let cert = try TestCertificate.make(in: dir)
            let server = try InProcessSubmission(smtpExtra: standardSubmissionSMTP(cert), dir: dir)
            defer { server.shutdown() }
            let client = try RawSMTPClient(server.address)
            defer { client.close() }
            let first = "Subject: chunked\r\nMessage-ID: <c1@example.org>\r\n\r\n.leading dot stays\r\n"
            let second = "last line without CRLF"
            let replies = try client.exchange(ehlo + "MAIL FROM:<a@example.org> BODY=8BITMIME\r\nRCPT TO:<b@hato.test>\r\n"
                                              + "BDAT \(first.utf8.count)\r\n\(first)BDAT \(second.utf8.count) LAST\r\n\(second)", replies: 5)
            #expect(replies[3] == "250 2.0.0 Ok: \(first.utf8.count) octets received")
            #expect(replies[4].hasPrefix("250 2.0.0 Ok: queued as "))
            let id = try #require(replies[4].split(separator: " ").last.map(String.init))
            let content = String(decoding: try #require(try server.store.content(of: id)), as: UTF8.self)
            #expect(content.hasPrefix("Received: from client.it.test ([127.0.0.1])\r\n\tby relay.it.test (Hato) with ESMTP id \(id)\r\n\tfor <b@hato.test>; "))
            // The Date field the server added: its whole value up to CRLF, which must be a valid
            // RFC 5322 date-time close to now (a one-digit day makes it 30 characters, not 31).
            let date = try #require(headerFieldValue("Date", in: content))
            let instant = try #require(RFC5322Date.parse(date), "not an RFC 5322 date-time: \(date)")
            #expect(abs(instant.timeIntervalSinceNow) < 300)
            #expect(content.hasSuffix("\r\nSubject: chunked\r\nMessage-ID: <c1@example.org>\r\nDate: \(date)"
                                      + "\r\n\r\n.leading dot stays\r\nlast line without CRLF\r\n"))
        }

        // MARK: - STARTTLS and AUTH

        @Test("STARTTLS: plaintext pipelined after STARTTLS is discarded; the TLS session starts over; AUTH, relay and the stored record")
        func startTLSAndAuth() throws {
            let dir = try makeTempDirectory("hato-sub-")
            let cert = try TestCertificate.make(in: dir)
            let server = try InProcessSubmission(smtpExtra: standardSubmissionSMTP(cert), dir: dir)
            defer { server.shutdown() }
            // From 127.0.0.77: outside relay_networks (127.0.0.1/32), so only AUTH allows relaying.
            let client = try RawSMTPClient(server.address, from: "127.0.0.77")
            defer { client.close() }
            try client.send(ehlo)
            let keywords = try client.reply().lines
            #expect(keywords.contains("250-STARTTLS"))
            #expect(!keywords.contains { $0.contains("AUTH") }, "no AUTH offered before TLS")
            try client.send("STARTTLS\r\nMAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@hato.test>\r\nDATA\r\nforged\r\n.\r\n")
            #expect(try client.replies(1) == ["220 2.0.0 Ready to start TLS"])
            let tls = try client.startTLS(try TLSContext.client(verifyPeer: true, trustedCAFile: cert.certificate))
            #expect(tls.peerCertificateVerified)
            // Nothing of the injected transaction exists, and EHLO is needed again (RFC 3207 §4.2).
            #expect(try client.exchange("RCPT TO:<victim@hato.test>\r\n") == ["503 5.5.1 Error: need MAIL command"])
            #expect(try client.exchange("MAIL FROM:<a@example.org>\r\n") == ["503 5.5.1 Error: send HELO/EHLO first"])
            try client.send(ehlo)
            let tlsKeywords = try client.reply().lines
            #expect(tlsKeywords.contains("250-AUTH PLAIN LOGIN"))
            #expect(!tlsKeywords.contains("250-STARTTLS"))
            #expect(try client.exchange("MAIL FROM:<a@example.org>\r\nRCPT TO:<user@hato.test>\r\nRSET\r\n", replies: 3)
                    == ["250 2.1.0 Ok", "554 5.7.1 Relay access denied", "250 2.0.0 Ok"])
            #expect(try client.exchange("AUTH LOGIN\r\n") == ["334 VXNlcm5hbWU6"])
            #expect(try client.exchange(base64("app") + "\r\n") == ["334 UGFzc3dvcmQ6"])
            #expect(try client.exchange(base64("wrong") + "\r\n") == ["535 5.7.8 Error: authentication failed"])
            #expect(try client.exchange("AUTH PLAIN \(base64("\u{0}app\u{0}app-password"))\r\n") == ["235 2.7.0 Authentication successful"])
            let sent = try client.exchange("MAIL FROM:<a@example.org> RET=HDRS ENVID=order+2B7\r\n"
                                           + "RCPT TO:<user@hato.test> NOTIFY=FAILURE ORCPT=rfc822;user+40hato.test\r\n"
                                           + "RCPT TO:<other@hato.test>\r\nDATA\r\nSubject: hello\r\n\r\nbody\r\n.\r\nQUIT\r\n", replies: 6)
            #expect(sent.prefix(4) == ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>"])
            #expect(sent[4].hasPrefix("250 2.0.0 Ok: queued as "))
            #expect(sent[5] == "221 2.0.0 Bye")
            let id = try #require(sent[4].split(separator: " ").last.map(String.init))
            let record = try #require(try server.store.submissionRecord(messageID: id))
            #expect(record.authenticatedUser == "app")
            #expect(record.dsnReturn == "HDRS")
            #expect(record.envelopeID == "order+2B7")
            #expect(record.recipients == [
                SubmissionRecord.Recipient(address: "user@hato.test", notify: "FAILURE", originalRecipient: "rfc822;user+40hato.test"),
                SubmissionRecord.Recipient(address: "other@hato.test", notify: nil, originalRecipient: nil),
            ])
            let content = String(decoding: try #require(try server.store.content(of: id)), as: UTF8.self)
            #expect(content.hasPrefix("Received: from client.it.test ([127.0.0.77])\r\n\tby relay.it.test (Hato) with ESMTPSA\r\n\t(\(tls.protocolVersion) \(tls.cipher)) id \(id)"))
            #expect(content.contains("\r\nSubject: hello\r\nDate: "))
            #expect(content.contains("\r\nMessage-ID: <\(id)@relay.it.test>\r\n\r\nbody\r\n"))
        }

        @Test("STARTTLS: plaintext sent after the 220 instead of a ClientHello fails the handshake and closes; nothing runs")
        func plaintextAfterStartTLS() throws {
            let dir = try makeTempDirectory("hato-sub-")
            let cert = try TestCertificate.make(in: dir)
            let server = try InProcessSubmission(smtpExtra: standardSubmissionSMTP(cert), dir: dir)
            defer { server.shutdown() }
            let client = try RawSMTPClient(server.address)
            defer { client.close() }
            #expect(try client.exchange(ehlo + "STARTTLS\r\n", replies: 2).last == "220 2.0.0 Ready to start TLS")
            try client.send("MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@hato.test>\r\nDATA\r\nforged\r\n.\r\n")
            #expect(client.isClosedByServer())
            #expect(try server.messageIDs().isEmpty)
        }

        @Test("AUTH failures are rate-limited per client address; plaintext AUTH only with the loopback option")
        func authRateLimitAndPlaintextOption() throws {
            let dir = try makeTempDirectory("hato-sub-")
            let cert = try TestCertificate.make(in: dir)
            let server = try InProcessSubmission(smtpExtra: standardSubmissionSMTP(cert, extra: """
                auth_allow_plaintext_loopback: true
                auth_failure_limit: 3
                auth_failure_window: 1m
                """), dir: dir)
            defer { server.shutdown() }
            let bad = "AUTH PLAIN \(base64("\u{0}app\u{0}guess"))\r\n"
            let good = "AUTH PLAIN \(base64("\u{0}app\u{0}app-password"))\r\n"
            // Plaintext AUTH on loopback is offered and works with the option.
            let first = try RawSMTPClient(server.address, from: "127.0.0.60")
            try first.send(ehlo)
            #expect(try first.reply().lines.contains("250-AUTH PLAIN LOGIN"))
            #expect(try first.exchange(bad, replies: 1) == ["535 5.7.8 Error: authentication failed"])
            #expect(try first.exchange(bad, replies: 1) == ["535 5.7.8 Error: authentication failed"])
            first.close()
            let second = try RawSMTPClient(server.address, from: "127.0.0.60")
            defer { second.close() }
            #expect(try second.exchange(ehlo + bad + good, replies: 3).suffix(2)
                    == ["535 5.7.8 Error: authentication failed", "454 4.7.0 Too many failed authentication attempts, try again later"])
            // Another address is not affected.
            let other = try RawSMTPClient(server.address, from: "127.0.0.61")
            defer { other.close() }
            #expect(try other.exchange(ehlo + good, replies: 2).last == "235 2.7.0 Authentication successful")
        }

        // MARK: - Limits

        @Test("100,001 RCPTs: the first max_recipients get 250, the rest 452 4.5.3, bounded time, the message keeps 1000")
        func hundredThousandRecipients() throws {
            let dir = try makeTempDirectory("hato-sub-")
            let cert = try TestCertificate.make(in: dir)
            let server = try InProcessSubmission(smtpExtra: standardSubmissionSMTP(cert).replacingOccurrences(of: "max_recipients: 100", with: "max_recipients: 1000"), dir: dir)
            defer { server.shutdown() }
            let client = try RawSMTPClient(server.address, timeout: 60)
            defer { client.close() }
            let started = Date()
            let count = 100_001
            // Write from another thread while this one reads, so neither side's buffers deadlock.
            let writer = Thread {
                var batch = Array((ehlo + "MAIL FROM:<a@example.org>\r\n").utf8)
                for i in 0..<count {
                    batch += Array("RCPT TO:<r\(i)@hato.test>\r\n".utf8)
                    if batch.count > 60_000 { try? client.send(batch); batch = [] }
                }
                batch += Array("DATA\r\nSubject: many\r\n\r\nbody\r\n.\r\nQUIT\r\n".utf8)
                try? client.send(batch)
            }
            writer.start()
            var accepted = 0, refused = 0, other: [String] = []
            _ = try client.replies(2)  // EHLO, MAIL
            for _ in 0..<count {
                let line = try client.reply().lines.last ?? ""
                if line == "250 2.1.5 Ok" { accepted += 1 } else if line == "452 4.5.3 Too many recipients" { refused += 1 } else { other.append(line) }
            }
            let tail = try client.replies(3)
            let elapsed = Date().timeIntervalSince(started)
            #expect(accepted == 1000)
            #expect(refused == count - 1000)
            #expect(other.isEmpty, "\(other.prefix(5))")
            #expect(tail[0].hasPrefix("354"))
            #expect(tail[1].hasPrefix("250 2.0.0 Ok: queued as "))
            #expect(tail[2] == "221 2.0.0 Bye")
            #expect(elapsed < 30, "took \(elapsed) s")
            let id = try #require(try server.messageIDs().first)
            #expect(try server.store.message(id: id)?.recipients.count == 1000)
            print("100001 RCPTs answered in \(String(format: "%.2f", elapsed)) s")
        }

        @Test("connection limits: max_connections and max_connections_per_client answer 421 4.7.0; a slot frees on close")
        func connectionLimits() throws {
            let dir = try makeTempDirectory("hato-sub-")
            let cert = try TestCertificate.make(in: dir)
            let server = try InProcessSubmission(smtpExtra: standardSubmissionSMTP(cert, extra: "max_connections: 5\nmax_connections_per_client: 3"), dir: dir)
            defer { server.shutdown() }
            var open: [RawSMTPClient] = []
            defer { open.forEach { $0.close() } }
            for _ in 0..<3 { open.append(try RawSMTPClient(server.address, from: "127.0.0.1")) }
            let fourth = try RawSMTPClient(server.address, from: "127.0.0.1", readGreeting: false)
            #expect(try fourth.reply().lines == ["421 4.7.0 relay.it.test Error: too many connections from 127.0.0.1, try again later"])
            #expect(fourth.isClosedByServer())
            for _ in 0..<2 { open.append(try RawSMTPClient(server.address, from: "127.0.0.2")) }
            let sixth = try RawSMTPClient(server.address, from: "127.0.0.3", readGreeting: false)
            #expect(try sixth.reply().lines == ["421 4.7.0 relay.it.test Error: too many connections, try again later"])
            open.removeFirst().close()
            try waitUntil("a session slot to free", timeout: 5) { server.server.activeSessions == 4 }
            let again = try RawSMTPClient(server.address, from: "127.0.0.3")
            #expect(try again.exchange("NOOP\r\n") == ["250 2.0.0 Ok"])
            again.close()
        }

        @Test("per-phase timeouts: silent client, trickled command, stalled DATA get 421 4.4.2; steady DATA is not cut off")
        func timeouts() throws {
            let dir = try makeTempDirectory("hato-sub-")
            let cert = try TestCertificate.make(in: dir)
            let server = try InProcessSubmission(smtpExtra: standardSubmissionSMTP(cert, extra: "command_timeout: 1s\ndata_timeout: 1s"), dir: dir)
            defer { server.shutdown() }
            let timeoutReply = "421 4.4.2 relay.it.test Error: timeout exceeded"
            // Silent after the greeting.
            var started = Date()
            let silent = try RawSMTPClient(server.address)
            #expect(try silent.replies(1) == [timeoutReply])
            #expect(Date().timeIntervalSince(started) < 3)
            #expect(silent.isClosedByServer())
            // One byte every 250 ms never completes a command within 1 s.
            started = Date()
            let trickle = try RawSMTPClient(server.address)
            for byte in Array("NOOP and more and more".utf8) {
                do { try trickle.send([byte]) } catch { break }
                usleep(250_000)
                if Date().timeIntervalSince(started) > 2 { break }
            }
            #expect(try trickle.replies(1) == [timeoutReply])
            // DATA that stalls.
            let stalled = try RawSMTPClient(server.address)
            #expect(try stalled.exchange(envelope + "Subject: x\r\n\r\npartial", replies: 4).last?.hasPrefix("354") == true)
            started = Date()
            #expect(try stalled.replies(1) == [timeoutReply])
            #expect(Date().timeIntervalSince(started) < 3)
            #expect(stalled.isClosedByServer())
            // DATA that keeps flowing for 2.5 s (longer than data_timeout) at ~40 kB/s is accepted.
            let steady = try RawSMTPClient(server.address)
            #expect(try steady.exchange(envelope, replies: 4).last?.hasPrefix("354") == true)
            started = Date()
            while Date().timeIntervalSince(started) < 2.5 {
                try steady.send(String(repeating: "steady data line\r\n", count: 200))
                usleep(100_000)
            }
            #expect(try steady.exchange(".\r\n").first?.hasPrefix("250 2.0.0 Ok: queued as ") == true)
            #expect(try server.messageIDs().count == 1)
        }

        @Test("a busy session is not cut off: each queued message restarts command_timeout (pipelined BDAT transactions for twice the timeout)")
        func queuedMessagesRestartTheCommandTimeout() throws {
            let dir = try makeTempDirectory("hato-sub-")
            let cert = try TestCertificate.make(in: dir)
            let server = try InProcessSubmission(smtpExtra: standardSubmissionSMTP(cert, extra: "command_timeout: 1s"), dir: dir)
            defer { server.shutdown() }
            let client = try RawSMTPClient(server.address)
            #expect(try client.exchange(ehlo).first?.hasPrefix("250") == true)
            let started = ContinuousClock.now
            var queued = 0
            // One write per transaction (MAIL, RCPT and BDAT … LAST with the body): the only
            // replies the client waits for come after a store.
            while started.duration(to: .now) < .milliseconds(2500) {
                let body = "Subject: busy \(queued)\r\n\r\nhello\r\n"
                let replies = try client.exchange("MAIL FROM:<app@example.org>\r\nRCPT TO:<user@hato.test>\r\nBDAT \(body.utf8.count) LAST\r\n" + body, replies: 3)
                #expect(replies[2].hasPrefix("250 2.0.0 Ok: queued as "), "transaction \(queued): \(replies)")
                guard replies[2].hasPrefix("250") else { break }
                queued += 1
                usleep(400_000)
            }
            #expect(queued >= 5)
            #expect(try client.exchange("QUIT\r\n") == ["221 2.0.0 Bye"])
            #expect(try server.messageIDs().count == queued)
        }

        @Test("a client that pipelines commands and never reads the replies: reading it stops, others are served, the session ends after command_timeout")
        func clientThatNeverReads() throws {
            let dir = try makeTempDirectory("hato-sub-")
            let cert = try TestCertificate.make(in: dir)
            let server = try InProcessSubmission(smtpExtra: standardSubmissionSMTP(cert, extra: "command_timeout: 1s"), dir: dir)
            defer { server.shutdown() }
            let flooder = try RawSMTPClient(server.address)
            let chunk = Array(String(repeating: "NOOP\r\n", count: 10_000).utf8)
            var pending = chunk[...]
            var sent = 0
            let started = ContinuousClock.now
            var lastProgress = started
            var refused = false
            // Writes without waiting until the server stops taking input or closes: its replies
            // pile up unread, and it must neither buffer them without bound nor keep reading.
            while started.duration(to: .now) < .seconds(20) && lastProgress.duration(to: .now) < .milliseconds(700) {
                let n: Int
                do { n = try flooder.socket.writeIfReady(Array(pending)) } catch {
                    refused = true  // closed by the server (its replies not taken within command_timeout)
                    break
                }
                if n > 0 {
                    sent += n
                    lastProgress = .now
                    pending = pending.dropFirst(n)
                    if pending.isEmpty { pending = chunk[...] }
                } else {
                    usleep(5_000)
                }
            }
            #expect(started.duration(to: .now) < .seconds(10), "the server kept taking input: \(sent) octets")
            // The kernel's buffers on both sides, and at most 64 KiB of replies held by the server.
            #expect(sent < 48 << 20, "\(sent) octets taken")
            // Others are served meanwhile.
            let other = try RawSMTPClient(server.address)
            #expect(try other.exchange("NOOP\r\n") == ["250 2.0.0 Ok"])
            other.close()
            // Its replies not taken within command_timeout, the server closes the session.
            let deadline = ContinuousClock.now + .seconds(5)
            while server.server.activeSessions > 0 && ContinuousClock.now < deadline { usleep(20_000) }
            #expect(server.server.activeSessions == 0)
            flooder.close()
            print("client that never reads: \(sent) octets of NOOPs taken; \(refused ? "closed by the server" : "the server stopped reading") after \(started.duration(to: .now))")
        }

        // MARK: - Coordinator process: memory, slow clients, real clients

        @Test("a 50 MB line without LF (as a command and inside DATA): memory stays bounded, other clients are served")
        func fiftyMegabyteLine() throws {
            let coordinator = try CoordinatorProcess(smtpExtra: """
                relay_networks: [127.0.0.0/8]
                max_message_size: 10MiB
                """)
            defer { coordinator.shutdown() }
            try coordinator.start()
            let baseline = try #require(coordinator.memoryKiB("VmRSS"))
            let chunk = [UInt8](repeating: UInt8(ascii: "a"), count: 1 << 20)
            func flood(_ client: RawSMTPClient) throws {
                for _ in 0..<50 { try client.send(chunk) }
            }
            func serveOther() throws {
                let other = try RawSMTPClient(SocketAddress(host: "127.0.0.1", port: coordinator.smtpPort))
                defer { other.close() }
                let r = try other.exchange(envelope + "Subject: meanwhile\r\n\r\nhi\r\n.\r\nQUIT\r\n", replies: 6)
                #expect(r[4].hasPrefix("250 2.0.0 Ok: queued as "), "\(r)")
            }
            let started = Date()
            // As a command line: discarded as it arrives, then one 500 once the LF comes.
            let command = try RawSMTPClient(SocketAddress(host: "127.0.0.1", port: coordinator.smtpPort), timeout: 60)
            try command.send(ehlo)
            _ = try command.replies(1)
            try flood(command)
            try serveOther()
            #expect(try command.exchange("\r\nNOOP\r\n", replies: 2) == ["500 5.5.2 Error: line too long", "250 2.0.0 Ok"])
            command.close()
            let commandPeak = try #require(coordinator.memoryKiB("VmHWM"))
            // Inside DATA: kept up to max_message_size (10 MiB), then counted only; 552 after the dot.
            let data = try RawSMTPClient(SocketAddress(host: "127.0.0.1", port: coordinator.smtpPort), timeout: 60)
            #expect(try data.exchange(envelope, replies: 4).last?.hasPrefix("354") == true)
            try flood(data)
            try serveOther()
            #expect(try data.exchange("\r\n.\r\nNOOP\r\n", replies: 2) == ["552 5.3.4 Message size exceeds fixed maximum message size", "250 2.0.0 Ok"])
            data.close()
            let elapsed = Date().timeIntervalSince(started)
            let peak = try #require(coordinator.memoryKiB("VmHWM"))
            #expect(try coordinator.queueCounts()["queued"] == 2, "only the two well-behaved messages were queued")
            #expect(commandPeak - baseline < 8 * 1024, "command line: peak \(commandPeak) kB vs baseline \(baseline) kB")
            #expect(peak - baseline < 48 * 1024, "DATA line: peak \(peak) kB vs baseline \(baseline) kB")
            #expect(elapsed < 30)
            print("50 MB line: coordinator VmRSS before \(baseline) kB; VmHWM after the command-line flood \(commandPeak) kB; after the DATA flood \(peak) kB; \(String(format: "%.1f", elapsed)) s")
        }

        @Test("300 clients sending one byte a second do not delay a well-behaved client; the command deadline ends them")
        func slowClients() throws {
            let coordinator = try CoordinatorProcess(smtpExtra: """
                relay_networks: [127.0.0.0/8]
                max_connections: 1000
                max_connections_per_client: 100
                command_timeout: 5s
                """)
            defer { coordinator.shutdown() }
            try coordinator.start()
            let address = SocketAddress(host: "127.0.0.1", port: coordinator.smtpPort)
            var slow: [Socket] = []
            defer { slow.forEach { $0.close() } }
            for i in 0..<300 {
                let s = try Socket.connect(to: address, from: "127.0.0.\(101 + i / 100)", timeout: 5)
                s.setTimeouts(read: 10, write: 5)
                slow.append(s)
            }
            let slowLine = Array("EHLO slow-client.it.test\r\n".utf8)
            let trickleStarted = Date()
            let ticker = Thread { [slow] in
                for second in 0..<4 {
                    for s in slow { try? s.write([slowLine[second]]) }
                    Thread.sleep(until: trickleStarted.addingTimeInterval(Double(second + 1)))
                }
            }
            ticker.start()
            var latencies: [TimeInterval] = []
            for round in 0..<3 {
                Thread.sleep(forTimeInterval: 0.7)
                let t0 = Date()
                let client = try RawSMTPClient(address, timeout: 10)
                let r = try client.exchange(envelope + "Subject: prompt \(round)\r\n\r\nhi\r\n.\r\nQUIT\r\n", replies: 6)
                latencies.append(Date().timeIntervalSince(t0))
                client.close()
                #expect(r[4].hasPrefix("250 2.0.0 Ok: queued as "), "\(r)")
            }
            #expect(latencies.allSatisfy { $0 < 1.0 }, "latencies \(latencies)")
            // The slow clients never finished a command: the 5 s command deadline ends each with 421.
            var timedOut = 0
            for s in slow {
                let reader = BufferedReader(stream: s)
                var lines: [String] = []
                while let line = try? reader.readLine(maxLength: 1000) { lines.append(String(decoding: line, as: UTF8.self)) }
                if lines.count == 2 && lines[0].hasPrefix("220 ") && lines[1].hasPrefix("421 4.4.2 ") { timedOut += 1 }
            }
            #expect(timedOut == 300)
            #expect(Date().timeIntervalSince(trickleStarted) < 20)
            print("well-behaved client latencies with 300 slow clients: \(latencies.map { String(format: "%.3f s", $0) })")
        }

        @Test("real clients: swaks --tls --auth PLAIN/LOGIN and --pipeline, smtplib starttls()+login(), smtp-source 1000 messages; all queued")
        func realClients() throws {
            let dir = try makeTempDirectory("hato-subproc-")
            let cert = try TestCertificate.make(in: dir)
            // The password hash comes from the CLI this issue adds, reading the password from stdin.
            let passwordFile = (dir as NSString).appendingPathComponent("password.txt")
            try "app-password\n".write(toFile: passwordFile, atomically: true, encoding: .utf8)
            let (hashStatus, hashOutput) = try runProgram("/bin/sh", ["-c", "\(try executablePath("hato-coordinator")) hash-password --iterations 20000 < \(passwordFile)"], dir: dir)
            #expect(hashStatus == 0, "\(hashOutput)")
            let hash = try #require(hashOutput.split(separator: "\n").first.map(String.init))
            #expect(hash.hasPrefix("$pbkdf2-sha256$20000$"))
            let coordinator = try CoordinatorProcess(smtpExtra: """
                relay_networks: [127.0.0.0/8]
                max_message_size: 10MiB
                tls: { certificate: "\(cert.certificate)", private_key: "\(cert.key)" }
                users: [ { name: app, password_hash: "\(hash)" } ]
                """, dir: dir)
            defer { coordinator.shutdown() }
            try coordinator.start()
            let port = coordinator.smtpPort
            for mechanism in ["PLAIN", "LOGIN"] {
                let (status, output) = try runProgram("/usr/bin/swaks", [
                    "--server", "127.0.0.1:\(port)", "--tls", "--auth", mechanism, "--auth-user", "app", "--auth-password", "app-password",
                    "--from", "app@example.org", "--to", "user@hato.test", "--helo", "swaks.it.test", "--timeout", "20",
                ], dir: dir)
                #expect(status == 0, "swaks \(mechanism): \(output)")
                #expect(output.contains("<~  235 2.7.0 Authentication successful"), "swaks \(mechanism)")
                #expect(output.contains("<~  250 2.0.0 Ok: queued as "), "swaks \(mechanism)")
            }
            // PIPELINING from a real client: MAIL, both RCPTs and DATA go out in one write (RFC 2920).
            let (pipeStatus, pipeOutput) = try runProgram("/usr/bin/swaks", [
                "--server", "127.0.0.1:\(port)", "--tls", "--auth", "PLAIN", "--auth-user", "app", "--auth-password", "app-password",
                "--pipeline", "--from", "app@example.org", "--to", "one@hato.test,two@hato.test", "--timeout", "20",
            ], dir: dir)
            #expect(pipeStatus == 0, "swaks --pipeline: \(pipeOutput)")
            #expect(pipeOutput.contains("~> MAIL FROM:<app@example.org>\n ~> RCPT TO:<one@hato.test>\n ~> RCPT TO:<two@hato.test>\n ~> DATA\n"),
                    "swaks sent the envelope as one pipelined group: \(pipeOutput)")
            #expect(pipeOutput.contains("<~  250 2.0.0 Ok: queued as "))
            let (wrongStatus, wrongOutput) = try runProgram("/usr/bin/swaks", [
                "--server", "127.0.0.1:\(port)", "--tls", "--auth", "PLAIN", "--auth-user", "app", "--auth-password", "nope",
                "--from", "app@example.org", "--to", "user@hato.test", "--timeout", "20",
            ], dir: dir)
            #expect(wrongStatus != 0)
            #expect(wrongOutput.contains("535 5.7.8"))
            let script = """
                import smtplib, ssl, sys
                ctx = ssl.create_default_context(cafile=sys.argv[2])
                s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="smtplib.it.test", timeout=30)
                s.starttls(context=ctx)
                s.login("app", "app-password")
                refused = s.sendmail("app@example.org", ["user@hato.test"], b"Subject: smtplib\\r\\n\\r\\nhello\\r\\n")
                assert refused == {}, refused
                s.quit()
                print("OK", s.sock is None)
                """
            let scriptPath = (dir as NSString).appendingPathComponent("starttls.py")
            try script.write(toFile: scriptPath, atomically: true, encoding: .utf8)
            // smtplib verifies the certificate against the host it connected to (127.0.0.1, an IP SAN of the test certificate).
            let (pyStatus, pyOutput) = try runProgram("/usr/bin/python3", [scriptPath, "\(port)", cert.certificate], dir: dir)
            #expect(pyStatus == 0, "\(pyOutput)")
            // smtp-source: 1000 messages over 10 parallel sessions, several messages per session. (smtp-source
            // speaks HELO and waits for each reply; the pipelined peer above is swaks.)
            let started = Date()
            let (sourceStatus, sourceOutput) = try runProgram("/usr/sbin/smtp-source", [
                "-s", "10", "-m", "1000", "-d", "-l", "2048", "-f", "load@example.org", "-t", "sink@hato.test",
                "-M", "source.it.test", "127.0.0.1:\(port)",
            ], dir: dir, timeout: 120)
            let elapsed = Date().timeIntervalSince(started)
            #expect(sourceStatus == 0, "\(sourceOutput)")
            let counts = try coordinator.queueCounts()
            #expect(counts["queued"] == 1000 + 3 + 2, "\(counts)")
            print("smtp-source: 1000 messages in \(String(format: "%.1f", elapsed)) s")
        }
    }
}
