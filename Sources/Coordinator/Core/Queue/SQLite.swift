import CSQLite
import Foundation
import HatoSupport
import Synchronization

/// An SQLite failure with the library's message.
public struct SQLiteError: Error, CustomStringConvertible, Sendable {
    /// The SQLite result code.
    public let code: Int32
    /// What failed and SQLite's message.
    public let message: String
    /// The `errno` of the system call behind an `SQLITE_IOERR` (`sqlite3_system_errno`), 0 when
    /// none is known.
    public var systemErrno: Int32 = 0
    public var description: String { "sqlite error \(code): \(message)" }
    /// Whether the database or its file system is full: `SQLITE_FULL` (also as an extended
    /// code; SQLite's name for ENOSPC), or an `SQLITE_IOERR` whose write failed with EDQUOT (a
    /// disk quota, which SQLite reports as `SQLITE_IOERR_WRITE`). The write was rolled back and
    /// nothing of it is stored.
    public var isFull: Bool { code & 0xFF == SQLITE_FULL || (code & 0xFF == SQLITE_IOERR && systemErrno == EDQUOT) }
}

/// One SQLite database connection (owns the `sqlite3*` and closes it in deinit).
///
/// Opened with `SQLITE_OPEN_NOMUTEX`: callers serialise access (the queue store
/// holds one lock around every use of the handle), which is why `@unchecked Sendable` is safe.
/// The exceptions touch no SQLite state and are safe without that lock: `completeSync`, and
/// reading `committedWrites`, `durableWrites` and `walSyncFailure`.
public final class SQLiteDatabase: @unchecked Sendable {
    private var handle: OpaquePointer?
    private var statements: [String: SQLiteStatement] = [:]
    /// Whether the connection is known to be at `synchronous=FULL` (see `transaction`).
    private var synchronousFull = true
    /// Whether a synced commit is made durable by syncing the WAL file after `COMMIT`
    /// (`syncWALAfterCommits()`), the connection staying at `synchronous=NORMAL`.
    private var walSyncAfterCommit = false
    /// Syncs of the WAL this connection issued or made (after synced commits with
    /// `syncWALAfterCommits`, with the caller's lock or without it in `completeSync`; a
    /// `synchronous=FULL` commit's own sync otherwise).
    var walSyncsIssued: Int { syncState.withLock { $0.issued } }
    /// Commits on this connection that wrote frames, numbered in commit order (`committedWrites`).
    private let writeCommits = Atomic<UInt64>(0)
    /// What is known synced, the first failed sync, syncs issued: shared with `completeSync`,
    /// which runs without the caller's lock.
    private let syncState = Locked(SyncState())
    private struct SyncState {
        var durable: UInt64 = 0
        var failure: SQLiteError?
        var issued = 0
    }
    /// Our own descriptor of the WAL file for syncs outside the caller's lock (`completeSync`),
    /// opened after the first sync through SQLite's handle.
    private var walFile: WALFile?
    /// Set while `transactionSyncingWAL` runs its brackets and body: no statement syncs on its own then.
    private var inTransaction = false
    /// The first failed sync of the WAL (`syncWALAfterCommits`), or of the database file or the
    /// WAL's header by SQLite itself (`noteIOError`): from then on every write is
    /// refused. What was committed but maybe not synced stays visible to this connection, and
    /// after a failed fsync the kernel may report later ones as successful although pages of
    /// that write never reached the disk (Linux drops the error once reported): the only safe
    /// course is to write nothing more until the process restarts and SQLite recovers the WAL
    /// from what the disk holds (as PostgreSQL stops on a failed fsync).
    public var walSyncFailure: SQLiteError? { syncState.withLock { $0.failure } }
    /// Called after each sync of the WAL (a synced commit's, or `completeSync`), with the number
    /// of the last commit it covers (`committedWrites`): every frame of that commit and of every
    /// earlier one is on stable storage from then on. Called under the caller's lock or (for
    /// `completeSync`) without it; must return at once. (A commit that wrote nothing has no
    /// number and syncs nothing.)
    public var onSynced: (@Sendable (_ coveredCommit: UInt64) -> Void)?

