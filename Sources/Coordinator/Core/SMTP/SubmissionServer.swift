#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HatoConfig
import HatoCrypto
import HatoIO
import HatoSupport
import SMTPCore

/// The coordinator's SMTP submission listener: thin drivers around `SMTPServerSession`.
///
/// Sessions run on event loops (`SubmissionLoop`: non-blocking, many sessions per thread); a
/// queue write runs on a store thread, and AUTH, STARTTLS and store-backed RCPT checks hand the
/// session to a thread of its own with the blocking driver (`runBlocking`). What the drivers
/// add to the pure session:
/// - **Admission**: one `Acceptor` per `smtp.listen` address, sharing one `AdmissionControl`:
///   at most `smtp.max_connections` sessions, and `smtp.max_connections_per_client` per client
///   (an IPv4 address, an IPv6 /64); others get `421 4.7.0` on the accepting thread and are
///   closed, without a session thread (RFC 5321 §3.1, §4.5.3.1, §3.8).
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
/// - **Queueing**: a `.store` is carried out on a store thread: routing (`PoolRouter`), the RFC 6409
///   §8 fix-ups (`Message-ID`, `Date` when missing), one `Received:` field, then the message and
///   its recipients are written and fsync'd before the session is told and the `250` is sent.
/// - **Feedback reports** (issue 18): mail to `reputation.feedback_addresses` is accepted from
///   any client and consumed by `FeedbackIntake` (a complaint recorded, the recipient
///   suppressed) instead of being queued; other recipients of the same message are queued as usual.
/// - **Guards** (`SubmissionGuards`): the queue's disk headroom at MAIL (`smtp.queue_min_free`,
///   `452 4.3.1`), `452 4.3.1` for a write that fails with `SQLITE_FULL`, and the postmaster rate
///   limit for clients that may not relay (`452 4.7.1`).
///
/// Replies are written when the input is drained (nothing more readable right now) or 64 KiB of
/// them are pending, so a pipelined group is answered with as few writes as possible and a client
/// that never reads cannot make the server buffer without bound (RFC 2920 §3.2).
///
/// Checked `Sendable`: the listeners, TLS context and data rate live in `Locked`s.
public final class SubmissionServer: Sendable {
    /// The configuration the listener started with (listen addresses, TLS, users, limits, guards).
    private let config: ClusterConfig
    /// What a reload changes for the next session and the next message: the configuration in
    /// force (`ConfigReload.coordinatorConfig`: relay networks, recipient limit, timeouts) and
    /// the pool router built from its `routing` and `pools`.
    private let current: Locked<(config: ClusterConfig, router: PoolRouter)>
    private let store: any QueueStore
    private let onAccepted: @Sendable () -> Void
    /// Called with each queued message's id and content, for the grant that follows
    /// (`ClusterHub.keepContent`); nil keeps none.
    private let keepContent: (@Sendable (String, [UInt8]) -> Void)?
    /// Drops content kept before a commit that failed (`ClusterHub.forgetContent`); nil: nothing.
    private let forgetContent: (@Sendable (String) -> Void)?
    private let clock: any WallClock
    private let authenticator: SubmissionAuthenticator
    private let guards: SubmissionGuards
    private let metrics: CoordinatorMetrics?
    /// The tenant tables (issue 16): tenant SMTP users, their domains, limits and state.
    private let tenants: TenantDirectory?
    /// Abuse feedback reports to `reputation.feedback_addresses` (issue 18).
    private let feedback: FeedbackIntake
    private let log = Logger(label: "coordinator.smtp")
    private let acceptors = Locked<[Acceptor]>([])
    /// The event loops sessions run on (`SubmissionLoop`), and the next one to get a session.
    private let loops = Locked<(all: [SubmissionLoop], next: Int, committer: SubmissionCommitter?, ended: Int)>(([], 0, nil, 0))
    private let tls = Locked<TLSContext?>(nil)
    private let dataRate = Locked<Double>(500)
    /// The session counts and limits shared by every listen address.
    private let admission: AdmissionControl
    /// The memory all sessions may use for content being received (`smtp.max_content_memory`).
    private let contentMemory: ContentMemory
    /// The content rate in octets per second that keeps extending the DATA deadline (like
    /// Postfix's `smtpd_min_data_rate`). Default 500.
    public var minimumDataRate: Double {
        get { dataRate.snapshot }
        set { dataRate.withLock { $0 = newValue } }
    }

