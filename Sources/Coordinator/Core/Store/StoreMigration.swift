import Foundation
import HatoCrypto
import HatoSupport

/// Copies a SQLite queue (`SQLiteQueueStore`'s `queue.db`) into a PostgreSQL store
/// (`PostgreSQLQueueStore`'s schema): `hato-coordinator store migrate --from sqlite --to postgresql`.
///
/// Everything the coordinator keeps durably is copied, table by table with the same keys and
/// values (StoreMigration+Tables.swift has the map and what is only on one side): messages with
/// their content byte for byte, recipients with their states, attempts and next attempt times,
/// leases, the IP owners, node drain state, warm-up counts, backoffs, pauses, suppressions,
/// unprocessed events, DSN entries and the webhook outbox, the tenant layer (tenants, users, API
/// keys, sending domains, counts, idempotency records, the tenant event log), and the lease
/// hold of `run_state`.
///
/// **One transaction** on the PostgreSQL side: either everything is copied and verified, or
/// nothing is written. The SQLite side is read in one transaction as well (`BEGIN IMMEDIATE`,
/// so no other process can commit to the file while it is read; nothing is written to it).
///
/// **Verified** before the commit: every table has as many rows on both sides, and the same
/// rows (an order-independent SHA-256 fingerprint of every row, content included, computed
/// from the SQLite rows and again from the rows read back from PostgreSQL); a difference rolls
/// the copy back and throws.
///
/// **Idempotent**: the copy records a marker (`run_state` key `migrated_from_sqlite`: the
/// SQLite store's identity, the leadership term and each table's fingerprint). A second run
/// against the same queue compares instead of copying: the same rows on both sides →
/// `.alreadyMigrated`, nothing written; the SQLite queue changed since but no coordinator has
/// served from PostgreSQL (same term) → the copied rows are replaced by a fresh copy, so the
/// result is what one run would give; PostgreSQL has served since and the SQLite queue
/// changed → refused (the two queues went separate ways). A PostgreSQL store holding rows
/// that did not come from this queue is never written to.
///
/// **Refuses** while a coordinator serves either side: a live leader in PostgreSQL's
/// `leadership` row; `options.coordinatorAnswering` (the CLI: the admin API addresses of
/// cluster.yml) when the SQLite `run_state` records a run that has not stopped, or when
/// coordinators have served from the PostgreSQL store at all (with several, one may have
/// stopped cleanly while others serve). The SQLite file's lock is checked by the
/// caller before the file is opened (`sqliteHolder(databasePath:)`).
///
/// Blocking: call from a thread of its own (the CLI's main thread), not from a Swift
/// concurrency task.
public struct StoreMigration {
    /// How to run.
    public struct Options: Sendable {
        /// Read and count only: nothing is written to PostgreSQL (not even the schema).
        /// Default false.
        public var dryRun: Bool
        /// Receives a progress line every `progressEvery` rows of a table (the CLI: stderr).
        /// Default nil.
        public var progress: (@Sendable (String) -> Void)?
        /// Rows between progress lines. Default 10 000.
        public var progressEvery: Int
        /// The admin address of a coordinator that answers, if one does (checked when a
        /// store's `run_state` says its last run has not stopped). Default nil: not checked.
        public var coordinatorAnswering: (@Sendable () -> String?)?
        /// This host's boot id, for the lease hold of an unclean SQLite stop. Default
        /// `Queue.currentBootID()`.
        public var bootID: String?
        /// The current time. Default `Date()` at each use.
        public var now: @Sendable () -> Date

        /// - Parameters: see the properties.
        public init(dryRun: Bool = false, progress: (@Sendable (String) -> Void)? = nil, progressEvery: Int = 10_000,
                    coordinatorAnswering: (@Sendable () -> String?)? = nil, bootID: String? = Queue.currentBootID(),
                    now: @escaping @Sendable () -> Date = { Date() }) {
            self.dryRun = dryRun; self.progress = progress; self.progressEvery = max(1, progressEvery)
            self.coordinatorAnswering = coordinatorAnswering; self.bootID = bootID; self.now = now
        }
    }

    /// The advisory lock that keeps two migrations into one database apart ("HatoMigS").
    public static let lockKey: Int64 = 0x4861_746F_4D69_6753
    /// The `run_state` key of the marker a migration leaves in PostgreSQL.
    public static let markerKey = "migrated_from_sqlite"
    /// Content octets read, or sent in one statement, at a time (about).
    static let pageOctets = 32 << 20

