import ClusterProtocol
import Foundation
import HatoConfig
import HatoSupport
import SMTPCore

/// The coordinator's durable state in a PostgreSQL database (`store: {kind: postgresql}`).
///
/// The same tables, values and rules as `SQLiteQueueStore`, so the same tests pass against
/// both: times are `double precision` seconds since 1970, recipient ids and event sequence
/// numbers are identity columns in insertion order, the reporting events are written by
/// triggers in the same transaction as the change that makes them.
///
/// Differences that follow from the database:
/// - Concurrency: a pool of `poolSize` connections instead of one connection behind one lock.
///   Every read-modify-write locks the rows it reads (`FOR UPDATE`) or re-checks the state it
///   expects in its `UPDATE`, so two transactions never apply a change twice; one that fails
///   with a serialization failure or a deadlock is tried again (`PostgreSQLPool.transaction`).
/// - Durability: every commit waits for `synchronous_commit` (the server's setting, on by
///   default), lease records included — there is no fsync-free lease commit, so `beginRun`
///   never has to hold leases after a crash. The event-processing commit (`completeEvents`)
///   sets `synchronous_commit = off` for itself, as the SQLite store skips its fsync.
/// - Schema: created and upgraded by versioned migrations at start (`Self.migrations`); the
///   reporting triggers are created by `installReportingSchema` and, unlike SQLite's TEMP
///   triggers, stay in the database.
/// - Leadership: the `leadership` row (`PostgreSQLLeadership`) holds the term; once a term
///   is set (`beginTerm`, or `fenceLeaseWrites` by an elected leader) every write of lease state
///   proves it in its transaction (`PostgreSQLLeadership.fence`) and `leases.term` records it.
public final class PostgreSQLQueueStore: QueueStore {
    /// The connections.
    let pool: PostgreSQLPool
    /// Concurrent `enqueue(_:)` calls share one transaction and one commit.
    private let committer: GroupCommitter<NewMessage>
    /// The scope of the suppression check at enqueue (`configureSuppressionAtEnqueue`), nil for none.
    let suppressAtEnqueue = Locked<SuppressionSettings.Scope?>(nil)
    /// Whether the reporting triggers are installed (checked at open, set by `installReportingSchema`).
    let reportingInstalled = Locked(false)
    /// The term that fences writes of lease state (`fenceLeaseWrites`), nil before any.
    let leaseTerm = Locked<Int64?>(nil)

    /// The database, with any password masked.
    public var location: String { pool.configuration.redactedURL }

    /// Group-commit transactions written so far (for tests and benchmarks).
    var batchesCommittedForTests: Int { committer.batchesCommitted }

    /// Connects, and brings the schema up to date (`Self.migrations`, under an advisory lock so
    /// that coordinators starting together apply each migration once).
    /// - Parameters:
    ///   - configuration: the server, credentials and limits.
    ///   - poolSize: the most connections open at once (at least 1).
    /// - Throws: `PostgreSQLError`: `.connectionFailed` when the server cannot be reached or
    ///   refuses the credentials (the message names the URL with the password masked), `.server`
    ///   when a migration fails.
    public init(configuration: PostgreSQLConfiguration, poolSize: Int) throws {
        let pool = PostgreSQLPool(configuration, size: poolSize)
        self.pool = pool
        let suppress = suppressAtEnqueue
        committer = GroupCommitter { batch in
            try pool.transaction { c in try PostgreSQLQueueStore.insert(batch, suppression: suppress.snapshot, on: c) }
        }
        try pool.withConnection { c in
            try Self.migrations.apply(on: c)
            let installed = try c.query("""
                SELECT 1 FROM pg_trigger t WHERE t.tgname = 'hato_event_state' AND t.tgrelid = 'recipients'::regclass
                """)
            reportingInstalled.withLock { $0 = !installed.isEmpty }
        }
    }

    // MARK: Lifecycle

    /// Starts a run: records it as not cleanly stopped and this host's boot id. Lease records
    /// are always committed durably here, so no lease is ever held back after a crash; an
    /// earlier hold (none is ever stored by this store) would still be honoured.
    /// - Returns: nil (or an earlier hold still in force).
    /// - Throws: `PostgreSQLError`.
    public func beginRun(bootID: String?, now: Date) throws -> Date? {
        try pool.transaction { c in
            let hold = try Self.runState("lease_hold_until", on: c).flatMap(Double.init) ?? 0
            try Self.setRunState("clean_stop", "0", on: c)
            if let bootID { try Self.setRunState("boot_id", bootID, on: c) }
            return hold > now.timeIntervalSince1970 ? Date(timeIntervalSince1970: hold) : nil
        }
    }

