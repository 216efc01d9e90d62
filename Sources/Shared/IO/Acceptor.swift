#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HatoSupport

/// One admitted connection, handed to an `Acceptor`'s handler on a thread of its own (or, with
/// `Configuration.handsOff`, given to the handler on the accepting thread).
///
/// The handler's thread owns `socket` (see `Socket`'s close rule): it may close it early;
/// otherwise the acceptor closes it, on that same thread, when the handler returns, and then
/// releases `admission`.
public struct AcceptedConnection: Sendable {
    /// The connected socket (blocking, `TCP_NODELAY`).
    public let socket: Socket
    /// The peer's address.
    public let peer: SocketAddress
    /// The connection's slot; with a pre-authentication tier, `promote()` it after the handshake.
    public let admission: AdmissionToken
}

/// The one listener loop of Hato (SMTP submission, the admin/metrics HTTP listener, the capture
/// server, the cluster listener): accepts connections, admits them against an
/// `AdmissionControl`, runs each admitted one on a thread of its own, and refuses the rest
/// cheaply on the accepting thread itself.
///
/// - **Refusal**: the `refusal` bytes (SMTP `421 4.7.0`, HTTP `503`, or nothing) are written
///   without waiting (a new connection's send buffer is empty), the sending side is shut down,
///   and the connection lingers up to `lingerTime` while what the client sent is read and
///   dropped, so the close does not reset the refusal away; no thread is started for it.
/// - **Descriptor shortage**: `EMFILE`/`ENFILE`/`ENOBUFS`/`ENOMEM` from `accept` pause accepting
///   for `exhaustionBackoff` (connections wait in the kernel's backlog) and are logged at most
///   every 10 s.
/// - **Handshake deadlines**: with `PreAuthenticationLimits`, connections not promoted in time
///   are shut down from this loop (their readers then close them).
///
/// The loop `poll`s the listener and the lingering sockets; it owns them and closes them.
/// `stop()` from any thread shuts the listener down, which wakes the loop.
///
/// The cluster listener with the pre-authentication tier of issue 13 (unauthenticated links
/// capped in total and per peer, and shut down when the handshake is not done in time):
///
///     let admission = AdmissionControl(limits: .cluster, preAuthentication: .cluster)
///     let acceptor = try Acceptor(address: config.coordinator.listen, configuration: .init(name: "cluster"),
///                                 admission: admission) { connection in
///         // This thread owns connection.socket (it reads it); returning closes it and frees the slot.
///         let conn = ClusterConnection(socket: connection.socket, maximumFrameSize: maxFrame)
///         // … send the challenge, receive the hello, verify the HMAC proof …
///         connection.admission.promote()  // authenticated: out of the unauthenticated tier, no deadline
///         // … the session's receive loop; other threads end it with conn.shutdown(), never close() …
///     }
///     acceptor.start()
///     // Stopping: acceptor.stop(), then shutdown() each session's connection.
///
/// A refused cluster connection is closed without a word (the default `refusal`); a link that
/// stays silent past the deadline is shut down by this loop, so its handler's `receive` throws
/// and the handler returns.
public final class Acceptor: Sendable {
    /// How the loop behaves (not the limits: those are the `AdmissionControl`'s).
    public struct Configuration: Sendable {
        /// The listener's name in thread names and logs, e.g. `smtp`, `admin`, `cluster`.
        public var name: String
        /// The kernel's accept queue length. Default 1024.
        public var backlog: Int32 = 1024
        /// How long a refused connection may linger after its refusal. Default 2 s.
        public var lingerTime: Duration = .seconds(2)
        /// The most refused connections lingering at once; beyond, they are closed at once. Default 256.
        public var maxLingering = 256
        /// The pause after `accept` ran out of descriptors or memory. Default 100 ms.
        public var exhaustionBackoff: Duration = .milliseconds(100)
        /// Whether the handler takes each admitted connection over instead of running on a
        /// thread of its own: it is then called on the accepting thread, must return at once
        /// (hand the connection to an `EventLoop`), and its new owner closes the socket and
        /// releases the admission slot. Default false.
        public var handsOff = false

        /// A configuration named `name` with the defaults.
        public init(name: String) { self.name = name }
    }

    /// What to write to a refused connection (empty: close without a word).
    public typealias Refusal = @Sendable (_ peer: SocketAddress, _ reason: AdmissionRefusal) -> [UInt8]
    /// Serves one admitted connection (on its own thread; with `Configuration.handsOff`, takes it over).
    public typealias Handler = @Sendable (AcceptedConnection) -> Void

    /// The bound address (the real port when bound to port 0).
    public let address: SocketAddress
    /// The shared counts and limits.
    public let admission: AdmissionControl
    /// The loop's configuration.
    public let configuration: Configuration