    /// The octets of a row's blob columns.
    static func contentOctets(_ row: [Cell]) -> Int {
        row.reduce(0) { if case .blob(let b) = $1 { return $0 + b.count }; return $0 }
    }

    let sqlite: SQLiteDatabase
    let sqlitePath: String
    let postgreSQL: PostgreSQLConnection
    let options: Options

    /// - Parameters:
    ///   - sqlite: an open connection to the SQLite queue (used alone for the whole run; not
    ///     the store's own connection while the store is in use).
    ///   - sqlitePath: the queue's file, for the report and the identity of a queue that never
    ///     served (no `store_id` yet).
    ///   - postgreSQL: a connection to the target database, outside a transaction; better
    ///     without a statement timeout (a large copy is one long transaction).
    ///   - options: how to run.
    public init(sqlite: SQLiteDatabase, sqlitePath: String, postgreSQL: PostgreSQLConnection, options: Options = Options()) {
        self.sqlite = sqlite; self.sqlitePath = sqlitePath; self.postgreSQL = postgreSQL; self.options = options
    }

    /// Copies `store`'s queue through a connection of its own to the store's file (the store
    /// may stay open; it must not be written meanwhile — the copy holds the file's write lock).
    /// - Parameters:
    ///   - store: the SQLite queue.
    ///   - postgreSQL: the target, outside a transaction.
    ///   - options: how to run.
    /// - Returns: what was copied and verified.
    /// - Throws: as `run()`.
    public static func run(from store: SQLiteQueueStore, to postgreSQL: PostgreSQLConnection, options: Options = Options()) throws -> Report {
        let db = try SQLiteDatabase(path: store.path)
        return try StoreMigration(sqlite: db, sqlitePath: store.path, postgreSQL: postgreSQL, options: options).run()
    }

    /// Runs the migration (or the dry run).
    /// - Returns: what was copied (or would be) and how it was verified.
    /// - Throws: `StoreMigrationError` when it refuses (a coordinator serving, a target with
    ///   other rows, queues that went separate ways) or the verification fails — nothing is
    ///   written then; `SQLiteError`, `PostgreSQLError` (the PostgreSQL transaction is rolled
    ///   back: nothing is written).
    public func run() throws -> Report {
        let started = ContinuousClock.now
        // One read transaction over the whole SQLite file: a consistent snapshot. The real run
        // takes the write lock (IMMEDIATE) so that no coordinator can commit while it copies.
        try sqlite.execute(options.dryRun ? "BEGIN" : "BEGIN IMMEDIATE")
        defer { try? sqlite.execute("ROLLBACK") }
        let source = try SQLiteSource(sqlite, spoolDirectory: (sqlitePath as NSString).deletingLastPathComponent + "/spool")
        let runState = try source.runState()
        if runState["clean_stop"] == "0", let address = options.coordinatorAnswering?() {
            throw StoreMigrationError.coordinatorRunning(
                "the SQLite queue \(sqlitePath) records a run that has not stopped (run_state clean_stop=0) and a coordinator answers on its admin API at \(address): stop it first")
        }
        var counts: [String: Int] = [:]
        for t in Self.tables { counts[t.name] = try source.count(t) }
        let sourceID = runState["store_id"].map { "sqlite store \($0)" } ?? "sqlite file \(URL(fileURLWithPath: sqlitePath).standardizedFileURL.path)"
        let hold = Self.leaseHold(runState: runState, bootID: options.bootID, now: options.now(),
                                  syncFailed: SyncFailureMarker.exists(at: SyncFailureMarker.path(forDatabase: sqlitePath)))

        let schemaPresent: Bool
        if options.dryRun {
            schemaPresent = try !PostgreSQLMigrations.appliedVersions(on: postgreSQL).isEmpty
        } else {
            try PostgreSQLQueueStore.migrations.apply(on: postgreSQL)
            schemaPresent = true
        }
        var report = try postgreSQL.transaction(isolation: .readCommitted) {
            try migrate(source: source, counts: counts, sourceID: sourceID, hold: hold, schemaPresent: schemaPresent)
        }
        if report.outcome == .copied || report.outcome == .copiedAgain {
            // After the commit, once more: the row counts as anyone now reads them.
            for t in Self.tables {
                let n = try Self.count(t, on: postgreSQL)
                if let i = report.tables.firstIndex(where: { $0.table == t.name }) { report.tables[i].postgreSQL = n }
            }
            let differ = report.tables.filter { $0.sqlite != $0.postgreSQL }
            guard differ.isEmpty else {
                throw StoreMigrationError.verificationFailed("after the commit, row counts differ: "
                    + differ.map { "\($0.table) \($0.sqlite) in SQLite, \($0.postgreSQL) in PostgreSQL" }.joined(separator: "; "))
            }
        }
        report.totalSeconds = (ContinuousClock.now - started).inSeconds
        return report
    }

