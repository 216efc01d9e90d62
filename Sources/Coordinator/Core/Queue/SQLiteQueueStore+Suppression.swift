import Foundation
import HatoConfig
import SMTPCore

/// One suppression list entry: an address that is not tried again.
public struct SuppressionEntry: Codable, Sendable, Equatable {
    /// The recipient address, lower-cased.
    public var address: String
    /// The sender domain the entry applies to; nil for every sender (global).
    public var scope: String?
    /// The bounce category that added it (`bad-mailbox`, `bad-domain`), nil for operator entries.
    public var category: String?
    /// Why: the remote reply, or the operator's note.
    public var reason: String?
    /// `bounce` (added automatically) or `operator` (API/CLI).
    public var source: String
    /// The message whose bounce added it, if any.
    public var messageID: String?
    /// When it was added (seconds since 1970).
    public var createdAt: Double
    /// When it stops applying (seconds since 1970); nil for never.
    public var expiresAt: Double?

    /// Creates an entry (address and scope are lower-cased).
    public init(address: String, scope: String? = nil, category: String? = nil, reason: String? = nil, source: String,
                messageID: String? = nil, createdAt: Double, expiresAt: Double? = nil) {
        self.address = address.lowercased(); self.scope = scope?.lowercased(); self.category = category; self.reason = reason
        self.source = source; self.messageID = messageID; self.createdAt = createdAt; self.expiresAt = expiresAt
    }
}

extension SQLiteQueueStore {
    /// Whether mail from `sender` to `recipient` is suppressed now.
    ///
    /// An entry applies when it is unexpired and global, or scoped to the sender's domain;
    /// with `scope: global` configured every entry for the address applies.
    /// - Parameters:
    ///   - recipient: the forward-path (case-insensitive).
    ///   - sender: the reverse-path ("" for `<>`).
    ///   - scope: the configured `suppression.scope`.
    ///   - now: the current time.
    /// - Throws: `SQLiteError`.
    public func isSuppressed(recipient: String, sender: String, scope: SuppressionSettings.Scope, now: Date) throws -> Bool {
        try lock.withLock {
            var sql = "SELECT 1 FROM suppressions WHERE address=? AND (expires_at IS NULL OR expires_at > ?)"
            var binds: [SQLiteStatement.Value] = [.text(recipient.lowercased()), .double(now.timeIntervalSince1970)]
            if scope == .senderDomain {
                sql += " AND (scope = '' OR scope = ?)"
                binds.append(.text(Queue.senderDomain(of: sender)))
            }
            return try !db.prepare(sql + " LIMIT 1").query(binds) { _ in 1 }.isEmpty
        }
    }

    /// Adds or replaces entries (same address and scope).
    /// - Throws: `SQLiteError`.
    public func addSuppressions(_ entries: [SuppressionEntry]) throws {
        try lock.withLock { try db.transaction { try insertSuppressions(entries) } }
    }

    /// Inserts entries; the caller holds the lock inside a transaction.
    func insertSuppressions(_ entries: [SuppressionEntry]) throws {
        let ins = try db.prepare("""
            INSERT OR REPLACE INTO suppressions(address, scope, category, reason, source, message_id, created_at, expires_at) VALUES(?,?,?,?,?,?,?,?)
            """)
        for e in entries {
            try ins.run([.text(e.address.lowercased()), .text(e.scope?.lowercased() ?? ""), e.category.map { .text($0) } ?? .null,
                         e.reason.map { .text(String($0.prefix(512))) } ?? .null, .text(e.source), e.messageID.map { .text($0) } ?? .null,
                         .double(e.createdAt), e.expiresAt.map { .double($0) } ?? .null])
        }
    }

    /// Removes entries for `address`.
    /// - Parameters:
    ///   - address: the recipient (case-insensitive).
    ///   - scope: nil removes every scope; `""` only the global entry; a domain only that domain's entry.
    /// - Returns: how many entries were removed.
    /// - Throws: `SQLiteError`.
    @discardableResult
    public func removeSuppression(address: String, scope: String?) throws -> Int {
        try lock.withLock {
            try db.transaction {
                if let scope {
                    try db.prepare("DELETE FROM suppressions WHERE address=? AND scope=?").run([.text(address.lowercased()), .text(scope.lowercased())])
                } else {
                    try db.prepare("DELETE FROM suppressions WHERE address=?").run([.text(address.lowercased())])
                }
                return db.changes
            }
        }
    }

