import Foundation
import Testing
@testable import HatoCoordinator

@Suite("Dashboard sessions and activity (pure values, manual time)")
struct DashboardSessionTests {
    let t0 = Date(timeIntervalSince1970: 1_800_000_000)

    @Test("a session lives while used, ends after 30 idle minutes, and after 12 hours however active")
    func expiry() {
        var table = DashboardSessionTable(idleTimeout: 1800, absoluteLifetime: 43_200)
        _ = table.create(.operator(name: "ops"), id: "a", csrfToken: "c", now: t0)
        do { let found = table.use("a", now: t0 + 1799); #expect(found?.principal == .operator(name: "ops")) }
        // Used at 1799 s: idle time starts again.
        do { let found = table.use("a", now: t0 + 3500); #expect(found != nil) }
        do { let found = table.use("a", now: t0 + 3500 + 1800); #expect(found == nil, "idle for 30 minutes") }
        do { let found = table.use("a", now: t0 + 3500); #expect(found == nil, "an expired session is gone, not revived") }

        _ = table.create(.operator(name: "ops"), id: "b", csrfToken: "c", now: t0)
        var t = t0
        while t + 1000 < t0 + 43_200 { t += 1000; let found = table.use("b", now: t); #expect(found != nil) }
        do { let found = table.use("b", now: t0 + 43_200); #expect(found == nil, "absolute lifetime reached") }
    }

    @Test("logout removes the session; unknown ids find nothing; the table keeps at most its capacity")
    func logoutAndCapacity() {
        var table = DashboardSessionTable(capacity: 2)
        _ = table.create(.operator(name: "a"), id: "1", csrfToken: "x", now: t0)
        _ = table.create(.operator(name: "b"), id: "2", csrfToken: "x", now: t0 + 1)
        do { let found = table.use("1", now: t0 + 2); #expect(found != nil) }
        _ = table.create(.operator(name: "c"), id: "3", csrfToken: "x", now: t0 + 3)
        #expect(table.count == 2)
        do { let found = table.use("2", now: t0 + 4); #expect(found == nil, "the least recently used was evicted") }
        let removed = table.remove("1")
        #expect(removed)
        do { let found = table.use("1", now: t0 + 5); #expect(found == nil) }
        do { let found = table.use("nope", now: t0 + 5); #expect(found == nil) }
        let again = table.remove("1")
        #expect(!again)
    }

    @Test("CSRF tokens match only exactly")
    func csrf() {
        var table = DashboardSessionTable()
        let s = table.create(.operator(name: "a"), id: "1", csrfToken: "0123abcd", now: t0)
        #expect(DashboardSessionTable.csrfMatches(s, "0123abcd"))
        #expect(!DashboardSessionTable.csrfMatches(s, "0123abce"))
        #expect(!DashboardSessionTable.csrfMatches(s, "0123abc"))
        #expect(!DashboardSessionTable.csrfMatches(s, ""))
        #expect(!DashboardSessionTable.csrfMatches(s, nil))
    }

    @Test("the activity timeline counts per minute, sums buckets, and forgets what is older than a day")
    func timeline() {
        var tl = ActivityTimeline()
        let now = t0
        tl.record(.accepted, at: now, count: 50)
        tl.record(.delivered, at: now - 30)
        tl.record(.delivered, at: now - 90)
        tl.record(.bounced, at: now - 7200)
        tl.record(.deferred, at: now - 86_400 * 2)  // older than the ring: lands in a slot, replaced below
        let hour = tl.series(span: 3600, bucket: 60, now: now)
        #expect(hour.count == 60)
        #expect(hour.reduce(0) { $0 + $1.accepted } == 50)
        #expect(hour.reduce(0) { $0 + $1.delivered } == 2)
        #expect(hour.reduce(0) { $0 + $1.bounced } == 0)
        #expect(hour.last?.at == floor(now.timeIntervalSince1970 / 60) * 60)
        let day = tl.series(span: 86_400, bucket: 600, now: now)
        #expect(day.count == 144)
        #expect(day.reduce(0) { $0 + $1.bounced } == 1)
        #expect(day.reduce(0) { $0 + $1.deferred } == 0, "two days old: outside the series")
        // A minute a day later reuses the slot and starts from zero.
        tl.record(.accepted, at: now + 86_400)
        #expect(tl.series(span: 3600, bucket: 60, now: now + 86_400).reduce(0) { $0 + $1.accepted } == 1)
        // An event older than the slot's minute is dropped.
        tl.record(.accepted, at: now)
        #expect(tl.series(span: 3600, bucket: 60, now: now + 86_400).reduce(0) { $0 + $1.accepted } == 1)
    }
}
