import Foundation
import HatoConfig

/// The operator CLI's `suppressions` and `log` commands (admin API `/v1/suppressions`, `/v1/log`).
///
/// - `suppressions list [--address A]`
/// - `suppressions add ADDRESS [--scope DOMAIN] [--reason TEXT] [--expires 90d]`
/// - `suppressions remove ADDRESS [--scope DOMAIN|global]`
/// - `log --message ID | --recipient ADDRESS [--limit N]`
/// - `tls-reports [--day YYYY-MM-DD] [--domain D]` (admin API `/v1/tls-reports`)
/// - `complaints [--since 24h]` (admin API `/v1/complaints`; issue 18)
public struct ReportingCommands {
    let client: AdminClient
    let json: Bool

    /// Commands this type runs.
    public static let names: Set<String> = ["suppressions", "log", "tls-reports", "complaints"]

    public init(client: AdminClient, json: Bool) { self.client = client; self.json = json }

    /// Runs `command`.
    /// - Throws: `AdminClient.Failure` for API errors and usage errors.
    public func run(_ command: String, positional: [String], options: [String: String]) throws {
        switch command {
        case "log": try log(options)
        case "tls-reports": try tlsReports(options)
        case "complaints": try complaints(options)
        default: try suppressions(positional, options)
        }
    }

    private static func query(_ pairs: [(String, String?)]) -> String {
        var allowed = CharacterSet.urlQueryAllowed
        allowed.remove(charactersIn: "&=+?")
        let items = pairs.compactMap { k, v in v.map { "\(k)=\($0.addingPercentEncoding(withAllowedCharacters: allowed) ?? $0)" } }
        return items.isEmpty ? "" : "?" + items.joined(separator: "&")
    }

    /// `tls-reports`: TLS-RPT counts per day and policy domain.
    private func tlsReports(_ options: [String: String]) throws {
        let data = try client.get("/v1/tls-reports" + Self.query([("day", options["day"]), ("domain", options["domain"])]))
        if json { FileHandle.standardOutput.write(data); return }
        let d = JSONDecoder(); d.keyDecodingStrategy = .convertFromSnakeCase
        let rows = try d.decode([TLSReportTally.Row].self, from: data)
        if rows.isEmpty { print("no TLS sessions under an MTA-STS or DANE policy counted yet"); return }
        printTable(["DAY", "POLICY DOMAIN", "TYPE", "SUCCESSES", "FAILURES", "BY RESULT", "MX HOSTS"], rows.map { r in
            [r.day, r.policyDomain, r.policyType, "\(r.successes)", "\(r.failureCount)",
             r.failures.isEmpty ? "-" : r.failures.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "),
             r.mxHosts.isEmpty ? "-" : r.mxHosts.joined(separator: ",")]
        })
    }

    private func suppressions(_ positional: [String], _ options: [String: String]) throws {
        let usage = "usage: hato-coordinator suppressions list [--address A] | add ADDRESS [--scope DOMAIN] [--reason TEXT] [--expires 90d] | remove ADDRESS [--scope DOMAIN|global]"
        guard let sub = positional.first else { throw AdminClient.Failure(description: usage) }
        var allowedPath = CharacterSet.urlPathAllowed
        allowedPath.remove(charactersIn: "/?")
        switch sub {
        case "list":
            let data = try client.get("/v1/suppressions" + Self.query([("address", options["address"])]))
            if json { FileHandle.standardOutput.write(data); return }
            let d = JSONDecoder(); d.keyDecodingStrategy = .convertFromSnakeCase
            let entries = try d.decode([SuppressionEntry].self, from: data)
            printTable(["ADDRESS", "SCOPE", "SOURCE", "CATEGORY", "ADDED", "EXPIRES", "REASON"], entries.map {
                [$0.address, $0.scope ?? "global", $0.source, $0.category ?? "-", Self.date($0.createdAt), $0.expiresAt.map(Self.date) ?? "never",
                 String(($0.reason ?? "-").prefix(60))]
            })
        case "add":
            guard positional.count == 2 else { throw AdminClient.Failure(description: usage) }
            var expires: Double?
            if let e = options["expires"] {
                do { expires = try ConfigValue.duration(e) } catch { throw AdminClient.Failure(description: "--expires: \(error)") }
            }
            let body = ReportingAPI.AddSuppression(address: positional[1], scope: options["scope"], reason: options["reason"], expiresIn: expires)
            let e = JSONEncoder(); e.keyEncodingStrategy = .convertToSnakeCase
            let data = try client.request("POST", "/v1/suppressions", body: try e.encode(body))
            if json { FileHandle.standardOutput.write(data) } else { print("suppressed \(positional[1].lowercased()) (\(options["scope"] ?? "global"))") }
        case "remove":
            guard positional.count == 2 else { throw AdminClient.Failure(description: usage) }
            let address = positional[1].addingPercentEncoding(withAllowedCharacters: allowedPath) ?? positional[1]
            let data = try client.request("DELETE", "/v1/suppressions/\(address)" + Self.query([("scope", options["scope"])]))
            if json { FileHandle.standardOutput.write(data); return }
            let n = (try? JSONDecoder().decode([String: Int].self, from: data))?["removed"] ?? 0
            print("removed \(n) suppression entr\(n == 1 ? "y" : "ies") for \(positional[1].lowercased())")
        default:
            throw AdminClient.Failure(description: usage)
        }
    }

