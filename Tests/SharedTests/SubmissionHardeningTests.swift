import Foundation
import Testing
@testable import HatoIO
@testable import SMTPCore

/// A driver for the hardening rules: answers `.store` with a queue id (or the configured
/// failure), `.authenticate` with a failure, `.startTLS` with success.
private struct HardeningDriver {
    var session: SMTPServerSession
    var output: [UInt8] = []
    var stores: [SubmittedMessage] = []
    var storeFailure: StoreFailure?
    var closed = false

    init(policy: SMTPServerPolicy = hardeningPolicy, relay: Bool = true, plaintextAuth: Bool = false,
         peer: SocketAddress = SocketAddress(host: "203.0.113.5", port: 41000)) {
        session = SMTPServerSession(policy: policy, peer: peer, relayPermitted: relay, plaintextAuthPermitted: plaintextAuth)
        perform(session.start())
        output = []  // drop the greeting
    }

    mutating func perform(_ actions: [SMTPServerAction]) {
        for (index, action) in actions.enumerated() {
            switch action {
            case .send(let bytes):
                output += bytes
            case .store(let message):
                #expect(index == actions.count - 1, ".store must end its batch")
                stores.append(message)
                if let storeFailure {
                    perform(session.messageStoreFailed(storeFailure))
                } else {
                    perform(session.messageStored(id: "Q\(stores.count)"))
                }
            case .authenticate:
                #expect(index == actions.count - 1, ".authenticate must end its batch")
                perform(session.authenticationFinished(.failed))
            case .startTLS:
                #expect(index == actions.count - 1, ".startTLS must end its batch")
                perform(session.tlsStarted(NegotiatedTLS(protocolVersion: "TLSv1.3", cipher: "TLS_AES_128_GCM_SHA256")))
            case .close:
                #expect(index == actions.count - 1, ".close must end its batch")
                closed = true
            }
        }
    }

    mutating func feed(_ text: String) { feed(Array(text.utf8)) }
    mutating func feed(_ bytes: [UInt8]) { perform(session.receive(bytes[...])) }

    /// Final reply lines (code and a space), in order.
    var finals: [String] {
        String(decoding: output, as: UTF8.self).components(separatedBy: "\r\n").filter { $0.count >= 4 && Array($0)[3] == " " }
    }

    /// The final reply lines since the last call.
    mutating func take() -> [String] {
        defer { output = [] }
        return finals
    }
}

private let hardeningPolicy = SMTPServerPolicy(hostname: "relay.test", maxMessageSize: 5000, maxRecipients: 4)
private let bareLF = "500 5.5.2 Syntax error: bare LF in command line; lines end with CRLF (RFC 5321 section 2.3.8)"
private let bareCR = "500 5.5.2 Syntax error: bare CR in command line; lines end with CRLF (RFC 5321 section 2.3.8)"

@Suite("SMTP submission hardening: CRLF-only command lines, AUTH= only when offered, MAIL checks, postmaster")
struct SubmissionHardeningTests {

    // MARK: - Command lines end at CRLF only (RFC 5321 §2.3.8)

    struct LineCase: Sendable, CustomTestStringConvertible {
        let name: String
        let input: String
        /// The final replies, in order.
        let expected: [String]
        var testDescription: String { name }
    }

