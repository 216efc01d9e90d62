import Foundation
import HatoConfig
import HatoDelivery
import HatoSupport
import SMTPCore

// The queue's event outbox: every state change that matters to the sender (received,
// delivered, deferred, failed, expired, suppressed) or to the operator (held, released,
// deleted) is recorded by SQLite triggers *in the same transaction* as the change itself, into
// `recipient_events`; queue control adds `flushed` events and events without a recipient or a
// message (paused, resumed, lifted), and stamps its events with the operator
// (QueueStore+Control.swift). The `DeliveryReporter`
// drains that table (delivery log, metrics, webhooks, DSNs, suppression). So a crash can
// never lose a bounce: either the failure and its event are both on disk, or neither is.
//
// The triggers are TEMP (per connection, created at every open by `installReportingSchema`),
// so they always match the running code; the tables they write are ordinary, durable tables.
// One more trigger keeps a message's content while events or DSNs about it are pending
// (the DSN returns its header), however `purgeBodies` is reached.

/// One recorded event joined with its message, as the reporter consumes it.
public struct QueueEvent: Sendable, Equatable {
    /// Monotonic sequence number (unique per queue database).
    public var seq: Int64
    /// What happened.
    public var kind: DeliveryEventKind
    /// The message's queue id.
    public var messageID: String
    /// The recipient row id (nil for `received` and `dsn-sent`).
    public var recipientID: Int64?
    /// The recipient's forward-path.
    public var address: String?
    /// The recipient's last reply (remote or locally generated), nil when it has none.
    public var reply: DeliveryStatus?
    /// The recipient's last text when it has no reply: what an expiry before any attempt
    /// recorded (nil when `reply` is set).
    public var textWithoutReply: String?
    /// The node that reported the outcome.
    public var node: String?
    /// The sending IP of the attempt.
    public var sendingIP: String?
    /// The MX host that answered.
    public var mxHost: String?
    /// Delivery attempts so far.
    public var attempts: Int?
    /// For deferrals: when the next attempt is due.
    public var nextAttemptAt: Date?
    /// When the lease of this attempt was granted (nil when unknown).
    public var leaseGrantedAt: Date?
    /// When the change happened (the coordinator's clock).
    public var at: Date
    /// Extra data: for `dsn-sent`, the DSN's queue id; for an operator's action, what it was
    /// applied to (`domain gmail.com`, `provider gmail`).
    public var detail: String?
    /// The message's reverse-path (`""` for `<>`).
    public var reversePath: String
    /// The message's pool.
    public var pool: String
    /// When the message was accepted.
    public var receivedAt: Date
    /// The message size in octets.
    public var size: Int
    /// The submitting client's EHLO name.
    public var heloName: String
    /// The submitting client's address.
    public var clientAddress: String
    /// For `received`: the number of recipients.
    public var recipientCount: Int
    /// The recipient's RFC 3461 NOTIFY parameter (`NEVER` or a comma list), nil when not given.
    public var notify: String?
    /// The operator whose action this was (queue control), nil for the queue's own events.
    public var by: String? = nil
    /// The operator's reason, if given.
    public var note: String? = nil
    /// The recipient's state when read (delay-warning candidates: `deferred`, `queued`, `held`).
    public var state: String? = nil
    /// The message's tenant (issue 16), nil for mail of no tenant.
    public var tenant: String? = nil
}

extension QueueEvent {
    /// The last reply as one line, `550 5.1.1 no such user` (or the text without a reply; `""`
    /// when there is neither): a DSN's `Diagnostic-Code`, a suppression's reason.
    public var diagnostic: String { reply?.description ?? textWithoutReply ?? "" }
}

