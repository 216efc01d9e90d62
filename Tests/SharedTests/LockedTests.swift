import Foundation
import Testing
@testable import HatoSupport

@Suite("Locked values and background loops")
struct LockedTests {
    @Test("Locked: 8 threads × 10 000 increments lose none")
    func lockedCounts() {
        let box = Locked(0)
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            for _ in 0..<10_000 { box.withLock { $0 += 1 } }
        }
        #expect(box.snapshot == 80_000)
        #expect(box.tryWithLock { $0 } == 80_000)
    }

    /// A function read out of a `Locked` many times must not be wrapped once more at every
    /// read (a reabstraction thunk per `withLock { $0 }` made a coordinator's observers
    /// thousands of calls deep, issue 19): the stack under the function stays as deep.
    @Test("a Callback read through withLock, and a bare function read by snapshot, are called as deep after 500 reads as after one")
    func functionsKeepTheirDepth() throws {
        let kept = Locked<Callback<Void, Int>?>(nil)
        kept.withLock { $0 = Callback { Thread.callStackReturnAddresses.count } }
        let bare = Locked<(@Sendable () -> Int)?>(nil)
        bare.withLock { $0 = { Thread.callStackReturnAddresses.count } }
        func depths() throws -> (Int, Int) {
            let callback = try #require(kept.withLock { $0 })
            let function = try #require(bare.snapshot)
            return (callback(()), function())
        }
        let first = try depths()
        for _ in 0..<500 { _ = kept.withLock { $0 }; _ = bare.snapshot }
        let later = try depths()
        #expect(first.0 > 0 && first.1 > 0)
        #expect(later.0 == first.0, "the Callback's call went \(later.0 - first.0) frames deeper")
        #expect(later.1 == first.1, "the bare function's call went \(later.1 - first.1) frames deeper")
    }

    @Test("LockedCondition: a waiter sees the change made by another thread; a timed wait gives up at its monotonic deadline")
    func conditionWaits() {
        let box = LockedCondition([Int]())
        let producer = Thread { for i in 0..<100 { box.withLockAndBroadcast { $0.append(i) } } }
        producer.start()
        let all = box.wait(until: .now + .seconds(10), for: { $0.count == 100 }) { v, ok in ok ? v : [] }
        #expect(all == Array(0..<100))
        let start = ContinuousClock.now
        let met = box.wait(until: .now + .milliseconds(50), for: { $0.count > 100 }) { _, ok in ok }
        #expect(!met)
        #expect(ContinuousClock.now - start >= .milliseconds(50))
    }

    @Test("BackgroundLoop: passes on its interval and on wake-up; wake-ups during a pass coalesce into one more; stop ends the thread")
    func loop() throws {
        let passes = Locked(0)
        let gate = LockedCondition(false)   // the second pass waits here until opened
        let loop = BackgroundLoop(name: "test-loop") {
            let n = passes.withLock { $0 += 1; return $0 }
            if n == 2 { gate.wait(until: .now + .seconds(10), for: { $0 }) { _, _ in } }
            return .seconds(3600)
        }
        loop.start()
        loop.start()  // a second start does nothing
        try pollUntil { passes.snapshot == 1 }
        loop.wake()
        try pollUntil { passes.snapshot == 2 }   // the second pass is running, held at the gate
        for _ in 0..<5 { loop.wake() }
        gate.withLockAndBroadcast { $0 = true }
        try pollUntil { passes.snapshot == 3 }
        // Five wake-ups during one pass made exactly one more pass; then it waits its hour.
        Thread.sleep(forTimeInterval: 0.1)
        #expect(passes.snapshot == 3)
        #expect(loop.stop(waiting: true))
        loop.wake()
        Thread.sleep(forTimeInterval: 0.05)
        #expect(passes.snapshot == 3, "no pass after stop")
        #expect(loop.isStopped)
    }

    @Test("BackgroundLoop: the body's returned pause sets the next pass")
    func loopInterval() throws {
        let passes = Locked(0)
        let loop = BackgroundLoop(name: "fast-loop", every: .milliseconds(5)) { passes.withLock { $0 += 1 } }
        loop.start()
        try pollUntil { passes.snapshot >= 10 }
        loop.stop(waiting: true)
    }
}

/// Polls `condition` every millisecond until it holds, for at most `timeout`.
/// - Throws: when the deadline passes first.
func pollUntil(timeout: Duration = .seconds(10), _ condition: () -> Bool) throws {
    struct Timeout: Error {}
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        guard ContinuousClock.now < deadline else { throw Timeout() }
        Thread.sleep(forTimeInterval: 0.001)
    }
}
