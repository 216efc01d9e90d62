import HatoIO

/// What the driver must do, in order.
public enum SMTPServerAction: Sendable, Equatable {
    /// Write these bytes (consecutive replies are merged into one `send`, so a
    /// pipelined group is answered with one write, RFC 2920 §3.2).
    case send([UInt8])
    /// Store this message durably, then call `messageStored(id:)` or
    /// `messageStoreFailed()`. Always the last action of its batch.
    case store(SubmittedMessage)
    /// Check these credentials (rate limit, password hash), then call
    /// `authenticationFinished(_:)`. Always the last action of its batch.
    case authenticate(SASLCredentials)
    /// Write what was sent so far (it ends with `220 2.0.0 Ready to start TLS`), run the TLS
    /// server handshake, then call `tlsStarted(_:)` or `tlsFailed()`. Everything the client
    /// sent after the STARTTLS line has been discarded (RFC 3207 §4.2). Always the last action.
    case startTLS
    /// Close the connection. Always the last action.
    case close
}

/// The server side of one SMTP session as a pure state machine (RFC 5321 §4.3.2,
/// with SIZE RFC 1870, PIPELINING RFC 2920, 8BITMIME RFC 6152, SMTPUTF8 RFC 6531,
/// STARTTLS RFC 3207, AUTH PLAIN/LOGIN RFC 4954/4616, DSN parameters RFC 3461,
/// CHUNKING RFC 3030 and enhanced status codes RFC 2034/3463). No I/O: the driver
/// feeds received bytes and carries out the returned actions.
///
/// Input is accepted in any split. Command lines are buffered up to
/// `maxCommandLength` octets (`maxAuthLineLength` for AUTH and SASL responses);
/// DATA content is streamed into a `DataDecoder`, BDAT chunks are counted into one.
/// After a `.store` or `.authenticate` action the session processes nothing more until
/// the driver's verdict, so replies to pipelined commands stay in order (RFC 2920 §3.1).
/// Bytes passed to `receive` meanwhile are buffered without limit, so a driver should
/// not read while a verdict is pending. After `.startTLS`, received plaintext is
/// discarded until `tlsStarted`.
///
/// Command-line rules (RFC 5321 §2.3.8, §4.1.1, §4.5.3.1.4): only CRLF ends a line,
/// so a bare LF or CR never splits one line into two commands. A line holding a bare
/// LF, a bare CR or NUL before its CRLF is answered with exactly one `500 5.5.2` and
/// none of it runs (the command-level relative of SMTP smuggling); commands pipelined
/// after it (RFC 2920) are handled one by one as usual. A line over `maxCommandLength`
/// is answered `500 5.5.2 … line too long` once its CRLF arrives, its bytes discarded
/// meanwhile. SASL responses follow the same framing (`501 5.5.2`).
public struct SMTPServerSession: Sendable {
    /// A per-recipient policy check run at RCPT after relay and count checks (e.g. the
    /// suppression list, `550 5.1.1 … suppressed`); nil accepts. Set by the driver.
    public var recipientCheck: (@Sendable (_ recipient: Mailbox, _ reversePath: ReversePath) -> SMTPReply?)?
    /// A check run at MAIL after the sequence and `SIZE` checks, before the transaction starts:
    /// e.g. the queue's disk headroom, `452 4.3.1` (RFC 5321 §4.2.5, RFC 1870 §6.1, RFC 3463
    /// 4.3.1); nil accepts. Set by the driver.
    public var mailCheck: (@Sendable (_ reversePath: ReversePath, _ parameters: MailParameters) -> SMTPReply?)?
    /// Admission of one `postmaster` recipient from a client that may not relay (not in
    /// `relay_networks`, not authenticated): e.g. a rate limit per client address, `452 4.7.1`
    /// (RFC 3463 4.7.1); nil accepts. Called only when the recipient would otherwise be accepted,
    /// so an accepting call may count it. Set by the driver.
    public var postmasterAdmission: (@Sendable () -> SMTPReply?)?

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
        var recipientParameters: [RecipientParameters] = []
        /// Parallel to `recipients`: the address given when it was rewritten (postmaster).
        var originalRecipients: [Mailbox?] = []
        /// Whether any RCPT was attempted (to tell 503 from 554 at DATA).
        var rcptAttempted = false
        /// Content of the BDAT chunks received so far (RFC 3030), nil before the first.
        var chunks: DataDecoder?
    }

    /// A BDAT chunk being read: `remaining` octets still belong to it.
    struct Chunk: Sendable {
        var size: Int
        var remaining: Int
        var last: Bool
        /// The transaction the chunk belongs to (nil when there is none).
        var transaction: MailTransaction?
        /// Where accepted octets go; nil when the chunk is being discarded.
        var decoder: DataDecoder?
        /// The reply for a discarded chunk.
        var rejection: SMTPReply?
    }

    /// Where an AUTH exchange stands (RFC 4954 §4).
    enum AuthStep: Sendable {
        /// `334 ` sent for PLAIN: the next line is the PLAIN message.
        case plain
        /// `334 VXNlcm5hbWU6` sent: the next line is the user name.
        case loginUsername
        /// `334 UGFzc3dvcmQ6` sent: the next line is the password.
        case loginPassword(String)
    }

    enum State: Sendable {
        /// No transaction (before or after HELO/EHLO; see `helo`).
        case idle
        /// After `MAIL`.
        case mail(MailTransaction)
        /// After `354`, reading content.
        case data(MailTransaction, DataDecoder)
        /// Reading the octets of a BDAT chunk.
        case chunk(Chunk)
        /// In an AUTH exchange: the next line is a SASL response.
        case auth(AuthStep)
        /// A `.store` was returned; waiting for the driver's verdict.
        case awaitingStore
        /// An `.authenticate` was returned; waiting for the driver's verdict.
        case awaitingAuth
        /// A `.startTLS` was returned; waiting for the handshake.
        case awaitingTLS
        /// After QUIT, timeout or shutdown.
        case closed
    }

    /// The limits in force.
    public let policy: SMTPServerPolicy
    /// The client's address.
    public let peer: SocketAddress
    /// Whether this client may relay without authenticating (it is in `relay_networks`);
    /// otherwise RCPT gets `554 5.7.1` until AUTH succeeds (RFC 5321 §3.6.2).
    public let relayPermitted: Bool
    /// Whether AUTH may be offered before TLS (a loopback client with
    /// `smtp.auth_allow_plaintext_loopback`; RFC 4954 §4 forbids plaintext passwords otherwise).
    public let plaintextAuthPermitted: Bool

    private(set) var state: State = .idle
    private(set) var helo: Helo?
    private var greeted = false
    /// Unprocessed input: a partial command line, or input held while a verdict is pending.
    private var buffer: [UInt8] = []
    /// Inside an overlong command line: discard up to the next CRLF.
    private var discardingLine = false
    /// While discarding: whether the last octet discarded was a CR (a CRLF split across reads).
    private var discardedCR = false
    /// The user AUTH succeeded for (RFC 4954), nil before.
    public private(set) var authenticatedUser: String?
    /// The TLS parameters once STARTTLS completed (RFC 3207).
    public private(set) var tls: NegotiatedTLS?
    /// Octets the client sent after STARTTLS before the handshake, discarded unexecuted
    /// (RFC 3207 §4.2; CVE-2011-0411).
    public private(set) var discardedAfterSTARTTLS = 0

    /// Creates a session; call `start()` for the greeting.
    /// - Parameters:
    ///   - policy: limits, host name, TLS and AUTH availability.
    ///   - peer: the client's address (recorded in `SubmittedMessage`).
    ///   - relayPermitted: whether RCPT to any domain is allowed without AUTH.
    ///   - plaintextAuthPermitted: whether AUTH may be offered before TLS.
    public init(policy: SMTPServerPolicy, peer: SocketAddress, relayPermitted: Bool, plaintextAuthPermitted: Bool = false) {
        self.policy = policy
        self.peer = peer
        self.relayPermitted = relayPermitted
        self.plaintextAuthPermitted = plaintextAuthPermitted
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

    /// Whether message content (after `354`, or a BDAT chunk) is being read: the driver
    /// applies its DATA timeout instead of the command timeout (RFC 5321 §4.5.3.2).
    public var isReadingContent: Bool {
        switch state {
        case .data, .chunk: return true
        default: return false
        }
    }

    /// The decoder holding the content being received: the DATA content, or the BDAT chunks so
    /// far (nil outside a transaction's content).
    private var contentDecoder: DataDecoder? {
        switch state {
        case .data(_, let decoder): return decoder
        case .chunk(let chunk): return chunk.decoder ?? chunk.transaction?.chunks
        case .mail(let transaction): return transaction.chunks
        default: return nil
        }
    }

    /// Octets of message content the session holds in memory now: the DATA content or the
    /// BDAT chunks received so far (0 outside a transaction, or once the content is known to
    /// be refused).
    public var keptContentOctets: Int { contentDecoder?.keptByteCount ?? 0 }

    /// Octets of memory allocated for the content `keptContentOctets` counts (at most one
    /// segment of slack, `DataDecoder.segmentSize`): what the driver accounts against the
    /// server's content memory.
    public var contentMemoryOctets: Int { contentDecoder?.allocatedByteCount ?? 0 }

    /// The server has no memory left for this message's content: what was kept is dropped,
    /// the rest of the content is read and discarded, and the message gets `452 4.3.1
    /// Insufficient system storage` at its end (with BDAT, at the end of the current chunk),
    /// unless a permanent rejection applies (RFC 5321 §4.2.5, RFC 3030 §2). No effect outside
    /// content.
    public mutating func shedContent() {
        switch state {
        case .data(let transaction, var decoder):
            state = .idle  // drop the enum's reference first so the decoder is not copied
            decoder.shed()
            state = .data(transaction, decoder)
        case .chunk(var chunk):
            state = .idle
            chunk.decoder?.shed()
            chunk.transaction?.chunks?.shed()
            state = .chunk(chunk)
        case .mail(var transaction) where transaction.chunks != nil:
            state = .idle
            transaction.chunks?.shed()
            state = .mail(transaction)
        default:
            break
        }
    }

    /// Whether AUTH is offered right now: users exist, and TLS is active or plaintext is allowed.
    public var authOffered: Bool {
        policy.authAvailable && (tls != nil || plaintextAuthPermitted)
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
    ///   `.store`/`.authenticate`/`.startTLS` (processing pauses) or `.close`. Empty after close.
    public mutating func receive(_ bytes: ArraySlice<UInt8>) -> [SMTPServerAction] {
        switch state {
        case .closed:
            return []
        case .awaitingTLS:
            discardedAfterSTARTTLS += bytes.count
            return []
        case .awaitingStore, .awaitingAuth:
            buffer.append(contentsOf: bytes)
            return []
        default:
            break
        }
        var actions: [SMTPServerAction] = []
        var input = bytes
        if !buffer.isEmpty {
            // Complete the buffered partial line (up to its CRLF, whose CR may be the last
            // buffered octet), then continue straight from `input`.
            var pending = buffer
            buffer = []
            if let lf = Self.endOfLine(in: input, afterCR: pending.last == 0x0D) {
                pending.append(contentsOf: input[input.startIndex...lf])
                input = input[(lf + 1)...]
            } else {
                pending.append(contentsOf: input)
                input = input[input.endIndex...]
            }
            let used = drive(pending[...], &actions)
            if used < pending.count {
                keepUnprocessed(pending[used...] + input)
                return actions
            }
        }
        let used = drive(input, &actions)
        keepUnprocessed(input[(input.startIndex + used)...])
        return actions
    }

    /// Holds input that was not processed: a partial line, or what follows a pause. After
    /// STARTTLS it is dropped instead (RFC 3207 §4.2).
    private mutating func keepUnprocessed(_ rest: ArraySlice<UInt8>) {
        switch state {
        case .closed:
            break
        case .awaitingTLS:
            discardedAfterSTARTTLS += rest.count
        default:
            buffer.append(contentsOf: rest)
        }
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

    /// The driver could not store the message: `451 4.3.0` (transient, RFC 5321 §4.2.5), or
    /// `452 4.3.1 Insufficient system storage` when the queue's file system is full (RFC 5321
    /// §4.2.5, RFC 3463 4.3.1); never a 250. Then continues with buffered input.
    /// - Parameter failure: why (default `.temporary`).
    /// - Returns: the 4xx and the replies for any buffered commands. Empty when no store was pending.
    public mutating func messageStoreFailed(_ failure: StoreFailure = .temporary) -> [SMTPServerAction] {
        guard isAwaitingStore else { return [] }
        state = .idle
        var actions: [SMTPServerAction] = []
        switch failure {
        case .temporary:
            emit(SMTPReply(451, "4.3.0", "Error: queue file write error"), &actions)
        case .insufficientStorage:
            emit(Self.insufficientStorage, &actions)
        case .refused(let reply):
            emit(reply, &actions)
        }
        resume(&actions)
        return actions
    }

    /// The driver checked the credentials of an `.authenticate` action (RFC 4954 §6):
    /// `235 2.7.0`, `535 5.7.8`, or `454 4.7.0`; then continues with buffered input.
    /// - Parameter result: the verdict.
    /// - Returns: the reply and the replies for any buffered commands. Empty when no check was pending.
    public mutating func authenticationFinished(_ result: AuthenticationResult) -> [SMTPServerAction] {
        guard case .awaitingAuth = state else { return [] }
        state = .idle
        var actions: [SMTPServerAction] = []
        switch result {
        case .succeeded(let user):
            authenticatedUser = user
            emit(SMTPReply(235, "2.7.0", "Authentication successful"), &actions)
        case .failed:
            emit(Self.authFailed, &actions)
        case .temporaryFailure:
            emit(SMTPReply(454, "4.7.0", "Temporary authentication failure"), &actions)
        case .rateLimited:
            emit(SMTPReply(454, "4.7.0", "Too many failed authentication attempts, try again later"), &actions)
        }
        resume(&actions)
        return actions
    }

    /// The TLS handshake after `.startTLS` succeeded: the session starts over as after the
    /// greeting, forgetting EHLO, AUTH and any transaction (RFC 3207 §4.2). No reply is sent;
    /// the client speaks first (EHLO).
    /// - Parameter tls: the negotiated parameters.
    /// - Returns: no actions (the client speaks next).
    public mutating func tlsStarted(_ tls: NegotiatedTLS) -> [SMTPServerAction] {
        guard case .awaitingTLS = state else { return [] }
        self.tls = tls
        helo = nil
        authenticatedUser = nil
        buffer = []
        discardingLine = false
        discardedCR = false
        state = .idle
        return []
    }

    /// The TLS handshake after `.startTLS` failed: the connection cannot continue in either
    /// plaintext or TLS, so the session closes without a reply.
    /// - Returns: `.close`.
    public mutating func tlsFailed() -> [SMTPServerAction] {
        guard case .awaitingTLS = state else { return [] }
        var actions: [SMTPServerAction] = []
        close(&actions)
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

    /// Processes the buffered input after a verdict.
    private mutating func resume(_ actions: inout [SMTPServerAction]) {
        guard !buffer.isEmpty else { return }
        let pending = buffer
        buffer = []
        let used = drive(pending[...], &actions)
        keepUnprocessed(pending[used...])
    }

    /// The longest line allowed for the partial line `partial` in the current state.
    private func lineLimit(_ partial: ArraySlice<UInt8>) -> Int {
        if case .auth = state { return policy.maxAuthLineLength }
        if SMTPAddressSyntax.hasPrefixIgnoringCase(partial.prefix(5), "AUTH ") {
            return max(policy.maxCommandLength, policy.maxAuthLineLength)
        }
        return policy.maxCommandLength
    }

    /// Where a command line ends: the index of the LF of the first CRLF in `bytes` (RFC 5321
    /// §2.3.8: only CRLF ends a line; a bare LF or CR is part of the line, which is then refused
    /// whole, never split into two commands).
    /// - Parameters:
    ///   - bytes: the input after the start of the line (or a continuation of it).
    ///   - afterCR: whether the octet just before `bytes` was a CR of the same line (a CRLF split
    ///     across two reads).
    /// - Returns: the index of the LF, or nil when `bytes` holds no complete CRLF.
    static func endOfLine(in bytes: ArraySlice<UInt8>, afterCR: Bool) -> Int? {
        if afterCR, bytes.first == 0x0A { return bytes.startIndex }
        var from = bytes.startIndex
        while let lf = bytes[from...].firstIndex(of: 0x0A) {
            if lf > bytes.startIndex && bytes[lf - 1] == 0x0D { return lf }
            from = lf + 1
        }
        return nil
    }

    /// Processes as much of `input` as possible; returns the number of bytes consumed.
    /// Stops at a partial command line, a pending verdict, or close.
    private mutating func drive(_ input: ArraySlice<UInt8>, _ actions: inout [SMTPServerAction]) -> Int {
        var i = input.startIndex
        loop: while i < input.endIndex {
            switch state {
            case .closed, .awaitingStore, .awaitingAuth, .awaitingTLS:
                break loop
            case .data:
                i += feedData(input[i...], &actions)
            case .chunk:
                i += feedChunk(input[i...], &actions)
            case .idle, .mail, .auth:
                if discardingLine {
                    if let lf = Self.endOfLine(in: input[i...], afterCR: discardedCR) {
                        i = lf + 1
                        discardingLine = false
                        discardedCR = false
                        if case .auth = state {
                            state = .idle
                            emit(SMTPReply(501, "5.5.2", "Error: authentication response too long"), &actions)
                        } else {
                            emit(Self.lineTooLong, &actions)
                        }
                    } else {
                        discardedCR = input.last == 0x0D
                        i = input.endIndex
                    }
                    continue loop
                }
                guard let lf = Self.endOfLine(in: input[i...], afterCR: false) else {
                    if input.endIndex - i >= lineLimit(input[i...]) {
                        discardingLine = true
                        discardedCR = input.last == 0x0D
                        i = input.endIndex
                    }
                    break loop
                }
                let line = input[i..<lf]
                i = lf + 1
                if case .auth(let step) = state {
                    handleAuthResponse(line, step, &actions)
                } else {
                    handleLine(line, &actions)
                }
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
            finishMessage(transaction, &decoder, &actions)
        } else {
            state = .data(transaction, decoder)
        }
        return used
    }

    /// Feeds BDAT chunk octets (accepted or discarded); returns the bytes consumed.
    private mutating func feedChunk(_ input: ArraySlice<UInt8>, _ actions: inout [SMTPServerAction]) -> Int {
        guard case .chunk(var chunk) = state else { return 0 }
        state = .awaitingStore  // release the enum's copy (see feedData)
        let n = min(chunk.remaining, input.count)
        if var decoder = chunk.decoder {
            chunk.decoder = nil
            _ = decoder.feed(input.prefix(n))
            chunk.decoder = decoder
        }
        chunk.remaining -= n
        if chunk.remaining == 0 {
            finishChunk(chunk, &actions)
        } else {
            state = .chunk(chunk)
        }
        return n
    }

    private static let lineTooLong = SMTPReply(500, "5.5.2", "Error: line too long")
    /// `452 4.3.1`: no room to queue a message (RFC 5321 §4.2.5 452 "insufficient system
    /// storage", RFC 3463 4.3.1 "mail system full"), at MAIL or at the end of DATA.
    public static let insufficientStorage = SMTPReply(452, "4.3.1", "Insufficient system storage")
    private static let authFailed = SMTPReply(535, "5.7.8", "Error: authentication failed")

    /// `500 5.5.2` for a command line holding a bare LF (RFC 5321 §2.3.8, §4.1.1; RFC 3463
    /// 5.5.2 syntax error): the whole line up to CRLF is refused and none of it runs.
    static let bareLFInCommand = SMTPReply(500, "5.5.2", "Syntax error: bare LF in command line; lines end with CRLF (RFC 5321 section 2.3.8)")
    /// `500 5.5.2` for a command line holding a bare CR (RFC 5321 §2.3.8).
    static let bareCRInCommand = SMTPReply(500, "5.5.2", "Syntax error: bare CR in command line; lines end with CRLF (RFC 5321 section 2.3.8)")
    /// `500 5.5.2` for a command line holding NUL (RFC 5321 §4.1.1: commands are printable US-ASCII).
    static let nulInCommand = SMTPReply(500, "5.5.2", "Syntax error: NUL in command line")

    /// One command line up to its CRLF, LF excluded (so it ends in CR). A bare LF, a bare CR
    /// or NUL anywhere before the CRLF makes the whole line one `500 5.5.2`; nothing of it runs.
    private mutating func handleLine(_ line: ArraySlice<UInt8>, _ actions: inout [SMTPServerAction]) {
        let limit = SMTPAddressSyntax.hasPrefixIgnoringCase(line, "AUTH ")
            ? max(policy.maxCommandLength, policy.maxAuthLineLength) : policy.maxCommandLength
        if line.count + 1 > limit {
            emit(Self.lineTooLong, &actions)
            return
        }
        guard line.last == 0x0D else {
            // Not reached: `endOfLine` ends lines at CRLF only. Kept so a line never runs without one.
            emit(Self.bareLFInCommand, &actions)
            return
        }
        let content = line.dropLast()
        if content.contains(0x0A) { return emit(Self.bareLFInCommand, &actions) }
        if content.contains(0x0D) { return emit(Self.bareCRInCommand, &actions) }
        if content.contains(0x00) { return emit(Self.nulInCommand, &actions) }
        let (verb, arguments) = SMTPCommand.split(content)
        if verb == .bdat {
            return handleBDAT(arguments, &actions)
        }
        var smtputf8 = false
        if case .mail(let transaction) = state { smtputf8 = transaction.parameters.smtputf8 }
        switch SMTPCommand.parse(content, smtputf8: smtputf8, authParameter: authOffered) {
        case .success(let command):
            execute(command, &actions)
        case .failure(let reply):
            // Sequence errors take precedence over argument syntax (RFC 5321 §4.3.2 lists both).
            if verb == .rcpt, case .mail(var transaction) = state {
                state = .idle
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
        if policy.requireTLS && tls == nil { return SMTPReply(530, "5.7.0", "Must issue a STARTTLS command first") }
        return nil
    }

    private func rcptSequenceError() -> SMTPReply? {
        guard case .mail(let transaction) = state else { return SMTPReply(503, "5.5.1", "Error: need MAIL command") }
        if transaction.chunks != nil { return SMTPReply(503, "5.5.1", "Error: RCPT after BDAT") }
        return nil
    }

    /// Whether `mailbox` is this server's postmaster: `postmaster@<hostname>`, both parts compared
    /// case-insensitively (RFC 5321 §4.5.1, §2.4; `<Postmaster>` arrives here in that form).
    func isPostmaster(_ mailbox: Mailbox) -> Bool {
        mailbox.localPart.lowercased() == "postmaster" && mailbox.domain.lowercased() == policy.hostname.lowercased()
    }

    /// `text` as RFC 3461 §4 xtext: `+` `=` and octets outside `!`…`~` as `+XX`.
    static func xtext(_ text: String) -> String {
        let hex = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        for b in text.utf8 {
            if b >= 0x21 && b <= 0x7E && b != 0x2B && b != 0x3D {
                out.append(b)
            } else {
                out += [0x2B, hex[Int(b >> 4)], hex[Int(b & 0x0F)]]
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The EHLO keywords in effect now (RFC 5321 §4.1.1.1).
    private var ehloKeywords: [String] {
        var lines = [
            policy.hostname,
            "PIPELINING",
            "SIZE \(max(0, policy.maxMessageSize))",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
        ]
        if policy.tlsAvailable && tls == nil { lines.append("STARTTLS") }
        if authOffered { lines.append("AUTH PLAIN LOGIN") }
        lines.append("DSN")
        lines.append("CHUNKING")
        return lines
    }

    private mutating func execute(_ command: SMTPCommand, _ actions: inout [SMTPServerAction]) {
        switch command {
        case .ehlo(let name):
            helo = Helo(name: name, esmtp: true)
            state = .idle  // EHLO resets the transaction (RFC 5321 §4.1.4)
            emit(SMTPReply(code: 250, enhanced: nil, lines: ehloKeywords), &actions)
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
            if let check = mailCheck, let refusal = check(reversePath, parameters) {
                return emit(refusal, &actions)
            }
            state = .mail(MailTransaction(reversePath: reversePath, parameters: parameters))
            emit(SMTPReply(250, "2.1.0", "Ok"), &actions)
        case .rcpt(let forwardPath, let parameters):
            if let error = rcptSequenceError() { return emit(error, &actions) }
            guard case .mail(var transaction) = state else { return }
            state = .idle  // release the enum's copy so the recipient arrays are appended in place
            transaction.rcptAttempted = true
            let mailbox: Mailbox
            switch forwardPath {
            case .postmaster: mailbox = Mailbox(localPart: "postmaster", domain: policy.hostname)
            case .mailbox(let m): mailbox = m
            }
            let mayRelay = relayPermitted || authenticatedUser != nil
            let toPostmaster = isPostmaster(mailbox)
            let reply: SMTPReply
            if toPostmaster, let operatorMailbox = policy.postmaster {
                // RFC 5321 §4.5.1: postmaster is accepted from anyone and delivered to the operator.
                if transaction.recipients.count >= policy.maxRecipients {
                    reply = SMTPReply(452, "4.5.3", "Too many recipients")
                } else if !mayRelay, let admission = postmasterAdmission, let refusal = admission() {
                    reply = refusal
                } else {
                    var rewritten = parameters
                    // RFC 3461 §4.2: ORCPT carries the address the client gave, for DSNs.
                    if rewritten.originalRecipient == nil { rewritten.originalRecipient = "rfc822;" + Self.xtext(mailbox.address) }
                    transaction.recipients.append(operatorMailbox)
                    transaction.recipientParameters.append(rewritten)
                    transaction.originalRecipients.append(mailbox)
                    reply = SMTPReply(250, "2.1.5", "Ok")
                }
            } else if policy.isFeedbackAddress(mailbox) {
                // A feedback loop's abuse report (RFC 5965): from anyone, consumed by the driver.
                // Not under the postmaster rate limit: a provider's loop sends many an hour.
                if transaction.recipients.count >= policy.maxRecipients {
                    reply = SMTPReply(452, "4.5.3", "Too many recipients")
                } else {
                    transaction.recipients.append(mailbox)
                    transaction.recipientParameters.append(parameters)
                    transaction.originalRecipients.append(nil)
                    reply = SMTPReply(250, "2.1.5", "Ok")
                }
            } else if !mayRelay {
                reply = toPostmaster
                    ? SMTPReply(550, "5.3.5", "Postmaster address not configured on this server (smtp.postmaster)")
                    : SMTPReply(554, "5.7.1", "Relay access denied")
            } else if transaction.recipients.count >= policy.maxRecipients {
                reply = SMTPReply(452, "4.5.3", "Too many recipients")
            } else if let check = recipientCheck, let refusal = check(mailbox, transaction.reversePath) {
                reply = refusal
            } else {
                transaction.recipients.append(mailbox)
                transaction.recipientParameters.append(parameters)
                transaction.originalRecipients.append(nil)
                reply = SMTPReply(250, "2.1.5", "Ok")
            }
            state = .mail(transaction)
            emit(reply, &actions)
        case .data:
            switch state {
            case .mail(let transaction) where transaction.chunks != nil:
                emit(SMTPReply(503, "5.5.1", "Error: DATA after BDAT"), &actions)
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
            emit(SMTPReply(214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH"), &actions)
        case .expn:
            emit(SMTPReply(502, "5.5.1", "Error: command not implemented"), &actions)
        case .starttls:
            startTLS(&actions)
        case .auth(let mechanism, let initialResponse):
            startAuth(mechanism: mechanism, initialResponse: initialResponse, &actions)
        case .bdat:
            break  // handled by handleBDAT before parsing
        }
    }

    // MARK: - STARTTLS (RFC 3207)

    private mutating func startTLS(_ actions: inout [SMTPServerAction]) {
        guard policy.tlsAvailable else {
            return emit(SMTPReply(502, "5.5.1", "Error: command not implemented"), &actions)
        }
        if tls != nil { return emit(SMTPReply(503, "5.5.1", "Error: TLS already active"), &actions) }
        if case .mail = state { return emit(SMTPReply(503, "5.5.1", "Error: MAIL transaction in progress"), &actions) }
        emit(SMTPReply(220, "2.0.0", "Ready to start TLS"), &actions)
        state = .awaitingTLS
        discardedAfterSTARTTLS += buffer.count
        buffer = []
        actions.append(.startTLS)
    }

    // MARK: - AUTH (RFC 4954, RFC 4616)

    private mutating func startAuth(mechanism: String, initialResponse: String?, _ actions: inout [SMTPServerAction]) {
        guard policy.authAvailable else {
            return emit(SMTPReply(502, "5.5.1", "Error: authentication not enabled"), &actions)
        }
        guard let helo, helo.esmtp else { return emit(SMTPReply(503, "5.5.1", "Error: send EHLO first"), &actions) }
        if authenticatedUser != nil { return emit(SMTPReply(503, "5.5.1", "Error: already authenticated"), &actions) }
        if case .mail = state { return emit(SMTPReply(503, "5.5.1", "Error: MAIL transaction in progress"), &actions) }
        guard authOffered else {
            // RFC 4954 §6: plaintext mechanisms need TLS first.
            return emit(SMTPReply(538, "5.7.11", "Encryption required for requested authentication mechanism"), &actions)
        }
        guard mechanism == "PLAIN" || mechanism == "LOGIN" else {
            return emit(SMTPReply(504, "5.5.4", "Unrecognized authentication type"), &actions)
        }
        guard let initialResponse else {
            if mechanism == "PLAIN" {
                state = .auth(.plain)
                emitRaw(Array("334 \r\n".utf8), &actions)  // empty challenge: "334" SP CRLF (RFC 4954 §4)
            } else {
                state = .auth(.loginUsername)
                emit(SMTPReply(334, nil, "VXNlcm5hbWU6"), &actions)
            }
            return
        }
        // RFC 4954 §4: "=" is an empty initial response.
        guard let decoded = initialResponse == "=" ? [] : SASL.decodeBase64(initialResponse) else {
            return emit(SMTPReply(501, "5.5.2", "Error: cannot decode response"), &actions)
        }
        if mechanism == "PLAIN" {
            finishPlain(decoded, &actions)
        } else {
            acceptLoginUsername(decoded, &actions)
        }
    }

    /// A line answering a `334` challenge.
    private mutating func handleAuthResponse(_ line: ArraySlice<UInt8>, _ step: AuthStep, _ actions: inout [SMTPServerAction]) {
        state = .idle
        guard line.count + 1 <= policy.maxAuthLineLength else {
            return emit(SMTPReply(501, "5.5.2", "Error: authentication response too long"), &actions)
        }
        guard line.last == 0x0D, !line.dropLast().contains(where: { $0 == 0x0D || $0 == 0x0A || $0 == 0x00 }) else {
            return emit(SMTPReply(501, "5.5.2", "Error: bare <CR>, <LF> or NUL in authentication response"), &actions)
        }
        let text = String(decoding: line.dropLast(), as: UTF8.self)
        if text == "*" {
            return emit(SMTPReply(501, "5.0.0", "Authentication cancelled"), &actions)  // RFC 4954 §4
        }
        guard let decoded = SASL.decodeBase64(text) else {
            return emit(SMTPReply(501, "5.5.2", "Error: cannot decode response"), &actions)
        }
        switch step {
        case .plain:
            finishPlain(decoded, &actions)
        case .loginUsername:
            acceptLoginUsername(decoded, &actions)
        case .loginPassword(let username):
            guard !decoded.isEmpty, decoded.count <= SASL.maxFieldLength, !decoded.contains(0) else {
                return emit(Self.authFailed, &actions)
            }
            requestVerification(SASLCredentials(mechanism: "LOGIN", authorizationID: nil, username: username, password: decoded), &actions)
        }
    }

    private mutating func finishPlain(_ message: [UInt8], _ actions: inout [SMTPServerAction]) {
        guard let credentials = SASL.decodePlain(message) else { return emit(Self.authFailed, &actions) }
        // RFC 4616 §2: acting as another identity is not supported; only authzid == authcid.
        if let authzid = credentials.authorizationID, authzid != credentials.username {
            return emit(Self.authFailed, &actions)
        }
        requestVerification(credentials, &actions)
    }

    private mutating func acceptLoginUsername(_ decoded: [UInt8], _ actions: inout [SMTPServerAction]) {
        guard !decoded.isEmpty, decoded.count <= SASL.maxFieldLength, !decoded.contains(0),
              let username = String(validating: decoded, as: UTF8.self) else {
            return emit(Self.authFailed, &actions)
        }
        state = .auth(.loginPassword(username))
        emit(SMTPReply(334, nil, "UGFzc3dvcmQ6"), &actions)
    }

    private mutating func requestVerification(_ credentials: SASLCredentials, _ actions: inout [SMTPServerAction]) {
        state = .awaitingAuth
        actions.append(.authenticate(credentials))
    }

    // MARK: - BDAT (RFC 3030)

    /// A BDAT command line: its chunk is always consumed, accepted or not, so the session
    /// stays in sync. Without a parseable size the chunk cannot be found: `501` and close.
    private mutating func handleBDAT(_ arguments: ArraySlice<UInt8>, _ actions: inout [SMTPServerAction]) {
        let (size, result) = SMTPCommand.parseBDAT(arguments)
        guard let size else {
            if case .failure(let reply) = result { emit(reply, &actions) }
            close(&actions)
            return
        }
        var last = false
        var rejection: SMTPReply?
        switch result {
        case .success(.bdat(_, let isLast)): last = isLast
        case .success: break
        case .failure(let reply): rejection = reply
        }
        var transaction: MailTransaction?
        if case .mail(let t) = state { transaction = t }
        if rejection == nil {
            if helo == nil {
                rejection = SMTPReply(503, "5.5.1", "Error: send HELO/EHLO first")
            } else if let t = transaction {
                if t.recipients.isEmpty {
                    rejection = t.rcptAttempted ? SMTPReply(554, "5.5.1", "Error: no valid recipients")
                                                : SMTPReply(503, "5.5.1", "Error: need RCPT command")
                }
            } else {
                rejection = SMTPReply(503, "5.5.1", "Error: need MAIL command")
            }
        }
        var chunk = Chunk(size: size, remaining: size, last: last, transaction: nil, decoder: nil, rejection: rejection)
        state = .idle  // release the transaction so its decoder is moved, not copied
        if rejection == nil, var t = transaction {
            chunk.decoder = t.chunks ?? DataDecoder(
                maxMessageSize: policy.maxMessageSize, maxLineLength: policy.maxTextLineLength,
                maxReceivedHeaders: policy.maxReceivedHeaders, expectedSize: t.parameters.size, framing: .chunked)
            t.chunks = nil
            transaction = t
        }
        chunk.transaction = transaction
        if size == 0 {
            finishChunk(chunk, &actions)
        } else {
            state = .chunk(chunk)
        }
    }

    /// All octets of a chunk arrived: answer it.
    private mutating func finishChunk(_ chunk: consuming Chunk, _ actions: inout [SMTPServerAction]) {
        guard var decoder = chunk.decoder, var transaction = chunk.transaction else {
            state = chunk.transaction.map { .mail($0) } ?? .idle
            emit(chunk.rejection ?? SMTPReply(503, "5.5.1", "Error: need MAIL command"), &actions)
            return
        }
        chunk.decoder = nil
        chunk.transaction = nil
        if chunk.last {
            decoder.finishChunks()
            finishMessage(transaction, &decoder, &actions)
        } else if let reply = decoder.rejection {
            // Known bad already: answer now and end the transaction (RFC 3030 §2: the client RSETs).
            state = .idle
            emit(reply, &actions)
        } else {
            transaction.chunks = decoder
            state = .mail(transaction)
            emit(SMTPReply(250, "2.0.0", "Ok: \(chunk.size) octets received"), &actions)
        }
    }

    // MARK: - End of content

    private mutating func finishMessage(_ transaction: MailTransaction, _ decoder: inout DataDecoder, _ actions: inout [SMTPServerAction]) {
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
                declaredSize: transaction.parameters.size, esmtp: helo.esmtp,
                recipientParameters: transaction.recipientParameters, smtputf8: transaction.parameters.smtputf8,
                dsnReturn: transaction.parameters.ret, envelopeID: transaction.parameters.envelopeID,
                authenticatedUser: authenticatedUser, tls: tls, chunked: decoder.framing == .chunked,
                originalRecipients: transaction.originalRecipients)))
        }
    }

    private mutating func close(_ actions: inout [SMTPServerAction]) {
        state = .closed
        buffer = []
        discardingLine = false
        discardedCR = false
        actions.append(.close)
    }

    /// Appends a reply, merging it into a preceding `.send`.
    private func emit(_ reply: SMTPReply, _ actions: inout [SMTPServerAction]) {
        emitRaw(reply.encoded(), &actions)
    }

    /// Appends raw reply bytes, merging them into a preceding `.send`.
    private func emitRaw(_ bytes: [UInt8], _ actions: inout [SMTPServerAction]) {
        if case .send(var previous)? = actions.last {
            actions.removeLast()
            previous.append(contentsOf: bytes)
            actions.append(.send(previous))
        } else {
            actions.append(.send(bytes))
        }
    }
}
