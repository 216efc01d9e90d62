import Foundation
import Testing
@testable import HatoDelivery
@testable import SMTPCore

/// Table-driven tests of `BounceClassifier` with replies as real receivers send them.
@Suite("Bounce classification")
struct BounceClassifierTests {
    struct Case: Sendable, CustomStringConvertible {
        var code: Int
        var enhanced: String?
        var text: String
        var expected: BounceCategory
        var description: String { "\(code) \(enhanced ?? "-") \(text.prefix(60)) → \(expected.rawValue)" }
        init(_ code: Int, _ enhanced: String?, _ text: String, _ expected: BounceCategory) {
            self.code = code; self.enhanced = enhanced; self.text = text; self.expected = expected
        }
    }

    /// Gmail's replies (support.google.com/a/answer/3726730 wording).
    static let gmail: [Case] = [
        Case(550, "5.1.1", "The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces. For more information, go to https://support.google.com/mail/?p=NoSuchUser", .badMailbox),
        Case(550, "5.2.1", "The email account that you tried to reach is disabled. For more information, go to https://support.google.com/mail/?p=DisabledUser", .badMailbox),
        Case(452, "4.2.2", "The email account that you tried to reach is over quota. Please direct the recipient to https://support.google.com/mail/?p=OverQuotaTemp", .mailboxFull),
        Case(552, "5.2.2", "The email account that you tried to reach is over quota and inactive.", .mailboxFull),
        Case(552, "5.3.4", "Your message exceeded Google's message size limits. For more information, go to https://support.google.com/mail/?p=MaxSizeError", .messageTooLarge),
        Case(550, "5.7.1", "[192.0.2.10] Our system has detected that this message is likely unsolicited mail. To reduce the amount of spam sent to Gmail, this message has been blocked.", .spamRelated),
        Case(421, "4.7.28", "[192.0.2.10] Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited.", .rateLimited),
        Case(421, "4.7.0", "[192.0.2.10] Our system has detected an unusual rate of unsolicited mail originating from your IP address.", .rateLimited),
        Case(550, "5.7.26", "This mail has been blocked because the sender is unauthenticated. Gmail requires all senders to authenticate with either SPF or DKIM.", .policyRelated),
        Case(550, "5.7.25", "The IP address sending this message does not have a PTR record setup, or the corresponding forward DNS entry does not point to the sending IP.", .policyRelated),
        Case(552, "5.7.0", "This message was blocked because its content presents a potential security issue.", .spamRelated),
        Case(421, "4.7.0", "TLS Negotiation failed, try again later.", .tlsFailure),
        Case(550, "5.4.5", "Daily user sending quota exceeded.", .rateLimited),
        Case(554, "5.6.0", "Mail message is malformed. Not accepted.", .protocolError),
        Case(421, "4.7.0", "Try again later, closing connection.", .rateLimited),
    ]

    /// Microsoft (Outlook.com / Exchange Online) replies.
    static let outlook: [Case] = [
        Case(550, "5.5.0", "Requested action not taken: mailbox unavailable (S2017062302). [AM1EUR03FT023.eop-EUR03.prod.protection.outlook.com]", .badMailbox),
        Case(550, "5.1.10", "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", .badMailbox),
        Case(550, "5.4.1", "Recipient address rejected: Access denied. AS(201806281) [DB5EUR03FT012.eop-EUR03.prod.protection.outlook.com]", .badMailbox),
        Case(550, "5.7.1", "Unfortunately, messages from [192.0.2.10] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150).", .reputation),
        Case(451, "4.7.650", "The mail server [192.0.2.10] has been temporarily rate limited due to IP reputation. For e-mail delivery information, see https://postmaster.live.com (S775)", .rateLimited),
        Case(550, "5.7.708", "Service unavailable. Access denied, traffic not accepted from this IP.", .reputation),
        Case(550, "5.7.606", "Access denied, banned sending IP [192.0.2.10].", .reputation),
        Case(550, "5.7.509", "Access denied, sending domain example.org does not pass DMARC verification and has a DMARC policy of reject.", .policyRelated),
        Case(554, "5.2.0", "STOREDRV.Deliver.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded", .mailboxFull),
        Case(421, "4.3.2", "The maximum number of concurrent server connections has exceeded a limit, closing transmission channel", .rateLimited),
        Case(451, "4.7.500", "Server busy. Please try again later from [192.0.2.10]. (S77714)", .rateLimited),
        Case(554, "5.4.14", "Hop count exceeded - possible mail loop ATTR34", .routing),
        Case(550, "5.7.520", "Access denied, Your organization does not allow external forwarding.", .policyRelated),
    ]

