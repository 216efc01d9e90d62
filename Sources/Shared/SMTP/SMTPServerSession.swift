/// Limits and identity for an SMTP server session.
public struct SMTPServerPolicy: Sendable, Equatable {
    /// The name in the greeting, the EHLO reply and `Received:` (RFC 5321 §4.1.3, §4.3.1).
    public var hostname: String
    /// The largest accepted message in octets, advertised as `SIZE` (RFC 1870 §4).
    public var maxMessageSize: Int
    /// Recipients per transaction; more get `452 4.5.3` (RFC 5321 §4.5.3.1.8, at least 100 recommended).
    public var maxRecipients: Int
    /// Longest command line in octets including CRLF (RFC 5321 §4.5.3.1.4: 512).
    public var maxCommandLength: Int
    /// Longest text line in DATA in octets including CRLF (RFC 5321 §4.5.3.1.6: 1000).
    public var maxTextLineLength: Int
    /// `Received:` fields at which a message is treated as looping (RFC 5321 §6.3); 0 disables.
    public var maxReceivedHeaders: Int

    /// Creates a policy.
    /// - Parameters:
    ///   - hostname: this server's name.
    ///   - maxMessageSize: octets (default 10,240,000 like Postfix).
    ///   - maxRecipients: per transaction (default 1000).
    ///   - maxCommandLength: octets including CRLF (default 512).
    ///   - maxTextLineLength: octets including CRLF (default 1000).
    ///   - maxReceivedHeaders: hop limit (default 100).
    public init(hostname: String, maxMessageSize: Int = 10_240_000, maxRecipients: Int = 1000,
                maxCommandLength: Int = 512, maxTextLineLength: Int = 1000, maxReceivedHeaders: Int = 100) {
        self.hostname = hostname
        self.maxMessageSize = maxMessageSize
        self.maxRecipients = maxRecipients
        self.maxCommandLength = maxCommandLength
        self.maxTextLineLength = maxTextLineLength
        self.maxReceivedHeaders = maxReceivedHeaders
    }
}

/// A complete message accepted at the end of DATA, to be stored durably before
/// the `250` is sent (RFC 5321 §4.1.1.4, §6.1).
public struct SubmittedMessage: Sendable, Equatable {
    /// The EHLO/HELO argument.
    public var heloName: String
    /// The client's address.
    public var peer: SocketAddress
    /// The `MAIL FROM:` path.
    public var reversePath: ReversePath
    /// Accepted recipients in `RCPT` order (duplicates kept; `<Postmaster>` as `postmaster@<hostname>`).
    public var recipients: [Mailbox]
    /// Dot-unstuffed content with CRLF line endings, without the terminating `.CRLF`.
    public var body: [UInt8]
    /// The declared `BODY=` (RFC 6152), `.sevenBit` when not declared.
    public var bodyType: BodyType
    /// The declared `SIZE=` (RFC 1870), if any.
    public var declaredSize: Int?
    /// Whether the client greeted with EHLO (for `with ESMTP` in `Received:`, RFC 3848).
    public var esmtp: Bool

    /// Creates a message record.
    /// - Parameters: see the properties.
    public init(heloName: String, peer: SocketAddress, reversePath: ReversePath, recipients: [Mailbox],
                body: [UInt8], bodyType: BodyType, declaredSize: Int?, esmtp: Bool) {
        self.heloName = heloName
        self.peer = peer
        self.reversePath = reversePath
        self.recipients = recipients
        self.body = body
        self.bodyType = bodyType
        self.declaredSize = declaredSize
        self.esmtp = esmtp
    }
}

/// What the driver must do, in order.
public enum SMTPServerAction: Sendable, Equatable {
    /// Write these bytes (consecutive replies are merged into one `send`, so a
    /// pipelined group is answered with one write, RFC 2920 §3.2).
    case send([UInt8])
    /// Store this message durably, then call `messageStored(id:)` or
    /// `messageStoreFailed()`. Always the last action of its batch.
    case store(SubmittedMessage)
    /// Close the connection. Always the last action.
    case close
}

