import CSQLite
import Foundation
import HatoSupport

/// Run bookkeeping that lets lease records skip their fsync without ever leasing a recipient
/// twice at once.
///
/// A lease record protects against duplicates, not against loss: the message itself is
/// fsync'd before its `250`. What the record must survive is a coordinator restart while a
/// node still delivers the lease. A crash of the process alone loses no written WAL frame
/// (they are in the kernel's page cache); only a kernel crash or power loss can, and both
/// change the host's boot id (`/proc/sys/kernel/random/boot_id`). So:
///
/// - a **lease horizon** is kept durable: before any lease that expires after it is sent, a
///   synced commit moves it `leaseHorizonSlack` seconds past that lease's expiry (about one
///   synced lease commit per minute under steady load);
/// - `beginRun` compares the stored boot id with the current one. Same boot, or a clean stop
///   (`endRun`, whose synced commit made every earlier one durable): nothing was lost. A new
///   boot after an unclean stop: lease records may be missing, so no new lease is granted
///   until the stored horizon has passed (the hold itself is stored, so restarting during
///   it does not lift it) — by then every lease from before has expired at
///   the nodes too (their own deadline is earlier still), and their results, kept in the
///   nodes' journals, are applied whenever they arrive.
///
/// A failed sync of the WAL is treated like a new boot: after it the kernel may have dropped
/// pages it never wrote (Linux marks them clean and reports the error once), so lease frames
/// written since the last good sync may be gone once the cache lets them go, while a batch's
/// frames survive — a restart on the same boot would see lease records that the disk does not
/// hold, or miss ones a node still delivers. The failure is recorded in a marker file next to
/// the queue (`SyncFailureMarker`) when it latches; `beginRun` holds new leases until the
/// horizon as after a new boot, then removes the marker.
extension SQLiteQueueStore {
    /// Seconds a synced horizon update reaches past the lease that caused it.
    static let leaseHorizonSlack: Double = Queue.leaseHorizonSlack

