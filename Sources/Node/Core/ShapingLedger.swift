import Foundation
import HatoConfig
import SMTPCore

/// What a reusable outbound session is for: it is reused only for the same sending IP, HELO
/// name, MX host, address and port.
public struct SessionRoute: Sendable, Hashable, CustomStringConvertible {
    /// The local source address.
    public let sendingIP: String
    /// The EHLO name announced (RFC 5321 §4.1.1.1).
    public let heloName: String
    /// The MX host name.
    public let host: String
    /// The numeric address connected to.
    public let address: String
    /// The TCP port.
    public let port: UInt16

    /// The route of a session from `sendingIP` with `heloName` to `target`.
    public init(sendingIP: String, heloName: String, target: DeliveryTarget) {
        self.sendingIP = sendingIP; self.heloName = heloName
        host = target.host; address = target.address; port = target.port
    }

    /// `host[address]:port from sendingIP`.
    public var description: String { "\(host)[\(address)]:\(port) from \(sendingIP)" }
}

/// A reserved connection slot: one of its key's `max_connections`.
public struct ShapingTicket: Sendable, Equatable {
    /// The key the slot counts against.
    public let key: ShapingKey
    /// The limits that apply.
    public let limits: ShapingLimits

    /// A ticket from its parts.
    public init(key: ShapingKey, limits: ShapingLimits) { self.key = key; self.limits = limits }
}

/// The shaping arithmetic of the node's outbound sessions, as a value with time passed in:
/// per (sending IP, provider) `ShapingKey`, the open connections (busy, idle, or being
/// opened) against `max_connections`, the `max_rate` limiter, the idle sessions per
/// `SessionRoute` and when they expire, and the sending IPs that were revoked.
///
/// It never touches a socket and never waits: every operation returns what the caller must
/// do (reuse this session, open a connection on this ticket, wait, QUIT these sessions and
/// then `release` their slots). `SMTPConnectionPool` is the locked shell that carries it out.
/// `Session` is the caller's handle of an open session (the pool's `SMTPClientConnection`).
public struct ShapingLedger<Session: Sendable>: Sendable {
    /// A session waiting, idle, for its next message.
    public struct IdleSession: Sendable {
        /// The session.
        public let session: Session
        /// Its route.
        public let route: SessionRoute
        /// The key its slot counts against.
        public let key: ShapingKey
        /// Whether it runs over TLS.
        public let hasTLS: Bool
        /// When it became idle (monotonic).
        public let since: ContinuousClock.Instant
    }

    /// A session to close (QUIT, outside any lock) because of a ledger decision.
    public struct Retirement: Sendable {
        /// The idle session.
        public let idle: IdleSession
        /// Whether the caller must `release` the session's slot once it is closed (false:
        /// the slot went to the caller's new connection).
        public let releasesSlot: Bool
    }

    /// What a caller asks for.
    public struct CheckoutRequest: Sendable, Equatable {
        /// The route of the session wanted.
        public let route: SessionRoute
        /// Whether only a TLS session will do (`tls: required`).
        public let requireTLS: Bool
        /// Whether an idle session of the same key to another MX host may give up its slot.
        public let evictingIdle: Bool
        /// A speculative checkout (a replacement session nobody waits for): refused for a
        /// revoked sending IP.
        public let speculative: Bool
        /// The delivery's class (issue 18): a bulk one never takes the key's reserved slots.
        public let priority: MessagePriority

        /// A request from its parts.
        public init(route: SessionRoute, requireTLS: Bool, evictingIdle: Bool = true, speculative: Bool = false,
                    priority: MessagePriority = .transactional) {
            self.route = route; self.requireTLS = requireTLS; self.evictingIdle = evictingIdle; self.speculative = speculative
            self.priority = priority
        }
    }

    /// The outcome of a checkout.
    public enum Decision: Sendable {
        /// Reuse this idle session (prepare it for reuse first).
        case reuse(Session)
        /// Open a connection on this slot (then `attach` it or `release` the slot).
        case open(ShapingTicket)
        /// Nothing free yet: wait for a `release`/`checkin` and ask again (until the deadline).
        case wait
        /// No slot before the deadline, or no slot at all: the reason, for the deferral text.
        case unavailable(String)
    }

