import Foundation
import HatoConfig
import HatoHTTP
import HatoIO
import HatoSupport

/// A client of the admin API for the CLI subcommands (bearer token), over the project's own
/// `HTTPClient`: over HTTPS (`coordinator.admin_tls`) with the OpenSSL layer, trusting
/// `admin_tls.ca` or, without one, the admin certificate itself (URLSession on Linux cannot be
/// given a private trust anchor); over plain HTTP too, because URLSession on Linux ignored its
/// timeout against a coordinator that accepts but never answers (40–60 s of a busy core, seen
/// with a stopped coordinator), and the CLI must fall over to the next coordinator on time.
public struct AdminClient: Sendable {
    let base: String
    let token: String
    /// Sent as `X-Hato-Operator` with every request: who acts (the coordinator logs it with
    /// every operator action); nil sends none (the coordinator then says `admin`).
    public let operatorName: String?
    /// Why the token is unavailable (`admin_token_file` unreadable on this host), if it is.
    let tokenError: String?
    /// HTTPS: where to connect and what to trust; nil for plain HTTP.
    let https: HTTPS?
    /// Where the admin API listens (an unspecified listen address is reached on loopback).
    let address: SocketAddress

    struct HTTPS: Sendable {
        var address: SocketAddress
        var trust: String
    }

    /// With several coordinators and no `--id`: the other coordinators' clients, tried in turn
    /// when this one cannot be reached (every coordinator answers for the leader).
    var alternates: [AdminClient] = []

    /// The client for `hato-coordinator` subcommands: `--id` (`id`) picks one coordinator of
    /// `coordinators:`; without it, the first that answers, in the order of `coordinators:`.
    /// - Throws: `ConfigValueError` when `id` is not a configured coordinator.
    public static func forCoordinators(config: ClusterConfig, id: String?, operatorName: String? = AdminClient.defaultOperator()) throws -> AdminClient {
        if let id { return AdminClient(config: try config.selectingCoordinator(id), operatorName: operatorName) }
        guard config.coordinators.count > 1 else { return AdminClient(config: config, operatorName: operatorName) }
        var clients = try config.coordinators.map { AdminClient(config: try config.selectingCoordinator($0.id), operatorName: operatorName) }
        var first = clients.removeFirst()
        first.alternates = clients
        return first
    }

    /// Talks to `coordinator.admin_listen` with `coordinator.admin_token` (or `admin_token_file`).
    /// - Parameter operatorName: who acts (`--operator`/`--as`, else `defaultOperator()`).
    public init(config: ClusterConfig, operatorName: String? = AdminClient.defaultOperator()) {
        let listen = config.coordinator.adminListen
        token = config.coordinator.adminToken
        tokenError = config.coordinator.adminTokenError.map { "coordinator.admin_token_file: \($0)" }
        self.operatorName = operatorName.flatMap { $0.isEmpty ? nil : $0 }
        // An unspecified listen address is reached on loopback.
        let host = listen.host == "0.0.0.0" ? "127.0.0.1" : listen.host == "::" ? "::1" : listen.host
        let address = SocketAddress(host: host, port: listen.port)
        self.address = address
        if let tls = config.coordinator.adminTLS {
            https = HTTPS(address: address, trust: tls.trustPath)
            base = "https://\(address)"
        } else {
            https = nil
            base = "http://\(listen.description)"
        }
    }

    /// The operator's name from the environment: `$SUDO_USER` (the person behind `sudo`), else `$USER`.
    public static func defaultOperator(environment: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        [environment["SUDO_USER"], environment["USER"]].compactMap { $0 }.first { !$0.isEmpty }
    }

