#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HatoConfig
import HatoIO
import HatoSupport

/// The size and free space of a file system, from `statvfs(3)`.
public struct FileSystemSpace: Sendable, Equatable {
    /// Octets an unprivileged writer can still use: `f_bavail × f_frsize`.
    public var available: Int
    /// The file system's size in octets: `f_blocks × f_frsize`.
    public var total: Int

    /// Creates a record.
    /// - Parameters:
    ///   - available: free octets for unprivileged writers.
    ///   - total: size in octets.
    public init(available: Int, total: Int) {
        self.available = available
        self.total = total
    }

    /// Measures the file system holding `path`.
    /// - Parameter path: any file or directory on it (the queue directory).
    /// - Returns: the space.
    /// - Throws: `POSIXError` when `statvfs` fails.
    public static func of(path: String) throws -> FileSystemSpace {
        var s = statvfs()
        guard statvfs(path, &s) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        let fragment = Int(s.f_frsize)
        let (available, o1) = Int(clamping: s.f_bavail).multipliedReportingOverflow(by: fragment)
        let (total, o2) = Int(clamping: s.f_blocks).multipliedReportingOverflow(by: fragment)
        return FileSystemSpace(available: o1 ? Int.max : available, total: o2 ? Int.max : total)
    }
}

/// The disk headroom rule of the queue as a pure value (Postfix's `queue_minfree`): whether a new
/// transaction may start, when the file system must be measured again, and what to log.
///
/// A MAIL is refused when the free space is below `smtp.queue_min_free` plus the declared
/// `SIZE` (RFC 1870 §6.1: a temporary lack of storage is `452`). The scheduler and result recording
/// are never asked, so they keep writing in the headroom and the queue drains by itself.
/// Times are monotonic seconds (any origin).
public struct QueueHeadroomGate: Sendable {
    /// What to log, already rate-limited.
    public enum Notice: Sendable, Equatable {
        /// Free space fell below the minimum: new mail is refused from now on.
        case refusing(free: Int, minimum: Int)
        /// Still below the minimum; `refused` MAILs since the last notice.
        case stillRefusing(free: Int, minimum: Int, refused: Int)
        /// Free space is back above the minimum; `refused` MAILs in the episode.
        case resumed(free: Int, minimum: Int, refused: Int)
        /// Above the minimum, but MAILs whose declared SIZE did not fit were refused (`refused` since the last notice).
        case refusedForSize(free: Int, minimum: Int, refused: Int)
    }

    /// The configured minimum.
    public let minFree: QueueMinFree
    /// How long a measurement is used, in seconds (default 1).
    public let recheckInterval: TimeInterval
    /// The least time between two notices of the same episode, in seconds (default 60).
    public let logInterval: TimeInterval
    /// The last measurement, nil before the first.
    public private(set) var sample: FileSystemSpace?
    /// Octets taken to be written since the last measurement (see `noteWritten`): subtracted
    /// from its free space, so a burst of messages between two measurements cannot run far past the minimum.
    public private(set) var writtenSinceSample = 0
    private var sampledAt: TimeInterval = 0
    private var stale = true
    /// Whether free space is below the minimum (an episode of refusals is running).
    public private(set) var refusing = false
    /// MAILs refused for space so far.
    public private(set) var refusals = 0
    private var episodeRefusals = 0
    private var unreportedRefusals = 0
    private var lastNotice: TimeInterval?

    /// Octets from which content goes to the SQLite store's spool (nil: every body in its row).
    public let spoolThreshold: Int?

    /// Creates the rule.
    /// - Parameters:
    ///   - minFree: `smtp.queue_min_free`.
    ///   - recheckInterval: seconds a measurement stays valid.
    ///   - logInterval: seconds between repeated notices.
    ///   - spoolThreshold: the store's spool threshold in octets (`SQLiteQueueStore.spoolThreshold`; nil: none).
    public init(minFree: QueueMinFree, recheckInterval: TimeInterval = 1, logInterval: TimeInterval = 60,
                spoolThreshold: Int? = SQLiteQueueStore.defaultSpoolThreshold) {
        self.spoolThreshold = spoolThreshold
        self.minFree = minFree
        self.recheckInterval = recheckInterval
        self.logInterval = logInterval
    }

    /// Whether the file system must be measured before the next decision: no measurement yet,
    /// the last is older than `recheckInterval`, or a write failed with `SQLITE_FULL` since.
    /// - Parameter now: monotonic seconds.
    public func needsSample(now: TimeInterval) -> Bool {
        stale || sample == nil || now - sampledAt >= recheckInterval
    }

    /// Records a measurement.
    /// - Parameters:
    ///   - space: what `statvfs` found.
    ///   - now: monotonic seconds.
    /// - Returns: the notice when the measurement starts or ends an episode of refusals.
    public mutating func record(_ space: FileSystemSpace, now: TimeInterval) -> Notice? {
        sample = space
        sampledAt = now
        stale = false
        writtenSinceSample = 0
        let minimum = minFree.threshold(fileSystemSize: space.total)
        let low = !minFree.isDisabled && space.available < minimum
        if low && !refusing {
            refusing = true
            episodeRefusals = 0
            unreportedRefusals = 0
            lastNotice = now
            return .refusing(free: space.available, minimum: minimum)
        }
        if !low && refusing {
            refusing = false
            let refused = episodeRefusals
            episodeRefusals = 0
            unreportedRefusals = 0
            lastNotice = now
            return .resumed(free: space.available, minimum: minimum, refused: refused)
        }
        return nil
    }