    private func ensureRunStateTable() throws {
        try db.executeOnce("CREATE TABLE IF NOT EXISTS run_state(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    }

    /// Writes one run-state value (inside the caller's transaction).
    func setRunState(_ key: String, _ value: String) throws {
        try ensureRunStateTable()
        try db.prepare("INSERT INTO run_state(key, value) VALUES(?,?) ON CONFLICT(key) DO UPDATE SET value=excluded.value")
            .run([.text(key), .text(value)])
    }

    private func runState(_ key: String) throws -> String? {
        try ensureRunStateTable()
        return try db.prepare("SELECT value FROM run_state WHERE key=?").query([.text(key)]) { $0.text(0) }.first
    }

    /// Starts a run (call once, before the first lease): decides whether leasing must wait,
    /// records this run as not cleanly stopped, and enables fsync-free lease commits when a
    /// boot id is known.
    /// - Parameters:
    ///   - bootID: this host's boot id (`currentBootID()`); nil keeps every lease commit synced.
    ///   - now: the current time.
    /// - Returns: until when no new lease may be granted (a new boot after an unclean stop,
    ///   with a lease horizon still ahead), or nil.
    /// - Throws: `SQLiteError` (also when that checkpoint fails or cannot finish).
    public func beginRun(bootID: String?, now: Date) throws -> Date? {
        try lock.withLock {
            let storedBoot = try runState("boot_id")
            let clean = try runState("clean_stop") == "1"
            let horizon = try runState("lease_horizon").flatMap(Double.init) ?? 0
            // A hold decided by an earlier start stays in force until it ends, whatever
            // happened since (a restart during the hold must not lift it).
            let earlierHold = try runState("lease_hold_until").flatMap(Double.init) ?? 0
            let syncFailed = SyncFailureMarker.exists(at: syncFailureMarkerPath)
            if syncFailed {
                // What this restart reads may be pages the kernel holds but failed to write: a
                // checkpoint copies the whole WAL as SQLite sees it into the database file and
                // syncs it, so nothing depends on those pages from here on (if the disk still
                // fails, this throws and the coordinator does not start).
                let result = try db.prepare("PRAGMA wal_checkpoint(TRUNCATE)").query { ($0.int(0), $0.int(1), $0.int(2)) }
                // Busy (a reader in another process) only stops the truncation once every frame
                // is copied and synced; frames left over are not secured.
                if let (busy, frames, copied) = result.first, busy != 0, copied < frames {
                    throw SQLiteError(code: SQLITE_BUSY, message: "\(path): the last run's WAL sync failed and the checkpoint that secures the queue could not copy every frame (\(copied) of \(frames); another process reads an old snapshot of the queue): stop it and start again")
                }
            }
            let leasesMayBeLost = syncFailed || (!clean && storedBoot != nil && storedBoot != bootID)
            var holdUntil = earlierHold
            if leasesMayBeLost { holdUntil = max(holdUntil, horizon) }
            if holdUntil <= now.timeIntervalSince1970 { holdUntil = 0 }
            try db.transaction {
                try setRunState("clean_stop", "0")
                try setRunState("lease_hold_until", String(holdUntil))
                if let bootID { try setRunState("boot_id", bootID) }
            }
            if syncFailed {
                // The hold is stored (synced above): a restart from here on keeps it without the marker.
                let log = Logger(label: "coordinator.queue")
                log.warning("the last run stopped after a failed sync of the queue's write-ahead log: no new lease until the lease horizon",
                            ["marker": syncFailureMarkerPath,
                             "hold_until": holdUntil > 0 ? "\(Date(timeIntervalSince1970: holdUntil))" : "passed"])
                do { try SyncFailureMarker.remove(at: syncFailureMarkerPath) } catch {
                    log.warning("cannot remove the failed-sync marker; the next start holds leases again", ["marker": syncFailureMarkerPath, "error": "\(error)"])
                }
            }
            leaseHorizon = horizon
            leasesSkipFsync = bootID != nil
            return holdUntil > 0 ? Date(timeIntervalSince1970: holdUntil) : nil
        }
    }

    /// Ends the run cleanly: one synced commit (which makes every earlier commit durable too)
    /// records the clean stop. The store takes no further writes: later calls block until
    /// the process exits, so nothing can be committed after the mark without its fsync.
    /// - Throws: `SQLiteError` (the store stays usable then).
    public func endRun() throws {
        lock.lock()
        do {
            try db.transaction { try setRunState("clean_stop", "1") }
        } catch {
            lock.unlock()
            throw error
        }
        // The lock stays held on purpose (see above).
    }
}

/// The file that records a failed sync of the queue's write-ahead log (`queue.db-sync-failed`
/// next to `queue.db`), for the next start: see `SQLiteQueueStore.beginRun`. It is written
/// when the failure latches (`SQLiteDatabase.onSyncFailed`), without an fsync: it only matters
/// to a restart on the same boot, which reads the kernel's page cache (after a new boot the boot
/// id already holds leases), and an fsync on a failing disk could stall the queue's lock. Its
/// text (time, boot id, error) is for the operator.
enum SyncFailureMarker {
    /// The marker's path for the database file at `database`.
    static func path(forDatabase database: String) -> String { database + "-sync-failed" }

    /// Whether a marker is at `path`: yes unless the file system says there is none (an error
    /// reading the directory counts as a marker: the safe side).
    static func exists(at path: String) -> Bool { access(path, F_OK) == 0 || errno != ENOENT }

    /// Writes the marker (no fsync: see above).
    /// - Parameters:
    ///   - path: the marker's path.
    ///   - text: what it says (one line; no secrets: the time, the boot id, the error).
    /// - Throws: Foundation's file error naming the path and the reason.
    static func write(at path: String, text: String) throws {
        try Data((text + "\n").utf8).write(to: URL(fileURLWithPath: path))
    }

    /// Removes the marker (when present). (A removal lost in a power loss is harmless: the
    /// new boot holds leases anyway.)
    /// - Throws: `SQLiteError` (`SQLITE_IOERR`) naming the path and the system's error.
    static func remove(at path: String) throws {
        guard unlink(path) == 0 || errno == ENOENT else {
            throw SQLiteError(code: SQLITE_IOERR, message: "\(path): unlink: \(String(cString: strerror(errno)))")
        }
    }
}
