import Foundation
import Testing
@testable import ClusterProtocol
@testable import HatoConfig
@testable import HatoNode
@testable import HatoSupport
@testable import SMTPCore

/// `DeliveryAttempt` as a value: every branch of an outbound attempt driven by hand, without
/// sockets and without sleeps; time comes from a manual monotonic clock (filter:
/// `DeliveryAttemptTests`).
@Suite("DeliveryAttemptTests")
struct DeliveryAttemptTests {}

// MARK: - Helpers

private let mx1 = DeliveryTarget(host: "mx1.dest.test", address: "192.0.2.1", port: 25)
private let mx2 = DeliveryTarget(host: "mx2.dest.test", address: "192.0.2.2", port: 25)
private let mx6 = DeliveryTarget(host: "mx6.dest.test", address: "2001:db8::6", port: 25)
private let key = ShapingKey(sendingIP: "198.51.100.7", group: "mx:mx1.dest.test")
private let ticket = ShapingTicket(key: key, limits: ShapingLimits(maxConnections: 2, messagesPerConnection: 10))

private func makeRequest(_ recipients: [DeliveryRecipient] = recipients(1), from: String = "news@example.org",
                         tls: SMTPTLSPolicy = .opportunistic) -> DeliveryRequest {
    var r = DeliveryRequest(reversePath: from, recipients: recipients, body: [], sendingIP: "198.51.100.7", heloName: "mta.example.org")
    r.tlsPolicy = tls
    return r
}

/// A server with PIPELINING, 8BITMIME and enhanced status codes.
private let pipelining: RemoteSMTPCapabilities = {
    var c = RemoteSMTPCapabilities()
    c.pipelining = true; c.eightBitMIME = true; c.enhancedStatusCodes = true
    return c
}()

private let prepared = PreparedMessage(bytes: Array("Subject: t\r\n\r\nhi\r\n".utf8), traits: SMTPMessageTraits(size: 18, has8Bit: false),
                                       converted: false, signatures: ["example.org/s1/rsa-sha256"])

private func facts(_ caps: RemoteSMTPCapabilities = pipelining, connect: Double = 0, setup: Double = 0) -> SessionFacts {
    SessionFacts(capabilities: caps, tls: nil, connectSeconds: connect, setupSeconds: setup, shapingKey: key)
}

private func reply(_ code: Int, _ enhanced: String?, _ text: String) -> SMTPReply { SMTPReply(code: code, enhanced: enhanced, lines: [text]) }

/// Runs a transaction against canned replies (one per awaited reply, in order).
private func answer(_ transaction: SMTPClientTransaction, _ replies: [SMTPReply]) -> SMTPClientTransaction {
    var t = transaction
    _ = t.start()
    var queue = replies
    while t.waitingFor != nil, !queue.isEmpty { _ = t.receive(queue.removeFirst()) }
    return t
}

/// A transaction where every recipient is accepted and the message delivered.
private func delivered(_ transaction: SMTPClientTransaction) -> SMTPClientTransaction {
    answer(transaction, [reply(250, "2.1.0", "ok")] + transaction.recipients.map { _ in reply(250, "2.1.5", "ok") }
           + [reply(354, nil, "go"), reply(250, "2.0.0", "queued")])
}

/// A transaction whose session died unanswered at MAIL.
private func diedAtMail(_ transaction: SMTPClientTransaction) -> SMTPClientTransaction {
    var t = transaction
    _ = t.start()
    _ = t.fail(.connectionClosed("waiting for the MAIL reply: closed"))
    return t
}

