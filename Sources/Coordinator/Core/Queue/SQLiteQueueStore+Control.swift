import Foundation
import HatoConfig
import SMTPCore

// Queue control (issue 14): what an operator sees of the waiting recipients and what they can
// do to them — the reads behind `hato-coordinator queue --by …` and `queue list`, and the
// writes behind `flush`, `hold`, `release`, `delete` and `bounce` (Postfix's postqueue and
// postsuper, PowerMTA's `pmta`, KumoMTA's `kcli`).
//
// Reads go through a second, read-only connection (`reader`): in WAL mode it sees a committed
// snapshot without taking the queue's lock, so counting or paging a million recipients never
// stalls submissions, leases or results. They walk one partial index that holds only waiting
// recipients, (state): each state's rows in recipient id order, for keyset pagination and
// batches; counts per domain, pool or sending IP read each waiting row once through it. One
// index, not one per grouping: every message passes through the waiting states, and each
// index it enters costs the hot path a b-tree insert and delete per state change (three such
// indexes took a third more coordinator CPU per message in bench/relay-vs-postfix). Queries
// name the index (`INDEXED BY`) and repeat its `WHERE` term, so the plan never depends on the
// planner's guesses.
//
// Writes go in bounded batches (1000 recipients by default), each its own synced transaction
// under the queue's lock: a selector that matches a million recipients never holds the lock
// for more than a few milliseconds at a time. Each write re-checks the state it expects, so a
// recipient that moved meanwhile (leased, delivered) is left alone. The reporting triggers turn
// the state changes into events (held, released, deleted, failed); a flush, which changes no
// state, records its `flushed` events itself; every event of the batch is stamped with the
// operator, the selector and the note in the same transaction.

/// Which recipients an operator's queue query or action applies to. Every criterion given must
/// hold; an absent one matches everything.
public struct RecipientSelector: Sendable, Equatable {
    /// Recipient row ids (with `messageIDs`: either matches).
    public var recipientIDs: [Int64] = []
    /// Message queue ids: every recipient of each (with `recipientIDs`: either matches).
    public var messageIDs: [String] = []
    /// Destination domains, lower-case; nil for any. A provider is resolved to its domains by the caller.
    public var domains: [String]?
    /// The message's pool.
    public var pool: String?
    /// The last sending IP tried; `-` for recipients never tried.
    public var sendingIP: String?
    /// The reverse-path: `<>` for the null sender, an address (case-insensitive), or a domain
    /// (every address at it).
    public var sender: String?
    /// The states considered, a subset of `RecipientState.waiting`.
    public var states: [RecipientState] = RecipientState.waiting
    /// The message's tenant (issue 16); nil for any.
    public var tenant: String?

    /// A selector; see the properties.
    public init(recipientIDs: [Int64] = [], messageIDs: [String] = [], domains: [String]? = nil, pool: String? = nil,
                sendingIP: String? = nil, sender: String? = nil, states: [RecipientState] = RecipientState.waiting, tenant: String? = nil) {
        self.recipientIDs = recipientIDs; self.messageIDs = messageIDs; self.domains = domains; self.pool = pool
        self.sendingIP = sendingIP; self.sender = sender; self.states = states; self.tenant = tenant
    }
}

/// What `queue --by` groups waiting recipients by.
public enum QueueGrouping: String, Sendable, CaseIterable, Codable {
    /// The destination domain.
    case domain
    /// The mailbox provider of the destination (`ClusterHub.providerLabel(ofDomain:)`).
    case provider
    /// The message's pool.
    case pool
    /// The last sending IP tried (`-` for never tried).
    case ip
    /// The recipient's state.
    case state
    /// The message's priority class (`transactional`, `bulk`; issue 18).
    case priority
}

