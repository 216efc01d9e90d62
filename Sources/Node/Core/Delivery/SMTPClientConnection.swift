import Foundation
import HatoIO
import HatoSupport
import SMTPCore

/// The negotiated parameters of a TLS session.
public struct TLSSessionInfo: Sendable, Equatable, Hashable {
    /// The protocol version, e.g. `TLSv1.3`.
    public var version: String
    /// The cipher suite, e.g. `TLS_AES_256_GCM_SHA384`.
    public var cipher: String
    /// Whether the server's certificate verified for the MX host name (reported, not enforced).
    public var verified: Bool
    /// How the session was authenticated under a policy: `dane` (RFC 7672) or `mta-sts`
    /// (RFC 8461); nil for opportunistic TLS. A pooled session is reused under a policy only
    /// when this matches.
    public var authentication: String? = nil

    /// Session parameters from their parts.
    public init(version: String, cipher: String, verified: Bool = false) {
        self.version = version; self.cipher = cipher; self.verified = verified
    }
}

/// The TLS client the SMTP driver uses for STARTTLS (RFC 3207).
public protocol OutboundTLSClient: Sendable {
    /// Runs the TLS client handshake over an SMTP connection that has just received `220` to STARTTLS.
    /// - Parameters:
    ///   - socket: the connected socket; its timeouts bound the handshake.
    ///   - serverName: the MX host name (SNI).
    ///   - timeout: seconds the handshake may take.
    /// - Returns: the encrypted stream and the negotiated version and cipher.
    /// - Throws: any error when the handshake fails.
    func secure(_ socket: Socket, serverName: String, timeout: TimeInterval) throws -> (stream: any ByteStream, info: TLSSessionInfo)
}

/// Why a connection could not be opened to one target.
public struct SMTPOpenFailure: Error, Sendable, Equatable, CustomStringConvertible {
    /// The target.
    public let target: DeliveryTarget
    /// True when the TCP connection itself failed (refused, unreachable, timeout).
    public let connectFailed: Bool
    /// The deferral for the recipients if no other target works: a 4yz code with a `4.x.x`
    /// enhanced status code.
    public let reply: DeliveryStatus
    /// The TLS handshake failed: an opportunistic sender may retry this target in plaintext.
    public let tlsHandshakeFailed: Bool

    /// A failure from its parts.
    public init(target: DeliveryTarget, connectFailed: Bool, reply: DeliveryStatus, tlsHandshakeFailed: Bool) {
        self.target = target; self.connectFailed = connectFailed; self.reply = reply; self.tlsHandshakeFailed = tlsHandshakeFailed
    }

    /// The TCP connection to `target` failed: 451 4.4.1 (RFC 3463 §3.5, no answer from host).
    /// - Parameters:
    ///   - target: the target.
    ///   - why: what the connect call reported.
    public static func cannotConnect(to target: DeliveryTarget, _ why: String) -> SMTPOpenFailure {
        SMTPOpenFailure(target: target, connectFailed: true, reply: .localDeferral(4, 1, "cannot connect: \(why)"), tlsHandshakeFailed: false)
    }

    /// `target: text`.
    public var description: String { "\(target): \(reply.text)" }
}

/// One open SMTP client session (plain or STARTTLS) to one target from one sending IP, ready
/// for mail transactions; the I/O shell around `SMTPClientHandshake` and `SMTPClientTransaction`.
///
/// Blocking I/O on the calling thread with per-phase timeouts (RFC 5321 §4.5.3.2), measured
/// on the monotonic clock. A connection is used by one thread at a time: the pool hands it out
/// to one delivery and takes it back before anyone else gets it.
// @unchecked Sendable: it owns a socket (and maybe an `SSL*`), which one thread at a time uses.
public final class SMTPClientConnection: @unchecked Sendable, CustomStringConvertible {
    /// Where the session goes.
    public let target: DeliveryTarget
    /// The local source address.
    public let sendingIP: String
    /// The EHLO name used.
    public let heloName: String
    /// What the server offers (after STARTTLS: the second EHLO's answer).
    public let capabilities: RemoteSMTPCapabilities
    /// The TLS parameters, or nil for a plaintext session.
    public let tls: TLSSessionInfo?
    /// When the TCP connection was made (monotonic).
    public let openedAt: ContinuousClock.Instant
    /// Seconds the TCP handshake took.
    public let connectSeconds: TimeInterval
    /// Seconds from connected to ready (greeting, EHLO, STARTTLS).
    public let setupSeconds: TimeInterval
    /// Mail transactions started on this session (MAIL FROM sent).
    public private(set) var transactions = 0
    /// When the session last finished a command exchange (monotonic).
    public private(set) var lastUsed: ContinuousClock.Instant
    /// Whether the connection was closed.
    public private(set) var isClosed = false
    /// Whether the server may still hold transaction state (the last transaction did not end
    /// at the reply to its content), so RSET must precede the next MAIL (RFC 5321 §4.1.1.5).
    public private(set) var needsReset = false

