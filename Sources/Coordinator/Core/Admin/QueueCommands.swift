import Foundation
import HatoSupport

/// The operator CLI's queue visibility and control commands (admin API `/v1/queue/…`,
/// `/v1/pauses`, `/v1/suspensions`), as Postfix's postqueue/postsuper, PowerMTA's
/// `pmta pause queue` and KumoMTA's `kcli suspend`/`bounce` offer them:
///
/// - `queue --by domain|provider|pool|ip|state|priority [--limit N]`
/// - `queue list [--state S] [--domain D] [--provider P] [--pool P] [--ip A] [--sender S] [--limit N] [--after CURSOR]`
/// - `flush|delete|bounce|hold|release [ID…] [--domain D] [--provider P] [--pool P] [--ip A] [--sender S] [--state S] [--all] [--dry-run] [--reason T]`
///   (an ID of digits only, shorter than a queue id's 18 characters, is a recipient id; anything else a message id)
/// - `pause --provider P | --pool P | --ip A [--reason T]`, `resume --provider P | --pool P | --ip A`, `pauses`
/// - `lift --provider P` (every backoff of a provider; `lift IP PROVIDER` stays with `AdminCommands`)
///
/// Every command sends the operator (`--operator NAME` or `--as NAME`, else `$SUDO_USER` or
/// `$USER`) as `X-Hato-Operator`. `COMMAND --help` prints `help(for:)`.
public struct QueueCommands {
    let client: AdminClient
    let json: Bool

    /// Actions on recipients.
    public static let actions: Set<String> = Set(QueueAction.allCases.map(\.rawValue))

    /// - Parameters:
    ///   - client: the admin API client (it carries the operator's name).
    ///   - json: print the API's JSON answers instead of tables and sentences.
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
    /// - Throws: `AdminClient.Failure` for API errors and a missing selector;
    ///   `CLIArguments.UsageError` for an invalid number or cursor (`--limit abc`, `--limit 0`).
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

    /// The `--limit` values `queue --by` accepts (groups shown).
    public static let summaryLimits = 1...100_000
    /// The `--limit` values `queue list` accepts (recipients per page).
    public static let pageLimits = 1...1000

    /// The `--limit` values `command` accepts, when it is a queue command that takes one.
    public static func limits(_ command: String, options: [String: String]) -> ClosedRange<Int>? {
        guard command == "queue" else { return nil }
        return options["by"] != nil ? summaryLimits : pageLimits
    }

