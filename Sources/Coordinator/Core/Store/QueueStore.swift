import ClusterProtocol
import Foundation
import HatoConfig
import HatoDelivery
import SMTPCore

/// The coordinator's durable state: messages and their content, recipients and their states,
/// leases, the IP owners and node admin state, warm-up counts, backoffs and pauses,
/// suppressions, the event outbox with DSN and webhook outboxes, queue control and run state.
///
/// Two implementations: `SQLiteQueueStore` (one file in `coordinator.data_dir`, the embedded
/// default) and `PostgreSQLQueueStore` (a PostgreSQL database through libpq, `store: {kind:
/// postgresql}`). Both keep the same promise: a write method returns only after its transaction
/// is committed durably (fsync'd / `synchronous_commit` on), except where a method's
/// documentation says otherwise; each method is one transaction (or a bounded series of them,
/// as documented). Times are stored as seconds since 1970 (`Double`) in both, so the same
/// values come back from either.
///
/// Every method blocks the calling thread on disk or network I/O: call it from a thread of
/// its own or a background loop, not from a Swift concurrency task that must not block.
/// Errors thrown are the implementation's (`SQLiteError`, `PostgreSQLError`); a thrown error
/// means the transaction did not commit.
public protocol QueueStore: AnyObject, Sendable, SchedulerQueue, TenantStore, OperatorStore, ComplaintStore, IPHealthStore {
    // MARK: Lifecycle

    /// Starts a run (call once, before the first lease); see `SQLiteQueueStore.beginRun`.
    /// - Parameters:
    ///   - bootID: this host's boot id (`Queue.currentBootID()`); nil keeps every lease commit synced.
    ///   - now: the current time.
    /// - Returns: until when no new lease may be granted, or nil.
    /// - Throws: a store error.
    func beginRun(bootID: String?, now: Date) throws -> Date?
    /// Ends the run cleanly with one durable commit; the store takes no further writes (later
    /// calls block until the process exits).
    /// - Throws: a store error (the store stays usable then).
    func endRun() throws
    /// Starts the store's own background maintenance, if it has any (SQLite: WAL checkpoints
    /// off the commit path). Idempotent.
    /// - Throws: a store error when it cannot start.
    func startBackgroundWork() throws
    /// Starts a new leadership term for this (single) coordinator: increments the stored term
    /// durably and returns it with the store's identity, so nodes refuse frames of an earlier run.
    /// - Parameter coordinatorID: this coordinator's id, for the stamp.
    /// - Returns: the stamp for the scheduler.
    /// - Throws: a store error.
    func beginTerm(coordinatorID: String) throws -> LeadershipStamp
    /// Fences every later write of lease state (recording leases, requeueing expired or earlier
    /// instances' leases, the IP assignment table) with `term`: inside its transaction the store
    /// proves `term` is still its current leadership term and holds it until commit, and throws
    /// `LeadershipFenced` when a newer term exists (issue 15: the store rejects writes of lease
    /// state from an old term). SQLite, with one coordinator, has nothing to fence against.
    /// - Parameter term: the writer's term.
    func fenceLeaseWrites(term: Int64)
    /// A description of where the store keeps its data, for logs (never with a password).
    var location: String { get }

    // MARK: Submission and delivery

