import Foundation
import Testing
@testable import HatoCoordinator
@testable import HatoDNS

/// The blocklist watch as a value: verdicts in, listing/delisting events out; unknowns change nothing.
@Suite struct BlocklistWatchTests {
    let t0 = Date(timeIntervalSince1970: 1_800_000_000)

    @Test func aListingIsAnEventOnceAndItsDelistingClearsTheIP() {
        var w = BlocklistWatch()
        let e1 = w.record(.listed(codes: ["127.0.0.2"], reason: "https://example.test/why"), ip: "192.0.2.10", zone: "zen.test", now: t0)
        #expect(e1 == [.listed(ip: "192.0.2.10", listing: .init(zone: "zen.test", codes: ["127.0.0.2"], reason: "https://example.test/why", since: t0),
                               firstListing: true)])
        #expect(w.isListed("192.0.2.10"))
        #expect(w.holdReason("192.0.2.10") == "listed on zen.test (127.0.0.2: https://example.test/why)")
        // Still listed an hour later: no new event, `since` kept, codes refreshed.
        #expect(w.record(.listed(codes: ["127.0.0.3"], reason: nil), ip: "192.0.2.10", zone: "zen.test", now: t0 + 3600).isEmpty)
        #expect(w.listings["192.0.2.10"]?["zen.test"]?.since == t0)
        #expect(w.listings["192.0.2.10"]?["zen.test"]?.codes == ["127.0.0.3"])
        let e2 = w.record(.notListed, ip: "192.0.2.10", zone: "zen.test", now: t0 + 7200)
        #expect(e2 == [.delisted(ip: "192.0.2.10", zone: "zen.test", seconds: 7200, clear: true)])
        #expect(!w.isListed("192.0.2.10") && w.holdReason("192.0.2.10") == nil)
        #expect(w.history.map(\.event) == ["listed", "delisted"])
    }

    @Test func anUnansweredLookupNeitherListsNorDelists() {
        var w = BlocklistWatch()
        #expect(w.record(.unknown("timeout"), ip: "192.0.2.11", zone: "zen.test", now: t0).isEmpty)
        #expect(!w.isListed("192.0.2.11"))
        #expect(w.unanswered["192.0.2.11"]?["zen.test"] == "timeout")
        _ = w.record(.listed(codes: ["127.0.0.2"], reason: nil), ip: "192.0.2.11", zone: "zen.test", now: t0)
        #expect(w.record(.unknown("SERVFAIL"), ip: "192.0.2.11", zone: "zen.test", now: t0 + 60).isEmpty)
        #expect(w.isListed("192.0.2.11"), "a failed lookup does not resume a listed IP")
        #expect(w.unanswered["192.0.2.11"]?["zen.test"] == "SERVFAIL")
        _ = w.record(.listed(codes: ["127.0.0.2"], reason: nil), ip: "192.0.2.11", zone: "zen.test", now: t0 + 120)
        #expect(w.unanswered["192.0.2.11"]?["zen.test"] == nil)
    }

    @Test func anIPOnTwoZonesStaysHeldUntilBothDelist() {
        var w = BlocklistWatch()
        _ = w.record(.listed(codes: ["127.0.0.2"], reason: nil), ip: "192.0.2.12", zone: "a.test", now: t0)
        let second = w.record(.listed(codes: ["127.0.0.4"], reason: "r"), ip: "192.0.2.12", zone: "b.test", now: t0 + 1)
        #expect(second.count == 1)
        if case .listed(_, _, let first) = second[0] { #expect(!first) }
        #expect(w.holdReason("192.0.2.12") == "listed on a.test (127.0.0.2), b.test (127.0.0.4: r)")
        #expect(w.record(.notListed, ip: "192.0.2.12", zone: "a.test", now: t0 + 10) == [.delisted(ip: "192.0.2.12", zone: "a.test", seconds: 10, clear: false)])
        #expect(w.isListed("192.0.2.12"))
        #expect(w.record(.notListed, ip: "192.0.2.12", zone: "b.test", now: t0 + 20) == [.delisted(ip: "192.0.2.12", zone: "b.test", seconds: 19, clear: true)])
        // A not-listed answer for a zone it was never on is no event.
        #expect(w.record(.notListed, ip: "192.0.2.12", zone: "c.test", now: t0 + 30).isEmpty)
    }

    @Test func aReloadThatDropsAZoneOrAnIPClearsTheirListings() {
        var w = BlocklistWatch()
        _ = w.record(.listed(codes: ["127.0.0.2"], reason: nil), ip: "192.0.2.13", zone: "old.test", now: t0)
        _ = w.record(.listed(codes: ["127.0.0.2"], reason: nil), ip: "192.0.2.14", zone: "kept.test", now: t0)
        _ = w.record(.listed(codes: ["127.0.0.2"], reason: nil), ip: "192.0.2.15", zone: "kept.test", now: t0)
        let cleared = w.keep(ips: ["192.0.2.13", "192.0.2.14"], zones: ["kept.test"])
        #expect(cleared == ["192.0.2.13"])
        #expect(!w.isListed("192.0.2.13") && w.isListed("192.0.2.14") && !w.isListed("192.0.2.15"))
    }

    @Test func historyIsBounded() {
        var w = BlocklistWatch()
        for i in 0..<(BlocklistWatch.historyLimit + 10) {
            _ = w.record(i % 2 == 0 ? .listed(codes: ["127.0.0.2"], reason: nil) : .notListed, ip: "192.0.2.16", zone: "z.test",
                         now: t0 + Double(i))
        }
        #expect(w.history.count == BlocklistWatch.historyLimit)
        #expect(w.history.last?.at == t0 + Double(BlocklistWatch.historyLimit + 9))
    }
}
