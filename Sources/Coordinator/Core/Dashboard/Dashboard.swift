import Foundation
import HatoCrypto
import HatoHTTP
import HatoSupport
import SMTPCore

/// The web dashboard under `/ui/` on the admin listener (issue 17): login, sessions, CSRF,
/// security headers, and the routing to pages (`DashboardPages`), JSON (`DashboardData`) and
/// actions.
///
/// - Pages (`GET /ui/…`) without a live session answer `303` to `/ui/login`; JSON
///   (`/ui/api/…`) and actions (`POST /ui/actions/…`) answer `401`. Assets
///   (`/ui/assets/…`) are public: they hold no data.
/// - Login (`POST /ui/login`): the admin token, or an operator account's name and password
///   (`OperatorStore`), or a tenant SMTP user's (the tenant view under `/ui/t/`, its own data only;
///   operator pages and endpoints answer it `403`, as the tenant view does an operator). Failures count per client address like SMTP AUTH (`AuthFailureLimiter`,
///   `smtp.auth_failure_limit` per `smtp.auth_failure_window`); past the limit `429`.
/// - Every `POST` but the login needs the session's CSRF token (`X-CSRF-Token` header or the
///   `csrf` form field, compared in constant time), else `403`; a cross-site `Origin` is `403`.
public final class Dashboard: Sendable {
    /// The session cookie's name.
    public static let cookieName = "hato_session"
    /// Sent with every `/ui/` response.
    public static let contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        + "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

    let token: String
    let accounts: any OperatorStore & Sendable
    let secureCookie: Bool
    let clock: any WallClock
    let data: DashboardData
    let tenantData: DashboardTenantData?
    let tenantUsers: (@Sendable (String) -> (tenant: String, hash: PasswordHash)?)?
    private let sessions: Locked<DashboardSessionTable>
    private let limiter: Locked<AuthFailureLimiter>
    private let decoy = Locked<PasswordHash?>(nil)
    private let log = Logger(label: "coordinator.dashboard")

    /// - Parameters:
    ///   - token: the admin token (an operator may log in with it).
    ///   - accounts: the operator accounts.
    ///   - secureCookie: mark the cookie `Secure` (the admin listener speaks HTTPS, `admin_tls`).
    ///   - maxFailures: failed logins per client address within `failureWindow` before `429`.
    ///   - failureWindow: seconds.
    ///   - sessions: the session table (its timeouts).
    ///   - clock: time source.
    ///   - data: the JSON endpoints and actions.
    ///   - tenantData: the tenant view's (nil: no tenant logins).
    ///   - tenantUsers: a tenant SMTP user's tenant and password hash (`TenantDirectory.smtpUser`).
    public init(token: String, accounts: any OperatorStore & Sendable, secureCookie: Bool, maxFailures: Int, failureWindow: TimeInterval,
                sessions: DashboardSessionTable = DashboardSessionTable(), clock: any WallClock = SystemClock(), data: DashboardData,
                tenantData: DashboardTenantData? = nil, tenantUsers: (@Sendable (String) -> (tenant: String, hash: PasswordHash)?)? = nil) {
        self.token = token; self.accounts = accounts; self.secureCookie = secureCookie; self.clock = clock; self.data = data
        self.tenantData = tenantData; self.tenantUsers = tenantUsers
        self.sessions = Locked(sessions)
        limiter = Locked(AuthFailureLimiter(maxFailures: maxFailures, window: failureWindow))
    }

    /// Answers a request under `/ui`; nil for every other path (the admin API's).
    public func handle(_ req: HTTPRequest) -> HTTPResponse? {
        guard req.path == "/ui" || req.path.hasPrefix("/ui/") else { return nil }
        return Self.secured(route(req))
    }

