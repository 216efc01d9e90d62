import Foundation
import HatoConfig

extension ClusterConfig {
    /// The PostgreSQL connection settings of `store:` (nil for SQLite): the URL and password
    /// file as configured, `hato-coordinator` as the application name.
    public var postgreSQLConfiguration: PostgreSQLConfiguration? {
        guard store.kind == .postgresql, let url = store.url else { return nil }
        var c = PostgreSQLConfiguration(url: url, passwordFile: store.passwordFile, applicationName: "hato-coordinator")
        if coordinators.count > 1 {
            // A leader frozen or cut off inside a transaction of lease state holds the
            // leadership row (`fence`) until its session ends: the server ends such a session
            // after a third of the leadership lease, so that a standby can take over (a dead
            // host would otherwise hold it until TCP keepalive gives up, hours).
            c.settings["idle_in_transaction_session_timeout"] = String(max(1000, Int(coordinator.leadershipLease * 1000 / 3)))
        }
        return c
    }

    /// Opens the queue store `store:` names: SQLite in `coordinator.data_dir` (the default), or
    /// the PostgreSQL database with a pool of `pool_size` connections, its schema brought up to
    /// date by the migrations.
    /// - Returns: the store.
    /// - Throws: `SQLiteError` or a file system error (SQLite); `PostgreSQLError` when the
    ///   database cannot be reached, refuses the credentials or a migration fails (the message
    ///   names the URL with any password masked).
    public func openQueueStore() throws -> any QueueStore {
        switch store.kind {
        case .sqlite:
            return try SQLiteQueueStore(directory: coordinator.dataDir)
        case .postgresql:
            guard let configuration = postgreSQLConfiguration else {
                throw PostgreSQLError.misuse("store: kind postgresql without a url")
            }
            return try PostgreSQLQueueStore(configuration: configuration, poolSize: store.poolSize)
        }
    }
}

/// The `store:` part of `hato-coordinator check`.
public enum StoreCheck {
    /// For `kind: postgresql`, connects once with the configured URL and password file and
    /// reports the server version and the schema version found (nothing is created or
    /// changed); for SQLite, nothing beyond the data directory check.
    /// - Parameter config: the loaded configuration.
    /// - Returns: the items checked (`store` and `store.url`).
    public static func report(_ config: ClusterConfig) -> ConfigCheckReport {
        var r = ConfigCheckReport()
        guard let configuration = config.postgreSQLConfiguration else {
            r.items.append(.init(.ok, "store", "sqlite in \(config.coordinator.dataDir)"))
            return r
        }
        var quick = configuration
        quick.connectTimeout = .seconds(5)
        do {
            let c = try PostgreSQLConnection(quick)
            let version = c.serverVersion
            let applied = try PostgreSQLMigrations.appliedVersions(on: c)
            let known = PostgreSQLQueueStore.migrations.migrations.map(\.version).max() ?? 0
            let schema: String
            switch applied.max() {
            case nil: schema = "no schema yet (created at the first start)"
            case let v? where v < known: schema = "schema version \(v) (upgraded to \(known) at the next start)"
            case let v? where v > known: schema = "schema version \(v), newer than this build's \(known)"
            case let v?: schema = "schema version \(v)"
            }
            let level: ConfigCheckReport.Level = (applied.max() ?? 0) > known ? .warning : .ok
            r.items.append(.init(level, "store.url", "\(configuration.redactedURL): connected, PostgreSQL \(version / 10000).\(version % 10000), \(schema), pool_size \(config.store.poolSize)"))
        } catch {
            r.items.append(.init(.error, "store.url", "\(error)"))
        }
        return r
    }
}
