import Foundation
import HatoDKIM
import HatoSupport
import SMTPCore

/// What the driver tells a `DeliveryAttempt` about a session that is ready for a transaction
/// (just opened, or taken idle from the pool).
public struct SessionFacts: Sendable, Equatable {
    /// What the server offers (after STARTTLS: the second EHLO's answer).
    public var capabilities: RemoteSMTPCapabilities
    /// The TLS parameters, nil for plaintext.
    public var tls: TLSSessionInfo?
    /// Seconds the TCP handshake took.
    public var connectSeconds: Double
    /// Seconds from connected to ready (greeting, EHLO, STARTTLS).
    public var setupSeconds: Double
    /// The shaping key of the session's slot (nil when not attached to the pool).
    public var shapingKey: ShapingKey?

    /// Facts from their parts.
    public init(capabilities: RemoteSMTPCapabilities, tls: TLSSessionInfo? = nil, connectSeconds: Double = 0,
                setupSeconds: Double = 0, shapingKey: ShapingKey? = nil) {
        self.capabilities = capabilities; self.tls = tls; self.connectSeconds = connectSeconds
        self.setupSeconds = setupSeconds; self.shapingKey = shapingKey
    }
}

/// A session's state right after a transaction ran on it.
public struct SessionStatus: Sendable, Equatable {
    /// Whether the connection is closed (the server or a failure ended it).
    public var isClosed: Bool
    /// Mail transactions started on the session so far (the last one's number on it).
    public var transactions: Int
    /// Whether it may carry another message (`messages_per_connection`, and open).
    public var hasRoom: Bool

    /// A status from its parts.
    public init(isClosed: Bool, transactions: Int, hasRoom: Bool) {
        self.isClosed = isClosed; self.transactions = transactions; self.hasRoom = hasRoom
    }
}

/// One outbound delivery attempt as a value: the whole decision logic of delivering one
/// `DeliveryRequest` (one message, recipients of one destination) to its targets, without a
/// socket, a lock or a clock.
///
/// The driver (`SMTPDeliverer.deliver`) feeds it events and performs the `Action` each event
/// returns — checking a session out of the pool, opening one, probing an idle one, waiting
/// for a send slot, preparing the content, running a transaction, checking the session back
/// in — until `.done(report)`. Every event takes the current monotonic instant, so tests drive
/// it with a manual clock.
///
/// What it decides, in order:
/// - Addresses that could break a command line are never sent (sender: `553 5.1.7`,
///   recipient: `553 5.1.3`); content with a line over 998 octets (RFC 5321 §4.5.3.1.6)
///   fails with `554 5.6.0` without a connection.
/// - Targets are tried in order; a target of the other address family than the sending IP
///   is skipped. A target that cannot be opened moves on to the next one, except after a
///   failed TLS handshake under the opportunistic policy: that target is retried once in
///   plaintext (RFC 3207 §4.1 allows a client to continue without TLS).
/// - A reused idle session is probed (`prepareForReuse`); a dead one is replaced at once by
///   a new connection on its slot.
/// - Nothing is started after the lease deadline (`451 4.4.7`); no connection slot or rate
///   slot before the shaping deadline defers with `451 4.4.5`.
/// - A reused session that was not probed and dies at MAIL without any reply, before any
///   content was written, took nothing: the message goes out on a new session (at most 3 times).
/// - Recipients refused with 452 "too many recipients" (RFC 5321 §4.5.3.1.10) go into a
///   further transaction on the same session, or on a new one when it may not carry more.
/// - A session retired at its `messages_per_connection` limit asks for a replacement.
/// - Recipients without an outcome when the targets run out are deferred with the last
///   target's failure (`cannot connect: …`), or `451 4.4.1 cannot connect: no delivery target`;
///   never 5xx.
public struct DeliveryAttempt: Sendable {
    /// What the pool's checkout gave.
    public enum CheckoutResult: Sendable {
        /// An idle session (the driver holds it): probe it with `prepareForReuse`.
        case reuse(SessionFacts)
        /// A free slot to open a connection on.
        case slot(ShapingTicket)
        /// No slot before the shaping deadline: the reason.
        case unavailable(String)
    }

    /// A replacement session to open in the background after a retired one's QUIT.
    public struct Replacement: Sendable, Equatable {
        /// Where.
        public let target: DeliveryTarget
        /// With this STARTTLS policy.
        public let policy: SMTPTLSPolicy
    }

