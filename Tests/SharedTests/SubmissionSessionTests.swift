import Foundation
import HatoTestKit
import Testing
@testable import HatoCrypto
@testable import HatoIO
@testable import SMTPCore

/// A driver for the submission features: answers `.store` with a queue id, `.authenticate`
/// with `authResult(credentials)`, and `.startTLS` with `tlsStarted` (or `tlsFailed`).
private struct SubmissionDriver {
    var session: SMTPServerSession
    var output: [UInt8] = []
    var stores: [SubmittedMessage] = []
    var credentials: [SASLCredentials] = []
    var tlsStarts = 0
    var closed = false
    var failTLS = false
    var authResult: (SASLCredentials) -> AuthenticationResult = { c in
        c.username == "app" && c.password == Array("secret".utf8) ? .succeeded(user: c.username) : .failed
    }

    init(policy: SMTPServerPolicy = submissionPolicy, relay: Bool = false, plaintextAuth: Bool = false) {
        session = SMTPServerSession(policy: policy, peer: SocketAddress(host: "198.51.100.9", port: 50000),
                                    relayPermitted: relay, plaintextAuthPermitted: plaintextAuth)
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
                perform(session.messageStored(id: "Q\(stores.count)"))
            case .authenticate(let c):
                #expect(index == actions.count - 1, ".authenticate must end its batch")
                credentials.append(c)
                perform(session.authenticationFinished(authResult(c)))
            case .startTLS:
                #expect(index == actions.count - 1, ".startTLS must end its batch")
                tlsStarts += 1
                perform(failTLS ? session.tlsFailed() : session.tlsStarted(NegotiatedTLS(protocolVersion: "TLSv1.3", cipher: "TLS_AES_256_GCM_SHA384")))
            case .close:
                #expect(index == actions.count - 1, ".close must end its batch")
                closed = true
            }
        }
    }

    mutating func feed(_ text: String) { feed(Array(text.utf8)) }
    mutating func feed(_ bytes: [UInt8]) { perform(session.receive(bytes[...])) }

    var text: String { String(decoding: output, as: UTF8.self) }
    var replies: [String] { text.components(separatedBy: "\r\n").filter { !$0.isEmpty } }
    /// Final reply lines (code + space).
    var finals: [String] {
        replies.filter { $0.count >= 4 && Array($0)[3] == " " }
    }
    var codes: [Int] { finals.compactMap { Int($0.prefix(3)) } }
    mutating func take() -> [String] {
        defer { output = [] }
        return finals
    }
}

private let submissionPolicy = SMTPServerPolicy(hostname: "relay.test", maxMessageSize: 5000, maxRecipients: 5,
                                                tlsAvailable: true, authAvailable: true)

private func b64(_ s: String) -> String { Data(s.utf8).base64EncodedString() }
private func b64(_ bytes: [UInt8]) -> String { Data(bytes).base64EncodedString() }

@Suite("SMTP submission session: STARTTLS, AUTH, BDAT, SMTPUTF8, DSN")
struct SubmissionSessionTests {

    // MARK: - EHLO

