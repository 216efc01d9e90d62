import Foundation
import Testing
@testable import SMTPCore
@testable import HatoConfig
@testable import HatoNode

/// Shaping: provider rules, the rate limiter, and the session pool's limits under concurrent
/// load, observed by the receiving side (filter: `ShapingTests`).
@Suite("ShapingTests", .serialized)
struct ShapingTests {}

/// Runs `body(0..<n)` on `n` dedicated threads (not the cooperative pool, not
/// `concurrentPerform`, which only uses as many threads as there are cores) and waits.
private func onThreads(_ n: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let group = DispatchGroup()
    for i in 0..<n {
        group.enter()
        Thread.detachNewThread {
            body(i)
            group.leave()
        }
    }
    group.wait()
}

extension ShapingTests {
    @Test("provider rules match MX host suffixes; other hosts are shaped per host with the defaults")
    func providerMatching() throws {
        let gmail = ShapingProvider(name: "gmail", mxSuffixes: ["google.com", "googlemail.com"],
                                    limits: ShapingLimits(maxConnections: 5, messagesPerConnection: 50, maxRate: try MessageRate(parsing: "300/min")))
        let settings = ShapingSettings(defaults: ShapingLimits(maxConnections: 2), providers: [gmail])
        #expect(settings.group(forMXHost: "gmail-smtp-in.l.google.com").name == "gmail")
        #expect(settings.group(forMXHost: "ALT1.ASPMX.L.GOOGLE.COM.").name == "gmail")
        #expect(settings.group(forMXHost: "google.com").limits.maxConnections == 5)
        #expect(settings.group(forMXHost: "notgoogle.com").name == "mx:notgoogle.com")
        #expect(settings.group(forMXHost: "mx.example.net").limits == ShapingLimits(maxConnections: 2))
        #expect(try MessageRate(parsing: "300/min").interval == 0.2)
        #expect(try MessageRate(parsing: "2/s").description == "2/s")
        #expect(throws: ConfigValueError.self) { try MessageRate(parsing: "0/min") }
        #expect(throws: ConfigValueError.self) { try MessageRate(parsing: "5/fortnight") }
    }

    @Test("the rate limiter spaces messages evenly and books nothing past the deadline")
    func rateLimiter() throws {
        var limiter = MessageRateLimiter(rate: try MessageRate(parsing: "120/min"))
        let t0 = Date(timeIntervalSince1970: 1_000)
        #expect(limiter.reserve(now: t0, notAfter: t0 + 10) == t0)
        #expect(limiter.reserve(now: t0, notAfter: t0 + 10) == t0 + 0.5)
        #expect(limiter.reserve(now: t0 + 0.2, notAfter: t0 + 10) == t0 + 1.0)
        #expect(limiter.reserve(now: t0, notAfter: t0 + 1.2) == nil)
        #expect(limiter.nextFree == t0 + 1.5)
        #expect(limiter.reserve(now: t0 + 5, notAfter: t0 + 10) == t0 + 5)
    }

    @Test("under load from 12 threads and 2 sending IPs: connections and messages per connection hold at the receiver")
    func limitsUnderLoad() throws {
        let mx = try ScriptedMX(ScriptedMX.Script(finalDelay: 0.03))
        defer { mx.stop() }
        let shaping = ShapingSettings(defaults: ShapingLimits(maxConnections: 3, messagesPerConnection: 5))
        let pool = SMTPConnectionPool(shaping: shaping, idleTimeout: 5)
        defer { pool.shutdown() }
        let d = SMTPDeliverer(timeouts: testTimeouts, pool: pool)
        let ips = ["127.0.0.10", "127.0.0.11"]
        let perThread = 6
        let lock = NSLock()
        nonisolated(unsafe) var statuses: [OutcomeStatus] = []
        onThreads(12) { worker in
            for i in 0..<perThread {
                var r = DeliveryRequest(reversePath: "news@example.org", recipients: recipients(1),
                                        body: sampleMessage("\(worker)-\(i)"), sendingIP: ips[worker % 2], heloName: "mta.example.org")
                r.shapingDeadline = Date().addingTimeInterval(30)
                let report = d.deliver(r, to: [target(mx)])
                lock.withLock { statuses += report.outcomes.map(\.status) }
            }
        }
        pool.shutdown()
        mx.stop()
        #expect(statuses.count == 72)
        #expect(statuses.allSatisfy { $0 == .delivered })
        #expect(mx.messages.count == 72)
        let perConnection = mx.connections.map(\.messages)
        let peaks = mx.peakConcurrencyByPeer
        // The receiving side's view: at most 3 connections at once per sending IP, at most 5 messages each.
        #expect(peaks["127.0.0.10"].map { $0 <= 3 && $0 >= 2 } == true)
        #expect(peaks["127.0.0.11"].map { $0 <= 3 && $0 >= 2 } == true)
        #expect(perConnection.allSatisfy { $0 <= 5 })
        #expect(perConnection.reduce(0, +) == 72)
        #expect(mx.connectionCount >= 72 / 5)
        #expect(pool.peakConnections.values.allSatisfy { $0 <= 3 })
        print("shaping under load: peak connections per sending IP \(peaks), connections \(mx.connectionCount), messages per connection \(perConnection)")
    }

