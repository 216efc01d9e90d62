#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HatoIO
import HatoSupport

/// Large message bodies in append-only segment files beside the SQLite queue (issue 19).
///
/// **Why.** In the queue's b-tree a 100 KiB body is 25 overflow pages: SQLite copies it into
/// them, writes each to the WAL as two `pwrite` calls (the frame's header, then the page) with a
/// checksum, and the checkpoint writes it a second time into the database file; freeing it walks
/// the chain again. A body at least `SQLiteQueueStore.spoolThreshold` long is instead appended
/// here — one write, the same bytes on disk once — and its row holds only where it is
/// (`body_segment`, `body_offset`; its length is the row's `size`).
///
/// **Durability.** A batch's bodies are appended and made durable (`fdatasync`) *before* the
/// transaction that inserts their rows commits, so a committed row never points at bytes a
/// crash could take away; bytes appended for rows that never committed (a crash or a failed
/// transaction in between) are unreferenced and go with their segment. A new segment file's
/// name is made durable (`fsync` of the directory) before anything is written to it.
///
/// **Segments** are named `<16 hex digits>.body` in the spool directory and take bodies until
/// they hold `segmentLimit` octets; then the next one is started (the `current` one is the only
/// one written; a new process never appends to an old one). A segment no row points at any more
/// is removed by the queue's background pass once the change that dropped the last reference
/// is durable (`SQLiteQueueStore.spoolPass`); bodies still referenced by a segment older than a
/// while (mail deferred for later) are moved into their rows, so one long-deferred message
/// never holds a whole segment on disk.
///
/// Thread-safe: appends are serialized (the queue's group committer is the only writer); reads
/// open the segment on their own, so a segment removed meanwhile is never read through a reused
/// descriptor.
public final class BodySpool: Sendable {
    /// Where a body is: its segment, the octet offset in it and its length in octets.
    public struct Location: Sendable, Equatable {
        /// The segment's number (its file name in hex).
        public var segment: Int64
        /// Octets from the start of the segment file.
        public var offset: Int64
        /// The body's length in octets.
        public var length: Int

        /// - Parameters:
        ///   - segment: the segment's number.
        ///   - offset: octets from the start of its file.
        ///   - length: the body's length in octets.
        public init(segment: Int64, offset: Int64, length: Int) {
            self.segment = segment
            self.offset = offset
            self.length = length
        }
    }

    /// A body that is not where its row says (its segment removed, or the file cut short).
    public struct MissingBody: Error, CustomStringConvertible {
        /// Where it should have been.
        public var location: Location
        /// The segment file's path.
        public var path: String
        public var description: String { "message body missing from spool segment \(path) (offset \(location.offset), \(location.length) octets)" }
    }

    private struct State: Sendable {
        /// The segment being appended to (nil until the first append of this process), and
        /// when it was started.
        var current: (number: Int64, file: File, size: Int, started: ContinuousClock.Instant)?
        /// The number the next new segment gets.
        var nextNumber: Int64
        /// Segments other than `current` and when this process first knew them sealed.
        var sealed: [Int64: ContinuousClock.Instant] = [:]
        /// Appends whose rows are not committed yet, per segment: such a segment is never removed.
        var writing: [Int64: Int] = [:]
        /// Segments removed by this process (for tests and metrics).
        var removed = 0

        /// Seals the current segment, if any, and hands back its file to close.
        mutating func sealCurrent() -> File? {
            guard let c = current else { return nil }
            sealed[c.number] = .now
            current = nil
            return c.file
        }

        /// Ends one append's protection of each of `segments`.
        mutating func doneWriting<S: Sequence>(_ segments: S) where S.Element == Int64 {
            for n in segments {
                writing[n, default: 1] -= 1
                if writing[n]! <= 0 { writing[n] = nil }
            }
        }
    }

    /// The spool directory.
    public let directory: String
    /// Octets after which a segment takes no more bodies (one body may pass it).
    public let segmentLimit: Int
    private let state: Locked<State>
    /// Serializes appends (held across the write and the sync; never taken by readers).
    private let appendLock = NSLock()

