import CPostgreSQL
import Foundation

// A PostgreSQL client over libpq, the foundation for a queue store shared by several
// coordinators (the store itself is not here yet). The shape follows SQLite.swift: one final
// class owns the C handle and frees it in deinit; values are a small enum; errors carry the
// server's SQLSTATE. Parameters go out in binary where it matters (bytea is never escaped, so
// message bytes with NULs round-trip exactly).

/// A PostgreSQL failure: a connection that could not be made or was lost, an error the server
/// reported (with its SQLSTATE), or a misuse caught on the client.
///
/// `description` never holds a password, nor the server's DETAIL (which can quote row values
/// such as addresses: it is in `detail`, for callers that know it is safe to show).
public struct PostgreSQLError: Error, CustomStringConvertible, Sendable {
    /// What kind of failure this is (open for new kinds without breaking callers).
    public struct Kind: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }
        /// The connection could not be made (unreachable server, bad password, missing
        /// password file, unknown database).
        public static let connectionFailed = Kind("connection failed")
        /// The connection broke during or before a call (server stopped or crashed, network
        /// down); `PostgreSQLConnection.reset()` reconnects.
        public static let connectionLost = Kind("connection lost")
        /// The server rejected the statement; `sqlState` says why.
        public static let server = Kind("server error")
        /// The caller asked for something this client cannot do (a NUL in a text parameter,
        /// a nested transaction, a column read as the wrong type).
        public static let misuse = Kind("misuse")
        public var description: String { name }
    }

    /// What kind of failure this is.
    public let kind: Kind
    /// The five-character SQLSTATE (e.g. `23505` unique_violation, `40001`
    /// serialization_failure), nil when the server sent none.
    public let sqlState: String?
    /// The primary message (the server's, or libpq's, or ours), without secrets.
    public let message: String
    /// The server's DETAIL line, which may quote row values: not part of `description`.
    public let detail: String?
    /// Whether the failure came with the `COMMIT` of a transaction: on a connection error the
    /// transaction's outcome is then unknown (it may have committed), so it must not be retried.
    public internal(set) var duringCommit = false

    init(kind: Kind, sqlState: String? = nil, message: String, detail: String? = nil) {
        self.kind = kind
        self.sqlState = sqlState
        self.message = message
        self.detail = detail
    }

    static func connectionFailed(_ message: String) -> PostgreSQLError { .init(kind: .connectionFailed, message: message) }
    static func connectionLost(_ message: String) -> PostgreSQLError { .init(kind: .connectionLost, message: message) }
    static func misuse(_ message: String) -> PostgreSQLError { .init(kind: .misuse, message: message) }

    public var description: String {
        if let sqlState { return "postgresql \(kind) \(sqlState): \(message)" }
        return "postgresql \(kind): \(message)"
    }

    /// `23505` unique_violation: a row with the same key exists.
    public var isUniqueViolation: Bool { sqlState == "23505" }
    /// `40001` serialization_failure: retry the whole transaction.
    public var isSerializationFailure: Bool { sqlState == "40001" }
    /// `40P01` deadlock_detected: retry the whole transaction.
    public var isDeadlock: Bool { sqlState == "40P01" }
    /// `57014` query_canceled: the statement ran past `statement_timeout` (or was cancelled).
    public var isStatementTimeout: Bool { sqlState == "57014" }
    /// Whether retrying the whole transaction may succeed (serialization failure or deadlock).
    public var isRetryableTransactionFailure: Bool { isSerializationFailure || isDeadlock }
    /// Whether the connection is unusable: it failed or was lost, or the server reported a
    /// connection exception (class `08`) or a shutdown (`57P01`–`57P03`).
    public var isConnectionError: Bool {
        if kind == .connectionFailed || kind == .connectionLost { return true }
        guard let sqlState else { return false }
        return sqlState.hasPrefix("08") || ["57P01", "57P02", "57P03"].contains(sqlState)
    }
}

/// A value sent as a statement parameter or read from a row.
public enum PostgreSQLValue: Sendable, Equatable {
    /// SQL NULL (sent untyped: the server infers the type from the statement).
    case null
    /// Text, sent untyped in text format so the server can parse it as any type the statement
    /// expects (`timestamptz`, `jsonb`, …). It must not contain NUL.
    case text(String)
    /// A 64-bit integer (`bigint`), sent in binary.
    case int(Int64)
    /// A double (`double precision`), sent in binary: infinities, NaN and every bit round-trip.
    case double(Double)
    /// A boolean, sent in binary.
    case bool(Bool)
    /// Bytes (`bytea`), sent in binary: any octets, NULs included, exactly.
    case bytea([UInt8])
}

