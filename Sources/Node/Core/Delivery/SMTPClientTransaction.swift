import Foundation
import HatoShared

// MARK: - Reply parsing

/// Assembles SMTP replies from the lines a server sends (RFC 5321 §4.2, §4.2.1).
///
/// Accepts `250-…` continuation lines and a final `250 …` (or a bare `250`) line,
/// CRLF or LF-only line ends, and an RFC 2034 enhanced status code (`x.y.z`, class
/// equal to the reply's first digit) at the start of the text, which is removed from
/// every line that carries it. A malformed line, mixed codes within one reply, or a
/// reply longer than `maxLines` lines or `maxBytes` octets is a protocol error.
/// Never traps on any input.
public struct SMTPClientReplyParser: Sendable {
    /// The most lines one reply may have.
    public static let maxLines = 100
    /// The most octets one reply may have, line ends included (64 KiB).
    public static let maxBytes = 64 * 1024

    /// What feeding one line produced.
    public enum Step: Sendable, Equatable {
        /// The reply continues on further lines.
        case needMore
        /// A complete reply.
        case reply(SMTPReply)
        /// The input is not a valid SMTP reply; the session must be abandoned.
        case error(String)
    }

    private var code: Int? = nil
    private var texts: [String] = []
    private var byteCount = 0

    /// An empty parser, ready for the first line of a reply.
    public init() {}

    /// Whether part of a multiline reply has been read.
    public var isMidReply: Bool { code != nil }

    /// Feeds one received line (with or without its CRLF/LF).
    public mutating func feed<C: Collection>(_ line: C) -> Step where C.Element == UInt8 {
        byteCount += line.count
        guard byteCount <= SMTPClientReplyParser.maxBytes else {
            self = SMTPClientReplyParser()
            return .error("reply longer than \(SMTPClientReplyParser.maxBytes) octets")
        }
        guard texts.count < SMTPClientReplyParser.maxLines else {
            self = SMTPClientReplyParser()
            return .error("reply longer than \(SMTPClientReplyParser.maxLines) lines")
        }
        var content = Array(line)
        if content.last == 0x0A { content.removeLast() }
        if content.last == 0x0D { content.removeLast() }
        guard content.count >= 3,
              (0x32...0x35).contains(content[0]),
              (0x30...0x39).contains(content[1]),
              (0x30...0x39).contains(content[2]) else {
            self = SMTPClientReplyParser()
            return .error("malformed reply line: \(SMTPClientReplyParser.printable(content.prefix(60)))")
        }
        let lineCode = Int(content[0] - 0x30) * 100 + Int(content[1] - 0x30) * 10 + Int(content[2] - 0x30)
        let isLast: Bool
        if content.count == 3 {
            isLast = true
        } else if content[3] == 0x20 {
            isLast = true
        } else if content[3] == 0x2D {
            isLast = false
        } else {
            self = SMTPClientReplyParser()
            return .error("malformed reply line: \(SMTPClientReplyParser.printable(content.prefix(60)))")
        }
        if let code, code != lineCode {
            self = SMTPClientReplyParser()
            return .error("reply code changed from \(code) to \(lineCode) within a multiline reply")
        }
        code = lineCode
        texts.append(content.count > 4 ? SMTPClientReplyParser.printable(content[4...]) : "")
        guard isLast else { return .needMore }
        let reply = SMTPClientReplyParser.makeReply(code: lineCode, texts: texts)
        self = SMTPClientReplyParser()
        return .reply(reply)
    }

    /// Parses a complete byte string holding zero or more replies (for tests and tools).
    /// - Returns: the replies, or the first protocol error; a trailing incomplete reply is an error.
    public static func parseAll(_ bytes: [UInt8]) -> Result<[SMTPReply], SMTPProtocolError> {
        var parser = SMTPClientReplyParser()
        var replies: [SMTPReply] = []
        var start = 0
        while start < bytes.count {
            let end = bytes[start...].firstIndex(of: 0x0A).map { $0 + 1 } ?? bytes.count
            switch parser.feed(bytes[start..<end]) {
            case .needMore: break
            case .reply(let r): replies.append(r)
            case .error(let e): return .failure(SMTPProtocolError(e))
            }
            start = end
        }
        if parser.isMidReply { return .failure(SMTPProtocolError("incomplete multiline reply")) }
        return .success(replies)
    }