    /// A checkout's decision and the sessions it retired.
    public struct CheckoutStep: Sendable {
        /// What to do.
        public let decision: Decision
        /// Sessions to QUIT (whatever the decision), then `release` those that say so.
        public let retirements: [Retirement]
    }

    /// The shaping rules.
    public let shaping: ShapingSettings
    /// How long an idle session is kept (zero: never kept).
    public let idleTimeout: Duration
    /// The slots per key only transactional deliveries may take (`priority.bulk_reserve`).
    public let priority: PrioritySettings

    private var openCount: [ShapingKey: Int] = [:]
    private var peak: [ShapingKey: Int] = [:]
    private var limiters: [ShapingKey: MessageRateLimiter<ContinuousClock.Instant>] = [:]
    private var idle: [SessionRoute: [IdleSession]] = [:]
    private var revoked: Set<String> = []
    /// Whether the pool stopped: no checkout succeeds, nothing is kept idle.
    public private(set) var stopped = false

    /// - Parameters:
    ///   - shaping: the limits.
    ///   - idleTimeout: how long an unused session stays open (zero: closed after each use).
    ///   - priority: the slots per key kept for transactional deliveries (default: one).
    public init(shaping: ShapingSettings, idleTimeout: Duration, priority: PrioritySettings = PrioritySettings()) {
        self.shaping = shaping
        self.idleTimeout = max(.zero, idleTimeout)
        self.priority = priority
    }

    /// Sessions of `key` in use (open, not idle): what a bulk checkout counts against the
    /// slots it may take.
    public func busyConnections(_ key: ShapingKey) -> Int {
        openCount[key, default: 0] - idle.values.reduce(0) { $0 + $1.filter { $0.key == key }.count }
    }

    /// Whether a bulk delivery must wait because the key's sessions in use already reach what
    /// bulk may use (`max_connections` less the reserve).
    private func bulkMustWait(_ request: CheckoutRequest, key: ShapingKey, limits: ShapingLimits) -> Bool {
        request.priority == .bulk && busyConnections(key) >= priority.usable(limits.maxConnections, by: .bulk)
    }

    /// The shaping key and limits for a session from `sendingIP` to `mxHost`.
    public func key(sendingIP: String, mxHost: String) -> (ShapingKey, ShapingLimits) {
        let group = shaping.group(forMXHost: mxHost)
        return (ShapingKey(sendingIP: sendingIP, group: group.name), group.limits)
    }

    /// Whether `checkout` would decide anything but `.wait` now (the condition a waiting
    /// caller sleeps on).
    public func mayCheckout(_ request: CheckoutRequest) -> Bool {
        if stopped || (request.speculative && revoked.contains(request.route.sendingIP)) { return true }
        if request.priority == .bulk {
            let (key, limits) = key(sendingIP: request.route.sendingIP, mxHost: request.route.host)
            if bulkMustWait(request, key: key, limits: limits) { return false }
        }
        if idle[request.route] != nil { return true }
        let (key, limits) = key(sendingIP: request.route.sendingIP, mxHost: request.route.host)
        if openCount[key, default: 0] < limits.maxConnections { return true }
        return request.evictingIdle && idle.values.contains { $0.contains { $0.key == key } }
    }

