import Foundation

// The tenant layer's counts, idempotency records and event log on PostgreSQL (issue 16).
//
// A reservation is atomic across coordinators: one statement adds the messages to the three
// windows' rows (`INSERT … ON CONFLICT DO UPDATE`, which locks each row, always in the order
// hour, day, month, so two reservations never deadlock) and returns the new counts; when one
// passes its limit the transaction is rolled back. A second coordinator's reservation of the
// same tenant waits on the row locks and then adds to the committed count, so a limit is never
// passed however many race.

extension PostgreSQLQueueStore {
    /// Rolls a reservation back with the refusal it found.
    private struct OverLimit: Error { let decision: QuotaDecision }

    /// Counts `messages` in the tenant's hour, day and month at `now`, unless that would pass a
    /// limit (then nothing is counted). Windows without a limit are counted too.
    ///
    /// Committed with `synchronous_commit = off`: visible to every coordinator at once, and made
    /// durable by the synced commit of the message it is for, which flushes the WAL up to its
    /// own record, past this one (as on SQLite: the count is durable whenever its message is).
    /// - Returns: `.reserved`, or `.overLimit` naming the first full window (hour, day, month).
    /// - Throws: `PostgreSQLError` (nothing counted).
    public func reserveQuota(tenant: String, limits: TenantLimits, messages: Int, now: Date) throws -> QuotaDecision {
        guard messages > 0 else { return .reserved }
        let windows = TenantWindows(now)
        do {
            return try pool.transaction { c in
                try c.run("SET LOCAL synchronous_commit = off")
                var counts: [String: Int] = [:]
                for r in try c.query("""
                    INSERT INTO tenant_usage(tenant, time_window, count) SELECT $1, w, $2 FROM unnest($3::text[]) WITH ORDINALITY AS u(w, i) ORDER BY u.i
                    ON CONFLICT(tenant, time_window) DO UPDATE SET count = tenant_usage.count + excluded.count
                    RETURNING time_window, count
                    """, [.text(tenant), .int(Int64(messages)), .text(Self.array(windows.all.map(\.key)))]) {
                    counts[try r.text(0)] = Int(try r.int(1))
                }
                // The counts now include this reservation: the check is on what was there before.
                let before = counts.mapValues { $0 - messages }
                if let refusal = windows.decision(counts: before, adding: messages, limits: limits, now: now) { throw OverLimit(decision: refusal) }
                return .reserved
            }
        } catch let over as OverLimit {
            return over.decision
        }
    }

    /// Takes `messages` back from the windows that held `at` (never below zero).
    /// - Throws: `PostgreSQLError`.
    public func releaseQuota(tenant: String, messages: Int, reservedAt at: Date) throws {
        guard messages > 0 else { return }
        let keys = TenantWindows(at).all.map(\.key)
        try pool.transaction { c in
            try c.run("SET LOCAL synchronous_commit = off")
            try c.run("UPDATE tenant_usage SET count = GREATEST(count - $1, 0) WHERE tenant = $2 AND time_window = ANY($3::text[])",
                      [.int(Int64(messages)), .text(tenant), .text(Self.array(keys))])
        }
    }

    /// The tenant's counts in the hour, day and month holding `now`. - Throws: `PostgreSQLError`.
    public func usage(tenant: String, now: Date) throws -> TenantUsage {
        let windows = TenantWindows(now)
        let counts = try pool.withConnection { c in
            Dictionary(try c.query("SELECT time_window, count FROM tenant_usage WHERE tenant = $1 AND time_window = ANY($2::text[])",
                                   [.text(tenant), .text(Self.array(windows.all.map(\.key)))]).map { (try $0.text(0), Int(try $0.int(1))) },
                       uniquingKeysWith: { a, _ in a })
        }
        return TenantUsage(hour: counts[windows.hour.key] ?? 0, day: counts[windows.day.key] ?? 0, month: counts[windows.month.key] ?? 0)
    }

    // MARK: Idempotency

    /// Records `m`'s idempotency key inside the caller's transaction, unless the key is recorded
    /// already (the first record stays; a duplicate never fails the batch).
    static func recordIdempotency(of m: NewMessage, on c: PostgreSQLConnection) throws {
        guard let r = m.idempotency else { return }
        try c.run("""
            INSERT INTO idempotency_keys(tenant, key, request_hash, message_id, created_at) VALUES($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING
            """, [.text(r.tenant), .text(r.key), .text(r.requestHash), .text(r.messageID), .double(r.createdAt)])
    }

