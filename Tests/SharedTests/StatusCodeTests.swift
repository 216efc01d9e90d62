import Testing
@testable import SMTPCore

@Suite("ReplyCode and EnhancedStatusCode (RFC 5321 §4.2, RFC 3463)")
struct StatusCodeTests {
    @Test("reply classes by first digit; numbers outside 200-599 have none")
    func replyClasses() {
        #expect(ReplyCode(250).isPositiveCompletion)
        #expect(ReplyCode(354).isPositiveIntermediate)
        #expect(ReplyCode(421).isTransient && !ReplyCode(421).isPermanent)
        #expect(ReplyCode(554).isPermanent)
        #expect(ReplyCode(199).replyClass == nil && ReplyCode(600).replyClass == nil && ReplyCode(0).replyClass == nil)
        let literal: ReplyCode = 451
        #expect(literal.rawValue == 451 && literal.description == "451" && literal < ReplyCode(500))
    }

    @Test("enhanced codes parse exactly as RFC 3463 writes them", arguments: [
        ("2.0.0", "2.0.0"), ("5.1.1", "5.1.1"), ("4.7.28", "4.7.28"), ("5.999.999", "5.999.999"), ("4.4.007", "4.4.7"),
    ])
    func parses(text: String, normalized: String) throws {
        let code = try #require(EnhancedStatusCode(text))
        #expect(code.description == normalized)
    }

    @Test("malformed or foreign enhanced codes are rejected", arguments: [
        "", "5", "5.1", "5.1.1.1", "3.1.1", "1.0.0", "6.0.0", "5..1", "5.1.", ".1.1", "5.1000.1", "5.1.1000", "5.a.1", "05.1.1", "5.1.1 ", " 5.1.1", "5.١.1", "+5.1.1",
    ])
    func rejects(text: String) {
        #expect(EnhancedStatusCode(text) == nil, "\(text)")
    }

    @Test("classes, changing the class, and a DSN status that must agree with its action")
    func classesAndStatus() {
        let c = EnhancedStatusCode(.permanentFailure, 7, 1)
        #expect(c.isPermanent && !c.isTransient && !c.isSuccess)
        #expect(c.withClass(.persistentTransientFailure).description == "4.7.1")
        let permanent = EnhancedStatusCode(.permanentFailure, 0, 0), transient = EnhancedStatusCode(.persistentTransientFailure, 4, 0)
        #expect(DeliveryStatus(code: 550, enhanced: "5.1.1", text: "").enhancedStatus(ofClass: .permanentFailure, orElse: permanent).description == "5.1.1")
        #expect(DeliveryStatus(code: 452, enhanced: "4.2.2", text: "").enhancedStatus(ofClass: .permanentFailure, orElse: permanent).description == "5.0.0")
        #expect(DeliveryStatus(code: 550, enhanced: "5.x.1", text: "").enhancedStatus(ofClass: .permanentFailure, orElse: permanent).description == "5.0.0")
        #expect(DeliveryStatus(code: 451, enhanced: nil, text: "").enhancedStatus(ofClass: .persistentTransientFailure, orElse: transient).description == "4.4.0")
        #expect(SMTPReply(550, "5.1.1", "no such user").enhancedStatus == EnhancedStatusCode(.permanentFailure, 1, 1))
        #expect(SMTPReply(550, "5.1.1", "no such user").replyCode.isPermanent)
    }
}
