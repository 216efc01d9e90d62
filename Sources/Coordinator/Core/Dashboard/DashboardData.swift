import Foundation
import HatoHTTP
import HatoSupport

/// The dashboard's JSON endpoints (`GET /ui/api/…`) and actions (`POST /ui/actions/…`).
///
/// Both go through the admin API's own handlers, in process (never over the network): the
/// same validation, the same events and logs naming the operator (`X-Hato-Operator`), and with
/// several coordinators a standby forwards what concerns the cluster to the leader exactly as
/// it does for the CLI (`AdminForwarder`). Every list is bounded or paginated by those
/// handlers; nothing loads the whole queue.
///
/// | GET `/ui/api/…` | what |
/// |---|---|
/// | `overview?range=hour\|day` | status (nodes, queue by state, leader), the oldest waiting recipient, the activity chart |
/// | `nodes` | nodes with state, IPs, leases, last heartbeat |
/// | `rebalance` | the rebalance plan, not applied |
/// | `ips` | the IP table with warm-up and health, active suspensions, pauses |
/// | `queue` | waiting recipients per provider, recent message ids |
/// | `messages?q=…&by=id\|recipient\|sender` | search |
/// | `messages/{id}` | one message, its recipients, its delivery log events (attempts, DSNs) |
/// | `suppressions?q=ADDRESS` | the suppression list (newest 1000), or one address |
/// | `tenants` | every tenant with its usage, and every sending domain |
///
/// Actions (form fields; each answers `303` back to the page with a notice): `nodes/{id}/drain`,
/// `nodes/{id}/resume`, `rebalance`, `suspensions/lift` (`ip`, `provider`), `suppressions/add`
/// (`address`, `scope`, `reason`), `suppressions/remove` (`address`, `scope`), `tenants/create`
/// (`name`, `pool`, `per_hour`, `per_day`, `per_month`, `max_recipients`; answers a page with the
/// first API key, shown once), `tenants/suspend` (`name`, `reason`), `tenants/resume`, `tenants/delete` (`name`).
public struct DashboardData: Sendable {
    let token: String
    let admin: @Sendable (HTTPRequest) -> HTTPResponse
    let activity: ActivityRecorder
    let clock: any WallClock

    /// - Parameters:
    ///   - token: the admin token the in-process requests carry.
    ///   - admin: the admin listener's handler chain without the dashboard.
    ///   - activity: the per-minute counts for the chart.
    ///   - clock: time source.
    public init(token: String, admin: @escaping @Sendable (HTTPRequest) -> HTTPResponse, activity: ActivityRecorder,
                clock: any WallClock = SystemClock()) {
        self.token = token; self.admin = admin; self.activity = activity; self.clock = clock
    }

    private func call(_ method: String, _ path: String, query: [String: String] = [:], body: [UInt8] = [],
                      as session: DashboardSession) -> HTTPResponse {
        admin(HTTPRequest(method: method, path: path, query: query,
                          headers: ["authorization": "Bearer " + token, "x-hato-operator": session.principal.displayName,
                                    "content-type": "application/json"], body: body))
    }

    /// `{"key": <admin answer>, …}`, or the first failing answer as it is.
    private func combine(_ parts: [(String, HTTPResponse)], extra: [(String, [UInt8])] = []) -> HTTPResponse {
        var out = Array("{".utf8)
        for (i, (key, r)) in parts.enumerated() {
            guard (200..<300).contains(r.status) else { return r }
            if i > 0 { out += Array(",".utf8) }
            out += Array("\"\(key)\":".utf8) + r.body
        }
        for (key, bytes) in extra { out += Array(",\"\(key)\":".utf8) + bytes }
        return HTTPResponse(status: 200, body: out + Array("}\n".utf8))
    }

    private static func encode<T: Encodable>(_ value: T) -> [UInt8] {
        let e = JSONEncoder()
        e.keyEncodingStrategy = .convertToSnakeCase
        return Array((try? e.encode(value)) ?? Data("null".utf8))
    }

