import Foundation
import HatoCoordinator
import HatoCrypto
import HatoTestKit
import Synchronization
import Testing

extension Integration {
    /// The leadership record on a real PostgreSQL server (the run's shared one), each test in a
    /// fresh schema: acquire, renew, expiry and takeover by the database's clock, resignation,
    /// fencing of an old term's writes, and two electors with threads.
    @Suite("Leadership on PostgreSQL: terms, expiry, takeover, fencing", .timeLimit(.minutes(2)))
    struct LeadershipPostgreSQLTests {
        private func withSchema<T>(_ body: (PostgreSQLConfiguration) throws -> T) throws -> T {
            let server = try PostgreSQLTestServer.shared()
            let schema = "l_" + Identifier.random(bytes: 6).lowercased()
            let admin = try PostgreSQLConnection(server.configuration())
            try admin.execute("CREATE SCHEMA \(schema)")
            defer { _ = try? admin.execute("DROP SCHEMA \(schema) CASCADE") }
            let config = server.configuration(schema: schema, statementTimeout: .seconds(5))
            let c = try PostgreSQLConnection(config)
            try PostgreSQLMigrations([PostgreSQLMigration(version: 1, sql: PostgreSQLLeadership.schemaSQL)]).apply(on: c)
            return try body(config)
        }

        @Test("the first acquire wins term 1; another coordinator is told who holds it; renewing keeps it")
        func acquireHoldRenew() throws {
            try withSchema { config in
                let a = PostgreSQLLeadership(connection: try PostgreSQLConnection(config))
                let b = PostgreSQLLeadership(connection: try PostgreSQLConnection(config))
                #expect(try a.current().term == 0)
                #expect(try a.acquire(id: "coord-1", incarnation: "p1", lease: .seconds(30)) == .acquired(term: 1))
                #expect(try b.acquire(id: "coord-2", incarnation: "p2", lease: .seconds(30)) == .heldBy(leader: "coord-1", term: 1))
                #expect(try a.renew(id: "coord-1", term: 1, lease: .seconds(30)) == .renewed)
                // A renewal under a term that is not the row's is refused and names the truth.
                #expect(try b.renew(id: "coord-2", term: 1, lease: .seconds(30)) == .lost(leader: "coord-1", term: 1))
                let record = try b.current()
                #expect(record.leader == "coord-1" && record.live && record.term == 1)
                #expect(UUID(uuidString: record.storeID) != nil)
            }
        }

        @Test("an expired leadership (database clock) is taken over under a higher term; the old leader's renewal is lost")
        func expiryAndTakeover() throws {
            try withSchema { config in
                let a = PostgreSQLLeadership(connection: try PostgreSQLConnection(config))
                let b = PostgreSQLLeadership(connection: try PostgreSQLConnection(config))
                #expect(try a.acquire(id: "coord-1", incarnation: "p1", lease: .milliseconds(300)) == .acquired(term: 1))
                #expect(try b.acquire(id: "coord-2", incarnation: "p2", lease: .seconds(30)) == .heldBy(leader: "coord-1", term: 1))
                // Poll (bounded) until the database's clock passes the expiry.
                let deadline = ContinuousClock.now + .seconds(10)
                var answer = try b.acquire(id: "coord-2", incarnation: "p2", lease: .seconds(30))
                while answer != .acquired(term: 2), ContinuousClock.now < deadline {
                    usleep(50_000)
                    answer = try b.acquire(id: "coord-2", incarnation: "p2", lease: .seconds(30))
                }
                #expect(answer == .acquired(term: 2))
                #expect(try a.renew(id: "coord-1", term: 1, lease: .seconds(30)) == .lost(leader: "coord-2", term: 2))
                #expect(try a.acquire(id: "coord-1", incarnation: "p1", lease: .seconds(30)) == .heldBy(leader: "coord-2", term: 2))
            }
        }

