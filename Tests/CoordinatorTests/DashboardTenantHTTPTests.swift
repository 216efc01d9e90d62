import Foundation
import HatoConfig
import HatoCrypto
import HatoHTTP
import HatoIO
import HatoSupport
import SMTPCore
import Testing
@testable import HatoCoordinator

/// The tenant view over real sockets: a tenant's SMTP user logs in to `/ui/t/`, sees only its
/// own messages, and gets 403 from every operator page and endpoint (and operators from its).
@Suite("Dashboard tenant view over HTTP", .serialized)
final class DashboardTenantHTTPTests {
    let token = "dash-tenant-token"
    let dir = NSTemporaryDirectory() + "hato-dasht-" + Identifier.random(bytes: 5)
    let store: SQLiteQueueStore
    let server: HTTPServer

    init() throws {
        store = try SQLiteQueueStore(directory: dir)
        try store.installReportingSchema()  // the suppression table, as ReportingService makes it
        let hash = PasswordHash.make(password: Array("acme-pw".utf8), iterations: PasswordHash.minimumIterations).encoded
        for t in ["acme", "other"] { try store.createTenant(Tenant(name: t, createdAt: 0)) }
        try store.addTenantUser(TenantSMTPUser(name: "acme-app", tenant: "acme", passwordHash: hash, createdAt: 0))
        let now = Date()
        for t in ["acme", "other"] {
            try store.addSendingDomain(SendingDomain(domain: "\(t).test", tenant: t, keys: [], createdAt: 0))
            try store.addSuppressions([SuppressionEntry(address: "gone@\(t)-rcpt.test", scope: "\(t).test", reason: "550 5.1.1 no such user",
                                                        source: "bounce", createdAt: now.timeIntervalSince1970)])
        }
        for (id, tenant) in [("MSGACME", "acme"), ("MSGOTHER", "other")] {
            try store.enqueue(NewMessage(id: id, reversePath: "a@\(tenant).test", recipients: ["r@x.test"], pool: "p",
                                         content: Array("Subject: x\r\n\r\nx\r\n".utf8), heloName: "h", clientAddress: "127.0.0.1",
                                         receivedAt: now, tenant: tenant))
        }
        let store = self.store
        let stub: @Sendable (HTTPRequest) -> HTTPResponse = { req in
            req.path == "/v1/tenants/acme/keys" ? HTTPResponse(status: 200, body: Array("[]".utf8)) : .error(404, "stub")
        }
        let config = try ClusterConfig.parse("""
            cluster: { name: t, secret: "0123456789abcdef-secret" }
            coordinator: { listen: 127.0.0.1:1, admin_listen: 127.0.0.1:2, admin_token: "0123456789abcdef-token", data_dir: \(dir) }
            smtp: { listen: [127.0.0.1:3], hostname: relay.t.test }
            nodes: [{ id: n, data_dir: \(dir)/n }]
            pools: [{ name: p }]
            ips: [{ address: 127.0.0.10, helo: h.test, pool: p }]
            routing: { default_pool: p }
            """, path: dir + "/cluster.yml")
        let dashboard = Dashboard(token: token, accounts: store, secureCookie: false, maxFailures: 5, failureWindow: 600,
                                  data: DashboardData(token: token, admin: stub, activity: ActivityRecorder()),
                                  tenantData: DashboardTenantData(store: store, token: token, admin: stub, activity: ActivityRecorder(),
                                                                  config: { config }),
                                  tenantUsers: { name in
                                      guard let u = (try? store.tenantUsers(tenant: nil))?.first(where: { $0.name == name }),
                                            let h = try? PasswordHash(parsing: u.passwordHash) else { return nil }
                                      return (u.tenant, h)
                                  })
        server = try HTTPServer(address: SocketAddress(host: "127.0.0.1", port: 0)) { dashboard.handle($0) ?? .error(404, "not the dashboard") }
        server.start()
    }

    deinit {
        server.stop()
        try? FileManager.default.removeItem(atPath: dir)
    }

