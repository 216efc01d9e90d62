import Foundation
import HatoConfig
import HatoDelivery
import HatoHTTP
import HatoSupport
import SMTPCore

/// The tenant view's JSON (`GET /ui/api/t/…`) and actions (`POST /ui/actions/t/…`): only the
/// logged-in tenant's own data. The tenant is always the session's; no request names it.
///
/// | GET `/ui/api/t/…` | what |
/// |---|---|
/// | `overview?range=hour\|day` | the tenant (state, pool, limits, webhook URL — never its secret), usage this hour/day/month, its activity chart, its complaints per chart point |
/// | `events?since=N` | its delivery events, 100 a page, oldest first, each bounce with its category in plain words |
/// | `messages/{id}` | one of its messages with its events; another tenant's id is `404` like an unknown one |
/// | `keys` | its API keys (never the secrets) |
/// | `domains` | its sending domains with the DNS records to publish |
/// | `domains/{d}/check` | each record of one of its domains looked up in DNS (`GET /v1/domains/{d}/check`) |
/// | `suppressions?q=ADDRESS` | its suppression list: the entries scoped to its sending domains (as the HTTP API's) |
///
/// Actions: `keys/create` (`label`; the answer is a page showing the key once),
/// `keys/{id}/revoke`, `suppressions/remove` (`address`: from every domain of the tenant).
public struct DashboardTenantData: Sendable {
    let store: any QueueStore
    let token: String
    let admin: @Sendable (HTTPRequest) -> HTTPResponse
    let activity: ActivityRecorder
    let config: @Sendable () -> ClusterConfig
    let clock: any WallClock

    /// - Parameters:
    ///   - store: the queue (messages, tenant events, usage, domains).
    ///   - token: the admin token the in-process key requests carry.
    ///   - admin: the admin listener's handler chain without the dashboard.
    ///   - activity: the per-tenant counts for the chart.
    ///   - config: the configuration in force (the sending IPs a domain's records name).
    ///   - clock: time source.
    public init(store: any QueueStore, token: String, admin: @escaping @Sendable (HTTPRequest) -> HTTPResponse, activity: ActivityRecorder,
                config: @escaping @Sendable () -> ClusterConfig, clock: any WallClock = SystemClock()) {
        self.store = store; self.token = token; self.admin = admin; self.activity = activity; self.config = config; self.clock = clock
    }

    /// One event as the tenant view shows it.
    struct EventRow: Codable {
        var id: Int64
        var kind: String
        var messageId: String
        var recipient: String?
        var reply: String?
        var mx: String?
        var at: Double
        /// For deferrals and bounces: the category (`bad-mailbox`, …) and what it means.
        var category: String?
        var meaning: String?

        init(_ e: TenantEvent) {
            id = e.id; kind = e.kind; messageId = e.messageID; recipient = e.recipient; mx = e.mx; at = e.at
            reply = [e.code.map(String.init), e.enhanced, e.text].compactMap { $0 }.joined(separator: " ")
            if reply?.isEmpty == true { reply = nil }
            if ["deferred", "failed", "expired"].contains(e.kind), let code = e.code {
                let c = BounceClassifier.classify(DeliveryStatus(code: code, enhanced: e.enhanced, text: e.text ?? ""))
                category = c.rawValue
                meaning = Self.meaning(c)
            } else if e.kind == "expired" {
                category = "expired"; meaning = "Every retry failed until the message was too old; the recipient was given up."
            } else if e.kind == "suppressed" {
                meaning = "Not sent: the address is on the suppression list (an earlier hard bounce)."
            }
        }

