import Foundation
import HatoTestKit
import Testing
@testable import HatoDNS
@testable import HatoNode
@testable import SMTPCore

/// Outbound SMTP client tests: reply parser, session set-up and transaction state machines,
/// dot-stuffing, the socket driver against a scripted MX, and next-hop resolution
/// (filter: `SMTPClientTests`).
@Suite("SMTPClientTests")
struct SMTPClientTests {}

// MARK: - Helpers

private let alice = DeliveryRecipient(id: 1, address: "alice@dest.test")
private let bob = DeliveryRecipient(id: 2, address: "bob@dest.test")
private let carol = DeliveryRecipient(id: 3, address: "carol@dest.test")
private let dave = DeliveryRecipient(id: 4, address: "dave@dest.test")

/// Parses exactly one reply from its wire text.
private func reply(_ text: String) -> SMTPReply {
    switch SMTPClientReplyParser.parseAll(Array(text.utf8)) {
    case .success(let replies) where replies.count == 1: return replies[0]
    default:
        Issue.record("bad test reply \(text.debugDescription)")
        return SMTPReply(code: 554, enhanced: nil, lines: ["test error"])
    }
}

private let plainEHLO = "250-mx.test hello\r\n250-SIZE 1000000\r\n250 ENHANCEDSTATUSCODES\r\n"
private let pipeliningEHLO = "250-mx.test hello\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 1000000\r\n"

private func caps(_ ehlo: String) -> RemoteSMTPCapabilities { RemoteSMTPCapabilities(ehloReply: reply(ehlo)) }

/// Renders transaction actions: sent bytes verbatim, `<DATA>`, `<BDAT offset+length[ LAST]>`, `<FINISHED reusable>`.
private func render(_ actions: [SMTPClientTransaction.Action]) -> String {
    actions.map { action -> String in
        switch action {
        case .send(let bytes): return String(decoding: bytes, as: UTF8.self)
        case .sendData: return "<DATA>"
        case .sendChunk(let commands, let o, let l, let last): return String(decoding: commands, as: UTF8.self) + "<BDAT \(o)+\(l)\(last ? " LAST" : "")>"
        case .finished(let reusable): return "<FINISHED \(reusable)>"
        }
    }.joined()
}

/// Renders set-up actions: sent bytes, `<TLS>`, `<READY>`, `<CLOSE>`.
private func render(_ actions: [SMTPClientHandshake.Action]) -> String {
    actions.map { action -> String in
        switch action {
        case .send(let bytes): return String(decoding: bytes, as: UTF8.self)
        case .startTLS: return "<TLS>"
        case .ready: return "<READY>"
        case .close: return "<CLOSE>"
        }
    }.joined()
}

private func transaction(_ recipients: [DeliveryRecipient] = [alice, bob], reversePath: String = "sender@origin.test",
                         size: Int = 100, eightBit: Bool = false, utf8Headers: Bool = false,
                         ehlo: String = plainEHLO, chunkSize: Int = 1 << 20) -> SMTPClientTransaction {
    SMTPClientTransaction(reversePath: reversePath, recipients: recipients,
                          traits: SMTPMessageTraits(size: size, has8Bit: eightBit, needsSMTPUTF8: utf8Headers),
                          capabilities: caps(ehlo), chunkSize: chunkSize)
}

/// Feeds replies one after another and returns the rendered actions of each step.
private func run(_ tx: inout SMTPClientTransaction, _ replies: [String]) -> [String] {
    replies.map { render(tx.receive(reply($0))) }
}

private func run(_ hs: inout SMTPClientHandshake, _ replies: [String]) -> [String] {
    replies.map { render(hs.receive(reply($0))) }
}

private func status(_ tx: SMTPClientTransaction) -> [OutcomeStatus] { tx.outcomes.map(\.status) }

// MARK: - Reply parser

extension SMTPClientTests {
    @Suite("reply parser")
    struct ReplyParser {
        @Test("multiline reply with enhanced status codes")
        func multiline() {
            let r = reply("250-2.1.0 first line\r\n250-2.1.0 second\r\n250 2.1.0 last\r\n")
            #expect(r.code == 250)
            #expect(r.enhanced == "2.1.0")
            #expect(r.lines == ["first line", "second", "last"])
        }

        @Test("bare code, code with space, LF-only line ends")
        func bareAndLF() {
            #expect(reply("250\r\n") == SMTPReply(code: 250, enhanced: nil, lines: [""]))
            #expect(reply("354 \r\n") == SMTPReply(code: 354, enhanced: nil, lines: [""]))
            #expect(reply("250-a\n250 b\n") == SMTPReply(code: 250, enhanced: nil, lines: ["a", "b"]))
            #expect(reply("550 5.1.1\r\n") == SMTPReply(code: 550, enhanced: "5.1.1", lines: [""]))
        }

        @Test("an enhanced code whose class differs from the reply code is text")
        func enhancedMismatch() {
            #expect(reply("250 5.1.1 odd\r\n") == SMTPReply(code: 250, enhanced: nil, lines: ["5.1.1 odd"]))
            #expect(reply("451 4.7.1234 too long detail\r\n").enhanced == nil)
            #expect(reply("451 4.7.12 ok\r\n").enhanced == "4.7.12")
        }

        @Test("malformed lines are protocol errors")
        func malformed() {
            for bad in ["hello\r\n", "25\r\n", "250x ok\r\n", "\r\n", "099 low\r\n", "650 high\r\n", "2a0 x\r\n",
                        "250-a\r\n251 b\r\n", "250-unterminated\r\n"] {
                guard case .failure = SMTPClientReplyParser.parseAll(Array(bad.utf8)) else {
                    Issue.record("accepted \(bad.debugDescription)"); continue
                }
            }
        }

        @Test("more than 100 lines or 64 KiB is a protocol error")
        func limits() {
            let hundred = String(repeating: "250-x\r\n", count: 99) + "250 end\r\n"
            #expect((try? SMTPClientReplyParser.parseAll(Array(hundred.utf8)).get())?.first?.lines.count == 100)
            let tooMany = String(repeating: "250-x\r\n", count: 100) + "250 end\r\n"
            guard case .failure = SMTPClientReplyParser.parseAll(Array(tooMany.utf8)) else { Issue.record("101 lines"); return }
            let big = "250-" + String(repeating: "y", count: 40_000) + "\r\n250 " + String(repeating: "z", count: 30_000) + "\r\n"
            guard case .failure = SMTPClientReplyParser.parseAll(Array(big.utf8)) else { Issue.record("> 64 KiB"); return }
        }