    /// Creates the listener (nothing is bound until `start`).
    /// - Parameters:
    ///   - config: cluster configuration (`smtp` and `routing` sections).
    ///   - store: the durable queue.
    ///   - clock: time source.
    ///   - metrics: where refusals and the queue's free space are published (nil: nowhere).
    ///   - headroom: the queue's disk headroom check (default: `statvfs` of `coordinator.data_dir`).
    ///   - tenants: the tenant tables (nil: no tenants, only `smtp.users`).
    ///   - keepContent: called with each queued message's id and content, so its first grant need not read it back (nil: not called).
    ///   - forgetContent: called with the id of a message kept before its commit (`keepForGrant`) whose commit failed.
    ///   - onAccepted: called once a message is durably queued — on the committer thread as its batch commits (event-loop
    ///     sessions), or on the session's thread once its `250` is written (sessions on the blocking driver) —: dispatches it.
    public init(config: ClusterConfig, store: any QueueStore, clock: any WallClock = SystemClock(), metrics: CoordinatorMetrics? = nil,
                headroom: QueueHeadroom? = nil, tenants: TenantDirectory? = nil, keepContent: (@Sendable (String, [UInt8]) -> Void)? = nil,
                forgetContent: (@Sendable (String) -> Void)? = nil, onAccepted: @escaping @Sendable () -> Void) {
        self.config = config; self.store = store; self.clock = clock; self.onAccepted = onAccepted; self.metrics = metrics
        self.keepContent = keepContent
        self.forgetContent = forgetContent
        self.tenants = tenants
        self.feedback = FeedbackIntake(config: config, store: store, metrics: metrics, clock: clock)
        let contentMemory = ContentMemory(limit: config.smtp.contentMemoryLimit)
        self.contentMemory = contentMemory
        if let metrics {
            let gauge = metrics.smtpContentMemory
            metrics.registry.addCollector { gauge.set(Double(contentMemory.reserved)) }
        }
        self.guards = SubmissionGuards(config: config, clock: clock, metrics: metrics,
                                       headroom: headroom ?? QueueHeadroom(directory: config.coordinator.dataDir, minFree: config.smtp.queueMinFree,
                                                                           spoolThreshold: (store as? SQLiteQueueStore)?.spoolThreshold),
                                       contentMemory: contentMemory)
        self.current = Locked((config, PoolRouter(routing: config.routing, pools: config.pools)))
        self.authenticator = SubmissionAuthenticator(users: config.smtp.users, maxFailures: config.smtp.authFailureLimit,
                                                     failureWindow: config.smtp.authFailureWindow, clock: clock,
                                                     moreUsers: SubmissionServer.tenantUsers(tenants))
        self.admission = AdmissionControl(limits: AdmissionLimits(maxConnections: config.smtp.maxConnections,
                                                                  maxConnectionsPerPeer: config.smtp.maxConnectionsPerClient))
    }

    /// The tenant SMTP users' lookup for the authenticator (nil without tenants).
    private static func tenantUsers(_ tenants: TenantDirectory?) -> (@Sendable (String) -> PasswordHash?)? {
        guard let tenants else { return nil }
        return { name in tenants.smtpUser(name)?.hash }
    }

    /// Applies a reloaded configuration: `routing` and `pools` from the next message on, the
    /// live `smtp` keys from the next session on (pass `ConfigReload.coordinatorConfig`, whose
    /// other `smtp` keys are still the ones in force).
    public func apply(_ config: ClusterConfig) {
        let router = PoolRouter(routing: config.routing, pools: config.pools)
        current.withLock { $0 = (config, router) }
        feedback.apply(config)
    }

    /// The bound addresses (real ports when configured with port 0).
    public var boundAddresses: [SocketAddress] { acceptors.withLock { $0.map(\.address) } }

    /// Sessions in progress (admitted, not yet closed).
    public var activeSessions: Int { admission.openConnections }

