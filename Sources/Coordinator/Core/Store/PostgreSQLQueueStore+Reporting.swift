import Foundation
import HatoConfig
import HatoDelivery
import SMTPCore

// The event outbox, DSN and webhook outboxes on PostgreSQL (see SQLiteQueueStore+Reporting.swift
// for what each does). The event triggers are PL/pgSQL functions (created by the migrations)
// attached by `installReportingSchema`; they write `recipient_events` in the same transaction
// as the change. Queue control stamps the events of its changes with the operator through
// transaction-local settings (`hato.operator`, `hato.target`, `hato.note`) that the state
// trigger reads, instead of SQLite's update of the new rows after the fact.
extension PostgreSQLQueueStore {
    /// Attaches the event triggers (`received`, recipient state changes, keep-body); idempotent
    /// and safe when several coordinators start at once (under the migrations' advisory lock).
    /// Triggers already attached (found at open) are left alone: attaching locks the tables
    /// against every other session for a moment.
    /// - Throws: `PostgreSQLError`.
    public func installReportingSchema() throws {
        guard !reportingInstalled.snapshot else { return }
        try pool.transaction { c in
            try PostgreSQLMigrations.lock(c)
            try c.execute("""
                DROP TRIGGER IF EXISTS hato_event_received ON messages;
                CREATE TRIGGER hato_event_received AFTER INSERT ON messages FOR EACH ROW EXECUTE FUNCTION hato_event_received();
                DROP TRIGGER IF EXISTS hato_event_state ON recipients;
                CREATE TRIGGER hato_event_state AFTER UPDATE OF state ON recipients FOR EACH ROW
                  WHEN (NEW.state <> OLD.state AND (NEW.state IN ('delivered','deferred','failed','expired','suppressed','held','deleted')
                                                    OR (OLD.state = 'held' AND NEW.state = 'queued')))
                  EXECUTE FUNCTION hato_event_state();
                DROP TRIGGER IF EXISTS hato_keep_body ON messages;
                CREATE TRIGGER hato_keep_body BEFORE UPDATE OF body ON messages FOR EACH ROW
                  WHEN (NEW.body IS NULL AND OLD.body IS NOT NULL) EXECUTE FUNCTION hato_keep_body();
                """)
        }
        reportingInstalled.withLock { $0 = true }
    }

    /// The oldest unprocessed events with their message's fields, oldest first.
    /// - Throws: `PostgreSQLError`.
    public func pendingEvents(limit: Int) throws -> [QueueEvent] {
        try pool.withConnection { c in
            try c.query("""
                SELECT e.seq, e.kind, e.message_id, e.recipient_id, e.address, e.code, e.enhanced, e.text, e.node, e.ip, e.mx, e.attempts,
                       e.next_attempt_at, e.lease_granted_at, e.at, e.detail,
                       m.reverse_path, m.pool, m.received_at, m.size, m.helo, m.client_address,
                       (SELECT COUNT(*) FROM recipients WHERE message_id = e.message_id), r.dsn_notify, e.operator, e.note,
                       COALESCE(m.tenant, e.tenant)
                FROM recipient_events e LEFT JOIN messages m ON m.id = e.message_id LEFT JOIN recipients r ON r.id = e.recipient_id
                ORDER BY e.seq LIMIT $1
                """, [.int(Int64(limit))]).map { s in
                var e = QueueEvent(seq: try s.int(0), kind: DeliveryEventKind(rawValue: try s.text(1)) ?? .received, messageID: try s.text(2),
                           recipientID: try s.optionalInt(3), address: try s.optionalText(4), reply: try Self.reply(s, 5),
                           textWithoutReply: s.isNull(5) ? try s.optionalText(7) : nil, node: try s.optionalText(8), sendingIP: try s.optionalText(9),
                           mxHost: try s.optionalText(10), attempts: try s.optionalInt(11).map { Int($0) },
                           nextAttemptAt: try s.optionalDouble(12).map { Date(timeIntervalSince1970: $0) },
                           leaseGrantedAt: try s.optionalDouble(13).map { Date(timeIntervalSince1970: $0) },
                           at: Date(timeIntervalSince1970: try s.double(14)), detail: try s.optionalText(15),
                           reversePath: try s.optionalText(16) ?? "", pool: try s.optionalText(17) ?? "",
                           receivedAt: Date(timeIntervalSince1970: try s.optionalDouble(18) ?? 0),
                           size: Int(try s.optionalInt(19) ?? 0), heloName: try s.optionalText(20) ?? "", clientAddress: try s.optionalText(21) ?? "",
                           recipientCount: Int(try s.int(22)), notify: try s.optionalText(23), by: try s.optionalText(24), note: try s.optionalText(25))
                e.tenant = try s.optionalText(26)
                return e
            }
        }
    }