/// A DSN entry waiting to be sent: one recipient of one message.
public struct PendingDSNEntry: Sendable, Equatable {
    /// The recipient row id.
    public var recipientID: Int64
    /// The original message's queue id.
    public var messageID: String
    /// RFC 3464 `Action`.
    public var action: DeliveryStatusNotification.Action
    /// RFC 3463 status, e.g. `5.1.1` (RFC 3464 §2.3.4: its class agrees with `action`).
    public var status: EnhancedStatusCode
    /// `Diagnostic-Code` without the type, e.g. `550 5.1.1 no such user`.
    public var diagnostic: String?
    /// `smtp` for a remote reply, `X-Hato` for a locally generated one.
    public var diagnosticType: String
    /// The MX host that answered, if any.
    public var remoteMTA: String?
    /// When the recipient's state changed.
    public var at: Date

    /// Creates an entry; see the properties.
    public init(recipientID: Int64, messageID: String, action: DeliveryStatusNotification.Action, status: EnhancedStatusCode, diagnostic: String?,
                diagnosticType: String = "smtp", remoteMTA: String?, at: Date) {
        self.recipientID = recipientID; self.messageID = messageID; self.action = action; self.status = status
        self.diagnostic = diagnostic; self.diagnosticType = diagnosticType; self.remoteMTA = remoteMTA; self.at = at
    }
}

/// Everything needed to build one message's DSN.
public struct DSNSource: Sendable {
    /// The original message's queue id.
    public var messageID: String
    /// Its reverse-path: the DSN's recipient.
    public var reversePath: String
    /// When it was accepted (`Arrival-Date`).
    public var receivedAt: Date
    /// The submitting client's EHLO name (`Received-From-MTA`).
    public var heloName: String
    /// RET (`FULL` or `HDRS`), nil when not given.
    public var ret: String?
    /// ENVID as received (xtext), nil when not given.
    public var envelopeID: String?
    /// The stored content (header + body), nil when already purged.
    public var content: [UInt8]?
    /// The pending entries with each recipient's address and ORCPT.
    public var entries: [(entry: PendingDSNEntry, address: String, orcpt: String?)]
}

/// What processing a batch of events decided; applied in one transaction by `completeEvents`.
public struct EventDisposition: Sendable {
    /// Events handled (deleted from the outbox table).
    public var processed: [Int64] = []
    /// Webhook deliveries to make: (hook URL, event id, JSON body of one event).
    public var webhooks: [(hook: String, eventID: String, body: [UInt8])] = []
    /// DSN entries to schedule (a later failure replaces an earlier delay entry).
    public var dsn: [PendingDSNEntry] = []
    /// Suppression entries to add (hard bounces).
    public var suppressions: [SuppressionEntry] = []
    /// Recipients whose delay warning is handled (sent or not wanted): never warned again.
    public var delayHandled: [Int64] = []
    /// An empty disposition.
    public init() {}
}

/// One webhook delivery due for sending.
public struct WebhookOutboxRow: Sendable, Equatable {
    /// The row id (delivery order).
    public var id: Int64
    /// The webhook's URL.
    public var hook: String
    /// The event's id.
    public var eventID: String
    /// The event's JSON.
    public var body: [UInt8]
    /// When the event was queued for the webhook.
    public var createdAt: Date
    /// Failed POST attempts so far.
    public var attempts: Int
}

