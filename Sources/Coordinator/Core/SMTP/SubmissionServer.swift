#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HatoShared

/// The coordinator's SMTP submission listener: a thin blocking driver around `SMTPServerSession`.
///
/// One thread per client session. What it adds to the pure session:
/// - **Admission**: at most `smtp.max_connections` sessions, and `smtp.max_connections_per_client`
///   per client address; others get `421 4.7.0` and are closed (RFC 5321 §3.1, §4.5.3.1).
/// - **Timeouts per phase** (RFC 5321 §4.5.3.2): a complete command line must arrive within
///   `smtp.command_timeout` of the previous reply (bytes trickled one at a time do not extend it);
///   DATA/BDAT content runs on a deadline of `smtp.data_timeout` that received octets push back at
///   `minimumDataRate` octets per second, never past `data_timeout` ahead. On expiry the session
///   answers `421 4.4.2` and closes. The TLS handshake must finish within `command_timeout`.
/// - **STARTTLS** (RFC 3207): after `220 2.0.0` the socket is handed to `TLSStream.accept`; bytes
///   the client pipelined after the STARTTLS line were already dropped by the session (and any
///   still in the kernel buffer reach the TLS handshake, which fails on them), so they are never
///   executed (RFC 3207 §4.2, CVE-2011-0411). The session then starts over.
/// - **AUTH** (RFC 4954): credentials are checked by `SubmissionAuthenticator` (PBKDF2, per
///   client address failure limit, success cache).
/// - **Queueing**: a `.store` is carried out synchronously: routing (`PoolRouter`), the RFC 6409
///   §8 fix-ups (`Message-ID`, `Date` when missing), one `Received:` field, then the message and
///   its recipients are written and fsync'd before the session is told and the `250` is sent.
///
/// Replies are written when the input is drained (nothing more readable right now) or 64 KiB of
/// them are pending, so a pipelined group is answered with as few writes as possible and a client
/// that never reads cannot make the server buffer without bound (RFC 2920 §3.2).
public final class SubmissionServer: @unchecked Sendable {
    private let config: ClusterConfig
    private let store: QueueStore
    private let onAccepted: @Sendable () -> Void
    private let clock: any WallClock
    private let router: PoolRouter
    private let authenticator: SubmissionAuthenticator
    private let log = Logger(label: "coordinator.smtp")
    private let lock = NSLock()
    private var listeners: [Socket] = []
    private var tlsContext: TLSContext?
    private var active = 0
    private var perClient: [String: Int] = [:]
    /// The content rate in octets per second that keeps extending the DATA deadline (like
    /// Postfix's `smtpd_min_data_rate`). Default 500.
    public var minimumDataRate: Double = 500

    /// Creates the listener (nothing is bound until `start`).
    /// - Parameters:
    ///   - config: cluster configuration (`smtp` and `routing` sections).
    ///   - store: the durable queue.
    ///   - clock: time source.
    ///   - onAccepted: called on the session's thread once the `250` for a durably queued message is written (or the session ended): dispatches it.
    public init(config: ClusterConfig, store: QueueStore, clock: any WallClock = SystemClock(), onAccepted: @escaping @Sendable () -> Void) {
        self.config = config; self.store = store; self.clock = clock; self.onAccepted = onAccepted
        self.router = PoolRouter(routing: config.routing, pools: config.pools)
        self.authenticator = SubmissionAuthenticator(users: config.smtp.users, maxFailures: config.smtp.authFailureLimit,
                                                     failureWindow: config.smtp.authFailureWindow, clock: clock)
    }

    /// The bound addresses (real ports when configured with port 0).
    public var boundAddresses: [SocketAddress] { lock.withLock { listeners.compactMap(\.localAddress) } }

    /// Sessions in progress (admitted, not yet closed).
    public var activeSessions: Int { lock.withLock { active } }

    /// Loads the STARTTLS certificate (when configured), binds every `smtp.listen` address and
    /// starts accepting.
    /// - Throws: `TLSError(.configuration)` when the certificate or key cannot be loaded;
    ///   `SocketError` when an address cannot be bound.
    public func start() throws {
        if let tls = config.smtp.tls {
            let context = try TLSContext.server(certificateChainPath: tls.certificatePath, privateKeyPath: tls.privateKeyPath)
            lock.withLock { tlsContext = context }
        }
        for addr in config.smtp.listen {
            let l = try Socket.listen(on: addr)
            lock.withLock { listeners.append(l) }
            log.info("smtp listener ready", ["listen": (l.localAddress ?? addr).description,
                                             "starttls": config.smtp.tls == nil ? "no" : "yes",
                                             "auth_users": "\(config.smtp.users.count)"])
            Thread.detachNewThread { [self] in
                while let (conn, peer) = try? l.accept() {
                    Thread.detachNewThread { [self] in serve(conn, peer: peer) }
                }
            }
        }
    }

