import Foundation

/// A source of wall-clock time, injectable so timed logic is tested without sleeping.
public protocol WallClock: Sendable {
    /// The current time.
    func now() -> Date
}

/// The system clock.
public struct SystemClock: WallClock {
    public init() {}
    public func now() -> Date { Date() }
}

/// A clock tests move by hand.
public final class ManualClock: WallClock, Sendable {
    private let current: Locked<Date>
    public init(_ start: Date = Date(timeIntervalSince1970: 1_800_000_000)) { current = Locked(start) }
    public func now() -> Date { current.snapshot }
    /// Moves the clock forward by `seconds`.
    public func advance(_ seconds: TimeInterval) { current.withLock { $0 += seconds } }
}