/// One group of `queue --by`: waiting recipients per state and the oldest of them.
public struct QueueGroup: Codable, Sendable, Equatable {
    /// The domain, provider, pool, sending IP (`-`: never tried) or state.
    public var key: String
    /// Recipients waiting for their (next) attempt.
    public var queued: Int
    /// Recipients deferred, waiting for their retry.
    public var deferred: Int
    /// Recipients in a delivery now.
    public var leased: Int
    /// Recipients held by an operator.
    public var held: Int
    /// All four.
    public var total: Int
    /// The oldest recipient of the group: the lowest recipient id, i.e. the one accepted first.
    public var oldestRecipientId: Int64
    /// Its message's queue id.
    public var oldestMessageId: String
    /// Seconds since its message was accepted.
    public var oldestAge: Double
}

/// One waiting recipient as `queue list` shows it.
public struct WaitingRecipient: Codable, Sendable, Equatable {
    /// The recipient row id (the pagination key).
    public var recipientId: Int64
    /// The message's queue id.
    public var messageId: String
    /// The forward-path.
    public var address: String
    /// The destination domain.
    public var domain: String
    /// `queued`, `deferred`, `leased` or `held`.
    public var state: RecipientState
    /// Delivery attempts so far.
    public var attempts: Int
    /// The message's pool.
    public var pool: String
    /// The message's reverse-path (`""` for `<>`).
    public var sender: String
    /// When the message was accepted, seconds since 1970.
    public var receivedAt: Double
    /// When the next attempt is due, seconds since 1970.
    public var nextAttemptAt: Double?
    /// The sending IP of the last attempt.
    public var sendingIp: String?
    /// The last reply (`451 4.7.1 text`), nil before the first attempt.
    public var lastReply: String?
}

/// An operator's action on waiting recipients.
public enum QueueAction: String, Sendable, CaseIterable, Codable {
    /// Makes them due now (`next_attempt_at = now`); the scheduler is woken.
    case flush
    /// Removes them from delivery without a DSN: state `deleted` (final; the record stays).
    case delete
    /// Fails them with a DSN to the sender: state `failed`, `550 5.0.0 bounced by operator <who>`
    /// (RFC 3463 X.0.0: other undefined status), bounce category `admin`.
    case bounce
    /// Keeps them from being leased: state `held`.
    case hold
    /// Puts held ones back: state `queued`, due now.
    case release

    /// The states it applies to (a leased recipient is in a delivery: never touched).
    public var states: [RecipientState] {
        switch self {
        case .flush, .hold: return [.queued, .deferred]
        case .release: return [.held]
        case .delete, .bounce: return [.queued, .deferred, .held]
        }
    }

    /// The past tense for messages and log lines.
    public var pastTense: String {
        switch self {
        case .flush: return "flushed"
        case .delete: return "deleted"
        case .bounce: return "bounced"
        case .hold: return "held"
        case .release: return "released"
        }
    }
}

extension SQLiteQueueStore {
    /// The waiting states as the partial index's `WHERE` term spells them, for `column`
    /// (queries repeat it verbatim so that SQLite sees the index applies).
    ///
    /// An `OR` of equalities, not `state IN (…)`: SQLite evaluates a constant `IN` list by
    /// building an ephemeral b-tree (a pager and a page cache of its own) each time the statement
    /// runs — and the partial index's term runs on every insert and every state change of a
    /// recipient. That cost about a tenth of the coordinator's CPU per message (issue 19's profile).
    static func waitingStates(_ column: String) -> String {
        "(" + RecipientState.waiting.map { "\(column)='\($0.rawValue)'" }.joined(separator: " OR ") + ")"
    }

    /// `waitingStates` for the column `r.state` (the queries' alias).
    static let waitingStateTerm = waitingStates("r.state")

    /// The partial index of waiting recipients (created by `init`, kept small: a final recipient
    /// leaves it). Queue files made by an earlier build lose that build's two extra indexes.
    static let waitingIndexes = """
        CREATE INDEX IF NOT EXISTS recipients_waiting_state ON recipients(state) WHERE \(waitingStates("state"));
        DROP INDEX IF EXISTS recipients_waiting_domain;
        DROP INDEX IF EXISTS recipients_waiting_pool;
        """

