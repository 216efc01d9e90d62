import Foundation
import HatoHTTP
import HatoSupport

/// Queue visibility and control in the admin API (issue 14), the routes `AdminAPI` hands over:
///
/// | method | path | body / query | what |
/// |---|---|---|---|
/// | GET | `/v1/queue/summary` | `by=domain\|provider\|pool\|ip\|state\|priority`, `limit=N` | waiting recipients per key and state, oldest entry |
/// | GET | `/v1/queue/recipients` | `state`, `domain`, `provider`, `pool`, `ip`, `sender`, `tenant`, `limit`, `after` | a page of waiting recipients with why each waits |
/// | POST | `/v1/queue/{flush,delete,bounce,hold,release}` | `QueueActionRequest` | the action (or its count with `dry_run`) |
/// | GET | `/v1/pauses` | | active pauses |
/// | POST | `/v1/pauses` | `PauseRequest` | pause a provider, pool or sending IP |
/// | DELETE | `/v1/pauses/{provider,pool,ip}/{name}` | | resume it |
/// | DELETE | `/v1/suspensions?provider=P` | | lift every backoff of a provider (with `ip=`: one) |
///
/// Who acts is the `X-Hato-Operator` header (the CLI sends `--operator`, `$SUDO_USER` or `$USER`),
/// else `admin`. Every action is logged with it and recorded as delivery log and webhook
/// events. Actions run in transactions of 1000 recipients.
public struct QueueControlAPI: Sendable {
    let store: any QueueStore
    let hub: ClusterHub
    let clock: any WallClock
    let batchSize: Int
    private let log = Logger(label: "coordinator.admin")

    /// - Parameters:
    ///   - batchSize: recipients per transaction of an action.
    public init(store: any QueueStore, hub: ClusterHub, clock: any WallClock = SystemClock(), batchSize: Int = 1000) {
        self.store = store; self.hub = hub; self.clock = clock; self.batchSize = max(1, batchSize)
    }