    /// Opens (creating it if needed) the spool in `directory`. Segments already there count as
    /// sealed from now.
    /// - Parameters:
    ///   - directory: the spool directory (`<queue directory>/spool`).
    ///   - segmentLimit: octets per segment before the next is started (default 16 MiB).
    /// - Throws: a file system error when the directory cannot be created or listed.
    public init(directory: String, segmentLimit: Int = 16 << 20) throws {
        if !FileManager.default.fileExists(atPath: directory) {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            // The directory's own name must survive a power cut before a row points into it.
            try File.syncDirectory(containing: directory)
        }
        self.directory = directory
        self.segmentLimit = max(1, segmentLimit)
        let existing = try Self.segmentNumbers(in: directory)
        let now = ContinuousClock.now
        var s = State(nextNumber: (existing.max() ?? 0) + 1)
        for n in existing { s.sealed[n] = now }
        state = Locked(s)
    }

    /// The segment numbers of the `.body` files in `directory`.
    static func segmentNumbers(in directory: String) throws -> [Int64] {
        try FileManager.default.contentsOfDirectory(atPath: directory).compactMap { name in
            guard name.hasSuffix(".body"), name.count == 21 else { return nil }
            return Int64(name.prefix(16), radix: 16)
        }
    }

    /// The path of segment `number`.
    public func path(of number: Int64) -> String {
        let hex = String(UInt64(bitPattern: number), radix: 16)
        return directory + "/" + String(repeating: "0", count: max(0, 16 - hex.count)) + hex + ".body"
    }

    /// Appends `bodies` (nil entries are skipped) to the current segment, starting new segments
    /// as they fill, and makes them durable (`fdatasync`). Every segment written stays
    /// unremovable until `finishedWriting(_:)` is called with the result.
    /// - Parameter bodies: the bodies to store, or nil for those kept elsewhere.
    /// - Returns: one location per entry of `bodies` (nil where the entry was nil).
    /// - Throws: `SystemCallError` (`ENOSPC`, `EIO`, …): nothing appended may then be used;
    ///   `finishedWriting` is not needed.
    public func append(_ bodies: [[UInt8]?]) throws -> [Location?] {
        guard bodies.contains(where: { $0 != nil }) else { return bodies.map { _ in nil } }
        appendLock.lock()
        defer { appendLock.unlock() }
        var out: [Location?] = []
        out.reserveCapacity(bodies.count)
        var touched: [Int64] = []
        // Segments filled and sealed by this append: synced with the batch, then closed.
        var toSync: [File] = []
        defer { for f in toSync { try? f.close() } }
        do {
            for body in bodies {
                guard let body else { out.append(nil); continue }
                let (number, file, offset) = try segmentForAppend(touched: &touched, toSync: &toSync)
                try file.writeAll(body)
                state.withLock { $0.current?.size += body.count }
                out.append(Location(segment: number, offset: Int64(offset), length: body.count))
            }
            for f in toSync { try f.syncData() }
            if let current = state.withLock({ $0.current?.file }) { try current.syncData() }
        } catch {
            state.withLock { $0.doneWriting(touched) }
            // A write that failed part-way leaves the file's end unknown: start a new segment.
            sealCurrent()
            throw error
        }
        return out
    }

    /// The segment to append to (starting one when there is none or it is full), registering
    /// this append as writing to it.
    private func segmentForAppend(touched: inout [Int64], toSync: inout [File]) throws -> (Int64, File, Int) {
        if let full = state.withLock({ s in (s.current?.size ?? 0) >= segmentLimit ? s.sealCurrent() : nil }) {
            toSync.append(full)  // its last bodies may be in this batch
        }
        if state.withLock({ $0.current == nil }) {
            let number = state.withLock { s -> Int64 in defer { s.nextNumber += 1 }; return s.nextNumber }
            let file = try File.open(path(of: number), flags: O_WRONLY | O_CREAT | O_EXCL, mode: 0o600)
            do { try File.syncDirectory(directory) } catch {
                try? file.close()
                try? File.remove(path(of: number))
                throw error
            }
            state.withLock { $0.current = (number, file, 0, .now) }
        }
        return state.withLock { s in
            let c = s.current!
            if !touched.contains(c.number) {
                touched.append(c.number)
                s.writing[c.number, default: 0] += 1
            }
            return (c.number, c.file, c.size)
        }
    }