    private let listener: Socket
    private let refusal: Refusal
    private let handler: Handler
    private let log: Logger
    /// The sessions' threads, kept a while after a session for the next one.
    private let sessionThreads: ThreadReuse

    private struct State: Sendable {
        var started = false
        var stopping = false
        var finished = false
        var refusedSinceLog: [String: Int] = [:]
        var lastRefusalLog: ContinuousClock.Instant?
        var lastExhaustionLog: ContinuousClock.Instant?
        var accepted = 0
        var refused = 0
        var exhaustions = 0
    }
    private let state = LockedCondition(State())

    /// Binds `address` (nothing is accepted until `start()`).
    /// - Parameters:
    ///   - address: where to listen; port 0 picks a free port (see `address`).
    ///   - configuration: the loop's settings.
    ///   - admission: the limits (shared with other acceptors when they share limits).
    ///   - refusal: the bytes for a refused connection.
    ///   - handler: serves an admitted connection on a thread of its own.
    /// - Throws: `SocketError` when the address cannot be bound.
    public init(address: SocketAddress, configuration: Configuration, admission: AdmissionControl,
                refusal: @escaping Refusal = { _, _ in [] }, handler: @escaping Handler) throws {
        listener = try Socket.listen(on: address, backlog: configuration.backlog)
        try listener.setNonBlocking()
        self.address = listener.localAddress ?? address
        self.configuration = configuration
        self.admission = admission
        self.refusal = refusal
        self.handler = handler
        self.log = Logger(label: "acceptor.\(configuration.name)")
        self.sessionThreads = ThreadReuse(name: "\(configuration.name)-conn")
    }

    /// Starts the accepting thread (once).
    public func start() {
        let first = state.withLock { s -> Bool in defer { s.started = true }; return !s.started && !s.stopping }
        guard first else { return }
        Thread.startNamed("\(configuration.name)-accept") { [self] in run() }
    }

    /// Stops accepting: the listener is shut down (new connections are refused by the kernel)
    /// and the loop closes it. Connections already admitted go on.
    /// - Parameter timeout: how long to wait for the loop to have closed the listener.
    /// - Returns: whether the loop had finished (or never started) when this returned.
    @discardableResult
    public func stop(timeout: Duration = .seconds(2)) -> Bool {
        let started = state.withLockAndBroadcast { s -> Bool in s.stopping = true; return s.started }
        listener.shutdown()
        guard started else {
            listener.close()  // no loop owns it
            return true
        }
        return state.wait(until: .now + timeout, for: { $0.finished }) { _, done in done }
    }

    /// Counters since start: connections admitted, refused, and `accept` descriptor shortages.
    public var counters: (accepted: Int, refused: Int, exhaustions: Int) {
        state.withLock { ($0.accepted, $0.refused, $0.exhaustions) }
    }

    private struct Lingering {
        var socket: Socket
        var until: ContinuousClock.Instant
    }

    private func run() {
        var lingering: [Lingering] = []
        var pausedUntil: ContinuousClock.Instant?
        var scratch = [UInt8](repeating: 0, count: 4096)
        defer {
            for l in lingering { l.socket.close() }
            listener.close()
            flushRefusalLog(force: true)
            state.withLockAndBroadcast { $0.finished = true }
        }
        while !state.withLock({ $0.stopping }) {
            let now = ContinuousClock.now
            if let until = pausedUntil, until <= now { pausedUntil = nil }
            // The poll's timeout: the nearest linger end, handshake deadline or pause end, at most 1 s.
            var wake = now + .seconds(1)
            if let next = admission.expireHandshakes(now: now), next < wake { wake = next }
            if let until = pausedUntil, until < wake { wake = until }
            for l in lingering where l.until < wake { wake = l.until }

            var fds: [pollfd] = []
            fds.reserveCapacity(lingering.count + 1)
            let listenFD = listener.ownerDescriptor
            if listenFD < 0 { return }
            // While paused the listener stays out of the set (it would be readable at once).
            fds.append(pollfd(fd: pausedUntil == nil ? listenFD : -1, events: Int16(POLLIN), revents: 0))
            for l in lingering { fds.append(pollfd(fd: l.socket.ownerDescriptor, events: Int16(POLLIN), revents: 0)) }
            let ready: Int32
            do {
                ready = try SystemCall.runToCompletion("poll") { poll(&fds, nfds_t(fds.count), now.duration(to: wake).pollMilliseconds) }
            } catch {
                log.error("poll failed; listener stopped", ["error": "\(error)"])
                return
            }

            // Lingering refused connections: drop what they sent; close at end of stream, error or time.
            let after = ContinuousClock.now
            if !lingering.isEmpty {
                var kept: [Lingering] = []
                kept.reserveCapacity(lingering.count)
                for (i, l) in lingering.enumerated() {
                    var done = l.until <= after
                    if !done && ready > 0 && fds[i + 1].revents != 0 {
                        done = drain(l.socket, &scratch)
                    }
                    if done { l.socket.close() } else { kept.append(l) }
                }
                lingering = kept
            }

            if pausedUntil == nil && ready > 0 && fds[0].revents != 0 {
                // Accept what is queued (bounded, so lingering sockets and deadlines get their turn).
                for _ in 0..<64 {
                    let accepted: (Socket, SocketAddress)?
                    do {
                        accepted = try listener.acceptIfPending()
                    } catch let e as SocketError where e.isResourceExhaustion {
                        pausedUntil = ContinuousClock.now + configuration.exhaustionBackoff
                        noteExhaustion(e)
                        break
                    } catch let e as SocketError where e.kind == .closed {
                        return  // shut down by stop()
                    } catch {
                        log.error("accept failed; listener stopped", ["error": "\(error)"])
                        return
                    }
                    guard let (socket, peer) = accepted else { break }
                    switch admission.admit(socket, from: peer) {
                    case .admitted(let token):
                        state.withLock { $0.accepted += 1 }
                        dispatch(AcceptedConnection(socket: socket, peer: peer, admission: token))
                    case .refused(let reason):
                        state.withLock { $0.refused += 1 }
                        noteRefusal(reason, peer: peer)
                        if refuse(socket, peer: peer, reason: reason) && lingering.count < configuration.maxLingering {
                            lingering.append(Lingering(socket: socket, until: ContinuousClock.now + configuration.lingerTime))
                        } else {
                            socket.close()
                        }
                    }
                }
            }
        }
    }

