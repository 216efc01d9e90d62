import Foundation

// Finished messages leave the store after `coordinator.message_retention` (QueueStore's
// `deleteFinishedMessages`; the SQLite store's SQLiteQueueStore+Retention.swift says why).
// Here the `messages_received` index yields the oldest first; one statement deletes a batch
// and its recipient rows (the foreign key is checked at the statement's end, when both are gone).
extension PostgreSQLQueueStore {
    /// Messages deleted per statement.
    static let retentionBatch = 500

    @discardableResult
    public func deleteFinishedMessages(receivedBefore: Date, limit: Int) throws -> Int {
        var deleted = 0
        while deleted < limit {
            let batch = min(Self.retentionBatch, limit - deleted)
            let n = try pool.transaction { c in
                try c.run("""
                    WITH doomed AS (
                      SELECT m.id FROM messages m
                      WHERE m.received_at < $1 AND m.open_recipients <= 0 AND m.body IS NULL
                        AND NOT EXISTS(SELECT 1 FROM recipient_events e WHERE e.message_id = m.id)
                        AND NOT EXISTS(SELECT 1 FROM dsn_pending d WHERE d.message_id = m.id)
                      ORDER BY m.received_at LIMIT $2 FOR UPDATE SKIP LOCKED),
                    gone AS (DELETE FROM recipients r USING doomed WHERE r.message_id = doomed.id)
                    DELETE FROM messages m USING doomed WHERE m.id = doomed.id
                    """, [.double(receivedBefore.timeIntervalSince1970), .int(Int64(batch))])
            }
            deleted += n
            if n < batch { break }
        }
        return deleted
    }
}
