import Foundation
import HatoConfig

// Membership, backoffs, pauses and suppressions on PostgreSQL: the SQL of the SQLite store's
// extensions of the same names, with PostgreSQL's upsert (`ON CONFLICT … DO UPDATE`) for
// SQLite's `INSERT OR REPLACE`.
extension PostgreSQLQueueStore {
    // MARK: Membership

    /// Nodes an operator has put into drain.
    /// - Throws: `PostgreSQLError`.
    public func drainingNodes() throws -> Set<String> {
        try pool.withConnection { c in Set(try c.query("SELECT node FROM node_admin WHERE draining = 1").map { try $0.text(0) }) }
    }

    /// Records that `node` is (or is no longer) draining.
    /// - Throws: `PostgreSQLError`.
    public func setDraining(_ node: String, _ draining: Bool, now: Date) throws {
        try pool.transaction { c in
            try c.run("""
                INSERT INTO node_admin(node, draining, updated_at) VALUES($1, $2, $3)
                ON CONFLICT(node) DO UPDATE SET draining = excluded.draining, updated_at = excluded.updated_at
                """, [.text(node), .int(draining ? 1 : 0), .double(now.timeIntervalSince1970)])
        }
    }

    /// The owner of each sending IP as last stored (sending IP → node).
    /// - Throws: `PostgreSQLError`.
    public func ipOwners() throws -> [String: String] {
        try pool.withConnection { c in
            Dictionary(try c.query("SELECT ip, node FROM ip_owners").map { (try $0.text(0), try $0.text(1)) }, uniquingKeysWith: { a, _ in a })
        }
    }

    /// Replaces the stored owners with `owners` (unowned IPs absent), in one transaction.
    /// - Throws: `PostgreSQLError`.
    public func saveIPOwners(_ owners: [String: String]) throws {
        try pool.transaction { c in
            try fence(c)
            try c.run("DELETE FROM ip_owners")
            let sorted = owners.sorted { $0.key < $1.key }
            guard !sorted.isEmpty else { return }
            try c.run("INSERT INTO ip_owners(ip, node) SELECT * FROM unnest($1::text[], $2::text[])",
                      [.text(Self.array(sorted.map(\.key))), .text(Self.array(sorted.map(\.value)))])
        }
    }

    // MARK: Backoffs and pauses

    /// Records (or replaces) an active backoff.
    /// - Throws: `PostgreSQLError`.
    public func saveBackoff(_ e: BackoffTable.Entry) throws {
        try pool.transaction { c in
            try c.run("""
                INSERT INTO backoffs(ip, provider, action, until, rate, reason) VALUES($1, $2, $3, $4, $5, $6)
                ON CONFLICT(ip, provider) DO UPDATE SET action = excluded.action, until = excluded.until, rate = excluded.rate, reason = excluded.reason
                """, [.text(e.sendingIP), .text(e.provider), .text(e.action.rawValue), .double(e.until),
                      e.ratePerMinute.map { .int(Int64($0)) } ?? .null, .text(e.reason)])
        }
    }

    /// Forgets a backoff (lifted or expired).
    /// - Throws: `PostgreSQLError`.
    public func deleteBackoff(ip: String, provider: String) throws {
        try pool.transaction { c in try c.run("DELETE FROM backoffs WHERE ip = $1 AND provider = $2", [.text(ip), .text(provider)]) }
    }

    /// Backoffs still active at `now` (expired rows are deleted).
    /// - Throws: `PostgreSQLError`.
    public func activeBackoffs(now: Date) throws -> [BackoffTable.Entry] {
        try pool.transaction { c in
            try c.run("DELETE FROM backoffs WHERE until <= $1", [.double(now.timeIntervalSince1970)])
            return try c.query("SELECT ip, provider, action, until, rate, reason FROM backoffs ORDER BY ip, provider").map {
                BackoffTable.Entry(sendingIP: try $0.text(0), provider: try $0.text(1), action: BackoffRule.Action(rawValue: try $0.text(2)) ?? .suspend,
                                   until: try $0.double(3), ratePerMinute: try $0.optionalInt(4).map { Int($0) }, reason: try $0.text(5))
            }
        }
    }

