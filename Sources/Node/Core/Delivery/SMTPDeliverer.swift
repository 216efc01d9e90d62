import Foundation
import HatoShared

/// One recipient of a delivery attempt.
public struct DeliveryRecipient: Sendable, Hashable {
    /// The caller's recipient id (echoed in `RecipientOutcome.recipientID`).
    public let id: Int64
    /// The forward path without angle brackets, e.g. `user@example.com`.
    public let address: String

    /// A recipient from its id and address.
    public init(id: Int64, address: String) { self.id = id; self.address = address }
}

/// One message to deliver to recipients that share a next hop.
public struct DeliveryRequest: Sendable {
    /// The reverse path without angle brackets; `""` for the null reverse path (RFC 5321 §4.5.5).
    public let reversePath: String
    /// The recipients, in RCPT order.
    public let recipients: [DeliveryRecipient]
    /// The message (headers and body) as stored; line ends are made CRLF before sending.
    public let body: [UInt8]
    /// The local numeric address to send from (bound before connect); `""` lets the kernel choose.
    public let sendingIP: String
    /// The EHLO/HELO name announced (RFC 5321 §4.1.1.1).
    public let heloName: String
    /// The lease deadline: the message body (and its final dot) is never sent after this
    /// time, so a node that was stopped or partitioned cannot complete a delivery whose
    /// recipients the coordinator has already re-leased (fencing). Nil = no deadline.
    public var notAfter: Date? = nil
    /// How long to wait for a shaping slot (connection or rate) before deferring; nil: `notAfter`,
    /// or 5 minutes without one.
    public var shapingDeadline: Date? = nil
    /// The STARTTLS policy for this destination.
    public var tlsPolicy: SMTPTLSPolicy = .opportunistic

    /// A request from its parts (see the properties).
    public init(reversePath: String, recipients: [DeliveryRecipient], body: [UInt8], sendingIP: String, heloName: String) {
        self.reversePath = reversePath; self.recipients = recipients; self.body = body
        self.sendingIP = sendingIP; self.heloName = heloName
    }
}

/// The result class of one recipient's delivery attempt.
public enum OutcomeStatus: String, Sendable, Hashable {
    /// The final reply after DATA was 2xx: the next hop took responsibility (RFC 5321 §4.2.5).
    case delivered
    /// A temporary failure (4xx, timeout, connection failure): retry later.
    case deferred
    /// A permanent failure (5xx): bounce.
    case failed
}

/// What happened to one recipient.
public struct RecipientOutcome: Sendable, Hashable {
    /// The recipient's id from `DeliveryRecipient.id`.
    public let recipientID: Int64
    /// Delivered, deferred or failed.
    public let status: OutcomeStatus
    /// The SMTP reply code behind the outcome (e.g. 250, 451, 550); synthetic 451 for local failures.
    public let code: Int
    /// The RFC 3463 enhanced status code, when the server sent one or the failure is local.
    public let enhanced: String?
    /// The reply text (lines joined by spaces), at most 512 characters.
    public let text: String

    /// An outcome from its parts.
    public init(recipientID: Int64, status: OutcomeStatus, code: Int, enhanced: String?, text: String) {
        self.recipientID = recipientID; self.status = status; self.code = code
        self.enhanced = enhanced; self.text = text
    }
}

/// The session a recipient's outcome came from: where, how, and how long each step took.
public struct DeliverySession: Sendable, Equatable {
    /// The MX host name (or next hop).
    public var mxHost: String
    /// The numeric address connected to.
    public var remoteAddress: String
    /// The port connected to.
    public var port: UInt16
    /// The local source address.
    public var sendingIP: String
    /// The TLS parameters, nil for plaintext.
    public var tls: TLSSessionInfo?
    /// Whether an already open session was reused.
    public var reused: Bool
    /// The message's transaction number on that connection (1 = first).
    public var messageOnConnection: Int
    /// Seconds the TCP handshake took (nil for a reused session).
    public var connectSeconds: Double?
    /// Seconds from connected to ready: greeting, EHLO, STARTTLS (nil for a reused session).
    public var setupSeconds: Double?
    /// Seconds spent waiting for a shaping slot (connections and rate).
    public var shapingWaitSeconds: Double
    /// Seconds the mail transaction took, MAIL FROM to the final reply.
    public var transactionSeconds: Double
    /// The DKIM signatures on the message (`domain/selector/algorithm`).
    public var dkim: [String]
    /// Whether 8-bit content was converted to 7-bit MIME for this server.
    public var converted7Bit: Bool
}