    /// Records the clean stop in one durable commit; afterwards the store takes no further
    /// work (later calls block until the process exits).
    /// - Throws: `PostgreSQLError` (the store stays usable then).
    public func endRun() throws {
        try pool.transaction { c in try Self.setRunState("clean_stop", "1", on: c) }
        pool.stop()
    }

    /// Starts a new term on the database's `leadership` row (migration 2): the term is
    /// incremented and the row names this coordinator; the store's identity is the row's
    /// `store_id`. One term sequence per database, the one `PostgreSQLLeadership` continues.
    /// - Returns: the stamp for the scheduler.
    /// - Throws: `PostgreSQLError`.
    public func beginTerm(coordinatorID: String) throws -> LeadershipStamp {
        let stamp = try pool.transaction { c in
            // Coordinators elected through this row (several, `coordinators:`) are not deposed by
            // a single one started with another file (a one-entry list, a file from before).
            if let r = try c.query("SELECT leader, term FROM leadership WHERE id = 1 AND incarnation IS NOT NULL AND expires_at > now() FOR UPDATE").first {
                throw PostgreSQLError.misuse("coordinator \(try r.optionalText(0) ?? "?") leads this store as one of several (term \(try r.int(1))): "
                                             + "this configuration names a single coordinator; list every coordinator under coordinators: and start this one with --id")
            }
            let row = try c.query("UPDATE leadership SET term = term + 1, leader = $1, incarnation = NULL WHERE id = 1 RETURNING term, store_id",
                                  [.text(coordinatorID)])
            guard let r = row.first else { throw PostgreSQLError.misuse("the leadership row is missing (migration 2)") }
            return LeadershipStamp(term: try r.int(0), storeID: try r.text(1), coordinatorID: coordinatorID)
        }
        fenceLeaseWrites(term: stamp.term)
        return stamp
    }

    public func fenceLeaseWrites(term: Int64) { leaseTerm.withLock { $0 = term } }

    /// In a transaction writing lease state: proves the fencing term is current (see
    /// `fenceLeaseWrites`), and returns it (nil when none is set).
    /// - Throws: `LeadershipFenced`; `PostgreSQLError`.
    @discardableResult
    func fence(_ c: PostgreSQLConnection) throws -> Int64? {
        guard let term = leaseTerm.snapshot else { return nil }
        try PostgreSQLLeadership.fence(c, term: term)
        return term
    }

    /// Nothing runs in the background for PostgreSQL (the server checkpoints by itself).
    public func startBackgroundWork() throws {}

    static func setRunState(_ key: String, _ value: String, on c: PostgreSQLConnection) throws {
        try c.run("INSERT INTO run_state(key, value) VALUES($1, $2) ON CONFLICT(key) DO UPDATE SET value = excluded.value", [.text(key), .text(value)])
    }

    static func runState(_ key: String, on c: PostgreSQLConnection) throws -> String? {
        try c.query("SELECT value FROM run_state WHERE key = $1", [.text(key)]).first.map { try $0.text(0) }
    }

    // MARK: Submission

    /// Writes a message and its recipients durably (group commit: concurrent callers share one
    /// transaction and one commit; nobody returns before their message is committed).
    /// - Throws: `PostgreSQLError`; nothing is written then.
    public func enqueue(_ m: NewMessage) throws {
        try committer.submit(m)
    }

    /// Writes several messages in one durable transaction.
    /// - Throws: `PostgreSQLError`; nothing is written then.
    public func enqueue(_ messages: [NewMessage]) throws {
        let scope = suppressAtEnqueue.snapshot
        try pool.transaction { c in try Self.insert(messages, suppression: scope, on: c) }
    }

