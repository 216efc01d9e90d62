#if canImport(Glibc)
import Glibc
#endif
import ClusterProtocol
import Foundation
import HatoSupport

/// The node's local journal of results not yet acknowledged by the coordinator.
///
/// **The guarantee.** A result is written to the journal (`write(2)`, so it survives a crash
/// of the node process: the kernel holds the line) before it is reported, and is durable
/// within about 20 ms (`syncSpacing`; at most a quarter more when passes crowd): by then
/// either the coordinator has acknowledged it (its `result_ack` promises the result is
/// committed on the coordinator's own disk) or the journal's sync thread, which nobody
/// waits for, has fsync'd its line. A line acknowledged before its fsync falls due is never
/// fsync'd on its own account — it is no longer needed to recover anything (the fsync only
/// ever protects results the coordinator may not have), so at load most lines cost no fsync.
/// A journaled result is re-sent after any crash or reconnect until the coordinator
/// acknowledges it; acknowledged entries are dropped at the next compaction; a torn last line
/// is ignored because its result was never sent. A crash of the whole host (power, kernel)
/// within that window can lose a result the coordinator did not commit either: its recipients
/// are then delivered again once the lease expires — a duplicate, never a loss. When results
/// were sent only after their fsync, a host crash between the remote `250` and the fsync did
/// the same; the window is now up to about 20 ms longer, and a result the coordinator
/// committed meanwhile is safe (it acknowledges only what it committed). (When the journal
/// cannot be written at all, `record` throws; the agent logs an error and still reports the
/// result — the lease's expiry then covers it, at the price of a possible duplicate, never a
/// loss. After a failed fsync the unacknowledged results are rewritten to a new file.)
///
/// The file is `journal.jsonl` in the node's data directory: JSON lines, `{"result":{…}}`
/// (written before the result is sent) and `{"ack":"<lease id>"}` (written when the
/// coordinator confirms the result is on its own disk; a lost ack only causes a re-send the
/// coordinator applies idempotently).
///
/// **Compaction** keeps the file bounded: after `compactEvery` acknowledgements, or at an
/// acknowledgement once the file exceeds `compactAboveBytes` (and is at least twice what is
/// still unacknowledged), the unacknowledged results are written to `journal.jsonl.tmp`,
/// fsync'd, renamed over `journal.jsonl`, and the directory fsync'd. A crash before the rename
/// leaves the old file whole (the temporary file is deleted at the next open); after it, the
/// new file holds every unacknowledged result. The journal is also compacted when opened.
///
/// **Group commit without waiters**: a delivery worker only appends its line (and wakes the
/// sync thread when it was idle); the thread sleeps until the oldest line neither fsync'd nor
/// acknowledged is `syncSpacing` old, then fsyncs once for every line written so far. Before,
/// each worker slept until its line's fsync was done — a sleep and a wake-up per message
/// (bench/profile: a node's context switches per message 8.3 → 5.8, fsyncs 0.48 → 0.19); then
/// each node fsync'd up to 50 times a second whatever its share of the traffic, which made a
/// cluster's CPU per message grow with its node count (bench/README, issue 19).
public final class OutcomeJournal: Sendable {
    private struct Line: Codable { var result: ResultMessage?; var ack: String? }

    /// One unacknowledged result and its line in the file.
    private struct Entry: Sendable {
        var result: ResultMessage
        var line: [UInt8]
    }

    /// A result line written and not yet known durable, with when it was written.
    private struct UnsyncedLine: Sendable {
        var seq: Int
        var leaseID: String
        var writtenAt: ContinuousClock.Instant
    }

    /// The file and what it holds; reached only under its lock.
    private struct FileState: Sendable {
        /// The open journal file (append-only), or nil once closed.
        var file: JournalFile?
        /// Result lines written so far (the sync thread's target).
        var written = 0
        var pending: [String: Entry] = [:]
        var order: [String] = []
        /// Octets in the file.
        var size = 0
        /// Octets of the unacknowledged results' lines.
        var pendingBytes = 0
        var acksSinceCompaction = 0
        /// Whether a write failed part-way (the file may end without a line feed).
        var tornTail = false
        var compactions = 0
        /// Result lines written and not yet known durable, oldest first, from `unsyncedHead`
        /// (entries before it are done with; trimmed when it empties or they are most of it).
        var unsynced: [UnsyncedLine] = []
        var unsyncedHead = 0
        /// Every result line up to this number is durable (fsync'd, or in a compacted file).
        var durableThrough = 0
        /// Result lines acknowledged before their fsync fell due, so never fsync'd for themselves.
        var coveredByAck = 0
    }