private extension DeliveryAttempt.Action {
    /// A short name of the action, for exact step sequences.
    var name: String {
        switch self {
        case .checkout(let t, let p, _): return "checkout \(t.host) \(p.rawValue)"
        case .prepareForReuse: return "prepareForReuse"
        case .replaceDeadSession: return "replaceDeadSession"
        case .open(let t, let p, _): return "open \(t.host) \(p.rawValue)"
        case .awaitSendSlot: return "awaitSendSlot"
        case .prepare(let e): return "prepare 8bit=\(e)"
        case .transact(let t, _, _): return "transact \(t.recipients.map(\.id))"
        case .checkin(let reusable, let replacement): return "checkin reusable=\(reusable)" + (replacement.map { " replace \($0.target.host)" } ?? "")
        case .done: return "done"
        }
    }
    var transaction: SMTPClientTransaction? { if case .transact(let t, _, _) = self { return t } else { return nil } }
    var report: DeliveryReport? { if case .done(let r) = self { return r } else { return nil } }
}

/// Drives `attempt` through open → slot → prepare on a fresh connection; returns the `.transact` action.
private func openAndReachTransaction(_ a: inout DeliveryAttempt, clock: ManualMonotonicClock, facts f: SessionFacts = facts()) -> DeliveryAttempt.Action {
    var action = a.checkedOut(.slot(ticket), now: clock.now)
    #expect(action.name.hasPrefix("open"))
    action = a.opened(f, now: clock.now)
    #expect(action.name == "awaitSendSlot")
    action = a.sendSlot(granted: true, now: clock.now)
    if case .prepare = action { action = a.prepared(.success(prepared), now: clock.now) }
    #expect(action.transaction != nil)
    return action
}

// MARK: - Tests

extension DeliveryAttemptTests {
    @Test("address safety: an unsafe sender fails every recipient 553 5.1.7 before anything is sent")
    func unsafeSender() {
        var a = DeliveryAttempt(request: makeRequest(recipients(2), from: "evil\r\nRCPT TO:<x@y>"), targets: [mx1], longestLine: 10, now: .now)
        let report = a.start(now: .now).report
        #expect(report?.outcomes.map(\.reply.code) == [553, 553])
        #expect(report?.outcomes.map { $0.reply.enhanced?.description } == ["5.1.7", "5.1.7"])
        #expect(report?.outcomes.allSatisfy { $0.status == .failed } == true)
        #expect(report?.mxHost == nil)
        #expect(a.isFinished)
    }

    @Test("address safety: an unsafe recipient fails alone with 553 5.1.3; the others go to the first target")
    func unsafeRecipient() {
        let clock = ManualMonotonicClock()
        let rs = [DeliveryRecipient(id: 1, address: "ok@dest.test"), DeliveryRecipient(id: 2, address: "bad\r\n@dest.test")]
        var a = DeliveryAttempt(request: makeRequest(rs), targets: [mx1], longestLine: 10, now: clock.now)
        #expect(a.start(now: clock.now).name == "checkout mx1.dest.test opportunistic")
        let transact = openAndReachTransaction(&a, clock: clock)
        #expect(transact.transaction?.recipients.map(\.id) == [1])
        let checkin = a.transacted(delivered(transact.transaction!), status: SessionStatus(isClosed: false, transactions: 1, hasRoom: true), now: clock.now)
        #expect(checkin.name == "checkin reusable=true")
        let report = a.checkedIn(now: clock.now).report
        #expect(report?.outcomes.map(\.status) == [.delivered, .failed])
        #expect(report?.outcomes.last?.reply.code == 553)
        #expect(report?.outcomes.last?.reply.enhanced?.description == "5.1.3")
    }

    @Test("a line over 998 octets fails 554 5.6.0 without a checkout (RFC 5321 §4.5.3.1.6)")
    func longLine() {
        var a = DeliveryAttempt(request: makeRequest(recipients(2)), targets: [mx1], longestLine: 999, now: .now)
        let report = a.start(now: .now).report
        #expect(report?.outcomes.map(\.reply.code) == [554, 554])
        #expect(report?.outcomes.first?.reply.enhanced?.description == "5.6.0")
        #expect(report?.outcomes.first?.reply.text.contains("999 octets") == true)
        var ok = DeliveryAttempt(request: makeRequest(), targets: [mx1], longestLine: 998, now: .now)
        #expect(ok.start(now: .now).name == "checkout mx1.dest.test opportunistic")
    }

