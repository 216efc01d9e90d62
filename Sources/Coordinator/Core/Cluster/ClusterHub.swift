import ClusterProtocol
import Foundation
import HatoConfig
import HatoCrypto
import HatoIO
import HatoSupport

/// The coordinator's side of the cluster protocol: a thin shell around the `Scheduler` value.
///
/// One thread — the scheduler thread — owns the `Scheduler`: it drains an inbox of events
/// (frames from nodes, connections ending, results committed, operator commands, new mail),
/// feeds them to the scheduler, ticks it, and performs the directives it returns (queue
/// writes, frames to send, log lines). Nothing else touches the scheduler's state; other
/// threads read a snapshot published after every pass.
///
/// Around it (docs/threads.md): one accept thread for the cluster listener; per node
/// connection a reader thread (handshake, then frames → inbox; it alone closes the socket)
/// and a writer thread (`NodeLink`: one slow node never stalls grants to the others); the
/// result writer (`ResultWriter`: group commits of results, acknowledged after the commit).
public final class ClusterHub: Sendable {
    /// An input for the scheduler thread.
    private enum Event: Sendable {
        case join(ConnectionID, HelloMessage, peer: String)
        case frame(ConnectionID, ClusterMessage)
        case closed(ConnectionID, reason: String)
        case resultsApplied([(leaseID: String, connection: ConnectionID, mxHost: String?)])
        /// The same results, for the reputation signals.
        case committed([ResultMessage])
        /// An operator command; `refuse` answers it when this coordinator does not lead, unless
        /// `standbyToo` (a reload: a standby keeps the configuration it will lead with).
        case command(@Sendable (inout Scheduler, Date) -> [Scheduler.Directive], refuse: @Sendable (any Error) -> Void, standbyToo: Bool = false)
        /// Elected (several coordinators): lead under `term` from now on.
        case becomeLeader(term: Int64)
        /// No longer the leader: drop the scheduler, close every node link.
        case stepDown(term: Int64, reason: String)
    }

    /// How this coordinator comes to lead.
    public enum LeadershipMode: Sendable {
        /// The only coordinator: it leads from the start, under a new term from the store
        /// (`QueueStore.beginTerm`).
        case single
        /// One of several (issue 15): it leads only while elected (`becomeLeader`/`stepDown`,
        /// driven by a `LeaderElector`). `mayLead(term)` says whether `term` is still this
        /// coordinator's authority now; it is asked before every frame is sent and every grant
        /// is recorded, so a leader whose renewal hangs stops on time.
        case elected(coordinatorID: String, storeID: String, mayLead: @Sendable (Int64) -> Bool)
    }

    /// What a standby tells nodes and operators about the leader.
    public struct LeaderInfo: Sendable, Equatable {
        /// The leader's id, nil when unknown (an election is under way or the store is unreachable).
        public var leader: String?
        /// The highest term seen.
        public var term: Int64
        /// Whether this coordinator is the leader.
        public var isSelf: Bool
    }

    private struct Inbox: Sendable {
        var events: [Event] = []
        var wake = false
        var running = true
        /// Recipients of mail being committed right now (`newMailInserted`), not yet looked at.
        var fresh: [DueRecipient] = []
    }

    /// What other threads read: published by the scheduler thread after each pass (a copy of
    /// the scheduler value; copies share storage until the scheduler changes).
    private struct Snapshot: Sendable {
        var scheduler: Scheduler
        var leaseCounts: [String: Int]
        var config: ClusterConfig { scheduler.config }
        var membership: Membership { scheduler.membership }
    }

    /// The largest frame accepted before a connection has authenticated, octets (a `hello` is < 1 KiB).
    public static let handshakeFrameLimit = 64 * 1024
    /// How long a new connection has to complete the handshake (challenge → hello).
    public static let handshakeTimeout: Duration = .seconds(10)
    /// Node links at most, in total and from one peer address (authenticated nodes: a host
    /// may run several, e.g. a test or benchmark rig on one machine).
    public static let linkLimits = AdmissionLimits(maxConnections: 1024, maxConnectionsPerPeer: 64)
    /// Connections that have not authenticated yet (issue 13): at most 64 in total and 8 from
    /// one peer address, each shut down when its handshake is not done within `handshakeTimeout`.
    public static let unauthenticatedLimits = PreAuthenticationLimits(maxConnections: 64, maxConnectionsPerPeer: 8,
                                                                      handshakeDeadline: handshakeTimeout)

    let store: any QueueStore
    private let clock: any WallClock
    let log = Logger(label: "coordinator.cluster")
    private let inbox = LockedCondition(Inbox())
    let links = Locked<[ConnectionID: NodeLink]>([:])
    /// Frames `perform` queued and not yet written (`flushOutgoing`, the grants); only the
    /// scheduler thread touches it.
    private let outgoing = Locked(OutgoingFrames())
    private let lastConnectionID = Locked<ConnectionID>(0)
    private let published: Locked<Snapshot>
    private let initial: Locked<Scheduler?>
    private let acceptor = Locked<Acceptor?>(nil)
    private let resultObserver = Locked<Callback<ResultMessage, Void>?>(nil)
    private let resultPreviewObserver = Locked<Callback<ResultMessage, Void>?>(nil)
    private let resultWriter: ResultWriter
    private let schedulerStopped = LockedCondition(false)
    /// No lease before this time (`start(leaseHoldUntil:)`), for a scheduler made later on election.
    private let leaseHoldUntil = Locked<Date?>(nil)
    /// Reloads since start (`config_changed.generation`).
    private let reloadGeneration = Locked(0)
    /// The last `config_applied` of each node.
    private let configAnswers = LockedCondition<[String: ConfigAppliedMessage]>([:])
    /// `cluster.tls`: the server context of the cluster listener (mutual TLS when `ca` is set);
    /// nil for plaintext.
    private let clusterTLS: TLSContext?
    private let mode: LeadershipMode
    /// Who leads, as far as known (updated by `leaderChanged`, `becomeLeader`, `stepDown`).
    private let leaderInfo = Locked(LeaderInfo(leader: nil, term: 0, isSelf: false))
    /// Terms the store refused a write of (`LeadershipFenced`): nothing more is sent under them.
    private let fencedTerm = Locked<Int64?>(nil)
    /// Leases recorded and sent by this process since it started.
    private let leasesGranted = Locked(0)
    /// Of `leasesGranted`, those planned from new mail's inserted rows (`Scheduler.leaseFresh`).
    private let leasesGrantedAtQueueing = Locked(0)
    /// The blocklist holds as last reported (IP → why), for a scheduler made on election.
    private let blocklistHolds = Locked<[String: String]>([:])
    /// The FCrDNS holds (`reputation.require_fcrdns`) as last reported (IP → why).
    private let fcrdnsHolds = Locked<[String: String]>([:])
    /// The nodes' clocks as last seen in their heartbeats (node → sample; issue 18 `doctor`).
    private let nodeClocks = Locked<[String: ClockSkew.Sample]>([:])
    /// Sending IPs that resumed after a delisting, and when (the re-warm ramp), for a scheduler made on election.
    private let rewarmStarts = Locked<[String: Date]>([:])
    /// The tenants' DKIM keys as last read from the store (scheduler thread; ClusterHub+SigningKeys.swift).
    let signingKeyFeed = Locked(SigningKeyFeed())

    /// Content of messages queued a moment ago, sent in grants without a store read (see
    /// `RecentContent` and `keepContent`).
    public let recentContent = RecentContent()

    /// Remembers a just-queued message's content for its grant — only while this coordinator
    /// leads: a standby grants nothing, so what it kept would only wait for eviction.
    /// - Parameters:
    ///   - messageID: the queue id.
    ///   - content: the content as stored.
    public func keepContent(_ messageID: String, _ content: [UInt8]) {
        if leader.isSelf { recentContent.insert(messageID, content) }
    }

    /// Drops content kept for a message whose commit then failed (it is never granted).
    public func forgetContent(_ messageID: String) {
        _ = recentContent.take(messageID)
    }