/// The server side of one SMTP session as a pure state machine (RFC 5321 §4.3.2,
/// with SIZE RFC 1870, PIPELINING RFC 2920, 8BITMIME RFC 6152 and enhanced
/// status codes RFC 2034/3463). No I/O: the driver feeds received bytes and
/// carries out the returned actions.
///
/// Input is accepted in any split. Command lines are buffered up to
/// `maxCommandLength` octets; DATA content is streamed into a `DataDecoder`.
/// After a `.store` action the session processes nothing more until
/// `messageStored(id:)` or `messageStoreFailed()`, so replies to pipelined
/// commands stay in order (RFC 2920 §3.1). Bytes passed to `receive` meanwhile
/// are buffered without limit, so a driver should not read while a store is
/// pending.
///
/// Command-line rules (RFC 5321 §2.3.8, §4.5.3.1.4): a line must end in CRLF; a
/// line holding a bare LF, a bare CR or NUL is answered `500 5.5.2` and
/// ignored; a line over `maxCommandLength` is answered `500 5.5.2 … line too
/// long` once its LF arrives, its bytes discarded meanwhile.
public struct SMTPServerSession: Sendable {
    /// The EHLO/HELO identity of the client.
    struct Helo: Sendable {
        var name: String
        var esmtp: Bool
    }

    /// One mail transaction (RFC 5321 §3.3).
    struct MailTransaction: Sendable {
        var reversePath: ReversePath
        var parameters: MailParameters
        var recipients: [Mailbox] = []
        /// Whether any RCPT was attempted (to tell 503 from 554 at DATA).
        var rcptAttempted = false
    }

    enum State: Sendable {
        /// No transaction (before or after HELO/EHLO; see `helo`).
        case idle
        /// After `MAIL`.
        case mail(MailTransaction)
        /// After `354`, reading content.
        case data(MailTransaction, DataDecoder)
        /// A `.store` was returned; waiting for the driver's verdict.
        case awaitingStore
        /// After QUIT, timeout or shutdown.
        case closed
    }

    /// The limits in force.
    public let policy: SMTPServerPolicy
    /// The client's address.
    public let peer: SocketAddress
    /// Whether this client may relay (otherwise RCPT gets `554 5.7.1`, RFC 5321 §3.6.2).
    public let relayPermitted: Bool

    private(set) var state: State = .idle
    private(set) var helo: Helo?
    private var greeted = false
    /// Unprocessed input: a partial command line, or input held while a store is pending.
    private var buffer: [UInt8] = []
    /// Inside an overlong command line: discard up to the next LF.
    private var discardingLine = false

    /// Creates a session; call `start()` for the greeting.
    /// - Parameters:
    ///   - policy: limits and host name.
    ///   - peer: the client's address (recorded in `SubmittedMessage`).
    ///   - relayPermitted: whether RCPT to any domain is allowed.
    public init(policy: SMTPServerPolicy, peer: SocketAddress, relayPermitted: Bool) {
        self.policy = policy
        self.peer = peer
        self.relayPermitted = relayPermitted
    }

    /// Whether the session has ended; the driver closes the connection.
    public var isClosed: Bool {
        if case .closed = state { return true }
        return false
    }

    /// Octets of unprocessed input held (for tests of the command-line bound).
    var bufferedByteCount: Int { buffer.count }

    /// Whether a `.store` is outstanding.
    public var isAwaitingStore: Bool {
        if case .awaitingStore = state { return true }
        return false
    }

    /// The greeting `220 <hostname> ESMTP Hato` (RFC 5321 §4.2, §4.3.1; no enhanced code, RFC 2034 §3).
    /// Returns nothing when called again.
    public mutating func start() -> [SMTPServerAction] {
        guard !greeted, !isClosed else { return [] }
        greeted = true
        return [.send(SMTPReply(220, nil, "\(policy.hostname) ESMTP Hato").encoded())]
    }