    /// What the sync thread does next (decided under the file lock).
    private enum SyncPlan {
        /// Nothing written is waiting: every line up to `through` is durable; wait until woken.
        case idle(through: Int)
        /// The oldest line that needs an fsync falls due at this instant.
        case waitUntil(ContinuousClock.Instant)
        /// A line is `syncSpacing` old and unacknowledged: fsync now.
        case fsync
    }

    /// What the sync thread has done; reached only under its own lock, which it holds while it
    /// fsyncs (so a test can hold the sync back).
    private struct SyncState: Sendable {
        /// Result lines known durable: every line up to this count is fsync'd.
        var synced = 0
        /// fsyncs of written lines (for the group commit test).
        var batchSyncs = 0
        /// fsyncs and rewrites that failed (each logged).
        var failures = 0
        /// An fsync failed: the results are rewritten to a new file before anything counts as synced.
        var rewriteNeeded = false
        /// Fsyncs still to be treated as failed (for tests).
        var failingFsyncs = 0
        /// `waitUntilSynced` asks for an fsync of everything written, acknowledged or not.
        var forceSync = false
    }

    /// The journal file's path.
    public let path: String
    /// The directory holding it.
    public let directory: String
    /// Acknowledgements after which the file is compacted.
    public let compactEvery: Int
    /// Size in octets above which the file is compacted at the next acknowledgement.
    public let compactAboveBytes: Int

    private let file: Locked<FileState>
    private let sync = LockedCondition(SyncState())
    /// The sync thread: fsyncs whatever was written since its last pass, whenever woken.
    private let syncer: BackgroundLoop

