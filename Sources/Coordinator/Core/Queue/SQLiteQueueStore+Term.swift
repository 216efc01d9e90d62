import Foundation
import HatoCrypto

/// The leadership term of a single coordinator on SQLite (one process owns the file, so it
/// always leads): a new term at every start, stamped on the frames it sends, so that a node
/// refuses anything from an earlier run of it that somehow still speaks (the same fencing the
/// PostgreSQL leadership gives several coordinators).
extension SQLiteQueueStore {
    /// Starts a new term: increments the stored term (synced) and returns it with the store's
    /// identity, created on first use (a random id: a new data directory is a new store).
    /// - Parameter coordinatorID: this coordinator's id, for the stamp.
    /// - Returns: the stamp for the scheduler.
    /// - Throws: `SQLiteError`.
    public func beginTerm(coordinatorID: String) throws -> LeadershipStamp {
        try lock.withLock {
            try db.transaction {
                try db.execute("CREATE TABLE IF NOT EXISTS run_state(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                func read(_ key: String) throws -> String? {
                    try db.prepare("SELECT value FROM run_state WHERE key=?").query([.text(key)]) { $0.text(0) }.first
                }
                func write(_ key: String, _ value: String) throws {
                    try db.prepare("INSERT INTO run_state(key, value) VALUES(?,?) ON CONFLICT(key) DO UPDATE SET value=excluded.value")
                        .run([.text(key), .text(value)])
                }
                let storeID = try read("store_id") ?? Identifier.random(bytes: 16).lowercased()
                // Never below the wall clock's seconds: a queue restored from a backup keeps its
                // store id and an old term, which nodes that saw a later one would refuse.
                let term = max((try read("term").flatMap { Int64($0) } ?? 0) + 1, Int64(Date().timeIntervalSince1970))
                try write("store_id", storeID)
                try write("term", String(term))
                return LeadershipStamp(term: term, storeID: storeID, coordinatorID: coordinatorID)
            }
        }
    }

    /// Nothing to fence on SQLite: one coordinator owns the file (`hato-coordinator serve`
    /// refuses several coordinators on SQLite), so no other term can exist.
    public func fenceLeaseWrites(term: Int64) {}
}