    /// What the driver must do next; each is answered by one event (noted per case).
    public enum Action: Sendable {
        /// Check a session to `target` out of the pool (`requireTLS` when the policy is
        /// `required`), waiting no later than the deadline → `checkedOut(_:now:)`.
        case checkout(DeliveryTarget, SMTPTLSPolicy, until: ContinuousClock.Instant)
        /// Make the held session ready for a transaction (RSET when needed) → `probed(usable:probedWithReset:now:)`.
        case prepareForReuse
        /// Close the held dead session and take its slot as a ticket → `deadSessionReplaced(_:now:)`.
        case replaceDeadSession
        /// Open a connection to `target` with `policy` on `ticket` → `opened(_:now:)` or `openFailed(_:now:)`.
        case open(DeliveryTarget, SMTPTLSPolicy, ShapingTicket)
        /// Wait for the held session's `max_rate` slot, until the deadline → `sendSlot(granted:now:)`.
        case awaitSendSlot(until: ContinuousClock.Instant)
        /// Convert and sign the content for a server with or without 8BITMIME → `prepared(_:now:)`.
        case prepare(eightBitMIME: Bool)
        /// Run this transaction on the held session, never writing content after `notAfter`
        /// → `transacted(_:status:now:)`.
        case transact(SMTPClientTransaction, PreparedMessage, notAfter: ContinuousClock.Instant?)
        /// Give the held session back to the pool (kept idle only when `reusable`); then,
        /// when asked, open a replacement in the background → `checkedIn(now:)`.
        case checkin(reusable: Bool, replacement: Replacement?)
        /// The attempt is over.
        case done(DeliveryReport)
    }

    /// One pass at a target: from its checkout until its session is checked in.
    struct Round: Sendable {
        let target: DeliveryTarget
        let policy: SMTPTLSPolicy
        /// When the checkout was asked for (the shaping wait starts there).
        let startedAt: ContinuousClock.Instant
    }

    /// A ready session of a round.
    struct Session: Sendable {
        let round: Round
        let facts: SessionFacts
        /// Taken idle from the pool.
        let reused: Bool
        /// Reused without an RSET probe.
        let unprobed: Bool
        /// No transaction ran on it yet in this round.
        var firstInRound: Bool
        /// Time spent waiting for the connection slot (not counting connect and set-up).
        let shapingWait: Duration
    }

    /// What follows a checkin.
    enum AfterCheckin: Sendable {
        /// Another round (the same target or the next).
        case nextRound
        /// The report.
        case finish
    }

    /// Where the attempt is; every case carries what that step knows.
    enum State: Sendable {
        /// `start(now:)` not called yet.
        case initial
        /// Waiting for the pool's checkout.
        case checkingOut(Round)
        /// Probing an idle session taken from the pool.
        case probingReused(Round, SessionFacts)
        /// A dead idle session is being closed; its slot comes back as a ticket.
        case replacingDead(Round)
        /// A connection is being opened.
        case opening(Round)
        /// Waiting for the `max_rate` slot (since the instant given).
        case awaitingSendSlot(Session, since: ContinuousClock.Instant)
        /// The content is being prepared for this server kind.
        case preparing(Session, rateWait: Duration)
        /// A transaction runs.
        case transacting(Session, PreparedMessage, startedAt: ContinuousClock.Instant, rateWait: Duration)
        /// Probing the session before a transaction for carried-over recipients.
        case probingForCarryOver(Session)
        /// The session is being checked in.
        case checkingIn(then: AfterCheckin)
        /// `.done` was returned.
        case finished
    }

    /// The most times a message goes out again on a new session after a reused, unprobed
    /// one died unanswered at MAIL.
    public static let maxStaleRetries = 3
    /// The shaping wait when the request has neither a shaping deadline nor a lease deadline.
    public static let defaultShapingWait: Duration = .seconds(300)

    /// The reverse path (`""` for `<>`).
    public let reversePath: String
    /// Every recipient of the request, in order.
    public let recipients: [DeliveryRecipient]
    /// The local source address (`""`: the kernel chooses).
    public let sendingIP: String
    /// The STARTTLS policy of the destination.
    public let tlsPolicy: SMTPTLSPolicy
    /// The targets in preference order.
    public let targets: [DeliveryTarget]
    /// The lease deadline (monotonic): nothing is started, and no content written, after it.
    public let notAfter: ContinuousClock.Instant?
    /// When waiting for a connection or rate slot ends (monotonic).
    public let shapingDeadline: ContinuousClock.Instant
    /// The longest line of the content, octets without CRLF.
    public let longestLine: Int

