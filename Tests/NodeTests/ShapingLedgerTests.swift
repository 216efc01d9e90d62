import Foundation
import Testing
@testable import HatoConfig
@testable import HatoNode
@testable import HatoSupport

/// `ShapingLedger` as a value with a manual monotonic clock, `SessionReplacer`'s bounded queue,
/// and revoked sending IPs in the pool (filter: `ShapingLedgerTests`).
@Suite("ShapingLedgerTests")
struct ShapingLedgerTests {}

private typealias Ledger = ShapingLedger<Int>

private let t0 = ContinuousClock.now
private let mxA = DeliveryTarget(host: "mx-a.bigmail.test", address: "192.0.2.1", port: 25)
private let mxB = DeliveryTarget(host: "mx-b.bigmail.test", address: "192.0.2.2", port: 25)
private let other = DeliveryTarget(host: "mx.other.test", address: "192.0.2.9", port: 25)

private func ledger(maxConnections: Int = 2, rate: String? = nil, idle: Duration = .seconds(30)) -> Ledger {
    let limits = ShapingLimits(maxConnections: maxConnections, messagesPerConnection: 3, maxRate: rate.flatMap { try? MessageRate(parsing: $0) })
    let provider = ShapingProvider(name: "bigmail", mxSuffixes: ["bigmail.test"], limits: limits)
    return Ledger(shaping: ShapingSettings(defaults: ShapingLimits(maxConnections: 5), providers: [provider]), idleTimeout: idle)
}

private func route(_ target: DeliveryTarget = mxA, ip: String = "198.51.100.7", helo: String = "mta.example.org") -> SessionRoute {
    SessionRoute(sendingIP: ip, heloName: helo, target: target)
}

private func request(_ target: DeliveryTarget = mxA, ip: String = "198.51.100.7", helo: String = "mta.example.org", tls: Bool = false,
                     evicting: Bool = true, speculative: Bool = false) -> Ledger.CheckoutRequest {
    Ledger.CheckoutRequest(route: route(target, ip: ip, helo: helo), requireTLS: tls, evictingIdle: evicting, speculative: speculative)
}

private let bigmail = ShapingKey(sendingIP: "198.51.100.7", group: "bigmail")

private extension Ledger.Decision {
    var name: String {
        switch self {
        case .reuse(let s): return "reuse \(s)"
        case .open(let t): return "open \(t.key)"
        case .wait: return "wait"
        case .unavailable(let why): return "unavailable: \(why)"
        }
    }
}

