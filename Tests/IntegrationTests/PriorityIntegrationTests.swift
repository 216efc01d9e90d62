import Foundation
import HatoTestKit
import Testing

extension Integration {
/// Issue 18, priority: transactional mail keeps ahead of a bulk backlog on the same sending IP.
@Suite("Priority")
struct PriorityIntegrationTests {
    /// A message of `count` recipients `<tag>0…@hato.test`, with extra header lines first.
    static func message(_ i: Int, recipients count: Int, tag: String, header: String) -> (from: String, to: [String], content: [UInt8]) {
        let to = (0..<count).map { "\(tag)\(i)x\($0)@hato.test" }
        return ("app@example.org", to, Array(header.utf8) + testMessage(i, to: to[0], extraLines: 2))
    }

    @Test("a transactional message submitted after 20 000 bulk recipients to one provider is delivered within 2 s; X-Hato-Priority never reaches the MX")
    func transactionalOvertakesBulkBacklog() throws {
        // One sending IP, two delivery workers (one kept for transactional mail: bulk_reserve 1),
        // and a slow MX (0.3 s before each end-of-DATA reply) so the bulk backlog stays.
        let ips = "ips:\n  - { address: 127.0.0.10, helo: mta10.it.test, pool: transactional, nodes: [node-a] }"
        let cluster = try LocalCluster(extraYAML: "priority: { bulk_reserve: 1 }\n", captureDelay: 0.3, nodeIDs: ["node-a"], ipsYAML: ips,
                                       connectionsPerIP: 2)
        defer { cluster.shutdown() }
        do {
            try cluster.startCoordinator()
            try cluster.startNode("node-a")
            try cluster.waitForNodes(["node-a"], state: "active")
            // 200 bulk messages of 100 recipients each: 20 000 recipients, marked bulk by header.
            let bulk = (0..<200).map { Self.message($0, recipients: 100, tag: "b", header: "X-Hato-Priority: bulk\r\n") }
            let injectStart = Date()
            let bulkIDs = try submitWithSmtplib(port: cluster.smtpPort, messages: bulk, connections: 4, dir: cluster.dir)
            let injectSeconds = Date().timeIntervalSince(injectStart)
            try waitUntil("bulk deliveries under way", timeout: 30) { cluster.capture.received.count >= 2 }
            let bulkShown = try cluster.message(bulkIDs[0])
            #expect(bulkShown["priority"] as? String == "bulk", "the admin API shows the message's class: \(bulkShown)")

            // The transactional message, with a header that asks for transactional (allowed: the pool is).
            let before = cluster.capture.received.count
            let submitted = Date()
            let tx = Self.message(9999, recipients: 1, tag: "t", header: "X-Hato-Priority: transactional\r\n")
            let txIDs = try submitWithSmtplib(port: cluster.smtpPort, messages: [tx], connections: 1, dir: cluster.dir)
            var arrival: CapturedMessage?
            try waitUntil("the transactional message arrives", timeout: 20) {
                arrival = cluster.capture.received.first { $0.recipients == tx.to }
                return arrival != nil
            }
            let latency = arrival!.receivedAt - submitted.timeIntervalSince1970
            let received = cluster.capture.received
            let bulkMeanwhile = received[before...].filter { $0.receivedAt <= arrival!.receivedAt && $0.recipients != tx.to }
            let recipientsMeanwhile = bulkMeanwhile.reduce(0) { $0 + $1.recipients.count }
            let q = try cluster.queue()
            print("priority: injected 20000 bulk recipients in \(String(format: "%.1f", injectSeconds)) s; transactional delivered \(String(format: "%.3f", latency)) s after submission; "
                  + "meanwhile \(bulkMeanwhile.count) bulk deliveries (\(recipientsMeanwhile) recipients) went out; queue now \(q)")
            #expect(latency < 2, "transactional latency \(latency) s under a bulk backlog")
            #expect((q["queued"] ?? 0) + (q["deferred"] ?? 0) > 10_000, "the bulk backlog stayed: \(q)")
            let shown = try cluster.message(txIDs[0])
            #expect(shown["priority"] as? String == "transactional")
            // The header is removed at submission: neither class's copy carries it.
            for m in [arrival!] + received.prefix(5) {
                #expect(!String(decoding: m.content, as: UTF8.self).lowercased().contains("x-hato-priority"), "X-Hato-Priority removed before sending")
            }
            let byPriority = try JSONSerialization.jsonObject(with: Data(httpGetBody(port: cluster.adminPort, path: "/v1/queue/summary?by=priority",
                                                                                        bearer: cluster.token)))
            print("priority: queue by priority \(byPriority)")
            let metrics = try httpGet(port: cluster.adminPort, path: "/metrics")
            let bulkGauge = metrics.split(separator: "\n").first { $0.hasPrefix("hato_queue_waiting_recipients{priority=\"bulk\"}") }
            #expect(bulkGauge.flatMap { Double($0.split(separator: " ").last ?? "") }.map { $0 > 10_000 } == true, "\(bulkGauge ?? "no gauge")")
        } catch {
            Issue.record("\(error)\n\(cluster.logs)")
            throw error
        }
    }
}
}

/// The class a message gets through the HTTP send API: the request's field and header against
/// the tenant's class (issue 18).
@Suite("Priority over the HTTP send API", .serialized)
struct PriorityHTTPAPITests {
    @Test("the lowest class wins: a transactional tenant's message may ask for bulk (field or header); a bulk tenant's cannot ask its way up; the header is not stored")
    func precedence() throws {
        let s = try InProcessHTTPAPI()
        defer { s.shutdown() }
        let open = try s.addTenant("open", domains: ["open.test"])
        let news = try s.addTenant("news", domains: ["news.test"])
        var t = try #require(try s.store.tenant(named: "news"))
        t.priority = .bulk
        try s.store.updateTenant(t)
        s.tenants.invalidate()
        func send(_ key: String, _ from: String, _ extra: String) throws -> (priority: String?, content: String) {
            let r = try s.send(sendJSON(from: from, to: ["u@x.test"], extra: extra), key: key)
            #expect(r.status == 202, "\(r.body)")
            let id = try #require(r.id)
            return (try s.store.message(id: id)?.priority?.rawValue, try s.content(id))
        }
        #expect(try send(open, "a@open.test", "").priority == "transactional")
        #expect(try send(open, "a@open.test", #""priority":"bulk""#).priority == "bulk")
        let viaHeader = try send(open, "a@open.test", #""headers":{"X-Hato-Priority":"bulk"}"#)
        #expect(viaHeader.priority == "bulk")
        #expect(!viaHeader.content.lowercased().contains("x-hato-priority"), "the header is removed before the message is stored")
        #expect(try send(news, "a@news.test", "").priority == "bulk")
        #expect(try send(news, "a@news.test", #""priority":"transactional""#).priority == "bulk", "a bulk tenant cannot be raised by the field")
        #expect(try send(news, "a@news.test", #""headers":{"X-Hato-Priority":"transactional"}"#).priority == "bulk", "…nor by the header")
        let bad = try s.send(sendJSON(from: "a@open.test", to: ["u@x.test"], extra: #""priority":"urgent""#), key: open)
        #expect(bad.status == 400 && bad.errorCode == "invalid_field", "\(bad.body)")
    }
}