extension SQLiteQueueStore {
    /// Creates the reporting tables (durable) and the event triggers (TEMP, this connection).
    /// Called by `ReportingService.init` before anything is queued; idempotent.
    /// - Throws: `SQLiteError`.
    public func installReportingSchema() throws {
        try lock.withLock {
            try db.execute("""
                CREATE TABLE IF NOT EXISTS recipient_events(
                  seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, message_id TEXT NOT NULL, recipient_id INTEGER,
                  address TEXT, code INTEGER, enhanced TEXT, text TEXT, node TEXT, ip TEXT, mx TEXT, attempts INTEGER,
                  next_attempt_at REAL, lease_granted_at REAL, at REAL NOT NULL, detail TEXT, operator TEXT, note TEXT, tenant TEXT);
                CREATE INDEX IF NOT EXISTS recipient_events_message ON recipient_events(message_id);
                CREATE TABLE IF NOT EXISTS dsn_pending(
                  recipient_id INTEGER PRIMARY KEY, message_id TEXT NOT NULL, action TEXT NOT NULL, status TEXT NOT NULL,
                  diagnostic TEXT, diagnostic_type TEXT NOT NULL DEFAULT 'smtp', remote_mta TEXT, at REAL NOT NULL);
                CREATE INDEX IF NOT EXISTS dsn_pending_message ON dsn_pending(message_id);
                CREATE TABLE IF NOT EXISTS dsn_delay_handled(recipient_id INTEGER PRIMARY KEY, at REAL NOT NULL);
                CREATE TABLE IF NOT EXISTS webhook_outbox(
                  id INTEGER PRIMARY KEY AUTOINCREMENT, hook TEXT NOT NULL, event_id TEXT NOT NULL, body BLOB NOT NULL,
                  created_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL, last_error TEXT);
                CREATE INDEX IF NOT EXISTS webhook_outbox_due ON webhook_outbox(hook, next_attempt_at);
                CREATE TABLE IF NOT EXISTS suppressions(
                  address TEXT NOT NULL, scope TEXT NOT NULL DEFAULT '', category TEXT, reason TEXT, source TEXT NOT NULL,
                  message_id TEXT, created_at REAL NOT NULL, expires_at REAL, PRIMARY KEY(address, scope));

                CREATE TEMP TRIGGER IF NOT EXISTS hato_event_received AFTER INSERT ON messages BEGIN
                  INSERT INTO recipient_events(kind, message_id, at) VALUES('received', NEW.id, NEW.received_at);
                END;
                CREATE TEMP TRIGGER IF NOT EXISTS hato_event_state AFTER UPDATE OF state ON recipients
                WHEN NEW.state <> OLD.state AND (NEW.state = 'delivered' OR NEW.state = 'deferred' OR NEW.state = 'failed'
                                                 OR NEW.state = 'expired' OR NEW.state = 'suppressed' OR NEW.state = 'held'
                                                 OR NEW.state = 'deleted' OR (OLD.state = 'held' AND NEW.state = 'queued')) BEGIN
                  INSERT INTO recipient_events(kind, message_id, recipient_id, address, code, enhanced, text, node, ip, mx, attempts,
                                               next_attempt_at, lease_granted_at, at)
                  VALUES(CASE WHEN OLD.state = 'held' AND NEW.state = 'queued' THEN 'released' ELSE NEW.state END, NEW.message_id, NEW.id, NEW.address, NEW.last_code, NEW.last_enhanced, NEW.last_text, NEW.node,
                         NEW.ip, NEW.mx, NEW.attempts, NEW.next_attempt_at,
                         (SELECT granted_at FROM leases WHERE id = OLD.lease_id), NEW.updated_at);
                END;
                CREATE TEMP TRIGGER IF NOT EXISTS hato_keep_body BEFORE UPDATE OF body, body_segment ON messages
                WHEN NEW.body IS NULL AND NEW.body_segment IS NULL AND (OLD.body IS NOT NULL OR OLD.body_segment IS NOT NULL)
                  AND (EXISTS(SELECT 1 FROM recipient_events WHERE message_id = OLD.id)
                       OR EXISTS(SELECT 1 FROM dsn_pending WHERE message_id = OLD.id)) BEGIN
                  SELECT RAISE(IGNORE);
                END;
                """)
            // Operator columns for queue files created before queue control; the event's own
            // tenant (a complaint's) for files created before it.
            let columns = try db.prepare("SELECT name FROM pragma_table_info('recipient_events')").query { $0.text(0) }
            for c in ["operator", "note", "tenant"] where !columns.contains(c) { try db.execute("ALTER TABLE recipient_events ADD COLUMN \(c) TEXT") }
        }
    }

