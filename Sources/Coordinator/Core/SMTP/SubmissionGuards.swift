import Foundation
import HatoConfig
import HatoIO
import HatoSupport
import SMTPCore

/// The submission rules that need state shared by all sessions, installed on each session by
/// `SubmissionServer`:
/// - **Disk headroom** (`smtp.queue_min_free`, like Postfix's `queue_minfree`): MAIL gets
///   `452 4.3.1 Insufficient system storage` while the queue's file system is below the minimum
///   (plus a declared `SIZE`), checked with `statvfs` at most once a second (`QueueHeadroom`);
///   messages queued in between count against the last measurement.
///   A queue write that still fails with `SQLITE_FULL` (or a quota's EDQUOT) is answered `452 4.3.1` too (never 250)
///   and makes the next MAIL measure again (RFC 5321 §4.2.5, RFC 1870 §6.1, RFC 3463 4.3.1).
/// - **Postmaster** (RFC 5321 §4.5.1): a client that may not relay can send to postmaster, at most
///   `smtp.postmaster_rate_limit` recipients per `postmaster_rate_window` per client address;
///   more get `452 4.7.1` (RFC 3463 4.7.1), so postmaster is neither a relay nor a spam sink.
///
/// - **Content memory** (`smtp.max_content_memory`): MAIL gets `452 4.3.1` while the content
///   all sessions hold in memory leaves no room for the declared `SIZE` (1 MiB without one).
///
/// Refusals are counted in `hato_smtp_refusals_total{reason}`; the free space is the gauge
/// `hato_queue_free_bytes`. Thread-safe.
final class SubmissionGuards: Sendable {
    /// The queue's disk headroom check.
    let headroom: QueueHeadroom
    /// The content memory of all sessions, nil when not checked at MAIL.
    private let contentMemory: ContentMemory?
    private let settings: SMTPSettings
    private let clock: any WallClock
    private let metrics: CoordinatorMetrics?
    /// Postmaster recipients accepted per client address in the sliding window.
    private let postmasterLimiter: Locked<AuthFailureLimiter>
    private let log = Logger(label: "coordinator.smtp")

    /// Creates the guards.
    /// - Parameters:
    ///   - config: the `smtp` settings and `coordinator.data_dir` (the queue directory).
    ///   - clock: time source for the postmaster window.
    ///   - metrics: where refusals and free space are published, nil for none.
    ///   - headroom: the disk check (default: `statvfs` of `coordinator.data_dir`).
    ///   - contentMemory: the content memory shared by all sessions (MAIL is refused when a new message would not fit).
    init(config: ClusterConfig, clock: any WallClock, metrics: CoordinatorMetrics?, headroom: QueueHeadroom? = nil,
         contentMemory: ContentMemory? = nil) {
        self.contentMemory = contentMemory
        settings = config.smtp
        self.clock = clock
        self.metrics = metrics
        let headroom = headroom ?? QueueHeadroom(directory: config.coordinator.dataDir, minFree: config.smtp.queueMinFree)
        self.headroom = headroom
        postmasterLimiter = Locked(AuthFailureLimiter(maxFailures: config.smtp.postmasterRateLimit, window: config.smtp.postmasterRateWindow))
        if let metrics {
            let gauge = metrics.queueFreeBytes
            metrics.registry.addCollector {
                if let free = headroom.freeBytes() { gauge.set(Double(free)) }
            }
        }
    }

    /// Sets the session's MAIL check (disk headroom) and postmaster admission (rate limit).
    /// - Parameters:
    ///   - session: a new session.
    ///   - peer: its client.
    func install(on session: inout SMTPServerSession, peer: SocketAddress) {
        session.mailCheck = { [self] _, parameters in admitMail(declaredSize: parameters.size) }
        if settings.postmaster != nil {
            let client = peer.host
            session.postmasterAdmission = { [self] in admitPostmaster(client: client) }
        }
    }

    /// The MAIL check: nil to accept, `452 4.3.1` below `queue_min_free` or when the content
    /// memory has no room for the declared `SIZE` (1 MiB without one).
    func admitMail(declaredSize: Int?) -> SMTPReply? {
        if let contentMemory, !contentMemory.admits(declaredSize: declaredSize) {
            metrics?.smtpRefusals.inc("max_content_memory")
            return SMTPServerSession.insufficientStorage
        }
        if headroom.admit(declaredSize: declaredSize) { return nil }
        metrics?.smtpRefusals.inc("queue_min_free")
        return SMTPServerSession.insufficientStorage
    }

    /// One postmaster recipient from a client that may not relay: nil to accept (and count it),
    /// `452 4.7.1` over `postmaster_rate_limit` in `postmaster_rate_window`.
    func admitPostmaster(client: String) -> SMTPReply? {
        let now = clock.now()
        let (blocked, limitReached) = postmasterLimiter.withLock { limiter -> (Bool, Bool) in
            if limiter.isBlocked(client, now: now) { return (true, false) }
            limiter.recordFailure(client, now: now)  // the limiter counts events: here, accepted postmaster recipients
            return (false, limiter.isBlocked(client, now: now))
        }
        if blocked {
            metrics?.smtpRefusals.inc("postmaster_rate_limit")
            return SMTPReply(452, "4.7.1", "Error: too much mail to postmaster from this client, try again later")
        }
        if limitReached {
            // Logged once per window and client: the refusals that follow are counted, not logged.
            log.warning("postmaster rate limit reached; more postmaster mail from this client gets 452 4.7.1 for up to the window",
                        ["client": client, "limit": "\(settings.postmasterRateLimit)", "window_seconds": "\(Int(settings.postmasterRateWindow))"])
        }
        return nil
    }

    /// The reply kind for a queue write that failed: a full file system (`SQLITE_FULL`, or
    /// `ENOSPC` from the spool: `QueueWriteFailure.isStorageFull`) is `452 4.3.1` (and the
    /// file system is measured again at once), anything else `451 4.3.0`.
    /// - Parameter error: what `QueueStore.enqueue` threw.
    func storeFailure(for error: any Error) -> StoreFailure {
        guard QueueWriteFailure.isStorageFull(error) else { return .temporary }
        headroom.noteStorageFull()
        metrics?.smtpRefusals.inc("storage_full")
        return .insufficientStorage
    }

    /// `X-Original-To:` naming the address the client gave, when every recipient was rewritten
    /// (postmaster to `smtp.postmaster`); empty otherwise, so other recipients of a mixed message
    /// never see it (their original is the recipient's ORCPT, RFC 3461 §4.2).
    /// - Parameter message: the accepted message.
    /// - Returns: the header field with CRLF, or nothing.
    static func originalRecipientField(_ message: SubmittedMessage) -> [UInt8] {
        let originals = message.originalRecipients
        guard !originals.isEmpty, originals.allSatisfy({ $0 != nil }) else { return [] }
        var seen: Set<String> = []
        let addresses = originals.compactMap { $0?.address }.filter { seen.insert($0.lowercased()).inserted }
        return Array("X-Original-To: \(addresses.joined(separator: ", "))\r\n".utf8)
    }
}
