import Foundation
import HatoTestKit
import Testing
@testable import HatoIO
@testable import SMTPCore

/// A test stand-in for the socket driver: carries out actions in order and
/// answers every `.store` immediately.
private struct Driver {
    var session: SMTPServerSession
    var output: [UInt8] = []
    var stores: [SubmittedMessage] = []
    var closed = false
    var failStores = false
    /// Every batch of actions, to check ordering rules.
    var batches: [[SMTPServerAction]] = []

    init(policy: SMTPServerPolicy = testPolicy, relay: Bool = true, peer: SocketAddress = SocketAddress(host: "192.0.2.7", port: 40000)) {
        session = SMTPServerSession(policy: policy, peer: peer, relayPermitted: relay)
        perform(session.start())
    }

    mutating func perform(_ actions: [SMTPServerAction]) {
        batches.append(actions)
        for (index, action) in actions.enumerated() {
            switch action {
            case .send(let bytes):
                output += bytes
            case .store(let message):
                #expect(index == actions.count - 1, ".store must end its batch")
                stores.append(message)
                perform(failStores ? session.messageStoreFailed() : session.messageStored(id: "Q\(stores.count)"))
            case .close:
                #expect(index == actions.count - 1, ".close must end its batch")
                closed = true
            case .authenticate, .startTLS:
                Issue.record("no AUTH or TLS in this driver")
            }
        }
    }

    mutating func feed(_ text: String) { feed(Array(text.utf8)) }
    mutating func feed(_ bytes: [UInt8]) { perform(session.receive(bytes[...])) }

    var text: String { String(decoding: output, as: UTF8.self) }
    /// Reply lines without the greeting.
    var replies: [String] {
        text.components(separatedBy: "\r\n").dropFirst().filter { !$0.isEmpty }
    }
    /// The three-digit codes of every final reply line after the greeting.
    var codes: [Int] {
        replies.compactMap { line in
            let chars = Array(line)
            guard chars.count >= 4, chars[3] == " " else { return nil }
            return Int(String(chars[0..<3]))
        }
    }
}

private let testPolicy = SMTPServerPolicy(hostname: "mx.test", maxMessageSize: 2000, maxRecipients: 3)
private let ehloReply = "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 2000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250 CHUNKING\r\n"
private let envelope = "EHLO client.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"

@Suite("SMTP server session")
struct SMTPServerTests {

    // MARK: - Replies

    @Test("reply encoding: multi-line, enhanced code on every line, no-text form")
    func replyEncoding() {
        #expect(SMTPReply(250, "2.0.0", "a", "b").description == "250-2.0.0 a\r\n250 2.0.0 b\r\n")
        #expect(SMTPReply(220, nil, "mx ESMTP").description == "220 mx ESMTP\r\n")
        #expect(SMTPReply(code: 250, enhanced: nil, lines: []).description == "250\r\n")
        #expect(SMTPReply(250, "2.0.0").description == "250 2.0.0\r\n")
        #expect(SMTPReply(250, nil, "evil\r\n250 injected").description == "250 evil  250 injected\r\n")
        #expect(SMTPReply(354, nil, "go").isPositive)
        #expect(!SMTPReply(452, "4.5.3", "x").isPositive)
    }

    // MARK: - Command parsing

    struct ParseCase: Sendable, CustomTestStringConvertible {
        let line: String
        let expected: SMTPCommand
        var testDescription: String { line }
    }

    static let goodCommands: [ParseCase] = [
        ParseCase(line: "EHLO client.example.com", expected: .ehlo("client.example.com")),
        ParseCase(line: "ehlo [192.0.2.1]", expected: .ehlo("[192.0.2.1]")),
        ParseCase(line: "EhLo [IPv6:2001:db8::1]", expected: .ehlo("[IPv6:2001:db8::1]")),
        ParseCase(line: "HELO localhost", expected: .helo("localhost")),
        ParseCase(line: "HELO host  ", expected: .helo("host")),
        ParseCase(line: "MAIL FROM:<a@b.c>", expected: .mail(.mailbox(Mailbox(localPart: "a", domain: "b.c")), MailParameters())),
        ParseCase(line: "mail from: <a@b.c>", expected: .mail(.mailbox(Mailbox(localPart: "a", domain: "b.c")), MailParameters())),
        ParseCase(line: "MAIL FROM:<>", expected: .mail(.null, MailParameters())),
        ParseCase(line: "MAIL FROM:<> SIZE=1024 BODY=8BITMIME", expected: .mail(.null, MailParameters(size: 1024, body: .eightBitMIME))),
        ParseCase(line: "MAIL FROM:<a@b.c> body=7bit size=0", expected: .mail(.mailbox(Mailbox(localPart: "a", domain: "b.c")), MailParameters(size: 0, body: .sevenBit))),
        ParseCase(line: "MAIL FROM:<a@b.c> SIZE=99999999999999999999", expected: .mail(.mailbox(Mailbox(localPart: "a", domain: "b.c")), MailParameters(size: Int.max))),
        ParseCase(line: "RCPT TO:<x@y.z>", expected: .rcpt(.mailbox(Mailbox(localPart: "x", domain: "y.z")), RecipientParameters())),
        ParseCase(line: "rcpt to:<Postmaster>", expected: .rcpt(.postmaster, RecipientParameters())),
        ParseCase(line: "RCPT TO:<postmaster@y.z>", expected: .rcpt(.mailbox(Mailbox(localPart: "postmaster", domain: "y.z")), RecipientParameters())),
        ParseCase(line: "DATA", expected: .data),
        ParseCase(line: "rset", expected: .rset),
        ParseCase(line: "NOOP anything goes", expected: .noop),
        ParseCase(line: "QUIT", expected: .quit),
        ParseCase(line: "VRFY someone", expected: .vrfy("someone")),
        ParseCase(line: "HELP", expected: .help),
        ParseCase(line: "HELP MAIL", expected: .help),
        ParseCase(line: "EXPN list", expected: .expn),
        ParseCase(line: "STARTTLS", expected: .starttls),
        ParseCase(line: "AUTH PLAIN AGFAAGI=", expected: .auth(mechanism: "PLAIN", initialResponse: "AGFAAGI=")),
        ParseCase(line: "auth login", expected: .auth(mechanism: "LOGIN", initialResponse: nil)),
        ParseCase(line: "BDAT 100 LAST", expected: .bdat(size: 100, last: true)),
        ParseCase(line: "bdat 0 last", expected: .bdat(size: 0, last: true)),
        ParseCase(line: "BDAT 65536", expected: .bdat(size: 65536, last: false)),
        ParseCase(line: "MAIL FROM:<a@b.c> SMTPUTF8 RET=HDRS ENVID=QQ+2B1 AUTH=<>",
                  expected: .mail(.mailbox(Mailbox(localPart: "a", domain: "b.c")), MailParameters(smtputf8: true, ret: .headers, envelopeID: "QQ+2B1", auth: "<>"))),
        ParseCase(line: "MAIL FROM:<jöran@bücher.example> SMTPUTF8",
                  expected: .mail(.mailbox(Mailbox(localPart: "jöran", domain: "bücher.example")), MailParameters(smtputf8: true))),
        ParseCase(line: "RCPT TO:<x@y.z> NOTIFY=FAILURE,delay ORCPT=rfc822;x+40y.z",
                  expected: .rcpt(.mailbox(Mailbox(localPart: "x", domain: "y.z")),
                                  RecipientParameters(notify: .on(success: false, failure: true, delay: true), originalRecipient: "rfc822;x+40y.z"))),
        ParseCase(line: "RCPT TO:<x@y.z> NOTIFY=NEVER", expected: .rcpt(.mailbox(Mailbox(localPart: "x", domain: "y.z")), RecipientParameters(notify: .never))),
    ]