/// How to reach a PostgreSQL server, and the limits each connection runs with.
public struct PostgreSQLConfiguration: Sendable {
    /// A libpq connection URL, e.g. `postgresql://hato@db.example:5432/hato`. Better without
    /// a password in it: use `passwordFile`. Error messages show it with any password masked.
    public var url: String
    /// A file whose first line is the password (trailing newline ignored); nil for none (libpq
    /// then falls back to `PGPASSWORD` or `~/.pgpass`). Read at every connect; never logged.
    /// Default nil.
    public var passwordFile: String?
    /// How long a connection attempt may take (libpq's `connect_timeout`, whole seconds,
    /// at least 2). Default 10 s.
    public var connectTimeout: Duration
    /// The server cancels a statement that runs longer (`statement_timeout`, in milliseconds
    /// on the wire); nil for no limit. Default 30 s.
    public var statementTimeout: Duration?
    /// How long sent data may stay unacknowledged before the connection counts as lost
    /// (`tcp_user_timeout`; TCP keepalives probe idle connections as well). Default 30 s.
    public var networkTimeout: Duration
    /// Shown in `pg_stat_activity.application_name`. Default `hato`.
    public var applicationName: String
    /// Further run-time settings sent when the connection starts, e.g. `["search_path": "s1"]`.
    /// Default none.
    public var settings: [String: String]

    /// - Parameters:
    ///   - url: a libpq connection URL (better without a password).
    ///   - passwordFile: the password's file, nil for none.
    ///   - connectTimeout: the limit for one connection attempt (default 10 s).
    ///   - statementTimeout: the limit for one statement, nil for none (default 30 s).
    ///   - networkTimeout: the limit for unacknowledged sent data (default 30 s).
    ///   - applicationName: the name the server shows for the connection (default `hato`).
    ///   - settings: run-time settings for the session (default none).
    public init(url: String, passwordFile: String? = nil, connectTimeout: Duration = .seconds(10),
                statementTimeout: Duration? = .seconds(30), networkTimeout: Duration = .seconds(30),
                applicationName: String = "hato", settings: [String: String] = [:]) {
        self.url = url
        self.passwordFile = passwordFile
        self.connectTimeout = connectTimeout
        self.statementTimeout = statementTimeout
        self.networkTimeout = networkTimeout
        self.applicationName = applicationName
        self.settings = settings
    }

    /// `url` with any password (in the user info or a `password=` parameter) masked.
    public var redactedURL: String { Self.redact(url) }

    static func redact(_ url: String) -> String {
        var s = url
        if let scheme = s.range(of: "://") {
            // The last "@" before the query: a raw "@" or "/" in a password (which should have
            // been percent-encoded) is masked too; masking too much is harmless.
            let rest = s[scheme.upperBound...]
            let queryStart = rest.firstIndex(of: "?") ?? rest.endIndex
            if let at = rest[..<queryStart].lastIndex(of: "@"),
               let colon = rest[..<at].firstIndex(of: ":") {
                s.replaceSubrange(s.index(after: colon)..<at, with: "***")
            }
        }
        if let r = s.range(of: "password=", options: .caseInsensitive) {
            let end = s[r.upperBound...].firstIndex(where: { $0 == "&" || $0 == " " }) ?? s.endIndex
            s.replaceSubrange(r.upperBound..<end, with: "***")
        }
        return s
    }
}

/// The isolation level of a transaction (PostgreSQL's `BEGIN ISOLATION LEVEL …`).
public enum PostgreSQLIsolation: String, Sendable {
    /// Each statement sees the data committed before it began (the server's default).
    case readCommitted = "READ COMMITTED"
    /// Every statement sees one snapshot; a conflicting write fails with `40001`.
    case repeatableRead = "REPEATABLE READ"
    /// As if transactions ran one after another; a conflict fails with `40001`.
    case serializable = "SERIALIZABLE"
}

/// One PostgreSQL connection: owns the `PGconn*` and closes it in deinit.
///
/// Parameterised statements are prepared once per connection and SQL text (and parameter
/// types) and reused. Parameters are sent in binary except text and NULL; results come in
/// text format unless asked for binary, and `PostgreSQLRow` decodes either.
///
/// `@unchecked Sendable`: libpq allows a `PGconn` to be used by one thread at a time. Every
/// use of the handle (and of the statement cache) happens under `lock`, a recursive lock that
/// `transaction` holds for its whole body, so another thread's statements wait for the
/// transaction to end instead of joining it. Blocking calls: do not call from a Swift
/// concurrency task that must not block (see PLATFORM-NOTES: the pool is two threads).
public final class PostgreSQLConnection: @unchecked Sendable {
    private let connection: OpaquePointer
    private let lock = NSRecursiveLock()
    /// The configuration the connection was opened with.
    public let configuration: PostgreSQLConfiguration
    /// Prepared statement names by SQL text and parameter types.
    private var statements: [String: String] = [:]
    private var nextStatement = 0
    private var inTransaction = false
    /// The `BEGIN` of the transaction in progress while it is not sent yet: it goes to the
    /// server with the transaction's first statement, in the same round trip.
    private var pendingBegin: String?
    /// Set when a pipeline could not be left: the connection counts as lost until `reset`.
    private var abandoned = false
    /// A timeout set with `setStatementTimeout` (re-applied after `reset`), nil for the configured one.
    private var statementTimeoutOverride: Duration??

