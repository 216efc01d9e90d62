import Foundation
import Testing
@testable import HatoConfig
@testable import HatoIO
@testable import HatoNode
@testable import SMTPCore

/// The SMTP client against the scripted MX: every server behaviour the issue lists, exact wire
/// bytes, STARTTLS, BDAT, connection reuse (filter: `DeliveryScriptTests`).
@Suite("DeliveryScriptTests", .serialized)
struct DeliveryScriptTests {}

private func request(_ rcpts: [DeliveryRecipient], body: [UInt8] = sampleMessage(), from: String = "news@example.org",
                     ip: String = "127.0.0.1", tls: SMTPTLSPolicy = .opportunistic) -> DeliveryRequest {
    var r = DeliveryRequest(reversePath: from, recipients: rcpts, body: body, sendingIP: ip, heloName: "mta.example.org")
    r.tlsPolicy = tls
    return r
}

private func deliverer(pool: SMTPConnectionPool = SMTPConnectionPool(idleTimeout: 0), tls: (any OutboundTLSClient)? = nil,
                       timeouts: SMTPClientTimeouts = testTimeouts) -> SMTPDeliverer {
    SMTPDeliverer(timeouts: timeouts, pool: pool, tlsClient: tls)
}

/// A self-signed certificate and key for `mx.dest.test`, made with the openssl CLI.
private func testCertificate(in dir: String) throws -> (cert: String, key: String) {
    let cert = dir + "/cert.pem", key = dir + "/key.pem"
    let p = try Spawned("/usr/bin/openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                                             "-days", "2", "-subj", "/CN=mx.dest.test"], logPath: dir + "/openssl.log")
    guard p.wait(timeout: 30) == 0 else { throw TestFailure("openssl req failed: \(p.log)") }
    return (cert, key)
}

extension DeliveryScriptTests {
    @Suite("replies")
    struct Replies {
        @Test("exact wire bytes: pipelined envelope from the bound sending IP, CRLF and dot-stuffing, QUIT")
        func exactWire() throws {
            let mx = try ScriptedMX(ScriptedMX.Script(rcpt: { _, a in a.hasPrefix("r2") ? "550 5.1.1 no such user\r\n" : "250 2.1.5 ok\r\n" }))
            defer { mx.stop() }
            let body = Array("From: a@example.org\r\nSubject: hi\r\n\r\n.leading dot\r\n..two\nbare LF line\r\nlast line without CRLF".utf8)
            let report = deliverer().deliver(request(recipients(2), body: body, ip: "127.0.0.10"), to: [target(mx)])
            mx.stop()
            #expect(report.outcomes == [
                RecipientOutcome(recipientID: 1, status: .delivered, reply: DeliveryStatus(code: 250, enhanced: "2.0.0", text: "ok: queued as C1T1")),
                RecipientOutcome(recipientID: 2, status: .failed, reply: DeliveryStatus(code: 550, enhanced: "5.1.1", text: "no such user")),
            ])
            #expect(report.mxHost == "mx.dest.test")
            #expect(mx.connections.map(\.peer) == ["127.0.0.10"])
            let sent = "From: a@example.org\r\nSubject: hi\r\n\r\n.leading dot\r\n..two\r\nbare LF line\r\nlast line without CRLF\r\n"
            #expect(mx.connections.first?.text == "EHLO mta.example.org\r\n" +
                    "MAIL FROM:<news@example.org> SIZE=\(sent.utf8.count)\r\nRCPT TO:<r1@dest.test>\r\nRCPT TO:<r2@dest.test>\r\nDATA\r\n" +
                    "From: a@example.org\r\nSubject: hi\r\n\r\n..leading dot\r\n...two\r\nbare LF line\r\nlast line without CRLF\r\n.\r\n" +
                    "QUIT\r\n")
            #expect(mx.messages.first?.content == Array(sent.utf8))
            let session = report.sessions[1]
            #expect(session?.sendingIP == "127.0.0.10")
            #expect(session?.reused == false)
            #expect(session?.tls == nil)
        }

        @Test("multiline replies, bare codes, LF-only lines and enhanced codes on every line")
        func multilineAndBare() throws {
            let mx = try ScriptedMX(ScriptedMX.Script(
                banner: "220-mx.test ESMTP\r\n220-second banner line\r\n220 third\r\n",
                ehlo: { _ in "250-mx.test\n250-PIPELINING\n250\n" },
                mail: { _ in "250-2.1.0 sender\r\n250-2.1.0 looks\r\n250 2.1.0 fine\r\n" },
                rcpt: { _, _ in "250\r\n" },
                data: { _ in "354\r\n" },
                final: { _ in "250-2.0.0 queued\n250 2.0.0 as ABC\n" }))
            defer { mx.stop() }
            let report = deliverer().deliver(request(recipients(2)), to: [target(mx)])
            #expect(report.outcomes.map(\.status) == [.delivered, .delivered])
            #expect(report.outcomes.first?.reply.enhanced?.description == "2.0.0")
            #expect(report.outcomes.first?.reply.text == "queued as ABC")
            #expect(mx.messages.count == 1)
        }

        @Test("an overlong reply is a protocol error: deferred 4.5.0, the session closed, no crash")
        func overlong() throws {
            let long = "250-" + String(repeating: "x", count: 70_000) + "\r\n250 ok\r\n"
            let mx = try ScriptedMX(ScriptedMX.Script(mail: { _ in long }))
            defer { mx.stop() }
            let report = deliverer().deliver(request(recipients(1)), to: [target(mx)])
            #expect(report.outcomes.first?.status == .deferred)
            #expect(report.outcomes.first?.reply.enhanced?.description == "4.5.0")
        }

        @Test("421 at EHLO: the next MX is tried and delivers; the first gets no QUIT")
        func fourTwentyOneAtEHLO() throws {
            let busy = try ScriptedMX(ScriptedMX.Script(ehlo: { _ in "421 4.7.0 mx1 too busy\r\n" }))
            defer { busy.stop() }
            let good = try ScriptedMX()
            defer { good.stop() }
            let report = deliverer().deliver(request(recipients(1)), to: [target(busy, host: "mx1.dest.test"), target(good, host: "mx2.dest.test")])
            busy.stop(); good.stop()
            #expect(report.outcomes.map(\.status) == [.delivered])
            #expect(report.mxHost == "mx2.dest.test")
            #expect(busy.connections.first?.commands == ["EHLO mta.example.org"])
            #expect(good.messages.count == 1)
        }

        @Test("421 at MAIL, at DATA and after the final dot: deferred with the 421 and closed without QUIT")
        func fourTwentyOneInTransaction() throws {
            let cases: [(String, ScriptedMX.Script, [String])] = [
                ("MAIL", ScriptedMX.Script(ehlo: { _ in ScriptedMX.ehlo(["8BITMIME"]) }, mail: { _ in "421 4.3.2 shutting down\r\n" }),
                 ["EHLO mta.example.org", "MAIL FROM:<news@example.org>"]),
                ("DATA", ScriptedMX.Script(ehlo: { _ in ScriptedMX.ehlo(["8BITMIME"]) }, data: { _ in "421 4.3.2 shutting down\r\n" }),
                 ["EHLO mta.example.org", "MAIL FROM:<news@example.org>", "RCPT TO:<r1@dest.test>", "DATA"]),
                ("final dot", ScriptedMX.Script(ehlo: { _ in ScriptedMX.ehlo(["8BITMIME"]) }, final: { _ in "421 4.3.2 shutting down\r\n" }),
                 ["EHLO mta.example.org", "MAIL FROM:<news@example.org>", "RCPT TO:<r1@dest.test>", "DATA"]),
            ]
            for (name, script, commands) in cases {
                let mx = try ScriptedMX(script)
                let other = try ScriptedMX()
                let report = deliverer().deliver(request(recipients(1)), to: [target(mx), target(other, host: "mx2.dest.test")])
                mx.stop(); other.stop()
                #expect(report.outcomes.first?.status == .deferred, "\(name)")
                #expect(report.outcomes.first?.reply.code == 421, "\(name)")
                #expect(report.outcomes.first?.reply.enhanced?.description == "4.3.2", "\(name)")
                #expect(mx.connections.first?.commands == commands, "\(name)")
                // A transaction already under way is not repeated on another MX.
                #expect(other.connectionCount == 0, "\(name)")
            }
        }

        @Test("452 after 2 recipients: 7 recipients are all delivered in 4 transactions on one connection")
        func fourFiftyTwo() throws {
            let mx = try ScriptedMX(ScriptedMX.Script(rcpt: { ctx, _ in
                ctx.acceptedInTransaction < 2 ? "250 2.1.5 ok\r\n" : "452 4.5.3 too many recipients\r\n"
            }))
            defer { mx.stop() }
            let report = deliverer().deliver(request(recipients(7)), to: [target(mx)])
            mx.stop()
            #expect(report.outcomes.map(\.status) == Array(repeating: .delivered, count: 7))
            #expect(mx.messages.map(\.recipients) == [["r1@dest.test", "r2@dest.test"], ["r3@dest.test", "r4@dest.test"],
                                                      ["r5@dest.test", "r6@dest.test"], ["r7@dest.test"]])
            #expect(mx.connectionCount == 1)
            let commands = mx.connections.first?.commands ?? []
            #expect(commands.filter { $0.hasPrefix("MAIL") }.count == 4)
            // Each transaction ended at its content reply: the next MAIL needs no RSET.
            #expect(commands.filter { $0 == "RSET" }.count == 0)
            #expect(report.sessions[7]?.messageOnConnection == 4)
        }

        @Test("a server that accepts no recipient after 452 gets no endless retries: deferred with the 452")
        func fourFiftyTwoNoProgress() throws {
            let mx = try ScriptedMX(ScriptedMX.Script(rcpt: { _, _ in "452 4.5.3 too many recipients\r\n" }))
            defer { mx.stop() }
            let report = deliverer().deliver(request(recipients(3)), to: [target(mx)])
            mx.stop()
            #expect(report.outcomes.allSatisfy { $0.status == .deferred && $0.reply.code == 452 })
            #expect(mx.connections.first?.commands.filter { $0.hasPrefix("MAIL") }.count == 1)
        }
    }
}

