import ClusterProtocol
import Foundation
import HatoSupport

/// TLS-RPT counts (RFC 8460 §4) aggregated on the coordinator as a value: per UTC day, policy
/// domain and policy type (`sts`, `tlsa`), the successful sessions and the failures by result
/// type. Fed from the `tlsReports` of the nodes' results; bounded (the most recent
/// `maxDays` days, at most `maxRowsPerDay` policy domains a day; further domains that day are
/// dropped and counted in `dropped`).
public struct TLSReportTally: Sendable, Equatable {
    /// One row: a day's counts for one policy.
    public struct Row: Codable, Sendable, Equatable {
        /// The UTC day, `YYYY-MM-DD`.
        public var day: String
        /// The policy domain (the recipient domain for MTA-STS, the MX host for DANE).
        public var policyDomain: String
        /// `sts` or `tlsa`.
        public var policyType: String
        /// Sessions that met the policy.
        public var successes: Int
        /// Failures by RFC 8460 §4.3 result type.
        public var failures: [String: Int]
        /// The sum of `failures`.
        public var failureCount: Int { failures.values.reduce(0, +) }
        /// The MX hosts the sessions were with (at most 10, sorted).
        public var mxHosts: [String]
    }

    /// Days kept.
    public static let maxDays = 31
    /// Policy domains kept per day.
    public static let maxRowsPerDay = 10_000

    /// Rows by `day|type|domain`.
    public private(set) var rows: [String: Row] = [:]
    /// Entries dropped because a day was full.
    public private(set) var dropped = 0

    /// An empty tally.
    public init() {}

    /// The UTC day of `date`, `YYYY-MM-DD`.
    public static func day(_ date: Date) -> String {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC") ?? .current
        let c = calendar.dateComponents([.year, .month, .day], from: date)
        return String(format: "%04d-%02d-%02d", c.year ?? 0, c.month ?? 0, c.day ?? 0)
    }

    /// Counts `entries` on the day of `at`; days older than `maxDays` are dropped.
    public mutating func add(_ entries: [TLSReportEntry], at: Date) {
        guard !entries.isEmpty else { return }
        let day = Self.day(at)
        for e in entries {
            let key = "\(day)|\(e.policyType)|\(e.policyDomain)"
            var row = rows[key] ?? Row(day: day, policyDomain: e.policyDomain, policyType: e.policyType, successes: 0, failures: [:], mxHosts: [])
            if rows[key] == nil && rows.values.lazy.filter({ $0.day == day }).count >= Self.maxRowsPerDay {
                dropped += 1
                continue
            }
            if e.isSuccess { row.successes += 1 } else { row.failures[e.result, default: 0] += 1 }
            if let mx = e.mxHost, !row.mxHosts.contains(mx), row.mxHosts.count < 10 {
                row.mxHosts.append(mx)
                row.mxHosts.sort()
            }
            rows[key] = row
        }
        let days = Set(rows.values.map(\.day)).sorted()
        if days.count > Self.maxDays {
            let keep = Set(days.suffix(Self.maxDays))
            rows = rows.filter { keep.contains($0.value.day) }
        }
    }

    /// The rows, newest day first, then by policy domain and type; only `day` when given, only
    /// `domain` (lowercase) when given.
    public func report(day: String? = nil, domain: String? = nil) -> [Row] {
        rows.values.filter { (day == nil || $0.day == day) && (domain == nil || $0.policyDomain == domain) }
            .sorted { ($0.day, $1.policyDomain, $1.policyType) > ($1.day, $0.policyDomain, $0.policyType) }
    }
}

/// The coordinator's shared `TLSReportTally` (in memory: counts since this coordinator started).
public final class TLSReportBook: Sendable {
    private let tally = Locked(TLSReportTally())
    private let clock: any WallClock

    /// A book on `clock` (for the day of each result).
    public init(clock: any WallClock = SystemClock()) { self.clock = clock }

    /// Counts the TLS-RPT entries of a node's result.
    public func note(_ result: ResultMessage) {
        let entries = result.outcomes.flatMap { $0.tlsReports ?? [] }
        guard !entries.isEmpty else { return }
        let now = clock.now()
        tally.withLock { $0.add(entries, at: now) }
    }

    /// The rows (see `TLSReportTally.report`).
    public func report(day: String? = nil, domain: String? = nil) -> [TLSReportTally.Row] {
        tally.withLock { $0.report(day: day, domain: domain) }
    }
}
