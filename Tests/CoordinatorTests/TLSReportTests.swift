import Foundation
import Testing
@testable import ClusterProtocol
@testable import HatoCoordinator
@testable import HatoHTTP
import SMTPCore

/// TLS-RPT counts (RFC 8460) on the coordinator: the tally as a value, the wire field on
/// results, and `GET /v1/tls-reports` (filter: `TLSReportTests`).
@Suite("TLSReportTests")
struct TLSReportTests {
    static func sts(_ domain: String, _ result: String) -> TLSReportEntry {
        TLSReportEntry(policyDomain: domain, policyType: "sts", result: result, mxHost: "mx.\(domain)")
    }

    @Test("the tally counts per UTC day and policy domain, newest day first, and keeps 31 days")
    func tally() {
        var t = TLSReportTally()
        let day1 = Date(timeIntervalSince1970: 2_000_000_000)  // 2033-05-18
        t.add([Self.sts("a.test", "success"), Self.sts("a.test", "success"), Self.sts("a.test", "certificate-host-mismatch"),
               TLSReportEntry(policyDomain: "mx.b.test", policyType: "tlsa", result: "validation-failure", mxHost: "mx.b.test")], at: day1)
        t.add([Self.sts("a.test", "success")], at: day1 + 86_400)
        let rows = t.report()
        #expect(rows.map(\.day) == ["2033-05-19", "2033-05-18", "2033-05-18"])
        #expect(rows.map(\.policyDomain) == ["a.test", "a.test", "mx.b.test"])
        #expect(rows[1].successes == 2)
        #expect(rows[1].failures == ["certificate-host-mismatch": 1])
        #expect(rows[1].failureCount == 1)
        #expect(rows[1].mxHosts == ["mx.a.test"])
        #expect(rows[2].policyType == "tlsa")
        #expect(t.report(day: "2033-05-19").count == 1)
        #expect(t.report(domain: "mx.b.test").count == 1)
        for i in 2..<40 { t.add([Self.sts("a.test", "success")], at: day1 + Double(i) * 86_400) }
        #expect(Set(t.report().map(\.day)).count == TLSReportTally.maxDays)
        #expect(t.report(day: "2033-05-18").isEmpty, "the oldest days are dropped")
    }

    @Test("results carry tlsReports on the wire; a result without them decodes as before")
    func wire() throws {
        var r = RecipientResult(recipientID: 7, status: .deferred, reply: DeliveryStatus(451, EnhancedStatusCode(.persistentTransientFailure, 7, 5), "x"))
        r.tlsReports = [Self.sts("a.test", "validation-failure")]
        let data = try JSONEncoder().encode(r)
        #expect(try JSONDecoder().decode(RecipientResult.self, from: data).tlsReports == r.tlsReports)
        let old = #"{"recipientID":7,"status":"delivered","code":250,"text":"ok"}"#
        #expect(try JSONDecoder().decode(RecipientResult.self, from: Data(old.utf8)).tlsReports == nil)
    }

    @Test("GET /v1/tls-reports: the counts of the results the coordinator applied, snake_case, filtered by day and domain")
    func api() throws {
        let f = try ReportingFixture()
        defer { f.cleanup() }
        var first = RecipientResult(recipientID: 1, status: .delivered, reply: DeliveryStatus(250, nil as EnhancedStatusCode?, "ok"))
        first.tlsReports = [Self.sts("good.test", "success"), Self.sts("good.test", "certificate-expired")]
        f.service.noteResult(ResultMessage(leaseID: "L1", instanceID: "i", sendingIP: "127.0.0.10", mxHost: "mx.good.test",
                                           remoteAddress: "127.0.0.1", outcomes: [first], finishedAt: 0))
        func get(_ query: [String: String] = [:], token: Bool = true) -> HTTPResponse? {
            f.service.api.handle(HTTPRequest(method: "GET", path: "/v1/tls-reports", query: query,
                                             headers: token ? ["authorization": "Bearer tok"] : [:]))
        }
        #expect(get(token: false)?.status == 401)
        #expect(get(["day": "yesterday"])?.status == 400)
        let response = try #require(get())
        #expect(response.status == 200)
        let rows = try JSONSerialization.jsonObject(with: Data(response.body)) as? [[String: Any]] ?? []
        #expect(rows.count == 1)
        #expect(rows.first?["policy_domain"] as? String == "good.test")
        #expect(rows.first?["policy_type"] as? String == "sts")
        #expect(rows.first?["successes"] as? Int == 1)
        #expect((rows.first?["failures"] as? [String: Int]) == ["certificate-expired": 1])
        #expect(rows.first?["day"] as? String == TLSReportTally.day(f.clock.now()))
        let metrics = f.service.metrics.registry.render()
        #expect(metrics.contains("hato_tls_rpt_sessions_total{policy_type=\"sts\",result=\"success\"} 1"), "\(metrics.split(separator: "\n").filter { $0.contains("tls_rpt") })")
        let empty = try JSONSerialization.jsonObject(with: Data(get(["domain": "other.test"])?.body ?? [])) as? [Any]
        #expect(empty?.isEmpty == true)
    }
}