    /// - Parameters:
    ///   - config: the cluster configuration.
    ///   - store: the durable queue.
    ///   - clock: wall-clock time (stored and sent instants).
    ///   - mode: `.single` (leads from the start) or `.elected` (leads only while elected).
    /// - Throws: `SQLiteError` reading persisted drain state and backoffs; `TLSError` when the
    ///   `cluster.tls` certificate, key or CA cannot be loaded.
    public init(config: ClusterConfig, store: any QueueStore, clock: any WallClock = SystemClock(), mode: LeadershipMode = .single) throws {
        self.store = store
        self.clock = clock
        self.mode = mode
        clusterTLS = try config.cluster.tls.map {
            try TLSContext.server(certificateChainPath: $0.pair.certificatePath, privateKeyPath: $0.pair.privateKeyPath, clientCAFile: $0.caPath)
        }
        let scheduler: Scheduler
        switch mode {
        case .single:
            // A single coordinator leads under a new term at every start.
            let stamp = try store.beginTerm(coordinatorID: config.coordinators.first?.id ?? "coordinator")
            scheduler = try Self.leadingScheduler(config: config, store: store, now: clock.now(), leadership: stamp)
            initial = Locked(scheduler)
            leaderInfo.withLock { $0 = LeaderInfo(leader: stamp.coordinatorID, term: stamp.term, isSelf: true) }
        case .elected:
            // A standby until elected: this scheduler only answers reads (nothing is granted).
            scheduler = Scheduler(config: config)
            initial = Locked(nil)
        }
        let published = Locked(Snapshot(scheduler: scheduler, leaseCounts: [:]))
        self.published = published
        let inbox = self.inbox
        let observer = self.resultObserver
        let previewObserver = self.resultPreviewObserver
        let log = self.log
        resultWriter = ResultWriter(store: store, retryPolicy: {
            let c = published.withLock { $0.config }
            return RetryPolicy(schedule: c.retry.schedule, maxAge: c.retry.maxAge)
        }, clock: clock, log: log, willApply: { batch in
            // Before the transaction: the reporter may read the batch's events the moment they
            // are committed, and their log lines carry these details (TLS, timings). A batch
            // that then fails is re-sent by its nodes, and noted again (found by a red CI: the
            // log line of a 550 without its `tls` and `timings`).
            guard let preview = previewObserver.snapshot else { return }
            for item in batch { preview(item.result) }
        }) { batch, apps in
            let notify = observer.snapshot
            for (item, app) in zip(batch, apps) {
                notify?(item.result)
                if !app.leaseKnown {
                    log.info("late or duplicate result applied idempotently", ["lease": item.result.leaseID, "applied": "\(app.applied)", "ignored": "\(app.ignored)"])
                }
            }
            let done = batch.map { (leaseID: $0.result.leaseID, connection: $0.connection, mxHost: $0.result.mxHost) }
            // A duplicate report (re-sent from a node's journal) changed nothing: not counted twice.
            let results = zip(batch, apps).filter { $0.1.applied > 0 }.map(\.0.result)
            inbox.withLockAndBroadcast { $0.events.append(.resultsApplied(done)); $0.events.append(.committed(results)) }
        }
    }

    /// A scheduler that takes over the queue as it is in the store: drain state, backoffs,
    /// pauses, and the IP table as it was — each IP waits for its previous owner to rejoin, at
    /// least a grace period (its reconnect) and until every lease it held (under any term) has
    /// expired, so a floating IP never has two owners across a restart or a change of leader.
    /// - Throws: a store error.
    static func leadingScheduler(config: ClusterConfig, store: any QueueStore, now: Date, leadership: LeadershipStamp) throws -> Scheduler {
        // The reputation signals as the cluster counted them (every leader stores its counts).
        let oldest = ReputationSignals.bucket(of: now.addingTimeInterval(-config.reputation.signalHistory)) - ReputationSignals.bucketSeconds
        var scheduler = Scheduler(config: config, draining: try store.drainingNodes(), backoffs: try store.activeBackoffs(now: now),
                                  pauses: try store.pauses(), leadership: leadership, signals: try store.reputationCounts(since: oldest))
        let grace = max(30, 3 * config.coordinator.nodeTimeout)
        var until: [String: Date] = [:]
        let owners = try store.ipOwners()
        for node in Set(owners.values) { until[node] = now.addingTimeInterval(grace) }
        for lease in try store.allLeases() where until[lease.node] != nil { until[lease.node] = max(until[lease.node]!, lease.expiresAt) }
        scheduler.restoreOwners(owners, until: until)
        return scheduler
    }

    /// Sets what is called with every node result once it is committed and synced (reporting
    /// counts its TLS reports and wakes). Call before `start()`.
    public func setResultObserver(_ observer: @escaping @Sendable (ResultMessage) -> Void) {
        resultObserver.withLock { $0 = Callback(observer) }
    }

    /// Sets what is called with every node result just before the transaction that applies it:
    /// the reporter may read the events the result writes as soon as they are committed, and
    /// their log lines carry the result's session details (TLS, timings), which the store does
    /// not keep. A batch that fails is re-sent by its nodes and previewed again. Call before `start()`.
    public func setResultPreview(_ observer: @escaping @Sendable (ResultMessage) -> Void) {
        resultPreviewObserver.withLock { $0 = Callback(observer) }
    }

    /// Binds the cluster listener and starts the accept thread, the scheduler thread and the result writer.
    /// - Parameter leaseHoldUntil: no new lease before this time (after a host restart that may
    ///   have lost lease records, see `QueueStore.beginRun`).
    /// - Throws: `SocketError` when the listen address cannot be bound.
    public func start(leaseHoldUntil: Date? = nil) throws {
        guard acceptor.withLock({ $0 }) == nil else { return }
        var scheduler = initial.withLock { s -> Scheduler? in defer { s = nil }; return s }
        let config = published.withLock { $0.config }
        if let leaseHoldUntil {
            scheduler?.holdLeases(until: leaseHoldUntil)
            self.leaseHoldUntil.withLock { $0 = leaseHoldUntil }
        }
        let listener = try Acceptor(address: config.coordinator.listen, configuration: .init(name: "cluster"),
                                    admission: AdmissionControl(limits: ClusterHub.linkLimits, preAuthentication: ClusterHub.unauthenticatedLimits)) {
            [self] connection in serve(connection)
        }
        acceptor.withLock { $0 = listener }
        log.info("cluster listener ready", ["listen": listener.address.description])
        resultWriter.start()
        Thread.startNamed("scheduler") { [self, scheduler] in schedulerLoop(scheduler) }
        listener.start()
    }

    /// Stops accepting, ends every node connection and the scheduler thread.
    public func stop() {
        inbox.withLockAndBroadcast { $0.running = false }
        acceptor.withLock { $0 }?.stop()
        for link in links.withLock({ Array($0.values) }) { link.shutdown() }
        resultWriter.stop()
        schedulerStopped.wait(until: .now + .seconds(5), for: { $0 }) { _, _ in }
    }

    /// Wakes the scheduler (new mail, new credits, results).
    public func wake() {
        inbox.withLockAndBroadcast { $0.wake = true }
    }

    /// New mail was queued: the scheduler thread leases it at once. Call after the `250` was written.
    public func dispatchNewMail() { wake() }

    /// The recipients of mail whose rows were just written and whose commit (and fsync) is
    /// under way (`SQLiteQueueStore.observeInsertedRecipients`): the scheduler thread plans
    /// their leases meanwhile (`Scheduler.leaseFresh`) and records them as soon as the commit
    /// lets go of the queue — the light-load path from the client's `250` to the grant loses the
    /// wake-up after the fsync and the due query (issue 19). Returns at once.
    /// - Returns: whether the scheduler thread takes them (the last pass it published found the
    ///   queue drained at a light load: `Scheduler.takesFreshRows`); the store then runs the
    ///   batch's fsync after letting go of the queue, so that their leases commit during it.
    public func newMailInserted(_ rows: [DueRecipient]) -> Bool {
        // More than `leaseFresh` takes (a load building up) waits for the due query, without
        // waking the scheduler thread for it.
        guard rows.count <= Scheduler.freshLeaseMaximumRows, freshOpen.withLock({ $0 }) else { return false }
        return inbox.withLockAndBroadcast { box in
            guard box.fresh.count + rows.count <= Scheduler.freshLeaseMaximumRows else { return false }
            box.fresh += rows
            return true
        }
    }