    /// MX host names (lowercase) where STARTTLS is required whatever `tlsPolicy` says (an
    /// enforced MTA-STS or DANE policy): no plaintext retry, never sent in clear.
    public var requiredTLSHosts: Set<String> = []

    private var state: State = .initial
    private var index = 0
    private var pending: [DeliveryRecipient] = []
    private var finals: [Int64: RecipientOutcome] = [:]
    private var sessions: [Int64: DeliverySession] = [:]
    private var prepared: [Bool: PreparedMessage] = [:]
    private var lastFailure: SMTPOpenFailure? = nil
    private var plaintextRetry: Set<DeliveryTarget> = []
    private var decided: DeliveryTarget? = nil
    /// The target whose connection failure deferred the pending recipients at the end.
    private var unreachable: DeliveryTarget? = nil
    private var staleRetries = 0

    /// - Parameters:
    ///   - request: the message's envelope, sending IP, policies and deadlines (its content is not kept).
    ///   - targets: the next hops in preference order.
    ///   - longestLine: the content's longest line in octets (`MessageAnalysis.longestLine`).
    ///   - now: the current monotonic instant (for the default shaping deadline).
    public init(request: DeliveryRequest, targets: [DeliveryTarget], longestLine: Int, now: ContinuousClock.Instant) {
        reversePath = request.reversePath
        recipients = request.recipients
        sendingIP = request.sendingIP
        tlsPolicy = request.tlsPolicy
        self.targets = targets
        notAfter = request.leaseDeadline
        shapingDeadline = request.shapingWaitDeadline ?? request.leaseDeadline ?? now + DeliveryAttempt.defaultShapingWait
        self.longestLine = longestLine
    }

    /// Whether `.done` was returned.
    public var isFinished: Bool { if case .finished = state { return true } else { return false } }

    /// Starts the attempt: the address and line checks, then the first checkout.
    public mutating func start(now: ContinuousClock.Instant) -> Action {
        guard case .initial = state else { preconditionFailure("DeliveryAttempt.start called twice") }
        // Addresses that could break a command line are never sent.
        if !SMTPClientTransaction.isSafeArgument(reversePath, allowEmpty: true) {
            resolve(recipients, .failed, .localFailure(553, 1, 7, "invalid sender address syntax"))
        } else {
            for r in recipients {
                if SMTPClientTransaction.isSafeArgument(r.address, allowEmpty: false) { pending.append(r) } else {
                    resolve([r], .failed, .localFailure(553, 1, 3, "invalid recipient address syntax"))
                }
            }
        }
        guard !pending.isEmpty else { return finish() }
        if longestLine > MessageText.maxLineLength {
            resolve(pending, .failed, .localFailure(554, 6, 0, "message has a line of \(longestLine) octets; RFC 5321 §4.5.3.1.6 allows 998"))
            pending = []
            return finish()
        }
        return nextRound(now: now)
    }

    /// The pool's answer to `.checkout`.
    public mutating func checkedOut(_ result: CheckoutResult, now: ContinuousClock.Instant) -> Action {
        guard case .checkingOut(let round) = state else { invalid("checkedOut") }
        switch result {
        case .unavailable(let why):
            resolve(pending, .deferred, .localDeferral(4, 5, why))
            pending = []
            return finish()
        case .reuse(let facts):
            state = .probingReused(round, facts)
            return .prepareForReuse
        case .slot(let ticket):
            state = .opening(round)
            return .open(round.target, round.policy, ticket)
        }
    }

    /// The answer to `.prepareForReuse`.
    /// - Parameters:
    ///   - usable: whether the session can be used (otherwise it is closed).
    ///   - probedWithReset: whether RSET was sent to find out.
    public mutating func probed(usable: Bool, probedWithReset: Bool, now: ContinuousClock.Instant) -> Action {
        switch state {
        case .probingReused(let round, let facts):
            guard usable else {
                // A dead pooled session: replaced at once, the message is not delayed.
                state = .replacingDead(round)
                return .replaceDeadSession
            }
            let session = Session(round: round, facts: facts, reused: true, unprobed: !probedWithReset, firstInRound: true,
                                  shapingWait: now - round.startedAt)
            return sessionReady(session, now: now)
        case .probingForCarryOver(let session):
            guard usable else { return checkin(reusable: false, then: .nextRound) }
            return sessionReady(session, now: now)
        default:
            invalid("probed")
        }
    }

    /// The answer to `.replaceDeadSession`: the dead session's slot.
    public mutating func deadSessionReplaced(_ ticket: ShapingTicket, now: ContinuousClock.Instant) -> Action {
        guard case .replacingDead(let round) = state else { invalid("deadSessionReplaced") }
        state = .opening(round)
        return .open(round.target, round.policy, ticket)
    }

