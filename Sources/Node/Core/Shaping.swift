import Foundation
import HatoConfig

/// A (sending IP, provider) pair: the unit shaping limits apply to.
public struct ShapingKey: Sendable, Hashable, CustomStringConvertible {
    /// The local source address.
    public let sendingIP: String
    /// The provider rule's name, or `mx:<host>` for MX hosts no rule matches.
    public let group: String

    /// A key from its parts.
    public init(sendingIP: String, group: String) { self.sendingIP = sendingIP; self.group = group }

    /// `sendingIP/group`.
    public var description: String { "\(sendingIP)/\(group)" }
}

/// An instant a `MessageRateLimiter` can space messages on: the monotonic clock's instants
/// (what the node's pool uses) or wall-clock dates.
public protocol PacedInstant: Comparable, Sendable {
    /// This instant moved `seconds` later.
    func advanced(bySeconds seconds: TimeInterval) -> Self
}

extension ContinuousClock.Instant: PacedInstant {
    /// `self + seconds`.
    public func advanced(bySeconds seconds: TimeInterval) -> ContinuousClock.Instant { self + .seconds(seconds) }
}

extension Date: PacedInstant {
    /// `addingTimeInterval(seconds)`.
    public func advanced(bySeconds seconds: TimeInterval) -> Date { addingTimeInterval(seconds) }
}

/// An even-spacing rate limiter (GCRA with a burst of one) as a value: each message gets the
/// next free slot, `interval` seconds after the previous one. Time is passed in, on the
/// clock of `Instant` (the pool uses `ContinuousClock.Instant`).
public struct MessageRateLimiter<Instant: PacedInstant>: Sendable, Equatable {
    /// Seconds between two messages.
    public let interval: TimeInterval
    /// The earliest time the next message may go.
    public private(set) var nextFree: Instant? = nil

    /// A limiter for `rate` on instants of type `Instant`.
    public init(rate: MessageRate, on: Instant.Type) { interval = rate.interval }

    /// Books the next slot if it comes no later than `notAfter`.
    /// - Returns: when the message may be sent (≥ `now`), or nil (nothing booked) when that is after `notAfter`.
    public mutating func reserve(now: Instant, notAfter: Instant) -> Instant? {
        let at = max(now, nextFree ?? now)
        guard at <= notAfter else { return nil }
        nextFree = at.advanced(bySeconds: interval)
        return at
    }
}

extension MessageRateLimiter where Instant == Date {
    /// A limiter for `rate` on wall-clock dates.
    public init(rate: MessageRate) { self.init(rate: rate, on: Date.self) }
}
