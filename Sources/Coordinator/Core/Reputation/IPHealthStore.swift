import Foundation

/// The stored history of each sending IP's health (issue 18): blocklist listings and
/// delistings and FCrDNS verdict changes, so that `hato-coordinator ips` shows them after a
/// restart and a change of leader. Table `ip_health_history` on both stores (PostgreSQL
/// migration 7), copied by `store migrate`.
///
/// Retention is bounded: rows older than `IPHealthHistory.retention` and rows beyond the newest
/// `IPHealthHistory.maxRows` are deleted when a change is recorded.
public protocol IPHealthStore {
    /// Records one change and prunes what retention drops, in one transaction.
    /// - Parameter change: the change (`at` is its time; `zone` is the blocklist zone, or
    ///   `fcrdns` for an FCrDNS verdict change).
    /// - Throws: a store error.
    func recordIPHealthChange(_ change: BlocklistWatch.Change) throws
    /// Recorded changes, oldest first.
    /// - Parameters:
    ///   - ip: one sending IP, nil for all.
    ///   - limit: the most (newest) rows returned.
    /// - Throws: a store error.
    func ipHealthHistory(ip: String?, limit: Int) throws -> [BlocklistWatch.Change]
}

/// The retention of `ip_health_history`.
public enum IPHealthHistory {
    /// Rows older than this (seconds; 180 days) are dropped.
    public static let retention: TimeInterval = 180 * 86_400
    /// At most this many rows are kept (the oldest dropped first).
    public static let maxRows = 10_000

    /// The return codes as stored: comma-separated.
    static func codesText(_ codes: [String]) -> String { codes.joined(separator: ",") }
    /// The return codes from their stored text.
    static func codes(_ text: String) -> [String] { text.split(separator: ",").map(String.init) }

    /// The sending IPs whose newest stored FCrDNS change is `fcrdns_failed`.
    /// - Parameter history: stored changes, oldest first.
    public static func fcrdnsFailing(from history: [BlocklistWatch.Change]) -> Set<String> {
        var out: Set<String> = []
        for c in history where c.zone == FCrDNSWatch.historyZone {
            if c.event == "fcrdns_failed" { out.insert(c.ip) } else { out.remove(c.ip) }
        }
        return out
    }

    /// The current listings that a stored history implies: for each (IP, zone) whose newest
    /// change is `listed`, that listing (since that change). FCrDNS rows are skipped.
    /// - Parameter history: stored changes, oldest first.
    /// - Returns: sending IP → zone → listing, for `BlocklistWatch(listings:)`.
    public static func listings(from history: [BlocklistWatch.Change]) -> [String: [String: BlocklistWatch.Listing]] {
        var out: [String: [String: BlocklistWatch.Listing]] = [:]
        for c in history where c.zone != FCrDNSWatch.historyZone {
            if c.event == "listed" {
                if out[c.ip]?[c.zone] == nil {
                    out[c.ip, default: [:]][c.zone] = BlocklistWatch.Listing(zone: c.zone, codes: c.codes, reason: c.reason, since: c.at)
                }
            } else {
                out[c.ip]?[c.zone] = nil
                if out[c.ip]?.isEmpty == true { out[c.ip] = nil }
            }
        }
        return out
    }
}

extension SQLiteQueueStore: IPHealthStore {
    /// Creates `ip_health_history` when missing (called from `init`).
    /// - Throws: `SQLiteError`.
    func installIPHealthSchema() throws {
        try db.execute("""
            CREATE TABLE IF NOT EXISTS ip_health_history(
              ip TEXT NOT NULL, zone TEXT NOT NULL, at REAL NOT NULL, event TEXT NOT NULL, codes TEXT NOT NULL, reason TEXT,
              PRIMARY KEY(ip, zone, at, event));
            CREATE INDEX IF NOT EXISTS ip_health_history_at ON ip_health_history(at);
            """)
    }

