import Foundation

/// The RFC 5322 §3.3 `date-time` form of message header fields (`Date:`, the date of a
/// `Received:` field, the dates of an RFC 3464 DSN), written and read without a locale,
/// a time zone database or a calendar object: the text is the same on every machine.
public enum RFC5322Date {
    private static let dayNames = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    private static let monthNames = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    /// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z in seconds since 1970.
    private static let lowerBound = -62_135_596_800.0, upperBound = 253_402_300_799.0

    /// RFC 5322 §3.3 `date-time` in UTC, e.g. `Tue, 14 Nov 2023 12:00:00 +0000` or
    /// `Thu, 3 Dec 2026 21:33:22 +0000`: the day of the month has one or two digits, so the
    /// text is 30 or 31 characters long for years 1000–9999 (parse it up to CRLF, never by width).
    /// Fractions of a second are dropped; times outside years 1–9999 are clamped; NaN is 1970.
    /// - Parameter date: the instant to format.
    /// - Returns: the date text.
    public static func format(_ date: Date) -> String {
        var t = date.timeIntervalSince1970
        if !t.isFinite { t = t.isNaN ? 0 : (t > 0 ? upperBound : lowerBound) }
        t = Swift.min(Swift.max(t.rounded(.down), lowerBound), upperBound)
        let seconds = Int(t)
        let days = seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400
        let secondOfDay = seconds - days * 86_400
        let (year, month, day) = civil(daysSince1970: days)
        let weekday = ((days % 7) + 11) % 7  // 1970-01-01 was a Thursday (index 4)
        func two(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }
        let yearText = String(repeating: "0", count: Swift.max(0, 4 - String(year).count)) + String(year)
        return "\(dayNames[weekday]), \(day) \(monthNames[month - 1]) \(yearText) "
            + "\(two(secondOfDay / 3600)):\(two(secondOfDay % 3600 / 60)):\(two(secondOfDay % 60)) +0000"
    }

    /// Parses an RFC 5322 §3.3 `date-time`: `[day-name ","] day month year hour ":" minute
    /// [":" second] zone` with `day` of one or two digits, a four-digit (or longer) year from
    /// 1900, and a numeric zone `+hhmm`/`-hhmm`. Runs of white space between the parts are
    /// accepted (folding white space, §3.2.2); comments and the obsolete zone names (§4.3) are not.
    /// - Parameter text: the field value, without the CRLF.
    /// - Returns: the instant, or nil when the text is not a valid date-time: a malformed
    ///   part, a day that does not exist in that month, an hour over 23, a minute over 59, a
    ///   second over 60 (60 is a leap second, read as 59), or a day-name that does not match
    ///   the date.
    public static func parse(_ text: String) -> Date? { parse(text, lenient: false) }

    /// Parses a date-time as received from others (reports, returned messages): besides the
    /// strict form, the obsolete syntax of RFC 5322 §4.3 — two- and three-digit years, the zone
    /// names `UT`, `GMT`, `EST`/`EDT`, `CST`/`CDT`, `MST`/`MDT`, `PST`/`PDT` (military zones and
    /// unknown names read as `-0000`) — and a day-name that does not match the date (common in
    /// the wild, even in RFC 5965's examples) are accepted.
    /// - Returns: the instant, or nil when even the lenient reading fails.
    public static func parseLenient(_ text: String) -> Date? { parse(text, lenient: true) }

    private static let obsoleteZones: [String: Int] = ["UT": 0, "GMT": 0, "Z": 0, "EST": -500, "EDT": -400, "CST": -600, "CDT": -500,
                                                       "MST": -700, "MDT": -600, "PST": -800, "PDT": -700]