    @Test("targets in order: a refused connect moves on to the next MX, which decides")
    func targetWalking() {
        let clock = ManualMonotonicClock()
        var a = DeliveryAttempt(request: makeRequest(), targets: [mx1, mx2], longestLine: 10, now: clock.now)
        #expect(a.start(now: clock.now).name == "checkout mx1.dest.test opportunistic")
        #expect(a.checkedOut(.slot(ticket), now: clock.now).name == "open mx1.dest.test opportunistic")
        let refused = SMTPOpenFailure(target: mx1, connectFailed: true, reply: DeliveryStatus(code: 451, enhanced: "4.4.1", text: "cannot connect: refused"), tlsHandshakeFailed: false)
        #expect(a.openFailed(refused, now: clock.now).name == "checkout mx2.dest.test opportunistic")
        let transact = openAndReachTransaction(&a, clock: clock)
        _ = a.transacted(delivered(transact.transaction!), status: SessionStatus(isClosed: false, transactions: 1, hasRoom: true), now: clock.now)
        let report = a.checkedIn(now: clock.now).report
        #expect(report?.outcomes.map(\.status) == [.delivered])
        #expect(report?.mxHost == "mx2.dest.test")
        #expect(report?.remoteAddress == "192.0.2.2")
        #expect(report?.sessions[1]?.mxHost == "mx2.dest.test")
    }

    @Test("targets of the other address family than the sending IP are skipped; only those left: deferred 4.4.1")
    func addressFamily() {
        var a = DeliveryAttempt(request: makeRequest(), targets: [mx6, mx1], longestLine: 10, now: .now)
        #expect(a.start(now: .now).name == "checkout mx1.dest.test opportunistic")
        var only6 = DeliveryAttempt(request: makeRequest(), targets: [mx6], longestLine: 10, now: .now)
        let o = only6.start(now: .now).report?.outcomes.first
        #expect(o?.status == .deferred)
        #expect(o?.reply.enhanced?.description == "4.4.1")
        #expect(o?.reply.text == "cannot connect: mx6.dest.test[2001:db8::6]:25: address family differs from sending IP 198.51.100.7")
    }

    @Test("every target refused: deferred 4.4.1, and the report keeps the last target tried (MX host, address) though no MX answered")
    func unreachableContext() {
        let clock = ManualMonotonicClock()
        var a = DeliveryAttempt(request: makeRequest(), targets: [mx1, mx2], longestLine: 10, now: clock.now)
        _ = a.start(now: clock.now)
        _ = a.checkedOut(.slot(ticket), now: clock.now)
        _ = a.openFailed(SMTPOpenFailure(target: mx1, connectFailed: true, reply: DeliveryStatus(code: 451, enhanced: "4.4.1", text: "refused"), tlsHandshakeFailed: false), now: clock.now)
        _ = a.checkedOut(.slot(ticket), now: clock.now)
        let report = a.openFailed(SMTPOpenFailure(target: mx2, connectFailed: true, reply: DeliveryStatus(code: 451, enhanced: "4.4.1", text: "timed out"), tlsHandshakeFailed: false), now: clock.now).report
        #expect(report?.outcomes.map(\.status) == [.deferred])
        #expect(report?.mxHost == nil, "no MX answered")
        #expect(report?.unreachable == mx2)
        #expect(ConnectionFailureContext(mxHost: mx2.host, remoteAddress: mx2.address).addressFamily == "ipv4")
        #expect(ConnectionFailureContext(mxHost: "mx6.dest.test", remoteAddress: "2001:db8::6").addressFamily == "ipv6")
        // A greeting refusal is not a connection failure.
        var greeting = DeliveryAttempt(request: makeRequest(), targets: [mx1], longestLine: 10, now: clock.now)
        _ = greeting.start(now: clock.now)
        _ = greeting.checkedOut(.slot(ticket), now: clock.now)
        let busy = greeting.openFailed(SMTPOpenFailure(target: mx1, connectFailed: false, reply: DeliveryStatus(code: 421, enhanced: "4.7.0", text: "busy"), tlsHandshakeFailed: false), now: clock.now).report
        #expect(busy?.unreachable == nil)
    }

