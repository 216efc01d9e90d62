import Foundation
import Testing
@testable import HatoCoordinator
import HatoSupport
import HatoTestKit

/// The leadership value, driven with a manual monotonic clock: no store, no sockets, no sleeps.
@Suite struct LeadershipTests {
    let t0 = ContinuousClock.now
    let timing = Leadership.Timing(lease: .seconds(9))  // renew every 3 s, retry every 1 s, margin 0.9 s

    @Test func aFirstAcquireMakesTheLeader() {
        var l = Leadership(id: "coord-1", timing: timing, now: t0)
        #expect(l.tick(now: t0) == [.acquire, .wake(after: .seconds(1))])
        let out = l.answered(.acquired(term: 4), sentAt: t0, now: t0 + .milliseconds(20))
        #expect(out.contains(.becomeLeader(term: 4)))
        #expect(out.contains(.leaderChanged(leader: "coord-1", term: 4)))
        #expect(l.role == .leader(term: 4))
        #expect(l.term(at: t0 + .seconds(8)) == 4)
        // Authority ends at sentAt + lease − margin, measured from the send.
        #expect(l.term(at: t0 + .milliseconds(8_099)) == 4)
        #expect(l.term(at: t0 + .milliseconds(8_100)) == nil)
    }

    @Test func theLeaderRenewsOnItsCadenceAndEachRenewalExtendsFromItsSend() {
        var l = Leadership(id: "coord-1", timing: timing, now: t0)
        _ = l.tick(now: t0)
        _ = l.answered(.acquired(term: 1), sentAt: t0, now: t0)
        #expect(l.tick(now: t0 + .seconds(2)) == [.wake(after: .seconds(1))])
        let due = t0 + .seconds(3)
        #expect(l.tick(now: due).first == .renew(term: 1))
        // A second tick while the renewal is out asks nothing more.
        #expect(!l.tick(now: due + .milliseconds(500)).contains(.renew(term: 1)))
        let out = l.answered(.renewed, sentAt: due, now: due + .seconds(1))
        #expect(out == [.wake(after: .seconds(2))])
        #expect(l.leaderUntil == due + .milliseconds(8_100))
        #expect(l.term(at: due + .seconds(8)) == 1)
    }

    @Test func aRenewalThatIsNotAnsweredInTimeStepsTheLeaderDownOnItsOwnClock() {
        var l = Leadership(id: "coord-1", timing: timing, now: t0)
        _ = l.tick(now: t0)
        _ = l.answered(.acquired(term: 2), sentAt: t0, now: t0)
        _ = l.tick(now: t0 + .seconds(3))  // renew(2) goes out and hangs
        let out = l.tick(now: t0 + .milliseconds(8_100))
        #expect(out.first == .stepDown(term: 2, reason: "the leadership lease ran out before a renewal succeeded"))
        #expect(l.term(at: t0 + .milliseconds(8_100)) == nil)
        #expect(l.role == .standby(leader: nil, term: 2))
        // The late answer does not bring the authority back.
        let late = l.answered(.renewed, sentAt: t0 + .seconds(3), now: t0 + .seconds(13))
        #expect(!late.contains(.becomeLeader(term: 2)))
        #expect(l.term(at: t0 + .seconds(13)) == nil)
        // The next tick tries to acquire again (a new term).
        #expect(l.tick(now: t0 + .seconds(13)).first == .acquire)
    }

    @Test func aFailedRenewalStepsDownAtOnceAndRetriesAfterTheRetryInterval() {
        var l = Leadership(id: "coord-1", timing: timing, now: t0)
        _ = l.tick(now: t0)
        _ = l.answered(.acquired(term: 3), sentAt: t0, now: t0)
        _ = l.tick(now: t0 + .seconds(3))
        let out = l.answered(.failed("connection lost"), sentAt: t0 + .seconds(3), now: t0 + .milliseconds(3_200))
        #expect(out.first == .stepDown(term: 3, reason: "the leadership could not be renewed: connection lost"))
        #expect(l.term(at: t0 + .milliseconds(3_200)) == nil)
        #expect(l.tick(now: t0 + .milliseconds(3_500)) == [.wake(after: .milliseconds(700))])
        #expect(l.tick(now: t0 + .milliseconds(4_200)).first == .acquire)
        let back = l.answered(.acquired(term: 4), sentAt: t0 + .milliseconds(4_200), now: t0 + .milliseconds(4_250))
        #expect(back.contains(.becomeLeader(term: 4)))
    }

