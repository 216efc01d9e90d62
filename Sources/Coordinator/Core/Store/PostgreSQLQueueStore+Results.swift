import ClusterProtocol
import Foundation
import HatoConfig
import HatoSupport
import SMTPCore

// Node results on PostgreSQL, with the rules of `SQLiteQueueStore.applyResult`. Each round trip
// to the server costs (SQLite's calls are in-process; on a busy host each one also waits for the
// server's process to be scheduled), and a lease stays in flight until its result is committed,
// so a batch of reports takes three whatever its size: one pipeline with the transaction's BEGIN
// that locks and reads the batch's leases and recipients; then, the outcomes decided here as the
// reports would be applied one after the other, one pipeline of every write — one `UPDATE` per
// outcome, the statements of applying the reports one by one in the same order (so the state
// trigger sees the same rows and writes the same events in the same order), one statement ending
// the batch's leases, two closing the messages; and the COMMIT.
extension PostgreSQLQueueStore {
    // MARK: Results

    /// Applies a node's report, idempotently, with the rules of `SQLiteQueueStore.applyResult`.
    /// - Throws: `PostgreSQLError`; nothing is applied then (the node re-sends).
    public func applyResult(_ result: ResultMessage, node: String, retry: RetryPolicy, now: Date) throws -> ResultApplication {
        try applyResults([(result, node)], retry: retry, now: now)[0]
    }

    /// Applies several reports in one durable transaction, with the outcome of applying them one
    /// after the other in order.
    /// - Returns: one `ResultApplication` per report, in order.
    /// - Throws: `PostgreSQLError`; nothing is applied then.
    public func applyResults(_ results: [(result: ResultMessage, node: String)], retry: RetryPolicy, now: Date) throws -> [ResultApplication] {
        guard !results.isEmpty else { return [] }
        return try pool.transaction { c in
            let plan = try Self.planResults(results, retry: retry, now: now, on: c)
            try c.queryPipelined(plan.writes + [(Self.endLeasesSQL, [.double(now.timeIntervalSince1970), .text(Self.array(plan.leasesToEnd.sorted()))])]
                                 + Self.closingStatements(plan.closed))
            return plan.applications
        }
    }

    /// One recipient as the batch sees it: read (and locked) at its start, then changed by each
    /// decision, so that a later report of the batch is judged on what the earlier ones left.
    private struct ResultRow {
        var state: RecipientState
        var leaseID: String?
        var attempts: Int
        let receivedAt: Double
        let messageID: String
    }

    /// What a batch does: the applications to return, the writes in order, the leases to end
    /// after them, and the recipients that became final per message.
    private struct ResultPlan {
        var applications: [ResultApplication] = []
        var writes: [(sql: String, parameters: [PostgreSQLValue])] = []
        var leasesToEnd: Set<String> = []
        var closed: [String: Int] = [:]
    }

    private static let setFinalSQL = """
        UPDATE recipients SET state = $1, lease_id = NULL, attempts = attempts + 1, next_attempt_at = NULL, last_code = $2,
          last_enhanced = $3, last_text = $4, node = $5, ip = $6, mx = $7, updated_at = $8 WHERE id = $9
        """
    private static let setDeferredSQL = """
        UPDATE recipients SET state = 'deferred', lease_id = NULL, attempts = $1, next_attempt_at = $2, last_code = $3,
          last_enhanced = $4, last_text = $5, node = $6, ip = $7, mx = $8, updated_at = $9 WHERE id = $10
        """
    /// Recipients of the leases that the reports did not mention go back to the queue, and the
    /// leases are forgotten (one statement).
    private static let endLeasesSQL = """
        WITH requeued AS (UPDATE recipients SET state = 'queued', lease_id = NULL, updated_at = $1 WHERE lease_id = ANY($2::text[]) AND state = 'leased')
        DELETE FROM leases WHERE id = ANY($2::text[])
        """