    /// Answers `GET /ui/api/{path}`.
    func json(_ path: String, query: [String: String], session: DashboardSession) -> HTTPResponse {
        let p = path.split(separator: "/").map(String.init)
        switch p {
        case ["overview"]:
            let day = query["range"] == "day"
            let series = activity.series(span: day ? 86_400 : 3600, bucket: day ? 600 : 60, now: clock.now())
            let parts = [("status", call("GET", "/v1/status", as: session)),
                         ("oldest", call("GET", "/v1/queue/summary", query: ["by": "state", "limit": "10"], as: session))]
            return combine(parts, extra: [("activity", Self.encode(series)), ("range", Array((day ? "\"day\"" : "\"hour\"").utf8)),
                                          ("now", Array("\(clock.now().timeIntervalSince1970)".utf8))])
        case ["nodes"]:
            return combine([("nodes", call("GET", "/v1/nodes", as: session))])
        case ["rebalance"]:
            return call("GET", "/v1/rebalance", as: session)
        case ["ips"]:
            return combine([("ips", call("GET", "/v1/ips", as: session)), ("suspensions", call("GET", "/v1/suspensions", as: session)),
                            ("pauses", call("GET", "/v1/pauses", as: session))])
        case ["queue"]:
            return combine([("providers", call("GET", "/v1/queue/summary", query: ["by": "provider", "limit": "25"], as: session)),
                            ("recent", call("GET", "/v1/messages", query: ["limit": "25"], as: session))])
        case ["messages"]:
            return search(query, session: session)
        case let p where p.count == 2 && p[0] == "messages":
            return combine([("message", call("GET", "/v1/messages/\(p[1])", as: session)),
                            ("events", call("GET", "/v1/log", query: ["message": p[1], "limit": "500"], as: session))])
        case ["suppressions"]:
            let q = (query["q"] ?? "").trimmingCharacters(in: .whitespaces)
            return combine([("entries", call("GET", "/v1/suppressions", query: q.isEmpty ? [:] : ["address": q], as: session))])
        case ["tenants"]:
            return combine([("tenants", call("GET", "/v1/tenants", as: session)), ("domains", call("GET", "/v1/domains", as: session))])
        default:
            return .error(404, "no dashboard endpoint \(path)")
        }
    }

    private func search(_ query: [String: String], session: DashboardSession) -> HTTPResponse {
        let q = (query["q"] ?? "").trimmingCharacters(in: .whitespaces)
        guard !q.isEmpty else { return .error(400, "q= is required") }
        guard q.utf8.count <= 512 else { return .error(400, "q= is too long") }
        switch query["by"] ?? "recipient" {
        case "id":
            let r = call("GET", "/v1/messages/\(q)", as: session)
            if r.status == 404 { return HTTPResponse(status: 200, body: Array("{\"messages\":[]}\n".utf8)) }
            guard r.status == 200 else { return r }
            return HTTPResponse(status: 200, body: Array("{\"messages\":[".utf8) + r.body + Array("]}\n".utf8))
        case "recipient":
            return combine([("messages", call("GET", "/v1/recipients", query: ["address": q, "limit": "50"], as: session))])
        case "tenant":
            // The tenant's waiting recipients (queue control's selector), newest page first.
            return combine([("waiting", call("GET", "/v1/queue/recipients", query: ["tenant": q, "limit": "100"], as: session))])
        case "sender":
            // Messages by reverse-path: their `received` events in the delivery log (newest 50).
            return combine([("received", call("GET", "/v1/log", query: ["recipient": q, "limit": "200"], as: session))])
        default:
            return .error(400, "by= must be id, recipient, sender or tenant")
        }
    }