    /// Finds an idle session for the request's route, or reserves a slot to open one.
    ///
    /// In order: an idle session of the route is reused (a plaintext one cannot serve a
    /// TLS-only request: it is retired and its slot goes to the caller); a free slot under
    /// `max_connections` is taken; at the limit, an idle session of the same key to another
    /// MX host gives up its slot (when `evictingIdle`); otherwise the caller waits until
    /// `deadline`. A bulk request waits first while the key's sessions in use reach
    /// `max_connections` less `priority.bulk_reserve`, idle sessions or not (issue 18).
    /// - Parameters:
    ///   - request: the route and conditions.
    ///   - now: the current monotonic instant.
    ///   - deadline: when waiting ends (`.unavailable` from then on).
    /// - Returns: the decision, and the sessions to QUIT.
    public mutating func checkout(_ request: CheckoutRequest, now: ContinuousClock.Instant,
                                  deadline: ContinuousClock.Instant) -> CheckoutStep {
        if stopped { return CheckoutStep(decision: .unavailable("the node is stopping"), retirements: []) }
        let route = request.route
        if request.speculative && revoked.contains(route.sendingIP) {
            return CheckoutStep(decision: .unavailable("sending IP \(route.sendingIP) was revoked"), retirements: [])
        }
        let (key, limits) = key(sendingIP: route.sendingIP, mxHost: route.host)
        let ticket = ShapingTicket(key: key, limits: limits)
        var retirements: [Retirement] = []
        if bulkMustWait(request, key: key, limits: limits) {
            if now >= deadline {
                return CheckoutStep(decision: .unavailable("shaping: the connection(s) for \(key) open to bulk mail stayed busy until the lease's shaping deadline (\(priority.reserve(of: limits.maxConnections)) kept for transactional mail)"),
                                    retirements: [])
            }
            return CheckoutStep(decision: .wait, retirements: [])
        }
        while var list = idle[route], let entry = list.popLast() {
            idle[route] = list.isEmpty ? nil : list
            if request.requireTLS && !entry.hasTLS {
                // A plaintext session cannot serve a TLS-only route: it gives its slot to this caller.
                if entry.key == key {
                    retirements.append(Retirement(idle: entry, releasesSlot: false))
                    return CheckoutStep(decision: .open(ticket), retirements: retirements)
                }
                retirements.append(Retirement(idle: entry, releasesSlot: true))
                continue
            }
            return CheckoutStep(decision: .reuse(entry.session), retirements: retirements)
        }
        if openCount[key, default: 0] < limits.maxConnections {
            openCount[key, default: 0] += 1
            peak[key] = max(peak[key] ?? 0, openCount[key] ?? 0)
            return CheckoutStep(decision: .open(ticket), retirements: retirements)
        }
        // At the limit: an idle session of the same key to another MX host gives up its slot.
        if request.evictingIdle, let other = idle.first(where: { $0.value.contains { $0.key == key } })?.key,
           var list = idle[other], let index = list.firstIndex(where: { $0.key == key }) {
            let victim = list.remove(at: index)
            idle[other] = list.isEmpty ? nil : list
            retirements.append(Retirement(idle: victim, releasesSlot: false))
            return CheckoutStep(decision: .open(ticket), retirements: retirements)
        }
        if now >= deadline {
            return CheckoutStep(decision: .unavailable("shaping: all \(limits.maxConnections) connection(s) for \(key) stayed busy until the lease's shaping deadline"),
                                retirements: retirements)
        }
        return CheckoutStep(decision: .wait, retirements: retirements)
    }

    /// Frees one slot of `key`: a connection that could not be opened, or one that is closed.
    public mutating func release(_ key: ShapingKey) {
        let n = (openCount[key] ?? 1) - 1
        openCount[key] = n > 0 ? n : nil
    }

    /// Whether a session may carry another message: open, and under its
    /// `messages_per_connection` limit.
    /// - Parameters:
    ///   - transactions: mail transactions started on the session.
    ///   - limit: its messages-per-connection limit (0: unlimited).
    ///   - isClosed: whether it was closed.
    public static func hasRoom(transactions: Int, limit: Int, isClosed: Bool) -> Bool {
        !isClosed && (limit == 0 || transactions < limit)
    }

