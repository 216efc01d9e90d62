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
    /// The message (headers and body) with CRLF line ends, not dot-stuffed.
    public let body: [UInt8]
    /// The local numeric address to send from (bound before connect); `""` lets the kernel choose.
    public let sendingIP: String
    /// The EHLO/HELO name announced (RFC 5321 §4.1.1.1).
    public let heloName: String
    /// The lease deadline: the message body (and its final dot) is never sent after this
    /// time, so a node that was stopped or partitioned cannot complete a delivery whose
    /// recipients the coordinator has already re-leased (fencing). Nil = no deadline.
    public var notAfter: Date? = nil

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

/// The result of delivering one `DeliveryRequest`.
public struct DeliveryReport: Sendable {
    /// One outcome per recipient, in request order.
    public let outcomes: [RecipientOutcome]
    /// The MX host name of the target whose session produced the outcomes (nil when no connection succeeded).
    public let mxHost: String?
    /// That target's numeric address (nil when no connection succeeded).
    public let remoteAddress: String?

    /// A report from its parts.
    public init(outcomes: [RecipientOutcome], mxHost: String?, remoteAddress: String?) {
        self.outcomes = outcomes; self.mxHost = mxHost; self.remoteAddress = remoteAddress
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
    /// The 220 greeting and the replies to EHLO/HELO, MAIL, RCPT, QUIT (§4.5.3.2.1–3: 5 minutes).
    public var command: TimeInterval
    /// The 354 reply to DATA (§4.5.3.2.4: 2 minutes).
    public var dataInitiation: TimeInterval
    /// Each write of the body (§4.5.3.2.5: 3 minutes).
    public var dataBlock: TimeInterval
    /// The reply after the final CRLF.CRLF (§4.5.3.2.6: 10 minutes).
    public var dataTermination: TimeInterval

    /// Timeouts in seconds; the defaults are the RFC 5321 §4.5.3.2 minimums (connect: 30 s).
    public init(connect: TimeInterval = 30, command: TimeInterval = 300, dataInitiation: TimeInterval = 120,
                dataBlock: TimeInterval = 180, dataTermination: TimeInterval = 600) {
        self.connect = connect; self.command = command; self.dataInitiation = dataInitiation
        self.dataBlock = dataBlock; self.dataTermination = dataTermination
    }

    /// The RFC 5321 §4.5.3.2 values, with a 30 s connect timeout.
    public static let rfc5321 = SMTPClientTimeouts()
}

/// Delivers messages over SMTP with blocking sockets (one thread per delivery).
///
/// Tries targets in order: a failed connect, a non-2xx greeting (e.g. 421), a rejected
/// EHLO/HELO or a failure before MAIL FROM moves on to the next target; the first target
/// whose session reached MAIL FROM decides every outcome. If no target could be used,
/// every recipient is deferred (connection failures: 451 4.4.1; never 5xx).
/// Runs on the calling thread; do not call it from Swift's cooperative pool.
public final class SMTPDeliverer: Sendable {
    /// The timeouts in use.
    public let timeouts: SMTPClientTimeouts

    /// - Parameter timeouts: connect and per-step timeouts in seconds.
    public init(timeouts: SMTPClientTimeouts = .rfc5321) { self.timeouts = timeouts }

    /// Delivers `request` to the first usable target.
    /// - Parameters:
    ///   - request: the message, envelope, sending IP and HELO name.
    ///   - targets: the next hops in preference order. Targets of the other address family
    ///     than `request.sendingIP` are skipped.
    /// - Returns: one outcome per recipient; never throws.
    public func deliver(_ request: DeliveryRequest, to targets: [DeliveryTarget]) -> DeliveryReport {
        let has8Bit = request.body.contains { $0 >= 0x80 }
        func newTransaction() -> SMTPClientTransaction {
            SMTPClientTransaction(heloName: request.heloName, reversePath: request.reversePath,
                                  recipients: request.recipients, bodySize: request.body.count, bodyHas8Bit: has8Bit)
        }
        let initial = newTransaction()
        if !initial.needsConnection {
            return DeliveryReport(outcomes: initial.outcomes, mxHost: nil, remoteAddress: nil)
        }
        let source: String? = request.sendingIP.isEmpty ? nil : request.sendingIP
        let sourceIsIPv6 = source?.contains(":")
        var lastError = "no delivery target"
        var lastSession: (SMTPClientTransaction, DeliveryTarget)? = nil
        for target in targets {
            if let sourceIsIPv6, target.address.contains(":") != sourceIsIPv6 {
                lastError = "\(target): address family differs from sending IP \(request.sendingIP)"
                continue
            }
            let socket: Socket
            do {
                socket = try Socket.connect(to: SocketAddress(host: target.address, port: target.port),
                                            from: source, timeout: timeouts.connect)
            } catch {
                lastError = "\(target): \(error)"
                lastSession = nil
                continue
            }
            var transaction = newTransaction()
            run(&transaction, on: socket, body: request.body, notAfter: request.notAfter)
            socket.close()
            if transaction.shouldTryNextTarget {
                lastError = "\(target): \(transaction.outcomes.first?.text ?? "session failed")"
                lastSession = (transaction, target)
                continue
            }
            return DeliveryReport(outcomes: transaction.outcomes, mxHost: target.host, remoteAddress: target.address)
        }
        if let (transaction, target) = lastSession {
            return DeliveryReport(outcomes: transaction.outcomes, mxHost: target.host, remoteAddress: target.address)
        }
        let text = String("cannot connect: \(lastError)".prefix(SMTPClientTransaction.maxTextLength))
        let outcomes = initial.outcomes.map { o -> RecipientOutcome in
            // Recipients rejected locally (bad syntax) keep their outcome.
            if o.status == .failed { return o }
            return RecipientOutcome(recipientID: o.recipientID, status: .deferred, code: 451, enhanced: "4.4.1", text: text)
        }
        return DeliveryReport(outcomes: outcomes, mxHost: nil, remoteAddress: nil)
    }

