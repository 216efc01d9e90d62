#if canImport(Glibc)
import Glibc
#endif
import ClusterProtocol
import Foundation
import HatoSupport

/// The node's local journal of results not yet acknowledged by the coordinator.
///
/// **The guarantee.** A result is reported only after it is durably in the journal (written
/// and fsync'd; a file made by a compaction has its directory entry fsync'd too); a journaled
/// result is re-sent after any crash or reconnect until the coordinator acknowledges it;
/// acknowledged entries are dropped at the next compaction; a torn last line is ignored
/// because its result was never sent. (When the journal cannot be written at all, `record`
/// throws; the agent logs an error and still reports the result — the lease's expiry then
/// covers it, at the price of a possible duplicate, never a loss.)
///
/// The file is `journal.jsonl` in the node's data directory: JSON lines, `{"result":{…}}`
/// (written and fsync'd before the result is sent) and `{"ack":"<lease id>"}` (written when the
/// coordinator confirms the result is on its own disk; not fsync'd, since a lost ack only
/// causes a re-send the coordinator applies idempotently).
///
/// **Compaction** keeps the file bounded: after `compactEvery` acknowledgements, or at an
/// acknowledgement once the file exceeds `compactAboveBytes` (and is at least twice what is
/// still unacknowledged), the unacknowledged results are written to `journal.jsonl.tmp`,
/// fsync'd, renamed over `journal.jsonl`, and the directory fsync'd. A crash before the rename
/// leaves the old file whole (the temporary file is deleted at the next open); after it, the
/// new file holds every unacknowledged result. The journal is also compacted when opened.
///
/// **Group commit**: delivery workers finishing at the same time share one write and one
/// fsync.
public final class OutcomeJournal: Sendable {
    private struct Line: Codable { var result: ResultMessage?; var ack: String? }

    /// One unacknowledged result and its line in the file.
    private struct Entry: Sendable {
        var result: ResultMessage
        var line: [UInt8]
    }

    /// The file and what it holds; reached only under its lock.
    private struct FileState: Sendable {
        /// The open journal file (append-only), or -1 once closed.
        var fd: Int32
        var pending: [String: Entry] = [:]
        var order: [String] = []
        /// Octets in the file.
        var size = 0
        /// Octets of the unacknowledged results' lines.
        var pendingBytes = 0
        var acksSinceCompaction = 0
        /// Whether a write failed part-way (the file may end without a line feed).
        var tornTail = false
        /// fsyncs of `record` batches (for the group commit test).
        var batchSyncs = 0
        var compactions = 0
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
    /// Group commit of result lines: one write and one fsync for every `record` waiting at once.
    private let commits: GroupCommitter<Entry>

    /// Opens (creating) `directory/journal.jsonl`, loads the unacknowledged results and
    /// compacts the file. A `journal.jsonl.tmp` left by a crash during a compaction is deleted.
    /// - Parameters:
    ///   - directory: the node's data directory (created if missing).
    ///   - compactEvery: acknowledgements between compactions (default 1000).
    ///   - compactAboveBytes: file size in octets that triggers a compaction at the next
    ///     acknowledgement (default 8 MiB).
    /// - Throws: `JournalError` or a file system error when the directory or file cannot be
    ///   created, read or written.
    public init(directory: String, compactEvery: Int = 1000, compactAboveBytes: Int = 8 << 20) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        self.directory = directory
        path = (directory as NSString).appendingPathComponent("journal.jsonl")
        self.compactEvery = max(1, compactEvery)
        self.compactAboveBytes = max(1, compactAboveBytes)
        // A compaction that did not reach its rename: the journal itself is whole.
        unlink(path + ".tmp")
        var state = FileState(fd: -1)
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
        commits = GroupCommitter { batch in try OutcomeJournal.append(batch, to: file) }
    }

    deinit {
        file.withLock { s in
            if s.fd >= 0 { close(s.fd); s.fd = -1 }
        }
    }

    /// Results written but not yet acknowledged, oldest first.
    public var pending: [ResultMessage] { file.withLock { s in s.order.compactMap { s.pending[$0]?.result } } }

    /// The journal file's size in octets.
    public var fileSize: Int { file.withLock { $0.size } }

    /// Compactions since the journal was opened (not counting the one at open).
    public var compactions: Int { file.withLock { $0.compactions } }

    /// fsyncs done for `record` batches since the journal was opened.
    var batchSyncs: Int { file.withLock { $0.batchSyncs } }

    /// `record` calls that have queued their line so far (for tests).
    var recordsQueued: Int { commits.itemsSubmitted }

    /// Runs `body` while holding the file lock, so records pile up behind it (for tests).
    func holdingFile<R>(_ body: () throws -> R) rethrows -> R { try file.withLock { _ in try body() } }

    /// Durably records a result (write + fsync) before it is sent.
    ///
    /// Group commit: the first caller to find no sync running writes every line waiting at
    /// that moment; the others wait until the sync covering their line is done. Nobody returns
    /// before their line is on disk.
    /// - Throws: `JournalError` (or an encoding error); the result must then not be sent as if journaled.
    public func record(_ result: ResultMessage) throws {
        // `{"result":{…}}` with the frame's own encoder (JSONEncoder took a tenth of a node's
        // journal time); read back by `Line`'s Decodable.
        let object = ClusterMessage.encodedResult(result)
        var line: [UInt8] = []
        line.reserveCapacity(object.count + 12)
        line.append(contentsOf: #"{"result":"#.utf8)
        line.append(contentsOf: object)
        line.append(contentsOf: [0x7D, 0x0A])
        try commits.submit(Entry(result: result, line: line))
    }

    /// Writes a batch of result lines and fsyncs them (the group commit's one write).
    private static func append(_ batch: [Entry], to file: Locked<FileState>) throws {
        try file.withLock { s in
            // After a failed write the file may end in a partial line: start on a new one.
            var bytes: [UInt8] = s.tornTail ? [0x0A] : []
            for b in batch { bytes += b.line }
            s.tornTail = true
            try OutcomeJournal.writeAll(s.fd, bytes, what: "journal write")
            s.tornTail = false
            guard fsync(s.fd) == 0 else { throw JournalError.system("journal fsync", errno) }
            s.batchSyncs += 1
            s.size += bytes.count
            for b in batch {
                let id = b.result.leaseID
                if let old = s.pending[id] { s.pendingBytes -= old.line.count } else { s.order.append(id) }
                s.pending[id] = b
                s.pendingBytes += b.line.count
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
            if (try? OutcomeJournal.writeAll(s.fd, line, what: "journal ack")) != nil {
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
        // The rename is durable only once the directory is: until then a crash may bring
        // back the old file, which still holds every unacknowledged result.
        try fsyncDirectory(directory)
        if s.fd >= 0 { close(s.fd) }
        s.fd = fd
        s.size = bytes.count
        s.pendingBytes = bytes.count
        s.acksSinceCompaction = 0
        s.tornTail = false
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

/// A journal file operation failed.
public struct JournalError: Error, Sendable, CustomStringConvertible {
    /// What failed, with the system's reason.
    public let description: String

    /// A failed system call: what was done and `errno`.
    static func system(_ what: String, _ code: Int32) -> JournalError {
        JournalError(description: "\(what): \(String(cString: strerror(code)))")
    }
}