        @Test("control characters and invalid UTF-8 never crash and are sanitized")
        func garbage() {
            let r = reply("250 a\u{1}b\tc\r\n")
            #expect(r.lines == ["a b c"])
            var bytes = Array("250 ".utf8) + [0xFF, 0xC3] + Array("\r\n".utf8)
            guard case .success(let rs) = SMTPClientReplyParser.parseAll(bytes) else { Issue.record("invalid UTF-8"); return }
            #expect(rs.count == 1)
            var rng = SystemRandomNumberGenerator()
            for _ in 0..<3000 {
                bytes = (0..<Int.random(in: 0..<40, using: &rng)).map { _ in
                    Bool.random(using: &rng) ? UInt8.random(in: 0...255, using: &rng) : Array("25- \r\n.0".utf8).randomElement(using: &rng)!
                }
                _ = SMTPClientReplyParser.parseAll(bytes)
            }
        }
    }
}

// MARK: - Session set-up state machine

extension SMTPClientTests {
    @Suite("session set-up")
    struct Handshake {
        @Test("greeting, EHLO, ready; capabilities read from the EHLO reply")
        func plain() {
            var hs = SMTPClientHandshake(heloName: "client.test")
            #expect(hs.waitingFor == .greeting)
            #expect(run(&hs, ["220 mx.test ESMTP\r\n", "250-mx.test\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-STARTTLS\r\n250 SMTPUTF8\r\n"])
                    == ["EHLO client.test\r\n", "<READY>"])
            #expect(hs.isReady)
            #expect(!hs.secured)
            #expect(hs.capabilities?.pipelining == true)
            #expect(hs.capabilities?.chunking == true)
            #expect(hs.capabilities?.smtpUTF8 == true)
            #expect(hs.capabilities?.eightBitMIME == false)
        }

        @Test("HELO only after 500 or 502 to EHLO; 421 closes at once; other refusals QUIT")
        func heloFallback() {
            for code in ["500 5.5.1 what\r\n", "502 5.5.1 not implemented\r\n"] {
                var hs = SMTPClientHandshake(heloName: "client.test")
                #expect(run(&hs, ["220 old.test\r\n", code, "250 old.test\r\n"]) == ["EHLO client.test\r\n", "HELO client.test\r\n", "<READY>"])
                #expect(hs.capabilities == RemoteSMTPCapabilities())
            }
            var busy = SMTPClientHandshake(heloName: "client.test")
            #expect(run(&busy, ["220 x\r\n", "421 4.7.0 too busy\r\n"]) == ["EHLO client.test\r\n", "<CLOSE>"])
            #expect(busy.failure?.reply.code == 421)
            #expect(busy.failure?.reply.enhanced?.description == "4.7.0")
            var refused = SMTPClientHandshake(heloName: "client.test")
            #expect(run(&refused, ["220 x\r\n", "550 5.7.1 go away\r\n", "221 bye\r\n"]) == ["EHLO client.test\r\n", "QUIT\r\n", "<CLOSE>"])
            #expect(refused.failure?.reply.code == 451)
            #expect(refused.failure?.reply.text.contains("550 5.7.1 go away") == true)
            var helo5xx = SMTPClientHandshake(heloName: "client.test")
            _ = run(&helo5xx, ["220 x\r\n", "500 what\r\n", "550 no HELO for you\r\n"])
            #expect(helo5xx.state == .awaitingQUIT)
        }

        @Test("non-2xx greeting: 421 closes, 554 QUITs; both defer with the server's text")
        func greeting() {
            var g421 = SMTPClientHandshake(heloName: "client.test")
            #expect(run(&g421, ["421 mx.test busy\r\n"]) == ["<CLOSE>"])
            #expect(g421.failure?.reply.code == 421)
            var g554 = SMTPClientHandshake(heloName: "client.test")
            #expect(run(&g554, ["554 5.7.1 no service\r\n", "221 bye\r\n"]) == ["QUIT\r\n", "<CLOSE>"])
            #expect(g554.failure == SMTPClientHandshake.Failure(reply: DeliveryStatus(code: 451, enhanced: "4.4.0", text: "greeting rejected: 554 5.7.1 no service"), tlsHandshakeFailed: false))
        }

        @Test("STARTTLS when offered: 220, handshake, EHLO again over TLS")
        func startTLS() {
            var hs = SMTPClientHandshake(heloName: "client.test", tlsPolicy: .opportunistic, tlsAvailable: true)
            #expect(run(&hs, ["220 x\r\n", "250-x\r\n250-STARTTLS\r\n250 8BITMIME\r\n", "220 2.0.0 go ahead\r\n"])
                    == ["EHLO client.test\r\n", "STARTTLS\r\n", "<TLS>"])
            #expect(hs.waitingFor == nil)
            #expect(render(hs.tlsEstablished()) == "EHLO client.test\r\n")
            #expect(hs.capabilities == nil)
            #expect(run(&hs, ["250-x\r\n250 8BITMIME\r\n"]) == ["<READY>"])
            #expect(hs.secured)
            #expect(hs.capabilities?.eightBitMIME == true)
            // After TLS, a 502 to EHLO does not fall back to HELO.
            var after = SMTPClientHandshake(heloName: "client.test", tlsPolicy: .opportunistic, tlsAvailable: true)
            _ = run(&after, ["220 x\r\n", "250-x\r\n250 STARTTLS\r\n", "220 go\r\n"])
            _ = after.tlsEstablished()
            #expect(run(&after, ["502 no\r\n"]) == ["QUIT\r\n"])
        }

        @Test("TLS policies: disabled never sends STARTTLS; opportunistic continues after 454; required defers 4.7.4")
        func policies() {
            var disabled = SMTPClientHandshake(heloName: "c.test", tlsPolicy: .disabled, tlsAvailable: true)
            #expect(run(&disabled, ["220 x\r\n", "250-x\r\n250 STARTTLS\r\n"]) == ["EHLO c.test\r\n", "<READY>"])
            var opportunistic = SMTPClientHandshake(heloName: "c.test", tlsPolicy: .opportunistic, tlsAvailable: true)
            #expect(run(&opportunistic, ["220 x\r\n", "250-x\r\n250 STARTTLS\r\n", "454 4.7.0 TLS not available\r\n"])
                    == ["EHLO c.test\r\n", "STARTTLS\r\n", "<READY>"])
            #expect(!opportunistic.secured)
            var required454 = SMTPClientHandshake(heloName: "c.test", tlsPolicy: .required, tlsAvailable: true)
            #expect(run(&required454, ["220 x\r\n", "250-x\r\n250 STARTTLS\r\n", "454 4.7.0 TLS not available\r\n"]).last == "QUIT\r\n")
            #expect(required454.failure?.reply.enhanced?.description == "4.7.4")
            var notOffered = SMTPClientHandshake(heloName: "c.test", tlsPolicy: .required, tlsAvailable: true)
            #expect(run(&notOffered, ["220 x\r\n", "250 x\r\n"]) == ["EHLO c.test\r\n", "QUIT\r\n"])
            #expect(notOffered.failure?.reply.text == "TLS is required but the server does not offer STARTTLS")
            var noClient = SMTPClientHandshake(heloName: "c.test", tlsPolicy: .required, tlsAvailable: false)
            _ = run(&noClient, ["220 x\r\n", "250-x\r\n250 STARTTLS\r\n"])
            #expect(noClient.failure?.reply.text == "TLS is required but this node has no TLS client")
        }

        @Test("a failed handshake is reported as such; timeouts and protocol errors defer")
        func failures() {
            var hs = SMTPClientHandshake(heloName: "c.test", tlsPolicy: .opportunistic, tlsAvailable: true)
            _ = run(&hs, ["220 x\r\n", "250-x\r\n250 STARTTLS\r\n", "220 go\r\n"])
            #expect(render(hs.tlsFailed("alert 40")) == "<CLOSE>")
            #expect(hs.failure == SMTPClientHandshake.Failure(reply: DeliveryStatus(code: 451, enhanced: "4.7.5", text: "TLS handshake failed: alert 40"), tlsHandshakeFailed: true))
            var timeout = SMTPClientHandshake(heloName: "c.test")
            #expect(render(timeout.fail(.timeout("greeting"))) == "<CLOSE>")
            #expect(timeout.failure?.reply.enhanced?.description == "4.4.2")
            var garbage = SMTPClientHandshake(heloName: "c.test")
            _ = garbage.fail(.protocolError("bad line"))
            #expect(garbage.failure?.reply.enhanced?.description == "4.5.0")
            let badName = SMTPClientHandshake(heloName: "bad name\r\nRSET")
            #expect(badName.state == .failed)
            #expect(badName.failure?.reply.enhanced?.description == "4.3.5")
        }
    }
}