    /// Runs the handler on a thread of its own (a reused one when a finished session's thread
    /// waits, see `ThreadReuse`); that thread closes the socket and releases the slot. With
    /// `handsOff`, calls the handler here: the connection is its own from then on.
    private func dispatch(_ connection: AcceptedConnection) {
        let handler = self.handler
        if configuration.handsOff {
            handler(connection)
            return
        }
        sessionThreads.run {
            handler(connection)
            connection.socket.close()
            connection.admission.release()
        }
    }

    /// Writes the refusal without waiting and shuts the sending side down.
    /// - Returns: whether the connection should linger (false: close it now).
    private func refuse(_ socket: Socket, peer: SocketAddress, reason: AdmissionRefusal) -> Bool {
        let bytes = refusal(peer, reason)
        guard !bytes.isEmpty else { return false }
        do { try socket.writeIfReady(bytes) } catch { return false }
        socket.shutdownWrite()
        return true
    }

    /// Reads and drops what a lingering connection sent (at most 64 KiB per pass).
    /// - Returns: whether it is finished (end of stream or an error).
    private func drain(_ socket: Socket, _ scratch: inout [UInt8]) -> Bool {
        for _ in 0..<16 {
            let result: IOResult<Int>
            do { result = try scratch.withUnsafeMutableBytes { try socket.readIfReady(into: $0) } } catch { return true }
            switch result {
            case .wouldBlock: return false
            case .processed(let n): if n == 0 { return true }
            }
        }
        return false
    }

    private func noteRefusal(_ reason: AdmissionRefusal, peer: SocketAddress) {
        state.withLock { $0.refusedSinceLog[reason.description, default: 0] += 1 }
        flushRefusalLog(force: false, peer: peer)
    }

    /// Logs refusals at most every 10 s, with counts per limit (a flood must not flood the log).
    private func flushRefusalLog(force: Bool, peer: SocketAddress? = nil) {
        let now = ContinuousClock.now
        let counts = state.withLock { s -> [String: Int]? in
            guard !s.refusedSinceLog.isEmpty else { return nil }
            if !force, let last = s.lastRefusalLog, last.duration(to: now) < .seconds(10) { return nil }
            defer { s.refusedSinceLog = [:]; s.lastRefusalLog = now }
            return s.refusedSinceLog
        }
        guard let counts else { return }
        var fields = ["listen": address.description]
        for (limit, n) in counts { fields["refused_\(limit)"] = "\(n)" }
        if let peer { fields["last_client"] = peer.host }
        log.warning("connections refused: limit reached", fields)
    }

    private func noteExhaustion(_ error: SocketError) {
        let now = ContinuousClock.now
        let shouldLog = state.withLock { s -> Bool in
            s.exhaustions += 1
            if let last = s.lastExhaustionLog, last.duration(to: now) < .seconds(10) { return false }
            s.lastExhaustionLog = now
            return true
        }
        if shouldLog {
            log.warning("accept: out of descriptors or memory; backing off", [
                "listen": address.description, "error": "\(error)",
                "backoff_ms": "\(configuration.exhaustionBackoff.pollMilliseconds)",
                "open_connections": "\(admission.openConnections)",
            ])
        }
    }
}
