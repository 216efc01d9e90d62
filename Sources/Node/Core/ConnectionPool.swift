import Foundation
import HatoConfig
import SMTPCore
import HatoSupport

/// Outbound SMTP sessions kept open for reuse, and the shaping limits over them: the locked
/// shell around a `ShapingLedger`, which makes every decision.
///
/// Every connection belongs to a (sending IP, provider) `ShapingKey`. Per key: the number of
/// open connections (busy, idle, or being opened) — never more than the rule's
/// `max_connections`; the rate limiter for `max_rate`; and, per `SessionRoute`, the idle
/// sessions that wait for their next message. A session is used for at most
/// `messages_per_connection` messages and is closed (QUIT) after `idleTimeout` seconds unused.
///
/// All delivery threads of a node share one pool, so the limits hold across every lease the
/// node works on. Waiting for a slot blocks the calling thread (never a cooperative-pool
/// thread) until a connection is returned, closed, or the caller's deadline passes (monotonic
/// clock). Network I/O (QUIT) always happens outside the lock; a closed session's slot is
/// released only after its QUIT, so the receiver never sees more than the limit.
public final class SMTPConnectionPool: Sendable {
    /// What `checkout` found.
    public enum Checkout {
        /// An idle session to this target: `prepareForReuse()` it before use (see `replace(_:)` if it fails).
        case reuse(SMTPClientConnection)
        /// A connection slot: open a connection, then `attach(_:to:)` it, or `abandon(_:)` the slot.
        case open(Ticket)
        /// No slot before the deadline: the reason, for the deferral text.
        case unavailable(String)
    }

    /// A reserved connection slot.
    public typealias Ticket = ShapingTicket

    private typealias Ledger = ShapingLedger<SMTPClientConnection>

    /// The shaping rules.
    public let shaping: ShapingSettings
    /// Seconds an idle session is kept (0: closed after each delivery).
    public let idleTimeout: TimeInterval

    private let state: LockedCondition<Ledger>
    /// The idle reaper, started with the first idle session.
    private let reaper = Locked<BackgroundLoop?>(nil)
    /// How often the reaper looks for expired idle sessions.
    private let reapInterval: Duration

    /// - Parameters:
    ///   - shaping: the limits (default: 10 connections, 100 messages per connection, no rate limit).
    ///   - idleTimeout: seconds an unused session stays open (0 closes sessions after each delivery).
    ///   - priority: the slots per key kept for transactional mail (`priority.bulk_reserve`).
    public init(shaping: ShapingSettings = ShapingSettings(), idleTimeout: TimeInterval = 30, priority: PrioritySettings = PrioritySettings()) {
        self.shaping = shaping
        self.idleTimeout = max(0, idleTimeout)
        let ledger = Ledger(shaping: shaping, idleTimeout: .seconds(self.idleTimeout), priority: priority)
        reapInterval = ledger.reapInterval
        state = LockedCondition(ledger)
    }

    deinit { shutdown() }

    /// The shaping key and limits for a target's MX host.
    public func key(sendingIP: String, mxHost: String) -> (ShapingKey, ShapingLimits) {
        let g = shaping.group(forMXHost: mxHost)
        return (ShapingKey(sendingIP: sendingIP, group: g.name), g.limits)
    }

    /// Finds an idle session to `target`, or reserves a slot to open one, waiting until `deadline`.
    /// - Parameters:
    ///   - sendingIP: the local source address.
    ///   - heloName: the EHLO name (sessions are reused only with the same name).
    ///   - target: the MX host and address.
    ///   - requireTLS: whether only a TLS session will do.
    ///   - deadline: the latest monotonic instant to wait for a slot.
    ///   - evictingIdle: whether an idle session to another MX host of the same shaping key may
    ///     be closed to free a slot.
    ///   - speculative: a checkout nobody waits for (a replacement session): refused for a
    ///     revoked sending IP.
    ///   - priority: the delivery's class: bulk never takes the `priority.bulk_reserve` last
    ///     slots of the key (it waits for one of the others instead).
    public func checkout(sendingIP: String, heloName: String, target: DeliveryTarget, requireTLS: Bool,
                         until deadline: ContinuousClock.Instant, evictingIdle: Bool = true, speculative: Bool = false,
                         priority: MessagePriority = .transactional) -> Checkout {
        let request = Ledger.CheckoutRequest(route: SessionRoute(sendingIP: sendingIP, heloName: heloName, target: target),
                                             requireTLS: requireTLS, evictingIdle: evictingIdle, speculative: speculative, priority: priority)
        while true {
            let step = state.wait(until: deadline, for: { $0.mayCheckout(request) }) { ledger, _ in
                ledger.checkout(request, now: .now, deadline: deadline)
            }
            retire(step.retirements)
            switch step.decision {
            case .reuse(let c): return .reuse(c)
            case .open(let t): return .open(t)
            case .unavailable(let why): return .unavailable(why)
            case .wait: continue
            }
        }
    }

    /// `checkout` with a wall-clock deadline, converted once to the monotonic clock.
    public func checkout(sendingIP: String, heloName: String, target: DeliveryTarget, requireTLS: Bool, until deadline: Date,
                         evictingIdle: Bool = true) -> Checkout {
        checkout(sendingIP: sendingIP, heloName: heloName, target: target, requireTLS: requireTLS,
                 until: .from(deadline), evictingIdle: evictingIdle)
    }

    /// Registers a newly opened session on its slot.
    public func attach(_ connection: SMTPClientConnection, to ticket: Ticket) {
        connection.shapingKey = ticket.key
        connection.messageLimit = ticket.limits.messagesPerConnection
    }

