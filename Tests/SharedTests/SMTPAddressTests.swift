import Testing
@testable import SMTPCore

@Suite("SMTP addresses")
struct SMTPAddressTests {

    private func mail(_ path: String) -> Result<SMTPCommand, SMTPReply> { SMTPCommand.parse("MAIL FROM:\(path)") }
    private func rcpt(_ path: String) -> Result<SMTPCommand, SMTPReply> { SMTPCommand.parse("RCPT TO:\(path)") }

    private func sender(_ path: String) -> ReversePath? {
        if case .success(.mail(let p, _)) = mail(path) { return p }
        return nil
    }

    private func recipient(_ path: String) -> Mailbox? {
        if case .success(.rcpt(.mailbox(let m), _)) = rcpt(path) { return m }
        return nil
    }

    private func replyCode(_ result: Result<SMTPCommand, SMTPReply>) -> String? {
        if case .failure(let reply) = result { return "\(reply.code) \(reply.enhanced ?? "")" }
        return nil
    }

    @Test("dot-atom local parts and domains")
    func dotAtom() {
        #expect(recipient("<john.doe@example.com>") == Mailbox(localPart: "john.doe", domain: "example.com"))
        #expect(recipient("<a+tag!#$%&'*/=?^_`{|}~-@sub.example-1.co>")?.localPart == "a+tag!#$%&'*/=?^_`{|}~-")
        #expect(recipient("<x@localhost>")?.domain == "localhost")
        #expect(recipient("<x@123.example>")?.domain == "123.example")
        #expect(recipient("<MiXeD@Example.COM>")?.address == "MiXeD@Example.COM")
    }

    @Test("quoted-string local parts are decoded and re-quoted only when needed")
    func quotedLocalParts() throws {
        let spaced = try #require(recipient("<\"john doe\"@example.com>"))
        #expect(spaced.localPart == "john doe")
        #expect(spaced.address == "\"john doe\"@example.com")
        let escaped = try #require(recipient("<\"a\\\"b\\\\c\"@example.com>"))
        #expect(escaped.localPart == "a\"b\\c")
        #expect(escaped.address == "\"a\\\"b\\\\c\"@example.com")
        // A quoted local part that is a valid dot-string is emitted unquoted (RFC 5321 §4.1.2).
        #expect(recipient("<\"plain.name\"@example.com>")?.address == "plain.name@example.com")
        #expect(recipient("<\"a>b\"@example.com>")?.localPart == "a>b")
        #expect(recipient("<\"@\"@example.com>")?.address == "\"@\"@example.com")
        #expect(recipient("<\"\"@example.com>")?.address == "\"\"@example.com")
        #expect(recipient("<\"a..b.\"@example.com>")?.address == "\"a..b.\"@example.com")
    }

    @Test("address literals: IPv4 and IPv6 forms")
    func addressLiterals() {
        #expect(recipient("<x@[192.0.2.1]>")?.domain == "[192.0.2.1]")
        #expect(recipient("<x@[255.255.255.255]>") != nil)
        #expect(recipient("<x@[IPv6:2001:db8::1]>")?.domain == "[IPv6:2001:db8::1]")
        #expect(recipient("<x@[ipv6:2001:DB8:0:0:0:0:0:1]>") != nil)
        #expect(recipient("<x@[IPv6:::1]>") != nil)
        #expect(recipient("<x@[IPv6:::]>") != nil)
        #expect(recipient("<x@[IPv6:::ffff:192.0.2.1]>") != nil)
        #expect(recipient("<x@[IPv6:1:2:3:4:5:6:192.0.2.1]>") != nil)
        #expect(recipient("<x@[IPv6:1:2:3:4:5:6:7::]>") != nil)
    }

    @Test("invalid address literals are 501 5.1.3", arguments: [
        "<x@[256.0.0.1]>", "<x@[1.2.3]>", "<x@[1.2.3.4.5]>", "<x@[1.2.3.0004]>", "<x@[]>", "<x@[192.0.2.1>",
        "<x@[IPv6:1::2::3]>", "<x@[IPv6:12345::1]>", "<x@[IPv6:1:2:3:4:5:6:7]>", "<x@[IPv6:1:2:3:4:5:6:7:8:9]>",
        "<x@[IPv6:g::1]>", "<x@[IPv6:::1.2.3]>", "<x@[tag:content]>", "<x@[IPv6:]>",
    ])
    func invalidLiterals(_ path: String) {
        #expect(replyCode(rcpt(path)) == "501 5.1.3")
    }

    @Test("the null reverse-path <> is valid for MAIL only")
    func nullPath() {
        #expect(sender("<>") == .null)
        #expect(sender("<>")?.address == "")
        #expect(ReversePath.null.description == "<>")
        #expect(replyCode(rcpt("<>")) == "501 5.1.3")
    }