extension DeliveryScriptTests {
    @Suite("content")
    struct Content {
        @Test("no 8BITMIME: 8-bit body converted to quoted-printable 7-bit MIME before sending")
        func noEightBitMIME() throws {
            let mx = try ScriptedMX(ScriptedMX.Script(ehlo: { _ in ScriptedMX.ehlo(["PIPELINING", "SIZE 1000000"]) }))
            defer { mx.stop() }
            let text = "Caf\u{E9} cr\u{E8}me br\u{FB}l\u{E9}e \u{2014} na\u{EF}ve = fine\r\n"
            let body = Array("From: news@example.org\r\nTo: r1@dest.test\r\nSubject: menu\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\(text)".utf8)
            let report = deliverer().deliver(request(recipients(1), body: body), to: [target(mx)])
            mx.stop()
            #expect(report.outcomes.map(\.status) == [.delivered])
            #expect(report.sessions[1]?.converted7Bit == true)
            let received = try #require(mx.messages.first)
            #expect(received.content.allSatisfy { $0 < 0x80 })
            #expect(!received.mailFrom.contains("BODY=8BITMIME"))
            let wire = String(decoding: received.content, as: UTF8.self)
            #expect(wire.contains("Content-Transfer-Encoding: quoted-printable\r\n"))
            #expect(!wire.contains("Content-Transfer-Encoding: 8bit"))
            #expect(wire.contains("Caf=C3=A9 cr=C3=A8me br=C3=BBl=C3=A9e =E2=80=94 na=C3=AFve =3D fine\r\n"))
        }

