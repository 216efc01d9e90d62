import Foundation
import HatoTestKit
import Testing
@testable import HatoConfig
@testable import HatoCoordinator
@testable import HatoSupport

/// An FCrDNS hold under `reputation.require_fcrdns` is an automatic action: the leader records
/// it as a `paused` event and its release as `resumed` (operator `hato`, target `ip A`, the
/// reason in the note), for the delivery log and webhooks (issue 18). A hold a restart
/// re-applies (no check result) records nothing again.
@Suite("FCrDNS holds are events")
struct FCrDNSEventTests {
    @Test("a check's hold → paused with the reason; a verdict change while held → nothing; fixed → resumed; a re-applied hold → nothing",
          arguments: StoreKind.allCases)
    func events(kind: StoreKind) throws {
        let f = try QueueControlFixture(kind: kind)
        defer { f.cleanup() }
        func operatorEvents() throws -> [QueueEvent] {
            try f.store.pendingEvents(limit: 100).filter { $0.kind == .paused || $0.kind == .resumed }
        }
        func change(_ event: String) -> BlocklistWatch.Change {
            BlocklistWatch.Change(at: f.clock.now(), ip: "127.0.0.12", zone: "fcrdns", event: event, codes: [], reason: nil)
        }
        f.hub.fcrdnsChanged(ip: "127.0.0.12", holdReason: "FCrDNS: no PTR record", history: change("fcrdns_failed"))
        var events = try operatorEvents()
        #expect(events.map(\.kind) == [.paused])
        #expect(events.first?.by == "hato" && events.first?.detail == "ip 127.0.0.12")
        #expect(events.first?.note == "reputation.require_fcrdns: FCrDNS: no PTR record")
        // Still held for another reason: history only, no second event.
        f.hub.fcrdnsChanged(ip: "127.0.0.12", holdReason: "FCrDNS: PTR does not resolve back", history: change("fcrdns_failed"))
        #expect(try operatorEvents().count == 1)
        f.hub.fcrdnsChanged(ip: "127.0.0.12", holdReason: nil, history: change("fcrdns_ok"))
        events = try operatorEvents()
        #expect(events.map(\.kind) == [.paused, .resumed])
        #expect(events.last?.note?.hasPrefix("reputation.require_fcrdns: FCrDNS confirmed again") == true)
        // A hold re-applied from the stored state at start (no history) is no new event.
        f.hub.fcrdnsChanged(ip: "127.0.0.12", holdReason: "FCrDNS: no PTR record", history: nil)
        #expect(try operatorEvents().count == 2)
    }
}