    /// Opens (creating) `directory/journal.jsonl`, loads the unacknowledged results and
    /// compacts the file. A `journal.jsonl.tmp` left by a crash during a compaction is deleted.
    /// - Parameters:
    ///   - directory: the node's data directory (created if missing).
    ///   - compactEvery: acknowledgements between compactions (default 1000).
    ///   - compactAboveBytes: file size in octets that triggers a compaction at the next
    ///     acknowledgement (default 8 MiB).
    ///   - syncSpacing: how long a written result line may wait for the coordinator's
    ///     acknowledgement before it is fsync'd (default 20 ms). Lines written meanwhile share
    ///     that fsync, so a node fsyncs at most about 50 times a second, and at load, where the
    ///     acknowledgement comes first, hardly at all (with four nodes each fsyncing 50 times a
    ///     second for two or three results, the fsyncs were most of what a node's CPU per
    ///     message grew by). Postfix does not fsync the end of a delivery at all.
    /// - Throws: `JournalError` or a file system error when the directory or file cannot be
    ///   created, read or written.
    public init(directory: String, compactEvery: Int = 1000, compactAboveBytes: Int = 8 << 20,
                syncSpacing: Duration = .milliseconds(20)) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        self.directory = directory
        path = (directory as NSString).appendingPathComponent("journal.jsonl")
        self.compactEvery = max(1, compactEvery)
        self.compactAboveBytes = max(1, compactAboveBytes)
        // A compaction that did not reach its rename: the journal itself is whole.
        unlink(path + ".tmp")
        var state = FileState(file: nil)
        if let data = FileManager.default.contents(atPath: path) {
            let decoder = JSONDecoder()
            for raw in data.split(separator: 0x0A) {
                // A torn last line (crash mid-write) is skipped: its result was never sent.
                guard let line = try? decoder.decode(Line.self, from: Data(raw)) else { continue }
                if let r = line.result, state.pending[r.leaseID] == nil {
                    state.pending[r.leaseID] = Entry(result: r, line: Array(raw) + [0x0A])
                    state.order.append(r.leaseID)
                }
                if let a = line.ack { state.pending[a] = nil }
            }
        }
        state.order = state.order.filter { state.pending[$0] != nil }
        try OutcomeJournal.compact(&state, path: path, directory: directory)
        let file = Locked(state)
        self.file = file
        let sync = self.sync
        let log = Logger(label: "node.journal")
        let (journalPath, journalDirectory) = (path, directory)
        // Passes no closer than this when lines are acknowledged just before they fall due.
        let minimumPause = syncSpacing / 4
        syncer = BackgroundLoop(name: "journal-sync") {
            let (force, rewrite) = sync.withLock { ($0.forceSync, $0.rewriteNeeded) }
            if !force && !rewrite {
                let now = ContinuousClock.now
                switch file.withLock({ OutcomeJournal.plan(&$0, now: now, spacing: syncSpacing) }) {
                case .idle(let through):
                    sync.withLockAndBroadcast { $0.synced = max($0.synced, through) }
                    return .seconds(60)
                case .waitUntil(let due):
                    return max(now.duration(to: due), minimumPause)
                case .fsync:
                    break
                }
            }
            switch OutcomeJournal.syncWritten(file, sync, path: journalPath, directory: journalDirectory, log: log) {
            case .nothing, .synced: return .zero  // the next pass plans from what is left
            case .failed: return .milliseconds(100)
            }
        }
        syncer.start()
    }

    deinit {
        syncer.stop()
        // Lines written since the last pass: durable before the file is closed.
        _ = OutcomeJournal.syncWritten(file, sync, path: path, directory: directory, log: Logger(label: "node.journal"))
        file.withLock { $0.file = nil }
    }

    /// Results written but not yet acknowledged, oldest first.
    public var pending: [ResultMessage] { file.withLock { s in s.order.compactMap { s.pending[$0]?.result } } }

    /// The journal file's size in octets.
    public var fileSize: Int { file.withLock { $0.size } }

    /// Compactions since the journal was opened (not counting the one at open).
    public var compactions: Int { file.withLock { $0.compactions } }

    /// fsyncs done for written result lines since the journal was opened.
    var batchSyncs: Int { sync.withLock { $0.batchSyncs } }

    /// Result lines the sync thread still keeps in its waiting list (for tests).
    var waitingLines: Int { file.withLock { $0.unsynced.count } }

    /// Result lines the coordinator acknowledged before their fsync fell due (never fsync'd
    /// for themselves) since the journal was opened.
    var linesCoveredByAck: Int { file.withLock { $0.coveredByAck } }

    /// Result lines written so far (for tests).
    var writtenLines: Int { file.withLock { $0.written } }

    /// Result lines known durable, fsync'd or acknowledged (for tests; waits while
    /// `holdingSync` holds the sync back).
    var syncedLines: Int { sync.withLock { $0.synced } }

    /// Makes the next `count` fsyncs of written lines count as failed (for tests).
    func failFsyncs(_ count: Int) { sync.withLock { $0.failingFsyncs = count } }

    /// Runs `body` while holding the sync thread back (its lock), so written lines pile up
    /// unsynced (for tests).
    func holdingSync<R>(_ body: () throws -> R) rethrows -> R { try sync.withLock { _ in try body() } }

    /// Waits (up to `timeout`) until every result line written so far is durable: the sync
    /// thread fsyncs at once instead of waiting for acknowledgements (a pass already under way
    /// may count lines acknowledged meanwhile as durable without it).
    /// - Returns: whether they are.
    @discardableResult
    public func waitUntilSynced(timeout: Duration = .seconds(10)) -> Bool {
        let target = file.withLock { $0.written }
        sync.withLock { $0.forceSync = true }
        syncer.wake()
        return sync.wait(until: .now + timeout, for: { $0.synced >= target }) { _, ok in ok }
    }

    /// Records a result before it is sent: its line is written to the file (it then survives a
    /// crash of this process) and the sync thread, when idle, is woken to see it made durable;
    /// this does not wait for the fsync (see the type's doc).
    /// - Throws: `JournalError` (or an encoding error) when the line cannot be written; the
    ///   result must then not be sent as if journaled.
    public func record(_ result: ResultMessage) throws {
        // `{"result":{…}}` with the frame's own encoder (JSONEncoder took a tenth of a node's
        // journal time); read back by `Line`'s Decodable.
        let object = ClusterMessage.encodedResult(result)
        var line: [UInt8] = []
        line.reserveCapacity(object.count + 12)
        line.append(contentsOf: #"{"result":"#.utf8)
        line.append(contentsOf: object)
        line.append(contentsOf: [0x7D, 0x0A])
        let entry = Entry(result: result, line: line)
        let wasIdle = try file.withLock { s -> Bool in
            // After a failed write the file may end in a partial line: start on a new one.
            let bytes = s.tornTail ? [0x0A] + line : line
            s.tornTail = true
            try OutcomeJournal.writeAll(s.file?.fd ?? -1, bytes, what: "journal write")
            s.tornTail = false
            s.size += bytes.count
            s.written += 1
            let id = result.leaseID
            if let old = s.pending[id] { s.pendingBytes -= old.line.count } else { s.order.append(id) }
            s.pending[id] = entry
            s.pendingBytes += line.count
            // The sync thread waits for the oldest waiting line: only a first one needs it woken.
            let idle = s.unsyncedHead == s.unsynced.count
            s.unsynced.append(UnsyncedLine(seq: s.written, leaseID: id, writtenAt: .now))
            return idle
        }
        if wasIdle { syncer.wake() }
    }

    /// The sync thread's next step: lines already durable (fsync'd, compacted, or acknowledged
    /// — their lease's entry is gone) are dropped from the front of the waiting lines; the
    /// first that is left decides.
    private static func plan(_ s: inout FileState, now: ContinuousClock.Instant, spacing: Duration) -> SyncPlan {
        while s.unsyncedHead < s.unsynced.count {
            let u = s.unsynced[s.unsyncedHead]
            // A line whose lease is still unacknowledged keeps its deadline even when a later
            // line of the same lease replaced its entry: the earlier deadline covers both.
            if u.seq > s.durableThrough, s.pending[u.leaseID] != nil {
                // Under steady traffic the list never empties: what lies before the head goes
                // once it is most of the array (bounded memory, amortized O(1) per line).
                if s.unsyncedHead >= 1024 && s.unsyncedHead * 2 >= s.unsynced.count {
                    s.unsynced.removeFirst(s.unsyncedHead)
                    s.unsyncedHead = 0
                }
                return u.writtenAt + spacing <= now ? .fsync : .waitUntil(u.writtenAt + spacing)
            }
            if u.seq > s.durableThrough { s.coveredByAck += 1 }
            s.unsyncedHead += 1
        }
        s.unsynced.removeAll(keepingCapacity: true)
        s.unsyncedHead = 0
        return .idle(through: s.written)
    }

    /// What a pass of the sync thread did.
    private enum SyncOutcome { case nothing, synced, failed }

    /// One pass of the sync thread: fsyncs the file if lines were written since the last pass.
    /// The fsync runs outside the file lock (workers keep appending); the file stays open for it
    /// even if a compaction replaces it meanwhile (`JournalFile` closes when the last holder lets go).
    ///
    /// A failed fsync cannot simply be tried again: Linux may have dropped the dirty pages it
    /// could not write, and the next fsync then succeeds without them. So the unacknowledged
    /// results, still in memory, are written to a new file (a compaction: fsync'd, renamed over
    /// the journal, directory fsync'd) — until that succeeds, every pass tries it again.
    private static func syncWritten(_ file: Locked<FileState>, _ sync: LockedCondition<SyncState>, path: String, directory: String,
                                    log: Logger) -> SyncOutcome {
        sync.withLockAndBroadcast { st in
            st.forceSync = false
            let (handle, target) = file.withLock { ($0.file, $0.written) }
            guard target > st.synced || st.rewriteNeeded, let handle else {
                // Already durable (fsync'd or acknowledged): the plan is told, so it moves on.
                let synced = st.synced
                file.withLock { $0.durableThrough = max($0.durableThrough, synced) }
                return .nothing
            }
            if !st.rewriteNeeded {
                let failing = st.failingFsyncs > 0
                if failing { st.failingFsyncs -= 1 }
                if fsync(handle.fd) == 0 && !failing {
                    st.synced = target
                    st.batchSyncs += 1
                    file.withLock { $0.durableThrough = max($0.durableThrough, target) }
                    return .synced
                }
                let code = errno
                st.rewriteNeeded = true
                st.failures += 1
                log.error("journal fsync failed; rewriting the unacknowledged results to a new file",
                          ["error": String(cString: strerror(code)), "failures": "\(st.failures)"])
            }
            do {
                let written = try file.withLock { s -> Int in
                    try OutcomeJournal.compact(&s, path: path, directory: directory)
                    s.compactions += 1
                    return s.written
                }
                st.rewriteNeeded = false
                st.synced = written
                st.batchSyncs += 1
                return .synced
            } catch {
                st.failures += 1
                log.error("journal rewrite failed; trying again", ["error": "\(error)", "failures": "\(st.failures)"])
                return .failed
            }
        }
    }

    /// Forgets an acknowledged result (the ack line is not fsync'd: losing it only causes a
    /// harmless re-send), and compacts the file when due (see the type's doc).
    public func acknowledge(leaseID: String) {
        var w = JSONObjectWriter(capacity: leaseID.utf8.count + 16)
        w.field("ack", leaseID)
        let d = w.finish()
        file.withLock { s in
            guard let entry = s.pending.removeValue(forKey: leaseID) else { return }
            s.pendingBytes -= entry.line.count
            s.order.removeAll { $0 == leaseID }
            let line = (s.tornTail ? [0x0A] : []) + Array(d) + [0x0A]
            if (try? OutcomeJournal.writeAll(s.file?.fd ?? -1, line, what: "journal ack")) != nil {
                s.size += line.count
                s.tornTail = false
            } else {
                s.tornTail = true
            }
            s.acksSinceCompaction += 1
            let due = s.acksSinceCompaction >= compactEvery || (s.size >= compactAboveBytes && s.size >= 2 * s.pendingBytes)
            // A failed compaction leaves the old file in place; the next acknowledgement retries.
            if due, (try? OutcomeJournal.compact(&s, path: path, directory: directory)) != nil { s.compactions += 1 }
        }
    }

    // MARK: File operations

    /// Rewrites the file with only the unacknowledged results: a temporary file, fsync,
    /// rename over the journal, fsync of the directory; then appends go to the new file.
    private static func compact(_ s: inout FileState, path: String, directory: String) throws {
        let tmp = path + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw JournalError.system("open \(tmp)", errno) }
        var bytes: [UInt8] = []
        for id in s.order { if let e = s.pending[id] { bytes += e.line } }
        do {
            try writeAll(fd, bytes, what: "journal compaction")
            guard fsync(fd) == 0 else { throw JournalError.system("fsync \(tmp)", errno) }
            guard rename(tmp, path) == 0 else { throw JournalError.system("rename \(tmp)", errno) }
        } catch {
            close(fd)
            unlink(tmp)
            throw error
        }
        // Appends go to the new file from now on; the old one closes once the sync thread (if
        // fsyncing it now) lets go of it.
        s.file = JournalFile(fd: fd)
        s.size = bytes.count
        s.pendingBytes = bytes.count
        s.acksSinceCompaction = 0
        s.tornTail = false
        // The rename is durable only once the directory is: until then a crash may bring
        // back the old file, which still holds every unacknowledged result. After it, every
        // line written so far that still matters is in the new file, fsync'd.
        try fsyncDirectory(directory)
        s.durableThrough = s.written
    }

    private static func fsyncDirectory(_ directory: String) throws {
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw JournalError.system("open \(directory)", errno) }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw JournalError.system("fsync \(directory)", errno) }
    }

    /// Writes all of `bytes`, retrying short writes and EINTR.
    private static func writeAll(_ fd: Int32, _ bytes: [UInt8], what: String) throws {
        guard fd >= 0 else { throw JournalError.system(what + " (journal closed)", EBADF) }
        var offset = 0
        try bytes.withUnsafeBytes { raw in
            while offset < raw.count {
                let n = write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw JournalError.system(what, errno)
                }
                offset += n
            }
        }
    }
}

/// The journal's open file descriptor, closed when the last holder (the journal's state, or
/// the sync thread during an fsync) lets go of it.
final class JournalFile: Sendable {
    /// The descriptor (append-only).
    let fd: Int32
    init(fd: Int32) { self.fd = fd }
    deinit { close(fd) }
}

/// A journal file operation failed.
public struct JournalError: Error, Sendable, CustomStringConvertible {
    /// What failed, with the system's reason.
    public let description: String

    /// A failed system call: what was done and `errno`.
    static func system(_ what: String, _ code: Int32) -> JournalError {
        JournalError(description: "\(what): \(String(cString: strerror(code)))")
    }
}