        @Test("8BITMIME offered: the 8-bit body goes as is with BODY=8BITMIME")
        func eightBitMIME() throws {
            let mx = try ScriptedMX()
            defer { mx.stop() }
            let body = Array("From: news@example.org\r\nSubject: x\r\n\r\nna\u{EF}ve\r\n".utf8)
            let report = deliverer().deliver(request(recipients(1), body: body), to: [target(mx)])
            mx.stop()
            #expect(report.outcomes.map(\.status) == [.delivered])
            #expect(mx.messages.first?.mailFrom == "MAIL FROM:<news@example.org> SIZE=\(body.count) BODY=8BITMIME")
            #expect(mx.messages.first?.content == body)
        }

        @Test("no SMTPUTF8: UTF-8 headers or addresses fail permanently (5.6.7) and no MAIL is sent")
        func noSMTPUTF8() throws {
            let mx = try ScriptedMX(ScriptedMX.Script(ehlo: { _ in ScriptedMX.ehlo(["PIPELINING", "8BITMIME"]) }))
            defer { mx.stop() }
            let body = Array("From: \u{5F20}\u{4F1F} <news@example.org>\r\nSubject: \u{4F60}\u{597D}\r\n\r\nhi\r\n".utf8)
            let report = deliverer().deliver(request(recipients(2), body: body), to: [target(mx)])
            let utf8Sender = deliverer().deliver(request(recipients(1), from: "n\u{E9}ws@example.org"), to: [target(mx)])
            mx.stop()
            #expect(report.outcomes.allSatisfy { $0.status == .failed && $0.reply.code == 553 && $0.reply.enhanced?.description == "5.6.7" })
            #expect(utf8Sender.outcomes.first?.reply.enhanced?.description == "5.6.7")
            #expect(mx.connections.allSatisfy { !$0.commands.contains { $0.hasPrefix("MAIL") } })
            #expect(mx.connections.first?.commands == ["EHLO mta.example.org", "QUIT"])
            // With SMTPUTF8 offered the same message goes out, flagged.
            let capable = try ScriptedMX()
            defer { capable.stop() }
            let ok = deliverer().deliver(request(recipients(1), body: body), to: [target(capable)])
            capable.stop()
            #expect(ok.outcomes.map(\.status) == [.delivered])
            #expect(capable.messages.first?.mailFrom.hasSuffix(" BODY=8BITMIME SMTPUTF8") == true)
        }

