#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HatoConfig
import HatoIO
import HatoSupport
import SMTPCore

/// One client session of the submission listener, as its drivers keep it: the pure
/// `SMTPServerSession`, the replies not yet written, the phase's deadline and what the session
/// holds (content memory, its tenant).
///
/// `@unchecked Sendable`: used by one thread at a time — the event loop that serves the
/// session, the committer while the loop waits for its queue write (the loop does not touch
/// it then), or the session thread it was handed to for AUTH or STARTTLS (for good).
final class SubmissionSessionState: @unchecked Sendable {
    let conn: Socket
    let peer: SocketAddress
    let admission: AdmissionToken
    /// The socket, or the TLS stream over it after STARTTLS.
    var stream: any ByteStream
    var session: SMTPServerSession
    let tenantSession: TenantSMTPSession
    let reservation: ContentMemory.Reservation
    let smtp: SMTPSettings
    let tlsContext: TLSContext?
    /// `smtp.command_timeout` and `smtp.data_timeout`.
    let commandTimeout: Duration, dataTimeout: Duration
    /// Octets per second that keep extending the DATA deadline.
    let minimumDataRate: Double
    /// Replies not yet written.
    var out: [UInt8] = []
    /// Replies queued so far (a command answered restarts `command_timeout`).
    var repliesQueued = 0
    /// A message was queued whose `250` is not yet written.
    var queuedSinceWrite = false
    /// When the phase's time is up (monotonic: a wall-clock step neither cuts a session off
    /// nor keeps a silent one open, RFC 5321 §4.5.3.2).
    var deadline: ContinuousClock.Instant
    /// Whether the deadline is the content phase's.
    var readingContent = false
    /// Whether the last read returned less than the buffer holds: the kernel had no more
    /// input then, so replies go out without asking it again (RFC 2920 §3.2 allows flushing early).
    var lastReadDrained = true

    // The event loop's own bookkeeping.
    /// Replies could not all be written: the session waits for the socket to drain until then.
    var writeDeadline: ContinuousClock.Instant?
    /// `.close` was reached: the session ends once its replies are written.
    var closing = false
    /// A queue write is under way (`SubmissionCommitter`).
    var storing = false
    /// Whether the session's RCPT check reads the store (`suppression.mode: reject_at_rcpt`):
    /// such a session runs on a thread of its own, never on the event loop.
    var checksReadStore = false

    init(accepted: AcceptedConnection, session: SMTPServerSession, tenantSession: TenantSMTPSession,
         reservation: ContentMemory.Reservation, smtp: SMTPSettings, tlsContext: TLSContext?, minimumDataRate: Double) {
        conn = accepted.socket; peer = accepted.peer; admission = accepted.admission; stream = accepted.socket
        self.session = session; self.tenantSession = tenantSession; self.reservation = reservation
        self.smtp = smtp; self.tlsContext = tlsContext; self.minimumDataRate = minimumDataRate
        commandTimeout = .seconds(smtp.commandTimeout); dataTimeout = .seconds(smtp.dataTimeout)
        deadline = .now + commandTimeout
    }
}