    private static func makeReply(code: Int, texts: [String]) -> SMTPReply {
        guard let first = texts.first, let enhanced = enhancedCode(in: first, code: code) else {
            return SMTPReply(code: code, enhanced: nil, lines: texts)
        }
        let lines = texts.map { text -> String in
            guard text.hasPrefix(enhanced) else { return text }
            let rest = text.dropFirst(enhanced.count)
            if rest.isEmpty { return "" }
            if rest.first == " " { return String(rest.dropFirst()) }
            return text
        }
        return SMTPReply(code: code, enhanced: enhanced, lines: lines)
    }

    /// The RFC 2034/3463 enhanced status code at the start of `text`, if its class matches `code`.
    static func enhancedCode(in text: String, code: Int) -> String? {
        let token = text.prefix { $0 != " " }
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3,
              parts[0].count == 1, let cls = Int(parts[0]), cls == code / 100, [2, 4, 5].contains(cls),
              (1...3).contains(parts[1].count), parts[1].allSatisfy({ $0.isASCII && $0.isNumber }),
              (1...3).contains(parts[2].count), parts[2].allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
        return String(token)
    }

    /// Decodes bytes as UTF-8 (invalid sequences replaced) with control characters turned into spaces.
    static func printable<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
        String(decoding: bytes.map { $0 < 0x20 || $0 == 0x7F ? 0x20 : $0 }, as: UTF8.self)
    }
}

/// A violation of the SMTP reply syntax or limits by the remote server.
public struct SMTPProtocolError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What was wrong.
    public let message: String
    /// An error with its explanation.
    public init(_ message: String) { self.message = message }
    /// The explanation.
    public var description: String { message }
}

// MARK: - Capabilities

/// The service extensions a server advertised in its EHLO reply (RFC 5321 §4.1.1.1).
public struct RemoteSMTPCapabilities: Sendable, Equatable {
    /// PIPELINING (RFC 2920).
    public var pipelining = false
    /// 8BITMIME (RFC 6152).
    public var eightBitMIME = false
    /// SIZE (RFC 1870): nil when not advertised; 0 when advertised without a fixed limit;
    /// otherwise the largest message in octets.
    public var size: Int? = nil
    /// ENHANCEDSTATUSCODES (RFC 2034).
    public var enhancedStatusCodes = false
    /// STARTTLS (RFC 3207).
    public var startTLS = false
    /// SMTPUTF8 (RFC 6531).
    public var smtpUTF8 = false

    /// No extensions (what a HELO session has).
    public init() {}

    /// Reads the keywords from the second and later lines of a 250 EHLO reply.
    public init(ehloReply: SMTPReply) {
        for line in ehloReply.lines.dropFirst() {
            let words = line.split(separator: " ", omittingEmptySubsequences: true)
            guard let keyword = words.first?.uppercased() else { continue }
            switch keyword {
            case "PIPELINING": pipelining = true
            case "8BITMIME": eightBitMIME = true
            case "SIZE": size = words.count > 1 ? (Int(words[1]).map { max(0, $0) } ?? 0) : 0
            case "ENHANCEDSTATUSCODES": enhancedStatusCodes = true
            case "STARTTLS": startTLS = true
            case "SMTPUTF8": smtpUTF8 = true
            default: break
            }
        }
    }
}

// MARK: - Transaction state machine

/// What the driver must do next for an `SMTPClientTransaction`.
public enum SMTPClientAction: Sendable, Equatable {
    /// Write these bytes (one or more CRLF-terminated commands, in one write).
    case send([UInt8])
    /// Write the message body, dot-stuffed and terminated by CRLF.CRLF (RFC 5321 §4.5.2),
    /// see `SMTPDotStuffing`.
    case sendBody
    /// Close the connection: the transaction is finished.
    case close
}

/// Which RFC 5321 §4.5.3.2 timeout applies while waiting for the next reply.
public enum SMTPClientWait: Sendable, Equatable {
    /// The 220 greeting (§4.5.3.2.1, uses the command timeout).
    case greeting
    /// A reply to EHLO/HELO, MAIL, RCPT or QUIT (§4.5.3.2.2, §4.5.3.2.3).
    case command
    /// The reply to DATA (§4.5.3.2.4).
    case dataInitiation
    /// The reply after the terminating CRLF.CRLF (§4.5.3.2.6).
    case dataTermination
}

/// Why a session ended without a server reply.
public enum SMTPSessionFailure: Sendable, Equatable {
    /// No reply (or write progress) within the applicable timeout.
    case timeout(String)
    /// The connection was closed or reset.
    case connectionClosed(String)
    /// The server broke the reply syntax or limits.
    case protocolError(String)
}