    /// The operator named by `X-Hato-Operator` (letters, digits, `._@+-`, at most 64), else `admin`.
    public static func operatorName(_ req: HTTPRequest) -> String {
        let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "._@+-"))
        guard let raw = req.headers["x-hato-operator"]?.trimmingCharacters(in: .whitespaces), !raw.isEmpty, raw.count <= 64,
              raw.unicodeScalars.allSatisfy({ allowed.contains($0) && $0.isASCII }) else { return "admin" }
        return raw
    }

    /// Handles the request when its route is one of these (the caller checked the bearer token); nil otherwise.
    public func handle(_ req: HTTPRequest) -> HTTPResponse? {
        let p = req.path.split(separator: "/").map(String.init)
        do {
            switch (req.method, p) {
            case ("GET", ["v1", "queue", "summary"]):
                return try summary(req)
            case ("GET", ["v1", "queue", "recipients"]):
                return try list(req)
            case ("POST", let p) where p.count == 3 && p[0] == "v1" && p[1] == "queue":
                guard let action = QueueAction(rawValue: p[2]) else { return .error(404, "no queue action \(p[2]) (flush, delete, bounce, hold, release)") }
                return try act(action, req)
            case ("GET", ["v1", "pauses"]):
                return .json(hub.pauses())
            case ("POST", ["v1", "pauses"]):
                return try pause(req)
            case ("DELETE", let p) where p.count == 4 && p[0] == "v1" && p[1] == "pauses":
                return try resume(kind: p[2], name: p[3], req)
            case ("DELETE", ["v1", "suspensions"]):
                return try lift(req)
            default:
                return nil
            }
        } catch let e as AdminError {
            if case .busy = e { return .error(503, e.description) }
            return .error(404, e.description)
        } catch {
            return .error(500, "\(error)")
        }
    }

    // MARK: Visibility

    private func summary(_ req: HTTPRequest) throws -> HTTPResponse {
        let byText = req.query["by"] ?? "state"
        guard let by = QueueGrouping(rawValue: byText) else {
            return .error(400, "by= must be one of \(QueueGrouping.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard let limit = Self.limit(req.query["limit"], default: 1000, in: QueueCommands.summaryLimits) else {
            return .error(400, "limit= must be a whole number from 1 to \(QueueCommands.summaryLimits.upperBound)")
        }
        let hub = self.hub
        let groups = try store.waitingSummary(by: by, providerLabel: { hub.providerLabel(ofDomain: $0) }, now: clock.now())
        return .json(QueueSummaryReport(by: by.rawValue, groups: Array(groups.prefix(limit)), groupCount: groups.count,
                                        total: groups.reduce(0) { $0 + $1.total }))
    }

    private func list(_ req: HTTPRequest) throws -> HTTPResponse {
        let q = req.query
        var states = RecipientState.waiting
        if let s = q["state"], !s.isEmpty {
            guard let st = RecipientState(rawValue: s), RecipientState.waiting.contains(st) else {
                return .error(400, "state= must be one of \(RecipientState.waiting.map(\.rawValue).joined(separator: ", "))")
            }
            states = [st]
        }
        guard let limit = Self.limit(q["limit"], default: 100, in: QueueCommands.pageLimits) else {
            return .error(400, "limit= must be a whole number from 1 to \(QueueCommands.pageLimits.upperBound)")
        }
        guard let after = Int64(q["after"].flatMap { $0.isEmpty ? nil : $0 } ?? "0"), after >= 0 else { return .error(400, "after= must be a cursor from next") }
        var selector = RecipientSelector(pool: nonEmpty(q["pool"]), sendingIP: nonEmpty(q["ip"]), sender: nonEmpty(q["sender"]), states: states,
                                         tenant: nonEmpty(q["tenant"]))
        selector.domains = try domains(domain: nonEmpty(q["domain"]), provider: nonEmpty(q["provider"]))
        let (rows, more) = try store.waitingRecipients(selector, after: after, limit: limit)
        let now = clock.now()
        let entries = rows.map { r in
            QueueListEntry(recipientId: r.recipientId, messageId: r.messageId, address: r.address, domain: r.domain, state: r.state.rawValue,
                           attempts: r.attempts, age: max(0, ((now.timeIntervalSince1970 - r.receivedAt) * 1000).rounded() / 1000), pool: r.pool,
                           sender: r.sender, sendingIp: r.sendingIp,
                           nextAttempt: r.nextAttemptAt.map { DeliveryLogRecord.timestamp(Date(timeIntervalSince1970: $0)) },
                           lastReply: r.lastReply,
                           reason: hub.waitReason(pool: r.pool, domain: r.domain, state: r.state.rawValue,
                                                  nextAttemptAt: r.nextAttemptAt.map { Date(timeIntervalSince1970: $0) }))
        }
        return .json(QueueListPage(recipients: entries, next: more ? entries.last.map { String($0.recipientId) } : nil))
    }

    // MARK: Actions

    private func act(_ action: QueueAction, _ req: HTTPRequest) throws -> HTTPResponse {
        let body: QueueActionRequest
        if req.body.allSatisfy({ $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }) {
            body = QueueActionRequest()
        } else {
            let d = JSONDecoder(); d.keyDecodingStrategy = .convertFromSnakeCase
            guard let b = try? d.decode(QueueActionRequest.self, from: Data(req.body)) else {
                return .error(400, "expected JSON {\"domain\": …, \"provider\": …, \"pool\": …, \"ip\": …, \"sender\": …, \"state\": …, \"recipient_ids\": […], \"message_ids\": […], \"all\": false, \"dry_run\": false, \"reason\": …}")
            }
            body = b
        }
        guard body.hasSelector || body.all == true else {
            return .error(400, "\(action.rawValue) needs recipient or message ids or a selector (domain, provider, pool, ip, sender, state); use all to select every waiting recipient")
        }
        var states = action.states
        if let s = nonEmpty(body.state) {
            guard let st = RecipientState(rawValue: s), RecipientState.waiting.contains(st) else {
                return .error(400, "state must be one of \(RecipientState.waiting.map(\.rawValue).joined(separator: ", "))")
            }
            guard action.states.contains(st) else {
                return .error(400, "\(action.rawValue) applies to \(action.states.map(\.rawValue).joined(separator: ", ")) recipients, not \(st.rawValue)")
            }
            states = [st]
        }
        let who = Self.operatorName(req)
        var selector = RecipientSelector(recipientIDs: body.recipientIds ?? [], messageIDs: body.messageIds ?? [], pool: nonEmpty(body.pool),
                                         sendingIP: nonEmpty(body.ip), sender: nonEmpty(body.sender), states: states, tenant: nonEmpty(body.tenant))
        selector.domains = try domains(domain: nonEmpty(body.domain), provider: nonEmpty(body.provider))
        var leased = selector
        leased.states = body.state == nil ? [.leased] : []
        let inFlight = try store.countWaiting(leased)
        let target = body.target
        let note = nonEmpty(body.reason)
        let report: QueueActionReport
        if body.dryRun == true {
            report = QueueActionReport(action: action.rawValue, dryRun: true, target: target, matched: try store.countWaiting(selector), changed: 0,
                                       inFlight: inFlight, by: who)
        } else {
            let started = ContinuousClock.now
            let clock = self.clock
            let (matched, changed, batches) = try store.applyQueueAction(action, to: selector, by: who, target: target, note: note, batchSize: batchSize,
                                                                now: { clock.now() })
            if changed > 0 && (action == .flush || action == .release) { hub.wake() }
            report = QueueActionReport(action: action.rawValue, dryRun: false, target: target, matched: matched, changed: changed, inFlight: inFlight, by: who)
            let elapsed = started.duration(to: .now)
            log.info("queue action", ["action": action.rawValue, "by": who, "target": target, "reason": note ?? "", "matched": "\(matched)",
                                      "changed": "\(changed)", "in_flight": "\(inFlight)", "transactions": "\(batches)",
                                      "seconds": String(format: "%.3f", Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)])
        }
        return .json(report)
    }

    // MARK: Pauses and lifts

    private func pause(_ req: HTTPRequest) throws -> HTTPResponse {
        let d = JSONDecoder(); d.keyDecodingStrategy = .convertFromSnakeCase
        guard let body = try? d.decode(PauseRequest.self, from: Data(req.body)) else {
            return .error(400, "expected JSON {\"kind\": \"provider\"|\"pool\"|\"ip\", \"name\": …, \"reason\": …}")
        }
        let target: PauseTarget
        switch checkTarget(kind: body.kind, name: body.name) {
        case .success(let t): target = t
        case .failure(let e): return .error(400, e.description)
        }
        let who = Self.operatorName(req)
        let reason = body.reason ?? ""
        let pause = Pause(target: target, by: who, reason: reason, at: clock.now().timeIntervalSince1970)
        try hub.pause(pause)
        try store.recordOperatorEvent(.paused, by: who, target: target.description, note: nonEmpty(reason), now: clock.now())
        log.info("paused", ["target": target.description, "by": who, "reason": reason])
        return .json(pause, status: 201)
    }

    private func resume(kind: String, name: String, _ req: HTTPRequest) throws -> HTTPResponse {
        guard let k = PauseTarget.Kind(rawValue: kind) else { return .error(400, "kind must be provider, pool or ip") }
        let target = PauseTarget(kind: k, name: name.removingPercentEncoding ?? name)
        let who = Self.operatorName(req)
        guard try hub.resume(target, by: who) else { return .error(404, "\(target) is not paused") }
        try store.recordOperatorEvent(.resumed, by: who, target: target.description, note: nil, now: clock.now())
        log.info("resumed", ["target": target.description, "by": who])
        return .json(["resumed": target.description])
    }

    private func lift(_ req: HTTPRequest) throws -> HTTPResponse {
        guard let provider = nonEmpty(req.query["provider"]) else { return .error(400, "provider= is required (with ip= for one sending IP)") }
        let who = Self.operatorName(req)
        let report: LiftReport
        if let ip = nonEmpty(req.query["ip"]) {
            let entry = hub.activeBackoffs().first { $0.sendingIP == ip && $0.provider == provider }
            guard try hub.liftBackoff(ip: ip, provider: provider) else { return .error(404, "no active backoff for \(ip) / \(provider)") }
            report = LiftReport(target: "ip \(ip) provider \(provider)", lifted: entry.map { [$0] } ?? [])
        } else {
            report = LiftReport(target: "provider \(provider)", lifted: try hub.liftProvider(provider))
        }
        try store.recordOperatorEvent(.lifted, by: who, target: report.target, note: "\(report.lifted.count) backoff(s)", now: clock.now())
        log.info("backoffs lifted", ["target": report.target, "by": who, "lifted": "\(report.lifted.count)"])
        return .json(report)
    }

    /// A pause target that exists in the configuration (any provider label is accepted).
    private func checkTarget(kind: String, name: String) -> Result<PauseTarget, AdminClient.Failure> {
        guard let k = PauseTarget.Kind(rawValue: kind) else { return .failure(.init(description: "kind must be provider, pool or ip")) }
        let n = name.trimmingCharacters(in: .whitespaces)
        guard !n.isEmpty else { return .failure(.init(description: "name is required")) }
        let config = hub.currentConfig
        switch k {
        case .pool where config.pool(named: n) == nil:
            return .failure(.init(description: "no pool \(n) in cluster.yml"))
        case .ip where !config.ips.contains(where: { $0.address == n }):
            return .failure(.init(description: "no sending IP \(n) in cluster.yml"))
        default:
            return .success(PauseTarget(kind: k, name: k == .provider ? n.lowercased() : n))
        }
    }

    // MARK: Selectors

    /// The destination domains a `domain` and/or `provider` criterion selects; nil for any.
    private func domains(domain: String?, provider: String?) throws -> [String]? {
        var out: [String]?
        if let domain { out = [domain.lowercased()] }
        if let provider {
            let label = provider.lowercased()
            let ofProvider = try store.waitingDomains().filter { hub.providerLabel(ofDomain: $0) == label }
            out = out.map { d in d.filter { ofProvider.contains($0) } } ?? ofProvider
        }
        return out
    }

    /// A `limit=` parameter: `fallback` when absent or empty, nil when not a whole number in `range`.
    static func limit(_ text: String?, default fallback: Int, in range: ClosedRange<Int>) -> Int? {
        guard let text, !text.isEmpty else { return fallback }
        guard let n = Int(text), range.contains(n) else { return nil }
        return n
    }

    private func nonEmpty(_ s: String?) -> String? {
        guard let t = s?.trimmingCharacters(in: .whitespaces), !t.isEmpty else { return nil }
        return t
    }
}