    /// Gives back a slot whose connection could not be opened.
    public func abandon(_ ticket: Ticket) {
        state.withLockAndBroadcast { $0.release(ticket.key) }
    }

    /// Closes a dead reused session and turns its slot into a ticket at once (no waiting), so
    /// the message goes out on a fresh connection without delay.
    public func replace(_ connection: SMTPClientConnection) -> Ticket {
        connection.close()
        return Ticket(key: slotKey(of: connection), limits: shaping.group(forMXHost: connection.target.host).limits)
    }

    /// Whether the session may carry another message (its messages-per-connection limit).
    public func hasRoom(_ connection: SMTPClientConnection) -> Bool {
        Ledger.hasRoom(transactions: connection.transactions, limit: connection.messageLimit, isClosed: connection.isClosed)
    }

    /// Returns a session after a delivery: kept idle for reuse when `reusable`, it is healthy, it
    /// has room for more messages, idle reuse is on and its sending IP is not revoked;
    /// otherwise QUIT and closed (its slot freed after the server closed).
    public func checkin(_ connection: SMTPClientConnection, reusable: Bool) {
        let keepable = reusable && hasRoom(connection)
        let kept = state.withLockAndBroadcast {
            $0.checkin(connection, route: connection.route, key: slotKey(of: connection), hasTLS: connection.tls != nil,
                       keepable: keepable, now: .now)
        }
        if kept {
            startReaper()
            return
        }
        // The slot is freed only once the server has closed its side: the receiver never
        // sees more than the limit, not even while a retired session is still closing.
        connection.quit()
        state.withLockAndBroadcast { $0.release(slotKey(of: connection)) }
    }

    /// Waits for the rate limit of the session's key (`max_rate`), booking a slot.
    /// - Parameters:
    ///   - connection: the session about to send.
    ///   - deadline: the latest acceptable slot (monotonic).
    /// - Returns: false (nothing booked) when the slot would come after `deadline`.
    public func awaitSendSlot(for connection: SMTPClientConnection, until deadline: ContinuousClock.Instant) -> Bool {
        guard let key = connection.shapingKey else { return true }
        let limits = shaping.group(forMXHost: connection.target.host).limits
        guard limits.maxRate != nil else { return true }
        let now = ContinuousClock.now
        guard let at = state.withLock({ $0.reserveSendSlot(for: key, limits: limits, now: now, deadline: deadline) }) else {
            return false
        }
        let wait = at - ContinuousClock.now
        if wait > .zero { Thread.sleep(forTimeInterval: wait.inSeconds) }
        return true
    }

    /// Open connections (busy and idle) per key, for metrics and tests.
    public var openConnections: [ShapingKey: Int] { state.withLock { $0.openConnections } }
    /// Idle sessions in the pool.
    public var idleCount: Int { state.withLock { $0.idleCount } }
    /// The most connections that were ever open at once per key.
    public var peakConnections: [ShapingKey: Int] { state.withLock { $0.peakConnections } }

    /// Closes the idle sessions (of one sending IP, or all) with QUIT.
    public func closeIdle(sendingIP: String? = nil) {
        retire(state.withLock { $0.takeIdle(sendingIP: sendingIP) }.map { Ledger.Retirement(idle: $0, releasesSlot: true) })
    }

    /// A sending IP was revoked: its idle sessions are closed (QUIT) now, none is kept idle or
    /// opened in the background from it any more; deliveries in flight still get sessions.
    public func revoke(sendingIP: String) {
        retire(state.withLock { $0.revoke(sendingIP: sendingIP) }.map { Ledger.Retirement(idle: $0, releasesSlot: true) })
    }

    /// A sending IP was (again) assigned to this node: sessions from it are kept idle again.
    public func reinstate(sendingIP: String) {
        state.withLock { $0.reinstate(sendingIP: sendingIP) }
    }

    /// Whether `sendingIP` is revoked (see `revoke(sendingIP:)`).
    public func isRevoked(sendingIP: String) -> Bool { state.withLock { $0.isRevoked(sendingIP) } }

    /// Closes every idle session and refuses further checkouts.
    public func shutdown() {
        let idle = state.withLockAndBroadcast { $0.stop() }
        reaper.withLock { $0 }?.stop()
        retire(idle.map { Ledger.Retirement(idle: $0, releasesSlot: true) })
    }

    // MARK: Private

    /// The key a session's slot counts against.
    private func slotKey(of connection: SMTPClientConnection) -> ShapingKey {
        connection.shapingKey ?? ShapingKey(sendingIP: connection.sendingIP, group: "mx:" + connection.target.host)
    }

    /// QUITs retired sessions (outside the lock), then releases the slots that were theirs.
    private func retire(_ retirements: [Ledger.Retirement]) {
        guard !retirements.isEmpty else { return }
        for r in retirements { r.idle.session.quit() }
        let keys = retirements.filter(\.releasesSlot).map(\.idle.key)
        if !keys.isEmpty { state.withLockAndBroadcast { ledger in for k in keys { ledger.release(k) } } }
    }

    /// Starts the idle reaper once: it closes sessions idle for `idleTimeout`.
    private func startReaper() {
        let interval = reapInterval
        let loop: BackgroundLoop? = reaper.withLock { current in
            guard current == nil else { return nil }
            let loop = BackgroundLoop(name: "hato-smtp-pool-reaper") { [weak self] in
                guard let self else { return .seconds(3600) }
                self.retire(self.state.withLock { $0.expireIdle(now: .now) }.map { Ledger.Retirement(idle: $0, releasesSlot: true) })
                return interval
            }
            current = loop
            return loop
        }
        if state.withLock({ $0.stopped }) { loop?.stop() }
        loop?.start()
    }
}
