import ClusterProtocol
import Foundation
import HatoSupport
import SMTPCore

/// The coordinator's durable global queue: SQLite in WAL mode with `synchronous=FULL`.
///
/// Every public method is one transaction; when `enqueue` returns, the message
/// and its recipients are on disk (fsync'd), so the SMTP `250` may be sent.
/// Thread-safe: one connection behind one lock.
public final class SQLiteQueueStore: QueueStore {
    /// Counters and run state kept beside the connection (read and written under `lock`).
    struct Bookkeeping: Sendable {
        /// Seconds since 1970: no lease granted so far expires later (durable in `run_state`;
        /// see QueueStore+RunState.swift).
        var leaseHorizon: Double = 0
        /// Whether lease records may skip the fsync (this run knows its boot id).
        var leasesSkipFsync = false
        /// Lease commits so far that waited for fsync and that did not (for tests and benchmarks).
        var leaseCommits = (synced: 0, unsynced: 0)
        /// Whether a background thread checkpoints the WAL (QueueStore+Checkpoint.swift).
        var checkpointsInBackground = false
        /// Background checkpoints run so far.
        var backgroundCheckpoints = 0
    }

    /// The connection; use only under `lock` (extensions in other files of this module add
    /// tables and queries). `SQLiteDatabase` owns the C handle; this lock is what serialises it.
    let db: SQLiteDatabase
    let lock = NSLock()
    let book = Locked(Bookkeeping())
    /// A second, read-only connection for operators' queue queries (QueueStore+Control.swift),
    /// opened on first use: in WAL mode it reads a snapshot without taking `lock`, so a scan of a
    /// large queue never holds up submissions, leases or results. Its own lock serialises it.
    let reader = Locked<SQLiteDatabase?>(nil)
    /// How far the WAL of `db` is on stable storage, by commit number (`SQLiteDatabase.committedWrites`;
    /// `applyResultsUnsynced`, `awaitSync`, the spool's removals).
    let walSyncs = LockedCondition(WALSyncs())
    /// Where the search for finished messages to delete goes on (`deleteFinishedMessages`): the
    /// last message rowid it read, 0 to start over.
    let retentionCursor = Locked<Int64>(0)
    /// The last commit known synced, and when the last sync made by someone other than `awaitSync` was.
    struct WALSyncs: Sendable {
        var durable: UInt64 = 0
        var lastOther: ContinuousClock.Instant?
        var awaiting = false
        /// How recent another synced commit must be for `awaitSync` to wait for the next one:
        /// mail being queued commits every few milliseconds under load; with none (a backlog
        /// drained, a quiet hour) a batch of results syncs at once instead of waiting for nothing.
        var expectedWithin: Duration = .milliseconds(20)
    }
    /// The queue connection's page cache, KiB (`PRAGMA cache_size`; SQLite's default is 2000).
    ///
    /// A delivered message's content is dropped (`purgeBodies`) milliseconds to seconds after it
    /// was queued, and SQLite frees a body's overflow pages by walking their chain: each page
    /// it no longer has in its cache is read back from the WAL or the file. With 2000 KiB, a
    /// stream of 100 KiB messages had pushed the body out of the cache before its delivery
    /// came back: 68 `pread` calls per message on the coordinator, 23 with 16 MiB (issue 19,
    /// bench/README.md). The cache fills only with pages used: a small queue stays small.
    static let pageCacheKiB = 16384
    /// Bodies of at least this many octets go to the spool (`BodySpool`) instead of the
    /// b-tree: from here a body spans several overflow pages (issue 19: at 100 KiB the WAL's
    /// page writes, checksums and the checkpoint's second copy were a quarter of the
    /// coordinator's CPU). Smaller ones stay in their row: the spool's separate `fdatasync`
    /// would cost a batch of small mail more than the few pages it saves.
    public static let defaultSpoolThreshold = 32 << 10
    /// This store's threshold (`defaultSpoolThreshold` unless a test chose another; `Int.max`:
    /// every body in its row).
    public let spoolThreshold: Int
    /// How long a sealed spool segment keeps bodies still referenced (mail not yet delivered)
    /// before the background pass moves them into their rows so the segment can go.
    static let spoolEvacuateAfter: Duration = .seconds(30)
    /// Large bodies outside the b-tree (`spoolThreshold`).
    public let spool: BodySpool
    /// Concurrent `enqueue(_:)` calls share one transaction and one fsync.
    private let committer: GroupCommitter<NewMessage>
    /// Group-commit transactions written so far (for tests and benchmarks).
    var batchesCommittedForTests: Int { committer.batchesCommitted }
    /// Pages the queue connection read from the file for want of them in its cache (for tests).
    var cacheMissesForTests: Int { lock.withLock { db.cacheMisses } }
    /// The database file path.
    public let path: String
    /// The database file path (`QueueStore.location`).
    public var location: String { path }
    /// Where a failed sync of the WAL is recorded for the next start (`SyncFailureMarker`).
    var syncFailureMarkerPath: String { SyncFailureMarker.path(forDatabase: path) }
    var leaseHorizon: Double {
        get { book.withLock { $0.leaseHorizon } }
        set { book.withLock { $0.leaseHorizon = newValue } }
    }
    var leasesSkipFsync: Bool {
        get { book.withLock { $0.leasesSkipFsync } }
        set { book.withLock { $0.leasesSkipFsync = newValue } }
    }
    var leaseCommits: (synced: Int, unsynced: Int) {
        get { book.withLock { $0.leaseCommits } }
        set { book.withLock { $0.leaseCommits = newValue } }
    }
    var checkpointsInBackground: Bool {
        get { book.withLock { $0.checkpointsInBackground } }
        set { book.withLock { $0.checkpointsInBackground = newValue } }
    }
    var backgroundCheckpoints: Int {
        get { book.withLock { $0.backgroundCheckpoints } }
        set { book.withLock { $0.backgroundCheckpoints = newValue } }
    }

