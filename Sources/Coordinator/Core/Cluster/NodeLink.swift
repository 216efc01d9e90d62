import ClusterProtocol
import Foundation
import HatoIO
import HatoSupport

/// One authenticated node connection as the coordinator's shell holds it: the connection,
/// and a writer thread of its own that sends what is queued for it, so that a node that
/// stops reading holds up only its own frames — never grants to the other nodes, nor the
/// scheduler thread.
///
/// Ownership (docs/threads.md): the connection's reader thread owns the socket and is the
/// only one to close it (`finish`); the writer thread writes what is queued; the scheduler
/// thread may also write on an idle link (`sendNow`); every other thread only queues frames or
/// calls `shutdown`.
final class NodeLink: Sendable {
    /// What the writer sends, in order.
    enum Item: Sendable {
        /// One message.
        case message(ClusterMessage)
        /// Messages sent with one write where they fit (`ClusterConnection.send(_:)`).
        case messages([ClusterMessage])
        /// Messages built on the writer thread (lease grants with their bodies read from the
        /// queue), so the scheduler thread does not read bodies or encode them.
        case build(@Sendable () -> [ClusterMessage])
        /// Framed octets: the part of a direct write (`sendNow`) the socket did not take.
        case encoded([UInt8])
    }

    private struct Outbox: Sendable {
        var items: [Item] = []
        var closed = false
        var shutdownWhenSent = false
        var writerDone = false
        /// The writer thread is sending a batch it took.
        var writing = false
        /// Another thread is writing directly (`sendNow`); the writer waits until it is done.
        var direct = false
    }

    /// Unique for the life of the process.
    let id: ConnectionID
    /// The node id its `hello` proved.
    let nodeID: String
    let peer: SocketAddress
    /// The optional protocol features its `hello` named (`ClusterFeature`).
    let features: Set<String>
    let connection: ClusterConnection
    private let outbox = LockedCondition(Outbox())
    private let log: Logger
    /// Set once `welcome` is queued (on the scheduler thread): frames that only a joined node
    /// understands (`signing_keys`) are queued only after it.
    private let welcomedFlag = Locked(false)

    /// Items queued beyond which a link counts as backed up (no new grants for it).
    static let backlogItems = 256
    /// Unsent octets in the socket beyond which a link counts as backed up.
    static let backlogBytes = 64 * 1024

    init(id: ConnectionID, nodeID: String, peer: SocketAddress, features: Set<String> = [], connection: ClusterConnection, log: Logger) {
        self.id = id; self.nodeID = nodeID; self.peer = peer; self.features = features; self.connection = connection; self.log = log
    }

    /// Whether `welcome` has been queued on this link.
    var isWelcomed: Bool { welcomedFlag.snapshot }

    /// Records that `welcome` has been queued.
    func markWelcomed() { welcomedFlag.withLock { $0 = true } }

    /// Starts the writer thread.
    func start() {
        Thread.startNamed("writer \(nodeID)") { [self] in writeLoop() }
    }

    /// Queues `item` (dropped when the link is closing).
    func send(_ item: Item) {
        outbox.withLockAndBroadcast { o in if !o.closed { o.items.append(item) } }
    }

    /// Writes `make()`'s frames on the calling thread, without waiting, when nothing is queued
    /// or being written on this link (plaintext only): what the socket does not take at once
    /// is queued first for the writer thread, so order is kept and the caller never blocks on
    /// a node that stops reading. Saves the writer's wake-up on an idle link (issue 19: the
    /// light-load latency of a grant, and a context switch per node per scheduler round).
    /// - Returns: false when nothing was done (queue it with `send` instead).
    func sendNow(_ make: () -> [ClusterMessage]) -> Bool {
        guard connection.tls == nil else { return false }
        let mayWrite = outbox.withLock { o in
            guard o.items.isEmpty, !o.writing, !o.direct, !o.closed, !o.shutdownWhenSent else { return false }
            o.direct = true
            return true
        }
        guard mayWrite else { return false }
        var rest: [UInt8] = []
        var failure: (any Error)?
        do { rest = try connection.sendIfReady(make()) ?? [] } catch { failure = error }
        // The writer is woken only when it has something to send (the rest, or what was queued
        // meanwhile) or the link closed meanwhile: an idle link stays asleep.
        outbox.withLockThenWake { o in
            o.direct = false
            if !rest.isEmpty && !o.closed { o.items.insert(.encoded(rest), at: 0) }
            return ((), !o.items.isEmpty || o.closed || o.shutdownWhenSent ? .all : .none)
        }
        if let failure {
            log.warning("cluster write failed; closing the connection", ["node": nodeID, "error": "\(failure)"])
            shutdown()
        }
        return true
    }

    /// Whether the node is not keeping up: frames queued here, or unsent in its socket.
    var isBackedUp: Bool {
        outbox.withLock { $0.items.count } > NodeLink.backlogItems || connection.socket.unsentBytes > NodeLink.backlogBytes
    }

    /// Wakes the reader and the writer (any thread may call it); the reader then calls `finish`.
    func shutdown() {
        outbox.withLockAndBroadcast { $0.closed = true }
        connection.shutdown()
    }

    /// Shuts the connection down once everything queued so far is written (e.g. after a `reject`).
    func shutdownWhenSent() {
        outbox.withLockAndBroadcast { $0.shutdownWhenSent = true }
    }

    /// Called by the reader thread when it is done: stops the writer, waits for it (bounded),
    /// then closes the socket — the reader is the only thread that closes it.
    func finish() {
        outbox.withLockAndBroadcast { $0.closed = true }
        connection.shutdown()
        _ = outbox.wait(until: .now + .seconds(35), for: { $0.writerDone }) { _, done in done }
        connection.close()
    }

    private func writeLoop() {
        while true {
            // Never while another thread writes directly: its rest must go first, whole.
            let batch: [Item]? = outbox.wait(until: nil, for: { !$0.direct && (!$0.items.isEmpty || $0.closed || $0.shutdownWhenSent) }) { o, _ in
                if o.items.isEmpty { return nil }  // closed, or asked to stop once sent
                defer { o.items.removeAll(keepingCapacity: true) }
                o.writing = true
                return o.items
            }
            guard let batch else {
                connection.shutdown()
                break
            }
            do {
                for item in batch {
                    switch item {
                    case .message(let m): try connection.send(m)
                    case .messages(let ms): try connection.send(ms)
                    case .build(let make): try connection.send(make())
                    case .encoded(let bytes): try connection.send(encoded: bytes)
                    }
                }
                outbox.withLockAndBroadcast { $0.writing = false }
            } catch {
                log.warning("cluster write failed; closing the connection", ["node": nodeID, "error": "\(error)"])
                shutdown()
                break
            }
        }
        outbox.withLockAndBroadcast { $0.writerDone = true; $0.writing = false; $0.items.removeAll() }
    }
}
