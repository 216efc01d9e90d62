import Foundation

/// `store:` where the coordinator keeps its durable state (the queue, leases, IP owners,
/// suppressions, outboxes).
///
/// ```yaml
/// store: { kind: postgresql, url: "postgresql://hato@127.0.0.1:5432/hato", password_file: pg.secret, pool_size: 8 }
/// ```
/// Absent: `{ kind: sqlite }`, one file in `coordinator.data_dir`.
public struct StoreSettings: Sendable, Equatable {
    /// Which implementation.
    public enum Kind: String, Sendable, Equatable, CaseIterable {
        /// SQLite in `coordinator.data_dir` (`queue.db`): one coordinator, no database server.
        case sqlite
        /// A PostgreSQL database reached through libpq.
        case postgresql
    }

    /// `kind`: `sqlite` or `postgresql`. Default `sqlite`.
    public var kind: Kind = .sqlite
    /// `url`: the libpq connection URL (`postgresql://user@host:port/database`, options as a
    /// query string). Required for `postgresql`; a password in it is refused (use
    /// `password_file`). Nil for `sqlite`.
    public var url: String?
    /// `password_file`: absolute path (relative ones are resolved against the configuration
    /// file's directory) of the file whose first line is the database password; read at every
    /// connect, never logged. Default nil: libpq's own fallbacks (`PGPASSWORD`, `~/.pgpass`).
    public var passwordFile: String?
    /// `pool_size`: the most database connections the coordinator opens (1…200). Default 8.
    public var poolSize: Int = 8

    /// The default: SQLite in `coordinator.data_dir`.
    public init() {}

    /// Settings for a PostgreSQL store.
    public init(postgresqlURL url: String, passwordFile: String? = nil, poolSize: Int = 8) {
        kind = .postgresql
        self.url = url
        self.passwordFile = passwordFile
        self.poolSize = poolSize
    }
}

extension ClusterConfigDecoder {
    /// `store:` (see `StoreSettings`).
    func decodeStore(_ top: ConfigSection, into config: inout ClusterConfig) throws {
        guard let sec = try top.section("store", allowed: ["kind", "url", "password_file", "pool_size"]) else { return }
        var store = StoreSettings()
        if let kind = try sec.get("kind", { text -> StoreSettings.Kind in
            guard let k = StoreSettings.Kind(rawValue: text) else { throw ConfigValueError("expected sqlite or postgresql, got \"\(text)\"") }
            return k
        }) { store.kind = kind }
        switch store.kind {
        case .sqlite:
            for key in ["url", "password_file", "pool_size"] {
                if let at = try sec.scalar(key) {
                    throw ConfigError(file: file, line: at.line, key: at.path, message: "only for kind: postgresql (kind is sqlite)")
                }
            }
        case .postgresql:
            store.url = try sec.require("url") { text -> String in
                let lower = text.lowercased()
                guard lower.hasPrefix("postgresql://") || lower.hasPrefix("postgres://") else {
                    throw ConfigValueError("expected a URL such as postgresql://hato@db.example:5432/hato")
                }
                let afterScheme = text[text.range(of: "://")!.upperBound...]
                let authority = afterScheme.prefix { $0 != "/" && $0 != "?" }
                if let at = authority.lastIndex(of: "@"), authority[..<at].contains(":") {
                    throw ConfigValueError("the URL holds a password: put it in password_file instead")
                }
                if lower.contains("password=") { throw ConfigValueError("the URL holds a password: put it in password_file instead") }
                return text
            }
            store.passwordFile = try sec.get("password_file") { text -> String in
                guard !text.isEmpty else { throw ConfigValueError("must not be empty") }
                return ConfigFiles.absolute(text, relativeTo: baseDirectory)
            }
            if let n = try sec.get("pool_size", { try ConfigValue.integer($0, in: 1...200) }) { store.poolSize = n }
        }
        config.store = store
    }
}
