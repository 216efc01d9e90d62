import Foundation
import HatoConfig
import SMTPCore

/// The operator CLI's `tenant` commands (admin API `/v1/tenants…`, `TenantAdminAPI`):
///
/// - `tenant list`
/// - `tenant create NAME [--pool P] [--priority transactional|bulk] [--limit N/day,…] [--per-hour N] [--per-day N] [--per-month N] [--max-recipients N] [--webhook URL] [--webhook-secret-file F]`
///   (prints its first API key once; `add` is the same)
/// - `tenant show NAME` · `tenant set NAME [the options of add; 0 removes a limit]` · `tenant delete NAME`
/// - `tenant suspend NAME [--reason TEXT]` · `tenant resume NAME`
/// - `tenant smtp-user add TENANT USER` (or `user add`; the password from stdin, or prompted twice on a terminal; only its hash is sent)
/// - `tenant smtp-user remove TENANT USER`
/// - `tenant key create TENANT [--label TEXT]` (prints the key once) · `tenant key list TENANT` · `tenant key revoke TENANT ID`
public struct TenantCommands {
    let client: AdminClient
    let json: Bool

    /// Commands this type runs.
    public static let names: Set<String> = ["tenant", "tenants"]
    /// The value options the commands take.
    public static let valueOptions: Set<String> = ["limit", "label", "per-hour", "per-day", "per-month", "max-recipients", "webhook", "webhook-secret-file", "priority"]

    static let usage = """
        usage: hato-coordinator tenant list
               hato-coordinator tenant create NAME [--pool P] [--priority transactional|bulk] [--limit 10000/day[,500/hour,1000000/month,50/message]]
                                           [--per-hour N] [--per-day N] [--per-month N] [--max-recipients N]
                                           [--webhook URL] [--webhook-secret-file FILE]     (prints its first API key once)
               hato-coordinator tenant show NAME | set NAME [options of add; 0 removes a limit] | delete NAME
               hato-coordinator tenant suspend NAME [--reason TEXT] | resume NAME
               hato-coordinator tenant smtp-user add TENANT USER | smtp-user remove TENANT USER
               hato-coordinator tenant key create TENANT [--label TEXT] | key list TENANT | key revoke TENANT ID
        """

    /// Commands over `client`; `json` prints the API's JSON.
    public init(client: AdminClient, json: Bool) { self.client = client; self.json = json }

    private func fail() -> AdminClient.Failure { AdminClient.Failure(description: Self.usage) }

    private static func path(_ s: String) -> String {
        var allowed = CharacterSet.urlPathAllowed
        allowed.remove(charactersIn: "/?")
        return s.addingPercentEncoding(withAllowedCharacters: allowed) ?? s
    }

    private static let decoder: JSONDecoder = {
        let d = JSONDecoder(); d.keyDecodingStrategy = .convertFromSnakeCase; return d
    }()

    private static func body<T: Encodable>(_ value: T) throws -> Data {
        let e = JSONEncoder(); e.keyEncodingStrategy = .convertToSnakeCase; return try e.encode(value)
    }