    /// Creates the partial index of waiting recipients, first dropping one an earlier build made
    /// with `state IN (…)` as its term (rebuilt once: a few seconds per million recipients).
    func installWaitingIndexes() throws {
        let existing = try db.prepare("SELECT sql FROM sqlite_master WHERE type='index' AND name='recipients_waiting_state'")
            .query { $0.isNull(0) ? "" : $0.text(0) }
        if let sql = existing.first, sql.contains(" IN ") {
            try db.execute("DROP INDEX recipients_waiting_state")
        }
        try db.execute(Self.waitingIndexes)
    }

    /// Runs `body` with the read-only connection, opened on first use.
    func withReader<R>(_ body: (SQLiteDatabase) throws -> R) throws -> R {
        try reader.withLock { r in
            if r == nil {
                let db = try SQLiteDatabase(path: path)
                try db.execute("PRAGMA query_only=ON")
                r = db
            }
            return try body(r!)
        }
    }

    // MARK: Reading

    /// The destination domains of waiting recipients (for resolving a provider to its domains).
    /// - Throws: `SQLiteError`.
    public func waitingDomains() throws -> [String] {
        try withReader { db in
            try db.prepare("""
                SELECT DISTINCT r.domain FROM recipients r INDEXED BY recipients_waiting_state
                WHERE \(Self.waitingStateTerm)
                """).query { $0.text(0) }
        }
    }

    /// Waiting recipients (`queued`, `deferred`, `leased`, `held`) counted per state and key,
    /// with the oldest of each group, largest groups first. One `GROUP BY` over the waiting
    /// recipients (the partial (state) index), on the read-only connection.
    /// - Parameters:
    ///   - grouping: what to group by.
    ///   - providerLabel: a destination domain's provider (for `.provider`).
    ///   - now: for the ages.
    /// - Throws: `SQLiteError`.
    public func waitingSummary(by grouping: QueueGrouping, providerLabel: (String) -> String, now: Date) throws -> [QueueGroup] {
        // Each statement walks the waiting rows once through the (state) index.
        let rows: [(String, String, Int, Int64)] = try withReader { db in
            switch grouping {
            case .domain, .provider:
                return try db.prepare("""
                    SELECT r.state, r.domain, COUNT(*), MIN(r.id) FROM recipients r INDEXED BY recipients_waiting_state
                    WHERE \(Self.waitingStateTerm) GROUP BY r.state, r.domain
                    """).query { ($0.text(0), $0.text(1), Int($0.int(2)), $0.int(3)) }
            case .state:
                return try db.prepare("""
                    SELECT r.state, r.state, COUNT(*), MIN(r.id) FROM recipients r INDEXED BY recipients_waiting_state
                    WHERE \(Self.waitingStateTerm) GROUP BY r.state
                    """).query { ($0.text(0), $0.text(1), Int($0.int(2)), $0.int(3)) }
            case .priority:
                return try db.prepare("""
                    SELECT r.state, r.priority, COUNT(*), MIN(r.id) FROM recipients r INDEXED BY recipients_waiting_state
                    WHERE \(Self.waitingStateTerm) GROUP BY r.state, r.priority
                    """).query { ($0.text(0), $0.text(1), Int($0.int(2)), $0.int(3)) }
            case .pool, .ip:
                // Per (state, pool, IP), then per pool or IP here: a few rows per pool and IP.
                // Rows written before recipients had their pool take it from their message.
                let column: Int32 = grouping == .pool ? 1 : 2
                let stored = try db.prepare("""
                    SELECT r.state, r.pool, COALESCE(r.ip, '-'), COUNT(*), MIN(r.id) FROM recipients r INDEXED BY recipients_waiting_state
                    WHERE \(Self.waitingStateTerm) AND r.pool IS NOT NULL GROUP BY r.state, r.pool, r.ip
                    """).query { ($0.text(0), $0.text(column), Int($0.int(3)), $0.int(4)) }
                let legacy = try db.prepare("""
                    SELECT r.state, m.pool, COALESCE(r.ip, '-'), COUNT(*), MIN(r.id) FROM recipients r INDEXED BY recipients_waiting_state
                    JOIN messages m ON m.id = r.message_id
                    WHERE \(Self.waitingStateTerm) AND r.pool IS NULL GROUP BY 1, 2, 3
                    """).query { ($0.text(0), $0.text(column), Int($0.int(3)), $0.int(4)) }
                return stored + legacy
            }
        }
        var out = QueueGroup.groups(rows, grouping: grouping, providerLabel: providerLabel)
        try withReader { db in
            let oldest = try db.prepare("SELECT r.message_id, m.received_at FROM recipients r JOIN messages m ON m.id = r.message_id WHERE r.id = ?")
            for i in out.indices {
                if let (mid, received) = try oldest.query([.int(out[i].oldestRecipientId)], { ($0.text(0), $0.double(1)) }).first {
                    out[i].oldestMessageId = mid
                    out[i].oldestAge = max(0, (now.timeIntervalSince1970 - received) * 1000).rounded() / 1000
                }
            }
        }
        return out.sorted { ($0.total, $1.key) > ($1.total, $0.key) }
    }

