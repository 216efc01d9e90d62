import Foundation

/// Which of several coordinators sharing one store is the leader — the one that runs the
/// scheduler, the IP assignment table, heartbeats and lease grants — and under which **term**.
///
/// The store holds one leadership record (term, leader id, expiry on the store's clock). A
/// standby asks the store to *acquire* it: the store grants it when the record has expired or
/// already names this coordinator, and then increments the term. The leader *renews* it every
/// `Timing.renewEvery`. Every lease, grant, revoke and assignment carries the term; nodes and the
/// store refuse an older one (fencing).
///
/// Safety rests on one rule: a leader's own authority ends at `sentAt + lease − margin` of its
/// last successful acquire or renew, measured on its monotonic clock from the moment the request
/// was *sent*. The store set the expiry to its `now() + lease` when it ran the request, which is
/// later, so the leader stops (`mayLead` turns false) at least `margin` before any standby can
/// acquire. A renewal that fails, or finds another term, steps the leader down at once.
///
/// A pure value: the shell performs the `Directive`s (store calls, starting and stopping the
/// scheduler) and feeds back the store's `Answer`s with the instant the request was sent.
public struct Leadership: Sendable {
    /// How long leadership lasts and how often it is renewed and tried.
    public struct Timing: Sendable, Equatable {
        /// How long one acquire or renew holds the leadership in the store (the store's clock).
        public var lease: Duration
        /// How often the leader renews; well below `lease` so that one slow renewal is survived.
        public var renewEvery: Duration
        /// How often a standby tries to acquire.
        public var retryEvery: Duration
        /// How much earlier than the store's expiry the leader stops on its own clock: room for
        /// clock-rate differences between the hosts.
        public var margin: Duration

        /// Timing derived from the lease: renew every third of it, try every second (at most a
        /// third of the lease), stop a tenth of it early.
        /// - Parameter lease: the leadership lease (positive; e.g. 10 s).
        public init(lease: Duration) {
            self.lease = lease
            self.renewEvery = lease / 3
            self.retryEvery = min(.seconds(1), lease / 3)
            self.margin = lease / 10
        }
    }

    /// What this coordinator is.
    public enum Role: Sendable, Equatable {
        /// Started; the store has not been asked yet.
        case starting
        /// Not the leader. `leader` is the current leader as far as known (nil: none, or unknown
        /// because the store could not be reached); `term` is the highest term seen.
        case standby(leader: String?, term: Int64)
        /// The leader under `term`.
        case leader(term: Int64)
    }

    /// What the shell must do.
    public enum Directive: Sendable, Equatable {
        /// Ask the store to acquire the leadership for this coordinator (answer `.acquired`,
        /// `.heldBy` or `.failed`).
        case acquire
        /// Ask the store to extend this coordinator's leadership under `term` (answer
        /// `.renewed`, `.lost` or `.failed`).
        case renew(term: Int64)
        /// This coordinator leads from now on under `term`: start the scheduler.
        case becomeLeader(term: Int64)
        /// This coordinator no longer leads: stop granting at once, close the node links.
        case stepDown(term: Int64, reason: String)
        /// The leader changed (for redirects): `leader` under `term`, nil when unknown.
        case leaderChanged(leader: String?, term: Int64)
        /// Call `tick` again after this long.
        case wake(after: Duration)
    }

    /// What the store answered.
    public enum Answer: Sendable, Equatable {
        /// This coordinator holds the leadership under `term` (a new term, one above the last).
        case acquired(term: Int64)
        /// Another coordinator holds an unexpired leadership.
        case heldBy(leader: String, term: Int64)
        /// The renewal succeeded.
        case renewed
        /// The renewal found the record under another term or leader (nil: no leader).
        case lost(leader: String?, term: Int64)
        /// The store could not be asked (connection lost, timeout, server error).
        case failed(String)
    }

    /// This coordinator's id (`coordinators[].id`).
    public let id: String
    /// The timing.
    public let timing: Timing
    /// The current role.
    public private(set) var role: Role = .starting
    /// For the leader: when its authority ends on the monotonic clock unless renewed.
    public private(set) var leaderUntil: ContinuousClock.Instant? = nil
    private var nextRequest: ContinuousClock.Instant
    private var requestInFlight = false

    /// A coordinator that has not asked the store yet.
    /// - Parameters:
    ///   - id: this coordinator's id.
    ///   - timing: the leadership timing.
    ///   - now: the current monotonic instant.
    public init(id: String, timing: Timing, now: ContinuousClock.Instant) {
        self.id = id
        self.timing = timing
        self.nextRequest = now
    }

    /// The term under which this coordinator may act as leader at `now`, or nil when it may not
    /// (not the leader, or its authority ran out while a renewal is outstanding).
    public func term(at now: ContinuousClock.Instant) -> Int64? {
        guard case .leader(let term) = role, let until = leaderUntil, now < until else { return nil }
        return term
    }

