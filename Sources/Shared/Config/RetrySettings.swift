import Foundation
import HatoIO
import SMTPCore

/// `retry:` when temporarily failed deliveries are retried.
public struct RetrySettings: Sendable, Equatable {
    /// `schedule`: seconds to wait before each retry; after the last step the last
    /// interval repeats. Non-empty. Default `[60, 300, 900, 3600, 14400]` (1m, 5m, 15m, 1h, 4h).
    public var schedule: [TimeInterval]
    /// `max_age`: seconds after which a message that is still failing temporarily is bounced. Default 432000 (5d).
    public var maxAge: TimeInterval

    /// The default schedule: 1m, 5m, 15m, 1h, 4h.
    public static let defaultSchedule: [TimeInterval] = [60, 300, 900, 3600, 14_400]

    /// Creates retry settings.
    public init(schedule: [TimeInterval] = RetrySettings.defaultSchedule, maxAge: TimeInterval = 5 * 86_400) {
        self.schedule = schedule; self.maxAge = maxAge
    }

    /// Seconds to wait after failed attempt `n` (1-based): attempt 1 → `schedule[0]`;
    /// beyond the schedule, the last interval. `n < 1` counts as 1; an empty schedule gives 60.
    public func delay(afterAttempt n: Int) -> TimeInterval {
        guard let last = schedule.last else { return 60 }
        let index = max(0, n - 1)
        return index < schedule.count ? schedule[index] : last
    }
}