// MARK: - Transaction state machine

extension SMTPClientTests {
    @Suite("transaction")
    struct StateMachine {
        @Test("without PIPELINING: one command per reply; RCPT 550 fails one recipient; no QUIT")
        func sequential() {
            var tx = transaction()
            #expect(render(tx.start()) == "MAIL FROM:<sender@origin.test> SIZE=100\r\n")
            #expect(tx.waitingFor == .mail)
            let steps = run(&tx, ["250 2.1.0 ok\r\n", "250 2.1.5 ok\r\n", "550 5.1.1 no such user\r\n", "354 go\r\n", "250 2.0.0 queued as X\r\n"])
            #expect(steps == ["RCPT TO:<alice@dest.test>\r\n", "RCPT TO:<bob@dest.test>\r\n", "DATA\r\n", "<DATA>", "<FINISHED true>"])
            #expect(!tx.pipelined)
            #expect(tx.isFinished)
            #expect(tx.reusable)
            #expect(tx.outcomes == [
                RecipientOutcome(recipientID: 1, status: .delivered, reply: DeliveryStatus(code: 250, enhanced: "2.0.0", text: "queued as X")),
                RecipientOutcome(recipientID: 2, status: .failed, reply: DeliveryStatus(code: 550, enhanced: "5.1.1", text: "no such user")),
            ])
        }

        @Test("with PIPELINING: MAIL, every RCPT and DATA in one write; 450 defers, 550 fails")
        func pipelined() {
            var tx = transaction([alice, bob, carol], ehlo: pipeliningEHLO)
            #expect(render(tx.start()) == "MAIL FROM:<sender@origin.test> SIZE=100\r\nRCPT TO:<alice@dest.test>\r\nRCPT TO:<bob@dest.test>\r\nRCPT TO:<carol@dest.test>\r\nDATA\r\n")
            #expect(tx.pipelined)
            #expect(run(&tx, ["250 ok\r\n", "250 ok\r\n", "450 4.2.1 mailbox busy\r\n"]) == ["", "", ""])
            #expect(tx.waitingFor == .rcpt)
            #expect(run(&tx, ["550 5.1.1 unknown\r\n"]) == [""])
            #expect(tx.waitingFor == .dataInitiation)
            #expect(run(&tx, ["354 go\r\n"]) == ["<DATA>"])
            #expect(tx.waitingFor == .dataTermination)
            #expect(run(&tx, ["250 2.0.0 ok\r\n"]) == ["<FINISHED true>"])
            #expect(status(tx) == [.delivered, .deferred, .failed])
            #expect(tx.outcomes[1].reply.code == 450)
            #expect(tx.carriedOver.isEmpty)
        }

        @Test("421 in the middle of a pipelined batch defers every unfinished recipient; session not reusable")
        func pipelined421() {
            var tx = transaction([alice, bob, carol], ehlo: pipeliningEHLO)
            _ = tx.start()
            #expect(run(&tx, ["250 ok\r\n", "550 5.1.1 unknown\r\n", "250 ok\r\n", "421 4.3.2 shutting down\r\n"]) == ["", "", "", "<FINISHED false>"])
            #expect(!tx.reusable)
            #expect(status(tx) == [.failed, .deferred, .deferred])
            #expect(tx.outcomes[2] == RecipientOutcome(recipientID: 3, status: .deferred, reply: DeliveryStatus(code: 421, enhanced: "4.3.2", text: "shutting down")))
        }

        @Test("421 to MAIL, to DATA, and after the final dot: deferred, not reusable")
        func fourTwentyOne() {
            var atMail = transaction()
            _ = atMail.start()
            #expect(run(&atMail, ["421 4.7.0 closing\r\n"]) == ["<FINISHED false>"])
            #expect(status(atMail) == [.deferred, .deferred])
            var atData = transaction([alice])
            _ = atData.start()
            #expect(run(&atData, ["250 ok\r\n", "250 ok\r\n", "421 4.3.0 bye\r\n"]) == ["RCPT TO:<alice@dest.test>\r\n", "DATA\r\n", "<FINISHED false>"])
            #expect(atData.outcomes.first?.reply.code == 421)
            var afterDot = transaction([alice])
            _ = afterDot.start()
            _ = run(&afterDot, ["250 ok\r\n", "250 ok\r\n", "354 go\r\n"])
            #expect(run(&afterDot, ["421 4.4.2 timeout\r\n"]) == ["<FINISHED false>"])
            #expect(status(afterDot) == [.deferred])
        }

        @Test("452 after two recipients (pipelined): the rest are carried over, not deferred")
        func carryOverPipelined() {
            var tx = transaction([alice, bob, carol, dave], ehlo: pipeliningEHLO)
            _ = tx.start()
            let steps = run(&tx, ["250 ok\r\n", "250 ok\r\n", "250 ok\r\n", "452 4.5.3 too many recipients\r\n", "452 4.5.3 too many recipients\r\n",
                                  "354 go\r\n", "250 2.0.0 ok\r\n"])
            #expect(steps == ["", "", "", "", "", "<DATA>", "<FINISHED true>"])
            #expect(tx.acceptedCount == 2)
            #expect(tx.carriedOver == [carol, dave])
            #expect(status(tx) == [.delivered, .delivered, .deferred, .deferred])
            #expect(tx.outcomes[3].reply.code == 452)
        }

        @Test("452 without pipelining stops the RCPTs; the unsent recipients are carried over too")
        func carryOverSequential() {
            var tx = transaction([alice, bob, carol, dave])
            _ = tx.start()
            let steps = run(&tx, ["250 ok\r\n", "250 ok\r\n", "452 4.5.3 too many\r\n", "354 go\r\n", "250 ok\r\n"])
            #expect(steps == ["RCPT TO:<alice@dest.test>\r\n", "RCPT TO:<bob@dest.test>\r\n", "DATA\r\n", "<DATA>", "<FINISHED true>"])
            #expect(tx.carriedOver == [bob, carol, dave])
            #expect(tx.acceptedCount == 1)
            // Without any accepted recipient there is no DATA and no progress.
            var none = transaction([alice, bob])
            _ = none.start()
            #expect(run(&none, ["250 ok\r\n", "452 4.5.3 too many\r\n"]) == ["RCPT TO:<alice@dest.test>\r\n", "<FINISHED true>"])
            #expect(none.acceptedCount == 0)
            #expect(none.carriedOver == [alice, bob])
        }

        @Test("no accepted recipient: no DATA without pipelining; pipelined DATA rejected; stray 354 gets an empty body")
        func noneAccepted() {
            var seq = transaction()
            _ = seq.start()
            #expect(run(&seq, ["250 ok\r\n", "550 no\r\n", "451 later\r\n"]) == ["RCPT TO:<alice@dest.test>\r\n", "RCPT TO:<bob@dest.test>\r\n", "<FINISHED true>"])
            #expect(status(seq) == [.failed, .deferred])
            var pipe = transaction(ehlo: pipeliningEHLO)
            _ = pipe.start()
            #expect(run(&pipe, ["250 ok\r\n", "550 no\r\n", "550 no\r\n", "554 5.5.1 no valid recipients\r\n"]) == ["", "", "", "<FINISHED true>"])
            var stray = transaction(ehlo: pipeliningEHLO)
            _ = stray.start()
            #expect(run(&stray, ["250 ok\r\n", "550 no\r\n", "550 no\r\n", "354 go\r\n", "250 whatever\r\n"]) == ["", "", "", ".\r\n", "<FINISHED true>"])
            #expect(status(stray) == [.failed, .failed])
        }

        @Test("MAIL rejected: 5xx fails and 4xx defers everyone; pipelined replies still consumed")
        func mailRejected() {
            var perm = transaction()
            _ = perm.start()
            #expect(run(&perm, ["553 5.7.1 sender rejected\r\n"]) == ["<FINISHED true>"])
            #expect(status(perm) == [.failed, .failed])
            #expect(perm.outcomes[0].reply.enhanced?.description == "5.7.1")
            var temp = transaction(ehlo: pipeliningEHLO)
            _ = temp.start()
            #expect(run(&temp, ["451 4.3.0 try later\r\n", "503 5.5.1 need MAIL\r\n", "503 need MAIL\r\n", "503 no\r\n"]) == ["", "", "", "<FINISHED true>"])
            #expect(status(temp) == [.deferred, .deferred])
            #expect(temp.outcomes[1].reply.code == 451)
        }

        @Test("final reply 4xx defers and 5xx fails only the accepted recipients; DATA refused")
        func finalReply() {
            var tx = transaction([alice, bob, carol], ehlo: pipeliningEHLO)
            _ = tx.start()
            _ = run(&tx, ["250 ok\r\n", "250 ok\r\n", "550 no\r\n", "250 ok\r\n", "354 go\r\n", "554 5.6.0 content rejected\r\n"])
            #expect(status(tx) == [.failed, .failed, .failed])
            #expect(tx.outcomes.map(\.reply.code) == [554, 550, 554])
            var deferred = transaction()
            _ = deferred.start()
            _ = run(&deferred, ["250 ok\r\n", "250 ok\r\n", "250 ok\r\n", "354 go\r\n", "451 4.3.0 try again\r\n"])
            #expect(status(deferred) == [.deferred, .deferred])
            var refused = transaction()
            _ = refused.start()
            #expect(run(&refused, ["250 ok\r\n", "250 ok\r\n", "250 ok\r\n", "554 5.7.1 no DATA\r\n"]).last == "<FINISHED true>")
            #expect(status(refused) == [.failed, .failed])
        }

        @Test("MAIL parameters: SIZE when offered, BODY=8BITMIME for 8-bit content, SMTPUTF8 when needed")
        func mailParameters() {
            func mailLine(_ ehlo: String, eightBit: Bool = false, utf8: Bool = false, rcpts: [DeliveryRecipient] = [alice]) -> String {
                var tx = transaction(rcpts, size: 4242, eightBit: eightBit, utf8Headers: utf8, ehlo: ehlo)
                return render(tx.start()).components(separatedBy: "\r\n")[0]
            }
            #expect(mailLine("250-x\r\n250-8BITMIME\r\n250 SIZE\r\n", eightBit: true) == "MAIL FROM:<sender@origin.test> SIZE=4242 BODY=8BITMIME")
            #expect(mailLine("250-x\r\n250-8BITMIME\r\n250 SIZE\r\n") == "MAIL FROM:<sender@origin.test> SIZE=4242")
            #expect(mailLine("250-x\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n", eightBit: true, utf8: true) == "MAIL FROM:<sender@origin.test> BODY=8BITMIME SMTPUTF8")
            #expect(mailLine("250-x\r\n250 SMTPUTF8\r\n") == "MAIL FROM:<sender@origin.test>")
            #expect(mailLine("250-x\r\n250 SMTPUTF8\r\n", rcpts: [DeliveryRecipient(id: 7, address: "jos\u{E9}@dest.test")]) == "MAIL FROM:<sender@origin.test> SMTPUTF8")
            var big = transaction([alice], size: 2000, ehlo: "250-x\r\n250 SIZE 1000\r\n")
            #expect(render(big.start()) == "<FINISHED true>")
            #expect(big.outcomes[0].status == .failed)
            #expect(big.outcomes[0].reply.enhanced?.description == "5.3.4")
            var null = transaction([alice], reversePath: "", ehlo: "250 x\r\n")
            #expect(render(null.start()) == "MAIL FROM:<>\r\n")
        }

        @Test("SMTPUTF8 needed but not offered: permanent 5.6.7 without sending anything (RFC 6531)")
        func noSMTPUTF8() {
            var headers = transaction([alice, bob], utf8Headers: true, ehlo: "250-x\r\n250 8BITMIME\r\n")
            #expect(render(headers.start()) == "<FINISHED true>")
            #expect(headers.outcomes.map { $0.reply.enhanced?.description } == ["5.6.7", "5.6.7"])
            #expect(headers.outcomes.allSatisfy { $0.status == .failed && $0.reply.code == 553 })
            // A non-ASCII recipient fails alone; the others go ahead.
            var rcpt = transaction([DeliveryRecipient(id: 9, address: "\u{5F20}@dest.test"), alice], ehlo: "250 x\r\n")
            #expect(render(rcpt.start()) == "MAIL FROM:<sender@origin.test>\r\n")
            #expect(rcpt.outcomes[0].reply.enhanced?.description == "5.6.7")
        }

        @Test("CHUNKING: BDAT after the envelope, no DATA; chunks of the configured size; a failed chunk ends it")
        func chunking() {
            // PIPELINING too, content larger than one chunk: the envelope first, then the chunks.
            let ehlo = "250-x\r\n250-PIPELINING\r\n250 CHUNKING\r\n"
            var one = transaction([alice, bob], size: 25, ehlo: ehlo, chunkSize: 24)
            #expect(render(one.start()) == "MAIL FROM:<sender@origin.test>\r\nRCPT TO:<alice@dest.test>\r\nRCPT TO:<bob@dest.test>\r\n")
            #expect(run(&one, ["250 ok\r\n", "250 ok\r\n", "250 ok\r\n"]) == ["", "", "<BDAT 0+24>"])
            #expect(one.waitingFor == .dataTermination)
            #expect(run(&one, ["250 2.0.0 chunk\r\n", "250 2.0.0 queued\r\n"]) == ["<BDAT 24+1 LAST>", "<FINISHED true>"])
            #expect(status(one) == [.delivered, .delivered])
            #expect(one.usedChunking)
            #expect(one.endedAtContentReply)
            var many = transaction([alice], size: 25, ehlo: "250-x\r\n250 CHUNKING\r\n", chunkSize: 10)
            _ = many.start()
            #expect(run(&many, ["250 ok\r\n", "250 ok\r\n", "250 ok\r\n", "250 ok\r\n", "250 done\r\n"])
                    == ["RCPT TO:<alice@dest.test>\r\n", "<BDAT 0+10>", "<BDAT 10+10>", "<BDAT 20+5 LAST>", "<FINISHED true>"])
            #expect(status(many) == [.delivered])
            var failed = transaction([alice], size: 25, ehlo: "250-x\r\n250 CHUNKING\r\n", chunkSize: 10)
            _ = failed.start()
            #expect(run(&failed, ["250 ok\r\n", "250 ok\r\n", "554 5.6.0 bad chunk\r\n"]).last == "<FINISHED true>")
            #expect(status(failed) == [.failed])
        }

        @Test("PIPELINING and CHUNKING, content within one chunk: MAIL, RCPTs and BDAT LAST in one go (RFC 3030 §4.2), one round trip")
        func pipelinedChunk() {
            let ehlo = "250-x\r\n250-PIPELINING\r\n250 CHUNKING\r\n"
            var all = transaction([alice, bob], size: 25, ehlo: ehlo)
            #expect(render(all.start()) == "MAIL FROM:<sender@origin.test>\r\nRCPT TO:<alice@dest.test>\r\nRCPT TO:<bob@dest.test>\r\n<BDAT 0+25 LAST>")
            // Every reply of the group may wait for the content to be taken: the final reply's timeout.
            #expect(all.waitingFor == .dataTermination)
            #expect(!all.contentWritten)  // the driver says when it writes
            #expect(run(&all, ["250 ok\r\n", "250 ok\r\n", "250 ok\r\n"]) == ["", "", ""])
            #expect(all.waitingFor == .dataTermination)
            #expect(run(&all, ["250 2.0.0 queued\r\n"]) == ["<FINISHED true>"])
            #expect(status(all) == [.delivered, .delivered])
            #expect(all.endedAtContentReply && all.reusable && all.pipelined && all.usedChunking)

            // One recipient refused: the other gets the chunk's verdict; the refused keeps its own.
            var some = transaction([alice, bob], size: 25, ehlo: ehlo)
            _ = some.start()
            #expect(run(&some, ["250 ok\r\n", "250 ok\r\n", "550 5.1.1 no such user\r\n", "451 4.3.0 try later\r\n"]).last == "<FINISHED true>")
            #expect(status(some) == [.deferred, .failed])
            #expect(some.outcomes[0].reply.code == 451 && some.outcomes[1].reply.code == 550)
            #expect(!some.endedAtContentReply)  // the driver resets the session before reusing it

            // No recipient accepted: the server still reads the chunk and refuses it; the
            // outcomes stay the RCPT replies, the session stays usable (after RSET).
            var none = transaction([alice, bob], size: 25, ehlo: ehlo)
            _ = none.start()
            #expect(run(&none, ["250 ok\r\n", "550 5.1.1 no\r\n", "450 4.2.1 busy\r\n", "554 5.5.1 no valid recipients\r\n"]).last == "<FINISHED true>")
            #expect(status(none) == [.failed, .deferred])
            #expect(none.outcomes.map { $0.reply.code.rawValue } == [550, 450])
            #expect(none.reusable && !none.endedAtContentReply)

            // MAIL refused: every recipient takes MAIL's reply, not the 503s after it.
            var mail = transaction([alice], size: 25, ehlo: ehlo)
            _ = mail.start()
            #expect(run(&mail, ["452 4.3.1 full\r\n", "503 5.5.1 need MAIL\r\n", "503 5.5.1 need MAIL\r\n"]).last == "<FINISHED true>")
            #expect(status(mail) == [.deferred])
            #expect(mail.outcomes[0].reply.code == 452)

            // "Too many recipients": the accepted ones get the content, the rest are carried over.
            var limit = transaction([alice, bob], size: 25, ehlo: ehlo)
            _ = limit.start()
            #expect(run(&limit, ["250 ok\r\n", "250 ok\r\n", "452 4.5.3 too many\r\n", "250 2.0.0 queued\r\n"]).last == "<FINISHED true>")
            #expect(status(limit) == [.delivered, .deferred])
            #expect(limit.carriedOver == [bob])

            // 421 in reply to the chunk: the accepted recipients deferred, the session closed.
            var closing = transaction([alice], size: 25, ehlo: ehlo)
            _ = closing.start()
            #expect(run(&closing, ["250 ok\r\n", "250 ok\r\n", "421 4.3.2 shutting down\r\n"]).last == "<FINISHED false>")
            #expect(status(closing) == [.deferred])

            // Without PIPELINING: the envelope step by step, then BDAT (as before).
            var plain = transaction([alice], size: 25, ehlo: "250-x\r\n250 CHUNKING\r\n")
            #expect(render(plain.start()) == "MAIL FROM:<sender@origin.test>\r\n")

            // Content over the pipelining limit waits for the envelope's replies (RFC 2920 §3.1).
            let most = SMTPClientTransaction.pipelinedContentLimit
            var atLimit = transaction([alice], size: most, ehlo: ehlo)
            #expect(render(atLimit.start()).hasSuffix("<BDAT 0+\(most) LAST>"))
            var over = transaction([alice], size: most + 1, ehlo: ehlo)
            #expect(render(over.start()) == "MAIL FROM:<sender@origin.test>\r\nRCPT TO:<alice@dest.test>\r\n")
            #expect(over.waitingFor == .mail)
            #expect(run(&over, ["250 ok\r\n", "250 ok\r\n"]) == ["", "<BDAT 0+\(most + 1) LAST>"])
        }

        @Test("addresses with CR/LF or brackets are never sent")
        func injection() {
            var tx = transaction([DeliveryRecipient(id: 9, address: "a@b\r\nRSET"), alice], ehlo: "250-x\r\n250 PIPELINING\r\n")
            #expect(tx.outcomes[0].status == .failed)
            #expect(render(tx.start()) == "MAIL FROM:<sender@origin.test>\r\nRCPT TO:<alice@dest.test>\r\nDATA\r\n")
            let allBad = transaction([DeliveryRecipient(id: 1, address: "x>@y")])
            #expect(!allBad.needsSending)
            let badSender = transaction(reversePath: "s@x\nQUIT")
            #expect(!badSender.needsSending)
            #expect(status(badSender) == [.failed, .failed])
        }

        @Test("timeouts, closed connections and protocol errors defer the unfinished recipients")
        func failures() {
            var mid = transaction()
            _ = mid.start()
            _ = run(&mid, ["250 ok\r\n", "550 no\r\n", "250 ok\r\n", "354 go\r\n"])
            #expect(render(mid.fail(.timeout("end-of-data"))) == "<FINISHED false>")
            #expect(status(mid) == [.failed, .deferred])
            #expect(mid.outcomes[1].reply.code == 451)
            #expect(mid.outcomes[1].reply.enhanced?.description == "4.4.2")
            var proto = transaction()
            _ = proto.start()
            _ = proto.fail(.protocolError("garbage"))
            #expect(proto.outcomes.map { $0.reply.enhanced?.description } == ["4.5.0", "4.5.0"])
            var done = transaction([alice])
            _ = done.start()
            _ = run(&done, ["250 ok\r\n", "250 ok\r\n", "354 go\r\n", "250 ok\r\n"])
            #expect(done.fail(.connectionClosed("reset")).isEmpty)
            #expect(status(done) == [.delivered])
        }

        @Test("random reply sequences never crash and always end with an outcome per recipient")
        func randomReplies() {
            var rng = SystemRandomNumberGenerator()
            let codes = [220, 221, 250, 251, 354, 421, 450, 451, 452, 500, 501, 502, 503, 550, 552, 554]
            let ehlos = [plainEHLO, pipeliningEHLO, "250-x\r\n250-PIPELINING\r\n250 CHUNKING\r\n", "250 x\r\n"]
            for _ in 0..<2000 {
                var tx = transaction([alice, bob, carol], eightBit: Bool.random(using: &rng), ehlo: ehlos.randomElement(using: &rng)!,
                                     chunkSize: Int.random(in: 1...200, using: &rng))
                _ = tx.start()
                var steps = 0
                while !tx.isFinished && steps < 30 {
                    let code = codes.randomElement(using: &rng)!
                    let r = SMTPReply(code: code, enhanced: Bool.random(using: &rng) ? "\(code / 100).5.3" : nil, lines: ["x"])
                    _ = tx.receive(r)
                    steps += 1
                }
                if !tx.isFinished { _ = tx.fail(.timeout("test")) }
                #expect(tx.isFinished)
                #expect(tx.outcomes.count == 3)
                #expect(tx.outcomes.allSatisfy { $0.status != .delivered || $0.reply.code.rawValue / 100 == 2 })
            }
        }
    }
}

