import Foundation

/// One schema change: a version number and the SQL that makes the change.
public struct PostgreSQLMigration: Sendable {
    /// The version (positive; migrations apply in ascending order of it).
    public let version: Int64
    /// One or more statements separated by `;`. They run inside a transaction, so they must not
    /// contain `BEGIN`/`COMMIT` or statements that refuse transactions (`CREATE INDEX
    /// CONCURRENTLY`, `VACUUM`).
    public let sql: String

    /// - Parameters:
    ///   - version: a positive version number, unique in its list.
    ///   - sql: the statements.
    public init(version: Int64, sql: String) {
        self.version = version
        self.sql = sql
    }
}

/// Applies versioned schema migrations to a PostgreSQL database, each at most once.
///
/// Applied versions are recorded in `schema_migrations(version, applied_at)`, created on first
/// use in the connection's current schema. Each pending migration runs in its own transaction
/// together with the row that records it, so a failure leaves it unapplied and the ones before
/// it applied. Every transaction first takes a transaction-scoped advisory lock
/// (`pg_advisory_xact_lock`) whose key is the current schema's name hashed with `lockKey`:
/// coordinators of one cluster starting at once apply each migration exactly once, the later
/// ones waiting (up to their statement timeout) and then finding it done; clusters in other
/// schemas of the same database do not wait for each other. Running it
/// at every start is cheap when the schema is current: one transaction and one query.
public struct PostgreSQLMigrations: Sendable {
    /// The seed of the advisory lock key that serializes migration runs on one schema ("HatoMigr").
    public static let lockKey: Int64 = 0x4861_746F_4D69_6772

    /// The migrations, in ascending version order.
    public let migrations: [PostgreSQLMigration]

    /// - Parameter migrations: the migrations in ascending version order.
    /// - Throws: `PostgreSQLError` (`.misuse`) when a version is not positive or the versions
    ///   are not strictly ascending.
    public init(_ migrations: [PostgreSQLMigration]) throws {
        var previous: Int64 = 0
        for m in migrations {
            guard m.version > previous else {
                throw PostgreSQLError.misuse("migration versions must be positive and strictly ascending: \(m.version) after \(previous)")
            }
            previous = m.version
        }
        self.migrations = migrations
    }

    /// Applies the migrations the database does not have yet, in order.
    ///
    /// Versions in the database that this list does not know (a newer coordinator's) are left
    /// alone; `appliedVersions(on:)` shows them.
    /// - Parameter connection: a connection outside a transaction.
    /// - Returns: the versions this call applied, ascending (empty when the schema was current
    ///   or another process applied them meanwhile).
    /// - Throws: `PostgreSQLError`: the failing migration's server error (`.server` with its
    ///   SQLSTATE; that migration and the later ones stay unapplied), `57014` when waiting for
    ///   another process's migration outlasts the statement timeout, `.connectionLost`.
    @discardableResult
    public func apply(on connection: PostgreSQLConnection) throws -> [Int64] {
        let done = try connection.transaction(isolation: .readCommitted) {
            try Self.lock(connection)
            try connection.execute("""
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    version bigint PRIMARY KEY,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )
                """)
            return Set(try connection.query("SELECT version FROM schema_migrations").map { try $0.int(0) })
        }
        var applied: [Int64] = []
        for migration in migrations where !done.contains(migration.version) {
            // Read committed: each statement after the lock sees what the previous holder committed.
            let didApply = try connection.transaction(isolation: .readCommitted) {
                try Self.lock(connection)
                let present = try connection.query("SELECT 1 FROM schema_migrations WHERE version = $1", [.int(migration.version)])
                guard present.isEmpty else { return false }
                try connection.execute(migration.sql)
                try connection.run("INSERT INTO schema_migrations (version) VALUES ($1)", [.int(migration.version)])
                return true
            }
            if didApply { applied.append(migration.version) }
        }
        return applied
    }

    /// The versions recorded in `schema_migrations`, ascending (empty when the table does not
    /// exist yet).
    /// - Parameter connection: the connection to read with.
    /// - Returns: the applied versions.
    /// - Throws: `PostgreSQLError`.
    public static func appliedVersions(on connection: PostgreSQLConnection) throws -> [Int64] {
        let exists = try connection.query("SELECT to_regclass('schema_migrations') IS NOT NULL")
        guard try exists.first?.bool(0) == true else { return [] }
        return try connection.query("SELECT version FROM schema_migrations ORDER BY version").map { try $0.int(0) }
    }

    /// Takes the migrations' advisory lock of the connection's current schema until the end of
    /// the transaction it runs in: one key per schema (`hashtextextended`, PostgreSQL 11 and
    /// later), so that schemas migrate side by side; a hash collision only makes two of them
    /// wait for each other. (`current_schema()` is null when no schema of the search path
    /// exists: the empty name then, never a null key, which would take no lock.)
    /// - Throws: `PostgreSQLError` (the statement timeout when another holder outlasts it).
    static func lock(_ connection: PostgreSQLConnection) throws {
        try connection.query("SELECT pg_advisory_xact_lock(hashtextextended(coalesce(current_schema(), ''), $1))", [.int(lockKey)])
    }
}