    /// Yahoo / AOL replies (postmaster.yahooinc.com error codes).
    static let yahoo: [Case] = [
        Case(554, nil, "delivery error: dd This user doesn't have a yahoo.com account (nobody@yahoo.com) [0] - mta1234.mail.ne1.yahoo.com", .badMailbox),
        Case(552, nil, "1 Requested mail action aborted, mailbox not found", .badMailbox),
        Case(421, "4.7.0", "[TSS04] Messages from 192.0.2.10 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes", .rateLimited),
        Case(553, "5.7.2", "[TSS09] All messages from 192.0.2.10 will be permanently deferred; Retrying will NOT succeed. See https://postmaster.yahooinc.com/error-codes", .reputation),
        Case(421, "4.7.1", "[TS03] All messages from 192.0.2.10 will be permanently deferred; Retrying will NOT succeed. See https://postmaster.yahooinc.com/error-codes", .reputation),
        Case(554, "5.7.9", "Message not accepted for policy reasons.  See https://postmaster.yahooinc.com/error-codes", .policyRelated),
        Case(451, nil, "Message temporarily deferred - [160]", .rateLimited),
        Case(552, nil, "1 Requested mail action aborted, mailbox full", .mailboxFull),
    ]

    /// Postfix, Exim and Hato's own locally generated outcomes.
    static let others: [Case] = [
        Case(550, "5.1.1", "<nobody@example.com>: Recipient address rejected: User unknown in virtual mailbox table", .badMailbox),
        Case(450, "4.1.2", "<a@nowhere.example>: Recipient address rejected: Domain not found", .badDomain),
        Case(554, "5.7.1", "<a@example.com>: Relay access denied", .policyRelated),
        Case(552, "5.3.4", "Message size exceeds fixed limit", .messageTooLarge),
        Case(554, "5.7.1", "Service unavailable; Client host [192.0.2.10] blocked using zen.spamhaus.org", .reputation),
        Case(550, nil, "Unrouteable address", .badDomain),
        Case(530, "5.7.0", "Must issue a STARTTLS command first", .tlsFailure),
        Case(454, "4.7.0", "TLS not available due to local problem", .tlsFailure),
        Case(500, "5.5.2", "Error: bad syntax", .protocolError),
        Case(503, "5.5.1", "Error: need MAIL command", .protocolError),
        Case(452, "4.5.3", "Error: too many recipients", .rateLimited),
        Case(451, "4.3.0", "Error: queue file write error", .other),
        Case(550, "5.7.1", "Message rejected as spam by Content Filtering.", .spamRelated),
        Case(554, "5.7.1", "Message rejected: virus found (Eicar-Test-Signature)", .spamRelated),
        Case(550, "5.1.2", "domain nowhere.test does not exist (NXDOMAIN)", .badDomain),
        Case(550, "5.1.10", "domain nullmx.test does not accept mail (null MX)", .badDomain),
        Case(451, "4.4.3", "MX lookup for example.com failed: timeout", .dnsFailure),
        Case(451, "4.4.4", "no MX host of example.com resolves: timeout", .dnsFailure),
        Case(550, "5.4.4", "domain example.com has no MX, A or AAAA records", .badDomain),
        Case(451, "4.4.1", "connection to 192.0.2.1:25 refused", .routing),
        Case(451, "4.4.2", "connection lost: reading the reply to DATA", .routing),
        Case(451, "4.5.0", "SMTP protocol error: reply line too long", .protocolError),
        Case(553, "5.6.7", "server does not support SMTPUTF8 for a non-ASCII recipient address", .protocolError),
        Case(450, "4.2.0", "Mailbox busy", .other),
        Case(554, nil, "Transaction failed", .other),
        Case(550, nil, "", .other),
        Case(551, nil, "User not local; please try <forward@example.com>", .badMailbox),
        Case(552, nil, "Requested mail action aborted: exceeded storage allocation", .mailboxFull),
        Case(421, "4.4.5", "Server overloaded", .rateLimited),
        Case(550, "5.4.6", "Routing loop", .routing),
    ]

    @Test("Gmail replies", arguments: gmail)
    func gmailReplies(_ c: Case) {
        #expect(BounceClassifier.classify(DeliveryStatus(code: c.code, enhanced: c.enhanced, text: c.text)) == c.expected)
    }