    @Test("source routes are accepted and ignored")
    func sourceRoutes() {
        #expect(recipient("<@a.example,@b.example:user@d.example>") == Mailbox(localPart: "user", domain: "d.example"))
        #expect(sender("<@relay.example:u@d.example>") == .mailbox(Mailbox(localPart: "u", domain: "d.example")))
        #expect(replyCode(rcpt("<@a.example,b.example:user@d.example>")) == "501 5.1.3")
        #expect(replyCode(rcpt("<@a..example:user@d.example>")) == "501 5.1.3")
        #expect(replyCode(rcpt("<@a.example user@d.example>")) == "501 5.1.3")
    }

    @Test("<Postmaster> without a domain is a RCPT-only special case")
    func postmaster() {
        #expect(SMTPCommand.parse("RCPT TO:<PostMaster>") == .success(.rcpt(.postmaster, RecipientParameters())))
        #expect(replyCode(mail("<postmaster>")) == "501 5.1.7")
    }

    @Test("syntax errors are 501 with 5.1.7 (sender) / 5.1.3 (recipient), never 4xx", arguments: [
        "user@example.com", "<user@example.com", "<user>", "<@example.com>", "<user@>", "<.user@example.com>",
        "<user.@example.com>", "<us..er@example.com>", "<us er@example.com>", "< user@example.com>",
        "<user@-example.com>", "<user@example-.com>", "<user@exa_mple.com>", "<user@example..com>",
        "<user@example.com.>", "<user@.example.com>", "<\"unterminated@example.com>", "<\"a\"b@example.com>",
        "<user@a@b.com>", "<us(er)@example.com>", "<\"tab\tx\"@example.com>", "<<user@example.com>>",
    ])
    func syntaxErrors(_ path: String) {
        #expect(replyCode(mail(path)) == "501 5.1.7")
        #expect(replyCode(rcpt(path)) == "501 5.1.3")
    }

    @Test("length limits: local part 64, domain 255, path 256 octets")
    func lengthLimits() {
        let local64 = String(repeating: "l", count: 64)
        #expect(recipient("<\(local64)@example.com>") != nil)
        #expect(replyCode(rcpt("<\(local64)l@example.com>")) == "501 5.1.3")
        #expect(replyCode(mail("<\(local64)l@example.com>")) == "501 5.1.7")
        // A 65-octet label is a syntax error regardless of the total.
        #expect(replyCode(rcpt("<a@\(String(repeating: "d", count: 64)).com>")) == "501 5.1.3")
        // Domain of 4 * 63 + 3 dots = 255 octets, but the path <a@…> is then 259 octets.
        let label = String(repeating: "d", count: 63)
        let domain255 = [label, label, label, label].joined(separator: ".")
        #expect(domain255.utf8.count == 255)
        #expect(replyCode(rcpt("<a@\(domain255)>")) == "501 5.1.3")
        // Path of exactly 256 octets: "<" + 1 + "@" + 252 + ">".
        let domain252 = [label, label, label, String(repeating: "e", count: 60)].joined(separator: ".")
        #expect(domain252.utf8.count == 252)
        #expect(recipient("<a@\(domain252)>") != nil)
        #expect(replyCode(rcpt("<ab@\(domain252)>")) == "501 5.1.3")
        if case .failure(let reply) = rcpt("<ab@\(domain252)>") {
            #expect(reply.lines == ["Recipient address too long"])
        }
    }

    @Test("8-bit (UTF-8) addresses are 553 5.6.7 unless MAIL declared SMTPUTF8")
    func eightBit() {
        #expect(replyCode(mail("<jöran@example.com>")) == "553 5.6.7")
        #expect(replyCode(rcpt("<user@bücher.example>")) == "553 5.6.7")
        #expect(replyCode(rcpt("<\"ü\"@example.com>")) == "553 5.6.7")
        let raw: [UInt8] = Array("RCPT TO:<a".utf8) + [0xFF] + Array("@example.com>".utf8)
        guard case .failure(let reply) = SMTPCommand.parse(raw[...]) else {
            Issue.record("8-bit address accepted")
            return
        }
        #expect(reply.code == 553)
        // 8-bit outside the path is a parameter syntax error.
        #expect(replyCode(mail("<a@example.com> SIZE=1é")) == "501 5.5.4")
    }

    @Test("Mailbox(parsing:) parses bare mailboxes and reports why others fail")
    func mailboxParsing() throws {
        #expect(try Mailbox(parsing: "user@example.com") == Mailbox(localPart: "user", domain: "example.com"))
        #expect(try Mailbox(parsing: "\"a b\"@[10.0.0.1]").address == "\"a b\"@[10.0.0.1]")
        #expect(throws: SMTPAddressError.syntax) { try Mailbox(parsing: "<user@example.com>") }
        #expect(throws: SMTPAddressError.syntax) { try Mailbox(parsing: "user") }
        #expect(throws: SMTPAddressError.syntax) { try Mailbox(parsing: "") }
        #expect(throws: SMTPAddressError.nonASCII) { try Mailbox(parsing: "ü@example.com") }
        #expect(throws: SMTPAddressError.tooLong) { try Mailbox(parsing: String(repeating: "x", count: 65) + "@example.com") }
        #expect(Mailbox(localPart: "x", domain: "y.z").description == "x@y.z")
    }
}