    @Test("valid command lines parse", arguments: goodCommands)
    func parsesValidCommands(_ c: ParseCase) {
        #expect(SMTPCommand.parse(c.line) == .success(c.expected))
    }

    struct RejectCase: Sendable, CustomTestStringConvertible {
        let line: String
        let code: Int
        let enhanced: String
        var testDescription: String { line }
    }

    static let badCommands: [RejectCase] = [
        RejectCase(line: "", code: 500, enhanced: "5.5.2"),
        RejectCase(line: "FOO bar", code: 500, enhanced: "5.5.1"),
        RejectCase(line: "MAILX FROM:<a@b>", code: 500, enhanced: "5.5.1"),
        RejectCase(line: "EHLO", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "EHLO bad_name!", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "EHLO two words", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "EHLO -lead.example", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "EHLO [300.1.1.1]", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "HELO", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "MAIL <a@b.c>", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "MAIL FROM:a@b.c", code: 501, enhanced: "5.1.7"),
        RejectCase(line: "MAIL FROM:<a@b.c", code: 501, enhanced: "5.1.7"),
        RejectCase(line: "MAIL FROM:<a@b.c> SIZE=", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "MAIL FROM:<a@b.c> SIZE=12k", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "MAIL FROM:<a@b.c> SIZE", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "MAIL FROM:<a@b.c> BODY=BINARYMIME", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "MAIL FROM:<a@b.c> BODY", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "MAIL FROM:<a@b.c> SIZE=1 SIZE=2", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "MAIL FROM:<a@b.c> SMTPUTF8=yes", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "MAIL FROM:<a@b.c> RET=ALL", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "MAIL FROM:<a@b.c> RET=FULL RET=HDRS", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "MAIL FROM:<a@b.c> ENVID=a+zz", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "MAIL FROM:<a@b.c> ENVID=" + String(repeating: "e", count: 101), code: 501, enhanced: "5.5.4"),
        RejectCase(line: "MAIL FROM:<a@b.c> AUTH=a+zz", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "MAIL FROM:<a@b.c> XFORWARD=1", code: 555, enhanced: "5.5.4"),
        RejectCase(line: "MAIL FROM:<jöran@example.com>", code: 553, enhanced: "5.6.7"),
        RejectCase(line: "MAIL FROM:<a@b.c>SIZE=1", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "MAIL FROM:<a@b.c> =x", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "RCPT <x@y.z>", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "RCPT TO:<>", code: 501, enhanced: "5.1.3"),
        RejectCase(line: "RCPT TO:<x@y.z> NOTIFY=NEVER,SUCCESS", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "RCPT TO:<x@y.z> NOTIFY=SOMETIMES", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "RCPT TO:<x@y.z> NOTIFY=", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "RCPT TO:<x@y.z> ORCPT=x@y.z", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "RCPT TO:<x@y.z> ORCPT=rfc822;", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "RCPT TO:<x@y.z> ORCPT=rfc822;a+4", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "RCPT TO:<x@y.z> FOO=1", code: 555, enhanced: "5.5.4"),
        RejectCase(line: "RCPT TO:<ü@y.z>", code: 553, enhanced: "5.6.7"),
        RejectCase(line: "AUTH", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "AUTH PLAIN a b", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "AUTH PL@IN", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "BDAT", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "BDAT x", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "BDAT 10 FIRST", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "BDAT 1234567890123456789", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "STARTTLS now", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "DATA now", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "RSET x", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "QUIT now", code: 501, enhanced: "5.5.4"),
        RejectCase(line: "VRFY", code: 501, enhanced: "5.5.4"),
    ]

    @Test("invalid command lines produce the right reply class", arguments: badCommands)
    func rejectsInvalidCommands(_ c: RejectCase) {
        guard case .failure(let reply) = SMTPCommand.parse(c.line) else {
            Issue.record("\(c.line) parsed")
            return
        }
        #expect(reply.code == c.code)
        #expect(reply.enhanced == c.enhanced)
    }

    // MARK: - Transcripts

    @Test("greeting is 220 <hostname> ESMTP Hato, sent once")
    func greeting() {
        var session = SMTPServerSession(policy: testPolicy, peer: SocketAddress(host: "::1", port: 1), relayPermitted: true)
        #expect(session.start() == [.send(Array("220 mx.test ESMTP Hato\r\n".utf8))])
        #expect(session.start() == [])
    }