/// The result of delivering one `DeliveryRequest`.
public struct DeliveryReport: Sendable {
    /// One outcome per recipient, in request order.
    public let outcomes: [RecipientOutcome]
    /// The MX host name of the target whose session produced the (last) outcomes (nil when no server answered).
    public let mxHost: String?
    /// That target's numeric address (nil when no server answered).
    public let remoteAddress: String?
    /// Per recipient id: the session its outcome came from (absent when it never reached a transaction).
    public var sessions: [Int64: DeliverySession] = [:]

    /// A report from its parts.
    public init(outcomes: [RecipientOutcome], mxHost: String?, remoteAddress: String?, sessions: [Int64: DeliverySession] = [:]) {
        self.outcomes = outcomes; self.mxHost = mxHost; self.remoteAddress = remoteAddress; self.sessions = sessions
    }
}

/// One address to connect to.
public struct DeliveryTarget: Sendable, Hashable, CustomStringConvertible {
    /// The MX (or next hop) host name, for logs.
    public let host: String
    /// The numeric IPv4 or IPv6 address.
    public let address: String
    /// The TCP port (25 for MX delivery).
    public let port: UInt16

    /// A target from its host name, numeric address and port.
    public init(host: String, address: String, port: UInt16) {
        self.host = host; self.address = address; self.port = port
    }

    /// `host[address]:port`.
    public var description: String { "\(host)[\(address)]:\(port)" }
}

/// SMTP client timeouts in seconds (RFC 5321 §4.5.3.2 gives the defaults).
public struct SMTPClientTimeouts: Sendable, Equatable {
    /// The TCP handshake.
    public var connect: TimeInterval
    /// The 220 greeting (§4.5.3.2.1: 5 minutes).
    public var greeting: TimeInterval
    /// The reply to EHLO/HELO.
    public var ehlo: TimeInterval
    /// The reply to STARTTLS, and the TLS handshake.
    public var startTLS: TimeInterval
    /// The reply to MAIL (§4.5.3.2.2: 5 minutes); also the write timeout of commands.
    public var mail: TimeInterval
    /// The reply to each RCPT (§4.5.3.2.3: 5 minutes).
    public var rcpt: TimeInterval
    /// The 354 reply to DATA (§4.5.3.2.4: 2 minutes).
    public var dataInitiation: TimeInterval
    /// Each write of the content (§4.5.3.2.5: 3 minutes).
    public var dataBlock: TimeInterval
    /// The reply after the final dot or a BDAT chunk (§4.5.3.2.6: 10 minutes).
    public var dataTermination: TimeInterval
    /// The reply to RSET.
    public var reset: TimeInterval
    /// The reply to QUIT.
    public var quit: TimeInterval
    /// How long a session may have been idle and still be reused without an RSET probe
    /// (see `SMTPClientConnection.prepareForReuse`).
    public var unprobedIdle: TimeInterval = 5

    /// Timeouts in seconds with one value for every command reply (greeting, EHLO, STARTTLS,
    /// MAIL, RCPT); RSET and QUIT wait at most 20 s and 10 s. Defaults: the RFC 5321 §4.5.3.2
    /// minimums (connect: 30 s).
    public init(connect: TimeInterval = 30, command: TimeInterval = 300, dataInitiation: TimeInterval = 120,
                dataBlock: TimeInterval = 180, dataTermination: TimeInterval = 600) {
        self.connect = connect
        greeting = command; ehlo = command; startTLS = command; mail = command; rcpt = command
        self.dataInitiation = dataInitiation; self.dataBlock = dataBlock; self.dataTermination = dataTermination
        reset = min(command, 20); quit = min(command, 10)
    }

    /// The per-step timeouts of `delivery.timeouts`.
    public init(_ t: DeliveryTimeouts) {
        connect = t.connect; greeting = t.greeting; ehlo = t.ehlo; startTLS = t.startTLS; mail = t.mail; rcpt = t.rcpt
        dataInitiation = t.dataInit; dataBlock = t.dataBlock; dataTermination = t.dataDone; reset = t.rset; quit = t.quit
    }

    /// The RFC 5321 §4.5.3.2 values, with a 30 s connect timeout.
    public static let rfc5321 = SMTPClientTimeouts()