    /// An admin API failure.
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
        /// Whether the coordinator could not be reached at all (another one is then tried).
        public var unreachable = false
    }

    /// Sends a request and returns the body.
    /// - Parameters:
    ///   - method: `GET`, `POST` or `DELETE`.
    ///   - path: e.g. `/v1/status`.
    ///   - body: a JSON body for POST, if any.
    /// - Throws: `Failure` when the coordinator cannot be reached or answers non-2xx.
    public func request(_ method: String, _ path: String, body: Data? = nil) throws -> Data {
        var unreachable: [String] = []
        for client in [self] + alternates {
            do {
                return try client.requestOne(method, path, body: body)
            } catch let failure as Failure where failure.unreachable {
                unreachable.append(failure.description)
            }
        }
        throw Failure(description: unreachable.joined(separator: "; "), unreachable: true)
    }

    private func requestOne(_ method: String, _ path: String, body: Data?) throws -> Data {
        if let tokenError { throw Failure(description: tokenError) }
        let response: HTTPClientResponse
        do {
            let context = try https.map { try TLSContext.client(verifyPeer: true, trustedCAFile: $0.trust, trustPartialChain: true) }
            var headers = [("Authorization", "Bearer \(token)")]
            if body != nil { headers.append(("Content-Type", "application/json")) }
            if let operatorName { headers.append(("X-Hato-Operator", operatorName)) }
            // Bounded: a coordinator that accepts but does not answer (stopped, overloaded) is
            // given up after this long, and with several coordinators the next one is asked.
            let timeout: TimeInterval = method == "GET" && !alternates.isEmpty ? 10 : 30
            response = try HTTPClient.send(method, to: address, path: path, headers: headers, body: body.map { Array($0) },
                                           tls: context, timeout: timeout)
        } catch {
            throw Failure(description: "cannot reach the coordinator's admin API at \(base): \(error)", unreachable: true)
        }
        let data = Data(response.body)
        guard (200..<300).contains(response.status) else {
            let msg = (try? JSONDecoder().decode([String: String].self, from: data))?["error"] ?? "HTTP \(response.status)"
            throw Failure(description: msg)
        }
        return data
    }

    /// GETs `path` and returns the body.
    public func get(_ path: String) throws -> Data { try request("GET", path) }

    /// Sends and decodes.
    public func decode<T: Decodable>(_ method: String, _ path: String, as: T.Type) throws -> T {
        let d = JSONDecoder(); d.keyDecodingStrategy = .convertFromSnakeCase
        return try d.decode(T.self, from: request(method, path))
    }

    /// GETs and decodes `path`.
    public func get<T: Decodable>(_ path: String, as: T.Type) throws -> T { try decode("GET", path, as: T.self) }
}

/// The operator CLI's commands, rendered as tables or raw JSON.
public struct AdminCommands {
    let client: AdminClient
    let json: Bool

    public init(client: AdminClient, json: Bool) { self.client = client; self.json = json }

    /// Commands this type runs.
    public static let names: Set<String> = ["status", "nodes", "ips", "queue", "messages", "message", "recipient", "drain", "resume", "rebalance", "reload", "suspensions", "lift", "doctor"]

