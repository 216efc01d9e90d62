import Foundation
import HatoCoordinator
import HatoIO
import HatoTestKit
import Testing

extension Integration {
@Suite("Suppression at RCPT")
struct SuppressionAtRcptTests {
    @Test("suppression mode reject_at_rcpt: a suppressed recipient gets 550 5.1.1 at RCPT, others are accepted, nothing is queued for it")
    func rejectAtRcpt() throws {
        let s = try InProcessSubmission(smtpExtra: "relay_networks: [127.0.0.0/8]", extraYAML: "suppression: { mode: reject_at_rcpt }")
        try s.store.installReportingSchema()
        defer { s.shutdown() }
        try s.store.addSuppressions([SuppressionEntry(address: "Gone@Hato.test", reason: "550 5.1.1 no such user", source: "operator", createdAt: Date().timeIntervalSince1970)])
        let sock = try Socket.connect(to: s.address, timeout: 5)
        sock.setTimeouts(read: 5, write: 5)
        let reader = BufferedReader(stream: sock)
        func reply() throws -> String {
            var last = ""
            repeat { last = String(decoding: try reader.readLine(maxLength: 2000) ?? [], as: UTF8.self) } while last.count > 3 && Array(last)[3] == "-"
            return last
        }
        #expect(try reply().hasPrefix("220 "))
        try sock.write("EHLO client.test\r\n"); #expect(try reply().hasPrefix("250 "))
        try sock.write("MAIL FROM:<app@example.org>\r\n"); #expect(try reply().hasPrefix("250 "))
        try sock.write("RCPT TO:<gone@hato.test>\r\n")
        let refused = try reply()
        #expect(refused.hasPrefix("550 5.1.1 ") && refused.contains("suppressed"), "\(refused)")
        try sock.write("RCPT TO:<fine@hato.test>\r\n"); #expect(try reply().hasPrefix("250 "))
        try sock.write("DATA\r\n"); #expect(try reply().hasPrefix("354"))
        try sock.write("Subject: x\r\n\r\nhello\r\n.\r\n"); #expect(try reply().hasPrefix("250 2.0.0 Ok: queued as "))
        try sock.write("QUIT\r\n"); _ = try reply()
        let ids = try s.messageIDs()
        #expect(ids.count == 1)
        #expect(try s.store.message(id: ids[0])?.recipients.map(\.address) == ["fine@hato.test"])
    }
}
}
