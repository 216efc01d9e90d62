import Foundation

/// The UTC hour, day and month that hold one instant, as the keys of `tenant_usage` rows
/// (both stores): `h:<hours since 1970>`, `d:<days since 1970>`, `m:<yyyymm>`.
///
/// A value: the stores compute it and the tests check it without a database.
struct TenantWindows: Sendable, Equatable {
    /// One window: its `tenant_usage` key and when it ends (seconds since 1970).
    struct Window: Sendable, Equatable {
        /// `hour`, `day` or `month` (`QuotaDecision.overLimit`'s `window`).
        var name: String
        /// The `tenant_usage.time_window` key.
        var key: String
        /// When the window ends, seconds since 1970.
        var end: Double
    }

    let hour: Window
    let day: Window
    let month: Window
    /// When the month holding the instant began, seconds since 1970 (`purgeTenantData`).
    let monthStart: Double

    /// The three in checking order: hour, day, month.
    var all: [Window] { [hour, day, month] }

    /// The windows holding `date`.
    init(_ date: Date) {
        let t = date.timeIntervalSince1970
        let h = Int64((t / 3600).rounded(.down))
        let d = Int64((t / 86_400).rounded(.down))
        hour = Window(name: "hour", key: "h:\(h)", end: Double(h + 1) * 3600)
        day = Window(name: "day", key: "d:\(d)", end: Double(d + 1) * 86_400)
        let c = Self.calendar.dateComponents([.year, .month], from: date)
        let year = c.year ?? 1970, month = c.month ?? 1
        let start = Self.calendar.date(from: DateComponents(year: year, month: month, day: 1)) ?? date
        let next = Self.calendar.date(byAdding: .month, value: 1, to: start) ?? date
        monthStart = start.timeIntervalSince1970
        self.month = Window(name: "month", key: String(format: "m:%04d%02d", year, month), end: next.timeIntervalSince1970)
    }

    /// The limit of `window` in `limits` (nil: unlimited).
    static func limit(_ window: Window, in limits: TenantLimits) -> Int? {
        switch window.name {
        case "hour": return limits.messagesPerHour
        case "day": return limits.messagesPerDay
        default: return limits.messagesPerMonth
        }
    }

    /// The first window (hour, then day, then month) where `counts` (by key) plus `messages`
    /// would pass its limit, as a refusal; nil when every window has room.
    func decision(counts: [String: Int], adding messages: Int, limits: TenantLimits, now: Date) -> QuotaDecision? {
        for w in all {
            guard let limit = Self.limit(w, in: limits) else { continue }
            if (counts[w.key] ?? 0) + messages > limit {
                let wait = Int((w.end - now.timeIntervalSince1970).rounded(.up))
                return .overLimit(window: w.name, limit: limit, retryAfter: max(1, wait))
            }
        }
        return nil
    }

    /// A Gregorian calendar in UTC.
    static let calendar: Calendar = {
        var c = Calendar(identifier: .gregorian)
        c.timeZone = TimeZone(identifier: "UTC")!
        return c
    }()

    /// The month key (`m:yyyymm`) below which whole months (and their hours and days) have ended
    /// before the current month: the current month's own key.
    var purgeMonthKey: String { month.key }

    /// The kinds of queue events kept in the tenant event log (the events API's kinds): the
    /// message's and its recipients' delivery states and the operator's holds and deletions;
    /// not `dsn-sent`, `flushed` or the operator's pauses.
    static let eventKinds = ["received", "delivered", "deferred", "failed", "expired", "suppressed", "held", "released", "deleted", "leased", "complained"]
}