    /// Writes a message and its recipients (state `queued`, due at `receivedAt`) durably; the
    /// SMTP `250` may follow. Concurrent callers share one transaction (group commit).
    /// - Throws: a store error; nothing is written then.
    func enqueue(_ m: NewMessage) throws
    /// Writes several messages in one durable transaction.
    /// - Throws: a store error; nothing is written then.
    func enqueue(_ messages: [NewMessage]) throws
    /// The earliest next-attempt time of any waiting recipient, if any.
    /// - Throws: a store error.
    func nextDueTime() throws -> Date?
    /// Records leases and marks their recipients `leased`, in one transaction; recipients no
    /// longer waiting are left out, leases left empty are dropped.
    /// - Parameters:
    ///   - leases: the planned leases.
    ///   - day: the UTC day whose warm-up counts the recipients add to (nil: not counted).
    ///   - providerOfDomain: destination domain → provider label; with `day`, the granted
    ///     recipients also add to the per-provider warm-up counts (`addDailyProviderAttempts`)
    ///     of their lease's IP, in the same transaction (a domain not in it is not counted).
    /// - Returns: the leases as granted.
    /// - Throws: a store error; nothing is recorded then.
    func recordLeases(_ leases: [LeaseRecord], countAttemptsOnDay day: Int?, providerOfDomain: [String: String]) throws -> [LeaseRecord]
    /// The stored content of a message, nil if unknown or already purged.
    /// - Throws: a store error.
    func content(of messageID: String) throws -> [UInt8]?
    /// Applies a node's report, idempotently (see `SQLiteQueueStore.applyResult`).
    /// - Throws: a store error; nothing is applied then (the node re-sends).
    func applyResult(_ result: ResultMessage, node: String, retry: RetryPolicy, now: Date) throws -> ResultApplication
    /// Applies several reports in one durable transaction.
    /// - Returns: one `ResultApplication` per report, in order.
    /// - Throws: a store error; nothing is applied then.
    func applyResults(_ results: [(result: ResultMessage, node: String)], retry: RetryPolicy, now: Date) throws -> [ResultApplication]
    /// Applies several reports in one transaction whose durability may come from a later
    /// synced commit (`awaitSync`); a store without that notion applies them durably
    /// (`applyResults`) and returns mark 0.
    /// - Returns: one `ResultApplication` per report, in order, and the mark for `awaitSync`.
    /// - Throws: a store error; nothing is applied then.
    func applyResultsUnsynced(_ results: [(result: ResultMessage, node: String)], retry: RetryPolicy,
                              now: Date) throws -> (applications: [ResultApplication], mark: UInt64)
    /// Returns once everything committed up to `mark` (the results' own commit included) is
    /// durable, waiting at most `wait` for another commit to make it so before syncing itself.
    /// - Throws: a store error when its own sync fails.
    func awaitSync(after mark: UInt64, wait: Duration) throws
    /// Returns the recipients of leases past their expiry to `queued` and forgets those leases.
    /// - Returns: the expired leases' ids.
    /// - Throws: a store error.
    @discardableResult func requeueExpiredLeases(now: Date) throws -> [String]
    /// Returns every lease of `node` held by an instance other than `instance` to the queue.
    /// - Returns: the number of leases requeued.
    /// - Throws: a store error.
    @discardableResult func requeueLeases(node: String, exceptInstance instance: String, now: Date) throws -> Int
    /// Marks waiting recipients older than `maxAge` seconds `expired`.
    /// - Returns: how many expired.
    /// - Throws: a store error.
    @discardableResult func expireOld(maxAge: TimeInterval, now: Date) throws -> Int
    /// Recipient counts by state (every state present, zero when none).
    /// - Throws: a store error.
    func countsByState() throws -> [RecipientState: Int]
    /// Leases currently recorded, per node id.
    /// - Throws: a store error.
    func leasesPerNode() throws -> [String: Int]
    /// Every recorded lease with its recipients.
    /// - Throws: a store error.
    func allLeases() throws -> [LeaseRecord]
    /// A message and its recipients, nil if unknown.
    /// - Throws: a store error.
    func message(id: String) throws -> MessageRecord?
    /// The most recently accepted message ids, newest first.
    /// - Throws: a store error.
    func recentMessageIDs(limit: Int) throws -> [String]
    /// The AUTH user and DSN parameters stored with a message, nil for an unknown id.
    /// - Throws: a store error.
    func submissionRecord(messageID: String) throws -> SubmissionRecord?
    /// Message ids with a recipient whose address matches (case-insensitive), newest first.
    /// - Throws: a store error.
    func messages(forRecipient address: String, limit: Int) throws -> [String]

    // MARK: Membership, warm-up, backoffs, pauses