    @Test("Outlook replies", arguments: outlook)
    func outlookReplies(_ c: Case) {
        #expect(BounceClassifier.classify(DeliveryStatus(code: c.code, enhanced: c.enhanced, text: c.text)) == c.expected)
    }

    @Test("Yahoo replies", arguments: yahoo)
    func yahooReplies(_ c: Case) {
        #expect(BounceClassifier.classify(DeliveryStatus(code: c.code, enhanced: c.enhanced, text: c.text)) == c.expected)
    }

    @Test("Postfix, Exim and local outcomes", arguments: others)
    func otherReplies(_ c: Case) {
        #expect(BounceClassifier.classify(DeliveryStatus(code: c.code, enhanced: c.enhanced, text: c.text)) == c.expected)
    }

    @Test("enhanced codes without helpful text follow RFC 3463")
    func enhancedOnly() {
        #expect(BounceClassifier.category(enhanced: EnhancedStatusCode("5.1.1")!) == .badMailbox)
        #expect(BounceClassifier.category(enhanced: EnhancedStatusCode("5.1.2")!) == .badDomain)
        #expect(BounceClassifier.category(enhanced: EnhancedStatusCode("4.2.2")!) == .mailboxFull)
        #expect(BounceClassifier.category(enhanced: EnhancedStatusCode("5.2.3")!) == .messageTooLarge)
        #expect(BounceClassifier.category(enhanced: EnhancedStatusCode("5.7.10")!) == .tlsFailure)
        #expect(BounceClassifier.category(enhanced: EnhancedStatusCode("5.7.23")!) == .policyRelated)
        #expect(BounceClassifier.category(enhanced: EnhancedStatusCode("4.4.3")!) == .dnsFailure)
        #expect(BounceClassifier.category(enhanced: EnhancedStatusCode("5.4.4")!) == .badDomain)
        #expect(BounceClassifier.category(enhanced: EnhancedStatusCode("5.0.0")!) == nil)
        #expect(BounceClassifier.category(enhanced: EnhancedStatusCode("2.1.5")!) == nil)
        #expect(EnhancedStatusCode("garbage") == nil)
        #expect(BounceClassifier.classify(DeliveryStatus(code: 550, enhanced: "5.1.1", text: "")) == .badMailbox)
        #expect(BounceClassifier.classify(DeliveryStatus(code: 550, enhanced: "5.0.0", text: "")) == .other)
    }

    @Test("a text rule bound to a reply class applies only to that class")
    func replyClassRules() {
        let text = "Host or domain name not found. Name service error for name=example.com type=MX: Host not found, try again"
        #expect(BounceClassifier.classify(DeliveryStatus(code: 550, enhanced: "5.4.4", text: text)) == .badDomain)
        // The same text as a deferral: the DNS rule (before the rate-limit "try again" phrases do not match "try again,").
        #expect(BounceClassifier.classify(DeliveryStatus(code: 450, enhanced: "4.4.3", text: text)) == .dnsFailure)
    }

    @Test("only bad-mailbox and bad-domain are hard bounces")
    func hardBounces() {
        #expect(BounceCategory.allCases.filter(\.isHardBounce) == [.badMailbox, .badDomain])
    }

    @Test("docs/bounces.md lists every text rule, in order, with every phrase")
    func documentedTable() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let doc = try String(contentsOf: root.appendingPathComponent("docs/bounces.md"), encoding: .utf8)
        let rows = doc.split(separator: "\n").filter { $0.hasPrefix("| ") && $0.contains("` | ") && $0.first(where: \.isNumber) != nil }
            .filter { row in Int(row.dropFirst(2).prefix { $0.isNumber }) != nil }
        #expect(rows.count == BounceClassifier.textRules.count)
        for (i, rule) in BounceClassifier.textRules.enumerated() where i < rows.count {
            let row = String(rows[i])
            #expect(row.hasPrefix("| \(i + 1) | `\(rule.category.rawValue)` | \(rule.replyClass.map { "\($0)xx" } ?? "any") |"), "row \(i + 1): \(row)")
            for p in rule.phrases { #expect(row.contains("`\(p)`"), "rule \(i + 1) phrase \(p) is not documented") }
        }
    }

    @Test("wildcard phrases match pieces in order")
    func wildcard() {
        #expect(BounceClassifier.matches(" this user doesn't have a yahoo.com account ", "doesn't have a * account"))
        #expect(!BounceClassifier.matches(" account doesn't have a ", "doesn't have a * account"))
    }
}
