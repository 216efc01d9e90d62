import Foundation
import HatoShared

/// Outbound SMTP sessions kept open for reuse, and the shaping limits over them.
///
/// Every connection belongs to a (sending IP, provider) `ShapingKey`. The pool holds, per key:
/// the number of open connections (busy, idle, or being opened) — never more than the rule's
/// `max_connections`; the rate limiter for `max_rate`; and, per (sending IP, MX host, address),
/// the idle sessions that wait for their next message. A session is used for at most
/// `messages_per_connection` messages and is closed (QUIT) after `idleTimeout` seconds unused.
///
/// All delivery threads of a node share one pool, so the limits hold across every lease the
/// node works on. Waiting for a slot blocks the calling thread (never a cooperative-pool
/// thread) until a connection is returned, closed, or the caller's deadline passes.
/// `@unchecked Sendable`: all state is behind one `NSCondition`; network I/O (QUIT) happens
/// outside it.
public final class SMTPConnectionPool: @unchecked Sendable {
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
    public struct Ticket: Sendable {
        /// The key the slot counts against.
        public let key: ShapingKey
        /// The limits that apply.
        public let limits: ShapingLimits
    }

    private struct IdleKey: Hashable {
        let sendingIP: String
        let heloName: String
        let host: String
        let address: String
        let port: UInt16
    }

    /// The shaping rules.
    public let shaping: ShapingSettings
    /// Seconds an idle session is kept.
    public let idleTimeout: TimeInterval

    private let cond = NSCondition()
    private var openCount: [ShapingKey: Int] = [:]
    private var idle: [IdleKey: [SMTPClientConnection]] = [:]
    private var limiters: [ShapingKey: MessageRateLimiter] = [:]
    private var stopped = false
    private var reaperStarted = false
    private var maxOpenSeen: [ShapingKey: Int] = [:]