// MARK: - Dot-stuffing

extension SMTPClientTests {
    @Suite("dot-stuffing")
    struct DotStuffing {
        @Test("leading dots doubled, CRLF added when missing, CRLF.CRLF terminator")
        func basics() {
            func enc(_ s: String) -> String { String(decoding: SMTPDotStuffing.encoded(Array(s.utf8)), as: UTF8.self) }
            #expect(enc("Subject: x\r\n\r\n.hidden\r\nok\r\n..\r\n.\r\n") == "Subject: x\r\n\r\n..hidden\r\nok\r\n...\r\n..\r\n.\r\n")
            #expect(enc("no newline at end") == "no newline at end\r\n.\r\n")
            #expect(enc(".") == "..\r\n.\r\n")
            #expect(enc("") == ".\r\n")
            #expect(enc("a\r\n") == "a\r\n.\r\n")
            #expect(enc("bare\nlf\n.dot\n") == "bare\r\nlf\r\n..dot\r\n.\r\n")
            #expect(enc("mid.dot\r\n .x\r\n") == "mid.dot\r\n .x\r\n.\r\n")
        }

        @Test("chunked output equals the whole, for every chunk size")
        func chunking() {
            var rng = SystemRandomNumberGenerator()
            let alphabet = Array(".\r\nab".utf8)
            for _ in 0..<200 {
                let body = (0..<Int.random(in: 0..<300, using: &rng)).map { _ in alphabet.randomElement(using: &rng)! }
                let whole = SMTPDotStuffing.encoded(body)
                var chunks: [[UInt8]] = []
                SMTPDotStuffing.encode(body, chunkSize: Int.random(in: 1...64, using: &rng)) { chunks.append($0) }
                #expect(Array(chunks.joined()) == whole)
                #expect(whole.suffix(3) == [0x2E, 0x0D, 0x0A])
            }
        }