    /// Each bad line is answered by exactly one 500 and none of it runs: the commands that follow
    /// prove it (a MAIL that ran would make RCPT 250; an EHLO that ran would make MAIL 250).
    static let lineCases: [LineCase] = [
        LineCase(name: "after EHLO: RSET<LF>MAIL is one line; the MAIL never runs",
                 input: "EHLO c.test\r\nRSET\nMAIL FROM:<a@b.test>\r\nRCPT TO:<d@e.test>\r\n",
                 expected: ["250 CHUNKING", bareLF, "503 5.5.1 Error: need MAIL command"]),
        LineCase(name: "at the start: EHLO<LF>MAIL gets one reply; neither runs",
                 input: "EHLO foo\nMAIL FROM:<x@y.test>\r\nMAIL FROM:<x@y.test>\r\n",
                 expected: [bareLF, "503 5.5.1 Error: send HELO/EHLO first"]),
        LineCase(name: "inside MAIL: the path split by a bare LF",
                 input: "EHLO c.test\r\nMAIL FROM:<a@b.test\n>\r\nRCPT TO:<d@e.test>\r\n",
                 expected: ["250 CHUNKING", bareLF, "503 5.5.1 Error: need MAIL command"]),
        LineCase(name: "inside RCPT: RCPT<LF>DATA is one line; no recipient, no DATA",
                 input: "EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<d@e.test>\nDATA\r\nDATA\r\n",
                 expected: ["250 CHUNKING", "250 2.1.0 Ok", bareLF, "503 5.5.1 Error: need RCPT command"]),
        LineCase(name: "bare CR after EHLO: RSET<CR>MAIL",
                 input: "EHLO c.test\r\nRSET\rMAIL FROM:<a@b.test>\r\nRCPT TO:<d@e.test>\r\n",
                 expected: ["250 CHUNKING", bareCR, "503 5.5.1 Error: need MAIL command"]),
        LineCase(name: "bare CR at the start: EHLO<CR>MAIL",
                 input: "EHLO foo\rMAIL FROM:<x@y.test>\r\nMAIL FROM:<x@y.test>\r\n",
                 expected: [bareCR, "503 5.5.1 Error: send HELO/EHLO first"]),
        LineCase(name: "CR CR LF: the first CR is bare",
                 input: "EHLO c.test\r\r\nMAIL FROM:<x@y.test>\r\n",
                 expected: [bareCR, "503 5.5.1 Error: send HELO/EHLO first"]),
        LineCase(name: "LF CR LF: the LF is bare",
                 input: "EHLO c.test\n\r\nMAIL FROM:<x@y.test>\r\n",
                 expected: [bareLF, "503 5.5.1 Error: send HELO/EHLO first"]),
        LineCase(name: "several bare LFs in one line: still one reply",
                 input: "EHLO c.test\r\nRSET\nNOOP\nQUIT\nMAIL FROM:<a@b.test>\r\nNOOP\r\n",
                 expected: ["250 CHUNKING", bareLF, "250 2.0.0 Ok"]),
        LineCase(name: "pipelined commands after the bad line run one by one (RFC 2920)",
                 input: "EHLO c.test\r\nRSET\nMAIL FROM:<a@b.test>\r\nNOOP\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<d@e.test>\r\nRSET\r\n",
                 expected: ["250 CHUNKING", bareLF, "250 2.0.0 Ok", "250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 Ok"]),
        LineCase(name: "an overlong line keeps its own reply, and the bad line after it its own",
                 input: "NOOP " + String(repeating: "z", count: 600) + "\r\nRSET\nNOOP\r\nNOOP\r\n",
                 expected: ["500 5.5.2 Error: line too long", bareLF, "250 2.0.0 Ok"]),
        LineCase(name: "an overlong line with a bare LF inside is one reply: too long",
                 input: "NOOP " + String(repeating: "z", count: 300) + "\n" + String(repeating: "z", count: 300) + "\r\nNOOP\r\n",
                 expected: ["500 5.5.2 Error: line too long", "250 2.0.0 Ok"]),
        LineCase(name: "a lone LF line followed by a good line",
                 input: "\nNOOP\r\nNOOP\r\n",
                 expected: [bareLF, "250 2.0.0 Ok"]),
    ]

    @Test("a bare LF or CR never splits a command line: one 500 5.5.2 per line, none of it runs", arguments: lineCases)
    func commandLineFraming(_ c: LineCase) {
        var d = HardeningDriver()
        d.feed(c.input)
        #expect(d.finals == c.expected)
        #expect(d.stores.isEmpty)
        #expect(!d.closed)
    }