    @Test("full session transcript: exact reply bytes and stored message")
    func fullTranscript() throws {
        var d = Driver()
        d.feed("EHLO client.test\r\n")
        d.feed("MAIL FROM:<alice@example.org> SIZE=40\r\n")
        d.feed("RCPT TO:<bob@example.net>\r\n")
        d.feed("RCPT TO:<carol@example.net>\r\n")
        d.feed("DATA\r\n")
        d.feed("Subject: hi\r\n\r\nHello\r\n.\r\n")
        d.feed("QUIT\r\n")
        let expected = "220 mx.test ESMTP Hato\r\n" + ehloReply
            + "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n"
            + "354 End data with <CR><LF>.<CR><LF>\r\n"
            + "250 2.0.0 Ok: queued as Q1\r\n"
            + "221 2.0.0 Bye\r\n"
        #expect(d.text == expected)
        #expect(d.closed)
        #expect(d.session.isClosed)
        try #require(d.stores.count == 1)
        let m = d.stores[0]
        #expect(m.heloName == "client.test")
        #expect(m.peer == SocketAddress(host: "192.0.2.7", port: 40000))
        #expect(m.reversePath == .mailbox(Mailbox(localPart: "alice", domain: "example.org")))
        #expect(m.recipients.map(\.address) == ["bob@example.net", "carol@example.net"])
        #expect(m.body == Array("Subject: hi\r\n\r\nHello\r\n".utf8))
        #expect(m.bodyType == .sevenBit)
        #expect(m.declaredSize == 40)
        #expect(m.esmtp)
        #expect(d.session.receive(Array("NOOP\r\n".utf8)[...]) == [])
    }