        @Test("long lines, bare LFs, leading dots and no final line end: the same bytes as the line-by-line definition, whole or in chunks")
        func againstDefinition() {
            var rng = SplitMix64(seed: 2920)
            let specials: [[UInt8]] = [[0x0D, 0x0A], [0x0A], [0x2E], [0x0D, 0x0A, 0x2E], [0x0A, 0x2E, 0x2E], [0x0D]]
            // RFC 5321 §4.5.2 line by line: split at LF (a CR before it belongs to the line end),
            // double a leading dot, end every line with CRLF, then ".CRLF".
            func reference(_ body: [UInt8]) -> [UInt8] {
                var out: [UInt8] = []
                var lines = body.split(separator: 0x0A, omittingEmptySubsequences: false).map { Array($0) }
                // The piece after the last LF is a line only when it is not empty (a last line
                // without a line end keeps a trailing CR as content).
                let unterminated = lines.removeLast()
                for var line in lines {
                    if line.last == 0x0D { line.removeLast() }
                    if line.first == 0x2E { out.append(0x2E) }
                    out += line + [0x0D, 0x0A]
                }
                if !unterminated.isEmpty {
                    if unterminated.first == 0x2E { out.append(0x2E) }
                    out += unterminated + [0x0D, 0x0A]
                }
                return out + [0x2E, 0x0D, 0x0A]
            }
            for _ in 0..<2000 {
                var body: [UInt8] = []
                for _ in 0..<Int(rng.next() % 10) {
                    body += Array(repeating: 0x62, count: Int(rng.next() % 40))
                    body += specials[Int(rng.next() % UInt64(specials.count))]
                }
                if rng.next() % 2 == 0 { body += Array(repeating: 0x62, count: Int(rng.next() % 20)) }
                let expected = reference(body)
                #expect(SMTPDotStuffing.encoded(body) == expected, "body \(body)")
                var chunks: [[UInt8]] = []
                SMTPDotStuffing.encode(body, chunkSize: Int(rng.next() % 50) + 1) { chunks.append($0) }
                #expect(Array(chunks.joined()) == expected)
            }
        }