/// The client side of one SMTP mail transaction over one connection, as a pure state
/// machine: one message, one reverse path, several recipients (RFC 5321 §3.3, §4.1.1).
///
/// Flow: 220 greeting → EHLO (HELO only after 500/501/502/550 to EHLO, never after 421)
/// → MAIL FROM (with ` SIZE=n` if SIZE is offered, ` BODY=8BITMIME` if 8BITMIME is offered
/// and the body has 8-bit octets, ` SMTPUTF8` if an address is non-ASCII and SMTPUTF8 is
/// offered) → RCPT TO for each recipient → DATA → 354 → body → final reply → QUIT.
/// With PIPELINING (RFC 2920) MAIL, all RCPTs and DATA go out in one write and the replies
/// are consumed in order.
///
/// Per recipient: RCPT 2xx → pending until the final reply (2xx delivered, 4xx deferred,
/// 5xx failed); RCPT 4xx → deferred; RCPT 5xx → failed. 421 anywhere → every unfinished
/// recipient deferred and the connection closed. No accepted recipient → no DATA (QUIT).
/// Failures before MAIL FROM (greeting, EHLO/HELO, timeouts there) defer everything and
/// set `shouldTryNextTarget`.
public struct SMTPClientTransaction: Sendable {
    /// Which step's reply is awaited inside the envelope phase.
    public enum EnvelopeStep: Sendable, Equatable {
        /// The reply to MAIL FROM.
        case mail
        /// The reply to RCPT TO for the recipient at this index.
        case rcpt(Int)
        /// The reply to DATA (354 expected).
        case data
    }

    /// The machine's position.
    public enum State: Sendable, Equatable {
        /// Connected; waiting for the 220 greeting.
        case awaitingGreeting
        /// EHLO sent.
        case awaitingEHLO
        /// HELO sent after EHLO was refused.
        case awaitingHELO
        /// MAIL/RCPT/DATA replies outstanding, in order (more than one when pipelining).
        case awaitingEnvelope([EnvelopeStep])
        /// The body (or, when nothing was accepted, an empty body) was sent; waiting for the final reply.
        case awaitingFinalReply(bodySent: Bool)
        /// QUIT sent.
        case awaitingQUIT
        /// Done; close the connection.
        case finished
    }

    /// The EHLO/HELO name.
    public let heloName: String
    /// The reverse path without angle brackets (`""` for the null reverse path).
    public let reversePath: String
    /// The recipients, in RCPT order.
    public let recipients: [DeliveryRecipient]
    /// The body size in octets (for SIZE=, RFC 1870).
    public let bodySize: Int
    /// Whether the body has octets ≥ 0x80 (for BODY=8BITMIME, RFC 6152).
    public let bodyHas8Bit: Bool

    /// The current state.
    public private(set) var state: State = .awaitingGreeting
    /// What the server advertised (nil until EHLO/HELO succeeded; empty after HELO).
    public private(set) var capabilities: RemoteSMTPCapabilities? = nil
    /// Whether the envelope was pipelined.
    public private(set) var pipelined = false
    /// True when the session failed before MAIL FROM: the driver should try the next target.
    public private(set) var shouldTryNextTarget = false
    /// The last reply received (for logs).
    public private(set) var lastReply: SMTPReply? = nil

    private var results: [RecipientOutcome?]
    private var accepted: [Bool]
    private var mailAccepted: Bool? = nil
    private var useSMTPUTF8 = false

    /// Longest outcome text kept, in characters.
    public static let maxTextLength = 512

    /// - Parameters:
    ///   - heloName: the EHLO/HELO argument (a host name or address literal).
    ///   - reversePath: the reverse path without brackets; `""` for the null path (RFC 5321 §4.5.5).
    ///   - recipients: the forward paths, each with its id.
    ///   - bodySize: the body size in octets.
    ///   - bodyHas8Bit: whether the body contains octets ≥ 0x80.
    public init(heloName: String, reversePath: String, recipients: [DeliveryRecipient], bodySize: Int, bodyHas8Bit: Bool) {
        self.heloName = heloName
        self.reversePath = reversePath
        self.recipients = recipients
        self.bodySize = bodySize
        self.bodyHas8Bit = bodyHas8Bit
        results = Array(repeating: nil, count: recipients.count)
        accepted = Array(repeating: false, count: recipients.count)
        // Addresses that could break the command line are never sent (no command injection).
        if !SMTPClientTransaction.isSafeArgument(heloName, allowEmpty: false) {
            resolveAll(.deferred, 451, "4.3.5", "invalid HELO name configured")
        } else if !SMTPClientTransaction.isSafeArgument(reversePath, allowEmpty: true) {
            resolveAll(.failed, 553, "5.1.7", "invalid sender address syntax")
        }
        for (i, r) in recipients.enumerated() where results[i] == nil {
            if !SMTPClientTransaction.isSafeArgument(r.address, allowEmpty: false) {
                results[i] = SMTPClientTransaction.outcome(r.id, .failed, 553, "5.1.3", "invalid recipient address syntax")
            }
        }
        if results.allSatisfy({ $0 != nil }) { state = .finished }
    }

