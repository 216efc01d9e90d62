import Foundation
import HatoTestKit
import Testing
@testable import ClusterProtocol
@testable import HatoConfig
@testable import HatoCoordinator
@testable import HatoIO
@testable import SMTPCore

/// A tenant's events (issue 16): its own webhook signed with its own secret, the delivery log
/// and metrics with its name, its event log for the HTTP API — and nothing of another tenant's.
@Suite("Tenant reporting")
struct TenantReportingTests {
    @Test("a tenant's delivery goes to its own webhook (signed with its secret), the log, the metrics and its event log; another tenant's does not", arguments: StoreKind.allCases)
    func tenantEvents(kind: StoreKind) throws {
        let f = try ReportingFixture(kind: kind)
        defer { f.cleanup() }
        let probe = try Socket.listen(on: SocketAddress(host: "127.0.0.1", port: 0))
        let port = probe.localAddress?.port ?? 0
        probe.close()
        let now = f.clock.now().timeIntervalSince1970
        try f.store.createTenant(Tenant(name: "acme", webhookURL: "http://127.0.0.1:\(port)/acme", webhookSecret: "acme-secret", createdAt: now))
        try f.store.createTenant(Tenant(name: "other", createdAt: now))
        let directory = TenantDirectory(store: f.store)
        let service = try ReportingService(config: f.config, store: f.store, clock: f.clock, onEnqueued: {}, tenants: directory)
        var mine = f.message("M1", ["a@hato.test"]); mine.tenant = "acme"
        var theirs = f.message("M2", ["b@hato.test"]); theirs.tenant = "other"
        try f.store.enqueue([mine, theirs])
        try f.deliver("M1", status: .delivered, code: 250, enhanced: "2.0.0", text: "ok")
        try f.deliver("M2", status: .failed, code: 550, enhanced: "5.1.1", text: "no such user")
        while try service.reporter.runOnce() {}

        let rows = try f.store.dueWebhooks(hook: "tenant:acme", now: f.clock.now().addingTimeInterval(1), limit: 100)
        let bodies = rows.map { String(decoding: $0.body, as: UTF8.self) }
        #expect(bodies.count == 2, "received and delivered of M1: \(bodies)")
        #expect(bodies.allSatisfy { $0.contains("\"message_id\":\"M1\"") && $0.contains("\"tenant\":\"acme\"") })
        #expect(try f.store.dueWebhooks(hook: "tenant:other", now: f.clock.now().addingTimeInterval(1), limit: 100).isEmpty, "other has no webhook")

        let log = service.deliveryLog.query(messageID: nil, recipient: nil, limit: 100)
        #expect(log.filter { $0.messageId == "M1" }.allSatisfy { $0.tenant == "acme" })
        #expect(log.filter { $0.messageId == "M2" }.allSatisfy { $0.tenant == "other" })
        #expect(service.metrics.tenantMessages.value("acme", "delivered") == 1)
        #expect(service.metrics.tenantMessages.value("other", "bounced") == 1)
        #expect(service.metrics.tenantMessages.value("acme", "bounced") == 0)

        let events = try f.store.tenantEvents(tenant: "acme", after: 0, limit: 100)
        #expect(events.map(\.kind) == ["received", "delivered"])
        #expect(events.allSatisfy { $0.messageID == "M1" })
        #expect(try f.store.tenantEvents(tenant: "other", after: 0, limit: 100).map(\.kind) == ["received", "failed"])

        // The dispatcher posts acme's rows to acme's URL, signed with acme's secret.
        let dir = f.dir
        let receiver = try PythonWebhookReceiver(port: port, secret: "acme-secret", failFirst: 0, dir: dir)
        defer { receiver.stop() }
        let hooks = directory.webhooks()
        #expect(hooks.map(\.key) == ["tenant:acme"])
        f.clock.advance(1)
        let dispatcher = WebhookDispatcher(hooks: [], store: f.store, clock: f.clock, tenantHooks: { directory.webhooks() })
        if let acme = hooks.first { try dispatcher.deliverDue(acme.hook, key: acme.key) }
        let got = receiver.requests
        #expect(got.count == 1)
        #expect(got.first?["valid"] as? Bool == true, "signed with the tenant's secret")
        #expect(((got.first?["body"] as? [String: Any])?["events"] as? [Any])?.count == 2)
        #expect(try f.store.dueWebhooks(hook: "tenant:acme", now: f.clock.now().addingTimeInterval(1), limit: 100).isEmpty)
    }
    @Test("suppressions by scope: only entries of the given sender domains, newest first, one address on request", arguments: StoreKind.allCases)
    func suppressionsByScope(kind: StoreKind) throws {
        let f = try ReportingFixture(kind: kind)
        defer { f.cleanup() }
        let t = f.clock.now().timeIntervalSince1970
        let scopes: [String?] = ["acme.example", "beta.example", nil]
        var entries: [SuppressionEntry] = []
        for i in 0..<30 {
            entries.append(SuppressionEntry(address: "u\(i)@dest.test", scope: scopes[i % 3], reason: "550", source: "bounce", createdAt: t + Double(i)))
        }
        try f.store.addSuppressions(entries)
        let acme = try f.store.suppressions(scopes: ["acme.example", "ACME2.example"], address: nil, now: f.clock.now(), limit: 100)
        let expected: [String] = stride(from: 27, through: 0, by: -3).map { (i: Int) -> String in "u\(i)@dest.test" }
        #expect(acme.map(\.address) == expected)
        #expect(acme.allSatisfy { $0.scope == "acme.example" })
        #expect(try f.store.suppressions(scopes: ["acme.example"], address: "U3@dest.test", now: f.clock.now(), limit: 100).map(\.address) == ["u3@dest.test"])
        #expect(try f.store.suppressions(scopes: ["acme.example"], address: "u1@dest.test", now: f.clock.now(), limit: 100).isEmpty)
        #expect(try f.store.suppressions(scopes: [], address: nil, now: f.clock.now(), limit: 100).isEmpty)
        #expect(try f.store.suppressions(scopes: ["beta.example"], address: nil, now: f.clock.now(), limit: 4).count == 4)
    }
}