    /// Processes received bytes (any split of the stream).
    /// - Parameter bytes: the bytes just read.
    /// - Returns: the replies for every complete command, possibly ending with
    ///   `.store` (processing pauses) or `.close`. Empty after close.
    public mutating func receive(_ bytes: ArraySlice<UInt8>) -> [SMTPServerAction] {
        guard !isClosed else { return [] }
        if isAwaitingStore {
            buffer.append(contentsOf: bytes)
            return []
        }
        var actions: [SMTPServerAction] = []
        var input = bytes
        if !buffer.isEmpty {
            // Complete the buffered partial line, then continue straight from `input`.
            var pending = buffer
            buffer = []
            if let lf = input.firstIndex(of: 0x0A) {
                pending.append(contentsOf: input[input.startIndex...lf])
                input = input[(lf + 1)...]
            } else {
                pending.append(contentsOf: input)
                input = input[input.endIndex...]
            }
            let used = drive(pending[...], &actions)
            if used < pending.count {
                if !isClosed {
                    buffer = Array(pending[used...])
                    buffer.append(contentsOf: input)
                }
                return actions
            }
        }
        let used = drive(input, &actions)
        if !isClosed { buffer.append(contentsOf: input[(input.startIndex + used)...]) }
        return actions
    }

    /// The driver stored the message: `250 2.0.0 Ok: queued as <id>`, then continues
    /// with buffered pipelined input (RFC 5321 §4.1.1.4, RFC 2920 §3.1).
    /// - Parameter id: the queue identifier to report.
    /// - Returns: the 250 and the replies for any buffered commands. Empty when no store was pending.
    public mutating func messageStored(id: String) -> [SMTPServerAction] {
        guard isAwaitingStore else { return [] }
        state = .idle
        var actions: [SMTPServerAction] = []
        emit(SMTPReply(250, "2.0.0", "Ok: queued as \(id)"), &actions)
        resume(&actions)
        return actions
    }

    /// The driver could not store the message: `451 4.3.0` (transient, RFC 5321
    /// §4.2.5), then continues with buffered input.
    /// - Returns: the 451 and the replies for any buffered commands. Empty when no store was pending.
    public mutating func messageStoreFailed() -> [SMTPServerAction] {
        guard isAwaitingStore else { return [] }
        state = .idle
        var actions: [SMTPServerAction] = []
        emit(SMTPReply(451, "4.3.0", "Error: queue file write error"), &actions)
        resume(&actions)
        return actions
    }

    /// The client was idle too long: `421 4.4.2 <hostname> Error: timeout exceeded`
    /// and close (RFC 5321 §4.5.3.2, §3.8).
    public mutating func timeout() -> [SMTPServerAction] {
        guard !isClosed else { return [] }
        var actions: [SMTPServerAction] = []
        emit(SMTPReply(421, "4.4.2", "\(policy.hostname) Error: timeout exceeded"), &actions)
        close(&actions)
        return actions
    }

    /// The server is shutting down: `421 4.3.2 <hostname> Service shutting down` and close (RFC 5321 §3.8).
    public mutating func shutdown() -> [SMTPServerAction] {
        guard !isClosed else { return [] }
        var actions: [SMTPServerAction] = []
        emit(SMTPReply(421, "4.3.2", "\(policy.hostname) Service shutting down"), &actions)
        close(&actions)
        return actions
    }

    // MARK: - Input processing

    /// Processes the buffered input after a store verdict.
    private mutating func resume(_ actions: inout [SMTPServerAction]) {
        guard !buffer.isEmpty else { return }
        let pending = buffer
        buffer = []
        let used = drive(pending[...], &actions)
        if !isClosed { buffer.append(contentsOf: pending[used...]) }
    }

    /// Processes as much of `input` as possible; returns the number of bytes consumed.
    /// Stops at a partial command line, a pending store, or close.
    private mutating func drive(_ input: ArraySlice<UInt8>, _ actions: inout [SMTPServerAction]) -> Int {
        var i = input.startIndex
        loop: while i < input.endIndex {
            switch state {
            case .closed, .awaitingStore:
                break loop
            case .data:
                i += feedData(input[i...], &actions)
            case .idle, .mail:
                if discardingLine {
                    if let lf = input[i...].firstIndex(of: 0x0A) {
                        i = lf + 1
                        discardingLine = false
                        emit(Self.lineTooLong, &actions)
                    } else {
                        i = input.endIndex
                    }
                    continue loop
                }
                guard let lf = input[i...].firstIndex(of: 0x0A) else {
                    if input.endIndex - i >= policy.maxCommandLength {
                        discardingLine = true
                        i = input.endIndex
                    }
                    break loop
                }
                let line = input[i..<lf]
                i = lf + 1
                handleLine(line, &actions)
            }
        }
        return i - input.startIndex
    }