    @Test func aRenewalThatFindsAnotherTermStepsDownAndFollowsTheNewLeader() {
        var l = Leadership(id: "coord-1", timing: timing, now: t0)
        _ = l.tick(now: t0)
        _ = l.answered(.acquired(term: 5), sentAt: t0, now: t0)
        _ = l.tick(now: t0 + .seconds(3))
        let out = l.answered(.lost(leader: "coord-2", term: 6), sentAt: t0 + .seconds(3), now: t0 + .seconds(3))
        #expect(out.prefix(2) == [.stepDown(term: 5, reason: "the store names coord-2 under term 6"),
                                  .leaderChanged(leader: "coord-2", term: 6)])
        #expect(l.role == .standby(leader: "coord-2", term: 6))
        #expect(l.knownTerm == 6)
    }

    @Test func aStandbyRetriesEveryIntervalAndReportsALeaderChangeOnce() {
        var l = Leadership(id: "coord-2", timing: timing, now: t0)
        _ = l.tick(now: t0)
        let first = l.answered(.heldBy(leader: "coord-1", term: 7), sentAt: t0, now: t0)
        #expect(first == [.leaderChanged(leader: "coord-1", term: 7), .wake(after: .seconds(1))])
        #expect(l.tick(now: t0 + .milliseconds(999)) == [.wake(after: .milliseconds(1))])
        #expect(l.tick(now: t0 + .seconds(1)).first == .acquire)
        let again = l.answered(.heldBy(leader: "coord-1", term: 7), sentAt: t0 + .seconds(1), now: t0 + .seconds(1))
        #expect(again == [.wake(after: .seconds(1))])
        #expect(l.term(at: t0 + .seconds(1)) == nil)
    }

    @Test func anAcquireAnsweredAfterItsLeaseRanOutGivesNoAuthority() {
        var l = Leadership(id: "coord-1", timing: timing, now: t0)
        _ = l.tick(now: t0)
        let out = l.answered(.acquired(term: 9), sentAt: t0, now: t0 + .seconds(10))
        #expect(out.contains(.stepDown(term: 9, reason: "the acquire was answered after the lease had run out")))
        #expect(l.term(at: t0 + .seconds(10)) == nil)
    }

    @Test func resigningStepsDownOnlyALeader() {
        var l = Leadership(id: "coord-1", timing: timing, now: t0)
        #expect(l.resign(now: t0).isEmpty)
        _ = l.tick(now: t0)
        _ = l.answered(.acquired(term: 1), sentAt: t0, now: t0)
        #expect(l.resign(now: t0 + .seconds(1)) == [.stepDown(term: 1, reason: "resigned")])
        #expect(l.term(at: t0 + .seconds(1)) == nil)
    }

    /// Two coordinators against a model of the store (expiry on the store's own clock, which is
    /// offset from the coordinators' and runs up to 5 % fast or slow), with random delays before
    /// the store runs a request and before its answer arrives, and random failures — some after
    /// the store committed the change: at no sampled instant do both hold authority, and a
    /// leader's authority always ends before the store's expiry of its term.
    @Test(arguments: [1, 2, 3, 4, 5, 6, 7, 8] as [UInt64])
    func neverTwoLeadersAtOnce(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        let storeOffset = Duration.milliseconds(Int64(rng.next() % 5_000))  // the store's clock is ahead by this
        let rate = 0.95 + Double(rng.next() % 101) / 1000  // and runs at this rate (0.95…1.05)
        let t0 = self.t0
        func storeTime(_ t: ContinuousClock.Instant) -> ContinuousClock.Instant {
            t0 + storeOffset + .seconds((t - t0).inSeconds * rate)
        }
        var store = (term: Int64(0), leader: String?.none, expires: ContinuousClock.Instant?.none)
        var nodes = [Leadership(id: "a", timing: timing, now: t0), Leadership(id: "b", timing: timing, now: t0)]
        // Each coordinator's outstanding request: when the store runs it, when the answer arrives.
        var pending: [Int: (directive: Leadership.Directive, sentAt: ContinuousClock.Instant, runAt: ContinuousClock.Instant, answerAt: ContinuousClock.Instant)] = [:]
        var answer: [Int: Leadership.Answer] = [:]
        var now = t0
        var leaderChanges = 0
        for _ in 0..<4_000 {
            now = now + .milliseconds(Int64(50 + rng.next() % 200))
            for i in 0..<2 {
                if let p = pending[i], answer[i] == nil, now >= p.runAt {
                    let storeNow = storeTime(p.runAt)
                    let me = nodes[i].id
                    let roll = rng.next() % 20
                    if roll == 0 {
                        answer[i] = .failed("injected before the store ran it")
                    } else if case .renew(let term) = p.directive {
                        if store.term == term && store.leader == me {
                            store.expires = storeNow + timing.lease
                            answer[i] = .renewed
                        } else {
                            answer[i] = .lost(leader: store.leader, term: store.term)
                        }
                    } else if store.leader == me || store.expires.map({ $0 <= storeNow }) ?? true {
                        store = (store.term + 1, me, storeNow + timing.lease)
                        answer[i] = .acquired(term: store.term)
                    } else {
                        answer[i] = .heldBy(leader: store.leader!, term: store.term)
                    }
                    if roll == 1 { answer[i] = .failed("injected after the store committed") }
                }
                if let p = pending[i], let a = answer[i], now >= p.answerAt {
                    pending[i] = nil; answer[i] = nil
                    if nodes[i].answered(a, sentAt: p.sentAt, now: now).contains(where: { if case .becomeLeader = $0 { true } else { false } }) {
                        leaderChanges += 1
                    }
                }
                for d in nodes[i].tick(now: now) {
                    switch d {
                    case .acquire, .renew:
                        // A slow store now and then: up to 12 s before it runs the request.
                        let slow = rng.next() % 10 == 0
                        let run = now + .milliseconds(Int64(rng.next() % (slow ? 12_000 : 300)))
                        pending[i] = (d, now, run, run + .milliseconds(Int64(rng.next() % (slow ? 6_000 : 300))))
                    default: break
                    }
                }
            }
            let a = nodes[0].term(at: now), b = nodes[1].term(at: now)
            #expect(a == nil || b == nil, "seed \(seed): both lead at \(now - t0): a term \(a ?? 0), b term \(b ?? 0)")
            // A leader's authority always ends before the store's expiry of its term.
            for n in nodes {
                if let term = n.term(at: now), let until = n.leaderUntil, store.term == term, let expires = store.expires {
                    #expect(storeTime(until) <= expires, "seed \(seed): authority outlives the store's expiry")
                }
            }
        }
        #expect(leaderChanges >= 2, "seed \(seed): the simulation should see the leadership move")
    }
}
