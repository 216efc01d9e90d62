import Foundation

/// What a transaction needs to know about the message it sends.
public struct SMTPMessageTraits: Sendable, Equatable {
    /// The size in octets of the message as sent (before dot-stuffing).
    public var size: Int
    /// Whether the message (headers or body) has octets ≥ 0x80: `BODY=8BITMIME` (RFC 6152).
    public var has8Bit: Bool
    /// Whether the header section has UTF-8: the transaction needs SMTPUTF8 (RFC 6531 §3.2).
    public var needsSMTPUTF8: Bool

    /// Traits from their parts.
    public init(size: Int, has8Bit: Bool, needsSMTPUTF8: Bool = false) {
        self.size = size; self.has8Bit = has8Bit; self.needsSMTPUTF8 = needsSMTPUTF8
    }
}

/// One SMTP mail transaction on a ready session, as a pure state machine: one message, one
/// reverse path, several recipients (RFC 5321 §3.3, §4.1.1).
///
/// MAIL FROM (with ` SIZE=n` if SIZE is offered, ` BODY=8BITMIME` for 8-bit content on an
/// 8BITMIME server, ` SMTPUTF8` when an address or the headers need it) → RCPT TO for each
/// recipient → DATA, 354, dot-stuffed content — or, when CHUNKING is offered, `BDAT n LAST`
/// chunks without dot-stuffing (RFC 3030). With PIPELINING (RFC 2920) MAIL, the RCPTs and DATA
/// go in one write; with PIPELINING and CHUNKING, and content of at most
/// `pipelinedContentLimit` octets, MAIL, the RCPTs and `BDAT n LAST` with the content go in one
/// write (RFC 3030 §4.2: BDAT may be pipelined; a server that accepted no recipient still reads
/// the chunk and refuses it) — one round trip per message on a kept session instead of two.
/// Every reply of such a group waits as long as the final one (`dataTermination`): a server may
/// hold its MAIL and RCPT replies until it has taken the content.
///
/// Per recipient: RCPT 2xx → pending until the final reply (2xx delivered, 4xx deferred, 5xx
/// failed); RCPT 5xx → failed; other 4xx → deferred; **452** (or 552 with 5.5.3, RFC 5321
/// §4.5.3.1.10) means "too many recipients": that recipient and, without pipelining, all after
/// it are `carriedOver` to a new transaction instead of being deferred. 421 at any step → every
/// unfinished recipient deferred and the connection closed (`reusable == false`). There is no
/// QUIT or RSET here: a finished transaction hands the session back (`reusable`); the driver
/// sends RSET before reusing it unless the transaction `endedAtContentReply`.
public struct SMTPClientTransaction: Sendable {
    /// Which step's reply is awaited inside the envelope phase.
    public enum EnvelopeStep: Sendable, Equatable {
        /// The reply to MAIL FROM.
        case mail
        /// The reply to RCPT TO for the recipient at this index.
        case rcpt(Int)
        /// The reply to DATA (354 expected).
        case data
        /// The reply to `BDAT n LAST` sent with the envelope: the final reply for the accepted recipients.
        case lastChunk
    }

    /// The machine's position.
    public enum State: Sendable, Equatable {
        /// Not started: call `start()`.
        case notStarted
        /// MAIL/RCPT/DATA replies outstanding, in order (more than one when pipelining).
        case awaitingEnvelope([EnvelopeStep])
        /// A BDAT chunk ending at octet `end` was sent (`last`: with LAST).
        case awaitingChunkReply(end: Int, last: Bool)
        /// The content (or, when nothing was accepted, an empty body) was sent; waiting for the final reply.
        case awaitingFinalReply(bodySent: Bool)
        /// Done (see `reusable`).
        case finished
    }

    /// What the driver must do next.
    public enum Action: Sendable, Equatable {
        /// Write these bytes (one or more CRLF-terminated commands, in one write).
        case send([UInt8])
        /// Write the message dot-stuffed and terminated by CRLF.CRLF (RFC 5321 §4.5.2), see `SMTPDotStuffing`.
        case sendData
        /// Write `commands` (the envelope pipelined with the chunk, or none), `BDAT <length>[ LAST]`
        /// and then octets `offset..<offset+length` of the message as they are — the commands, the
        /// BDAT line and the first octets in one write.
        case sendChunk(commands: [UInt8], offset: Int, length: Int, last: Bool)
        /// The transaction is over; the session may be reused or must be closed.
        case finished(reusable: Bool)
    }