    /// Runs `tenant …`.
    /// - Throws: `AdminClient.Failure` for API and usage errors.
    public func run(positional: [String], options: [String: String]) throws {
        guard let sub = positional.first else { throw fail() }
        let rest = Array(positional.dropFirst())
        switch (sub, rest.count) {
        case ("list", 0): try list()
        case ("create", 1), ("add", 1): try add(rest[0], options)
        case ("set", 1): try set(rest[0], options)
        case ("show", 1): try show(rest[0])
        case ("delete", 1):
            let data = try client.request("DELETE", "/v1/tenants/\(Self.path(rest[0]))")
            if json { FileHandle.standardOutput.write(data) } else { print("deleted tenant \(rest[0])") }
        case ("suspend", 1), ("resume", 1):
            struct Reason: Encodable { var reason: String? }
            let data = try client.request("POST", "/v1/tenants/\(Self.path(rest[0]))/\(sub)", body: try Self.body(Reason(reason: options["reason"])))
            if json { FileHandle.standardOutput.write(data); return }
            let change = try Self.decoder.decode(TenantAdminAPI.StateChange.self, from: data)
            print(sub == "suspend" ? "suspended tenant \(rest[0]): \(change.recipients) waiting recipients held"
                                   : "resumed tenant \(rest[0]): \(change.recipients) held recipients released")
        case ("smtp-user", 3) where rest[0] == "add", ("user", 3) where rest[0] == "add":
            let password: [UInt8]
            do { password = try HashPasswordCommand.readPassword() } catch let e as HashPasswordCommand.PasswordInputError {
                throw AdminClient.Failure(description: e.message)
            }
            let hash = PasswordHash.make(password: password).encoded
            let data = try client.request("POST", "/v1/tenants/\(Self.path(rest[1]))/users",
                                          body: try Self.body(TenantAdminAPI.UserRequest(name: rest[2], passwordHash: hash)))
            if json { FileHandle.standardOutput.write(data) } else { print("added SMTP user \(rest[2]) to tenant \(rest[1])") }
        case ("smtp-user", 3) where rest[0] == "remove", ("user", 3) where rest[0] == "remove":
            let data = try client.request("DELETE", "/v1/tenants/\(Self.path(rest[1]))/users/\(Self.path(rest[2]))")
            if json { FileHandle.standardOutput.write(data) } else { print("removed SMTP user \(rest[2]) of tenant \(rest[1])") }
        case ("key", 2) where rest[0] == "create":
            struct Label: Encodable { var label: String? }
            let data = try client.request("POST", "/v1/tenants/\(Self.path(rest[1]))/keys", body: try Self.body(Label(label: options["label"])))
            if json { FileHandle.standardOutput.write(data); return }
            let key = try Self.decoder.decode(TenantAdminAPI.KeyView.self, from: data)
            print("API key \(key.id) for tenant \(rest[1]) (shown this once; Hato keeps only its hash):")
            print(key.key ?? "")
        case ("key", 2) where rest[0] == "list":
            let data = try client.get("/v1/tenants/\(Self.path(rest[1]))/keys")
            if json { FileHandle.standardOutput.write(data); return }
            let keys = try Self.decoder.decode([TenantAdminAPI.KeyView].self, from: data)
            printTable(["ID", "LABEL", "CREATED", "LAST USED", "STATE"], keys.map {
                [$0.id, $0.label.isEmpty ? "-" : $0.label, Self.date($0.createdAt), $0.lastUsedAt.map(Self.date) ?? "never",
                 $0.revokedAt.map { "revoked " + Self.date($0) } ?? "valid"]
            })
        case ("key", 3) where rest[0] == "revoke":
            let data = try client.request("DELETE", "/v1/tenants/\(Self.path(rest[1]))/keys/\(Self.path(rest[2]))")
            if json { FileHandle.standardOutput.write(data) } else { print("revoked API key \(rest[2]) of tenant \(rest[1])") }
        default:
            throw fail()
        }
    }

    private static func date(_ t: Double) -> String { DeliveryLogRecord.timestamp(Date(timeIntervalSince1970: t)) }

    private func list() throws {
        let data = try client.get("/v1/tenants")
        if json { FileHandle.standardOutput.write(data); return }
        let tenants = try Self.decoder.decode([TenantAdminAPI.TenantView].self, from: data)
        printTable(["TENANT", "STATE", "POOL", "HOUR", "DAY", "MONTH", "MAX RCPT"], tenants.map { t in
            func use(_ n: Int?, _ limit: Int?) -> String { "\(n ?? 0)/\(limit.map(String.init) ?? "-")" }
            return [t.name, t.state + (t.stateReason.map { " (\($0))" } ?? ""), t.pool ?? "(routing)", use(t.usage?.hour, t.limits.messagesPerHour),
                    use(t.usage?.day, t.limits.messagesPerDay), use(t.usage?.month, t.limits.messagesPerMonth),
                    t.limits.recipientsPerMessage.map(String.init) ?? "-"]
        })
    }