        static func meaning(_ c: BounceCategory) -> String {
            switch c {
            case .badMailbox: return "The mailbox does not exist at the recipient's provider."
            case .badDomain: return "The recipient's domain does not exist or accepts no mail."
            case .mailboxFull: return "The recipient's mailbox is full."
            case .messageTooLarge: return "The message is larger than the recipient's server accepts."
            case .policyRelated: return "The recipient's server refused it by its policy (authentication, content or sender rules)."
            case .spamRelated: return "The recipient's server took it for spam."
            case .reputation: return "The recipient's provider distrusts the sending IP or domain right now."
            case .rateLimited: return "The recipient's provider asked us to slow down; it is retried later."
            case .dnsFailure: return "The recipient's mail servers could not be found in DNS."
            case .tlsFailure: return "A secure (TLS) connection to the recipient's server could not be made."
            case .routing: return "No route to the recipient's mail server."
            case .protocolError: return "The recipient's server broke off the SMTP conversation."
            case .admin: return "An operator of this relay stopped it."
            default: return "The recipient's server refused it for another reason (see the reply)."
            }
        }
    }

    /// How many of `times` (seconds since 1970, any order) fall in each point's bucket.
    /// - Parameters:
    ///   - times: event times.
    ///   - points: the series (each point starts a bucket of `bucket` seconds).
    ///   - bucket: seconds per point.
    /// - Returns: one count per point.
    static func perPoint(_ times: [Double], points: [ActivityTimeline.Point], bucket: TimeInterval) -> [Int] {
        var counts = [Int](repeating: 0, count: points.count)
        guard let first = points.first?.at, bucket > 0 else { return counts }
        for t in times {
            let i = Int(floor((t - first) / bucket))
            if i >= 0 && i < counts.count { counts[i] += 1 }
        }
        return counts
    }

    private static func encode<T: Encodable>(_ value: T, status: Int = 200) -> HTTPResponse { .json(value, status: status) }

    /// Answers `GET /ui/api/t/{path}` for `tenant`.
    func json(_ path: String, query: [String: String], tenant: String) -> HTTPResponse {
        let p = path.split(separator: "/").map(String.init)
        do {
            switch p {
            case ["overview"]:
                guard let t = try store.tenant(named: tenant) else { return .error(404, "no tenant \(tenant)") }
                let day = query["range"] == "day"
                // `complaints`: the tenant's stored complaints (feedback loops, issue 18) per point of `activity`.
                struct Overview: Codable {
                    var tenant: TenantAdminAPI.TenantView; var activity: [ActivityTimeline.Point]; var complaints: [Int]; var range: String
                }
                let view = TenantAdminAPI.TenantView(t, usage: try store.usage(tenant: t.name, now: clock.now()))
                let bucket: TimeInterval = day ? 600 : 60
                let series = activity.series(span: day ? 86_400 : 3600, bucket: bucket, now: clock.now(), tenant: t.name)
                let since = Date(timeIntervalSince1970: series.first?.at ?? clock.now().timeIntervalSince1970)
                let complaints = Self.perPoint(try store.complaintTimes(tenant: t.name, since: since, limit: 100_000), points: series, bucket: bucket)
                return Self.encode(Overview(tenant: view, activity: series, complaints: complaints, range: day ? "day" : "hour"))
            case ["events"]:
                guard let since = Int64(query["since"] ?? "0"), since >= 0 else { return .error(400, "since= must be an event id") }
                let events = try store.tenantEvents(tenant: tenant, after: since, limit: 100)
                let owner = try store.tenant(named: tenant)
                struct Page: Codable { var events: [EventRow]; var next: Int64; var hasMore: Bool }
                return Self.encode(Page(events: events.filter { owner?.owns($0) == true }.map(EventRow.init), next: events.last?.id ?? since,
                                        hasMore: events.count == 100))
            case let p where p.count == 2 && p[0] == "messages":
                // Another tenant's message is answered exactly like an unknown one.
                guard let m = try store.message(id: p[1]), try store.tenant(named: tenant)?.owns(m) == true else { return .error(404, "no message \(p[1])") }
                struct Detail: Codable { var message: MessageRecord; var events: [EventRow] }
                return Self.encode(Detail(message: m, events: try store.tenantEvents(messageID: m.id).map(EventRow.init)))
            case ["keys"]:
                return call("GET", "/v1/tenants/\(tenant)/keys", tenant: tenant)
            case ["domains"]:
                let cfg = config()
                return Self.encode(try store.sendingDomains(tenant: tenant).map { DomainRecords(domain: $0, config: cfg) })
            case let p where p.count == 3 && p[0] == "domains" && p[2] == "check":
                // Only its own domains: another's answers like an unknown one.
                guard try store.sendingDomains(tenant: tenant).contains(where: { $0.domain == p[1].lowercased() }) else {
                    return .error(404, "no sending domain \(p[1])")
                }
                return call("GET", "/v1/domains/\(p[1].lowercased())/check", tenant: tenant)
            case ["suppressions"]:
                let q = (query["q"] ?? "").trimmingCharacters(in: .whitespaces)
                let entries = try store.suppressions(scopes: try store.sendingDomains(tenant: tenant).map(\.domain), address: q.isEmpty ? nil : q,
                                                     now: clock.now(), limit: 1000)
                return Self.encode(entries)
            default:
                return .error(404, "no tenant endpoint \(path)")
            }
        } catch {
            return .error(503, "the queue cannot be read now; try again")
        }
    }

