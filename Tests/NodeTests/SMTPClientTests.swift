import Foundation
import Testing
@testable import HatoNode
@testable import HatoShared

/// Outbound SMTP client tests: reply parser, transaction state machine, dot-stuffing and the
/// socket driver against in-test servers (filter: `SMTPClientTests`).
@Suite("SMTPClientTests")
struct SMTPClientTests {}

// MARK: - Helpers

private let alice = DeliveryRecipient(id: 1, address: "alice@dest.test")
private let bob = DeliveryRecipient(id: 2, address: "bob@dest.test")
private let carol = DeliveryRecipient(id: 3, address: "carol@dest.test")

/// Parses exactly one reply from its wire text.
private func reply(_ text: String) -> SMTPReply {
    switch SMTPClientReplyParser.parseAll(Array(text.utf8)) {
    case .success(let replies) where replies.count == 1: return replies[0]
    default:
        Issue.record("bad test reply \(text.debugDescription)")
        return SMTPReply(code: 554, enhanced: nil, lines: ["test error"])
    }
}

/// Renders actions as text: sent bytes verbatim, `<BODY>` and `<CLOSE>` markers.
private func render(_ actions: [SMTPClientAction]) -> String {
    actions.map { action -> String in
        switch action {
        case .send(let bytes): return String(decoding: bytes, as: UTF8.self)
        case .sendBody: return "<BODY>"
        case .close: return "<CLOSE>"
        }
    }.joined()
}

private func transaction(_ recipients: [DeliveryRecipient] = [alice, bob], reversePath: String = "sender@origin.test",
                         size: Int = 100, eightBit: Bool = false) -> SMTPClientTransaction {
    SMTPClientTransaction(heloName: "client.test", reversePath: reversePath, recipients: recipients,
                          bodySize: size, bodyHas8Bit: eightBit)
}

/// Feeds replies one after another and returns the rendered actions of each step.
private func run(_ tx: inout SMTPClientTransaction, _ replies: [String]) -> [String] {
    replies.map { render(tx.receive(reply($0))) }
}

private func status(_ tx: SMTPClientTransaction) -> [OutcomeStatus] { tx.outcomes.map(\.status) }

private let plainEHLO = "250-mx.test hello\r\n250-SIZE 1000000\r\n250 ENHANCEDSTATUSCODES\r\n"
private let pipeliningEHLO = "250-mx.test hello\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 1000000\r\n"

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

// MARK: - Transaction state machine