    /// The reverse path without angle brackets (`""` for the null reverse path).
    public let reversePath: String
    /// The recipients, in RCPT order.
    public let recipients: [DeliveryRecipient]
    /// The message's size and content traits.
    public let traits: SMTPMessageTraits
    /// What the server offers.
    public let capabilities: RemoteSMTPCapabilities
    /// The BDAT chunk size in octets.
    public let chunkSize: Int
    /// The most content, in octets, pipelined with the envelope (64 KiB): with blocking writes
    /// a client must not pipeline more than the connection takes without the server reading
    /// (RFC 2920 §3.1), and a server that refuses MAIL and hangs up would otherwise cut the
    /// write off before its reply is read. Larger content waits for the envelope's replies.
    public static let pipelinedContentLimit = 64 * 1024

    /// The current state.
    public private(set) var state: State = .notStarted
    /// Whether the envelope was pipelined.
    public private(set) var pipelined = false
    /// Whether the content went with BDAT.
    public private(set) var usedChunking = false
    /// Whether MAIL carried `SMTPUTF8`.
    public private(set) var usedSMTPUTF8 = false
    /// Whether the session can be reused once finished (false after 421, timeouts, protocol errors).
    public private(set) var reusable = true
    /// The last reply received (for logs).
    public private(set) var lastReply: SMTPReply? = nil
    /// Replies received so far. Zero after a failure, with `contentWritten` false, means the
    /// server answered nothing and saw no content: the message was certainly not taken (safe
    /// to retry elsewhere). With content pipelined and written, zero replies proves nothing.
    public private(set) var repliesReceived = 0
    /// Whether any octet of the content reached the connection (`contentWillBeWritten()`).
    public private(set) var contentWritten = false
    /// Whether the transaction ended at the reply to the content (end of data, or the last
    /// BDAT chunk accepted): the server has cleared its transaction state (RFC 5321 §4.1.1.4),
    /// so the session can carry the next MAIL without RSET.
    public private(set) var endedAtContentReply = false

    private var results: [RecipientOutcome?]
    private var accepted: [Bool]
    private var carried: [SMTPReply?]
    private var sent: [Bool]
    private var mailAccepted: Bool? = nil
    private var limitReached = false

    /// Longest outcome text kept, in characters (`DeliveryStatus.maxTextLength`).
    public static let maxTextLength = DeliveryStatus.maxTextLength

    /// - Parameters:
    ///   - reversePath: the reverse path without brackets; `""` for the null path (RFC 5321 §4.5.5).
    ///   - recipients: the forward paths, each with its id.
    ///   - traits: size and content of the message as it will be sent.
    ///   - capabilities: what the server advertised.
    ///   - chunkSize: BDAT chunk size in octets (default 1 MiB).
    public init(reversePath: String, recipients: [DeliveryRecipient], traits: SMTPMessageTraits,
                capabilities: RemoteSMTPCapabilities, chunkSize: Int = 1 << 20) {
        self.reversePath = reversePath
        self.recipients = recipients
        self.traits = traits
        self.capabilities = capabilities
        self.chunkSize = max(1, chunkSize)
        results = Array(repeating: nil, count: recipients.count)
        accepted = Array(repeating: false, count: recipients.count)
        carried = Array(repeating: nil, count: recipients.count)
        sent = Array(repeating: false, count: recipients.count)
        // Addresses that could break the command line are never sent (no command injection).
        if !SMTPClientTransaction.isSafeArgument(reversePath, allowEmpty: true) {
            resolveAll(.failed, .localFailure(553, 1, 7, "invalid sender address syntax"))
        }
        for (i, r) in recipients.enumerated() where results[i] == nil {
            if !SMTPClientTransaction.isSafeArgument(r.address, allowEmpty: false) {
                results[i] = SMTPClientTransaction.outcome(r.id, .failed, .localFailure(553, 1, 3, "invalid recipient address syntax"))
            }
        }
    }

    /// Whether anything would be sent (false when every recipient already has an outcome).
    public var needsSending: Bool { results.contains { $0 == nil } }

    /// Whether the transaction is over.
    public var isFinished: Bool { state == .finished }

