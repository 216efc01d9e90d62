import Foundation

/// When a deferred recipient is tried again, and when it gives up.
///
/// The n-th deferral waits `schedule[n-1]` seconds (the last interval repeats);
/// a recipient whose message is older than `maxAge` seconds expires instead
/// (Postfix's `maximal_queue_lifetime`).
public struct RetryPolicy: Sendable, Equatable {
    /// Delays in seconds after the 1st, 2nd, … deferral.
    public var schedule: [TimeInterval]
    /// Maximum time in the queue, seconds.
    public var maxAge: TimeInterval

    public init(schedule: [TimeInterval], maxAge: TimeInterval) {
        self.schedule = schedule.isEmpty ? [300] : schedule
        self.maxAge = maxAge
    }

    /// The decision after a deferral.
    public enum Decision: Sendable, Equatable {
        /// Try again at this time.
        case retry(at: Date)
        /// Give up: the recipient is expired.
        case expire
    }

    /// The decision after the `attempts`-th attempt was deferred.
    /// - Parameters:
    ///   - attempts: attempts made so far, including this one (≥ 1).
    ///   - receivedAt: when the message was accepted.
    ///   - now: the current time.
    public func afterDeferral(attempts: Int, receivedAt: Date, now: Date) -> Decision {
        let age = now.timeIntervalSince(receivedAt)
        if age >= maxAge { return .expire }
        let idx = min(max(attempts, 1), schedule.count) - 1
        let at = now.addingTimeInterval(schedule[idx])
        // A retry after the deadline is pointless: retry at the deadline instead, then expire.
        let deadline = receivedAt.addingTimeInterval(maxAge)
        return .retry(at: min(at, deadline))
    }
}