extension SMTPClientTests {
    @Suite("state machine")
    struct StateMachine {
        @Test("without PIPELINING: one command per reply; RCPT 550 fails one recipient")
        func sequential() {
            var tx = transaction()
            #expect(tx.waitingFor == .greeting)
            let steps = run(&tx, ["220 mx.test ESMTP\r\n", plainEHLO, "250 2.1.0 ok\r\n", "250 2.1.5 ok\r\n",
                                  "550 5.1.1 no such user\r\n", "354 go\r\n", "250 2.0.0 queued as X\r\n", "221 bye\r\n"])
            #expect(steps == [
                "EHLO client.test\r\n", "MAIL FROM:<sender@origin.test> SIZE=100\r\n", "RCPT TO:<alice@dest.test>\r\n",
                "RCPT TO:<bob@dest.test>\r\n", "DATA\r\n", "<BODY>", "QUIT\r\n", "<CLOSE>",
            ])
            #expect(!tx.pipelined)
            #expect(tx.isFinished)
            #expect(tx.outcomes == [
                RecipientOutcome(recipientID: 1, status: .delivered, code: 250, enhanced: "2.0.0", text: "queued as X"),
                RecipientOutcome(recipientID: 2, status: .failed, code: 550, enhanced: "5.1.1", text: "no such user"),
            ])
        }

        @Test("with PIPELINING: MAIL, every RCPT and DATA in one write; 452 defers, 550 fails")
        func pipelined() {
            var tx = transaction([alice, bob, carol])
            let steps = run(&tx, ["220 mx.test\r\n", pipeliningEHLO])
            #expect(steps[1] == "MAIL FROM:<sender@origin.test> SIZE=100\r\nRCPT TO:<alice@dest.test>\r\nRCPT TO:<bob@dest.test>\r\nRCPT TO:<carol@dest.test>\r\nDATA\r\n")
            #expect(tx.pipelined)
            #expect(tx.waitingFor == .command)
            #expect(run(&tx, ["250 ok\r\n", "250 ok\r\n", "452 4.5.3 too many recipients\r\n"]) == ["", "", ""])
            #expect(tx.waitingFor == .command)
            #expect(run(&tx, ["550 5.1.1 unknown\r\n"]) == [""])
            #expect(tx.waitingFor == .dataInitiation)
            #expect(run(&tx, ["354 go\r\n"]) == ["<BODY>"])
            #expect(tx.waitingFor == .dataTermination)
            #expect(run(&tx, ["250 2.0.0 ok\r\n", "221 bye\r\n"]) == ["QUIT\r\n", "<CLOSE>"])
            #expect(status(tx) == [.delivered, .deferred, .failed])
            #expect(tx.outcomes[1].code == 452)
            #expect(tx.outcomes[1].enhanced == "4.5.3")
        }

        @Test("421 in the middle of a pipelined batch defers every unfinished recipient and closes")
        func pipelined421() {
            var tx = transaction([alice, bob, carol])
            _ = run(&tx, ["220 mx.test\r\n", pipeliningEHLO])
            let steps = run(&tx, ["250 ok\r\n", "550 5.1.1 unknown\r\n", "250 ok\r\n", "421 4.3.2 shutting down\r\n"])
            #expect(steps == ["", "", "", "<CLOSE>"])
            #expect(tx.isFinished)
            #expect(!tx.shouldTryNextTarget)
            #expect(status(tx) == [.failed, .deferred, .deferred])
            #expect(tx.outcomes[2] == RecipientOutcome(recipientID: 3, status: .deferred, code: 421, enhanced: "4.3.2", text: "shutting down"))
        }

        @Test("no accepted recipient: no DATA without pipelining; pipelined DATA rejected; stray 354 gets an empty body")
        func noneAccepted() {
            var seq = transaction()
            let steps = run(&seq, ["220 x\r\n", plainEHLO, "250 ok\r\n", "550 no\r\n", "451 later\r\n", "221 bye\r\n"])
            #expect(steps.last(where: { !$0.isEmpty && $0 != "<CLOSE>" }) == "QUIT\r\n")
            #expect(!steps.contains("DATA\r\n"))
            #expect(status(seq) == [.failed, .deferred])

            var pipe = transaction()
            _ = run(&pipe, ["220 x\r\n", pipeliningEHLO])
            #expect(run(&pipe, ["250 ok\r\n", "550 no\r\n", "550 no\r\n", "554 5.5.1 no valid recipients\r\n"]) == ["", "", "", "QUIT\r\n"])
            #expect(status(pipe) == [.failed, .failed])

            var stray = transaction()
            _ = run(&stray, ["220 x\r\n", pipeliningEHLO])
            #expect(run(&stray, ["250 ok\r\n", "550 no\r\n", "550 no\r\n", "354 go\r\n"]) == ["", "", "", ".\r\n"])
            #expect(run(&stray, ["250 whatever\r\n", "221 bye\r\n"]) == ["QUIT\r\n", "<CLOSE>"])
            #expect(status(stray) == [.failed, .failed])
        }

        @Test("MAIL rejected: 5xx fails and 4xx defers everyone; pipelined replies still consumed")
        func mailRejected() {
            var perm = transaction()
            #expect(run(&perm, ["220 x\r\n", plainEHLO, "553 5.7.1 sender rejected\r\n"]).last == "QUIT\r\n")
            #expect(status(perm) == [.failed, .failed])
            #expect(perm.outcomes[0].enhanced == "5.7.1")

            var temp = transaction()
            _ = run(&temp, ["220 x\r\n", pipeliningEHLO])
            #expect(run(&temp, ["451 4.3.0 try later\r\n", "503 5.5.1 need MAIL\r\n", "503 need MAIL\r\n", "503 no\r\n"]) == ["", "", "", "QUIT\r\n"])
            #expect(status(temp) == [.deferred, .deferred])
            #expect(temp.outcomes[1].code == 451)
        }

        @Test("final reply 4xx defers and 5xx fails only the accepted recipients")
        func finalReply() {
            var tx = transaction([alice, bob, carol])
            _ = run(&tx, ["220 x\r\n", pipeliningEHLO, "250 ok\r\n", "250 ok\r\n", "550 no\r\n", "250 ok\r\n", "354 go\r\n"])
            _ = run(&tx, ["554 5.6.0 content rejected\r\n"])
            #expect(status(tx) == [.failed, .failed, .failed])
            #expect(tx.outcomes.map(\.code) == [554, 550, 554])

            var deferred = transaction()
            _ = run(&deferred, ["220 x\r\n", plainEHLO, "250 ok\r\n", "250 ok\r\n", "250 ok\r\n", "354 go\r\n"])
            _ = run(&deferred, ["451 4.3.0 try again\r\n"])
            #expect(status(deferred) == [.deferred, .deferred])
            // 421 as the final reply: deferred, close without QUIT.
            var closed = transaction()
            _ = run(&closed, ["220 x\r\n", plainEHLO, "250 ok\r\n", "250 ok\r\n", "250 ok\r\n", "354 go\r\n"])
            #expect(run(&closed, ["421 4.4.2 timeout\r\n"]) == ["<CLOSE>"])
            #expect(status(closed) == [.deferred, .deferred])
        }

        @Test("DATA command rejected after accepted RCPTs")
        func dataRejected() {
            var tx = transaction()
            #expect(run(&tx, ["220 x\r\n", plainEHLO, "250 ok\r\n", "250 ok\r\n", "250 ok\r\n", "554 5.7.1 no DATA\r\n"]).last == "QUIT\r\n")
            #expect(status(tx) == [.failed, .failed])
        }

        @Test("HELO after 502 to EHLO; never after 421; other rejections try the next target")
        func heloFallback() {
            var tx = transaction([alice])
            let steps = run(&tx, ["220 old.test\r\n", "502 5.5.1 EHLO not implemented\r\n", "250 old.test\r\n"])
            #expect(steps == ["EHLO client.test\r\n", "HELO client.test\r\n", "MAIL FROM:<sender@origin.test>\r\n"])
            #expect(tx.capabilities == RemoteSMTPCapabilities())

            var busy = transaction([alice])
            #expect(run(&busy, ["220 x\r\n", "421 4.7.0 too busy\r\n"]) == ["EHLO client.test\r\n", "<CLOSE>"])
            #expect(busy.shouldTryNextTarget)
            #expect(status(busy) == [.deferred])
            #expect(busy.outcomes[0].code == 421)

            var greet421 = transaction([alice])
            #expect(run(&greet421, ["421 mx.test busy\r\n"]) == ["<CLOSE>"])
            #expect(greet421.shouldTryNextTarget)

            var greet554 = transaction([alice])
            #expect(run(&greet554, ["554 5.7.1 go away\r\n", "221 bye\r\n"]) == ["QUIT\r\n", "<CLOSE>"])
            #expect(greet554.shouldTryNextTarget)
            #expect(greet554.outcomes[0].status == .deferred)
            #expect(greet554.outcomes[0].code == 451)
            #expect(greet554.outcomes[0].text.contains("554"))

            var helo5xx = transaction([alice])
            _ = run(&helo5xx, ["220 x\r\n", "500 what\r\n", "550 no HELO for you\r\n"])
            #expect(helo5xx.shouldTryNextTarget)
            #expect(status(helo5xx) == [.deferred])
        }

        @Test("MAIL parameters: SIZE when offered, BODY=8BITMIME only for 8-bit bodies on 8BITMIME servers")
        func mailParameters() {
            func mailLine(_ ehlo: String, eightBit: Bool) -> String {
                var tx = transaction([alice], size: 4242, eightBit: eightBit)
                return run(&tx, ["220 x\r\n", ehlo])[1].components(separatedBy: "\r\n")[0]
            }
            #expect(mailLine("250-x\r\n250-8BITMIME\r\n250 SIZE\r\n", eightBit: true) == "MAIL FROM:<sender@origin.test> SIZE=4242 BODY=8BITMIME")
            #expect(mailLine("250-x\r\n250-8BITMIME\r\n250 SIZE\r\n", eightBit: false) == "MAIL FROM:<sender@origin.test> SIZE=4242")
            #expect(mailLine("250-x\r\n250 8BITMIME\r\n", eightBit: true) == "MAIL FROM:<sender@origin.test> BODY=8BITMIME")
            #expect(mailLine("250 x\r\n", eightBit: true) == "MAIL FROM:<sender@origin.test>")

            var big = transaction([alice], size: 2000)
            #expect(run(&big, ["220 x\r\n", "250-x\r\n250 SIZE 1000\r\n"]) == ["EHLO client.test\r\n", "QUIT\r\n"])
            #expect(big.outcomes[0].status == .failed)
            #expect(big.outcomes[0].enhanced == "5.3.4")

            var null = transaction([alice], reversePath: "")
            #expect(run(&null, ["220 x\r\n", "250 x\r\n"])[1] == "MAIL FROM:<>\r\n")
        }

        @Test("addresses with CR/LF or brackets are never sent")
        func injection() {
            var tx = transaction([DeliveryRecipient(id: 9, address: "a@b\r\nRSET"), alice])
            #expect(tx.outcomes[0].status == .failed)
            let steps = run(&tx, ["220 x\r\n", "250-x\r\n250 PIPELINING\r\n"])
            #expect(steps[1] == "MAIL FROM:<sender@origin.test>\r\nRCPT TO:<alice@dest.test>\r\nDATA\r\n")

            let allBad = transaction([DeliveryRecipient(id: 1, address: "x>@y")])
            #expect(!allBad.needsConnection)
            let badSender = transaction(reversePath: "s@x\nQUIT")
            #expect(!badSender.needsConnection)
            #expect(status(badSender) == [.failed, .failed])
        }

        @Test("timeouts, closed connections and protocol errors defer the unfinished recipients")
        func failures() {
            var early = transaction()
            #expect(render(early.fail(.timeout("greeting"))) == "<CLOSE>")
            #expect(early.shouldTryNextTarget)
            #expect(early.outcomes.map(\.enhanced) == ["4.4.2", "4.4.2"])

            var mid = transaction()
            _ = run(&mid, ["220 x\r\n", plainEHLO, "250 ok\r\n", "550 no\r\n", "250 ok\r\n", "354 go\r\n"])
            _ = mid.fail(.timeout("end-of-data"))
            #expect(!mid.shouldTryNextTarget)
            #expect(status(mid) == [.failed, .deferred])
            #expect(mid.outcomes[1].code == 451)
            #expect(mid.outcomes[1].enhanced == "4.4.2")

            var proto = transaction()
            _ = run(&proto, ["220 x\r\n", plainEHLO])
            _ = proto.fail(.protocolError("garbage"))
            #expect(proto.outcomes.map(\.enhanced) == ["4.5.0", "4.5.0"])

            // A failure after the final reply (while waiting for the QUIT reply) changes nothing.
            var done = transaction([alice])
            _ = run(&done, ["220 x\r\n", plainEHLO, "250 ok\r\n", "250 ok\r\n", "354 go\r\n", "250 ok\r\n"])
            _ = done.fail(.connectionClosed("reset"))
            #expect(status(done) == [.delivered])
        }

        @Test("random reply sequences never crash and always end with an outcome per recipient")
        func randomReplies() {
            var rng = SystemRandomNumberGenerator()
            let codes = [220, 221, 250, 251, 354, 421, 450, 451, 452, 500, 501, 502, 503, 550, 552, 554]
            for _ in 0..<2000 {
                var tx = transaction([alice, bob, carol], eightBit: Bool.random(using: &rng))
                var steps = 0
                while !tx.isFinished && steps < 20 {
                    let code = codes.randomElement(using: &rng)!
                    let lines = Int.random(in: 1...3, using: &rng)
                    let r = SMTPReply(code: code, enhanced: Bool.random(using: &rng) ? "\(code / 100).0.0" : nil,
                                      lines: (0..<lines).map { "l\($0)" + (Bool.random(using: &rng) ? " PIPELINING" : "") })
                    _ = tx.receive(r)
                    steps += 1
                }
                if !tx.isFinished { _ = tx.fail(.timeout("test")) }
                #expect(tx.isFinished)
                #expect(tx.outcomes.count == 3)
                #expect(tx.outcomes.allSatisfy { $0.status != .delivered || $0.code / 100 == 2 })
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

// MARK: - Real sockets

/// A scripted SMTP server on 127.0.0.1, port 0, serving connections one at a time on its own thread.
/// Records each peer's address and the exact bytes the client sent.
private final class ScriptedSMTPServer: @unchecked Sendable {
    enum Mode: Sendable {
        case normal
        /// Accepts and never sends a greeting.
        case silent
        /// Sends a greeting that is not an SMTP reply.
        case garbage
        /// Takes the body, then never sends the final reply.
        case silentAfterData
    }
    struct Script: Sendable {
        var mode: Mode = .normal
        var greeting = "220 mx.test ESMTP\r\n"
        /// nil: answer EHLO with 502.
        var ehlo: String? = pipeliningEHLO
        var mail = "250 2.1.0 ok\r\n"
        var rcpt: @Sendable (String) -> String = { _ in "250 2.1.5 ok\r\n" }
        var data = "354 go ahead\r\n"
        var final = "250 2.0.0 queued\r\n"
    }

    let port: UInt16
    private let listener: Socket
    private let script: Script
    private let lock = NSLock()
    private var peerList: [SocketAddress] = []
    private var transcriptList: [[UInt8]] = []
    private let finished = DispatchSemaphore(value: 0)

    init(_ script: Script = Script()) throws {
        self.script = script
        listener = try Socket.listen(on: SocketAddress(host: "127.0.0.1", port: 0))
        guard let port = listener.localAddress?.port else { throw SocketError(.system, "getsockname") }
        self.port = port
        let thread = Thread { [self] in
            self.serve()
            self.finished.signal()
        }
        thread.start()
    }

    var peers: [SocketAddress] { lock.withLock { peerList } }
    var transcripts: [String] { lock.withLock { transcriptList.map { String(decoding: $0, as: UTF8.self) } } }

    private var joined = false

    /// Closes the listener and waits (at most 10 s) for the server thread to end. Idempotent.
    func stop() {
        listener.close()
        let first = lock.withLock { () -> Bool in
            defer { joined = true }
            return !joined
        }
        if first { _ = finished.wait(timeout: .now() + 10) }
    }

    private func serve() {
        while let (conn, peer) = try? listener.accept() {
            lock.withLock { peerList.append(peer) }
            let transcript = handle(conn)
            conn.close()
            lock.withLock { transcriptList.append(transcript) }
        }
    }

    private func handle(_ conn: Socket) -> [UInt8] {
        conn.setTimeouts(read: 5, write: 5)
        let reader = BufferedReader(stream: conn)
        var transcript: [UInt8] = []
        func drainUntilEOF() {
            while let line = try? reader.readLine(maxLength: 1 << 20) { transcript += line }
        }
        switch script.mode {
        case .silent:
            drainUntilEOF(); return transcript
        case .garbage:
            try? conn.write("hello there, I am not SMTP\r\n")
            drainUntilEOF(); return transcript
        case .normal, .silentAfterData:
            break
        }
        try? conn.write(script.greeting)
        if !script.greeting.hasPrefix("2") { drainUntilEOF(); return transcript }
        while let line = try? reader.readLine(maxLength: 4096) {
            transcript += line
            let command = String(decoding: line, as: UTF8.self).uppercased()
            if command.hasPrefix("EHLO") {
                try? conn.write(script.ehlo ?? "502 5.5.1 unrecognized command\r\n")
            } else if command.hasPrefix("HELO") {
                try? conn.write("250 mx.test\r\n")
            } else if command.hasPrefix("MAIL") {
                try? conn.write(script.mail)
            } else if command.hasPrefix("RCPT") {
                let text = String(decoding: line, as: UTF8.self)
                let address = text.split(separator: "<").last?.split(separator: ">").first.map(String.init) ?? ""
                try? conn.write(script.rcpt(address))
            } else if command.hasPrefix("DATA") {
                try? conn.write(script.data)
                guard script.data.hasPrefix("354") else { continue }
                while let dataLine = try? reader.readLine(maxLength: 1 << 20) {
                    transcript += dataLine
                    if dataLine.elementsEqual(Array(".\r\n".utf8)) { break }
                }
                if script.mode == .silentAfterData { drainUntilEOF(); return transcript }
                try? conn.write(script.final)
            } else if command.hasPrefix("QUIT") {
                try? conn.write("221 2.0.0 bye\r\n")
                break
            } else {
                try? conn.write("500 5.5.2 what?\r\n")
            }
        }
        return transcript
    }
}

/// A port on 127.0.0.1 where nothing listens (connecting is refused).
private func closedPort() throws -> UInt16 {
    let s = try Socket.listen(on: SocketAddress(host: "127.0.0.1", port: 0))
    let port = s.localAddress?.port ?? 1
    s.close()
    return port
}

private let fastTimeouts = SMTPClientTimeouts(connect: 2, command: 3, dataInitiation: 3, dataBlock: 3, dataTermination: 3)

extension SMTPClientTests {
    @Suite("real sockets")
    struct Sockets {
        @Test("pipelined delivery from a bound source address: exact wire bytes incl. dot-stuffing")
        func pipelinedWire() throws {
            let server = try ScriptedSMTPServer(ScriptedSMTPServer.Script(
                rcpt: { $0.hasPrefix("bob") ? "550 5.1.1 no such user\r\n" : "250 2.1.5 ok\r\n" }))
            defer { server.stop() }
            let body = Array("Subject: hi\r\n\r\n.leading dot\r\n..two\r\nlast line without CRLF".utf8)
            let request = DeliveryRequest(reversePath: "sender@origin.test", recipients: [alice, bob], body: body,
                                          sendingIP: "127.0.0.10", heloName: "client.test")
            let report = SMTPDeliverer(timeouts: fastTimeouts).deliver(
                request, to: [DeliveryTarget(host: "mx.dest.test", address: "127.0.0.1", port: server.port)])
            server.stop()
            #expect(report.mxHost == "mx.dest.test")
            #expect(report.remoteAddress == "127.0.0.1")
            #expect(report.outcomes == [
                RecipientOutcome(recipientID: 1, status: .delivered, code: 250, enhanced: "2.0.0", text: "queued"),
                RecipientOutcome(recipientID: 2, status: .failed, code: 550, enhanced: "5.1.1", text: "no such user"),
            ])
            #expect(server.peers.map(\.host) == ["127.0.0.10"])
            #expect(server.transcripts == [
                "EHLO client.test\r\n" +
                "MAIL FROM:<sender@origin.test> SIZE=\(body.count)\r\n" +
                "RCPT TO:<alice@dest.test>\r\nRCPT TO:<bob@dest.test>\r\nDATA\r\n" +
                "Subject: hi\r\n\r\n..leading dot\r\n...two\r\nlast line without CRLF\r\n.\r\n" +
                "QUIT\r\n",
            ])
        }

        @Test("HELO fallback, null reverse path and an 8-bit body without PIPELINING")
        func sequentialWire() throws {
            let server = try ScriptedSMTPServer(ScriptedSMTPServer.Script(ehlo: nil))
            defer { server.stop() }
            let body = Array("Subject: caf\u{E9}\r\n\r\nna\u{EF}ve\r\n".utf8)
            let request = DeliveryRequest(reversePath: "", recipients: [alice], body: body,
                                          sendingIP: "127.0.0.11", heloName: "client.test")
            let report = SMTPDeliverer(timeouts: fastTimeouts).deliver(
                request, to: [DeliveryTarget(host: "mx", address: "127.0.0.1", port: server.port)])
            server.stop()
            #expect(report.outcomes.map(\.status) == [.delivered])
            #expect(server.peers.map(\.host) == ["127.0.0.11"])
            #expect(server.transcripts == [
                "EHLO client.test\r\nHELO client.test\r\nMAIL FROM:<>\r\nRCPT TO:<alice@dest.test>\r\nDATA\r\n" +
                String(decoding: body, as: UTF8.self) + ".\r\nQUIT\r\n",
            ])
        }

        @Test("8BITMIME offered without PIPELINING: BODY=8BITMIME and one command per reply")
        func eightBitWire() throws {
            let server = try ScriptedSMTPServer(ScriptedSMTPServer.Script(ehlo: "250-mx.test\r\n250 8BITMIME\r\n"))
            defer { server.stop() }
            let body: [UInt8] = Array("x: y\r\n\r\n".utf8) + [0xC3, 0xA9, 0x0D, 0x0A]
            let request = DeliveryRequest(reversePath: "s@o.test", recipients: [alice, bob], body: body,
                                          sendingIP: "127.0.0.12", heloName: "client.test")
            let report = SMTPDeliverer(timeouts: fastTimeouts).deliver(
                request, to: [DeliveryTarget(host: "mx", address: "127.0.0.1", port: server.port)])
            server.stop()
            #expect(report.outcomes.map(\.status) == [.delivered, .delivered])
            #expect(server.transcripts.first?.hasPrefix(
                "EHLO client.test\r\nMAIL FROM:<s@o.test> BODY=8BITMIME\r\nRCPT TO:<alice@dest.test>\r\nRCPT TO:<bob@dest.test>\r\nDATA\r\n") == true)
        }

        @Test("a refused first target falls through to the second; a 421 greeting too")
        func fallThrough() throws {
            let busy = try ScriptedSMTPServer(ScriptedSMTPServer.Script(greeting: "421 4.7.0 busy, try later\r\n"))
            defer { busy.stop() }
            let good = try ScriptedSMTPServer()
            defer { good.stop() }
            let refused = try closedPort()
            let request = DeliveryRequest(reversePath: "s@o.test", recipients: [alice], body: Array("x\r\n".utf8),
                                          sendingIP: "127.0.0.13", heloName: "client.test")
            let report = SMTPDeliverer(timeouts: fastTimeouts).deliver(request, to: [
                DeliveryTarget(host: "mx1", address: "127.0.0.1", port: refused),
                DeliveryTarget(host: "mx2", address: "127.0.0.1", port: busy.port),
                DeliveryTarget(host: "mx3", address: "127.0.0.1", port: good.port),
            ])
            busy.stop(); good.stop()
            #expect(report.mxHost == "mx3")
            #expect(report.outcomes.map(\.status) == [.delivered])
            #expect(busy.peers.map(\.host) == ["127.0.0.13"])
            #expect(busy.transcripts == [""])
            #expect(good.peers.map(\.host) == ["127.0.0.13"])
        }

        @Test("every target refused: all recipients deferred 451 4.4.1 naming the last error")
        func allRefused() throws {
            let p1 = try closedPort(), p2 = try closedPort()
            let request = DeliveryRequest(reversePath: "s@o.test", recipients: [alice, bob], body: Array("x\r\n".utf8),
                                          sendingIP: "127.0.0.14", heloName: "client.test")
            let report = SMTPDeliverer(timeouts: fastTimeouts).deliver(request, to: [
                DeliveryTarget(host: "mx1", address: "127.0.0.1", port: p1),
                DeliveryTarget(host: "mx2", address: "127.0.0.1", port: p2),
            ])
            #expect(report.mxHost == nil)
            for o in report.outcomes {
                #expect(o.status == .deferred)
                #expect(o.code == 451)
                #expect(o.enhanced == "4.4.1")
                #expect(o.text.contains("mx2[127.0.0.1]:\(p2)"))
            }
            let none = SMTPDeliverer(timeouts: fastTimeouts).deliver(request, to: [])
            #expect(none.outcomes.map(\.code) == [451, 451])
            // A sending IP of the wrong family skips the target.
            let v6 = SMTPDeliverer(timeouts: fastTimeouts).deliver(request, to: [DeliveryTarget(host: "mx6", address: "::1", port: p1)])
            #expect(v6.outcomes.allSatisfy { $0.status == .deferred && $0.enhanced == "4.4.1" })
        }

        @Test("silent server: greeting timeout defers 4.4.2; silence after the body defers 4.4.2")
        func timeouts() throws {
            let short = SMTPClientTimeouts(connect: 2, command: 0.5, dataInitiation: 0.5, dataBlock: 2, dataTermination: 0.5)
            let silent = try ScriptedSMTPServer(ScriptedSMTPServer.Script(mode: .silent))
            defer { silent.stop() }
            let request = DeliveryRequest(reversePath: "s@o.test", recipients: [alice], body: Array("x\r\n".utf8),
                                          sendingIP: "127.0.0.15", heloName: "client.test")
            let start = Date()
            let r1 = SMTPDeliverer(timeouts: short).deliver(request, to: [DeliveryTarget(host: "mx", address: "127.0.0.1", port: silent.port)])
            #expect(Date().timeIntervalSince(start) < 5)
            #expect(r1.outcomes.map(\.status) == [.deferred])
            #expect(r1.outcomes.first?.enhanced == "4.4.2")

            let stall = try ScriptedSMTPServer(ScriptedSMTPServer.Script(mode: .silentAfterData))
            defer { stall.stop() }
            let r2 = SMTPDeliverer(timeouts: short).deliver(request, to: [DeliveryTarget(host: "mx", address: "127.0.0.1", port: stall.port)])
            #expect(r2.outcomes.map(\.status) == [.deferred])
            #expect(r2.outcomes.first?.enhanced == "4.4.2")
            #expect(r2.mxHost == "mx")
        }

        @Test("a garbage greeting is a protocol error: deferred, never a crash")
        func garbageGreeting() throws {
            let server = try ScriptedSMTPServer(ScriptedSMTPServer.Script(mode: .garbage))
            defer { server.stop() }
            let request = DeliveryRequest(reversePath: "s@o.test", recipients: [alice], body: Array("x\r\n".utf8),
                                          sendingIP: "127.0.0.16", heloName: "client.test")
            let report = SMTPDeliverer(timeouts: fastTimeouts).deliver(request, to: [DeliveryTarget(host: "mx", address: "127.0.0.1", port: server.port)])
            #expect(report.outcomes.map(\.status) == [.deferred])
            #expect(report.outcomes.first?.enhanced == "4.5.0")
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

extension SMTPClientTests {
    @Suite("next hops")
    struct NextHops {
        let resolver = fakeResolver([
            "dest.test/MX": [
                DNSRecord(name: "dest.test", type: .mx, ttl: 60, data: .mx(preference: 20, exchange: "mx2.dest.test")),
                DNSRecord(name: "dest.test", type: .mx, ttl: 60, data: .mx(preference: 10, exchange: "mx1.dest.test")),
                DNSRecord(name: "dest.test", type: .mx, ttl: 60, data: .mx(preference: 30, exchange: "mx3.dest.test")),
            ],
            "mx1.dest.test/A": [DNSRecord(name: "mx1.dest.test", type: .a, ttl: 60, data: .a("192.0.2.1")),
                                DNSRecord(name: "mx1.dest.test", type: .a, ttl: 60, data: .a("192.0.2.2"))],
            "mx1.dest.test/AAAA": [DNSRecord(name: "mx1.dest.test", type: .aaaa, ttl: 60, data: .aaaa("2001:db8::1"))],
            "mx2.dest.test/A": [DNSRecord(name: "mx2.dest.test", type: .a, ttl: 60, data: .a("192.0.2.3"))],
            "mx2.dest.test/AAAA": [],
            // mx3 shares an address with mx1: dropped as a repeat.
            "mx3.dest.test/A": [DNSRecord(name: "mx3.dest.test", type: .a, ttl: 60, data: .a("192.0.2.1"))],
            "mx3.dest.test/AAAA": [],
            "null.test/MX": [DNSRecord(name: "null.test", type: .mx, ttl: 60, data: .mx(preference: 0, exchange: ""))],
            "relay.test/A": [DNSRecord(name: "relay.test", type: .a, ttl: 60, data: .a("198.51.100.7"))],
            "relay.test/AAAA": [],
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
            #expect(f.enhanced == "4.4.3")
        }

        @Test("null MX and NXDOMAIN are permanent with their enhanced codes; literals skip DNS")
        func failures() throws {
            let hops = NextHopResolver(resolver: resolver, mxPort: 25)
            #expect(hops.targets(for: "null.test", staticNextHop: nil) == .failure(
                NextHopFailure(permanent: true, enhanced: "5.1.10", text: "domain null.test does not accept mail (null MX)")))
            guard case .failure(let nx) = hops.targets(for: "gone.test", staticNextHop: nil) else { Issue.record("NXDOMAIN"); return }
            #expect(nx.permanent)
            #expect(nx.enhanced == "5.1.2")
            #expect(try hops.targets(for: "[192.0.2.9]", staticNextHop: nil).get() == [
                DeliveryTarget(host: "[192.0.2.9]", address: "192.0.2.9", port: 25)])
        }
    }
}