    @Test("every two-way split of input with bare LF/CR lines gives the same transcript")
    func everySplit() {
        let input = Array(("EHLO c.test\r\nRSET\nMAIL FROM:<a@b.test>\r\nNOOP\rRSET\r\nMAIL FROM:<a@b.test>\r\n"
                           + "RCPT TO:<d@e.test>\nDATA\r\nRCPT TO:<d@e.test>\r\nDATA\r\nhello\r\n.\r\nNOOP\r\n").utf8)
        var whole = HardeningDriver()
        whole.feed(input)
        #expect(whole.finals == ["250 CHUNKING", bareLF, bareCR, "250 2.1.0 Ok", bareLF, "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>",
                                 "250 2.0.0 Ok: queued as Q1", "250 2.0.0 Ok"])
        #expect(whole.stores.map(\.body) == [Array("hello\r\n".utf8)])
        for cut in 1..<input.count {
            var d = HardeningDriver()
            d.feed(Array(input[..<cut]))
            d.feed(Array(input[cut...]))
            #expect(d.finals == whole.finals, "split at \(cut)")
            #expect(d.stores.count == 1, "split at \(cut)")
        }
    }

    @Test("a bare LF line split across two reads: no reply until its CRLF, then exactly one 500")
    func bareLFAcrossReads() {
        var d = HardeningDriver()
        d.feed("EHLO c.test\r\n")
        #expect(d.take() == ["250 CHUNKING"])
        d.feed("RSET\n")
        #expect(d.take().isEmpty, "a bare LF ends nothing")
        d.feed("MAIL FROM:<a@b.test>")
        #expect(d.take().isEmpty)
        d.feed("\r")
        #expect(d.take().isEmpty)
        d.feed("\nRCPT TO:<d@e.test>\r\n")
        #expect(d.take() == [bareLF, "503 5.5.1 Error: need MAIL command"])
        // A CRLF split across reads still ends a good line.
        d.feed("NOOP\r")
        #expect(d.take().isEmpty)
        d.feed("\n")
        #expect(d.take() == ["250 2.0.0 Ok"])
    }

    @Test("an endless line of bare LFs stays bounded in memory and ends at CRLF with one reply")
    func endlessBareLFLine() {
        var d = HardeningDriver()
        for _ in 0..<2000 {
            d.feed("NOOP\n")
            #expect(d.session.bufferedByteCount <= hardeningPolicy.maxCommandLength)
        }
        #expect(d.take().isEmpty)
        // The discarded line ends with a CR in one read and its LF in the next.
        d.feed("tail\r")
        d.feed("\nNOOP\r\n")
        #expect(d.take() == ["500 5.5.2 Error: line too long", "250 2.0.0 Ok"])
    }

    @Test("endOfLine finds only CRLF, also when the CR ended the previous read")
    func endOfLine() {
        func end(_ text: String, afterCR: Bool = false) -> Int? {
            SMTPServerSession.endOfLine(in: Array(text.utf8)[...], afterCR: afterCR)
        }
        #expect(end("NOOP\r\n") == 5)
        #expect(end("NOOP\n") == nil)
        #expect(end("a\nb\r\n") == 4)
        #expect(end("\n") == nil)
        #expect(end("\n", afterCR: true) == 0)
        #expect(end("x\n", afterCR: true) == nil)
        #expect(end("\r\r\n") == 2)
        #expect(end("") == nil)
        let bytes = Array("xxNOOP\r\n".utf8)
        #expect(SMTPServerSession.endOfLine(in: bytes[2...], afterCR: false) == 7)
    }

    @Test("DATA content rules are unchanged: a bare LF in DATA is 550 5.6.0 after the dot, nothing stored")
    func dataUnchanged() {
        var d = HardeningDriver()
        d.feed("EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<d@e.test>\r\nDATA\r\nline one\nstill\r\n.\r\nNOOP\r\n")
        #expect(d.finals.suffix(2) == ["550 5.6.0 bare LF/CR not allowed", "250 2.0.0 Ok"])
        #expect(d.stores.isEmpty)
    }

    @Test("a SASL response with a bare LF is one 501; the session stays in sync")
    func saslResponseFraming() {
        let policy = SMTPServerPolicy(hostname: "relay.test", authAvailable: true)
        var d = HardeningDriver(policy: policy, plaintextAuth: true)
        d.feed("EHLO c.test\r\nAUTH LOGIN\r\ndXNlcg==\nNOOP\r\nNOOP\r\n")
        #expect(d.finals.suffix(3) == ["334 VXNlcm5hbWU6", "501 5.5.2 Error: bare <CR>, <LF> or NUL in authentication response", "250 2.0.0 Ok"])
    }

    // MARK: - AUTH= on MAIL only where AUTH is offered (RFC 4954 §5, RFC 5321 §4.1.1.11)

    @Test("MAIL with AUTH= where AUTH is not offered is 555 5.5.4, whatever the value")
    func authParameterNotOffered() {
        let notOffered = "555 5.5.4 Unsupported parameter AUTH (AUTH is not offered in this session)"
        // Users exist but AUTH is offered only over TLS: before STARTTLS it is not advertised.
        let tlsOnly = SMTPServerPolicy(hostname: "relay.test", tlsAvailable: true, authAvailable: true)
        var d = HardeningDriver(policy: tlsOnly)
        d.feed("EHLO c.test\r\nMAIL FROM:<a@b.test> AUTH=<>\r\nMAIL FROM:<a@b.test> AUTH=e+3Dmc2@example.com\r\n"
               + "MAIL FROM:<a@b.test> BODY=8BITMIME AUTH=<>\r\nMAIL FROM:<a@b.test> AUTH=x+zz\r\nMAIL FROM:<a@b.test>\r\n")
        #expect(d.finals == ["250 CHUNKING", notOffered, notOffered, notOffered, notOffered, "250 2.1.0 Ok"])
        // No users at all: never offered.
        var none = HardeningDriver(policy: SMTPServerPolicy(hostname: "relay.test"))
        none.feed("EHLO c.test\r\nMAIL FROM:<> AUTH=<>\r\n")
        #expect(none.finals == ["250 CHUNKING", notOffered])
        // The parser on its own.
        #expect(SMTPCommand.parse("MAIL FROM:<a@b.test> AUTH=<>", authParameter: false)
                == .failure(SMTPReply(555, "5.5.4", "Unsupported parameter AUTH (AUTH is not offered in this session)")))
    }

    @Test("MAIL with AUTH= where AUTH is offered parses <> and xtext as before; a bad value is 501")
    func authParameterOffered() {
        #expect(SMTPCommand.parse("MAIL FROM:<a@b.test> AUTH=<>") == .success(.mail(.mailbox(Mailbox(localPart: "a", domain: "b.test")), MailParameters(auth: "<>"))))
        #expect(SMTPCommand.parse("MAIL FROM:<a@b.test> AUTH=e+3Dmc2@example.com", authParameter: true)
                == .success(.mail(.mailbox(Mailbox(localPart: "a", domain: "b.test")), MailParameters(auth: "e+3Dmc2@example.com"))))
        // After STARTTLS AUTH is offered.
        let tlsOnly = SMTPServerPolicy(hostname: "relay.test", tlsAvailable: true, authAvailable: true)
        var d = HardeningDriver(policy: tlsOnly)
        d.feed("EHLO c.test\r\nSTARTTLS\r\n")
        _ = d.take()
        d.feed("EHLO c.test\r\nMAIL FROM:<a@b.test> AUTH=<>\r\nRSET\r\nMAIL FROM:<a@b.test> AUTH=e+3Dmc2@example.com\r\nRSET\r\n"
               + "MAIL FROM:<a@b.test> AUTH=a+zz\r\n")
        #expect(d.finals == ["250 CHUNKING", "250 2.1.0 Ok", "250 2.0.0 Ok", "250 2.1.0 Ok", "250 2.0.0 Ok", "501 5.5.4 Bad AUTH parameter"])
        // In plaintext where the loopback option offers it.
        var loopback = HardeningDriver(policy: SMTPServerPolicy(hostname: "relay.test", authAvailable: true), plaintextAuth: true)
        loopback.feed("EHLO c.test\r\nMAIL FROM:<> AUTH=<>\r\n")
        #expect(loopback.finals == ["250 CHUNKING", "250 2.1.0 Ok"])
    }

    // MARK: - The MAIL check and the store verdict (disk headroom)

    @Test("a MAIL check refusal answers MAIL with its reply and starts no transaction; it sees the declared SIZE")
    func mailCheck() {
        let sizes = SizeLog()
        var d = HardeningDriver()
        d.session.mailCheck = { _, parameters in
            sizes.append(parameters.size)
            return SMTPServerSession.insufficientStorage
        }
        d.feed("EHLO c.test\r\nMAIL FROM:<a@b.test> SIZE=1200\r\nRCPT TO:<d@e.test>\r\nMAIL FROM:<a@b.test>\r\nNOOP\r\n")
        #expect(d.finals == ["250 CHUNKING", "452 4.3.1 Insufficient system storage", "503 5.5.1 Error: need MAIL command",
                             "452 4.3.1 Insufficient system storage", "250 2.0.0 Ok"])
        #expect(sizes.values == [1200, nil])
        // Sequence and SIZE errors come first: the check is not consulted for them.
        d.feed("MAIL FROM:<a@b.test> SIZE=999999\r\n")
        #expect(sizes.values.count == 2)
        #expect(d.finals.last == "552 5.3.4 Message size exceeds fixed limit")
    }

    @Test("a store that fails for storage is 452 4.3.1, never 250, and pipelined commands continue")
    func storeInsufficientStorage() {
        var d = HardeningDriver()
        d.storeFailure = .insufficientStorage
        d.feed("EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<d@e.test>\r\nDATA\r\nhi\r\n.\r\nNOOP\r\n")
        #expect(d.finals.suffix(2) == ["452 4.3.1 Insufficient system storage", "250 2.0.0 Ok"])
        d.storeFailure = .temporary
        d.feed("MAIL FROM:<a@b.test>\r\nRCPT TO:<d@e.test>\r\nDATA\r\nhi\r\n.\r\n")
        #expect(d.finals.last == "451 4.3.0 Error: queue file write error")
        #expect(!d.finals.contains { $0.contains("queued as") })
    }

    // MARK: - postmaster (RFC 5321 §4.5.1)

    static let operatorPolicy = SMTPServerPolicy(hostname: "relay.test", maxMessageSize: 5000, maxRecipients: 4,
                                                 postmaster: Mailbox(localPart: "ops", domain: "example.com"))
    static let operatorMailbox = Mailbox(localPart: "ops", domain: "example.com")

    @Test("postmaster from a client that may not relay: accepted, rewritten to smtp.postmaster, original kept; others refused")
    func postmasterFromAnyone() throws {
        var d = HardeningDriver(policy: Self.operatorPolicy, relay: false)
        d.feed("EHLO c.test\r\nMAIL FROM:<someone@elsewhere.test>\r\nRCPT TO:<postmaster>\r\nRCPT TO:<PostMaster@RELAY.test>\r\n"
               + "RCPT TO:<user@example.net>\r\nRCPT TO:<postmaster@example.net>\r\nRCPT TO:<postmaster@relay.test> NOTIFY=NEVER ORCPT=rfc822;pm+40x.test\r\n"
               + "DATA\r\nSubject: hi\r\n\r\nhello\r\n.\r\n")
        #expect(d.finals == ["250 CHUNKING", "250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok", "554 5.7.1 Relay access denied",
                             "554 5.7.1 Relay access denied", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>", "250 2.0.0 Ok: queued as Q1"])
        let m = try #require(d.stores.first)
        #expect(m.recipients == [Self.operatorMailbox, Self.operatorMailbox, Self.operatorMailbox])
        #expect(m.originalRecipients == [Mailbox(localPart: "postmaster", domain: "relay.test"),
                                         Mailbox(localPart: "PostMaster", domain: "RELAY.test"),
                                         Mailbox(localPart: "postmaster", domain: "relay.test")])
        // ORCPT records the address the client gave (RFC 3461 §4.2), unless the client sent its own.
        #expect(m.recipientParameters.map(\.originalRecipient) == ["rfc822;postmaster@relay.test", "rfc822;PostMaster@RELAY.test", "rfc822;pm+40x.test"])
        #expect(m.recipientParameters[2].notify == .never)
    }

    @Test("postmaster admission (rate limit) is asked only for clients that may not relay, only when otherwise accepted")
    func postmasterAdmission() {
        let calls = CallCount()
        var d = HardeningDriver(policy: Self.operatorPolicy, relay: false)
        d.session.postmasterAdmission = {
            calls.increment() <= 2 ? nil : SMTPReply(452, "4.7.1", "Too many messages to postmaster from this client, try again later")
        }
        d.feed("EHLO c.test\r\nRCPT TO:<postmaster>\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<postmaster>\r\nRCPT TO:<postmaster>\r\nRCPT TO:<postmaster>\r\n")
        #expect(d.finals == ["250 CHUNKING", "503 5.5.1 Error: need MAIL command", "250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok",
                             "452 4.7.1 Too many messages to postmaster from this client, try again later"])
        #expect(calls.value == 3)
        // A relaying client is not limited, and is rewritten too.
        let relayCalls = CallCount()
        var r = HardeningDriver(policy: Self.operatorPolicy, relay: true)
        r.session.postmasterAdmission = { relayCalls.increment(); return SMTPReply(452, "4.7.1", "no") }
        r.feed("EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<postmaster>\r\nRCPT TO:<user@example.net>\r\nDATA\r\nhi\r\n.\r\n")
        #expect(relayCalls.value == 0)
        #expect(r.stores.first?.recipients == [Self.operatorMailbox, Mailbox(localPart: "user", domain: "example.net")])
        #expect(r.stores.first?.originalRecipients == [Mailbox(localPart: "postmaster", domain: "relay.test"), nil])
    }

    @Test("a feedback address (reputation.feedback_addresses) is accepted from a client that may not relay, any case, not rate limited, never rewritten; other recipients still refused")
    func feedbackAddressFromAnyone() throws {
        var policy = SMTPServerPolicy(hostname: "relay.test", maxMessageSize: 5000, maxRecipients: 4)
        policy.feedbackAddresses = [Mailbox(localPart: "fbl", domain: "relay.test")]
        let calls = CallCount()
        var d = HardeningDriver(policy: policy, relay: false)
        d.session.postmasterAdmission = { calls.increment(); return SMTPReply(452, "4.7.1", "no") }
        d.feed("EHLO isp.test\r\nMAIL FROM:<>\r\nRCPT TO:<FBL@Relay.Test>\r\nRCPT TO:<user@example.net>\r\nRCPT TO:<fbl2@relay.test>\r\n"
               + "DATA\r\nSubject: report\r\n\r\nx\r\n.\r\n")
        #expect(d.finals == ["250 CHUNKING", "250 2.1.0 Ok", "250 2.1.5 Ok", "554 5.7.1 Relay access denied", "554 5.7.1 Relay access denied",
                             "354 End data with <CR><LF>.<CR><LF>", "250 2.0.0 Ok: queued as Q1"])
        #expect(calls.value == 0, "not under the postmaster rate limit")
        let m = try #require(d.stores.first)
        #expect(m.recipients == [Mailbox(localPart: "FBL", domain: "Relay.Test")] && m.originalRecipients == [nil])
    }

    @Test("postmaster counts against max_recipients; the admission is not asked for a refused one")
    func postmasterRecipientLimit() {
        let calls = CallCount()
        var d = HardeningDriver(policy: Self.operatorPolicy, relay: false)
        d.session.postmasterAdmission = { calls.increment(); return nil }
        d.feed("EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n" + String(repeating: "RCPT TO:<postmaster>\r\n", count: 5))
        #expect(d.finals.suffix(2) == ["250 2.1.5 Ok", "452 4.5.3 Too many recipients"])
        #expect(calls.value == 4)
    }

    @Test("without smtp.postmaster: 550 5.3.5 for clients that may not relay; relaying clients keep postmaster@hostname")
    func postmasterNotConfigured() {
        var d = HardeningDriver(relay: false)
        d.feed("EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<postmaster>\r\nRCPT TO:<Postmaster@relay.test>\r\n")
        #expect(d.finals.suffix(2) == ["550 5.3.5 Postmaster address not configured on this server (smtp.postmaster)",
                                       "550 5.3.5 Postmaster address not configured on this server (smtp.postmaster)"])
        var r = HardeningDriver(relay: true)
        r.feed("EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<postmaster>\r\nDATA\r\nhi\r\n.\r\n")
        #expect(r.stores.first?.recipients == [Mailbox(localPart: "postmaster", domain: "relay.test")])
        #expect(r.stores.first?.originalRecipients == [nil])
        #expect(r.stores.first?.recipientParameters.first?.originalRecipient == nil)
    }

    @Test("xtext encoding for ORCPT (RFC 3461 §4)")
    func xtext() {
        #expect(SMTPServerSession.xtext("postmaster@relay.test") == "postmaster@relay.test")
        #expect(SMTPServerSession.xtext("a+b=c d") == "a+2Bb+3Dc+20d")
        #expect(SMTPCommand.isXText(SMTPServerSession.xtext("\"x y\"+=@z.test")))
    }
}