        @Test("another process with the same id waits for the expiry like any standby")
        func sameIDAnotherProcessWaits() throws {
            try withSchema { config in
                let old = PostgreSQLLeadership(connection: try PostgreSQLConnection(config))
                let new = PostgreSQLLeadership(connection: try PostgreSQLConnection(config))
                #expect(try old.acquire(id: "coord-1", incarnation: "run-1", lease: .seconds(30)) == .acquired(term: 1))
                #expect(try new.acquire(id: "coord-1", incarnation: "run-2", lease: .seconds(30)) == .heldBy(leader: "coord-1", term: 1))
                try old.resign(id: "coord-1", term: 1)
                #expect(try new.acquire(id: "coord-1", incarnation: "run-2", lease: .seconds(30)) == .acquired(term: 2))
            }
        }

        @Test("resigning hands over at once; re-acquiring one's own leadership starts a new term")
        func resignAndReacquire() throws {
            try withSchema { config in
                let a = PostgreSQLLeadership(connection: try PostgreSQLConnection(config))
                let b = PostgreSQLLeadership(connection: try PostgreSQLConnection(config))
                #expect(try a.acquire(id: "coord-1", incarnation: "p1", lease: .seconds(30)) == .acquired(term: 1))
                #expect(try a.acquire(id: "coord-1", incarnation: "p1", lease: .seconds(30)) == .acquired(term: 2))
                try a.resign(id: "coord-1", term: 1)  // an old term resigns nothing
                #expect(try b.acquire(id: "coord-2", incarnation: "p2", lease: .seconds(30)) == .heldBy(leader: "coord-1", term: 2))
                try a.resign(id: "coord-1", term: 2)
                #expect(try a.current().leader == nil)
                #expect(try b.acquire(id: "coord-2", incarnation: "p2", lease: .seconds(30)) == .acquired(term: 3))
            }
        }

        @Test("a leader frozen inside a fenced transaction does not stall the takeover: the database ends its idle session after idle_in_transaction_session_timeout, the standby acquires, the frozen write commits nothing")
        func frozenWriterIsCutOff() throws {
            try withSchema { config in
                var frozenConfig = config
                frozenConfig.settings["idle_in_transaction_session_timeout"] = "1000"
                let writer = try PostgreSQLConnection(frozenConfig)
                try writer.execute("CREATE TABLE grants (lease text PRIMARY KEY, term bigint NOT NULL)")
                let a = PostgreSQLLeadership(connection: try PostgreSQLConnection(config))
                let b = PostgreSQLLeadership(connection: try PostgreSQLConnection(config))
                #expect(try a.acquire(id: "coord-1", incarnation: "p1", lease: .milliseconds(300)) == .acquired(term: 1))
                // The leader freezes (SIGSTOP, a VM pause) between two statements of a fenced write.
                try writer.execute("BEGIN")
                try PostgreSQLLeadership.fence(writer, term: 1)
                try writer.run("INSERT INTO grants VALUES ('L1', 1)")
                usleep(400_000)  // its leadership has expired on the database's clock
                let started = ContinuousClock.now
                var answer = try b.acquire(id: "coord-2", incarnation: "p2", lease: .seconds(30))
                while answer != .acquired(term: 2), ContinuousClock.now - started < .seconds(10) {
                    usleep(50_000)
                    answer = try b.acquire(id: "coord-2", incarnation: "p2", lease: .seconds(30))
                }
                #expect(answer == .acquired(term: 2))
                #expect(ContinuousClock.now - started < .seconds(5), "taken over once the server ended the frozen session (1 s), not after it wakes")
                // Woken up, the old leader's transaction is gone: nothing of it was committed.
                #expect(throws: PostgreSQLError.self) { try writer.execute("COMMIT") }
                #expect(try PostgreSQLConnection(config).query("SELECT count(*) FROM grants").first?.int(0) == 0)
            }
        }