    /// Connects.
    /// - Parameter configuration: the server, credentials and limits.
    /// - Throws: `PostgreSQLError` with kind `.connectionFailed` when the password file cannot
    ///   be read or the server refuses or cannot be reached within `connectTimeout`; its message
    ///   names the URL (password masked) and libpq's reason, never the password.
    public init(_ configuration: PostgreSQLConfiguration) throws {
        self.configuration = configuration
        var params: [(String, String)] = [("dbname", configuration.url)]
        if let file = configuration.passwordFile {
            params.append(("password", try Self.readPassword(file)))
        }
        let connectSeconds = max(2, Self.milliseconds(configuration.connectTimeout).divided(roundingUpBy: 1000))
        params.append(("connect_timeout", String(connectSeconds)))
        params.append(("application_name", configuration.applicationName))
        params.append(("client_encoding", "UTF8"))
        params.append(("tcp_user_timeout", String(Self.milliseconds(configuration.networkTimeout))))
        params.append(("keepalives", "1"))
        params.append(("keepalives_idle", "10"))
        params.append(("keepalives_interval", "5"))
        params.append(("keepalives_count", "3"))
        var settings = configuration.settings
        if let t = configuration.statementTimeout { settings["statement_timeout"] = String(Self.milliseconds(t)) }
        if !settings.isEmpty {
            let escape = { (s: String) in s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: " ", with: "\\ ") }
            // An `options` given here replaces the URL's own (libpq: later keywords win), so the
            // URL's options (e.g. `?options=-csearch_path%3Dhato`) come first, ours after them.
            let ours = settings.sorted { $0.key < $1.key }.map { "-c \(escape($0.key))=\(escape($0.value))" }.joined(separator: " ")
            params.append(("options", Self.urlOptions(configuration.url).map { $0 + " " + ours } ?? ours))
        }
        let conn = Self.withCStrings(params.map(\.0)) { keys in
            Self.withCStrings(params.map(\.1)) { values in PQconnectdbParams(keys, values, 1) }
        }
        guard let conn else { throw PostgreSQLError.connectionFailed("cannot connect to \(configuration.redactedURL): out of memory") }
        guard PQstatus(conn) == CONNECTION_OK else {
            let reason = Self.clean(String(cString: PQerrorMessage(conn)))
            PQfinish(conn)
            throw PostgreSQLError.connectionFailed("cannot connect to \(configuration.redactedURL): \(reason)")
        }
        connection = conn
        // Notices ("relation already exists, skipping") would go to stderr by default.
        PQsetNoticeReceiver(conn, { _, _ in }, nil)
    }

    deinit { PQfinish(connection) }

    // MARK: Statements

    /// Runs one or more SQL statements separated by `;`, without parameters or results
    /// (schema changes, `SET`, migrations).
    /// - Parameter sql: the statements.
    /// - Throws: `PostgreSQLError`: `.server` with the SQLSTATE of the first failing statement
    ///   (the ones before it took effect unless inside a transaction), `.connectionLost`.
    public func execute(_ sql: String) throws {
        try locked {
            try checkConnected()
            // A transaction's BEGIN not yet sent goes first in the same query string.
            let text = takeBegin().map { $0 + ";\n" + sql } ?? sql
            let result = PQexec(connection, text)
            defer { PQclear(result) }
            try check(result, sql: sql)
        }
    }

    /// Runs one statement with parameters `$1`, `$2`, … and returns its rows.
    /// - Parameters:
    ///   - sql: one statement.
    ///   - parameters: the values for `$1`…`$n`, in order.
    ///   - binaryResults: whether the server sends the rows in binary (smaller for `bytea`;
    ///     `PostgreSQLRow` then decodes booleans, integers, floats, text and bytea). Default false.
    /// - Returns: the rows (empty for statements without results) and the affected row count.
    /// - Throws: `PostgreSQLError`: `.server` with the SQLSTATE (`23505` on a duplicate key,
    ///   `57014` past the statement timeout, …), `.connectionLost`, `.misuse` for a text
    ///   parameter with a NUL or a parameter over 2 GiB.
    @discardableResult
    public func query(_ sql: String, _ parameters: [PostgreSQLValue] = [], binaryResults: Bool = false) throws -> PostgreSQLResult {
        try locked {
            try checkConnected()
            let encoded = try EncodedParameters(parameters)
            let (key, name) = try prepared(sql, encoded)
            if pendingBegin != nil {
                // A transaction's first statement: its BEGIN goes with it, in one round trip.
                let entries = try withBegin([PipelineEntry(sql: sql, key: key, name: name, parameters: encoded, binaryResults: binaryResults)])
                return try pipeline(entries)[1]
            }
            let result = encoded.withParameterPointers { values, lengths, formats in
                PQexecPrepared(connection, name, Int32(encoded.types.count), values, lengths, formats, binaryResults ? 1 : 0)
            }
            do {
                try check(result, sql: sql)
            } catch let error as PostgreSQLError {
                PQclear(result)
                forgetIfStale(error, key)
                throw error
            }
            return PostgreSQLResult(result!)
        }
    }

    /// Runs statements one after the other, as `query` would, but in one round trip (libpq's
    /// pipeline mode: every statement is sent, then one sync, then the results are read).
    ///
    /// Each statement sees the effects of the ones before it; the first that fails makes the
    /// server skip the rest up to the sync, and its error is thrown. Meant for a transaction's
    /// statements (inside `transaction`, a failure leaves it aborted and it rolls back; outside
    /// one, the sync commits what ran before the failure). Large lists go in several syncs, so
    /// neither side's buffers fill while the other waits.
    /// - Parameter statements: the statements (each one statement with parameters `$1`…`$n`).
    /// - Returns: the result of each (rows in text format, affected row counts), in order.
    /// - Throws: `PostgreSQLError`, as `query`.
    @discardableResult
    public func queryPipelined(_ statements: [(sql: String, parameters: [PostgreSQLValue])]) throws -> [PostgreSQLResult] {
        try locked {
            try checkConnected()
            guard !statements.isEmpty else { return [] }
            // Prepared outside the pipeline (a prepare waits for its reply).
            var entries = try statements.map { s in
                let encoded = try EncodedParameters(s.parameters)
                let (key, name) = try prepared(s.sql, encoded)
                return PipelineEntry(sql: s.sql, key: key, name: name, parameters: encoded, binaryResults: false)
            }
            // A transaction's BEGIN not yet sent goes first (its result is not returned).
            let begun = pendingBegin != nil
            entries = try withBegin(entries)
            var results: [PostgreSQLResult] = []
            results.reserveCapacity(entries.count)
            for start in stride(from: 0, to: entries.count, by: Self.pipelineDepth) {
                results += try pipeline(Array(entries[start..<min(start + Self.pipelineDepth, entries.count)]))
            }
            return begun ? Array(results.dropFirst()) : results
        }
    }

    /// Statements sent before one sync and its results: the replies of a transaction's writes
    /// (a few dozen bytes each) fit the socket buffers, so the blocking sends never wait for a
    /// server waiting on us.
    static let pipelineDepth = 256

    /// A prepared statement ready to be sent in a pipeline.
    private struct PipelineEntry {
        var sql: String
        var key: String
        var name: String
        var parameters: EncodedParameters
        var binaryResults: Bool
    }

    /// `entries` after the transaction's BEGIN when it is not sent yet (then counted as sent).
    private func withBegin(_ entries: [PipelineEntry]) throws -> [PipelineEntry] {
        guard let begin = pendingBegin else { return entries }
        let none = try EncodedParameters([])
        let (key, name) = try prepared(begin, none)
        pendingBegin = nil
        return [PipelineEntry(sql: begin, key: key, name: name, parameters: none, binaryResults: false)] + entries
    }

    /// The transaction's BEGIN when it is not sent yet, counted as sent from now on.
    private func takeBegin() -> String? {
        defer { pendingBegin = nil }
        return pendingBegin
    }

    /// Sends prepared statements in pipeline mode with one sync and reads every result up to it.
    private func pipeline(_ batch: [PipelineEntry]) throws -> [PostgreSQLResult] {
        guard PQenterPipelineMode(connection) == 1 else { throw PostgreSQLError.misuse("cannot enter pipeline mode: \(lastMessage)") }
        // Leaving fails only with results unread (a read given up on): the connection is then
        // unusable for anything else, so it counts as lost until `reset`.
        defer { if PQexitPipelineMode(connection) != 1 { abandoned = true } }
        var sent = 0
        var failure: PostgreSQLError?
        for s in batch {
            let ok = s.parameters.withParameterPointers { values, lengths, formats in
                PQsendQueryPrepared(connection, s.name, Int32(s.parameters.types.count), values, lengths, formats, s.binaryResults ? 1 : 0)
            }
            guard ok == 1 else { failure = lostOrMisuse("cannot send a pipelined statement"); break }
            sent += 1
        }
        guard PQpipelineSync(connection) == 1 else { throw failure ?? lostOrMisuse("cannot send the pipeline's sync") }
        var results: [PostgreSQLResult] = []
        // Each statement: its result, then NULL; the first failure's result is an error, the
        // later ones' PIPELINE_ABORTED. Then the sync's result.
        for s in batch.prefix(sent) {
            guard let result = PQgetResult(connection) else { throw lostOrMisuse("a pipelined statement has no result") }
            while let extra = PQgetResult(connection) { PQclear(extra) }
            if PQresultStatus(result) == PGRES_PIPELINE_ABORTED { PQclear(result); continue }
            do {
                try check(result, sql: s.sql)
                results.append(PostgreSQLResult(result))
            } catch let error as PostgreSQLError {
                PQclear(result)
                forgetIfStale(error, s.key)
                if failure == nil { failure = error }
            }
        }
        guard let sync = PQgetResult(connection) else { throw lostOrMisuse("the pipeline's sync has no result") }
        let status = PQresultStatus(sync)
        PQclear(sync)
        if let failure { throw failure }
        guard status == PGRES_PIPELINE_SYNC else { throw lostOrMisuse("the pipeline's sync failed") }
        return results
    }

    /// The name of `sql` prepared on this connection for `parameters`' types (prepared now if new),
    /// and its cache key.
    private func prepared(_ sql: String, _ parameters: EncodedParameters) throws -> (key: String, name: String) {
        let key = sql + "\u{0}" + parameters.types.map(String.init).joined(separator: ",")
        if let cached = statements[key] { return (key, cached) }
        let name = "hato_\(nextStatement)"
        let result = parameters.types.withUnsafeBufferPointer {
            PQprepare(connection, name, sql, Int32(parameters.types.count), $0.baseAddress)
        }
        defer { PQclear(result) }
        try check(result, sql: sql)
        nextStatement += 1
        statements[key] = name
        return (key, name)
    }

    /// A statement dropped on the server (26000) or whose plan no longer fits the tables
    /// (0A000): prepare it afresh next time.
    private func forgetIfStale(_ error: PostgreSQLError, _ key: String) {
        if error.sqlState == "26000" || error.sqlState == "0A000" { statements[key] = nil }
    }

    /// `.connectionLost` when the connection broke, else `.misuse` with libpq's message.
    private func lostOrMisuse(_ what: String) -> PostgreSQLError {
        PQstatus(connection) == CONNECTION_OK ? .misuse("\(what): \(lastMessage)")
            : .connectionLost("\(what): the connection to \(configuration.redactedURL) is lost: \(lastMessage)")
    }

    /// Runs one statement with parameters and returns how many rows it inserted, updated or
    /// deleted.
    /// - Parameters:
    ///   - sql: one statement.
    ///   - parameters: the values for `$1`…`$n`.
    /// - Returns: the affected row count (0 for statements that report none).
    /// - Throws: `PostgreSQLError`, as `query`.
    @discardableResult
    public func run(_ sql: String, _ parameters: [PostgreSQLValue] = []) throws -> Int {
        try query(sql, parameters).affectedRows
    }

    /// Runs `body` inside `BEGIN … COMMIT`, rolling back if it throws.
    ///
    /// A statement that failed inside the transaction aborts it on the server even when
    /// `body` caught the error: the commit then rolls back and throws.
    /// - Parameters:
    ///   - isolation: the isolation level; nil for the server's default (read committed).
    ///   - body: the work; statements it runs on this connection join the transaction.
    /// - Returns: what `body` returns.
    /// - Throws: what `body` throws (after the rollback), or `PostgreSQLError`: `.server` with
    ///   `40001` when a serializable or repeatable-read commit conflicts, `.misuse` for a
    ///   nested call or a commit of an aborted transaction, `.connectionLost`.
    public func transaction<T>(isolation: PostgreSQLIsolation? = nil, _ body: () throws -> T) throws -> T {
        try locked {
            guard !inTransaction else { throw PostgreSQLError.misuse("transaction inside a transaction") }
            try checkConnected()
            // Sent with the first statement (one round trip less per transaction).
            pendingBegin = isolation.map { "BEGIN ISOLATION LEVEL \($0.rawValue)" } ?? "BEGIN"
            inTransaction = true
            defer { inTransaction = false; pendingBegin = nil }
            let value: T
            do {
                value = try body()
            } catch {
                if pendingBegin == nil && PQstatus(connection) == CONNECTION_OK { _ = try? execute("ROLLBACK") }
                throw error
            }
            // A body that sent nothing began no transaction on the server: nothing to commit.
            guard pendingBegin == nil else { return value }
            if PQtransactionStatus(connection) == PQTRANS_INERROR {
                _ = try? execute("ROLLBACK")
                throw PostgreSQLError.misuse("a statement in the transaction failed (its error was caught): rolled back")
            }
            do {
                try checkConnected()
            } catch var e as PostgreSQLError {
                e.duringCommit = true  // nothing was sent: but keep the rule simple, never retried
                throw e
            }
            let result = PQexec(connection, "COMMIT")
            defer { PQclear(result) }
            do {
                try check(result, sql: "COMMIT")
            } catch var e as PostgreSQLError {
                e.duringCommit = true
                throw e
            }
            if String(cString: PQcmdStatus(result)) == "ROLLBACK" {
                throw PostgreSQLError.misuse("the transaction was aborted on the server: rolled back")
            }
            return value
        }
    }

    /// Changes this session's statement timeout (kept across `reset`).
    /// - Parameter timeout: the new limit (whole milliseconds), nil for none.
    /// - Throws: `PostgreSQLError` (`.connectionLost`, `.misuse` inside a transaction).
    public func setStatementTimeout(_ timeout: Duration?) throws {
        try locked {
            guard !inTransaction else { throw PostgreSQLError.misuse("setStatementTimeout inside a transaction") }
            try execute("SET statement_timeout = \(timeout.map { Self.milliseconds($0) } ?? 0)")
            statementTimeoutOverride = .some(timeout)
        }
    }

    // MARK: Connection state

    /// Whether the connection is up as far as libpq knows (it learns of a loss at the next
    /// call that talks to the server).
    public var isConnected: Bool { locked { PQstatus(connection) == CONNECTION_OK && !abandoned } }

    /// The server's version as a number (e.g. 150018 for 15.18).
    public var serverVersion: Int { locked { Int(PQserverVersion(connection)) } }

    /// The process id of the server backend serving this connection.
    public var backendPID: Int32 { locked { PQbackendPID(connection) } }

    /// Closes the connection and opens it again with the same parameters (prepared statements
    /// are prepared again on use; a `setStatementTimeout` is re-applied).
    /// - Throws: `PostgreSQLError` `.connectionFailed` when the server cannot be reached,
    ///   `.misuse` inside a transaction.
    public func reset() throws {
        try locked {
            guard !inTransaction else { throw PostgreSQLError.misuse("reset inside a transaction") }
            PQreset(connection)
            statements.removeAll()
            abandoned = false
            guard PQstatus(connection) == CONNECTION_OK else {
                throw PostgreSQLError.connectionFailed("cannot reconnect to \(configuration.redactedURL): \(lastMessage)")
            }
            if let timeout = statementTimeoutOverride { try setStatementTimeout(timeout) }
        }
    }

    // MARK: Internals

    private func locked<T>(_ body: () throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    private var lastMessage: String { Self.clean(String(cString: PQerrorMessage(connection))) }

    private func checkConnected() throws {
        guard PQstatus(connection) == CONNECTION_OK && !abandoned else {
            throw PostgreSQLError.connectionLost("the connection to \(configuration.redactedURL) is lost (reset() reconnects)")
        }
    }

    /// Throws unless `result` is a success; a failure on a broken connection is `.connectionLost`.
    private func check(_ result: OpaquePointer?, sql: String) throws {
        guard let result else {
            if PQstatus(connection) != CONNECTION_OK {
                throw PostgreSQLError.connectionLost("\(configuration.redactedURL): \(lastMessage)")
            }
            throw PostgreSQLError.misuse("no result: \(lastMessage)")
        }
        switch PQresultStatus(result) {
        case PGRES_COMMAND_OK, PGRES_TUPLES_OK, PGRES_EMPTY_QUERY:
            return
        default:
            let field = { (code: UInt8) -> String? in
                PQresultErrorField(result, Int32(code)).map { String(cString: $0) }
            }
            let sqlState = field(UInt8(ascii: "C"))
            let message = field(UInt8(ascii: "M")) ?? Self.clean(String(cString: PQresultErrorMessage(result)))
            if PQstatus(connection) != CONNECTION_OK {
                throw PostgreSQLError(kind: .connectionLost, sqlState: sqlState,
                                      message: "\(configuration.redactedURL): \(message.isEmpty ? lastMessage : message)")
            }
            throw PostgreSQLError(kind: .server, sqlState: sqlState, message: message, detail: field(UInt8(ascii: "D")))
        }
    }

    /// The percent-decoded `options` query parameter of a connection URL, nil when absent.
    static func urlOptions(_ url: String) -> String? {
        guard let q = url.firstIndex(of: "?") else { return nil }
        for pair in url[url.index(after: q)...].split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            if parts.count == 2, parts[0] == "options" { return String(parts[1]).removingPercentEncoding ?? String(parts[1]) }
        }
        return nil
    }

    static func readPassword(_ path: String) throws -> String {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw PostgreSQLError.connectionFailed("cannot read the password file \(path): \((error as NSError).localizedDescription)")
        }
        let password = text.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false).first.map {
            $0.hasSuffix("\r") ? String($0.dropLast()) : String($0)
        } ?? ""
        guard !password.isEmpty else { throw PostgreSQLError.connectionFailed("the password file \(path) is empty") }
        return password
    }

    /// libpq's multi-line messages ("connection to server … failed: FATAL:  …\n") on one line.
    static func clean(_ message: String) -> String {
        message.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty }.joined(separator: "; ")
            .replacingOccurrences(of: ":  ", with: ": ")
    }

    static func milliseconds(_ d: Duration) -> Int64 {
        let (s, atto) = d.components
        return max(0, s * 1000 + (atto + 999_999_999_999_999) / 1_000_000_000_000_000)
    }

    private static func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>) -> R) -> R {
        let copies = strings.map { strdup($0) }
        defer { copies.forEach { free($0) } }
        var pointers: [UnsafePointer<CChar>?] = copies.map { $0.map { UnsafePointer($0) } }
        pointers.append(nil)
        return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
    }
}

