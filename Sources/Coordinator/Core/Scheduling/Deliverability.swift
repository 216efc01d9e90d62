import Foundation
import HatoConfig

/// Active backoffs per (sending IP, provider): suspensions and throttles reported by nodes.
/// Pure value type: time is passed in.
public struct BackoffTable: Sendable, Equatable {
    /// One active backoff.
    public struct Entry: Codable, Sendable, Equatable {
        public var sendingIP: String
        public var provider: String
        public var action: BackoffRule.Action
        /// Seconds since 1970 when normal pace resumes.
        public var until: Double
        /// For throttles: leases per minute.
        public var ratePerMinute: Int?
        /// The reply that triggered it.
        public var reason: String
        var windowStart: Double = 0
        var windowCount: Int = 0

        public init(sendingIP: String, provider: String, action: BackoffRule.Action, until: Double, ratePerMinute: Int?, reason: String) {
            self.sendingIP = sendingIP; self.provider = provider; self.action = action; self.until = until
            self.ratePerMinute = ratePerMinute; self.reason = reason
        }

        enum CodingKeys: String, CodingKey { case sendingIP = "sendingIp", provider, action, until, ratePerMinute, reason }
    }

    private var entries: [String: Entry] = [:]

    public init() {}

    /// A table holding `entries` (e.g. loaded after a restart).
    public init(entries list: [Entry]) {
        for e in list { entries[BackoffTable.key(e.sendingIP, e.provider)] = e }
    }

    /// The entry for (ip, provider), active or not.
    public func entry(ip: String, provider: String) -> Entry? { entries[BackoffTable.key(ip, provider)] }

    private static func key(_ ip: String, _ provider: String) -> String { ip + "|" + provider }

    /// Records a backoff (a later report extends it; a suspension wins over a throttle).
    public mutating func apply(ip: String, provider: String, action: BackoffRule.Action, duration: TimeInterval, ratePerMinute: Int?, reason: String, now: Date) {
        let k = BackoffTable.key(ip, provider)
        let until = now.timeIntervalSince1970 + duration
        if var e = entries[k], e.until > now.timeIntervalSince1970 {
            e.until = max(e.until, until)
            if action == .suspend { e.action = .suspend }
            if let r = ratePerMinute { e.ratePerMinute = min(e.ratePerMinute ?? r, r) }
            e.reason = reason
            entries[k] = e
        } else {
            entries[k] = Entry(sendingIP: ip, provider: provider, action: action, until: until, ratePerMinute: ratePerMinute, reason: reason)
        }
    }

    /// Whether a lease for (ip, provider) may be granted now; a throttle counts the grant.
    public mutating func admit(ip: String, provider: String, now: Date) -> Bool {
        let k = BackoffTable.key(ip, provider)
        guard var e = entries[k] else { return true }
        let t = now.timeIntervalSince1970
        if e.until <= t { return true }  // ended: `takeEnded` reports and removes it
        switch e.action {
        case .suspend: return false
        case .none: return true
        case .throttle:
            if t - e.windowStart >= 60 { e.windowStart = t; e.windowCount = 0 }
            guard e.windowCount < (e.ratePerMinute ?? 1) else { entries[k] = e; return false }
            e.windowCount += 1
            entries[k] = e
            return true
        }
    }

    /// Whether (ip, provider) is blocked right now, without counting.
    public func blocks(ip: String, provider: String, now: Date) -> Bool {
        guard let e = entries[BackoffTable.key(ip, provider)], e.until > now.timeIntervalSince1970 else { return false }
        if e.action == .suspend { return true }
        let t = now.timeIntervalSince1970
        return t - e.windowStart < 60 && e.windowCount >= (e.ratePerMinute ?? 1)
    }

    /// Removes and returns the backoffs that have run out by `now` (for their `lifted` event).
    public mutating func takeEnded(now: Date) -> [Entry] {
        let t = now.timeIntervalSince1970
        let ended = entries.filter { $0.value.until <= t }
        for k in ended.keys { entries[k] = nil }
        return ended.values.sorted { ($0.sendingIP, $0.provider) < ($1.sendingIP, $1.provider) }
    }

    /// Whether (ip, provider) has a backoff that has not run out.
    public func isActive(ip: String, provider: String, now: Date) -> Bool {
        (entries[BackoffTable.key(ip, provider)]?.until ?? 0) > now.timeIntervalSince1970
    }

    /// Lifts a backoff. - Returns: whether one was active.
    public mutating func lift(ip: String, provider: String) -> Bool { entries.removeValue(forKey: BackoffTable.key(ip, provider)) != nil }

    /// Active backoffs, sorted by IP then provider.
    public func active(now: Date) -> [Entry] {
        entries.values.filter { $0.until > now.timeIntervalSince1970 }.sorted { ($0.sendingIP, $0.provider) < ($1.sendingIP, $1.provider) }
    }
}