    /// A connection asked for with `.open` is ready.
    public mutating func opened(_ facts: SessionFacts, now: ContinuousClock.Instant) -> Action {
        guard case .opening(let round) = state else { invalid("opened") }
        let setUp = Duration.seconds(facts.connectSeconds + facts.setupSeconds)
        let session = Session(round: round, facts: facts, reused: false, unprobed: false, firstInRound: true,
                              shapingWait: now - round.startedAt - setUp)
        return sessionReady(session, now: now)
    }

    /// A connection asked for with `.open` could not be made ready (its slot was given back).
    public mutating func openFailed(_ failure: SMTPOpenFailure, now: ContinuousClock.Instant) -> Action {
        guard case .opening(let round) = state else { invalid("openFailed") }
        lastFailure = failure
        if failure.tlsHandshakeFailed && round.policy == .opportunistic && !plaintextRetry.contains(round.target) {
            plaintextRetry.insert(round.target)
        } else {
            index += 1
        }
        return nextRound(now: now)
    }

    /// The answer to `.awaitSendSlot`: whether a slot came before the deadline.
    public mutating func sendSlot(granted: Bool, now: ContinuousClock.Instant) -> Action {
        guard case .awaitingSendSlot(let session, let since) = state else { invalid("sendSlot") }
        let rateWait = now - since
        guard granted else {
            let key = session.facts.shapingKey.map(\.description) ?? sendingIP
            resolve(pending, .deferred, .localDeferral(4, 5, "shaping: the message rate for \(key) leaves no slot before the lease deadline"))
            pending = []
            return checkin(reusable: true, then: .finish)
        }
        let eightBit = session.facts.capabilities.eightBitMIME
        if let message = prepared[eightBit] { return transact(session, message, rateWait: rateWait, now: now) }
        state = .preparing(session, rateWait: rateWait)
        return .prepare(eightBitMIME: eightBit)
    }

    /// The answer to `.prepare`.
    public mutating func prepared(_ result: Result<PreparedMessage, PreparationFailure>, now: ContinuousClock.Instant) -> Action {
        guard case .preparing(let session, let rateWait) = state else { invalid("prepared") }
        switch result {
        case .success(let message):
            prepared[session.facts.capabilities.eightBitMIME] = message
            return transact(session, message, rateWait: rateWait, now: now)
        case .failure(let f):
            resolve(pending, f.reply.disposition, f.reply)
            pending = []
            decided = session.round.target
            return checkin(reusable: true, then: .finish)
        }
    }

    /// The answer to `.transact`: the finished transaction and the session's state after it.
    public mutating func transacted(_ transaction: SMTPClientTransaction, status: SessionStatus, now: ContinuousClock.Instant) -> Action {
        guard case .transacting(var session, let message, let startedAt, let rateWait) = state else { invalid("transacted") }
        let round = session.round
        if session.unprobed && session.firstInRound && transaction.repliesReceived == 0 && !transaction.contentWritten
            && status.isClosed && staleRetries < DeliveryAttempt.maxStaleRetries {
            // The idle session died between the check and MAIL (the server timed it out):
            // nothing was answered and no content went out, so nothing was taken. Same target,
            // new session. (Content pipelined with the envelope and written: the server may
            // have taken it before the connection died; the recipients are deferred instead.)
            staleRetries += 1
            return checkin(reusable: false, then: .nextRound)
        }
        let record = DeliverySession(
            mxHost: round.target.host, remoteAddress: round.target.address, port: round.target.port, sendingIP: sendingIP,
            tls: session.facts.tls, reused: session.reused || !session.firstInRound, messageOnConnection: status.transactions,
            connectSeconds: session.reused ? nil : session.facts.connectSeconds,
            setupSeconds: session.reused ? nil : session.facts.setupSeconds,
            shapingWaitSeconds: max(0, ((session.firstInRound ? session.shapingWait : .zero) + rateWait).inSeconds),
            transactionSeconds: (now - startedAt).inSeconds, dkim: message.signatures, converted7Bit: message.converted)
        session.firstInRound = false
        decided = round.target
        let carried = transaction.acceptedCount > 0 ? Set(transaction.carriedOver.map(\.id)) : []
        for o in transaction.outcomes where !carried.contains(o.recipientID) {
            finals[o.recipientID] = o
            sessions[o.recipientID] = record
        }
        pending = pending.filter { carried.contains($0.id) }
        if pending.isEmpty {
            let retiredAtLimit = transaction.reusable && !status.isClosed && !status.hasRoom
            return checkin(reusable: transaction.reusable,
                           replacement: retiredAtLimit ? Replacement(target: round.target, policy: round.policy) : nil,
                           then: .finish)
        }
        // Recipients over the server's limit: a new transaction here, or on a new connection.
        guard transaction.reusable && status.hasRoom else { return checkin(reusable: false, then: .nextRound) }
        state = .probingForCarryOver(session)
        return .prepareForReuse
    }

