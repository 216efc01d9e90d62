import Foundation
import HatoSupport
import SMTPCore

/// Opens replacement sessions in the background: one long-lived thread (a `BackgroundLoop`,
/// started with the first request) drains a bounded queue of requests, so a delivery's result
/// is never held up by a slow or tarpitting server and no thread is spawned per request.
/// When the queue is full a request is dropped (a replacement is only an optimisation: the
/// next message opens its own session).
public final class SessionReplacer: Sendable {
    /// One replacement to open.
    public struct Request: Sendable, Equatable {
        /// The local source address.
        public let sendingIP: String
        /// The EHLO name.
        public let heloName: String
        /// Where.
        public let target: DeliveryTarget
        /// The STARTTLS policy.
        public let policy: SMTPTLSPolicy

        /// A request from its parts.
        public init(sendingIP: String, heloName: String, target: DeliveryTarget, policy: SMTPTLSPolicy) {
            self.sendingIP = sendingIP; self.heloName = heloName; self.target = target; self.policy = policy
        }
    }

    private struct Queue: Sendable {
        var requests: [Request] = []
        var dropped = 0
        var inProgress = 0
        var stopped = false
    }

    /// The most requests waiting at once; more are dropped.
    public let capacity: Int
    private let queue: Locked<Queue>
    private let loop: BackgroundLoop

    /// - Parameters:
    ///   - capacity: the most requests waiting at once (default 64).
    ///   - open: opens one replacement (on the worker thread; may block for a connect and
    ///     greeting).
    public init(capacity: Int = 64, open: @escaping @Sendable (Request) -> Void) {
        let queue = Locked(Queue())
        self.capacity = max(1, capacity)
        self.queue = queue
        loop = BackgroundLoop(name: "hato-smtp-replacer") {
            while let next = queue.withLock({ q -> Request? in
                guard !q.requests.isEmpty else { return nil }
                q.inProgress += 1
                return q.requests.removeFirst()
            }) {
                open(next)
                queue.withLock { $0.inProgress -= 1 }
            }
            return .seconds(3600)
        }
    }

    deinit { loop.stop() }

    /// Queues a replacement.
    /// - Returns: false when the queue was full (or the replacer stopped) and the request was dropped.
    @discardableResult
    public func request(_ request: Request) -> Bool {
        let accepted = queue.withLock { q -> Bool in
            guard !q.stopped && q.requests.count < capacity else { q.dropped += 1; return false }
            q.requests.append(request)
            return true
        }
        if accepted {
            loop.start()
            loop.wake()
        }
        return accepted
    }

    /// Requests waiting to be taken by the worker.
    public var waiting: Int { queue.withLock { $0.requests.count } }
    /// Requests waiting or being opened.
    public var backlog: Int { queue.withLock { $0.requests.count + $0.inProgress } }
    /// Requests dropped because the queue was full.
    public var dropped: Int { queue.withLock { $0.dropped } }

    /// Ends the worker after the request in progress; waiting ones are not opened.
    public func stop() {
        queue.withLock { $0.requests.removeAll(); $0.stopped = true }
        loop.stop()
    }
}
