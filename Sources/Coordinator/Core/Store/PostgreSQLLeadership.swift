import Foundation
import HatoSupport

/// The leadership record of the coordinators sharing one PostgreSQL database: one row holding
/// the **term**, the leader's id and the expiry of its leadership on the database's clock, plus
/// the store's random identity (nodes compare terms only within one store).
///
/// Every time used is the server's `now()`, so the coordinators' clocks never need to agree.
/// A coordinator acquires the row when it has expired or already names it, which increments the
/// term; the leader extends the expiry while the term and leader still match. Writes of lease
/// state take `fence(term:)` in their transaction: it locks the row `FOR SHARE` until commit, so
/// an acquire (which updates the row) waits for them and every later write of the old term fails
/// with `LeadershipFenced`.
public struct PostgreSQLLeadership: Sendable {
    /// The migration that creates the row; part of the store's migration list.
    public static let schemaSQL = """
        CREATE TABLE leadership (
            id smallint PRIMARY KEY CHECK (id = 1),
            term bigint NOT NULL,
            leader text,
            expires_at timestamptz NOT NULL,
            store_id text NOT NULL
        );
        INSERT INTO leadership (id, term, leader, expires_at, store_id)
            VALUES (1, 0, NULL, '-infinity', gen_random_uuid()::text)
        """

    /// The row as read.
    public struct Record: Sendable, Equatable {
        /// The current term (0 before the first leader).
        public var term: Int64
        /// The leader's id, nil when none ever led or the last one resigned.
        public var leader: String?
        /// Whether the leadership is still valid on the database's clock.
        public var live: Bool
        /// The store's identity (a UUID created with the schema).
        public var storeID: String
    }

    /// The connection to use (outside a transaction, except for `fence`).
    public let connection: PostgreSQLConnection

    /// - Parameter connection: an open connection to a migrated database.
    public init(connection: PostgreSQLConnection) { self.connection = connection }

    /// Acquires the leadership for `id` when it has expired, was resigned, or is already `id`'s
    /// (the term is incremented in every case).
    /// - Parameters:
    ///   - id: the coordinator's id.
    ///   - lease: how long the leadership lasts from the server's `now()`.
    /// - Returns: `.acquired(term:)`, or `.heldBy` naming the live leader.
    /// - Throws: `PostgreSQLError`.
    public func acquire(id: String, lease: Duration) throws -> Leadership.Answer {
        let won = try connection.query("""
            UPDATE leadership SET term = term + 1, leader = $1, expires_at = now() + make_interval(secs => $2)
            WHERE id = 1 AND (leader = $1 OR leader IS NULL OR expires_at <= now())
            RETURNING term
            """, [.text(id), .double(lease.inSeconds)])
        if let row = won.first { return .acquired(term: try row.int(0)) }
        let record = try current()
        guard let leader = record.leader, record.live else {
            // It expired between the two statements: the next attempt takes it.
            return .heldBy(leader: record.leader ?? "nobody", term: record.term)
        }
        return .heldBy(leader: leader, term: record.term)
    }

    /// Extends `id`'s leadership under `term`.
    /// - Returns: `.renewed`, or `.lost` naming the row's leader and term when they differ.
    /// - Throws: `PostgreSQLError`.
    public func renew(id: String, term: Int64, lease: Duration) throws -> Leadership.Answer {
        let n = try connection.run("""
            UPDATE leadership SET expires_at = now() + make_interval(secs => $3)
            WHERE id = 1 AND leader = $1 AND term = $2
            """, [.text(id), .int(term), .double(lease.inSeconds)])
        if n == 1 { return .renewed }
        let record = try current()
        return .lost(leader: record.live ? record.leader : nil, term: record.term)
    }

    /// Gives up `id`'s leadership under `term` at once (a graceful shutdown), so that a standby
    /// acquires it at its next attempt instead of after the lease.
    /// - Throws: `PostgreSQLError`.
    public func resign(id: String, term: Int64) throws {
        try connection.run("""
            UPDATE leadership SET leader = NULL, expires_at = '-infinity'
            WHERE id = 1 AND leader = $1 AND term = $2
            """, [.text(id), .int(term)])
    }

    /// The row now.
    /// - Throws: `PostgreSQLError`; `.misuse` when the schema has no leadership row.
    public func current() throws -> Record {
        guard let row = try connection.query(
            "SELECT term, leader, expires_at > now(), store_id FROM leadership WHERE id = 1").first else {
            throw PostgreSQLError.misuse("the leadership row is missing (schema not migrated?)")
        }
        return Record(term: try row.int(0), leader: try row.optionalText(1), live: try row.bool(2), storeID: try row.text(3))
    }

    /// Inside a write transaction of lease state: proves `term` is still the current term and
    /// holds the row until commit, so that no coordinator acquires a new term meanwhile.
    /// - Parameters:
    ///   - connection: the connection whose transaction is open.
    ///   - term: the writer's term.
    /// - Throws: `LeadershipFenced` when the term is no longer current; `PostgreSQLError`.
    public static func fence(_ connection: PostgreSQLConnection, term: Int64) throws {
        let rows = try connection.query("SELECT term FROM leadership WHERE id = 1 FOR SHARE")
        let current = try rows.first?.int(0) ?? -1
        guard current == term else { throw LeadershipFenced(term: term, current: current) }
    }
}

/// A write of lease state from a term that is no longer the store's current one: the writer is
/// a stale leader and must stop (DESIGN.md "The IP assignment table", issue 15 fencing).
public struct LeadershipFenced: Error, Sendable, Equatable, CustomStringConvertible {
    /// The writer's term.
    public let term: Int64
    /// The store's current term.
    public let current: Int64
    /// - Parameters:
    ///   - term: the writer's term.
    ///   - current: the store's current term.
    public init(term: Int64, current: Int64) { self.term = term; self.current = current }
    /// `term 3 is fenced: the store is at term 4`.
    public var description: String { "term \(term) is fenced: the store is at term \(current)" }
}

/// A PostgreSQL leadership record reached through a connection of its own, opened on first use
/// and reopened after it broke (the elector's thread is its only user).
public final class PostgreSQLLeadershipStore: LeadershipStore {
    private let configuration: PostgreSQLConfiguration
    private let connection = Locked<PostgreSQLConnection?>(nil)

    /// - Parameter configuration: how to reach the database. Its statement timeout should be
    ///   well below the leadership lease (the elector's calls block its thread).
    public init(configuration: PostgreSQLConfiguration) { self.configuration = configuration }

    public func acquire(id: String, lease: Duration) throws -> Leadership.Answer {
        try use { try PostgreSQLLeadership(connection: $0).acquire(id: id, lease: lease) }
    }

    public func renew(id: String, term: Int64, lease: Duration) throws -> Leadership.Answer {
        try use { try PostgreSQLLeadership(connection: $0).renew(id: id, term: term, lease: lease) }
    }

    public func resign(id: String, term: Int64) throws {
        try use { try PostgreSQLLeadership(connection: $0).resign(id: id, term: term) }
    }

    private func use<T>(_ body: (PostgreSQLConnection) throws -> T) throws -> T {
        try connection.withLock { slot in
            let c = try slot ?? PostgreSQLConnection(configuration)
            slot = c
            do {
                return try body(c)
            } catch let e as PostgreSQLError where e.isConnectionError {
                slot = nil
                throw e
            }
        }
    }
}