    /// Inserts messages and their recipients (state `queued`, due at `receivedAt`) inside the
    /// caller's transaction; with a suppression scope, listed recipients become `suppressed`
    /// in the same transaction (as SQLite's enqueue trigger does).
    static func insert(_ messages: [NewMessage], suppression: SuppressionSettings.Scope?, on c: PostgreSQLConnection) throws {
        func optional(_ text: String?) -> PostgreSQLValue { text.map { .text($0) } ?? .null }
        for m in messages {
            let t = m.receivedAt.timeIntervalSince1970
            try c.run("""
                INSERT INTO messages(id, reverse_path, pool, size, received_at, helo, client_address, body, open_recipients, auth_user, dsn_ret, dsn_envid, tenant, priority)
                VALUES($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                """, [.text(m.id), .text(m.reversePath), .text(m.pool), .int(Int64(m.content.count)), .double(t), .text(m.heloName),
                      .text(m.clientAddress), .bytea(m.content), .int(Int64(m.recipients.count)), optional(m.authenticatedUser),
                      optional(m.dsnReturn?.rawValue), optional(m.envelopeID), optional(m.tenant), .text(m.priority.rawValue)])
            try recordIdempotency(of: m, on: c)
            guard !m.recipients.isEmpty else { continue }
            let parameters = m.recipients.indices.map { $0 < m.recipientParameters.count ? m.recipientParameters[$0] : RecipientParameters() }
            // One statement for every recipient, ids assigned in RCPT order.
            try c.run("""
                INSERT INTO recipients(message_id, address, domain, state, next_attempt_at, updated_at, dsn_notify, dsn_orcpt, pool, priority)
                SELECT $1, u.a, u.d, 'queued', $2, $2, u.n, u.o, $3, $8
                FROM unnest($4::text[], $5::text[], $6::text[], $7::text[]) WITH ORDINALITY AS u(a, d, n, o, i) ORDER BY u.i
                """, [.text(m.id), .double(t), .text(m.pool), .text(Self.array(m.recipients)), .text(Self.array(m.recipients.map(Queue.domain(of:)))),
                      .text(Self.array(parameters.map { $0.notify?.text })), .text(Self.array(parameters.map(\.originalRecipient))),
                      .text(m.priority.rawValue)])
            if let suppression {
                // The sender domain as SQLite's trigger computes it: the text after the last '@'.
                let scopeCondition = suppression == .senderDomain
                    ? "AND (s.scope = '' OR s.scope = lower(substring($2::text from '[^@]*$')))" : ""
                try c.run("""
                    WITH hit AS (
                      UPDATE recipients r SET state = 'suppressed', next_attempt_at = NULL, last_code = 550, last_enhanced = '5.1.1',
                        last_text = 'recipient address is on the suppression list'
                      WHERE r.message_id = $1 AND r.state = 'queued' AND EXISTS(SELECT 1 FROM suppressions s WHERE s.address = lower(r.address)
                        AND (s.expires_at IS NULL OR s.expires_at > r.updated_at) \(scopeCondition))
                      RETURNING 1)
                    UPDATE messages SET open_recipients = open_recipients - (SELECT count(*) FROM hit)
                    WHERE id = $1 AND EXISTS(SELECT 1 FROM hit)
                    """, suppression == .senderDomain ? [.text(m.id), .text(m.reversePath)] : [.text(m.id)])
            }
        }
    }

    /// The values of `last_code`, `last_enhanced`, `last_text` for a reply (as the SQLite store writes them).
    static func replyColumns(_ reply: DeliveryStatus) -> [PostgreSQLValue] {
        [.int(Int64(reply.code.rawValue)), reply.enhanced.map { .text($0.description) } ?? .null, .text(reply.text)]
    }

    /// The reply stored in three columns from `column` (code, enhanced, text), nil when the code is NULL.
    static func reply(_ s: PostgreSQLRow, _ column: Int) throws -> DeliveryStatus? {
        guard let code = try s.optionalInt(column) else { return nil }
        return DeliveryStatus(code: Int(code), enhanced: try s.optionalText(column + 1), text: try s.optionalText(column + 2) ?? "")
    }

    /// A PostgreSQL array literal (`{"a","b",NULL}`) of texts, for a `$n::text[]` parameter.
    static func array(_ values: [String?]) -> String {
        "{" + values.map { v in
            guard let v else { return "NULL" }
            return "\"" + v.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
        }.joined(separator: ",") + "}"
    }

    /// A PostgreSQL array literal of texts.
    static func array(_ values: [String]) -> String { array(values.map(Optional.some)) }

    /// A PostgreSQL array literal (`{1,2}`) of integers, for a `$n::bigint[]` parameter.
    static func array(_ values: [Int64]) -> String { "{" + values.map(String.init).joined(separator: ",") + "}" }