    /// `Scheduler.takesFreshRows` of the last pass the scheduler thread published (false until
    /// the first; a standby keeps its last value — new rows it is told are then dropped by the
    /// loop, and their batch merely syncs after the queue's lock).
    private let freshOpen = Locked(false)

    private func post(_ event: Event) {
        inbox.withLockAndBroadcast { $0.events.append(event) }
    }

    // MARK: - Leadership (several coordinators)

    /// Elected: lead under `term` from now on. The scheduler thread builds a scheduler from the
    /// store as it is (`leadingScheduler`), fences the store's lease writes with `term`, and
    /// welcomes nodes; leases of earlier terms are reconciled as after a restart (results
    /// applied as they come, expired ones requeued, earlier node instances' leases requeued).
    public func becomeLeader(term: Int64) {
        if case .elected(let id, _, _) = mode { leaderInfo.withLock { $0 = LeaderInfo(leader: id, term: term, isSelf: true) } }
        post(.becomeLeader(term: term))
    }

    /// No longer the leader: nothing more is sent at once (`mayLead` already says so), and the
    /// scheduler thread drops the scheduler and closes every node link, so that the nodes go
    /// to the new leader.
    public func stepDown(term: Int64, reason: String) {
        leaderInfo.withLock { if $0.isSelf { $0.isSelf = false; $0.leader = nil } }
        post(.stepDown(term: term, reason: reason))
    }

    /// The leader changed (for redirects and status): `leader` under `term`, nil when unknown.
    public func leaderChanged(leader: String?, term: Int64) {
        let me: String? = if case .elected(let id, _, _) = mode { id } else { nil }
        // Only `becomeLeader` makes this process the leader: the store may name this id while
        // another process holds it (a restart within the lease, a duplicate --id).
        leaderInfo.withLock { $0 = LeaderInfo(leader: leader, term: max(term, $0.term), isSelf: $0.isSelf && leader != nil && leader == me) }
    }

    /// Who leads, as far as this coordinator knows.
    public var leader: LeaderInfo { leaderInfo.snapshot }

    /// This coordinator's id (`coordinators[].id`, or `coordinator` for the single form).
    public var coordinatorID: String {
        switch mode {
        case .single: return leaderInfo.snapshot.leader ?? "coordinator"
        case .elected(let id, _, _): return id
        }
    }

    /// Whether this coordinator may act as leader under `term` right now.
    func mayAct(under term: Int64?) -> Bool {
        guard let term else { return true }
        if fencedTerm.snapshot == term { return false }
        if case .elected(_, _, let mayLead) = mode { return mayLead(term) }
        return true
    }

    /// The answer of a standby to a node's `hello`: a redirect naming the leader (a node that
    /// knows terms), else a retryable reject; then the connection is closed.
    private func standbyAnswer(to hello: HelloMessage, on c: ConnectionID, config: ClusterConfig) {
        let info = leaderInfo.snapshot
        // This id held by another process (a restart within the lease): name no address, so
        // that the node asks the next coordinator rather than this one again.
        let address = info.leader.flatMap { id in id == coordinatorID ? nil : config.coordinators.first { $0.id == id }?.listen.description }
        let features = link(c)?.features ?? []
        if info.isSelf {
            // Elected, but still taking over the queue: the node tries again shortly.
            link(c)?.send(.message(.reject(RejectMessage(reason: "the leader is taking over the queue; try again", retryable: true))))
        } else if features.contains(ClusterFeature.terms) {
            link(c)?.send(.message(.redirect(RedirectMessage(leader: info.leader, address: address, term: info.term))))
        } else {
            link(c)?.send(.message(.reject(RejectMessage(reason: "this coordinator is a standby; the leader is \(info.leader ?? "not known yet")", retryable: true))))
        }
        link(c)?.shutdownWhenSent()
        log.info("node redirected to the leader", ["node": hello.nodeID, "leader": info.leader ?? "(unknown)", "address": address ?? "(unknown)", "term": "\(info.term)"])
    }

    // MARK: - Connections

    /// The handshake — TLS first when `cluster.tls` is set (mutual when its `ca` is), then the
    /// challenge and the node's HMAC proof, all within `handshakeTimeout` of the admission —
    /// then the node's frames until the connection ends. This thread owns the socket; the
    /// acceptor closes it when this returns (after `NodeLink.finish`).
    private func serve(_ accepted: AcceptedConnection) {
        let sock = accepted.socket, peer = accepted.peer
        let deadline = ContinuousClock.now + ClusterHub.handshakeTimeout
        let config = published.withLock { $0.config }
        sock.setTimeouts(read: 10, write: 10)
        let conn: ClusterConnection
        var tlsFields: [String: String] = [:]
        if let clusterTLS {
            do {
                // The acceptor shuts the socket down at the handshake deadline, so a client that
                // never sends its ClientHello (a plaintext node) is cut off then too.
                let tls = try TLSStream.accept(over: sock, context: clusterTLS, duplex: true)
                tls.setTimeouts(read: .seconds(10), write: .seconds(10))
                conn = ClusterConnection(tls: tls, maximumFrameSize: ClusterHub.handshakeFrameLimit)
                tlsFields = ["tls": tls.protocolVersion, "cipher": tls.cipher]
                if let cn = tls.peerCommonName { tlsFields["certificate"] = cn }
            } catch {
                var reason = "TLS: \(error)"
                if let e = error as? SocketError, e.kind != .system {
                    reason += " (no TLS handshake: a node without cluster.tls?)"
                }
                log.warning("node connection refused", ["peer": peer.description, "reason": reason])
                return
            }
        } else {
            conn = ClusterConnection(socket: sock, maximumFrameSize: ClusterHub.handshakeFrameLimit)
        }
        let nonce = Identifier.random(bytes: 32)
        let hello: HelloMessage
        do {
            try conn.send(.challenge(ChallengeMessage(versions: [clusterProtocolVersion], nonce: nonce, cluster: config.cluster.name)))
            guard case .hello(let h) = try conn.receive(deadline: deadline) else {
                throw ClusterProtocolError.unexpected("expected hello")
            }
            guard h.version == clusterProtocolVersion else {
                throw ClusterProtocolError.versionMismatch(ours: clusterProtocolVersion, theirs: [h.version])
            }
            let expected = ClusterAuth.nodeProof(secret: config.cluster.secret, nonce: nonce, nodeID: h.nodeID, instanceID: h.instanceID)
            guard ClusterAuth.verify(h.proof, expected: expected) else { throw ClusterProtocolError.authenticationFailed }
            hello = h
        } catch {
            log.warning("node connection refused", ["peer": peer.description, "reason": "\(error)"].merging(tlsFields) { a, _ in a })
            if let pe = error as? ClusterProtocolError {
                var retryable = true
                switch pe {
                case .versionMismatch, .authenticationFailed: retryable = false
                case .rejected(_, let r): retryable = r
                default: break
                }
                try? conn.send(.reject(RejectMessage(reason: pe.description, retryable: retryable)))
            }
            conn.close()
            return
        }
        if !tlsFields.isEmpty {
            log.info("node link over TLS", ["node": hello.nodeID, "peer": peer.description].merging(tlsFields) { a, _ in a })
        }
        // Authenticated: out of the unauthenticated tier and its deadline.
        guard accepted.admission.promote() else {
            log.warning("node connection closed: evicted from the unauthenticated tier during its handshake", ["peer": peer.description, "node": hello.nodeID])
            return
        }
        let id = lastConnectionID.withLock { $0 += 1; return $0 }
        let link = NodeLink(id: id, nodeID: hello.nodeID, peer: peer, features: Set(hello.features ?? []), connection: conn, log: log)
        links.withLock { $0[id] = link }
        link.start()
        conn.setMaximumFrameSize(clusterMaximumFrameSize(maxMessageSize: config.smtp.maxMessageSize))
        conn.setTimeouts(read: .seconds(config.coordinator.nodeTimeout), write: .seconds(30))
        post(.join(id, hello, peer: peer.host))
        var reason = "connection closed"
        var flushedOnce = false
        do {
            while true {
                let message = try conn.receive()
                switch message {
                case .result(let r):
                    // Applied by the result writer in batches; the ack follows the commit.
                    resultWriter.enqueue(ResultWriter.Item(result: r, node: hello.nodeID, connection: id))
                case .leaseRequest:
                    if !flushedOnce {
                        // The node re-reported its journal before its first request: those results
                        // are applied before the scheduler reconciles its earlier instances' leases.
                        flushedOnce = true
                        resultWriter.flush()
                    }
                    post(.frame(id, message))
                case .heartbeat(let h):
                    if let sent = h.sentAt {
                        let sample = ClockSkew.Sample(nodeTime: Date(timeIntervalSince1970: sent), receivedAt: clock.now())
                        nodeClocks.withLock { $0[hello.nodeID] = sample }
                    }
                    post(.frame(id, message))
                case .ipReleased, .backoff, .announce:
                    post(.frame(id, message))
                case .configApplied(let m):
                    configAnswers.withLockAndBroadcast { $0[hello.nodeID] = m }
                case .reject(let r):
                    throw ClusterProtocolError.rejected(r.reason, retryable: r.retryable)
                default:
                    throw ClusterProtocolError.unexpected("\(message.frameType) from a node")
                }
            }
        } catch {
            reason = "\(error)"
        }
        post(.closed(id, reason: reason))
        link.finish()
        links.withLock { $0[id] = nil }
    }