    /// Octets of message content held in memory by all sessions now (at most `smtp.max_content_memory`).
    public var contentMemoryInUse: Int { contentMemory.reserved }

    /// Loads the STARTTLS certificate (when configured), binds every `smtp.listen` address and
    /// starts accepting.
    /// - Throws: `TLSError(.configuration)` when the certificate or key cannot be loaded;
    ///   `SocketError` when an address cannot be bound.
    public func start() throws {
        if let tls = config.smtp.tls {
            let context = try TLSContext.server(certificateChainPath: tls.certificatePath, privateKeyPath: tls.privateKeyPath)
            self.tls.withLock { $0 = context }
        }
        let hostname = config.smtp.hostname
        // RFC 5321 §3.8: a server that cannot serve a connection answers 421 and closes.
        let refusal: Acceptor.Refusal = { peer, reason in
            let text = reason.isPerPeer ? "\(hostname) Error: too many connections from \(peer.host), try again later"
                                        : "\(hostname) Error: too many connections, try again later"
            return SMTPReply(421, "4.7.0", text).encoded()
        }
        // The tenant tables are read once here, not by the first session on a loop.
        _ = tenants?.hasSMTPUsers
        if loops.withLock({ $0.all.isEmpty }) {
            let committer = SubmissionCommitter(server: self, store: store)
            let made = try (0..<SubmissionServer.loopCount).map { try SubmissionLoop(server: self, committer: committer, index: $0) }
            loops.withLock { $0 = (made, 0, committer, 0) }
        }
        var acceptorConfiguration = Acceptor.Configuration(name: "smtp")
        acceptorConfiguration.handsOff = true
        for addr in config.smtp.listen {
            let acceptor = try Acceptor(address: addr, configuration: acceptorConfiguration, admission: admission,
                                        refusal: refusal, handler: { [self] in nextLoop().adopt($0) })
            acceptors.withLock { $0.append(acceptor) }
            log.info("smtp listener ready", ["listen": acceptor.address.description,
                                             "starttls": config.smtp.tls == nil ? "no" : "yes",
                                             "auth_users": "\(config.smtp.users.count)"])
            acceptor.start()
        }
    }

    /// Closes the listeners (sessions in progress finish on their own; then the event loops end).
    public func stop() {
        for a in acceptors.snapshot { a.stop() }
        for l in loops.withLock({ $0.all }) { l.stop() }
    }

    /// A loop ended after `stop` (its last session gone): the committer ends with the last one.
    func loopEnded() {
        let committer = loops.withLock { l -> SubmissionCommitter? in
            l.ended += 1
            return l.ended == l.all.count ? l.committer : nil
        }
        committer?.stop()
    }

    /// Event loops for sessions: one per two cores, at most four (each serves thousands of
    /// sessions; queue writes, AUTH and TLS run on other threads).
    static var loopCount: Int { max(1, min(4, ProcessInfo.processInfo.activeProcessorCount / 2)) }

    /// The loop for the next session (round robin).
    private func nextLoop() -> SubmissionLoop {
        loops.withLock { l in
            defer { l.next = (l.next + 1) % l.all.count }
            return l.all[l.next]
        }
    }