    @Test("a failed TLS handshake under the opportunistic policy retries the same target once in plaintext")
    func plaintextRetry() {
        let clock = ManualMonotonicClock()
        var a = DeliveryAttempt(request: makeRequest(), targets: [mx1, mx2], longestLine: 10, now: clock.now)
        _ = a.start(now: clock.now)
        _ = a.checkedOut(.slot(ticket), now: clock.now)
        let handshake = SMTPOpenFailure(target: mx1, connectFailed: false, reply: DeliveryStatus(code: 451, enhanced: "4.7.5", text: "TLS handshake failed"), tlsHandshakeFailed: true)
        #expect(a.openFailed(handshake, now: clock.now).name == "checkout mx1.dest.test disabled")
        #expect(a.checkedOut(.slot(ticket), now: clock.now).name == "open mx1.dest.test disabled")
        // A second handshake failure (cannot happen in plaintext, but the rule holds): next target.
        #expect(a.openFailed(handshake, now: clock.now).name == "checkout mx2.dest.test opportunistic")

        var required = DeliveryAttempt(request: makeRequest(tls: .required), targets: [mx1], longestLine: 10, now: clock.now)
        #expect(required.start(now: clock.now).name == "checkout mx1.dest.test required")
        _ = required.checkedOut(.slot(ticket), now: clock.now)
        let o = required.openFailed(handshake, now: clock.now).report?.outcomes.first
        #expect(o?.reply.enhanced?.description == "4.7.5")
        #expect(o?.reply.text == "mx1.dest.test[192.0.2.1]:25: TLS handshake failed")
    }

    @Test("an MX host under an enforced MTA-STS/DANE policy gets STARTTLS required and no plaintext retry; the others stay opportunistic")
    func requiredTLSHosts() {
        let clock = ManualMonotonicClock()
        var a = DeliveryAttempt(request: makeRequest(), targets: [mx1, mx2], longestLine: 10, now: clock.now)
        a.requiredTLSHosts = ["mx1.dest.test"]
        #expect(a.start(now: clock.now).name == "checkout mx1.dest.test required")
        #expect(a.checkedOut(.slot(ticket), now: clock.now).name == "open mx1.dest.test required")
        let handshake = SMTPOpenFailure(target: mx1, connectFailed: false, reply: DeliveryStatus(code: 451, enhanced: "4.7.5", text: "TLS handshake failed: MTA-STS policy of dest.test: certificate not valid for mx1.dest.test"), tlsHandshakeFailed: true)
        #expect(a.openFailed(handshake, now: clock.now).name == "checkout mx2.dest.test opportunistic", "never mx1 in plaintext")
        _ = a.checkedOut(.slot(ticket), now: clock.now)
        let o = a.openFailed(SMTPOpenFailure(target: mx2, connectFailed: true, reply: DeliveryStatus(code: 451, enhanced: "4.4.1", text: "refused"), tlsHandshakeFailed: false), now: clock.now).report?.outcomes.first
        #expect(o?.status == .deferred)
    }

    @Test("a dead pooled session is replaced at once on its own slot")
    func deadSessionReplaced() {
        let clock = ManualMonotonicClock()
        var a = DeliveryAttempt(request: makeRequest(), targets: [mx1], longestLine: 10, now: clock.now)
        _ = a.start(now: clock.now)
        #expect(a.checkedOut(.reuse(facts()), now: clock.now).name == "prepareForReuse")
        #expect(a.probed(usable: false, probedWithReset: true, now: clock.now).name == "replaceDeadSession")
        let replacement = ShapingTicket(key: key, limits: ShapingLimits(maxConnections: 1))
        guard case .open(let target, let policy, let given) = a.deadSessionReplaced(replacement, now: clock.now) else {
            Issue.record("expected .open"); return
        }
        #expect(target == mx1)
        #expect(policy == .opportunistic)
        #expect(given == replacement)
        #expect(a.opened(facts(), now: clock.now).name == "awaitSendSlot")
    }

