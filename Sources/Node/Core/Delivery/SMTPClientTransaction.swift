import Foundation
import HatoIO
import SMTPCore

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

    /// The RFC 2034/3463 enhanced status code at the start of `text`, if its class matches the
    /// reply code's class (RFC 3463 §2: the two must agree), as the server wrote it.
    static func enhancedCode(in text: String, code: Int) -> String? {
        let token = String(text.prefix { $0 != " " })
        guard let enhanced = EnhancedStatusCode(token), enhanced.statusClass.rawValue == ReplyCode(code).replyClass?.rawValue else { return nil }
        return token
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
    /// CHUNKING, the BDAT command (RFC 3030).
    public var chunking = false

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
            case "CHUNKING": chunking = true
            default: break
            }
        }
    }
}

// MARK: - Waits and failures

/// Which RFC 5321 §4.5.3.2 timeout applies while waiting for the next reply.
public enum SMTPClientWait: Sendable, Equatable {
    /// The 220 greeting (§4.5.3.2.1).
    case greeting
    /// The reply to EHLO or HELO.
    case ehlo
    /// The reply to STARTTLS (RFC 3207).
    case startTLS
    /// The reply to MAIL (§4.5.3.2.2).
    case mail
    /// The reply to RCPT (§4.5.3.2.3).
    case rcpt
    /// The 354 reply to DATA (§4.5.3.2.4).
    case dataInitiation
    /// The reply after the terminating CRLF.CRLF or to a BDAT chunk (§4.5.3.2.6).
    case dataTermination
    /// The reply to RSET.
    case reset
    /// The reply to QUIT.
    case quit
}

/// Why a session ended without a server reply.
public enum SMTPSessionFailure: Sendable, Equatable {
    /// No reply (or write progress) within the applicable timeout.
    case timeout(String)
    /// The connection was closed or reset.
    case connectionClosed(String)
    /// The server broke the reply syntax or limits.
    case protocolError(String)

    /// The deferral code, enhanced code and text for recipients caught by this failure.
    var deferral: (code: Int, enhanced: String, text: String) {
        switch self {
        case .timeout(let what): return (451, "4.4.2", "timeout: \(what)")
        case .connectionClosed(let what): return (451, "4.4.2", "connection lost: \(what)")
        case .protocolError(let what): return (451, "4.5.0", "SMTP protocol error: \(what)")
        }
    }
}

/// Outbound STARTTLS policy (RFC 3207, RFC 7435 opportunistic security).
public enum SMTPTLSPolicy: String, Sendable, Equatable, CaseIterable {
    /// Never send STARTTLS.
    case disabled
    /// Use STARTTLS when offered; without it, or after a handshake failure, deliver in plaintext.
    case opportunistic
    /// Deliver only over TLS: a server without STARTTLS, or a failed handshake, defers the message.
    case required
}

// MARK: - Session set-up

/// The connection set-up of an SMTP client session as a pure state machine: 220 greeting →
/// EHLO (HELO only after a 500 or 502 to EHLO, never after 421) → STARTTLS when the policy and
/// the server allow it → EHLO again over TLS → ready for transactions (RFC 5321 §3.1, §4.1.1.1,
/// RFC 3207).
///
/// Every failure here is temporary for the message and means "try the next MX": a non-2xx
/// greeting, a rejected EHLO/HELO, a timeout, TLS required but unavailable, or a failed TLS
/// handshake (`Failure.tlsHandshakeFailed`: an opportunistic client may retry that MX in
/// plaintext). A 421 closes without QUIT; other rejections send QUIT first.
public struct SMTPClientHandshake: Sendable {
    /// The machine's position.
    public enum State: Sendable, Equatable {
        /// Connected; waiting for the 220 greeting.
        case awaitingGreeting
        /// EHLO sent (`secured`: over TLS).
        case awaitingEHLO(secured: Bool)
        /// HELO sent after EHLO was refused with 500/502.
        case awaitingHELO
        /// STARTTLS sent.
        case awaitingSTARTTLS
        /// The 220 to STARTTLS arrived; the driver runs the TLS handshake.
        case negotiatingTLS
        /// The session failed; QUIT sent, waiting for its reply.
        case awaitingQUIT
        /// Ready for mail transactions.
        case ready
        /// The session failed (see `failure`); close the connection.
        case failed
    }