    /// Seals the current segment (after a failed append; the next append starts a new one).
    private func sealCurrent() {
        try? state.withLock { $0.sealCurrent() }?.close()
    }

    /// Ends the protection `append` gave the segments of `locations` (call once the rows
    /// pointing at them are committed, or their transaction failed).
    /// - Parameter locations: what `append` returned.
    public func finishedWriting(_ locations: [Location?]) {
        let segments = Set(locations.compactMap { $0?.segment })
        guard !segments.isEmpty else { return }
        state.withLock { $0.doneWriting(segments) }
    }

    /// Reads a body back.
    /// - Parameter location: where `append` put it.
    /// - Returns: the body's octets.
    /// - Throws: `MissingBody` when the segment is gone or shorter; `SystemCallError` otherwise.
    public func read(_ location: Location) throws -> [UInt8] {
        let path = path(of: location.segment)
        let file: File
        do { file = try File.open(path, flags: O_RDONLY) } catch {
            if error.code == ENOENT { throw MissingBody(location: location, path: path) }
            throw error
        }
        defer { try? file.close() }
        guard let bytes = try file.read(count: location.length, at: Int(location.offset)) else {
            throw MissingBody(location: location, path: path)
        }
        return bytes
    }

    /// Segments that may be removed or emptied: sealed, and no append to them still waiting for
    /// its rows' commit; with the instant each was sealed (or found at start-up).
    public var sealedSegments: [(segment: Int64, sealedAt: ContinuousClock.Instant)] {
        state.withLock { s in s.sealed.filter { s.writing[$0.key] == nil }.map { ($0.key, $0.value) }.sorted { $0.segment < $1.segment } }
    }

    /// The segment being appended to, if any.
    public var currentSegment: Int64? { state.withLock { $0.current?.number } }

    /// Removes a sealed segment's file (no row may point at it any more, durably). Does nothing
    /// to the current segment or one being written.
    /// - Throws: `SystemCallError` (`unlink`).
    public func remove(_ segment: Int64) throws {
        // Sealed segments are never written again: nothing can start writing to it meanwhile.
        guard state.withLock({ $0.sealed[segment] != nil && $0.writing[segment] == nil }) else { return }
        try File.remove(path(of: segment))  // on failure it stays listed, for the next pass
        state.withLock { s in
            s.sealed[segment] = nil
            s.removed += 1
        }
    }

    /// Seals the current segment when it was started more than `age` ago and no append is
    /// running, so that its bodies can be moved into their rows and the file removed even when
    /// no new mail comes to start the next segment.
    /// - Parameters:
    ///   - age: how old the current segment must be.
    ///   - now: the current instant.
    /// - Returns: whether a segment was sealed.
    @discardableResult
    public func sealCurrent(ifOlderThan age: Duration, now: ContinuousClock.Instant = .now) -> Bool {
        guard appendLock.try() else { return false }  // an append is running: it is not idle
        defer { appendLock.unlock() }
        guard let started = state.withLock({ $0.current?.started }), now - started >= age else { return false }
        sealCurrent()
        return true
    }

    /// Segments removed by this process so far (for tests and metrics).
    public var removedCount: Int { state.withLock { $0.removed } }

    /// Segment files on disk now and their total size in octets (for tests and metrics).
    public var onDisk: (segments: Int, octets: Int) {
        let numbers = (try? Self.segmentNumbers(in: directory)) ?? []
        let octets = numbers.reduce(0) { total, n in
            total + (((try? FileManager.default.attributesOfItem(atPath: path(of: n)))?[.size] as? Int) ?? 0)
        }
        return (numbers.count, octets)
    }
}