    /// The timeout for a reply of kind `wait`.
    public func seconds(for wait: SMTPClientWait) -> TimeInterval {
        switch wait {
        case .greeting: return greeting
        case .ehlo: return ehlo
        case .startTLS: return startTLS
        case .mail: return mail
        case .rcpt: return rcpt
        case .dataInitiation: return dataInitiation
        case .dataTermination: return dataTermination
        case .reset: return reset
        case .quit: return quit
        }
    }
}

/// Delivers messages over SMTP with blocking sockets, on the calling thread (never call it
/// from Swift's cooperative pool).
///
/// For one request (one message, recipients of one destination): targets are tried in order;
/// a failed connect, a non-2xx greeting (e.g. 421), a rejected EHLO/HELO, missing TLS when it is
/// required, or a timeout before the session is ready moves on to the next target (after a
/// failed TLS handshake an opportunistic sender first retries that target in plaintext). Once
/// a session is ready, its transactions decide the outcomes. Sessions come from, and go back
/// to, the `SMTPConnectionPool`: an idle session is reused (`prepareForReuse`: RSET only when
/// needed; a dead one is replaced at once, also when it dies unanswered at MAIL), and the pool's shaping limits (connections, messages per connection, rate) are
/// waited for up to the request's shaping deadline, after which the recipients are deferred
/// (4.4.5). Recipients a server refused with 452 "too many recipients" go into further
/// transactions on the same or a new connection. If no target could be used, every recipient
/// is deferred (never 5xx).
public final class SMTPDeliverer: Sendable {
    /// The timeouts in use.
    public let timeouts: SMTPClientTimeouts
    /// Open sessions and shaping.
    public let pool: SMTPConnectionPool
    /// Content conversion and DKIM signing.
    public let preparer: MessagePreparer
    /// The STARTTLS implementation (nil: no TLS; `required` destinations are deferred).
    public let tlsClient: (any OutboundTLSClient)?

    /// - Parameters:
    ///   - timeouts: connect and per-step timeouts in seconds.
    ///   - pool: the session pool (default: no reuse, no shaping limits that matter).
    ///   - preparer: conversion and signing (default: nothing signed).
    ///   - tlsClient: the TLS client for STARTTLS.
    public init(timeouts: SMTPClientTimeouts = .rfc5321, pool: SMTPConnectionPool = SMTPConnectionPool(idleTimeout: 0),
                preparer: MessagePreparer = MessagePreparer(), tlsClient: (any OutboundTLSClient)? = nil) {
        self.timeouts = timeouts; self.pool = pool; self.preparer = preparer; self.tlsClient = tlsClient
    }

    /// Opens a session to replace one retired at its `messages_per_connection` limit and
    /// leaves it idle in the pool, so the next message to this target does not wait for a
    /// connect, greeting and EHLO. On a background thread (the delivery's result is not held
    /// up by a slow or tarpitting server), after the retired session's QUIT, in a slot that
    /// is free at once: nothing happens when reuse is off, a session is already idle or no
    /// slot is free without closing another host's idle session.
    private func openReplacement(for request: DeliveryRequest, target: DeliveryTarget, policy: SMTPTLSPolicy) {
        guard pool.idleTimeout > 0 else { return }
        let pool = self.pool, tlsClient = self.tlsClient, timeouts = self.timeouts
        let sendingIP = request.sendingIP, heloName = request.heloName
        Thread.detachNewThread {
            switch pool.checkout(sendingIP: sendingIP, heloName: heloName, target: target,
                                 requireTLS: policy == .required, until: Date(), evictingIdle: false) {
            case .unavailable:
                return
            case .reuse(let idle):
                pool.checkin(idle, reusable: true)
            case .open(let ticket):
                switch SMTPClientConnection.open(to: target, from: sendingIP, heloName: heloName,
                                                 tlsPolicy: policy, tlsClient: tlsClient, timeouts: timeouts) {
                case .success(let c):
                    pool.attach(c, to: ticket)
                    pool.checkin(c, reusable: true)
                case .failure:
                    pool.abandon(ticket)
                }
            }
        }
    }