    /// Recipients the server accepted in this transaction (RCPT 2xx).
    public var acceptedCount: Int { accepted.filter { $0 }.count }

    /// Recipients the server refused with "too many recipients" (or that were not sent after
    /// it): send them in a new transaction when this one made progress (`acceptedCount > 0`).
    public var carriedOver: [DeliveryRecipient] {
        recipients.indices.filter { results[$0] == nil && carried[$0] != nil }.map { recipients[$0] }
    }

    /// The driver calls this just before it writes the first octet of the content (the
    /// pipelined group, the dot-stuffed DATA, the first BDAT chunk).
    public mutating func contentWillBeWritten() { contentWritten = true }

    /// Which timeout applies to the next read, or nil when no reply is awaited.
    public var waitingFor: SMTPClientWait? {
        switch state {
        case .notStarted, .finished: return nil
        case .awaitingEnvelope(let steps):
            // Content pipelined: every reply of the group may come only once it was taken.
            if steps.last == .lastChunk { return .dataTermination }
            switch steps.first {
            case .mail: return .mail
            case .rcpt: return .rcpt
            case .data: return .dataInitiation
            case .lastChunk: return .dataTermination
            case nil: return nil
            }
        case .awaitingChunkReply, .awaitingFinalReply: return .dataTermination
        }
    }

    /// One outcome per recipient, in input order. Carried-over recipients read as deferred with
    /// the server's 452; recipients without a result yet as deferred 4.4.2.
    public var outcomes: [RecipientOutcome] {
        results.enumerated().map { i, r in
            if let r { return r }
            if let reply = carried[i] { return outcome(i, .deferred, reply) }
            return SMTPClientTransaction.outcome(recipients[i].id, .deferred, .localDeferral(4, 2, "delivery did not complete"))
        }
    }

    /// Begins the transaction.
    /// - Returns: the first commands, or `.finished` when nothing can be sent (every recipient
    ///   already failed, e.g. SMTPUTF8 needed but not offered).
    public mutating func start() -> [Action] {
        guard state == .notStarted else { return [] }
        let caps = capabilities
        if let limit = caps.size, limit > 0, traits.size > limit {
            resolveAll(.failed, .localFailure(552, 3, 4, "message size \(traits.size) exceeds the server's limit of \(limit) octets"))
            return finish(reusable: true)
        }
        let senderNonASCII = reversePath.utf8.contains { $0 >= 0x80 }
        if !caps.smtpUTF8 && (senderNonASCII || traits.needsSMTPUTF8) {
            let what = senderNonASCII ? "a non-ASCII sender address" : "UTF-8 header fields"
            resolveAll(.failed, .localFailure(553, 6, 7, "the server does not support SMTPUTF8 (RFC 6531), needed for \(what)"))
            return finish(reusable: true)
        }
        var needUTF8 = senderNonASCII || traits.needsSMTPUTF8
        for (i, r) in recipients.enumerated() where results[i] == nil && r.address.utf8.contains(where: { $0 >= 0x80 }) {
            if caps.smtpUTF8 {
                needUTF8 = true
            } else {
                results[i] = SMTPClientTransaction.outcome(r.id, .failed, .localFailure(553, 6, 7, "the server does not support SMTPUTF8 (RFC 6531), needed for a non-ASCII recipient address"))
            }
        }
        if traits.has8Bit && !caps.eightBitMIME && !needUTF8 {
            resolveAll(.failed, .localFailure(554, 6, 3, "8-bit content and the server does not offer 8BITMIME"))
            return finish(reusable: true)
        }
        usedSMTPUTF8 = needUTF8
        guard needsSending else { return finish(reusable: true) }

        var mail = "MAIL FROM:<\(reversePath)>"
        if caps.size != nil { mail += " SIZE=\(traits.size)" }
        if caps.eightBitMIME && traits.has8Bit { mail += " BODY=8BITMIME" }
        if usedSMTPUTF8 { mail += " SMTPUTF8" }
        mail += "\r\n"
        usedChunking = caps.chunking
        if caps.pipelining {
            pipelined = true
            var batch = mail
            var steps: [EnvelopeStep] = [.mail]
            for i in recipients.indices where results[i] == nil {
                batch += "RCPT TO:<\(recipients[i].address)>\r\n"
                steps.append(.rcpt(i))
                sent[i] = true
            }
            if !usedChunking {
                batch += "DATA\r\n"
                steps.append(.data)
            } else if traits.size <= min(chunkSize, Self.pipelinedContentLimit) {
                steps.append(.lastChunk)
                state = .awaitingEnvelope(steps)
                return [.sendChunk(commands: Array(batch.utf8), offset: 0, length: traits.size, last: true)]
            }
            state = .awaitingEnvelope(steps)
            return [.send(Array(batch.utf8))]
        }
        state = .awaitingEnvelope([.mail])
        return [.send(Array(mail.utf8))]
    }