extension ShapingLedgerTests {
    @Test("max_connections per key: slots up to the limit, then wait until the deadline, then unavailable; a release frees one")
    func connectionLimit() {
        var l = ledger(maxConnections: 2)
        let deadline = t0 + .seconds(10)
        #expect(l.checkout(request(mxA), now: t0, deadline: deadline).decision.name == "open \(bigmail)")
        #expect(l.checkout(request(mxB), now: t0, deadline: deadline).decision.name == "open \(bigmail)")
        #expect(!l.mayCheckout(request(mxA)))
        #expect(l.checkout(request(mxA), now: t0 + .seconds(9), deadline: deadline).decision.name == "wait")
        #expect(l.checkout(request(mxA), now: deadline, deadline: deadline).decision.name
                == "unavailable: shaping: all 2 connection(s) for \(bigmail) stayed busy until the lease's shaping deadline")
        // Another sending IP, or a host of no provider, has slots of its own.
        #expect(l.checkout(request(mxA, ip: "198.51.100.8"), now: t0, deadline: deadline).decision.name == "open 198.51.100.8/bigmail")
        #expect(l.checkout(request(other), now: t0, deadline: deadline).decision.name == "open 198.51.100.7/mx:mx.other.test")
        #expect(l.openConnections[bigmail] == 2)
        l.release(bigmail)
        #expect(l.mayCheckout(request(mxA)))
        #expect(l.checkout(request(mxA), now: t0, deadline: deadline).decision.name == "open \(bigmail)")
        #expect(l.peakConnections[bigmail] == 2)
    }

    @Test("idle sessions are reused only on their route; checkin keeps only keepable sessions while idle reuse is on")
    func idleReuse() {
        var l = ledger()
        _ = l.checkout(request(mxA), now: t0, deadline: t0)
        let kept1 = l.checkin(1, route: route(mxA), key: bigmail, hasTLS: false, keepable: true, now: t0)
        #expect(kept1)
        let kept2 = l.checkin(2, route: route(mxA), key: bigmail, hasTLS: false, keepable: false, now: t0)
        #expect(!kept2)
        #expect(l.idleCount == 1)
        // Another HELO name is another route: a new slot, not the idle session.
        #expect(l.checkout(request(mxA, helo: "other.example.org"), now: t0, deadline: t0).decision.name == "open \(bigmail)")
        #expect(l.checkout(request(mxA), now: t0, deadline: t0).decision.name == "reuse 1")
        #expect(l.idleCount == 0)

        var off = ledger(idle: .zero)
        let kept3 = off.checkin(1, route: route(mxA), key: bigmail, hasTLS: false, keepable: true, now: t0)
        #expect(!kept3)
    }

    @Test("messages_per_connection: room while under the limit (0: unlimited) and open")
    func messagesPerConnection() {
        #expect(Ledger.hasRoom(transactions: 2, limit: 3, isClosed: false))
        #expect(!Ledger.hasRoom(transactions: 3, limit: 3, isClosed: false))
        #expect(Ledger.hasRoom(transactions: 1000, limit: 0, isClosed: false))
        #expect(!Ledger.hasRoom(transactions: 0, limit: 3, isClosed: true))
    }

    @Test("idle sessions expire after idle_timeout on the monotonic clock, and only those")
    func idleExpiry() {
        var l = ledger(idle: .seconds(30))
        let kept4 = l.checkin(1, route: route(mxA), key: bigmail, hasTLS: false, keepable: true, now: t0)
        #expect(kept4)
        let kept5 = l.checkin(2, route: route(mxB), key: bigmail, hasTLS: false, keepable: true, now: t0 + .seconds(10))
        #expect(kept5)
        #expect(l.expireIdle(now: t0 + .seconds(29)).isEmpty)
        #expect(l.expireIdle(now: t0 + .seconds(30)).map(\.session) == [1])
        #expect(l.idleCount == 1)
        #expect(l.expireIdle(now: t0 + .seconds(40)).map(\.session) == [2])
        #expect(l.reapInterval == .seconds(1))
        #expect(ledger(idle: .milliseconds(100)).reapInterval == .milliseconds(50))
    }

    @Test("at the limit an idle session of the same key to another MX host gives up its slot (not for speculative opens)")
    func eviction() {
        var l = ledger(maxConnections: 1)
        _ = l.checkout(request(mxA), now: t0, deadline: t0)
        let kept6 = l.checkin(7, route: route(mxA), key: bigmail, hasTLS: false, keepable: true, now: t0)
        #expect(kept6)
        #expect(!l.mayCheckout(request(mxB, evicting: false)))
        #expect(l.checkout(request(mxB, evicting: false), now: t0, deadline: t0).decision.name.hasPrefix("unavailable"))
        #expect(l.mayCheckout(request(mxB)))
        let step = l.checkout(request(mxB), now: t0, deadline: t0)
        #expect(step.decision.name == "open \(bigmail)")
        #expect(step.retirements.map(\.idle.session) == [7])
        #expect(step.retirements.map(\.releasesSlot) == [false])   // the slot went to the new connection
        #expect(l.openConnections[bigmail] == 1)
        #expect(l.idleCount == 0)
    }

    @Test("a TLS-only request retires a plaintext idle session and takes its slot; a TLS one is reused")
    func requireTLS() {
        var l = ledger(maxConnections: 1)
        _ = l.checkout(request(mxA), now: t0, deadline: t0)
        let kept7 = l.checkin(1, route: route(mxA), key: bigmail, hasTLS: false, keepable: true, now: t0)
        #expect(kept7)
        let step = l.checkout(request(mxA, tls: true), now: t0, deadline: t0)
        #expect(step.decision.name == "open \(bigmail)")
        #expect(step.retirements.map(\.idle.session) == [1])
        #expect(l.openConnections[bigmail] == 1)
        let kept8 = l.checkin(2, route: route(mxA), key: bigmail, hasTLS: true, keepable: true, now: t0)
        #expect(kept8)
        #expect(l.checkout(request(mxA, tls: true), now: t0, deadline: t0).decision.name == "reuse 2")
    }

    @Test("max_rate: slots spaced evenly per key on the monotonic clock; none booked past the deadline")
    func rate() {
        var l = ledger(rate: "120/min")
        let limits = l.key(sendingIP: "198.51.100.7", mxHost: mxA.host).1
        #expect(l.reserveSendSlot(for: bigmail, limits: limits, now: t0, deadline: t0 + .seconds(10)) == t0)
        #expect(l.reserveSendSlot(for: bigmail, limits: limits, now: t0, deadline: t0 + .seconds(10)) == t0 + .milliseconds(500))
        #expect(l.reserveSendSlot(for: bigmail, limits: limits, now: t0, deadline: t0 + .milliseconds(900)) == nil)
        #expect(l.reserveSendSlot(for: bigmail, limits: limits, now: t0 + .seconds(5), deadline: t0 + .seconds(10)) == t0 + .seconds(5))
        let unlimited = ShapingLimits(maxConnections: 1)
        #expect(l.reserveSendSlot(for: bigmail, limits: unlimited, now: t0 + .seconds(1), deadline: t0) == t0 + .seconds(1))
    }

    @Test("a revoked sending IP: its idle sessions come out, none is kept or opened speculatively; deliveries still get slots")
    func revoke() {
        var l = ledger()
        let kept9 = l.checkin(1, route: route(mxA), key: bigmail, hasTLS: false, keepable: true, now: t0)
        #expect(kept9)
        let kept10 = l.checkin(2, route: route(mxA, ip: "198.51.100.8"), key: ShapingKey(sendingIP: "198.51.100.8", group: "bigmail"),
                          hasTLS: false, keepable: true, now: t0)
        #expect(kept10)
        #expect(l.revoke(sendingIP: "198.51.100.7").map(\.session) == [1])
        #expect(l.idleCount == 1)
        let kept11 = l.checkin(3, route: route(mxA), key: bigmail, hasTLS: false, keepable: true, now: t0)
        #expect(!kept11)
        #expect(l.checkout(request(mxA, speculative: true), now: t0, deadline: t0).decision.name == "unavailable: sending IP 198.51.100.7 was revoked")
        #expect(l.checkout(request(mxA), now: t0, deadline: t0).decision.name == "open \(bigmail)")
        l.reinstate(sendingIP: "198.51.100.7")
        let kept12 = l.checkin(3, route: route(mxA), key: bigmail, hasTLS: false, keepable: true, now: t0)
        #expect(kept12)
    }

    @Test("stop: every idle session comes out and no checkout succeeds")
    func stop() {
        var l = ledger()
        let kept13 = l.checkin(1, route: route(mxA), key: bigmail, hasTLS: false, keepable: true, now: t0)
        #expect(kept13)
        #expect(l.stop().map(\.session) == [1])
        #expect(l.mayCheckout(request(mxA)))
        #expect(l.checkout(request(mxA), now: t0, deadline: t0 + .seconds(5)).decision.name == "unavailable: the node is stopping")
        let kept14 = l.checkin(2, route: route(mxA), key: bigmail, hasTLS: false, keepable: true, now: t0)
        #expect(!kept14)
    }
}