    /// Nodes an operator has put into drain.
    /// - Throws: a store error.
    func drainingNodes() throws -> Set<String>
    /// Records that `node` is (or is no longer) draining.
    /// - Throws: a store error.
    func setDraining(_ node: String, _ draining: Bool, now: Date) throws
    /// The owner of each sending IP as last stored (sending IP → node).
    /// - Throws: a store error.
    func ipOwners() throws -> [String: String]
    /// Replaces the stored owners with `owners` (unowned IPs absent).
    /// - Throws: a store error.
    func saveIPOwners(_ owners: [String: String]) throws
    /// Adds attempts to IPs' counts for UTC `day`.
    /// - Throws: a store error.
    func addDailyAttempts(_ counts: [String: Int], day: Int) throws
    /// Adds to the per-provider warm-up counts of UTC `day` (IP → provider label → recipients).
    func addDailyProviderAttempts(_ counts: [String: [String: Int]], day: Int) throws

    // MARK: Reputation signals (issue 18)

    /// Adds reputation signal counts (rows with the same key are summed).
    func addReputationCounts(_ rows: [ReputationCount]) throws
    /// The counts of buckets starting at `since` (seconds since 1970) or later; older rows are deleted.
    func reputationCounts(since: Int) throws -> [ReputationCount]
    /// Forgets every count of one (sending IP, provider) pair.
    func deleteReputationCounts(ip: String, provider: String) throws
    /// Records (or replaces) an active backoff.
    /// - Throws: a store error.
    func saveBackoff(_ e: BackoffTable.Entry) throws
    /// Forgets a backoff (lifted or expired).
    /// - Throws: a store error.
    func deleteBackoff(ip: String, provider: String) throws
    /// Backoffs still active at `now` (expired rows are deleted).
    /// - Throws: a store error.
    func activeBackoffs(now: Date) throws -> [BackoffTable.Entry]
    /// Records (or replaces) a pause.
    /// - Throws: a store error.
    func savePause(_ p: Pause) throws
    /// Forgets a pause. - Returns: whether one was stored.
    /// - Throws: a store error.
    @discardableResult func deletePause(_ target: PauseTarget) throws -> Bool
    /// Every stored pause, by kind and name.
    /// - Throws: a store error.
    func pauses() throws -> [Pause]

    // MARK: Suppression

    /// Whether mail from `sender` to `recipient` is suppressed now.
    /// - Throws: a store error.
    func isSuppressed(recipient: String, sender: String, scope: SuppressionSettings.Scope, now: Date) throws -> Bool
    /// Adds or replaces entries (same address and scope).
    /// - Throws: a store error.
    func addSuppressions(_ entries: [SuppressionEntry]) throws
    /// Removes entries for `address` (scope nil: every scope; `""`: the global one).
    /// - Returns: how many entries were removed.
    /// - Throws: a store error.
    @discardableResult func removeSuppression(address: String, scope: String?) throws -> Int
    /// Unexpired entries, newest first; with `address`, only that address.
    /// - Throws: a store error.
    func suppressions(address: String?, now: Date, limit: Int) throws -> [SuppressionEntry]
    /// Unexpired entries scoped to one of `scopes` (sender domains), newest first; with
    /// `address`, only that address. Empty `scopes`: none. (A tenant's list: its domains.)
    /// - Throws: a store error.
    func suppressions(scopes: [String], address: String?, now: Date, limit: Int) throws -> [SuppressionEntry]
    /// Deletes entries past their expiry. - Returns: how many were deleted.
    /// - Throws: a store error.
    @discardableResult func purgeExpiredSuppressions(now: Date) throws -> Int
    /// Deletes finished messages received before `receivedBefore` — every recipient final
    /// (delivered, failed, expired, suppressed or deleted), the content already purged, no
    /// event or DSN entry about it left — with their recipient rows (`coordinator.message_retention`:
    /// the queue is not an archive; the delivery log and the tenants' events keep the history).
    /// Works in bounded transactions (a few hundred messages each, the lock let go between them);
    /// messages still open are left, however old.
    /// A message stamped out of order (received while the clock was ahead) waits for its own
    /// date plus the retention and does not hold back the messages queued after it (a long
    /// run of them does, by as much as the clock was ahead, on the SQLite store).
    /// - Parameters:
    ///   - receivedBefore: the retention cut-off.
    ///   - now: the current time.
    ///   - limit: the most messages deleted in this call.
    /// - Returns: how many messages were deleted (`limit`: more may be left; fewer: a later call
    ///   may still find some, e.g. a message that finished since).
    /// - Throws: a store error.
    @discardableResult func deleteFinishedMessages(receivedBefore: Date, now: Date, limit: Int) throws -> Int
    /// Unexpired entries in total (for metrics).
    /// - Throws: a store error.
    func suppressionCount(now: Date) throws -> Int
    /// Makes `enqueue` mark listed recipients `suppressed` in the same transaction
    /// (`suppression.mode: mark_suppressed`), or stops doing so (`nil`).
    /// - Throws: a store error.
    func configureSuppressionAtEnqueue(scope: SuppressionSettings.Scope?) throws

