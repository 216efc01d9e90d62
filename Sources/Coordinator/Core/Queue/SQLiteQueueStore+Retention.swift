import Foundation

// Finished messages leave the queue after `coordinator.message_retention` (QueueStore's
// `deleteFinishedMessages`). Without it every message and recipient row stayed forever (only
// the content was purged): the file, its indexes and every full count (`countsByState`, run by
// each metrics scrape under the queue's lock) grew with all the mail ever sent.
//
// No index serves the search: an index of finished messages would cost a b-tree write in every
// result commit. Messages are read in rowid order instead — the order they were queued in, so
// received_at grows along it — from a cursor kept between calls: a pass stops at the first
// message received after the cut-off, and skips old ones still open (held mail, say) without
// reading them again until the scan has reached the recent end and starts over.
extension SQLiteQueueStore {
    /// Rows read per statement while looking for finished messages.
    static let retentionScanBatch = 500

    @discardableResult
    public func deleteFinishedMessages(receivedBefore: Date, limit: Int) throws -> Int {
        let cutoff = receivedBefore.timeIntervalSince1970
        var deleted = 0
        // At most this many statements per call (each reads `retentionScanBatch` rows), however
        // many old messages are still open.
        var rounds = 0
        while deleted < limit && rounds < 40 {
            rounds += 1
            let (count, more) = try lock.withLock { () throws -> (Int, Bool) in
                let events = try hasEventTable()
                let settled = events
                    ? """
                      AND NOT EXISTS(SELECT 1 FROM recipient_events e WHERE e.message_id = m.id)
                      AND NOT EXISTS(SELECT 1 FROM dsn_pending d WHERE d.message_id = m.id)
                      """
                    : ""
                let rows = try db.prepare("""
                    SELECT m.rowid, m.id, m.received_at,
                           (m.open_recipients <= 0 AND m.body IS NULL AND m.body_segment IS NULL \(settled))
                    FROM messages m WHERE m.rowid > ? ORDER BY m.rowid LIMIT ?
                    """).query([.int(retentionCursor.withLock { $0 }), .int(Int64(Self.retentionScanBatch))]) {
                        (rowid: $0.int(0), id: $0.text(1), receivedAt: $0.double(2), finished: $0.int(3) != 0)
                    }
                var doomed: [String] = []
                var cursor = retentionCursor.withLock { $0 }
                var reachedEnd = rows.count < Self.retentionScanBatch
                for row in rows {
                    if row.receivedAt >= cutoff { reachedEnd = true; break }
                    cursor = row.rowid
                    if row.finished {
                        doomed.append(row.id)
                        if deleted + doomed.count >= limit { break }
                    }
                }
                if !doomed.isEmpty {
                    try db.transaction(durability: .processCrashSafe) {
                        let recipients = try db.prepare("DELETE FROM recipients WHERE message_id=?")
                        let message = try db.prepare("DELETE FROM messages WHERE id=? AND open_recipients<=0")
                        for id in doomed {
                            try recipients.run([.text(id)])
                            try message.run([.text(id)])
                        }
                    }
                }
                // At the recent end (or past the last row): the next scan starts over, to look
                // again at old messages that were still open.
                retentionCursor.withLock { $0 = reachedEnd && deleted + doomed.count < limit ? 0 : cursor }
                return (doomed.count, !reachedEnd)
            }
            deleted += count
            if !more { break }
        }
        return deleted
    }
}