    /// Records (or replaces) a pause.
    /// - Throws: `PostgreSQLError`.
    public func savePause(_ p: Pause) throws {
        try pool.transaction { c in
            try c.run("""
                INSERT INTO pauses(kind, name, by, reason, at) VALUES($1, $2, $3, $4, $5)
                ON CONFLICT(kind, name) DO UPDATE SET by = excluded.by, reason = excluded.reason, at = excluded.at
                """, [.text(p.target.kind.rawValue), .text(p.target.name), .text(p.by), .text(p.reason), .double(p.at)])
        }
    }

    /// Forgets a pause. - Returns: whether one was stored.
    /// - Throws: `PostgreSQLError`.
    @discardableResult
    public func deletePause(_ target: PauseTarget) throws -> Bool {
        try pool.transaction { c in
            try c.run("DELETE FROM pauses WHERE kind = $1 AND name = $2", [.text(target.kind.rawValue), .text(target.name)]) > 0
        }
    }

    /// Every stored pause, by kind and name.
    /// - Throws: `PostgreSQLError`.
    public func pauses() throws -> [Pause] {
        try pool.withConnection { c in
            try c.query("SELECT kind, name, by, reason, at FROM pauses ORDER BY kind COLLATE \"C\", name COLLATE \"C\"").map {
                Pause(target: PauseTarget(kind: PauseTarget.Kind(rawValue: try $0.text(0)) ?? .provider, name: try $0.text(1)), by: try $0.text(2),
                      reason: try $0.text(3), at: try $0.double(4))
            }
        }
    }

    // MARK: Suppression

    /// Whether mail from `sender` to `recipient` is suppressed now (see `SQLiteQueueStore.isSuppressed`).
    /// - Throws: `PostgreSQLError`.
    public func isSuppressed(recipient: String, sender: String, scope: SuppressionSettings.Scope, now: Date) throws -> Bool {
        try pool.withConnection { c in
            var sql = "SELECT 1 FROM suppressions WHERE address = $1 AND (expires_at IS NULL OR expires_at > $2)"
            var binds: [PostgreSQLValue] = [.text(recipient.lowercased()), .double(now.timeIntervalSince1970)]
            if scope == .senderDomain {
                sql += " AND (scope = '' OR scope = $3)"
                binds.append(.text(Queue.senderDomain(of: sender)))
            }
            return !(try c.query(sql + " LIMIT 1", binds).isEmpty)
        }
    }

    /// Adds or replaces entries (same address and scope).
    /// - Throws: `PostgreSQLError`.
    public func addSuppressions(_ entries: [SuppressionEntry]) throws {
        try pool.transaction { c in try Self.insertSuppressions(entries, on: c) }
    }

    static func insertSuppressions(_ entries: [SuppressionEntry], on c: PostgreSQLConnection) throws {
        for e in entries {
            try c.run("""
                INSERT INTO suppressions(address, scope, category, reason, source, message_id, created_at, expires_at) VALUES($1, $2, $3, $4, $5, $6, $7, $8)
                ON CONFLICT(address, scope) DO UPDATE SET category = excluded.category, reason = excluded.reason, source = excluded.source,
                  message_id = excluded.message_id, created_at = excluded.created_at, expires_at = excluded.expires_at
                """, [.text(e.address.lowercased()), .text(e.scope?.lowercased() ?? ""), e.category.map { .text($0) } ?? .null,
                      e.reason.map { .text(String($0.prefix(512))) } ?? .null, .text(e.source), e.messageID.map { .text($0) } ?? .null,
                      .double(e.createdAt), e.expiresAt.map { .double($0) } ?? .null])
        }
    }

    /// Removes entries for `address` (scope nil: every scope; `""`: the global one).
    /// - Returns: how many entries were removed.
    /// - Throws: `PostgreSQLError`.
    @discardableResult
    public func removeSuppression(address: String, scope: String?) throws -> Int {
        try pool.transaction { c in
            if let scope {
                return try c.run("DELETE FROM suppressions WHERE address = $1 AND scope = $2", [.text(address.lowercased()), .text(scope.lowercased())])
            }
            return try c.run("DELETE FROM suppressions WHERE address = $1", [.text(address.lowercased())])
        }
    }

