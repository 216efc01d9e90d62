import Foundation

/// Group commit: callers that submit at the same time share one write and one sync.
///
/// The first caller to find no commit running becomes the leader: it takes every item waiting
/// at that moment and runs `commit` once for all of them; the others wait until the batch
/// holding their item is done. Nobody returns before their item is durable (or its batch
/// failed, which every caller of that batch sees as an error). Used for the queue's message
/// writes (the SMTP `250` follows the fsync) and the node journal's result lines.
public final class GroupCommitter<Item: Sendable>: Sendable {
    private struct State: Sendable {
        var waiting: [(item: Item, ticket: Int)] = []
        var results: [Int: Result<Void, any Error>] = [:]
        var committing = false
        var nextTicket = 0
        var batches = 0
        /// Tickets of the batch being committed.
        var pendingTickets: [Int] = []
    }

    private let state = LockedCondition(State())
    private let commit: @Sendable ([Item]) throws -> Void

    /// - Parameter commit: writes and syncs a batch, in submission order; throws to fail the whole batch.
    public init(commit: @escaping @Sendable ([Item]) throws -> Void) {
        self.commit = commit
    }

    /// Commits `item` with whatever else is waiting, and returns once it is durable.
    /// - Throws: what `commit` threw for the batch holding `item`.
    public func submit(_ item: Item) throws {
        var lead: [Item]?
        var ticket = 0
        state.withLock { s in
            ticket = s.nextTicket
            s.nextTicket += 1
            s.waiting.append((item, ticket))
        }
        while true {
            let done: Result<Void, any Error>? = state.wait(until: nil, for: { $0.results[ticket] != nil || !$0.committing }) { s, _ in
                if let r = s.results.removeValue(forKey: ticket) { return r }
                // No commit running: lead one with everything waiting.
                s.committing = true
                lead = s.waiting.map(\.item)
                s.pendingTickets = s.waiting.map(\.ticket)
                s.waiting.removeAll(keepingCapacity: true)
                return nil
            }
            if let done { return try done.get() }
            guard let batch = lead else { continue }
            lead = nil
            let outcome = Result<Void, any Error> { try commit(batch) }
            state.withLockAndBroadcast { s in
                for t in s.pendingTickets { s.results[t] = outcome }
                s.pendingTickets = []
                s.committing = false
                s.batches += 1
            }
        }
    }

    /// Items submitted so far, committed or waiting (for tests).
    public var itemsSubmitted: Int { state.withLock { $0.nextTicket } }

    /// Batches committed so far (for tests and benchmarks).
    public var batchesCommitted: Int { state.withLock { $0.batches } }
}