    /// What the driver must do next.
    public enum Action: Sendable, Equatable {
        /// Write this command line.
        case send([UInt8])
        /// Run the TLS client handshake, then call `tlsEstablished()` or `tlsFailed(_:)`. Bytes the
        /// server sent after its 220 are a protocol error: call `fail(.protocolError(…))` instead.
        case startTLS
        /// The session is ready (see `capabilities`, `secured`).
        case ready
        /// Close the connection.
        case close
    }

    /// Why the session could not be set up: the deferral every recipient gets if no other MX works.
    public struct Failure: Sendable, Equatable {
        /// A 4xx code: the server's 4xx reply, or 451.
        public var code: Int
        /// A `4.x.x` enhanced status code.
        public var enhanced: String
        /// What happened, for the recipients' outcome text.
        public var text: String
        /// The TLS handshake itself failed (an opportunistic client may retry this MX in plaintext).
        public var tlsHandshakeFailed: Bool
    }

    /// The EHLO/HELO name.
    public let heloName: String
    /// The STARTTLS policy.
    public let tlsPolicy: SMTPTLSPolicy
    /// Whether the driver can run a TLS handshake at all.
    public let tlsAvailable: Bool
    /// The current state.
    public private(set) var state: State = .awaitingGreeting
    /// What the server advertised (after the last successful EHLO/HELO).
    public private(set) var capabilities: RemoteSMTPCapabilities? = nil
    /// Whether STARTTLS succeeded.
    public private(set) var secured = false
    /// Set when the state is `.failed` or `.awaitingQUIT`.
    public private(set) var failure: Failure? = nil
    /// The server's greeting.
    public private(set) var greeting: SMTPReply? = nil

    /// - Parameters:
    ///   - heloName: the EHLO/HELO argument (a host name or address literal).
    ///   - tlsPolicy: whether to use STARTTLS.
    ///   - tlsAvailable: whether the driver has a TLS client (false: behave as `.disabled`,
    ///     and `.required` fails).
    public init(heloName: String, tlsPolicy: SMTPTLSPolicy = .opportunistic, tlsAvailable: Bool = false) {
        self.heloName = heloName
        self.tlsPolicy = tlsPolicy
        self.tlsAvailable = tlsAvailable
        if !SMTPClientTransaction.isSafeArgument(heloName, allowEmpty: false) {
            failure = Failure(code: 451, enhanced: "4.3.5", text: "invalid HELO name configured", tlsHandshakeFailed: false)
            state = .failed
        }
    }

    /// Whether the session is ready for transactions.
    public var isReady: Bool { state == .ready }

    /// Which timeout applies to the next read, or nil when no reply is awaited.
    public var waitingFor: SMTPClientWait? {
        switch state {
        case .awaitingGreeting: return .greeting
        case .awaitingEHLO, .awaitingHELO: return .ehlo
        case .awaitingSTARTTLS: return .startTLS
        case .awaitingQUIT: return .quit
        case .negotiatingTLS, .ready, .failed: return nil
        }
    }

