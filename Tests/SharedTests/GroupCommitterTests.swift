import Foundation
import Testing
@testable import HatoSupport

/// Group commit (`GroupCommitter`): batches, order, errors, and one wake-up per waiting caller.
@Suite("GroupCommitter")
struct GroupCommitterTests {
    /// A commit that records its batches and can be held at its first batch.
    final class Recorder: Sendable {
        let batches = Locked<[[Int]]>([])
        let gate = LockedCondition((holding: true, entered: false))
        let failWith = Locked<Set<Int>>([])
        struct Failure: Error {}

        func commit(_ items: [Int]) throws {
            let first = batches.withLock { b -> Bool in b.append(items); return b.count == 1 }
            if first {
                gate.withLockAndBroadcast { $0.entered = true }
                gate.wait(until: .now + .seconds(30), for: { !$0.holding }) { _, _ in }
            }
            if !failWith.snapshot.isDisjoint(with: items) { throw Failure() }
        }
    }

    /// Starts `count` callers submitting `base + i`, after the first batch is held; returns their outcomes box.
    func submitWhileHeld(_ committer: GroupCommitter<Int>, _ recorder: Recorder, items: Range<Int>) -> LockedCondition<[Int: Bool]> {
        let outcomes = LockedCondition<[Int: Bool]>([:])
        for i in items {
            Thread.detachNewThread {
                let ok = (try? committer.submit(i)) != nil
                outcomes.withLockAndBroadcast { $0[i] = ok }
            }
        }
        return outcomes
    }

    @Test("callers arriving during a commit share the next batch, in arrival order; each wakes once")
    func oneWakeUpPerWaiter() throws {
        let recorder = Recorder()
        let committer = GroupCommitter<Int> { try recorder.commit($0) }
        let leader = LockedCondition<Bool?>(nil)
        Thread.detachNewThread { let ok = (try? committer.submit(0)) != nil; leader.withLockAndBroadcast { $0 = ok } }
        #expect(recorder.gate.wait(until: .now + .seconds(30), for: { $0.entered }) { _, ok in ok })
        // Ten callers, one after the other, while the first batch is held.
        var outcomes: [LockedCondition<[Int: Bool]>] = []
        for i in 1...10 {
            outcomes.append(submitWhileHeld(committer, recorder, items: i..<(i + 1)))
            // Wait until this caller has queued, so the arrival order is known.
            let deadline = ContinuousClock.now + .seconds(30)
            while committer.itemsSubmitted < i + 1 && ContinuousClock.now < deadline { Thread.sleep(forTimeInterval: 0.001) }
        }
        #expect(committer.itemsSubmitted == 11)
        #expect(committer.wakeUps == 0)
        recorder.gate.withLockAndBroadcast { $0.holding = false }
        #expect(leader.wait(until: .now + .seconds(30), for: { $0 != nil }) { v, _ in v } == true)
        for (n, box) in outcomes.enumerated() {
            #expect(box.wait(until: .now + .seconds(30), for: { $0[n + 1] != nil }) { v, _ in v[n + 1] } == true)
        }
        // One batch for the leader, one for the ten that waited, in the order they arrived.
        #expect(recorder.batches.snapshot == [[0], Array(1...10)])
        #expect(committer.batchesCommitted == 2)
        // The first of the ten was woken to lead, the nine others once each with their outcome
        // (a broadcast at each batch's end woke all ten, then the nine again: 19).
        #expect(committer.wakeUps == 10)
    }

    @Test("a failed batch fails every caller of that batch and no other")
    func failureIsPerBatch() throws {
        let recorder = Recorder()
        recorder.failWith.withLock { $0 = [3] }
        let committer = GroupCommitter<Int> { try recorder.commit($0) }
        let leader = LockedCondition<Bool?>(nil)
        Thread.detachNewThread { let ok = (try? committer.submit(0)) != nil; leader.withLockAndBroadcast { $0 = ok } }
        #expect(recorder.gate.wait(until: .now + .seconds(30), for: { $0.entered }) { _, ok in ok })
        let outcomes = submitWhileHeld(committer, recorder, items: 1..<6)
        let deadline = ContinuousClock.now + .seconds(30)
        while committer.itemsSubmitted < 6 && ContinuousClock.now < deadline { Thread.sleep(forTimeInterval: 0.001) }
        recorder.gate.withLockAndBroadcast { $0.holding = false }
        #expect(leader.wait(until: .now + .seconds(30), for: { $0 != nil }) { v, _ in v } == true)
        let all = outcomes.wait(until: .now + .seconds(30), for: { $0.count == 5 }) { v, _ in v }
        #expect(all == [1: false, 2: false, 3: false, 4: false, 5: false])
        // Later callers start a new batch and succeed.
        try committer.submit(7)
        #expect(recorder.batches.snapshot.last == [7])
    }

    @Test("many concurrent callers: every item committed exactly once")
    func everyItemOnce() throws {
        let seen = Locked<[Int]>([])
        let committer = GroupCommitter<Int> { batch in
            usleep(200)
            seen.withLock { $0 += batch }
        }
        let done = LockedCondition(0)
        for i in 0..<200 {
            Thread.detachNewThread {
                try? committer.submit(i)
                done.withLockAndBroadcast { $0 += 1 }
            }
        }
        #expect(done.wait(until: .now + .seconds(60), for: { $0 == 200 }) { n, _ in n } == 200)
        #expect(seen.snapshot.sorted() == Array(0..<200))
        #expect(committer.batchesCommitted < 200)
        #expect(committer.wakeUps <= 200)
    }
}