        @Test("CHUNKING: BDAT LAST with the raw content (no dot-stuffing)")
        func bdat() throws {
            let mx = try ScriptedMX(ScriptedMX.Script(ehlo: { _ in ScriptedMX.ehlo(["PIPELINING", "CHUNKING", "8BITMIME"]) }))
            defer { mx.stop() }
            let body = sampleMessage("bdat", body: ".starts with a dot\r\n.\r\nend\r\n")
            let report = deliverer().deliver(request(recipients(2), body: body), to: [target(mx)])
            mx.stop()
            #expect(report.outcomes.map(\.status) == [.delivered, .delivered])
            let m = try #require(mx.messages.first)
            #expect(m.viaBDAT)
            #expect(m.content == body)
            #expect(mx.connections.first?.commands.contains("BDAT \(body.count) LAST") == true)
            #expect(mx.connections.first?.commands.contains("DATA") == false)
            // PIPELINING too: MAIL, the RCPTs and BDAT LAST with the content went before any reply (RFC 3030 §4.2).
            #expect(mx.connections.first?.text == "EHLO mta.example.org\r\n" +
                    "MAIL FROM:<news@example.org>\r\nRCPT TO:<r1@dest.test>\r\nRCPT TO:<r2@dest.test>\r\nBDAT \(body.count) LAST\r\n" +
                    String(decoding: body, as: UTF8.self) + "QUIT\r\n")
            #expect(mx.connections.first?.arrivedWithMail.first.map { String(decoding: $0, as: UTF8.self) } ==
                    "RCPT TO:<r1@dest.test>\r\nRCPT TO:<r2@dest.test>\r\nBDAT \(body.count) LAST\r\n" + String(decoding: body, as: UTF8.self))
        }

        @Test("pipelined BDAT with every recipient refused: the RCPT replies decide, the chunk's refusal is read, the session stays in step")
        func bdatNoRecipient() throws {
            let mx = try ScriptedMX(ScriptedMX.Script(
                ehlo: { _ in ScriptedMX.ehlo(["PIPELINING", "CHUNKING"]) },
                rcpt: { _, a in a.hasPrefix("r1") ? "550 5.1.1 no such user\r\n" : "450 4.2.1 mailbox busy\r\n" },
                final: { c in c.acceptedInTransaction == 0 ? "554 5.5.1 no valid recipients\r\n" : "250 2.0.0 ok\r\n" }))
            defer { mx.stop() }
            let body = sampleMessage("refused")
            let report = deliverer().deliver(request(recipients(2), body: body), to: [target(mx)])
            mx.stop()
            #expect(report.outcomes == [
                RecipientOutcome(recipientID: 1, status: .failed, reply: DeliveryStatus(code: 550, enhanced: "5.1.1", text: "no such user")),
                RecipientOutcome(recipientID: 2, status: .deferred, reply: DeliveryStatus(code: 450, enhanced: "4.2.1", text: "mailbox busy")),
            ])
            #expect(mx.messages.isEmpty)
            // The 554 to the chunk was read as the chunk's reply: QUIT came after it, nothing else.
            #expect(mx.connections.first?.commands.suffix(2) == ["BDAT \(body.count) LAST", "QUIT"])
        }

        @Test("a line over 998 octets is never sent: 554 5.6.0 without connecting")
        func longLine() throws {
            let mx = try ScriptedMX()
            defer { mx.stop() }
            let body = Array(("From: news@example.org\r\n\r\n" + String(repeating: "y", count: 999) + "\r\n").utf8)
            let report = deliverer().deliver(request(recipients(1), body: body), to: [target(mx)])
            mx.stop()
            #expect(report.outcomes.first?.status == .failed)
            #expect(report.outcomes.first?.reply.enhanced?.description == "5.6.0")
            #expect(mx.connectionCount == 0)
        }
    }
}