    /// A page of waiting recipients matching `selector`, in recipient id order after `after`
    /// (keyset pagination: pass the last id of a page to get the next).
    /// - Returns: the rows and whether more may follow.
    /// - Throws: `SQLiteError`.
    public func waitingRecipients(_ selector: RecipientSelector, after: Int64, limit: Int) throws -> (rows: [WaitingRecipient], more: Bool) {
        let (ids, more) = try selectWaiting(selector, after: after, limit: limit)
        let rows = try withReader { db in
            let get = try db.prepare("""
                SELECT r.id, r.message_id, r.address, r.domain, r.state, r.attempts, \(Self.poolExpression), m.reverse_path, m.received_at,
                       r.next_attempt_at, r.ip, r.last_code, r.last_enhanced, r.last_text
                FROM recipients r JOIN messages m ON m.id = r.message_id WHERE r.id = ?
                """)
            return try ids.compactMap { id in
                try get.query([.int(id)]) { s -> WaitingRecipient in
                    let reply = SQLiteQueueStore.reply(s, 11)?.description
                    return WaitingRecipient(recipientId: s.int(0), messageId: s.text(1), address: s.text(2), domain: s.text(3),
                                            state: RecipientState(rawValue: s.text(4)) ?? .queued, attempts: Int(s.int(5)), pool: s.text(6),
                                            sender: s.text(7), receivedAt: s.double(8), nextAttemptAt: s.isNull(9) ? nil : s.double(9),
                                            sendingIp: s.optionalText(10), lastReply: reply)
                }.first
            }
        }
        return (rows, more)
    }

    /// How many recipients `selector` matches now.
    /// - Throws: `SQLiteError`.
    public func countWaiting(_ selector: RecipientSelector) throws -> Int {
        guard let plan = Self.plan(selector) else { return 0 }
        return try withReader { db in
            let stmt = try db.prepare(plan.countSQL)
            return try plan.partitions.reduce(0) { n, p in n + Int(try stmt.query(plan.binds(p, after: nil, limit: nil)) { $0.int(0) }.first ?? 0) }
        }
    }

    /// The ids of up to `limit` recipients matching `selector` after `after`, in id order.
    /// - Returns: the ids and whether more may follow.
    func selectWaiting(_ selector: RecipientSelector, after: Int64, limit: Int) throws -> (ids: [Int64], more: Bool) {
        guard limit > 0, let plan = Self.plan(selector) else { return ([], false) }
        return try withReader { db in
            let stmt = try db.prepare(plan.selectSQL)
            var all: [Int64] = []
            var full = false
            for p in plan.partitions {
                let ids = try stmt.query(plan.binds(p, after: after, limit: limit)) { $0.int(0) }
                if ids.count == limit { full = true }
                all += ids
            }
            // Each partition gives its first `limit` ids in order, so the first `limit` of the merge are the page.
            if plan.partitions.count > 1 { all.sort() }
            let more = all.count > limit || full
            return (Array(all.prefix(limit)), more)
        }
    }

    /// The pool of recipient `r` (its own column, or its message's for rows written before it existed).
    static let poolExpression = "COALESCE(r.pool, (SELECT pool FROM messages WHERE id = r.message_id))"

