import Foundation
import HatoCrypto
import HatoHTTP
import HatoIO
import HatoSupport
import SMTPCore
import Testing
@testable import HatoCoordinator

/// The dashboard over real sockets on 127.0.0.1: a `Dashboard` in front of a stub admin
/// handler (answers like the admin API's shapes and records what it was asked).
@Suite("Dashboard over HTTP: login, sessions, CSRF, headers", .serialized)
final class DashboardHTTPTests {
    let token = "dash-test-token"
    let dir = NSTemporaryDirectory() + "hato-dash-" + Identifier.random(bytes: 5)
    let store: SQLiteQueueStore
    let server: HTTPServer
    let dashboard: Dashboard
    let calls = Locked<[HTTPRequest]>([])

    static let pages = ["/ui/", "/ui/nodes", "/ui/ips", "/ui/queue", "/ui/suppressions", "/ui/rebalance", "/ui/messages/ABC"]
    static let endpoints = ["/ui/api/overview", "/ui/api/nodes", "/ui/api/ips", "/ui/api/queue", "/ui/api/messages?q=a@b.test",
                            "/ui/api/messages/ABC", "/ui/api/suppressions", "/ui/api/rebalance"]
    static let actions = ["/ui/actions/nodes/node-a/drain", "/ui/actions/nodes/node-a/resume", "/ui/actions/rebalance",
                          "/ui/actions/suspensions/lift", "/ui/actions/suppressions/add", "/ui/actions/suppressions/remove", "/ui/logout"]

