import ClusterProtocol
import Foundation
import HatoConfig
import HatoDelivery

/// One stored count of the reputation signals: `count` outcomes of one `kind` for one
/// (sending IP, provider) pair in the minute starting at `bucket`. The store keeps these rows
/// (`reputation_counts`), so the counts are cluster-wide and a new leader starts from them.
public struct ReputationCount: Sendable, Equatable, Codable {
    /// The sending IP.
    public var ip: String
    /// The provider key of the backoff table (a `shaping.providers` name or `mx:<host>`).
    public var provider: String
    /// Start of the one-minute bucket, seconds since 1970 (a multiple of 60).
    public var bucket: Int
    /// `delivered`, `deferred:<category>`, `bounced:<category>` (a `BounceCategory` raw value) or `complaint`.
    public var kind: String
    /// How many.
    public var count: Int

    /// - Parameters: as the properties.
    public init(ip: String, provider: String, bucket: Int, kind: String, count: Int) {
        self.ip = ip; self.provider = provider; self.bucket = bucket; self.kind = kind; self.count = count
    }
}

/// What happened to one recipient (or one complaint), as a reputation signal counts it.
public enum SignalOutcome: Sendable, Equatable, Hashable {
    /// Delivered (2xx).
    case delivered
    /// Deferred (4xx, timeout), with its category.
    case deferred(BounceCategory)
    /// Bounced (5xx), with its category.
    case bounced(BounceCategory)
    /// A feedback-loop complaint (RFC 5965) about mail the pair delivered.
    case complaint

    /// The stored kind (`ReputationCount.kind`).
    public var kind: String {
        switch self {
        case .delivered: return "delivered"
        case .deferred(let c): return "deferred:" + c.rawValue
        case .bounced(let c): return "bounced:" + c.rawValue
        case .complaint: return "complaint"
        }
    }

    /// The outcome of a node's recipient result: its disposition, and its category from
    /// `BounceClassifier` (RFC 3463 codes and reply text).
    /// - Parameter result: the recipient's result.
    public init(_ result: RecipientResult) {
        switch result.status {
        case .delivered: self = .delivered
        case .deferred: self = .deferred(BounceClassifier.classify(result.reply))
        case .failed: self = .bounced(BounceClassifier.classify(result.reply))
        }
    }
}

/// Counts of one (sending IP, provider) pair over a window.
public struct SignalCounts: Sendable, Equatable, Codable {
    /// Recipients delivered.
    public var delivered = 0
    /// Recipients deferred.
    public var deferred = 0
    /// Recipients bounced.
    public var bounced = 0
    /// Complaints.
    public var complaints = 0
    /// Deferrals per category (`BounceCategory` raw value).
    public var deferredBy: [String: Int] = [:]
    /// Bounces per category.
    public var bouncedBy: [String: Int] = [:]

    /// An empty count.
    public init() {}

    /// Every attempt: delivered + deferred + bounced (complaints are not attempts).
    public var attempts: Int { delivered + deferred + bounced }

    /// The numerator a rule's signal counts.
    public func value(of signal: ReputationRule.Signal) -> Int {
        switch signal {
        case .deferrals: return deferred
        case .bounces: return bounced
        case .complaints: return complaints
        case .categoryBounces(let c): return bouncedBy[c, default: 0]
        case .categoryDeferrals(let c): return deferredBy[c, default: 0]
        }
    }

    mutating func add(kind: String, _ n: Int) {
        if kind == "delivered" { delivered += n }
        else if kind == "complaint" { complaints += n }
        else if kind.hasPrefix("deferred:") { deferred += n; deferredBy[String(kind.dropFirst(9)), default: 0] += n }
        else if kind.hasPrefix("bounced:") { bounced += n; bouncedBy[String(kind.dropFirst(8)), default: 0] += n }
    }
}

/// A reputation rule that fired for a pair, with the figures behind it.
public struct RuleFiring: Sendable, Equatable {
    /// The rule's position in `reputation.rules`, from 1.
    public var ruleNumber: Int
    /// The rule.
    public var rule: ReputationRule
    /// The signal's count in the rule's window.
    public var count: Int
    /// Attempts in the window.
    public var attempts: Int

    /// The share `count / attempts`.
    public var share: Double { attempts > 0 ? Double(count) / Double(attempts) : 0 }

    /// Why, as the event and the backoff record it: `reputation rule 1 (spam_bounces > 2% of
    /// ≥500 attempts in 1h → pause 2h): 12 spam_bounces in 480 attempts (2.5%)`.
    public var reason: String {
        "\(RuleFiring.prefix) \(ruleNumber) (\(rule.summary)): \(count) \(rule.signal) in \(attempts) attempts (\(String(format: "%.1f", share * 100))%)"
    }

    /// How every rule's reason starts (a backoff with this reason was set by a rule).
    public static let prefix = "reputation rule"
}

