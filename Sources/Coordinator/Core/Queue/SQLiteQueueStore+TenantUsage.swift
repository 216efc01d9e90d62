import Foundation

// The tenant layer's counts, idempotency records and event log in the SQLite store (issue 16).
// A reservation reads and writes its three windows (`TenantWindows`) inside one transaction
// under the queue's lock, so two callers can never both take the last message of a limit.
// Idempotency records are written by `enqueue` (SQLiteQueueStore.swift) and the event log by
// `completeEvents` (SQLiteQueueStore+Reporting.swift), in their own transactions.

extension SQLiteQueueStore {
    /// The counts of `tenant` in `windows` by key (the caller holds the lock).
    private func usageCounts(_ tenant: String, _ windows: TenantWindows) throws -> [String: Int] {
        let get = try db.prepare("SELECT count FROM tenant_usage WHERE tenant=? AND time_window=?")
        var out: [String: Int] = [:]
        for w in windows.all { out[w.key] = try get.query([.text(tenant), .text(w.key)]) { Int($0.int(0)) }.first ?? 0 }
        return out
    }

    /// Counts `messages` in the tenant's hour, day and month at `now`, unless that would pass a
    /// limit (then nothing is counted). Windows without a limit are counted too.
    ///
    /// The commit does not wait for fsync (`processCrashSafe`): the message it is for is
    /// enqueued next with a synced commit, which makes every earlier WAL frame durable with it
    /// — so the count is on disk whenever its message is, and a count lost to a power cut
    /// belongs to a message that was not accepted either. (A synced reservation cost one fsync
    /// per message under the store's lock: 320 HTTP messages/s against 1500 by SMTP.)
    /// - Returns: `.reserved`, or `.overLimit` naming the first full window (hour, day, month).
    /// - Throws: `SQLiteError` (nothing counted).
    public func reserveQuota(tenant: String, limits: TenantLimits, messages: Int, now: Date) throws -> QuotaDecision {
        guard messages > 0 else { return .reserved }
        let windows = TenantWindows(now)
        return try lock.withLock {
            try db.transaction(durability: .processCrashSafe) {
                let counts = try usageCounts(tenant, windows)
                if let refusal = windows.decision(counts: counts, adding: messages, limits: limits, now: now) { return refusal }
                let add = try db.prepare("""
                    INSERT INTO tenant_usage(tenant, time_window, count) VALUES(?,?,?)
                    ON CONFLICT(tenant, time_window) DO UPDATE SET count = count + excluded.count
                    """)
                for w in windows.all { try add.run([.text(tenant), .text(w.key), .int(Int64(messages))]) }
                return .reserved
            }
        }
    }

    /// Takes `messages` back from the windows that held `at` (never below zero). Not synced
    /// either: a release lost to a power cut leaves a count one too high, never too low.
    /// - Throws: `SQLiteError`.
    public func releaseQuota(tenant: String, messages: Int, reservedAt at: Date) throws {
        guard messages > 0 else { return }
        let windows = TenantWindows(at)
        try lock.withLock {
            try db.transaction(durability: .processCrashSafe) {
                let take = try db.prepare("UPDATE tenant_usage SET count = MAX(count - ?, 0) WHERE tenant=? AND time_window=?")
                for w in windows.all { try take.run([.int(Int64(messages)), .text(tenant), .text(w.key)]) }
            }
        }
    }

    /// The tenant's counts in the hour, day and month holding `now`. - Throws: `SQLiteError`.
    public func usage(tenant: String, now: Date) throws -> TenantUsage {
        let windows = TenantWindows(now)
        let counts = try lock.withLock { try usageCounts(tenant, windows) }
        return TenantUsage(hour: counts[windows.hour.key] ?? 0, day: counts[windows.day.key] ?? 0, month: counts[windows.month.key] ?? 0)
    }

    // MARK: Idempotency

    /// Records `m`'s idempotency key, unless the key is recorded already (the first record
    /// stays; never fails the batch on a duplicate). The caller holds the lock in a transaction.
    static func recordIdempotency(of m: NewMessage, in db: SQLiteDatabase) throws {
        guard let r = m.idempotency else { return }
        try db.prepare("INSERT INTO idempotency_keys(tenant, key, request_hash, message_id, created_at) VALUES(?,?,?,?,?) ON CONFLICT DO NOTHING")
            .run([.text(r.tenant), .text(r.key), .text(r.requestHash), .text(r.messageID), .double(r.createdAt)])
    }

