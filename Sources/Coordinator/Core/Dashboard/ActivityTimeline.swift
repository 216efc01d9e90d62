import Foundation
import HatoSupport

/// Per-minute counts of what happened to mail over the last 24 hours, for the dashboard's
/// chart: messages accepted, recipients delivered, deferred and bounced (failed or expired).
///
/// A pure value: a ring of 1440 one-minute buckets keyed by the minute since 1970. Fed by the
/// `DeliveryReporter` as it processes the queue's events (so, with several coordinators, by the
/// leader that reports them); kept in memory per coordinator process: a restart starts empty.
public struct ActivityTimeline: Sendable, Equatable {
    /// What is counted.
    public enum Kind: Int, Sendable, CaseIterable, Codable {
        case accepted, delivered, deferred, bounced
    }

    /// One bucket of the series.
    public struct Point: Sendable, Equatable, Codable {
        /// Start of the bucket, seconds since 1970.
        public var at: Double
        /// Messages accepted.
        public var accepted: Int
        /// Recipients delivered.
        public var delivered: Int
        /// Recipient deferrals.
        public var deferred: Int
        /// Recipients bounced (failed or expired).
        public var bounced: Int
    }

    /// Minutes kept (24 hours).
    public static let minutes = 1440
    private var minute = [Int](repeating: -1, count: ActivityTimeline.minutes)
    private var counts = [[Int]](repeating: [0, 0, 0, 0], count: ActivityTimeline.minutes)

    /// An empty timeline.
    public init() {}

    /// Counts `n` events of `kind` at `at`; ignored when older than 24 hours before the newest
    /// minute already in that bucket.
    public mutating func record(_ kind: Kind, at: Date, count n: Int = 1) {
        let m = Int(floor(at.timeIntervalSince1970 / 60))
        let slot = ((m % Self.minutes) + Self.minutes) % Self.minutes
        if minute[slot] != m {
            guard minute[slot] < m else { return }  // older than the day kept
            minute[slot] = m
            counts[slot] = [0, 0, 0, 0]
        }
        counts[slot][kind.rawValue] += n
    }

    /// The series ending with the minute of `now`, oldest first.
    /// - Parameters:
    ///   - span: seconds covered (60…86,400).
    ///   - bucket: seconds per point (a multiple of 60).
    ///   - now: the current time.
    public func series(span: TimeInterval, bucket: TimeInterval, now: Date) -> [Point] {
        let perPoint = max(1, Int(bucket / 60))
        let total = min(Self.minutes, max(1, Int(span / 60)))
        let points = max(1, total / perPoint)
        let last = Int(floor(now.timeIntervalSince1970 / 60))
        let first = last - points * perPoint + 1
        var out: [Point] = []
        out.reserveCapacity(points)
        for p in 0..<points {
            let start = first + p * perPoint
            var sum = [0, 0, 0, 0]
            for m in start..<(start + perPoint) {
                let slot = ((m % Self.minutes) + Self.minutes) % Self.minutes
                guard minute[slot] == m else { continue }
                for k in 0..<4 { sum[k] += counts[slot][k] }
            }
            out.append(Point(at: Double(start * 60), accepted: sum[0], delivered: sum[1], deferred: sum[2], bounced: sum[3]))
        }
        return out
    }
}

/// The cluster's `ActivityTimeline` and one per tenant (issue 16's tenants see their own on
/// the dashboard), behind a lock, shared by the reporter (writer) and the dashboard.
public final class ActivityRecorder: Sendable {
    private struct Timelines: Sendable {
        var all = ActivityTimeline()
        var tenants: [String: ActivityTimeline] = [:]
    }
    private let timelines = Locked(Timelines())
    /// The most tenants with a timeline of their own (about 46 KB each); more are not counted
    /// per tenant (the cluster's timeline still counts them).
    public let maxTenants: Int

    /// An empty recorder.
    /// - Parameter maxTenants: tenants tracked at most (default 2000).
    public init(maxTenants: Int = 2000) { self.maxTenants = maxTenants }

    /// Counts one event (see `ActivityTimeline.record`), also in its tenant's timeline.
    public func record(_ kind: ActivityTimeline.Kind, at: Date, tenant: String? = nil) {
        let limit = maxTenants
        timelines.withLock {
            $0.all.record(kind, at: at)
            if let tenant, $0.tenants[tenant] != nil || $0.tenants.count < limit { $0.tenants[tenant, default: ActivityTimeline()].record(kind, at: at) }
        }
    }

    /// The series of the cluster, or of `tenant` (see `ActivityTimeline.series`).
    public func series(span: TimeInterval, bucket: TimeInterval, now: Date, tenant: String? = nil) -> [ActivityTimeline.Point] {
        timelines.withLock { t in
            guard let tenant else { return t.all.series(span: span, bucket: bucket, now: now) }
            return (t.tenants[tenant] ?? ActivityTimeline()).series(span: span, bucket: bucket, now: now)
        }
    }
}
