import Foundation
import HatoShared

/// The node's local journal of outcomes not yet acknowledged by the coordinator.
///
/// An append-only file of JSON lines in the node's data directory: a `result`
/// line is written and fsync'd before the result is sent, an `ack` line when the
/// coordinator confirms it is on its own disk. After a crash or reconnect the
/// unacknowledged results are re-sent; the coordinator applies them idempotently.
/// The file is compacted when opened.
public final class OutcomeJournal: @unchecked Sendable {
    private struct Line: Codable { var result: ResultMessage?; var ack: String? }
    private let path: String
    private let lock = NSLock()
    private var handle: FileHandle
    private var pendingResults: [String: ResultMessage] = [:]
    private var order: [String] = []
    private let syncCondition = NSCondition()
    private var waiting: [(ResultMessage, Data, Int)] = []
    private var synced: [Int: Result<Void, any Error>] = [:]
    private var syncing = false
    private var nextTicket = 0

    /// Opens (creating) `directory/journal.jsonl`, loads and compacts it.
    /// - Throws: a file system error when the directory or file cannot be created or written.
    public init(directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        path = (directory as NSString).appendingPathComponent("journal.jsonl")
        let decoder = JSONDecoder()
        var pendingResults: [String: ResultMessage] = [:]
        var order: [String] = []
        if let data = FileManager.default.contents(atPath: path) {
            for raw in data.split(separator: 0x0A) {
                // A torn last line (crash mid-write) is skipped: its result was never sent.
                guard let line = try? decoder.decode(Line.self, from: Data(raw)) else { continue }
                if let r = line.result, pendingResults[r.leaseID] == nil { pendingResults[r.leaseID] = r; order.append(r.leaseID) }
                if let a = line.ack { pendingResults[a] = nil }
            }
        }
        order = order.filter { pendingResults[$0] != nil }
        self.pendingResults = pendingResults
        self.order = order
        // Compact: rewrite only what is still pending, atomically.
        let tmp = path + ".tmp"
        var out = Data()
        let encoder = JSONEncoder()
        for id in order { if let r = pendingResults[id], let d = try? encoder.encode(Line(result: r)) { out.append(d); out.append(0x0A) } }
        guard FileManager.default.createFile(atPath: tmp, contents: out) else { throw CocoaError(.fileWriteUnknown) }
        let tfd = open(tmp, O_RDWR); if tfd >= 0 { fsync(tfd); close(tfd) }
        _ = rename(tmp, path)
        handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try handle.seekToEnd()
    }

    /// Results written but not yet acknowledged, oldest first.
    public var pending: [ResultMessage] { lock.withLock { order.compactMap { pendingResults[$0] } } }

    /// Durably records a result (write + fsync) before it is sent.
    /// - Throws: a file system error; the result must then not be sent as if journaled.
    ///
    /// Group commit: delivery workers finishing at the same time share one write and one
    /// fsync. The first caller to find no sync running writes every line waiting at that
    /// moment; the others wait until the sync covering their line is done. Nobody returns
    /// before their line is on disk.
    public func record(_ result: ResultMessage) throws {
        let line = try JSONEncoder().encode(Line(result: result)) + Data([0x0A])
        syncCondition.lock()
        let ticket = nextTicket
        nextTicket += 1
        waiting.append((result, line, ticket))
        while true {
            if let r = synced.removeValue(forKey: ticket) {
                syncCondition.unlock()
                try r.get()
                return
            }
            if !syncing {
                syncing = true
                let batch = waiting
                waiting.removeAll(keepingCapacity: true)
                syncCondition.unlock()
                let outcome = Result<Void, any Error> {
                    try lock.withLock {
                        try handle.write(contentsOf: batch.reduce(into: Data()) { $0.append($1.1) })
                        try handle.synchronize()
                        for (r, _, _) in batch {
                            if pendingResults[r.leaseID] == nil { order.append(r.leaseID) }
                            pendingResults[r.leaseID] = r
                        }
                    }
                }
                syncCondition.lock()
                for (_, _, t) in batch { synced[t] = outcome }
                syncing = false
                syncCondition.broadcast()
                continue
            }
            syncCondition.wait()
        }
    }

    /// Forgets an acknowledged result (no fsync: losing an ack only causes a harmless re-send).
    public func acknowledge(leaseID: String) {
        guard let d = try? JSONEncoder().encode(Line(ack: leaseID)) else { return }
        lock.withLock {
            guard pendingResults.removeValue(forKey: leaseID) != nil else { return }
            order.removeAll { $0 == leaseID }
            try? handle.write(contentsOf: d + Data([0x0A]))
        }
    }
}
