import HatoSupport

/// The content of messages accepted a moment ago, kept in memory so that the lease grant that
/// usually follows within milliseconds sends it without reading it back from the store (issue 19:
/// at 100 KiB, reading each body back through SQLite's overflow pages, under the queue's lock,
/// was a tenth of the coordinator's CPU; with PostgreSQL it is a round trip of the whole body).
///
/// Bounded by octets (oldest first out) and emptied as grants take their content; content is
/// immutable once queued, so an entry is never stale. The arrays are the ones handed to the
/// store (no copy). A miss simply reads the store.
public final class RecentContent: Sendable {
    private struct State: Sendable {
        var content: [String: [UInt8]] = [:]
        /// Insertion order (a ring: `head` is the oldest still listed).
        var order: [String] = []
        var head = 0
        var octets = 0
    }

    /// The most content octets kept.
    public let budget: Int
    private let state = Locked(State())

    /// - Parameter budget: the most octets of content kept (default 32 MiB; 0 keeps nothing).
    public init(budget: Int = 32 << 20) { self.budget = max(0, budget) }

    /// Remembers a queued message's content; the oldest entries leave when over budget. Content
    /// larger than a quarter of the budget is not kept.
    /// - Parameters:
    ///   - messageID: the queue id.
    ///   - content: the content exactly as stored.
    public func insert(_ messageID: String, _ content: [UInt8]) {
        guard content.count <= budget / 4 else { return }
        state.withLock { s in
            if let old = s.content.updateValue(content, forKey: messageID) { s.octets -= old.count } else { s.order.append(messageID) }
            s.octets += content.count
            while s.octets > budget, s.head < s.order.count {
                let oldest = s.order[s.head]
                s.head += 1
                if let gone = s.content.removeValue(forKey: oldest) { s.octets -= gone.count }
            }
            // Ids of taken content stay listed until here: drop them once they are most of the
            // list (amortised; the list stays within about twice the messages kept + 1024).
            if s.order.count - s.head > 2 * s.content.count + 1024 {
                s.order = s.order[s.head...].filter { s.content[$0] != nil }
                s.head = 0
            } else if s.head > 1024 && s.head * 2 > s.order.count {
                s.order.removeFirst(s.head)
                s.head = 0
            }
        }
    }

    /// The content of `messageID` if it is still kept, which it no longer is afterwards: a
    /// message is granted once in the usual case, and what waits longer (a recipient deferred,
    /// a second domain leased later) reads the store. So the memory held is that of mail queued
    /// but not yet leased, up to `budget`.
    public func take(_ messageID: String) -> [UInt8]? {
        state.withLock { s in
            guard let content = s.content.removeValue(forKey: messageID) else { return nil }
            s.octets -= content.count
            return content
        }
    }

    /// The octets kept for all of `messageIDs`, or nil when one of them is not kept (it would
    /// be read from the store).
    public func keptOctets<S: Sequence>(of messageIDs: S) -> Int? where S.Element == String {
        state.withLock { s in
            var total = 0
            for id in messageIDs {
                guard let content = s.content[id] else { return nil }
                total += content.count
            }
            return total
        }
    }

    /// Octets and messages kept now, and ids listed in the eviction order (for tests and metrics).
    public var usage: (octets: Int, messages: Int, listed: Int) { state.withLock { ($0.octets, $0.content.count, $0.order.count - $0.head) } }
}
