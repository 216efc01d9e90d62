import Foundation
import HatoShared

/// The operator CLI's queue visibility and control commands (admin API `/v1/queue/…`,
/// `/v1/pauses`, `/v1/suspensions`), as Postfix's postqueue/postsuper, PowerMTA's
/// `pmta pause queue` and KumoMTA's `kcli suspend`/`bounce` offer them:
///
/// - `queue --by domain|provider|pool|ip|state [--limit N]`
/// - `queue list [--state S] [--domain D] [--provider P] [--pool P] [--ip A] [--sender S] [--limit N] [--after CURSOR]`
/// - `flush|delete|bounce|hold|release [ID…] [--domain D] [--provider P] [--pool P] [--ip A] [--sender S] [--state S] [--all] [--dry-run] [--reason T]`
///   (an ID of digits only, shorter than a queue id's 18 characters, is a recipient id; anything else a message id)
/// - `pause --provider P | --pool P | --ip A [--reason T]`, `resume --provider P | --pool P | --ip A`, `pauses`
/// - `lift --provider P` (every backoff of a provider; `lift IP PROVIDER` stays with `AdminCommands`)
///
/// Every command sends the operator (`--as NAME`, else `$SUDO_USER` or `$USER`) as `X-Hato-Operator`.
public struct QueueCommands {
    let client: AdminClient
    let json: Bool

    /// Actions on recipients.
    public static let actions: Set<String> = Set(QueueAction.allCases.map(\.rawValue))

    public init(client: AdminClient, json: Bool) { self.client = client; self.json = json }

    /// Whether this type runs `command` with these arguments (`queue` with `--by` or `list`,
    /// the actions, `pause`, `pauses`, `resume` of a provider/pool/IP, `lift --provider`).
    public static func handles(_ command: String, positional: [String], options: [String: String]) -> Bool {
        let target = options["provider"] != nil || options["pool"] != nil || options["ip"] != nil
        switch command {
        case "queue": return options["by"] != nil || !positional.isEmpty
        case "pause", "pauses": return true
        case "resume": return target
        case "lift": return positional.isEmpty && options["provider"] != nil
        default: return actions.contains(command)
        }
    }

    /// Runs `command`.
    /// - Throws: `AdminClient.Failure` for API and usage errors.
    public func run(_ command: String, positional: [String], options: [String: String], flags: Set<String>) throws {
        switch command {
        case "queue":
            if options["by"] != nil { guard positional.isEmpty else { throw usage(command) }; try summary(options) } else {
                guard positional == ["list"] else { throw usage(command) }
                try list(options)
            }
        case "pause": try pause(options)
        case "resume": try resume(options)
        case "pauses": try pauses()
        case "lift": try liftProvider(options)
        default:
            guard let action = QueueAction(rawValue: command) else { throw usage(command) }
            try act(action, positional: positional, options: options, flags: flags)
        }
    }

    private func usage(_ command: String) -> AdminClient.Failure {
        let selectors = "[--domain D] [--provider P] [--pool P] [--ip A] [--sender S] [--state S]"
        let text: String
        switch command {
        case "queue": text = "queue [--by domain|provider|pool|ip|state] | queue list [--state S] [--domain D] [--provider P] [--pool P] [--ip A] [--sender S] [--limit N] [--after CURSOR]"
        case "pause", "resume": text = "\(command) --provider P | --pool P | --ip A" + (command == "pause" ? " [--reason TEXT]" : "")
        default: text = "\(command) [ID…] \(selectors) [--all] [--dry-run] [--reason TEXT] [--as NAME]"
        }
        return AdminClient.Failure(description: "usage: hato-coordinator \(text)")
    }

    static func query(_ pairs: [(String, String?)]) -> String {
        var allowed = CharacterSet.urlQueryAllowed
        allowed.remove(charactersIn: "&=+?")
        let items = pairs.compactMap { k, v in v.map { "\(k)=\($0.addingPercentEncoding(withAllowedCharacters: allowed) ?? $0)" } }
        return items.isEmpty ? "" : "?" + items.joined(separator: "&")
    }

    private func decoder() -> JSONDecoder {
        let d = JSONDecoder(); d.keyDecodingStrategy = .convertFromSnakeCase
        return d
    }

    // MARK: Visibility

    private func summary(_ options: [String: String]) throws {
        let data = try client.get("/v1/queue/summary" + Self.query([("by", options["by"]), ("limit", options["limit"])]))
        if json { FileHandle.standardOutput.write(data); return }
        let r = try decoder().decode(QueueSummaryReport.self, from: data)
        printTable([r.by.uppercased(), "QUEUED", "DEFERRED", "LEASED", "HELD", "TOTAL", "OLDEST", "OLDEST MESSAGE"], r.groups.map {
            [$0.key, "\($0.queued)", "\($0.deferred)", "\($0.leased)", "\($0.held)", "\($0.total)", Self.age($0.oldestAge), $0.oldestMessageId]
        })
        if r.groupCount > r.groups.count { print("(\(r.groupCount - r.groups.count) smaller groups not shown; --limit N)") }
        print("\(r.total) waiting recipient\(r.total == 1 ? "" : "s")")
    }

    private func list(_ options: [String: String]) throws {
        let data = try client.get("/v1/queue/recipients" + Self.query([
            ("state", options["state"]), ("domain", options["domain"]), ("provider", options["provider"]), ("pool", options["pool"]),
            ("ip", options["ip"]), ("sender", options["sender"]), ("limit", options["limit"]), ("after", options["after"])]))
        if json { FileHandle.standardOutput.write(data); return }
        let page = try decoder().decode(QueueListPage.self, from: data)
        printTable(["ID", "MESSAGE", "RECIPIENT", "STATE", "ATTEMPTS", "AGE", "LAST REPLY", "WHY"], page.recipients.map {
            ["\($0.recipientId)", $0.messageId, $0.address, $0.state, "\($0.attempts)", Self.age($0.age),
             String(($0.lastReply ?? "-").prefix(50)), $0.reason]
        })
        if let next = page.next { print("more: add --after \(next)") }
    }

