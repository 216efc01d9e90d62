import Foundation

/// A periodic, wakeable loop on a thread of its own: the one shape of every background
/// worker (scheduler, reporter, webhooks, checkpointer, …). Each pass runs `body`, which
/// says how long to wait before the next pass; `wake()` cuts a wait short; `stop()` ends the
/// loop after the current pass. Waits run on the monotonic clock.
///
/// Wake-ups coalesce: any number of `wake()` calls during a pass cause one more pass.
public final class BackgroundLoop: Sendable {
    /// What the loop thread and its controllers share.
    private struct State: Sendable {
        var wakePending = false
        var running = true
        var started = false
        var finished = false
    }

    /// The loop's name (the thread's name, for `top -H` and stack traces).
    public let name: String
    private let state = LockedCondition(State())
    private let body: @Sendable () -> Duration?

    /// - Parameters:
    ///   - name: the thread's name.
    ///   - body: one pass; returns how long to wait before the next one unless woken, or nil
    ///     to end the loop (e.g. when what it works for is gone).
    public init(name: String, body: @escaping @Sendable () -> Duration?) {
        self.name = name
        self.body = body
    }

    /// A loop that runs `body` every `interval` (and whenever woken).
    /// - Parameters:
    ///   - name: the thread's name.
    ///   - interval: the longest wait between passes.
    ///   - body: one pass.
    public convenience init(name: String, every interval: Duration, body: @escaping @Sendable () -> Void) {
        self.init(name: name) { body(); return interval }
    }

    /// Starts the thread (once; later calls do nothing).
    public func start() {
        let first = state.withLock { s -> Bool in defer { s.started = true }; return !s.started }
        guard first else { return }
        Thread.startNamed(name) { [self] in run() }
    }

    /// Asks for a pass as soon as the current one (if any) ends.
    public func wake() {
        state.withLockAndBroadcast { $0.wakePending = true }
    }

    /// Ends the loop after the current pass.
    /// - Parameter waiting: also wait (up to `timeout`) until the loop thread has finished.
    /// - Returns: whether the loop had finished when this returned.
    @discardableResult
    public func stop(waiting: Bool = false, timeout: Duration = .seconds(5)) -> Bool {
        state.withLockAndBroadcast { $0.running = false }
        guard waiting else { return state.withLock { $0.finished || !$0.started } }
        return state.wait(until: .now + timeout, for: { $0.finished || !$0.started }) { _, done in done }
    }

    /// Whether `stop()` was called.
    public var isStopped: Bool { state.withLock { !$0.running } }

    private func run() {
        while state.withLock({ $0.running }) {
            guard let pause = body() else { break }
            let deadline = ContinuousClock.now + max(pause, .zero)
            let keepGoing = state.wait(until: deadline, for: { $0.wakePending || !$0.running }) { s, _ -> Bool in
                s.wakePending = false
                return s.running
            }
            if !keepGoing { break }
        }
        state.withLockAndBroadcast { $0.finished = true }
    }
}