    /// The oldest unprocessed events with their message's fields, oldest first (an operator's
    /// event about no message — a pause — has empty message fields).
    /// - Throws: `SQLiteError`.
    public func pendingEvents(limit: Int) throws -> [QueueEvent] {
        try lock.withLock {
            try db.prepare("""
                SELECT e.seq, e.kind, e.message_id, e.recipient_id, e.address, e.code, e.enhanced, e.text, e.node, e.ip, e.mx, e.attempts,
                       e.next_attempt_at, e.lease_granted_at, e.at, e.detail,
                       m.reverse_path, m.pool, m.received_at, m.size, m.helo, m.client_address,
                       (SELECT COUNT(*) FROM recipients WHERE message_id = e.message_id), r.\(Self.notifyColumn), e.operator, e.note,
                       COALESCE(m.tenant, e.tenant)
                FROM recipient_events e LEFT JOIN messages m ON m.id = e.message_id LEFT JOIN recipients r ON r.id = e.recipient_id
                ORDER BY e.seq LIMIT ?
                """).query([.int(Int64(limit))]) { s in
                var e = QueueEvent(seq: s.int(0), kind: DeliveryEventKind(rawValue: s.text(1)) ?? .received, messageID: s.text(2),
                           recipientID: s.isNull(3) ? nil : s.int(3), address: s.optionalText(4), reply: Self.reply(s, 5),
                           textWithoutReply: s.isNull(5) ? s.optionalText(7) : nil, node: s.optionalText(8), sendingIP: s.optionalText(9),
                           mxHost: s.optionalText(10), attempts: s.isNull(11) ? nil : Int(s.int(11)),
                           nextAttemptAt: s.isNull(12) ? nil : Date(timeIntervalSince1970: s.double(12)),
                           leaseGrantedAt: s.isNull(13) ? nil : Date(timeIntervalSince1970: s.double(13)),
                           at: Date(timeIntervalSince1970: s.double(14)), detail: s.optionalText(15),
                           reversePath: s.text(16), pool: s.text(17), receivedAt: Date(timeIntervalSince1970: s.double(18)),
                           size: Int(s.int(19)), heloName: s.text(20), clientAddress: s.text(21), recipientCount: Int(s.int(22)),
                           notify: s.optionalText(23), by: s.optionalText(24), note: s.optionalText(25))
                e.tenant = s.optionalText(26)
                return e
            }
        }
    }

    /// Applies what processing a batch decided, in one transaction: webhook outbox rows,
    /// DSN entries, suppressions; copies the processed events of tenants' messages into the
    /// tenant event log (`tenantEvents`); deletes the processed events; purges the content of
    /// messages that no longer need it.
    ///
    /// The commit does not wait for fsync: everything in it can be derived again from the
    /// events it deletes, which were committed with the state changes that made them (a node
    /// result's are durable before the node is acknowledged, `ResultWriter`). A power loss that
    /// undoes it, or the unacknowledged result before it, only makes the events be processed
    /// again — the node re-sends the result — (reporting is at-least-once), and the queue's
    /// lock is not held across an fsync here.
    /// - Throws: `SQLiteError`; nothing is applied then (the events are processed again).
    public func completeEvents(_ d: EventDisposition, now: Date) throws {
        try lock.withLock {
            try db.transaction(durability: .processCrashSafe) {
                let t = now.timeIntervalSince1970
                let hook = try db.prepare("INSERT INTO webhook_outbox(hook, event_id, body, created_at, next_attempt_at) VALUES(?,?,?,?,?)")
                for w in d.webhooks { try hook.run([.text(w.hook), .text(w.eventID), .blob(w.body), .double(t), .double(t)]) }
                let dsn = try db.prepare("""
                    INSERT INTO dsn_pending(recipient_id, message_id, action, status, diagnostic, diagnostic_type, remote_mta, at) VALUES(?,?,?,?,?,?,?,?)
                    ON CONFLICT(recipient_id) DO UPDATE SET action=excluded.action, status=excluded.status, diagnostic=excluded.diagnostic,
                      diagnostic_type=excluded.diagnostic_type, remote_mta=excluded.remote_mta, at=excluded.at
                      WHERE dsn_pending.action = 'delayed'
                    """)
                for e in d.dsn {
                    try dsn.run([.int(e.recipientID), .text(e.messageID), .text(e.action.rawValue), .text(e.status.description),
                                 e.diagnostic.map { .text($0) } ?? .null, .text(e.diagnosticType), e.remoteMTA.map { .text($0) } ?? .null,
                                 .double(e.at.timeIntervalSince1970)])
                }
                try insertSuppressions(d.suppressions)
                let handled = try db.prepare("INSERT OR IGNORE INTO dsn_delay_handled(recipient_id, at) VALUES(?,?)")
                for r in d.delayHandled { try handled.run([.int(r), .double(t)]) }
                // The events API keeps tenants' events after the outbox forgets them.
                try copyTenantEvents(d.processed)
                let messages = try deleteEvents(d.processed)
                try purgeIfDone(messages)
            }
        }
    }