    /// The detailed `--help` text of a queue command (usage, arguments, examples); nil for a
    /// command this type does not own.
    public static func help(for command: String) -> String? {
        let selectors = """
              ID…                  message queue ids (18 characters), or recipient ids (digits only, from queue list)
              --domain D           recipients at this destination domain
              --provider P         recipients of this mailbox provider (gmail, microsoft, yahoo, apple,
                                   a shaping.providers name, unknown; see queue --by provider)
              --pool P             recipients routed to this pool
              --ip A               recipients last tried from this sending IP (- = never tried)
              --sender S           by reverse-path: an address, a domain, or '<>' (DSNs)
              --tenant T           by the message's tenant
              --state S            only recipients in this state
              --all                every waiting recipient (required when no ID or selector is given)
              --dry-run            print how many recipients would be touched; change nothing
              --reason TEXT        why (in the delivery log and webhooks; a bounce's DSN carries it)
              --operator NAME      who acts (also --as; default $SUDO_USER, else $USER; sent as X-Hato-Operator)
              --json               print the admin API's JSON answer

            Criteria combine: every one given must hold. Recipients in a delivery now (leased) are never
            touched; they are counted as "in a delivery now". Changes go in transactions of 1000 recipients.
            """
        func action(_ a: QueueAction, _ what: String, _ examples: [String]) -> String {
            """
            usage: hato-coordinator \(a.rawValue) [ID…] [--domain D] [--provider P] [--pool P] [--ip A] [--sender S]
                   [--state S] [--all] [--dry-run] [--reason TEXT] [--operator NAME] [--json]

            \(what)
            Applies to recipients that are \(a.states.map(\.rawValue).joined(separator: " or ")).

            arguments:
            \(selectors)

            examples:
            \(examples.map { "  " + $0 }.joined(separator: "\n"))
            """
        }
        switch command {
        case "queue":
            return """
                usage: hato-coordinator queue [--json]
                       hato-coordinator queue --by domain|provider|pool|ip|state|priority [--limit N] [--json]
                       hato-coordinator queue list [--state S] [--domain D] [--provider P] [--pool P] [--ip A]
                              [--sender S] [--limit N] [--after CURSOR] [--json]

                Without arguments: recipient counts in every state. With --by: the waiting recipients
                (queued, deferred, leased, held) per key and state, largest group first, with the age and
                message id of the oldest. queue list: one page of waiting recipients in id order, each with
                its attempts, age, last reply and why it waits (retry time, pause, backoff, warm-up cap,
                no eligible IP, held by an operator).

                arguments:
                  --by KEY             domain; provider (gmail, microsoft, yahoo, …, unknown); pool; ip (the last
                                       sending IP tried, - = never tried); state
                  --limit N            --by: at most N groups (\(summaryLimits.lowerBound)–\(summaryLimits.upperBound), default 1000);
                                       list: recipients per page (\(pageLimits.lowerBound)–\(pageLimits.upperBound), default 100)
                  --after CURSOR       list: the page after CURSOR (printed as "more: add --after CURSOR")
                  --state S            list: queued, deferred, leased or held (default: all four)
                  --domain, --provider, --pool, --ip, --sender
                                       list: only recipients that match (see hato-coordinator hold --help)
                  --json               print the admin API's JSON answer

                examples:
                  hato-coordinator queue --by provider
                  hato-coordinator queue --by domain --limit 20
                  hato-coordinator queue list --domain gmail.com --state deferred --limit 50
                  hato-coordinator queue list --domain gmail.com --state deferred --limit 50 --after 18342
                """
        case "flush":
            return action(.flush, "Makes recipients due now and wakes the scheduler (a retry without waiting for the schedule).",
                          ["hato-coordinator flush --domain gmail.com", "hato-coordinator flush 2BPHWGS7NDLJL4GKMK", "hato-coordinator flush --all --dry-run"])
        case "hold":
            return action(.hold, "Keeps recipients from delivery (state held) until released. Held recipients still get their\ndelay notice after dsn.delay_warning and expire by retry.max_age.",
                          ["hato-coordinator hold --provider microsoft --reason \"complaint spike, ticket 7\"",
                           "hato-coordinator hold --pool bulk --dry-run", "hato-coordinator hold 18342 18343"])
        case "release":
            return action(.release, "Puts held recipients back in the queue, due now.",
                          ["hato-coordinator release --provider microsoft", "hato-coordinator release --all"])
        case "delete":
            return action(.delete, "Removes recipients from delivery without a DSN (state deleted; the record and its events stay).",
                          ["hato-coordinator delete --sender spammer@customer.example --dry-run",
                           "hato-coordinator delete --sender spammer@customer.example --reason \"compromised account\""])
        case "bounce":
            return action(.bounce, "Fails recipients with a DSN to the sender: 550 5.0.0 bounced by operator NAME[: REASON],\nbounce category admin.",
                          ["hato-coordinator bounce --domain typo-domain.example --reason \"domain does not exist\"",
                           "hato-coordinator bounce 2BPHWGS7NDLJL4GKMK"])
        case "pause", "resume", "pauses":
            return """
                usage: hato-coordinator pause --provider P | --pool P | --ip A [--reason TEXT] [--operator NAME]
                       hato-coordinator resume --provider P | --pool P | --ip A [--operator NAME]
                       hato-coordinator resume NODE
                       hato-coordinator pauses [--json]

                pause: lease none of a provider's, pool's or sending IP's mail until resumed (it waits, gets its
                delay notice and expires as usual; a delivery in progress finishes). The pause is stored and
                outlives a coordinator restart. resume ends it; resume NODE makes a drained node active.
                pauses lists the active pauses with who paused and why.

                arguments:
                  --provider P         a mailbox provider label (gmail, microsoft, yahoo, …)
                  --pool P             a pool of cluster.yml
                  --ip A               a sending IP of cluster.yml
                  --reason TEXT        why (shown by pauses, queue list and in the delivery log)
                  --operator NAME      who acts (also --as; default $SUDO_USER, else $USER)

                examples:
                  hato-coordinator pause --provider microsoft --reason "4.7.650 complaints, ticket 7"
                  hato-coordinator pauses
                  hato-coordinator resume --provider microsoft
                """
        case "lift":
            return """
                usage: hato-coordinator lift IP PROVIDER
                       hato-coordinator lift --provider P [--operator NAME]

                End a backoff (suspension or throttle) early: one sending IP's for one provider, or with
                --provider every sending IP's backoff of that provider.

                examples:
                  hato-coordinator suspensions
                  hato-coordinator lift 203.0.113.10 gmail
                  hato-coordinator lift --provider gmail
                """
        default:
            return nil
        }
    }