    /// Feeds one complete server reply.
    /// - Returns: what to do next, in order.
    public mutating func receive(_ reply: SMTPReply) -> [Action] {
        lastReply = reply
        if state != .notStarted && state != .finished { repliesReceived += 1 }
        switch state {
        case .notStarted, .finished:
            return []
        case .awaitingEnvelope(var steps):
            guard !steps.isEmpty else { return fail(.protocolError("unexpected reply")) }
            let step = steps.removeFirst()
            if reply.code == 421 {
                resolveUnfinished(from: reply, as: .deferred)
                return finish(reusable: false)
            }
            switch step {
            case .mail:
                if reply.replyCode.isPositiveCompletion {
                    mailAccepted = true
                } else {
                    mailAccepted = false
                    resolveUnfinished(from: reply, as: reply.replyCode.isPermanent ? .failed : .deferred)
                }
            case .rcpt(let i):
                if mailAccepted == true, i < recipients.count, results[i] == nil {
                    if reply.replyCode.isPositiveCompletion {
                        accepted[i] = true
                    } else if SMTPClientTransaction.isTooManyRecipients(reply) {
                        carried[i] = reply
                        limitReached = true
                    } else {
                        results[i] = outcome(i, reply.replyCode.isPermanent ? .failed : .deferred, reply)
                    }
                }
            case .data:
                let anyAccepted = mailAccepted == true && accepted.contains(true)
                if reply.replyCode.isPositiveIntermediate {
                    state = .awaitingFinalReply(bodySent: anyAccepted)
                    // RFC 2920 §3.1: a 354 after no accepted recipient still needs an (empty) body.
                    return anyAccepted ? [.sendData] : [.send(Array(".\r\n".utf8))]
                }
                if anyAccepted { resolveAccepted(from: reply, as: reply.replyCode.isPermanent ? .failed : .deferred) }
                return finish(reusable: true)
            case .lastChunk:
                // Without an accepted recipient the server refused the chunk (RFC 3030 §2: 503 or
                // 554); every recipient already has its outcome (or is carried over).
                let anyAccepted = mailAccepted == true && accepted.contains(true)
                if reply.replyCode.isPositiveCompletion {
                    if anyAccepted { resolveAccepted(from: reply, as: .delivered) }
                    endedAtContentReply = true
                } else if anyAccepted {
                    resolveAccepted(from: reply, as: reply.replyCode.isPermanent ? .failed : .deferred)
                }
                return finish(reusable: true)
            }
            if !steps.isEmpty {
                state = .awaitingEnvelope(steps)
                return []
            }
            return nextEnvelopeCommand(after: step)
        case .awaitingChunkReply(let end, let last):
            if reply.code == 421 {
                resolveUnfinished(from: reply, as: .deferred)
                return finish(reusable: false)
            }
            guard reply.replyCode.isPositiveCompletion else {
                // RFC 3030 §2: a failed chunk ends the transaction; no further chunks.
                resolveAccepted(from: reply, as: reply.replyCode.isPermanent ? .failed : .deferred)
                return finish(reusable: true)
            }
            if last {
                resolveAccepted(from: reply, as: .delivered)
                endedAtContentReply = true
                return finish(reusable: true)
            }
            return nextChunk(from: end)
        case .awaitingFinalReply(let bodySent):
            if bodySent {
                switch reply.replyCode.replyClass {
                case .positiveCompletion: resolveAccepted(from: reply, as: .delivered)
                case .permanentNegative: resolveAccepted(from: reply, as: .failed)
                default: resolveAccepted(from: reply, as: .deferred)  // 4yz, and a 3yz or nonsense after the content
                }
            }
            endedAtContentReply = true
            return finish(reusable: reply.code != 421)
        }
    }