    /// The record of an earlier request with `key`, nil when none. - Throws: `SQLiteError`.
    public func idempotencyRecord(tenant: String, key: String) throws -> IdempotencyRecord? {
        try lock.withLock {
            try db.prepare("SELECT tenant, key, request_hash, message_id, created_at FROM idempotency_keys WHERE tenant=? AND key=?")
                .query([.text(tenant), .text(key)]) {
                    IdempotencyRecord(tenant: $0.text(0), key: $0.text(1), requestHash: $0.text(2), messageID: $0.text(3), createdAt: $0.double(4))
                }.first
        }
    }

    // MARK: Events

    /// Copies the events among `seqs` of tenants' messages into the tenant event log, in event
    /// order (`TenantWindows.eventKinds` only). The caller holds the lock in `completeEvents`'
    /// transaction, before it deletes them.
    func copyTenantEvents(_ seqs: [Int64]) throws {
        guard !seqs.isEmpty else { return }
        let list = "[" + seqs.sorted().map(String.init).joined(separator: ",") + "]"
        let kinds = "[" + TenantWindows.eventKinds.map { "\"\($0)\"" }.joined(separator: ",") + "]"
        try db.prepare("""
            INSERT INTO tenant_events(tenant, kind, message_id, recipient, code, enhanced, text, mx, ip, at)
            SELECT COALESCE(m.tenant, e.tenant), e.kind, e.message_id, e.address, e.code, e.enhanced, e.text, e.mx, e.ip, e.at
            FROM recipient_events e LEFT JOIN messages m ON m.id = e.message_id
            WHERE e.seq IN (SELECT value FROM json_each(?)) AND COALESCE(m.tenant, e.tenant) IS NOT NULL
              AND e.kind IN (SELECT value FROM json_each(?))
            ORDER BY e.seq
            """).run([.text(list), .text(kinds)])
    }

    private static let eventColumns = "id, tenant, kind, message_id, recipient, code, enhanced, text, mx, ip, at"

    private static func eventRow(_ s: SQLiteStatement) -> TenantEvent {
        TenantEvent(id: s.int(0), tenant: s.text(1), kind: s.text(2), messageID: s.text(3), recipient: s.optionalText(4),
                    code: s.isNull(5) ? nil : Int(s.int(5)), enhanced: s.optionalText(6), text: s.optionalText(7), mx: s.optionalText(8),
                    sendingIP: s.optionalText(9), at: s.double(10))
    }

    /// The tenant's events with an id above `after`, oldest first, at most `limit`. - Throws: `SQLiteError`.
    public func tenantEvents(tenant: String, after: Int64, limit: Int) throws -> [TenantEvent] {
        guard limit > 0 else { return [] }
        return try lock.withLock {
            try db.prepare("SELECT \(Self.eventColumns) FROM tenant_events WHERE tenant=? AND id>? ORDER BY id LIMIT ?")
                .query([.text(tenant), .int(after), .int(Int64(limit))], Self.eventRow)
        }
    }

    /// The events of one message, oldest first. - Throws: `SQLiteError`.
    public func tenantEvents(messageID: String) throws -> [TenantEvent] {
        try lock.withLock {
            try db.prepare("SELECT \(Self.eventColumns) FROM tenant_events WHERE message_id=? ORDER BY id").query([.text(messageID)], Self.eventRow)
        }
    }

    /// Deletes events older than `eventsBefore`, idempotency records older than
    /// `idempotencyBefore`, and the counts of hours, days and months that ended before the
    /// UTC month holding `now` began.
    /// - Returns: rows deleted. - Throws: `SQLiteError`.
    @discardableResult
    public func purgeTenantData(eventsBefore: Date, idempotencyBefore: Date, now: Date) throws -> Int {
        let windows = TenantWindows(now)
        let monthStart = windows.monthStart
        return try lock.withLock {
            try db.transaction {
                var n = 0
                try db.prepare("DELETE FROM tenant_events WHERE at < ?").run([.double(eventsBefore.timeIntervalSince1970)])
                n += db.changes
                try db.prepare("DELETE FROM idempotency_keys WHERE created_at < ?").run([.double(idempotencyBefore.timeIntervalSince1970)])
                n += db.changes
                try db.prepare("""
                    DELETE FROM tenant_usage WHERE (time_window LIKE 'h:%' AND CAST(substr(time_window, 3) AS INTEGER) * 3600 < ?1)
                      OR (time_window LIKE 'd:%' AND CAST(substr(time_window, 3) AS INTEGER) * 86400 < ?1)
                      OR (time_window LIKE 'm:%' AND time_window < ?2)
                    """).run([.double(monthStart), .text(windows.purgeMonthKey)])
                n += db.changes
                return n
            }
        }
    }
}
