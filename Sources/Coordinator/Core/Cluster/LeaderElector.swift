import Foundation
import HatoSupport

/// Where the leadership record lives (PostgreSQL for several coordinators).
public protocol LeadershipStore: Sendable {
    /// Acquires the leadership for `id` when it expired, was resigned or is `id`'s already.
    /// - Returns: `.acquired(term:)` or `.heldBy(leader:term:)`.
    /// - Throws: any store error (the elector answers `.failed` with it).
    func acquire(id: String, lease: Duration) throws -> Leadership.Answer
    /// Extends `id`'s leadership under `term`.
    /// - Returns: `.renewed` or `.lost(leader:term:)`.
    /// - Throws: any store error.
    func renew(id: String, term: Int64, lease: Duration) throws -> Leadership.Answer
    /// Gives the leadership up at once.
    /// - Throws: any store error.
    func resign(id: String, term: Int64) throws
}

/// The shell around `Leadership`: one background thread asks the store and hands the
/// directives that change who leads (`becomeLeader`, `stepDown`, `leaderChanged`) to `events`.
///
/// `term(at:)` may be called from any thread: the scheduler calls it before every grant,
/// assignment and revoke, so a leader whose renewal hangs stops on time even while this
/// elector's thread is blocked in the store.
public final class LeaderElector: Sendable {
    /// This coordinator's id.
    public let id: String
    private let store: any LeadershipStore
    private let state: Locked<Leadership>
    private let events: @Sendable (Leadership.Directive) -> Void
    private let loop = Locked<BackgroundLoop?>(nil)
    private let stopped = Locked(false)
    private let log = Logger(label: "coordinator.leadership")
    /// Since when the store answers nothing useful (failures, or this id held by another
    /// process), and when that was last logged: a warning every 30 s while it lasts.
    private let trouble = Locked<(since: ContinuousClock.Instant, what: String, logged: ContinuousClock.Instant?)?>(nil)

    /// - Parameters:
    ///   - id: this coordinator's id.
    ///   - timing: the leadership timing.
    ///   - store: the leadership record.
    ///   - events: receives `becomeLeader`, `stepDown` and `leaderChanged`, on the elector's thread.
    public init(id: String, timing: Leadership.Timing, store: any LeadershipStore,
                events: @escaping @Sendable (Leadership.Directive) -> Void) {
        self.id = id
        self.store = store
        self.events = events
        self.state = Locked(Leadership(id: id, timing: timing, now: .now))
    }

    /// Starts the elector's thread (`hato-elector`).
    public func start() {
        let l = BackgroundLoop(name: "hato-elector") { [weak self] in self?.step() }
        loop.withLock { $0 = l }
        l.start()
    }

    /// The term under which this coordinator may lead now, nil when it may not.
    public func term(at now: ContinuousClock.Instant = .now) -> Int64? { state.withLock { $0.term(at: now) } }

    /// The role now.
    public var role: Leadership.Role { state.withLock { $0.role } }

    /// Stops the thread (waiting for a store call in progress to end: its statement timeout
    /// bounds it); a leader steps down, then resigns in the store so that a standby takes over
    /// at once.
    public func stop() {
        stopped.withLock { $0 = true }
        if let l = loop.withLock({ $0 }) {
            while !l.stop(waiting: true) {}
        }
        let directives = state.withLock { $0.resign(now: .now) }
        for d in directives {
            events(d)  // the scheduler stops before a standby can take over
            if case .stepDown(let term, _) = d { try? store.resign(id: id, term: term) }
        }
    }

    /// Warns (every 30 s, after two leases) while no answer lets anyone be known as leader
    /// through this coordinator: the store unreachable, or this id held by another process.
    private func noteTrouble(_ answer: Leadership.Answer) {
        let what: String?
        switch answer {
        case .failed(let why): what = "the leadership store cannot be asked (\(why)): this coordinator can neither lead nor name the leader"
        case .heldBy(let leader, let term) where leader == id:
            what = "another process with this coordinator's id (\(id)) holds the leadership under term \(term): a second coordinator started with the same --id?"
        default: what = nil
        }
        let now = ContinuousClock.now
        let lease = state.withLock { $0.timing.lease }
        let due: (String, Duration)? = trouble.withLock { t in
            guard let what else {
                if t?.logged != nil { log.info("the leadership trouble warned about has ended", ["coordinator": id]) }
                t = nil
                return nil
            }
            if t == nil || t!.what != what { t = (now, what, nil) }
            guard now - t!.since >= lease * 2, t!.logged.map({ now - $0 >= .seconds(30) }) ?? true else { return nil }
            t!.logged = now
            return (what, now - t!.since)
        }
        if let (what, lasting) = due {
            log.warning(what, ["coordinator": id, "for_s": String(Int(lasting.inSeconds))])
        }
    }

    /// One round: tick, perform a store request if one is due, feed its answer back.
    /// - Returns: how long to sleep.
    private func step() -> Duration? {
        guard !stopped.withLock({ $0 }) else { return nil }
        var wake: Duration = .seconds(1)
        var directives = state.withLock { $0.tick(now: .now) }
        while !directives.isEmpty {
            let d = directives.removeFirst()
            switch d {
            case .acquire, .renew:
                let sentAt = ContinuousClock.now
                let lease = state.withLock { $0.timing.lease }
                let answer: Leadership.Answer
                do {
                    if case .renew(let term) = d {
                        answer = try store.renew(id: id, term: term, lease: lease)
                    } else {
                        answer = try store.acquire(id: id, lease: lease)
                    }
                } catch {
                    answer = .failed(String(describing: error))
                }
                // Stopped meanwhile: a late acquire is recorded (so `stop` resigns it), nothing acted upon.
                directives += state.withLock { $0.answered(answer, sentAt: sentAt, now: .now) }
                noteTrouble(answer)
                if stopped.withLock({ $0 }) { return nil }
            case .wake(let after):
                wake = after
            case .becomeLeader, .stepDown, .leaderChanged:
                events(d)
            }
        }
        return wake
    }
}