/// A thread-safe log of the SIZE values a MAIL check saw.
private final class SizeLog: @unchecked Sendable {
    private let lock = NSLock()
    private var list: [Int?] = []
    func append(_ size: Int?) { lock.withLock { list.append(size) } }
    var values: [Int?] { lock.withLock { list } }
}

/// A thread-safe call counter.
private final class CallCount: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    /// Counts one call and returns the new count.
    @discardableResult
    func increment() -> Int { lock.withLock { count += 1; return count } }
    var value: Int { lock.withLock { count } }
}

@Suite("Content memory: a session sheds its content when the server's budget is spent")
struct ContentSheddingTests {
    private static let ehlo = "EHLO client.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@hato.test>\r\n"

    @Test("DATA: kept octets are reported, shedding drops them, the rest is read and the message gets 452 4.3.1")
    func dataShed() {
        var d = HardeningDriver()
        d.feed(Self.ehlo + "DATA\r\n")
        _ = d.take()
        #expect(d.session.keptContentOctets == 0)
        d.feed("Subject: x\r\n\r\n" + String(repeating: "a", count: 100) + "\r\n")
        #expect(d.session.keptContentOctets == 116)
        d.session.shedContent()
        #expect(d.session.keptContentOctets == 0)
        d.feed(String(repeating: "b", count: 200) + "\r\n")
        #expect(d.session.keptContentOctets == 0, "nothing is kept after shedding")
        #expect(d.take().isEmpty, "no reply before the end of the content")
        d.feed(".\r\nNOOP\r\n")
        #expect(d.take() == ["452 4.3.1 Insufficient system storage", "250 2.0.0 Ok"])
        #expect(d.stores.isEmpty)
        // The next transaction is unaffected.
        d.feed("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@hato.test>\r\nDATA\r\nSubject: y\r\n\r\nok\r\n.\r\n")
        #expect(d.take().last == "250 2.0.0 Ok: queued as Q1")
        #expect(d.stores.count == 1)
    }