    /// A new session's state: the policy and checks of the configuration in force now.
    /// Counts the session in the metrics (`finish` counts it out).
    func makeSession(_ accepted: AcceptedConnection) -> SubmissionSessionState {
        let config = current.withLock { $0.config }
        let smtp = config.smtp
        let peer = accepted.peer
        metrics?.smtpSessions.inc()
        metrics?.smtpSessionsOpen.add(1)
        let tlsContext = tls.snapshot
        var policy = SMTPServerPolicy(hostname: smtp.hostname, maxMessageSize: smtp.maxMessageSize, maxRecipients: smtp.maxRecipients,
                                      tlsAvailable: tlsContext != nil, requireTLS: smtp.requireTLS,
                                      authAvailable: !smtp.users.isEmpty || (tenants?.hasSMTPUsers ?? false),
                                      postmaster: smtp.postmaster)
        policy.feedbackAddresses = config.reputation.feedbackAddresses
        var session = SMTPServerSession(policy: policy, peer: peer, relayPermitted: smtp.mayRelay(peer.host),
                                        plaintextAuthPermitted: smtp.authAllowPlaintextLoopback && SMTPSettings.isLoopback(peer.host))
        guards.install(on: &session, peer: peer)
        if config.suppression.mode == .rejectAtRcpt {
            let store = self.store, settings = config.suppression
            session.recipientCheck = { rcpt, sender in
                store.suppressionReply(recipient: rcpt.address, sender: sender.address, settings: settings, now: Date())
            }
        }
        // The tenant of the AUTH user (issue 16), set when AUTH succeeds.
        let tenantSession = TenantSMTPSession()
        if let tenants { tenantSession.install(on: &session, tenants: tenants, clock: clock) }
        let state = SubmissionSessionState(accepted: accepted, session: session, tenantSession: tenantSession,
                                           reservation: ContentMemory.Reservation(contentMemory), smtp: smtp, tlsContext: tlsContext,
                                           minimumDataRate: minimumDataRate)
        state.checksReadStore = config.suppression.mode == .rejectAtRcpt
        return state
    }

    /// Ends a session on the thread that owns it: tells the scheduler about messages whose
    /// `250` went out, closes the stream and gives the admission slot back.
    func finish(_ s: SubmissionSessionState) {
        announceQueued(s)
        s.stream.close()
        s.admission.release()
        metrics?.smtpSessionsOpen.add(-1)
    }

    /// Messages queued whose `250` is written: the scheduler is told once it is (`onAccepted`
    /// may grant the lease at once, which must not delay the reply).
    func announceQueued(_ s: SubmissionSessionState) {
        if s.queuedSinceWrite { s.queuedSinceWrite = false; onAccepted() }
    }

    /// Durably queued messages, from the committer thread: wakes the scheduler and the
    /// reporter (a signal each; nothing is granted on the calling thread).
    func announceAccepted() { onAccepted() }

    /// Keeps the reservation equal to the content the session holds; sheds the content when
    /// its growth does not fit the budget (the message then gets 452 4.3.1 at its end).
    func accountContent(_ s: SubmissionSessionState, releasing: Bool) {
        if !s.reservation.update(to: s.session.contentMemoryOctets, releasing: releasing) {
            s.session.shedContent()
            _ = s.reservation.update(to: s.session.contentMemoryOctets)
            metrics?.smtpRefusals.inc("max_content_memory")
            log.warning("content memory exhausted; message will get 452 4.3.1",
                        ["client": s.peer.host, "limit": "\(contentMemory.limit)", "in_use": "\(contentMemory.reserved)"])
        }
    }

    /// Counts a reply in `hato_smtp_replies_total{code}` and queues it for writing.
    func queueReply(_ s: SubmissionSessionState, _ bytes: [UInt8]) {
        s.out.append(contentsOf: bytes)
        s.repliesQueued += 1
        if let metrics, bytes.count >= 3 { metrics.smtpReplies.inc(String(decoding: bytes[0..<3], as: UTF8.self)) }
    }

    /// Queues the message durably (this thread waits for the fsync) and tells the session.
    /// - Returns: the session's next actions.
    func store(_ message: SubmittedMessage, for s: SubmissionSessionState) -> [SMTPServerAction] {
        switch accept(message, tenantSession: s.tenantSession) {
        case .success(let id):
            s.queuedSinceWrite = true
            return s.session.messageStored(id: id)
        case .failure(let failure):
            return s.session.messageStoreFailed(failure)
        }
    }

    /// Checks AUTH credentials (PBKDF2: this thread computes) and tells the session.
    /// - Returns: the session's next actions.
    func authenticate(_ credentials: SASLCredentials, for s: SubmissionSessionState) -> [SMTPServerAction] {
        let peer = s.peer
        let result = authenticator.verify(credentials, client: peer.host)
        switch result {
        case .succeeded(let user):
            // A cluster.yml user wins over a tenant user of the same name (as in
            // the authenticator): its mail is no tenant's.
            let tenant = self.config.smtp.users.contains { $0.name == user } ? nil : tenants?.tenant(ofUser: user)
            s.tenantSession.authenticated(user: user, tenant: tenant?.name)
            var fields = ["client": peer.host, "user": user, "mechanism": credentials.mechanism]
            if let tenant { fields["tenant"] = tenant.name }
            log.info("authenticated", fields)
        case .failed:
            log.warning("authentication failed", ["client": peer.host, "mechanism": credentials.mechanism])
        case .rateLimited:
            log.warning("authentication refused: too many failures", ["client": peer.host])
        case .temporaryFailure:
            break
        }
        return s.session.authenticationFinished(result)
    }