    /// The number of the last commit on this connection that wrote frames (1, 2, … in commit
    /// order; 0 before the first). Read under the caller's lock, it is the newest commit a
    /// snapshot can see; without it, a commit may be visible that is not counted yet (at most
    /// one: commits are serialised by that lock). A sync covers the commits numbered up to what
    /// it read before it started (`onSynced`).
    public var committedWrites: UInt64 { writeCommits.load(ordering: .acquiring) }

    /// The number of the last commit known to be on stable storage (see `committedWrites`).
    public var durableWrites: UInt64 { syncState.withLock { $0.durable } }

    /// Opens (creating if needed) the database file.
    /// - Throws: `SQLiteError` when the file cannot be opened.
    public init(path: String) throws {
        var db: OpaquePointer?
        let rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nil)
        guard rc == SQLITE_OK, let db else {
            let msg = db.map { String(cString: sqlite3_errmsg($0)) } ?? "cannot open"
            if let db { sqlite3_close_v2(db) }
            throw SQLiteError(code: rc, message: "\(path): \(msg)")
        }
        handle = db
        sqlite3_busy_timeout(db, 5000)
    }

    deinit {
        statements.removeAll()
        if let handle { sqlite3_close_v2(handle) }
    }

    /// Runs one or more SQL statements without results.
    /// - Throws: `SQLiteError`.
    public func execute(_ sql: String) throws {
        let pages = try pagesBeforeAutocommitWrite(readOnly: false)
        var err: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(handle, sql, nil, nil, &err)
        if rc != SQLITE_OK {
            let msg = err.map { String(cString: $0) } ?? "unknown"
            sqlite3_free(err)
            var systemErrno: Int32 = 0
            if rc & 0xff == SQLITE_IOERR {
                systemErrno = sqlite3_system_errno(handle)  // before anything else touches the connection
                noteIOError(code: sqlite3_extended_errcode(handle), message: msg)
            }
            try? syncIfWritten(since: pages)  // statements before the failing one may have committed
            throw SQLiteError(code: rc, message: msg, systemErrno: systemErrno)
        }
        try syncIfWritten(since: pages)
    }

    /// Schema statements `executeOnce` has run and committed on this connection.
    private var executedOnce: Set<String> = []

    /// Runs schema SQL (`CREATE … IF NOT EXISTS`) the first time it is given on this connection;
    /// later calls with the same text return at once instead of parsing it again (the store's
    /// lazily created tables are ensured on hot paths such as every lease round). Remembered
    /// only when it ran outside a transaction, so a rolled-back creation is run again.
    /// - Throws: `SQLiteError`.
    public func executeOnce(_ sql: String) throws {
        if executedOnce.contains(sql) { return }
        try execute(sql)
        if sqlite3_get_autocommit(handle) != 0 { executedOnce.insert(sql) }
    }

    /// Runs one statement without parameters or results through the statement cache (no
    /// parsing after the first time): the transaction brackets and `PRAGMA synchronous`, run
    /// several times per message.
    /// - Throws: `SQLiteError`.
    private func run(cached sql: String) throws {
        try prepare(sql).run([])
    }

    /// A prepared statement for `sql`, cached per connection and reset for reuse.
    /// - Throws: `SQLiteError` when the SQL does not compile.
    public func prepare(_ sql: String) throws -> SQLiteStatement {
        if let s = statements[sql] { s.reset(); return s }
        var stmt: OpaquePointer?
        let rc = sqlite3_prepare_v2(handle, sql, -1, &stmt, nil)
        guard rc == SQLITE_OK, let stmt else { throw SQLiteError(code: rc, message: "prepare: \(lastMessage)") }
        let s = SQLiteStatement(stmt, db: self)
        statements[sql] = s
        return s
    }

    /// The cached statements whose SQL contains `fragment`, every one for "" (for tests).
    func cachedStatements(containing fragment: String) -> [SQLiteStatement] {
        statements.filter { fragment.isEmpty || $0.key.contains(fragment) }.map(\.value)
    }

    /// When a commit is on stable storage.
    public enum CommitDurability: Sendable {
        /// The commit returns after the WAL is fsync'd (the connection's `synchronous=FULL`).
        case synced
        /// The commit returns once the WAL frames are written to the file, without fsync
        /// (`synchronous=NORMAL` for this transaction): they survive a crash of the process at
        /// once, and a power loss or kernel crash from the next synced commit (or checkpoint) on.
        case processCrashSafe
    }

    /// Puts the connection at `synchronous=NORMAL` for good and makes each `.synced`
    /// transaction durable by syncing the write-ahead log itself right after its `COMMIT`: the
    /// same `fdatasync` of the same file that `synchronous=FULL` issues inside the commit, so a
    /// synced commit is on stable storage when `transaction` returns, as before. (Switching
    /// `PRAGMA synchronous` around every unsynced transaction instead costs two compilations of
    /// the pragma each time — SQLite applies it while compiling the statement and marks it for
    /// compiling again, `SQLITE_STMTSTATUS_REPREPARE` — 14 % of the scheduler thread's CPU at a
    /// light load in issue 19's profile.) Readers may see a synced commit a moment before its
    /// sync returns; if that sync fails, `transaction` throws although the rows stay committed
    /// (the caller then answers as for a failed commit — at worst the client sends again and the
    /// message is delivered twice, never lost). Call once, after `PRAGMA journal_mode=WAL`.
    /// - Throws: `SQLiteError` when the connection is not in WAL mode.
    public func syncWALAfterCommits() throws {
        let mode = try prepare("PRAGMA journal_mode").query { $0.text(0) }.first ?? ""
        guard mode.lowercased() == "wal" else {
            throw SQLiteError(code: SQLITE_MISUSE, message: "syncing the write-ahead log needs journal_mode=WAL (it is \(mode))")
        }
        try execute("PRAGMA synchronous=NORMAL")
        synchronousFull = false
        walSyncAfterCommit = true
    }

    /// `fdatasync` of the write-ahead log through SQLite's own file handle for it
    /// (`SQLITE_FCNTL_JOURNAL_POINTER`, the VFS's `xSync`), then `onSynced`. A failure
    /// stops every later write on this connection (`walSyncFailure`).
    /// - Throws: `SQLiteError` when the log is not open or the sync fails.
    private func syncWAL() throws {
        let covered = committedWrites
        var file: UnsafeMutablePointer<sqlite3_file>?
        let rc = sqlite3_file_control(handle, "main", SQLITE_FCNTL_JOURNAL_POINTER, &file)
        guard rc == SQLITE_OK, let file, let sync = file.pointee.pMethods?.pointee.xSync else {
            throw failSync(SQLiteError(code: rc == SQLITE_OK ? SQLITE_MISUSE : rc, message: "the write-ahead log is not open: cannot sync it"))
        }
        let rcSync = (syncErrorForTests?() ?? 0) != 0 ? SQLITE_IOERR | (4 << 8) : sync(file, SQLITE_SYNC_NORMAL)
        // A sync that failed meanwhile without this lock (`completeSync`): this one's success may
        // be the kernel's forgetting that error, not these frames on disk.
        if let failure = walSyncFailure { throw failure }
        guard rcSync == SQLITE_OK else {
            throw failSync(SQLiteError(code: rcSync, message: "syncing the write-ahead log failed: no more queue writes until a restart"))
        }
        synced(upTo: covered)
    }

    /// Records a sync that covered the commits up to `covered`, then tells `onSynced`.
    private func synced(upTo covered: UInt64) {
        syncState.withLock { s in
            s.durable = max(s.durable, covered)
            s.issued += 1
        }
        onSynced?(covered)
    }

    /// Records the first failed sync (every later write is refused), tells `onSyncFailed` the
    /// first time, and returns the error to throw.
    private func failSync(_ error: SQLiteError) -> SQLiteError {
        let first = syncState.withLock { s -> Bool in
            guard s.failure == nil else { return false }
            s.failure = error
            return true
        }
        if first { onSyncFailed?(error) }
        return error
    }

    /// After a statement failed with `code` (an `SQLITE_IOERR…`, read through
    /// `sqlite3_extended_errcode`): a failed fsync SQLite issued itself — the WAL's header when a
    /// `COMMIT` starts the log over, the database file in a checkpoint — latches like a failed
    /// sync of ours (`walSyncFailure`): the kernel reports such an error once and may have dropped
    /// the pages, and the next sync may succeed without them. A failed `write` does not: the
    /// statement fails and nothing it wrote counts (SQLite maps ENOSPC to `SQLITE_FULL`, while a
    /// quota's EDQUOT comes as `SQLITE_IOERR_WRITE`; both must leave the store writable once
    /// space returns). Only on a connection that syncs the WAL itself (`syncWALAfterCommits`: the
    /// queue's).
    func noteIOError(code: Int32, message: String) {
        guard walSyncAfterCommit else { return }
        let latching: Set<Int32> = [SQLITE_IOERR | (4 << 8), SQLITE_IOERR | (5 << 8)]
        guard latching.contains(code) else { return }  // FSYNC, DIR_FSYNC
        _ = failSync(SQLiteError(code: code, message: "\(message): no more queue writes until a restart"))
    }

    /// Called once, when a sync of the WAL first fails (`walSyncFailure` is set): the store
    /// records it where its next start finds it (`SyncFailureMarker`). Called with or without
    /// the caller's lock; must not use this connection.
    public var onSyncFailed: (@Sendable (SQLiteError) -> Void)?

    /// Tests only: when set, each sync of the WAL asks it first, and a non-zero answer is taken
    /// as that sync's failure (an `errno` value; `EIO` as a failing disk gives) without syncing.
    nonisolated(unsafe) var syncErrorForTests: (() -> Int32)?

    /// Numbers a commit that wrote frames (`committedWrites`).
    /// - Returns: its number.
    @discardableResult
    private func countWriteCommit() -> UInt64 {
        writeCommits.add(1, ordering: .releasing).newValue
    }

    /// A synced commit whose WAL sync is still to be issued, by `completeSync(_:)`.
    public struct PendingSync: Sendable {
        /// The commit's number (`committedWrites`).
        public let commit: UInt64
        fileprivate let file: WALFile
    }

    /// Runs `body` inside `BEGIN IMMEDIATE … COMMIT` like a `.synced` `transaction`, but leaves
    /// the WAL's sync to the caller, who issues it with `completeSync(_:)` after letting go of
    /// the lock that serialises this connection: other writers (leases, results) commit during
    /// that `fdatasync` instead of waiting for it (issue 19: new mail's leases are recorded and
    /// granted while its sync runs). The rows are visible to this connection and to readers from
    /// the commit on, before they are durable; the caller must not report them durable (an SMTP
    /// `250`) before `completeSync` returns. Only when `body` sets its argument (whether the sync
    /// should run after the lock: false by default), and only on a connection that syncs the WAL
    /// itself (`syncWALAfterCommits`); otherwise, and for the connection's first sync (SQLite's own
    /// handle syncs the WAL's directory entry once), the commit is synced here, under the lock,
    /// and no pending sync is returned.
    /// - Returns: what `body` returns, and the sync still to issue (nil: nothing to sync, or
    ///   already synced).
    /// - Throws: what `body` throws, or `SQLiteError`; nothing is committed then.
    public func transactionSyncingLater<T>(_ body: (_ syncAfterUnlock: inout Bool) throws -> T) throws -> (value: T, pending: PendingSync?) {
        var later = false
        guard walSyncAfterCommit else { return (try transaction(durability: .synced) { try body(&later) }, nil) }
        let before = committedWrites
        let value = try transactionSyncingWAL(durability: .processCrashSafe) { try body(&later) }
        let commit = committedWrites
        guard commit != before else { return (value, nil) }
        guard later, let file = walFile else {
            try syncWAL()
            if walFile == nil { walFile = try? WALFile(path: walPath) }
            return (value, nil)
        }
        // The frames' write-out starts now, before the lock goes: the thread that takes the lock
        // next (a lease commit) may run on this CPU before this one reaches its fdatasync.
        _ = hato_start_writeout(file.descriptor)
        return (value, PendingSync(commit: commit, file: file))
    }

    /// Issues a pending commit's WAL sync (`transactionSyncingLater`), without the lock that
    /// serialises this connection (it touches no SQLite state: `fdatasync` of its own descriptor of
    /// the same file, which flushes the file's pages whoever wrote them). Returns at once when a
    /// sync since has covered the commit. A failure stops every later write on this connection,
    /// as in `syncWAL`.
    /// - Throws: `SQLiteError` when the sync fails (or one failed before): the commit is not
    ///   known to be durable.
    public func completeSync(_ pending: PendingSync) throws {
        if let failure = syncState.withLock({ s -> SQLiteError? in s.failure }) { throw failure }
        if durableWrites >= pending.commit { return }
        let covered = committedWrites
        beforeSyncForTests?()
        var rc: Int32
        let injected = syncErrorForTests?() ?? 0
        if injected != 0 { rc = -1 } else {
            repeat { rc = fdatasync(pending.file.descriptor) } while rc != 0 && errno == EINTR
        }
        guard rc == 0 else {
            let code = injected != 0 ? injected : errno
            throw failSync(SQLiteError(code: SQLITE_IOERR | (4 << 8),  // SQLITE_IOERR_FSYNC
                                       message: "syncing the write-ahead log failed (\(String(cString: strerror(code)))): no more queue writes until a restart"))
        }
        if let failure = walSyncFailure { throw failure }  // another sync failed meanwhile (see `syncWAL`)
        synced(upTo: covered)
    }

    /// Called by `completeSync` between taking the number of the last commit it covers and its
    /// `fdatasync` (tests commit there to check that the later commit is not counted).
    nonisolated(unsafe) var beforeSyncForTests: (() -> Void)?

    /// The WAL file's path (`sqlite3_filename_wal`).
    private var walPath: String {
        String(cString: sqlite3_filename_wal(sqlite3_db_filename(handle, "main")))
    }

    /// Pages this connection has written to the WAL so far (`SQLITE_DBSTATUS_CACHE_WRITE`): it
    /// moves exactly when a commit (or a schema change) writes frames — not for a write that
    /// changed nothing, which SQLite's own FULL commit did not sync either.
    private var pagesWritten: Int32 {
        var current: Int32 = 0, highest: Int32 = 0
        sqlite3_db_status(handle, SQLITE_DBSTATUS_CACHE_WRITE, &current, &highest, 0)
        return current
    }

    /// Before a statement that may write outside a transaction on a connection that syncs the WAL
    /// itself: the pages written so far, to compare with afterwards (nil when nothing is to be done).
    /// - Throws: `walSyncFailure` once a sync failed (for statements that may write).
    func pagesBeforeAutocommitWrite(readOnly: Bool) throws -> Int32? {
        guard walSyncAfterCommit, !readOnly else { return nil }
        if let walSyncFailure { throw walSyncFailure }
        guard !inTransaction, sqlite3_get_autocommit(handle) != 0 else { return nil }
        return pagesWritten
    }

    /// After such a statement: when it committed a write on its own (autocommit), the WAL is
    /// synced now — as `synchronous=FULL` did for it (an operator's pause, a backoff, a drain).
    /// - Throws: `SQLiteError` when the sync fails.
    func syncIfWritten(since pages: Int32?) throws {
        guard let pages, !inTransaction, sqlite3_get_autocommit(handle) != 0, pagesWritten != pages else { return }
        countWriteCommit()
        try syncWAL()
    }

    /// Runs `body` inside `BEGIN IMMEDIATE … COMMIT`, rolling back if it throws.
    /// - Parameter durability: whether the commit waits for fsync (default) or not.
    /// - Throws: what `body` throws, or `SQLiteError`.
    public func transaction<T>(durability: CommitDurability = .synced, _ body: () throws -> T) throws -> T {
        if walSyncAfterCommit { return try transactionSyncingWAL(durability: durability, body) }
        // A synced transaction never runs while the connection is still at NORMAL: if putting
        // FULL back failed after an unsynced one, it is retried here and its error refuses
        // this transaction (an SMTP client then gets a 4xx rather than a 250 without fsync).
        if durability == .synced && !synchronousFull {
            try run(cached: "PRAGMA synchronous=FULL")
            synchronousFull = true
        }
        if durability == .processCrashSafe {
            try run(cached: "PRAGMA synchronous=NORMAL")
            synchronousFull = false
        }
        defer {
            if durability == .processCrashSafe, (try? run(cached: "PRAGMA synchronous=FULL")) != nil { synchronousFull = true }
        }
        try run(cached: "BEGIN IMMEDIATE")
        let changesBefore = sqlite3_total_changes64(handle)
        do {
            let r = try body()
            // A commit that changed no row writes no frame and syncs nothing (SQLite skips
            // both): only one that changed rows counts as a sync (found in review).
            let wrote = sqlite3_total_changes64(handle) != changesBefore
            try run(cached: "COMMIT")
            if wrote {
                let commit = countWriteCommit()
                if durability == .synced { synced(upTo: commit) }
            }
            return r
        } catch {
            try? run(cached: "ROLLBACK")
            throw error
        }
    }

    /// `transaction` on a connection that stays at `synchronous=NORMAL` (`syncWALAfterCommits`).
    private func transactionSyncingWAL<T>(durability: CommitDurability, _ body: () throws -> T) throws -> T {
        if let walSyncFailure { throw walSyncFailure }
        let outermost = !inTransaction
        inTransaction = true
        defer { if outermost { inTransaction = false } }
        let pagesBefore = pagesWritten
        try run(cached: "BEGIN IMMEDIATE")
        let r: T
        do {
            r = try body()
        } catch {
            try? run(cached: "ROLLBACK")
            throw error
        }
        do {
            // A sync failed meanwhile without this connection's lock (`completeSync`): commit nothing more.
            if let walSyncFailure { throw walSyncFailure }
            try run(cached: "COMMIT")
        } catch {
            try? run(cached: "ROLLBACK")
            throw error
        }
        // A transaction that wrote no frame: there is nothing to count or sync.
        guard pagesWritten != pagesBefore else { return r }
        countWriteCommit()
        if durability == .synced { try syncWAL() }
        return r
    }

    /// The rowid of the last row this connection inserted (`sqlite3_last_insert_rowid`).
    public var lastInsertedRowID: Int64 { sqlite3_last_insert_rowid(handle) }

    /// Rows changed by the last statement.
    public var changes: Int { Int(sqlite3_changes(handle)) }

    /// Pages this connection had to read from the file (the WAL or the database) because they
    /// were not in its page cache, since it opened (`SQLITE_DBSTATUS_CACHE_MISS`).
    var cacheMisses: Int {
        var current: Int32 = 0, highest: Int32 = 0
        sqlite3_db_status(handle, SQLITE_DBSTATUS_CACHE_MISS, &current, &highest, 0)
        return Int(current)
    }

    var lastMessage: String { String(cString: sqlite3_errmsg(handle)) }
}

