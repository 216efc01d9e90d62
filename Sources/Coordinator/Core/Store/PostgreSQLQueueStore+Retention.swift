import Foundation

// Finished messages leave the store after `coordinator.message_retention` (QueueStore's
// `deleteFinishedMessages`; the SQLite store's SQLiteQueueStore+Retention.swift says why).
// Here the partial index `messages_finished` (migration 9) yields the oldest finished messages
// first and holds no open one: a pass reads only what it may delete, however many old messages
// are still deferred or held (a retention shorter than the retry schedule's last attempt, an
// operator's hold); the `messages_received` index it used before made every pass read all of
// those first. One statement deletes a batch with its recipient rows and their delay-warning
// marks (the foreign key is checked at the statement's end, when both are gone; every part
// sees the same snapshot).
extension PostgreSQLQueueStore {
    /// Messages deleted per statement.
    static let retentionBatch = 500

    /// Migration 9: the index of finished messages by arrival, the retention pass's (its
    /// `open_recipients <= 0` implies the predicate, so the planner can use it). An entry is
    /// added once per message, by the update that takes its last open recipient: that update
    /// changes `open_recipients`, already in another partial index's predicate, so it was never
    /// a HOT update. `body` stays out of the predicate: the purge of the content, a separate
    /// update, can stay a HOT one.
    ///
    /// Building it reads the whole `messages` table (the retention's worth of mail: tens of
    /// millions of rows on a busy relay) under a lock that holds queue writes back meanwhile,
    /// so the migration lifts the connection's statement timeout for itself (a build cut off at
    /// 30 s would fail every start the same way), and an operator may build it beforehand
    /// without blocking writes (`CREATE INDEX CONCURRENTLY IF NOT EXISTS …`, docs/postgresql.md):
    /// the migration then finds it.
    static let retentionIndexSQL = """
        SET LOCAL statement_timeout = 0;
        CREATE INDEX IF NOT EXISTS messages_finished ON messages(received_at) WHERE open_recipients <= 0;
        """

    /// The retention pass's statement: $1 the cut-off (seconds since 1970), $2 the batch size.
    static let retentionStatement = """
        WITH doomed AS (
          SELECT m.id FROM messages m
          WHERE m.received_at < $1 AND m.open_recipients <= 0 AND m.body IS NULL
            AND NOT EXISTS(SELECT 1 FROM recipient_events e WHERE e.message_id = m.id)
            AND NOT EXISTS(SELECT 1 FROM dsn_pending d WHERE d.message_id = m.id)
          ORDER BY m.received_at LIMIT $2 FOR UPDATE SKIP LOCKED),
        marks AS (DELETE FROM dsn_delay_handled h USING recipients r, doomed
                  WHERE h.recipient_id = r.id AND r.message_id = doomed.id),
        gone AS (DELETE FROM recipients r USING doomed WHERE r.message_id = doomed.id)
        DELETE FROM messages m USING doomed WHERE m.id = doomed.id
        """

    /// Deletes finished messages received before `receivedBefore` with their recipient rows
    /// (see `QueueStore.deleteFinishedMessages`): a message whose recipients are all final,
    /// whose content is purged, and about which no event waits to be reported and no DSN entry
    /// is pending. Rows another transaction holds are skipped (`SKIP LOCKED`): several
    /// coordinators never wait on each other here. `retentionBatch` messages per transaction.
    /// - Parameters:
    ///   - receivedBefore: the retention cut-off.
    ///   - now: the current time (unused: the search is by `received_at`, not in queue order).
    ///   - limit: the most messages deleted in this call.
    /// - Returns: how many messages were deleted.
    /// - Throws: `PostgreSQLError`; what earlier statements of the call deleted stays deleted.
    @discardableResult
    public func deleteFinishedMessages(receivedBefore: Date, now: Date, limit: Int) throws -> Int {
        var deleted = 0
        while deleted < limit {
            let batch = min(Self.retentionBatch, limit - deleted)
            let n = try pool.transaction { c in
                try c.run(Self.retentionStatement, [.double(receivedBefore.timeIntervalSince1970), .int(Int64(batch))])
            }
            deleted += n
            if n < batch { break }
        }
        return deleted
    }
}