    /// Records one change and prunes (see `IPHealthStore`), in one synced transaction.
    /// - Throws: `SQLiteError`.
    public func recordIPHealthChange(_ change: BlocklistWatch.Change) throws {
        try lock.withLock {
            try db.transaction {
                try db.prepare("INSERT OR REPLACE INTO ip_health_history(ip, zone, at, event, codes, reason) VALUES(?,?,?,?,?,?)")
                    .run([.text(change.ip), .text(change.zone), .double(change.at.timeIntervalSince1970), .text(change.event),
                          .text(IPHealthHistory.codesText(change.codes)), change.reason.map { .text($0) } ?? .null])
                try db.prepare("DELETE FROM ip_health_history WHERE at < ?")
                    .run([.double(change.at.timeIntervalSince1970 - IPHealthHistory.retention)])
                try db.prepare("""
                    DELETE FROM ip_health_history WHERE at < (SELECT at FROM ip_health_history ORDER BY at DESC LIMIT 1 OFFSET ?)
                    """).run([.int(Int64(IPHealthHistory.maxRows - 1))])
            }
        }
    }

    /// Recorded changes, oldest first (see `IPHealthStore`).
    /// - Throws: `SQLiteError`.
    public func ipHealthHistory(ip: String?, limit: Int) throws -> [BlocklistWatch.Change] {
        try lock.withLock {
            let sql = "SELECT at, ip, zone, event, codes, reason FROM ip_health_history"
                + (ip == nil ? "" : " WHERE ip = ?") + " ORDER BY at DESC, zone DESC LIMIT ?"
            let args: [SQLiteStatement.Value] = (ip.map { [.text($0)] } ?? []) + [.int(Int64(max(0, limit)))]
            return try db.prepare(sql).query(args) {
                BlocklistWatch.Change(at: Date(timeIntervalSince1970: $0.double(0)), ip: $0.text(1), zone: $0.text(2), event: $0.text(3),
                                      codes: IPHealthHistory.codes($0.text(4)), reason: $0.optionalText(5))
            }.reversed()
        }
    }
}

extension PostgreSQLQueueStore: IPHealthStore {
    /// Migration 7: the `ip_health_history` table.
    static let ipHealthSchemaSQL = """
        CREATE TABLE ip_health_history(
          ip text NOT NULL, zone text NOT NULL, at double precision NOT NULL, event text NOT NULL, codes text NOT NULL, reason text,
          PRIMARY KEY(ip, zone, at, event));
        CREATE INDEX ip_health_history_at ON ip_health_history(at);
        """

    /// Records one change and prunes (see `IPHealthStore`), in one transaction.
    /// - Throws: `PostgreSQLError`.
    public func recordIPHealthChange(_ change: BlocklistWatch.Change) throws {
        try pool.transaction { c in
            try c.run("""
                INSERT INTO ip_health_history(ip, zone, at, event, codes, reason) VALUES($1, $2, $3, $4, $5, $6)
                ON CONFLICT(ip, zone, at, event) DO UPDATE SET codes = excluded.codes, reason = excluded.reason
                """, [.text(change.ip), .text(change.zone), .double(change.at.timeIntervalSince1970), .text(change.event),
                      .text(IPHealthHistory.codesText(change.codes)), change.reason.map { .text($0) } ?? .null])
            try c.run("DELETE FROM ip_health_history WHERE at < $1", [.double(change.at.timeIntervalSince1970 - IPHealthHistory.retention)])
            try c.run("""
                DELETE FROM ip_health_history WHERE at < (SELECT at FROM ip_health_history ORDER BY at DESC LIMIT 1 OFFSET $1)
                """, [.int(Int64(IPHealthHistory.maxRows - 1))])
        }
    }

    /// Recorded changes, oldest first (see `IPHealthStore`).
    /// - Throws: `PostgreSQLError`.
    public func ipHealthHistory(ip: String?, limit: Int) throws -> [BlocklistWatch.Change] {
        try pool.withConnection { c in
            let sql = "SELECT at, ip, zone, event, codes, reason FROM ip_health_history"
                + (ip == nil ? "" : " WHERE ip = $2") + " ORDER BY at DESC, zone COLLATE \"C\" DESC LIMIT $1"
            let args: [PostgreSQLValue] = [.int(Int64(max(0, limit)))] + (ip.map { [.text($0)] } ?? [])
            return try c.query(sql, args).map {
                BlocklistWatch.Change(at: Date(timeIntervalSince1970: try $0.double(0)), ip: try $0.text(1), zone: try $0.text(2),
                                      event: try $0.text(3), codes: IPHealthHistory.codes(try $0.text(4)), reason: try $0.optionalText(5))
            }.reversed()
        }
    }
}