/// Parameters laid out for libpq: one buffer, with per-parameter offsets, lengths and formats.
private struct EncodedParameters {
    var types: [Oid] = []
    var formats: [Int32] = []
    var lengths: [Int32] = []
    var offsets: [Int?] = []
    var storage: [UInt8] = []

    init(_ values: [PostgreSQLValue]) throws {
        var total = 1
        for v in values {
            switch v {
            case .bytea(let b): total += b.count
            case .text(let s): total += s.utf8.count + 1
            default: total += 8
            }
        }
        storage.reserveCapacity(total)
        for (i, v) in values.enumerated() {
            switch v {
            case .null:
                append(type: 0, format: 0, bytes: nil)
            case .text(let s):
                // Text format and no type: the server parses it as whatever the statement needs.
                guard !s.utf8.contains(0) else { throw PostgreSQLError.misuse("text parameter $\(i + 1) contains NUL (use bytea)") }
                offsets.append(storage.count); types.append(0); formats.append(0); lengths.append(0)
                storage.append(contentsOf: s.utf8)
                storage.append(0)
            case .int(let x):
                append(type: PostgreSQLType.int8, format: 1, bytes: withUnsafeBytes(of: x.bigEndian) { Array($0) })
            case .double(let x):
                append(type: PostgreSQLType.float8, format: 1, bytes: withUnsafeBytes(of: x.bitPattern.bigEndian) { Array($0) })
            case .bool(let x):
                append(type: PostgreSQLType.bool, format: 1, bytes: [x ? 1 : 0])
            case .bytea(let b):
                guard b.count <= Int(Int32.max) else { throw PostgreSQLError.misuse("bytea parameter $\(i + 1) is over 2 GiB") }
                append(type: PostgreSQLType.bytea, format: 1, bytes: b)
            }
        }
        storage.append(0)  // never empty, so the base address exists
    }

