import Foundation
import HatoConfig
import HatoSupport
import SMTPCore

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
    /// The lease deadline on the monotonic clock: no transaction is started, and the message
    /// body (and its final dot) is never sent, after this instant, so a node that was stopped
    /// or partitioned cannot complete a delivery whose recipients the coordinator has already
    /// re-leased (fencing). Nil = no deadline.
    public var leaseDeadline: ContinuousClock.Instant? = nil
    /// Until when to wait for a shaping slot (connection or rate) before deferring, on the
    /// monotonic clock; nil: `leaseDeadline`, or 5 minutes without one.
    public var shapingWaitDeadline: ContinuousClock.Instant? = nil
    /// The STARTTLS policy for this destination.
    public var tlsPolicy: SMTPTLSPolicy = .opportunistic
    /// The STARTTLS client for this request instead of the deliverer's (an MTA-STS/DANE
    /// `PolicyTLSClient`); nil uses the deliverer's.
    public var tlsClient: (any OutboundTLSClient)? = nil
    /// MX host names (lowercase) that may only be reached over TLS authenticated as the tag says
    /// (`TLSRequirement.tag`): STARTTLS is required there, and a pooled session is reused only
    /// when its `TLSSessionInfo.authentication` matches (RFC 8461 §5, RFC 7672 §2.2).
    public var authenticatedTLSHosts: [String: String] = [:]
    /// The message's priority class (issue 18): a bulk delivery never takes the connection
    /// slots `priority.bulk_reserve` keeps for transactional mail. Default transactional.
    public var priority: MessagePriority = .transactional

    /// A request from its parts (see the properties).
    public init(reversePath: String, recipients: [DeliveryRecipient], body: [UInt8], sendingIP: String, heloName: String) {
        self.reversePath = reversePath; self.recipients = recipients; self.body = body
        self.sendingIP = sendingIP; self.heloName = heloName
    }

    /// `leaseDeadline` as a wall-clock date, for callers that hold one: converted to the
    /// monotonic clock once, when set (by the two clocks' offset at that moment).
    public var notAfter: Date? {
        get { leaseDeadline.map { Date().addingTimeInterval(($0 - .now).inSeconds) } }
        set { leaseDeadline = newValue.map { .from($0) } }
    }

    /// `shapingWaitDeadline` as a wall-clock date, converted once when set (see `notAfter`).
    public var shapingDeadline: Date? {
        get { shapingWaitDeadline.map { Date().addingTimeInterval(($0 - .now).inSeconds) } }
        set { shapingWaitDeadline = newValue.map { .from($0) } }
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
    /// The last target that could not be connected to, when recipients were deferred because
    /// no target could be connected to (nil otherwise).
    public var unreachable: DeliveryTarget? = nil

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

/// The SMTP client's timeouts: the one timeouts type, `DeliveryTimeouts`, decoded from
/// `delivery.timeouts` in cluster.yml (seconds; RFC 5321 §4.5.3.2 gives the defaults).
public typealias SMTPClientTimeouts = DeliveryTimeouts

extension DeliveryTimeouts {
    /// Timeouts in seconds with one value for every command reply (greeting, EHLO, STARTTLS,
    /// MAIL, RCPT); RSET and QUIT wait at most 20 s and 10 s.
    public init(connect: TimeInterval = 30, command: TimeInterval, dataInitiation: TimeInterval = 120,
                dataBlock: TimeInterval = 180, dataTermination: TimeInterval = 600) {
        self.init(connect: connect, greeting: command, ehlo: command, startTLS: command, mail: command, rcpt: command,
                  dataInit: dataInitiation, dataBlock: dataBlock, dataDone: dataTermination, rset: min(command, 20), quit: min(command, 10))
    }

    /// The RFC 5321 §4.5.3.2 values, with a 30 s connect timeout.
    public static let rfc5321 = DeliveryTimeouts()

    /// The timeout for a reply of kind `wait`, in seconds.
    public func seconds(for wait: SMTPClientWait) -> TimeInterval {
        switch wait {
        case .greeting: return greeting
        case .ehlo: return ehlo
        case .startTLS: return startTLS
        case .mail: return mail
        case .rcpt: return rcpt
        case .dataInitiation: return dataInit
        case .dataTermination: return dataDone
        case .reset: return rset
        case .quit: return quit
        }
    }
}

/// Delivers messages over SMTP with blocking sockets, on the calling thread (never call it
/// from Swift's cooperative pool): the I/O shell around `DeliveryAttempt`.
///
/// For one request (one message, recipients of one destination), the attempt decides and this
/// driver performs: pool checkouts and checkins (`SMTPConnectionPool`, which waits for the
/// shaping limits), opening connections (`SMTPClientConnection.open`), probing reused ones,
/// rate waits, content preparation (`MessagePreparer`) and transactions. See
/// `DeliveryAttempt` for the rules (target order, plaintext retry, stale-session retries,
/// lease and shaping deadlines, 452 carry-over, final deferrals). A session retired at its
/// `messages_per_connection` limit is replaced by a new idle one, opened by a single
/// background worker (`SessionReplacer`).
public final class SMTPDeliverer: Sendable {
    /// The timeouts in use.
    public let timeouts: SMTPClientTimeouts
    /// Open sessions and shaping.
    public let pool: SMTPConnectionPool
    /// Content conversion and DKIM signing.
    public let preparer: MessagePreparer
    /// The STARTTLS implementation (nil: no TLS; `required` destinations are deferred).
    public let tlsClient: (any OutboundTLSClient)?
    /// Opens replacement sessions in the background.
    public let replacer: SessionReplacer
    /// The monotonic clock the attempt's deadlines and timings are read from.
    private let clock: any MonotonicClock

    /// - Parameters:
    ///   - timeouts: connect and per-step timeouts in seconds.
    ///   - pool: the session pool (default: no reuse, no shaping limits that matter).
    ///   - preparer: conversion and signing (default: nothing signed).
    ///   - tlsClient: the TLS client for STARTTLS.
    ///   - clock: the monotonic clock (default: the system's).
    public init(timeouts: SMTPClientTimeouts = .rfc5321, pool: SMTPConnectionPool = SMTPConnectionPool(idleTimeout: 0),
                preparer: MessagePreparer = MessagePreparer(), tlsClient: (any OutboundTLSClient)? = nil,
                clock: any MonotonicClock = SystemMonotonicClock()) {
        self.timeouts = timeouts; self.pool = pool; self.preparer = preparer; self.tlsClient = tlsClient
        self.clock = clock
        replacer = SessionReplacer { request in
            SMTPDeliverer.openReplacement(request, pool: pool, tlsClient: tlsClient, timeouts: timeouts)
        }
    }

    /// Opens a session to replace one retired at its `messages_per_connection` limit and
    /// leaves it idle in the pool, so the next message to this target does not wait for a
    /// connect, greeting and EHLO. Runs on the replacer's thread, after the retired session's
    /// QUIT, in a slot that is free at once: nothing happens when a session is already idle,
    /// no slot is free without closing another host's idle session, or the sending IP was
    /// revoked.
    static func openReplacement(_ request: SessionReplacer.Request, pool: SMTPConnectionPool,
                                tlsClient: (any OutboundTLSClient)?, timeouts: SMTPClientTimeouts) {
        switch pool.checkout(sendingIP: request.sendingIP, heloName: request.heloName, target: request.target,
                             requireTLS: request.policy == .required, until: .now, evictingIdle: false, speculative: true) {
        case .unavailable:
            return
        case .reuse(let idle):
            pool.checkin(idle, reusable: true)
        case .open(let ticket):
            switch SMTPClientConnection.open(to: request.target, from: request.sendingIP, heloName: request.heloName,
                                             tlsPolicy: request.policy, tlsClient: tlsClient, timeouts: timeouts) {
            case .success(let c):
                pool.attach(c, to: ticket)
                pool.checkin(c, reusable: true)
            case .failure:
                pool.abandon(ticket)
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
        let analysis = MessageAnalysis(request.body)
        var attempt = DeliveryAttempt(request: request, targets: targets, longestLine: analysis.longestLine, now: clock.now)
        attempt.requiredTLSHosts = Set(request.authenticatedTLSHosts.keys)
        /// The session the attempt works on (checked out, or being opened).
        var held: SMTPClientConnection? = nil
        func session() -> SMTPClientConnection {
            guard let held else { preconditionFailure("DeliveryAttempt asked for a session it does not hold") }
            return held
        }
        var action = attempt.start(now: clock.now)
        while true {
            switch action {
            case .checkout(let target, let policy, let deadline):
                switch pool.checkout(sendingIP: request.sendingIP, heloName: request.heloName, target: target,
                                     requireTLS: policy == .required, until: deadline, priority: request.priority) {
                case .unavailable(let why):
                    action = attempt.checkedOut(.unavailable(why), now: clock.now)
                case .reuse(let c):
                    if let tag = request.authenticatedTLSHosts[target.host.lowercased()], c.tls?.authentication != tag {
                        // An idle session not authenticated for this policy: its slot opens a new one.
                        action = attempt.checkedOut(.slot(pool.replace(c)), now: clock.now)
                        continue
                    }
                    held = c
                    action = attempt.checkedOut(.reuse(facts(of: c)), now: clock.now)
                case .open(let ticket):
                    action = attempt.checkedOut(.slot(ticket), now: clock.now)
                }
            case .prepareForReuse:
                let ready = session().prepareForReuse()
                action = attempt.probed(usable: ready.usable, probedWithReset: ready.probedWithReset, now: clock.now)
            case .replaceDeadSession:
                let ticket = pool.replace(session())
                held = nil
                action = attempt.deadSessionReplaced(ticket, now: clock.now)
            case .open(let target, let policy, let ticket):
                switch SMTPClientConnection.open(to: target, from: request.sendingIP, heloName: request.heloName,
                                                 tlsPolicy: policy, tlsClient: request.tlsClient ?? tlsClient, timeouts: timeouts) {
                case .success(let c):
                    pool.attach(c, to: ticket)
                    held = c
                    if c.tls == nil, let policyClient = request.tlsClient as? PolicyTLSClient {
                        // Under an MTA-STS `testing` policy the session went on without TLS: reported.
                        policyClient.noteSTARTTLSMissing(host: target.host)
                    }
                    action = attempt.opened(facts(of: c), now: clock.now)
                case .failure(let f):
                    pool.abandon(ticket)
                    if let policyClient = request.tlsClient as? PolicyTLSClient, !f.connectFailed, !f.tlsHandshakeFailed,
                       f.reply.enhanced == EnhancedStatusCode(.persistentTransientFailure, 7, 4) {
                        policyClient.noteSTARTTLSMissing(host: target.host)
                    }
                    action = attempt.openFailed(f, now: clock.now)
                }
            case .awaitSendSlot(let deadline):
                let granted = pool.awaitSendSlot(for: session(), until: deadline)
                action = attempt.sendSlot(granted: granted, now: clock.now)
            case .prepare(let eightBitMIME):
                action = attempt.prepared(preparer.prepare(analysis, eightBitMIME: eightBitMIME, reversePath: request.reversePath), now: clock.now)
            case .transact(var transaction, let message, let notAfter):
                let c = session()
                c.run(&transaction, message: message.bytes, notAfter: notAfter)
                let status = SessionStatus(isClosed: c.isClosed, transactions: c.transactions, hasRoom: pool.hasRoom(c))
                action = attempt.transacted(transaction, status: status, now: clock.now)
            case .checkin(let reusable, let replacement):
                let c = session()
                held = nil
                pool.checkin(c, reusable: reusable)
                if let replacement, pool.idleTimeout > 0 {
                    replacer.request(SessionReplacer.Request(sendingIP: request.sendingIP, heloName: request.heloName,
                                                             target: replacement.target, policy: replacement.policy))
                }
                action = attempt.checkedIn(now: clock.now)
            case .done(let report):
                return report
            }
        }
    }

    /// What the attempt needs to know about a ready session.
    private func facts(of c: SMTPClientConnection) -> SessionFacts {
        SessionFacts(capabilities: c.capabilities, tls: c.tls, connectSeconds: c.connectSeconds, setupSeconds: c.setupSeconds,
                     shapingKey: c.shapingKey)
    }
}