    /// Shaping bookkeeping, set by `SMTPConnectionPool`.
    var shapingKey: ShapingKey? = nil
    /// The messages-per-connection limit that applies (set by the pool; 0 = unlimited).
    var messageLimit = 0

    private let socket: Socket
    private let stream: any ByteStream
    private let reader: BufferedReader
    private let timeouts: SMTPClientTimeouts

    private init(target: DeliveryTarget, sendingIP: String, heloName: String, capabilities: RemoteSMTPCapabilities,
                 tls: TLSSessionInfo?, openedAt: ContinuousClock.Instant, connectSeconds: TimeInterval, setupSeconds: TimeInterval,
                 socket: Socket, stream: any ByteStream, reader: BufferedReader, timeouts: SMTPClientTimeouts) {
        self.target = target; self.sendingIP = sendingIP; self.heloName = heloName
        self.capabilities = capabilities; self.tls = tls; self.openedAt = openedAt
        self.connectSeconds = connectSeconds; self.setupSeconds = setupSeconds
        self.socket = socket; self.stream = stream; self.reader = reader; self.timeouts = timeouts
        self.lastUsed = .now
    }

    deinit { if !isClosed { stream.close(); socket.close() } }

    /// `target from sendingIP`.
    public var description: String { "\(target) from \(sendingIP)" }

    /// The route the session serves (sending IP, HELO name, target).
    public var route: SessionRoute { SessionRoute(sendingIP: sendingIP, heloName: heloName, target: target) }

    /// Connects and sets the session up: greeting, EHLO/HELO, STARTTLS per `tlsPolicy`.
    /// - Parameters:
    ///   - target: where to connect.
    ///   - sendingIP: the local address to bind ("" lets the kernel choose).
    ///   - heloName: the EHLO name.
    ///   - tlsPolicy: STARTTLS policy.
    ///   - tlsClient: the TLS implementation, or nil when none is available.
    ///   - timeouts: connect and per-phase timeouts.
    /// - Returns: a ready session, or why not.
    public static func open(to target: DeliveryTarget, from sendingIP: String, heloName: String,
                            tlsPolicy: SMTPTLSPolicy, tlsClient: (any OutboundTLSClient)?,
                            timeouts: SMTPClientTimeouts) -> Result<SMTPClientConnection, SMTPOpenFailure> {
        var handshake = SMTPClientHandshake(heloName: heloName, tlsPolicy: tlsPolicy, tlsAvailable: tlsClient != nil)
        func failure(_ f: SMTPClientHandshake.Failure?) -> SMTPOpenFailure {
            let f = f ?? SMTPClientHandshake.Failure(reply: .localDeferral(4, 0, "session set-up failed"), tlsHandshakeFailed: false)
            return SMTPOpenFailure(target: target, connectFailed: false, reply: f.reply, tlsHandshakeFailed: f.tlsHandshakeFailed)
        }
        if handshake.state == .failed { return .failure(failure(handshake.failure)) }
        let start = ContinuousClock.now
        let socket: Socket
        do {
            socket = try Socket.connect(to: SocketAddress(host: target.address, port: target.port),
                                        from: sendingIP.isEmpty ? nil : sendingIP, timeout: timeouts.connect)
        } catch {
            return .failure(.cannotConnect(to: target, "\(error)"))
        }
        let connected = ContinuousClock.now
        var stream: any ByteStream = socket
        var reader = BufferedReader(stream: socket, chunkSize: 16 * 1024)
        var tls: TLSSessionInfo? = nil
        var actions: [SMTPClientHandshake.Action] = []
        while true {
            var index = 0
            while index < actions.count {
                let action = actions[index]
                index += 1
                switch action {
                case .send(let bytes):
                    do {
                        socket.setTimeouts(read: timeouts.ehlo, write: timeouts.ehlo)
                        try stream.write(bytes)
                    } catch {
                        actions += handshake.fail(sessionFailure(error, while: "sending a command"))
                    }
                case .startTLS:
                    // RFC 3207 §4.2 / CVE-2011-0411: nothing may follow the 220 before the handshake.
                    if !reader.buffered.isEmpty {
                        actions += handshake.fail(.protocolError("the server sent \(reader.buffered.count) octets after its 220 reply to STARTTLS"))
                        continue
                    }
                    guard let tlsClient else {
                        actions += handshake.tlsFailed("no TLS client")
                        continue
                    }
                    do {
                        socket.setTimeouts(read: timeouts.startTLS, write: timeouts.startTLS)
                        let secured = try tlsClient.secure(socket, serverName: target.host, timeout: timeouts.startTLS)
                        stream = secured.stream
                        reader = BufferedReader(stream: secured.stream, chunkSize: 16 * 1024)
                        tls = secured.info
                        actions += handshake.tlsEstablished()
                    } catch {
                        actions += handshake.tlsFailed("\(error)")
                    }
                case .ready:
                    let caps = handshake.capabilities ?? RemoteSMTPCapabilities()
                    return .success(SMTPClientConnection(
                        target: target, sendingIP: sendingIP, heloName: heloName, capabilities: caps, tls: tls,
                        openedAt: start, connectSeconds: (connected - start).inSeconds,
                        setupSeconds: (ContinuousClock.now - connected).inSeconds, socket: socket, stream: stream,
                        reader: reader, timeouts: timeouts))
                case .close:
                    stream.close()
                    socket.close()
                    return .failure(failure(handshake.failure))
                }
            }
            actions = []
            guard let wait = handshake.waitingFor else {
                stream.close(); socket.close()
                return .failure(failure(handshake.failure))
            }
            do {
                let reply = try readReply(reader, socket: socket, timeout: timeouts.seconds(for: wait))
                actions = handshake.receive(reply)
            } catch {
                actions = handshake.fail(sessionFailure(error, while: "waiting for the \(describe(wait)) reply"))
            }
        }
    }