    // MARK: - The scheduler thread

    private func schedulerLoop(_ initial: Scheduler?) {
        var leading = initial
        /// Elected under this term but the queue could not be read yet: tried again every tick.
        var pendingTerm: Int64? = nil
        var nextTick = clock.now()
        while true {
            // What the last pass queued for the nodes and no grant took along (held acks once
            // they are due: the wait below ends by then). Nothing once not leading.
            var heldUntil: ContinuousClock.Instant?
            if let leader = leading { heldUntil = flushOutgoing(term: leader.leadership?.term) } else { outgoing.withLock { $0.removeAll() } }
            var wait = max(0, nextTick.timeIntervalSince(clock.now()))
            if let heldUntil { wait = min(wait, max(0.001, ContinuousClock.now.duration(to: heldUntil).inSeconds)) }
            let (events, wake, running, fresh) = inbox.wait(until: .now + .milliseconds(Int(wait * 1000)),
                                                            for: { !$0.events.isEmpty || $0.wake || !$0.running || !$0.fresh.isEmpty }) { box, _ in
                defer { box.events.removeAll(keepingCapacity: true); box.wake = false; box.fresh.removeAll(keepingCapacity: true) }
                return (box.events, box.wake, box.running, box.fresh)
            }
            guard running else {
                // Stopping: what is queued goes (acks held for a grant, too).
                if let leader = leading { flushOutgoing(force: true, term: leader.leadership?.term) }
                break
            }
            var now = clock.now()
            // A round due by its time (retries falling due, requeued leases) goes before new
            // mail's leases from its rows; one due only because of a wake-up (new mail — often
            // this very batch, once its commit was quicker than this thread —, results) does not.
            let roundDueByTime = now >= nextTick
            if wake { nextTick = now }
            for event in events {
                switch event {
                case .becomeLeader(let term):
                    leading = takeOver(term: term, now: now)
                    pendingTerm = leading == nil ? term : nil
                    nextTick = now
                    continue
                case .stepDown(let term, let reason):
                    leading = nil
                    pendingTerm = nil
                    outgoing.withLock { $0.removeAll() }  // nothing more from this term
                    log.warning("stepped down: no longer the leader; closing node links", ["term": "\(term)", "reason": reason])
                    for link in links.withLock({ Array($0.values) }) { link.shutdown() }
                    // What other threads read (metrics, status) no longer shows the nodes and
                    // leases of the term that ended.
                    publish(Scheduler(config: published.withLock { $0.config }), now: now)
                    continue
                default: break
                }
                guard var scheduler = leading else {
                    standby(event)
                    continue
                }
                leading = nil  // `scheduler` is the only reference while it changes (no copy)
                perform(handle(event, &scheduler, now: now), &scheduler, now: now, nextTick: &nextTick)
                leading = scheduler
            }
            if leading == nil, let term = pendingTerm, clock.now() >= nextTick {
                if mayAct(under: term) {
                    leading = takeOver(term: term, now: clock.now())
                    if leading != nil { pendingTerm = nil }
                } else {
                    pendingTerm = nil
                }
            }
            guard var scheduler = leading else {
                nextTick = clock.now().addingTimeInterval(Scheduler.maximumTickInterval)
                continue
            }
            leading = nil
            now = clock.now()
            pollSigningKeys(term: scheduler.leadership?.term)
            if !fresh.isEmpty && !roundDueByTime {
                // Planned while the batch's commit runs; recording waits for the queue's lock.
                do {
                    let directives = try scheduler.leaseFresh(fresh, now: now, queue: store, canSend: { node in
                        !(self.link(ofNode: node)?.isBackedUp ?? true)
                    })
                    let before = leasesGranted.snapshot
                    perform(directives, &scheduler, now: now, nextTick: &nextTick)
                    let granted = leasesGranted.snapshot - before
                    if granted > 0 { leasesGrantedAtQueueing.withLock { $0 += granted } }
                } catch {
                    log.error("leasing new mail failed; the next round takes it", ["error": "\(error)"])
                }
            }
            if now >= nextTick {
                nextTick = now.addingTimeInterval(Scheduler.maximumTickInterval)
                do {
                    let directives = try scheduler.tick(now: now, queue: store, canSend: { node in
                        !(self.link(ofNode: node)?.isBackedUp ?? true)
                    })
                    perform(directives, &scheduler, now: now, nextTick: &nextTick)
                } catch {
                    log.error("scheduler round failed", ["error": "\(error)"])
                }
            }
            publish(scheduler, now: now)
            leading = scheduler
        }
        schedulerStopped.withLockAndBroadcast { $0 = true }
    }

    /// Elected under `term`: a scheduler over the store as it is now, its lease writes fenced
    /// with `term`. Nil (logged) when the store cannot be read: the loop tries again every tick
    /// while the term is still this coordinator's; until then it grants nothing.
    private func takeOver(term: Int64, now: Date) -> Scheduler? {
        guard case .elected(let id, let storeID, _) = mode else { return nil }
        store.fenceLeaseWrites(term: term)
        fencedTerm.withLock { if $0 != nil && $0! < term { $0 = nil } }
        do {
            var scheduler = try Self.leadingScheduler(config: published.withLock { $0.config }, store: store, now: now,
                                                      leadership: LeadershipStamp(term: term, storeID: storeID, coordinatorID: id))
            if let hold = leaseHoldUntil.snapshot, hold > now { scheduler.holdLeases(until: hold) }
            // Blocklist holds found while a standby (the checker runs on every coordinator).
            for (ip, reason) in blocklistHolds.snapshot.sorted(by: { $0.key < $1.key }) { _ = scheduler.blocklistChanged(ip: ip, holdReason: reason, now: now) }
            for (ip, reason) in fcrdnsHolds.snapshot.sorted(by: { $0.key < $1.key }) { _ = scheduler.fcrdnsChanged(ip: ip, holdReason: reason) }
            scheduler.restoreRewarm(rewarmStarts.snapshot)
            let leases = try store.allLeases()
            log.info("leading: took over the queue", ["term": "\(term)", "leases_of_earlier_terms": "\(leases.count)",
                                                       "ip_owners": "\(try store.ipOwners().count)"])
            publish(scheduler, now: now)
            return scheduler
        } catch {
            log.error("elected, but the queue could not be read yet; trying again", ["term": "\(term)", "error": "\(error)"])
            return nil
        }
    }

    /// An event while this coordinator does not lead: a node's hello is answered with a
    /// redirect; an operator command is refused with `AdminError.notLeader`; the rest is dropped
    /// (its node is being disconnected).
    private func standby(_ event: Event) {
        switch event {
        case .join(let c, let hello, _):
            standbyAnswer(to: hello, on: c, config: published.withLock { $0.config })
        case .command(let body, let refuse, let standbyToo):
            guard standbyToo else {
                refuse(AdminError.notLeader(leaderInfo.snapshot.leader))
                return
            }
            // On the standby's idle scheduler (no nodes, no leases): its configuration is the
            // one a takeover starts from.
            var idle = published.withLock { $0.scheduler }
            _ = body(&idle, clock.now())
            publish(idle, now: clock.now())
        case .frame(let c, _):
            link(c)?.shutdown()
        case .closed, .resultsApplied, .committed, .becomeLeader, .stepDown:
            break
        }
    }