    /// Carries out actions on a session thread (blocking: queue writes, AUTH, the TLS
    /// handshake). Returns false when the session is over.
    func performBlocking(_ s: SubmissionSessionState, _ actions: [SMTPServerAction]) -> Bool {
        var pending = actions[...]
        while let action = pending.popFirst() {
            var more: [SMTPServerAction] = []
            switch action {
            case .send(let bytes):
                queueReply(s, bytes)
            case .store(let message):
                // Replies already produced stay before the DATA reply on the wire.
                more = store(message, for: s)
            case .authenticate(let credentials):
                more = authenticate(credentials, for: s)
            case .startTLS:
                do { try s.stream.write(s.out) } catch { return false }
                s.out.removeAll(keepingCapacity: true)
                announceQueued(s)
                if let tlsContext = s.tlsContext {
                    s.conn.setTimeouts(read: s.smtp.commandTimeout, write: s.smtp.commandTimeout)
                    do {
                        let tls = try TLSStream.accept(over: s.conn, context: tlsContext)
                        s.stream = tls
                        more = s.session.tlsStarted(NegotiatedTLS(protocolVersion: tls.protocolVersion, cipher: tls.cipher))
                        var fields = ["client": s.peer.host, "protocol": tls.protocolVersion, "cipher": tls.cipher]
                        if s.session.discardedAfterSTARTTLS > 0 { fields["discarded_octets"] = "\(s.session.discardedAfterSTARTTLS)" }
                        log.info("TLS established", fields)
                    } catch {
                        log.warning("TLS handshake failed", ["client": s.peer.host, "error": "\(error)"])
                        more = s.session.tlsFailed()
                    }
                } else {
                    more = s.session.tlsFailed()
                }
                s.deadline = .now + s.commandTimeout
            case .close:
                try? s.stream.write(s.out)
                s.out.removeAll()
                return false
            }
            pending = (more + Array(pending))[...]
        }
        return true
    }

    /// The rest of a session on a thread of its own, from where the event loop handed it over
    /// (AUTH or STARTTLS): blocking reads and writes with the phase's timeouts.
    /// - Parameter actions: the session's actions not carried out yet.
    func runBlocking(_ s: SubmissionSessionState, after actions: [SMTPServerAction]) {
        defer { finish(s) }
        // The loop set no socket timeouts: the replies it left (written first) must not wait
        // without bound for a client that does not read.
        s.conn.setTimeouts(read: s.smtp.commandTimeout, write: s.smtp.commandTimeout)
        let before = s.repliesQueued
        guard performBlocking(s, actions) else { return }
        answered(s, repliesBefore: before)
        let smtp = s.smtp
        let conn = s.conn
        var buf = [UInt8](repeating: 0, count: 16 * 1024)
        /// Whether more input can be read without waiting (then replies may wait for it).
        func inputPending() -> Bool {
            if let tls = s.stream as? TLSStream { return tls.bufferedByteCount > 0 || conn.hasReadableInput }
            if s.lastReadDrained { return false }
            return conn.hasReadableInput
        }
        while true {
            if !s.out.isEmpty && (s.out.count >= 64 * 1024 || !inputPending()) {
                // The read timeout is the next read's business (`readAtMost` below): only the write's is set.
                conn.setTimeouts(readAtMost: smtp.commandTimeout, write: smtp.commandTimeout)
                do { try s.stream.write(s.out) } catch { return }
                s.out.removeAll(keepingCapacity: true)
                announceQueued(s)
            }
            noteContentPhase(s)
            let remaining = ContinuousClock.now.duration(to: s.deadline)
            guard remaining > .zero else {
                _ = performBlocking(s, s.session.timeout())
                log.info("session timed out", ["client": s.peer.host, "phase": s.readingContent ? "data" : "command"])
                return
            }
            // 0 would mean "no timeout" to SO_RCVTIMEO: never go below a millisecond.
            conn.setTimeouts(readAtMost: max(.milliseconds(1), remaining), write: s.commandTimeout)
            let n: Int
            do {
                n = try buf.withUnsafeMutableBytes { try s.stream.read(into: $0) }
            } catch let e as SocketError where e.kind == .timeout {
                continue  // the deadline check above answers 421
            } catch {
                return
            }
            if n == 0 { return }
            s.lastReadDrained = n < buf.count
            let before = received(s, n)
            let actions = s.session.receive(buf[0..<n])
            accountContent(s, releasing: false)  // a message handed over in `actions` stays reserved until stored
            guard performBlocking(s, actions) else { return }
            accountContent(s, releasing: true)
            answered(s, repliesBefore: before)
        }
    }