    @Test("HELO session: single-line 250 and esmtp false")
    func heloSession() throws {
        var d = Driver()
        d.feed("HELO client.test\r\nMAIL FROM:<>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nx\r\n.\r\n")
        #expect(d.replies == ["250 mx.test", "250 2.1.0 Ok", "250 2.1.5 Ok",
                              "354 End data with <CR><LF>.<CR><LF>", "250 2.0.0 Ok: queued as Q1"])
        try #require(d.stores.count == 1)
        #expect(d.stores[0].esmtp == false)
        #expect(d.stores[0].reversePath == .null)
    }

    @Test("other verbs: RSET, NOOP, VRFY, HELP, unknown; STARTTLS/AUTH unavailable without TLS/users; EXPN")
    func otherVerbs() {
        var d = Driver()
        d.feed("NOOP\r\nRSET\r\nVRFY bob\r\nHELP\r\nXYZZY\r\nSTARTTLS\r\nAUTH PLAIN\r\nBDAT 3 LAST\r\nabcEXPN x\r\n")
        #expect(d.codes == [250, 250, 252, 214, 500, 502, 502, 503, 502])
        #expect(d.replies[2].hasPrefix("252 2.5.0 "))
        #expect(d.replies[3].hasPrefix("214 2.0.0 "))
        #expect(d.replies[4] == "500 5.5.1 Error: command not recognized")
        #expect(d.replies[5] == "502 5.5.1 Error: command not implemented")
    }

    @Test("verbs are case-insensitive and MAIL FROM: tolerates a space")
    func caseInsensitive() {
        var d = Driver()
        d.feed("ehlo c.test\r\nmail from: <a@x.test>\r\nrCpT To:<b@y.test>\r\nquit\r\n")
        #expect(d.codes == [250, 250, 250, 221])
        #expect(d.closed)
    }

    // MARK: - Sequencing

    @Test("MAIL before EHLO/HELO is 503 5.5.1, even with bad syntax")
    func mailBeforeHelo() {
        var d = Driver()
        d.feed("MAIL FROM:<a@x.test>\r\nMAIL FROM:bad\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
        #expect(d.replies == ["503 5.5.1 Error: send HELO/EHLO first", "503 5.5.1 Error: send HELO/EHLO first",
                              "503 5.5.1 Error: need MAIL command", "503 5.5.1 Error: send HELO/EHLO first"])
    }

    @Test("RCPT before MAIL, DATA before MAIL/RCPT, nested MAIL are 503 5.5.1")
    func sequenceErrors() {
        var d = Driver()
        d.feed("EHLO c.test\r\nRCPT TO:<b@y.test>\r\nDATA\r\nMAIL FROM:<a@x.test>\r\nDATA\r\nMAIL FROM:<a@x.test>\r\n")
        #expect(d.replies.dropFirst(8) == ["503 5.5.1 Error: need MAIL command", "503 5.5.1 Error: need MAIL command",
                                          "250 2.1.0 Ok", "503 5.5.1 Error: need RCPT command",
                                          "503 5.5.1 Error: nested MAIL command"])
    }

    @Test("DATA after every RCPT was rejected is 554 5.5.1 no valid recipients")
    func noValidRecipients() {
        var d = Driver()
        d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<bad>\r\nDATA\r\n")
        #expect(d.codes == [250, 250, 501, 554])
        #expect(d.replies.last == "554 5.5.1 Error: no valid recipients")
    }

    @Test("EHLO and RSET reset the transaction")
    func resets() {
        var d = Driver()
        d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nEHLO c.test\r\nRCPT TO:<b@y.test>\r\n")
        d.feed("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRSET\r\nRCPT TO:<b@y.test>\r\nMAIL FROM:<a@x.test>\r\n")
        #expect(d.codes == [250, 250, 250, 503, 250, 250, 250, 503, 250])
    }

    @Test("EHLO with a missing or invalid domain is 501 5.5.4 and MAIL stays refused")
    func badEhlo() {
        var d = Driver()
        d.feed("EHLO\r\nEHLO under_score\r\nHELO a..b\r\nMAIL FROM:<a@x.test>\r\n")
        #expect(d.replies == ["501 5.5.4 Syntax: EHLO hostname", "501 5.5.4 Syntax: EHLO hostname",
                              "501 5.5.4 Syntax: HELO hostname", "503 5.5.1 Error: send HELO/EHLO first"])
    }

    // MARK: - Policy

    @Test("relay denied: RCPT is 554 5.7.1 and the recipient is not added; postmaster without smtp.postmaster is 550 5.3.5")
    func relayDenied() {
        var d = Driver(relay: false)
        d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<postmaster>\r\nDATA\r\n")
        #expect(d.replies.dropFirst(9) == ["554 5.7.1 Relay access denied",
                                          "550 5.3.5 Postmaster address not configured on this server (smtp.postmaster)",
                                          "554 5.5.1 Error: no valid recipients"])
        #expect(d.stores.isEmpty)
    }

    @Test("recipients beyond maxRecipients get 452 4.5.3 and the message keeps the first ones")
    func tooManyRecipients() throws {
        var d = Driver()
        d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\n")
        d.feed("RCPT TO:<r1@y.test>\r\nRCPT TO:<r2@y.test>\r\nRCPT TO:<r3@y.test>\r\nRCPT TO:<r4@y.test>\r\nRCPT TO:<r5@y.test>\r\n")
        d.feed("DATA\r\nbody\r\n.\r\n")
        #expect(d.codes.dropFirst() == [250, 250, 250, 250, 452, 452, 354, 250])
        #expect(d.replies.contains("452 4.5.3 Too many recipients"))
        try #require(d.stores.count == 1)
        #expect(d.stores[0].recipients.map(\.localPart) == ["r1", "r2", "r3"])
    }

    @Test("<Postmaster> is accepted for RCPT and addressed to the server's host name")
    func postmaster() throws {
        var d = Driver()
        d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<POSTMASTER>\r\nDATA\r\nx\r\n.\r\n")
        try #require(d.stores.count == 1)
        #expect(d.stores[0].recipients == [Mailbox(localPart: "postmaster", domain: "mx.test")])
    }

    @Test("SIZE above the maximum is 552 5.3.4 at MAIL; malformed SIZE is 501; unknown parameter 555")
    func sizeParameter() {
        var d = Driver()
        d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test> SIZE=2001\r\nMAIL FROM:<a@x.test> SIZE=x\r\n")
        d.feed("MAIL FROM:<a@x.test> FOO=1\r\nMAIL FROM:<a@x.test> SIZE=2000\r\n")
        #expect(d.codes.dropFirst() == [552, 501, 555, 250])
        #expect(d.replies[8].hasPrefix("552 5.3.4 "))
    }

    @Test("BODY=8BITMIME is recorded; 8-bit content without it is accepted as declared (7BIT)")
    func bodyType() throws {
        var d = Driver()
        d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test> BODY=8BITMIME\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
        d.feed([0xC3, 0xA9, 0x0D, 0x0A, 0x2E, 0x0D, 0x0A])
        d.feed("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
        d.feed([0xFF, 0x0D, 0x0A, 0x2E, 0x0D, 0x0A])
        try #require(d.stores.count == 2)
        #expect(d.stores[0].bodyType == .eightBitMIME)
        #expect(d.stores[0].body == [0xC3, 0xA9, 0x0D, 0x0A])
        #expect(d.stores[1].bodyType == .sevenBit)
        #expect(d.stores[1].body == [0xFF, 0x0D, 0x0A])
    }

    // MARK: - Pipelining

    @Test("pipelining: one receive, replies in order, store pauses until messageStored")
    func pipelining() throws {
        var session = SMTPServerSession(policy: testPolicy, peer: SocketAddress(host: "192.0.2.7", port: 1), relayPermitted: true)
        _ = session.start()
        let input = envelope + "one\r\n.\r\nMAIL FROM:<c@x.test>\r\nRCPT TO:<d@y.test>\r\nDATA\r\ntwo\r\n.\r\nQUIT\r\n"
        let first = session.receive(Array(input.utf8)[...])
        try #require(first.count == 2)
        #expect(first[0] == .send(Array((ehloReply + "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n").utf8)))
        guard case .store(let m1) = first[1] else { Issue.record("expected store"); return }
        #expect(m1.body == Array("one\r\n".utf8))
        #expect(session.isAwaitingStore)
        // Nothing is processed while the store is pending, even new input.
        #expect(session.receive(Array("NOOP\r\n".utf8)[...]) == [])
        let second = session.messageStored(id: "A")
        try #require(second.count == 2)
        #expect(second[0] == .send(Array("250 2.0.0 Ok: queued as A\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n".utf8)))
        guard case .store(let m2) = second[1] else { Issue.record("expected store"); return }
        #expect(m2.body == Array("two\r\n".utf8))
        #expect(m2.reversePath.address == "c@x.test")
        let third = session.messageStored(id: "B")
        #expect(third == [.send(Array("250 2.0.0 Ok: queued as B\r\n221 2.0.0 Bye\r\n".utf8)), .close])
        #expect(session.messageStored(id: "C") == [])
    }

    @Test("messageStoreFailed answers 451 4.3.0 and continues with buffered commands")
    func storeFailure() {
        var d = Driver()
        d.failStores = true
        d.feed(envelope + "x\r\n.\r\nNOOP\r\n")
        #expect(d.replies.suffix(2) == ["451 4.3.0 Error: queue file write error", "250 2.0.0 Ok"])
        #expect(d.stores.count == 1)
        #expect(!d.session.isAwaitingStore)
    }

    @Test("every two-way split of the input gives the same transcript and messages")
    func everySplit() {
        let input = Array((envelope + "Subject: s\r\n\r\n..dot\r\n.\r\nNOOP\r\nMAIL FROM:<c@x.test>\r\nRCPT TO:<d@y.test>\r\nDATA\r\n.\r\nRSET\r\nQUIT\r\n").utf8)
        var whole = Driver()
        whole.feed(input)
        #expect(whole.stores.count == 2)
        #expect(whole.closed)
        for cut in 0...input.count {
            var d = Driver()
            d.feed(Array(input[0..<cut]))
            d.feed(Array(input[cut...]))
            #expect(d.output == whole.output, "split at \(cut)")
            #expect(d.stores == whole.stores, "split at \(cut)")
        }
        var bytewise = Driver()
        for b in input { bytewise.feed([b]) }
        #expect(bytewise.output == whole.output)
        #expect(bytewise.stores == whole.stores)
    }

    // MARK: - DATA content

    @Test("dot-unstuffing: exactly one leading dot is removed per line")
    func dotUnstuffing() throws {
        var d = Driver()
        d.feed(envelope + "..\r\n...x\r\n.y\r\nmid.dle\r\n. \r\n.\r\n")
        try #require(d.stores.count == 1)
        #expect(d.stores[0].body == Array(".\r\n..x\r\ny\r\nmid.dle\r\n \r\n".utf8))
    }

    @Test("a lone dot right after 354 ends an empty body")
    func emptyBody() throws {
        var d = Driver()
        d.feed(envelope + ".\r\nNOOP\r\n")
        try #require(d.stores.count == 1)
        #expect(d.stores[0].body.isEmpty)
        #expect(d.replies.suffix(2) == ["250 2.0.0 Ok: queued as Q1", "250 2.0.0 Ok"])
    }

    struct SmugglingCase: Sendable, CustomTestStringConvertible {
        let name: String
        let separator: String
        var testDescription: String { name }
    }

    static let smuggling: [SmugglingCase] = [
        SmugglingCase(name: "<LF>.<LF>", separator: "\n.\n"),
        SmugglingCase(name: "<LF>.<CR><LF>", separator: "\n.\r\n"),
        SmugglingCase(name: "<CR><LF>.<LF>", separator: "\r\n.\n"),
        SmugglingCase(name: "<CR>.<CR>", separator: "\r.\r"),
        SmugglingCase(name: "<CR>.<CR><LF>", separator: "\r.\r\n"),
        SmugglingCase(name: "<CR><LF>.<CR><CR><LF>", separator: "\r\n.\r\r\n"),
        SmugglingCase(name: "<CR><CR><LF>.<CR><CR><LF>", separator: "\r\r\n.\r\r\n"),
        SmugglingCase(name: "<CR><LF>.<CR>", separator: "\r\n.\r"),
        SmugglingCase(name: "<LF>.<CR>", separator: "\n.\r"),
    ]

    @Test("SMTP smuggling variants neither end the message nor start a second one", arguments: smuggling)
    func smugglingRejected(_ c: SmugglingCase) {
        let smuggled = "MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\nforged\r\n"
        var d = Driver()
        d.feed(envelope + "Subject: real\r\n\r\nreal" + c.separator + smuggled + ".\r\nNOOP\r\n")
        #expect(d.stores.isEmpty)
        #expect(d.replies.filter { $0.hasPrefix("354") }.count == 1)
        #expect(d.replies.suffix(2) == ["550 5.6.0 bare LF/CR not allowed", "250 2.0.0 Ok"])
        // The session is back at "after EHLO": a fresh transaction works.
        d.feed("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nok\r\n.\r\n")
        #expect(d.stores.count == 1)
        #expect(d.stores.first?.body == Array("ok\r\n".utf8))
    }

    @Test("a bare LF, bare CR or NUL makes the whole line up to CRLF one 500 5.5.2; none of it runs")
    func bareLineEndingsInCommands() {
        var d = Driver()
        d.feed("EHLO c.test\nNOOP\r\n")
        d.feed("NOOP\rQUIT\r\n")
        d.feed(Array("NO\u{0}OP\r\n".utf8))
        d.feed("MAIL FROM:<a@x.test>\r\n")
        #expect(d.codes == [500, 500, 500, 503], "the EHLO never ran, so MAIL is out of sequence")
        #expect(d.replies[0] == "500 5.5.2 Syntax error: bare LF in command line; lines end with CRLF (RFC 5321 section 2.3.8)")
        #expect(d.replies[1] == "500 5.5.2 Syntax error: bare CR in command line; lines end with CRLF (RFC 5321 section 2.3.8)")
        #expect(d.replies[2] == "500 5.5.2 Syntax error: NUL in command line")
        #expect(!d.closed)
    }

    @Test("message over maxMessageSize is 552 5.3.4, nothing stored, session in sync")
    func messageTooBig() {
        var d = Driver()
        d.feed(envelope)
        let line = Array(repeating: UInt8(ascii: "a"), count: 98) + [0x0D, 0x0A]
        for _ in 0..<100 { d.feed(line) }  // 10,000 octets > 2000
        d.feed(".\r\nNOOP\r\n")
        #expect(d.stores.isEmpty)
        #expect(d.replies.suffix(2) == ["552 5.3.4 Message size exceeds fixed maximum message size", "250 2.0.0 Ok"])
    }

    @Test("DataDecoder gives the same verdict, body and counts whether the content comes at once, octet by octet or in random pieces (runs of whole lines vs the state machine)")
    func decoderChunkingInvariant() {
        var random = SplitMix64(seed: 19)
        // Mostly ordinary text, with leading dots, bare CR/LF, long lines and the terminator.
        let pieces: [[UInt8]] = [Array("abc".utf8), Array("\r\n".utf8), Array("\r\n".utf8), Array("\r\n".utf8), Array(".".utf8),
                                 Array("..x".utf8), [0x0D], [0x0A], Array(repeating: 0x7A, count: 300), [0xC3, 0xA9], Array("\r\n.".utf8),
                                 // around the 32-octet steps of the line-break search
                                 Array(repeating: 0x61, count: 31), Array(repeating: 0x62, count: 32), Array(repeating: 0x63, count: 33),
                                 Array(repeating: 0x64, count: 63)]
        func decode(_ input: [UInt8], framing: DataDecoder.Framing, chunk: (Int) -> Int) -> (DataDecoder.Outcome?, Int, Int) {
            var d = DataDecoder(maxMessageSize: 5000, maxLineLength: 1000, framing: framing)
            var i = 0
            while i < input.count {
                let n = min(input.count - i, max(1, chunk(i)))
                let (used, finished) = d.feed(input[i..<(i + n)])
                i += used
                if finished { return (d.outcome(), i, d.octetCount) }
                if used < n { break }
            }
            if framing == .chunked { d.finishChunks(); return (d.outcome(), i, d.octetCount) }
            return (nil, i, d.octetCount)
        }
        for round in 0..<400 {
            var input: [UInt8] = []
            for _ in 0..<Int(random.next() % 40) { input += pieces[Int(random.next() % UInt64(pieces.count))] }
            if round % 3 != 0 { input += Array("\r\n.\r\nQUIT\r\n".utf8) }
            for framing in [DataDecoder.Framing.dotTerminated, .chunked] {
                let whole = decode(input, framing: framing) { _ in input.count }
                let octets = decode(input, framing: framing) { _ in 1 }
                var r = SplitMix64(seed: UInt64(round))
                let pieces = decode(input, framing: framing) { _ in Int(r.next() % 17) + 1 }
                #expect(whole.0 == octets.0 && whole.0 == pieces.0, "round \(round) \(framing): verdicts differ")
                #expect(whole.1 == octets.1 && whole.1 == pieces.1, "round \(round) \(framing): consumed differs")
                #expect(whole.2 == octets.2 && whole.2 == pieces.2, "round \(round) \(framing): octet counts differ")
            }
        }
    }

    @Test("the line-break search (32 octets at a time) finds the first CR or LF wherever it is, from any start")
    func lineBreakSearch() {
        var random = SplitMix64(seed: 77)
        for _ in 0..<2000 {
            let count = Int(random.next() % 200)
            var bytes = (0..<count).map { _ in UInt8(truncatingIfNeeded: 0x20 + random.next() % 90) }
            for _ in 0..<Int(random.next() % 3) where count > 0 {
                bytes[Int(random.next() % UInt64(count))] = random.next() % 2 == 0 ? 0x0D : 0x0A
            }
            let start = count == 0 ? 0 : Int(random.next() % UInt64(count + 1))
            let expected = bytes[start...].firstIndex { $0 == 0x0D || $0 == 0x0A } ?? count
            let found = bytes.withUnsafeBufferPointer { DataDecoder.firstLineBreak($0, from: start) }
            #expect(found == expected, "\(count) octets from \(start)")
        }
    }

    @Test("DataDecoder keeps memory bounded past the size limit but still finds the terminator")
    func decoderBounded() {
        var decoder = DataDecoder(maxMessageSize: 1000, expectedSize: 1 << 40)
        let chunk = Array(repeating: UInt8(ascii: "b"), count: 500) + [0x0D, 0x0A]
        for _ in 0..<2000 {
            let (used, finished) = decoder.feed(chunk[...])
            #expect(used == chunk.count && !finished)
            if used != chunk.count { break }
        }
        #expect(decoder.keptByteCount == 0)
        #expect(decoder.octetCount == 2000 * chunk.count)
        let tail = Array(".\r\nQUIT\r\n".utf8)
        let (used, finished) = decoder.feed(tail[...])
        #expect(used == 3 && finished)
        #expect(decoder.outcome() == .rejected(SMTPReply(552, "5.3.4", "Message size exceeds fixed maximum message size")))
    }

    @Test("a message of exactly maxMessageSize octets is accepted")
    func exactSize() {
        var d = Driver()
        d.feed(envelope)
        let line = Array(repeating: UInt8(ascii: "c"), count: 998) + [0x0D, 0x0A]
        d.feed(line + line)
        d.feed(".\r\n")
        #expect(d.stores.count == 1)
        #expect(d.stores.first?.body.count == 2000)
    }

    @Test("text lines over 1000 octets incl. CRLF are rejected with 550 5.6.0 at end of DATA")
    func longTextLine() {
        var d = Driver()
        d.feed(envelope)
        d.feed(Array(repeating: UInt8(ascii: "x"), count: 998) + [0x0D, 0x0A])    // exactly 1000: fine
        d.feed("." + String(repeating: "y", count: 998) + "\r\n.\r\n")            // stuffed dot not counted
        #expect(d.stores.count == 1)
        d.feed("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
        d.feed(Array(repeating: UInt8(ascii: "x"), count: 999) + [0x0D, 0x0A, 0x2E, 0x0D, 0x0A])
        #expect(d.stores.count == 1)
        #expect(d.replies.last == "550 5.6.0 line too long (max 998 octets plus CRLF)")
    }

    @Test("maxReceivedHeaders Received: fields in the header section is 554 5.4.6 Too many hops")
    func tooManyHops() {
        let policy = SMTPServerPolicy(hostname: "mx.test", maxMessageSize: 100_000, maxRecipients: 3, maxReceivedHeaders: 3)
        var d = Driver(policy: policy)
        let hop = "Received: from a by b; Tue, 1 Jan 2030 00:00:00 +0000\r\n"
        d.feed(envelope + hop + "received : folded\r\n\tcontinued\r\nSubject: x\r\n\r\n" + hop + hop + ".\r\n")
        #expect(d.stores.count == 1, "two hops in the header (two more in the body do not count) is below 3")
        d.feed("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n" + hop + "RECEIVED: x\r\n" + hop + "\r\nbody\r\n.\r\n")
        #expect(d.stores.count == 1)
        #expect(d.replies.last == "554 5.4.6 Too many hops")
    }

    // MARK: - Command line limits

    @Test("overlong command is 500 5.5.2 line too long; the next command still works")
    func overlongCommand() {
        var d = Driver()
        let long = "NOOP " + String(repeating: "z", count: 600) + "\r\n"
        d.feed(long + "NOOP\r\n")
        let exact = "NOOP " + String(repeating: "z", count: 505) + "\r\n"   // 512 octets
        #expect(exact.utf8.count == 512)
        d.feed(exact)
        d.feed("NOOP " + String(repeating: "z", count: 506) + "\r\n")       // 513 octets
        #expect(d.replies == ["500 5.5.2 Error: line too long", "250 2.0.0 Ok", "250 2.0.0 Ok", "500 5.5.2 Error: line too long"])
    }

    @Test("an endless command line is discarded in bounded memory, then the session resyncs at LF")
    func endlessCommandLine() {
        var d = Driver()
        let junk = Array(repeating: UInt8(ascii: "j"), count: 300)
        for _ in 0..<100 {
            d.feed(junk)
            #expect(d.session.bufferedByteCount <= testPolicy.maxCommandLength)
        }
        #expect(d.replies.isEmpty)
        d.feed("tail\r\nNOOP\r\n")
        #expect(d.replies == ["500 5.5.2 Error: line too long", "250 2.0.0 Ok"])
    }

    // MARK: - Ending the session

    @Test("QUIT closes; pipelined input after QUIT is ignored; receive after close returns nothing")
    func quitCloses() {
        var d = Driver()
        d.feed("QUIT\r\nNOOP\r\n")
        #expect(d.replies == ["221 2.0.0 Bye"])
        #expect(d.closed)
        #expect(d.session.receive(Array("NOOP\r\n".utf8)[...]).isEmpty)
        #expect(d.session.timeout().isEmpty)
    }

    @Test("timeout sends 421 4.4.2 and closes, also in the middle of DATA")
    func timeout() {
        var d = Driver()
        d.feed(envelope + "partial")
        d.perform(d.session.timeout())
        #expect(d.replies.last == "421 4.4.2 mx.test Error: timeout exceeded")
        #expect(d.closed)
        #expect(d.stores.isEmpty)
        #expect(d.session.receive(Array("\r\n.\r\n".utf8)[...]).isEmpty)
    }

    @Test("shutdown sends 421 4.3.2 and closes")
    func shutdown() {
        var session = SMTPServerSession(policy: testPolicy, peer: SocketAddress(host: "192.0.2.7", port: 1), relayPermitted: true)
        _ = session.start()
        #expect(session.shutdown() == [.send(Array("421 4.3.2 mx.test Service shutting down\r\n".utf8)), .close])
        #expect(session.isClosed)
    }

    @Test("random input never crashes; stores only happen with recipients and relay permission")
    func fuzz() {
        var rng = SplitMix64(seed: 42)
        let words = ["EHLO a.b\r\n", "MAIL FROM:<a@b.c>\r\n", "RCPT TO:<d@e.f>\r\n", "DATA\r\n", "\r\n.\r\n",
                     ".", "\r", "\n", "\u{0}", "\"", "<", ">", "@", "x", " SIZE=9", "RSET\r\n", "\u{FF}"]
        var stored = 0
        for round in 0..<400 {
            let relay = round % 2 == 0
            var d = Driver(relay: relay)
            // Every fourth round (a relaying one) starts with a valid envelope, so random content reaches the
            // end of DATA now and then (a stray bare LF or CR poisons its whole line up to CRLF).
            var input: [UInt8] = round % 4 == 0 ? Array((words[0] + words[1] + words[2] + words[3]).utf8) : []
            for _ in 0..<80 { input += Array(words[Int(rng.next() % UInt64(words.count))].utf8) }
            var i = 0
            while i < input.count {
                let n = Int(rng.next() % 40) + 1
                d.feed(Array(input[i..<min(input.count, i + n)]))
                i += n
                #expect(d.session.bufferedByteCount <= testPolicy.maxCommandLength)
            }
            if !relay { #expect(d.stores.isEmpty, "relay is denied, so no recipient can ever be accepted") }
            stored += d.stores.count
            for m in d.stores {
                #expect(!m.recipients.isEmpty && m.recipients.count <= testPolicy.maxRecipients)
                #expect(m.body.count <= testPolicy.maxMessageSize)
            }
        }
        #expect(stored > 0, "the generator does reach DATA")
    }

    // MARK: - Received header

    @Test("Received header: folded, CRLF-terminated, with a parseable RFC 5322 date")
    func receivedHeader() throws {
        let date = Date(timeIntervalSince1970: 1_700_000_000)   // Tue, 14 Nov 2023 22:13:20 UTC
        let bytes = ReceivedHeader.build(heloName: "client.test", peer: SocketAddress(host: "192.0.2.7", port: 40000),
                                         hostname: "mx.test", withESMTP: true, id: "ABC123",
                                         recipient: Mailbox(localPart: "bob", domain: "example.net"), date: date)
        let text = String(decoding: bytes, as: UTF8.self)
        #expect(text == "Received: from client.test ([192.0.2.7])\r\n\tby mx.test (Hato) with ESMTP id ABC123\r\n"
                     + "\tfor <bob@example.net>; Tue, 14 Nov 2023 22:13:20 +0000\r\n")
        for line in text.components(separatedBy: "\r\n") { #expect(line.utf8.count <= 78) }
        let dateText = try #require(text.components(separatedBy: "; ").last?.trimmingCharacters(in: .whitespacesAndNewlines))
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.dateFormat = "EEE, d MMM yyyy HH:mm:ss Z"
        #expect(formatter.date(from: dateText) == date)
    }

    @Test("Received header without recipient, IPv6 peer, SMTP protocol")
    func receivedHeaderVariants() {
        let bytes = ReceivedHeader.build(heloName: "[IPv6:2001:db8::5]", peer: SocketAddress(host: "2001:db8::5", port: 1),
                                         hostname: "mx.test", withESMTP: false, id: "Q\r\nX", recipient: nil,
                                         date: Date(timeIntervalSince1970: 0))
        #expect(String(decoding: bytes, as: UTF8.self) ==
            "Received: from [IPv6:2001:db8::5] ([IPv6:2001:db8::5])\r\n\tby mx.test (Hato) with SMTP id Q??X; Thu, 1 Jan 1970 00:00:00 +0000\r\n")
    }

    @Test("Received header folds the date onto its own line when the last clause is long")
    func receivedHeaderFolding() {
        let local = String(repeating: "r", count: 50)
        let bytes = ReceivedHeader.build(heloName: "c.test", peer: SocketAddress(host: "192.0.2.7", port: 1),
                                         hostname: "mx.test", withESMTP: true, id: "ID",
                                         recipient: Mailbox(localPart: local, domain: "example.net"),
                                         date: Date(timeIntervalSince1970: 0))
        let lines = String(decoding: bytes, as: UTF8.self).components(separatedBy: "\r\n")
        #expect(lines == ["Received: from c.test ([192.0.2.7])", "\tby mx.test (Hato) with ESMTP id ID",
                          "\tfor <\(local)@example.net>;", "\tThu, 1 Jan 1970 00:00:00 +0000", ""])
    }

    @Test("Received header written as bytes: the same field as the string-built one, over many names, ids, recipients and TLS")
    func receivedHeaderSameAsStringBuilt() {
        // The earlier implementation (strings joined, each value cleaned scalar by scalar), kept
        // here as the reference the byte writer must match exactly.
        func clean(_ text: String, allowSpace: Bool = false) -> String {
            String(String.UnicodeScalarView(text.unicodeScalars.map { scalar in
                (scalar.value > 0x20 && scalar.value < 0x7F) || (allowSpace && scalar.value == 0x20) ? scalar : "?"
            }))
        }
        func reference(heloName: String, peer: SocketAddress, hostname: String, keyword: String, tls: NegotiatedTLS?,
                       id: String, recipient: Mailbox?, date: Date) -> [UInt8] {
            var host = peer.host
            if let zone = host.firstIndex(of: "%") { host = String(host[..<zone]) }
            let literal = peer.isIPv6 ? "[IPv6:\(host)]" : "[\(host)]"
            var lines = ["Received: from \(clean(heloName.isEmpty ? "unknown" : heloName)) (\(clean(literal)))"]
            if let tls {
                lines.append("\tby \(clean(hostname)) (Hato) with \(clean(keyword))")
                lines.append("\t(\(clean(tls.protocolVersion)) \(clean(tls.cipher))) id \(clean(id))")
            } else {
                lines.append("\tby \(clean(hostname)) (Hato) with \(clean(keyword)) id \(clean(id))")
            }
            if let recipient, recipient.address.unicodeScalars.allSatisfy({ $0.isASCII }) {
                lines.append("\tfor <\(clean(recipient.address, allowSpace: true))>")
            }
            let stamp = ReceivedHeader.rfc5322Date(date)
            let last = lines.count - 1
            if lines[last].utf8.count + 2 + stamp.utf8.count <= 78 { lines[last] += "; " + stamp } else { lines[last] += ";"; lines.append("\t" + stamp) }
            return Array((lines.joined(separator: "\r\n") + "\r\n").utf8)
        }
        let names = ["", "c.test", "[IPv6:2001:db8::5]", "h\u{e9}llo.test", "\u{1F600}.x", "a b\tc\r\nd\u{7F}", String(repeating: "n", count: 70)]
        let peers = [SocketAddress(host: "192.0.2.7", port: 1), SocketAddress(host: "2001:db8::5", port: 2), SocketAddress(host: "fe80::1%eth0", port: 3)]
        let ids = ["ABC123", "Q\r\nX", "\u{e9}", String(repeating: "I", count: 40)]
        let recipients: [Mailbox?] = [nil, Mailbox(localPart: "bob", domain: "example.net"),
                                      Mailbox(localPart: "\"a b\"", domain: "example.net"),
                                      Mailbox(localPart: "j\u{f6}rg", domain: "example.net"),
                                      Mailbox(localPart: String(repeating: "r", count: 40), domain: "example.net"),
                                      Mailbox(localPart: String(repeating: "r", count: 33), domain: "example.net")]
        let tlses: [NegotiatedTLS?] = [nil, NegotiatedTLS(protocolVersion: "TLSv1.3", cipher: "TLS_AES_256_GCM_SHA384")]
        let dates = [Date(timeIntervalSince1970: 0), Date(timeIntervalSince1970: 1_700_000_000)]
        var compared = 0
        for helo in names { for peer in peers { for id in ids { for rcpt in recipients { for tls in tlses { for date in dates {
            for (hostname, keyword) in [("mx.test", "ESMTP"), ("m\u{fc}x.test", "UTF8SMTPSA")] {
                let built = ReceivedHeader.build(heloName: helo, peer: peer, hostname: hostname, protocol: keyword, tls: tls,
                                                 id: id, recipient: rcpt, date: date)
                let expected = reference(heloName: helo, peer: peer, hostname: hostname, keyword: keyword, tls: tls, id: id, recipient: rcpt, date: date)
                #expect(built == expected, "helo \(helo.debugDescription) peer \(peer.host) id \(id.debugDescription) rcpt \(rcpt?.address ?? "-")")
                compared += 1
            }
        } } } } } }
        #expect(compared == 7 * 3 * 4 * 6 * 2 * 2 * 2)
    }

    @Test("RFC 5322 dates: leap day, year ends, pre-1970, and clamping")
    func rfc5322Dates() {
        #expect(ReceivedHeader.rfc5322Date(Date(timeIntervalSince1970: 951_782_400)) == "Tue, 29 Feb 2000 00:00:00 +0000")
        #expect(ReceivedHeader.rfc5322Date(Date(timeIntervalSince1970: 1_704_067_199)) == "Sun, 31 Dec 2023 23:59:59 +0000")
        #expect(ReceivedHeader.rfc5322Date(Date(timeIntervalSince1970: -1)) == "Wed, 31 Dec 1969 23:59:59 +0000")
        #expect(ReceivedHeader.rfc5322Date(Date(timeIntervalSince1970: 1e300)) == "Fri, 31 Dec 9999 23:59:59 +0000")
        #expect(ReceivedHeader.rfc5322Date(Date(timeIntervalSince1970: .nan)) == "Thu, 1 Jan 1970 00:00:00 +0000")
    }
}
