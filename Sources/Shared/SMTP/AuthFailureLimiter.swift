import COpenSSL
import Foundation
import HatoCrypto

/// Failed AUTH attempts per client address in a sliding window: once `maxFailures` are
/// recorded within `window`, further attempts from that address are refused without a
/// password check until the oldest failure ages out. A success does not clear the record
/// (one valid account must not unlock guessing at others).
///
/// Memory: at most `maxFailures` timestamps per address and `maxClients` addresses; beyond
/// that, expired entries are pruned and then the least recently failing addresses dropped.
public struct AuthFailureLimiter: Sendable {
    /// Failures allowed within `window` (≥ 1).
    public let maxFailures: Int
    /// The sliding window in seconds.
    public let window: TimeInterval
    /// The most client addresses tracked.
    public let maxClients: Int
    private var failures: [String: [Date]] = [:]

    /// Creates a limiter.
    /// - Parameters:
    ///   - maxFailures: failures per address within `window` before refusing.
    ///   - window: seconds.
    ///   - maxClients: addresses tracked at most (default 100,000).
    public init(maxFailures: Int, window: TimeInterval, maxClients: Int = 100_000) {
        self.maxFailures = max(1, maxFailures)
        self.window = window
        self.maxClients = max(1, maxClients)
    }

    /// Whether `client` has used up its failures.
    /// - Parameters:
    ///   - client: the numeric client address.
    ///   - now: the current time.
    /// - Returns: true when `maxFailures` failures fall within the window before `now`.
    public func isBlocked(_ client: String, now: Date) -> Bool {
        guard let list = failures[client] else { return false }
        return list.filter { now.timeIntervalSince($0) < window }.count >= maxFailures
    }

    /// Records one failed attempt.
    /// - Parameters:
    ///   - client: the numeric client address.
    ///   - now: the current time.
    public mutating func recordFailure(_ client: String, now: Date) {
        var list = (failures[client] ?? []).filter { now.timeIntervalSince($0) < window }
        list.append(now)
        if list.count > maxFailures { list.removeFirst(list.count - maxFailures) }
        failures[client] = list
        if failures.count > maxClients { prune(now: now) }
    }

    /// Addresses currently tracked.
    public var trackedClients: Int { failures.count }

    private mutating func prune(now: Date) {
        failures = failures.filter { entry in entry.value.contains { now.timeIntervalSince($0) < window } }
        if failures.count > maxClients {
            let byAge = failures.sorted { ($0.value.last ?? .distantPast) < ($1.value.last ?? .distantPast) }
            for (client, _) in byAge.prefix(failures.count - maxClients) { failures[client] = nil }
        }
    }
}
