import Foundation
import HatoConfig

// Queue control on PostgreSQL (see SQLiteQueueStore+Control.swift for the operator's view).
// Reads run on any pool connection: PostgreSQL's snapshots never block writers, so no second
// read-only connection is needed. Writes go in bounded batches, each one transaction that
// re-checks the state it expects.
extension PostgreSQLQueueStore {
    /// The destination domains of waiting recipients.
    /// - Throws: `PostgreSQLError`.
    public func waitingDomains() throws -> [String] {
        try pool.withConnection { c in
            try c.query("SELECT DISTINCT domain FROM recipients WHERE state IN ('queued','deferred','leased','held')").map { try $0.text(0) }
        }
    }

    /// Waiting recipients counted per state and key, with the oldest of each group, largest first.
    /// - Throws: `PostgreSQLError`.
    public func waitingSummary(by grouping: QueueGrouping, providerLabel: (String) -> String, now: Date) throws -> [QueueGroup] {
        try pool.withConnection { c in
            let key: String
            switch grouping {
            case .domain, .provider: key = "r.domain"
            case .state: key = "r.state"
            case .pool: key = "r.pool"
            case .ip: key = "COALESCE(r.ip, '-')"
            case .priority: key = "r.priority"
            }
            let rows = try c.query("""
                SELECT r.state, \(key), COUNT(*), MIN(r.id) FROM recipients r
                WHERE r.state IN ('queued','deferred','leased','held') GROUP BY 1, 2
                """).map { (try $0.text(0), try $0.text(1), Int(try $0.int(2)), try $0.int(3)) }
            var out = QueueGroup.groups(rows, grouping: grouping, providerLabel: providerLabel)
            for i in out.indices {
                if let r = try c.query("SELECT r.message_id, m.received_at FROM recipients r JOIN messages m ON m.id = r.message_id WHERE r.id = $1",
                                       [.int(out[i].oldestRecipientId)]).first {
                    out[i].oldestMessageId = try r.text(0)
                    out[i].oldestAge = max(0, (now.timeIntervalSince1970 - (try r.double(1))) * 1000).rounded() / 1000
                }
            }
            return out.sorted { ($0.total, $1.key) > ($1.total, $0.key) }
        }
    }

    /// A page of waiting recipients matching `selector` in recipient id order after `after`.
    /// - Returns: the rows and whether more may follow.
    /// - Throws: `PostgreSQLError`.
    public func waitingRecipients(_ selector: RecipientSelector, after: Int64, limit: Int) throws -> (rows: [WaitingRecipient], more: Bool) {
        let (ids, more) = try selectWaiting(selector, after: after, limit: limit)
        guard !ids.isEmpty else { return ([], more) }
        let rows = try pool.withConnection { c in
            try c.query("""
                SELECT r.id, r.message_id, r.address, r.domain, r.state, r.attempts, r.pool, m.reverse_path, m.received_at,
                       r.next_attempt_at, r.ip, r.last_code, r.last_enhanced, r.last_text
                FROM recipients r JOIN messages m ON m.id = r.message_id WHERE r.id = ANY($1::bigint[]) ORDER BY r.id
                """, [.text(Self.array(ids))]).map { s -> WaitingRecipient in
                let reply = try Self.reply(s, 11)?.description
                return WaitingRecipient(recipientId: try s.int(0), messageId: try s.text(1), address: try s.text(2), domain: try s.text(3),
                                        state: RecipientState(rawValue: try s.text(4)) ?? .queued, attempts: Int(try s.int(5)), pool: try s.text(6),
                                        sender: try s.text(7), receivedAt: try s.double(8), nextAttemptAt: try s.optionalDouble(9),
                                        sendingIp: try s.optionalText(10), lastReply: reply)
            }
        }
        return (rows, more)
    }

    /// How many recipients `selector` matches now.
    /// - Throws: `PostgreSQLError`.
    public func countWaiting(_ selector: RecipientSelector) throws -> Int {
        guard let (condition, binds) = Self.condition(selector) else { return 0 }
        return try pool.withConnection { c in
            Int(try c.query("SELECT COUNT(*) FROM recipients r WHERE \(condition)", binds).first?.int(0) ?? 0)
        }
    }