extension DeliveryScriptTests {
    @Suite("timeouts and TLS")
    struct TimeoutsAndTLS {
        @Test("a server that never sends its banner: greeting timeout, next MX; alone, deferred 4.4.2")
        func noBanner() throws {
            let silent = try ScriptedMX(ScriptedMX.Script(banner: nil))
            defer { silent.stop() }
            let good = try ScriptedMX()
            defer { good.stop() }
            var t = testTimeouts
            t.greeting = 0.5
            let start = Date()
            let fallback = deliverer(timeouts: t).deliver(request(recipients(1)), to: [target(silent), target(good, host: "mx2.dest.test")])
            #expect(fallback.outcomes.map(\.status) == [.delivered])
            #expect(fallback.mxHost == "mx2.dest.test")
            let alone = deliverer(timeouts: t).deliver(request(recipients(1)), to: [target(silent)])
            #expect(Date().timeIntervalSince(start) < 5)
            #expect(alone.outcomes.first?.status == .deferred)
            #expect(alone.outcomes.first?.reply.enhanced?.description == "4.4.2")
            #expect(alone.outcomes.first?.reply.text.contains("greeting") == true)
        }

        @Test("a server that never answers the final dot: data_done timeout, deferred 4.4.2, no other MX tried")
        func noFinalReply() throws {
            let stall = try ScriptedMX(ScriptedMX.Script(final: { _ in nil }))
            defer { stall.stop() }
            let other = try ScriptedMX()
            defer { other.stop() }
            var t = testTimeouts
            t.dataDone = 0.5
            let start = Date()
            let report = deliverer(timeouts: t).deliver(request(recipients(2)), to: [target(stall), target(other, host: "mx2.dest.test")])
            #expect(Date().timeIntervalSince(start) < 5)
            #expect(report.outcomes.allSatisfy { $0.status == .deferred && $0.reply.enhanced?.description == "4.4.2" })
            #expect(report.outcomes.first?.reply.text.contains("end-of-data") == true)
            #expect(other.connectionCount == 0)
        }

        @Test("bytes after the 220 to STARTTLS are a protocol error: no handshake, deferred 4.5.0")
        func startTLSInjection() throws {
            let mx = try ScriptedMX(ScriptedMX.Script(ehlo: { _ in ScriptedMX.ehlo(["PIPELINING", "STARTTLS"]) },
                                                      startTLS: "220 2.0.0 ready\r\n250 2.0.0 injected\r\n"))
            defer { mx.stop() }
            let report = deliverer(tls: try OpenSSLTLSClient()).deliver(request(recipients(1)), to: [target(mx)])
            mx.stop()
            #expect(report.outcomes.first?.status == .deferred)
            #expect(report.outcomes.first?.reply.enhanced?.description == "4.5.0")
            #expect(report.outcomes.first?.reply.text.contains("after its 220 reply to STARTTLS") == true)
            #expect(mx.connections.first?.commands == ["EHLO mta.example.org", "STARTTLS"])
            #expect(mx.messages.isEmpty)
        }

        @Test("STARTTLS: delivered over TLS with version and cipher in the result; EHLO is repeated")
        func startTLS() throws {
            let dir = try temporaryDirectory("hato-tls")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let (cert, key) = try testCertificate(in: dir)
            let server = try TLSContext.server(certificateChainPath: cert, privateKeyPath: key)
            let mx = try ScriptedMX(ScriptedMX.Script(ehlo: { _ in ScriptedMX.ehlo(["PIPELINING", "8BITMIME", "STARTTLS"]) },
                                                      startTLS: "220 2.0.0 go ahead\r\n", tls: server))
            defer { mx.stop() }
            let report = deliverer(tls: try OpenSSLTLSClient()).deliver(request(recipients(1)), to: [target(mx)])
            mx.stop()
            #expect(report.outcomes.map(\.status) == [.delivered])
            let tls = try #require(report.sessions[1]?.tls)
            #expect(tls.version == "TLSv1.3")
            #expect(!tls.cipher.isEmpty)
            #expect(!tls.verified)   // self-signed: reported, not enforced
            #expect(mx.connections.first?.commands.filter { $0.hasPrefix("EHLO") }.count == 2)
            #expect(mx.messages.count == 1)
        }