    // MARK: The PostgreSQL transaction

    /// What a run does to the target.
    enum Plan { case copy, copyAgain }

    private func migrate(source: SQLiteSource, counts: [String: Int], sourceID: String, hold: Double?, schemaPresent: Bool) throws -> Report {
        let c = postgreSQL
        var report = Report(outcome: .dryRun, sqlitePath: sqlitePath, target: c.configuration.redactedURL,
                            tables: Self.tables.map { Report.TableCount(table: $0.name, sqlite: counts[$0.name] ?? 0, copied: 0, postgreSQL: 0) })
        report.leaseHoldUntil = hold.map { Date(timeIntervalSince1970: $0) }
        guard schemaPresent else {
            // A dry run against a database the store never opened: everything would be copied.
            report.notes.append("the PostgreSQL database has no Hato schema yet: the migration creates it")
            report.plannedCopy = true
            return report
        }
        try c.query("SELECT pg_advisory_xact_lock($1)", [.int(Self.lockKey)])
        // The leadership row, locked for the copy: no coordinator can begin a term meanwhile.
        guard let row = try c.query("""
            SELECT term, leader, expires_at > now(), CASE WHEN expires_at > now() THEN EXTRACT(EPOCH FROM expires_at - now())::float8 ELSE 0 END
            FROM leadership WHERE id = 1
            """ + (options.dryRun ? "" : " FOR UPDATE")).first else {
            throw PostgreSQLError.misuse("the leadership row is missing (migration 2)")
        }
        let term = try row.int(0)
        if let leader = try row.optionalText(1), try row.bool(2) {
            throw StoreMigrationError.coordinatorRunning(
                "coordinator \(leader) leads the PostgreSQL store (term \(term), its leadership runs \(Int(try row.double(3).rounded(.up))) s more): stop it first")
        }
        let targetRunState = try Dictionary(c.query("SELECT key, value FROM run_state").map { (try $0.text(0), try $0.text(1)) },
                                            uniquingKeysWith: { a, _ in a })
        // A coordinator has served from this database (its beginRun wrote clean_stop). With
        // several coordinators one may have stopped cleanly while the others still serve, so
        // any answering admin address refuses, whatever the last recorded stop says.
        if let stop = targetRunState["clean_stop"] {
            if let address = options.coordinatorAnswering?() {
                throw StoreMigrationError.coordinatorRunning(stop == "0"
                    ? "a coordinator is serving from the PostgreSQL store (run_state clean_stop=0) and answers on its admin API at \(address): stop it first"
                    : "a coordinator answers on its admin API at \(address), and coordinators have served from the PostgreSQL store: stop every coordinator first")
            }
            if stop == "0" { report.notes.append("the last coordinator run on the PostgreSQL store did not stop cleanly") }
        }
        var targetCounts: [String: Int] = [:]
        for t in Self.tables { targetCounts[t.name] = try Self.count(t, on: c) }
        for i in report.tables.indices { report.tables[i].postgreSQL = targetCounts[report.tables[i].table] ?? 0 }
        let marker = targetRunState[Self.markerKey].flatMap { try? JSONDecoder().decode(Marker.self, from: Data($0.utf8)) }

        let plan: Plan
        if targetCounts.values.allSatisfy({ $0 == 0 }) {
            plan = .copy
        } else if let marker, marker.source == sourceID {
            let sourcePrints = try fingerprints(of: source)
            let targetPrints = try fingerprints(on: c)
            if targetPrints == sourcePrints && targetCounts == counts {
                report.outcome = .alreadyMigrated
                report.verified = true
                report.notes.append("migrated at \(Self.timestamp(marker.at)); the PostgreSQL store holds the same rows")
                return report
            }
            // Untouched since the copy: the same term (no coordinator began one) and the rows the
            // copy left. Then only the SQLite queue moved on, and a fresh copy replaces the old.
            let untouched = marker.term == term && targetPrints == marker.fingerprints
            if untouched {
                plan = .copyAgain
                report.notes.append("the SQLite queue changed after the copy made at \(Self.timestamp(marker.at)), and the PostgreSQL store did not: "
                                    + "the copy is replaced")
            } else if sourcePrints == marker.fingerprints {
                report.outcome = .alreadyMigrated
                report.notes.append("migrated at \(Self.timestamp(marker.at)) (term \(marker.term)); the PostgreSQL store has changed since "
                                    + "(term \(term)): coordinators served from it, so its rows are not compared")
                return report
            } else {
                throw StoreMigrationError.servedSinceMigration(
                    "the SQLite queue changed after it was migrated (\(Self.timestamp(marker.at)), term \(marker.term)) and the PostgreSQL store "
                    + "has changed too (term \(term)): the two queues went separate ways; nothing copied")
            }
        } else {
            let held = Self.tables.compactMap { t in targetCounts[t.name].flatMap { $0 > 0 ? "\(t.name): \($0)" : nil } }
            let origin = marker.map { " (it was migrated from another queue: \($0.source))" } ?? ""
            throw StoreMigrationError.targetNotEmpty(
                "the PostgreSQL store already holds rows that did not come from this SQLite queue\(origin): \(held.joined(separator: ", ")); "
                + "migrate into an empty database or schema")
        }
        if options.dryRun {
            report.plannedCopy = true
            if plan == .copyAgain { report.notes.append("a migration would replace the earlier copy") }
            return report
        }

        // The copy.
        let triggers = try disableTriggers(on: c)
        if plan == .copyAgain {
            for t in Self.tables.reversed() { try c.run("DELETE FROM \(Self.quoted(t.name))") }
        }
        let copyStarted = ContinuousClock.now
        var prints: [String: String] = [:]
        for (i, t) in Self.tables.enumerated() {
            let (copied, fingerprint, bytes) = try copy(t, of: counts[t.name] ?? 0, from: source, to: c)
            report.tables[i].copied = copied
            report.contentBytes += bytes
            prints[t.name] = fingerprint
            if let column = t.identity {
                let highWater = try source.highWater(t, column: column)
                if highWater > 0 {
                    try c.query("SELECT setval(pg_get_serial_sequence($1, $2), $3)", [.text(t.name), .text(column), .int(highWater)])
                }
            }
        }
        if let hold {
            let current = targetRunState["lease_hold_until"].flatMap(Double.init) ?? 0
            try c.run("INSERT INTO run_state(key, value) VALUES('lease_hold_until', $1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                      [.text(String(max(hold, current)))])
        }
        let newMarker = Marker(source: sourceID, path: sqlitePath, at: options.now().timeIntervalSince1970, term: term,
                               fingerprints: prints, counts: counts)
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        try c.run("INSERT INTO run_state(key, value) VALUES($1, $2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                  [.text(Self.markerKey), .text(String(decoding: try encoder.encode(newMarker), as: UTF8.self))])
        for (table, name) in triggers { try c.execute("ALTER TABLE \(Self.quoted(table)) ENABLE TRIGGER \(Self.quoted(name))") }
        report.copySeconds = (ContinuousClock.now - copyStarted).inSeconds

        // Verification inside the transaction: a difference rolls everything back.
        let verifyStarted = ContinuousClock.now
        var differences: [String] = []
        let targetPrints = try fingerprints(on: c)
        for (i, t) in Self.tables.enumerated() {
            let n = try Self.count(t, on: c)
            report.tables[i].postgreSQL = n
            if n != counts[t.name] ?? 0 {
                differences.append("\(t.name): \(counts[t.name] ?? 0) rows in SQLite, \(n) in PostgreSQL")
            } else if targetPrints[t.name] != prints[t.name] {
                differences.append("\(t.name): the same number of rows, different contents")
            }
        }
        guard differences.isEmpty else {
            throw StoreMigrationError.verificationFailed("the copy differs from the SQLite queue, nothing was written: " + differences.joined(separator: "; "))
        }
        report.verifySeconds = (ContinuousClock.now - verifyStarted).inSeconds
        report.verified = true
        report.outcome = plan == .copy ? .copied : .copiedAgain
        return report
    }

    /// Switches off the enabled user triggers of the copied tables for this transaction (the
    /// reporting triggers would add events for copied rows); returns them to switch on again.
    private func disableTriggers(on c: PostgreSQLConnection) throws -> [(String, String)] {
        var out: [(String, String)] = []
        for t in Self.tables {
            for r in try c.query("SELECT tgname FROM pg_trigger WHERE tgrelid = $1::regclass AND NOT tgisinternal AND tgenabled <> 'D' ORDER BY tgname",
                                 [.text(Self.quoted(t.name))]) {
                let name = try r.text(0)
                try c.execute("ALTER TABLE \(Self.quoted(t.name)) DISABLE TRIGGER \(Self.quoted(name))")
                out.append((t.name, name))
            }
        }
        return out
    }

    /// Copies one table page by page. - Returns: rows inserted, the SQLite rows' fingerprint,
    /// content octets copied (blob columns).
    private func copy(_ t: Table, of total: Int, from source: SQLiteSource, to c: PostgreSQLConnection) throws -> (Int, String, Int) {
        var fingerprint = Fingerprint()
        var inserted = 0, seen = 0, bytes = 0
        let started = ContinuousClock.now
        var nextReport = options.progressEvery
        try source.pages(t) { rows in
            for row in rows { fingerprint.add(row) }
            // At most ~65k parameters per statement, and about 32 MiB of content.
            let perRow = t.columns.reduce(0) { $0 + ($1.kind == .blob && $1.nullable ? 2 : 1) }
            var start = 0
            while start < rows.count {
                var end = start, size = 0
                while end < rows.count && (end - start) * perRow + perRow <= 65_000 && (end == start || size < Self.pageOctets) {
                    size += Self.contentOctets(rows[end])
                    end += 1
                }
                inserted += try Self.insert(t, rows[start..<end], on: c)
                bytes += size
                start = end
            }
            seen += rows.count
            if seen >= nextReport, let progress = options.progress {
                let rate = Double(seen) / max((ContinuousClock.now - started).inSeconds, 0.001)
                progress("\(t.name): \(seen)/\(total) copied (\(Int(rate)) rows/s)")
                while nextReport <= seen { nextReport += options.progressEvery }
            }
        }
        return (inserted, fingerprint.hex, bytes)
    }

    /// Each table's fingerprint from the SQLite rows.
    private func fingerprints(of source: SQLiteSource) throws -> [String: String] {
        var out: [String: String] = [:]
        for t in Self.tables {
            var fingerprint = Fingerprint()
            try source.pages(t) { rows in for row in rows { fingerprint.add(row) } }
            out[t.name] = fingerprint.hex
        }
        return out
    }

    /// Each table's fingerprint from the PostgreSQL rows.
    private func fingerprints(on c: PostgreSQLConnection) throws -> [String: String] {
        var out: [String: String] = [:]
        for t in Self.tables {
            var fingerprint = Fingerprint()
            var after: [Cell]?
            var limit = t.firstPageSize
            while true {
                let keys = t.key.map(Self.quoted).joined(separator: ", ")
                var sql = "SELECT \(t.columns.map { Self.quoted($0.name) }.joined(separator: ", ")) FROM \(Self.quoted(t.name))"
                var parameters: [PostgreSQLValue] = []
                if let after {
                    sql += " WHERE (\(keys)) > (\(t.key.indices.map { "$\($0 + 1)" }.joined(separator: ", ")))"
                    parameters = after.map { if case .int(let x) = $0 { return .int(x) }; if case .text(let s) = $0 { return .text(s) }; return .null }
                }
                sql += " ORDER BY \(keys) LIMIT $\(parameters.count + 1)"
                parameters.append(.int(Int64(limit)))
                let rows = try c.query(sql, parameters, binaryResults: true)
                var page: [[Cell]] = []
                for r in rows {
                    let cells = try t.columns.enumerated().map { i, column -> Cell in
                        if r.isNull(i) { return .null }
                        switch column.kind {
                        case .text: return .text(try r.text(i))
                        case .int: return .int(try r.int(i))
                        case .double: return .double(try r.double(i))
                        case .blob: return .blob(try r.bytea(i))
                        }
                    }
                    fingerprint.add(cells)
                    after = t.keyIndexes.map { cells[$0] }
                    if t.hasContent { page.append(cells) }
                }
                if rows.count < limit { break }
                limit = t.nextPageSize(after: page)
            }
            out[t.name] = fingerprint.hex
        }
        return out
    }

    /// Inserts rows with one multi-row statement. - Returns: rows inserted (a row whose key is
    /// present is skipped).
    static func insert(_ t: Table, _ rows: ArraySlice<[Cell]>, on c: PostgreSQLConnection) throws -> Int {
        guard !rows.isEmpty else { return 0 }
        var parameters: [PostgreSQLValue] = []
        var tuples: [String] = []
        for row in rows {
            var placeholders: [String] = []
            for (column, cell) in zip(t.columns, row) {
                // Parameters keep one type per position whatever the row (a NULL goes untyped,
                // so a nullable number travels as text and a nullable bytea with a NULL flag):
                // each batch size prepares one statement, not one per pattern of NULLs.
                switch (column.kind, column.nullable) {
                case (.blob, true):
                    var content: [UInt8] = []
                    if case .blob(let b) = cell { content = b }
                    parameters.append(.text(cell == .null ? "t" : "f"))
                    parameters.append(.bytea(content))
                    placeholders.append("CASE WHEN $\(parameters.count - 1)::boolean THEN NULL ELSE $\(parameters.count)::bytea END")
                    continue
                case (.int, true), (.double, true):
                    switch cell {
                    case .int(let x): parameters.append(.text(String(x)))
                    case .double(let x): parameters.append(.text(Self.floatText(x)))
                    default: parameters.append(.null)
                    }
                default:
                    switch cell {
                    case .null: parameters.append(.null)
                    case .int(let x): parameters.append(.int(x))
                    case .double(let x): parameters.append(.double(x))
                    case .text(let s): parameters.append(.text(s))
                    case .blob(let b): parameters.append(.bytea(b))
                    }
                }
                placeholders.append("$\(parameters.count)::\(column.kind.postgreSQLType)")
            }
            tuples.append("(" + placeholders.joined(separator: ", ") + ")")
        }
        let sql = "INSERT INTO \(quoted(t.name)) (\(t.columns.map { quoted($0.name) }.joined(separator: ", "))) VALUES "
            + tuples.joined(separator: ", ") + " ON CONFLICT DO NOTHING"
        return try c.run(sql, parameters)
    }

    static func count(_ t: Table, on c: PostgreSQLConnection) throws -> Int {
        Int(try c.query("SELECT count(*) FROM \(quoted(t.name))").first?.int(0) ?? 0)
    }

    /// The lease hold the SQLite store's next `beginRun` would decide (SQLiteQueueStore+RunState.swift):
    /// an earlier hold still in force, or, after an unclean stop followed by a new boot, the
    /// durable lease horizon (lease records written without fsync may be lost, and their
    /// nodes may still deliver them). Nil when none is ahead of `now`.
    /// - Parameters:
    ///   - runState: the SQLite `run_state` rows.
    ///   - bootID: this host's boot id.
    ///   - now: the current time.
    ///   - syncFailed: whether the SQLite queue's last run recorded a failed WAL sync
    ///     (`SyncFailureMarker`): lease records may be lost as after a new boot.
    /// - Returns: seconds since 1970 before which no new lease may be granted, or nil.
    static func leaseHold(runState: [String: String], bootID: String?, now: Date, syncFailed: Bool = false) -> Double? {
        let clean = runState["clean_stop"] == "1"
        let storedBoot = runState["boot_id"]
        var hold = runState["lease_hold_until"].flatMap(Double.init) ?? 0
        if syncFailed || (!clean && storedBoot != nil && storedBoot != bootID) {
            hold = max(hold, runState["lease_horizon"].flatMap(Double.init) ?? 0)
        }
        return hold > now.timeIntervalSince1970 ? hold : nil
    }

    /// A double as PostgreSQL's `float8` input reads it back exactly (Swift prints the
    /// shortest text that round-trips).
    static func floatText(_ x: Double) -> String {
        if x.isNaN { return "NaN" }
        if x.isInfinite { return x < 0 ? "-Infinity" : "Infinity" }
        return "\(x)"
    }

    /// An SQL identifier in double quotes (both databases).
    static func quoted(_ name: String) -> String { "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\"" }

    static func timestamp(_ t: Double) -> String {
        let f = ISO8601DateFormatter()
        return f.string(from: Date(timeIntervalSince1970: t))
    }
}

// MARK: - Values

extension StoreMigration {
    /// One value as read from either database.
    enum Cell: Equatable, Sendable {
        case null, int(Int64), double(Double), text(String), blob([UInt8])

        /// A canonical encoding for the fingerprint: a tag, then the value (lengths and numbers
        /// little-endian, doubles by their bits).
        func append(to out: inout [UInt8]) {
            func number(_ x: UInt64) { withUnsafeBytes(of: x.littleEndian) { out.append(contentsOf: $0) } }
            switch self {
            case .null: out.append(0)
            case .int(let x): out.append(1); number(UInt64(bitPattern: x))
            case .double(let x): out.append(2); number(x.bitPattern)
            case .text(let s): out.append(3); number(UInt64(s.utf8.count)); out.append(contentsOf: s.utf8)
            case .blob(let b): out.append(4); number(UInt64(b.count)); out.append(contentsOf: b)
            }
        }
    }

    /// An order-independent fingerprint of a set of rows: the XOR of each row's SHA-256 (rows
    /// are distinct by their primary key, so none cancels another).
    struct Fingerprint: Sendable {
        private var bytes = [UInt8](repeating: 0, count: 32)
        /// Rows added.
        private(set) var rows = 0

        mutating func add(_ row: [Cell]) {
            var encoded: [UInt8] = []
            for cell in row { cell.append(to: &encoded) }
            for (i, b) in Crypto.sha256(encoded).enumerated() { bytes[i] ^= b }
            rows += 1
        }

        /// Row count and digest, e.g. `12:9f…`.
        var hex: String { "\(rows):" + bytes.map { String(format: "%02x", $0) }.joined() }
    }

    /// What a migration leaves in PostgreSQL's `run_state` (`markerKey`), as JSON.
    struct Marker: Codable, Sendable {
        /// The SQLite store's identity (`store_id`, or the file for a queue that never served).
        var source: String
        /// The SQLite file copied.
        var path: String
        /// When (seconds since 1970).
        var at: Double
        /// The leadership term when the copy was made (a later one: coordinators served since).
        var term: Int64
        /// Each table's fingerprint at the copy.
        var fingerprints: [String: String]
        /// Each table's rows at the copy.
        var counts: [String: Int]
    }
}

// MARK: - The SQLite side

extension StoreMigration {
    /// The SQLite queue as the migration reads it: tables and columns that older files lack
    /// (tables made on first use, columns added later) read as empty and NULL.
    final class SQLiteSource {
        let db: SQLiteDatabase
        /// Each table's columns in this file (empty: no such table).
        private var columns: [String: Set<String>] = [:]

        /// The queue's spool (large bodies outside the file, BodySpool.swift), when the file has
        /// spooled rows' columns and the directory exists.
        private var spool: BodySpool?

        /// - Parameters:
        ///   - db: the queue file, in the migration's read transaction.
        ///   - spoolDirectory: where the queue's spool is (`<queue directory>/spool`).
        init(_ db: SQLiteDatabase, spoolDirectory: String) throws {
            self.db = db
            for name in StoreMigration.tables.map(\.name) + ["run_state", "sqlite_sequence"] {
                columns[name] = Set(try db.prepare("SELECT name FROM pragma_table_info(?)").query([.text(name)]) { $0.text(0) })
            }
            if columns["messages"]?.contains("body_segment") == true {
                if FileManager.default.fileExists(atPath: spoolDirectory) {
                    spool = try BodySpool(directory: spoolDirectory)
                } else if try !db.prepare("SELECT 1 FROM messages WHERE body_segment IS NOT NULL LIMIT 1").query([], { $0.int(0) }).isEmpty {
                    throw StoreMigrationError.sourceMissing(
                        "messages of the SQLite queue keep their content in the spool directory \(spoolDirectory), which is missing: copy it with queue.db")
                }
            }
        }

        /// `rows` of `messages` with each spooled body read into its `body` cell, as if it had
        /// been in the row (PostgreSQL keeps every body in its row).
        /// - Throws: `SQLiteError`; `BodySpool.MissingBody` when a row's body is not in the spool.
        func withSpooledBodies(_ t: Table, _ rows: [[Cell]]) throws -> [[Cell]] {
            guard t.name == "messages", let spool,
                  let bodyIndex = t.columns.firstIndex(where: { $0.name == "body" }),
                  let idIndex = t.columns.firstIndex(where: { $0.name == "id" }) else { return rows }
            let locate = try db.prepare("SELECT body_segment, body_offset, size FROM messages WHERE id=? AND body IS NULL AND body_segment IS NOT NULL")
            return try rows.map { row in
                guard case .null = row[bodyIndex], case .text(let id) = row[idIndex],
                      let location = try locate.query([.text(id)], {
                          BodySpool.Location(segment: $0.int(0), offset: $0.int(1), length: Int($0.int(2)))
                      }).first else { return row }
                var filled = row
                filled[bodyIndex] = .blob(try spool.read(location))
                return filled
            }
        }

        func has(_ table: String) -> Bool { !(columns[table] ?? []).isEmpty }

        func count(_ t: Table) throws -> Int {
            guard has(t.name) else { return 0 }
            return Int(try db.prepare("SELECT COUNT(*) FROM \(StoreMigration.quoted(t.name))").query { $0.int(0) }.first ?? 0)
        }

        func runState() throws -> [String: String] {
            guard has("run_state") else { return [:] }
            return Dictionary(try db.prepare("SELECT key, value FROM run_state").query { ($0.text(0), $0.text(1)) }, uniquingKeysWith: { a, _ in a })
        }

        /// The highest value the identity column has had: `sqlite_sequence` (AUTOINCREMENT
        /// remembers deleted rows' ids) or the largest present.
        func highWater(_ t: Table, column: String) throws -> Int64 {
            guard has(t.name) else { return 0 }
            var high = try db.prepare("SELECT COALESCE(MAX(\(StoreMigration.quoted(column))), 0) FROM \(StoreMigration.quoted(t.name))").query { $0.int(0) }.first ?? 0
            if has("sqlite_sequence") {
                high = max(high, try db.prepare("SELECT seq FROM sqlite_sequence WHERE name = ?").query([.text(t.name)]) { $0.int(0) }.first ?? 0)
            }
            return high
        }

        /// Calls `body` with the table's rows, a page at a time, in primary key order.
        func pages(_ t: Table, _ body: ([[Cell]]) throws -> Void) throws {
            guard let present = columns[t.name], !present.isEmpty else { return }
            let select = t.columns.map { c -> String in
                let base = present.contains(c.name) ? StoreMigration.quoted(c.name) : "NULL"
                return c.sqliteExpression.map { $0.replacingOccurrences(of: "%@", with: base) } ?? base
            }.joined(separator: ", ")
            let keys = t.key.map(StoreMigration.quoted).joined(separator: ", ")
            let first = "SELECT \(select) FROM \(StoreMigration.quoted(t.name)) ORDER BY \(keys) LIMIT ?"
            let next = "SELECT \(select) FROM \(StoreMigration.quoted(t.name)) WHERE (\(keys)) > (\(t.key.map { _ in "?" }.joined(separator: ", "))) ORDER BY \(keys) LIMIT ?"
            var after: [SQLiteStatement.Value]?
            var limit = t.firstPageSize
            while true {
                let binds = (after ?? []) + [.int(Int64(limit))]
                let rows = try withSpooledBodies(t, db.prepare(after == nil ? first : next).query(binds) { s in
                    t.columns.enumerated().map { i, column -> Cell in
                        let i = Int32(i)
                        if s.isNull(i) { return .null }
                        switch column.kind {
                        case .text: return .text(s.text(i))
                        case .int: return .int(s.int(i))
                        case .double: return .double(s.double(i))
                        case .blob: return .blob(s.blob(i))
                        }
                    }
                })
                if rows.isEmpty { return }
                try body(rows)
                guard rows.count == limit, let last = rows.last else { return }
                limit = t.nextPageSize(after: rows)
                after = t.keyIndexes.map { i -> SQLiteStatement.Value in
                    switch last[i] {
                    case .int(let x): return .int(x)
                    case .text(let s): return .text(s)
                    default: return .null
                    }
                }
            }
        }
    }
}