    /// Drives one transaction over a connected socket until it finishes.
    func run(_ transaction: inout SMTPClientTransaction, on socket: Socket, body: [UInt8], notAfter: Date? = nil) {
        let reader = BufferedReader(stream: socket, chunkSize: 16 * 1024)
        var actions: [SMTPClientAction] = []
        while true {
            var failure: SMTPSessionFailure? = nil
            actionLoop: for action in actions {
                do {
                    switch action {
                    case .send(let bytes):
                        socket.setTimeouts(read: timeouts.command, write: timeouts.command)
                        try socket.write(bytes)
                    case .sendBody:
                        socket.setTimeouts(read: timeouts.dataBlock, write: timeouts.dataBlock)
                        try SMTPDotStuffing.encode(body) { chunk in
                            if let notAfter, Date() >= notAfter { throw LeaseDeadlinePassed() }
                            try socket.write(chunk)
                        }
                    case .close:
                        return
                    }
                } catch {
                    failure = SMTPDeliverer.sessionFailure(error, while: "sending")
                    break actionLoop
                }
            }
            if let failure {
                _ = transaction.fail(failure)
                return
            }
            guard let wait = transaction.waitingFor else { return }
            let seconds: TimeInterval
            switch wait {
            case .greeting, .command: seconds = timeouts.command
            case .dataInitiation: seconds = timeouts.dataInitiation
            case .dataTermination: seconds = timeouts.dataTermination
            }
            do {
                let reply = try readReply(reader, socket: socket, timeout: seconds)
                actions = transaction.receive(reply)
            } catch {
                actions = transaction.fail(SMTPDeliverer.sessionFailure(error, while: "waiting for \(SMTPDeliverer.describe(wait)) reply"))
            }
        }
    }

    /// Reads one complete reply within `timeout` seconds overall.
    /// - Throws: `SocketError` (timeout, closed) or `SMTPProtocolError`.
    func readReply(_ reader: BufferedReader, socket: Socket, timeout: TimeInterval) throws -> SMTPReply {
        let deadline = Date().addingTimeInterval(timeout)
        var parser = SMTPClientReplyParser()
        while true {
            let line = try readLine(reader, socket: socket, deadline: deadline)
            switch parser.feed(line) {
            case .needMore: continue
            case .reply(let reply): return reply
            case .error(let message): throw SMTPProtocolError(message)
            }
        }
    }

    /// Reads one LF-terminated line of at most `SMTPClientReplyParser.maxBytes` octets before `deadline`.
    private func readLine(_ reader: BufferedReader, socket: Socket, deadline: Date) throws -> [UInt8] {
        var scanned = 0
        while true {
            let buffered = reader.buffered
            if let lf = buffered.dropFirst(scanned).firstIndex(of: 0x0A) {
                let count = lf - buffered.startIndex + 1
                let line = Array(buffered.prefix(count))
                reader.consume(count)
                return line
            }
            scanned = buffered.count
            if scanned > SMTPClientReplyParser.maxBytes {
                throw SMTPProtocolError("reply line longer than \(SMTPClientReplyParser.maxBytes) octets")
            }
            let remaining = deadline.timeIntervalSinceNow
            if remaining <= 0 { throw SocketError(.timeout, "read") }
            socket.setTimeouts(read: max(0.001, remaining), write: max(0.001, remaining))
            if try reader.fill() == 0 {
                throw SocketError(.closed, "read")
            }
        }
    }

    static func sessionFailure(_ error: any Error, while doing: String) -> SMTPSessionFailure {
        if error is LeaseDeadlinePassed { return .connectionClosed("lease deadline passed before the end of data; not completing the delivery") }
        if let e = error as? SMTPProtocolError { return .protocolError(e.message) }
        if let e = error as? SocketError {
            switch e.kind {
            case .timeout: return .timeout(doing)
            case .closed: return .connectionClosed("\(doing): \(e)")
            default: return .connectionClosed("\(doing): \(e)")
            }
        }
        return .connectionClosed("\(doing): \(error)")
    }

    static func describe(_ wait: SMTPClientWait) -> String {
        switch wait {
        case .greeting: return "greeting"
        case .command: return "command"
        case .dataInitiation: return "DATA"
        case .dataTermination: return "end-of-data"
        }
    }
}

/// Thrown inside the body writer when the lease deadline passed: the transaction is
/// abandoned before its final dot, so the recipients stay undelivered here.
struct LeaseDeadlinePassed: Error {}