    /// Applies what processing a batch decided, in one transaction that does not wait for
    /// `synchronous_commit` (everything in it derives from the events it deletes, which were
    /// committed durably with the changes that made them). The processed events of tenants'
    /// messages are copied into the tenant event log before they are deleted.
    /// Fenced like lease state (`fenceLeaseWrites`): a coordinator that no longer leads cannot
    /// complete a batch the new leader also works on.
    /// - Throws: `LeadershipFenced`; `PostgreSQLError`; nothing is applied then (the events are processed again).
    public func completeEvents(_ d: EventDisposition, now: Date) throws {
        try pool.transaction(synchronousCommit: false) { c in
            try fence(c)
            let t = now.timeIntervalSince1970
            for w in d.webhooks {
                try c.run("INSERT INTO webhook_outbox(hook, event_id, body, created_at, next_attempt_at) VALUES($1, $2, $3, $4, $5)",
                          [.text(w.hook), .text(w.eventID), .bytea(w.body), .double(t), .double(t)])
            }
            for e in d.dsn {
                try c.run("""
                    INSERT INTO dsn_pending(recipient_id, message_id, action, status, diagnostic, diagnostic_type, remote_mta, at) VALUES($1, $2, $3, $4, $5, $6, $7, $8)
                    ON CONFLICT(recipient_id) DO UPDATE SET action = excluded.action, status = excluded.status, diagnostic = excluded.diagnostic,
                      diagnostic_type = excluded.diagnostic_type, remote_mta = excluded.remote_mta, at = excluded.at
                      WHERE dsn_pending.action = 'delayed'
                    """, [.int(e.recipientID), .text(e.messageID), .text(e.action.rawValue), .text(e.status.description), e.diagnostic.map { .text($0) } ?? .null,
                          .text(e.diagnosticType), e.remoteMTA.map { .text($0) } ?? .null, .double(e.at.timeIntervalSince1970)])
            }
            try Self.insertSuppressions(d.suppressions, on: c)
            if !d.delayHandled.isEmpty {
                try c.run("""
                    INSERT INTO dsn_delay_handled(recipient_id, at) SELECT u.id, $2 FROM unnest($1::bigint[]) AS u(id) ON CONFLICT(recipient_id) DO NOTHING
                    """, [.text(Self.array(d.delayHandled)), .double(t)])
            }
            if !d.processed.isEmpty {
                // The events API keeps tenants' events after the outbox forgets them.
                try Self.copyTenantEvents(d.processed, on: c)
                let messages = Set(try c.query("DELETE FROM recipient_events WHERE seq = ANY($1::bigint[]) RETURNING message_id",
                                               [.text(Self.array(d.processed))]).map { try $0.text(0) })
                try Self.purgeBodies(messages.filter { !$0.isEmpty }.sorted(), on: c)
            }
        }
    }

    /// Messages whose pending DSN entries are ready (see `SQLiteQueueStore.readyDSNs`).
    /// - Throws: `PostgreSQLError`.
    public func readyDSNs(now: Date, hold: TimeInterval, limit: Int) throws -> [DSNSource] {
        try pool.withConnection { c in
            let ids = try c.query("""
                SELECT p.message_id, MIN(p.at) FROM dsn_pending p GROUP BY p.message_id
                HAVING MIN(p.at) <= $1 OR NOT EXISTS(SELECT 1 FROM recipients r WHERE r.message_id = p.message_id AND r.state IN ('queued','leased')
                                                     AND r.attempts = 0 AND NOT EXISTS(SELECT 1 FROM dsn_pending q WHERE q.recipient_id = r.id)
                                                     AND NOT EXISTS(SELECT 1 FROM dsn_delay_handled d WHERE d.recipient_id = r.id))
                ORDER BY MIN(p.at), p.message_id COLLATE "C" LIMIT $2
                """, [.double(now.timeIntervalSince1970 - hold), .int(Int64(limit))]).map { try $0.text(0) }
            return try ids.compactMap { id -> DSNSource? in
                guard var src = try c.query("SELECT reverse_path, received_at, helo, dsn_ret, dsn_envid, body FROM messages WHERE id = $1",
                                            [.text(id)], binaryResults: true).first.map({ s in
                    DSNSource(messageID: id, reversePath: try s.text(0), receivedAt: Date(timeIntervalSince1970: try s.double(1)), heloName: try s.text(2),
                              ret: try s.optionalText(3), envelopeID: try s.optionalText(4), content: try s.optionalBytea(5), entries: [])
                }) else { return nil }
                src.entries = try c.query("""
                    SELECT p.recipient_id, p.action, p.status, p.diagnostic, p.diagnostic_type, p.remote_mta, p.at, r.address, r.dsn_orcpt
                    FROM dsn_pending p JOIN recipients r ON r.id = p.recipient_id WHERE p.message_id = $1 ORDER BY p.recipient_id
                    """, [.text(id)]).map { s in
                    (PendingDSNEntry(recipientID: try s.int(0), messageID: id, action: DeliveryStatusNotification.Action(rawValue: try s.text(1)) ?? .failed,
                                     status: EnhancedStatusCode(try s.text(2)) ?? EnhancedStatusCode(.permanentFailure, 0, 0), diagnostic: try s.optionalText(3), diagnosticType: try s.text(4), remoteMTA: try s.optionalText(5),
                                     at: Date(timeIntervalSince1970: try s.double(6))),
                     try s.text(7), try s.optionalText(8))
                }
                return src
            }
        }
    }