    // MARK: Scheduling

    /// Recipients in state queued/deferred whose next attempt is due: every due transactional
    /// one first, oldest first, then bulk ones, oldest first (issue 18).
    /// - Throws: `PostgreSQLError`.
    public func dueRecipients(pools: Set<String>, now: Date, limit: Int) throws -> [DueRecipient] {
        guard !pools.isEmpty, limit > 0 else { return [] }
        return try pool.withConnection { c in
            var out: [DueRecipient] = []
            // One range scan of the partial (priority, next_attempt_at) index per class.
            for priority in [MessagePriority.transactional, .bulk] {
                let wanted = limit - out.count
                guard wanted > 0 else { break }
                out += try c.query("""
                    SELECT r.id, r.message_id, r.address, r.domain, m.pool, m.reverse_path FROM recipients r
                    JOIN messages m ON m.id = r.message_id
                    WHERE r.state IN ('queued', 'deferred') AND r.priority = $4 AND r.next_attempt_at <= $1 AND m.pool = ANY($2::text[])
                    ORDER BY r.next_attempt_at, r.id LIMIT $3
                    """, [.double(now.timeIntervalSince1970), .text(Self.array(pools.sorted())), .int(Int64(wanted)), .text(priority.rawValue)]).map {
                    DueRecipient(id: try $0.int(0), messageID: try $0.text(1), address: try $0.text(2), domain: try $0.text(3),
                                 pool: try $0.text(4), reversePath: try $0.text(5), priority: priority)
                }
            }
            return out
        }
    }

    /// The earliest next-attempt time of any waiting recipient, if any.
    /// - Throws: `PostgreSQLError`.
    public func nextDueTime() throws -> Date? {
        try pool.withConnection { c in
            try c.query("SELECT MIN(next_attempt_at) FROM recipients WHERE state IN ('queued', 'deferred')").first?
                .optionalDouble(0).map { Date(timeIntervalSince1970: $0) }
        }
    }

    /// Attempts counted per IP on UTC `day`.
    /// - Throws: `PostgreSQLError`.
    public func dailyAttempts(day: Int) throws -> [String: Int] {
        try pool.withConnection { c in
            Dictionary(uniqueKeysWithValues: try c.query("SELECT ip, attempts FROM ip_daily WHERE day = $1", [.int(Int64(day))]).map {
                (try $0.text(0), Int(try $0.int(1)))
            })
        }
    }

    /// Adds attempts to IPs' counts for UTC `day`.
    /// - Throws: `PostgreSQLError`.
    public func addDailyAttempts(_ counts: [String: Int], day: Int) throws {
        guard !counts.isEmpty else { return }
        try pool.transaction { c in
            for (ip, n) in counts.sorted(by: { $0.key < $1.key }) { try Self.countAttempts(ip: ip, day: day, n: n, on: c) }
        }
    }

    private static func countAttempts(ip: String, day: Int, n: Int, on c: PostgreSQLConnection) throws {
        try c.run("""
            INSERT INTO ip_daily(ip, day, attempts) VALUES($1, $2, $3) ON CONFLICT(ip, day) DO UPDATE SET attempts = ip_daily.attempts + excluded.attempts
            """, [.text(ip), .int(Int64(day)), .int(Int64(n))])
    }