    /// The answer to `.checkin`.
    public mutating func checkedIn(now: ContinuousClock.Instant) -> Action {
        guard case .checkingIn(let then) = state else { invalid("checkedIn") }
        switch then {
        case .nextRound: return nextRound(now: now)
        case .finish: return finish()
        }
    }

    // MARK: Steps

    /// The next target's checkout, or the report when none is left or nothing is pending.
    private mutating func nextRound(now: ContinuousClock.Instant) -> Action {
        let sourceIsIPv6 = sendingIP.isEmpty ? nil : sendingIP.utf8.contains(UInt8(ascii: ":"))
        while index < targets.count && !pending.isEmpty {
            let target = targets[index]
            if let sourceIsIPv6, target.address.utf8.contains(UInt8(ascii: ":")) != sourceIsIPv6 {
                lastFailure = SMTPOpenFailure(target: target, connectFailed: true,
                                              reply: .localDeferral(4, 1, "address family differs from sending IP \(sendingIP)"),
                                              tlsHandshakeFailed: false)
                index += 1
                continue
            }
            let policy: SMTPTLSPolicy = requiredTLSHosts.contains(target.host.lowercased()) ? .required
                : plaintextRetry.contains(target) ? .disabled : tlsPolicy
            state = .checkingOut(Round(target: target, policy: policy, startedAt: now))
            return .checkout(target, policy, until: shapingDeadline)
        }
        return finish()
    }

    /// Before a transaction: the lease deadline, then the rate slot.
    private mutating func sessionReady(_ session: Session, now: ContinuousClock.Instant) -> Action {
        if let notAfter, now >= notAfter {
            resolve(pending, .deferred, .localDeferral(4, 7, "lease deadline passed before the transaction started"))
            pending = []
            return checkin(reusable: true, then: .finish)
        }
        state = .awaitingSendSlot(session, since: now)
        return .awaitSendSlot(until: shapingDeadline)
    }

    private mutating func transact(_ session: Session, _ message: PreparedMessage, rateWait: Duration, now: ContinuousClock.Instant) -> Action {
        let transaction = SMTPClientTransaction(reversePath: reversePath, recipients: pending, traits: message.traits,
                                                capabilities: session.facts.capabilities)
        state = .transacting(session, message, startedAt: now, rateWait: rateWait)
        return .transact(transaction, message, notAfter: notAfter)
    }

    private mutating func checkin(reusable: Bool, replacement: Replacement? = nil, then: AfterCheckin) -> Action {
        state = .checkingIn(then: then)
        return .checkin(reusable: reusable, replacement: replacement)
    }

    /// Defers what is still pending with the last failure, and returns the report.
    private mutating func finish() -> Action {
        if !pending.isEmpty {
            if let f = lastFailure {
                let text = f.connectFailed ? "cannot connect: \(f.target): \(f.reply.text)" : "\(f.target): \(f.reply.text)"
                resolve(pending, .deferred, DeliveryStatus(f.reply.code, f.reply.enhanced, text))
                if !f.connectFailed && decided == nil { decided = f.target }
                if f.connectFailed { unreachable = f.target }
            } else {
                resolve(pending, .deferred, .localDeferral(4, 1, "cannot connect: no delivery target"))
            }
            pending = []
        }
        state = .finished
        let outcomes = recipients.map { r in
            finals[r.id] ?? RecipientOutcome(recipientID: r.id, status: .deferred, reply: .localDeferral(4, 2, "delivery did not complete"))
        }
        var report = DeliveryReport(outcomes: outcomes, mxHost: decided?.host, remoteAddress: decided?.address, sessions: sessions)
        report.unreachable = unreachable
        return .done(report)
    }

    private mutating func resolve(_ rs: [DeliveryRecipient], _ status: OutcomeStatus, _ reply: DeliveryStatus) {
        for r in rs { finals[r.id] = RecipientOutcome(recipientID: r.id, status: status, reply: reply) }
    }

    private func invalid(_ event: String) -> Never {
        preconditionFailure("DeliveryAttempt: \(event) is not an answer to the last action (state \(state))")
    }
}