/// The submission listener's event loops: every admitted session starts on one of them and
/// stays there while it only exchanges commands, replies and content with its client; the
/// loop thread reads, feeds the session, and writes its replies without blocking.
///
/// - A queue write (the fsync before the `250`) goes to the `SubmissionCommitter`, which
///   writes every waiting message of every loop in one transaction; the session is out of the
///   loop's set until it is done, so the loop reads nothing from it meanwhile (pipelined
///   commands wait in the kernel, as with a blocking driver).
/// - AUTH (PBKDF2) and STARTTLS (the handshake, then TLS records) hand the session to a
///   thread of its own for the rest of its life: `SubmissionServer.runBlocking`; so do
///   sessions whose RCPT check reads the store (suppression at RCPT). Nothing on the loop
///   waits for the store: the tenant tables are looked up in memory (`TenantDirectory`).
/// - Deadlines (`command_timeout`, `data_timeout` with the minimum data rate, the write of
///   pending replies) are checked every 100 ms by the loop's sweep: `421 4.4.2`, then close.
/// - A client that does not read its replies: once 64 KiB or more are pending, or a write
///   did not take everything, the loop stops reading that session until the rest is written
///   (`command_timeout` for that) — memory stays bounded (RFC 2920 §3.2).
///
/// Issue 19: the thread-per-session driver blocked in `recv` for each of a client's commands
/// (a context switch each way, seven round trips per message); the loop serves every session
/// that is ready in one wake-up.
final class SubmissionLoop: @unchecked Sendable {
    /// The loop (its thread owns the sessions' sockets while they are here).
    let loop: EventLoop
    /// The listener (a strong reference: it lives as long as the process serves SMTP).
    private let server: SubmissionServer
    /// Loop thread only: the sessions registered or storing, for the sweep.
    private var sessions: [ObjectIdentifier: SubmissionSessionState] = [:]
    /// Loop thread only: one read buffer for every session (what a session keeps, it copies).
    private var buffer = [UInt8](repeating: 0, count: 64 * 1024)
    /// Loop thread only: the server stopped; the loop ends once its last session has.
    private var stopping = false
    /// Loop thread only: the loop was told to end.
    private var ended = false
    /// Writes the queued messages of every loop of the server, in batches.
    private let committer: SubmissionCommitter
    /// Runs sessions handed over for AUTH or STARTTLS.
    private let sessionThreads: ThreadReuse
    private let log = Logger(label: "coordinator.smtp")

    /// The loop's sweep reaches its owner through this (the loop must not keep it alive).
    private final class WeakBox<T: AnyObject> {
        weak var value: T?
    }

    /// - Parameters:
    ///   - server: the listener whose sessions this loop serves.
    ///   - committer: where queue writes go.
    ///   - index: the loop's number, for thread names.
    /// - Throws: `SystemCallError` from `epoll_create1` or `eventfd`.
    init(server: SubmissionServer, committer: SubmissionCommitter, index: Int) throws {
        self.server = server
        self.committer = committer
        sessionThreads = ThreadReuse(name: "smtp-conn")
        let owner = WeakBox<SubmissionLoop>()
        loop = try EventLoop(name: "smtp-loop-\(index)", sweepInterval: .milliseconds(100), sweep: { owner.value?.sweepDeadlines() })
        owner.value = self
        loop.start()
    }

    /// Takes an admitted connection over (any thread). After the loop ended (the listener
    /// stopped), the connection is closed at once and its slot given back.
    func adopt(_ accepted: AcceptedConnection) {
        if !loop.execute({ [self] in start(accepted) }) { Self.refuse(accepted) }
    }

    private static func refuse(_ accepted: AcceptedConnection) {
        accepted.socket.close()
        accepted.admission.release()
    }

    /// The listener stopped: sessions in progress finish on their own, then the loop ends.
    func stop() {
        loop.execute { [self] in
            stopping = true
            if sessions.isEmpty { finishStopping() }
        }
    }

    /// The listener stopped and the last session left: the loop ends, and the committer once
    /// every loop has.
    private func finishStopping() {
        guard !ended else { return }
        ended = true
        loop.stop()
        server.loopEnded()
    }

    private func start(_ accepted: AcceptedConnection) {
        // The listener stopped and this loop is ending: no new session on it.
        guard !ended else {
            Self.refuse(accepted)
            return
        }
        let s = server.makeSession(accepted)
        sessions[ObjectIdentifier(s)] = s
        do {
            try watch(s, .readable)
        } catch {
            end(s)
            return
        }
        if s.checksReadStore {
            handOver(s, s.session.start())
            return
        }
        perform(s, s.session.start())
    }

    private func watch(_ s: SubmissionSessionState, _ interest: EventLoop.Interest) throws {
        // Strong references: the registration goes when the session leaves the loop.
        try loop.register(s.conn, interest: interest) { [self] ready in self.ready(s, ready) }
    }

    /// Ends a session served here: out of the loop, closed, its slot released.
    private func end(_ s: SubmissionSessionState) {
        loop.deregister(s.conn)
        sessions.removeValue(forKey: ObjectIdentifier(s))
        server.finish(s)
        if stopping && sessions.isEmpty { finishStopping() }
    }