    /// Queues a DSN (or drops entries that need none) for one message, in one transaction.
    /// Fenced like lease state: a coordinator that no longer leads sends no second DSN.
    /// - Throws: `LeadershipFenced`; `PostgreSQLError`; nothing is written then.
    public func commitDSN(originalID: String, recipientIDs: [Int64], dsn: NewMessage?, now: Date) throws {
        let scope = suppressAtEnqueue.snapshot
        try pool.transaction { c in
            try fence(c)
            if let dsn {
                try Self.insert([dsn], suppression: scope, on: c)
                try c.run("INSERT INTO recipient_events(kind, message_id, at, detail) VALUES('dsn-sent', $1, $2, $3)",
                          [.text(originalID), .double(now.timeIntervalSince1970), .text(dsn.id)])
            }
            if recipientIDs.isEmpty {
                try c.run("DELETE FROM dsn_pending WHERE message_id = $1", [.text(originalID)])
            } else {
                try c.run("DELETE FROM dsn_pending WHERE recipient_id = ANY($1::bigint[])", [.text(Self.array(recipientIDs))])
            }
            try Self.purgeBodies([originalID], on: c)
        }
    }

    private static let delayCandidateColumns = """
        SELECT r.id, r.message_id, r.address, r.last_code, r.last_enhanced, r.last_text, r.node, r.ip, r.mx, r.attempts,
               r.next_attempt_at, r.updated_at, m.reverse_path, m.pool, m.received_at, m.size, m.helo, m.client_address, r.dsn_notify, r.state
        """
    private static let delayCandidateConditions = """
        r.state IN ('deferred','queued','held')
          AND NOT EXISTS(SELECT 1 FROM dsn_delay_handled d WHERE d.recipient_id = r.id)
          AND NOT EXISTS(SELECT 1 FROM dsn_pending p WHERE p.recipient_id = r.id)
        """

    private static func delayCandidate(_ s: PostgreSQLRow) throws -> QueueEvent {
        QueueEvent(seq: 0, kind: .deferred, messageID: try s.text(1), recipientID: try s.int(0), address: try s.text(2),
                   reply: try reply(s, 3), textWithoutReply: s.isNull(3) ? try s.optionalText(5) : nil, node: try s.optionalText(6),
                   sendingIP: try s.optionalText(7), mxHost: try s.optionalText(8), attempts: Int(try s.int(9)),
                   nextAttemptAt: try s.optionalDouble(10).map { Date(timeIntervalSince1970: $0) }, leaseGrantedAt: nil,
                   at: Date(timeIntervalSince1970: try s.double(11)), detail: nil, reversePath: try s.text(12), pool: try s.text(13),
                   receivedAt: Date(timeIntervalSince1970: try s.double(14)), size: Int(try s.int(15)), heloName: try s.text(16),
                   clientAddress: try s.text(17), recipientCount: 0, notify: try s.optionalText(18), state: try s.text(19))
    }

    /// Waiting recipients without a delay warning of messages received in `(after, upTo]`,
    /// oldest message first.
    /// - Throws: `PostgreSQLError`.
    public func delayWarningCandidates(receivedAfter after: Double, upTo: Double, limit: Int) throws -> [QueueEvent] {
        try pool.withConnection { c in
            try c.query("""
                \(Self.delayCandidateColumns)
                FROM messages m JOIN recipients r ON r.message_id = m.id
                WHERE m.received_at > $1 AND m.received_at <= $2 AND m.open_recipients > 0 AND \(Self.delayCandidateConditions)
                ORDER BY m.received_at, r.id LIMIT $3
                """, [.double(after), .double(upTo), .int(Int64(limit))]).map(Self.delayCandidate)
        }
    }