        @Test("a large body is encoded quickly")
        func large() {
            let line = Array(".abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n".utf8)
            var body: [UInt8] = []
            for _ in 0..<(8 * 1024 * 1024 / line.count) { body.append(contentsOf: line) }
            let start = Date()
            var total = 0
            SMTPDotStuffing.encode(body) { total += $0.count }
            #expect(total == body.count + body.count / line.count + 3)
            #expect(Date().timeIntervalSince(start) < 5)
        }
    }
}

// MARK: - Next hops

/// A DNS resolver answering from a fixed table; unknown names are NXDOMAIN.
private func fakeResolver(_ table: [String: [DNSRecord]]) -> DNSResolver {
    DNSResolver { name, type in
        guard let records = table["\(name)/\(type)"] else {
            return .response(DNSMessage(rcode: DNSMessage.nameError, answers: []))
        }
        return .response(DNSMessage(rcode: DNSMessage.noError, answers: records))
    }
}

private func mxRecord(_ owner: String, _ pref: UInt16, _ host: String) -> DNSRecord {
    DNSRecord(name: owner, type: .mx, ttl: 60, data: .mx(preference: pref, exchange: host))
}
private func aRecord(_ owner: String, _ ip: String) -> DNSRecord { DNSRecord(name: owner, type: .a, ttl: 60, data: .a(ip)) }