    @Test("EHLO advertises STARTTLS before TLS, AUTH PLAIN LOGIN only after it, and the fixed extensions")
    func ehloKeywords() {
        var d = SubmissionDriver()
        d.feed("EHLO client.test\r\n")
        #expect(d.text == "250-relay.test\r\n250-PIPELINING\r\n250-SIZE 5000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
                       + "250-ENHANCEDSTATUSCODES\r\n250-STARTTLS\r\n250-DSN\r\n250 CHUNKING\r\n")
        d.output = []
        d.feed("STARTTLS\r\n")
        #expect(d.take() == ["220 2.0.0 Ready to start TLS"])
        d.feed("EHLO client.test\r\n")
        #expect(!d.text.contains("STARTTLS"))
        #expect(d.replies.contains("250-AUTH PLAIN LOGIN"))
        #expect(d.session.tls == NegotiatedTLS(protocolVersion: "TLSv1.3", cipher: "TLS_AES_256_GCM_SHA384"))
    }

    @Test("AUTH is offered in plaintext only where the session allows it (loopback option)")
    func plaintextAuthOffer() {
        var plain = SubmissionDriver(plaintextAuth: true)
        plain.feed("EHLO c.test\r\n")
        #expect(plain.replies.contains("250-AUTH PLAIN LOGIN"))
        var noUsers = SubmissionDriver(policy: SMTPServerPolicy(hostname: "relay.test", tlsAvailable: true, authAvailable: false), plaintextAuth: true)
        noUsers.feed("EHLO c.test\r\nAUTH PLAIN\r\n")
        #expect(!noUsers.text.contains("AUTH PLAIN LOGIN"))
        #expect(noUsers.finals.last == "502 5.5.1 Error: authentication not enabled")
    }

    // MARK: - STARTTLS

    @Test("STARTTLS: commands pipelined after it are discarded, never executed, and the session restarts")
    func startTLSDiscardsPipelinedInput() throws {
        var d = SubmissionDriver(relay: true)
        d.failTLS = false
        // Everything after STARTTLS arrives in the same read as STARTTLS itself.
        let injected = "MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\nforged\r\n.\r\n"
        var actions = d.session.receive(Array(("EHLO c.test\r\nSTARTTLS\r\n" + injected).utf8)[...])
        #expect(actions.last == .startTLS)
        #expect(d.session.discardedAfterSTARTTLS == injected.utf8.count)
        // More plaintext before the handshake is dropped too.
        #expect(d.session.receive(Array("NOOP\r\n".utf8)[...]) == [])
        #expect(d.session.discardedAfterSTARTTLS == injected.utf8.count + 6)
        actions.removeLast()
        d.perform(actions)
        #expect(d.finals == ["250 CHUNKING", "220 2.0.0 Ready to start TLS"])
        d.output = []
        d.perform(d.session.tlsStarted(NegotiatedTLS(protocolVersion: "TLSv1.2", cipher: "ECDHE-RSA-AES256-GCM-SHA384")))
        #expect(d.output.isEmpty, "no greeting after STARTTLS: the client speaks first")
        // RFC 3207 §4.2: EHLO is forgotten; nothing of the injected transaction exists.
        d.feed("RCPT TO:<victim@y.test>\r\nMAIL FROM:<a@x.test>\r\nEHLO c.test\r\nSTARTTLS\r\nMAIL FROM:<a@x.test>\r\n")
        #expect(d.codes == [503, 503, 250, 503, 250])
        #expect(d.finals[0] == "503 5.5.1 Error: need MAIL command")
        #expect(d.finals[1] == "503 5.5.1 Error: send HELO/EHLO first")
        #expect(d.finals[3] == "503 5.5.1 Error: TLS already active")
        #expect(d.stores.isEmpty)
    }

    @Test("STARTTLS: unavailable 502, during a transaction 503, handshake failure closes silently")
    func startTLSErrors() {
        var none = SubmissionDriver(policy: SMTPServerPolicy(hostname: "relay.test"))
        none.feed("EHLO c.test\r\nSTARTTLS\r\n")
        #expect(none.finals.last == "502 5.5.1 Error: command not implemented")
        var d = SubmissionDriver(relay: true)
        d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nSTARTTLS\r\nRSET\r\n")
        #expect(d.finals.suffix(3) == ["250 2.1.0 Ok", "503 5.5.1 Error: MAIL transaction in progress", "250 2.0.0 Ok"])
        d.failTLS = true
        d.output = []
        d.feed("STARTTLS\r\n")
        #expect(d.finals == ["220 2.0.0 Ready to start TLS"])
        #expect(d.closed)
        #expect(d.session.isClosed)
    }

    @Test("require_tls: MAIL before STARTTLS is 530 5.7.0, after it 250")
    func requireTLS() {
        var policy = submissionPolicy
        policy.requireTLS = true
        var d = SubmissionDriver(policy: policy, relay: true)
        d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nSTARTTLS\r\n")
        #expect(d.finals.suffix(2) == ["530 5.7.0 Must issue a STARTTLS command first", "220 2.0.0 Ready to start TLS"])
        d.output = []
        d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\n")
        #expect(d.codes == [250, 250])
    }

    // MARK: - AUTH

    struct AuthCase: Sendable, CustomTestStringConvertible {
        let name: String
        /// Lines sent after EHLO over TLS.
        let input: [String]
        /// Final reply lines expected for them.
        let replies: [String]
        /// Credentials the session should hand to the driver (user names).
        let checked: [String]
        var testDescription: String { name }
    }

    static let authCases: [AuthCase] = [
        AuthCase(name: "PLAIN with initial response", input: ["AUTH PLAIN \(b64("\u{0}app\u{0}secret"))"],
                 replies: ["235 2.7.0 Authentication successful"], checked: ["app"]),
        AuthCase(name: "PLAIN with authzid equal to authcid", input: ["AUTH PLAIN \(b64("app\u{0}app\u{0}secret"))"],
                 replies: ["235 2.7.0 Authentication successful"], checked: ["app"]),
        AuthCase(name: "PLAIN acting as another identity is refused without a check", input: ["AUTH PLAIN \(b64("root\u{0}app\u{0}secret"))"],
                 replies: ["535 5.7.8 Error: authentication failed"], checked: []),
        AuthCase(name: "PLAIN wrong password", input: ["AUTH PLAIN \(b64("\u{0}app\u{0}guess"))"],
                 replies: ["535 5.7.8 Error: authentication failed"], checked: ["app"]),
        AuthCase(name: "PLAIN without initial response: 334 SP, then the message", input: ["AUTH PLAIN", b64("\u{0}app\u{0}secret")],
                 replies: ["334 ", "235 2.7.0 Authentication successful"], checked: ["app"]),
        AuthCase(name: "PLAIN = is an empty initial response (malformed PLAIN)", input: ["AUTH PLAIN ="],
                 replies: ["535 5.7.8 Error: authentication failed"], checked: []),
        AuthCase(name: "PLAIN with one NUL only", input: ["AUTH PLAIN \(b64("app\u{0}secret"))"],
                 replies: ["535 5.7.8 Error: authentication failed"], checked: []),
        AuthCase(name: "PLAIN with an empty password", input: ["AUTH PLAIN \(b64("\u{0}app\u{0}"))"],
                 replies: ["535 5.7.8 Error: authentication failed"], checked: []),
        AuthCase(name: "PLAIN with three NULs", input: ["AUTH PLAIN \(b64("\u{0}app\u{0}sec\u{0}ret"))"],
                 replies: ["535 5.7.8 Error: authentication failed"], checked: []),
        AuthCase(name: "PLAIN * cancels", input: ["AUTH PLAIN", "*"],
                 replies: ["334 ", "501 5.0.0 Authentication cancelled"], checked: []),
        AuthCase(name: "PLAIN undecodable initial response", input: ["AUTH PLAIN not*base64"],
                 replies: ["501 5.5.2 Error: cannot decode response"], checked: []),
        AuthCase(name: "PLAIN unpadded base64 is not accepted", input: ["AUTH PLAIN AGFwcABzZWNyZXQ"],
                 replies: ["501 5.5.2 Error: cannot decode response"], checked: []),
        AuthCase(name: "PLAIN undecodable response", input: ["AUTH PLAIN", "%%%%"],
                 replies: ["334 ", "501 5.5.2 Error: cannot decode response"], checked: []),
        AuthCase(name: "LOGIN: user name and password prompts", input: ["AUTH LOGIN", b64("app"), b64("secret")],
                 replies: ["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6", "235 2.7.0 Authentication successful"], checked: ["app"]),
        AuthCase(name: "LOGIN with the user name as initial response", input: ["AUTH LOGIN \(b64("app"))", b64("secret")],
                 replies: ["334 UGFzc3dvcmQ6", "235 2.7.0 Authentication successful"], checked: ["app"]),
        AuthCase(name: "LOGIN * cancels at the password", input: ["AUTH LOGIN", b64("app"), "*"],
                 replies: ["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6", "501 5.0.0 Authentication cancelled"], checked: []),
        AuthCase(name: "LOGIN empty user name", input: ["AUTH LOGIN", ""],
                 replies: ["334 VXNlcm5hbWU6", "535 5.7.8 Error: authentication failed"], checked: []),
        AuthCase(name: "LOGIN wrong password", input: ["auth login", b64("app"), b64("nope")],
                 replies: ["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6", "535 5.7.8 Error: authentication failed"], checked: ["app"]),
        AuthCase(name: "unknown mechanism", input: ["AUTH CRAM-MD5"], replies: ["504 5.5.4 Unrecognized authentication type"], checked: []),
        AuthCase(name: "second AUTH after success", input: ["AUTH PLAIN \(b64("\u{0}app\u{0}secret"))", "AUTH PLAIN \(b64("\u{0}app\u{0}secret"))"],
                 replies: ["235 2.7.0 Authentication successful", "503 5.5.1 Error: already authenticated"], checked: ["app"]),
        AuthCase(name: "AUTH inside a mail transaction", input: ["MAIL FROM:<a@x.test>", "AUTH PLAIN \(b64("\u{0}app\u{0}secret"))"],
                 replies: ["250 2.1.0 Ok", "503 5.5.1 Error: MAIL transaction in progress"], checked: []),
    ]

    @Test("AUTH PLAIN and LOGIN exchanges (RFC 4954, RFC 4616)", arguments: authCases)
    func authExchanges(_ c: AuthCase) {
        var d = SubmissionDriver()
        d.feed("STARTTLS\r\n")
        d.feed("EHLO c.test\r\n")
        d.output = []
        for line in c.input { d.feed(line + "\r\n") }
        #expect(d.finals == c.replies)
        #expect(d.credentials.map(\.username) == c.checked)
        #expect(!d.text.contains("secret"))
    }

    @Test("the empty PLAIN challenge is exactly 334 SP CRLF")
    func emptyChallengeBytes() {
        var d = SubmissionDriver(plaintextAuth: true)
        d.feed("EHLO c.test\r\n")
        d.output = []
        d.feed("AUTH PLAIN\r\n")
        #expect(d.output == Array("334 \r\n".utf8))
    }

    @Test("AUTH before TLS is 538 5.7.11; before EHLO or after HELO 503")
    func authPreconditions() {
        var d = SubmissionDriver()
        d.feed("AUTH PLAIN =\r\nHELO c.test\r\nAUTH PLAIN =\r\nEHLO c.test\r\nAUTH PLAIN \(b64("\u{0}app\u{0}secret"))\r\n")
        #expect(d.finals == ["503 5.5.1 Error: send EHLO first", "250 relay.test", "503 5.5.1 Error: send EHLO first",
                             "250 CHUNKING", "538 5.7.11 Encryption required for requested authentication mechanism"])
        #expect(d.credentials.isEmpty)
    }

    @Test("driver verdicts: temporary failure and rate limit are 454 4.7.0")
    func authVerdicts() {
        var d = SubmissionDriver(plaintextAuth: true)
        d.authResult = { _ in .rateLimited }
        d.feed("EHLO c.test\r\nAUTH PLAIN \(b64("\u{0}app\u{0}secret"))\r\n")
        #expect(d.finals.last == "454 4.7.0 Too many failed authentication attempts, try again later")
        d.authResult = { _ in .temporaryFailure }
        d.feed("AUTH PLAIN \(b64("\u{0}app\u{0}secret"))\r\n")
        #expect(d.finals.last == "454 4.7.0 Temporary authentication failure")
        #expect(d.session.authenticatedUser == nil)
    }

    @Test("commands pipelined behind AUTH wait for the verdict and run after it, in order")
    func pipelinedAfterAuth() throws {
        var session = SMTPServerSession(policy: submissionPolicy, peer: SocketAddress(host: "127.0.0.1", port: 1),
                                        relayPermitted: false, plaintextAuthPermitted: true)
        _ = session.start()
        let input = "EHLO c.test\r\nAUTH PLAIN \(b64("\u{0}app\u{0}secret"))\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@elsewhere.test>\r\n"
        let first = session.receive(Array(input.utf8)[...])
        guard case .authenticate(let c)? = first.last else { Issue.record("expected .authenticate"); return }
        #expect(c.username == "app" && c.password == Array("secret".utf8) && c.mechanism == "PLAIN")
        #expect("\(c)" == "PLAIN user=app password=<redacted>")
        let second = session.authenticationFinished(.succeeded(user: "app"))
        #expect(second == [.send(Array("235 2.7.0 Authentication successful\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n".utf8))])
    }

    @Test("relay: a client outside relay_networks gets 554 5.7.1 until AUTH succeeds; the message records the user")
    func relayAfterAuth() throws {
        var d = SubmissionDriver(relay: false)
        d.feed("STARTTLS\r\n")
        d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRSET\r\n")
        #expect(d.finals.suffix(3) == ["250 2.1.0 Ok", "554 5.7.1 Relay access denied", "250 2.0.0 Ok"])
        d.feed("AUTH LOGIN \(b64("app"))\r\n\(b64("secret"))\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n")
        #expect(d.finals.suffix(5) == ["235 2.7.0 Authentication successful", "250 2.1.0 Ok", "250 2.1.5 Ok",
                                       "354 End data with <CR><LF>.<CR><LF>", "250 2.0.0 Ok: queued as Q1"])
        let m = try #require(d.stores.first)
        #expect(m.authenticatedUser == "app")
        #expect(m.tls?.protocolVersion == "TLSv1.3")
        #expect(m.protocolKeyword == "ESMTPSA")
    }

    @Test("an AUTH line may exceed 512 octets up to 12288; longer is 500 and the session stays in sync")
    func longAuthLines() {
        var d = SubmissionDriver(plaintextAuth: true)
        d.authResult = { _ in .failed }
        d.feed("EHLO c.test\r\n")
        d.output = []
        let long = b64([0] + Array(repeating: UInt8(ascii: "u"), count: 200) + [0] + Array(repeating: UInt8(ascii: "p"), count: 255))
        #expect(long.utf8.count > 512)
        d.feed("AUTH PLAIN \(long)\r\n")
        #expect(d.finals == ["535 5.7.8 Error: authentication failed"])
        #expect(d.credentials.first?.username.count == 200)
        d.output = []
        d.feed("AUTH PLAIN " + String(repeating: "A", count: 13_000) + "\r\nNOOP\r\n")
        #expect(d.finals == ["500 5.5.2 Error: line too long", "250 2.0.0 Ok"])
        d.output = []
        d.feed("AUTH LOGIN\r\n" + String(repeating: "A", count: 13_000) + "\r\nNOOP\r\n")
        #expect(d.finals == ["334 VXNlcm5hbWU6", "501 5.5.2 Error: authentication response too long", "250 2.0.0 Ok"])
        d.output = []
        d.feed("AUTH PLAIN\r\nAG\u{0}FwcA==\r\nNOOP\r\n")
        #expect(d.finals == ["334 ", "501 5.5.2 Error: bare <CR>, <LF> or NUL in authentication response", "250 2.0.0 Ok"])
    }

    // MARK: - BDAT

    @Test("BDAT: chunks are exact octet counts, no dot handling, LAST stores the concatenation")
    func bdatChunks() throws {
        var d = SubmissionDriver(relay: true)
        d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test> BODY=8BITMIME\r\nRCPT TO:<b@y.test>\r\n")
        let first = "Subject: x\r\n\r\n.\r\n", second = ".\r\nend\r\n"
        d.feed("BDAT \(first.utf8.count)\r\n\(first)")
        d.feed("BDAT \(second.utf8.count) LAST\r\n\(second)")
        d.feed("NOOP\r\n")
        #expect(d.finals.suffix(4) == ["250 2.1.5 Ok", "250 2.0.0 Ok: 17 octets received", "250 2.0.0 Ok: queued as Q1", "250 2.0.0 Ok"])
        let m = try #require(d.stores.first)
        #expect(m.body == Array("Subject: x\r\n\r\n.\r\n.\r\nend\r\n".utf8))
        #expect(m.chunked)
        #expect(m.bodyType == .eightBitMIME)
    }

    @Test("BDAT: a rejected BDAT still consumes its chunk, so its octets never run as commands")
    func bdatRejectedConsumesChunk() {
        var d = SubmissionDriver(relay: true)
        let smuggled = "MAIL FROM:<e@x.test>\r\n"
        d.feed("EHLO c.test\r\nBDAT \(smuggled.utf8.count)\r\n\(smuggled)NOOP\r\n")
        #expect(d.finals.suffix(2) == ["503 5.5.1 Error: need MAIL command", "250 2.0.0 Ok"])
        d.feed("MAIL FROM:<a@x.test>\r\nBDAT \(smuggled.utf8.count) LAST\r\n\(smuggled)")
        #expect(d.finals.suffix(2) == ["250 2.1.0 Ok", "503 5.5.1 Error: need RCPT command"])
        d.feed("RCPT TO:<bad>\r\nBDAT 3 LAST\r\nabcBDAT 3 LASTLY\r\nxyzNOOP\r\n")
        #expect(d.finals.suffix(4) == ["501 5.1.3 Bad recipient address syntax", "554 5.5.1 Error: no valid recipients",
                                       "501 5.5.4 Syntax: BDAT chunk-size [LAST]", "250 2.0.0 Ok"])
        #expect(d.stores.isEmpty)
        #expect(!d.closed)
    }

    @Test("BDAT: a size that cannot be parsed loses the framing: 501 and close")
    func bdatUnparseableSize() {
        var d = SubmissionDriver(relay: true)
        d.feed("EHLO c.test\r\nBDAT ten LAST\r\nNOOP\r\n")
        #expect(d.finals.last == "501 5.5.4 Syntax: BDAT chunk-size [LAST]")
        #expect(d.closed)
    }

    @Test("BDAT: bare LF in a chunk is 550 5.6.0 at once, the transaction ends, the session stays in sync")
    func bdatBareLF() {
        var d = SubmissionDriver(relay: true)
        d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n")
        d.feed("BDAT 10\r\na\n.\nQUIT\r\nBDAT 2 LAST\r\nxyNOOP\r\n")
        #expect(d.finals.suffix(3) == ["550 5.6.0 bare LF/CR not allowed", "503 5.5.1 Error: need MAIL command", "250 2.0.0 Ok"])
        #expect(!d.closed)
        #expect(d.stores.isEmpty)
    }

    @Test("BDAT: content without a final CRLF gets one; a trailing bare CR is rejected; DATA after BDAT is 503")
    func bdatEndings() throws {
        var d = SubmissionDriver(relay: true)
        d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 4 LAST\r\nabcd")
        #expect(d.stores.first?.body == Array("abcd\r\n".utf8))
        d.feed("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 2\r\nab")
        d.feed("BDAT 1 LAST\r\n\r")
        #expect(d.finals.last == "550 5.6.0 bare LF/CR not allowed")
        d.feed("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 2\r\nabDATA\r\nRCPT TO:<c@y.test>\r\nBDAT 0 LAST\r\n")
        #expect(d.finals.suffix(4) == ["250 2.0.0 Ok: 2 octets received", "503 5.5.1 Error: DATA after BDAT",
                                       "503 5.5.1 Error: RCPT after BDAT", "250 2.0.0 Ok: queued as Q2"])
        #expect(d.stores.last?.body == Array("ab\r\n".utf8))
    }

    @Test("BDAT: a chunk that passes the size limit is 552 5.3.4 on that chunk, memory bounded")
    func bdatTooBig() {
        var d = SubmissionDriver(relay: true)
        d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 6000\r\n")
        let line = Array(repeating: UInt8(ascii: "z"), count: 98) + [0x0D, 0x0A]
        for _ in 0..<60 { d.feed(line) }
        d.feed("NOOP\r\n")
        #expect(d.finals.suffix(2) == ["552 5.3.4 Message size exceeds fixed maximum message size", "250 2.0.0 Ok"])
        #expect(d.stores.isEmpty)
    }

    @Test("BDAT: every two-way split of a chunked session gives the same transcript")
    func bdatEverySplit() {
        let input = Array("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 5\r\nab\r\ncBDAT 3 LAST\r\nd\r\nNOOP\r\nQUIT\r\n".utf8)
        var whole = SubmissionDriver(relay: true)
        whole.feed(input)
        #expect(whole.stores.first?.body == Array("ab\r\ncd\r\n".utf8))
        for cut in 0...input.count {
            var d = SubmissionDriver(relay: true)
            d.feed(Array(input[0..<cut]))
            d.feed(Array(input[cut...]))
            #expect(d.output == whole.output, "split at \(cut)")
            #expect(d.stores == whole.stores, "split at \(cut)")
        }
    }

    // MARK: - SMTPUTF8 and DSN parameters

    @Test("SMTPUTF8: UTF-8 addresses only when MAIL declared it; recorded on the message")
    func smtputf8() throws {
        var d = SubmissionDriver(relay: true)
        d.feed("EHLO c.test\r\nMAIL FROM:<jöran@bücher.example>\r\n")
        #expect(d.finals.last == "553 5.6.7 Must declare SMTPUTF8 to send unicode address")
        d.feed("MAIL FROM:<jöran@bücher.example> SMTPUTF8\r\nRCPT TO:<用户@例子.example>\r\nRCPT TO:<\"ü x\"@y.test>\r\nDATA\r\nx\r\n.\r\n")
        #expect(d.codes.suffix(5) == [250, 250, 250, 354, 250])
        let m = try #require(d.stores.first)
        #expect(m.smtputf8)
        #expect(m.recipients.map(\.address) == ["用户@例子.example", "\"ü x\"@y.test"])
        #expect(m.reversePath.address == "jöran@bücher.example")
        #expect(m.protocolKeyword == "UTF8SMTP")
        // Not well-formed UTF-8 is refused even with SMTPUTF8.
        d.feed("MAIL FROM:<a@x.test> SMTPUTF8\r\n")
        d.feed([UInt8]("RCPT TO:<".utf8) + [0xC3, 0x28] + Array("@y.test>\r\n".utf8))
        #expect(d.finals.last == "553 5.6.7 Recipient address is not valid UTF-8")
    }

    @Test("RFC 3461: RET, ENVID, NOTIFY and ORCPT are recorded with the message, per recipient")
    func dsnParameters() throws {
        var d = SubmissionDriver(relay: true)
        d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test> RET=HDRS ENVID=order+2B42\r\n")
        d.feed("RCPT TO:<b@y.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+40y.test\r\nRCPT TO:<c@y.test>\r\nRCPT TO:<d@y.test> NOTIFY=NEVER\r\n")
        d.feed("DATA\r\nx\r\n.\r\n")
        let m = try #require(d.stores.first)
        #expect(m.dsnReturn == .headers)
        #expect(m.envelopeID == "order+2B42")
        #expect(m.recipientParameters == [
            RecipientParameters(notify: .on(success: true, failure: true, delay: false), originalRecipient: "rfc822;b+40y.test"),
            RecipientParameters(),
            RecipientParameters(notify: .never),
        ])
        #expect(m.recipientParameters.map { $0.notify?.text } == ["SUCCESS,FAILURE", nil, "NEVER"])
    }

    // MARK: - Fuzz

    @Test("fuzz: random and mutated command lines never crash and every reply is a well-formed SMTP reply")
    func fuzzReplies() {
        var rng = SplitMix64(seed: 0xC0FFEE)
        let seeds = ["EHLO client.test", "HELO [192.0.2.1]", "MAIL FROM:<a@b.c> SIZE=100 BODY=8BITMIME", "MAIL FROM:<> RET=FULL ENVID=x",
                     "RCPT TO:<x@y.z> NOTIFY=SUCCESS ORCPT=rfc822;x@y.z", "RCPT TO:<Postmaster>", "DATA", "BDAT 3 LAST", "BDAT 0",
                     "RSET", "NOOP", "VRFY x", "HELP", "STARTTLS", "AUTH PLAIN AGFwcABzZWNyZXQ=", "AUTH LOGIN", "*", "YXBw",
                     "MAIL FROM:<\"q u\"@[IPv6:::1]> SMTPUTF8", "RCPT TO:<@a.b,@c.d:x@y.z>", "QUIT", "EXPN x", ".", ""]
        let alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcxyz0123456789<>@:.,;=+\" []-_*/\\".utf8) + [0x00, 0x09, 0x0D, 0x0A, 0x7F, 0x80, 0xC3, 0xA9, 0xFF]
        var lines = 0
        for round in 0..<300 {
            var d = SubmissionDriver(relay: round % 3 == 0, plaintextAuth: round % 2 == 0)
            d.authResult = { c in c.password.count % 2 == 0 ? .succeeded(user: c.username) : .failed }
            d.failTLS = round % 5 == 0
            var input: [UInt8] = []
            for _ in 0..<40 {
                var line = Array(seeds[Int(rng.next() % UInt64(seeds.count))].utf8)
                switch rng.next() % 4 {
                case 0:  // random line
                    line = (0..<Int(rng.next() % 80)).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] }
                case 1:  // mutate: replace, insert, delete a few bytes
                    for _ in 0..<Int(rng.next() % 4) + 1 where !line.isEmpty {
                        let at = Int(rng.next() % UInt64(line.count))
                        let byte = alphabet[Int(rng.next() % UInt64(alphabet.count))]
                        switch rng.next() % 3 {
                        case 0: line[at] = byte
                        case 1: line.insert(byte, at: at)
                        default: line.remove(at: at)
                        }
                    }
                default:
                    break
                }
                if case .failure(let reply) = SMTPCommand.parse(line[...]) {
                    #expect(Self.wellFormed(reply.encoded()), "parser reply for \(line)")
                }
                input += line + (rng.next() % 10 == 0 ? [0x0A] : [0x0D, 0x0A])
                lines += 1
            }
            var i = 0
            while i < input.count, !d.closed {
                let n = Int(rng.next() % 64) + 1
                d.feed(Array(input[i..<min(input.count, i + n)]))
                i += n
                #expect(d.session.bufferedByteCount <= submissionPolicy.maxAuthLineLength)
            }
            #expect(Self.wellFormed(d.output), "round \(round): \(d.text.prefix(2000))")
            for m in d.stores { #expect(m.recipients.count == m.recipientParameters.count) }
        }
        #expect(lines == 12_000)
    }

    /// Every line is `ddd[ -]text CRLF` with printable text, codes of one reply agree, and an
    /// enhanced code (if any) has the reply's class (RFC 5321 §4.2, RFC 3463 §2).
    static func wellFormed(_ bytes: [UInt8]) -> Bool {
        var lines: [ArraySlice<UInt8>] = []
        var start = 0
        while start < bytes.count {
            guard let lf = bytes[start...].firstIndex(of: 0x0A), lf > start, bytes[lf - 1] == 0x0D else { return false }
            lines.append(bytes[start..<(lf - 1)])
            start = lf + 1
        }
        var continuing: ArraySlice<UInt8>? = nil
        for line in lines {
            guard line.count >= 3, line.prefix(3).allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                  let first = line.first, (0x32...0x35).contains(first) else { return false }
            if let continuing, continuing != line.prefix(3) { return false }
            if line.count > 3 {
                let sep = line[line.startIndex + 3]
                guard sep == 0x20 || sep == 0x2D else { return false }
                continuing = sep == 0x2D ? line.prefix(3) : nil
            } else {
                continuing = nil
            }
            let text = line.dropFirst(4)
            guard text.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else { return false }
            let words = text.split(separator: 0x20, maxSplits: 1)
            if let word = words.first, word.contains(0x2E), word.allSatisfy({ $0 == 0x2E || ($0 >= 0x30 && $0 <= 0x39) }) {
                guard word.first == first else { return false }  // 2.x.x with 2xx, 4.x.x with 4xx, 5.x.x with 5xx
            }
        }
        return continuing == nil
    }

    // MARK: - Fix-ups, Received, passwords, limiter

    @Test("RFC 6409 §8: Date and Message-ID are added at the end of the header section when missing")
    func fixups() {
        let date = Date(timeIntervalSince1970: 1_700_000_000)
        let bare = SubmissionFixups.apply(to: Array("Subject: hi\r\nFrom: a@x.test\r\n\r\nbody\r\n".utf8), messageID: "<Q1@relay.test>", date: date)
        #expect(String(decoding: bare.content, as: UTF8.self)
                == "Subject: hi\r\nFrom: a@x.test\r\nDate: Tue, 14 Nov 2023 22:13:20 +0000\r\nMessage-ID: <Q1@relay.test>\r\n\r\nbody\r\n")
        #expect(bare.added == ["Date", "Message-ID"])
        let complete = Array("date: x\r\nMESSAGE-ID : <m@x>\r\n\r\nbody\r\n".utf8)
        #expect(SubmissionFixups.apply(to: complete, messageID: "<Q2@relay.test>", date: date) == .init(content: complete, added: []))
        let folded = SubmissionFixups.apply(to: Array("Subject: a\r\n b\r\nDate: d\r\n\r\n".utf8), messageID: "<Q3@r>", date: date)
        #expect(String(decoding: folded.content, as: UTF8.self) == "Subject: a\r\n b\r\nDate: d\r\nMessage-ID: <Q3@r>\r\n\r\n")
        // No header section at all: the fields go first, followed by the separating empty line.
        let headless = SubmissionFixups.apply(to: Array("just text\r\n".utf8), messageID: "<Q4@r>", date: date)
        #expect(String(decoding: headless.content, as: UTF8.self)
                == "Date: Tue, 14 Nov 2023 22:13:20 +0000\r\nMessage-ID: <Q4@r>\r\n\r\njust text\r\n")
        // A Date line in the body does not count.
        let bodyDate = SubmissionFixups.apply(to: Array("Subject: s\r\n\r\nDate: no\r\n".utf8), messageID: "<Q5@r>", date: date)
        #expect(bodyDate.added == ["Date", "Message-ID"])
        #expect(SubmissionFixups.apply(to: [], messageID: "<Q6@r>", date: date).content
                == Array("Date: Tue, 14 Nov 2023 22:13:20 +0000\r\nMessage-ID: <Q6@r>\r\n\r\n".utf8))
    }

    @Test("Received header with ESMTPSA and the TLS comment; UTF-8 recipients are left out of for")
    func receivedWithTLS() {
        let tls = NegotiatedTLS(protocolVersion: "TLSv1.3", cipher: "TLS_AES_256_GCM_SHA384")
        let bytes = ReceivedHeader.build(heloName: "app.test", peer: SocketAddress(host: "192.0.2.7", port: 1), hostname: "relay.test",
                                         protocol: "ESMTPSA", tls: tls, id: "ABC", recipient: Mailbox(localPart: "b", domain: "y.test"),
                                         date: Date(timeIntervalSince1970: 0))
        #expect(String(decoding: bytes, as: UTF8.self) == "Received: from app.test ([192.0.2.7])\r\n\tby relay.test (Hato) with ESMTPSA\r\n"
                + "\t(TLSv1.3 TLS_AES_256_GCM_SHA384) id ABC\r\n\tfor <b@y.test>; Thu, 1 Jan 1970 00:00:00 +0000\r\n")
        let utf8 = ReceivedHeader.build(heloName: "a.test", peer: SocketAddress(host: "192.0.2.7", port: 1), hostname: "r.test",
                                        protocol: "UTF8SMTP", tls: nil, id: "ID", recipient: Mailbox(localPart: "ü", domain: "y.test"),
                                        date: Date(timeIntervalSince1970: 0))
        #expect(!String(decoding: utf8, as: UTF8.self).contains("for <"))
        #expect(utf8.allSatisfy { $0 < 0x80 })
    }

    @Test("PBKDF2-HMAC-SHA256: RFC 7914 vector, passlib-compatible hash strings, verify and parse errors")
    func passwordHashes() throws {
        #expect(Hex.encode(PasswordHash.pbkdf2(password: Array("passwd".utf8), salt: Array("salt".utf8), iterations: 1, keyLength: 64))
                == "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783")
        // Made by Python's hashlib.pbkdf2_hmac in passlib's format.
        let passlib = try PasswordHash(parsing: "$pbkdf2-sha256$10000$MDEyMzQ1Njc4OWFiY2RlZg$TI2grtvV1HW5nz2rBY4tctlrmOj5bZs0dw9j8NHpRRc")
        #expect(passlib.verify(Array("correct horse".utf8)))
        #expect(!passlib.verify(Array("correct horsE".utf8)))
        #expect(passlib.iterations == 10_000 && passlib.salt == Array("0123456789abcdef".utf8))
        let made = PasswordHash.make(password: Array("s3cret".utf8), iterations: 10_000)
        #expect(made.encoded.hasPrefix("$pbkdf2-sha256$10000$"))
        let reparsed = try PasswordHash(parsing: made.encoded)
        #expect(reparsed == made)
        #expect(reparsed.verify(Array("s3cret".utf8)))
        #expect(PasswordHash.make(password: [1], iterations: 10_000).salt != PasswordHash.make(password: [1], iterations: 10_000).salt)
        let bad: [(String, String)] = [
            ("plain", "expected $pbkdf2-sha256$"),
            ("$pbkdf2-sha256$10000$abc", "expected 3 fields"),
            ("$pbkdf2-sha256$x$MDEyMzQ1Njc4OWFiY2RlZg$TI2grtvV1HW5nz2rBY4tctlrmOj5bZs0dw9j8NHpRRc", "not a number"),
            ("$pbkdf2-sha256$999$MDEyMzQ1Njc4OWFiY2RlZg$TI2grtvV1HW5nz2rBY4tctlrmOj5bZs0dw9j8NHpRRc", "between 10000"),
            ("$pbkdf2-sha256$10000$c2FsdA$TI2grtvV1HW5nz2rBY4tctlrmOj5bZs0dw9j8NHpRRc", "salt must be"),
            ("$pbkdf2-sha256$10000$MDEyMzQ1Njc4OWFiY2RlZg$!!", "hash must be"),
        ]
        for (text, message) in bad {
            #expect(throws: PasswordHashError.self) { try PasswordHash(parsing: text) }
            do { _ = try PasswordHash(parsing: text) } catch { #expect(error.message.contains(message), "\(text): \(error.message)") }
        }
    }

    @Test("AUTH failure limiter: blocks after N failures in the window, per address, forgets after the window, bounded")
    func authLimiter() {
        var limiter = AuthFailureLimiter(maxFailures: 3, window: 60, maxClients: 10)
        let t0 = Date(timeIntervalSince1970: 1_000)
        for i in 0..<2 { limiter.recordFailure("192.0.2.1", now: t0 + Double(i)) }
        #expect(!limiter.isBlocked("192.0.2.1", now: t0 + 2))
        limiter.recordFailure("192.0.2.1", now: t0 + 2)
        #expect(limiter.isBlocked("192.0.2.1", now: t0 + 3))
        #expect(!limiter.isBlocked("192.0.2.2", now: t0 + 3))
        #expect(limiter.isBlocked("192.0.2.1", now: t0 + 59))
        #expect(!limiter.isBlocked("192.0.2.1", now: t0 + 61), "the oldest failure aged out")
        for i in 0..<50 { limiter.recordFailure("198.51.100.\(i)", now: t0 + 100 + Double(i)) }
        #expect(limiter.trackedClients <= 10)
        #expect(limiter.isBlocked("198.51.100.49", now: t0 + 150) == false)
    }

    @Test("DataDecoder chunked framing: no terminator, literal dots, CRLF appended by finishChunks")
    func chunkedDecoder() {
        var decoder = DataDecoder(maxMessageSize: 100, framing: .chunked)
        let (used, finished) = decoder.feed(Array(".\r\n.\r\nx".utf8)[...])
        #expect(used == 7 && !finished)
        #expect(decoder.rejection == nil)
        decoder.finishChunks()
        #expect(decoder.outcome() == .accepted(Array(".\r\n.\r\nx\r\n".utf8)))
        var split = DataDecoder(maxMessageSize: 100, framing: .chunked)
        _ = split.feed(Array("a\r".utf8)[...])
        _ = split.feed(Array("\nb\r\n".utf8)[...])
        split.finishChunks()
        #expect(split.outcome() == .accepted(Array("a\r\nb\r\n".utf8)))
    }
}