        @Test("TLS handshake failure: opportunistic retries that MX in plaintext; required defers 4.7.x")
        func handshakeFailure() throws {
            // The server says 220 to STARTTLS and then hangs up: the handshake fails.
            let script = ScriptedMX.Script(ehlo: { _ in ScriptedMX.ehlo(["PIPELINING", "STARTTLS"]) }, startTLS: "220 2.0.0 go ahead\r\n")
            let mx = try ScriptedMX(script)
            defer { mx.stop() }
            let report = deliverer(tls: try OpenSSLTLSClient()).deliver(request(recipients(1)), to: [target(mx)])
            #expect(report.outcomes.map(\.status) == [.delivered])
            #expect(report.sessions[1]?.tls == nil)
            #expect(mx.connectionCount == 2)
            #expect(mx.connections.last?.commands.contains("STARTTLS") == false)

            let strict = try ScriptedMX(script)
            defer { strict.stop() }
            let required = deliverer(tls: try OpenSSLTLSClient()).deliver(request(recipients(1), tls: .required), to: [target(strict)])
            #expect(required.outcomes.first?.status == .deferred)
            #expect(required.outcomes.first?.reply.enhanced?.description == "4.7.5")
            #expect(strict.connectionCount == 1)

            let plain = try ScriptedMX()
            defer { plain.stop() }
            let notOffered = deliverer(tls: try OpenSSLTLSClient()).deliver(request(recipients(1), tls: .required), to: [target(plain)])
            #expect(notOffered.outcomes.first?.reply.enhanced?.description == "4.7.4")
            #expect(plain.messages.isEmpty)
        }

        @Test("the lease deadline fences the content: nothing is sent once it passed")
        func fencing() throws {
            let mx = try ScriptedMX()
            defer { mx.stop() }
            var r = request(recipients(1))
            r.notAfter = Date().addingTimeInterval(-1)
            r.shapingDeadline = Date().addingTimeInterval(5)
            let report = deliverer().deliver(r, to: [target(mx)])
            mx.stop()
            #expect(report.outcomes.first?.status == .deferred)
            #expect(mx.messages.isEmpty)
        }

        @Test("every target refused: deferred 451 4.4.1 naming the last one; wrong address family skipped")
        func allRefused() throws {
            let p1 = try refusedPort(), p2 = try refusedPort()
            let report = deliverer().deliver(request(recipients(2)), to: [
                DeliveryTarget(host: "mx1", address: "127.0.0.1", port: p1), DeliveryTarget(host: "mx2", address: "127.0.0.1", port: p2),
            ])
            #expect(report.mxHost == nil)
            for o in report.outcomes {
                #expect(o.status == .deferred)
                #expect(o.reply.code == 451)
                #expect(o.reply.enhanced?.description == "4.4.1")
                #expect(o.reply.text.contains("mx2[127.0.0.1]:\(p2)"))
            }
            let v6 = deliverer().deliver(request(recipients(1)), to: [DeliveryTarget(host: "mx6", address: "::1", port: p1)])
            #expect(v6.outcomes.allSatisfy { $0.status == .deferred && $0.reply.enhanced?.description == "4.4.1" })
            #expect(deliverer().deliver(request(recipients(1)), to: []).outcomes.map(\.reply.code) == [451])
        }
    }
}

extension DeliveryScriptTests {
    @Suite("connection reuse")
    struct Reuse {
        @Test("messages share one connection, MAIL right after the previous end of data; the idle session is closed with QUIT later")
        func reuse() throws {
            let mx = try ScriptedMX()
            defer { mx.stop() }
            let pool = SMTPConnectionPool(idleTimeout: 0.4)
            defer { pool.shutdown() }
            let d = deliverer(pool: pool)
            for i in 1...3 {
                let report = d.deliver(request(recipients(1), body: sampleMessage("\(i)")), to: [target(mx)])
                #expect(report.outcomes.map(\.status) == [.delivered])
                #expect(report.sessions[1]?.reused == (i > 1))
                #expect(report.sessions[1]?.messageOnConnection == i)
            }
            #expect(mx.connectionCount == 1)
            #expect(pool.idleCount == 1)
            try waitFor("idle session closed") { pool.idleCount == 0 && pool.openConnections.isEmpty }
            mx.stop()
            let commands = mx.connections.first?.commands ?? []
            // RFC 5321 §4.1.1.4: the end of data clears the server's state, so no RSET round trip.
            #expect(commands.filter { $0 == "RSET" }.count == 0)
            #expect(commands.filter { $0.hasPrefix("MAIL") }.count == 3)
            #expect(commands.last == "QUIT")
            #expect(mx.messages.map(\.transaction) == [1, 2, 3])
        }