extension SMTPClientTests {
    @Suite("next hops")
    struct NextHops {
        let resolver = fakeResolver([
            "dest.test/MX": [mxRecord("dest.test", 20, "mx2.dest.test"), mxRecord("dest.test", 10, "mx1.dest.test"), mxRecord("dest.test", 30, "mx3.dest.test")],
            "mx1.dest.test/A": [aRecord("mx1.dest.test", "192.0.2.1"), aRecord("mx1.dest.test", "192.0.2.2")],
            "mx1.dest.test/AAAA": [DNSRecord(name: "mx1.dest.test", type: .aaaa, ttl: 60, data: .aaaa("2001:db8::1"))],
            "mx2.dest.test/A": [aRecord("mx2.dest.test", "192.0.2.3")],
            "mx2.dest.test/AAAA": [],
            // mx3 shares an address with mx1: dropped as a repeat.
            "mx3.dest.test/A": [aRecord("mx3.dest.test", "192.0.2.1")],
            "mx3.dest.test/AAAA": [],
            "null.test/MX": [mxRecord("null.test", 0, "")],
            "relay.test/A": [aRecord("relay.test", "198.51.100.7")],
            "relay.test/AAAA": [],
            "self.test/MX": [mxRecord("self.test", 10, "mx.self.test")],
            "mx.self.test/A": [aRecord("mx.self.test", "127.0.0.1")],
            "mx.self.test/AAAA": [],
            "mixed.test/MX": [mxRecord("mixed.test", 10, "me.mixed.test"), mxRecord("mixed.test", 20, "other.mixed.test")],
            "me.mixed.test/A": [aRecord("me.mixed.test", "203.0.113.5")],
            "me.mixed.test/AAAA": [],
            "other.mixed.test/A": [aRecord("other.mixed.test", "203.0.113.9")],
            "other.mixed.test/AAAA": [],
            "zero.test/MX": [mxRecord("zero.test", 10, "mx.zero.test")],
            "mx.zero.test/A": [aRecord("mx.zero.test", "0.0.0.0")],
            "mx.zero.test/AAAA": [DNSRecord(name: "mx.zero.test", type: .aaaa, ttl: 60, data: .aaaa("::ffff:127.0.0.2"))],
        ])