    private func handle(_ event: Event, _ scheduler: inout Scheduler, now: Date) -> [Scheduler.Directive] {
        switch event {
        case .join(let c, let hello, let peer):
            return scheduler.joinRequested(hello, connection: c, peer: peer, now: now)
        case .frame(let c, let message):
            scheduler.heard(on: c, now: now)
            switch message {
            case .leaseRequest(let r): return scheduler.leaseRequested(r.credits, on: c, now: now)
            case .ipReleased(let m): return scheduler.ipReleased(m.addresses, on: c, now: now)
            case .backoff(let m): return scheduler.backoffReported(m, on: c, now: now)
            case .announce(let m): return scheduler.announced(m.bindableIPs, on: c, now: now)
            default: return []
            }
        case .closed(let c, let reason):
            return scheduler.connectionClosed(c, reason: reason, now: now)
        case .resultsApplied(let results):
            return scheduler.resultsApplied(results, now: now)
        case .committed(let results):
            return scheduler.resultsCommitted(results, now: now)
        case .command(let body, _, _):
            return body(&scheduler, now)
        case .becomeLeader, .stepDown:
            return []  // handled by the loop
        }
    }

    private func link(_ id: ConnectionID) -> NodeLink? { links.withLock { $0[id] } }

    /// Records a backoff's start (`suspended`) or end (`lifted`) as an event by `hato` for the
    /// delivery log and webhooks. A failure is logged; the backoff itself is unaffected.
    private func recordBackoffEvent(_ event: BackoffEvent) {
        let kind: DeliveryEventKind, entry: BackoffTable.Entry, note: String
        switch event {
        case .started(let e):
            kind = .suspended; entry = e
            let rate = e.action == .throttle ? " to \(e.ratePerMinute ?? 1)/min" : ""
            note = "\(e.action.rawValue)\(rate) until \(Logger.timestamp(Date(timeIntervalSince1970: e.until))) after: \(e.reason)"
        case .ended(let e):
            kind = .lifted; entry = e; note = "backoff ended"
        }
        do {
            try store.recordOperatorEvent(kind, by: "hato", target: "ip \(entry.sendingIP) provider \(entry.provider)", note: note, now: clock.now())
        } catch {
            log.error("recording a backoff event failed", ["ip": entry.sendingIP, "provider": entry.provider, "error": "\(error)"])
        }
    }

    private func link(ofNode node: String) -> NodeLink? {
        links.withLock { $0.values.first { $0.nodeID == node } }
    }

    /// Carries out directives on the scheduler thread. A queue error ends that directive only
    /// (logged); nothing else is dropped.
    private func perform(_ directives: [Scheduler.Directive], _ scheduler: inout Scheduler, now: Date, nextTick: inout Date) {
        let term = scheduler.leadership?.term
        for directive in directives {
            switch directive {
            case .send(let c, let message):
                // A stale leader sends nothing (the nodes would refuse its term anyway).
                guard mayAct(under: term) else { continue }
                // Queued until a grant to the node takes it along or the pass ends; a
                // `result_ack` may wait a little longer for a grant (`OutgoingFrames`).
                outgoing.withLock { $0.append(message, to: c, now: .now) }
                if case .welcome = message {
                    flushOutgoing(force: true, term: term)
                    if let l = link(c) {
                        // The keys go before anything granted on this link later.
                        l.markWelcomed()
                        sendSigningKeys(to: l, term: term)
                    }
                }
            case .grant(let grants):
                guard mayAct(under: term) else {
                    scheduler.grantsFailed(grants)
                    continue
                }
                recordAndSend(grants, &scheduler, now: now)
            case .disconnect(let c):
                flushOutgoing(force: true, term: term)  // what was queued for it (a `reject`) goes first
                link(c)?.shutdownWhenSent()
            case .requeueExpired:
                do {
                    let ids = try store.requeueExpiredLeases(now: now)
                    perform(scheduler.leasesExpired(ids), &scheduler, now: now, nextTick: &nextTick)
                } catch {
                    log.error("requeueing expired leases failed", ["error": "\(error)"])
                }
            case .expireOld(let maxAge):
                do {
                    let n = try store.expireOld(maxAge: maxAge, now: now)
                    if n > 0 { log.warning("recipients expired (maximum queue age)", ["recipients": "\(n)"]) }
                } catch {
                    log.error("expiring old recipients failed", ["error": "\(error)"])
                }
            case .reconcile(let node, let instance):
                do {
                    let n = try store.requeueLeases(node: node, exceptInstance: instance, now: now)
                    if n > 0 { log.info("requeued leases of a previous instance", ["node": node, "leases": "\(n)"]) }
                } catch {
                    log.error("reconciling a node's earlier leases failed; they expire instead", ["node": node, "error": "\(error)"])
                }
            case .persistIPOwners(let owners):
                do { try store.saveIPOwners(owners) } catch {
                    log.error("storing the IP assignment table failed", ["error": "\(error)"])
                }
            case .persistBackoff(let entry):
                do { try store.saveBackoff(entry) } catch {
                    log.error("storing a backoff failed (it holds until a restart)", ["ip": entry.sendingIP, "error": "\(error)"])
                }
            case .backoffEvent(let event):
                recordBackoffEvent(event)
            case .persistSignals(let rows):
                do { try store.addReputationCounts(rows) } catch {
                    log.error("storing reputation signal counts failed (a new leader will not see them)", ["error": "\(error)"])
                }
            case .forgetSignals(let ip, let provider):
                do { try store.deleteReputationCounts(ip: ip, provider: provider) } catch {
                    log.error("deleting a pair's reputation signal counts failed", ["ip": ip, "provider": provider, "error": "\(error)"])
                }
            case .log(let line):
                switch line.level {
                case .info: log.info(line.message, line.fields)
                case .warning: log.warning(line.message, line.fields)
                case .error: log.error(line.message, line.fields)
                }
            case .scheduleNextTick(let after):
                nextTick = min(nextTick, now.addingTimeInterval(after))
            }
        }
    }

    /// Sends what `perform` queued and is due (`OutgoingFrames.takeDue`; everything when
    /// `force`): to each link in one write, from this thread when the link is idle
    /// (`NodeLink.sendNow`: no wake-up of its writer), else through its writer thread. Called at
    /// every pass of the scheduler loop.
    /// - Parameter term: the leader's term the frames were queued under: a coordinator that may
    ///   no longer act under it (fenced, or its leadership lapsed) drops them when they fall due
    ///   instead of writing them, as `perform` would have.
    /// - Returns: when held frames fall due next (the loop wakes by then), nil when none are held.
    @discardableResult
    private func flushOutgoing(force: Bool = false, term: Int64?) -> ContinuousClock.Instant? {
        let (due, next) = outgoing.withLock { o in (o.takeDue(now: .now, force: force), o.nextDue) }
        guard !due.isEmpty else { return next }
        guard mayAct(under: term) else {
            outgoing.withLock { $0.removeAll() }
            return nil
        }
        for (c, messages) in due {
            guard let l = link(c) else { continue }
            if !l.sendNow({ messages }) { l.send(.messages(messages)) }
        }
        return next
    }

