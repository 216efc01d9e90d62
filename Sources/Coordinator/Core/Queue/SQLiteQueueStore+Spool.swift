import Foundation
import HatoSupport

/// The spool's upkeep (BodySpool.swift), run by the checkpoint thread after each checkpoint.
///
/// **Removal.** A sealed segment that no row points at any more (`messages_spooled`, the
/// partial index of spooled bodies) is removed once the change that dropped its last reference
/// is on stable storage: results and purges commit without an fsync of their own, so removing
/// the file at once could, after a power cut, leave a row pointing at nothing. The segment is
/// remembered when found unreferenced and removed at a later pass once a synced commit or a
/// complete checkpoint (which syncs the WAL first) has happened since. Segments left from an
/// earlier run that nothing references (bytes of a batch whose transaction never committed)
/// go the same way.
///
/// **Evacuation.** A segment sealed more than `spoolEvacuateAfter` ago whose bodies are still
/// referenced (mail deferred, or waiting for a lease) has them moved into their rows, at most
/// `evacuateBudget` octets per pass, in a synced transaction under the queue's lock; then it is
/// removed like any other. So the spool holds about `spoolEvacuateAfter` of large mail and one
/// long-deferred message never keeps a whole segment on disk.
extension SQLiteQueueStore {
    /// Octets of spooled bodies moved into their rows per pass at most (8 MiB: the queue's lock
    /// is held for one such transaction).
    static let evacuateBudget = 8 << 20

    /// One pass of the spool's upkeep (see the extension's doc).
    /// - Parameters:
    ///   - checkpointer: the checkpoint thread's own connection (reads a fresh snapshot).
    ///   - memory: what earlier passes found.
    ///   - now: the current instant (tests pass a later one to evacuate at once).
    /// - Throws: `SQLiteError`; a segment that cannot be removed or read is left for the next pass.
    func spoolPass(_ checkpointer: SQLiteDatabase, memory: inout CheckpointMemory, now: ContinuousClock.Instant = .now) throws {
        // A current segment idle that long is sealed too (no new mail would ever seal it).
        spool.sealCurrent(ifOlderThan: Self.spoolEvacuateAfter, now: now)
        let sealed = spool.sealedSegments
        let sealedNumbers = Set(sealed.map(\.segment))
        memory.spoolUnreferenced = memory.spoolUnreferenced.filter { sealedNumbers.contains($0.key) }
        guard !sealed.isEmpty else { return }
        // Remove what an earlier pass found unreferenced, once durably so.
        let syncsBefore = walSyncs.withLock { $0.durable }
        var removed: Set<Int64> = []
        for (segment, found) in memory.spoolUnreferenced where memory.durablePasses > found.durablePasses || syncsBefore > found.syncs {
            do {
                try spool.remove(segment)
                memory.spoolUnreferenced[segment] = nil
                removed.insert(segment)
            } catch {
                Logger(label: "coordinator.queue").warning("cannot remove a spool segment", ["segment": spool.path(of: segment), "error": "\(error)"])
            }
        }
        // Sealed segments (no append to them awaiting its commit: `sealedSegments`) that rows
        // still point at. A row committed before the segment was listed is visible here.
        let referenced = Set(try checkpointer.prepare("SELECT DISTINCT body_segment FROM messages WHERE body_segment IS NOT NULL").query { $0.int(0) })
        // Read after the query, without the queue's lock: every change the query saw is in a
        // commit numbered up to this, or in the one commit that may have written its frames but
        // not been numbered yet (commits on the queue's connection are serialised) — the next
        // number. A sync covering a later number than this covers them all.
        let syncs = db.committedWrites
        for (segment, _) in sealed where !referenced.contains(segment) && memory.spoolUnreferenced[segment] == nil && !removed.contains(segment) {
            memory.spoolUnreferenced[segment] = (memory.durablePasses, syncs)
        }
        var budget = Self.evacuateBudget
        for (segment, sealedAt) in sealed where referenced.contains(segment) && now - sealedAt >= Self.spoolEvacuateAfter && budget > 0 {
            guard !memory.spoolUnreadable.contains(segment) else { continue }
            let rows = try checkpointer.prepare("SELECT id, body_offset, size FROM messages WHERE body_segment=? LIMIT 512")
                .query([.int(segment)]) { ($0.text(0), $0.int(1), Int($0.int(2))) }
            var moved: [(id: String, body: [UInt8])] = []
            for (id, offset, size) in rows where budget > 0 {
                let body: [UInt8]
                do { body = try spool.read(BodySpool.Location(segment: segment, offset: offset, length: size)) } catch {
                    // Not expected: the row's bytes were durable before it committed. The segment
                    // is kept (it is still referenced) and not tried again in this run; logged once.
                    Logger(label: "coordinator.queue").error("a spooled message body cannot be read; its segment is kept",
                                                             ["message": id, "segment": spool.path(of: segment), "error": "\(error)"])
                    memory.spoolUnreadable.insert(segment)
                    break
                }
                budget -= size
                moved.append((id, body))
            }
            guard !moved.isEmpty else { continue }
            try lock.withLock {
                try db.transaction {
                    let put = try db.prepare("UPDATE messages SET body=?, body_segment=NULL, body_offset=NULL WHERE id=? AND body_segment=?")
                    for m in moved { try put.run([.blob(m.body), .text(m.id), .int(segment)]) }
                }
            }
            memory.spoolEvacuated += moved.count
        }
    }
}