    /// A selector compiled to SQL: one statement, run once per partition (a state, or a state
    /// and a domain) so that each run walks one index range in id order.
    struct SelectorPlan {
        struct Partition { var state: RecipientState?; var domain: String? }
        var selectSQL: String
        var countSQL: String
        var partitions: [Partition]
        /// Binds in statement order, after the partition's own.
        var fixed: [SQLiteStatement.Value]
        var byState: Bool
        var byDomain: Bool

        func binds(_ p: Partition, after: Int64?, limit: Int?) -> [SQLiteStatement.Value] {
            var b: [SQLiteStatement.Value] = []
            if byState, let s = p.state { b.append(.text(s.rawValue)) }
            if byDomain, let d = p.domain { b.append(.text(d)) }
            b += fixed
            if let after { b.append(.int(after)) }
            if let limit { b.append(.int(Int64(limit))) }
            return b
        }
    }

    /// Compiles `s`; nil when it can match nothing (no state, or a provider without domains).
    static func plan(_ s: RecipientSelector) -> SelectorPlan? {
        let states = RecipientState.waiting.filter { s.states.contains($0) }
        guard !states.isEmpty, s.domains.map({ !$0.isEmpty }) ?? true else { return nil }
        func json(_ values: [String]) -> String {
            String(decoding: (try? JSONSerialization.data(withJSONObject: values)) ?? Data("[]".utf8), as: UTF8.self)
        }
        var conditions: [String] = []
        var fixed: [SQLiteStatement.Value] = []
        let byIDs = !s.recipientIDs.isEmpty || !s.messageIDs.isEmpty
        // A tenant's waiting recipients are found through its open messages (the small partial
        // index `messages_tenant_open`), not by walking every waiting recipient of the queue.
        let byTenant = !byIDs && s.tenant != nil
        let byState = !byIDs && !byTenant
        let byDomain = byState && s.domains != nil
        var from = "recipients r"
        var partitions: [SelectorPlan.Partition] = []
        if byTenant, let tenant = s.tenant {
            conditions.append("r.message_id IN (SELECT id FROM messages WHERE tenant = ? AND open_recipients > 0)")
            fixed.append(.text(tenant))
            conditions.append("+r.state IN (SELECT value FROM json_each(?))")
            fixed.append(.text(json(states.map(\.rawValue))))
            if let domains = s.domains {
                conditions.append("r.domain IN (SELECT value FROM json_each(?))")
                fixed.append(.text(json(domains)))
            }
            partitions = [.init(state: nil, domain: nil)]
        } else if byIDs {
            // A few ids: the primary key and the message index find them; states and domains are filters.
            conditions.append("""
                r.id IN (SELECT value FROM json_each(?) UNION SELECT id FROM recipients WHERE message_id IN (SELECT value FROM json_each(?)))
                """)
            fixed.append(.text("[" + s.recipientIDs.map(String.init).joined(separator: ",") + "]"))
            fixed.append(.text(json(s.messageIDs)))
            conditions.append("+r.state IN (SELECT value FROM json_each(?))")
            fixed.append(.text(json(states.map(\.rawValue))))
            if let domains = s.domains {
                conditions.append("r.domain IN (SELECT value FROM json_each(?))")
                fixed.append(.text(json(domains)))
            }
            partitions = [.init(state: nil, domain: nil)]
        } else {
            from += " INDEXED BY recipients_waiting_state"
            conditions.append(waitingStateTerm)
            conditions.append("r.state = ?")
            if byDomain { conditions.append("r.domain = ?") }
            for st in states {
                if let domains = s.domains {
                    for d in Set(domains).sorted() { partitions.append(.init(state: st, domain: d)) }
                } else {
                    partitions.append(.init(state: st, domain: nil))
                }
            }
        }
        if let pool = s.pool {
            conditions.append("\(poolExpression) = ?")
            fixed.append(.text(pool))
        }
        if byIDs, let tenant = s.tenant {
            conditions.append("EXISTS(SELECT 1 FROM messages m WHERE m.id = r.message_id AND m.tenant = ?)")
            fixed.append(.text(tenant))
        }
        if let ip = s.sendingIP {
            if ip == "-" { conditions.append("r.ip IS NULL") } else {
                conditions.append("r.ip = ?")
                fixed.append(.text(ip))
            }
        }
        if let sender = s.sender {
            if sender == "<>" || sender.isEmpty {
                conditions.append("EXISTS(SELECT 1 FROM messages m WHERE m.id = r.message_id AND m.reverse_path = '')")
            } else if sender.contains("@") {
                conditions.append("EXISTS(SELECT 1 FROM messages m WHERE m.id = r.message_id AND m.reverse_path = ? COLLATE NOCASE)")
                fixed.append(.text(sender))
            } else {
                let escaped = sender.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "%", with: "\\%")
                    .replacingOccurrences(of: "_", with: "\\_")
                conditions.append("EXISTS(SELECT 1 FROM messages m WHERE m.id = r.message_id AND m.reverse_path LIKE ? ESCAPE '\\')")
                fixed.append(.text("%@" + escaped))
            }
        }
        let whereClause = conditions.joined(separator: " AND ")
        return SelectorPlan(selectSQL: "SELECT r.id FROM \(from) WHERE \(whereClause) AND r.id > ? ORDER BY r.id LIMIT ?",
                            countSQL: "SELECT COUNT(*) FROM \(from) WHERE \(whereClause)",
                            partitions: partitions, fixed: fixed, byState: byState, byDomain: byDomain)
    }

    // MARK: Writing

    /// Applies `action` to every recipient `selector` matches, in transactions of `batchSize`
    /// recipients (each re-checks the recipient's state, so one that moved meanwhile is left
    /// alone), and stamps the events of the change with the operator.
    /// - Parameters:
    ///   - action: what to do.
    ///   - selector: which recipients (its states are narrowed to those `action` applies to).
    ///   - operatorName: who asked (the events' `operator`).
    ///   - target: the selector as the operator gave it (the events' `target`).
    ///   - note: the operator's reason, if any.
    ///   - batchSize: recipients per transaction.
    ///   - now: the clock (read per batch).
    /// - Returns: recipients selected, recipients changed (a flush changes only those not yet
    ///   due) and the transactions it took.
    /// - Throws: `SQLiteError`; the batches before the failing one stay applied.
    public func applyQueueAction(_ action: QueueAction, to selector: RecipientSelector, by operatorName: String, target: String, note: String?,
                                 batchSize: Int, now: () -> Date) throws -> (matched: Int, changed: Int, batches: Int) {
        var s = selector
        s.states = selector.states.filter { action.states.contains($0) }
        var cursor: Int64 = 0
        var matched = 0, changed = 0, batches = 0
        while true {
            let (ids, more) = try selectWaiting(s, after: cursor, limit: max(1, batchSize))
            guard let last = ids.last else { break }
            matched += ids.count
            changed += try applyQueueBatch(action, ids: ids, states: s.states, by: operatorName, target: target, note: note, now: now())
            batches += 1
            cursor = last
            if !more { break }
        }
        return (matched, changed, batches)
    }

    /// One batch of `applyQueueAction` in one synced transaction: one set-based statement over
    /// the batch's ids (in id order, so the table's pages are visited in file order), the events
    /// its changes made stamped with the operator. - Returns: recipients changed.
    func applyQueueBatch(_ action: QueueAction, ids: [Int64], states: [RecipientState], by operatorName: String, target: String, note: String?,
                         now: Date) throws -> Int {
        let t: SQLiteStatement.Value = .double(now.timeIntervalSince1970)
        let idList: SQLiteStatement.Value = .text("[" + ids.sorted().map(String.init).joined(separator: ",") + "]")
        let stateList: SQLiteStatement.Value = .text("[" + states.map { "\"\($0.rawValue)\"" }.joined(separator: ",") + "]")
        let selected = "id IN (SELECT value FROM json_each(?)) AND state IN (SELECT value FROM json_each(?))"
        return try lock.withLock {
            try db.transaction {
                let events = try hasEventTable()
                let firstSeq = events ? try db.prepare("SELECT MAX(seq) FROM recipient_events").query { $0.isNull(0) ? 0 : $0.int(0) }.first ?? 0 : 0
                var changed = 0
                var closed: [String: Int] = [:]
                switch action {
                case .hold:
                    try db.prepare("UPDATE recipients SET state='held', updated_at=? WHERE \(selected)").run([t, idList, stateList])
                    changed = db.changes
                case .release:
                    try db.prepare("UPDATE recipients SET state='queued', next_attempt_at=?, updated_at=? WHERE \(selected)").run([t, t, idList, stateList])
                    changed = db.changes
                case .flush:
                    let flushed = try db.prepare("""
                        UPDATE recipients SET next_attempt_at=?, updated_at=? WHERE \(selected) AND (next_attempt_at IS NULL OR next_attempt_at > ?) RETURNING id
                        """).query([t, t, idList, stateList, t]) { $0.int(0) }
                    changed = flushed.count
                    if events && !flushed.isEmpty {
                        // A flush changes no state, so no trigger records it.
                        try db.prepare("""
                            INSERT INTO recipient_events(kind, message_id, recipient_id, address, code, enhanced, text, node, ip, mx, attempts, next_attempt_at, at)
                            SELECT 'flushed', message_id, id, address, last_code, last_enhanced, last_text, node, ip, mx, attempts, next_attempt_at, updated_at
                            FROM recipients WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id
                            """).run([.text("[" + flushed.sorted().map(String.init).joined(separator: ",") + "]")])
                    }
                case .delete:
                    for mid in try db.prepare("UPDATE recipients SET state='deleted', next_attempt_at=NULL, updated_at=? WHERE \(selected) RETURNING message_id")
                        .query([t, idList, stateList], { $0.text(0) }) { closed[mid, default: 0] += 1 }
                case .bounce:
                    let text = String(("bounced by operator \(operatorName)" + (note.map { $0.isEmpty ? "" : ": " + $0 } ?? "")).prefix(512))
                    for mid in try db.prepare("""
                        UPDATE recipients SET state='failed', next_attempt_at=NULL, last_code=550, last_enhanced='5.0.0', last_text=?, updated_at=?
                        WHERE \(selected) RETURNING message_id
                        """).query([.text(text), t, idList, stateList], { $0.text(0) }) { closed[mid, default: 0] += 1 }
                }
                if !closed.isEmpty {
                    // Final: their messages have that many open recipients fewer.
                    let close = try db.prepare("UPDATE messages SET open_recipients=open_recipients-? WHERE id=?")
                    for (mid, n) in closed { try close.run([.int(Int64(n)), .text(mid)]) }
                    changed = closed.values.reduce(0, +)
                }
                if events && changed > 0 {
                    try db.prepare("UPDATE recipient_events SET operator=?, detail=?, note=? WHERE seq > ?")
                        .run([.text(operatorName), .text(target), note.map { .text($0) } ?? .null, .int(firstSeq)])
                }
                try purgeBodies(Set(closed.keys))
                return changed
            }
        }
    }

    /// Records an operator's action that concerns no recipient (a pause, a resume, a lift) as an
    /// event for the delivery log and webhooks. Without the reporting tables, nothing is recorded.
    /// - Parameters:
    ///   - kind: `paused`, `resumed` or `lifted`.
    ///   - operatorName: who.
    ///   - target: what, e.g. `provider gmail`.
    ///   - note: the operator's reason, if any.
    ///   - now: when.
    /// - Throws: `SQLiteError`.
    public func recordOperatorEvent(_ kind: DeliveryEventKind, by operatorName: String, target: String, note: String?, now: Date) throws {
        try lock.withLock {
            guard try hasEventTable() else { return }
            try db.transaction {
                try db.prepare("INSERT INTO recipient_events(kind, message_id, at, operator, detail, note) VALUES(?, '', ?, ?, ?, ?)")
                    .run([.text(kind.rawValue), .double(now.timeIntervalSince1970), .text(operatorName), .text(target), note.map { .text($0) } ?? .null])
            }
        }
    }

    /// Whether the reporting tables exist (`installReportingSchema`); the caller holds `lock`.
    func hasEventTable() throws -> Bool {
        !(try db.prepare("SELECT 1 FROM sqlite_master WHERE type='table' AND name='recipient_events'").query { $0.int(0) }.isEmpty)
    }
}