    /// Records leases and marks their recipients `leased`, in one durable transaction;
    /// recipients no longer waiting are left out, leases left empty are dropped.
    /// - Returns: the leases as granted.
    /// - Throws: `PostgreSQLError`.
    public func recordLeases(_ leases: [LeaseRecord], countAttemptsOnDay day: Int?, providerOfDomain: [String: String]) throws -> [LeaseRecord] {
        guard !leases.isEmpty else { return [] }
        // A recipient listed in two leases goes to the first (as one UPDATE per lease in order
        // would decide); then one UPDATE marks every recipient and one INSERT records every lease.
        var claimed = Set<Int64>()
        var rids: [Int64] = [], owners: [String] = [], nodes: [String] = [], ips: [String] = [], times: [String] = []
        for l in leases {
            for rid in l.recipientIDs where claimed.insert(rid).inserted {
                rids.append(rid); owners.append(l.id); nodes.append(l.node); ips.append(l.sendingIP)
                times.append(String(l.grantedAt.timeIntervalSince1970))
            }
        }
        return try pool.transaction { c in
            let term = try fence(c)
            var marked: [String: Set<Int64>] = [:]
            for r in try c.query("""
                UPDATE recipients r SET state = 'leased', lease_id = u.lease, node = u.node, ip = u.ip, updated_at = u.at
                FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::float8[]) AS u(id, lease, node, ip, at)
                WHERE r.id = u.id AND r.state IN ('queued', 'deferred') RETURNING r.id, r.lease_id
                """, [.text(Self.array(rids)), .text(Self.array(owners)), .text(Self.array(nodes)), .text(Self.array(ips)), .text(Self.array(times))]) {
                marked[try r.text(1), default: []].insert(try r.int(0))
            }
            var out: [LeaseRecord] = []
            for var l in leases {
                let kept = l.recipientIDs.filter { marked[l.id]?.remove($0) != nil }
                guard !kept.isEmpty else { continue }
                l.recipientIDs = kept
                out.append(l)
            }
            if !out.isEmpty {
                try c.run("""
                    INSERT INTO leases(id, node, instance, ip, message_id, domain, granted_at, expires_at, term)
                    SELECT *, $9::bigint FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::float8[], $8::float8[])
                    """, [.text(Self.array(out.map(\.id))), .text(Self.array(out.map(\.node))), .text(Self.array(out.map(\.instance))),
                          .text(Self.array(out.map(\.sendingIP))), .text(Self.array(out.map(\.messageID))), .text(Self.array(out.map(\.domain))),
                          .text(Self.array(out.map { String($0.grantedAt.timeIntervalSince1970) })),
                          .text(Self.array(out.map { String($0.expiresAt.timeIntervalSince1970) })), term.map { .int($0) } ?? .null])
            }
            if let day {
                var counts: [String: Int] = [:]
                for l in out { counts[l.sendingIP, default: 0] += l.recipientIDs.count }
                for (ip, n) in counts.sorted(by: { $0.key < $1.key }) { try Self.countAttempts(ip: ip, day: day, n: n, on: c) }
                try Self.addDailyProviderAttempts(Self.providerCounts(out, providerOfDomain: providerOfDomain), day: day, on: c)
            }
            return out
        }
    }

    /// The stored content of a message, nil if unknown or already purged.
    /// - Throws: `PostgreSQLError`.
    public func content(of messageID: String) throws -> [UInt8]? {
        try pool.withConnection { c in
            try c.query("SELECT body FROM messages WHERE id = $1", [.text(messageID)], binaryResults: true).first?.optionalBytea(0)
        }
    }

    /// Lowers the open-recipient counts of messages by the recipients that became final, and
    /// purges the content of those with none left (the keep-body trigger keeps it while events
    /// or DSN entries about the message remain).
    static func closeRecipients(_ closed: [String: Int], on c: PostgreSQLConnection) throws {
        for s in closingStatements(closed) { try c.run(s.sql, s.parameters) }
    }

    /// The statements of `closeRecipients` (none when nothing closed), for a pipeline.
    static func closingStatements(_ closed: [String: Int]) -> [(sql: String, parameters: [PostgreSQLValue])] {
        guard !closed.isEmpty else { return [] }
        let sorted = closed.sorted { $0.key < $1.key }
        return [("""
            UPDATE messages m SET open_recipients = m.open_recipients - u.n FROM unnest($1::text[], $2::bigint[]) AS u(id, n) WHERE m.id = u.id
            """, [.text(array(sorted.map(\.key))), .text(array(sorted.map { Int64($0.value) }))]),
                purgeStatement(sorted.map(\.key))]
    }

    /// Drops the content of messages with no open recipients left (the record stays for lookups).
    static func purgeBodies(_ ids: [String], on c: PostgreSQLConnection) throws {
        guard !ids.isEmpty else { return }
        let s = purgeStatement(ids)
        try c.run(s.sql, s.parameters)
    }

    /// The statement of `purgeBodies`.
    static func purgeStatement(_ ids: [String]) -> (sql: String, parameters: [PostgreSQLValue]) {
        ("UPDATE messages SET body = NULL WHERE id = ANY($1::text[]) AND open_recipients <= 0 AND body IS NOT NULL", [.text(array(ids.sorted()))])
    }