    // MARK: Reporting (event outbox, DSNs, webhooks)

    /// Creates the reporting tables and the event triggers; idempotent.
    /// - Throws: a store error.
    func installReportingSchema() throws
    /// The oldest unprocessed events with their message's fields, oldest first.
    /// - Throws: a store error.
    func pendingEvents(limit: Int) throws -> [QueueEvent]
    /// Applies what processing a batch of events decided, in one transaction.
    /// - Throws: a store error; nothing is applied then.
    func completeEvents(_ d: EventDisposition, now: Date) throws
    /// Messages whose pending DSN entries are ready, with everything needed to build their DSN.
    /// - Throws: a store error.
    func readyDSNs(now: Date, hold: TimeInterval, limit: Int) throws -> [DSNSource]
    /// Queues a DSN (or drops entries that need none) for one message, in one transaction.
    /// - Throws: a store error; nothing is written then.
    func commitDSN(originalID: String, recipientIDs: [Int64], dsn: NewMessage?, now: Date) throws
    /// Waiting recipients without a delay warning of messages received in `(after, upTo]`.
    /// - Throws: a store error.
    func delayWarningCandidates(receivedAfter after: Double, upTo: Double, limit: Int) throws -> [QueueEvent]
    /// The recipients among `ids` that are waiting, of a message received at or before `upTo`,
    /// with no delay warning handled yet.
    /// - Throws: a store error.
    func delayWarningCandidates(recipientIDs ids: [Int64], receivedUpTo upTo: Double) throws -> [QueueEvent]
    /// Events not yet processed (for metrics).
    /// - Throws: a store error.
    func pendingEventCount() throws -> Int
    /// Due webhook deliveries of one hook, oldest first.
    /// - Throws: a store error.
    func dueWebhooks(hook: String, now: Date, limit: Int) throws -> [WebhookOutboxRow]
    /// The earliest next attempt of any webhook delivery, nil when the outbox is empty.
    /// - Throws: a store error.
    func nextWebhookDue() throws -> Date?
    /// Removes delivered (or abandoned) webhook rows.
    /// - Throws: a store error.
    func deleteWebhooks(_ ids: [Int64]) throws
    /// Records a failed attempt for webhook rows: attempts + 1, next attempt at `next`.
    /// - Throws: a store error.
    func deferWebhooks(_ ids: [Int64], next: Date, error: String) throws
    /// Holds every row of `hook` due before `until` until then.
    /// - Throws: a store error.
    func holdWebhooks(hook: String, until: Date) throws
    /// Deletes outbox rows of hooks no longer configured. - Returns: how many were dropped.
    /// - Throws: a store error.
    @discardableResult func dropWebhooks(notIn hooks: Set<String>) throws -> Int
    /// Rows waiting in the webhook outbox.
    /// - Throws: a store error.
    func webhookOutboxCount() throws -> Int

