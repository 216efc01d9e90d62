import Foundation

/// A source of monotonic time for deadlines and timeouts, injectable so timed logic is
/// tested without sleeping. The instants are `ContinuousClock.Instant`s: they never step with
/// the wall clock, and they mean nothing outside this process (store or send a `Date` instead).
public protocol MonotonicClock: Sendable {
    /// The current instant.
    var now: ContinuousClock.Instant { get }
}

/// The system's monotonic clock (`ContinuousClock`, i.e. `CLOCK_MONOTONIC` here).
public struct SystemMonotonicClock: MonotonicClock {
    /// The system clock.
    public init() {}
    /// `ContinuousClock.now`.
    public var now: ContinuousClock.Instant { ContinuousClock.now }
}

/// A monotonic clock tests move by hand.
public final class ManualMonotonicClock: MonotonicClock {
    private let current: Locked<ContinuousClock.Instant>

    /// A clock standing at `start` (default: the real clock's current instant).
    public init(_ start: ContinuousClock.Instant = .now) { current = Locked(start) }

    /// Where the clock stands.
    public var now: ContinuousClock.Instant { current.snapshot }

    /// Moves the clock forward by `duration` (a negative duration is ignored: monotonic).
    public func advance(by duration: Duration) {
        current.withLock { if duration > .zero { $0 += duration } }
    }
}

extension Duration {
    /// The duration in seconds, as a `Double` (for reports, logs and APIs in seconds).
    public var inSeconds: Double {
        let (s, atto) = components
        return Double(s) + Double(atto) / 1e18
    }
}

extension ContinuousClock.Instant {
    /// The monotonic instant that corresponds to the wall-clock `date`, by the two clocks'
    /// offset right now: for converting a deadline received as a `Date` once, at receipt.
    /// - Parameters:
    ///   - date: the wall-clock instant.
    ///   - wallNow: the wall clock's current time (injected for tests).
    ///   - monotonicNow: the monotonic clock's current instant.
    public static func from(_ date: Date, wallNow: Date = Date(), monotonicNow: ContinuousClock.Instant = .now) -> ContinuousClock.Instant {
        monotonicNow + .seconds(date.timeIntervalSince(wallNow))
    }
}