    @Test("a reused unprobed session that dies unanswered at MAIL is retried on a new session, at most 3 times")
    func staleRetries() {
        let clock = ManualMonotonicClock()
        var a = DeliveryAttempt(request: makeRequest(), targets: [mx1], longestLine: 10, now: clock.now)
        var action = a.start(now: clock.now)
        for retry in 1...4 {
            #expect(action.name == "checkout mx1.dest.test opportunistic")
            #expect(a.checkedOut(.reuse(facts()), now: clock.now).name == "prepareForReuse")
            #expect(a.probed(usable: true, probedWithReset: false, now: clock.now).name == "awaitSendSlot")
            action = a.sendSlot(granted: true, now: clock.now)
            if case .prepare = action { action = a.prepared(.success(prepared), now: clock.now) }
            let dead = diedAtMail(action.transaction!)
            #expect(dead.repliesReceived == 0)
            action = a.transacted(dead, status: SessionStatus(isClosed: true, transactions: 3, hasRoom: false), now: clock.now)
            if retry <= 3 {
                #expect(action.name == "checkin reusable=false")
                action = a.checkedIn(now: clock.now)
            }
        }
        // The fourth death is reported: the recipient is deferred with the session failure.
        #expect(action.name == "checkin reusable=false")
        let o = a.checkedIn(now: clock.now).report?.outcomes.first
        #expect(o?.status == .deferred)
        #expect(o?.reply.enhanced?.description == "4.4.2")

        // A session that was probed with RSET is not retried: its death is the outcome.
        var probed = DeliveryAttempt(request: makeRequest(), targets: [mx1], longestLine: 10, now: clock.now)
        _ = probed.start(now: clock.now)
        _ = probed.checkedOut(.reuse(facts()), now: clock.now)
        _ = probed.probed(usable: true, probedWithReset: true, now: clock.now)
        var step = probed.sendSlot(granted: true, now: clock.now)
        if case .prepare = step { step = probed.prepared(.success(prepared), now: clock.now) }
        let next = probed.transacted(diedAtMail(step.transaction!), status: SessionStatus(isClosed: true, transactions: 2, hasRoom: false),
                                     now: clock.now)
        #expect(next.name == "checkin reusable=false")
        #expect(probed.checkedIn(now: clock.now).report?.outcomes.first?.status == .deferred)
    }

    @Test("lease deadline: nothing is started after notAfter (451 4.4.7); the transaction carries the fence")
    func leaseDeadline() {
        let clock = ManualMonotonicClock()
        var r = makeRequest()
        r.leaseDeadline = clock.now + .seconds(60)
        var a = DeliveryAttempt(request: r, targets: [mx1], longestLine: 10, now: clock.now)
        #expect(a.notAfter == clock.now + .seconds(60))
        _ = a.start(now: clock.now)
        _ = a.checkedOut(.slot(ticket), now: clock.now)
        clock.advance(by: .seconds(61))
        #expect(a.opened(facts(), now: clock.now).name == "checkin reusable=true")
        let o = a.checkedIn(now: clock.now).report?.outcomes.first
        #expect(o?.reply.code == 451)
        #expect(o?.reply.enhanced?.description == "4.4.7")
        #expect(o?.reply.text == "lease deadline passed before the transaction started")

        r.leaseDeadline = clock.now + .seconds(60)
        var c = DeliveryAttempt(request: r, targets: [mx1], longestLine: 10, now: clock.now)
        _ = c.start(now: clock.now)
        guard case .transact(_, _, let fence) = openAndReachTransaction(&c, clock: clock) else { Issue.record("expected .transact"); return }
        #expect(fence == clock.now + .seconds(60))
    }