    /// A write failed with `SQLITE_FULL`: the next decision measures again.
    public mutating func markStale() { stale = true }

    /// What one queued message is taken to cost on disk beyond twice its content: the b-tree pages
    /// (messages, recipients, indexes) its commit rewrites in the WAL, in octets.
    public static let commitOverhead = 32 << 10

    /// A message of `octets` was queued: until the next measurement the free space is taken to be
    /// `2 × octets + commitOverhead` smaller — SQLite writes the content to the WAL, the checkpoint
    /// copies it into the database file, and each commit rewrites a few b-tree pages (measured on
    /// tmpfs: 115 KB per 41 KB message in a burst, against 114 KB estimated) — or, for content
    /// the spool takes (`spoolThreshold` and more: written once, in whole 4 KiB blocks), `octets`
    /// rounded up to 4 KiB + `commitOverhead`.
    /// - Parameter octets: the stored content size.
    public mutating func noteWritten(_ octets: Int) {
        let octets = max(0, octets)
        let spooled = spoolThreshold.map { octets >= $0 } ?? false
        let (twice, o1) = spooled ? (octets / 4096 * 4096).addingReportingOverflow(octets % 4096 == 0 ? 0 : 4096)
                                  : octets.multipliedReportingOverflow(by: 2)
        let (cost, o2) = twice.addingReportingOverflow(Self.commitOverhead)
        let (sum, o3) = writtenSinceSample.addingReportingOverflow(cost)
        writtenSinceSample = o1 || o2 || o3 ? Int.max : sum
    }

    /// The free space now: the last measurement less what was queued since.
    public var estimatedFree: Int? { sample.map { max(0, $0.available - writtenSinceSample) } }

    /// Decides on a new transaction (MAIL) with the last measurement; without one it accepts.
    /// - Parameters:
    ///   - declaredSize: the MAIL's `SIZE=` in octets (RFC 1870), if any.
    ///   - now: monotonic seconds.
    /// - Returns: whether to accept, and a rate-limited notice for a refusal.
    public mutating func admit(declaredSize: Int?, now: TimeInterval) -> (accept: Bool, notice: Notice?) {
        guard !minFree.isDisabled, let space = sample, let free = estimatedFree else { return (true, nil) }
        let minimum = minFree.threshold(fileSystemSize: space.total)
        var notice: Notice?
        if free < minimum && !refusing {
            // What was queued since the measurement took the free space below the minimum.
            refusing = true
            episodeRefusals = 0
            unreportedRefusals = 0
            lastNotice = now
            notice = .refusing(free: free, minimum: minimum)
        }
        let (required, overflow) = minimum.addingReportingOverflow(max(0, declaredSize ?? 0))
        if !overflow && free >= required { return (true, notice) }
        refusals += 1
        if refusing { episodeRefusals += 1 }
        if notice != nil { return (false, notice) }
        unreportedRefusals += 1
        guard lastNotice.map({ now - $0 >= logInterval }) ?? true else { return (false, nil) }
        lastNotice = now
        let refused = unreportedRefusals
        unreportedRefusals = 0
        return (false, refusing ? .stillRefusing(free: free, minimum: minimum, refused: refused)
                                : .refusedForSize(free: free, minimum: minimum, refused: refused))
    }
}

/// The queue's disk headroom check for the submission server: `QueueHeadroomGate` over `statvfs`
/// of the queue directory, measured at most once per `recheckInterval` (and always after an
/// `SQLITE_FULL`), with its notices logged. Thread-safe (one lock; `statvfs` is a few µs).
public final class QueueHeadroom: Sendable {
    /// The gate and when a failed measurement was last logged.
    private struct State: Sendable {
        var gate: QueueHeadroomGate
        var lastProbeError: TimeInterval?
    }
    private let directory: String
    /// `smtp.queue_min_free`.
    public let minFree: QueueMinFree
    private let probe: @Sendable (String) throws -> FileSystemSpace
    private let monotonicNow: @Sendable () -> TimeInterval
    private let state: Locked<State>
    private let log = Logger(label: "coordinator.queue")