    /// Unexpired entries, newest first; with `address`, only that address.
    /// - Throws: `SQLiteError`.
    public func suppressions(address: String?, now: Date, limit: Int) throws -> [SuppressionEntry] {
        try lock.withLock {
            let filter = address == nil ? "" : "address = ? AND "
            var binds: [SQLiteStatement.Value] = address.map { [.text($0.lowercased())] } ?? []
            binds += [.double(now.timeIntervalSince1970), .int(Int64(limit))]
            return try db.prepare("""
                SELECT address, scope, category, reason, source, message_id, created_at, expires_at FROM suppressions
                WHERE \(filter)(expires_at IS NULL OR expires_at > ?) ORDER BY created_at DESC, address LIMIT ?
                """).query(binds) { s in
                SuppressionEntry(address: s.text(0), scope: s.text(1).isEmpty ? nil : s.text(1), category: s.optionalText(2), reason: s.optionalText(3),
                                 source: s.text(4), messageID: s.optionalText(5), createdAt: s.double(6), expiresAt: s.isNull(7) ? nil : s.double(7))
            }
        }
    }

    /// Unexpired entries scoped to one of `scopes`, newest first (one address with `address`).
    /// - Throws: `SQLiteError`.
    public func suppressions(scopes: [String], address: String?, now: Date, limit: Int) throws -> [SuppressionEntry] {
        guard !scopes.isEmpty else { return [] }
        return try lock.withLock {
            let filter = address == nil ? "" : "address = ? AND "
            var binds: [SQLiteStatement.Value] = address.map { [.text($0.lowercased())] } ?? []
            binds += scopes.map { .text($0.lowercased()) }
            binds += [.double(now.timeIntervalSince1970), .int(Int64(limit))]
            return try db.prepare("""
                SELECT address, scope, category, reason, source, message_id, created_at, expires_at FROM suppressions
                WHERE \(filter)scope IN (\(Array(repeating: "?", count: scopes.count).joined(separator: ",")))
                  AND (expires_at IS NULL OR expires_at > ?) ORDER BY created_at DESC, address LIMIT ?
                """).query(binds) { s in
                SuppressionEntry(address: s.text(0), scope: s.text(1).isEmpty ? nil : s.text(1), category: s.optionalText(2), reason: s.optionalText(3),
                                 source: s.text(4), messageID: s.optionalText(5), createdAt: s.double(6), expiresAt: s.isNull(7) ? nil : s.double(7))
            }
        }
    }

    /// Deletes entries past their expiry.
    /// - Returns: how many were deleted.
    @discardableResult
    public func purgeExpiredSuppressions(now: Date) throws -> Int {
        try lock.withLock {
            try db.prepare("DELETE FROM suppressions WHERE expires_at IS NOT NULL AND expires_at <= ?").run([.double(now.timeIntervalSince1970)])
            return db.changes
        }
    }

    /// Unexpired entries in total (for metrics).
    public func suppressionCount(now: Date) throws -> Int {
        try lock.withLock {
            try db.prepare("SELECT COUNT(*) FROM suppressions WHERE expires_at IS NULL OR expires_at > ?")
                .query([.double(now.timeIntervalSince1970)]) { Int($0.int(0)) }.first ?? 0
        }
    }

    /// Makes `enqueue` mark listed recipients `suppressed` in the same transaction, without a
    /// delivery attempt (`suppression.mode: mark_suppressed`), or stops doing so (`nil`).
    ///
    /// Implemented as a TEMP trigger on `recipients` inserts, so every path that queues
    /// recipients is covered and the check is atomic with the write. The recipient gets
    /// `550 5.1.1 recipient address is on the suppression list` as its last reply; its
    /// message's open count is decremented as for any final recipient.
    /// - Throws: `SQLiteError`.
    public func configureSuppressionAtEnqueue(scope: SuppressionSettings.Scope?) throws {
        // The sender domain is the text after the last '@' of the reverse-path: rtrim removes
        // every trailing character that is not '@', so its length is the position of that '@'.
        let senderDomain = "(SELECT lower(substr(reverse_path, length(rtrim(reverse_path, replace(reverse_path, '@', ''))) + 1)) FROM messages WHERE id = NEW.message_id)"
        let scopeCondition = scope == .senderDomain ? "AND (s.scope = '' OR s.scope = \(senderDomain))" : ""
        try lock.withLock {
            try db.execute("DROP TRIGGER IF EXISTS temp.hato_suppress_at_enqueue")
            guard scope != nil else { return }
            try db.execute("""
                CREATE TEMP TRIGGER hato_suppress_at_enqueue AFTER INSERT ON recipients
                WHEN NEW.state = 'queued' AND EXISTS(SELECT 1 FROM suppressions s WHERE s.address = lower(NEW.address)
                  AND (s.expires_at IS NULL OR s.expires_at > NEW.updated_at) \(scopeCondition)) BEGIN
                  UPDATE recipients SET state='suppressed', next_attempt_at=NULL, last_code=550, last_enhanced='5.1.1',
                    last_text='recipient address is on the suppression list' WHERE id = NEW.id;
                  UPDATE messages SET open_recipients = open_recipients - 1 WHERE id = NEW.message_id;
                END;
                """)
        }
    }
}