    /// Opens or creates the queue at `directory/queue.db`, with its spool of large bodies in
    /// `directory/spool` (BodySpool.swift).
    /// - Parameters:
    ///   - directory: the queue's directory (created if missing).
    ///   - spoolThreshold: octets from which a body goes to the spool (`Int.max`: never).
    ///   - spoolSegmentLimit: octets per spool segment file before the next is started.
    /// - Throws: `SQLiteError` or a file system error when the directory cannot be created.
    public init(directory: String, spoolThreshold: Int = SQLiteQueueStore.defaultSpoolThreshold, spoolSegmentLimit: Int = 16 << 20) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        path = (directory as NSString).appendingPathComponent("queue.db")
        let db = try SQLiteDatabase(path: path)
        self.db = db
        let lock = self.lock
        let spool = try BodySpool(directory: (directory as NSString).appendingPathComponent("spool"), segmentLimit: spoolSegmentLimit)
        self.spool = spool
        self.spoolThreshold = spoolThreshold
        let inserted = self.inserted
        committer = GroupCommitter { batch in
            _ = try SQLiteQueueStore.commit(batch, threshold: spoolThreshold, spool: spool, lock: lock, db: db, inserted: inserted)
        }
        let marker = SyncFailureMarker.path(forDatabase: path)
        db.onSyncFailed = { failure in
            let text = "\(Date()) boot_id=\(Queue.currentBootID() ?? "unknown") \(failure)"
            do {
                try SyncFailureMarker.write(at: marker, text: text)
                Logger(label: "coordinator.queue").error("a sync of the queue's write-ahead log failed: no more queue writes; restart the coordinator (it holds new leases until the lease horizon)",
                                                         ["error": "\(failure)", "marker": marker])
            } catch {
                Logger(label: "coordinator.queue").error("a sync of the queue's write-ahead log failed, and so did recording it: no more queue writes; before restarting, wait coordinator.lease_time plus a minute (the lease horizon slack) so that no node still delivers a lease from before",
                                                         ["error": "\(failure)", "marker": marker, "marker_error": "\(error)"])
            }
        }
        let walSyncs = self.walSyncs
        db.onSynced = { covered in
            walSyncs.withLockAndBroadcast { w in
                w.durable = max(w.durable, covered)
                if !w.awaiting { w.lastOther = .now }
            }
        }
        // cache_size: see `pageCacheKiB`.
        // secure_delete=FAST: Debian builds SQLite with SECURE_DELETE on, which overwrites every
        // freed page with zeros — each delivered message's body was written to the WAL a second
        // time (and checkpointed) when it was deleted: at 100 KiB, 13 % of the coordinator's
        // CPU in issue 19's profile. FAST still zeroes deleted cells on the pages a change
        // writes anyway, but adds no I/O; a freed body page keeps its bytes in the file until
        // SQLite reuses it, as a deleted queue file's blocks do on a file system (upstream
        // SQLite's default is OFF). See docs/operations.md.
        try db.execute("""
            PRAGMA journal_mode=WAL;
            PRAGMA synchronous=FULL;
            PRAGMA secure_delete=FAST;
            PRAGMA cache_size=-\(Self.pageCacheKiB);
            PRAGMA foreign_keys=ON;
            CREATE TABLE IF NOT EXISTS messages(
              id TEXT PRIMARY KEY, reverse_path TEXT NOT NULL, pool TEXT NOT NULL, size INTEGER NOT NULL,
              received_at REAL NOT NULL, helo TEXT NOT NULL, client_address TEXT NOT NULL,
              body BLOB, open_recipients INTEGER NOT NULL,
              auth_user TEXT, dsn_ret TEXT, dsn_envid TEXT);
            CREATE TABLE IF NOT EXISTS recipients(
              id INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL REFERENCES messages(id),
              address TEXT NOT NULL, domain TEXT NOT NULL, state TEXT NOT NULL,
              attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL, lease_id TEXT,
              last_code INTEGER, last_enhanced TEXT, last_text TEXT, node TEXT, ip TEXT, mx TEXT,
              updated_at REAL NOT NULL, dsn_notify TEXT, dsn_orcpt TEXT);
            CREATE INDEX IF NOT EXISTS recipients_lease ON recipients(lease_id) WHERE lease_id IS NOT NULL;
            CREATE INDEX IF NOT EXISTS recipients_message ON recipients(message_id);
            CREATE INDEX IF NOT EXISTS messages_open_age ON messages(received_at) WHERE open_recipients > 0;
            \(Self.leasesTable("leases"))
            CREATE INDEX IF NOT EXISTS leases_expiry ON leases(expires_at);
            """)
        try installLeaseSchema()
        // Submission columns (AUTH user, RFC 3461 parameters) for queue files created before they existed.
        // The pool on each recipient (queue control groups and selects by it without reading the
        // messages table): NULL on rows written before it existed, read through the message then.
        // The message's tenant (issue 16): NULL for mail of no tenant.
        for (table, column) in [("messages", "auth_user"), ("messages", "dsn_ret"), ("messages", "dsn_envid"),
                                ("recipients", "dsn_notify"), ("recipients", "dsn_orcpt"), ("recipients", "pool"),
                                ("messages", "tenant")] {
            let existing = try db.prepare("SELECT name FROM pragma_table_info('\(table)')").query { $0.text(0) }
            if !existing.contains(column) { try db.execute("ALTER TABLE \(table) ADD COLUMN \(column) TEXT") }
        }
        try installWaitingIndexes()
        try db.execute(Self.tenantSchema)
        // The priority class (issue 18): the message's, copied onto its recipients so that the
        // lease query reads due transactional rows before bulk ones through one index.
        for (table, definition) in [("messages", "TEXT NOT NULL DEFAULT 'transactional'"), ("recipients", "TEXT NOT NULL DEFAULT 'transactional'"),
                                    ("tenants", "TEXT")] {
            let existing = try db.prepare("SELECT name FROM pragma_table_info('\(table)')").query { $0.text(0) }
            if !existing.contains("priority") { try db.execute("ALTER TABLE \(table) ADD COLUMN priority \(definition)") }
        }
        try db.execute("CREATE INDEX IF NOT EXISTS recipients_due_priority ON recipients(state, priority, next_attempt_at)")
        // Where a spooled body is (BodySpool.swift): NULL for a body in the row or purged.
        let messageColumns = try db.prepare("SELECT name FROM pragma_table_info('messages')").query { $0.text(0) }
        for column in ["body_segment", "body_offset"] where !messageColumns.contains(column) {
            try db.execute("ALTER TABLE messages ADD COLUMN \(column) INTEGER")
        }
        try db.execute("CREATE INDEX IF NOT EXISTS messages_spooled ON messages(body_segment) WHERE body_segment IS NOT NULL")
        // (state, next_attempt_at), the lease query's index before priorities: every lookup by
        // state is served by recipients_due_priority (or the waiting index), and each index a
        // recipient enters costs every state change a b-tree delete and insert (issue 19). An
        // older build re-creates it on opening; nothing depends on it either way.
        try db.execute("DROP INDEX IF EXISTS recipients_due")
        try installOperatorSchema()
        try installComplaintSchema()
        try installIPHealthSchema()
        // From here on the connection stays at synchronous=NORMAL: a synced commit syncs the
        // WAL itself after COMMIT (no pragma compiled around every lease and result round).
        try db.syncWALAfterCommits()
    }

    /// The leases table, named `name`: `WITHOUT ROWID`, so that a lease is one b-tree entry
    /// keyed by its id, not a row and an entry in the id's separate index (a lease is written
    /// and deleted once per delivery attempt: two b-tree writes fewer each, issue 19).
    static func leasesTable(_ name: String) -> String {
        """
        CREATE TABLE IF NOT EXISTS \(name)(
          id TEXT PRIMARY KEY, node TEXT NOT NULL, instance TEXT NOT NULL, ip TEXT NOT NULL,
          message_id TEXT NOT NULL, domain TEXT NOT NULL, granted_at REAL NOT NULL, expires_at REAL NOT NULL) WITHOUT ROWID;
        """
    }

    /// Brings a queue file made by an earlier build to the lease schema of this one, once, in
    /// one transaction: the index of recipients by lease holds only leased rows (`WHERE lease_id
    /// IS NOT NULL`: a new or finished recipient is no entry of it, so a result clears its lease
    /// with one b-tree delete instead of a delete and an insert), and the leases table is
    /// `WITHOUT ROWID` (`leasesTable`), its rows copied over. Takes about a second per million
    /// recipients for the index; the leases table holds only the leases in flight.
    /// - Throws: `SQLiteError`; the file is left as it was then.
    func installLeaseSchema() throws {
        func sql(_ type: String, _ name: String) throws -> String {
            try db.prepare("SELECT sql FROM sqlite_master WHERE type=? AND name=?").query([.text(type), .text(name)]) { $0.isNull(0) ? "" : $0.text(0) }.first ?? ""
        }
        func outdated() throws -> (index: Bool, table: Bool) {
            (!(try sql("index", "recipients_lease").contains("WHERE")), !(try sql("table", "leases").uppercased().contains("WITHOUT ROWID")))
        }
        // A current file: no transaction (its BEGIN and COMMIT would be compiled before the
        // schema changes that follow, and compiled again at their next use).
        let first = try outdated()
        guard first.index || first.table else { return }
        // No trigger names `leases` at this point (the reporting schema's triggers are TEMP ones,
        // created later on this connection), so the rename below checks nothing that is gone.
        try db.transaction(durability: .synced) {
            let now = try outdated()  // again under the write lock: another process may have done it
            if now.index {
                try db.execute("""
                    DROP INDEX IF EXISTS recipients_lease;
                    CREATE INDEX recipients_lease ON recipients(lease_id) WHERE lease_id IS NOT NULL;
                    """)
            }
            if now.table {
                try db.execute("""
                    DROP TABLE IF EXISTS leases_without_rowid;
                    \(Self.leasesTable("leases_without_rowid"))
                    INSERT INTO leases_without_rowid(id, node, instance, ip, message_id, domain, granted_at, expires_at)
                      SELECT id, node, instance, ip, message_id, domain, granted_at, expires_at FROM leases;
                    DROP TABLE leases;
                    ALTER TABLE leases_without_rowid RENAME TO leases;
                    CREATE INDEX leases_expiry ON leases(expires_at);
                    """)
            }
        }
    }

    /// Writes a message and its recipients (state `queued`, due now) in one fsync'd transaction.
    /// - Throws: `SQLiteError`; nothing is written then.
    ///
    /// Group commit: concurrent callers share one transaction and one fsync. The first caller
    /// to find no commit running becomes the leader and writes every message waiting at that
    /// moment; the others wait until the batch holding their message is on disk. Nobody
    /// returns before their message is durable, so the SMTP `250` still follows the fsync.
    public func enqueue(_ m: NewMessage) throws {
        try committer.submit(m)
    }

    /// Writes several messages in one fsync'd transaction (group commit).
    /// - Throws: `SQLiteError`; nothing is written then.
    public func enqueue(_ messages: [NewMessage]) throws {
        _ = try Self.commit(messages, threshold: spoolThreshold, spool: spool, lock: lock, db: db, inserted: inserted)
    }

    /// Told, for each batch of new mail, its recipients as the due query would return them,
    /// once their rows are written and *before* their commit and its fsync (see
    /// `observeInsertedRecipients`).
    private let inserted = Locked<Callback<[DueRecipient], Bool>?>(nil)

    /// Calls `observer` with the recipients of each batch of new mail — ids, addresses, pool and
    /// priority as `dueRecipients` gives them — while the batch's transaction is still open,
    /// under the queue's lock, just before its commit and fsync: the scheduler plans their
    /// leases during the fsync instead of after it and a due query (issue 19's latency). The
    /// rows are not committed yet when it is called, and may never be (a failed commit): a lease
    /// recorded for them afterwards keeps only rows that exist, waiting, for the same message
    /// (`recordLeases`). It must return at once and must not use the store. It returns whether
    /// leases for them will be recorded right away: the batch's fsync then runs after the lock is
    /// let go (`SQLiteDatabase.transactionSyncingLater`), so that they commit during it; otherwise
    /// under the lock, as every synced commit (under load that keeps lease and result rounds
    /// batching behind it: leaving the lock for the fsync cost 6–10 % more CPU per message at
    /// 1600–1800 msg/s in `bench/profile` pairs).
    public func observeInsertedRecipients(_ observer: @escaping @Sendable ([DueRecipient]) -> Bool) {
        inserted.withLock { $0 = Callback(observer) }
    }

    /// Writes a batch: bodies of at least `spoolThreshold` octets to the spool (durable first),
    /// then every row in one transaction under `lock`, fsync'd after it.
    /// - Throws: `SystemCallError` from the spool, `SQLiteError`; nothing is queued then.
    ///
    /// The WAL's fsync runs after `lock` is let go (`transactionSyncingLater`): leases and results
    /// commit meanwhile — new mail's own leases among them, so its grant can leave during the
    /// fsync (issue 19) — and this returns (the `250`) only once the batch is synced.
    /// - Returns: the batch's commit number (`SQLiteDatabase.committedWrites`), durable on return.
    private static func commit(_ messages: [NewMessage], threshold: Int, spool: BodySpool, lock: NSLock, db: SQLiteDatabase,
                               inserted: Locked<Callback<[DueRecipient], Bool>?>) throws -> UInt64 {
        let locations = try spool.append(messages.map { $0.content.count >= threshold ? $0.content : nil })
        defer { spool.finishedWriting(locations) }
        let observer = inserted.snapshot
        let (pending, number) = try lock.withLock { (try insert(messages, locations: locations, into: db, observer: observer), db.committedWrites) }
        if let pending { try db.completeSync(pending) }
        return pending?.commit ?? number
    }

    /// `enqueue` without the group commit, returning the batch's commit number (for tests).
    func enqueueReturningCommitForTests(_ messages: [NewMessage]) throws -> UInt64 {
        try Self.commit(messages, threshold: spoolThreshold, spool: spool, lock: lock, db: db, inserted: inserted)
    }

    /// Inserts messages and their recipients in one transaction (caller holds `lock`) whose
    /// fsync is left to the caller (`SQLiteDatabase.transactionSyncingLater`).
    /// - Parameters:
    ///   - locations: per message, where the spool holds its body (nil: in the row); as
    ///   many as `messages` (`BodySpool.append` returns one per entry).
    ///   - observer: told the new recipients before the commit (`observeInsertedRecipients`).
    /// - Returns: the sync to complete (`SQLiteDatabase.completeSync`) before the batch may be
    ///   reported durable; nil when it is already synced.
    private static func insert(_ messages: [NewMessage], locations: [BodySpool.Location?], into db: SQLiteDatabase,
                               observer: Callback<[DueRecipient], Bool>? = nil) throws -> SQLiteDatabase.PendingSync? {
        try db.transactionSyncingLater { syncAfterUnlock in
            let insM = try db.prepare("INSERT INTO messages(id, reverse_path, pool, size, received_at, helo, client_address, body, open_recipients, auth_user, dsn_ret, dsn_envid, tenant, priority, body_segment, body_offset) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
            let insR = try db.prepare("INSERT INTO recipients(message_id, address, domain, state, next_attempt_at, updated_at, dsn_notify, dsn_orcpt, pool, priority) VALUES(?,?,?,'queued',?,?,?,?,?,?)")
            func optional(_ text: String?) -> SQLiteStatement.Value { text.map { .text($0) } ?? .null }
            var fresh: [DueRecipient] = []
            for (m, spooled) in zip(messages, locations) {
                let t = m.receivedAt.timeIntervalSince1970
                try insM.run([.text(m.id), .text(m.reversePath), .text(m.pool), .int(Int64(m.content.count)), .double(t),
                              .text(m.heloName), .text(m.clientAddress), spooled == nil ? .blob(m.content) : .null, .int(Int64(m.recipients.count)),
                              optional(m.authenticatedUser), optional(m.dsnReturn?.rawValue), optional(m.envelopeID), optional(m.tenant),
                              .text(m.priority.rawValue), spooled.map { .int($0.segment) } ?? .null, spooled.map { .int($0.offset) } ?? .null])
                try recordIdempotency(of: m, in: db)
                for (index, r) in m.recipients.enumerated() {
                    let p = index < m.recipientParameters.count ? m.recipientParameters[index] : RecipientParameters()
                    let domain = Queue.domain(of: r)
                    try insR.run([.text(m.id), .text(r), .text(domain), .double(t), .double(t),
                                  optional(p.notify?.text), optional(p.originalRecipient), .text(m.pool), .text(m.priority.rawValue)])
                    if observer != nil {
                        fresh.append(DueRecipient(id: db.lastInsertedRowID, messageID: m.id, address: r, domain: domain, pool: m.pool,
                                                  reversePath: m.reversePath, priority: m.priority))
                    }
                }
            }
            if let observer, !fresh.isEmpty { syncAfterUnlock = observer(fresh) }
        }.pending
    }

    /// Recipients in state queued/deferred whose next attempt is due: every due transactional
    /// one first, oldest first, then bulk ones, oldest first (issue 18).
    /// - Parameters:
    ///   - pools: only messages routed to these pools.
    ///   - now: the current time.
    ///   - limit: the most rows returned.
    /// - Throws: `SQLiteError`.
    public func dueRecipients(pools: Set<String>, now: Date, limit: Int) throws -> [DueRecipient] {
        guard !pools.isEmpty, limit > 0 else { return [] }
        // `m.pool = ? OR …`, not `m.pool IN (…)`: SQLite builds an ephemeral b-tree for an IN
        // list each time the statement runs (four runs per scheduler round).
        let poolTerm = Array(repeating: "m.pool = ?", count: pools.count).joined(separator: " OR ")
        // One indexed range scan per (waiting state, priority) (no sort of the whole queue): the
        // (state, priority, next_attempt_at) index yields rows in order, and LIMIT stops early.
        // The state and the priority are literals, one statement per pair, never bound: SQLite
        // checks a bound `r.state = ?` against the partial index recipients_waiting_state with
        // its value, and then compiles the statement again whenever that value changes — it did
        // at every run, alternating queued and deferred: parsing and planning were a fifth of
        // the coordinator's CPU at 150 messages a second (issue 19). With the state a literal,
        // that partial index would be usable: INDEXED BY keeps the one that yields rows in order.
        func sql(_ state: String, _ priority: MessagePriority) -> String {
            """
            SELECT r.id, r.message_id, r.address, r.domain, m.pool, m.reverse_path, r.next_attempt_at
            FROM recipients r INDEXED BY recipients_due_priority
            JOIN messages m ON m.id = r.message_id
            WHERE r.state = '\(state)' AND r.priority = '\(priority.rawValue)' AND r.next_attempt_at <= ? AND (\(poolTerm))
            ORDER BY r.next_attempt_at LIMIT ?
            """
        }
        let poolBinds: [SQLiteStatement.Value] = pools.sorted().map { .text($0) }
        return try lock.withLock {
            var out: [DueRecipient] = []
            for priority in [MessagePriority.transactional, .bulk] {
                let wanted = limit - out.count
                guard wanted > 0 else { break }
                var rows: [(DueRecipient, Double)] = []
                for state in ["queued", "deferred"] {
                    let binds: [SQLiteStatement.Value] = [.double(now.timeIntervalSince1970)] + poolBinds + [.int(Int64(wanted))]
                    rows += try db.prepare(sql(state, priority)).query(binds) {
                        (DueRecipient(id: $0.int(0), messageID: $0.text(1), address: $0.text(2), domain: $0.text(3), pool: $0.text(4),
                                      reversePath: $0.text(5), priority: priority), $0.double(6))
                    }
                }
                out += rows.sorted { ($0.1, $0.0.id) < ($1.1, $1.0.id) }.prefix(wanted).map(\.0)
            }
            return out
        }
    }

    /// The earliest next-attempt time of any waiting recipient, if any.
    public func nextDueTime() throws -> Date? {
        try lock.withLock {
            // One MIN per (state, priority): each is a single seek in recipients_due_priority.
            let mins = ["queued", "deferred"].flatMap { state in
                MessagePriority.allCases.map { "SELECT MIN(next_attempt_at) AS t FROM recipients WHERE state='\(state)' AND priority='\($0.rawValue)'" }
            }
            let rows = try db.prepare("SELECT MIN(t) FROM (\(mins.joined(separator: " UNION ALL ")))").query { $0.isNull(0) ? nil : $0.double(0) }
            return rows.first.flatMap { $0 }.map { Date(timeIntervalSince1970: $0) }
        }
    }

    /// Records leases and marks their recipients `leased`, in one transaction.
    /// Recipients no longer waiting (another lease got them) are left out of the lease.
    ///
    /// Durability: once `beginRun` has found this host's boot id, the commit does not wait for
    /// fsync while every lease expires within the durable lease horizon; it survives a crash
    /// of the process at once, and only a kernel crash or power loss (a new boot id) can undo
    /// it — after which `beginRun` holds new leases until the horizon, so no recipient is
    /// leased twice at once. Without a boot id every lease commit is fsync'd.
    /// - Returns: the leases as granted (recipient lists trimmed; leases left empty dropped).
    /// - Throws: `SQLiteError`.
    public func recordLeases(_ leases: [LeaseRecord], countAttemptsOnDay day: Int?, providerOfDomain: [String: String]) throws -> [LeaseRecord] {
        try lock.withLock {
            if day != nil { try ensureWarmupTable() }
            if day != nil && !providerOfDomain.isEmpty { try ensureReputationTables() }
            // Within the durable lease horizon the commit skips its fsync (QueueStore+RunState.swift);
            // a lease expiring beyond it moves the horizon in a synced commit first.
            let latest = leases.map(\.expiresAt.timeIntervalSince1970).max() ?? 0
            let extend = !leasesSkipFsync || latest > leaseHorizon
            let newHorizon = latest + Self.leaseHorizonSlack
            let granted = try db.transaction(durability: extend ? .synced : .processCrashSafe) { () -> [LeaseRecord] in
                if extend && leasesSkipFsync { try setRunState("lease_horizon", String(newHorizon)) }
                return try recordLeasesInTransaction(leases, countAttemptsOnDay: day, providerOfDomain: providerOfDomain)
            }
            if extend && leasesSkipFsync { leaseHorizon = newHorizon }
            if extend { leaseCommits.synced += 1 } else { leaseCommits.unsynced += 1 }
            return granted
        }
    }

    private func recordLeasesInTransaction(_ leases: [LeaseRecord], countAttemptsOnDay day: Int?, providerOfDomain: [String: String]) throws -> [LeaseRecord] {
        // The message too: a lease planned from rows seen before their commit (`observeInsertedRecipients`)
        // whose commit failed must not take a later row that got the same id. And only a row due
        // at the grant: one planned from inserted rows may meanwhile have been leased by a round,
        // tried and deferred — its retry waits for its time.
        let mark = try db.prepare("""
            UPDATE recipients SET state='leased', lease_id=?, node=?, ip=?, updated_at=?
            WHERE id=? AND message_id=? AND (state='queued' OR state='deferred') AND next_attempt_at <= ?
            """)
        let ins = try db.prepare("INSERT INTO leases(id, node, instance, ip, message_id, domain, granted_at, expires_at) VALUES(?,?,?,?,?,?,?,?)")
        var out: [LeaseRecord] = []
        for var l in leases {
            var kept: [Int64] = []
            for rid in l.recipientIDs {
                let at = l.grantedAt.timeIntervalSince1970
                try mark.run([.text(l.id), .text(l.node), .text(l.sendingIP), .double(at), .int(rid), .text(l.messageID), .double(at)])
                if db.changes == 1 { kept.append(rid) }
            }
            guard !kept.isEmpty else { continue }
            l.recipientIDs = kept
            try ins.run([.text(l.id), .text(l.node), .text(l.instance), .text(l.sendingIP), .text(l.messageID), .text(l.domain),
                         .double(l.grantedAt.timeIntervalSince1970), .double(l.expiresAt.timeIntervalSince1970)])
            out.append(l)
        }
        if let day {
            // Warm-up accounting in the same transaction as the leases.
            let up = try db.prepare("INSERT INTO ip_daily(ip, day, attempts) VALUES(?,?,?) ON CONFLICT(ip, day) DO UPDATE SET attempts=attempts+excluded.attempts")
            for l in out { try up.run([.text(l.sendingIP), .int(Int64(day)), .int(Int64(l.recipientIDs.count))]) }
            try addDailyProviderAttemptsInTransaction(Self.providerCounts(out, providerOfDomain: providerOfDomain), day: day)
        }
        return out
    }

    /// The stored content of a message, nil if unknown or already purged.
    /// - Throws: `SQLiteError`; `BodySpool.MissingBody` or `SystemCallError` when its spooled
    ///   body cannot be read.
    public func content(of messageID: String) throws -> [UInt8]? {
        // A spooled body is read outside the lock. Its segment is removed only once no row
        // points at it; if the body was moved into its row in between, the second look finds it.
        do {
            return try body(lock.withLock { try storedBody(of: messageID) })
        } catch is BodySpool.MissingBody {
            return try body(lock.withLock { try storedBody(of: messageID) })
        }
    }

    /// Where a message's body is.
    enum StoredBody {
        case inRow([UInt8])
        case spooled(BodySpool.Location)
    }

    /// The octets of `stored` (read from the spool when it is there), nil for none.
    /// - Throws: `BodySpool.MissingBody`, `SystemCallError`.
    private func body(_ stored: StoredBody?) throws -> [UInt8]? {
        switch stored {
        case nil: return nil
        case .inRow(let body): return body
        case .spooled(let location): return try spool.read(location)
        }
    }

    /// The body of `messageID` as its row has it, nil when unknown or purged (caller holds `lock`).
    /// - Throws: `SQLiteError`.
    func storedBody(of messageID: String) throws -> StoredBody? {
        try db.prepare("SELECT body, body_segment, body_offset, size FROM messages WHERE id=?").query([.text(messageID)]) { s -> StoredBody? in
            if !s.isNull(0) { return .inRow(s.blob(0)) }
            if s.isNull(1) { return nil }
            return .spooled(BodySpool.Location(segment: s.int(1), offset: s.int(2), length: Int(s.int(3))))
        }.first.flatMap { $0 }
    }

    /// The body of `messageID` (read from the spool under `lock`: for rare callers), nil when
    /// unknown or purged.
    /// - Throws: `SQLiteError`, `BodySpool.MissingBody`, `SystemCallError`.
    func bodyUnderLock(of messageID: String) throws -> [UInt8]? { try body(storedBody(of: messageID)) }

    /// Applies a node's report, idempotently.
    ///
    /// Final outcomes (delivered, failed) apply to any recipient not yet final,
    /// even after the lease expired (a late report). A deferral applies only while
    /// the recipient is still held by this lease or waiting (never to a recipient
    /// re-leased elsewhere). Deferred recipients get their next attempt from
    /// `retry`, or expire once older than its maximum age.
    /// - Parameters:
    ///   - result: the report.
    ///   - node: the reporting node id.
    ///   - retry: the retry policy.
    ///   - now: the current time.
    /// - Throws: `SQLiteError`; nothing is applied then (the node re-sends).
    public func applyResult(_ result: ResultMessage, node: String, retry: RetryPolicy, now: Date) throws -> ResultApplication {
        try lock.withLock { try db.transaction { try applyResultInTransaction(result, node: node, retry: retry, now: now) } }
    }

    /// Applies several reports in one fsync'd transaction (group commit of results),
    /// with the rules of `applyResult`.
    /// - Returns: one `ResultApplication` per report, in order.
    /// - Throws: `SQLiteError`; nothing is applied then (the nodes re-send).
    public func applyResults(_ results: [(result: ResultMessage, node: String)], retry: RetryPolicy, now: Date) throws -> [ResultApplication] {
        try lock.withLock { try db.transaction { try results.map { try applyResultInTransaction($0.result, node: $0.node, retry: retry, now: now) } } }
    }

    /// Applies several reports in one transaction that does not wait for its own fsync, with
    /// the rules of `applyResult`: they are durable from the next synced commit on this
    /// connection (queued mail commits several times a second under load: one WAL fsync then
    /// covers them too) — `awaitSync(after:wait:)` waits for it, or syncs.
    /// - Returns: one `ResultApplication` per report, in order, and the mark to wait for.
    /// - Throws: `SQLiteError`; nothing is applied then (the nodes re-send).
    public func applyResultsUnsynced(_ results: [(result: ResultMessage, node: String)], retry: RetryPolicy,
                                     now: Date) throws -> (applications: [ResultApplication], mark: UInt64) {
        try lock.withLock {
            let apps = try db.transaction(durability: .processCrashSafe) {
                try results.map { try applyResultInTransaction($0.result, node: $0.node, retry: retry, now: now) }
            }
            return (apps, db.committedWrites)  // under `lock`: this commit's number (or an earlier one's, if it wrote nothing)
        }
    }

    /// The last commit on the connection known synced (for tests).
    var durableCommitsForTests: UInt64 { walSyncs.withLock { $0.durable } }
    /// The last commit on the connection that wrote (for tests).
    var commitsForTests: UInt64 { lock.withLock { db.committedWrites } }
    /// Sets how recent another synced commit must be for `awaitSync` to wait (for tests).
    func setSyncsExpectedWithinForTests(_ d: Duration) { walSyncs.withLock { $0.expectedWithin = d } }

    /// Returns once the commits up to `mark` (`applyResultsUnsynced`: a commit number) are on
    /// stable storage: when another sync covers them within `wait` — waited for only while
    /// others' syncs are coming (one within the last 20 ms) —, at once; otherwise after a synced
    /// commit of its own (a one-row write and the WAL's fsync).
    /// - Throws: `SQLiteError` when that commit fails (the results are then not known durable).
    public func awaitSync(after mark: UInt64, wait: Duration) throws {
        let expected = walSyncs.withLock { w in w.lastOther.map { ContinuousClock.now - $0 < w.expectedWithin } ?? false }
        let synced = walSyncs.wait(until: .now + (expected ? wait : .zero), for: { $0.durable >= mark }) { _, ok in ok }
        if synced { return }
        try lock.withLock {
            guard walSyncs.withLock({ $0.durable }) < mark else { return }
            walSyncs.withLock { $0.awaiting = true }
            defer { walSyncs.withLock { $0.awaiting = false } }
            try db.executeOnce("CREATE TABLE IF NOT EXISTS wal_sync_marks(id INTEGER PRIMARY KEY, mark INTEGER NOT NULL)")
            try db.transaction(durability: .synced) {
                try db.prepare("INSERT OR REPLACE INTO wal_sync_marks(id, mark) VALUES(1, ?)").run([.int(Int64(truncatingIfNeeded: mark))])
            }
        }
    }

    /// The values of `last_code`, `last_enhanced`, `last_text` for a reply (the text is at most
    /// `DeliveryStatus.maxTextLength` characters).
    static func replyColumns(_ reply: DeliveryStatus) -> [SQLiteStatement.Value] {
        [.int(Int64(reply.code.rawValue)), reply.enhanced.map { .text($0.description) } ?? .null, .text(reply.text)]
    }

    private func applyResultInTransaction(_ result: ResultMessage, node: String, retry: RetryPolicy, now: Date) throws -> ResultApplication {
        var app = ResultApplication()
        let t = now.timeIntervalSince1970
        let leaseRow = try db.prepare("SELECT id FROM leases WHERE id=?").query([.text(result.leaseID)]) { $0.text(0) }
        app.leaseKnown = !leaseRow.isEmpty
        let get = try db.prepare("SELECT r.state, r.lease_id, r.attempts, m.received_at, r.message_id FROM recipients r JOIN messages m ON m.id=r.message_id WHERE r.id=?")
        let setFinal = try db.prepare("UPDATE recipients SET state=?, lease_id=NULL, attempts=attempts+1, next_attempt_at=NULL, last_code=?, last_enhanced=?, last_text=?, node=?, ip=?, mx=?, updated_at=? WHERE id=?")
        let setDeferred = try db.prepare("UPDATE recipients SET state='deferred', lease_id=NULL, attempts=?, next_attempt_at=?, last_code=?, last_enhanced=?, last_text=?, node=?, ip=?, mx=?, updated_at=? WHERE id=?")
        let closeOne = try db.prepare("UPDATE messages SET open_recipients=open_recipients-1 WHERE id=?")
        var touched = Set<String>()
        for o in result.outcomes {
            guard let row = try get.query([.int(o.recipientID)], { ($0.text(0), $0.optionalText(1), Int($0.int(2)), $0.double(3), $0.text(4)) }).first,
                  let state = RecipientState(rawValue: row.0) else { app.ignored += 1; continue }
            if state.isFinal { app.ignored += 1; continue }
            let common: [SQLiteStatement.Value] = SQLiteQueueStore.replyColumns(o.reply) + [.text(node), .text(result.sendingIP), result.mxHost.map { .text($0) } ?? .null, .double(t)]
            switch o.status {
            case .delivered, .failed:
                try setFinal.run([.text(o.status == .delivered ? "delivered" : "failed")] + common + [.int(o.recipientID)])
                try closeOne.run([.text(row.4)])
                touched.insert(row.4)
            case .deferred:
                let heldHere = row.1 == result.leaseID
                let waiting = state == .queued || state == .deferred
                guard heldHere || (waiting && row.1 == nil && app.leaseKnown) else { app.ignored += 1; continue }
                let attempts = row.2 + 1
                switch retry.afterDeferral(attempts: attempts, receivedAt: Date(timeIntervalSince1970: row.3), now: now) {
                case .retry(let at):
                    try setDeferred.run([.int(Int64(attempts)), .double(at.timeIntervalSince1970)] + common + [.int(o.recipientID)])
                case .expire:
                    try setFinal.run([.text("expired")] + common + [.int(o.recipientID)])
                    try closeOne.run([.text(row.4)])
                    touched.insert(row.4)
                }
            }
            app.applied += 1
        }
        // Recipients of this lease that the report did not mention go back to the queue.
        try db.prepare("UPDATE recipients SET state='queued', lease_id=NULL, updated_at=? WHERE lease_id=? AND state='leased'").run([.double(t), .text(result.leaseID)])
        try db.prepare("DELETE FROM leases WHERE id=?").run([.text(result.leaseID)])
        try purgeBodies(touched)
        return app
    }

    /// Drops the content of messages with no open recipients left (the record stays for lookups).
    /// The caller holds `lock` inside a transaction.
    func purgeBodies(_ ids: Set<String>) throws {
        let purge = try db.prepare("UPDATE messages SET body=NULL, body_segment=NULL, body_offset=NULL WHERE id=? AND open_recipients<=0")
        for id in ids { try purge.run([.text(id)]) }
    }

    /// Returns the recipients of leases past their expiry to `queued` and forgets those leases.
    /// - Returns: the expired leases.
    /// - Throws: `SQLiteError`.
    @discardableResult
    public func requeueExpiredLeases(now: Date) throws -> [String] {
        try lock.withLock {
            try db.transaction {
                let t = now.timeIntervalSince1970
                let ids = try db.prepare("SELECT id FROM leases WHERE expires_at <= ?").query([.double(t)]) { $0.text(0) }
                try requeue(ids, now: t)
                return ids
            }
        }
    }

    /// Returns every lease of `node` held by an instance other than `instance` to the queue
    /// (a restarted node's old leases are reconciled, not trusted).
    /// - Returns: the number of leases requeued.
    /// - Throws: `SQLiteError`.
    @discardableResult
    public func requeueLeases(node: String, exceptInstance instance: String, now: Date) throws -> Int {
        try lock.withLock {
            try db.transaction {
                let ids = try db.prepare("SELECT id FROM leases WHERE node=? AND instance<>?").query([.text(node), .text(instance)]) { $0.text(0) }
                try requeue(ids, now: now.timeIntervalSince1970)
                return ids.count
            }
        }
    }

    private func requeue(_ leaseIDs: [String], now t: Double) throws {
        let upd = try db.prepare("UPDATE recipients SET state='queued', lease_id=NULL, updated_at=? WHERE lease_id=? AND state='leased'")
        let del = try db.prepare("DELETE FROM leases WHERE id=?")
        for id in leaseIDs {
            try upd.run([.double(t), .text(id)])
            try del.run([.text(id)])
        }
    }

    /// Marks waiting recipients (`queued`, `deferred`, `held`) older than `maxAge` seconds
    /// `expired`; one never attempted says so in its last reply (its DSN's diagnostic).
    /// - Returns: how many expired.
    /// - Throws: `SQLiteError`.
    @discardableResult
    public func expireOld(maxAge: TimeInterval, now: Date) throws -> Int {
        try lock.withLock {
            try db.transaction {
                let cutoff = now.timeIntervalSince1970 - maxAge
                // From the (small) set of old messages with open recipients, via the partial index,
                // not a scan of every waiting recipient (a 1M-recipient queue took 0.7 s per sweep).
                let rows = try db.prepare("""
                    SELECT r.id, r.message_id FROM messages m CROSS JOIN recipients r ON r.message_id = m.id
                    WHERE m.received_at <= ? AND m.open_recipients > 0 AND r.state IN ('queued','deferred','held')
                    """).query([.double(cutoff)]) { ($0.int(0), $0.text(1)) }
                let upd = try db.prepare("""
                    UPDATE recipients SET state='expired', next_attempt_at=NULL, updated_at=?,
                      last_text=CASE WHEN state='held' THEN 'held by an operator; ' ELSE '' END
                                || COALESCE(last_text || ' ', CASE WHEN attempts=0 THEN 'not yet attempted ' ELSE '' END)
                                || '(expired: maximum queue age reached)'
                    WHERE id=?
                    """)
                let closeOne = try db.prepare("UPDATE messages SET open_recipients=open_recipients-1 WHERE id=?")
                for (id, mid) in rows {
                    try upd.run([.double(now.timeIntervalSince1970), .int(id)])
                    try closeOne.run([.text(mid)])
                }
                try purgeBodies(Set(rows.map { $0.1 }))
                return rows.count
            }
        }
    }

    /// Recipient counts by state (every state present, zero when none). Read on the read-only
    /// connection (a committed snapshot, without the queue's lock): it reads every recipient
    /// row kept — the finished ones of `coordinator.message_retention` too —, which at millions
    /// of rows takes a second a scrape, and under the lock that second stalled every submission.
    public func countsByState() throws -> [RecipientState: Int] {
        try withReader { db in
            var out: [RecipientState: Int] = [:]
            for s in RecipientState.allCases { out[s] = 0 }
            let rows = try db.prepare("SELECT state, COUNT(*) FROM recipients GROUP BY state").query([]) { ($0.text(0), Int($0.int(1))) }
            for (s, n) in rows {
                if let st = RecipientState(rawValue: s) { out[st] = n }
            }
            return out
        }
    }

    /// Leases currently recorded, per node id.
    public func leasesPerNode() throws -> [String: Int] {
        try lock.withLock {
            Dictionary(uniqueKeysWithValues: try db.prepare("SELECT node, COUNT(*) FROM leases GROUP BY node").query { ($0.text(0), Int($0.int(1))) })
        }
    }

    /// Every recorded lease (for reconciliation and status).
    public func allLeases() throws -> [LeaseRecord] {
        try lock.withLock {
            let leases = try db.prepare("SELECT id, node, instance, ip, message_id, domain, granted_at, expires_at FROM leases ORDER BY granted_at, id").query {
                LeaseRecord(id: $0.text(0), node: $0.text(1), instance: $0.text(2), sendingIP: $0.text(3), messageID: $0.text(4), domain: $0.text(5),
                            recipientIDs: [], grantedAt: Date(timeIntervalSince1970: $0.double(6)), expiresAt: Date(timeIntervalSince1970: $0.double(7)))
            }
            let rq = try db.prepare("SELECT id FROM recipients WHERE lease_id=?")
            return try leases.map { l in var l = l; l.recipientIDs = try rq.query([.text(l.id)]) { $0.int(0) }; return l }
        }
    }

    /// A message and its recipients, nil if unknown.
    public func message(id: String) throws -> MessageRecord? {
        try lock.withLock {
            guard var m = try db.prepare("SELECT id, reverse_path, pool, size, received_at, client_address, tenant, priority FROM messages WHERE id=?").query([.text(id)], {
                MessageRecord(id: $0.text(0), reversePath: $0.text(1), pool: $0.text(2), size: Int($0.int(3)), receivedAt: $0.double(4), clientAddress: $0.text(5), recipients: [],
                              tenant: $0.optionalText(6), priority: MessagePriority(parsing: $0.text(7)))
            }).first else { return nil }
            m.recipients = try db.prepare("SELECT id, address, state, attempts, next_attempt_at, last_code, last_enhanced, last_text, node, ip, mx, updated_at FROM recipients WHERE message_id=? ORDER BY id").query([.text(id)]) {
                RecipientRecord(id: $0.int(0), address: $0.text(1), state: RecipientState(rawValue: $0.text(2)) ?? .queued, attempts: Int($0.int(3)),
                                nextAttemptAt: $0.isNull(4) ? nil : $0.double(4), lastReply: SQLiteQueueStore.reply($0, 5),
                                lastTextWithoutReply: $0.isNull(5) ? $0.optionalText(7) : nil, node: $0.optionalText(8), sendingIP: $0.optionalText(9),
                                mxHost: $0.optionalText(10), updatedAt: $0.double(11))
            }
            return m
        }
    }

    /// The most recently accepted message ids, newest first.
    public func recentMessageIDs(limit: Int) throws -> [String] {
        try lock.withLock {
            try db.prepare("SELECT id FROM messages ORDER BY received_at DESC, id DESC LIMIT ?").query([.int(Int64(limit))]) { $0.text(0) }
        }
    }
}