    private mutating func append(type: Oid, format: Int32, bytes: [UInt8]?) {
        types.append(type)
        formats.append(format)
        guard let bytes else { offsets.append(nil); lengths.append(0); return }
        offsets.append(storage.count)
        lengths.append(Int32(bytes.count))
        storage.append(contentsOf: bytes)
    }

    func withParameterPointers<R>(_ body: (UnsafePointer<UnsafePointer<CChar>?>?, UnsafePointer<Int32>?, UnsafePointer<Int32>?) -> R) -> R {
        storage.withUnsafeBufferPointer { buffer in
            let base = UnsafeRawPointer(buffer.baseAddress!)
            let values: [UnsafePointer<CChar>?] = offsets.map { $0.map { (base + $0).assumingMemoryBound(to: CChar.self) } }
            return values.withUnsafeBufferPointer { v in
                lengths.withUnsafeBufferPointer { l in
                    formats.withUnsafeBufferPointer { f in body(v.baseAddress, l.baseAddress, f.baseAddress) }
                }
            }
        }
    }
}

/// Type OIDs of the built-in types this client encodes or decodes (pg_type.oid).
enum PostgreSQLType {
    static let bool: Oid = 16, bytea: Oid = 17, name: Oid = 19, int8: Oid = 20, int2: Oid = 21, int4: Oid = 23
    static let text: Oid = 25, oid: Oid = 26, json: Oid = 114, float4: Oid = 700, float8: Oid = 701
    static let bpchar: Oid = 1042, varchar: Oid = 1043
}

