import Foundation

/// The dashboard's operator accounts in the SQLite queue (`OperatorStore`).
extension SQLiteQueueStore: OperatorStore {
    /// Creates the `operators` table when missing (called from `init`).
    /// - Throws: `SQLiteError`.
    func installOperatorSchema() throws {
        try db.execute("""
            CREATE TABLE IF NOT EXISTS operators(
              name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, created_at REAL NOT NULL);
            """)
    }

    /// Adds or replaces an account, in one synced transaction.
    /// - Throws: `SQLiteError`.
    public func saveOperator(_ account: OperatorAccount) throws {
        try lock.withLock {
            try db.prepare("INSERT OR REPLACE INTO operators(name, password_hash, created_at) VALUES(?,?,?)")
                .run([.text(account.name), .text(account.passwordHash), .double(account.createdAt)])
        }
    }

    /// The account named `name`.
    /// - Throws: `SQLiteError`.
    public func operatorAccount(named name: String) throws -> OperatorAccount? {
        try lock.withLock {
            try db.prepare("SELECT name, password_hash, created_at FROM operators WHERE name=?").query([.text(name)]) {
                OperatorAccount(name: $0.text(0), passwordHash: $0.text(1), createdAt: $0.double(2))
            }.first
        }
    }

    /// Every account, by name.
    /// - Throws: `SQLiteError`.
    public func operatorAccounts() throws -> [OperatorAccount] {
        try lock.withLock {
            try db.prepare("SELECT name, password_hash, created_at FROM operators ORDER BY name").query([]) {
                OperatorAccount(name: $0.text(0), passwordHash: $0.text(1), createdAt: $0.double(2))
            }
        }
    }

    /// Removes an account. - Returns: whether it existed.
    /// - Throws: `SQLiteError`.
    @discardableResult
    public func removeOperator(named name: String) throws -> Bool {
        try lock.withLock {
            try db.prepare("DELETE FROM operators WHERE name=?").run([.text(name)])
            return db.changes > 0
        }
    }
}
