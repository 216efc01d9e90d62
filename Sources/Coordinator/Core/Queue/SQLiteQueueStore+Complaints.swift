import Foundation
import HatoConfig

/// Complaints from feedback loops in the SQLite queue (`ComplaintStore`; table `complaints`).
extension SQLiteQueueStore: ComplaintStore {
    /// Creates the `complaints` table and its indexes when missing (called from `init`).
    /// - Throws: `SQLiteError`.
    func installComplaintSchema() throws {
        try db.execute("""
            CREATE TABLE IF NOT EXISTS complaints(
              id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, ip TEXT NOT NULL, provider TEXT NOT NULL,
              sender_domain TEXT NOT NULL, tenant TEXT, recipient TEXT, queue_id TEXT, recipient_id INTEGER,
              feedback_type TEXT NOT NULL, reporting_mta TEXT);
            CREATE INDEX IF NOT EXISTS complaints_at ON complaints(at);
            CREATE INDEX IF NOT EXISTS complaints_tenant ON complaints(tenant, at);
            CREATE UNIQUE INDEX IF NOT EXISTS complaints_once ON complaints(queue_id, recipient_id);
            """)
    }

    /// The message `queueID` and its recipients, nil when unknown.
    /// - Throws: `SQLiteError`.
    public func complaintOriginal(queueID: String) throws -> ComplaintOriginal? {
        try lock.withLock {
            guard let (reversePath, tenant) = try db.prepare("SELECT reverse_path, tenant FROM messages WHERE id=?")
                .query([.text(queueID)], { ($0.text(0), $0.optionalText(1)) }).first else { return nil }
            let rows = try db.prepare("SELECT id, address, ip, mx FROM recipients WHERE message_id=? ORDER BY id").query([.text(queueID)]) {
                ComplaintOriginal.Recipient(id: $0.int(0), address: $0.text(1), ip: $0.optionalText(2), mx: $0.optionalText(3))
            }
            return ComplaintOriginal(queueID: queueID, reversePath: reversePath, tenant: tenant, recipients: rows)
        }
    }

    /// Records a complaint, its suppression and its `complained` event in one synced transaction.
    /// The event carries the complaint's tenant itself: the message it was matched to may be
    /// deleted (`coordinator.message_retention`) between the match and this transaction, and the
    /// tenant's webhook and event log must still get it.
    /// - Throws: `SQLiteError`; nothing is written then.
    @discardableResult
    public func recordComplaint(_ c: Complaint, suppression: SuppressionEntry?) throws -> Bool {
        try lock.withLock {
            var recorded = false
            let events = try hasEventTable()
            try db.transaction {
                // One complaint per delivered recipient (the unique index; NULLs never collide).
                try db.prepare("""
                    INSERT OR IGNORE INTO complaints(at, ip, provider, sender_domain, tenant, recipient, queue_id, recipient_id, feedback_type, reporting_mta)
                    VALUES(?,?,?,?,?,?,?,?,?,?)
                    """).run([.double(c.at), .text(c.ip), .text(c.provider), .text(c.senderDomain), c.tenant.map { .text($0) } ?? .null,
                              c.recipient.map { .text($0) } ?? .null, c.queueID.map { .text($0) } ?? .null,
                              c.recipientID.map { .int($0) } ?? .null, .text(c.feedbackType), c.reportingMTA.map { .text($0) } ?? .null])
                guard db.changes > 0 else { return }
                recorded = true
                if let suppression { try insertSuppressions([suppression]) }
                if events {
                    // `text` carries the feedback type, `detail` the provider, `note` the reporting MTA,
                    // `mx` the MX that took the complained-about delivery (the leader's reputation signals).
                    try db.prepare("""
                        INSERT INTO recipient_events(kind, message_id, recipient_id, address, text, ip, at, detail, note, mx, tenant)
                        VALUES('complained',?,?,?,?,?,?,?,?,(SELECT mx FROM recipients WHERE id = ?),?)
                        """).run([.text(c.queueID ?? ""), c.recipientID.map { .int($0) } ?? .null, c.recipient.map { .text($0) } ?? .null,
                                  .text(c.feedbackType), c.ip.isEmpty ? .null : .text(c.ip), .double(c.at), .text(c.provider),
                                  c.reportingMTA.map { .text($0) } ?? .null, c.recipientID.map { .int($0) } ?? .null,
                                  c.tenant.map { .text($0) } ?? .null])
                }
            }
            return recorded
        }
    }

    /// Complaints per (sending IP, provider) since `since`.
    /// - Throws: `SQLiteError`.
    public func complaintCounts(since: Date) throws -> [ComplaintCount] {
        try lock.withLock {
            try db.prepare("SELECT ip, provider, COUNT(*) FROM complaints WHERE at >= ? GROUP BY ip, provider ORDER BY ip, provider")
                .query([.double(since.timeIntervalSince1970)]) { ComplaintCount(ip: $0.text(0), provider: $0.text(1), count: Int($0.int(2))) }
        }
    }

    /// Complaints per (sending IP, provider, sender domain, tenant) since `since`.
    /// - Throws: `SQLiteError`.
    public func complaintGroups(since: Date) throws -> [ComplaintGroup] {
        try lock.withLock {
            try db.prepare("""
                SELECT ip, provider, sender_domain, tenant, COUNT(*) FROM complaints WHERE at >= ?
                GROUP BY ip, provider, sender_domain, tenant ORDER BY ip, provider, sender_domain, tenant
                """).query([.double(since.timeIntervalSince1970)]) {
                ComplaintGroup(ip: $0.text(0), provider: $0.text(1), senderDomain: $0.text(2), tenant: $0.optionalText(3), count: Int($0.int(4)))
            }
        }
    }

    /// A tenant's complaint times since `since`, oldest first.
    /// - Throws: `SQLiteError`.
    public func complaintTimes(tenant: String, since: Date, limit: Int) throws -> [Double] {
        try lock.withLock {
            try db.prepare("SELECT at FROM complaints WHERE tenant = ? AND at >= ? ORDER BY at LIMIT ?")
                .query([.text(tenant), .double(since.timeIntervalSince1970), .int(Int64(max(0, limit)))]) { $0.double(0) }
        }
    }
}