    private func call(_ method: String, _ path: String, body: [UInt8] = [], tenant: String) -> HTTPResponse {
        admin(HTTPRequest(method: method, path: path, headers: ["authorization": "Bearer " + token, "x-hato-operator": "tenant:\(tenant)",
                                                                  "content-type": "application/json"], body: body))
    }

    /// Carries out `POST /ui/actions/t/{path}` for `tenant`.
    func act(_ path: String, form: DashboardForm, session: DashboardSession, tenant: String) -> HTTPResponse {
        let p = path.split(separator: "/").map(String.init)
        switch p {
        case ["keys", "create"]:
            let label = String((form["label"] ?? "").trimmingCharacters(in: .whitespaces).prefix(100))
            let body = Array((try? JSONSerialization.data(withJSONObject: ["label": label.isEmpty ? "dashboard" : label])) ?? Data())
            let r = call("POST", "/v1/tenants/\(tenant)/keys", body: body, tenant: tenant)
            guard (200..<300).contains(r.status),
                  let o = try? JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any],
                  let key = o["key"] as? String, let id = o["id"] as? String else {
                return Dashboard.redirect("/ui/t/keys?notice=" + "Refused (\(r.status))".addingPercentEncoding(withAllowedCharacters: .alphanumerics)!)
            }
            return DashboardPages.newKey(id: id, key: key, session: session)
        case ["suppressions", "remove"]:
            guard let address = form["address"]?.trimmingCharacters(in: .whitespaces), address.contains("@"), address.utf8.count <= 320 else {
                return .error(400, "address must be an email address")
            }
            var removed = 0
            do {
                for d in try store.sendingDomains(tenant: tenant) { removed += try store.removeSuppression(address: address, scope: d.domain) }
            } catch {
                return .error(503, "the suppression list cannot be changed now; try again")
            }
            let notice = removed > 0 ? "Removed \(address)" : "\(address) is not on your suppression list"
            return Dashboard.redirect("/ui/t/suppressions?notice=" + (notice.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? ""))
        case let p where p.count == 3 && p[0] == "keys" && p[2] == "revoke":
            guard p[1].allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" }) else { return .error(400, "bad key id") }
            let r = call("DELETE", "/v1/tenants/\(tenant)/keys/\(p[1])", tenant: tenant)
            let notice = (200..<300).contains(r.status) ? "Revoked key \(p[1])" : "Refused (\(r.status))"
            return Dashboard.redirect("/ui/t/keys?notice=" + (notice.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? ""))
        default:
            return .error(404, "no action \(path)")
        }
    }
}