    /// Closes the listeners (sessions in progress finish on their own).
    public func stop() { for l in lock.withLock({ listeners }) { l.close() } }

    private enum Admission {
        case admitted, serverFull, clientFull
    }

    private func admit(_ host: String) -> Admission {
        lock.withLock {
            if active >= config.smtp.maxConnections { return .serverFull }
            if perClient[host, default: 0] >= config.smtp.maxConnectionsPerClient { return .clientFull }
            active += 1
            perClient[host, default: 0] += 1
            return .admitted
        }
    }

    private func release(_ host: String) {
        lock.withLock {
            active -= 1
            let n = perClient[host, default: 1] - 1
            perClient[host] = n > 0 ? n : nil
        }
    }

    private func serve(_ conn: Socket, peer: SocketAddress) {
        let smtp = config.smtp
        switch admit(peer.host) {
        case .admitted:
            break
        case .serverFull, .clientFull:
            let full = lock.withLock { active >= smtp.maxConnections }
            let text = full ? "\(smtp.hostname) Error: too many connections, try again later"
                            : "\(smtp.hostname) Error: too many connections from \(peer.host), try again later"
            conn.setTimeouts(read: 5, write: 5)
            try? conn.write(SMTPReply(421, "4.7.0", text).encoded())
            conn.close()
            log.warning("connection refused: limit reached", ["client": peer.host, "limit": full ? "max_connections" : "max_connections_per_client"])
            return
        }
        var stream: any ByteStream = conn
        defer {
            stream.close()
            release(peer.host)
        }
        let tlsContext = lock.withLock { self.tlsContext }
        let policy = SMTPServerPolicy(hostname: smtp.hostname, maxMessageSize: smtp.maxMessageSize, maxRecipients: smtp.maxRecipients,
                                      tlsAvailable: tlsContext != nil, requireTLS: smtp.requireTLS, authAvailable: !smtp.users.isEmpty)
        var session = SMTPServerSession(policy: policy, peer: peer, relayPermitted: smtp.mayRelay(peer.host),
                                        plaintextAuthPermitted: smtp.authAllowPlaintextLoopback && SMTPSettings.isLoopback(peer.host))
        if config.suppression.mode == .rejectAtRcpt {
            let store = self.store, settings = config.suppression
            session.recipientCheck = { rcpt, sender in
                store.suppressionReply(recipient: rcpt.address, sender: sender.address, settings: settings, now: Date())
            }
        }
        var out: [UInt8] = []
        // Messages queued whose 250 is not yet written: the scheduler is told once it is
        // (`onAccepted` may grant the lease on this thread, which must not delay the reply).
        var queuedSinceWrite = false
        func announceQueued() {
            if queuedSinceWrite { queuedSinceWrite = false; onAccepted() }
        }
        defer { announceQueued() }
        var buf = [UInt8](repeating: 0, count: 16 * 1024)  // per session: 2000 idle sessions cost 87 KiB each with 64 KiB
        var deadline = Date().addingTimeInterval(smtp.commandTimeout)
        var readingContent = false

        /// Carries out actions; returns false when the session is over.
        func perform(_ actions: [SMTPServerAction]) -> Bool {
            var pending = actions[...]
            while let action = pending.popFirst() {
                var more: [SMTPServerAction] = []
                switch action {
                case .send(let bytes):
                    out.append(contentsOf: bytes)
                case .store(let message):
                    // Replies already produced stay before the DATA reply on the wire.
                    if let id = accept(message) {
                        queuedSinceWrite = true
                        more = session.messageStored(id: id)
                    } else {
                        more = session.messageStoreFailed()
                    }
                case .authenticate(let credentials):
                    let result = authenticator.verify(credentials, client: peer.host)
                    switch result {
                    case .succeeded(let user):
                        log.info("authenticated", ["client": peer.host, "user": user, "mechanism": credentials.mechanism])
                    case .failed:
                        log.warning("authentication failed", ["client": peer.host, "mechanism": credentials.mechanism])
                    case .rateLimited:
                        log.warning("authentication refused: too many failures", ["client": peer.host])
                    case .temporaryFailure:
                        break
                    }
                    more = session.authenticationFinished(result)
                case .startTLS:
                    do { try stream.write(out) } catch { return false }
                    out.removeAll(keepingCapacity: true)
                    announceQueued()
                    if let tlsContext {
                        conn.setTimeouts(read: smtp.commandTimeout, write: smtp.commandTimeout)
                        do {
                            let tls = try TLSStream.accept(over: conn, context: tlsContext)
                            stream = tls
                            more = session.tlsStarted(NegotiatedTLS(protocolVersion: tls.protocolVersion, cipher: tls.cipher))
                            var fields = ["client": peer.host, "protocol": tls.protocolVersion, "cipher": tls.cipher]
                            if session.discardedAfterSTARTTLS > 0 { fields["discarded_octets"] = "\(session.discardedAfterSTARTTLS)" }
                            log.info("TLS established", fields)
                        } catch {
                            log.warning("TLS handshake failed", ["client": peer.host, "error": "\(error)"])
                            more = session.tlsFailed()
                        }
                    } else {
                        more = session.tlsFailed()
                    }
                    deadline = Date().addingTimeInterval(smtp.commandTimeout)
                case .close:
                    try? stream.write(out)
                    out.removeAll()
                    return false
                }
                pending = (more + Array(pending))[...]
            }
            return true
        }

        /// Whether more input can be read without waiting (then replies may wait for it).
        func inputPending() -> Bool {
            if let tls = stream as? TLSStream, tls.bufferedByteCount > 0 { return true }
            return conn.hasReadableInput
        }

        guard perform(session.start()) else { return }
        while true {
            if !out.isEmpty && (out.count >= 64 * 1024 || !inputPending()) {
                conn.setTimeouts(read: smtp.commandTimeout, write: smtp.commandTimeout)
                do { try stream.write(out) } catch { return }
                out.removeAll(keepingCapacity: true)
                announceQueued()
            }
            if session.isReadingContent != readingContent {
                readingContent = session.isReadingContent
                deadline = Date().addingTimeInterval(readingContent ? smtp.dataTimeout : smtp.commandTimeout)
            }
            let remaining = deadline.timeIntervalSinceNow
            guard remaining > 0 else {
                _ = perform(session.timeout())
                log.info("session timed out", ["client": peer.host, "phase": readingContent ? "data" : "command"])
                return
            }
            // 0 would mean "no timeout" to SO_RCVTIMEO: never go below a millisecond.
            conn.setTimeouts(read: max(0.001, remaining), write: smtp.commandTimeout)
            let n: Int
            do {
                n = try buf.withUnsafeMutableBytes { try stream.read(into: $0) }
            } catch let e as SocketError where e.kind == .timeout {
                continue  // the deadline check above answers 421
            } catch {
                return
            }
            if n == 0 { return }
            if readingContent {
                // Received content pushes the deadline back at the minimum rate, at most data_timeout ahead.
                let extended = deadline.addingTimeInterval(Double(n) / max(1, minimumDataRate))
                deadline = min(extended, Date().addingTimeInterval(smtp.dataTimeout))
            }
            let before = out.count
            guard perform(session.receive(buf[0..<n])) else { return }
            // A command was answered: the next one gets a fresh command_timeout.
            if out.count != before && !session.isReadingContent { deadline = Date().addingTimeInterval(smtp.commandTimeout) }
        }
    }