    /// Unexpired entries, newest first; with `address`, only that address.
    /// - Throws: `PostgreSQLError`.
    public func suppressions(address: String?, now: Date, limit: Int) throws -> [SuppressionEntry] {
        try pool.withConnection { c in
            var binds: [PostgreSQLValue] = [.double(now.timeIntervalSince1970), .int(Int64(limit))]
            var filter = ""
            if let address {
                filter = "address = $3 AND "
                binds.append(.text(address.lowercased()))
            }
            return try c.query("""
                SELECT address, scope, category, reason, source, message_id, created_at, expires_at FROM suppressions
                WHERE \(filter)(expires_at IS NULL OR expires_at > $1) ORDER BY created_at DESC, address COLLATE "C" LIMIT $2
                """, binds).map { s in
                let scope = try s.text(1)
                return SuppressionEntry(address: try s.text(0), scope: scope.isEmpty ? nil : scope, category: try s.optionalText(2),
                                        reason: try s.optionalText(3), source: try s.text(4), messageID: try s.optionalText(5),
                                        createdAt: try s.double(6), expiresAt: try s.optionalDouble(7))
            }
        }
    }

    /// Unexpired entries scoped to one of `scopes`, newest first (one address with `address`).
    /// - Throws: `PostgreSQLError`.
    public func suppressions(scopes: [String], address: String?, now: Date, limit: Int) throws -> [SuppressionEntry] {
        guard !scopes.isEmpty else { return [] }
        return try pool.withConnection { c in
            var binds: [PostgreSQLValue] = [.double(now.timeIntervalSince1970), .int(Int64(limit)), .text(Self.array(scopes.map { $0.lowercased() }))]
            var filter = ""
            if let address {
                filter = "address = $4 AND "
                binds.append(.text(address.lowercased()))
            }
            return try c.query("""
                SELECT address, scope, category, reason, source, message_id, created_at, expires_at FROM suppressions
                WHERE \(filter)scope = ANY($3::text[]) AND (expires_at IS NULL OR expires_at > $1) ORDER BY created_at DESC, address COLLATE "C" LIMIT $2
                """, binds).map { s in
                let scope = try s.text(1)
                return SuppressionEntry(address: try s.text(0), scope: scope.isEmpty ? nil : scope, category: try s.optionalText(2),
                                        reason: try s.optionalText(3), source: try s.text(4), messageID: try s.optionalText(5),
                                        createdAt: try s.double(6), expiresAt: try s.optionalDouble(7))
            }
        }
    }

    /// Deletes entries past their expiry. - Returns: how many were deleted.
    /// - Throws: `PostgreSQLError`.
    @discardableResult
    public func purgeExpiredSuppressions(now: Date) throws -> Int {
        try pool.transaction { c in
            try c.run("DELETE FROM suppressions WHERE expires_at IS NOT NULL AND expires_at <= $1", [.double(now.timeIntervalSince1970)])
        }
    }

    /// Unexpired entries in total (for metrics).
    /// - Throws: `PostgreSQLError`.
    public func suppressionCount(now: Date) throws -> Int {
        try pool.withConnection { c in
            Int(try c.query("SELECT COUNT(*) FROM suppressions WHERE expires_at IS NULL OR expires_at > $1", [.double(now.timeIntervalSince1970)])
                .first?.int(0) ?? 0)
        }
    }

    /// Makes `enqueue` (and DSNs queued by `commitDSN`) mark listed recipients `suppressed` in
    /// the same transaction, or stops doing so (`nil`). This store's setting, not the database's:
    /// each coordinator applies its own `suppression.mode`.
    public func configureSuppressionAtEnqueue(scope: SuppressionSettings.Scope?) throws {
        suppressAtEnqueue.withLock { $0 = scope }
    }
}