    /// Before input is fed to the session: content pushes the DATA deadline back at the
    /// minimum rate, at most `data_timeout` ahead.
    /// - Returns: the count of replies queued before the input (for `answered`).
    func received(_ s: SubmissionSessionState, _ octets: Int) -> Int {
        if s.readingContent {
            let extended = s.deadline + .seconds(Double(octets) / max(1, s.minimumDataRate))
            s.deadline = min(extended, .now + s.dataTimeout)
        }
        return s.repliesQueued
    }

    /// After input was handled: a command that was answered gives the next one a fresh
    /// `command_timeout`.
    func answered(_ s: SubmissionSessionState, repliesBefore: Int) {
        if s.repliesQueued != repliesBefore && !s.session.isReadingContent { s.deadline = .now + s.commandTimeout }
    }

    /// Entering or leaving DATA/BDAT content: the deadline of the new phase starts now
    /// (RFC 5321 §4.5.3.2).
    func noteContentPhase(_ s: SubmissionSessionState) {
        if s.session.isReadingContent != s.readingContent {
            s.readingContent = s.session.isReadingContent
            s.deadline = .now + (s.readingContent ? s.dataTimeout : s.commandTimeout)
        }
    }

    /// Routes, fixes up, stamps and durably queues a message (this thread waits for the fsync).
    /// - Returns: the queue id, or why it could not be stored (the client gets a 4xx and retries).
    func accept(_ submitted: SubmittedMessage, tenantSession: TenantSMTPSession) -> Result<String, StoreFailure> {
        switch prepare(submitted, tenantSession: tenantSession) {
        case .finished(let result):
            return result
        case .ready(let prepared):
            do {
                try store.enqueue(prepared.record)
                return complete(prepared, failure: nil)
            } catch {
                return complete(prepared, failure: error)
            }
        }
    }

    /// A message ready for the queue: its record, and what `complete` logs and counts.
    struct PreparedMessage: Sendable {
        /// What `QueueStore.enqueue` writes.
        var record: NewMessage
        var submitted: SubmittedMessage
        var tenant: Tenant?
        var routeReason: String
        var added: [String]
    }

    /// What `prepare` decided: answered already (a feedback report consumed, a refusal), or ready to write.
    enum Preparation: Sendable {
        case finished(Result<String, StoreFailure>)
        case ready(PreparedMessage)
    }