    /// Reports that no reply will come: a timeout, a closed connection or a protocol error.
    /// Every unfinished recipient (carried-over ones included) is deferred (4.4.2 for timeouts
    /// and closes, 4.5.0 for protocol errors); the session is not reusable.
    public mutating func fail(_ failure: SMTPSessionFailure) -> [Action] {
        guard state != .finished else { return [] }
        let d = failure.deferral
        for i in recipients.indices where results[i] == nil {
            results[i] = SMTPClientTransaction.outcome(recipients[i].id, .deferred, d)
        }
        return finish(reusable: false)
    }

    // MARK: Private steps

    private mutating func finish(reusable: Bool) -> [Action] {
        state = .finished
        self.reusable = reusable
        return [.finished(reusable: reusable)]
    }

    private mutating func nextEnvelopeCommand(after step: EnvelopeStep) -> [Action] {
        guard mailAccepted == true else { return finish(reusable: true) }
        if case .data = step { return finish(reusable: true) }
        if !pipelined {
            let from: Int
            if case .rcpt(let i) = step { from = i + 1 } else { from = 0 }
            let next = from < recipients.count ? (from..<recipients.count).first(where: { results[$0] == nil && !sent[$0] }) : nil
            if let next {
                if limitReached {
                    // The server's recipient limit: the rest go to the next transaction.
                    let reply = carried.compactMap { $0 }.last
                    for j in next..<recipients.count where results[j] == nil && !sent[j] { carried[j] = reply }
                } else {
                    sent[next] = true
                    state = .awaitingEnvelope([.rcpt(next)])
                    return [.send(Array("RCPT TO:<\(recipients[next].address)>\r\n".utf8))]
                }
            }
        }
        guard accepted.contains(true) else { return finish(reusable: true) }
        if usedChunking { return nextChunk(from: 0) }
        state = .awaitingEnvelope([.data])
        return [.send(Array("DATA\r\n".utf8))]
    }

    private mutating func nextChunk(from offset: Int) -> [Action] {
        let length = min(chunkSize, max(0, traits.size - offset))
        let last = offset + length >= traits.size
        state = .awaitingChunkReply(end: offset + length, last: last)
        return [.sendChunk(commands: [], offset: offset, length: length, last: last)]
    }

    private mutating func resolveAll(_ status: OutcomeStatus, _ reply: DeliveryStatus) {
        for i in recipients.indices where results[i] == nil {
            results[i] = SMTPClientTransaction.outcome(recipients[i].id, status, reply)
        }
    }

    private mutating func resolveUnfinished(from reply: SMTPReply, as status: OutcomeStatus) {
        for i in recipients.indices where results[i] == nil {
            results[i] = outcome(i, status, reply)
        }
    }

    private mutating func resolveAccepted(from reply: SMTPReply, as status: OutcomeStatus) {
        for i in recipients.indices where accepted[i] && results[i] == nil {
            results[i] = outcome(i, status, reply)
        }
    }

    private func outcome(_ index: Int, _ status: OutcomeStatus, _ reply: SMTPReply) -> RecipientOutcome {
        SMTPClientTransaction.outcome(recipients[index].id, status, DeliveryStatus(reply: reply))
    }

    /// RFC 5321 §4.5.3.1.10: 452 (and the older 552 with 5.5.3) to RCPT means too many recipients.
    static func isTooManyRecipients(_ reply: SMTPReply) -> Bool {
        reply.code == 452 || (reply.code == 552 && reply.enhanced == "5.5.3")
    }

    static func outcome(_ id: Int64, _ status: OutcomeStatus, _ reply: DeliveryStatus) -> RecipientOutcome {
        RecipientOutcome(recipientID: id, status: status, reply: reply)
    }

    static func summary(_ reply: SMTPReply) -> String {
        var s = String(reply.code)
        if let e = reply.enhanced { s += " " + e }
        let text = reply.lines.joined(separator: " ")
        if !text.isEmpty { s += " " + text }
        return s
    }

    /// Whether `text` can go inside a command line: no control characters, no angle brackets.
    package static func isSafeArgument(_ text: String, allowEmpty: Bool) -> Bool {
        if text.isEmpty { return allowEmpty }
        return !text.utf8.contains { $0 < 0x21 || $0 == 0x7F || $0 == 0x3C || $0 == 0x3E }
    }
}