    /// - Parameters:
    ///   - shaping: the limits (default: 10 connections, 100 messages per connection, no rate limit).
    ///   - idleTimeout: seconds an unused session stays open (0 closes sessions after each delivery).
    public init(shaping: ShapingSettings = ShapingSettings(), idleTimeout: TimeInterval = 30) {
        self.shaping = shaping
        self.idleTimeout = max(0, idleTimeout)
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
    ///   - deadline: the latest time to wait for a slot.
    ///   - evictingIdle: whether an idle session to another MX host of the same shaping key may
    ///     be closed to free a slot (false for speculative opens).
    public func checkout(sendingIP: String, heloName: String, target: DeliveryTarget, requireTLS: Bool, until deadline: Date,
                         evictingIdle: Bool = true) -> Checkout {
        let (key, limits) = key(sendingIP: sendingIP, mxHost: target.host)
        let idleKey = IdleKey(sendingIP: sendingIP, heloName: heloName, host: target.host, address: target.address, port: target.port)
        var retire: [SMTPClientConnection] = []
        defer { for c in retire { c.quit() } }
        cond.lock()
        defer { cond.unlock() }
        while true {
            if stopped { return .unavailable("the node is stopping") }
            while var list = idle[idleKey], let conn = list.popLast() {
                idle[idleKey] = list.isEmpty ? nil : list
                if requireTLS && conn.tls == nil {
                    // A plaintext session cannot serve a TLS-only route: it gives its slot to this caller.
                    retire.append(conn)
                    if conn.shapingKey == key { return .open(Ticket(key: key, limits: limits)) }
                    release(key: conn.shapingKey ?? key)
                    continue
                }
                return .reuse(conn)
            }
            if openCount[key, default: 0] < limits.maxConnections {
                openCount[key, default: 0] += 1
                maxOpenSeen[key] = max(maxOpenSeen[key] ?? 0, openCount[key] ?? 0)
                return .open(Ticket(key: key, limits: limits))
            }
            // At the limit: an idle session of the same key to another MX host gives up its slot.
            if evictingIdle, let (other, _) = idle.first(where: { $0.value.contains { $0.shapingKey == key } }),
               var list = idle[other], let index = list.firstIndex(where: { $0.shapingKey == key }) {
                let victim = list.remove(at: index)
                idle[other] = list.isEmpty ? nil : list
                retire.append(victim)
                return .open(Ticket(key: key, limits: limits))
            }
            // Wait for a returned or closed session (spurious wake-ups just loop).
            if Date() >= deadline {
                return .unavailable("shaping: all \(limits.maxConnections) connection(s) for \(key) stayed busy until the lease's shaping deadline")
            }
            _ = cond.wait(until: deadline)
        }
    }

    /// Registers a newly opened session on its slot.
    public func attach(_ connection: SMTPClientConnection, to ticket: Ticket) {
        connection.shapingKey = ticket.key
        connection.messageLimit = ticket.limits.messagesPerConnection
    }

    /// Gives back a slot whose connection could not be opened.
    public func abandon(_ ticket: Ticket) {
        cond.lock()
        release(key: ticket.key)
        cond.unlock()
    }

    /// Closes a dead reused session and turns its slot into a ticket at once (no waiting), so
    /// the message goes out on a fresh connection without delay.
    public func replace(_ connection: SMTPClientConnection) -> Ticket {
        connection.close()
        let key = connection.shapingKey ?? ShapingKey(sendingIP: connection.sendingIP, group: "mx:" + connection.target.host)
        return Ticket(key: key, limits: shaping.group(forMXHost: connection.target.host).limits)
    }

    /// Whether the session may carry another message (its messages-per-connection limit).
    public func hasRoom(_ connection: SMTPClientConnection) -> Bool {
        !connection.isClosed && (connection.messageLimit == 0 || connection.transactions < connection.messageLimit)
    }

    /// Returns a session after a delivery: kept idle for reuse when `reusable`, it is healthy, it
    /// has room for more messages and idle reuse is on; otherwise QUIT and closed (its slot freed).
    public func checkin(_ connection: SMTPClientConnection, reusable: Bool) {
        let keep = reusable && hasRoom(connection) && idleTimeout > 0
        cond.lock()
        if keep && !stopped {
            let k = IdleKey(sendingIP: connection.sendingIP, heloName: connection.heloName, host: connection.target.host,
                            address: connection.target.address, port: connection.target.port)
            idle[k, default: []].append(connection)
            startReaperLocked()
            cond.broadcast()
            cond.unlock()
            return
        }
        cond.unlock()
        // The slot is freed only once the server has closed its side: the receiver never
        // sees more than the limit, not even while a retired session is still closing.
        connection.quit()
        cond.withLock { release(key: connection.shapingKey ?? ShapingKey(sendingIP: connection.sendingIP, group: "mx:" + connection.target.host)) }
    }

    /// Waits for the rate limit of the session's key (`max_rate`), booking a slot.
    /// - Returns: false (nothing booked) when the slot would come after `deadline`.
    public func awaitSendSlot(for connection: SMTPClientConnection, until deadline: Date) -> Bool {
        guard let key = connection.shapingKey else { return true }
        let limits = shaping.group(forMXHost: connection.target.host).limits
        guard let rate = limits.maxRate else { return true }
        let at: Date? = cond.withLock {
            var limiter = limiters[key] ?? MessageRateLimiter(rate: rate)
            let slot = limiter.reserve(now: Date(), notAfter: deadline)
            limiters[key] = limiter
            return slot
        }
        guard let at else { return false }
        let wait = at.timeIntervalSinceNow
        if wait > 0 { Thread.sleep(forTimeInterval: wait) }
        return true
    }

    /// Open connections (busy and idle) per key, for metrics and tests.
    public var openConnections: [ShapingKey: Int] { cond.withLock { openCount.filter { $0.value > 0 } } }
    /// Idle sessions in the pool.
    public var idleCount: Int { cond.withLock { idle.values.reduce(0) { $0 + $1.count } } }
    /// The most connections that were ever open at once per key.
    public var peakConnections: [ShapingKey: Int] { cond.withLock { maxOpenSeen } }

    /// Closes the idle sessions (of one sending IP, or all), e.g. when an IP is revoked.
    public func closeIdle(sendingIP: String? = nil) {
        var closing: [SMTPClientConnection] = []
        cond.lock()
        for (k, list) in idle where sendingIP == nil || k.sendingIP == sendingIP {
            closing += list
            idle[k] = nil
        }
        cond.unlock()
        for c in closing { c.quit() }
        cond.withLock { for c in closing { release(key: c.shapingKey ?? ShapingKey(sendingIP: c.sendingIP, group: "mx:" + c.target.host)) } }
    }

    /// Closes every idle session and refuses further checkouts.
    public func shutdown() {
        cond.lock()
        stopped = true
        cond.broadcast()
        cond.unlock()
        closeIdle()
    }

    // MARK: Private

    /// Frees one slot of `key` and wakes waiters. Call with the lock held.
    private func release(key: ShapingKey) {
        let n = (openCount[key] ?? 1) - 1
        openCount[key] = n > 0 ? n : nil
        cond.broadcast()
    }

    /// Starts the idle reaper thread once. Call with the lock held.
    private func startReaperLocked() {
        guard !reaperStarted else { return }
        reaperStarted = true
        let thread = Thread { [weak self] in
            while let pool = self, pool.reapOnce() {}
        }
        thread.name = "hato-smtp-pool-reaper"
        thread.start()
    }

    /// Closes idle sessions older than `idleTimeout`, then sleeps a little.
    /// - Returns: false once the pool is stopped.
    private func reapOnce() -> Bool {
        let interval = min(1.0, max(0.05, idleTimeout / 4))
        var expired: [SMTPClientConnection] = []
        cond.lock()
        if stopped { cond.unlock(); return false }
        _ = cond.wait(until: Date().addingTimeInterval(interval))
        let now = Date()
        for (k, list) in idle {
            let (old, fresh) = (list.filter { now.timeIntervalSince($0.lastUsed) >= idleTimeout }, list.filter { now.timeIntervalSince($0.lastUsed) < idleTimeout })
            if old.isEmpty { continue }
            expired += old
            idle[k] = fresh.isEmpty ? nil : fresh
        }
        let keepGoing = !stopped
        cond.unlock()
        for c in expired { c.quit() }
        if !expired.isEmpty {
            cond.withLock { for c in expired { release(key: c.shapingKey ?? ShapingKey(sendingIP: c.sendingIP, group: "mx:" + c.target.host)) } }
        }
        return keepGoing
    }
}