    /// The recipients among `ids` that are waiting, of a message received at or before `upTo`,
    /// with no delay warning handled yet.
    /// - Throws: `PostgreSQLError`.
    public func delayWarningCandidates(recipientIDs ids: [Int64], receivedUpTo upTo: Double) throws -> [QueueEvent] {
        guard !ids.isEmpty else { return [] }
        return try pool.withConnection { c in
            let found = try c.query("""
                \(Self.delayCandidateColumns)
                FROM recipients r JOIN messages m ON m.id = r.message_id
                WHERE r.id = ANY($1::bigint[]) AND m.received_at <= $2 AND \(Self.delayCandidateConditions)
                """, [.text(Self.array(ids)), .double(upTo)]).map(Self.delayCandidate)
            // In the order asked, as the SQLite store answers.
            let byID = Dictionary(found.map { ($0.recipientID ?? 0, $0) }, uniquingKeysWith: { a, _ in a })
            return ids.compactMap { byID[$0] }
        }
    }

    /// Events not yet processed (for metrics).
    /// - Throws: `PostgreSQLError`.
    public func pendingEventCount() throws -> Int {
        try pool.withConnection { c in Int(try c.query("SELECT COUNT(*) FROM recipient_events").first?.int(0) ?? 0) }
    }

    // MARK: Webhook outbox

    /// Due webhook deliveries of one hook, oldest first.
    /// - Throws: `PostgreSQLError`.
    public func dueWebhooks(hook: String, now: Date, limit: Int) throws -> [WebhookOutboxRow] {
        try pool.withConnection { c in
            try c.query("SELECT id, hook, event_id, body, created_at, attempts FROM webhook_outbox WHERE hook = $1 AND next_attempt_at <= $2 ORDER BY id LIMIT $3",
                        [.text(hook), .double(now.timeIntervalSince1970), .int(Int64(limit))], binaryResults: true).map {
                WebhookOutboxRow(id: try $0.int(0), hook: try $0.text(1), eventID: try $0.text(2), body: try $0.bytea(3),
                                 createdAt: Date(timeIntervalSince1970: try $0.double(4)), attempts: Int(try $0.int(5)))
            }
        }
    }

    /// The earliest next attempt of any webhook delivery, nil when the outbox is empty.
    /// - Throws: `PostgreSQLError`.
    public func nextWebhookDue() throws -> Date? {
        try pool.withConnection { c in
            try c.query("SELECT MIN(next_attempt_at) FROM webhook_outbox").first?.optionalDouble(0).map { Date(timeIntervalSince1970: $0) }
        }
    }

    /// Removes delivered (or abandoned) webhook rows.
    /// - Throws: `PostgreSQLError`.
    public func deleteWebhooks(_ ids: [Int64]) throws {
        guard !ids.isEmpty else { return }
        try pool.transaction { c in try c.run("DELETE FROM webhook_outbox WHERE id = ANY($1::bigint[])", [.text(Self.array(ids))]) }
    }

    /// Records a failed attempt for webhook rows: attempts + 1, next attempt at `next`.
    /// - Throws: `PostgreSQLError`.
    public func deferWebhooks(_ ids: [Int64], next: Date, error: String) throws {
        guard !ids.isEmpty else { return }
        try pool.transaction { c in
            try c.run("UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_at = $1, last_error = $2 WHERE id = ANY($3::bigint[])",
                      [.double(next.timeIntervalSince1970), .text(String(error.prefix(300))), .text(Self.array(ids))])
        }
    }

    /// Holds every row of `hook` due before `until` until then.
    /// - Throws: `PostgreSQLError`.
    public func holdWebhooks(hook: String, until: Date) throws {
        try pool.transaction { c in
            try c.run("UPDATE webhook_outbox SET next_attempt_at = $1 WHERE hook = $2 AND next_attempt_at < $1",
                      [.double(until.timeIntervalSince1970), .text(hook)])
        }
    }

    /// Deletes outbox rows of hooks no longer configured. - Returns: how many were dropped.
    /// - Throws: `PostgreSQLError`.
    @discardableResult
    public func dropWebhooks(notIn hooks: Set<String>) throws -> Int {
        try pool.transaction { c in
            try c.run("DELETE FROM webhook_outbox WHERE NOT (hook = ANY($1::text[]))", [.text(Self.array(hooks.sorted()))])
        }
    }

    /// Rows waiting in the webhook outbox.
    /// - Throws: `PostgreSQLError`.
    public func webhookOutboxCount() throws -> Int {
        try pool.withConnection { c in Int(try c.query("SELECT COUNT(*) FROM webhook_outbox").first?.int(0) ?? 0) }
    }
}