    /// Runs `command`.
    /// - Parameters:
    ///   - flags: `dry-run`, `wait`.
    ///   - options: `limit`, `timeout` (a duration such as `10m`).
    /// - Throws: `AdminClient.Failure` or a usage error.
    public func run(_ command: String, positional: [String], options: [String: String], flags: Set<String> = []) throws {
        func arg(_ what: String) throws -> String {
            guard let v = positional.first else { throw AdminClient.Failure(description: "usage: hato-coordinator \(command) \(what)") }
            return v.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/?&="))) ?? v
        }
        let method: String
        let path: String
        switch command {
        case "status": (method, path) = ("GET", "/v1/status")
        case "nodes": (method, path) = ("GET", "/v1/nodes")
        case "ips": (method, path) = ("GET", "/v1/ips")
        case "queue": (method, path) = ("GET", "/v1/queue")
        case "messages": (method, path) = ("GET", "/v1/messages?limit=\(Int(options["limit"] ?? "") ?? 50)")
        case "message": (method, path) = ("GET", "/v1/messages/\(try arg("ID"))")
        case "recipient": (method, path) = ("GET", "/v1/recipients?address=\(try arg("ADDRESS"))")
        case "drain": (method, path) = ("POST", "/v1/nodes/\(try arg("NODE"))/drain")
        case "resume": (method, path) = ("POST", "/v1/nodes/\(try arg("NODE"))/resume")
        case "rebalance": (method, path) = flags.contains("dry-run") ? ("GET", "/v1/rebalance") : ("POST", "/v1/rebalance")
        case "reload": (method, path) = ("POST", "/v1/reload")
        case "suspensions": (method, path) = ("GET", "/v1/suspensions")
        case "doctor": (method, path) = ("GET", "/v1/doctor")
        case "lift":
            guard positional.count == 2 else { throw AdminClient.Failure(description: "usage: hato-coordinator lift IP PROVIDER") }
            let q = CharacterSet.urlQueryAllowed.subtracting(CharacterSet(charactersIn: "&=+"))
            (method, path) = ("DELETE", "/v1/suspensions?ip=\(positional[0].addingPercentEncoding(withAllowedCharacters: q) ?? "")&provider=\(positional[1].addingPercentEncoding(withAllowedCharacters: q) ?? "")")
        default: throw AdminClient.Failure(description: "unknown command \(command)")
        }
        if command == "drain" && flags.contains("wait") {
            try waitForDrain(node: positional[0], timeout: try options["timeout"].map { try ConfigValue.duration($0) } ?? 600)
            return
        }
        if command == "doctor" {
            // Exit status 1 when any finding is an error (also with --json).
            let raw = try client.request(method, path)
            let decoder = JSONDecoder()
            decoder.keyDecodingStrategy = .convertFromSnakeCase
            let report = try decoder.decode(DoctorReport.self, from: Data(raw))
            if json { FileHandle.standardOutput.write(raw) } else { printDoctor(report) }
            if report.errors > 0 { throw DoctorFailed(errors: report.errors) }
            return
        }
        if json {
            FileHandle.standardOutput.write(try client.request(method, path))
            return
        }
        switch command {
        case "status":
            let s = try client.get(path, as: StatusReport.self)
            var leadership = ""
            if let term = s.term {
                leadership = ", answered by \(s.coordinator ?? "?") (\(s.role ?? "?")); leader \(s.leader ?? "none known"), term \(term)"
            }
            print("cluster \(s.cluster)\(leadership)\(s.note.map { "\n\($0)" } ?? "")\n")
            printNodes(s.nodes)
            print("")
            printIPs(s.ips)
            print("")
            printQueue(s.queue)
        case "nodes": printNodes(try client.get(path, as: [NodeStatus].self))
        case "drain", "resume":
            let n = try client.decode(method, path, as: NodeStatus.self)
            print("node \(n.id): \(n.state.rawValue) (leases \(n.leasesInFlight), IPs to hand over \(n.ipsToHandOver.count))")
        case "ips": printIPs(try client.get(path, as: [IPStatus].self), detail: flags.contains("detail"))
        case "queue": printQueue(try client.get(path, as: [String: Int].self))
        case "messages": for id in try client.get(path, as: [String].self) { print(id) }
        case "rebalance":
            let r = try client.decode(method, path, as: RebalanceReport.self)
            if r.moves.isEmpty { print("balanced: no moves"); return }
            print(r.applied ? "applying \(r.moves.count) move(s) by handover:" : "plan (dry run, nothing changed): \(r.moves.count) move(s)")
            printTable(["IP", "FROM", "TO"], r.moves.map { [$0.address, $0.from ?? "(unowned)", $0.to] })
        case "reload":
            let r = try client.decode(method, path, as: ReloadReport.self)
            print("reloaded: IPs +\(r.ipsAdded.count) -\(r.ipsRemoved.count), nodes +\(r.nodesAdded.count) -\(r.nodesRemoved.count), pools +\(r.poolsAdded.count) -\(r.poolsRemoved.count)")
            for (k, v) in [("IPs added", r.ipsAdded), ("IPs removed", r.ipsRemoved), ("nodes added", r.nodesAdded), ("nodes removed", r.nodesRemoved),
                           ("pools added", r.poolsAdded), ("pools removed", r.poolsRemoved)] where !v.isEmpty {
                print("  \(k): \(v.joined(separator: ", "))")
            }
            print(r.live.isEmpty ? "  applied live: nothing changed" : "  applied live: \(r.live.joined(separator: ", "))")
            for line in r.restartRequired { print("  \(line)") }
            for n in r.nodes {
                var line = "  node \(n.node): \(n.status.rawValue)"
                if !n.live.isEmpty { line += "; applied live: \(n.live.joined(separator: ", "))" }
                if !n.restartRequired.isEmpty { line += "; needs restart of node \(n.node): \(n.restartRequired.joined(separator: ", "))" }
                print(line)
                for e in n.errors { print("    \(e)") }
            }
        case "suspensions":
            let list = try client.get(path, as: [BackoffTable.Entry].self)
            if list.isEmpty { print("no active suspensions or throttles"); return }
            printTable(["SENDING IP", "PROVIDER", "ACTION", "UNTIL", "REPLY"], list.map {
                [$0.sendingIP, $0.provider, $0.action == .throttle ? "throttle \($0.ratePerMinute ?? 0)/min" : "suspend",
                 ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: $0.until)), String($0.reason.prefix(60))]
            })
        case "lift":
            _ = try client.request(method, path)
            print("lifted \(positional[0]) / \(positional[1])")
        case "recipient":
            for m in try client.get(path, as: [MessageRecord].self) { printMessage(m) }
        default:
            printMessage(try client.get(path, as: MessageRecord.self))
        }
    }

    /// Polls the node until it is drained, printing progress; throws on timeout.
    private func waitForDrain(node: String, timeout: TimeInterval) throws {
        var status = try client.decode("POST", "/v1/nodes/\(node)/drain", as: NodeStatus.self)
        let deadline = Date().addingTimeInterval(timeout)
        var last = ""
        while true {
            let line = "node \(node): \(status.state.rawValue), leases left \(status.leasesInFlight), IPs left to hand over \(status.ipsToHandOver.count)"
            if line != last { print(line); last = line }
            if status.state == .drained || status.state == .left { print("node \(node) is drained; it can be stopped"); return }
            if status.state == .down { throw AdminClient.Failure(description: "node \(node) is down; its leases expire and its floating IPs move after the fencing delay") }
            guard Date() < deadline else { throw AdminClient.Failure(description: "timed out waiting for node \(node) to drain (\(line))") }
            Thread.sleep(forTimeInterval: 0.5)
            guard let s = try client.get("/v1/nodes", as: [NodeStatus].self).first(where: { $0.id == node }) else {
                throw AdminClient.Failure(description: "node \(node) disappeared")
            }
            status = s
        }
    }

    private func printMessage(_ m: MessageRecord) {
        print("message \(m.id)  from <\(m.reversePath)>  pool \(m.pool)  priority \((m.priority ?? .transactional).rawValue)\(m.tenant.map { "  tenant \($0)" } ?? "")  \(m.size) octets  client \(m.clientAddress)")
        printTable(["RECIPIENT", "STATE", "ATTEMPTS", "NODE", "SENDING IP", "MX", "LAST REPLY"], m.recipients.map { r in
            let reply = r.lastReply.map { String("\($0.code) \($0.enhanced?.description ?? "") \($0.text)".prefix(70)) } ?? "-"
            return [r.address, r.state.rawValue, "\(r.attempts)", r.node ?? "-", r.sendingIP ?? "-", r.mxHost ?? "-", reply]
        })
    }

    private func printNodes(_ nodes: [NodeStatus]) {
        printTable(["NODE", "STATE", "INSTANCE", "ADDRESS", "SENDING IPS", "LEASES"], nodes.map {
            [$0.id, $0.state.rawValue, $0.instance ?? "-", $0.address ?? "-", $0.ips.isEmpty ? "-" : $0.ips.joined(separator: ","), "\($0.leasesInFlight)"]
        })
    }

    /// - Parameter detail: `--detail`: also each IP's weight, the share of its pool the weights
    ///   give it, the recipients leased to it since the coordinator started and its real share.
    private func printIPs(_ ips: [IPStatus], detail: Bool = false) {
        func percent(_ v: Double?) -> String { v.map { String(format: "%.1f%%", $0 * 100) } ?? "-" }
        let header = ["IP", "HELO", "POOL", "OWNER", "STATE", "ELIGIBLE", "WARM-UP", "HEALTH", "FCRDNS"]
            + (detail ? ["WEIGHT", "TARGET", "LEASED", "SHARE", "PROVIDER-CAPS", "WHY"] : [])
        printTable(header, ips.map { ip -> [String] in
            let warm = ip.warmupCap == nil ? "warmed"
                : (ip.rewarmingSince != nil ? "re-warm" : "day \(ip.warmupDay ?? 0)") + ": \(ip.warmupSent ?? 0)/\(ip.warmupCap ?? 0)"
            let base = [ip.address, ip.helo, ip.pool, ip.owner ?? "-", ip.handoverTo.map { "handover→\($0)" } ?? ip.state,
                        ip.eligible.isEmpty ? "any" : ip.eligible.joined(separator: ","), warm,
                        ip.health ?? "ok", ip.fcrdns.map { $0 == "ok" ? "ok" : "\($0) (warning)" } ?? "-"]
            guard detail else { return base }
            let caps = ip.warmupProviders.map { $0.map { "\($0.provider) \($0.sent)/\($0.cap)" }.joined(separator: ", ") } ?? "-"
            return base + ["\(ip.weight ?? 1)", percent(ip.targetShare), "\(ip.recipientsLeased ?? 0)", percent(ip.share), caps.isEmpty ? "-" : caps,
                           ip.healthReason ?? "-"]
        })
        guard detail else { return }
        // The rolling reputation signals per (IP, provider) and what the rules did.
        let pairs = ips.flatMap { $0.signals ?? [] }
        guard !pairs.isEmpty else { return }
        print("")
        printTable(["IP", "PROVIDER", "WINDOW", "ATTEMPTS", "DELIVERED", "DEFERRED", "BOUNCED", "SPAM", "POLICY", "BAD-MAILBOX", "COMPLAINTS", "RULE ACTION"],
                   pairs.map { p in
            let c = p.counts
            func n(_ v: Int) -> String { "\(v) (\(percent(Double(v) / Double(max(1, p.attempts)))))" }
            return [p.ip, p.providerLabel == p.provider ? p.provider : "\(p.providerLabel) (\(p.provider))", ReputationRule.span(p.windowSeconds), "\(p.attempts)",
                    "\(c.delivered)", n(c.deferred), n(c.bounced), n(c.bouncedBy["spam-related", default: 0]), n(c.bouncedBy["policy-related", default: 0]),
                    n(c.bouncedBy["bad-mailbox", default: 0]), n(c.complaints),
                    p.ruleAction.map { a in "\(a)\(p.ruleActionUntil.map { " until " + Logger.timestamp($0) } ?? "")" } ?? "-"]
        })
        if detail { printHealth(ips) }
    }

    private func printDoctor(_ r: DoctorReport) {
        for f in r.findings { print(f.line) }
        print("\n\(r.ok) ok, \(r.warnings) warning(s), \(r.errors) error(s)")
    }

    private func printHealth(_ ips: [IPStatus]) {
        for ip in ips {
            guard let h = ip.reputation, !(h.listings.isEmpty && h.history.isEmpty && (h.fcrdns ?? "ok") == "ok") else { continue }
            print("\n\(ip.address): health \(ip.health ?? "ok"), FCrDNS \(h.fcrdns ?? "not checked yet")"
                  + (h.ptr.map { " (PTR \($0.isEmpty ? "none" : $0.joined(separator: ",")), HELO \(ip.helo))" } ?? "")
                  + (h.fcrdnsDetail.map { ": \($0)" } ?? ""))
            for l in h.listings { print("  listed on \(l.zone) since \(l.since): \(l.codes.joined(separator: ","))\(l.reason.map { " \($0)" } ?? "")") }
            for c in h.history { print("  \(c.at)  \(c.event.padding(toLength: 14, withPad: " ", startingAt: 0)) \(c.zone)  \(c.codes.joined(separator: ","))\(c.reason.map { " \($0)" } ?? "")") }
        }
    }

    private func printQueue(_ q: [String: Int]) {
        let order = RecipientState.allCases.map(\.rawValue)
        printTable(order.map { $0.uppercased() }, [order.map { "\(q[$0] ?? 0)" }])
    }

}

/// `doctor` found errors: the CLI exits non-zero (status 1) after printing the report.
public struct DoctorFailed: Error, CustomStringConvertible {
    /// How many findings are errors.
    public var errors: Int
    public var description: String { "doctor: \(errors) error(s)" }
}