/// The rows of one statement (owns the `PGresult*` and clears it in deinit).
///
/// `@unchecked Sendable`: a `PGresult` is never changed after it is made, and libpq allows
/// reading it from any thread.
public final class PostgreSQLResult: @unchecked Sendable, RandomAccessCollection {
    private let result: OpaquePointer

    init(_ result: OpaquePointer) { self.result = result }
    deinit { PQclear(result) }

    /// The index of the first row (0).
    public var startIndex: Int { 0 }
    /// One past the last row's index (the number of rows).
    public var endIndex: Int { Int(PQntuples(result)) }
    /// The row at `index` (0-based).
    public subscript(index: Int) -> PostgreSQLRow {
        precondition(index >= 0 && index < endIndex, "row index out of range")
        return PostgreSQLRow(result: self, row: Int32(index))
    }

    /// The number of columns.
    public var columnCount: Int { Int(PQnfields(result)) }
    /// The name of column `index` (0-based).
    public func columnName(_ index: Int) -> String { String(cString: PQfname(result, Int32(index))) }
    /// Rows inserted, updated, deleted, selected or copied (`PQcmdTuples`), 0 when not reported.
    public var affectedRows: Int { Int(String(cString: PQcmdTuples(result))) ?? 0 }

    var handle: OpaquePointer { result }
}