    private func route(_ req: HTTPRequest) -> HTTPResponse {
        let path = req.path
        if path == "/ui" { return Self.redirect("/ui/") }
        if path.hasPrefix("/ui/assets/") {
            guard req.method == "GET" else { return .error(405, "assets are GET only") }
            return DashboardAssets.response(for: String(path.dropFirst("/ui/assets/".count))) ?? Self.notFound(html: false)
        }
        if path == "/ui/login" {
            switch req.method {
            case "GET": return currentSession(req) != nil ? Self.redirect("/ui/") : DashboardPages.login(error: nil, status: 200, tenants: tenantData != nil)
            case "POST": return login(req)
            default: return .error(405, "GET or POST")
            }
        }
        let isJSON = path.hasPrefix("/ui/api/") || path.hasPrefix("/ui/actions/") || path == "/ui/logout"
        guard let session = currentSession(req) else {
            return isJSON || req.method != "GET" ? .error(401, "log in first: /ui/login") : Self.redirect("/ui/login")
        }
        // Tenants see only /ui/t/… (their own data); operators use the operator pages.
        let tenantPath = path == "/ui/t" || path.hasPrefix("/ui/t/") || path.hasPrefix("/ui/api/t/") || path.hasPrefix("/ui/actions/t/")
        var tenant: String?
        switch session.principal {
        case .tenant(let t, _):
            tenant = t
            if path == "/ui/" || path == "/ui/t" { return Self.redirect("/ui/t/") }
            guard tenantPath || path == "/ui/logout", tenantData != nil else {
                return isJSON ? .error(403, "this page is for operators") : Self.notFound(html: true, status: 403)
            }
        case .operator:
            if tenantPath { return isJSON ? .error(403, "this page is for tenants") : Self.notFound(html: true, status: 403) }
        }
        if req.method == "POST" {
            guard sameOrigin(req) else { return .error(403, "cross-origin request refused") }
            let form = DashboardForm(req)
            guard DashboardSessionTable.csrfMatches(session, req.headers["x-csrf-token"] ?? form["csrf"]) else {
                return .error(403, "missing or wrong CSRF token")
            }
            if path == "/ui/logout" {
                sessions.withLock { _ = $0.remove(session.id) }
                log.info("dashboard logout", ["user": session.principal.displayName])
                return Self.redirect("/ui/login", cookie: cookie(value: "", expire: true))
            }
            guard path.hasPrefix("/ui/actions/") else { return .error(404, "no action \(path)") }
            if let tenant, let tenantData {
                return tenantData.act(String(path.dropFirst("/ui/actions/t/".count)), form: form, session: session, tenant: tenant)
            }
            return data.act(String(path.dropFirst("/ui/actions/".count)), form: form, session: session)
        }
        guard req.method == "GET" else { return .error(405, "GET or POST") }
        if let tenant, let tenantData {
            if path.hasPrefix("/ui/api/t/") { return tenantData.json(String(path.dropFirst("/ui/api/t/".count)), query: req.query, tenant: tenant) }
            return DashboardPages.tenantPage(path, session: session) ?? Self.notFound(html: true)
        }
        if path.hasPrefix("/ui/api/") {
            return data.json(String(path.dropFirst("/ui/api/".count)), query: req.query, session: session)
        }
        return DashboardPages.page(path, session: session) ?? Self.notFound(html: true)
    }

    // MARK: Login

    private func login(_ req: HTTPRequest) -> HTTPResponse {
        let client = req.peer?.host ?? "unknown"
        let now = clock.now()
        if limiter.withLock({ $0.isBlocked(client, now: now) }) {
            log.warning("dashboard login rate-limited", ["client": client])
            return DashboardPages.login(error: "Too many failed logins from your address. Wait a while and try again.", status: 429,
                                        tenants: tenantData != nil)
        }
        let form = DashboardForm(req)
        let name = (form["user"] ?? "").trimmingCharacters(in: .whitespaces)
        let password = Array((form["password"] ?? "").utf8)
        var principal: DashboardPrincipal?
        var digest: String?
        if name.isEmpty {
            if !password.isEmpty && Crypto.constantTimeEquals(password, Array(token.utf8)) { principal = .operator(name: "admin") }
        } else if password.count <= 4096 {
            let stored = OperatorAccount.isValidName(name) ? (try? accounts.operatorAccount(named: name)) ?? nil : nil
            if let stored, let hash = try? PasswordHash(parsing: stored.passwordHash) {
                if hash.verify(password) { principal = .operator(name: stored.name); digest = Self.digest(stored) }
            } else if tenantData != nil, let user = tenantUsers?(name) {
                // A tenant's SMTP user (`tenant smtp-user add`) logs in to its tenant's view.
                if user.hash.verify(password) { principal = .tenant(tenant: user.tenant, user: name); digest = Self.digest(user.hash.encoded) }
            } else {
                _ = decoyHash().verify(password)  // an unknown name costs the same time as a known one
            }
        }
        guard let principal else {
            limiter.withLock { $0.recordFailure(client, now: now) }
            log.warning("dashboard login failed", ["client": client])
            return DashboardPages.login(error: "Wrong name, password or token.", status: 401, tenants: tenantData != nil)
        }
        let session = sessions.withLock {
            $0.create(principal, id: Hex.encode(Crypto.randomBytes(32)), csrfToken: Hex.encode(Crypto.randomBytes(32)), accountDigest: digest, now: now)
        }
        log.info("dashboard login", ["user": principal.displayName, "client": client])
        return Self.redirect(principal.isOperator ? "/ui/" : "/ui/t/", cookie: cookie(value: session.id, expire: false))
    }

