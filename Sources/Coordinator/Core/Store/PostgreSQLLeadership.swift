import Foundation
import HatoCrypto
import HatoSupport

/// The leadership record of the coordinators sharing one PostgreSQL database: one row holding
/// the **term**, the leader's id and the expiry of its leadership on the database's clock, plus
/// the store's random identity (nodes compare terms only within one store).
///
/// Every time used is the server's `now()`, so the coordinators' clocks never need to agree
/// (the database host's clock must not step forward by more than the leader's margin; NTP slews).
/// A coordinator acquires the row when it has expired, was resigned, or is held by this same
/// process (`incarnation`: another process started with the same id waits like any standby),
/// which increments the term; the leader extends the expiry while the term still matches.
/// Writes of lease state take `fence(term:)` in their transaction: it locks the row
/// `FOR KEY SHARE` until commit. An acquire first locks the row `FOR UPDATE`, which waits for
/// those writers (a renewal, an update that changes no key, does not), so every write of the old
/// term either commits before the new term exists or fails with `LeadershipFenced`.
public struct PostgreSQLLeadership: Sendable {
    /// The migration that creates the row; part of the store's migration list.
    public static let schemaSQL = """
        CREATE TABLE leadership (
            id smallint PRIMARY KEY CHECK (id = 1),
            term bigint NOT NULL,
            leader text,
            incarnation text,
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

    /// Acquires the leadership for `id` when it has expired, was resigned, or is held by this
    /// same process (`incarnation`); the term is incremented in every case. Waits for writers
    /// still holding `fence` of the current term to commit.
    /// - Parameters:
    ///   - id: the coordinator's id.
    ///   - incarnation: this process's random identity (a restart of the same id is another).
    ///   - lease: how long the leadership lasts from the server's `now()`.
    /// - Returns: `.acquired(term:)`, `.heldBy` naming the live leader, or `.failed` when the row
    ///   was vacant but changed under the attempt (the next attempt takes it).
    /// - Throws: `PostgreSQLError`.
    public func acquire(id: String, incarnation: String, lease: Duration) throws -> Leadership.Answer {
        try connection.transaction(isolation: .readCommitted) {
            let row = try connection.query("""
                SELECT term, leader, incarnation, expires_at > now() FROM leadership WHERE id = 1 FOR UPDATE
                """)
            guard let r = row.first else { throw PostgreSQLError.misuse("the leadership row is missing (schema not migrated?)") }
            let term = try r.int(0), leader = try r.optionalText(1), holder = try r.optionalText(2), live = try r.bool(3)
            if let leader, live, !(leader == id && holder == incarnation) {
                return .heldBy(leader: leader, term: term)
            }
            let won = try connection.query("""
                UPDATE leadership SET term = term + 1, leader = $1, incarnation = $2, expires_at = now() + make_interval(secs => $3)
                WHERE id = 1 RETURNING term
                """, [.text(id), .text(incarnation), .double(lease.inSeconds)])
            guard let w = won.first else { return .failed("the leadership row vanished") }
            return .acquired(term: try w.int(0))
        }
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
            UPDATE leadership SET leader = NULL, incarnation = NULL, expires_at = '-infinity'
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
        let rows = try connection.query("SELECT term FROM leadership WHERE id = 1 FOR KEY SHARE")
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
    /// This process's identity in the row (random, new at every start).
    public let incarnation = Identifier.random(bytes: 12)

    /// - Parameter configuration: how to reach the database. Its statement timeout should be
    ///   well below the leadership lease (the elector's calls block its thread).
    public init(configuration: PostgreSQLConfiguration) { self.configuration = configuration }

    public func acquire(id: String, lease: Duration) throws -> Leadership.Answer {
        try use { try PostgreSQLLeadership(connection: $0).acquire(id: id, incarnation: incarnation, lease: lease) }
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
