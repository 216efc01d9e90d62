#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// A value that is only reached under its own lock: the one locked-box type of the project
/// (the shape of swift-nio's `NIOLockedValueBox`).
///
/// A class that keeps its mutable state in a `Locked` (or a `LockedCondition`) and everything
/// else in `let`s of `Sendable` types is checked `Sendable` by the compiler; "guarded by that
/// lock" is no longer a comment. Never call out (I/O, callbacks, other locks) from inside
/// `withLock`: take what you need, leave, then act.
///
/// An `NSLock` underneath: on this platform it holds up under contention where
/// `Synchronization.Mutex` collapses (PLATFORM-NOTES.md).
///
/// Keep a function in a `Callback`, never as the `Value` itself (`Locked<(() -> Void)?>`):
/// Swift hands a generic `inout` function value to a closure written for the concrete
/// function type through a reabstraction thunk and stores it back wrapped in a second one,
/// so every `withLock { $0 }` at such a call site made the stored function two calls deeper
/// and two allocations larger — the store's new-mail observer, read so once per group commit,
/// was thousands of thunks deep after a benchmark run (14.6 % of the coordinator's CPU
/// samples, issue 19) and would have overflowed its thread's stack after about a million
/// batches. A struct around the function is never re-wrapped.
public final class Locked<Value> {
    private let lock = NSLock()
    private var value: Value

    /// A box holding `value`.
    public init(_ value: Value) { self.value = value }

    /// Runs `body` with exclusive access to the value.
    /// - Returns: what `body` returns.
    /// - Throws: what `body` throws.
    public func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }

    /// Like `withLock`, but gives up at once when another thread holds the lock.
    /// - Returns: what `body` returns, or nil when the lock was busy.
    public func tryWithLock<R>(_ body: (inout Value) throws -> R) rethrows -> R? {
        guard lock.try() else { return nil }
        defer { lock.unlock() }
        return try body(&value)
    }

    /// A copy of the value. Safe for a function value too: inside this generic type the
    /// closure `{ $0 }` needs no reabstraction (see the type's notes).
    public var snapshot: Value { withLock { $0 } }
}

/// A function kept as a value: what a `Locked` (or any generic box read through an `inout`
/// closure) holds instead of a bare function type, which each read through `withLock` would
/// re-wrap in two more reabstraction thunks (see `Locked`). Called like the function:
/// `callback(argument)`; several arguments go as one tuple.
public struct Callback<Argument, Output>: Sendable {
    /// The function.
    public let call: @Sendable (Argument) -> Output

    /// Keeps `call`.
    public init(_ call: @escaping @Sendable (Argument) -> Output) { self.call = call }

    /// Calls the function with `argument`.
    /// - Returns: what the function returns.
    public func callAsFunction(_ argument: Argument) -> Output { call(argument) }
}

// @unchecked: `value` is read and written only while the lock is held, so the box may cross
// threads exactly when its value may.
extension Locked: @unchecked Sendable where Value: Sendable {}

/// A value behind a mutex with a condition variable whose timed waits run on the
/// **monotonic** clock (`CLOCK_MONOTONIC`), so a step of the wall clock neither shortens
/// nor stretches a wait. For blocking queues, inboxes and wakeable loops.
public final class LockedCondition<Value> {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>
    private var value: Value

    /// A box holding `value`.
    public init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        condition = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    /// Runs `body` with exclusive access to the value (no waiter is woken).
    /// - Returns: what `body` returns.
    /// - Throws: what `body` throws.
    public func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }

    /// Changes the value and wakes every thread waiting in `wait`.
    /// - Returns: what `body` returns.
    public func withLockAndBroadcast<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_cond_broadcast(condition); pthread_mutex_unlock(mutex) }
        return try body(&value)
    }

    /// Changes the value and wakes one thread waiting in `wait` (for a hand-over that any one
    /// waiter may take: fewer wake-ups than `withLockAndBroadcast` when many wait).
    /// - Returns: what `body` returns.
    public func withLockAndSignal<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_cond_signal(condition); pthread_mutex_unlock(mutex) }
        return try body(&value)
    }

    /// Runs `body` under the lock, then wakes as many waiters as the `LockedConditionWake` it
    /// returns says (none, one or all) before unlocking.
    /// - Returns: the first element of what `body` returns.
    public func withLockThenWake<R>(_ body: (inout Value) throws -> (R, LockedConditionWake)) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        let (result, w) = try body(&value)
        wake(w)
        return result
    }

    /// Signals or broadcasts the condition as `w` says; the caller holds the lock.
    private func wake(_ w: LockedConditionWake) {
        switch w {
        case .none: break
        case .one: pthread_cond_signal(condition)
        case .all: pthread_cond_broadcast(condition)
        }
    }

    /// `wait(until:for:then:)` whose `body` also says whom to wake (none, one or all waiters)
    /// before the lock is released — e.g. to pass a wake-up on when work is left over.
    /// - Returns: the first element of what `body` returns.
    public func wait<R>(until deadline: ContinuousClock.Instant?, for ready: (Value) -> Bool,
                        thenWake body: (inout Value, Bool) throws -> (R, LockedConditionWake)) rethrows -> R {
        try wait(until: deadline, for: ready) { value, ok -> R in
            let (r, w) = try body(&value, ok)
            wake(w)  // still under the lock: `wait` unlocks after `body` returns
            return r
        }
    }

    /// Waits until `ready` holds or the monotonic `deadline` passes, then runs `body` under
    /// the lock. Spurious wake-ups are absorbed.
    /// - Parameters:
    ///   - deadline: when to give up waiting (nil: wait as long as it takes).
    ///   - ready: the condition, evaluated under the lock.
    ///   - body: runs under the lock, with whether `ready` held.
    /// - Returns: what `body` returns.
    public func wait<R>(until deadline: ContinuousClock.Instant?, for ready: (Value) -> Bool,
                        then body: (inout Value, Bool) throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while !ready(value) {
            if let deadline {
                let remaining = ContinuousClock.now.duration(to: deadline)
                if remaining <= .zero { break }
                var ts = timespec()
                clock_gettime(CLOCK_MONOTONIC, &ts)
                let (seconds, attoseconds) = remaining.components
                var nanos = Int(ts.tv_nsec) + Int(attoseconds / 1_000_000_000)
                var secs = Int(ts.tv_sec) + Int(min(seconds, Int64(Int32.max)))
                if nanos >= 1_000_000_000 { secs += 1; nanos -= 1_000_000_000 }
                ts.tv_sec = secs
                ts.tv_nsec = nanos
                _ = pthread_cond_timedwait(condition, mutex, &ts)
            } else {
                pthread_cond_wait(condition, mutex)
            }
        }
        return try body(&value, ready(value))
    }
}

/// Whom `LockedCondition.withLockThenWake` wakes.
public enum LockedConditionWake: Sendable {
    /// No waiter.
    case none
    /// One waiter (`pthread_cond_signal`): when any waiter can take what was added.
    case one
    /// Every waiter (`pthread_cond_broadcast`): when only some waiters can use the change.
    case all
}

// @unchecked: `value` is read and written only while `mutex` is held; the pthread objects are
// owned by the instance and destroyed in deinit.
extension LockedCondition: @unchecked Sendable where Value: Sendable {}