    @Test("shaping: the checkout waits until the shaping deadline; no connection slot or rate slot defers 451 4.4.5")
    func shapingWaits() {
        let clock = ManualMonotonicClock()
        var r = makeRequest()
        r.leaseDeadline = clock.now + .seconds(600)
        r.shapingWaitDeadline = clock.now + .seconds(450)
        var a = DeliveryAttempt(request: r, targets: [mx1, mx2], longestLine: 10, now: clock.now)
        guard case .checkout(_, _, let until) = a.start(now: clock.now) else { Issue.record("expected .checkout"); return }
        #expect(until == clock.now + .seconds(450))
        let busy = "shaping: all 2 connection(s) for \(key) stayed busy until the lease's shaping deadline"
        let o = a.checkedOut(.unavailable(busy), now: clock.now).report?.outcomes.first
        #expect(o?.reply.code == 451)
        #expect(o?.reply.enhanced?.description == "4.4.5")
        #expect(o?.reply.text == busy)

        // Without a shaping deadline the lease deadline bounds the wait; without either, 5 minutes.
        var leaseOnly = makeRequest()
        leaseOnly.leaseDeadline = clock.now + .seconds(42)
        #expect(DeliveryAttempt(request: leaseOnly, targets: [mx1], longestLine: 10, now: clock.now).shapingDeadline == clock.now + .seconds(42))
        #expect(DeliveryAttempt(request: makeRequest(), targets: [mx1], longestLine: 10, now: clock.now).shapingDeadline == clock.now + .seconds(300))

        var rate = DeliveryAttempt(request: r, targets: [mx1], longestLine: 10, now: clock.now)
        _ = rate.start(now: clock.now)
        _ = rate.checkedOut(.slot(ticket), now: clock.now)
        guard case .awaitSendSlot(let slotUntil) = rate.opened(facts(), now: clock.now) else { Issue.record("expected .awaitSendSlot"); return }
        #expect(slotUntil == clock.now + .seconds(450))
        #expect(rate.sendSlot(granted: false, now: clock.now).name == "checkin reusable=true")
        let deferred = rate.checkedIn(now: clock.now).report?.outcomes.first
        #expect(deferred?.reply.enhanced?.description == "4.4.5")
        #expect(deferred?.reply.text == "shaping: the message rate for \(key) leaves no slot before the lease deadline")
    }

    @Test("timings: shaping wait excludes connect and set-up and adds the rate wait; transaction time from the clock")
    func timings() {
        let clock = ManualMonotonicClock()
        var a = DeliveryAttempt(request: makeRequest(), targets: [mx1], longestLine: 10, now: clock.now)
        _ = a.start(now: clock.now)
        clock.advance(by: .seconds(2))
        _ = a.checkedOut(.slot(ticket), now: clock.now)
        clock.advance(by: .seconds(1))      // 0.25 s connect + 0.5 s set-up of it
        _ = a.opened(facts(connect: 0.25, setup: 0.5), now: clock.now)
        clock.advance(by: .milliseconds(500))   // the rate wait
        let transact = a.sendSlot(granted: true, now: clock.now)
        #expect(transact.name == "prepare 8bit=true")
        let action = a.prepared(.success(prepared), now: clock.now)
        clock.advance(by: .seconds(4))
        _ = a.transacted(delivered(action.transaction!), status: SessionStatus(isClosed: false, transactions: 1, hasRoom: true), now: clock.now)
        let session = a.checkedIn(now: clock.now).report?.sessions[1]
        #expect(session?.shapingWaitSeconds == 2.75)
        #expect(session?.transactionSeconds == 4)
        #expect(session?.connectSeconds == 0.25)
        #expect(session?.setupSeconds == 0.5)
        #expect(session?.reused == false)
        #expect(session?.messageOnConnection == 1)
        #expect(session?.dkim == ["example.org/s1/rsa-sha256"])
    }