    /// Whether a connection is needed at all (false when every recipient already has an outcome,
    /// e.g. all addresses were invalid).
    public var needsConnection: Bool { state != .finished }

    /// Whether the transaction is over.
    public var isFinished: Bool { state == .finished }

    /// Which timeout applies to the next read, or nil when no reply is awaited.
    public var waitingFor: SMTPClientWait? {
        switch state {
        case .awaitingGreeting: return .greeting
        case .awaitingEHLO, .awaitingHELO, .awaitingQUIT: return .command
        case .awaitingEnvelope(let steps): return steps.first == .data ? .dataInitiation : .command
        case .awaitingFinalReply: return .dataTermination
        case .finished: return nil
        }
    }

    /// One outcome per recipient, in input order. Recipients without a result yet are
    /// reported deferred (only possible before the machine finished).
    public var outcomes: [RecipientOutcome] {
        results.enumerated().map { i, r in
            r ?? SMTPClientTransaction.outcome(recipients[i].id, .deferred, 451, "4.4.2", "delivery did not complete")
        }
    }

    /// Feeds one complete server reply.
    /// - Returns: what to do next, in order.
    public mutating func receive(_ reply: SMTPReply) -> [SMTPClientAction] {
        lastReply = reply
        switch state {
        case .finished:
            return []
        case .awaitingQUIT:
            state = .finished
            return [.close]
        case .awaitingGreeting:
            guard reply.code / 100 == 2 else { return rejectSession(reply, stage: "greeting") }
            state = .awaitingEHLO
            return [.send(Array("EHLO \(heloName)\r\n".utf8))]
        case .awaitingEHLO:
            if reply.code / 100 == 2 {
                capabilities = RemoteSMTPCapabilities(ehloReply: reply)
                return beginEnvelope()
            }
            if [500, 501, 502, 550].contains(reply.code) {
                state = .awaitingHELO
                return [.send(Array("HELO \(heloName)\r\n".utf8))]
            }
            return rejectSession(reply, stage: "EHLO")
        case .awaitingHELO:
            guard reply.code / 100 == 2 else { return rejectSession(reply, stage: "HELO") }
            capabilities = RemoteSMTPCapabilities()
            return beginEnvelope()
        case .awaitingEnvelope(var steps):
            guard !steps.isEmpty else { return fail(.protocolError("unexpected reply")) }
            let step = steps.removeFirst()
            if reply.code == 421 {
                resolveUnfinished(from: reply, as: .deferred)
                state = .finished
                return [.close]
            }
            switch step {
            case .mail:
                if reply.code / 100 == 2 {
                    mailAccepted = true
                } else {
                    mailAccepted = false
                    resolveUnfinished(from: reply, as: reply.code / 100 == 5 ? .failed : .deferred)
                }
            case .rcpt(let i):
                if mailAccepted == true, i < recipients.count, results[i] == nil {
                    switch reply.code / 100 {
                    case 2: accepted[i] = true
                    case 5: results[i] = outcome(i, .failed, reply)
                    default: results[i] = outcome(i, .deferred, reply)
                    }
                }
            case .data:
                let anyAccepted = mailAccepted == true && accepted.contains(true)
                if reply.code / 100 == 3 {
                    state = .awaitingFinalReply(bodySent: anyAccepted)
                    // RFC 2920 §3.1: a 354 after no accepted recipient still needs an (empty) body.
                    return anyAccepted ? [.sendBody] : [.send(Array(".\r\n".utf8))]
                }
                if anyAccepted { resolveAccepted(from: reply, as: reply.code / 100 == 5 ? .failed : .deferred) }
                return quit()
            }
            if !steps.isEmpty {
                state = .awaitingEnvelope(steps)
                return []
            }
            // Not pipelined (or the pipelined batch ended early): choose the next command.
            return nextEnvelopeCommand(after: step)
        case .awaitingFinalReply(let bodySent):
            if bodySent {
                switch reply.code / 100 {
                case 2: resolveAccepted(from: reply, as: .delivered)
                case 5: resolveAccepted(from: reply, as: .failed)
                default: resolveAccepted(from: reply, as: .deferred)
                }
            }
            if reply.code == 421 {
                state = .finished
                return [.close]
            }
            return quit()
        }
    }