    private func deleteEvents(_ seqs: [Int64]) throws -> Set<String> {
        let get = try db.prepare("SELECT message_id FROM recipient_events WHERE seq=?")
        let del = try db.prepare("DELETE FROM recipient_events WHERE seq=?")
        var messages = Set<String>()
        for s in seqs {
            if let m = try get.query([.int(s)], { $0.text(0) }).first { messages.insert(m) }
            try del.run([.int(s)])
        }
        return messages
    }

    /// Drops the content of finished messages (the `hato_keep_body` trigger keeps it while
    /// events or DSN entries about the message remain).
    private func purgeIfDone(_ ids: Set<String>) throws {
        let purge = try db.prepare("""
            UPDATE messages SET body=NULL, body_segment=NULL, body_offset=NULL
            WHERE id=? AND open_recipients<=0 AND (body IS NOT NULL OR body_segment IS NOT NULL)
            """)
        for id in ids { try purge.run([.text(id)]) }
    }

    /// Messages whose pending DSN entries are ready: none of their recipients is still waiting
    /// for its first result (queued or leased, never attempted, and not itself reported — a
    /// recipient that waits without an attempt gets a delay entry of its own), or the oldest
    /// entry is older than `hold`.
    /// - Returns: at most `limit` messages with everything needed to build their DSN.
    /// - Throws: `SQLiteError`.
    public func readyDSNs(now: Date, hold: TimeInterval, limit: Int) throws -> [DSNSource] {
        try lock.withLock {
            let ids = try db.prepare("""
                SELECT p.message_id, MIN(p.at) FROM dsn_pending p GROUP BY p.message_id
                HAVING MIN(p.at) <= ? OR NOT EXISTS(SELECT 1 FROM recipients r WHERE r.message_id = p.message_id AND r.state IN ('queued','leased')
                                                    AND r.attempts = 0 AND NOT EXISTS(SELECT 1 FROM dsn_pending q WHERE q.recipient_id = r.id)
                                                    AND NOT EXISTS(SELECT 1 FROM dsn_delay_handled d WHERE d.recipient_id = r.id))
                ORDER BY MIN(p.at) LIMIT ?
                """).query([.double(now.timeIntervalSince1970 - hold), .int(Int64(limit))]) { $0.text(0) }
            let msg = try db.prepare("SELECT reverse_path, received_at, helo, \(Self.retColumn), \(Self.envidColumn) FROM messages WHERE id=?")
            let entries = try db.prepare("""
                SELECT p.recipient_id, p.action, p.status, p.diagnostic, p.diagnostic_type, p.remote_mta, p.at, r.address, r.\(Self.orcptColumn)
                FROM dsn_pending p JOIN recipients r ON r.id = p.recipient_id WHERE p.message_id=? ORDER BY p.recipient_id
                """)
            return try ids.compactMap { id -> DSNSource? in
                guard var src = try msg.query([.text(id)], { s in
                    DSNSource(messageID: id, reversePath: s.text(0), receivedAt: Date(timeIntervalSince1970: s.double(1)), heloName: s.text(2),
                              ret: s.optionalText(3), envelopeID: s.optionalText(4), content: nil, entries: [])
                }).first else { return nil }
                // A spooled body gone from the spool leaves the DSN without the returned content
                // (as a purged one does); any other read error keeps this DSN for the next round.
                do { src.content = try bodyUnderLock(of: id) } catch is BodySpool.MissingBody {
                    src.content = nil
                } catch {
                    Logger(label: "coordinator.queue").warning("a DSN's returned content cannot be read; the DSN waits for the next round",
                                                               ["message": id, "error": "\(error)"])
                    return nil
                }
                src.entries = try entries.query([.text(id)]) { s in
                    (PendingDSNEntry(recipientID: s.int(0), messageID: id, action: DeliveryStatusNotification.Action(rawValue: s.text(1)) ?? .failed,
                                     status: EnhancedStatusCode(s.text(2)) ?? EnhancedStatusCode(.permanentFailure, 0, 0), diagnostic: s.optionalText(3), diagnosticType: s.text(4), remoteMTA: s.optionalText(5),
                                     at: Date(timeIntervalSince1970: s.double(6))),
                     s.text(7), s.optionalText(8))
                }
                return src
            }
        }
    }