    /// Locks the batch's leases and recipients (leases first, each in id order, as the lease
    /// requeues do) and decides every outcome as the reports would be applied one by one.
    /// Writes nothing.
    private static func planResults(_ results: [(result: ResultMessage, node: String)], retry: RetryPolicy, now: Date,
                                    on c: PostgreSQLConnection) throws -> ResultPlan {
        var plan = ResultPlan()
        let t = now.timeIntervalSince1970
        // The lease rows are locked (two reports of one lease apply one after the other), then the
        // recipients: both reads in one round trip.
        let ids = Set(results.flatMap { $0.result.outcomes.map(\.recipientID) }).sorted()
        let read = try c.queryPipelined([
            ("SELECT id FROM leases WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE", [.text(array(Set(results.map(\.result.leaseID)).sorted()))]),
            ("""
             SELECT r.id, r.state, r.lease_id, r.attempts, m.received_at, r.message_id FROM recipients r JOIN messages m ON m.id = r.message_id
             WHERE r.id = ANY($1::bigint[]) ORDER BY r.id FOR UPDATE OF r
             """, [.text(array(ids))]),
        ])
        var knownLeases = Set(try read[0].map { try $0.text(0) })
        var rows: [Int64: ResultRow] = [:]
        // The recipients read, by the lease holding them (a lease is only ever cleared here).
        var heldBy: [String: [Int64]] = [:]
        for r in read[1] {
            guard let state = RecipientState(rawValue: try r.text(1)) else { continue }
            let id = try r.int(0)
            let row = ResultRow(state: state, leaseID: try r.optionalText(2), attempts: Int(try r.int(3)),
                                receivedAt: try r.double(4), messageID: try r.text(5))
            rows[id] = row
            if let lease = row.leaseID { heldBy[lease, default: []].append(id) }
        }
        // Mentions of each recipient in the reports not yet planned.
        var mentions: [Int64: Int] = [:]
        for (result, _) in results { for o in result.outcomes { mentions[o.recipientID, default: 0] += 1 } }
        for (result, node) in results {
            var app = ResultApplication()
            app.leaseKnown = knownLeases.contains(result.leaseID)
            for o in result.outcomes { mentions[o.recipientID, default: 0] -= 1 }
            for o in result.outcomes {
                guard var row = rows[o.recipientID] else { app.ignored += 1; continue }
                if row.state.isFinal { app.ignored += 1; continue }
                let common: [PostgreSQLValue] = replyColumns(o.reply)
                    + [.text(node), .text(result.sendingIP), result.mxHost.map { .text($0) } ?? .null, .double(t)]
                func setFinal(_ state: RecipientState) {
                    plan.writes.append((setFinalSQL, [.text(state.rawValue)] + common + [.int(o.recipientID)]))
                    plan.closed[row.messageID, default: 0] += 1
                    row.state = state
                    row.leaseID = nil
                    row.attempts += 1
                }
                switch o.status {
                case .delivered, .failed:
                    setFinal(o.status == .delivered ? .delivered : .failed)
                case .deferred:
                    let heldHere = row.leaseID == result.leaseID
                    let waiting = row.state == .queued || row.state == .deferred
                    guard heldHere || (waiting && row.leaseID == nil && app.leaseKnown) else { app.ignored += 1; continue }
                    let attempts = row.attempts + 1
                    switch retry.afterDeferral(attempts: attempts, receivedAt: Date(timeIntervalSince1970: row.receivedAt), now: now) {
                    case .retry(let at):
                        plan.writes.append((setDeferredSQL, [.int(Int64(attempts)), .double(at.timeIntervalSince1970)] + common + [.int(o.recipientID)]))
                        row.state = .deferred
                        row.leaseID = nil
                        row.attempts = attempts
                    case .expire:
                        setFinal(.expired)
                    }
                }
                rows[o.recipientID] = row
                app.applied += 1
            }
            // The lease ends: its recipients still leased go back to the queue, and it is forgotten.
            // Ended after the writes, for the whole batch at once, unless a later report mentions
            // one of those recipients: then here, so that its row changes as in the sequence.
            // (Nothing else of the batch can tell the difference: only a `leased` recipient has a
            // lease — queue control never touches one, every other change clears it — so no later
            // write meets a row still naming an ended lease, the one thing the state trigger reads.)
            var requeuedHere = false
            for id in heldBy.removeValue(forKey: result.leaseID) ?? [] {
                guard var row = rows[id], row.leaseID == result.leaseID, row.state == .leased else { continue }
                row.state = .queued
                row.leaseID = nil
                rows[id] = row
                if (mentions[id] ?? 0) > 0 { requeuedHere = true }
            }
            if requeuedHere {
                plan.writes.append((endLeasesSQL, [.double(t), .text(array([result.leaseID]))]))
            } else {
                plan.leasesToEnd.insert(result.leaseID)
            }
            knownLeases.remove(result.leaseID)
            plan.applications.append(app)
        }
        return plan
    }
}