extension ShapingLedgerTests {
    @Test("SessionReplacer: one worker thread drains the queue in order; a full queue drops requests")
    func replacerQueue() throws {
        let gate = LockedCondition(false)
        let seen = Locked<[(String, pthread_t)]>([])
        let replacer = SessionReplacer(capacity: 2) { r in
            gate.wait(until: nil, for: { $0 }) { _, _ in }
            seen.withLock { $0.append((r.target.host, pthread_self())) }
        }
        defer { replacer.stop() }
        func req(_ host: String) -> SessionReplacer.Request {
            SessionReplacer.Request(sendingIP: "127.0.0.1", heloName: "h", target: DeliveryTarget(host: host, address: "127.0.0.1", port: 25),
                                    policy: .opportunistic)
        }
        #expect(replacer.request(req("a")))
        try waitFor("the worker took the first request") { replacer.waiting == 0 && replacer.backlog == 1 }
        #expect(replacer.request(req("b")))
        #expect(replacer.request(req("c")))
        #expect(!replacer.request(req("d")))   // two waiting: full
        #expect(replacer.dropped == 1)
        gate.withLockAndBroadcast { $0 = true }
        try waitFor("the queue drained") { replacer.backlog == 0 }
        let done = seen.snapshot
        #expect(done.map(\.0) == ["a", "b", "c"])
        #expect(Set(done.map(\.1)).count == 1)
    }
}
