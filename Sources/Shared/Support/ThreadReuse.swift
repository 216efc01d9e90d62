import Foundation

/// Runs jobs (one connection's session each) on threads of their own, keeping a thread that
/// finished its job for a while to run the next one instead of ending it.
///
/// Hato runs one thread per session. Starting a thread for each short session (an application
/// that sends one message per connection) cost about 5 % of the coordinator's CPU in issue 19's
/// profile (`clone3`, the new stack's page faults, the thread's exit). Here a finished thread
/// waits up to `idleTime` for the next job; at most `maximumIdle` threads wait at once, the
/// others end. A job never waits for a thread: with no idle thread a new one starts at once,
/// so the number of sessions running at the same time is bounded by admission control as before.
public final class ThreadReuse: Sendable {
    private struct State: Sendable {
        var jobs: [@Sendable () -> Void] = []
        /// Threads waiting for a job.
        var idle = 0
    }

    private let state = LockedCondition(State())
    private let name: String
    private let maximumIdle: Int
    private let idleTime: Duration

    /// - Parameters:
    ///   - name: the threads' name.
    ///   - maximumIdle: the most threads kept waiting for a job.
    ///   - idleTime: how long a thread waits for a job before it ends.
    public init(name: String, maximumIdle: Int = 64, idleTime: Duration = .seconds(5)) {
        self.name = name
        self.maximumIdle = maximumIdle
        self.idleTime = idleTime
    }

    /// Threads now waiting for a job (for tests and metrics).
    public var idleThreads: Int { state.withLock { $0.idle } }

    /// Runs `job` on a waiting thread, or on a new one when none waits.
    public func run(_ job: @escaping @Sendable () -> Void) {
        let handed = state.withLockAndSignal { s -> Bool in
            // Every queued job is owed to a distinct waiting thread.
            guard s.idle > s.jobs.count else { return false }
            s.jobs.append(job)
            return true
        }
        if handed { return }
        Thread.startNamed(name) { [self] in
            var next: (@Sendable () -> Void)? = job
            while let current = next {
                current()
                next = waitForJob()
            }
        }
    }

    /// Waits up to `idleTime` for a job; nil when none came (or enough threads wait already).
    private func waitForJob() -> (@Sendable () -> Void)? {
        let stay = state.withLock { s -> Bool in
            guard s.idle < maximumIdle else { return false }
            s.idle += 1
            return true
        }
        guard stay else { return nil }
        return state.wait(until: .now + idleTime, for: { !$0.jobs.isEmpty }) { s, ready in
            s.idle -= 1
            return ready ? s.jobs.removeFirst() : nil
        }
    }
}
