import Foundation
import HatoSupport

/// WAL checkpoints off the commit path.
///
/// SQLite checkpoints automatically inside whichever commit pushes the WAL past 1000 pages:
/// that commit then copies about 4 MiB into the database file and fsyncs it — a message's
/// `250` or a lease waited milliseconds for it, about once per 30 messages. With background
/// checkpoints the queue's connection never checkpoints; a thread with its own connection
/// runs a PASSIVE checkpoint (which never blocks writers or readers) every `interval`. Under
/// a steady stream of commits a passive checkpoint never catches up with the end of the WAL,
/// so SQLite could never start it over: once the WAL file passes `restartSize`, the thread
/// takes the queue's lock for a TRUNCATE checkpoint, which then only copies the few frames
/// written since the passive one and empties the WAL file.
///
/// **Starting the WAL over off the commit path.** Once a checkpoint has copied every frame,
/// the next write transaction starts the WAL over: it writes a new WAL header and fsyncs it
/// before its first frame (SQLite does so at any `synchronous` but OFF, so that a frame of the
/// new WAL can never be taken for one of the old). That was a lease commit (otherwise never
/// synced) or a message's commit paying a second fsync, about four times a second at light
/// load — the tail of the relay's latency. So after a checkpoint that copied everything (or
/// emptied the file) the thread starts the WAL over itself, under the queue's lock, unless a
/// commit came in between (which then did it): a write transaction of one page
/// (`user_version`, rewritten with its own value) on its own connection. The fsync is moved
/// off the queue's commits, not saved; under a steady stream of commits one nearly always
/// comes first and nothing is written. A pass finds nothing to do when no other connection
/// committed since the previous complete one (`PRAGMA data_version`), so an idle queue is
/// left alone.
extension SQLiteQueueStore {
    /// What the checkpoint thread remembers between passes.
    struct CheckpointMemory {
        /// `PRAGMA data_version` of the checkpointer's connection at the last complete pass.
        var lastCompleteVersion: Int64?
        /// Writes made to start the WAL over (SQLite appends instead while a reader still uses
        /// the old WAL; harmless).
        var restarts = 0
        /// Such writes that failed (the pass goes on; the next commit starts the WAL over).
        var restartFailures = 0
        /// Passes that found nothing committed since the last complete one.
        var idlePasses = 0
        /// Passes after which every commit made before the pass was on stable storage: idle
        /// ones, and those whose checkpoint found the WAL empty or copied all of it (a
        /// checkpoint syncs the WAL before copying). The spool's removals wait for one.
        var durablePasses = 0
        /// Sealed spool segments found unreferenced, with `durablePasses` and the queue
        /// connection's last commit number (`SQLiteDatabase.committedWrites`) when found: removed
        /// once a complete pass or a sync of a later commit came (the change that dropped the
        /// last reference is then durable).
        var spoolUnreferenced: [Int64: (durablePasses: Int, syncs: UInt64)] = [:]
        /// Spooled bodies moved into their rows so far.
        var spoolEvacuated = 0
        /// Segments holding a body that could not be read: not evacuated again in this run.
        var spoolUnreadable: Set<Int64> = []
    }

    /// One pass of the checkpoint thread (see the extension's doc).
    /// - Parameters:
    ///   - checkpointer: the thread's own connection to the queue file.
    ///   - restartSize: WAL file size (bytes) from which the WAL is emptied.
    ///   - memory: what the previous passes left.
    /// - Throws: `SQLiteError` from the checkpoints (not from the restarting write).
    func checkpointPass(_ checkpointer: SQLiteDatabase, restartSize: Int, memory: inout CheckpointMemory) throws {
        func dataVersion() throws -> Int64 { try checkpointer.prepare("PRAGMA data_version").query { $0.int(0) }.first ?? -1 }
        let version = try dataVersion()
        let walSize = walFileSize
        if version == memory.lastCompleteVersion && walSize < restartSize {
            memory.idlePasses += 1
            memory.durablePasses += 1
            return
        }
        // (busy, frames in the WAL, frames copied into the database file)
        let passive = try checkpointer.prepare("PRAGMA wal_checkpoint(PASSIVE)").query { ($0.int(0), $0.int(1), $0.int(2)) }.first
        let copiedAll = passive.map { $0.0 == 0 && $0.1 > 0 && $0.2 == $0.1 } ?? false
        if let passive, passive.0 == 0, passive.2 == passive.1 { memory.durablePasses += 1 }
        try lock.withLock {
            var emptied = false
            if walSize >= restartSize {
                let busy = try checkpointer.prepare("PRAGMA wal_checkpoint(TRUNCATE)").query { $0.int(0) }.first ?? 1
                emptied = busy == 0
            }
            if copiedAll || emptied { memory.lastCompleteVersion = version }
            // Under the queue's lock no commit can come now. One that came after the passive
            // checkpoint has started the WAL over itself (or appended): then nothing is written
            // here — each write by this connection also makes the queue's connection drop its
            // page cache at its next transaction.
            let committedSince = try dataVersion() != version
            guard emptied || (copiedAll && !committedSince) else { return }
            do {
                try checkpointer.transaction(durability: .processCrashSafe) {
                    let v = try checkpointer.prepare("PRAGMA user_version").query { $0.int(0) }.first ?? 0
                    try checkpointer.execute("PRAGMA user_version=\(v)")
                }
                memory.restarts += 1
            } catch {
                // Only a saving missed (another process holding the write lock, say): the next
                // commit starts the WAL over, as SQLite does on its own.
                memory.restartFailures += 1
            }
        }
    }

