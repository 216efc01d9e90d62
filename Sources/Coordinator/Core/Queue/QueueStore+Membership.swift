import Foundation
import HatoShared

/// Operator decisions about nodes that must survive a coordinator restart.
extension QueueStore {
    private func ensureMembershipTable() throws {
        try db.execute("CREATE TABLE IF NOT EXISTS node_admin(node TEXT PRIMARY KEY, draining INTEGER NOT NULL, updated_at REAL NOT NULL)")
    }

    /// Nodes an operator has put into drain.
    /// - Throws: `SQLiteError`.
    public func drainingNodes() throws -> Set<String> {
        try lock.withLock {
            try ensureMembershipTable()
            return Set(try db.prepare("SELECT node FROM node_admin WHERE draining=1").query([]) { $0.text(0) })
        }
    }

    /// Records that `node` is (or is no longer) draining.
    /// - Throws: `SQLiteError`.
    public func setDraining(_ node: String, _ draining: Bool, now: Date) throws {
        try lock.withLock {
            try ensureMembershipTable()
            try db.prepare("INSERT INTO node_admin(node, draining, updated_at) VALUES(?,?,?) ON CONFLICT(node) DO UPDATE SET draining=excluded.draining, updated_at=excluded.updated_at")
                .run([.text(node), .int(draining ? 1 : 0), .double(now.timeIntervalSince1970)])
        }
    }

    /// Recipients whose address matches, newest first (recipient lookup).
    /// - Throws: `SQLiteError`.
    public func messages(forRecipient address: String, limit: Int) throws -> [String] {
        try lock.withLock {
            try db.prepare("SELECT DISTINCT message_id FROM recipients WHERE address=? COLLATE NOCASE ORDER BY id DESC LIMIT ?")
                .query([.text(address), .int(Int64(limit))]) { $0.text(0) }
        }
    }
}