    private static func parse(_ text: String, lenient: Bool) -> Date? {
        var parts = text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" || $0 == "\n" }).map(String.init)
        var dayName: String?
        if let first = parts.first, first.hasSuffix(",") {
            dayName = String(first.dropLast())
            parts.removeFirst()
        } else if parts.count > 1, parts[1] == "," {
            dayName = parts[0]
            parts.removeFirst(2)
        }
        if let dayName, !dayNames.contains(dayName), !lenient { return nil }
        if lenient && parts.count > 5 { parts = Array(parts.prefix(5)) }  // a trailing comment such as "(UTC)"
        guard parts.count == 5 else { return nil }
        func number(_ s: String, digits: ClosedRange<Int>) -> Int? {
            guard digits.contains(s.utf8.count), s.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
            return Int(s)
        }
        guard let day = number(parts[0], digits: 1...2), let monthIndex = monthNames.firstIndex(of: parts[1]),
              var year = number(parts[2], digits: lenient ? 2...9 : 4...9) else { return nil }
        if lenient && parts[2].utf8.count == 2 { year += year < 50 ? 2000 : 1900 }
        if lenient && parts[2].utf8.count == 3 { year += 1900 }
        guard year >= 1900 else { return nil }
        let clock = parts[3].split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard clock.count == 2 || clock.count == 3,
              let hour = number(clock[0], digits: 2...2), let minute = number(clock[1], digits: 2...2),
              let second = clock.count == 3 ? number(clock[2], digits: 2...2) : 0,
              hour <= 23, minute <= 59, second <= 60 else { return nil }
        var zone = parts[4]
        if lenient, !(zone.first == "+" || zone.first == "-") {
            guard zone.utf8.allSatisfy({ ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) }), zone.utf8.count <= 5 else { return nil }
            let hhmm = obsoleteZones[zone.uppercased()] ?? 0
            zone = (hhmm < 0 ? "-" : "+") + String(format: "%04d", abs(hhmm))
        }
        guard zone.utf8.count == 5, let sign = zone.first, sign == "+" || sign == "-",
              let zoneHours = number(String(zone.dropFirst().prefix(2)), digits: 2...2),
              let zoneMinutes = number(String(zone.suffix(2)), digits: 2...2), zoneMinutes <= 59 else { return nil }
        guard day >= 1, day <= daysInMonth(monthIndex + 1, year: year) else { return nil }
        let days = daysSince1970(year: year, month: monthIndex + 1, day: day)
        if let dayName, dayNames[((days % 7) + 11) % 7] != dayName, !lenient { return nil }
        let offset = (zoneHours * 3600 + zoneMinutes * 60) * (sign == "-" ? -1 : 1)
        let seconds = days * 86_400 + hour * 3600 + minute * 60 + Swift.min(second, 59) - offset
        return Date(timeIntervalSince1970: TimeInterval(seconds))
    }

    /// The number of days of `month` (1–12) in the proleptic Gregorian `year`.
    static func daysInMonth(_ month: Int, year: Int) -> Int {
        switch month {
        case 2: return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// Days since 1970-01-01 of an ISO 8601 calendar date `YYYY-MM-DD` (four-digit year from
    /// 1900, two-digit month and day), or nil when the text is not one or the day does not exist.
    package static func daysSince1970(isoDate text: String) -> Int? {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0].utf8.count == 4, parts[1].utf8.count == 2, parts[2].utf8.count == 2,
              parts.allSatisfy({ $0.utf8.allSatisfy { $0 >= 0x30 && $0 <= 0x39 } }),
              let year = Int(parts[0]), let month = Int(parts[1]), let day = Int(parts[2]),
              year >= 1900, (1...12).contains(month), day >= 1, day <= daysInMonth(month, year: year) else { return nil }
        return daysSince1970(year: year, month: month, day: day)
    }

    /// The ISO 8601 calendar date `YYYY-MM-DD` of a day since 1970-01-01.
    static func isoDate(daysSince1970 days: Int) -> String {
        let (y, m, d) = civil(daysSince1970: days)
        func two(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }
        return "\(y)-\(two(m))-\(two(d))"
    }

    /// Civil date from days since 1970-01-01 (Howard Hinnant's `civil_from_days`).
    static func civil(daysSince1970 days: Int) -> (year: Int, month: Int, day: Int) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        return (yoe + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }

    /// Days since 1970-01-01 of a civil date (Howard Hinnant's `days_from_civil`).
    static func daysSince1970(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }
}