    /// Routes, fixes up, stamps and durably queues a message.
    /// - Returns: the queue id, or nil if it could not be stored (the client gets a 4xx and retries).
    private func accept(_ message: SubmittedMessage) -> String? {
        let now = clock.now()
        let id = Identifier.queueID(now: now)
        let hostname = config.smtp.hostname
        // routing.rules pick the pool; routing headers (X-Hato-Pool) are removed before queueing.
        let route = router.route(authUser: message.authenticatedUser, reversePath: message.reversePath.address, content: message.body)
        // RFC 6409 §8.3: a submission server adds Date and Message-ID when missing.
        let fixed = SubmissionFixups.apply(to: route.content, messageID: "<\(id)@\(hostname)>", date: now)
        let received = ReceivedHeader.build(heloName: message.heloName, peer: message.peer, hostname: hostname,
                                            protocol: message.protocolKeyword, tls: message.tls, id: id,
                                            recipient: message.recipients.count == 1 ? message.recipients.first : nil, date: now)
        var content = received
        content.reserveCapacity(received.count + fixed.content.count)
        content.append(contentsOf: fixed.content)
        let record = NewMessage(id: id, reversePath: message.reversePath.address,
                                recipients: message.recipients.map(\.address), pool: route.pool,
                                content: content, heloName: message.heloName,
                                clientAddress: message.peer.host, receivedAt: now,
                                authenticatedUser: message.authenticatedUser, dsnReturn: message.dsnReturn,
                                envelopeID: message.envelopeID, recipientParameters: message.recipientParameters)
        do {
            try store.enqueue(record)
        } catch {
            log.error("queue write failed; message refused with 451", ["error": "\(error)"])
            return nil
        }
        var fields = ["id": id, "pool": route.pool, "route": route.reason, "client": message.peer.host,
                      "size": "\(record.content.count)", "recipients": "\(record.recipients.count)", "protocol": message.protocolKeyword]
        if let user = message.authenticatedUser { fields["user"] = user }
        if !fixed.added.isEmpty { fields["added"] = fixed.added.joined(separator: ",") }
        log.info("message queued", fields)
        return id
    }
}
