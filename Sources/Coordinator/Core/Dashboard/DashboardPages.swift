import Foundation
import HatoHTTP

/// The dashboard's HTML: a small server-rendered shell per page (navigation, the CSRF token,
/// the logout form); the page's data is drawn by `/ui/assets/app.js` from `/ui/api/…`. No
/// inline script or style (the Content-Security-Policy allows neither).
enum DashboardPages {
    /// The operator pages: path, `data-page` name, title, whether it is in the navigation.
    static let pages: [(path: String, name: String, title: String)] = [
        ("/ui/", "overview", "Overview"), ("/ui/nodes", "nodes", "Nodes"), ("/ui/ips", "ips", "Sending IPs"),
        ("/ui/queue", "queue", "Queue & messages"), ("/ui/suppressions", "suppressions", "Suppressions"), ("/ui/tenants", "tenants", "Tenants"),
    ]

    /// The tenant view's pages (its own data only).
    static let tenantPages: [(path: String, name: String, title: String)] = [
        ("/ui/t/", "t-overview", "Overview"), ("/ui/t/messages", "t-messages", "Messages"), ("/ui/t/domains", "t-domains", "Sending domains"),
        ("/ui/t/suppressions", "t-suppressions", "Suppressions"), ("/ui/t/keys", "t-keys", "API keys"),
    ]

    /// The tenant page at `path` for `session`, nil when there is none.
    static func tenantPage(_ path: String, session: DashboardSession) -> HTTPResponse? {
        if let p = tenantPages.first(where: { $0.path == path }) {
            return shell(name: p.name, title: p.title, current: p.path, param: nil, session: session, nav: tenantPages)
        }
        if path.hasPrefix("/ui/t/messages/") {
            let id = String(path.dropFirst("/ui/t/messages/".count))
            guard !id.isEmpty, id.utf8.count <= 128, !id.contains("/") else { return nil }
            return shell(name: "t-message", title: "Message \(id)", current: "/ui/t/messages", param: id, session: session, nav: tenantPages)
        }
        return nil
    }

    /// The answer to creating an API key: the key, shown this once (never stored in a URL).
    static func newKey(id: String, key: String, session: DashboardSession) -> HTTPResponse {
        var r = shell(name: "t-newkey", title: "New API key", current: "/ui/t/keys", param: nil, session: session, nav: tenantPages)
        let html = String(decoding: r.body, as: UTF8.self).replacingOccurrences(of: "<div id=\"app\" aria-busy=\"true\"><p>Loading…</p></div>", with: """
            <div id="app"><p>API key <strong>\(escape(id))</strong> was created. Copy it now: it is shown this once, Hato keeps only its hash.</p>
            <p><code id="new-key" class="reply">\(escape(key))</code></p><p><a href="/ui/t/keys">Back to the API keys</a></p></div>
            """)
        r.body = Array(html.utf8)
        return r
    }

    /// The answer to creating a tenant: its first API key, shown this once (never in a URL).
    static func createdTenant(name: String, key: String, session: DashboardSession) -> HTTPResponse {
        var r = shell(name: "tenant-created", title: "Tenant \(name)", current: "/ui/tenants", param: nil, session: session)
        let html = String(decoding: r.body, as: UTF8.self).replacingOccurrences(of: "<div id=\"app\" aria-busy=\"true\"><p>Loading…</p></div>", with: """
            <div id="app"><p>Tenant <strong>\(escape(name))</strong> was created. Its first API key is shown this once (Hato keeps only its hash):</p>
            <p><code id="new-key" class="reply">\(escape(key))</code></p><p><a href="/ui/tenants">Back to the tenants</a></p></div>
            """)
        r.body = Array(html.utf8)
        return r
    }