    // MARK: Queue control

    /// The destination domains of waiting recipients.
    /// - Throws: a store error.
    func waitingDomains() throws -> [String]
    /// Waiting recipients counted per state and key, with the oldest of each group, largest first.
    /// - Throws: a store error.
    func waitingSummary(by grouping: QueueGrouping, providerLabel: (String) -> String, now: Date) throws -> [QueueGroup]
    /// A page of waiting recipients matching `selector` in recipient id order after `after`.
    /// - Returns: the rows and whether more may follow.
    /// - Throws: a store error.
    func waitingRecipients(_ selector: RecipientSelector, after: Int64, limit: Int) throws -> (rows: [WaitingRecipient], more: Bool)
    /// How many recipients `selector` matches now.
    /// - Throws: a store error.
    func countWaiting(_ selector: RecipientSelector) throws -> Int
    /// Applies `action` to every recipient `selector` matches, in transactions of `batchSize`.
    /// - Returns: recipients selected, recipients changed and the transactions it took.
    /// - Throws: a store error; the batches before the failing one stay applied.
    func applyQueueAction(_ action: QueueAction, to selector: RecipientSelector, by operatorName: String, target: String, note: String?,
                          batchSize: Int, now: () -> Date) throws -> (matched: Int, changed: Int, batches: Int)
    /// Records an operator's action that concerns no recipient as an event.
    /// - Throws: a store error.
    func recordOperatorEvent(_ kind: DeliveryEventKind, by operatorName: String, target: String, note: String?, now: Date) throws
}

extension QueueStore {
    /// Durable at once (`applyResults`): mark 0.
    /// - Throws: a store error; nothing is applied then.
    public func applyResultsUnsynced(_ results: [(result: ResultMessage, node: String)], retry: RetryPolicy,
                                     now: Date) throws -> (applications: [ResultApplication], mark: UInt64) {
        (try applyResults(results, retry: retry, now: now), 0)
    }

    /// Nothing to wait for: `applyResultsUnsynced` committed durably.
    public func awaitSync(after mark: UInt64, wait: Duration) throws {}

    /// `recordLeases` without warm-up counting.
    /// - Throws: a store error.
    public func recordLeases(_ leases: [LeaseRecord]) throws -> [LeaseRecord] {
        try recordLeases(leases, countAttemptsOnDay: nil, providerOfDomain: [:])
    }

    /// `recordLeases` with the per-IP warm-up counts only (no per-provider counts).
    /// - Throws: a store error; nothing is recorded then.
    public func recordLeases(_ leases: [LeaseRecord], countAttemptsOnDay day: Int?) throws -> [LeaseRecord] {
        try recordLeases(leases, countAttemptsOnDay: day, providerOfDomain: [:])
    }

    /// Granted recipients per sending IP and provider label, for the per-provider warm-up counts.
    static func providerCounts(_ granted: [LeaseRecord], providerOfDomain: [String: String]) -> [String: [String: Int]] {
        var counts: [String: [String: Int]] = [:]
        for l in granted {
            guard let provider = providerOfDomain[l.domain] else { continue }
            counts[l.sendingIP, default: [:]][provider, default: 0] += l.recipientIDs.count
        }
        return counts
    }

    /// `suppressions(address:now:limit:)` with at most 1000 rows.
    /// - Throws: a store error.
    public func suppressions(address: String? = nil, now: Date) throws -> [SuppressionEntry] {
        try suppressions(address: address, now: now, limit: 1000)
    }

    /// `applyQueueAction` in batches of 1000 recipients.
    /// - Throws: a store error; the batches before the failing one stay applied.
    public func applyQueueAction(_ action: QueueAction, to selector: RecipientSelector, by operatorName: String, target: String, note: String?,
                                 now: () -> Date) throws -> (matched: Int, changed: Int, batches: Int) {
        try applyQueueAction(action, to: selector, by: operatorName, target: target, note: note, batchSize: 1000, now: now)
    }