        @Test("RSET before reuse when the last transaction ended before its content (every RCPT refused)")
        func resetAfterAbortedTransaction() throws {
            // Without PIPELINING the client stops after the refused RCPT: the server still holds
            // the reverse-path of transaction 1.
            let mx = try ScriptedMX(ScriptedMX.Script(ehlo: { _ in ScriptedMX.ehlo(["8BITMIME", "ENHANCEDSTATUSCODES"]) },
                                                      rcpt: { ctx, _ in ctx.transaction == 1 ? "550 5.1.1 no such user\r\n" : "250 2.1.5 ok\r\n" }))
            defer { mx.stop() }
            let pool = SMTPConnectionPool(idleTimeout: 30)
            defer { pool.shutdown() }
            let d = deliverer(pool: pool)
            #expect(d.deliver(request(recipients(1)), to: [target(mx)]).outcomes.map(\.status) == [.failed])
            let second = d.deliver(request(recipients(1), body: sampleMessage("2")), to: [target(mx)])
            #expect(second.outcomes.map(\.status) == [.delivered])
            #expect(second.sessions[1]?.reused == true)
            mx.stop()
            let commands = mx.connections.first?.commands ?? []
            let mails = commands.indices.filter { commands[$0].hasPrefix("MAIL") }
            #expect(mails.count == 2)
            #expect(mails.count == 2 && commands[mails[1] - 1] == "RSET")
            #expect(mx.connectionCount == 1)
        }

        @Test("a session idle longer than unprobedIdle is probed with RSET before reuse (a silently dropped one is found fast)")
        func idleProbe() throws {
            let mx = try ScriptedMX()
            defer { mx.stop() }
            let pool = SMTPConnectionPool(idleTimeout: 30)
            defer { pool.shutdown() }
            var timeouts = testTimeouts
            timeouts.unprobedIdle = 0.3
            let d = deliverer(pool: pool, timeouts: timeouts)
            for i in 1...2 {
                #expect(d.deliver(request(recipients(1), body: sampleMessage("\(i)")), to: [target(mx)]).outcomes.map(\.status) == [.delivered])
            }
            Thread.sleep(forTimeInterval: 0.5)
            #expect(d.deliver(request(recipients(1), body: sampleMessage("3")), to: [target(mx)]).outcomes.map(\.status) == [.delivered])
            mx.stop()
            let commands = mx.connections.first?.commands ?? []
            let mails = commands.indices.filter { commands[$0].hasPrefix("MAIL") }
            #expect(mails.count == 3)
            // Message 2 followed message 1 at once: no probe. Message 3 came after 0.5 s idle: RSET first.
            #expect(mails.count == 3 && commands[mails[1] - 1] != "RSET" && commands[mails[2] - 1] == "RSET")
            #expect(mx.connectionCount == 1)
        }

        @Test("an idle session the server drops unanswered at MAIL: retried at once on a new connection, delivered once")
        func droppedAtMail() throws {
            // The second transaction on connection 1 meets a server that hangs up without a
            // reply, as when its idle timeout fires just as the client writes MAIL.
            let mx = try ScriptedMX(ScriptedMX.Script(hangUpAtMail: { ctx in ctx.connection == 1 && ctx.transaction == 2 }))
            defer { mx.stop() }
            let pool = SMTPConnectionPool(idleTimeout: 30)
            defer { pool.shutdown() }
            let d = deliverer(pool: pool)
            #expect(d.deliver(request(recipients(1)), to: [target(mx)]).outcomes.map(\.status) == [.delivered])
            let start = Date()
            let second = d.deliver(request(recipients(1), body: sampleMessage("2")), to: [target(mx)])
            #expect(Date().timeIntervalSince(start) < 1)
            #expect(second.outcomes.map(\.status) == [.delivered])
            #expect(second.sessions[1]?.reused == false)
            #expect(mx.connectionCount == 2)
            #expect(mx.messages.count == 2)
            #expect(mx.messages.map(\.connection) == [1, 2])
            #expect(pool.openConnections.values.reduce(0, +) == 1)
        }