    /// The page at `path` for `session`, nil when there is none.
    static func page(_ path: String, session: DashboardSession) -> HTTPResponse? {
        if let p = pages.first(where: { $0.path == path }) {
            return shell(name: p.name, title: p.title, current: p.path, param: nil, session: session)
        }
        if path == "/ui/rebalance" {
            return shell(name: "rebalance", title: "Rebalance", current: "/ui/nodes", param: nil, session: session)
        }
        if path.hasPrefix("/ui/messages/") {
            let id = String(path.dropFirst("/ui/messages/".count))
            guard !id.isEmpty, id.utf8.count <= 128, !id.contains("/") else { return nil }
            return shell(name: "message", title: "Message \(id)", current: "/ui/queue", param: id, session: session)
        }
        return nil
    }

    /// HTML-escapes text for element content and quoted attribute values.
    static func escape(_ s: String) -> String {
        var out = ""
        out.reserveCapacity(s.count)
        for c in s {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.append(c)
            }
        }
        return out
    }

    private static func head(_ title: String, csrf: String?) -> String {
        """
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        \(csrf.map { "<meta name=\"csrf-token\" content=\"\(escape($0))\">" } ?? "")
        <title>\(escape(title)) · Hato</title>
        <link rel="icon" href="data:,">
        <link rel="stylesheet" href="/ui/assets/app.css">
        <script src="/ui/assets/app.js" defer></script>
        </head>
        """
    }

    private static func shell(name: String, title: String, current: String, param: String?, session: DashboardSession,
                              nav navPages: [(path: String, name: String, title: String)] = pages) -> HTTPResponse {
        let nav = navPages.map { p in
            "<li><a href=\"\(p.path)\"\(p.path == current ? " aria-current=\"page\"" : "")>\(escape(p.title))</a></li>"
        }.joined()
        let html = head(title, csrf: session.csrfToken) + """
            <body data-page="\(name)"\(param.map { " data-param=\"\(escape($0))\"" } ?? "")>
            <a class="skip" href="#main">Skip to content</a>
            <header class="top">
            <a class="brand" href="\(navPages[0].path)">Hato</a>
            <nav aria-label="Main"><ul>\(nav)</ul></nav>
            <form method="post" action="/ui/logout" class="logout">
            <input type="hidden" name="csrf" value="\(escape(session.csrfToken))">
            <span class="who">\(escape(session.principal.displayName))</span>
            <button type="submit" id="logout">Log out</button>
            </form>
            </header>
            <main id="main" tabindex="-1">
            <h1>\(escape(title))</h1>
            <p id="notice" role="status" hidden></p>
            <div id="app" aria-busy="true"><p>Loading…</p></div>
            <noscript><p>The dashboard draws its pages with JavaScript; the admin API and the CLI work without it.</p></noscript>
            </main>
            </body>
            </html>
            """
        return HTTPResponse(status: 200, contentType: "text/html; charset=utf-8", body: Array(html.utf8))
    }

    /// The login page; `error` is shown above the form.
    static func login(error: String?, status: Int, tenants: Bool = false) -> HTTPResponse {
        let html = head("Log in", csrf: nil) + """
            <body data-page="login" class="login">
            <main id="main">
            <h1>Hato</h1>
            <form method="post" action="/ui/login" class="card login-form">
            <h2>Log in</h2>
            \(error.map { "<p class=\"error\" role=\"alert\" id=\"login-error\">\(escape($0))</p>" } ?? "")
            <label for="user">\(tenants ? "Operator or tenant user name" : "Operator name") <small>(leave empty to use the admin token)</small></label>
            <input id="user" name="user" autocomplete="username" maxlength="64">
            <label for="password">Password or admin token</label>
            <input id="password" name="password" type="password" autocomplete="current-password" required maxlength="4096">
            <button type="submit" id="login">Log in</button>
            </form>
            </main>
            </body>
            </html>
            """
        return HTTPResponse(status: status, contentType: "text/html; charset=utf-8", body: Array(html.utf8))
    }

    /// A page with only a heading (not found, forbidden).
    static func message(_ text: String, status: Int) -> HTTPResponse {
        let html = head(text, csrf: nil) + """
            <body><main id="main"><h1>\(escape(text))</h1><p><a href="/ui/">Back to the dashboard</a></p></main></body></html>
            """
        return HTTPResponse(status: status, contentType: "text/html; charset=utf-8", body: Array(html.utf8))
    }
}