/// One row of a `PostgreSQLResult`; columns are 0-based.
///
/// The accessors decode the text format (the default) or the binary one. They throw
/// `PostgreSQLError` with kind `.misuse` on a NULL (use the `optional…` accessors or `isNull`)
/// or a value that is not of the asked type; the message names the column, not the value.
public struct PostgreSQLRow: Sendable {
    private let result: PostgreSQLResult
    private let row: Int32

    init(result: PostgreSQLResult, row: Int32) { self.result = result; self.row = row }

    private var handle: OpaquePointer { result.handle }

    /// Whether column `column` is NULL.
    public func isNull(_ column: Int) -> Bool { PQgetisnull(handle, row, Int32(column)) == 1 }

    /// Column `column` as a 64-bit integer (from `smallint`, `integer`, `bigint`, `oid`).
    /// - Throws: `PostgreSQLError` (`.misuse`) on NULL or a non-integer.
    public func int(_ column: Int) throws -> Int64 {
        let bytes = try raw(column)
        if isBinary(column) {
            switch bytes.count {
            case 2: return Int64(Int16(bigEndian: bytes.loadUnaligned(as: Int16.self)))
            case 4 where type(column) == PostgreSQLType.oid: return Int64(UInt32(bigEndian: bytes.loadUnaligned(as: UInt32.self)))
            case 4: return Int64(Int32(bigEndian: bytes.loadUnaligned(as: Int32.self)))
            case 8: return Int64(bigEndian: bytes.loadUnaligned(as: Int64.self))
            default: throw mismatch(column, "an integer")
            }
        }
        guard let v = Int64(text(of: bytes)) else { throw mismatch(column, "an integer") }
        return v
    }

    /// Column `column` as a double (from `real`, `double precision`, integers, `numeric`
    /// text; `Infinity`, `-Infinity` and `NaN` included).
    /// - Throws: `PostgreSQLError` (`.misuse`) on NULL or a non-number.
    public func double(_ column: Int) throws -> Double {
        let bytes = try raw(column)
        if isBinary(column) {
            switch (type(column), bytes.count) {
            case (PostgreSQLType.float8, 8): return Double(bitPattern: UInt64(bigEndian: bytes.loadUnaligned(as: UInt64.self)))
            case (PostgreSQLType.float4, 4): return Double(Float(bitPattern: UInt32(bigEndian: bytes.loadUnaligned(as: UInt32.self))))
            default: return Double(try int(column))
            }
        }
        let s = text(of: bytes)
        switch s {
        case "Infinity": return .infinity
        case "-Infinity": return -.infinity
        case "NaN": return .nan
        default:
            guard let v = Double(s) else { throw mismatch(column, "a number") }
            return v
        }
    }