        @Test("MX targets: all addresses of MX 1, then MX 2, … on the MX port, repeats dropped")
        func mxTargets() throws {
            let hops = NextHopResolver(resolver: resolver, mxPort: 2525)
            let targets = try hops.targets(for: "dest.test", staticNextHop: nil).get()
            #expect(targets == [
                DeliveryTarget(host: "mx1.dest.test", address: "192.0.2.1", port: 2525),
                DeliveryTarget(host: "mx1.dest.test", address: "192.0.2.2", port: 2525),
                DeliveryTarget(host: "mx1.dest.test", address: "2001:db8::1", port: 2525),
                DeliveryTarget(host: "mx2.dest.test", address: "192.0.2.3", port: 2525),
            ])
        }

        @Test("static next hop: IP literal as is, host name by A/AAAA, unresolvable is temporary")
        func staticHop() throws {
            let hops = NextHopResolver(resolver: resolver, mxPort: 25)
            #expect(try hops.targets(for: "any.test", staticNextHop: ("192.0.2.50", 587)).get() == [
                DeliveryTarget(host: "192.0.2.50", address: "192.0.2.50", port: 587)])
            #expect(try hops.targets(for: "any.test", staticNextHop: ("[192.0.2.51]", 25)).get() == [
                DeliveryTarget(host: "[192.0.2.51]", address: "192.0.2.51", port: 25)])
            #expect(try hops.targets(for: "any.test", staticNextHop: ("relay.test", 10025)).get() == [
                DeliveryTarget(host: "relay.test", address: "198.51.100.7", port: 10025)])
            guard case .failure(let f) = hops.targets(for: "any.test", staticNextHop: ("missing.test", 25)) else {
                Issue.record("expected failure"); return
            }
            #expect(!f.permanent)
            #expect(f.reply.enhanced?.description == "4.4.3")
        }

        @Test("null MX and NXDOMAIN are permanent with their enhanced codes; literals skip DNS")
        func failures() throws {
            let hops = NextHopResolver(resolver: resolver, mxPort: 25)
            #expect(hops.targets(for: "null.test", staticNextHop: nil) == .failure(
                NextHopFailure(permanent: true, enhanced: EnhancedStatusCode("5.1.10")!, text: "domain null.test does not accept mail (null MX)")))
            guard case .failure(let nx) = hops.targets(for: "gone.test", staticNextHop: nil) else { Issue.record("NXDOMAIN"); return }
            #expect(nx.permanent)
            #expect(nx.reply.enhanced?.description == "5.1.2")
            #expect(try hops.targets(for: "[192.0.2.9]", staticNextHop: nil).get() == [
                DeliveryTarget(host: "[192.0.2.9]", address: "192.0.2.9", port: 25)])
        }

        @Test("loops: MX on loopback, unspecified or own addresses is refused (5.4.6) unless the route is explicit")
        func loops() throws {
            let hops = NextHopResolver(resolver: resolver, mxPort: 25, localAddresses: ["203.0.113.5"])
            #expect(hops.targets(for: "self.test", staticNextHop: nil) == .failure(NextHopFailure(
                permanent: true, enhanced: EnhancedStatusCode("5.4.6")!, text: "mail for self.test loops back to myself (MX mx.self.test[127.0.0.1])")))
            // Our own address is skipped; the other MX is used.
            #expect(try hops.targets(for: "mixed.test", staticNextHop: nil).get() == [DeliveryTarget(host: "other.mixed.test", address: "203.0.113.9", port: 25)])
            guard case .failure(let zero) = hops.targets(for: "zero.test", staticNextHop: nil) else { Issue.record("0.0.0.0 and mapped loopback"); return }
            #expect(zero.reply.enhanced?.description == "5.4.6")
            guard case .failure(let literal) = hops.targets(for: "[127.0.0.1]", staticNextHop: nil) else { Issue.record("literal"); return }
            #expect(literal.reply.enhanced?.description == "5.4.6")
            // An explicit route may point anywhere.
            #expect(try hops.targets(for: "self.test", staticNextHop: ("127.0.0.1", 2525)).get() == [DeliveryTarget(host: "127.0.0.1", address: "127.0.0.1", port: 2525)])
            // allow_loopback_mx lets loopback MX hosts through (tests), but not our own addresses.
            let lenient = NextHopResolver(resolver: resolver, mxPort: 25, localAddresses: ["203.0.113.5", "127.0.0.9"], allowLoopback: true)
            #expect(try lenient.targets(for: "self.test", staticNextHop: nil).get() == [DeliveryTarget(host: "mx.self.test", address: "127.0.0.1", port: 25)])
            #expect(lenient.isLoop("127.0.0.9"))
            #expect(lenient.isLoop("0.0.0.0"))
            #expect(!lenient.isLoop("127.0.0.10"))
            #expect(NextHopResolver.normalizedAddress("::FFFF:127.0.0.1") == "127.0.0.1")
            #expect(NextHopResolver.interfaceAddresses().contains("127.0.0.1"))
        }
    }
}

// MARK: - Content conversion

/// Decodes quoted-printable (RFC 2045 §6.7) for checking the encoder.
private func decodeQP(_ text: [UInt8]) -> [UInt8] {
    var out: [UInt8] = []
    var i = 0
    func hex(_ b: UInt8) -> UInt8? {
        switch b {
        case 0x30...0x39: return b - 0x30
        case 0x41...0x46: return b - 0x41 + 10
        default: return nil
        }
    }
    while i < text.count {
        if text[i] == 0x3D, i + 2 < text.count, text[i + 1] == 0x0D, text[i + 2] == 0x0A { i += 3; continue }
        if text[i] == 0x3D, i + 2 < text.count, let h = hex(text[i + 1]), let l = hex(text[i + 2]) { out.append(h << 4 | l); i += 3; continue }
        out.append(text[i]); i += 1
    }
    return out
}

extension SMTPClientTests {
    @Suite("content conversion")
    struct Conversion {
        @Test("quoted-printable: lines of at most 76, trailing blanks encoded, round trip exact")
        func quotedPrintable() {
            let long = String(repeating: "\u{E9}t\u{E9} = caf\u{E9} ", count: 30) + " \r\nnext\t\r\n.dot \u{2014}\r\n"
            let encoded = MIMEDowngrade.quotedPrintable(Array(long.utf8))
            #expect(encoded.allSatisfy { $0 < 0x80 })
            let lines = String(decoding: encoded, as: UTF8.self).components(separatedBy: "\r\n")
            #expect(lines.allSatisfy { $0.count <= 76 })
            #expect(lines.allSatisfy { !$0.hasSuffix(" ") && !$0.hasSuffix("\t") })
            #expect(decodeQP(encoded) == Array(long.utf8))
            let b64 = MIMEDowngrade.base64Lines(Array(repeating: 0xFF, count: 200))
            #expect(String(decoding: b64, as: UTF8.self).components(separatedBy: "\r\n").allSatisfy { $0.count <= 76 })
        }

        @Test("a message without MIME fields gets MIME-Version, Content-Type and the encoding; 8-bit headers cannot be converted")
        func conversion() throws {
            let plain = Array("From: a@example.org\r\nSubject: x\r\n\r\nna\u{EF}ve\r\n".utf8)
            let converted = try #require(MIMEDowngrade.convert(plain))
            let text = String(decoding: converted, as: UTF8.self)
            #expect(text == "From: a@example.org\r\nSubject: x\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nna=C3=AFve\r\n")
            #expect(MIMEDowngrade.convert(Array("From: Jos\u{E9} <a@example.org>\r\n\r\nna\u{EF}ve\r\n".utf8)) == nil)
            #expect(MIMEDowngrade.convert(Array("Content-Type: message/partial\r\n\r\n\u{E9}\r\n".utf8)) == nil)
            #expect(MIMEDowngrade.convert(Array("Content-Transfer-Encoding: base64\r\n\r\n\u{E9}\r\n".utf8)) == nil)
            // 7-bit content is returned unchanged.
            let ascii = Array("From: a@example.org\r\n\r\nplain\r\n".utf8)
            #expect(MIMEDowngrade.convert(ascii) == ascii)
        }
    }
}