    /// Starts the checkpoint thread and turns off the automatic checkpoint of the queue's
    /// connection. Idempotent. The thread ends when the store is released.
    /// - Parameters:
    ///   - interval: seconds between checkpoints.
    ///   - restartSize: WAL file size (bytes) from which the WAL is emptied.
    /// - Throws: `SQLiteError` when the second connection cannot be opened.
    public func startBackgroundCheckpoints(interval: TimeInterval = 0.25, restartSize: Int = 16 << 20) throws {
        let checkpointer = try SQLiteDatabase(path: path)
        // The TRUNCATE step runs under the queue's lock: it must not wait long for a reader
        // in another process (an operator's sqlite3); it is simply tried again next time.
        try checkpointer.execute("PRAGMA synchronous=FULL; PRAGMA busy_timeout=100")
        let started: Bool = lock.withLock {
            guard !checkpointsInBackground else { return false }
            checkpointsInBackground = true
            return true
        }
        guard started else { return }
        try lock.withLock { try db.execute("PRAGMA wal_autocheckpoint=0") }
        let log = Logger(label: "coordinator.queue")
        let failures = Locked(0)
        let pause = Duration.milliseconds(Int(interval * 1000))
        let memory = Locked(CheckpointMemory())
        let checkpointing = Locked(true)
        let spoolFailures = Locked(0)
        // The loop holds the store weakly: it ends when the store is released. When the
        // checkpoints are given back to SQLite it goes on for the spool's upkeep alone.
        BackgroundLoop(name: "wal-checkpoint") { [weak self] in
            guard let store = self else { return nil }
            if checkpointing.snapshot {
                do {
                    try memory.withLock { try store.checkpointPass(checkpointer, restartSize: restartSize, memory: &$0) }
                    store.lock.withLock { store.backgroundCheckpoints += 1 }
                    failures.withLock { $0 = 0 }
                } catch {
                    if failures.withLock({ $0 += 1; return $0 }) >= 10 {
                        // Give the work back to SQLite rather than let the WAL grow without bound.
                        log.error("background WAL checkpoints keep failing; automatic checkpoints restored", ["error": "\(error)"])
                        store.lock.withLock {
                            try? store.db.execute("PRAGMA wal_autocheckpoint=1000")
                            store.checkpointsInBackground = false
                        }
                        checkpointing.withLock { $0 = false }
                    }
                }
            }
            do {
                try memory.withLock { try store.spoolPass(checkpointer, memory: &$0) }
                spoolFailures.withLock { $0 = 0 }
            } catch {
                // Logged once per run of failures; the spool only grows meanwhile.
                if spoolFailures.withLock({ $0 += 1; return $0 }) == 1 {
                    log.error("the message spool's upkeep failed; retrying", ["error": "\(error)"])
                }
            }
            return pause
        }.start()
    }

    /// Starts the background WAL checkpoints with their defaults (`QueueStore.startBackgroundWork`).
    /// - Throws: `SQLiteError` when the second connection cannot be opened.
    public func startBackgroundWork() throws { try startBackgroundCheckpoints() }

    /// The size of the WAL file in bytes (0 when there is none).
    var walFileSize: Int { ((try? FileManager.default.attributesOfItem(atPath: path + "-wal"))?[.size] as? Int) ?? 0 }

    /// Background checkpoints run so far (for tests).
    var backgroundCheckpointCount: Int { lock.withLock { backgroundCheckpoints } }
}