/// A prepared statement (finalised in deinit).
public final class SQLiteStatement: @unchecked Sendable {
    private let stmt: OpaquePointer
    /// Weak: the connection caches its statements, and a statement may outlive a connection
    /// that was only opened to prepare it (SQLite keeps the handle until it is finalised).
    private weak var db: SQLiteDatabase?

    init(_ stmt: OpaquePointer, db: SQLiteDatabase) { self.stmt = stmt; self.db = db }
    deinit { sqlite3_finalize(stmt) }

    func reset() { sqlite3_reset(stmt); sqlite3_clear_bindings(stmt) }

    /// The connection's last error message.
    private var lastMessage: String { String(cString: sqlite3_errmsg(sqlite3_db_handle(stmt))) }

    /// The statement's SQL text.
    var sql: String { String(cString: sqlite3_sql(stmt)) }
    /// Times SQLite compiled this statement again since it was prepared
    /// (`SQLITE_STMTSTATUS_REPREPARE`: a schema change, or a bound value the plan depended on).
    var reprepareCount: Int { Int(sqlite3_stmt_status(stmt, SQLITE_STMTSTATUS_REPREPARE, 0)) }

    /// A bindable value.
    public enum Value: Sendable {
        case null, int(Int64), double(Double), text(String), blob([UInt8])
    }