    /// The request of `add`/`set` from the options; `clearing` turns 0 into "no limit".
    private func request(_ name: String?, _ o: [String: String], base: TenantLimits?) throws -> TenantAdminAPI.TenantRequest {
        func int(_ key: String) throws -> Int?? {
            guard let v = o[key] else { return .none }
            guard let n = Int(v), n >= 0 else { throw AdminClient.Failure(description: "--\(key) must be a whole number (0: no limit)") }
            return .some(n == 0 ? nil : n)
        }
        var limits = base ?? TenantLimits()
        var changed = base == nil
        // --limit 10000/day[,500/hour,…]: the issue's form of the same limits.
        for item in (o["limit"] ?? "").split(separator: ",") {
            let parts = item.split(separator: "/")
            guard parts.count == 2, let n = Int(parts[0].trimmingCharacters(in: .whitespaces)), n >= 0 else {
                throw AdminClient.Failure(description: "--limit: '\(item)' is not N/hour, N/day, N/month or N/message (0: no limit)")
            }
            let v: Int? = n == 0 ? nil : n
            switch parts[1].trimmingCharacters(in: .whitespaces) {
            case "hour", "h": limits.messagesPerHour = v
            case "day", "d": limits.messagesPerDay = v
            case "month": limits.messagesPerMonth = v
            case "message", "msg": limits.recipientsPerMessage = v
            default: throw AdminClient.Failure(description: "--limit: '\(item)' is not N/hour, N/day, N/month or N/message")
            }
            changed = true
        }
        if let v = try int("per-hour") { limits.messagesPerHour = v; changed = true }
        if let v = try int("per-day") { limits.messagesPerDay = v; changed = true }
        if let v = try int("per-month") { limits.messagesPerMonth = v; changed = true }
        if let v = try int("max-recipients") { limits.recipientsPerMessage = v; changed = true }
        var secret: String?
        if let f = o["webhook-secret-file"] {
            do { secret = try String(contentsOfFile: f, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) } catch {
                throw AdminClient.Failure(description: "--webhook-secret-file: cannot read \(f)")
            }
        }
        return TenantAdminAPI.TenantRequest(name: name, pool: o["pool"], limits: changed ? limits : nil, webhookUrl: o["webhook"], webhookSecret: secret,
                                            priority: o["priority"])
    }

    private func add(_ name: String, _ o: [String: String]) throws {
        let data = try client.request("POST", "/v1/tenants", body: try Self.body(try request(name, o, base: nil)))
        let created = try Self.decoder.decode(TenantAdminAPI.Created.self, from: data)
        if json {
            // The issue's shape: {"tenant": …, "api_key": …}.
            struct Out: Encodable { var tenant: TenantAdminAPI.TenantView; var apiKey: String; var apiKeyId: String }
            FileHandle.standardOutput.write(try Self.body(Out(tenant: created.tenant, apiKey: created.apiKey, apiKeyId: created.apiKeyId)))
            return
        }
        print("created tenant \(name)")
        print("API key \(created.apiKeyId) (shown this once; Hato keeps only its hash):")
        print(created.apiKey)
        if let secret = created.tenant.webhookSecret { print("webhook signing secret (shown this once): \(secret)") }
    }

    private func set(_ name: String, _ o: [String: String]) throws {
        let current = try Self.decoder.decode(TenantAdminAPI.TenantDetail.self, from: try client.get("/v1/tenants/\(Self.path(name))"))
        let data = try client.request("PATCH", "/v1/tenants/\(Self.path(name))", body: try Self.body(try request(nil, o, base: current.tenant.limits)))
        if json { FileHandle.standardOutput.write(data); return }
        print("changed tenant \(name)")
        if let secret = try Self.decoder.decode(TenantAdminAPI.TenantView.self, from: data).webhookSecret {
            print("webhook signing secret (shown this once): \(secret)")
        }
    }

