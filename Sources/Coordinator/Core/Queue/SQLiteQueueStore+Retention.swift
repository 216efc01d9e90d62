import Foundation
import HatoSupport

// Finished messages leave the queue after `coordinator.message_retention` (QueueStore's
// `deleteFinishedMessages`). Without it every message and recipient row stayed forever (only
// the content was purged): the file, its indexes and every full count grew with all the mail
// ever sent.
//
// No index serves the search: an index of finished messages would cost a b-tree write in every
// result commit. Messages are read in rowid order instead — the order they were queued in, so
// received_at grows along it — from a cursor kept between calls: a pass stops at the first
// message received after the cut-off, and skips old ones still open (held mail, say) without
// reading them again until the scan has reached the recent end and starts over. A message
// stamped out of order (queued while the clock was ahead) is not taken for the recent end: one
// stamped in the future is passed over like an open one, and so is a recent one followed in
// its batch by older ones — or every pass would stop there until its date plus the retention
// and nothing queued after it would leave meanwhile. (A run of them longer than a batch is
// the recent end until then: mail queued after a long stretch of a fast clock leaves that
// much later.)
extension SQLiteQueueStore {
    /// Message rows read per transaction while looking for finished messages.
    static let retentionScanBatch = 500
    /// Recipient rows deleted per transaction at most (then the lock is let go): a batch of
    /// bulk messages with thousands of recipients each must not hold the queue for long.
    static let retentionRecipientsPerTransaction = 5000

    /// Deletes finished messages received before `receivedBefore` with their recipient rows
    /// (see `QueueStore.deleteFinishedMessages`): a message whose recipients are all final,
    /// whose content is purged (so no DSN or spooled body is still due) and about which no event
    /// waits to be reported and no DSN entry is pending. Each transaction reads at most
    /// `retentionScanBatch` messages and deletes at most about `retentionRecipientsPerTransaction`
    /// recipients, without an fsync (a delete lost in a crash is done again by the next pass);
    /// the queue's lock is let go between transactions, and after each one that deleted
    /// something this thread pauses as long as it took (at most 50 ms), so that a backlog takes
    /// at most half of the lock's time. Forty transactions per call at most.
    /// - Parameters:
    ///   - receivedBefore: the retention cut-off.
    ///   - now: the current time: a message received after it, or a recent one followed by
    ///     older ones, is passed over, not taken for the recent end of the queue.
    ///   - limit: the most messages deleted in this call.
    /// - Returns: how many messages were deleted.
    /// - Throws: `SQLiteError`; what earlier transactions of the call deleted stays deleted.
    @discardableResult
    public func deleteFinishedMessages(receivedBefore: Date, now: Date, limit: Int) throws -> Int {
        let cutoff = receivedBefore.timeIntervalSince1970
        let present = now.timeIntervalSince1970
        var deleted = 0
        var rounds = 0
        while deleted < limit && rounds < 40 {
            rounds += 1
            let began = ContinuousClock.now
            let (count, more) = try lock.withLock { () throws -> (Int, Bool) in
                let reporting = try hasEventTable()
                let settled = reporting
                    ? """
                      AND NOT EXISTS(SELECT 1 FROM recipient_events e WHERE e.message_id = m.id)
                      AND NOT EXISTS(SELECT 1 FROM dsn_pending d WHERE d.message_id = m.id)
                      """
                    : ""
                var cursor = retentionCursor.withLock { $0 }
                var reachedEnd = false, stopped = false
                var removed = 0, recipientRows = 0
                try db.transaction(durability: .processCrashSafe) {
                    let rows = try db.prepare("""
                        SELECT m.rowid, m.id, m.received_at,
                               (m.open_recipients <= 0 AND m.body IS NULL AND m.body_segment IS NULL \(settled))
                        FROM messages m WHERE m.rowid > ? ORDER BY m.rowid LIMIT ?
                        """).query([.int(cursor), .int(Int64(Self.retentionScanBatch))]) {
                            (rowid: $0.int(0), id: $0.text(1), receivedAt: $0.double(2), finished: $0.int(3) != 0)
                        }
                    reachedEnd = rows.count < Self.retentionScanBatch
                    // Whether this batch ends among recent (or future) rows: then a recent row is
                    // the recent end; otherwise it is an island among older rows.
                    let endsRecent = (rows.last?.receivedAt ?? 0) >= cutoff
                    for row in rows {
                        if row.receivedAt >= cutoff {
                            if row.receivedAt <= present && endsRecent { reachedEnd = true; break }
                            cursor = row.rowid  // stamped out of order: passed over
                            continue
                        }
                        if row.finished {
                            if reporting {
                                // The delay-warning marks of its recipients (one per warned recipient).
                                try db.prepare("DELETE FROM dsn_delay_handled WHERE recipient_id IN (SELECT id FROM recipients WHERE message_id=?)")
                                    .run([.text(row.id)])
                            }
                            try db.prepare("DELETE FROM recipients WHERE message_id=?").run([.text(row.id)])
                            recipientRows += db.changes
                            try db.prepare("DELETE FROM messages WHERE id=? AND open_recipients<=0").run([.text(row.id)])
                            removed += db.changes
                        }
                        cursor = row.rowid
                        if deleted + removed >= limit || recipientRows >= Self.retentionRecipientsPerTransaction { stopped = true; break }
                    }
                }
                // At the recent end (or past the last row): the next scan starts over, to look
                // again at old messages that were still open.
                retentionCursor.withLock { $0 = reachedEnd && !stopped ? 0 : cursor }
                return (removed, stopped || !reachedEnd)
            }
            deleted += count
            if !more || deleted >= limit { break }
            if count > 0 {
                // Writers waiting for the lock (a fair share: NSLock is not fair).
                Thread.sleep(forTimeInterval: min(0.05, (ContinuousClock.now - began).inSeconds))
            }
        }
        return deleted
    }
}