    /// Feeds DATA content to the decoder; returns the bytes consumed.
    private mutating func feedData(_ input: ArraySlice<UInt8>, _ actions: inout [SMTPServerAction]) -> Int {
        guard case .data(let transaction, var decoder) = state else { return 0 }
        state = .awaitingStore  // release the enum's copy so appends to the body do not copy it
        let (used, finished) = decoder.feed(input)
        if finished {
            finishData(transaction, &decoder, &actions)
        } else {
            state = .data(transaction, decoder)
        }
        return used
    }

    private static let lineTooLong = SMTPReply(500, "5.5.2", "Error: line too long")

    /// One command line, LF excluded.
    private mutating func handleLine(_ line: ArraySlice<UInt8>, _ actions: inout [SMTPServerAction]) {
        if line.count + 1 > policy.maxCommandLength {
            emit(Self.lineTooLong, &actions)
            return
        }
        guard line.last == 0x0D else {
            emit(SMTPReply(500, "5.5.2", "Error: bare <LF> received"), &actions)
            return
        }
        let content = line.dropLast()
        if content.contains(where: { $0 == 0x0D || $0 == 0x00 }) {
            emit(SMTPReply(500, "5.5.2", "Error: bare <CR> or NUL in command"), &actions)
            return
        }
        switch SMTPCommand.parse(content) {
        case .success(let command):
            execute(command, &actions)
        case .failure(let reply):
            // Sequence errors take precedence over argument syntax (RFC 5321 §4.3.2 lists both).
            let (verb, _) = SMTPCommand.split(content)
            if verb == .rcpt, case .mail(var transaction) = state {
                transaction.rcptAttempted = true
                state = .mail(transaction)
            }
            emit(sequenceError(for: verb) ?? reply, &actions)
        }
    }

    private func sequenceError(for verb: SMTPCommand.Verb?) -> SMTPReply? {
        switch verb {
        case .mail: return mailSequenceError()
        case .rcpt: return rcptSequenceError()
        default: return nil
        }
    }

    private func mailSequenceError() -> SMTPReply? {
        if helo == nil { return SMTPReply(503, "5.5.1", "Error: send HELO/EHLO first") }
        if case .mail = state { return SMTPReply(503, "5.5.1", "Error: nested MAIL command") }
        return nil
    }

    private func rcptSequenceError() -> SMTPReply? {
        if case .mail = state { return nil }
        return SMTPReply(503, "5.5.1", "Error: need MAIL command")
    }