/// Rolling per (sending IP, provider) counts of deliveries, deferrals and bounces by category,
/// and complaints, in one-minute buckets; and the `reputation.rules` evaluated over them.
///
/// A pure value: time is passed in. The scheduler feeds it with every committed result (and
/// complaints), hands the new counts to its shell to store, and rebuilds it from the store
/// when it takes over; so the figures are the cluster's, not one coordinator's.
public struct ReputationSignals: Sendable, Equatable {
    /// A (sending IP, provider) pair.
    public struct Pair: Hashable, Sendable, Comparable {
        /// The sending IP.
        public var ip: String
        /// The provider key (as in the backoff table).
        public var provider: String
        /// - Parameters: as the properties.
        public init(ip: String, provider: String) { self.ip = ip; self.provider = provider }
        public static func < (a: Pair, b: Pair) -> Bool { (a.ip, a.provider) < (b.ip, b.provider) }
    }

    /// Seconds per bucket.
    public static let bucketSeconds = 60

    /// Pair → bucket start → kind → count.
    private var buckets: [Pair: [Int: [String: Int]]] = [:]
    /// Seconds of history kept (the longest rule window).
    public var history: TimeInterval

    /// - Parameter history: seconds of history to keep (at least one bucket).
    public init(history: TimeInterval = 3600) { self.history = max(TimeInterval(Self.bucketSeconds), history) }

    /// The bucket a time falls in.
    public static func bucket(of date: Date) -> Int {
        Int(floor(date.timeIntervalSince1970 / Double(bucketSeconds))) * bucketSeconds
    }

    /// The pairs with counts.
    public var pairs: [Pair] { buckets.keys.sorted() }

    /// Counts `n` outcomes for a pair at `at`.
    /// - Returns: the row to add to the store.
    @discardableResult
    public mutating func record(_ outcome: SignalOutcome, ip: String, provider: String, at: Date, count n: Int = 1) -> ReputationCount {
        let b = Self.bucket(of: at)
        buckets[Pair(ip: ip, provider: provider), default: [:]][b, default: [:]][outcome.kind, default: 0] += n
        return ReputationCount(ip: ip, provider: provider, bucket: b, kind: outcome.kind, count: n)
    }

    /// Adds stored rows (a new leader's start).
    public mutating func load(_ rows: [ReputationCount]) {
        for r in rows { buckets[Pair(ip: r.ip, provider: r.provider), default: [:]][r.bucket, default: [:]][r.kind, default: 0] += r.count }
    }

    /// The counts of a pair over the `window` seconds before `now`: every bucket that overlaps
    /// the window (so up to one bucket more than the window).
    public func counts(ip: String, provider: String, window: TimeInterval, now: Date) -> SignalCounts {
        var c = SignalCounts()
        guard let pair = buckets[Pair(ip: ip, provider: provider)] else { return c }
        let from = now.timeIntervalSince1970 - window
        for (b, kinds) in pair where Double(b + Self.bucketSeconds) > from && Double(b) <= now.timeIntervalSince1970 {
            for (k, n) in kinds { c.add(kind: k, n) }
        }
        return c
    }

    /// Forgets a pair's counts (after a lift, or when a rule's action ends: the old figures
    /// must not fire the rule again at once).
    public mutating func reset(ip: String, provider: String) {
        buckets[Pair(ip: ip, provider: provider)] = nil
    }

    /// Drops buckets older than `history` before `now`.
    public mutating func prune(now: Date) {
        let oldest = Self.bucket(of: now.addingTimeInterval(-history)) - Self.bucketSeconds
        for (pair, b) in buckets {
            let kept = b.filter { $0.key >= oldest }
            buckets[pair] = kept.isEmpty ? nil : kept
        }
    }

    /// The first of `rules` whose threshold a pair's counts pass at `now`.
    /// - Returns: the firing with its figures, nil when no rule fires.
    public func evaluate(_ rules: [ReputationRule], ip: String, provider: String, now: Date) -> RuleFiring? {
        for (i, rule) in rules.enumerated() {
            let c = counts(ip: ip, provider: provider, window: rule.window, now: now)
            let value = c.value(of: rule.signal)
            guard c.attempts >= rule.minVolume, c.attempts > 0 else { continue }
            if Double(value) / Double(c.attempts) > rule.above {
                return RuleFiring(ruleNumber: i + 1, rule: rule, count: value, attempts: c.attempts)
            }
        }
        return nil
    }
}

/// The re-warm ramp after a blocklist delisting (`reputation.rewarm`): the daily cap rises
/// linearly from `start` of the full cap to the full cap over `over` seconds.
public enum RewarmRamp {
    /// The reduced daily cap at `now`.
    /// - Parameters:
    ///   - full: the IP's full daily cap (deliveries per UTC day).
    ///   - since: when the IP resumed.
    ///   - now: the current time.
    ///   - settings: the ramp.
    /// - Returns: the cap (rounded down, at least 1), or nil when the ramp is over.
    public static func cap(full: Int, since: Date, now: Date, settings: RewarmSettings) -> Int? {
        let elapsed = max(0, now.timeIntervalSince(since))
        guard elapsed < settings.over else { return nil }
        let share = settings.start + (1 - settings.start) * elapsed / settings.over
        return max(1, Int((Double(full) * share).rounded(.down)))
    }
}
