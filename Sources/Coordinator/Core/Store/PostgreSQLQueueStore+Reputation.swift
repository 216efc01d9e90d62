import Foundation

// The reputation signals' counts and the per-provider warm-up counts on PostgreSQL
// (migration 8): the SQL of SQLiteQueueStore+Reputation.swift.
extension PostgreSQLQueueStore {
    /// Migration 8: `reputation_counts` and `ip_provider_daily` (issue 18).
    static let reputationSchemaSQL = """
        CREATE TABLE reputation_counts(ip text NOT NULL, provider text NOT NULL, bucket bigint NOT NULL, kind text NOT NULL,
          count bigint NOT NULL, PRIMARY KEY(ip, provider, bucket, kind));
        CREATE TABLE ip_provider_daily(ip text NOT NULL, provider text NOT NULL, day bigint NOT NULL, attempts bigint NOT NULL,
          PRIMARY KEY(ip, provider, day));
        """

    /// Adds counts (rows with the same key are summed).
    /// - Throws: `PostgreSQLError`.
    public func addReputationCounts(_ rows: [ReputationCount]) throws {
        guard !rows.isEmpty else { return }
        // One row per key (the upsert cannot touch a row twice in one statement).
        var summed: [String: ReputationCount] = [:]
        for r in rows { summed["\(r.ip)\u{0}\(r.provider)\u{0}\(r.bucket)\u{0}\(r.kind)", default: ReputationCount(ip: r.ip, provider: r.provider, bucket: r.bucket, kind: r.kind, count: 0)].count += r.count }
        let list = summed.values.sorted { ($0.ip, $0.provider, $0.bucket, $0.kind) < ($1.ip, $1.provider, $1.bucket, $1.kind) }
        try pool.transaction { c in
            try c.run("""
                INSERT INTO reputation_counts(ip, provider, bucket, kind, count)
                SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[])
                ON CONFLICT(ip, provider, bucket, kind) DO UPDATE SET count = reputation_counts.count + excluded.count
                """, [.text(Self.array(list.map(\.ip))), .text(Self.array(list.map(\.provider))), .text(Self.array(list.map { Int64($0.bucket) })),
                      .text(Self.array(list.map(\.kind))), .text(Self.array(list.map { Int64($0.count) }))])
        }
    }

    /// The counts of buckets starting at `since` or later; older rows are deleted.
    /// - Throws: `PostgreSQLError`.
    public func reputationCounts(since: Int) throws -> [ReputationCount] {
        try pool.transaction { c in
            try c.run("DELETE FROM reputation_counts WHERE bucket < $1", [.int(Int64(since))])
            return try c.query("SELECT ip, provider, bucket, kind, count FROM reputation_counts ORDER BY ip, provider, bucket, kind").map {
                ReputationCount(ip: try $0.text(0), provider: try $0.text(1), bucket: Int(try $0.int(2)), kind: try $0.text(3), count: Int(try $0.int(4)))
            }
        }
    }

    /// Forgets every count of one pair (after a lift).
    /// - Throws: `PostgreSQLError`.
    public func deleteReputationCounts(ip: String, provider: String) throws {
        try pool.transaction { c in try c.run("DELETE FROM reputation_counts WHERE ip = $1 AND provider = $2", [.text(ip), .text(provider)]) }
    }

    /// Recipients leased per sending IP and provider label on UTC `day`: IP → provider → count.
    /// - Throws: `PostgreSQLError`.
    public func dailyProviderAttempts(day: Int) throws -> [String: [String: Int]] {
        try pool.withConnection { c in
            var out: [String: [String: Int]] = [:]
            for row in try c.query("SELECT ip, provider, attempts FROM ip_provider_daily WHERE day = $1", [.int(Int64(day))]) {
                out[try row.text(0), default: [:]][try row.text(1)] = Int(try row.int(2))
            }
            return out
        }
    }

    /// Adds to the per-provider counts of UTC `day` (IP → provider label → recipients).
    /// - Throws: `PostgreSQLError`.
    public func addDailyProviderAttempts(_ counts: [String: [String: Int]], day: Int) throws {
        guard !counts.isEmpty else { return }
        try pool.transaction { c in try Self.addDailyProviderAttempts(counts, day: day, on: c) }
    }

    /// `addDailyProviderAttempts` inside the caller's transaction on `c` (rows in key order, so
    /// that two writers lock them in the same order).
    static func addDailyProviderAttempts(_ counts: [String: [String: Int]], day: Int, on c: PostgreSQLConnection) throws {
        let rows = counts.flatMap { ip, m in m.map { (ip, $0.key, $0.value) } }.sorted { ($0.0, $0.1) < ($1.0, $1.1) }
        for (ip, p, n) in rows {
            try c.run("""
                INSERT INTO ip_provider_daily(ip, provider, day, attempts) VALUES($1, $2, $3, $4)
                ON CONFLICT(ip, provider, day) DO UPDATE SET attempts = ip_provider_daily.attempts + excluded.attempts
                """, [.text(ip), .text(p), .int(Int64(day)), .int(Int64(n))])
        }
    }
}