    /// Takes a session back after a delivery: kept idle when `reusable`, it has room, idle
    /// reuse is on, the ledger runs and its sending IP was not revoked.
    /// - Parameters:
    ///   - session: the session.
    ///   - route: its route.
    ///   - key: the key of its slot.
    ///   - hasTLS: whether it runs over TLS.
    ///   - keepable: whether the session may be reused (`reusable` and `hasRoom`).
    ///   - now: the current monotonic instant.
    /// - Returns: true when it was kept idle; false: the caller QUITs it and then releases its slot.
    public mutating func checkin(_ session: Session, route: SessionRoute, key: ShapingKey, hasTLS: Bool, keepable: Bool,
                                 now: ContinuousClock.Instant) -> Bool {
        guard keepable && idleTimeout > .zero && !stopped && !revoked.contains(route.sendingIP) else { return false }
        idle[route, default: []].append(IdleSession(session: session, route: route, key: key, hasTLS: hasTLS, since: now))
        return true
    }

    /// Books the next `max_rate` slot of `key` (nothing to book without a rate).
    /// - Parameters:
    ///   - key: the session's shaping key.
    ///   - limits: the limits that apply to it.
    ///   - now: the current monotonic instant.
    ///   - deadline: the latest acceptable slot.
    /// - Returns: when the message may go (`now` without a rate), or nil (nothing booked)
    ///   when the slot would come after `deadline`.
    public mutating func reserveSendSlot(for key: ShapingKey, limits: ShapingLimits, now: ContinuousClock.Instant,
                                         deadline: ContinuousClock.Instant) -> ContinuousClock.Instant? {
        guard let rate = limits.maxRate else { return now }
        var limiter = limiters[key] ?? MessageRateLimiter(rate: rate, on: ContinuousClock.Instant.self)
        let slot = limiter.reserve(now: now, notAfter: deadline)
        limiters[key] = limiter
        return slot
    }

    /// Takes out the idle sessions unused for `idleTimeout` or longer (QUIT them, then release).
    public mutating func expireIdle(now: ContinuousClock.Instant) -> [IdleSession] {
        let timeout = idleTimeout
        return takeIdle { now - $0.since >= timeout }
    }

    /// Takes out the idle sessions of one sending IP, or all (QUIT them, then release).
    public mutating func takeIdle(sendingIP: String?) -> [IdleSession] {
        takeIdle { sendingIP == nil || $0.route.sendingIP == sendingIP }
    }

    /// Marks `sendingIP` revoked: no session from it is kept idle or opened speculatively
    /// until `reinstate`; deliveries in flight still get sessions.
    /// - Returns: its idle sessions, to QUIT at once (then release).
    public mutating func revoke(sendingIP: String) -> [IdleSession] {
        revoked.insert(sendingIP)
        return takeIdle(sendingIP: sendingIP)
    }

    /// Lifts a revocation (the IP was assigned to this node again).
    public mutating func reinstate(sendingIP: String) {
        revoked.remove(sendingIP)
    }

    /// Whether `sendingIP` is revoked.
    public func isRevoked(_ sendingIP: String) -> Bool { revoked.contains(sendingIP) }

    /// Stops the ledger: no checkout succeeds any more.
    /// - Returns: every idle session, to QUIT (then release).
    public mutating func stop() -> [IdleSession] {
        stopped = true
        return takeIdle(sendingIP: nil)
    }

    /// Open connections (busy, idle, being opened) per key.
    public var openConnections: [ShapingKey: Int] { openCount.filter { $0.value > 0 } }
    /// Idle sessions.
    public var idleCount: Int { idle.values.reduce(0) { $0 + $1.count } }
    /// The most connections that were open at once per key.
    public var peakConnections: [ShapingKey: Int] { peak }
    /// How often the idle sessions should be checked for expiry: a quarter of the idle
    /// timeout, between 50 ms and 1 s.
    public var reapInterval: Duration { min(.seconds(1), max(.milliseconds(50), idleTimeout / 4)) }

    private mutating func takeIdle(where expired: (IdleSession) -> Bool) -> [IdleSession] {
        var taken: [IdleSession] = []
        for (route, list) in idle {
            let old = list.filter(expired)
            if old.isEmpty { continue }
            taken += old
            let fresh = list.filter { !expired($0) }
            idle[route] = fresh.isEmpty ? nil : fresh
        }
        return taken
    }
}