    /// The highest term this coordinator has seen (0 before the first answer).
    public var knownTerm: Int64 {
        switch role {
        case .starting: return 0
        case .standby(_, let term), .leader(let term): return term
        }
    }

    /// Advances time: steps down when the authority ran out, asks for the next acquire or renew
    /// when it is due, and says when to tick again.
    /// - Parameter now: the current monotonic instant.
    /// - Returns: the directives, ending with `.wake(after:)`.
    public mutating func tick(now: ContinuousClock.Instant) -> [Directive] {
        var out: [Directive] = []
        if case .leader(let term) = role, let until = leaderUntil, now >= until {
            out += stepDown(term: term, leader: nil, reason: "the leadership lease ran out before a renewal succeeded", now: now)
        }
        if !requestInFlight && now >= nextRequest {
            requestInFlight = true
            if case .leader(let term) = role {
                out.append(.renew(term: term))
            } else {
                out.append(.acquire)
            }
        }
        out.append(.wake(after: wakeDelay(now: now)))
        return out
    }

    /// Feeds back the store's answer to the outstanding acquire or renew.
    /// - Parameters:
    ///   - answer: what the store said.
    ///   - sentAt: the monotonic instant the request was sent (before the store ran it).
    ///   - now: the current monotonic instant.
    /// - Returns: the directives, ending with `.wake(after:)`.
    public mutating func answered(_ answer: Answer, sentAt: ContinuousClock.Instant, now: ContinuousClock.Instant) -> [Directive] {
        requestInFlight = false
        var out: [Directive] = []
        switch answer {
        case .acquired(let term):
            if case .leader(let old) = role, old != term {
                out += stepDown(term: old, leader: id, reason: "re-acquired under a new term", now: now)
            }
            let wasLeader = role == .leader(term: term)
            role = .leader(term: term)
            leaderUntil = sentAt + timing.lease - timing.margin
            nextRequest = sentAt + timing.renewEvery
            if !wasLeader {
                out.append(.becomeLeader(term: term))
                out.append(.leaderChanged(leader: id, term: term))
            }
            if let until = leaderUntil, now >= until {
                // The answer came too late to be of use: the authority already ran out.
                out += stepDown(term: term, leader: nil, reason: "the acquire was answered after the lease had run out", now: now)
            }
        case .renewed:
            guard case .leader(let term) = role else { break }
            leaderUntil = sentAt + timing.lease - timing.margin
            nextRequest = sentAt + timing.renewEvery
            if let until = leaderUntil, now >= until {
                out += stepDown(term: term, leader: nil, reason: "the renewal was answered after the lease had run out", now: now)
            }
        case .heldBy(let leader, let term):
            if case .leader(let old) = role {
                out += stepDown(term: old, leader: leader, reason: "\(leader) holds the leadership under term \(term)", now: now)
            }
            let before = role
            role = .standby(leader: leader, term: max(term, knownTerm))
            if before != role { out.append(.leaderChanged(leader: leader, term: term)) }
            nextRequest = now + timing.retryEvery
        case .lost(let leader, let term):
            if case .leader(let old) = role {
                out += stepDown(term: old, leader: leader, reason: "the store names \(leader ?? "no leader") under term \(term)", now: now)
            }
            role = .standby(leader: leader, term: max(term, knownTerm))
            out.append(.leaderChanged(leader: leader, term: term))
            nextRequest = now + timing.retryEvery
        case .failed(let why):
            if case .leader(let old) = role {
                out += stepDown(term: old, leader: nil, reason: "the leadership could not be renewed: \(why)", now: now)
            } else if role == .starting {
                role = .standby(leader: nil, term: 0)
            }
            nextRequest = now + timing.retryEvery
        }
        out.append(.wake(after: wakeDelay(now: now)))
        return out
    }

    /// Gives the leadership up (a graceful shutdown): the shell then tells the store so that a
    /// standby takes over at once rather than after the lease.
    /// - Returns: `.stepDown` when this coordinator was the leader.
    public mutating func resign(now: ContinuousClock.Instant) -> [Directive] {
        guard case .leader(let term) = role else { return [] }
        return stepDown(term: term, leader: nil, reason: "resigned", now: now)
    }

    private mutating func stepDown(term: Int64, leader: String?, reason: String, now: ContinuousClock.Instant) -> [Directive] {
        role = .standby(leader: leader, term: term)
        leaderUntil = nil
        nextRequest = max(nextRequest, now)
        return [.stepDown(term: term, reason: reason)]
    }

    private func wakeDelay(now: ContinuousClock.Instant) -> Duration {
        var next = requestInFlight ? now + timing.retryEvery : nextRequest
        if let until = leaderUntil { next = min(next, until) }
        return max(.zero, next - now)
    }
}