    init() throws {
        store = try SQLiteQueueStore(directory: dir)
        try store.saveOperator(OperatorAccount(name: "alice", passwordHash: PasswordHash.make(password: Array("wonderland".utf8),
                                                                                              iterations: PasswordHash.minimumIterations).encoded,
                                               createdAt: 0))
        let calls = self.calls
        let stub: @Sendable (HTTPRequest) -> HTTPResponse = { req in
            calls.withLock { $0.append(req) }
            switch req.path {
            case "/v1/status": return HTTPResponse(status: 200, body: Array(#"{"cluster":"t","nodes":[],"ips":[],"queue":{"queued":0}}"#.utf8))
            case "/v1/queue/summary": return HTTPResponse(status: 200, body: Array(#"{"groups":[],"group_count":0,"total":0}"#.utf8))
            case "/v1/messages/ABC": return HTTPResponse(status: 404, body: Array(#"{"error":"no message ABC"}"#.utf8))
            default: return HTTPResponse(status: req.method == "GET" ? 200 : 202, body: Array("[]".utf8))
            }
        }
        dashboard = Dashboard(token: token, accounts: store, secureCookie: false, maxFailures: 3, failureWindow: 600,
                              data: DashboardData(token: token, admin: stub, activity: ActivityRecorder()))
        let dashboard = self.dashboard
        server = try HTTPServer(address: SocketAddress(host: "127.0.0.1", port: 0)) { dashboard.handle($0) ?? .error(404, "not the dashboard") }
        server.start()
    }

    deinit {
        server.stop()
        try? FileManager.default.removeItem(atPath: dir)
    }

    func send(_ method: String, _ path: String, cookie: String? = nil, form: [String: String]? = nil,
              headers extra: [(String, String)] = []) throws -> HTTPClientResponse {
        var headers = extra
        if let cookie { headers.append(("Cookie", "\(Dashboard.cookieName)=\(cookie)")) }
        var body: [UInt8]?
        if let form {
            headers.append(("Content-Type", "application/x-www-form-urlencoded"))
            body = Array(form.map { "\($0.key)=\($0.value.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? "")" }.joined(separator: "&").utf8)
        }
        return try HTTPClient.send(method, to: server.address, path: path, headers: headers, body: body, timeout: 10)
    }

    /// Logs in and returns the session id and the CSRF token read from a page.
    func login(user: String = "", password: String? = nil) throws -> (session: String, csrf: String) {
        let r = try send("POST", "/ui/login", form: ["user": user, "password": password ?? token])
        #expect(r.status == 303 && r.headers["location"] == "/ui/")
        let cookie = try #require(r.headers["set-cookie"])
        let id = try #require(cookie.split(separator: ";").first?.split(separator: "=", maxSplits: 1).last.map(String.init))
        let page = String(decoding: try send("GET", "/ui/", cookie: id).body, as: UTF8.self)
        let csrf = try #require(page.firstRange(of: #/name="csrf-token" content="([0-9a-f]{64})"/#).map { String(page[$0]) })
        return (id, String(csrf.dropFirst(#"name="csrf-token" content=""#.count).dropLast()))
    }

    @Test("without a session every page redirects to the login page (303), every JSON endpoint and action answers 401")
    func withoutSession() throws {
        for p in Self.pages {
            let r = try send("GET", p)
            #expect(r.status == 303 && r.headers["location"] == "/ui/login", "\(p): \(r.status)")
        }
        for p in Self.endpoints {
            let r = try send("GET", p)
            #expect(r.status == 401 && r.headers["content-type"] == "application/json", "\(p): \(r.status)")
        }
        for p in Self.actions { #expect(try send("POST", p, form: ["csrf": "x"]).status == 401, "\(p)") }
        // A forged or expired cookie is no session either.
        #expect(try send("GET", "/ui/nodes", cookie: String(repeating: "ab", count: 32)).status == 303)
        #expect(try send("GET", "/ui/api/nodes", cookie: "short").status == 401)
        #expect(calls.snapshot.isEmpty, "nothing reached the admin handlers")
        let loginPage = try send("GET", "/ui/login")
        #expect(loginPage.status == 200 && String(decoding: loginPage.body, as: UTF8.self).contains("<form method=\"post\" action=\"/ui/login\""))
        #expect(try send("GET", "/ui/assets/app.js").status == 200, "assets hold no data")
        #expect(try send("GET", "/ui").headers["location"] == "/ui/")
    }

    @Test("a wrong login is 401; past the limit per client address 429, even with the right token")
    func wrongLoginAndRateLimit() throws {
        #expect(try send("POST", "/ui/login", form: ["user": "", "password": "wrong"]).status == 401)
        #expect(try send("POST", "/ui/login", form: ["user": "alice", "password": "wrong"]).status == 401)
        let unknown = try send("POST", "/ui/login", form: ["user": "mallory", "password": "x"])
        #expect(unknown.status == 401 && unknown.headers["set-cookie"] == nil)
        let limited = try send("POST", "/ui/login", form: ["user": "", "password": token])
        #expect(limited.status == 429, "three failures used up the limit")
        #expect(limited.headers["set-cookie"] == nil)
    }

    @Test("login sets an HttpOnly, SameSite=Strict cookie for /ui (Secure under admin_tls); pages carry CSP, nosniff and no-store")
    func cookieAndHeaders() throws {
        let r = try send("POST", "/ui/login", form: ["user": "", "password": token])
        let cookie = try #require(r.headers["set-cookie"])
        let parts = Set(cookie.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) })
        #expect(parts.contains("HttpOnly") && parts.contains("SameSite=Strict") && parts.contains("Path=/ui") && !parts.contains("Secure"))
        #expect(cookie.hasPrefix("\(Dashboard.cookieName)=") && cookie.count > 64 + Dashboard.cookieName.count)
        let tlsDashboard = Dashboard(token: token, accounts: store, secureCookie: true, maxFailures: 3, failureWindow: 600,
                                     data: DashboardData(token: token, admin: { _ in .error(500, "unused") }, activity: ActivityRecorder()))
        let secure = tlsDashboard.handle(HTTPRequest(method: "POST", path: "/ui/login", headers: ["content-type": "application/x-www-form-urlencoded"],
                                                     body: Array("user=&password=\(token)".utf8), peer: SocketAddress(host: "127.0.0.1", port: 1)))
        #expect(secure?.headers["Set-Cookie"]?.contains("; Secure") == true)

        let (session, _) = try login()
        for p in Self.pages {
            let page = try send("GET", p, cookie: session)
            #expect(page.status == 200, "\(p)")
            #expect(page.headers["content-security-policy"]?.contains("script-src 'self'") == true)
            #expect(page.headers["x-content-type-options"] == "nosniff" && page.headers["cache-control"] == "no-store")
            #expect(!String(decoding: page.body, as: UTF8.self).contains("<script>"), "no inline script")
        }
        for p in Self.endpoints {
            let json = try send("GET", p, cookie: session)
            #expect(json.headers["cache-control"] == "no-store" && json.headers["content-type"] == "application/json", "\(p)")
            #expect(json.status == (p.hasSuffix("/ABC") ? 404 : 200), "\(p): \(json.status)")
        }
        #expect(try send("GET", "/ui/api/messages", cookie: session).status == 400, "a search without q")
        #expect(try send("GET", "/ui/api/messages?q=x&by=nonsense", cookie: session).status == 400)
        #expect(try send("GET", "/ui/api/nothing", cookie: session).status == 404)
    }

    @Test("a POST without the CSRF token (or with another) is 403; with it the action reaches the admin API as the operator")
    func csrf() throws {
        let (session, csrf) = try login(user: "alice", password: "wonderland")
        for p in Self.actions {
            #expect(try send("POST", p, cookie: session, form: [:]).status == 403, "\(p) without a token")
            #expect(try send("POST", p, cookie: session, form: ["csrf": String(repeating: "0", count: 64)]).status == 403, "\(p) wrong token")
        }
        #expect(calls.snapshot.isEmpty)
        let crossSite = try send("POST", "/ui/actions/nodes/node-a/drain", cookie: session, form: ["csrf": csrf],
                                 headers: [("Origin", "https://evil.example")])
        #expect(crossSite.status == 403)
        let drained = try send("POST", "/ui/actions/nodes/node-a/drain", cookie: session, form: ["csrf": csrf])
        #expect(drained.status == 303 && drained.headers["location"]?.hasPrefix("/ui/nodes?notice=") == true)
        let viaHeader = try send("POST", "/ui/actions/suspensions/lift", cookie: session, form: ["ip": "127.0.0.10", "provider": "gmail"],
                                 headers: [("X-CSRF-Token", csrf)])
        #expect(viaHeader.status == 303)
        let seen = calls.snapshot
        #expect(seen.map { "\($0.method) \($0.path)" } == ["POST /v1/nodes/node-a/drain", "DELETE /v1/suspensions"])
        #expect(seen.first?.headers["x-hato-operator"] == "alice")
        #expect(seen.last?.query == ["ip": "127.0.0.10", "provider": "gmail"])
        let bad = try send("POST", "/ui/actions/suppressions/add", cookie: session, form: ["csrf": csrf, "address": "not-an-address"])
        #expect(bad.status == 400)
    }

    @Test("logout ends the session; removing an operator account ends its sessions")
    func logout() throws {
        let (session, csrf) = try login()
        #expect(try send("GET", "/ui/api/nodes", cookie: session).status == 200)
        let out = try send("POST", "/ui/logout", cookie: session, form: ["csrf": csrf])
        #expect(out.status == 303 && out.headers["location"] == "/ui/login")
        #expect(out.headers["set-cookie"]?.contains("Max-Age=0") == true)
        #expect(try send("GET", "/ui/api/nodes", cookie: session).status == 401)
        #expect(try send("GET", "/ui/nodes", cookie: session).status == 303)

        let (alice, _) = try login(user: "alice", password: "wonderland")
        #expect(try send("GET", "/ui/api/nodes", cookie: alice).status == 200)
        try store.removeOperator(named: "alice")
        #expect(try send("GET", "/ui/api/nodes", cookie: alice).status == 401)
    }
}