    @Test("452 too many recipients: the rest go into a further transaction on the same session, content prepared once")
    func carryOverSameSession() {
        let clock = ManualMonotonicClock()
        var a = DeliveryAttempt(request: makeRequest(recipients(3)), targets: [mx1], longestLine: 10, now: clock.now)
        _ = a.start(now: clock.now)
        let first = openAndReachTransaction(&a, clock: clock)
        let limited = answer(first.transaction!, [reply(250, "2.1.0", "ok"), reply(250, "2.1.5", "ok"), reply(250, "2.1.5", "ok"),
                                                  reply(452, "4.5.3", "too many recipients"), reply(354, nil, "go"), reply(250, "2.0.0", "queued")])
        #expect(limited.carriedOver.map(\.id) == [3])
        #expect(a.transacted(limited, status: SessionStatus(isClosed: false, transactions: 1, hasRoom: true), now: clock.now).name == "prepareForReuse")
        #expect(a.probed(usable: true, probedWithReset: false, now: clock.now).name == "awaitSendSlot")
        let second = a.sendSlot(granted: true, now: clock.now)
        #expect(second.name == "transact [3]")   // no second .prepare
        _ = a.transacted(delivered(second.transaction!), status: SessionStatus(isClosed: false, transactions: 2, hasRoom: true), now: clock.now)
        let report = a.checkedIn(now: clock.now).report
        #expect(report?.outcomes.map(\.status) == [.delivered, .delivered, .delivered])
        #expect(report?.sessions[3]?.messageOnConnection == 2)
        #expect(report?.sessions[3]?.reused == true)
        #expect(report?.sessions[1]?.reused == false)
    }

    @Test("452 on a session with no room left: the rest go out on a new session; no progress at all: deferred with the 452")
    func carryOverNewSession() {
        let clock = ManualMonotonicClock()
        var a = DeliveryAttempt(request: makeRequest(recipients(2)), targets: [mx1], longestLine: 10, now: clock.now)
        _ = a.start(now: clock.now)
        let first = openAndReachTransaction(&a, clock: clock)
        let limited = answer(first.transaction!, [reply(250, "2.1.0", "ok"), reply(250, "2.1.5", "ok"), reply(452, "4.5.3", "too many recipients"),
                                                  reply(354, nil, "go"), reply(250, "2.0.0", "queued")])
        #expect(a.transacted(limited, status: SessionStatus(isClosed: false, transactions: 1, hasRoom: false), now: clock.now).name == "checkin reusable=false")
        #expect(a.checkedIn(now: clock.now).name == "checkout mx1.dest.test opportunistic")
        let second = openAndReachTransaction(&a, clock: clock)
        #expect(second.transaction?.recipients.map(\.id) == [2])
        // The new session takes nobody either: 452 again with nothing accepted is final.
        let none = answer(second.transaction!, [reply(250, "2.1.0", "ok"), reply(452, "4.5.3", "too many recipients"), reply(354, nil, "go"), reply(250, nil, "ok")])
        #expect(a.transacted(none, status: SessionStatus(isClosed: false, transactions: 1, hasRoom: true), now: clock.now).name == "checkin reusable=true")
        let report = a.checkedIn(now: clock.now).report
        #expect(report?.outcomes.map(\.status) == [.delivered, .deferred])
        #expect(report?.outcomes.last?.reply.code == 452)
    }