    /// The session leaves the loop for good (AUTH or STARTTLS): a thread of its own carries
    /// out `actions` and serves the rest.
    private func handOver(_ s: SubmissionSessionState, _ actions: [SMTPServerAction]) {
        loop.deregister(s.conn)
        sessions.removeValue(forKey: ObjectIdentifier(s))
        let server = self.server
        sessionThreads.run { server.runBlocking(s, after: actions) }
        if stopping && sessions.isEmpty { finishStopping() }
    }

    private func ready(_ s: SubmissionSessionState, _ readiness: EventLoop.Readiness) {
        if !s.out.isEmpty || s.closing {
            // Waiting for the client to take the replies: nothing is read meanwhile.
            guard flush(s) else { return }
            if s.closing {
                if s.out.isEmpty { end(s) }
                return
            }
            if !s.out.isEmpty { return }
        }
        // Reads until the kernel has no more (a full buffer means there may be more: a
        // pipelined group is answered as a whole), at most 16 buffers before the replies go out.
        for _ in 0..<16 {
            // Commands are read 4 KiB at a time: a short line can earn a long reply (a bare
            // LF: 3 octets, a 95-octet 500), so a read's replies stay near 130 KiB at most
            // before the session stops being read for want of a client reading them.
            let size = s.session.isReadingContent ? buffer.count : 4096
            let result: IOResult<Int>
            do {
                result = try buffer.withUnsafeMutableBytes { try s.conn.readIfReady(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<size])) }
            } catch {
                end(s)
                return
            }
            guard case .processed(let n) = result else { break }
            if n == 0 {
                end(s)
                return
            }
            s.lastReadDrained = n < size
            let before = server.received(s, n)
            let actions = s.session.receive(buffer[0..<n])
            server.accountContent(s, releasing: false)  // a message handed over in `actions` stays reserved until stored
            guard perform(s, actions, flushing: false) else { return }
            server.accountContent(s, releasing: true)
            server.answered(s, repliesBefore: before)
            server.noteContentPhase(s)
            if s.lastReadDrained || s.writeDeadline != nil { break }
        }
        if !s.out.isEmpty { _ = flush(s) }
    }

    /// Carries out actions on the loop. A queue write pauses the session; AUTH and STARTTLS
    /// hand it over; 64 KiB of pending replies are written at once.
    /// - Parameter flushing: whether replies are written at the end (the reader writes them
    ///   itself once the input is drained).
    /// - Returns: whether the session is still served by the loop and not waiting for a store.
    @discardableResult
    private func perform(_ s: SubmissionSessionState, _ actions: [SMTPServerAction], flushing: Bool = true) -> Bool {
        var pending = actions[...]
        while let action = pending.popFirst() {
            switch action {
            case .send(let bytes):
                server.queueReply(s, bytes)
            case .store(let message):
                // Out of the loop's set until stored: no reads meanwhile (no spinning on a
                // readable socket either). Replies so far go out first.
                if !s.out.isEmpty { _ = flush(s, watching: false) }
                loop.deregister(s.conn)
                s.storing = true
                committer.submit(SubmissionCommitter.Job(message: message, session: s, loop: self, rest: Array(pending)))
                return false
            case .authenticate, .startTLS:
                handOver(s, [action] + Array(pending))
                return false
            case .close:
                s.closing = true
                // Ends once the replies are written (`ready`), or at their write deadline.
                guard flush(s) else { return false }
                if s.out.isEmpty { end(s) }
                return false
            }
        }
        if !s.out.isEmpty && (flushing || s.out.count >= 64 * 1024) { return flush(s) }
        return true
    }

    /// The committer answered these sessions (any thread): each goes on where it paused.
    /// `repliesBefore` is the session's reply count before the committer queued (and wrote) its
    /// first replies itself (`SubmissionCommitter.answer`).
    func resume(_ answers: [(session: SubmissionSessionState, actions: [SMTPServerAction], repliesBefore: Int)]) {
        loop.execute { [self] in for a in answers { stored(a.session, a.actions, repliesBefore: a.repliesBefore) } }
    }

    /// The committer finished the session's queue write.
    private func stored(_ s: SubmissionSessionState, _ actions: [SMTPServerAction], repliesBefore before: Int) {
        s.storing = false
        do {
            try watch(s, .readable)
        } catch {
            end(s)
            return
        }
        // What the client pipelined after the content was kept by the session and is
        // answered now; replies go out at once (more input, if any, is still in the kernel).
        s.lastReadDrained = true
        server.accountContent(s, releasing: false)
        guard perform(s, actions) else { return }
        server.accountContent(s, releasing: true)
        server.answered(s, repliesBefore: before)
        server.noteContentPhase(s)
    }

    /// Writes what the socket takes now.
    /// - Parameter watching: whether the session is in the loop's set (its interest follows
    ///   what is left: writable until written, then readable).
    /// - Returns: false when the session ended (the write failed).
    private func flush(_ s: SubmissionSessionState, watching: Bool = true) -> Bool {
        var written = 0
        if !s.out.isEmpty {
            do { written = try s.conn.writeIfReady(s.out) } catch {
                if watching { end(s) }
                return !watching
            }
            if written == s.out.count {
                s.out.removeAll(keepingCapacity: s.out.capacity <= 64 * 1024)
            } else {
                s.out.removeFirst(written)
            }
        }
        if s.out.isEmpty {
            s.writeDeadline = nil
            server.announceQueued(s)
            if watching && !s.closing { loop.setInterest(s.conn, .readable) }
        } else {
            // `command_timeout` for the client to take more of them (restarted by progress,
            // as a blocking write's SO_SNDTIMEO restarts with each send that moves data).
            if s.writeDeadline == nil || written > 0 { s.writeDeadline = .now + s.commandTimeout }
            if watching { loop.setInterest(s.conn, .writable) }
        }
        return true
    }

    /// Every 100 ms: sessions past their deadline get `421 4.4.2` and are closed; a session
    /// whose replies the client has not taken within `command_timeout` is closed.
    private func sweepDeadlines() {
        let now = ContinuousClock.now
        for s in Array(sessions.values) where !s.storing {
            if let writeDeadline = s.writeDeadline, writeDeadline <= now {
                end(s)
            } else if s.closing {
                continue
            } else if s.deadline <= now {
                log.info("session timed out", ["client": s.peer.host, "phase": s.readingContent ? "data" : "command"])
                perform(s, s.session.timeout())
            }
        }
    }
}

