import Foundation

/// How long a node waits before reconnecting to the coordinator: "decorrelated jitter"
/// (each wait drawn between `base` and three times the previous wait, never over `cap`), so
/// the nodes of a cluster that lost their coordinator together do not come back in step.
///
/// The policy is a value; randomness is passed in, so tests replay it. It resets after a
/// successful join (`joined()`), not only after a clean end of a session — a dropped
/// connection never ends cleanly, and without the reset a node that had been connected for
/// hours would come back after the full cap.
public struct ReconnectBackoff: Sendable, Equatable {
    /// The shortest wait (and the first one after a reset's next failure, at least).
    public let base: Duration
    /// The longest wait.
    public let cap: Duration
    /// The last wait handed out (`base` after a reset).
    public private(set) var previous: Duration

    /// - Parameters:
    ///   - base: the shortest wait (default 0.5 s).
    ///   - cap: the longest wait (default 10 s; at least `base`).
    public init(base: Duration = .milliseconds(500), cap: Duration = .seconds(10)) {
        self.base = max(base, .milliseconds(1))
        self.cap = max(cap, self.base)
        previous = self.base
    }

    /// The wait before the next connection attempt, after a session ended or a connect failed.
    /// - Parameter random: the random source.
    /// - Returns: a wait in `base...cap`, drawn up to three times the previous one.
    public mutating func next<R: RandomNumberGenerator>(using random: inout R) -> Duration {
        let upper = min(cap, previous * 3)
        let seconds = Double.random(in: base.inSeconds...max(base, upper).inSeconds, using: &random)
        previous = min(cap, max(base, .seconds(seconds)))
        return previous
    }

    /// The node joined (the coordinator's `welcome` verified): the next failure starts over
    /// from `base`.
    public mutating func joined() {
        previous = base
    }
}