    /// The record of an earlier request with `key`, nil when none. - Throws: `PostgreSQLError`.
    public func idempotencyRecord(tenant: String, key: String) throws -> IdempotencyRecord? {
        try pool.withConnection { c in
            try c.query("SELECT tenant, key, request_hash, message_id, created_at FROM idempotency_keys WHERE tenant = $1 AND key = $2",
                        [.text(tenant), .text(key)]).first.map {
                IdempotencyRecord(tenant: try $0.text(0), key: try $0.text(1), requestHash: try $0.text(2), messageID: try $0.text(3), createdAt: try $0.double(4))
            }
        }
    }

    // MARK: Events

    /// Copies the events among `seqs` of tenants' messages into the tenant event log, in event
    /// order (`TenantWindows.eventKinds` only), inside `completeEvents`' fenced transaction and
    /// before it deletes them.
    static func copyTenantEvents(_ seqs: [Int64], on c: PostgreSQLConnection) throws {
        guard !seqs.isEmpty else { return }
        try c.run("""
            INSERT INTO tenant_events(tenant, kind, message_id, recipient, code, enhanced, text, mx, ip, at)
            SELECT COALESCE(m.tenant, e.tenant), e.kind, e.message_id, e.address, e.code, e.enhanced, e.text, e.mx, e.ip, e.at
            FROM recipient_events e LEFT JOIN messages m ON m.id = e.message_id
            WHERE e.seq = ANY($1::bigint[]) AND COALESCE(m.tenant, e.tenant) IS NOT NULL AND e.kind = ANY($2::text[])
            ORDER BY e.seq
            """, [.text(array(seqs.sorted())), .text(array(TenantWindows.eventKinds))])
    }

    private static let eventColumns = "id, tenant, kind, message_id, recipient, code, enhanced, text, mx, ip, at"

    private static func eventRow(_ s: PostgreSQLRow) throws -> TenantEvent {
        TenantEvent(id: try s.int(0), tenant: try s.text(1), kind: try s.text(2), messageID: try s.text(3), recipient: try s.optionalText(4),
                    code: try s.optionalInt(5).map { Int($0) }, enhanced: try s.optionalText(6), text: try s.optionalText(7), mx: try s.optionalText(8),
                    sendingIP: try s.optionalText(9), at: try s.double(10))
    }

    /// The tenant's events with an id above `after`, oldest first, at most `limit`. - Throws: `PostgreSQLError`.
    public func tenantEvents(tenant: String, after: Int64, limit: Int) throws -> [TenantEvent] {
        guard limit > 0 else { return [] }
        return try pool.withConnection { c in
            try c.query("SELECT \(Self.eventColumns) FROM tenant_events WHERE tenant = $1 AND id > $2 ORDER BY id LIMIT $3",
                        [.text(tenant), .int(after), .int(Int64(limit))]).map(Self.eventRow)
        }
    }

    /// The events of one message, oldest first. - Throws: `PostgreSQLError`.
    public func tenantEvents(messageID: String) throws -> [TenantEvent] {
        try pool.withConnection { c in
            try c.query("SELECT \(Self.eventColumns) FROM tenant_events WHERE message_id = $1 ORDER BY id", [.text(messageID)]).map(Self.eventRow)
        }
    }

    /// Deletes events older than `eventsBefore`, idempotency records older than
    /// `idempotencyBefore`, and the counts of hours, days and months that ended before the
    /// UTC month holding `now` began.
    /// - Returns: rows deleted. - Throws: `PostgreSQLError`.
    @discardableResult
    public func purgeTenantData(eventsBefore: Date, idempotencyBefore: Date, now: Date) throws -> Int {
        let windows = TenantWindows(now)
        return try pool.transaction { c in
            var n = try c.run("DELETE FROM tenant_events WHERE at < $1", [.double(eventsBefore.timeIntervalSince1970)])
            n += try c.run("DELETE FROM idempotency_keys WHERE created_at < $1", [.double(idempotencyBefore.timeIntervalSince1970)])
            n += try c.run("""
                DELETE FROM tenant_usage WHERE (time_window LIKE 'h:%' AND substr(time_window, 3)::bigint * 3600 < $1)
                  OR (time_window LIKE 'd:%' AND substr(time_window, 3)::bigint * 86400 < $1)
                  OR (time_window LIKE 'm:%' AND time_window COLLATE "C" < $2::text COLLATE "C")
                """, [.double(windows.monthStart), .text(windows.purgeMonthKey)])
            return n
        }
    }
}