/// The queue writes of the submission loops, batched on one thread: it takes every message
/// waiting, prepares each (`SubmissionServer.prepare`: routing, the tenant's checks, the
/// fix-ups, the `Received:` field), writes them all in one transaction and fsync
/// (`QueueStore.enqueue([NewMessage])`), tells each session, and hands the sessions back to
/// their loops with one task per loop.
///
/// One wake-up per batch instead of two or three per message (a store thread woken for the
/// message, then waiting in the group commit, then waiting for the next message): the group
/// commit's sharing of one fsync, without its hand-offs. A batch whose write fails fails for
/// every message in it (`451 4.3.0`, `452 4.3.1` when the disk is full), as a group commit does;
/// nothing is `250` before its fsync.
final class SubmissionCommitter: Sendable {
    /// One message waiting: its session (the loop leaves it alone meanwhile), and where the
    /// session's next actions go.
    struct Job: Sendable {
        let message: SubmittedMessage
        let session: SubmissionSessionState
        let loop: SubmissionLoop
        /// The session's actions after the store's, carried out once it is answered.
        let rest: [SMTPServerAction]
    }

    private let server: SubmissionServer
    private let store: any QueueStore
    private let waiting = LockedCondition<(jobs: [Job], stopping: Bool)>(([], false))

    init(server: SubmissionServer, store: any QueueStore) {
        self.server = server
        self.store = store
        Thread.startNamed("smtp-commit") { [self] in run() }
    }