    /// Everything before the queue write: feedback reports, routing, the tenant's checks and
    /// count, the RFC 6409 fix-ups and the `Received:` field. May read and write the store
    /// (a feedback report, a tenant's count).
    func prepare(_ submitted: SubmittedMessage, tenantSession: TenantSMTPSession) -> Preparation {
        var message = submitted
        let reputation = current.withLock { $0.config.reputation }
        if reputation.acceptsFeedback, message.recipients.contains(where: reputation.isFeedbackAddress) {
            // A feedback loop's report: consumed here, never queued (nor bounced).
            do {
                try feedback.consume(message.body, client: message.peer.host)
            } catch {
                log.error("complaint not recorded; report refused with 451 4.3.0", ["error": "\(error)", "client": message.peer.host])
                return .finished(.failure(guards.storeFailure(for: error)))
            }
            let keep = message.recipients.indices.filter { !reputation.isFeedbackAddress(message.recipients[$0]) }
            guard !keep.isEmpty else { return .finished(.success(Identifier.queueID(now: clock.now()))) }
            message.recipients = keep.map { message.recipients[$0] }
            message.originalRecipients = keep.map { message.originalRecipients[$0] }
            message.recipientParameters = keep.map { message.recipientParameters[$0] }
        }
        let now = clock.now()
        let id = Identifier.queueID(now: now)
        let hostname = config.smtp.hostname
        // routing.rules pick the pool; routing headers (X-Hato-Pool) are removed before queueing.
        let route: PoolRouter.Decision
        do {
            route = try current.withLock { $0.router }.route(authUser: message.authenticatedUser, reversePath: message.reversePath.address,
                                                               content: message.body)
        } catch {
            log.warning("message refused: unknown pool", ["header": error.header, "pool": String(error.pool.prefix(64)), "client": message.peer.host])
            return .finished(.failure(.refused(error.reply)))
        }
        // The tenant of the AUTH user: its From: domains, its limits, its pool (issue 16).
        // The session's, as found at AUTH: a user removed (or a tenant deleted) since is refused,
        // never taken for a user of no tenant.
        var tenant: Tenant?
        if let tenants {
            switch tenantSession.current(tenants) {
            case nil:
                // Mail of no tenant may not use a tenant's domain (the nodes would sign it with the tenant's keys).
                if let refusal = tenants.rules.foreignDomainRefusal(reversePath: message.reversePath.address, content: route.content) {
                    log.info("message refused", ["client": message.peer.host, "reason": refusal.message])
                    return .finished(.failure(.refused(refusal.reply)))
                }
            case .failure(let refusal)?:
                log.info("message refused", ["client": message.peer.host, "reason": refusal.message])
                return .finished(.failure(.refused(refusal.reply)))
            case .success(let t)?: tenant = t
            }
        }
        if let tenant, let tenants {
            if let refusal = tenants.rules.stateRefusal(tenant) ?? tenants.rules.authorRefusal(tenant: tenant.name, content: route.content) {
                log.info("message refused", ["tenant": tenant.name, "client": message.peer.host, "reason": refusal.message])
                return .finished(.failure(.refused(refusal.reply)))
            }
            // As the HTTP API's 503: mail for a pool this cluster lacks (a typo in the tenant's
            // pool, a pool a reload removed) would wait in the queue with no IP to send it.
            if let pool = tenant.pool, !current.withLock({ $0.config }).pools.contains(where: { $0.name == pool }) {
                log.error("tenant's pool is not configured; message refused with 451 4.3.0", ["tenant": tenant.name, "pool": pool])
                return .finished(.failure(.refused(SMTPReply(451, "4.3.0", "the pool \(pool) of tenant \(tenant.name) is not configured on this cluster; contact the operator"))))
            }
            do {
                if let refusal = try tenants.admit(tenant, now: now) {
                    metrics?.smtpRefusals.inc("tenant_limit")
                    log.info("message refused: tenant limit", ["tenant": tenant.name, "client": message.peer.host, "reason": refusal.message])
                    return .finished(.failure(.refused(refusal.reply)))
                }
            } catch {
                log.error("tenant limits cannot be counted; message refused with 451 4.3.0", ["tenant": tenant.name, "error": "\(error)"])
                return .finished(.failure(.temporary))
            }
        }
        let pool = tenant?.pool ?? route.pool
        // RFC 6409 §8.3: a submission server adds Date and Message-ID when missing.
        let fixed = SubmissionFixups.apply(to: route.content, messageID: "<\(id)@\(hostname)>", date: now)
        // `for` names the recipient as the client gave it (postmaster, not the operator's mailbox).
        let forRecipient = message.recipients.count == 1 ? (message.originalRecipients.first ?? nil) ?? message.recipients.first : nil
        let received = ReceivedHeader.build(heloName: message.heloName, peer: message.peer, hostname: hostname,
                                            protocol: message.protocolKeyword, tls: message.tls, id: id,
                                            recipient: forRecipient, date: now)
        let originalTo = SubmissionGuards.originalRecipientField(message)
        var content = received
        content.reserveCapacity(received.count + originalTo.count + fixed.content.count)
        content.append(contentsOf: originalTo)
        content.append(contentsOf: fixed.content)
        let record = NewMessage(id: id, reversePath: message.reversePath.address,
                                recipients: message.recipients.map(\.address), pool: pool,
                                content: content, heloName: message.heloName,
                                clientAddress: message.peer.host, receivedAt: now,
                                authenticatedUser: message.authenticatedUser, dsnReturn: message.dsnReturn,
                                envelopeID: message.envelopeID, recipientParameters: message.recipientParameters,
                                tenant: tenant?.name)
        // The lowest class named wins: the pool's, the tenant's, the X-Hato-Priority field's (issue 18).
        var stored = record
        stored.priority = MessagePriority.resolved([current.withLock { $0.router }.priority(ofPool: pool), tenant?.priority, route.requestedPriority])
        if let unknown = route.unknownPriority {
            log.info("X-Hato-Priority names no class; ignored (field removed)", ["id": id, "value": unknown])
        }
        return .ready(PreparedMessage(record: stored, submitted: message, tenant: tenant,
                                      routeReason: tenant?.pool != nil ? "tenant" : route.reason, added: fixed.added))
    }