        @Test("a dead pooled connection is replaced at once: the message is not delayed")
        func deadConnection() throws {
            let mx = try ScriptedMX(ScriptedMX.Script(closeAfterMessage: true))
            defer { mx.stop() }
            let pool = SMTPConnectionPool(idleTimeout: 30)
            defer { pool.shutdown() }
            let d = deliverer(pool: pool)
            #expect(d.deliver(request(recipients(1)), to: [target(mx)]).outcomes.map(\.status) == [.delivered])
            try waitFor("the server closed the session") { mx.activeCount == 0 }
            let start = Date()
            let second = d.deliver(request(recipients(1), body: sampleMessage("2")), to: [target(mx)])
            #expect(Date().timeIntervalSince(start) < 1)
            #expect(second.outcomes.map(\.status) == [.delivered])
            #expect(second.sessions[1]?.reused == false)
            #expect(mx.connectionCount == 2)
            #expect(pool.openConnections.values.reduce(0, +) == 1)
        }

        @Test("pipelined BDAT on a session the server had closed: found before anything is written (the reuse check), the message goes out at once on a new one")
        func deadConnectionPipelined() throws {
            let mx = try ScriptedMX(ScriptedMX.Script(ehlo: { _ in ScriptedMX.ehlo(["PIPELINING", "CHUNKING"]) }, closeAfterMessage: true))
            defer { mx.stop() }
            let pool = SMTPConnectionPool(idleTimeout: 30)
            defer { pool.shutdown() }
            let d = deliverer(pool: pool)
            #expect(d.deliver(request(recipients(1)), to: [target(mx)]).outcomes.map(\.status) == [.delivered])
            try waitFor("the server closed the session") { mx.activeCount == 0 }
            let second = d.deliver(request(recipients(1), body: sampleMessage("2")), to: [target(mx)])
            #expect(second.outcomes.map(\.status) == [.delivered])
            #expect(second.sessions[1]?.reused == false)
            #expect(mx.connectionCount == 2)
            #expect(mx.messages.map(\.viaBDAT) == [true, true])
            // The dead session got no byte of the second message.
            #expect(mx.connections.first { $0.index == 1 }?.commands.filter { $0.hasPrefix("MAIL") }.count == 1)
        }

        @Test("pipelined BDAT, the server hangs up without a reply after the content went out: deferred, not sent again at once (it may have been taken)")
        func droppedAfterPipelinedContent() throws {
            let mx = try ScriptedMX(ScriptedMX.Script(ehlo: { _ in ScriptedMX.ehlo(["PIPELINING", "CHUNKING"]) },
                                                      hangUpAtMail: { ctx in ctx.connection == 1 && ctx.transaction == 2 }))
            defer { mx.stop() }
            let pool = SMTPConnectionPool(idleTimeout: 30)
            defer { pool.shutdown() }
            let d = deliverer(pool: pool)
            #expect(d.deliver(request(recipients(1)), to: [target(mx)]).outcomes.map(\.status) == [.delivered])
            let second = d.deliver(request(recipients(1), body: sampleMessage("2")), to: [target(mx)])
            #expect(second.outcomes.map(\.status) == [.deferred])
            #expect(second.outcomes.first?.reply.enhanced?.description == "4.4.2")
            #expect(mx.connectionCount == 1)
            #expect(mx.messages.count == 1)
        }

        @Test("messages_per_connection: the session is retired at the limit and a replacement is opened at once, in the same slot")
        func perConnectionLimit() throws {
            let mx = try ScriptedMX()
            defer { mx.stop() }
            let pool = SMTPConnectionPool(shaping: ShapingSettings(defaults: ShapingLimits(maxConnections: 1, messagesPerConnection: 2)), idleTimeout: 30)
            defer { pool.shutdown() }
            let d = deliverer(pool: pool)
            var reused: [Bool] = []
            for i in 1...5 {
                let report = d.deliver(request(recipients(1), body: sampleMessage("\(i)")), to: [target(mx)])
                #expect(report.outcomes.map(\.status) == [.delivered])
                reused.append(report.sessions[1]?.reused ?? false)
                // After each delivery a ready session waits (the replacement is opened in the
                // background): the next message does not wait for a connect.
                try waitFor("a ready idle session") { pool.idleCount == 1 }
            }
            // Only the very first message opened its own session.
            #expect(reused == [false, true, true, true, true])
            pool.shutdown()
            mx.stop()
            // Messages 1-2, 3-4 and 5, each group on a session opened as the one before retired.
            #expect(mx.connections.map(\.messages) == [2, 2, 1])
            #expect(mx.peakConcurrency == 1)
        }
    }
}

/// Polls `condition` every 20 ms for at most `timeout` seconds.
func waitFor(_ what: String, timeout: TimeInterval = 10, _ condition: () -> Bool) throws {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if condition() { return }
        usleep(20_000)
    }
    if !condition() { throw TestFailure("timed out waiting for \(what)") }
}
