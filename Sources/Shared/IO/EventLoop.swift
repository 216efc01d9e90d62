#if canImport(Glibc)
import Glibc
#endif
import CEpoll
import Foundation
import HatoSupport

/// One thread that serves many connected sockets: it waits for any of them to become readable
/// or writable with `epoll(7)` (level-triggered) and runs their handlers one after another, so
/// a connection waiting for its peer costs no thread and no context switch.
///
/// Issue 19's profile: with a thread per SMTP session, every command of the client's seven
/// round trips per message was a `recv` that blocked and a context switch back when the
/// command arrived — context switches and wake-ups were a fifth of the coordinator's CPU. A
/// loop that finds several sessions ready in one `epoll_wait` switches once for all of them.
///
/// **Threads.** `execute` (any thread) queues a task and wakes the loop through an `eventfd`;
/// everything else (`register`, `setInterest`, `deregister`, the handlers, the tasks and the
/// `sweep`) runs on the loop thread only. The loop's handlers must not block: work that
/// blocks (an fsync'd queue write, a TLS handshake) goes to another thread, which hands its
/// outcome back with `execute`.
///
/// **Sockets.** Only sockets the loop's thread owns are registered (the loop thread reads
/// them, so by `Socket`'s close rule it closes them too, after `deregister`). I/O on them uses
/// `MSG_DONTWAIT` (`Socket.readIfReady`, `writeIfReady`), so the descriptor itself stays
/// blocking and may be handed to a thread of its own later.
///
/// `@unchecked Sendable`: the registrations and the sweep are touched only on the loop thread
/// (checked with `precondition` in debug builds); the task queue lives in a `Locked`.
public final class EventLoop: @unchecked Sendable {
    /// What a registration waits for.
    public struct Interest: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        /// Input (or end of stream) can be read without waiting.
        public static let readable = Interest(rawValue: hato_epoll_in)
        /// Output can be written without waiting.
        public static let writable = Interest(rawValue: hato_epoll_out)
    }

    /// What `epoll_wait` reported for a socket.
    public struct Readiness: Sendable {
        /// Readable (or at end of stream).
        public var readable: Bool
        /// Writable.
        public var writable: Bool
        /// An error or a hang-up (`EPOLLERR`, `EPOLLHUP`): a read or write now fails or returns 0.
        public var failed: Bool
    }

    private final class Registration {
        let socket: Socket
        /// Unique per registration: an event queued for a closed socket never reaches a new
        /// socket that got the same descriptor number.
        let token: UInt64
        var interest: Interest
        let handler: (Readiness) -> Void
        init(socket: Socket, token: UInt64, interest: Interest, handler: @escaping (Readiness) -> Void) {
            self.socket = socket; self.token = token; self.interest = interest; self.handler = handler
        }
    }

    private let epoll: Int32
    private let wakeDescriptor: Int32
    private let name: String
    private let sweepInterval: Duration
    private let sweep: () -> Void
    private let tasks = Locked<(items: [@Sendable () -> Void], wakePending: Bool, stopping: Bool, closed: Bool)>(([], false, false, false))
    private let finished = LockedCondition(false)
    /// Loop thread only: registrations by descriptor, and the next registration's token.
    private var registrations: [Int32: Registration] = [:]
    private var nextToken: UInt64 = 1
    private let loopThread = Locked<pthread_t?>(nil)
    private let log: Logger

    /// Creates the loop (no thread yet: `start`).
    /// - Parameters:
    ///   - name: the thread's name, e.g. `smtp-loop-0`.
    ///   - sweepInterval: how often `sweep` runs while sockets are registered (e.g. 100 ms).
    ///   - sweep: runs on the loop thread every `sweepInterval` (deadlines, timeouts).
    /// - Throws: `SystemCallError` from `epoll_create1` or `eventfd`.
    public init(name: String, sweepInterval: Duration = .milliseconds(100), sweep: @escaping () -> Void = {}) throws {
        let epoll = try SystemCall.runToCompletion("epoll_create1") { hato_epoll_create() }
        let wake: Int32
        do {
            wake = try SystemCall.runToCompletion("eventfd") { hato_eventfd() }
        } catch {
            try? SystemCall.close(epoll)
            throw error
        }
        do {
            try SystemCall.runToCompletion("epoll_ctl") { hato_epoll_ctl(epoll, 1, wake, hato_epoll_in, 0) }
        } catch {
            try? SystemCall.close(wake); try? SystemCall.close(epoll)
            throw error
        }
        self.epoll = epoll
        self.wakeDescriptor = wake
        self.name = name
        self.sweepInterval = sweepInterval
        self.sweep = sweep
        self.log = Logger(label: "io.event-loop")
    }

    deinit {
        try? SystemCall.close(wakeDescriptor)
        try? SystemCall.close(epoll)
    }

    /// Starts the loop's thread (once).
    public func start() {
        Thread.startNamed(name, stackSize: 1 << 20) { [self] in run() }
    }

    /// Ends the loop after the tasks queued so far (any thread, the loop's too; returns at
    /// once). Registered sockets are left to their owners: the loop no longer serves them.
    public func stop() {
        tasks.withLock { $0.stopping = true }
        signal()
    }

    /// Waits up to `timeout` for the loop's thread to end (after `stop`; not on the loop thread).
    /// - Returns: whether it ended.
    @discardableResult
    public func waitUntilStopped(timeout: Duration = .seconds(2)) -> Bool {
        finished.wait(until: .now + timeout, for: { $0 }) { _, done in done }
    }

    /// Whether the caller runs on the loop's thread.
    public var inLoop: Bool {
        guard let thread = loopThread.snapshot else { return false }
        return pthread_equal(thread, pthread_self()) != 0
    }

    /// Runs `task` on the loop's thread, after what is queued before it (any thread).
    /// - Returns: false when the loop has ended: the task will never run (the caller cleans up).
    @discardableResult
    public func execute(_ task: @escaping @Sendable () -> Void) -> Bool {
        let (accepted, wake) = tasks.withLock { t -> (Bool, Bool) in
            guard !t.closed else { return (false, false) }
            t.items.append(task)
            defer { t.wakePending = true }
            return (true, !t.wakePending)
        }
        if wake { signal() }
        return accepted
    }

    /// Registers a socket the loop thread owns (loop thread only).
    /// - Parameters:
    ///   - socket: a connected socket.
    ///   - interest: what to wait for.
    ///   - handler: called on the loop thread when it is ready.
    /// - Throws: `SocketError(.closed)` for a closed socket; `SystemCallError` from `epoll_ctl`.
    public func register(_ socket: Socket, interest: Interest, handler: @escaping (Readiness) -> Void) throws {
        assert(inLoop, "EventLoop.register off the loop thread")
        let fd = socket.ownerDescriptor
        guard fd >= 0 else { throw SocketError(.closed, "epoll_ctl") }
        let token = nextToken
        try SystemCall.runToCompletion("epoll_ctl") { hato_epoll_ctl(epoll, 1, fd, interest.rawValue, Self.data(fd: fd, token: token)) }
        nextToken += 1
        registrations[fd] = Registration(socket: socket, token: token, interest: interest, handler: handler)
    }

    /// Changes what a registered socket waits for (loop thread only). An empty interest still
    /// reports errors and hang-ups (`epoll(7)`): to ignore a socket for a while, `deregister`
    /// it and `register` it again.
    public func setInterest(_ socket: Socket, _ interest: Interest) {
        assert(inLoop, "EventLoop.setInterest off the loop thread")
        let fd = socket.ownerDescriptor
        guard fd >= 0, let registration = registrations[fd], registration.interest != interest else { return }
        _ = try? SystemCall.runToCompletion("epoll_ctl") { hato_epoll_ctl(epoll, 3, fd, interest.rawValue, Self.data(fd: fd, token: registration.token)) }
        registration.interest = interest
    }

    /// Stops watching a socket (loop thread only; before the owner closes it or hands it to
    /// another thread).
    public func deregister(_ socket: Socket) {
        assert(inLoop, "EventLoop.deregister off the loop thread")
        let fd = socket.ownerDescriptor
        guard fd >= 0, registrations.removeValue(forKey: fd) != nil else { return }
        _ = try? SystemCall.runToCompletion("epoll_ctl") { hato_epoll_ctl(epoll, 2, fd, 0, 0) }
    }

    /// Sockets registered now (loop thread only; for tests).
    public var registeredCount: Int { registrations.count }

    /// The event's data word: the registration's token (low 32 bits) and the descriptor.
    private static func data(fd: Int32, token: UInt64) -> UInt64 { UInt64(UInt32(bitPattern: fd)) << 32 | (token & 0xFFFF_FFFF) | 1 << 63 }

    private func signal() {
        var one: UInt64 = 1
        _ = Glibc.write(wakeDescriptor, &one, 8)
    }

    private func run() {
        loopThread.withLock { $0 = pthread_self() }
        defer { finished.withLockAndBroadcast { $0 = true } }
        var kinds = [UInt32](repeating: 0, count: 256)
        var words = [UInt64](repeating: 0, count: 256)
        var nextSweep = ContinuousClock.now + sweepInterval
        while true {
            // Without sockets nothing has a deadline: wait for a task.
            let timeout: Int32 = registrations.isEmpty ? -1 : ContinuousClock.now.duration(to: nextSweep).pollMilliseconds
            let ready = kinds.withUnsafeMutableBufferPointer { k in
                words.withUnsafeMutableBufferPointer { w in hato_epoll_wait(epoll, k.baseAddress, w.baseAddress, 256, timeout) }
            }
            if ready < 0 && errno != EINTR {
                log.error("epoll_wait failed; event loop stopped", ["loop": name, "error": SystemCall.errorText(errno)])
                return
            }
            var woken = false
            for i in 0..<Int(max(0, ready)) {
                let data = words[i]
                if data == 0 {
                    woken = true
                    continue
                }
                let fd = Int32(bitPattern: UInt32(truncatingIfNeeded: (data & ~(1 << 63)) >> 32))
                // A handler run earlier in this batch may have deregistered (and closed) it,
                // and a new socket may have its number by now.
                guard let registration = registrations[fd], registration.token & 0xFFFF_FFFF == data & 0xFFFF_FFFF else { continue }
                let bits = kinds[i]
                registration.handler(Readiness(readable: bits & hato_epoll_in != 0,
                                               writable: bits & hato_epoll_out != 0,
                                               failed: bits & (hato_epoll_err | hato_epoll_hup) != 0))
            }
            if woken {
                var value: UInt64 = 0
                _ = Glibc.read(wakeDescriptor, &value, 8)
            }
            let (queued, stopping) = tasks.withLock { t -> ([@Sendable () -> Void], Bool) in
                defer { t.items.removeAll(keepingCapacity: true); t.wakePending = false }
                return (t.items, t.stopping)
            }
            for task in queued { task() }
            if stopping {
                // Tasks queued while the last ones ran still run; after this, `execute` refuses.
                while true {
                    let late = tasks.withLock { t -> [@Sendable () -> Void] in
                        if t.items.isEmpty { t.closed = true }
                        defer { t.items.removeAll() }
                        return t.items
                    }
                    if late.isEmpty { return }
                    for task in late { task() }
                }
            }
            let now = ContinuousClock.now
            if now >= nextSweep {
                sweep()
                nextSweep = now + sweepInterval
            }
        }
    }
}