    /// Runs one mail transaction to its end.
    ///
    /// The message content (and its final dot or last BDAT chunk) is never written after
    /// `notAfter`: the transaction is abandoned and the connection closed instead (lease fencing).
    /// - Parameters:
    ///   - transaction: a transaction built for `capabilities`; finished on return.
    ///   - message: the exact message bytes (CRLF line ends, signed), not dot-stuffed.
    ///   - notAfter: the lease deadline on the monotonic clock, or nil.
    public func run(_ transaction: inout SMTPClientTransaction, message: [UInt8], notAfter: ContinuousClock.Instant? = nil) {
        guard !isClosed else {
            _ = transaction.fail(.connectionClosed("the connection is closed"))
            return
        }
        var actions = transaction.start()
        if case .awaitingEnvelope = transaction.state { transactions += 1 }
        while true {
            for action in actions {
                do {
                    switch action {
                    case .send(let bytes):
                        socket.setTimeouts(read: timeouts.mail, write: timeouts.mail)
                        try stream.write(bytes)
                    case .sendData:
                        socket.setTimeouts(read: timeouts.dataBlock, write: timeouts.dataBlock)
                        try SMTPDotStuffing.encode(message) { chunk in
                            if let notAfter, ContinuousClock.now >= notAfter { throw LeaseDeadlinePassed() }
                            transaction.contentWillBeWritten()
                            try stream.write(chunk)
                        }
                    case .sendChunk(let commands, let offset, let length, let last):
                        socket.setTimeouts(read: timeouts.dataBlock, write: timeouts.dataBlock)
                        var out = commands
                        out.append(contentsOf: "BDAT \(length)\(last ? " LAST" : "")\r\n".utf8)
                        var position = offset
                        let end = min(message.count, offset + length)
                        repeat {
                            if let notAfter, ContinuousClock.now >= notAfter { throw LeaseDeadlinePassed() }
                            let next = min(end, position + 64 * 1024)
                            out.append(contentsOf: message[position..<next])
                            transaction.contentWillBeWritten()
                            try stream.write(out)
                            out.removeAll(keepingCapacity: true)
                            position = next
                        } while position < end
                    case .finished(let reusable):
                        lastUsed = .now
                        needsReset = !transaction.endedAtContentReply
                        if !reusable { close() }
                        return
                    }
                } catch {
                    _ = transaction.fail(SMTPClientConnection.sessionFailure(error, while: "sending"))
                    close()
                    return
                }
            }
            guard let wait = transaction.waitingFor else {
                lastUsed = .now
                return
            }
            do {
                let reply = try SMTPClientConnection.readReply(reader, socket: socket, timeout: timeouts.seconds(for: wait))
                actions = transaction.receive(reply)
            } catch {
                actions = transaction.fail(SMTPClientConnection.sessionFailure(error, while: "waiting for the \(SMTPClientConnection.describe(wait)) reply"))
            }
        }
    }