    private func usage(_ command: String) -> AdminClient.Failure {
        let selectors = "[--domain D] [--provider P] [--pool P] [--ip A] [--sender S] [--tenant T] [--state S]"
        let text: String
        switch command {
        case "queue": text = "queue [--by domain|provider|pool|ip|state|priority] | queue list [--state S] [--domain D] [--provider P] [--pool P] [--ip A] [--sender S] [--limit N] [--after CURSOR]"
        case "pause", "resume": text = "\(command) --provider P | --pool P | --ip A" + (command == "pause" ? " [--reason TEXT]" : "")
        default: text = "\(command) [ID…] \(selectors) [--all] [--dry-run] [--reason TEXT] [--operator NAME]"
        }
        return AdminClient.Failure(description: "usage: hato-coordinator \(text) (more: hato-coordinator \(command) --help)")
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
        let limit = try CLIArguments.integer(options["limit"], option: "limit", in: Self.summaryLimits)
        let data = try client.get("/v1/queue/summary" + Self.query([("by", options["by"]), ("limit", limit.map(String.init))]))
        if json { FileHandle.standardOutput.write(data); return }
        let r = try decoder().decode(QueueSummaryReport.self, from: data)
        printTable([r.by.uppercased(), "QUEUED", "DEFERRED", "LEASED", "HELD", "TOTAL", "OLDEST", "OLDEST MESSAGE"], r.groups.map {
            [$0.key, "\($0.queued)", "\($0.deferred)", "\($0.leased)", "\($0.held)", "\($0.total)", Self.age($0.oldestAge), $0.oldestMessageId]
        })
        if r.groupCount > r.groups.count { print("(\(r.groupCount - r.groups.count) smaller groups not shown; --limit N)") }
        print("\(r.total) waiting recipient\(r.total == 1 ? "" : "s")")
    }

    private func list(_ options: [String: String]) throws {
        let limit = try CLIArguments.integer(options["limit"], option: "limit", in: Self.pageLimits)
        if let after = options["after"], Int64(after).map({ $0 < 0 }) ?? true {
            throw CLIArguments.UsageError(description: "--after: '\(after)' is not a cursor (give the number printed as \"more: add --after N\")")
        }
        let data = try client.get("/v1/queue/recipients" + Self.query([
            ("state", options["state"]), ("domain", options["domain"]), ("provider", options["provider"]), ("pool", options["pool"]),
            ("ip", options["ip"]), ("sender", options["sender"]), ("tenant", options["tenant"]), ("limit", limit.map(String.init)),
            ("after", options["after"])]))
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
                                      dryRun: flags.contains("dry-run") ? true : nil, reason: options["reason"], tenant: options["tenant"])
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

}