    /// Queues a message (any thread).
    func submit(_ job: Job) {
        waiting.withLockAndSignal { $0.jobs.append(job) }
    }

    /// Ends the thread after the messages queued so far.
    func stop() {
        waiting.withLockAndSignal { $0.stopping = true }
    }

    private func run() {
        while true {
            let (jobs, stopping) = waiting.wait(until: nil, for: { !$0.jobs.isEmpty || $0.stopping }) { w, _ in
                defer { w.jobs.removeAll(keepingCapacity: true) }
                return (w.jobs, w.stopping)
            }
            if !jobs.isEmpty { write(jobs) }
            if stopping && jobs.isEmpty { return }
        }
    }

    private func write(_ jobs: [Job]) {
        var results = [Result<String, StoreFailure>?](repeating: nil, count: jobs.count)
        var prepared: [(index: Int, message: SubmissionServer.PreparedMessage)] = []
        for (i, job) in jobs.enumerated() {
            switch server.prepare(job.message, tenantSession: job.session.tenantSession) {
            case .finished(let result): results[i] = result
            case .ready(let message): prepared.append((i, message))
            }
        }
        var failure: (any Error)?
        if !prepared.isEmpty {
            for (_, message) in prepared { server.keepForGrant(message) }
            do { try store.enqueue(prepared.map(\.message.record)) } catch { failure = error }
            for (i, message) in prepared { results[i] = server.settle(message, failure: failure, kept: true) }
        }
        // Each session told on this thread (its loop does not touch it until handed back),
        // and handed back at once: the replies go out before the log lines are written (a
        // crash in between would leave a message queued whose client never heard so).
        var byLoop: [ObjectIdentifier: (loop: SubmissionLoop, answers: [(session: SubmissionSessionState, actions: [SMTPServerAction], repliesBefore: Int)])] = [:]
        var queued = false
        for (i, job) in jobs.enumerated() {
            let actions: [SMTPServerAction]
            switch results[i] ?? .failure(.temporary) {
            case .success(let id):
                queued = true
                actions = job.session.session.messageStored(id: id)
            case .failure(let failure):
                actions = job.session.session.messageStoreFailed(failure)
            }
            let before = job.session.repliesQueued
            let rest = answer(job.session, actions)
            byLoop[ObjectIdentifier(job.loop), default: (job.loop, [])].answers.append((job.session, rest + job.rest, before))
        }
        for (_, entry) in byLoop { entry.loop.resume(entry.answers) }
        // The scheduler is woken once the 250s are written (above): the thread woken may run
        // on this CPU first, in front of the replies (issue 19). New mail's leases need no
        // wake-up at light load: they were planned and recorded during the fsync
        // (`Scheduler.leaseFresh`).
        if queued { server.announceAccepted() }
        if failure == nil { for (_, message) in prepared { server.logQueued(message) } }
    }

    /// Writes the session's leading replies (the `250` or `451` for its message) from this
    /// thread, without waiting: the session is still this thread's until handed back (its loop
    /// left it alone since the `.store` action), and a reply sent here leaves one wake-up of the
    /// loop's thread earlier (issue 19: on an idle 2-vCPU machine that wake-up took from 0.05 to
    /// over 0.5 ms). What the socket does not take now, and a failed write, stay for the loop
    /// (its next flush writes the rest or ends the session).
    /// - Returns: the actions left for the loop.
    private func answer(_ s: SubmissionSessionState, _ actions: [SMTPServerAction]) -> [SMTPServerAction] {
        var rest = actions[...]
        while case .send(let bytes)? = rest.first {
            server.queueReply(s, bytes)
            rest.removeFirst()
        }
        guard !s.out.isEmpty, let written = try? s.conn.writeIfReady(s.out), written > 0 else { return Array(rest) }
        if written == s.out.count {
            s.out.removeAll(keepingCapacity: s.out.capacity <= 64 * 1024)
            s.writeDeadline = nil  // as `flush` does: nothing is waiting for the client to read
        } else {
            s.out.removeFirst(written)
            s.writeDeadline = .now + s.commandTimeout
        }
        return Array(rest)
    }
}