    func send(_ method: String, _ path: String, cookie: String? = nil, form: String? = nil) throws -> HTTPClientResponse {
        var headers: [(String, String)] = []
        if let cookie { headers.append(("Cookie", "\(Dashboard.cookieName)=\(cookie)")) }
        if form != nil { headers.append(("Content-Type", "application/x-www-form-urlencoded")) }
        return try HTTPClient.send(method, to: server.address, path: path, headers: headers, body: form.map { Array($0.utf8) }, timeout: 10)
    }

    func login(_ form: String, to location: String) throws -> String {
        let r = try send("POST", "/ui/login", form: form)
        #expect(r.status == 303 && r.headers["location"] == location, "\(r.status) \(r.headers)")
        return try #require(r.headers["set-cookie"]?.split(separator: ";").first?.split(separator: "=", maxSplits: 1).last.map(String.init))
    }

    @Test("a tenant user logs in to /ui/t/ and sees its own message; another tenant's id is 404; operator pages are 403 to it")
    func tenantSession() throws {
        #expect(try send("POST", "/ui/login", form: "user=acme-app&password=wrong").status == 401)
        let session = try login("user=acme-app&password=acme-pw", to: "/ui/t/")
        #expect(try send("GET", "/ui/", cookie: session).headers["location"] == "/ui/t/")
        for p in ["/ui/t/", "/ui/t/messages", "/ui/t/domains", "/ui/t/keys", "/ui/t/messages/MSGACME"] {
            #expect(try send("GET", p, cookie: session).status == 200, "\(p)")
        }
        let own = try send("GET", "/ui/api/t/messages/MSGACME", cookie: session)
        #expect(own.status == 200 && String(decoding: own.body, as: UTF8.self).contains("MSGACME"))
        #expect(try send("GET", "/ui/api/t/messages/MSGOTHER", cookie: session).status == 404, "another tenant's message")
        #expect(try send("GET", "/ui/api/t/messages/NOSUCH", cookie: session).status == 404)
        let overview = try send("GET", "/ui/api/t/overview", cookie: session)
        #expect(overview.status == 200 && String(decoding: overview.body, as: UTF8.self).contains("\"acme\""))
        #expect(try send("GET", "/ui/api/t/events", cookie: session).status == 200)
        #expect(try send("GET", "/ui/api/t/domains", cookie: session).status == 200)
        #expect(try send("GET", "/ui/api/t/keys", cookie: session).status == 200)
        let suppressions = String(decoding: try send("GET", "/ui/api/t/suppressions", cookie: session).body, as: UTF8.self)
        #expect(suppressions.contains("gone@acme-rcpt.test") && !suppressions.contains("gone@other-rcpt.test"), "\(suppressions)")
        #expect(try send("GET", "/ui/api/t/domains/other.test/check", cookie: session).status == 404, "another tenant's domain")
        let domains = String(decoding: try send("GET", "/ui/api/t/domains", cookie: session).body, as: UTF8.self)
        #expect(domains.contains("acme.test") && !domains.contains("other.test"))
        for p in ["/ui/nodes", "/ui/ips", "/ui/queue", "/ui/suppressions", "/ui/messages/MSGOTHER"] {
            #expect(try send("GET", p, cookie: session).status == 403, "\(p)")
        }
        for p in ["/ui/api/overview", "/ui/api/nodes", "/ui/api/messages/MSGOTHER", "/ui/api/suppressions"] {
            #expect(try send("GET", p, cookie: session).status == 403, "\(p)")
        }
        #expect(try send("POST", "/ui/actions/nodes/n/drain", cookie: session, form: "csrf=x").status == 403)
        #expect(try send("POST", "/ui/actions/t/keys/create", cookie: session, form: "label=x").status == 403, "no CSRF token")
        // Removing the tenant user ends its session.
        #expect(try store.removeTenantUser(name: "acme-app"))
        #expect(try send("GET", "/ui/api/t/overview", cookie: session).status == 401)
    }

    @Test("an operator session gets 403 from the tenant view")
    func operatorOnTenantView() throws {
        let session = try login("user=&password=\(token)", to: "/ui/")
        #expect(try send("GET", "/ui/t/", cookie: session).status == 403)
        #expect(try send("GET", "/ui/api/t/overview", cookie: session).status == 403)
        #expect(try send("GET", "/ui/t/nothing", cookie: session).status == 403)
    }
}
