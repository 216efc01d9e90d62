import Foundation
import HatoConfig

/// Active backoffs survive a coordinator restart: a provider that pushed back is not hit again at once.
extension SQLiteQueueStore {
    private func ensureBackoffTable() throws {
        try db.executeOnce("CREATE TABLE IF NOT EXISTS backoffs(ip TEXT NOT NULL, provider TEXT NOT NULL, action TEXT NOT NULL, until REAL NOT NULL, rate INTEGER, reason TEXT NOT NULL, PRIMARY KEY(ip, provider))")
    }

    /// Records (or replaces) an active backoff.
    /// - Throws: `SQLiteError`.
    public func saveBackoff(_ e: BackoffTable.Entry) throws {
        try lock.withLock {
            try ensureBackoffTable()
            try db.prepare("INSERT OR REPLACE INTO backoffs(ip, provider, action, until, rate, reason) VALUES(?,?,?,?,?,?)")
                .run([.text(e.sendingIP), .text(e.provider), .text(e.action.rawValue), .double(e.until), e.ratePerMinute.map { .int(Int64($0)) } ?? .null, .text(e.reason)])
        }
    }

    /// Forgets a backoff (lifted or expired).
    /// - Throws: `SQLiteError`.
    public func deleteBackoff(ip: String, provider: String) throws {
        try lock.withLock {
            try ensureBackoffTable()
            try db.prepare("DELETE FROM backoffs WHERE ip=? AND provider=?").run([.text(ip), .text(provider)])
        }
    }

    /// Backoffs still active at `now` (expired rows are deleted).
    /// - Throws: `SQLiteError`.
    public func activeBackoffs(now: Date) throws -> [BackoffTable.Entry] {
        try lock.withLock {
            try ensureBackoffTable()
            try db.prepare("DELETE FROM backoffs WHERE until <= ?").run([.double(now.timeIntervalSince1970)])
            return try db.prepare("SELECT ip, provider, action, until, rate, reason FROM backoffs").query([]) {
                BackoffTable.Entry(sendingIP: $0.text(0), provider: $0.text(1), action: BackoffRule.Action(rawValue: $0.text(2)) ?? .suspend,
                                   until: $0.double(3), ratePerMinute: $0.isNull(4) ? nil : Int($0.int(4)), reason: $0.text(5))
            }
        }
    }
}

/// Operator pauses survive a coordinator restart.
extension SQLiteQueueStore {
    private func ensurePauseTable() throws {
        try db.executeOnce("CREATE TABLE IF NOT EXISTS pauses(kind TEXT NOT NULL, name TEXT NOT NULL, by TEXT NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY(kind, name))")
    }

    /// Records (or replaces) a pause.
    /// - Throws: `SQLiteError`.
    public func savePause(_ p: Pause) throws {
        try lock.withLock {
            try ensurePauseTable()
            try db.prepare("INSERT OR REPLACE INTO pauses(kind, name, by, reason, at) VALUES(?,?,?,?,?)")
                .run([.text(p.target.kind.rawValue), .text(p.target.name), .text(p.by), .text(p.reason), .double(p.at)])
        }
    }

    /// Forgets a pause. - Returns: whether one was stored.
    /// - Throws: `SQLiteError`.
    @discardableResult
    public func deletePause(_ target: PauseTarget) throws -> Bool {
        try lock.withLock {
            try ensurePauseTable()
            try db.prepare("DELETE FROM pauses WHERE kind=? AND name=?").run([.text(target.kind.rawValue), .text(target.name)])
            return db.changes > 0
        }
    }

    /// Every stored pause.
    /// - Throws: `SQLiteError`.
    public func pauses() throws -> [Pause] {
        try lock.withLock {
            try ensurePauseTable()
            return try db.prepare("SELECT kind, name, by, reason, at FROM pauses ORDER BY kind, name").query([]) {
                Pause(target: PauseTarget(kind: PauseTarget.Kind(rawValue: $0.text(0)) ?? .provider, name: $0.text(1)), by: $0.text(2),
                      reason: $0.text(3), at: $0.double(4))
            }
        }
    }
}
