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
extension SQLiteQueueStore {
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
        // The loop holds the store weakly: it ends when the store is released.
        BackgroundLoop(name: "wal-checkpoint") { [weak self] in
            guard let store = self else { return nil }
            do {
                try checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
                let walSize = store.walFileSize
                try store.lock.withLock {
                    if walSize >= restartSize { try checkpointer.execute("PRAGMA wal_checkpoint(TRUNCATE)") }
                    store.backgroundCheckpoints += 1
                }
                failures.withLock { $0 = 0 }
            } catch {
                guard failures.withLock({ $0 += 1; return $0 }) >= 10 else { return pause }
                // Give the work back to SQLite rather than let the WAL grow without bound.
                log.error("background WAL checkpoints keep failing; automatic checkpoints restored", ["error": "\(error)"])
                store.lock.withLock {
                    try? store.db.execute("PRAGMA wal_autocheckpoint=1000")
                    store.checkpointsInBackground = false
                }
                return nil
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