    @Test("a permanent rejection still wins over shedding: a bare LF in shed content is 550 5.6.0")
    func permanentWins() {
        var d = HardeningDriver()
        d.feed(Self.ehlo + "DATA\r\nSubject: x\r\n\r\n")
        _ = d.take()
        d.session.shedContent()
        d.feed("a\nb\r\n.\r\n")
        #expect(d.take() == ["550 5.6.0 bare LF/CR not allowed"])
    }

    @Test("BDAT: chunks kept between commands count; shedding answers 452 4.3.1 at the end of the current chunk")
    func bdatShed() {
        var d = HardeningDriver()
        d.feed(Self.ehlo + "BDAT 12\r\nSubject: x\r\n")
        #expect(d.take().last == "250 2.0.0 Ok: 12 octets received")
        #expect(d.session.keptContentOctets == 12, "the first chunk stays kept between commands")
        d.feed("BDAT 10\r\n01234")
        #expect(d.session.keptContentOctets == 17)
        d.session.shedContent()
        #expect(d.session.keptContentOctets == 0)
        d.feed("56789")
        #expect(d.take() == ["452 4.3.1 Insufficient system storage"])
        #expect(d.session.keptContentOctets == 0)
        d.feed("BDAT 3 LAST\r\nabc")
        #expect(d.take() == ["503 5.5.1 Error: need MAIL command"], "the transaction ended with the 452")
        #expect(d.stores.isEmpty)
    }

    @Test("shedding outside content changes nothing")
    func shedOutsideContent() {
        var d = HardeningDriver()
        d.feed(Self.ehlo)
        _ = d.take()
        d.session.shedContent()
        d.feed("DATA\r\nSubject: x\r\n\r\nhello\r\n.\r\n")
        #expect(d.take().last == "250 2.0.0 Ok: queued as Q1")
    }
}