    /// The ids of up to `limit` recipients matching `selector` after `after`, in id order.
    /// - Returns: the ids and whether more may follow.
    func selectWaiting(_ selector: RecipientSelector, after: Int64, limit: Int) throws -> (ids: [Int64], more: Bool) {
        guard limit > 0, let (condition, binds) = Self.condition(selector) else { return ([], false) }
        let n = binds.count
        let ids = try pool.withConnection { c in
            try c.query("SELECT r.id FROM recipients r WHERE \(condition) AND r.id > $\(n + 1) ORDER BY r.id LIMIT $\(n + 2)",
                        binds + [.int(after), .int(Int64(limit) + 1)]).map { try $0.int(0) }
        }
        return (Array(ids.prefix(limit)), ids.count > limit)
    }

    /// `selector` as a `WHERE` condition on `recipients r` with its parameters; nil when it can
    /// match nothing (no state, or a provider without domains).
    static func condition(_ s: RecipientSelector) -> (String, [PostgreSQLValue])? {
        let states = RecipientState.waiting.filter { s.states.contains($0) }
        guard !states.isEmpty, s.domains.map({ !$0.isEmpty }) ?? true else { return nil }
        var binds: [PostgreSQLValue] = []
        func bind(_ v: PostgreSQLValue) -> String { binds.append(v); return "$\(binds.count)" }
        var conditions = ["r.state = ANY(\(bind(.text(array(states.map(\.rawValue)))))::text[])"]
        if !s.recipientIDs.isEmpty || !s.messageIDs.isEmpty {
            conditions.append("(r.id = ANY(\(bind(.text(array(s.recipientIDs))))::bigint[]) OR r.message_id = ANY(\(bind(.text(array(s.messageIDs))))::text[]))")
        }
        if let domains = s.domains { conditions.append("r.domain = ANY(\(bind(.text(array(domains))))::text[])") }
        if let pool = s.pool { conditions.append("r.pool = \(bind(.text(pool)))") }
        if let tenant = s.tenant {
            // Through the tenant's open messages (the partial index `messages_tenant_open`).
            conditions.append("r.message_id IN (SELECT id FROM messages WHERE tenant = \(bind(.text(tenant))) AND open_recipients > 0)")
        }
        if let ip = s.sendingIP {
            conditions.append(ip == "-" ? "r.ip IS NULL" : "r.ip = \(bind(.text(ip)))")
        }
        if let sender = s.sender {
            if sender == "<>" || sender.isEmpty {
                conditions.append("EXISTS(SELECT 1 FROM messages m WHERE m.id = r.message_id AND m.reverse_path = '')")
            } else if sender.contains("@") {
                conditions.append("EXISTS(SELECT 1 FROM messages m WHERE m.id = r.message_id AND lower(m.reverse_path) = lower(\(bind(.text(sender)))::text))")
            } else {
                let escaped = sender.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "%", with: "\\%")
                    .replacingOccurrences(of: "_", with: "\\_")
                conditions.append("EXISTS(SELECT 1 FROM messages m WHERE m.id = r.message_id AND m.reverse_path ILIKE \(bind(.text("%@" + escaped)))::text ESCAPE '\\')")
            }
        }
        return (conditions.joined(separator: " AND "), binds)
    }

    /// Applies `action` to every recipient `selector` matches, in transactions of `batchSize`
    /// recipients (see `SQLiteQueueStore.applyQueueAction`).
    /// - Returns: recipients selected, recipients changed and the transactions it took.
    /// - Throws: `PostgreSQLError`; the batches before the failing one stay applied.
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

    /// One batch of `applyQueueAction` in one durable transaction. - Returns: recipients changed.
    func applyQueueBatch(_ action: QueueAction, ids: [Int64], states: [RecipientState], by operatorName: String, target: String, note: String?,
                         now: Date) throws -> Int {
        let t: PostgreSQLValue = .double(now.timeIntervalSince1970)
        let idList: PostgreSQLValue = .text(Self.array(ids.sorted()))
        let stateList: PostgreSQLValue = .text(Self.array(states.map(\.rawValue)))
        let events = reportingInstalled.snapshot
        return try pool.transaction { c in
            // The state trigger stamps this transaction's events with the operator.
            try c.query("SELECT set_config('hato.operator', $1, true), set_config('hato.target', $2, true), set_config('hato.note', $3, true)",
                        [.text(operatorName), .text(target), .text(note ?? "")])
            var changed = 0
            var closed: [String: Int] = [:]
            switch action {
            case .hold:
                changed = try c.run("UPDATE recipients SET state = 'held', updated_at = $1 WHERE id = ANY($2::bigint[]) AND state = ANY($3::text[])",
                                    [t, idList, stateList])
            case .release:
                changed = try c.run("""
                    UPDATE recipients SET state = 'queued', next_attempt_at = $1, updated_at = $1 WHERE id = ANY($2::bigint[]) AND state = ANY($3::text[])
                    """, [t, idList, stateList])
            case .flush:
                let flushed = try c.query("""
                    UPDATE recipients SET next_attempt_at = $1, updated_at = $1 WHERE id = ANY($2::bigint[]) AND state = ANY($3::text[])
                      AND (next_attempt_at IS NULL OR next_attempt_at > $1) RETURNING id
                    """, [t, idList, stateList]).map { try $0.int(0) }
                changed = flushed.count
                if events && !flushed.isEmpty {
                    // A flush changes no state, so no trigger records it.
                    try c.run("""
                        INSERT INTO recipient_events(kind, message_id, recipient_id, address, code, enhanced, text, node, ip, mx, attempts,
                                                     next_attempt_at, at, operator, detail, note)
                        SELECT 'flushed', message_id, id, address, last_code, last_enhanced, last_text, node, ip, mx, attempts, next_attempt_at, updated_at,
                               $2, $3, NULLIF($4, '')
                        FROM recipients WHERE id = ANY($1::bigint[]) ORDER BY id
                        """, [.text(Self.array(flushed.sorted())), .text(operatorName), .text(target), .text(note ?? "")])
                }
            case .delete:
                for r in try c.query("""
                    UPDATE recipients SET state = 'deleted', next_attempt_at = NULL, updated_at = $1 WHERE id = ANY($2::bigint[]) AND state = ANY($3::text[])
                    RETURNING message_id
                    """, [t, idList, stateList]) { closed[try r.text(0), default: 0] += 1 }
            case .bounce:
                let text = String(("bounced by operator \(operatorName)" + (note.map { $0.isEmpty ? "" : ": " + $0 } ?? "")).prefix(512))
                for r in try c.query("""
                    UPDATE recipients SET state = 'failed', next_attempt_at = NULL, last_code = 550, last_enhanced = '5.0.0', last_text = $4, updated_at = $1
                    WHERE id = ANY($2::bigint[]) AND state = ANY($3::text[]) RETURNING message_id
                    """, [t, idList, stateList, .text(text)]) { closed[try r.text(0), default: 0] += 1 }
            }
            if !closed.isEmpty {
                try Self.closeRecipients(closed, on: c)
                changed = closed.values.reduce(0, +)
            }
            return changed
        }
    }

    /// Records an operator's action that concerns no recipient as an event (nothing without
    /// the reporting triggers, as in the SQLite store).
    /// - Throws: `PostgreSQLError`.
    public func recordOperatorEvent(_ kind: DeliveryEventKind, by operatorName: String, target: String, note: String?, now: Date) throws {
        guard reportingInstalled.snapshot else { return }
        try pool.transaction { c in
            try c.run("INSERT INTO recipient_events(kind, message_id, at, operator, detail, note) VALUES($1, '', $2, $3, $4, $5)",
                      [.text(kind.rawValue), .double(now.timeIntervalSince1970), .text(operatorName), .text(target), note.map { .text($0) } ?? .null])
        }
    }
}