    /// Feeds one complete server reply.
    /// - Returns: what to do next, in order.
    public mutating func receive(_ reply: SMTPReply) -> [Action] {
        switch state {
        case .ready, .failed, .negotiatingTLS:
            return []
        case .awaitingQUIT:
            state = .failed
            return [.close]
        case .awaitingGreeting:
            greeting = reply
            guard reply.replyCode.isPositiveCompletion else { return reject(reply, stage: "greeting") }
            state = .awaitingEHLO(secured: false)
            return [.send(Array("EHLO \(heloName)\r\n".utf8))]
        case .awaitingEHLO(let isSecured):
            if reply.replyCode.isPositiveCompletion {
                capabilities = RemoteSMTPCapabilities(ehloReply: reply)
                return afterCapabilities()
            }
            if !isSecured && (reply.code == 500 || reply.code == 502) {
                state = .awaitingHELO
                return [.send(Array("HELO \(heloName)\r\n".utf8))]
            }
            return reject(reply, stage: "EHLO")
        case .awaitingHELO:
            guard reply.replyCode.isPositiveCompletion else { return reject(reply, stage: "HELO") }
            capabilities = RemoteSMTPCapabilities()
            return afterCapabilities()
        case .awaitingSTARTTLS:
            if reply.code == 220 {
                state = .negotiatingTLS
                return [.startTLS]
            }
            if reply.code == 421 || tlsPolicy == .required {
                return reject(reply, stage: "STARTTLS", enhanced: tlsPolicy == .required ? "4.7.4" : nil)
            }
            // Opportunistic: the session stays usable in plaintext (RFC 3207 §4).
            state = .ready
            return [.ready]
        }
    }

    /// Reports that the TLS handshake succeeded: EHLO is sent again (RFC 3207 §4.2).
    public mutating func tlsEstablished() -> [Action] {
        guard state == .negotiatingTLS else { return [] }
        secured = true
        capabilities = nil
        state = .awaitingEHLO(secured: true)
        return [.send(Array("EHLO \(heloName)\r\n".utf8))]
    }

    /// Reports that the TLS handshake failed; the connection is unusable.
    public mutating func tlsFailed(_ reason: String) -> [Action] {
        guard state == .negotiatingTLS else { return [] }
        failure = Failure(code: 451, enhanced: "4.7.5", text: "TLS handshake failed: \(reason)", tlsHandshakeFailed: true)
        state = .failed
        return [.close]
    }

    /// Reports that no reply will come (timeout, closed connection, protocol error).
    /// - Returns: `[.close]`.
    public mutating func fail(_ sessionFailure: SMTPSessionFailure) -> [Action] {
        if state == .awaitingQUIT || state == .failed {
            state = .failed
            return [.close]
        }
        let d = sessionFailure.deferral
        failure = Failure(code: d.code, enhanced: d.enhanced, text: d.text, tlsHandshakeFailed: false)
        state = .failed
        return [.close]
    }

    private mutating func afterCapabilities() -> [Action] {
        let caps = capabilities ?? RemoteSMTPCapabilities()
        if !secured && tlsPolicy != .disabled && tlsAvailable && caps.startTLS {
            state = .awaitingSTARTTLS
            return [.send(Array("STARTTLS\r\n".utf8))]
        }
        if !secured && tlsPolicy == .required {
            let why = !tlsAvailable ? "this node has no TLS client" : "the server does not offer STARTTLS"
            failure = Failure(code: 451, enhanced: "4.7.4", text: "TLS is required but \(why)", tlsHandshakeFailed: false)
            state = .awaitingQUIT
            return [.send(Array("QUIT\r\n".utf8))]
        }
        state = .ready
        return [.ready]
    }

    /// A non-2xx reply during set-up: QUIT (or close after 421), deferral, next MX.
    private mutating func reject(_ reply: SMTPReply, stage: String, enhanced override: String? = nil) -> [Action] {
        // Set-up refusals defer: a 4yz keeps its code and enhanced status, anything else is 451 4.4.0.
        let code = ReplyCode(reply.code).isTransient ? reply.code : 451
        let enhanced = override ?? EnhancedStatusCode.status(reply.enhanced, ofClass: .persistentTransientFailure,
                                                             orElse: EnhancedStatusCode(.persistentTransientFailure, 4, 0))
        failure = Failure(code: code, enhanced: enhanced, text: "\(stage) rejected: \(SMTPClientTransaction.summary(reply))",
                          tlsHandshakeFailed: false)
        if reply.code == 421 {
            state = .failed
            return [.close]
        }
        state = .awaitingQUIT
        return [.send(Array("QUIT\r\n".utf8))]
    }
}