    /// Returns the recipients of leases past their expiry to `queued` and forgets those leases.
    /// - Returns: the expired leases' ids.
    /// - Throws: `PostgreSQLError`.
    @discardableResult
    public func requeueExpiredLeases(now: Date) throws -> [String] {
        try pool.transaction { c in
            try fence(c)
            let t = now.timeIntervalSince1970
            let ids = try c.query("SELECT id FROM leases WHERE expires_at <= $1 ORDER BY id FOR UPDATE", [.double(t)]).map { try $0.text(0) }
            try Self.requeue(ids, now: t, on: c)
            return ids
        }
    }

    /// Returns every lease of `node` held by an instance other than `instance` to the queue.
    /// - Returns: the number of leases requeued.
    /// - Throws: `PostgreSQLError`.
    @discardableResult
    public func requeueLeases(node: String, exceptInstance instance: String, now: Date) throws -> Int {
        try pool.transaction { c in
            try fence(c)
            let ids = try c.query("SELECT id FROM leases WHERE node = $1 AND instance <> $2 ORDER BY id FOR UPDATE", [.text(node), .text(instance)])
                .map { try $0.text(0) }
            try Self.requeue(ids, now: now.timeIntervalSince1970, on: c)
            return ids.count
        }
    }

    private static func requeue(_ leaseIDs: [String], now t: Double, on c: PostgreSQLConnection) throws {
        guard !leaseIDs.isEmpty else { return }
        let list: PostgreSQLValue = .text(array(leaseIDs))
        try c.run("UPDATE recipients SET state = 'queued', lease_id = NULL, updated_at = $1 WHERE lease_id = ANY($2::text[]) AND state = 'leased'",
                  [.double(t), list])
        try c.run("DELETE FROM leases WHERE id = ANY($1::text[])", [list])
    }

    /// Marks waiting recipients (`queued`, `deferred`, `held`) older than `maxAge` seconds
    /// `expired`; one never attempted says so in its last reply.
    /// - Returns: how many expired.
    /// - Throws: `PostgreSQLError`.
    @discardableResult
    public func expireOld(maxAge: TimeInterval, now: Date) throws -> Int {
        try pool.transaction { c in
            let cutoff = now.timeIntervalSince1970 - maxAge
            let ids = try c.query("""
                SELECT r.id FROM messages m JOIN recipients r ON r.message_id = m.id
                WHERE m.received_at <= $1 AND m.open_recipients > 0 AND r.state IN ('queued', 'deferred', 'held')
                """, [.double(cutoff)]).map { try $0.int(0) }
            guard !ids.isEmpty else { return 0 }
            var closed: [String: Int] = [:]
            for r in try c.query("""
                UPDATE recipients SET state = 'expired', next_attempt_at = NULL, updated_at = $1,
                  last_text = CASE WHEN state = 'held' THEN 'held by an operator; ' ELSE '' END
                              || COALESCE(last_text || ' ', CASE WHEN attempts = 0 THEN 'not yet attempted ' ELSE '' END)
                              || '(expired: maximum queue age reached)'
                WHERE id = ANY($2::bigint[]) AND state IN ('queued', 'deferred', 'held') RETURNING message_id
                """, [.double(now.timeIntervalSince1970), .text(Self.array(ids.sorted()))]) {
                closed[try r.text(0), default: 0] += 1
            }
            try Self.closeRecipients(closed, on: c)
            return closed.values.reduce(0, +)
        }
    }

    // MARK: Lookups

    /// Recipient counts by state (every state present, zero when none).
    /// - Throws: `PostgreSQLError`.
    public func countsByState() throws -> [RecipientState: Int] {
        try pool.withConnection { c in
            var out: [RecipientState: Int] = [:]
            for s in RecipientState.allCases { out[s] = 0 }
            for r in try c.query("SELECT state, COUNT(*) FROM recipients GROUP BY state") {
                if let st = RecipientState(rawValue: try r.text(0)) { out[st] = Int(try r.int(1)) }
            }
            return out
        }
    }

    /// Leases currently recorded, per node id.
    /// - Throws: `PostgreSQLError`.
    public func leasesPerNode() throws -> [String: Int] {
        try pool.withConnection { c in
            Dictionary(uniqueKeysWithValues: try c.query("SELECT node, COUNT(*) FROM leases GROUP BY node").map { (try $0.text(0), Int(try $0.int(1))) })
        }
    }