    private mutating func execute(_ command: SMTPCommand, _ actions: inout [SMTPServerAction]) {
        switch command {
        case .ehlo(let name):
            helo = Helo(name: name, esmtp: true)
            state = .idle  // EHLO resets the transaction (RFC 5321 §4.1.4)
            emit(SMTPReply(code: 250, enhanced: nil, lines: [
                policy.hostname,
                "PIPELINING",
                "SIZE \(max(0, policy.maxMessageSize))",
                "8BITMIME",
                "ENHANCEDSTATUSCODES",
            ]), &actions)
        case .helo(let name):
            helo = Helo(name: name, esmtp: false)
            state = .idle
            emit(SMTPReply(250, nil, policy.hostname), &actions)
        case .mail(let reversePath, let parameters):
            if let error = mailSequenceError() { return emit(error, &actions) }
            if let size = parameters.size, size > policy.maxMessageSize {
                // RFC 1870 §6.1: the declared size exceeds the fixed maximum.
                return emit(SMTPReply(552, "5.3.4", "Message size exceeds fixed limit"), &actions)
            }
            state = .mail(MailTransaction(reversePath: reversePath, parameters: parameters))
            emit(SMTPReply(250, "2.1.0", "Ok"), &actions)
        case .rcpt(let forwardPath):
            guard case .mail(var transaction) = state else {
                return emit(SMTPReply(503, "5.5.1", "Error: need MAIL command"), &actions)
            }
            transaction.rcptAttempted = true
            let mailbox: Mailbox
            switch forwardPath {
            case .postmaster: mailbox = Mailbox(localPart: "postmaster", domain: policy.hostname)
            case .mailbox(let m): mailbox = m
            }
            let reply: SMTPReply
            if !relayPermitted {
                reply = SMTPReply(554, "5.7.1", "Relay access denied")
            } else if transaction.recipients.count >= policy.maxRecipients {
                reply = SMTPReply(452, "4.5.3", "Too many recipients")
            } else {
                transaction.recipients.append(mailbox)
                reply = SMTPReply(250, "2.1.5", "Ok")
            }
            state = .mail(transaction)
            emit(reply, &actions)
        case .data:
            switch state {
            case .mail(let transaction) where !transaction.recipients.isEmpty:
                state = .data(transaction, DataDecoder(
                    maxMessageSize: policy.maxMessageSize, maxLineLength: policy.maxTextLineLength,
                    maxReceivedHeaders: policy.maxReceivedHeaders, expectedSize: transaction.parameters.size))
                emit(SMTPReply(354, nil, "End data with <CR><LF>.<CR><LF>"), &actions)
            case .mail(let transaction) where transaction.rcptAttempted:
                emit(SMTPReply(554, "5.5.1", "Error: no valid recipients"), &actions)
            case .mail:
                emit(SMTPReply(503, "5.5.1", "Error: need RCPT command"), &actions)
            default:
                emit(helo == nil ? SMTPReply(503, "5.5.1", "Error: send HELO/EHLO first")
                                 : SMTPReply(503, "5.5.1", "Error: need MAIL command"), &actions)
            }
        case .rset:
            state = .idle
            emit(SMTPReply(250, "2.0.0", "Ok"), &actions)
        case .noop:
            emit(SMTPReply(250, "2.0.0", "Ok"), &actions)
        case .quit:
            emit(SMTPReply(221, "2.0.0", "Bye"), &actions)
            close(&actions)
        case .vrfy:
            // RFC 5321 §3.5.3: 252 when the address cannot be verified but will be tried.
            emit(SMTPReply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery"), &actions)
        case .help:
            emit(SMTPReply(214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP"), &actions)
        case .expn, .starttls, .auth, .bdat:
            // Seams: STARTTLS (RFC 3207), AUTH (RFC 4954) and BDAT (RFC 3030) come later.
            emit(SMTPReply(502, "5.5.1", "Error: command not implemented"), &actions)
        }
    }

    private mutating func finishData(_ transaction: MailTransaction, _ decoder: inout DataDecoder, _ actions: inout [SMTPServerAction]) {
        switch decoder.outcome() {
        case .rejected(let reply):
            state = .idle
            emit(reply, &actions)
        case .accepted(let body):
            state = .awaitingStore
            let helo = self.helo ?? Helo(name: "", esmtp: false)
            actions.append(.store(SubmittedMessage(
                heloName: helo.name, peer: peer, reversePath: transaction.reversePath,
                recipients: transaction.recipients, body: body,
                bodyType: transaction.parameters.body ?? .sevenBit,
                declaredSize: transaction.parameters.size, esmtp: helo.esmtp)))
        }
    }

    private mutating func close(_ actions: inout [SMTPServerAction]) {
        state = .closed
        buffer = []
        discardingLine = false
        actions.append(.close)
    }

    /// Appends a reply, merging it into a preceding `.send`.
    private func emit(_ reply: SMTPReply, _ actions: inout [SMTPServerAction]) {
        let bytes = reply.encoded()
        if case .send(var previous)? = actions.last {
            actions.removeLast()
            previous.append(contentsOf: bytes)
            actions.append(.send(previous))
        } else {
            actions.append(.send(bytes))
        }
    }
}
