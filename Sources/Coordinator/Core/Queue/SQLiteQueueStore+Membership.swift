import Foundation

/// Operator decisions about nodes that must survive a coordinator restart.
extension SQLiteQueueStore {
    private func ensureMembershipTable() throws {
        try db.executeOnce("CREATE TABLE IF NOT EXISTS node_admin(node TEXT PRIMARY KEY, draining INTEGER NOT NULL, updated_at REAL NOT NULL)")
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

    private func ensureOwnersTable() throws {
        try db.executeOnce("CREATE TABLE IF NOT EXISTS ip_owners(ip TEXT PRIMARY KEY, node TEXT NOT NULL)")
    }

    /// The owner of each sending IP as last stored (restored when the nodes rejoin after a
    /// coordinator restart, so no rebalance is needed).
    /// - Returns: sending IP → node.
    /// - Throws: `SQLiteError`.
    public func ipOwners() throws -> [String: String] {
        try lock.withLock {
            try ensureOwnersTable()
            return Dictionary(try db.prepare("SELECT ip, node FROM ip_owners").query([]) { ($0.text(0), $0.text(1)) }, uniquingKeysWith: { a, _ in a })
        }
    }

    /// Replaces the stored owners with `owners` (sending IP → node; unowned IPs absent).
    /// - Throws: `SQLiteError`.
    public func saveIPOwners(_ owners: [String: String]) throws {
        try lock.withLock {
            try ensureOwnersTable()
            try db.transaction {
                try db.execute("DELETE FROM ip_owners")
                let ins = try db.prepare("INSERT INTO ip_owners(ip, node) VALUES(?,?)")
                for (ip, node) in owners.sorted(by: { $0.key < $1.key }) { try ins.run([.text(ip), .text(node)]) }
            }
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