    private func show(_ name: String) throws {
        let data = try client.get("/v1/tenants/\(Self.path(name))")
        if json { FileHandle.standardOutput.write(data); return }
        let d = try Self.decoder.decode(TenantAdminAPI.TenantDetail.self, from: data)
        let t = d.tenant
        func limit(_ v: Int?) -> String { v.map(String.init) ?? "unlimited" }
        print("tenant:     \(t.name)")
        print("state:      \(t.state)\(t.stateReason.map { " (\($0))" } ?? "")")
        print("pool:       \(t.pool ?? "(routing rules)")")
        print("priority:   \(t.priority ?? "(the pool's)")")
        print("this hour:  \(t.usage?.hour ?? 0) of \(limit(t.limits.messagesPerHour)) messages")
        print("today:      \(t.usage?.day ?? 0) of \(limit(t.limits.messagesPerDay)) messages")
        print("this month: \(t.usage?.month ?? 0) of \(limit(t.limits.messagesPerMonth)) messages")
        print("recipients: at most \(limit(t.limits.recipientsPerMessage)) per message")
        print("webhook:    \(t.webhookUrl ?? "none")")
        print("SMTP users: \(d.users.isEmpty ? "none" : d.users.map(\.name).joined(separator: ", "))")
        print("API keys:   \(d.keys.filter { $0.revokedAt == nil }.count) valid, \(d.keys.filter { $0.revokedAt != nil }.count) revoked")
        print("domains:    \(d.domains.isEmpty ? "none" : d.domains.joined(separator: ", "))")
    }
}

/// The operator CLI's `domain` commands (admin API `/v1/domains…`, `DomainAdminAPI`):
///
/// - `domain add DOMAIN --tenant T`: makes its DKIM keys and prints the DNS records to publish
/// - `domain list [--tenant T]` · `domain records DOMAIN` · `domain remove DOMAIN`
/// - `domain check DOMAIN`: each record looked up through the `dns:` resolvers; exit status 1
///   when any is not `ok`
public struct DomainCommands {
    let client: AdminClient
    let json: Bool

    /// Commands this type runs.
    public static let names: Set<String> = ["domain", "domains"]

    static let usage = """
        usage: hato-coordinator domain add DOMAIN --tenant T | list [--tenant T] | records DOMAIN | check DOMAIN | remove DOMAIN
        """

    /// Commands over `client`; `json` prints the API's JSON.
    public init(client: AdminClient, json: Bool) { self.client = client; self.json = json }

    private static let decoder: JSONDecoder = {
        let d = JSONDecoder(); d.keyDecodingStrategy = .convertFromSnakeCase; return d
    }()

    private static func path(_ s: String) -> String {
        var allowed = CharacterSet.urlPathAllowed
        allowed.remove(charactersIn: "/?")
        return s.addingPercentEncoding(withAllowedCharacters: allowed) ?? s
    }

    /// Runs `domain …`.
    /// - Returns: the exit status (1 when `check` found a record that is not `ok`).
    /// - Throws: `AdminClient.Failure` for API and usage errors.
    public func run(positional: [String], options: [String: String]) throws -> Int32 {
        let fail = AdminClient.Failure(description: Self.usage)
        guard let sub = positional.first else { throw fail }
        let rest = Array(positional.dropFirst())
        switch (sub, rest.count) {
        case ("add", 1):
            guard let tenant = options["tenant"] else { throw fail }
            let e = JSONEncoder(); e.keyEncodingStrategy = .convertToSnakeCase
            let data = try client.request("POST", "/v1/domains", body: try e.encode(DomainAdminAPI.AddRequest(domain: rest[0], tenant: tenant)))
            if json { FileHandle.standardOutput.write(data); return 0 }
            let answer = try Self.decoder.decode(DomainAdminAPI.RecordsAnswer.self, from: data)
            print("added sending domain \(answer.records.domain) to tenant \(tenant); publish these DNS records:\n")
            print(answer.zoneText)
        case ("list", 0):
            var q = ""
            if let t = options["tenant"] { q = "?tenant=" + (t.addingPercentEncoding(withAllowedCharacters: .urlQueryAllowed) ?? t) }
            let data = try client.get("/v1/domains" + q)
            if json { FileHandle.standardOutput.write(data); return 0 }
            let rows = try Self.decoder.decode([DomainAdminAPI.DomainView].self, from: data)
            printTable(["DOMAIN", "TENANT", "DKIM SELECTORS", "ADDED"], rows.map {
                [$0.domain, $0.tenant, $0.selectors.joined(separator: ","), DeliveryLogRecord.timestamp(Date(timeIntervalSince1970: $0.createdAt))]
            })
        case ("records", 1):
            let data = try client.get("/v1/domains/\(Self.path(rest[0]))")
            if json { FileHandle.standardOutput.write(data); return 0 }
            print(try Self.decoder.decode(DomainAdminAPI.RecordsAnswer.self, from: data).zoneText)
        case ("check", 1):
            let data = try client.get("/v1/domains/\(Self.path(rest[0]))/check")
            let items = try Self.decoder.decode([DomainCheckItem].self, from: data)
            if json { FileHandle.standardOutput.write(data) } else { for i in items { print(i.description) } }
            return items.allSatisfy { $0.status == .ok } ? 0 : 1
        case ("remove", 1):
            let data = try client.request("DELETE", "/v1/domains/\(Self.path(rest[0]))")
            if json { FileHandle.standardOutput.write(data) } else { print("removed sending domain \(rest[0])") }
        default:
            throw fail
        }
        return 0
    }
}
