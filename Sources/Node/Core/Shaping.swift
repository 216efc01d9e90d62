import Foundation
import HatoShared

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

/// An even-spacing rate limiter (GCRA with a burst of one) as a value: each message gets the
/// next free slot, `interval` seconds after the previous one.
public struct MessageRateLimiter: Sendable, Equatable {
    /// Seconds between two messages.
    public let interval: TimeInterval
    /// The earliest time the next message may go.
    public private(set) var nextFree: Date? = nil

    /// A limiter for `rate`.
    public init(rate: MessageRate) { interval = rate.interval }

    /// Books the next slot if it comes no later than `notAfter`.
    /// - Returns: when the message may be sent (≥ `now`), or nil (nothing booked) when that is after `notAfter`.
    public mutating func reserve(now: Date, notAfter: Date) -> Date? {
        let at = max(now, nextFree ?? now)
        guard at <= notAfter else { return nil }
        nextFree = at.addingTimeInterval(interval)
        return at
    }
}