    private func decoyHash() -> PasswordHash {
        if let d = decoy.snapshot { return d }
        let d = PasswordHash.make(password: Crypto.randomBytes(16))
        decoy.withLock { $0 = d }
        return d
    }

    // MARK: Sessions and headers

    /// The live session the request's cookie names (touched), nil without one.
    func currentSession(_ req: HTTPRequest) -> DashboardSession? {
        guard let id = Self.cookie(Self.cookieName, in: req.headers["cookie"]), id.utf8.count == 64 else { return nil }
        let now = clock.now()
        guard let s = sessions.withLock({ $0.use(id, now: now) }) else { return nil }
        if let digest = s.accountDigest {
            // An account removed, or given a new password, since login ends its sessions.
            let current: String?
            switch s.principal {
            case .operator(let name): current = ((try? accounts.operatorAccount(named: name)) ?? nil).map(Self.digest)
            case .tenant(let tenant, let user):
                current = tenantUsers?(user).flatMap { $0.tenant == tenant ? Self.digest($0.hash.encoded) : nil }
            }
            guard let current, Crypto.constantTimeEquals(Array(current.utf8), Array(digest.utf8)) else {
                sessions.withLock { _ = $0.remove(id) }
                return nil
            }
        }
        return s
    }

    private static func digest(_ account: OperatorAccount) -> String { digest(account.passwordHash) }
    private static func digest(_ hash: String) -> String { Hex.encode(Crypto.sha256(Array(hash.utf8))) }

    /// The value of cookie `name` in a `Cookie` header.
    static func cookie(_ name: String, in header: String?) -> String? {
        guard let header else { return nil }
        for part in header.split(separator: ";") {
            let kv = part.trimmingCharacters(in: .whitespaces).split(separator: "=", maxSplits: 1)
            if kv.count == 2 && kv[0] == name { return String(kv[1]) }
        }
        return nil
    }

    private func cookie(value: String, expire: Bool) -> String {
        "\(Self.cookieName)=\(value); Path=/ui; HttpOnly; SameSite=Strict" + (secureCookie ? "; Secure" : "") + (expire ? "; Max-Age=0" : "")
    }

    /// A cross-site `Origin` (another host than `Host`) is refused. No `Origin`, or the opaque
    /// `null` some privacy settings send, passes here: the CSRF token still has to match.
    private func sameOrigin(_ req: HTTPRequest) -> Bool {
        guard let origin = req.headers["origin"], origin != "null" else { return true }
        guard let host = req.headers["host"], let url = URL(string: origin), let oh = url.host else { return false }
        return (url.port.map { "\(oh):\($0)" } ?? oh) == host || oh == host
    }

    static func redirect(_ location: String, cookie: String? = nil) -> HTTPResponse {
        var r = HTTPResponse(status: 303, contentType: "text/plain; charset=utf-8", body: Array("See \(location)\n".utf8),
                             headers: ["Location": location])
        if let cookie { r.headers["Set-Cookie"] = cookie }
        return r
    }

    static func notFound(html: Bool, status: Int = 404) -> HTTPResponse {
        html ? DashboardPages.message(status == 403 ? "Operators only" : "Not found", status: status) : .error(status, "not found")
    }

    /// Adds the security headers every `/ui/` response carries.
    static func secured(_ response: HTTPResponse) -> HTTPResponse {
        var r = response
        r.headers["Content-Security-Policy"] = contentSecurityPolicy
        r.headers["X-Content-Type-Options"] = "nosniff"
        r.headers["X-Frame-Options"] = "DENY"
        r.headers["Referrer-Policy"] = "same-origin"
        if r.headers["Cache-Control"] == nil { r.headers["Cache-Control"] = "no-store" }  // assets set their own
        return r
    }
}

/// The fields of an `application/x-www-form-urlencoded` body (or, for GET, the query).
struct DashboardForm {
    private var fields: [String: String] = [:]

    init(_ req: HTTPRequest) {
        guard (req.headers["content-type"] ?? "").hasPrefix("application/x-www-form-urlencoded") else { fields = req.query; return }
        for pair in String(decoding: req.body, as: UTF8.self).split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1).map { String($0).replacingOccurrences(of: "+", with: " ") }
            let key = kv[0].removingPercentEncoding ?? kv[0]
            fields[key] = kv.count > 1 ? (kv[1].removingPercentEncoding ?? kv[1]) : ""
        }
    }

    subscript(_ key: String) -> String? { fields[key] }
}
