import Foundation
import HatoShared

/// The coordinator's SMTP listener: a thin blocking driver around `SMTPServerSession`.
///
/// One thread per client session. Replies produced by one read are written
/// together (pipelined replies are flushed when input is drained, RFC 2920).
/// A `.store` action is carried out synchronously: the message and its
/// recipients are written to the queue and fsync'd before the session is told
/// and the `250` is sent.
public final class SubmissionServer: @unchecked Sendable {
    private let config: ClusterConfig
    private let store: QueueStore
    private let onAccepted: @Sendable () -> Void
    private let clock: any WallClock
    private let log = Logger(label: "coordinator.smtp")
    private var listeners: [Socket] = []
    private let lock = NSLock()
    private var active = 0
    /// The most concurrent client sessions; beyond it new clients get `421 4.7.0` (RFC 5321 §4.5.3.1).
    public var maxSessions = 2000

    /// - Parameters:
    ///   - config: cluster configuration (`smtp` section).
    ///   - store: the durable queue.
    ///   - clock: time source.
    ///   - onAccepted: called after each message is durably queued (wakes the scheduler).
    public init(config: ClusterConfig, store: QueueStore, clock: any WallClock = SystemClock(), onAccepted: @escaping @Sendable () -> Void) {
        self.config = config; self.store = store; self.clock = clock; self.onAccepted = onAccepted
    }

    /// The bound addresses (real ports when configured with port 0).
    public var boundAddresses: [SocketAddress] { lock.withLock { listeners.compactMap(\.localAddress) } }

    /// Binds every `smtp.listen` address and starts accepting.
    /// - Throws: `SocketError` when an address cannot be bound.
    public func start() throws {
        for addr in config.smtp.listen {
            let l = try Socket.listen(on: addr)
            lock.withLock { listeners.append(l) }
            log.info("smtp listener ready", ["listen": (l.localAddress ?? addr).description])
            Thread.detachNewThread { [self] in
                while let (conn, peer) = try? l.accept() {
                    Thread.detachNewThread { [self] in serve(conn, peer: peer) }
                }
            }
        }
    }

    /// Closes the listeners (sessions in progress finish on their own).
    public func stop() { for l in lock.withLock({ listeners }) { l.close() } }

    private func serve(_ conn: Socket, peer: SocketAddress) {
        let admitted = lock.withLock { () -> Bool in
            guard active < maxSessions else { return false }
            active += 1; return true
        }
        guard admitted else {
            try? conn.write(SMTPReply(421, "4.7.0", "\(config.smtp.hostname) Too many connections, try again later").encoded())
            conn.close(); return
        }
        defer { lock.withLock { active -= 1 }; conn.close() }
        // RFC 5321 §4.5.3.2: 5 minutes for commands; the DATA block timeout is 3 minutes per read, we use the larger.
        conn.setTimeouts(read: 300, write: 300)
        let relay = config.smtp.relayNetworks.contains { $0.contains(peer.host) }
        let policy = SMTPServerPolicy(hostname: config.smtp.hostname, maxMessageSize: config.smtp.maxMessageSize, maxRecipients: config.smtp.maxRecipients)
        var session = SMTPServerSession(policy: policy, peer: peer, relayPermitted: relay)
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 64 * 1024)

        /// Carries out actions; returns false when the session is over.
        func perform(_ actions: [SMTPServerAction]) -> Bool {
            var pending = actions[...]
            while let action = pending.popFirst() {
                switch action {
                case .send(let bytes):
                    out.append(contentsOf: bytes)
                case .store(let message):
                    // Replies already produced must precede the DATA reply on the wire.
                    let more: [SMTPServerAction]
                    if let id = accept(message) {
                        more = session.messageStored(id: id)
                    } else {
                        more = session.messageStoreFailed()
                    }
                    pending = (more + Array(pending))[...]
                case .close:
                    try? conn.write(out); out.removeAll()
                    return false
                }
            }
            return true
        }

        guard perform(session.start()) else { return }
        while true {
            do { try conn.write(out) } catch { return }
            out.removeAll(keepingCapacity: true)
            let n: Int
            do {
                n = try buf.withUnsafeMutableBytes { try conn.read(into: $0) }
            } catch let e as SocketError where e.kind == .timeout {
                _ = perform(session.timeout())
                return
            } catch {
                return
            }
            if n == 0 { return }
            guard perform(session.receive(buf[0..<n])) else { return }
        }
    }

    /// Routes, stamps and durably queues a message.
    /// - Returns: the queue id, or nil if it could not be stored (the client gets a 4xx and retries).
    private func accept(_ message: SubmittedMessage) -> String? {
        let now = clock.now()
        let id = Identifier.queueID(now: now)
        let received = ReceivedHeader.build(heloName: message.heloName, peer: message.peer, hostname: config.smtp.hostname,
                                            withESMTP: message.esmtp, id: id,
                                            recipient: message.recipients.count == 1 ? message.recipients.first : nil, date: now)
        let record = NewMessage(id: id, reversePath: message.reversePath.address,
                                recipients: message.recipients.map(\.address), pool: config.routing.defaultPool,
                                content: received + message.body, heloName: message.heloName,
                                clientAddress: message.peer.host, receivedAt: now)
        do {
            try store.enqueue(record)
        } catch {
            log.error("queue write failed; message refused with 451", ["error": "\(error)"])
            return nil
        }
        log.info("message queued", ["id": id, "client": message.peer.host, "size": "\(record.content.count)", "recipients": "\(record.recipients.count)"])
        onAccepted()
        return id
    }
}