    /// Reports that no reply will come: a timeout, a closed connection or a protocol error.
    /// Every unfinished recipient is deferred (4.4.2 for timeouts and closes, 4.5.0 for protocol errors).
    /// - Returns: `[.close]`.
    public mutating func fail(_ failure: SMTPSessionFailure) -> [SMTPClientAction] {
        switch state {
        case .finished, .awaitingQUIT:
            state = .finished
            return [.close]
        case .awaitingGreeting, .awaitingEHLO, .awaitingHELO:
            shouldTryNextTarget = true
        default:
            break
        }
        let (enhanced, text): (String, String)
        switch failure {
        case .timeout(let what): (enhanced, text) = ("4.4.2", "timeout: \(what)")
        case .connectionClosed(let what): (enhanced, text) = ("4.4.2", "connection lost: \(what)")
        case .protocolError(let what): (enhanced, text) = ("4.5.0", "SMTP protocol error: \(what)")
        }
        for i in recipients.indices where results[i] == nil {
            results[i] = SMTPClientTransaction.outcome(recipients[i].id, .deferred, 451, enhanced, text)
        }
        state = .finished
        return [.close]
    }

    // MARK: Private steps

    private mutating func beginEnvelope() -> [SMTPClientAction] {
        let caps = capabilities ?? RemoteSMTPCapabilities()
        if let limit = caps.size, limit > 0, bodySize > limit {
            resolveAll(.failed, 552, "5.3.4", "message size \(bodySize) exceeds the server's limit of \(limit) octets")
            return quit()
        }
        let senderNonASCII = reversePath.utf8.contains { $0 >= 0x80 }
        if senderNonASCII && !caps.smtpUTF8 {
            resolveAll(.failed, 553, "5.6.7", "server does not support SMTPUTF8 for a non-ASCII sender address")
            return quit()
        }
        var anyNonASCII = senderNonASCII
        for (i, r) in recipients.enumerated() where results[i] == nil && r.address.utf8.contains(where: { $0 >= 0x80 }) {
            if caps.smtpUTF8 {
                anyNonASCII = true
            } else {
                results[i] = SMTPClientTransaction.outcome(r.id, .failed, 553, "5.6.7", "server does not support SMTPUTF8 for a non-ASCII recipient address")
            }
        }
        useSMTPUTF8 = anyNonASCII
        guard results.contains(where: { $0 == nil }) else { return quit() }

        var mail = "MAIL FROM:<\(reversePath)>"
        if caps.size != nil { mail += " SIZE=\(bodySize)" }
        if caps.eightBitMIME && bodyHas8Bit { mail += " BODY=8BITMIME" }
        if useSMTPUTF8 { mail += " SMTPUTF8" }
        mail += "\r\n"
        if caps.pipelining {
            pipelined = true
            var batch = mail
            var steps: [EnvelopeStep] = [.mail]
            for i in recipients.indices where results[i] == nil {
                batch += "RCPT TO:<\(recipients[i].address)>\r\n"
                steps.append(.rcpt(i))
            }
            batch += "DATA\r\n"
            steps.append(.data)
            state = .awaitingEnvelope(steps)
            return [.send(Array(batch.utf8))]
        }
        state = .awaitingEnvelope([.mail])
        return [.send(Array(mail.utf8))]
    }

    private mutating func nextEnvelopeCommand(after step: EnvelopeStep) -> [SMTPClientAction] {
        guard mailAccepted == true else { return quit() }
        let from: Int
        switch step {
        case .mail: from = 0
        case .rcpt(let i): from = i + 1
        case .data: return quit()
        }
        if from < recipients.count, let next = (from..<recipients.count).first(where: { results[$0] == nil && !accepted[$0] }) {
            state = .awaitingEnvelope([.rcpt(next)])
            return [.send(Array("RCPT TO:<\(recipients[next].address)>\r\n".utf8))]
        }
        guard accepted.contains(true) else { return quit() }
        state = .awaitingEnvelope([.data])
        return [.send(Array("DATA\r\n".utf8))]
    }