    // MARK: Actions

    private func act(_ action: QueueAction, positional: [String], options: [String: String], flags: Set<String>) throws {
        var recipientIDs: [Int64] = [], messageIDs: [String] = []
        for id in positional {
            // Queue ids are 18 characters of digits and consonants; recipient ids are row numbers.
            if id.count < 18, id.allSatisfy(\.isASCII), let n = Int64(id), n > 0 { recipientIDs.append(n) } else { messageIDs.append(id) }
        }
        let body = QueueActionRequest(recipientIds: recipientIDs.isEmpty ? nil : recipientIDs, messageIds: messageIDs.isEmpty ? nil : messageIDs,
                                      domain: options["domain"], provider: options["provider"], pool: options["pool"], ip: options["ip"],
                                      sender: options["sender"], state: options["state"], all: flags.contains("all") ? true : nil,
                                      dryRun: flags.contains("dry-run") ? true : nil, reason: options["reason"])
        guard body.hasSelector || body.all == true else {
            throw AdminClient.Failure(description: "\(action.rawValue): give recipient or message ids or a selector (--domain, --provider, --pool, --ip, --sender, --state); --all selects every waiting recipient")
        }
        let e = JSONEncoder(); e.keyEncodingStrategy = .convertToSnakeCase
        let data = try client.request("POST", "/v1/queue/\(action.rawValue)", body: try e.encode(body))
        if json { FileHandle.standardOutput.write(data); return }
        let r = try decoder().decode(QueueActionReport.self, from: data)
        let n = r.dryRun ? r.matched : r.changed
        let noun = "recipient\(n == 1 ? "" : "s")"
        var line = r.dryRun ? "dry run: \(action.rawValue) would touch \(n) \(noun) (\(r.target)); nothing changed"
            : "\(action.pastTense) \(n) \(noun) (\(r.target)) as \(r.by)"
        if !r.dryRun && action == .flush && r.matched > r.changed { line += "; \(r.matched - r.changed) already due" }
        if r.inFlight > 0 { line += "; \(r.inFlight) in a delivery now, left alone" }
        print(line)
    }

    // MARK: Pauses and lifts

    private func pauseTarget(_ options: [String: String], _ command: String) throws -> (kind: String, name: String) {
        let given = ["provider", "pool", "ip"].compactMap { k in options[k].map { (k, $0) } }
        guard given.count == 1, let (kind, name) = given.first else { throw usage(command) }
        return (kind, name)
    }

    private func pause(_ options: [String: String]) throws {
        let (kind, name) = try pauseTarget(options, "pause")
        let e = JSONEncoder(); e.keyEncodingStrategy = .convertToSnakeCase
        let data = try client.request("POST", "/v1/pauses", body: try e.encode(PauseRequest(kind: kind, name: name, reason: options["reason"])))
        if json { FileHandle.standardOutput.write(data); return }
        let p = try decoder().decode(Pause.self, from: data)
        print("paused \(p.target) as \(p.by); its mail waits until: hato-coordinator resume --\(kind) \(name)")
    }

    private func resume(_ options: [String: String]) throws {
        let (kind, name) = try pauseTarget(options, "resume")
        var allowed = CharacterSet.urlPathAllowed
        allowed.remove(charactersIn: "/?")
        let data = try client.request("DELETE", "/v1/pauses/\(kind)/\(name.addingPercentEncoding(withAllowedCharacters: allowed) ?? name)")
        if json { FileHandle.standardOutput.write(data); return }
        print("resumed \(kind) \(name)")
    }

    private func pauses() throws {
        let data = try client.get("/v1/pauses")
        if json { FileHandle.standardOutput.write(data); return }
        let list = try decoder().decode([Pause].self, from: data)
        printTable(["TARGET", "BY", "SINCE", "REASON"], list.map {
            [$0.target.description, $0.by, DeliveryLogRecord.timestamp(Date(timeIntervalSince1970: $0.at)), $0.reason]
        })
    }

    private func liftProvider(_ options: [String: String]) throws {
        let data = try client.request("DELETE", "/v1/suspensions" + Self.query([("provider", options["provider"])]))
        if json { FileHandle.standardOutput.write(data); return }
        let r = try decoder().decode(LiftReport.self, from: data)
        print("lifted \(r.lifted.count) backoff\(r.lifted.count == 1 ? "" : "s") of \(r.target)"
              + (r.lifted.isEmpty ? "" : ": " + r.lifted.map(\.sendingIP).joined(separator: ", ")))
    }

    // MARK: Output

    /// `45s`, `12m03s`, `3h07m`, `2d04h`.
    static func age(_ seconds: Double) -> String {
        let s = Int(max(0, seconds))
        if s < 60 { return "\(s)s" }
        if s < 3600 { return "\(s / 60)m" + String(format: "%02ds", s % 60) }
        if s < 86_400 { return "\(s / 3600)h" + String(format: "%02dm", s % 3600 / 60) }
        return "\(s / 86_400)d" + String(format: "%02dh", s % 86_400 / 3600)
    }

    private func printTable(_ header: [String], _ rows: [[String]]) {
        var widths = header.map(\.count)
        for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { i, c in i == cells.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }.joined(separator: "  ")
        }
        print(line(header))
        for r in rows { print(line(r)) }
    }
}