        @Test("fencing: a write under the current term commits; under an old term it throws LeadershipFenced and commits nothing; an acquire waits for a fenced writer's commit")
        func fencing() throws {
            try withSchema { config in
                let writer = try PostgreSQLConnection(config)
                try writer.execute("CREATE TABLE grants (lease text PRIMARY KEY, term bigint NOT NULL)")
                let a = PostgreSQLLeadership(connection: try PostgreSQLConnection(config))
                let b = PostgreSQLLeadership(connection: try PostgreSQLConnection(config))
                #expect(try a.acquire(id: "coord-1", incarnation: "p1", lease: .milliseconds(200)) == .acquired(term: 1))
                try writer.transaction {
                    try PostgreSQLLeadership.fence(writer, term: 1)
                    try writer.run("INSERT INTO grants VALUES ('L1', 1)")
                }
                // While a term-1 writer holds the fence, a takeover waits for its commit.
                let acquired = Mutex<ContinuousClock.Instant?>(nil)
                let committed = Mutex<ContinuousClock.Instant?>(nil)
                try writer.execute("BEGIN")
                try PostgreSQLLeadership.fence(writer, term: 1)
                try writer.run("INSERT INTO grants VALUES ('L2', 1)")
                // The leader's renewal does not wait for its own fenced writer.
                let renewStarted = ContinuousClock.now
                #expect(try a.renew(id: "coord-1", term: 1, lease: .milliseconds(200)) == .renewed)
                #expect(ContinuousClock.now - renewStarted < .seconds(2))
                usleep(300_000)  // the lease has expired on the database's clock
                let started = Mutex<ContinuousClock.Instant?>(nil)
                let t = Thread {
                    started.withLock { $0 = .now }
                    _ = try? b.acquire(id: "coord-2", incarnation: "p2", lease: .seconds(30))
                    acquired.withLock { $0 = .now }
                }
                t.start()
                let startDeadline = ContinuousClock.now + .seconds(5)
                while started.withLock({ $0 }) == nil, ContinuousClock.now < startDeadline { usleep(5_000) }
                usleep(400_000)
                #expect(started.withLock { $0 } != nil)
                #expect(acquired.withLock { $0 } == nil, "the acquire must wait for the fenced writer")
                committed.withLock { $0 = .now }
                try writer.execute("COMMIT")
                let deadline = ContinuousClock.now + .seconds(5)
                while acquired.withLock({ $0 }) == nil, ContinuousClock.now < deadline { usleep(10_000) }
                let at = try #require(acquired.withLock { $0 })
                #expect(at >= committed.withLock { $0 }!)
                #expect(try b.current().term == 2)
                // Term 1 is now fenced: the write throws and leaves nothing behind.
                #expect(throws: LeadershipFenced(term: 1, current: 2)) {
                    try writer.transaction {
                        try PostgreSQLLeadership.fence(writer, term: 1)
                        try writer.run("INSERT INTO grants VALUES ('L3', 1)")
                    }
                }
                let leases = try writer.query("SELECT lease FROM grants ORDER BY lease").map { try $0.text(0) }
                #expect(leases == ["L1", "L2"])
            }
        }

        @Test("two electors with threads: exactly one leads; stopping it hands the leadership to the other under a higher term within the retry interval")
        func twoElectors() throws {
            try withSchema { config in
                let timing = Leadership.Timing(lease: .seconds(6))
                let log = Mutex<[String]>([])
                func elector(_ id: String) -> LeaderElector {
                    LeaderElector(id: id, timing: timing, store: PostgreSQLLeadershipStore(configuration: config)) { d in
                        switch d {
                        case .becomeLeader(let term): log.withLock { $0.append("\(id) leads \(term)") }
                        case .stepDown(let term, _): log.withLock { $0.append("\(id) steps down \(term)") }
                        default: break
                        }
                    }
                }
                let e1 = elector("coord-1"), e2 = elector("coord-2")
                e1.start()
                var deadline = ContinuousClock.now + .seconds(10)
                while e1.term() == nil, ContinuousClock.now < deadline { usleep(10_000) }
                e2.start()
                let first = try #require(e1.term())
                usleep(1_500_000)
                #expect(e1.term() == first && e2.term() == nil)
                #expect(e2.role == .standby(leader: "coord-1", term: first))
                let stopped = ContinuousClock.now
                e1.stop()
                #expect(e1.term() == nil)
                deadline = ContinuousClock.now + .seconds(10)
                while e2.term() == nil, ContinuousClock.now < deadline { usleep(10_000) }
                let second = try #require(e2.term())
                #expect(second > first)
                #expect(ContinuousClock.now - stopped < .seconds(4), "a resigned leadership is taken within about the retry interval, not the lease")
                e2.stop()
                #expect(log.withLock { $0 } == ["coord-1 leads \(first)", "coord-1 steps down \(first)",
                                                 "coord-2 leads \(second)", "coord-2 steps down \(second)"])
            }
        }
    }
}
