import Foundation
import HatoSupport

/// A fixed number of PostgreSQL connections shared by the threads of one process.
///
/// Each call takes a free connection (waiting for one when all are busy), uses it alone and
/// gives it back. A connection found broken is reconnected (`reset`) before use; a call that
/// fails because the connection broke gives the error to its caller (a transaction's outcome
/// is then unknown to the client, so it is never retried blindly — the SMTP client gets a 4xx
/// and sends again). Connections are opened on first use, so a pool can be made while the
/// database is down.
///
/// `Sendable`: the free list and the counters live in a `LockedCondition`; a connection is used
/// by one thread at a time (the one that took it).
public final class PostgreSQLPool: Sendable {
    private struct State: Sendable {
        var idle: [PostgreSQLConnection] = []
        var opened = 0
        var stopped = false
    }

    /// The configuration every connection is opened with.
    public let configuration: PostgreSQLConfiguration
    /// The most connections open at once.
    public let size: Int
    /// How many times a transaction is tried when it fails with a serialization failure
    /// (`40001`) or a deadlock (`40P01`).
    public let transactionAttempts: Int
    private let state = LockedCondition(State())
    private let retries = Locked(0)

    /// Makes a pool; no connection is opened yet.
    /// - Parameters:
    ///   - configuration: the server, credentials and limits.
    ///   - size: the most connections (at least 1).
    ///   - transactionAttempts: tries per transaction on `40001`/`40P01` (at least 1; default 5).
    public init(_ configuration: PostgreSQLConfiguration, size: Int, transactionAttempts: Int = 5) {
        self.configuration = configuration
        self.size = max(1, size)
        self.transactionAttempts = max(1, transactionAttempts)
    }

    /// Transactions tried again after a serialization failure or deadlock so far.
    public var transactionRetries: Int { retries.withLock { $0 } }

    /// Runs `body` with a connection of its own.
    /// - Parameter body: the work; it must not keep the connection.
    /// - Returns: what `body` returns.
    /// - Throws: `PostgreSQLError` `.connectionFailed` when no connection can be opened or
    ///   restored; what `body` throws.
    @discardableResult
    public func withConnection<T>(_ body: (PostgreSQLConnection) throws -> T) throws -> T {
        let connection = try checkOut()
        defer { checkIn(connection) }
        do {
            return try body(connection)
        } catch let error as PostgreSQLError where error.isConnectionError {
            // The server went away: the other idle connections went with it.
            dropIdle()
            throw error
        }
    }

    /// Runs `body` inside one transaction on a connection of its own, trying it again (up to
    /// `transactionAttempts` times in all) when PostgreSQL reports a serialization failure or
    /// a deadlock, and once more on a fresh connection when the connection was found broken
    /// before the commit; `body` must therefore have no effect outside the transaction.
    /// - Parameters:
    ///   - synchronousCommit: whether the commit waits until it is durable (default true);
    ///     false sets `synchronous_commit = off` for this transaction only.
    ///   - body: the work.
    /// - Returns: what `body` returns.
    /// - Throws: `PostgreSQLError` (the last attempt's, for a retried failure); what `body` throws.
    @discardableResult
    public func transaction<T>(synchronousCommit: Bool = true, _ body: (PostgreSQLConnection) throws -> T) throws -> T {
        var attempt = 1
        var reconnected = false
        while true {
            do {
                return try withConnection { c in
                    try c.transaction {
                        if !synchronousCommit { try c.execute("SET LOCAL synchronous_commit = off") }
                        return try body(c)
                    }
                }
            } catch let error as PostgreSQLError where error.isRetryableTransactionFailure && attempt < transactionAttempts {
                attempt += 1
                retries.withLock { $0 += 1 }
                // A short, growing, jittered pause so the two sides do not collide again.
                usleep(useconds_t(UInt32.random(in: 1_000...5_000) * UInt32(attempt)))
            } catch let error as PostgreSQLError where error.isConnectionError && !error.duringCommit && !reconnected {
                // An idle connection the server dropped (a restart, a failover, an idle timeout)
                // fails at its first statement: nothing was committed, so the transaction is
                // tried once more on a fresh connection, and the other idle ones are dropped
                // (they went with the same server). A failure at COMMIT is never retried: its
                // outcome is unknown.
                reconnected = true
                dropIdle()
            }
        }
    }

    /// Closes every idle connection and refuses new work: later calls wait until the process exits.
    public func stop() {
        state.withLock { s in
            s.stopped = true
            s.opened -= s.idle.count
            s.idle.removeAll()
        }
    }

    private func checkOut() throws -> PostgreSQLConnection {
        enum Take { case reuse(PostgreSQLConnection), open }
        let size = self.size
        let take: Take = state.wait(until: nil, for: { !$0.stopped && (!$0.idle.isEmpty || $0.opened < size) }) { s, _ in
            if let c = s.idle.popLast() { return .reuse(c) }
            s.opened += 1
            return .open
        }
        switch take {
        case .reuse(let c):
            guard !c.isConnected else { return c }
            do {
                try c.reset()
                return c
            } catch {
                forget()
                throw error
            }
        case .open:
            do {
                return try PostgreSQLConnection(configuration)
            } catch {
                forget()
                throw error
            }
        }
    }

    private func checkIn(_ c: PostgreSQLConnection) {
        state.withLockAndBroadcast { s in
            if s.stopped { s.opened -= 1 } else { s.idle.append(c) }
        }
    }

    /// Closes every idle connection (after one was found broken: they likely all are).
    private func dropIdle() {
        state.withLockAndBroadcast { s in
            s.opened -= s.idle.count
            s.idle.removeAll()
        }
    }

    /// A connection that could not be opened or restored is given up (another is opened next time).
    private func forget() {
        state.withLockAndBroadcast { $0.opened -= 1 }
    }
}