    @Test("a provider's limit is shared by all its MX hosts")
    func providerSharedLimit() throws {
        let a = try ScriptedMX(ScriptedMX.Script(finalDelay: 0.05), host: "127.0.0.21")
        defer { a.stop() }
        let b = try ScriptedMX(ScriptedMX.Script(finalDelay: 0.05), host: "127.0.0.22")
        defer { b.stop() }
        let provider = ShapingProvider(name: "bigmail", mxSuffixes: ["bigmail.test"], limits: ShapingLimits(maxConnections: 2, messagesPerConnection: 100))
        let pool = SMTPConnectionPool(shaping: ShapingSettings(defaults: ShapingLimits(maxConnections: 10), providers: [provider]), idleTimeout: 0)
        let d = SMTPDeliverer(timeouts: testTimeouts, pool: pool)
        let lock = NSLock()
        nonisolated(unsafe) var current = 0
        nonisolated(unsafe) var peak = 0
        onThreads(8) { worker in
            for i in 0..<3 {
                let mx = (worker + i) % 2 == 0 ? a : b
                var r = DeliveryRequest(reversePath: "news@example.org", recipients: recipients(1), body: sampleMessage("\(worker)\(i)"),
                                        sendingIP: "127.0.0.12", heloName: "mta.example.org")
                r.shapingDeadline = Date().addingTimeInterval(30)
                lock.withLock { current += 1; peak = max(peak, current) }
                let report = d.deliver(r, to: [target(mx, host: mx === a ? "mx-a.bigmail.test" : "mx-b.bigmail.test")])
                lock.withLock { current -= 1 }
                #expect(report.outcomes.map(\.status) == [.delivered])
            }
        }
        a.stop(); b.stop()
        #expect(a.messages.count + b.messages.count == 24)
        #expect(pool.peakConnections[ShapingKey(sendingIP: "127.0.0.12", group: "bigmail")] == 2)
        // Connections were open to both hosts together, never more than 2 at once in total.
        #expect(a.peakConcurrency + b.peakConcurrency >= 2)
        #expect(peak > 2)
    }

    @Test("max_rate spaces messages; no slot before the shaping deadline defers 4.4.5")
    func rateAndDeadline() throws {
        let mx = try ScriptedMX()
        defer { mx.stop() }
        let limits = ShapingLimits(maxConnections: 1, messagesPerConnection: 100, maxRate: try MessageRate(parsing: "10/s"))
        let pool = SMTPConnectionPool(shaping: ShapingSettings(defaults: limits), idleTimeout: 5)
        defer { pool.shutdown() }
        let d = SMTPDeliverer(timeouts: testTimeouts, pool: pool)
        let start = Date()
        for i in 0..<6 {
            var r = DeliveryRequest(reversePath: "news@example.org", recipients: recipients(1), body: sampleMessage("\(i)"),
                                    sendingIP: "127.0.0.13", heloName: "mta.example.org")
            r.shapingDeadline = Date().addingTimeInterval(10)
            #expect(d.deliver(r, to: [target(mx)]).outcomes.map(\.status) == [.delivered])
        }
        // Six messages at 10/s: the sixth waits at least 0.5 s after the first.
        #expect(Date().timeIntervalSince(start) >= 0.45)
        #expect(mx.connectionCount == 1)
        // The single connection is busy; a second delivery cannot get one before its deadline.
        guard case .open(let ticket) = pool.checkout(sendingIP: "127.0.0.14", heloName: "h", target: target(mx), requireTLS: false, until: Date()) else {
            Issue.record("expected a slot for another IP"); return
        }
        var r = DeliveryRequest(reversePath: "news@example.org", recipients: recipients(1), body: sampleMessage("late"),
                                sendingIP: "127.0.0.14", heloName: "mta.example.org")
        r.shapingDeadline = Date().addingTimeInterval(0.3)
        let waited = Date()
        let report = d.deliver(r, to: [target(mx)])
        #expect(Date().timeIntervalSince(waited) >= 0.25)
        #expect(report.outcomes.first?.status == .deferred)
        #expect(report.outcomes.first?.reply.enhanced?.description == "4.4.5")
        #expect(report.outcomes.first?.reply.text.contains("shaping") == true)
        pool.abandon(ticket)
    }
}