    /// Queues a DSN (or drops entries that need none) for one message, in one transaction:
    /// inserts the DSN message (reverse-path `<>`, one recipient), deletes the message's
    /// pending entries, records a `dsn-sent` event, and purges the original's content when done.
    /// - Parameters:
    ///   - originalID: the message the DSN reports on.
    ///   - recipientIDs: the entries covered (empty: every entry of the message).
    ///   - dsn: the DSN to queue, or nil to only drop the entries.
    /// - Throws: `SQLiteError`; nothing is written then.
    public func commitDSN(originalID: String, recipientIDs: [Int64], dsn: NewMessage?, now: Date) throws {
        try lock.withLock {
            try db.transaction {
                if let dsn {
                    try insertLocked(dsn)
                    try db.prepare("INSERT INTO recipient_events(kind, message_id, at, detail) VALUES('dsn-sent', ?, ?, ?)")
                        .run([.text(originalID), .double(now.timeIntervalSince1970), .text(dsn.id)])
                }
                if recipientIDs.isEmpty {
                    // Nothing reportable (e.g. entries whose recipients are gone): drop the message's entries.
                    try db.prepare("DELETE FROM dsn_pending WHERE message_id=?").run([.text(originalID)])
                }
                let del = try db.prepare("DELETE FROM dsn_pending WHERE recipient_id=?")
                for r in recipientIDs { try del.run([.int(r)]) }
                try purgeIfDone([originalID])
            }
        }
    }

    /// Inserts a message and its recipients (state `queued`, due at `receivedAt`); the caller holds the lock in a transaction.
    private func insertLocked(_ m: NewMessage) throws {
        let t = m.receivedAt.timeIntervalSince1970
        try db.prepare("INSERT INTO messages(id, reverse_path, pool, size, received_at, helo, client_address, body, open_recipients) VALUES(?,?,?,?,?,?,?,?,?)")
            .run([.text(m.id), .text(m.reversePath), .text(m.pool), .int(Int64(m.content.count)), .double(t),
                  .text(m.heloName), .text(m.clientAddress), .blob(m.content), .int(Int64(m.recipients.count))])
        let insR = try db.prepare("INSERT INTO recipients(message_id, address, domain, state, next_attempt_at, updated_at, pool) VALUES(?,?,?,'queued',?,?,?)")
        for r in m.recipients { try insR.run([.text(m.id), .text(r), .text(Queue.domain(of: r)), .double(t), .double(t), .text(m.pool)]) }
    }