    /// The RCPT reply for a suppressed recipient when `suppression.mode` is `reject_at_rcpt`:
    /// `550 5.1.1 <addr>: recipient address is suppressed`; nil when the recipient may be
    /// accepted (not listed, or the mode is `mark_suppressed`). For the SMTP session's RCPT
    /// handling; a store error accepts the recipient (the enqueue-time check still applies
    /// in `mark_suppressed` mode, and delivery would bounce it again otherwise).
    public func suppressionReply(recipient: String, sender: String, settings: SuppressionSettings, now: Date) -> SMTPReply? {
        guard settings.mode == .rejectAtRcpt,
              (try? isSuppressed(recipient: recipient, sender: sender, scope: settings.scope, now: now)) == true else { return nil }
        return SMTPReply(550, "5.1.1", "<\(recipient)>: recipient address is suppressed")
    }
}

/// Rules of the queue that do not depend on where it is stored.
public enum Queue {
    /// Seconds a synced lease-horizon update reaches past the lease that caused it
    /// (SQLiteQueueStore+RunState.swift).
    public static let leaseHorizonSlack: Double = 60

    /// The destination domain of a forward-path: the part after the last `@`, lower-cased
    /// (`""` when there is no `@`).
    public static func domain(of address: String) -> String {
        guard let at = address.lastIndex(of: "@") else { return "" }
        return address[address.index(after: at)...].lowercased()
    }

    /// The domain of a reverse-path, lower-cased (`""` for `<>`).
    public static func senderDomain(of reversePath: String) -> String { domain(of: reversePath) }

    /// The UTC day number (days since 1970) of `date`.
    public static func utcDay(_ date: Date) -> Int { Int(floor(date.timeIntervalSince1970 / 86400)) }

    /// This host's boot id, or nil where the kernel does not provide one.
    public static func currentBootID() -> String? {
        guard let s = try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8) else { return nil }
        let id = s.trimmingCharacters(in: .whitespacesAndNewlines)
        return id.isEmpty ? nil : id
    }
}

extension QueueGroup {
    /// Folds `(state, key, count, lowest recipient id)` rows into one group per key (a
    /// domain becomes its provider for `.provider`); the oldest message's id and age are left
    /// for the store to fill in.
    static func groups(_ rows: [(String, String, Int, Int64)], grouping: QueueGrouping, providerLabel: (String) -> String) -> [QueueGroup] {
        var groups: [String: QueueGroup] = [:]
        var labels: [String: String] = [:]
        for (state, rawKey, count, minID) in rows {
            var key = rawKey
            if grouping == .provider {
                if let l = labels[rawKey] { key = l } else { key = providerLabel(rawKey); labels[rawKey] = key }
            }
            var g = groups[key] ?? QueueGroup(key: key, queued: 0, deferred: 0, leased: 0, held: 0, total: 0,
                                              oldestRecipientId: minID, oldestMessageId: "", oldestAge: 0)
            switch RecipientState(rawValue: state) {
            case .queued?: g.queued += count
            case .deferred?: g.deferred += count
            case .leased?: g.leased += count
            case .held?: g.held += count
            default: break
            }
            g.total += count
            g.oldestRecipientId = min(g.oldestRecipientId, minID)
            groups[key] = g
        }
        return Array(groups.values)
    }
}

/// The two steps of `QueueStore.applyQueueAction`, for tests that interleave them with other
/// changes (both stores conform).
protocol QueueActionSteps {
    /// The ids of up to `limit` recipients matching `selector` after `after`, in id order.
    func selectWaiting(_ selector: RecipientSelector, after: Int64, limit: Int) throws -> (ids: [Int64], more: Bool)
    /// One batch of an action in one transaction. - Returns: recipients changed.
    func applyQueueBatch(_ action: QueueAction, ids: [Int64], states: [RecipientState], by operatorName: String, target: String, note: String?,
                         now: Date) throws -> Int
}

extension SQLiteQueueStore: QueueActionSteps {}
extension PostgreSQLQueueStore: QueueActionSteps {}
