import Foundation
import HatoTestKit
import Testing
@testable import HatoDelivery
@testable import HatoIO
@testable import SMTPCore

/// Dates written into messages (`Date:`, `Received:`, DSN fields) are checked against an
/// independent reader, Python's `email.utils.parsedate_to_datetime`, for every day of several
/// months and years: a one-digit day, month and year ends, leap days, and dates far from now.
@Suite("RFC 5322 dates")
struct DateFormatTests {
    /// Every day of 2026 and of the leap year 2024 at 00:00:30 and 23:59:59, and the first,
    /// ninth, tenth and last day of January, February and December of years from 1970 to 9999.
    static func instants() -> [Int] {
        var out: [Int] = []
        for year in [2024, 2026] {
            for month in 1...12 {
                for day in 1...RFC5322Date.daysInMonth(month, year: year) {
                    let midnight = RFC5322Date.daysSince1970(year: year, month: month, day: day) * 86_400
                    out += [midnight + 30, midnight + 86_399]
                }
            }
        }
        for year in [1970, 1999, 2000, 2038, 2100, 2400, 9999] {
            for month in [1, 2, 12] {
                for day in [1, 9, 10, RFC5322Date.daysInMonth(month, year: year)] {
                    let midnight = RFC5322Date.daysSince1970(year: year, month: month, day: day) * 86_400
                    out += [midnight, midnight + 43_261]
                }
            }
        }
        return out
    }

    @Test("Date:, Received: and DSN dates for every day of two years and a few far years parse back in Python to the same instant")
    func pythonReadsEveryDay() throws {
        let instants = Self.instants()
        var lines: [String] = []
        for t in instants {
            let date = Date(timeIntervalSince1970: TimeInterval(t))
            let fixed = SubmissionFixups.apply(to: Array("Subject: x\r\n\r\nbody\r\n".utf8), messageID: "<d@x>", date: date)
            let received = ReceivedHeader.build(heloName: "c.test", peer: SocketAddress(host: "192.0.2.7", port: 1), hostname: "mx.test",
                                                withESMTP: true, id: "ID", recipient: Mailbox(localPart: "bob", domain: "example.net"),
                                                date: date)
            // One JSON object per instant: the epoch, the message with the added Date field,
            // the Received field and a DSN date, each as written.
            let object: [String: Any] = ["t": t, "message": String(decoding: fixed.content, as: UTF8.self),
                                         "received": String(decoding: received, as: UTF8.self),
                                         "dsn": DeliveryStatusNotification.rfc5322Date(date)]
            lines.append(String(decoding: try JSONSerialization.data(withJSONObject: object), as: UTF8.self))
            // Our own strict reader agrees too.
            let value = try #require(headerFieldValue("Date", in: String(decoding: fixed.content, as: UTF8.self)))
            #expect(RFC5322Date.parse(value) == date, "\(value)")
        }
        let result = try PythonCheck.run(Self.pythonCheck, input: Array(lines.joined(separator: "\n").utf8))
        let report = try #require(result as? [String: Any])
        #expect(report["checked"] as? Int == instants.count * 3)
        #expect((report["failures"] as? [String] ?? ["?"]).isEmpty, "\(report["failures"] ?? "")")
    }

    @Test("the strict reader refuses what is not a date-time")
    func strictReader() {
        #expect(RFC5322Date.parse("Thu, 3 Dec 2026 21:33:22 +0000") == Date(timeIntervalSince1970: 1_796_333_602))
        #expect(RFC5322Date.parse("3 Dec 2026 21:33 -0130") == Date(timeIntervalSince1970: 1_796_333_580 + 5400))
        #expect(RFC5322Date.parse("Thu, 03 Dec 2026 21:33:22 +0000") != nil)
        #expect(RFC5322Date.parse("Fri, 3 Dec 2026 21:33:22 +0000") == nil, "wrong day name")
        #expect(RFC5322Date.parse("Thu, 31 Feb 2026 21:33:22 +0000") == nil, "no 31 February")
        #expect(RFC5322Date.parse("Sun, 29 Feb 2026 00:00:00 +0000") == nil, "2026 is no leap year")
        #expect(RFC5322Date.parse("Thu, 29 Feb 2024 00:00:00 +0000") != nil)
        #expect(RFC5322Date.parse("Thu, 3 Dec 2026 24:00:00 +0000") == nil)
        #expect(RFC5322Date.parse("Thu, 3 Dec 2026 21:33:22 GMT") == nil, "obsolete zone names are not written by us")
        #expect(RFC5322Date.parse("Thu, 3 Dec 2026 21:33:22 +0000\r") != nil)
        #expect(RFC5322Date.parse("Thu, 3 Dec 2026 21:33:22 +0000\r\nX") == nil)
        #expect(RFC5322Date.parse("Thu, 3 Dez 2026 21:33:22 +0000") == nil)
    }

    @Test("the lenient reader takes the obsolete forms found in reports: zone names, short years, wrong day names")
    func lenientReader() {
        let t = Date(timeIntervalSince1970: 1_110_304_800)  // 2005-03-08T18:00:00Z
        #expect(RFC5322Date.parseLenient("Thu, 8 Mar 2005 14:00:00 -0400") == t, "8 March 2005 was a Tuesday (RFC 5965 B.2)")
        #expect(RFC5322Date.parse("Thu, 8 Mar 2005 14:00:00 -0400") == nil)
        #expect(RFC5322Date.parseLenient("Tue, 8 Mar 2005 13:00:00 EST") == t)
        #expect(RFC5322Date.parseLenient("8 Mar 05 18:00:00 GMT") == t)
        #expect(RFC5322Date.parseLenient("Tue, 8 Mar 2005 18:00:00 +0000 (UTC)") == t)
        #expect(RFC5322Date.parseLenient("Tue, 8 Mar 2005 18:00:00 A") == t, "military zones read as -0000")
        #expect(RFC5322Date.parseLenient("Tue, 31 Feb 2005 18:00:00 GMT") == nil)
        #expect(RFC5322Date.parseLenient("yesterday") == nil)
    }

    @Test("format and parse agree across month, year and century boundaries")
    func roundTrip() {
        for t in Self.instants() {
            let date = Date(timeIntervalSince1970: TimeInterval(t))
            #expect(RFC5322Date.parse(RFC5322Date.format(date)) == date)
        }
        #expect(RFC5322Date.format(Date(timeIntervalSince1970: 1_796_333_602)) == "Thu, 3 Dec 2026 21:33:22 +0000")
        #expect(RFC5322Date.format(Date(timeIntervalSince1970: 1_796_333_602)).count == 30)
        #expect(RFC5322Date.format(Date(timeIntervalSince1970: 1_797_197_602)).count == 31)
    }

    static let pythonCheck = """
        import email, email.utils, json, sys
        from email import policy
        failures = []
        checked = 0
        for line in open(sys.argv[1]):
            o = json.loads(line)
            t = o['t']
            msg = email.message_from_string(o['message'], policy=policy.compat32)
            values = {'Date': msg['Date'],
                      'Received': ' '.join(o['received'].replace('\\r\\n', '').split(';')[-1].split()),
                      'DSN': o['dsn']}
            for name, value in values.items():
                checked += 1
                try:
                    d = email.utils.parsedate_to_datetime(value)
                    if d.tzinfo is None or int(d.timestamp()) != t:
                        failures.append('%s %r -> %s, want %d' % (name, value, d.isoformat(), t))
                except Exception as e:
                    failures.append('%s %r: %s' % (name, value, e))
        json.dump({'checked': checked, 'failures': failures[:20]}, open(sys.argv[2], 'w'))
        """
}