    private static let delayCandidateColumns = """
        SELECT r.id, r.message_id, r.address, r.last_code, r.last_enhanced, r.last_text, r.node, r.ip, r.mx, r.attempts,
               r.next_attempt_at, r.updated_at, m.reverse_path, m.pool, m.received_at, m.size, m.helo, m.client_address, r.\(notifyColumn),
               r.state
        """
    /// Waiting recipients not in a delivery (deferred; queued, including never attempted: paused,
    /// over a warm-up cap, suspended; held by an operator), not yet warned.
    private static let delayCandidateConditions = """
        r.state IN ('deferred','queued','held')
          AND NOT EXISTS(SELECT 1 FROM dsn_delay_handled d WHERE d.recipient_id = r.id)
          AND NOT EXISTS(SELECT 1 FROM dsn_pending p WHERE p.recipient_id = r.id)
        """

    /// The reply stored in three columns from `column` (code, enhanced, text), nil when the code is NULL.
    static func reply(_ s: SQLiteStatement, _ column: Int32) -> DeliveryStatus? {
        s.isNull(column) ? nil : DeliveryStatus(code: Int(s.int(column)), enhanced: s.optionalText(column + 1), text: s.optionalText(column + 2) ?? "")
    }

    private static func delayCandidate(_ s: SQLiteStatement) -> QueueEvent {
        QueueEvent(seq: 0, kind: .deferred, messageID: s.text(1), recipientID: s.int(0), address: s.text(2),
                   reply: reply(s, 3), textWithoutReply: s.isNull(3) ? s.optionalText(5) : nil, node: s.optionalText(6),
                   sendingIP: s.optionalText(7), mxHost: s.optionalText(8), attempts: Int(s.int(9)),
                   nextAttemptAt: s.isNull(10) ? nil : Date(timeIntervalSince1970: s.double(10)), leaseGrantedAt: nil,
                   at: Date(timeIntervalSince1970: s.double(11)), detail: nil, reversePath: s.text(12), pool: s.text(13),
                   receivedAt: Date(timeIntervalSince1970: s.double(14)), size: Int(s.int(15)), heloName: s.text(16),
                   clientAddress: s.text(17), recipientCount: 0, notify: s.optionalText(18), state: s.text(19))
    }

    /// Waiting recipients (deferred, queued, held) with no delay warning handled yet (for DELAY DSNs) of messages
    /// received in `(after, upTo]` (seconds since 1970), oldest message first, with their
    /// NOTIFY parameter and last reply. The range walks the `messages_open_age` index, so a
    /// scan that starts where the previous one ended costs only the newly aged messages.
    /// - Throws: `SQLiteError`.
    public func delayWarningCandidates(receivedAfter after: Double, upTo: Double, limit: Int) throws -> [QueueEvent] {
        try lock.withLock {
            try db.prepare("""
                \(Self.delayCandidateColumns)
                FROM messages m CROSS JOIN recipients r ON r.message_id = m.id
                WHERE m.received_at > ? AND m.received_at <= ? AND m.open_recipients > 0 AND \(Self.delayCandidateConditions)
                ORDER BY m.received_at LIMIT ?
                """).query([.double(after), .double(upTo), .int(Int64(limit))], Self.delayCandidate)
        }
    }

    /// The recipients among `ids` that are waiting (deferred, queued, held), of a message received
    /// at or before `upTo`, with no delay warning handled yet (a recipient that was deferred, held
    /// or released only after its message had aged past the delay-warning scan).
    /// - Throws: `SQLiteError`.
    public func delayWarningCandidates(recipientIDs ids: [Int64], receivedUpTo upTo: Double) throws -> [QueueEvent] {
        try lock.withLock {
            let stmt = try db.prepare("""
                \(Self.delayCandidateColumns)
                FROM recipients r JOIN messages m ON m.id = r.message_id
                WHERE r.id = ? AND m.received_at <= ? AND \(Self.delayCandidateConditions)
                """)
            return try ids.flatMap { try stmt.query([.int($0), .double(upTo)], Self.delayCandidate) }
        }
    }

    /// Events not yet processed (for metrics).
    public func pendingEventCount() throws -> Int {
        try lock.withLock { try db.prepare("SELECT COUNT(*) FROM recipient_events").query { Int($0.int(0)) }.first ?? 0 }
    }

    // MARK: Webhook outbox

