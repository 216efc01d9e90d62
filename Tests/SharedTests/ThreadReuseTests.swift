import Foundation
import Testing
@testable import HatoSupport

@Suite("Thread reuse for sessions")
struct ThreadReuseTests {
    /// Polls `condition` until it holds or `seconds` pass.
    func eventually(_ seconds: Double = 5, _ condition: () -> Bool) -> Bool {
        let deadline = Date() + seconds
        while Date() < deadline {
            if condition() { return true }
            Thread.sleep(forTimeInterval: 0.005)
        }
        return condition()
    }

    @Test("a thread that finished its job runs the next one; an idle thread ends after idleTime")
    func reuse() {
        let pool = ThreadReuse(name: "test-conn", maximumIdle: 4, idleTime: .milliseconds(300))
        let ids = Locked<[UInt]>([])
        for i in 0..<5 {
            let done = Locked(false)
            pool.run { ids.withLock { $0.append(UInt(pthread_self())) }; done.withLock { $0 = true } }
            #expect(eventually { done.snapshot }, "job \(i) ran")
            #expect(eventually { pool.idleThreads == 1 }, "the thread waits for the next job")
        }
        #expect(ids.snapshot.count == 5)
        #expect(Set(ids.snapshot).count == 1, "all five jobs ran on the same thread")
        #expect(eventually { pool.idleThreads == 0 }, "the idle thread ended after idleTime")
    }

    @Test("jobs never wait for a thread: 20 jobs that block until all 20 run are all running at once; at most maximumIdle stay")
    func noWaiting() {
        let pool = ThreadReuse(name: "test-conn", maximumIdle: 3, idleTime: .seconds(2))
        let started = Locked(0)
        let release = Locked(false)
        for _ in 0..<20 {
            pool.run {
                started.withLock { $0 += 1 }
                while !release.snapshot { Thread.sleep(forTimeInterval: 0.002) }
            }
        }
        #expect(eventually { started.snapshot == 20 }, "every job started while the others still ran")
        release.withLock { $0 = true }
        #expect(eventually { pool.idleThreads == 3 })
        Thread.sleep(forTimeInterval: 0.05)
        #expect(pool.idleThreads == 3, "no more than maximumIdle threads wait")
    }
}