// MARK: - Mail transaction

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
/// go in one write.
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
        /// Write `BDAT <length>[ LAST]` and then octets `offset..<offset+length` of the message as they are.
        case sendChunk(offset: Int, length: Int, last: Bool)
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
    /// Replies received so far. Zero after a failure means the server answered nothing: no
    /// content was sent, so the message was certainly not taken (safe to retry elsewhere).
    public private(set) var repliesReceived = 0
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

    /// Longest outcome text kept, in characters.
    public static let maxTextLength = 512

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
            resolveAll(.failed, 553, "5.1.7", "invalid sender address syntax")
        }
        for (i, r) in recipients.enumerated() where results[i] == nil {
            if !SMTPClientTransaction.isSafeArgument(r.address, allowEmpty: false) {
                results[i] = SMTPClientTransaction.outcome(r.id, .failed, 553, "5.1.3", "invalid recipient address syntax")
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

    /// Which timeout applies to the next read, or nil when no reply is awaited.
    public var waitingFor: SMTPClientWait? {
        switch state {
        case .notStarted, .finished: return nil
        case .awaitingEnvelope(let steps):
            switch steps.first {
            case .mail: return .mail
            case .rcpt: return .rcpt
            case .data: return .dataInitiation
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
            return SMTPClientTransaction.outcome(recipients[i].id, .deferred, 451, "4.4.2", "delivery did not complete")
        }
    }

    /// Begins the transaction.
    /// - Returns: the first commands, or `.finished` when nothing can be sent (every recipient
    ///   already failed, e.g. SMTPUTF8 needed but not offered).
    public mutating func start() -> [Action] {
        guard state == .notStarted else { return [] }
        let caps = capabilities
        if let limit = caps.size, limit > 0, traits.size > limit {
            resolveAll(.failed, 552, "5.3.4", "message size \(traits.size) exceeds the server's limit of \(limit) octets")
            return finish(reusable: true)
        }
        let senderNonASCII = reversePath.utf8.contains { $0 >= 0x80 }
        if !caps.smtpUTF8 && (senderNonASCII || traits.needsSMTPUTF8) {
            let what = senderNonASCII ? "a non-ASCII sender address" : "UTF-8 header fields"
            resolveAll(.failed, 553, "5.6.7", "the server does not support SMTPUTF8 (RFC 6531), needed for \(what)")
            return finish(reusable: true)
        }
        var needUTF8 = senderNonASCII || traits.needsSMTPUTF8
        for (i, r) in recipients.enumerated() where results[i] == nil && r.address.utf8.contains(where: { $0 >= 0x80 }) {
            if caps.smtpUTF8 {
                needUTF8 = true
            } else {
                results[i] = SMTPClientTransaction.outcome(r.id, .failed, 553, "5.6.7", "the server does not support SMTPUTF8 (RFC 6531), needed for a non-ASCII recipient address")
            }
        }
        if traits.has8Bit && !caps.eightBitMIME && !needUTF8 {
            resolveAll(.failed, 554, "5.6.3", "8-bit content and the server does not offer 8BITMIME")
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
            results[i] = SMTPClientTransaction.outcome(recipients[i].id, .deferred, d.code, d.enhanced, d.text)
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
        return [.sendChunk(offset: offset, length: length, last: last)]
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

    /// RFC 5321 §4.5.3.1.10: 452 (and the older 552 with 5.5.3) to RCPT means too many recipients.
    static func isTooManyRecipients(_ reply: SMTPReply) -> Bool {
        reply.code == 452 || (reply.code == 552 && reply.enhanced == "5.5.3")
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
