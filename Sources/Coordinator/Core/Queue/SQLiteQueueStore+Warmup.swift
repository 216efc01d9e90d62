import Foundation

/// Per sending IP, per UTC day: recipients leased (delivery attempts), for warm-up caps.
extension SQLiteQueueStore {
    /// Creates the warm-up table if needed (caller holds `lock`).
    func ensureWarmupTable() throws {
        try db.executeOnce("CREATE TABLE IF NOT EXISTS ip_daily(ip TEXT NOT NULL, day INTEGER NOT NULL, attempts INTEGER NOT NULL, PRIMARY KEY(ip, day))")
    }

    /// Attempts counted per IP on `day`.
    /// - Throws: `SQLiteError`.
    public func dailyAttempts(day: Int) throws -> [String: Int] {
        try lock.withLock {
            try ensureWarmupTable()
            return Dictionary(uniqueKeysWithValues: try db.prepare("SELECT ip, attempts FROM ip_daily WHERE day=?").query([.int(Int64(day))]) { ($0.text(0), Int($0.int(1))) })
        }
    }

    /// Adds attempts to IPs' counts for `day`.
    /// - Throws: `SQLiteError`.
    public func addDailyAttempts(_ counts: [String: Int], day: Int) throws {
        guard !counts.isEmpty else { return }
        try lock.withLock {
            try ensureWarmupTable()
            try db.transaction {
                let up = try db.prepare("INSERT INTO ip_daily(ip, day, attempts) VALUES(?,?,?) ON CONFLICT(ip, day) DO UPDATE SET attempts=attempts+excluded.attempts")
                for (ip, n) in counts { try up.run([.text(ip), .int(Int64(day)), .int(Int64(n))]) }
            }
        }
    }
}