    /// Records every planned lease of the round in one transaction (with the warm-up counts),
    /// then sends each node's grant: a light one written from this thread on an idle link
    /// (`NodeLink.sendNow`), else queued on the link, whose writer thread reads the bodies and
    /// builds the frames.
    private func recordAndSend(_ grants: [PlannedGrant], _ scheduler: inout Scheduler, now: Date) {
        let granted: [LeaseRecord]
        do {
            // Per-provider warm-up counts (warmup[].providers), cluster-wide in the store, in
            // the leases' own transaction (one commit per round, not two).
            let records = grants.flatMap(\.records)
            var providers: [String: String] = [:]
            for rec in records where providers[rec.domain] == nil { providers[rec.domain] = scheduler.providerLabel(ofDomain: rec.domain) }
            granted = try store.recordLeases(records, countAttemptsOnDay: Queue.utcDay(now), providerOfDomain: providers)
        } catch let fenced as LeadershipFenced {
            scheduler.grantsFailed(grants)
            fencedTerm.withLock { $0 = fenced.term }
            log.error("the store refused this leader's leases: a newer leader exists; granting nothing more", ["error": fenced.description])
            return
        } catch {
            scheduler.grantsFailed(grants)
            log.error("recording leases failed; nothing granted this round", ["error": "\(error)"])
            return
        }
        scheduler.grantsRecorded(grants, granted: granted)
        leasesGranted.withLock { $0 += granted.count }
        let byID = Dictionary(uniqueKeysWithValues: granted.map { ($0.id, $0) })
        let maxSize = scheduler.config.smtp.maxMessageSize
        // A light round (few leases: the latency of each matters) is written from here; a heavy
        // one goes to the links' writers, so that this thread — the one a backlog's drain waits
        // on — does not also encode and write every grant (coordinator-ceiling drain −10 %).
        // Light per link and in all: a round of 20 leases over four nodes is four light grants
        // (each written from a writer thread cost a wake-up of that writer per node and round).
        let mayWriteHere = granted.count <= ClusterHub.directRoundLeases
        for grant in grants {
            let records = grant.records.compactMap { byID[$0.id] }
            guard !records.isEmpty, let link = link(grant.connection) else { continue }
            let store = self.store, log = self.log, recent = self.recentContent
            // Frames queued for this node and not yet written (mostly `result_ack`s held for a
            // grant: those of results committed in the last few milliseconds) go first, in the
            // same write.
            let before = outgoing.withLock { $0.take(grant.connection) }
            let build: @Sendable () -> [ClusterMessage] = {
                before + ClusterHub.grantMessages(grant, records: records, maxSize: maxSize, store: store, recent: recent, log: log)
            }
            // Bodies still in memory and small: written from here when the link is idle (no
            // writer wake-up); otherwise the link's writer reads and encodes them.
            if mayWriteHere, records.count <= ClusterHub.directGrantLeases,
               let octets = recent.keptOctets(of: Set(records.map(\.messageID))), octets <= ClusterHub.directGrantOctets,
               link.sendNow(build) {
                continue
            }
            link.send(.build(build))
        }
    }

    /// The most body octets of one node's grants this thread encodes and writes itself on an
    /// idle link (`NodeLink.sendNow`); larger grants go through the link's writer thread.
    static let directGrantOctets = 32 * 1024
    /// The most leases of one node's grant this thread writes itself.
    static let directGrantLeases = 8
    /// The most leases a scheduler round may have for any of its grants to be written by this
    /// thread (a backlog's drain: rounds of hundreds go to the writers).
    static let directRoundLeases = 32

    /// The `lease_grant` frames for recorded leases, with their bodies, batched up to the
    /// maximum message size per frame. A lease whose body cannot be read (an I/O error) is not
    /// sent: it expires after the lease time and its recipients wait for the next round, as
    /// after a lost grant — never a delivery of an empty message.
    static func grantMessages(_ grant: PlannedGrant, records: [LeaseRecord], maxSize: Int, store: any QueueStore, recent: RecentContent? = nil,
                              log: Logger) -> [ClusterMessage] {
        var out: [ClusterMessage] = []
        var bodies: [String: [UInt8]] = [:]
        var unreadable: Set<String> = []
        var batch: [Lease] = []
        // The batch's bodies, joined into its payload when it is complete: one allocation of
        // the exact size (appending one by one grew the array and copied it again).
        var parts: [[UInt8]] = []
        var payloadCount = 0
        func flush() {
            var payload: [UInt8]
            if parts.count == 1 {
                payload = parts[0]  // a grant of one message, the common case: no copy here
            } else {
                payload = []
                payload.reserveCapacity(payloadCount)
                for part in parts { payload.append(contentsOf: part) }
            }
            out.append(.leaseGrant(LeaseGrantMessage(leases: batch, term: grant.term), payload: payload))
            batch = []; parts = []; payloadCount = 0
        }
        for rec in records {
            guard let (group, ip) = grant.planned[rec.id], !unreadable.contains(rec.messageID) else { continue }
            if bodies[rec.messageID] == nil {
                // Content queued a moment ago is usually still in memory (`recentContent`).
                if let kept = recent?.take(rec.messageID) {
                    bodies[rec.messageID] = kept
                } else {
                    do { bodies[rec.messageID] = try store.content(of: rec.messageID) ?? [] } catch {
                        log.error("reading a message body failed; its lease is left to expire", ["message": rec.messageID, "lease": rec.id,
                                                                                                "error": "\(error)"])
                        unreadable.insert(rec.messageID)
                        continue
                    }
                }
            }
            let body = bodies[rec.messageID] ?? []
            if !batch.isEmpty && payloadCount + body.count > maxSize { flush() }
            let kept = Set(rec.recipientIDs)
            let recipients = group.recipients.filter { kept.contains($0.id) }.map { LeasedRecipient(id: $0.id, address: $0.address) }
            batch.append(Lease(leaseID: rec.id, sendingIP: ip.address, helo: ip.helo, messageID: rec.messageID, reversePath: group.reversePath,
                               domain: rec.domain, recipients: recipients, expiresIn: grant.leaseTime, expiresAt: rec.expiresAt.timeIntervalSince1970,
                               bodyOffset: payloadCount, bodyLength: body.count, priority: group.priority))
            parts.append(body)
            payloadCount += body.count
        }
        if !batch.isEmpty { flush() }
        return out
    }

    private func publish(_ scheduler: Scheduler, now: Date) {
        freshOpen.withLock { $0 = scheduler.takesFreshRows }
        var counts: [String: Int] = [:]
        for node in scheduler.membership.sessions.keys { counts[node] = scheduler.leases.count(node: node) }
        let snapshot = Snapshot(scheduler: scheduler, leaseCounts: counts)
        published.withLock { $0 = snapshot }
    }

    /// Runs `body` on the scheduler thread and waits for its answer.
    /// - Throws: what `body` throws; `AdminError.busy` when the scheduler thread does not get to it within `timeout`.
    private func command<R: Sendable>(_ what: String, timeout: Duration = .seconds(15), standbyToo: Bool = false,
                                      _ body: @escaping @Sendable (inout Scheduler, Date) throws -> (R, [Scheduler.Directive])) throws -> R {
        let reply = LockedCondition<Result<R, any Error>?>(nil)
        post(.command({ [self] scheduler, now in
            do {
                let (value, directives) = try body(&scheduler, now)
                // What the command changed is visible to readers (status, nodes) before the
                // caller hears back: a read right after `drain` shows the node draining.
                publish(scheduler, now: now)
                reply.withLockAndBroadcast { $0 = .success(value) }
                return directives
            } catch {
                reply.withLockAndBroadcast { $0 = .failure(error) }
                return []
            }
        }, refuse: { error in reply.withLockAndBroadcast { $0 = .failure(error) } }, standbyToo: standbyToo))
        guard let result = reply.wait(until: .now + timeout, for: { $0 != nil }, then: { v, _ in v }) else { throw AdminError.busy(what) }
        return try result.get()
    }

    // MARK: - Operators

    /// The tenants' signing keys changed through this coordinator (`domain add`, `domain
    /// remove`): reads them now and queues them on every node link before this returns, so
    /// every grant of mail from the new domain follows its keys on the wire (the periodic poll
    /// would leave up to 2 s in which the first messages went out unsigned). A standby does
    /// nothing (its leader's poll picks the change up).
    /// - Throws: `AdminError.busy` when the scheduler thread does not answer within 15 s.
    public func signingKeysChanged() throws {
        do {
            try command("signing keys") { [self] scheduler, _ in
                pollSigningKeys(term: scheduler.leadership?.term, force: true)
                return ((), [])
            }
        } catch AdminError.notLeader {
            return
        }
    }

    /// The state of `node`.
    public func state(of node: String) -> NodeState {
        published.withLock { $0.membership.state(of: node, leasesInFlight: $0.leaseCounts[node] ?? 0) }
    }