    /// After the queue write: on failure, the tenant's count given back and the reply kind;
    /// on success, the content kept for the first grant, the headroom counted, one log line.
    /// - Parameters:
    ///   - prepared: what `prepare` made.
    ///   - failure: what `QueueStore.enqueue` threw, nil when the message is durably queued.
    /// - Returns: the queue id, or why it could not be stored.
    func complete(_ prepared: PreparedMessage, failure error: (any Error)?) -> Result<String, StoreFailure> {
        let result = settle(prepared, failure: error)
        if case .success = result { logQueued(prepared) }
        return result
    }

    /// Keeps the content for the message's first grant before its commit (the scheduler may
    /// lease it from its inserted rows while the commit runs, `ClusterHub.newMailInserted`).
    /// If the commit fails, `settle(…, kept: true)` drops it again.
    func keepForGrant(_ prepared: PreparedMessage) {
        keepContent?(prepared.record.id, prepared.record.content)
    }

    /// `complete` without the log line: what must happen before the client hears back.
    /// - Parameter kept: whether `keepForGrant` already kept the content.
    func settle(_ prepared: PreparedMessage, failure error: (any Error)?, kept: Bool = false) -> Result<String, StoreFailure> {
        let stored = prepared.record, message = prepared.submitted, tenant = prepared.tenant, id = stored.id
        if let error {
            if kept { forgetContent?(id) }
            if let tenant { tenants?.release(tenant, reservedAt: stored.receivedAt) }
            let failure = guards.storeFailure(for: error)
            log.error(failure == .insufficientStorage ? "queue full; message refused with 452 4.3.1" : "queue write failed; message refused with 451 4.3.0",
                      ["error": "\(error)", "client": message.peer.host])
            return .failure(failure)
        }
        if !kept { keepContent?(id, stored.content) }
        guards.headroom.noteQueued(octets: stored.content.count)
        if let tenant { metrics?.tenantMessages.inc(tenant.name, "accepted") }
        return .success(id)
    }

    /// The `message queued` line of a durably queued message.
    func logQueued(_ prepared: PreparedMessage) {
        let stored = prepared.record, message = prepared.submitted, tenant = prepared.tenant, id = stored.id
        var fields = ["id": id, "pool": stored.pool, "route": prepared.routeReason, "client": message.peer.host,
                      "size": "\(stored.content.count)", "recipients": "\(stored.recipients.count)", "protocol": message.protocolKeyword,
                      "priority": stored.priority.rawValue]
        if let user = message.authenticatedUser { fields["user"] = user }
        if let tenant { fields["tenant"] = tenant.name }
        if !prepared.added.isEmpty { fields["added"] = prepared.added.joined(separator: ",") }
        let postmaster = message.originalRecipients.filter { $0 != nil }.count
        if postmaster > 0 { fields["postmaster_recipients"] = "\(postmaster)" }
        log.info("message queued", fields)
    }
}