    /// Column `column` as a boolean.
    /// - Throws: `PostgreSQLError` (`.misuse`) on NULL or a non-boolean.
    public func bool(_ column: Int) throws -> Bool {
        let bytes = try raw(column)
        if isBinary(column) {
            guard bytes.count == 1 else { throw mismatch(column, "a boolean") }
            return bytes[0] != 0
        }
        switch text(of: bytes) {
        case "t": return true
        case "f": return false
        default: throw mismatch(column, "a boolean")
        }
    }

    /// Column `column` as text: the server's text form of any type (in binary results: text
    /// types only).
    /// - Throws: `PostgreSQLError` (`.misuse`) on NULL, or a binary non-text column.
    public func text(_ column: Int) throws -> String {
        let bytes = try raw(column)
        if isBinary(column) {
            let textTypes = [PostgreSQLType.text, PostgreSQLType.varchar, PostgreSQLType.bpchar, PostgreSQLType.name, PostgreSQLType.json]
            guard textTypes.contains(type(column)) else { throw mismatch(column, "text (binary results decode text types only)") }
        }
        return text(of: bytes)
    }

    /// Column `column` (a `bytea`) as bytes, exactly as stored.
    /// - Throws: `PostgreSQLError` (`.misuse`) on NULL or a column that is not `bytea`.
    public func bytea(_ column: Int) throws -> [UInt8] {
        let bytes = try raw(column)
        guard type(column) == PostgreSQLType.bytea else { throw mismatch(column, "bytea") }
        if isBinary(column) { return Array(bytes) }
        var length = 0
        guard let decoded = PQunescapeBytea(PQgetvalue(handle, row, Int32(column)).map { UnsafeRawPointer($0).assumingMemoryBound(to: UInt8.self) }, &length) else {
            throw mismatch(column, "bytea")
        }
        defer { PQfreemem(decoded) }
        return Array(UnsafeBufferPointer(start: decoded, count: length))
    }

    /// Column `column` as an integer, nil for NULL. - Throws: as `int`.
    public func optionalInt(_ column: Int) throws -> Int64? { isNull(column) ? nil : try int(column) }
    /// Column `column` as a double, nil for NULL. - Throws: as `double`.
    public func optionalDouble(_ column: Int) throws -> Double? { isNull(column) ? nil : try double(column) }
    /// Column `column` as a boolean, nil for NULL. - Throws: as `bool`.
    public func optionalBool(_ column: Int) throws -> Bool? { isNull(column) ? nil : try bool(column) }
    /// Column `column` as text, nil for NULL. - Throws: as `text`.
    public func optionalText(_ column: Int) throws -> String? { isNull(column) ? nil : try text(column) }
    /// Column `column` as bytes, nil for NULL. - Throws: as `bytea`.
    public func optionalBytea(_ column: Int) throws -> [UInt8]? { isNull(column) ? nil : try bytea(column) }

    /// Column `column` as a value chosen by its type: integers as `.int`, floats as `.double`,
    /// `boolean` as `.bool`, `bytea` as `.bytea`, anything else as `.text`, NULL as `.null`.
    /// - Throws: `PostgreSQLError` (`.misuse`) when the value does not decode.
    public func value(_ column: Int) throws -> PostgreSQLValue {
        if isNull(column) { return .null }
        switch type(column) {
        case PostgreSQLType.int2, PostgreSQLType.int4, PostgreSQLType.int8, PostgreSQLType.oid: return .int(try int(column))
        case PostgreSQLType.float4, PostgreSQLType.float8: return .double(try double(column))
        case PostgreSQLType.bool: return .bool(try bool(column))
        case PostgreSQLType.bytea: return .bytea(try bytea(column))
        default: return .text(try text(column))
        }
    }

    private func type(_ column: Int) -> Oid { PQftype(handle, Int32(column)) }
    private func isBinary(_ column: Int) -> Bool { PQfformat(handle, Int32(column)) == 1 }

    /// The column's bytes (valid while the result lives).
    private func raw(_ column: Int) throws -> UnsafeRawBufferPointer {
        guard column >= 0 && column < result.columnCount else { throw PostgreSQLError.misuse("no column \(column)") }
        guard !isNull(column) else { throw PostgreSQLError.misuse("column \(column) (\(result.columnName(column))) is NULL") }
        let length = Int(PQgetlength(handle, row, Int32(column)))
        return UnsafeRawBufferPointer(start: PQgetvalue(handle, row, Int32(column)), count: length)
    }

    private func text(of bytes: UnsafeRawBufferPointer) -> String { String(decoding: bytes, as: UTF8.self) }

    private func mismatch(_ column: Int, _ wanted: String) -> PostgreSQLError {
        PostgreSQLError.misuse("column \(column) (\(result.columnName(column)), type oid \(type(column))) is not \(wanted)")
    }
}

private extension Int64 {
    func divided(roundingUpBy d: Int64) -> Int64 { (self + d - 1) / d }
}