    /// Every configured node (and any removed node still known) with state, IPs and leases.
    /// - Throws: `SQLiteError` counting leases.
    public func nodeStatuses() throws -> [NodeStatus] {
        let recorded = try store.leasesPerNode()
        return published.withLock { $0.membership.statuses(leasesInFlight: $0.leaseCounts, recorded: recorded) }
    }

    /// Puts `node` into drain: no new leases; its floating IPs are handed over to active nodes.
    /// - Throws: `AdminError.unknownNode`, `SQLiteError`, `AdminError.busy`.
    public func drain(_ node: String) throws {
        guard published.withLock({ $0.config.nodes.contains { $0.id == node } }) else { throw AdminError.unknownNode(node) }
        try store.setDraining(node, true, now: clock.now())
        try command("drain \(node)") { scheduler, _ in ((), try scheduler.drainRequested(node)) }
    }

    /// Makes a draining or drained node active again.
    /// - Throws: `AdminError.unknownNode`, `SQLiteError`, `AdminError.busy`.
    public func resume(_ node: String) throws {
        guard published.withLock({ $0.config.nodes.contains { $0.id == node } }) else { throw AdminError.unknownNode(node) }
        try store.setDraining(node, false, now: clock.now())
        try command("resume \(node)") { scheduler, _ in ((), try scheduler.resumeRequested(node)) }
    }

    /// The moves that would even out sending IPs over active nodes.
    public func rebalancePlan() -> [IPAssignmentTable.Move] {
        published.withLock { $0.membership.rebalancePlan() }
    }

    /// Computes and starts a rebalance: unowned IPs are assigned at once, owned ones by handover.
    /// - Returns: the plan being applied.
    /// - Throws: `AdminError.busy`.
    @discardableResult
    public func rebalance() throws -> [IPAssignmentTable.Move] {
        try command("rebalance") { scheduler, _ in scheduler.rebalanceRequested() }
    }

    /// Active backoffs (suspensions and throttles).
    public func activeBackoffs() -> [BackoffTable.Entry] {
        let now = clock.now()
        return published.withLock { $0.scheduler.backoffs.active(now: now) }
    }

    /// Lifts a backoff early.
    /// - Returns: whether one was active.
    /// - Throws: `AdminError.busy`.
    /// The pair's reputation signal counts are forgotten too (a rule does not fire again on the
    /// figures that made it act).
    public func liftBackoff(ip: String, provider: String) throws -> Bool {
        do {
            try store.deleteBackoff(ip: ip, provider: provider)
            try store.deleteReputationCounts(ip: ip, provider: provider)
        } catch {
            log.error("deleting a stored backoff failed", ["ip": ip, "provider": provider, "error": "\(error)"])
        }
        // Forgotten again on the scheduler thread: counts it had not stored yet go too.
        return try command("lift") { scheduler, _ in
            (scheduler.liftRequested(ip: ip, provider: provider), [.forgetSignals(ip: ip, provider: provider), .scheduleNextTick(after: 0)])
        }
    }

    /// Warm-up state of an IP today: (day of plan, cap, recipients leased so far); nil when warmed or without a plan.
    public func warmupStatus(_ address: String) -> (day: Int, cap: Int, used: Int)? {
        let now = clock.now()
        return published.withLock { $0.scheduler.warmupStatus(address, now: now) }
    }

    /// Recipients leased per sending IP since the coordinator started.
    public func recipientsLeased() -> [String: Int] { published.withLock { $0.scheduler.recipientsLeased } }

    /// `ips[].weight` per sending IP, from the configuration in force.
    public func ipWeights() -> [String: Int] {
        published.withLock { Dictionary($0.scheduler.config.ips.map { ($0.address, $0.weight) }, uniquingKeysWith: { a, _ in a }) }
    }

    /// The IP assignment table rows.
    public func ipTable() -> [IPAssignmentTable.Entry] { published.withLock { $0.membership.table.entries } }

    /// How long `reload` waits for the nodes' `config_applied` answers.
    public static let reloadAnswerTimeout: Duration = .seconds(8)

    /// Applies a newly loaded, checked configuration file (`Scheduler.reloaded`), then tells every
    /// connected node (`config_changed`) and waits up to `answerTimeout` for their answers. Work
    /// in flight is not dropped: removed IPs are revoked from their owners.
    /// - Parameters:
    ///   - loaded: the file as loaded.
    ///   - answerTimeout: how long to wait for the nodes' answers.
    /// - Returns: what changed, what needs a restart, each node's answer; and the configuration
    ///   the coordinator runs with now.
    /// - Throws: `AdminError.busy`.
    public func reload(_ loaded: ClusterConfig, answerTimeout: Duration = ClusterHub.reloadAnswerTimeout) throws -> (ReloadReport, ClusterConfig) {
        var (report, inForce) = try command("reload", standbyToo: true) { scheduler, _ in
            let (report, directives) = scheduler.reloaded(loaded)
            return ((report, scheduler.config), directives)
        }
        let generation = reloadGeneration.withLock { $0 += 1; return $0 }
        report.generation = generation
        // The newest link of each node (an older one may still be closing).
        let current = links.withLock { all in
            Dictionary(all.values.map { ($0.nodeID, $0) }, uniquingKeysWith: { $0.id > $1.id ? $0 : $1 })
        }
        var answers: [String: NodeReloadAnswer] = [:]
        var asked: [String] = []
        for node in loaded.nodes.map(\.id) {
            guard let link = current[node] else { answers[node] = NodeReloadAnswer(node: node, status: .notConnected); continue }
            guard link.features.contains(ClusterFeature.configChanged) else {
                answers[node] = NodeReloadAnswer(node: node, status: .unsupported,
                                                 errors: ["an older node without config_changed: send it SIGHUP (sending IPs only) or restart it"])
                continue
            }
            link.send(.message(.configChanged(ConfigChangedMessage(generation: generation, digest: loaded.sourceDigest))))
            asked.append(node)
        }
        let got = configAnswers.wait(until: .now + answerTimeout, for: { a in asked.allSatisfy { a[$0]?.generation == generation } }) { a, _ in a }
        for node in asked {
            guard let m = got[node], m.generation == generation else { answers[node] = NodeReloadAnswer(node: node, status: .noAnswer); continue }
            answers[node] = NodeReloadAnswer(node: node, status: m.applied ? .applied : .refused, live: m.live,
                                             restartRequired: m.restartRequired, errors: m.errors)
        }
        report.nodes = loaded.nodes.compactMap { answers[$0.id] }
        return (report, inForce)
    }

    /// Pauses a provider, pool or sending IP: stored, then no new leases for it until resumed.
    /// - Throws: `SQLiteError`, `AdminError.busy`.
    public func pause(_ pause: Pause) throws {
        try store.savePause(pause)
        try command("pause \(pause.target)") { scheduler, _ in ((), scheduler.paused(pause)) }
    }

    /// Ends a pause. - Returns: whether it was paused.
    /// - Throws: `SQLiteError`, `AdminError.busy`.
    public func resume(_ target: PauseTarget, by: String) throws -> Bool {
        try store.deletePause(target)
        return try command("resume \(target)") { scheduler, _ in scheduler.unpaused(target, by: by) }
    }

    /// A blocklist check changed whether `ip` is listed: the scheduler holds it (no new leases)
    /// or resumes it, and the change is recorded as a `listed`/`delisted` event for the delivery
    /// log and webhooks (operator `hato`).
    /// - Parameters:
    ///   - ip: the sending IP.
    ///   - holdReason: why it is held (`BlocklistWatch.holdReason`), nil to resume it.
    ///   - event: `.listed` or `.delisted`, with its note (zone, codes, reason).
    ///   - history: the change for the stored health history (`IPHealthStore`), recorded by the
    ///     leader only.
    public func blocklistChanged(ip: String, holdReason: String?, event: (kind: DeliveryEventKind, note: String)?,
                                 history: BlocklistWatch.Change? = nil) {
        let resumedAt = clock.now()
        let wasHeld = blocklistHolds.withLock { h in defer { h[ip] = holdReason }; return h[ip] != nil }
        rewarmStarts.withLock { $0[ip] = holdReason == nil && wasHeld ? resumedAt : (holdReason == nil ? $0[ip] : nil) }
        postBlocklistHold(ip)
        // Every coordinator checks; only the leader records the event (one per change).
        guard leaderInfo.snapshot.isSelf else { return }
        if let history { recordHealthHistory(history) }
        guard let event else { return }
        do {
            try store.recordOperatorEvent(event.kind, by: "hato", target: "ip \(ip)", note: event.note, now: clock.now())
        } catch {
            log.error("recording a blocklist event failed", ["ip": ip, "error": "\(error)"])
        }
    }