    /// Binds parameters by position (1-based in SQL, 0-based in the array).
    /// - Throws: `SQLiteError`.
    @discardableResult
    public func bind(_ values: [Value]) throws -> SQLiteStatement {
        for (i, v) in values.enumerated() {
            let idx = Int32(i + 1)
            let rc: Int32
            switch v {
            case .null: rc = sqlite3_bind_null(stmt, idx)
            case .int(let x): rc = sqlite3_bind_int64(stmt, idx, x)
            case .double(let x): rc = sqlite3_bind_double(stmt, idx, x)
            case .text(let s): rc = sqlite3_bind_text(stmt, idx, s, -1, hato_sqlite_transient())
            case .blob(let b):
                rc = b.withUnsafeBytes { sqlite3_bind_blob(stmt, idx, $0.baseAddress ?? UnsafeRawPointer(bitPattern: 1), Int32(b.count), hato_sqlite_transient()) }
            }
            guard rc == SQLITE_OK else { throw SQLiteError(code: rc, message: "bind: \(lastMessage)") }
        }
        return self
    }

    /// Steps once. - Returns: true when a row is available. - Throws: `SQLiteError`.
    public func step() throws -> Bool {
        let rc = sqlite3_step(stmt)
        if rc == SQLITE_ROW { return true }
        if rc == SQLITE_DONE { return false }
        var systemErrno: Int32 = 0
        if rc & 0xff == SQLITE_IOERR {
            let handle = sqlite3_db_handle(stmt)
            systemErrno = sqlite3_system_errno(handle)  // before anything else touches the connection
            db?.noteIOError(code: sqlite3_extended_errcode(handle), message: "step: \(lastMessage)")
        }
        throw SQLiteError(code: rc, message: "step: \(lastMessage)", systemErrno: systemErrno)
    }

