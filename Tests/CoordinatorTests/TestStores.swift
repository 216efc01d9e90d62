import Foundation
import HatoTestKit
import Testing
@testable import HatoCoordinator
@testable import HatoCrypto

/// The two queue store implementations, for tests parameterized over both.
enum StoreKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case sqlite, postgresql
    var testDescription: String { rawValue }

    /// Both kinds, or only those named in `HATO_TEST_STORES` (comma-separated, e.g. `sqlite`).
    /// scripts/test-clocks.sh names only SQLite: under faketime only the test process's clock
    /// is shifted, never the PostgreSQL server's, so a PostgreSQL case there would run against
    /// two clocks at once — a deployment that cannot exist — and it would cost most of each
    /// scenario's time.
    static var allCases: [StoreKind] {
        let all: [StoreKind] = [.sqlite, .postgresql]
        guard let names = ProcessInfo.processInfo.environment["HATO_TEST_STORES"], !names.isEmpty else { return all }
        let wanted = Set(names.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
        return all.filter { wanted.contains($0.rawValue) }
    }
}

/// The place one test's queue lives: a temporary directory (SQLite) or a fresh schema on the
/// test run's PostgreSQL server (`PostgreSQLTestServer.shared()`). `open()` opens a store on it
/// (again, for a restart); the directory or schema is removed when the value is released.
final class TestStore: Sendable {
    let kind: StoreKind
    /// The SQLite directory (also the `coordinator.data_dir` of configurations built around it).
    let directory: String
    /// The PostgreSQL schema, nil for SQLite.
    let schema: String?
    private let server: PostgreSQLTestServer?

    /// - Throws: when the PostgreSQL server cannot be had or the schema not made: the test fails, never skips.
    init(_ kind: StoreKind, directory: String = NSTemporaryDirectory() + "hato-q-" + Identifier.random(bytes: 5)) throws {
        self.kind = kind
        self.directory = directory
        switch kind {
        case .sqlite:
            schema = nil
            server = nil
        case .postgresql:
            let server = try PostgreSQLTestServer.shared()
            let schema = "q_" + Identifier.random(bytes: 6).lowercased()
            try PostgreSQLConnection(server.configuration()).execute("CREATE SCHEMA \(schema)")
            self.server = server
            self.schema = schema
        }
    }

    deinit {
        try? FileManager.default.removeItem(atPath: directory)
        if let server, let schema {
            _ = try? PostgreSQLConnection(server.configuration()).execute("DROP SCHEMA \(schema) CASCADE")
        }
    }

    /// The PostgreSQL configuration of the schema (nil for SQLite).
    var configuration: PostgreSQLConfiguration? { server.map { $0.configuration(schema: schema) } }

    /// Opens a store on this place.
    /// - Throws: the store's error.
    func open() throws -> any QueueStore {
        switch kind {
        case .sqlite: return try SQLiteQueueStore(directory: directory)
        case .postgresql: return try PostgreSQLQueueStore(configuration: configuration!, poolSize: 4)
        }
    }

    /// Group-commit transactions a store opened here wrote so far.
    static func batchesCommitted(_ q: any QueueStore) -> Int {
        if let s = q as? SQLiteQueueStore { return s.batchesCommittedForTests }
        if let p = q as? PostgreSQLQueueStore { return p.batchesCommittedForTests }
        return -1
    }
}

extension TestStore {
    /// Messages with the null reverse-path (DSNs), oldest first, with their content; with
    /// `helo`, only those whose client said that name. Read straight from the tables.
    static func nullSenderMessages(_ q: any QueueStore, helo: String? = nil) throws -> [(id: String, content: [UInt8])] {
        if let s = q as? SQLiteQueueStore {
            return try s.lock.withLock {
                try s.db.prepare("SELECT id, body FROM messages WHERE reverse_path='' AND (?1 IS NULL OR helo=?1) ORDER BY received_at, id")
                    .query([helo.map { .text($0) } ?? .null]) { ($0.text(0), $0.blob(1)) }
            }
        }
        let p = try #require(q as? PostgreSQLQueueStore)
        return try p.pool.withConnection { c in
            try c.query("""
                SELECT id, body FROM messages WHERE reverse_path = '' AND ($1::text IS NULL OR helo = $1::text) ORDER BY received_at, id COLLATE "C"
                """, [helo.map { .text($0) } ?? .null], binaryResults: true).map { (try $0.text(0), try $0.optionalBytea(1) ?? []) }
        }
    }

    /// Sets the NOTIFY parameter of every recipient of `message` straight in the table.
    static func setNotify(_ q: any QueueStore, _ value: String, message: String) throws {
        if let s = q as? SQLiteQueueStore {
            try s.lock.withLock { try s.db.prepare("UPDATE recipients SET dsn_notify=? WHERE message_id=?").run([.text(value), .text(message)]) }
            return
        }
        let p = try #require(q as? PostgreSQLQueueStore)
        try p.pool.withConnection { c in try c.run("UPDATE recipients SET dsn_notify = $1 WHERE message_id = $2", [.text(value), .text(message)]) }
    }

    /// Runs one statement without parameters on either store (test set-up and checks).
    static func execute(_ q: any QueueStore, _ sql: String) throws {
        if let s = q as? SQLiteQueueStore {
            try s.lock.withLock { try s.db.execute(sql) }
            return
        }
        let p = try #require(q as? PostgreSQLQueueStore)
        try p.pool.withConnection { c in _ = try c.run(sql) }
    }

    /// The first column of the first row of `sql` as an integer, on either store.
    static func count(_ q: any QueueStore, _ sql: String) throws -> Int64 {
        if let s = q as? SQLiteQueueStore {
            return try s.lock.withLock { try s.db.prepare(sql).query { $0.int(0) }.first ?? -1 }
        }
        let p = try #require(q as? PostgreSQLQueueStore)
        return try p.pool.withConnection { c in try c.query(sql).first?.int(0) ?? -1 }
    }
}