    /// Carries out `POST /ui/actions/{path}` and answers `303` back to the page it came from.
    func act(_ path: String, form: DashboardForm, session: DashboardSession) -> HTTPResponse {
        let p = path.split(separator: "/").map(String.init)
        let r: HTTPResponse
        let back: String
        var done: String
        switch p {
        case let p where p.count == 3 && p[0] == "nodes" && (p[2] == "drain" || p[2] == "resume"):
            guard Self.isPlainName(p[1]) else { return .error(400, "bad node id") }
            r = call("POST", "/v1/nodes/\(p[1])/\(p[2])", as: session)
            back = "/ui/nodes"; done = p[2] == "drain" ? "Draining \(p[1])" : "Resumed \(p[1])"
        case ["rebalance"]:
            r = call("POST", "/v1/rebalance", as: session)
            back = "/ui/nodes"; done = "Rebalance applied"
        case ["suspensions", "lift"]:
            guard let ip = form["ip"], let provider = form["provider"], !provider.isEmpty else { return .error(400, "ip and provider are required") }
            r = call("DELETE", "/v1/suspensions", query: ip.isEmpty ? ["provider": provider] : ["ip": ip, "provider": provider], as: session)
            back = "/ui/ips"; done = "Lifted \(provider) on \(ip.isEmpty ? "every IP" : ip)"
        case ["suppressions", "add"]:
            guard let address = form["address"]?.trimmingCharacters(in: .whitespaces), address.contains("@"), address.utf8.count <= 320 else {
                return .error(400, "address must be an email address")
            }
            let scope = (form["scope"] ?? "").trimmingCharacters(in: .whitespaces)
            let body = Self.encode(ReportingAPI.AddSuppression(address: address, scope: scope.isEmpty ? nil : scope,
                                                               reason: form["reason"].flatMap { $0.isEmpty ? nil : $0 } ?? "added by \(session.principal.displayName)"))
            r = call("POST", "/v1/suppressions", body: body, as: session)
            back = "/ui/suppressions"; done = "Suppressed \(address)"
        case ["suppressions", "remove"]:
            guard let address = form["address"], !address.isEmpty, !address.contains("/") else { return .error(400, "address is required") }
            let scope = form["scope"] ?? ""
            r = call("DELETE", "/v1/suppressions/\(address)", query: scope.isEmpty ? [:] : ["scope": scope], as: session)
            back = "/ui/suppressions"; done = "Removed \(address)"
        case ["tenants", "create"]:
            guard let name = form["name"], Tenant.isValidName(name) else { return .error(400, "name: 1-64 of a-z, 0-9, '-', '_', '.'") }
            func limit(_ key: String) -> Int? { form[key].flatMap { Int($0.trimmingCharacters(in: .whitespaces)) }.flatMap { $0 > 0 ? $0 : nil } }
            let pool = (form["pool"] ?? "").trimmingCharacters(in: .whitespaces)
            let body = Self.encode(TenantAdminAPI.TenantRequest(name: name, pool: pool.isEmpty ? nil : pool,
                                                                limits: TenantLimits(messagesPerHour: limit("per_hour"), messagesPerDay: limit("per_day"),
                                                                                     messagesPerMonth: limit("per_month"),
                                                                                     recipientsPerMessage: limit("max_recipients"))))
            r = call("POST", "/v1/tenants", body: body, as: session)
            if r.status == 201, let o = try? JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any], let key = o["api_key"] as? String {
                return DashboardPages.createdTenant(name: name, key: key, session: session)
            }
            back = "/ui/tenants"; done = "Created \(name)"
        case let p where p.count == 2 && p[0] == "tenants" && ["suspend", "resume", "delete"].contains(p[1]):
            guard let name = form["name"], Tenant.isValidName(name) else { return .error(400, "name is required") }
            if p[1] == "delete" {
                r = call("DELETE", "/v1/tenants/\(name)", as: session)
                done = "Deleted \(name)"
            } else {
                let reason = (form["reason"] ?? "").trimmingCharacters(in: .whitespaces)
                r = call("POST", "/v1/tenants/\(name)/\(p[1])", body: p[1] == "suspend" && !reason.isEmpty ? Self.encode(["reason": reason]) : [],
                         as: session)
                done = p[1] == "suspend" ? "Suspended \(name); its waiting mail is held" : "Resumed \(name); its held mail is released"
            }
            back = "/ui/tenants"
        default:
            return .error(404, "no action \(path)")
        }
        if !(200..<300).contains(r.status) {
            done = "Refused (\(r.status)): " + Self.errorText(r)
        }
        var allowed = CharacterSet.urlQueryAllowed
        allowed.remove(charactersIn: "&=+#")
        return Dashboard.redirect(back + "?notice=" + (done.addingPercentEncoding(withAllowedCharacters: allowed) ?? ""))
    }

    private static func errorText(_ r: HTTPResponse) -> String {
        if let o = try? JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any], let e = o["error"] as? String { return e }
        return "error"
    }

    private static func isPlainName(_ s: String) -> Bool {
        !s.isEmpty && s.count <= 128 && !s.contains(where: { $0 == "/" || $0 == "?" || $0.isWhitespace })
    }
}
