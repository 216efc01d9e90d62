import Foundation

/// The dashboard's operator accounts in the PostgreSQL store (`OperatorStore`; table
/// `operators` of migration 4).
extension PostgreSQLQueueStore: OperatorStore {
    /// Migration 4: the `operators` table.
    static let operatorsSchemaSQL = """
        CREATE TABLE operators(
          name text PRIMARY KEY, password_hash text NOT NULL, created_at double precision NOT NULL);
        """

    /// Adds or replaces an account.
    /// - Throws: `PostgreSQLError`.
    public func saveOperator(_ account: OperatorAccount) throws {
        try pool.transaction { c in
            try c.run("""
                INSERT INTO operators(name, password_hash, created_at) VALUES($1, $2, $3)
                ON CONFLICT(name) DO UPDATE SET password_hash = excluded.password_hash, created_at = excluded.created_at
                """, [.text(account.name), .text(account.passwordHash), .double(account.createdAt)])
        }
    }

    /// The account named `name`.
    /// - Throws: `PostgreSQLError`.
    public func operatorAccount(named name: String) throws -> OperatorAccount? {
        try pool.withConnection { c in
            try c.query("SELECT name, password_hash, created_at FROM operators WHERE name = $1", [.text(name)]).map {
                OperatorAccount(name: try $0.text(0), passwordHash: try $0.text(1), createdAt: try $0.double(2))
            }.first
        }
    }

    /// Every account, by name.
    /// - Throws: `PostgreSQLError`.
    public func operatorAccounts() throws -> [OperatorAccount] {
        try pool.withConnection { c in
            try c.query("SELECT name, password_hash, created_at FROM operators ORDER BY name COLLATE \"C\"").map {
                OperatorAccount(name: try $0.text(0), passwordHash: try $0.text(1), createdAt: try $0.double(2))
            }
        }
    }

    /// Removes an account. - Returns: whether it existed.
    /// - Throws: `PostgreSQLError`.
    @discardableResult
    public func removeOperator(named name: String) throws -> Bool {
        try pool.transaction { c in try c.run("DELETE FROM operators WHERE name = $1", [.text(name)]) > 0 }
    }
}
