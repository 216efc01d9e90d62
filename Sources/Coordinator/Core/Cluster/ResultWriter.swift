import ClusterProtocol
import Foundation
import HatoSupport

/// Applies node results to the queue in batches — every result waiting is applied in one
/// transaction (group commit) — on a thread of its own, so the scheduler never waits for a
/// result's fsync. The commit does not sync by itself: the batch waits (`syncWait`) for the
/// next synced commit of the store (queued mail's), or syncs; only then is it handed on
/// (`applied`) and acknowledged to the nodes: an acknowledged result is on disk.
///
/// A batch that fails to commit is not acknowledged: the nodes keep those results in their
/// journals and re-send them when they reconnect.
final class ResultWriter: Sendable {
    /// One received result.
    struct Item: Sendable {
        var result: ResultMessage
        var node: String
        var connection: ConnectionID
    }

    private struct State: Sendable {
        var pending: [Item] = []
        var writing = false
        var running = true
        var finished = false
    }

    /// How long a committed batch waits for another commit's fsync before syncing itself.
    static let syncWait: Duration = .milliseconds(3)

    private let state = LockedCondition(State())
    private let store: any QueueStore
    private let retryPolicy: @Sendable () -> RetryPolicy
    private let clock: any WallClock
    private let log: Logger
    private let willApply: @Sendable ([Item]) -> Void
    private let applied: @Sendable ([Item], [ResultApplication]) -> Void

    /// - Parameters:
    ///   - store: the queue.
    ///   - retryPolicy: the retry policy in force (it changes on reload).
    ///   - clock: wall-clock time for the stored instants.
    ///   - log: where failures go.
    ///   - willApply: called on the writer thread with each batch before its transaction: what
    ///     must be known before another thread can read the batch's rows (the reporter reads the
    ///     events a result writes as soon as they are committed, before `applied` runs).
    ///   - applied: called on the writer thread after each committed batch, in order.
    init(store: any QueueStore, retryPolicy: @escaping @Sendable () -> RetryPolicy, clock: any WallClock, log: Logger,
         willApply: @escaping @Sendable ([Item]) -> Void,
         applied: @escaping @Sendable ([Item], [ResultApplication]) -> Void) {
        self.store = store; self.retryPolicy = retryPolicy; self.clock = clock; self.log = log
        self.willApply = willApply; self.applied = applied
    }

    /// Starts the writer thread.
    func start() {
        Thread.startNamed("result-writer") { [self] in run() }
    }

    /// Stops after the batch being written.
    func stop() { state.withLockAndBroadcast { $0.running = false } }

    /// Queues a result.
    func enqueue(_ item: Item) {
        state.withLockAndBroadcast { $0.pending.append(item) }
    }

    /// Waits until every result queued before this call has been applied (or failed), at most `timeout`.
    func flush(timeout: Duration = .seconds(60)) {
        state.wait(until: .now + timeout, for: { ($0.pending.isEmpty && !$0.writing) || !$0.running }) { _, _ in }
    }

    private func run() {
        while true {
            let batch: [Item]? = state.wait(until: nil, for: { !$0.pending.isEmpty || !$0.running }) { s, _ in
                guard s.running else { return nil }
                defer { s.pending.removeAll(keepingCapacity: true) }
                s.writing = true
                return s.pending
            }
            guard let batch else { break }
            willApply(batch)
            do {
                // Committed without an fsync of its own; acknowledged (`applied`) only once durable —
                // usually by the next commit of queued mail, which syncs the WAL anyway (issue 19:
                // one fsync fewer per batch of results).
                let (apps, mark) = try store.applyResultsUnsynced(batch.map { ($0.result, $0.node) }, retry: retryPolicy(), now: clock.now())
                // Committed: from here the batch is only ever handed on once durable. A failing
                // sync (a disk error) is tried again, once a second, while the writer runs — not
                // reported as "not applied": the rows are in, and a re-sent result would find
                // them applied (found in review).
                var failures = 0
                while true {
                    do {
                        try store.awaitSync(after: mark, wait: ResultWriter.syncWait)
                        break
                    } catch {
                        failures += 1
                        if failures == 1 || failures % 60 == 0 {
                            log.error("syncing applied results failed; retrying before acknowledging them", ["results": "\(batch.count)", "attempts": "\(failures)", "error": "\(error)"])
                        }
                        guard state.wait(until: .now + .seconds(1), for: { !$0.running }, then: { _, stopped in !stopped }) else { throw error }
                    }
                }
                applied(batch, apps)
            } catch {
                log.error("applying results failed; nodes will re-send", ["results": "\(batch.count)", "error": "\(error)"])
            }
            state.withLockAndBroadcast { $0.writing = false }
        }
        state.withLockAndBroadcast { $0.finished = true; $0.writing = false }
    }
}