    /// Runs to completion, ignoring rows. - Throws: `SQLiteError`.
    /// Reset also when a step fails, so that a cached statement (`BEGIN IMMEDIATE` refused
    /// with SQLITE_BUSY, say) does not stay active and hold the connection's read snapshot.
    public func run(_ values: [Value] = []) throws {
        _ = try query(values) { _ in () }
    }

    /// Runs and collects every row through `row`. - Throws: `SQLiteError`.
    public func query<T>(_ values: [Value] = [], _ row: (SQLiteStatement) throws -> T) throws -> [T] {
        let pages = try db?.pagesBeforeAutocommitWrite(readOnly: sqlite3_stmt_readonly(stmt) != 0)
        var out: [T] = []
        do {
            defer { sqlite3_reset(stmt) }
            try bind(values)
            while try step() { out.append(try row(self)) }
        }
        try db?.syncIfWritten(since: pages)
        return out
    }

    public func int(_ col: Int32) -> Int64 { sqlite3_column_int64(stmt, col) }
    public func double(_ col: Int32) -> Double { sqlite3_column_double(stmt, col) }
    public func isNull(_ col: Int32) -> Bool { sqlite3_column_type(stmt, col) == SQLITE_NULL }
    public func text(_ col: Int32) -> String {
        guard let p = sqlite3_column_text(stmt, col) else { return "" }
        return String(cString: p)
    }
    public func optionalText(_ col: Int32) -> String? { isNull(col) ? nil : text(col) }
    public func blob(_ col: Int32) -> [UInt8] {
        let n = Int(sqlite3_column_bytes(stmt, col))
        guard n > 0, let p = sqlite3_column_blob(stmt, col) else { return [] }
        return Array(UnsafeRawBufferPointer(start: p, count: n))
    }
}

/// A descriptor of a database's WAL file of our own (`SQLiteDatabase.completeSync`): `fdatasync`
/// acts on the file, whichever descriptor wrote its pages. SQLite keeps the WAL file while any
/// connection of this process has the database open (a checkpoint resets or truncates it in
/// place; it is removed only when the last connection closes, and the queue's connection lives
/// as long as the store), so the descriptor stays the file's. Closed in deinit.
final class WALFile: Sendable {
    /// The open descriptor (read-write, close-on-exec).
    let descriptor: Int32

    /// Opens an existing WAL file.
    /// - Throws: `SQLiteError` (`SQLITE_CANTOPEN`) when it cannot be opened.
    init(path: String) throws {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else {
            throw SQLiteError(code: SQLITE_CANTOPEN, message: "\(path): \(String(cString: strerror(errno)))")
        }
        descriptor = fd
    }

    deinit { close(descriptor) }
}