    /// Every recorded lease with its recipients.
    /// - Throws: `PostgreSQLError`.
    public func allLeases() throws -> [LeaseRecord] {
        try pool.withConnection { c in
            var leases = try c.query("SELECT id, node, instance, ip, message_id, domain, granted_at, expires_at FROM leases ORDER BY granted_at, id").map {
                LeaseRecord(id: try $0.text(0), node: try $0.text(1), instance: try $0.text(2), sendingIP: try $0.text(3), messageID: try $0.text(4),
                            domain: try $0.text(5), recipientIDs: [], grantedAt: Date(timeIntervalSince1970: try $0.double(6)),
                            expiresAt: Date(timeIntervalSince1970: try $0.double(7)))
            }
            var byLease: [String: [Int64]] = [:]
            for r in try c.query("SELECT lease_id, id FROM recipients WHERE lease_id IS NOT NULL ORDER BY id") {
                byLease[try r.text(0), default: []].append(try r.int(1))
            }
            for i in leases.indices { leases[i].recipientIDs = byLease[leases[i].id] ?? [] }
            return leases
        }
    }

    /// A message and its recipients, nil if unknown.
    /// - Throws: `PostgreSQLError`.
    public func message(id: String) throws -> MessageRecord? {
        try pool.withConnection { c in
            guard var m = try c.query("SELECT id, reverse_path, pool, size, received_at, client_address, tenant, priority FROM messages WHERE id = $1", [.text(id)]).first.map({
                MessageRecord(id: try $0.text(0), reversePath: try $0.text(1), pool: try $0.text(2), size: Int(try $0.int(3)),
                              receivedAt: try $0.double(4), clientAddress: try $0.text(5), recipients: [], tenant: try $0.optionalText(6),
                              priority: MessagePriority(parsing: try $0.text(7)))
            }) else { return nil }
            m.recipients = try c.query("""
                SELECT id, address, state, attempts, next_attempt_at, last_code, last_enhanced, last_text, node, ip, mx, updated_at
                FROM recipients WHERE message_id = $1 ORDER BY id
                """, [.text(id)]).map {
                RecipientRecord(id: try $0.int(0), address: try $0.text(1), state: RecipientState(rawValue: try $0.text(2)) ?? .queued,
                                attempts: Int(try $0.int(3)), nextAttemptAt: try $0.optionalDouble(4), lastReply: try Self.reply($0, 5),
                                lastTextWithoutReply: $0.isNull(5) ? try $0.optionalText(7) : nil, node: try $0.optionalText(8),
                                sendingIP: try $0.optionalText(9), mxHost: try $0.optionalText(10), updatedAt: try $0.double(11))
            }
            return m
        }
    }

    /// The most recently accepted message ids, newest first.
    /// - Throws: `PostgreSQLError`.
    public func recentMessageIDs(limit: Int) throws -> [String] {
        try pool.withConnection { c in
            try c.query("SELECT id FROM messages ORDER BY received_at DESC, id COLLATE \"C\" DESC LIMIT $1", [.int(Int64(limit))]).map { try $0.text(0) }
        }
    }

    /// The AUTH user and DSN parameters stored with a message, nil for an unknown id.
    /// - Throws: `PostgreSQLError`.
    public func submissionRecord(messageID: String) throws -> SubmissionRecord? {
        try pool.withConnection { c in
            guard var record = try c.query("SELECT auth_user, dsn_ret, dsn_envid FROM messages WHERE id = $1", [.text(messageID)]).first.map({
                SubmissionRecord(authenticatedUser: try $0.optionalText(0), dsnReturn: try $0.optionalText(1), envelopeID: try $0.optionalText(2), recipients: [])
            }) else { return nil }
            record.recipients = try c.query("SELECT address, dsn_notify, dsn_orcpt FROM recipients WHERE message_id = $1 ORDER BY id", [.text(messageID)]).map {
                SubmissionRecord.Recipient(address: try $0.text(0), notify: try $0.optionalText(1), originalRecipient: try $0.optionalText(2))
            }
            return record
        }
    }

    /// Message ids with a recipient whose address matches (case-insensitive), newest first.
    /// - Throws: `PostgreSQLError`.
    public func messages(forRecipient address: String, limit: Int) throws -> [String] {
        try pool.withConnection { c in
            try c.query("""
                SELECT message_id FROM recipients WHERE lower(address) = lower($1) GROUP BY message_id ORDER BY MAX(id) DESC LIMIT $2
                """, [.text(address), .int(Int64(limit))]).map { try $0.text(0) }
        }
    }
}