    /// `complaints [--since 24h]`: complaints from feedback loops, in total and per sending IP,
    /// provider, sender domain and tenant.
    private func complaints(_ options: [String: String]) throws {
        let since = options["since"] ?? "24h"
        guard (try? ConfigValue.duration(since)) != nil else {
            throw AdminClient.Failure(description: "--since: '\(since)' is not a duration (e.g. 1h, 24h, 7d) (see hato-coordinator complaints --help)")
        }
        let data = try client.get("/v1/complaints" + Self.query([("since", since)]))
        if json { FileHandle.standardOutput.write(data); return }
        let d = JSONDecoder(); d.keyDecodingStrategy = .convertFromSnakeCase
        let s = try d.decode(ComplaintSummary.self, from: data)
        print("\(s.total) complaint\(s.total == 1 ? "" : "s") since \(Self.date(s.since))")
        guard s.total > 0 else { return }
        let rows = [("sending IP", s.byIp), ("provider", s.byProvider), ("sender domain", s.bySenderDomain), ("tenant", s.byTenant)]
            .flatMap { kind, entries in entries.map { [kind, $0.key.isEmpty ? "-" : $0.key, "\($0.count)"] } }
        print("")
        printTable(["BY", "KEY", "COMPLAINTS"], rows)
    }

    private func log(_ options: [String: String]) throws {
        let message = options["message"], recipient = options["recipient"]
        guard (message == nil) != (recipient == nil) else {
            throw AdminClient.Failure(description: "usage: hato-coordinator log --message ID | --recipient ADDRESS [--limit N]")
        }
        let data = try client.get("/v1/log" + Self.query([("message", message), ("recipient", recipient), ("limit", options["limit"])]))
        if json { FileHandle.standardOutput.write(data); return }
        let d = JSONDecoder(); d.keyDecodingStrategy = .convertFromSnakeCase
        let records = try d.decode([DeliveryLogRecord].self, from: data)
        printTable(["TIME", "EVENT", "MESSAGE", "RECIPIENT", "NODE", "SENDING IP", "MX", "CATEGORY", "REPLY"], records.map { r in
            var reply = r.code.map { "\($0) \(r.enhanced ?? "") \(r.reply ?? "")" } ?? (r.dsnMessageId.map { "dsn \($0)" } ?? "-")
            if let who = r.operatorName, r.event != "failed" { reply = "by \(who): \(r.target ?? "")" + (r.note.map { " (\($0))" } ?? "") }
            return [r.ts, r.event, r.messageId ?? "-", r.recipient ?? "-", r.node ?? "-", r.sendingIp ?? "-", r.mx ?? "-", r.category ?? "-",
                    String(reply.prefix(70))]
        })
    }

    private static func date(_ t: Double) -> String { DeliveryLogRecord.timestamp(Date(timeIntervalSince1970: t)) }

}