    /// Due webhook deliveries of one hook, oldest first.
    /// - Throws: `SQLiteError`.
    public func dueWebhooks(hook: String, now: Date, limit: Int) throws -> [WebhookOutboxRow] {
        try lock.withLock {
            try db.prepare("SELECT id, hook, event_id, body, created_at, attempts FROM webhook_outbox WHERE hook=? AND next_attempt_at <= ? ORDER BY id LIMIT ?")
                .query([.text(hook), .double(now.timeIntervalSince1970), .int(Int64(limit))]) {
                    WebhookOutboxRow(id: $0.int(0), hook: $0.text(1), eventID: $0.text(2), body: $0.blob(3),
                                     createdAt: Date(timeIntervalSince1970: $0.double(4)), attempts: Int($0.int(5)))
                }
        }
    }

    /// The earliest next attempt of any webhook delivery, nil when the outbox is empty.
    public func nextWebhookDue() throws -> Date? {
        try lock.withLock {
            try db.prepare("SELECT MIN(next_attempt_at) FROM webhook_outbox").query { $0.isNull(0) ? nil : $0.double(0) }
                .first.flatMap { $0 }.map { Date(timeIntervalSince1970: $0) }
        }
    }

    /// Removes delivered (or abandoned) webhook rows.
    public func deleteWebhooks(_ ids: [Int64]) throws {
        try lock.withLock {
            try db.transaction {
                let del = try db.prepare("DELETE FROM webhook_outbox WHERE id=?")
                for id in ids { try del.run([.int(id)]) }
            }
        }
    }

    /// Records a failed attempt for webhook rows: attempts + 1, next attempt at `next`.
    public func deferWebhooks(_ ids: [Int64], next: Date, error: String) throws {
        try lock.withLock {
            try db.transaction {
                let upd = try db.prepare("UPDATE webhook_outbox SET attempts=attempts+1, next_attempt_at=?, last_error=? WHERE id=?")
                for id in ids { try upd.run([.double(next.timeIntervalSince1970), .text(String(error.prefix(300))), .int(id)]) }
            }
        }
    }

    /// Holds every row of `hook` due before `until` until then: a receiver that is down gets one
    /// attempt per back-off interval, not one per batch.
    /// - Throws: `SQLiteError`.
    public func holdWebhooks(hook: String, until: Date) throws {
        try lock.withLock {
            try db.prepare("UPDATE webhook_outbox SET next_attempt_at=? WHERE hook=? AND next_attempt_at < ?")
                .run([.double(until.timeIntervalSince1970), .text(hook), .double(until.timeIntervalSince1970)])
        }
    }

    /// Deletes outbox rows of hooks no longer configured.
    /// - Returns: how many were dropped.
    @discardableResult
    public func dropWebhooks(notIn hooks: Set<String>) throws -> Int {
        try lock.withLock {
            let known = try db.prepare("SELECT DISTINCT hook FROM webhook_outbox").query { $0.text(0) }
            var n = 0
            for h in known where !hooks.contains(h) {
                try db.prepare("DELETE FROM webhook_outbox WHERE hook=?").run([.text(h)])
                n += db.changes
            }
            return n
        }
    }

    /// Rows waiting in the webhook outbox.
    public func webhookOutboxCount() throws -> Int {
        try lock.withLock { try db.prepare("SELECT COUNT(*) FROM webhook_outbox").query { Int($0.int(0)) }.first ?? 0 }
    }

    // MARK: DSN parameter columns (created by QueueStore.init, filled by enqueue from the SMTP session)

    /// The `messages` column holding RET (RFC 3461 §4.3).
    static let retColumn = "dsn_ret"
    /// The `messages` column holding ENVID (RFC 3461 §4.4).
    static let envidColumn = "dsn_envid"
    /// The `recipients` column holding NOTIFY (RFC 3461 §4.1).
    static let notifyColumn = "dsn_notify"
    /// The `recipients` column holding ORCPT (RFC 3461 §4.2).
    static let orcptColumn = "dsn_orcpt"
}