    /// Delivers `request` to the first usable target.
    /// - Parameters:
    ///   - request: the message, envelope, sending IP, HELO name and policies.
    ///   - targets: the next hops in preference order. Targets of the other address family
    ///     than `request.sendingIP` are skipped.
    /// - Returns: one outcome per recipient; never throws.
    public func deliver(_ request: DeliveryRequest, to targets: [DeliveryTarget]) -> DeliveryReport {
        var finals: [Int64: RecipientOutcome] = [:]
        var sessions: [Int64: DeliverySession] = [:]
        func report(_ mx: DeliveryTarget?) -> DeliveryReport {
            let outcomes = request.recipients.map { r in
                finals[r.id] ?? RecipientOutcome(recipientID: r.id, status: .deferred, code: 451, enhanced: "4.4.2", text: "delivery did not complete")
            }
            return DeliveryReport(outcomes: outcomes, mxHost: mx?.host, remoteAddress: mx?.address, sessions: sessions)
        }
        func resolve(_ rs: [DeliveryRecipient], _ status: OutcomeStatus, _ code: Int, _ enhanced: String, _ text: String) {
            for r in rs {
                finals[r.id] = RecipientOutcome(recipientID: r.id, status: status, code: code, enhanced: enhanced,
                                                text: String(text.prefix(SMTPClientTransaction.maxTextLength)))
            }
        }

        // Addresses that could break a command line are never sent.
        var pending: [DeliveryRecipient] = []
        if !SMTPClientTransaction.isSafeArgument(request.reversePath, allowEmpty: true) {
            resolve(request.recipients, .failed, 553, "5.1.7", "invalid sender address syntax")
        } else {
            for r in request.recipients {
                if SMTPClientTransaction.isSafeArgument(r.address, allowEmpty: false) { pending.append(r) } else {
                    resolve([r], .failed, 553, "5.1.3", "invalid recipient address syntax")
                }
            }
        }
        guard !pending.isEmpty else { return report(nil) }
        let analysis = MessageAnalysis(request.body)
        if analysis.longestLine > MessageText.maxLineLength {
            resolve(pending, .failed, 554, "5.6.0", "message has a line of \(analysis.longestLine) octets; RFC 5321 §4.5.3.1.6 allows 998")
            return report(nil)
        }
        let shapingDeadline = request.shapingDeadline ?? request.notAfter ?? Date().addingTimeInterval(300)
        var prepared: [Bool: PreparedMessage] = [:]
        var lastFailure: SMTPOpenFailure? = nil
        var plaintextRetry = Set<DeliveryTarget>()
        var decided: DeliveryTarget? = nil
        let sourceIsIPv6 = request.sendingIP.isEmpty ? nil : request.sendingIP.contains(":")
        var index = 0
        var staleRetries = 0

        targets: while index < targets.count && !pending.isEmpty {
            let target = targets[index]
            if let sourceIsIPv6, target.address.contains(":") != sourceIsIPv6 {
                lastFailure = SMTPOpenFailure(target: target, connectFailed: true, code: 451, enhanced: "4.4.1",
                                              text: "address family differs from sending IP \(request.sendingIP)", tlsHandshakeFailed: false)
                index += 1
                continue
            }
            let policy: SMTPTLSPolicy = plaintextRetry.contains(target) ? .disabled : request.tlsPolicy
            let waitStart = Date()
            var opened: SMTPClientConnection? = nil
            var reused = false
            var unprobed = false
            var ticket: SMTPConnectionPool.Ticket? = nil
            switch pool.checkout(sendingIP: request.sendingIP, heloName: request.heloName, target: target,
                                 requireTLS: policy == .required, until: shapingDeadline) {
            case .unavailable(let why):
                resolve(pending, .deferred, 451, "4.4.5", why)
                pending = []
                break targets
            case .reuse(let c):
                let ready = c.prepareForReuse()
                if ready.usable {
                    opened = c
                    reused = true
                    unprobed = !ready.probedWithReset
                } else {
                    // A dead pooled session: replaced at once, the message is not delayed.
                    ticket = pool.replace(c)
                }
            case .open(let t):
                ticket = t
            }
            if let ticket {
                switch SMTPClientConnection.open(to: target, from: request.sendingIP, heloName: request.heloName,
                                                 tlsPolicy: policy, tlsClient: tlsClient, timeouts: timeouts) {
                case .success(let c):
                    pool.attach(c, to: ticket)
                    opened = c
                case .failure(let f):
                    pool.abandon(ticket)
                    lastFailure = f
                    if f.tlsHandshakeFailed && request.tlsPolicy == .opportunistic && !plaintextRetry.contains(target) {
                        plaintextRetry.insert(target)
                    } else {
                        index += 1
                    }
                    continue targets
                }
            }
            guard let connection = opened else { continue targets }
            let shapingWait = Date().timeIntervalSince(waitStart) - (reused ? 0 : connection.connectSeconds + connection.setupSeconds)
            var firstOnThisCheckout = true
            while true {
                if let notAfter = request.notAfter, Date() >= notAfter {
                    resolve(pending, .deferred, 451, "4.4.7", "lease deadline passed before the transaction started")
                    pending = []
                    pool.checkin(connection, reusable: true)
                    break targets
                }
                let rateStart = Date()
                guard pool.awaitSendSlot(for: connection, until: shapingDeadline) else {
                    resolve(pending, .deferred, 451, "4.4.5", "shaping: the message rate for \(connection.shapingKey.map(\.description) ?? request.sendingIP) leaves no slot before the lease deadline")
                    pending = []
                    pool.checkin(connection, reusable: true)
                    break targets
                }
                let rateWait = Date().timeIntervalSince(rateStart)
                let eightBit = connection.capabilities.eightBitMIME
                let message: PreparedMessage
                if let p = prepared[eightBit] {
                    message = p
                } else {
                    switch preparer.prepare(analysis, eightBitMIME: eightBit) {
                    case .success(let p):
                        prepared[eightBit] = p
                        message = p
                    case .failure(let f):
                        resolve(pending, f.permanent ? .failed : .deferred, f.code, f.enhanced, f.text)
                        pending = []
                        decided = target
                        pool.checkin(connection, reusable: true)
                        break targets
                    }
                }
                var transaction = SMTPClientTransaction(reversePath: request.reversePath, recipients: pending,
                                                        traits: message.traits, capabilities: connection.capabilities)
                let started = Date()
                connection.run(&transaction, message: message.bytes, notAfter: request.notAfter)
                if unprobed && firstOnThisCheckout && transaction.repliesReceived == 0 && connection.isClosed && staleRetries < 3 {
                    // The idle session died between the check and MAIL (the server timed it
                    // out): nothing was answered, so nothing was taken. Same target, new session.
                    staleRetries += 1
                    pool.checkin(connection, reusable: false)
                    continue targets
                }
                let session = DeliverySession(
                    mxHost: target.host, remoteAddress: target.address, port: target.port, sendingIP: request.sendingIP,
                    tls: connection.tls, reused: reused || !firstOnThisCheckout, messageOnConnection: connection.transactions,
                    connectSeconds: reused ? nil : connection.connectSeconds, setupSeconds: reused ? nil : connection.setupSeconds,
                    shapingWaitSeconds: max(0, (firstOnThisCheckout ? shapingWait : 0) + rateWait),
                    transactionSeconds: Date().timeIntervalSince(started), dkim: message.signatures, converted7Bit: message.converted)
                firstOnThisCheckout = false
                decided = target
                let carried = transaction.acceptedCount > 0 ? Set(transaction.carriedOver.map(\.id)) : []
                for o in transaction.outcomes where !carried.contains(o.recipientID) {
                    finals[o.recipientID] = o
                    sessions[o.recipientID] = session
                }
                pending = pending.filter { carried.contains($0.id) }
                if pending.isEmpty {
                    let retiredAtLimit = transaction.reusable && !connection.isClosed && !pool.hasRoom(connection)
                    pool.checkin(connection, reusable: transaction.reusable)
                    if retiredAtLimit { openReplacement(for: request, target: target, policy: policy) }
                    break targets
                }
                // Recipients over the server's limit: a new transaction here, or on a new connection.
                if !transaction.reusable || !pool.hasRoom(connection) || !connection.prepareForReuse().usable {
                    pool.checkin(connection, reusable: false)
                    continue targets
                }
            }
        }
        if !pending.isEmpty {
            if let f = lastFailure {
                let text = f.connectFailed ? "cannot connect: \(f.target): \(f.text)" : "\(f.target): \(f.text)"
                resolve(pending, .deferred, f.code, f.enhanced, text)
                if !f.connectFailed && decided == nil { decided = f.target }
            } else {
                resolve(pending, .deferred, 451, "4.4.1", "cannot connect: no delivery target")
            }
        }
        return report(decided)
    }
}