    /// An FCrDNS check changed whether `ip` is held (`reputation.require_fcrdns`) or its
    /// verdict: the scheduler holds or resumes it (with its blocklist hold, if any), and the
    /// leader stores the history row and, when a check held or released the IP, a `paused` or
    /// `resumed` event (operator `hato`, target `ip A`) with the reason.
    /// - Parameters:
    ///   - ip: the sending IP.
    ///   - holdReason: why it is held (`FCrDNSWatch.holdReason`), nil when it is not.
    ///   - history: the verdict change for the stored history, if any.
    public func fcrdnsChanged(ip: String, holdReason: String?, history: BlocklistWatch.Change?) {
        let (changed, wasHeld) = fcrdnsHolds.withLock { h -> (Bool, Bool) in
            defer { h[ip] = holdReason }
            return (h[ip] != holdReason, h[ip] != nil)
        }
        if changed { postFCrDNSHold(ip) }
        guard let history, leaderInfo.snapshot.isSelf else { return }
        recordHealthHistory(history)
        // An automatic hold or release is an event with its reason (delivery log, webhooks),
        // recorded when a check found the change — not when a restart re-applies a stored hold.
        guard wasHeld != (holdReason != nil) else { return }
        let kind: DeliveryEventKind = holdReason == nil ? .resumed : .paused
        let note = holdReason.map { "reputation.require_fcrdns: \($0)" } ?? "reputation.require_fcrdns: FCrDNS confirmed again (\(history.event))"
        do {
            try store.recordOperatorEvent(kind, by: "hato", target: "ip \(ip)", note: note, now: clock.now())
        } catch {
            log.error("recording an FCrDNS event failed", ["ip": ip, "error": "\(error)"])
        }
    }

    private func postBlocklistHold(_ ip: String) {
        let reason = blocklistHolds.snapshot[ip]
        post(.command({ scheduler, now in scheduler.blocklistChanged(ip: ip, holdReason: reason, now: now) }, refuse: { _ in }))
    }

    private func postFCrDNSHold(_ ip: String) {
        let reason = fcrdnsHolds.snapshot[ip]
        post(.command({ scheduler, _ in scheduler.fcrdnsChanged(ip: ip, holdReason: reason) }, refuse: { _ in }))
    }

    private func recordHealthHistory(_ change: BlocklistWatch.Change) {
        do { try store.recordIPHealthChange(change) } catch {
            log.error("recording an IP health change failed", ["ip": change.ip, "error": "\(error)"])
        }
    }

    /// Sending IPs held by the blocklist checks: address → why (without FCrDNS holds).
    public func blocklistHoldReasons() -> [String: String] { blocklistHolds.snapshot }
    /// Sending IPs held under `reputation.require_fcrdns`: address → why.
    public func fcrdnsHoldReasons() -> [String: String] { fcrdnsHolds.snapshot }

    /// The nodes' clocks as last seen in their heartbeats (node id → sample), for `doctor`.
    public func nodeClockSamples() -> [String: ClockSkew.Sample] { nodeClocks.snapshot }

    /// A feedback-loop complaint (RFC 5965) about mail a (sending IP, provider) pair delivered:
    /// counted in the pair's reputation signals (`complaints` in `reputation.rules`), which may
    /// fire a rule. Only the leader counts; elsewhere the call does nothing.
    ///
    /// The leader's reporter (`DeliveryReporter.observeComplaints`) calls this for each
    /// `complained` event, with the complained-about recipient's stored `ip` and
    /// `config.shaping.group(forMXHost: mx).name`, whichever coordinator took the report in.
    /// - Parameters:
    ///   - ip: the sending IP.
    ///   - provider: the provider key (a `shaping.providers` name or `mx:<host>`).
    ///   - at: when the complaint arrived.
    public func recordComplaint(ip: String, provider: String, at: Date) {
        post(.command({ scheduler, now in scheduler.complaintRecorded(ip: ip, provider: provider, at: at, now: now) }, refuse: { _ in }))
    }

    /// Sending IPs on the re-warm ramp: address → when they resumed.
    public func rewarming() -> [String: Date] { published.withLock { $0.scheduler.rewarmSince } }

    /// The reputation signals per (sending IP, provider) pair, with active rule actions.
    public func pairSignals() -> [Scheduler.PairSignals] {
        let now = clock.now()
        return published.withLock { $0.scheduler.pairSignals(now: now) }
    }

    /// Per-provider warm-up caps of an IP today: provider label → (cap, recipients leased).
    public func warmupProviderStatus(_ address: String) -> [String: (cap: Int, used: Int)] {
        let now = clock.now()
        return published.withLock { $0.scheduler.warmupProviderStatus(address, now: now) }
    }

    /// Sending IPs held by the reputation checks (blocklist listings, FCrDNS under
    /// `require_fcrdns`): address → why.
    public func blocklisted() -> [String: String] { published.withLock { $0.scheduler.heldIPs } }

    /// Active pauses.
    public func pauses() -> [Pause] {
        published.withLock { $0.scheduler.pauses.values.sorted { ($0.target.kind.rawValue, $0.target.name) < ($1.target.kind.rawValue, $1.target.name) } }
    }

    /// Lifts every backoff of one provider (`lift --provider gmail`).
    /// - Returns: the backoffs lifted.
    /// - Throws: `AdminError.busy`.
    public func liftProvider(_ label: String) throws -> [BackoffTable.Entry] {
        let lifted = try command("lift provider \(label)") { scheduler, now in
            let lifted = scheduler.liftProvider(label, now: now)
            return (lifted, lifted.map { Scheduler.Directive.forgetSignals(ip: $0.sendingIP, provider: $0.provider) } + [.scheduleNextTick(after: 0)])
        }
        for e in lifted {
            do {
                try store.deleteBackoff(ip: e.sendingIP, provider: e.provider)
                try store.deleteReputationCounts(ip: e.sendingIP, provider: e.provider)
            } catch {
                log.error("deleting a stored backoff failed", ["ip": e.sendingIP, "provider": e.provider, "error": "\(error)"])
            }
        }
        return lifted
    }

    /// Why a waiting recipient waits (see `Scheduler.waitReason`).
    public func waitReason(pool: String, domain: String, state: String, nextAttemptAt: Date?) -> String {
        let now = clock.now()
        return published.withLock { $0.scheduler.waitReason(pool: pool, domain: domain, state: state, nextAttemptAt: nextAttemptAt, now: now) }
    }

    /// Backoffs, pauses and warm-up counts for the metrics.
    public func gauges() -> CoordinatorMetrics.ClusterGauges {
        let now = clock.now()
        return published.withLock { s in
            var g = CoordinatorMetrics.ClusterGauges()
            let sched = s.scheduler
            g.backoffs = sched.backoffs.active(now: now).map { (ip: $0.sendingIP, provider: sched.providerLabel(ofBackoffKey: $0.provider), reason: $0.action.rawValue) }
            g.pauses = sched.pauses.keys.sorted { ($0.kind.rawValue, $0.name) < ($1.kind.rawValue, $1.name) }
            g.warmup = sched.config.ips.compactMap { ip in sched.warmupStatus(ip.address, now: now).map { (ip: ip.address, cap: $0.cap, sent: $0.used) } }
            let info = leaderInfo.snapshot
            g.leader = info.isSelf
            g.term = info.term
            g.leasesGranted = leasesGranted.snapshot
            g.leasesGrantedAtQueueing = leasesGrantedAtQueueing.snapshot
            return g
        }
    }

    /// The provider label of a destination domain (learned from MX hosts, or well known).
    public func providerLabel(ofDomain domain: String) -> String {
        published.withLock { $0.scheduler.providerLabel(ofDomain: domain) }
    }

    /// The configuration in force.
    public var currentConfig: ClusterConfig { published.withLock { $0.config } }
}