    /// Creates the check.
    /// - Parameters:
    ///   - directory: the queue directory (`coordinator.data_dir`).
    ///   - minFree: `smtp.queue_min_free`.
    ///   - recheckInterval: seconds a measurement is used (default 1).
    ///   - logInterval: seconds between repeated log lines of one episode (default 60).
    ///   - spoolThreshold: the store's spool threshold in octets (nil: bodies always in rows, as
    ///     in PostgreSQL).
    ///   - monotonicNow: monotonic seconds (default: system uptime).
    ///   - probe: measures a file system (default `statvfs`).
    public init(directory: String, minFree: QueueMinFree, recheckInterval: TimeInterval = 1, logInterval: TimeInterval = 60,
                spoolThreshold: Int? = SQLiteQueueStore.defaultSpoolThreshold,
                monotonicNow: @escaping @Sendable () -> TimeInterval = { ProcessInfo.processInfo.systemUptime },
                probe: @escaping @Sendable (String) throws -> FileSystemSpace = { try FileSystemSpace.of(path: $0) }) {
        self.directory = directory
        self.minFree = minFree
        self.probe = probe
        self.monotonicNow = monotonicNow
        state = Locked(State(gate: QueueHeadroomGate(minFree: minFree, recheckInterval: recheckInterval, logInterval: logInterval,
                                                     spoolThreshold: spoolThreshold)))
    }

    /// Whether a new transaction may start (checked at MAIL).
    /// - Parameter declaredSize: the MAIL's `SIZE=` in octets, if any.
    /// - Returns: true to accept; false means `452 4.3.1`.
    public func admit(declaredSize: Int?) -> Bool {
        if minFree.isDisabled { return true }
        return state.withLock { s in
            let now = monotonicNow()
            refresh(&s, now: now)
            let (accept, notice) = s.gate.admit(declaredSize: declaredSize, now: now)
            if let notice { report(notice, declaredSize: declaredSize) }
            return accept
        }
    }

    /// A message of `octets` was queued: counted against the free space until the next measurement.
    /// - Parameter octets: the stored content size.
    public func noteQueued(octets: Int) {
        if minFree.isDisabled { return }
        state.withLock { $0.gate.noteWritten(octets) }
    }

    /// A queue write failed with `SQLITE_FULL`: measure again at once (and log a crossing).
    public func noteStorageFull() {
        state.withLock { s in
            s.gate.markStale()
            refresh(&s, now: monotonicNow())
        }
    }

    /// The free octets of the queue's file system (measured at most once per `recheckInterval`),
    /// nil when `statvfs` fails. For the `hato_queue_free_bytes` gauge.
    public func freeBytes() -> Int? {
        state.withLock { s in
            refresh(&s, now: monotonicNow())
            return s.gate.sample?.available
        }
    }

    /// MAILs refused for space so far.
    public var refusals: Int { state.withLock { $0.gate.refusals } }

    /// Measures when due (inside the state's lock).
    private func refresh(_ s: inout State, now: TimeInterval) {
        guard s.gate.needsSample(now: now) else { return }
        do {
            let space = try probe(directory)
            if let notice = s.gate.record(space, now: now) { report(notice, declaredSize: nil) }
        } catch {
            // Without a measurement the last one stays in use (none: accept); said once a minute.
            if s.lastProbeError.map({ now - $0 >= s.gate.logInterval }) ?? true {
                s.lastProbeError = now
                log.error("cannot measure the queue's file system; queue_min_free is not enforced meanwhile",
                          ["data_dir": directory, "error": "\(error)"])
            }
        }
    }

    private func report(_ notice: QueueHeadroomGate.Notice, declaredSize: Int?) {
        switch notice {
        case .refusing(let free, let minimum):
            log.warning("submission refused: the queue's file system is below smtp.queue_min_free; MAIL gets 452 4.3.1 until space returns",
                        ["data_dir": directory, "free_bytes": "\(free)", "min_free_bytes": "\(minimum)"])
        case .stillRefusing(let free, let minimum, let refused):
            log.warning("submission still refused: the queue's file system is below smtp.queue_min_free",
                        ["data_dir": directory, "free_bytes": "\(free)", "min_free_bytes": "\(minimum)", "refused": "\(refused)"])
        case .resumed(let free, let minimum, let refused):
            log.info("submission resumed: the queue's file system is above smtp.queue_min_free again",
                     ["data_dir": directory, "free_bytes": "\(free)", "min_free_bytes": "\(minimum)", "refused": "\(refused)"])
        case .refusedForSize(let free, let minimum, let refused):
            var fields = ["data_dir": directory, "free_bytes": "\(free)", "min_free_bytes": "\(minimum)", "refused": "\(refused)"]
            if let declaredSize { fields["declared_size"] = "\(declaredSize)" }
            log.warning("submission refused: a declared SIZE does not fit above smtp.queue_min_free", fields)
        }
    }
}

/// Why a queue write failed, as the submission paths answer it.
public enum QueueWriteFailure {
    /// Whether `error` (what `QueueStore.enqueue` threw) says the queue's file system is full:
    /// `SQLITE_FULL` or a quota's EDQUOT from the database (`SQLiteError.isFull`), `ENOSPC` or
    /// `EDQUOT` from the spool of large bodies
    /// (BodySpool.swift). Such a message is refused with a temporary `452 4.3.1` (RFC 3463),
    /// and the file system is measured again at once.
    public static func isStorageFull(_ error: any Error) -> Bool {
        if let sqlite = error as? SQLiteError { return sqlite.isFull }
        if let system = error as? SystemCallError { return system.code == ENOSPC || system.code == EDQUOT }
        return false
    }
}