    @Test("retirement at messages_per_connection: checked in and a replacement asked for the same target and policy")
    func retirement() {
        let clock = ManualMonotonicClock()
        var a = DeliveryAttempt(request: makeRequest(), targets: [mx1], longestLine: 10, now: clock.now)
        _ = a.start(now: clock.now)
        let t = openAndReachTransaction(&a, clock: clock)
        let checkin = a.transacted(delivered(t.transaction!), status: SessionStatus(isClosed: false, transactions: 10, hasRoom: false), now: clock.now)
        guard case .checkin(let reusable, let replacement) = checkin else { Issue.record("expected .checkin"); return }
        #expect(reusable)
        #expect(replacement == DeliveryAttempt.Replacement(target: mx1, policy: .opportunistic))
        #expect(a.checkedIn(now: clock.now).report?.outcomes.map(\.status) == [.delivered])

        // A session the server closed is not replaced.
        var closed = DeliveryAttempt(request: makeRequest(), targets: [mx1], longestLine: 10, now: clock.now)
        _ = closed.start(now: clock.now)
        let u = openAndReachTransaction(&closed, clock: clock)
        #expect(closed.transacted(delivered(u.transaction!), status: SessionStatus(isClosed: true, transactions: 1, hasRoom: false), now: clock.now).name
                == "checkin reusable=true")
    }

    @Test("final outcomes: the last target's failure, 'cannot connect: no delivery target', a failed preparation")
    func finalOutcomes() {
        let clock = ManualMonotonicClock()
        var none = DeliveryAttempt(request: makeRequest(), targets: [], longestLine: 10, now: clock.now)
        let o = none.start(now: clock.now).report?.outcomes.first
        #expect(o?.reply.code == 451)
        #expect(o?.reply.enhanced?.description == "4.4.1")
        #expect(o?.reply.text == "cannot connect: no delivery target")

        // A refused greeting is not a connect failure: the report names its MX.
        var greeting = DeliveryAttempt(request: makeRequest(), targets: [mx1], longestLine: 10, now: clock.now)
        _ = greeting.start(now: clock.now)
        _ = greeting.checkedOut(.slot(ticket), now: clock.now)
        let busy = SMTPOpenFailure(target: mx1, connectFailed: false, reply: DeliveryStatus(code: 421, enhanced: "4.7.0", text: "greeting: 421 busy"), tlsHandshakeFailed: false)
        let report = greeting.openFailed(busy, now: clock.now).report
        #expect(report?.outcomes.first?.reply.text == "mx1.dest.test[192.0.2.1]:25: greeting: 421 busy")
        #expect(report?.outcomes.first?.reply.code == 421)
        #expect(report?.mxHost == "mx1.dest.test")

        // The content cannot be made 7-bit for this server: failed, session kept.
        var prep = DeliveryAttempt(request: makeRequest(), targets: [mx1], longestLine: 10, now: clock.now)
        _ = prep.start(now: clock.now)
        _ = prep.checkedOut(.slot(ticket), now: clock.now)
        _ = prep.opened(facts(RemoteSMTPCapabilities()), now: clock.now)
        #expect(prep.sendSlot(granted: true, now: clock.now).name == "prepare 8bit=false")
        let failure = PreparationFailure(DeliveryStatus(code: 554, enhanced: "5.6.3", text: "8-bit header fields cannot be converted"))
        #expect(prep.prepared(.failure(failure), now: clock.now).name == "checkin reusable=true")
        let failed = prep.checkedIn(now: clock.now).report
        #expect(failed?.outcomes.first?.status == .failed)
        #expect(failed?.outcomes.first?.reply.enhanced?.description == "5.6.3")
        #expect(failed?.mxHost == "mx1.dest.test")
    }

    @Test("a transaction cut off at the end of data defers 4.4.2 and the next MX is not tried")
    func timeoutIsFinal() {
        let clock = ManualMonotonicClock()
        var a = DeliveryAttempt(request: makeRequest(recipients(2)), targets: [mx1, mx2], longestLine: 10, now: clock.now)
        _ = a.start(now: clock.now)
        var t = openAndReachTransaction(&a, clock: clock).transaction!
        _ = t.start()
        for r in [reply(250, "2.1.0", "ok"), reply(250, "2.1.5", "ok"), reply(250, "2.1.5", "ok"), reply(354, nil, "go")] { _ = t.receive(r) }
        _ = t.fail(.timeout("waiting for the end-of-data reply"))
        #expect(a.transacted(t, status: SessionStatus(isClosed: true, transactions: 1, hasRoom: false), now: clock.now).name == "checkin reusable=false")
        let report = a.checkedIn(now: clock.now).report
        #expect(report?.outcomes.allSatisfy { $0.status == .deferred && $0.reply.enhanced?.description == "4.4.2" } == true)
        #expect(report?.mxHost == "mx1.dest.test")
    }
}