    private mutating func quit() -> [SMTPClientAction] {
        state = .awaitingQUIT
        return [.send(Array("QUIT\r\n".utf8))]
    }

    /// A non-2xx greeting or EHLO/HELO reply: defer everything, try the next target.
    private mutating func rejectSession(_ reply: SMTPReply, stage: String) -> [SMTPClientAction] {
        shouldTryNextTarget = true
        let code = reply.code / 100 == 4 ? reply.code : 451
        let enhanced = reply.enhanced.flatMap { $0.hasPrefix("4.") ? $0 : nil } ?? "4.4.0"
        let text = "\(stage) rejected: \(SMTPClientTransaction.summary(reply))"
        for i in recipients.indices where results[i] == nil {
            results[i] = SMTPClientTransaction.outcome(recipients[i].id, .deferred, code, enhanced, text)
        }
        if reply.code == 421 {
            state = .finished
            return [.close]
        }
        return quit()
    }

    private mutating func resolveAll(_ status: OutcomeStatus, _ code: Int, _ enhanced: String, _ text: String) {
        for i in recipients.indices where results[i] == nil {
            results[i] = SMTPClientTransaction.outcome(recipients[i].id, status, code, enhanced, text)
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
        SMTPClientTransaction.outcome(recipients[index].id, status, reply.code, reply.enhanced, reply.lines.joined(separator: " "))
    }

    static func outcome(_ id: Int64, _ status: OutcomeStatus, _ code: Int, _ enhanced: String?, _ text: String) -> RecipientOutcome {
        RecipientOutcome(recipientID: id, status: status, code: code, enhanced: enhanced,
                         text: String(text.prefix(maxTextLength)))
    }

    static func summary(_ reply: SMTPReply) -> String {
        var s = String(reply.code)
        if let e = reply.enhanced { s += " " + e }
        let text = reply.lines.joined(separator: " ")
        if !text.isEmpty { s += " " + text }
        return s
    }

    /// Whether `text` can go inside a command line: no control characters, no angle brackets.
    static func isSafeArgument(_ text: String, allowEmpty: Bool) -> Bool {
        if text.isEmpty { return allowEmpty }
        return !text.utf8.contains { $0 < 0x21 || $0 == 0x7F || $0 == 0x3C || $0 == 0x3E }
    }
}

// MARK: - DATA transparency

/// The DATA body encoding of RFC 5321 §4.5.2 (transparency) and §4.1.1.4 (end of data).
public enum SMTPDotStuffing {
    /// Streams `body` as it goes on the wire after a 354: a `.` is prepended to every line
    /// that starts with `.`, bare LFs become CRLF, a final CRLF is added when the body does
    /// not end in one, and `.CRLF` ends the data. Lines are found with `firstIndex(of:)` and
    /// copied as slices; output is handed over in chunks of about `chunkSize` octets.
    /// - Parameters:
    ///   - body: the stored message (CRLF line ends).
    ///   - chunkSize: the preferred write size in octets.
    ///   - emit: called with each chunk, in order; the last chunk ends with the terminator.
    public static func encode(_ body: [UInt8], chunkSize: Int = 64 * 1024, emit: ([UInt8]) throws -> Void) rethrows {
        let limit = max(1, chunkSize)
        var out: [UInt8] = []
        out.reserveCapacity(min(body.count, limit) + 512)
        let n = body.count
        var i = 0
        while i < n {
            if body[i] == 0x2E { out.append(0x2E) }
            if let lf = body[i..<n].firstIndex(of: 0x0A) {
                if lf > i && body[lf - 1] == 0x0D {
                    out.append(contentsOf: body[i...lf])
                } else {
                    out.append(contentsOf: body[i..<lf])
                    out.append(0x0D); out.append(0x0A)
                }
                i = lf + 1
            } else {
                out.append(contentsOf: body[i..<n])
                out.append(0x0D); out.append(0x0A)
                i = n
            }
            if out.count >= limit {
                try emit(out)
                out.removeAll(keepingCapacity: true)
            }
        }
        out.append(contentsOf: [0x2E, 0x0D, 0x0A])
        try emit(out)
    }

    /// The whole encoded body in one array (see `encode(_:chunkSize:emit:)`).
    public static func encoded(_ body: [UInt8]) -> [UInt8] {
        var all: [UInt8] = []
        all.reserveCapacity(body.count + body.count / 64 + 8)
        encode(body) { all.append(contentsOf: $0) }
        return all
    }
}