    /// Sends RSET and reads its reply (RFC 5321 §4.1.1.5), before reusing the session.
    /// - Returns: true when the server answered 2xx; otherwise the connection is closed.
    public func reset() -> Bool {
        guard !isClosed else { return false }
        do {
            socket.setTimeouts(read: timeouts.rset, write: timeouts.rset)
            try stream.write(Array("RSET\r\n".utf8))
            let reply = try SMTPClientConnection.readReply(reader, socket: socket, timeout: timeouts.rset)
            if reply.replyCode.isPositiveCompletion {
                lastUsed = .now
                needsReset = false
                return true
            }
        } catch {}
        close()
        return false
    }

    /// Makes an idle session ready for its next transaction, with no round trip when it can.
    ///
    /// After a transaction that ended at its content reply the server's state is already clear
    /// (RFC 5321 §4.1.1.4), so a session with nothing pending to read goes straight to MAIL —
    /// one round trip less per reused message. RSET is sent (and its reply checked) when the
    /// last transaction ended elsewhere, or when the server sent something unasked (a 421,
    /// its close, or a TLS post-handshake record): RSET then reads past it or finds the
    /// session dead. A session that dies between this check and MAIL fails with no reply at
    /// all (`SMTPClientTransaction.repliesReceived == 0`), which the caller retries on a new one.
    /// A session idle for more than `timeouts.unprobedIdle` seconds is probed with RSET too: a peer
    /// or middlebox that dropped it silently (no FIN, no RST) is then found within the RSET
    /// timeout rather than the far longer MAIL timeout.
    /// - Returns: whether the session can be used (otherwise it is closed), and whether RSET
    ///   was sent to find out.
    public func prepareForReuse() -> (usable: Bool, probedWithReset: Bool) {
        guard !isClosed else { return (false, false) }
        if needsReset || !reader.buffered.isEmpty || socket.hasPendingInput
            || ContinuousClock.now - lastUsed > .seconds(timeouts.unprobedIdle) {
            return (reset(), true)
        }
        return (true, false)
    }

    /// Sends QUIT, waits for its reply and for the server to close its side (at most the quit
    /// timeout), then closes (RFC 5321 §4.1.1.10: the receiver closes after its 221).
    public func quit() {
        guard !isClosed else { return }
        do {
            socket.setTimeouts(read: timeouts.quit, write: timeouts.quit)
            try stream.write(Array("QUIT\r\n".utf8))
            _ = try SMTPClientConnection.readReply(reader, socket: socket, timeout: timeouts.quit)
            let deadline = ContinuousClock.now + .seconds(min(timeouts.quit, 2))
            reader.discardBuffered()
            while ContinuousClock.now < deadline {
                socket.setTimeouts(read: max(0.001, (deadline - ContinuousClock.now).inSeconds), write: 1)
                if try reader.fill() == 0 { break }
                reader.discardBuffered()
            }
        } catch {}
        close()
    }

    /// Closes the connection without QUIT (idempotent).
    public func close() {
        guard !isClosed else { return }
        isClosed = true
        stream.close()
        socket.close()
    }

    // MARK: Reading

    /// Reads one complete reply within `timeout` seconds overall (monotonic).
    /// - Throws: `SocketError` (timeout, closed) or `SMTPProtocolError` (bad syntax, overlong).
    static func readReply(_ reader: BufferedReader, socket: Socket, timeout: TimeInterval) throws -> SMTPReply {
        let deadline = ContinuousClock.now + .seconds(timeout)
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
    private static func readLine(_ reader: BufferedReader, socket: Socket, deadline: ContinuousClock.Instant) throws -> [UInt8] {
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
            let remaining = (deadline - ContinuousClock.now).inSeconds
            if remaining <= 0 { throw SocketError(.timeout, "read") }
            // The read waits the time left (a timeout already set that is at most 1 % longer is
            // kept: no system call per reply while a phase's timeout stands).
            socket.setReadTimeout(notBefore: max(0.001, remaining))
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
            default: return .connectionClosed("\(doing): \(e)")
            }
        }
        return .connectionClosed("\(doing): \(error)")
    }

    static func describe(_ wait: SMTPClientWait) -> String {
        switch wait {
        case .greeting: return "greeting"
        case .ehlo: return "EHLO"
        case .startTLS: return "STARTTLS"
        case .mail: return "MAIL"
        case .rcpt: return "RCPT"
        case .dataInitiation: return "DATA"
        case .dataTermination: return "end-of-data"
        case .reset: return "RSET"
        case .quit: return "QUIT"
        }
    }
}

/// Thrown inside the content writer when the lease deadline passed: the transaction is
/// abandoned before its final dot, so the recipients stay undelivered here.
struct LeaseDeadlinePassed: Error {}
