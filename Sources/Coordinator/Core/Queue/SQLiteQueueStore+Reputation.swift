import Foundation

/// The reputation signals' counts (`reputation_counts`, one row per (sending IP, provider,
/// minute, kind)) and the per-provider warm-up counts (`ip_provider_daily`), kept in the store
/// so that they are the cluster's and survive a restart or a change of leader.
extension SQLiteQueueStore {
    /// Creates the tables if needed (caller holds `lock`).
    func ensureReputationTables() throws {
        try db.executeOnce("""
            CREATE TABLE IF NOT EXISTS reputation_counts(ip TEXT NOT NULL, provider TEXT NOT NULL, bucket INTEGER NOT NULL, kind TEXT NOT NULL,
              count INTEGER NOT NULL, PRIMARY KEY(ip, provider, bucket, kind));
            CREATE TABLE IF NOT EXISTS ip_provider_daily(ip TEXT NOT NULL, provider TEXT NOT NULL, day INTEGER NOT NULL, attempts INTEGER NOT NULL,
              PRIMARY KEY(ip, provider, day));
            """)
    }

    /// Adds counts (rows with the same key are summed).
    /// - Throws: `SQLiteError`.
    public func addReputationCounts(_ rows: [ReputationCount]) throws {
        guard !rows.isEmpty else { return }
        try lock.withLock {
            try ensureReputationTables()
            try db.transaction {
                let up = try db.prepare("""
                    INSERT INTO reputation_counts(ip, provider, bucket, kind, count) VALUES(?,?,?,?,?)
                    ON CONFLICT(ip, provider, bucket, kind) DO UPDATE SET count=count+excluded.count
                    """)
                for r in rows { try up.run([.text(r.ip), .text(r.provider), .int(Int64(r.bucket)), .text(r.kind), .int(Int64(r.count))]) }
            }
        }
    }

    /// The counts of buckets starting at `since` or later; older rows are deleted.
    /// - Parameter since: the oldest bucket kept, seconds since 1970.
    /// - Throws: `SQLiteError`.
    public func reputationCounts(since: Int) throws -> [ReputationCount] {
        try lock.withLock {
            try ensureReputationTables()
            try db.prepare("DELETE FROM reputation_counts WHERE bucket < ?").run([.int(Int64(since))])
            return try db.prepare("SELECT ip, provider, bucket, kind, count FROM reputation_counts ORDER BY ip, provider, bucket, kind").query([]) {
                ReputationCount(ip: $0.text(0), provider: $0.text(1), bucket: Int($0.int(2)), kind: $0.text(3), count: Int($0.int(4)))
            }
        }
    }

    /// Forgets every count of one pair (after a lift).
    /// - Throws: `SQLiteError`.
    public func deleteReputationCounts(ip: String, provider: String) throws {
        try lock.withLock {
            try ensureReputationTables()
            try db.prepare("DELETE FROM reputation_counts WHERE ip=? AND provider=?").run([.text(ip), .text(provider)])
        }
    }

    /// Recipients leased per sending IP and provider label on UTC `day`: IP → provider → count.
    /// - Throws: `SQLiteError`.
    public func dailyProviderAttempts(day: Int) throws -> [String: [String: Int]] {
        try lock.withLock {
            try ensureReputationTables()
            var out: [String: [String: Int]] = [:]
            for (ip, provider, n) in try db.prepare("SELECT ip, provider, attempts FROM ip_provider_daily WHERE day=?").query([.int(Int64(day))], {
                ($0.text(0), $0.text(1), Int($0.int(2)))
            }) { out[ip, default: [:]][provider] = n }
            return out
        }
    }

    /// Adds to the per-provider counts of UTC `day` (IP → provider label → recipients).
    /// - Throws: `SQLiteError`.
    public func addDailyProviderAttempts(_ counts: [String: [String: Int]], day: Int) throws {
        guard !counts.isEmpty else { return }
        try lock.withLock {
            try ensureReputationTables()
            try db.transaction { try addDailyProviderAttemptsInTransaction(counts, day: day) }
        }
    }

    /// `addDailyProviderAttempts` inside the caller's transaction (caller holds `lock`; the table exists).
    func addDailyProviderAttemptsInTransaction(_ counts: [String: [String: Int]], day: Int) throws {
        guard !counts.isEmpty else { return }
        let up = try db.prepare("""
            INSERT INTO ip_provider_daily(ip, provider, day, attempts) VALUES(?,?,?,?)
            ON CONFLICT(ip, provider, day) DO UPDATE SET attempts=attempts+excluded.attempts
            """)
        for (ip, byProvider) in counts { for (p, n) in byProvider { try up.run([.text(ip), .text(p), .int(Int64(day)), .int(Int64(n))]) } }
    }
}
