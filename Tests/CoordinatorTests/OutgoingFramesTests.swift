import Foundation
import Testing
@testable import ClusterProtocol
@testable import HatoCoordinator

/// Issue 19: the frames the scheduler thread queues for the nodes — a batch's `result_ack`s in
/// one write per node, held a moment for a grant to ride with (filter: `OutgoingFramesTests`).
@Suite("OutgoingFramesTests")
struct OutgoingFramesTests {
    private static func ack(_ id: String) -> ClusterMessage { .resultAck(ResultAckMessage(leaseID: id)) }
    private static let t0 = ContinuousClock.now

    @Test("acks are held up to ackHold, then due together, per link in order; nextDue says when")
    func acksWaitForTheirHold() {
        var o = OutgoingFrames()
        #expect(o.isEmpty && o.nextDue == nil)
        o.append(Self.ack("a1"), to: 1, now: Self.t0)
        o.append(Self.ack("b1"), to: 2, now: Self.t0 + .milliseconds(5))
        o.append(Self.ack("a2"), to: 1, now: Self.t0 + .milliseconds(8))
        #expect(o.nextDue == Self.t0 + OutgoingFrames.ackHold)
        // Before the hold ends nothing is due.
        #expect(o.takeDue(now: Self.t0 + OutgoingFrames.ackHold - .milliseconds(1)).isEmpty)
        // At the first link's deadline: its two acks (the oldest decides), not the second link's.
        let due = o.takeDue(now: Self.t0 + OutgoingFrames.ackHold)
        #expect(due.map(\.0) == [1])
        #expect(due.first?.1 == [Self.ack("a1"), Self.ack("a2")])
        #expect(o.nextDue == Self.t0 + .milliseconds(5) + OutgoingFrames.ackHold)
        let rest = o.takeDue(now: Self.t0 + .seconds(1))
        #expect(rest.map(\.0) == [2] && rest.first?.1 == [Self.ack("b1")])
        #expect(o.isEmpty && o.nextDue == nil)
    }

    @Test("any frame other than an ack is due at once and takes the link's held acks with it, in order")
    func otherFramesGoAtOnce() {
        var o = OutgoingFrames()
        let assign = ClusterMessage.ipAssign(IPAssignMessage(ips: [], term: 3))
        o.append(Self.ack("a1"), to: 1, now: Self.t0)
        o.append(Self.ack("b1"), to: 2, now: Self.t0)
        o.append(assign, to: 1, now: Self.t0 + .milliseconds(1))
        #expect(o.nextDue == Self.t0)
        let due = o.takeDue(now: Self.t0 + .milliseconds(1))
        #expect(due.map(\.0) == [1])
        #expect(due.first?.1 == [Self.ack("a1"), assign])
        // The other link's ack is still held.
        #expect(o.nextDue == Self.t0 + OutgoingFrames.ackHold)
        #expect(!o.isEmpty)
    }

    @Test("a grant takes its link's frames along; force takes every link's; removeAll drops them")
    func takeForceAndRemove() {
        var o = OutgoingFrames()
        o.append(Self.ack("a1"), to: 1, now: Self.t0)
        o.append(Self.ack("b1"), to: 2, now: Self.t0)
        o.append(Self.ack("c1"), to: 3, now: Self.t0)
        #expect(o.take(2) == [Self.ack("b1")])
        #expect(o.take(2).isEmpty)
        let all = o.takeDue(now: Self.t0, force: true)
        #expect(all.map(\.0) == [1, 3])
        #expect(all.map(\.1) == [[Self.ack("a1")], [Self.ack("c1")]])
        o.append(Self.ack("d1"), to: 4, now: Self.t0)
        o.removeAll()
        #expect(o.isEmpty && o.nextDue == nil && o.takeDue(now: Self.t0, force: true).isEmpty)
    }
}
