import Foundation
import HatoTestKit
import Testing
@testable import ClusterProtocol
@testable import HatoCoordinator
@testable import HatoSupport

/// What only the PostgreSQL store has: the pool's retry of deadlocked transactions, recovery
/// from connections the server dropped, and every octet of message content kept.
@Suite("PostgreSQL store: pool, retries, lost connections")
struct PostgreSQLStoreUnitTests {
    @Test("message content with NULs and every octet value comes back exactly (both stores)", arguments: StoreKind.allCases)
    func binarySafeContent(kind: StoreKind) throws {
        let place = try TestStore(kind)
        let q = try place.open()
        let content: [UInt8] = (0...255).map { UInt8($0) } + [0, 0, 13, 10, 0] + [UInt8](repeating: 0xFF, count: 70_000)
        try q.enqueue(NewMessage(id: "BIN", reversePath: "s@example.org", recipients: ["a@x.test"], pool: "t", content: content,
                                 heloName: "c", clientAddress: "127.0.0.1", receivedAt: Date(timeIntervalSince1970: 2_000_000_000)))
        #expect(try q.content(of: "BIN") == content)
        #expect(try q.message(id: "BIN")?.size == content.count)
    }

    @Test("two transactions that deadlock: PostgreSQL aborts one (40P01), the pool runs it again, both changes are committed")
    func deadlockIsRetried() throws {
        let place = try TestStore(.postgresql)
        let store = try #require(try place.open() as? PostgreSQLQueueStore)
        let pool = store.pool
        try pool.transaction { c in
            try c.execute("CREATE TABLE t(id int PRIMARY KEY, n int NOT NULL); INSERT INTO t VALUES (1, 0), (2, 0)")
        }
        let attempts = Locked(0)
        let errors = Locked<[String]>([])
        let group = DispatchGroup()
        for (first, second) in [(1, 2), (2, 1)] {
            group.enter()
            Thread.detachNewThread {
                do {
                    try pool.transaction { c in
                        let attempt = attempts.withLock { $0 += 1; return $0 }
                        try c.run("UPDATE t SET n = n + 1 WHERE id = $1", [.int(Int64(first))])
                        if attempt <= 2 {
                            // Both first rows are locked before either asks for its second.
                            Thread.sleep(forTimeInterval: 0.3)
                        }
                        try c.run("UPDATE t SET n = n + 1 WHERE id = $1", [.int(Int64(second))])
                    }
                } catch {
                    errors.withLock { $0.append("\(error)") }
                }
                group.leave()
            }
        }
        #expect(group.wait(timeout: .now() + 30) == .success)
        #expect(errors.withLock { $0 }.isEmpty, "\(errors.withLock { $0 })")
        #expect(pool.transactionRetries >= 1, "the deadlock victim ran again")
        let rows = try pool.withConnection { c in try c.query("SELECT id, n FROM t ORDER BY id").map { [try $0.int(0), try $0.int(1)] } }
        #expect(rows == [[1, 2], [2, 2]], "each transaction's two increments, once")
    }

    @Test("connections the server dropped: the call that finds one fails with a connection error, the next works on a new one")
    func droppedConnectionsRecover() throws {
        let place = try TestStore(.postgresql)
        // An application name of its own, so that only this store's connections are dropped.
        var configuration = try #require(place.configuration)
        configuration.applicationName = "hato-drop-" + (place.schema ?? "")
        let q = try PostgreSQLQueueStore(configuration: configuration, poolSize: 4)
        let t0 = Date(timeIntervalSince1970: 2_000_000_000)
        try q.enqueue(NewMessage(id: "M1", reversePath: "s@example.org", recipients: ["a@x.test"], pool: "t", content: Array("x\r\n".utf8),
                                 heloName: "c", clientAddress: "127.0.0.1", receivedAt: t0))
        // Terminate every backend of this store's pool.
        let admin = try PostgreSQLConnection(try #require(place.configuration))
        let killed = try admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                                     [.text(configuration.applicationName)]).count
        #expect(killed >= 1)
        var failures = 0
        var counts: [RecipientState: Int]?
        for _ in 0..<6 {
            do {
                counts = try q.countsByState()
                break
            } catch let e as PostgreSQLError {
                #expect(e.isConnectionError, "\(e)")
                failures += 1
            }
        }
        #expect(counts?[.queued] == 1, "the queue is read again once a connection is restored")
        #expect(failures <= 1, "the call that finds a broken connection drops the idle ones with it: at most one call fails")
        try q.enqueue(NewMessage(id: "M2", reversePath: "s@example.org", recipients: ["b@x.test"], pool: "t", content: Array("y\r\n".utf8),
                                 heloName: "c", clientAddress: "127.0.0.1", receivedAt: t0))
        #expect(try q.countsByState()[.queued] == 2)
    }

    @Test("lease-state writes are fenced by the leadership term: once another coordinator acquired a newer term, recording leases, requeueing and saving the IP table fail with LeadershipFenced and change nothing")
    func leaseWritesAreFenced() throws {
        let place = try TestStore(.postgresql)
        let q = try #require(try place.open() as? PostgreSQLQueueStore)
        let t0 = Date(timeIntervalSince1970: 2_000_000_000)
        try q.enqueue(NewMessage(id: "M1", reversePath: "s@example.org", recipients: ["a@x.test", "b@x.test"], pool: "t",
                                 content: Array("x\r\n".utf8), heloName: "c", clientAddress: "127.0.0.1", receivedAt: t0))
        let rids = try q.dueRecipients(pools: ["t"], now: t0, limit: 10).map(\.id)
        try #require(rids.count == 2)
        let leadership = PostgreSQLLeadership(connection: try PostgreSQLConnection(try #require(place.configuration)))
        guard case .acquired(let mine) = try leadership.acquire(id: "coord-1", incarnation: "p1", lease: .seconds(30)) else {
            Issue.record("coord-1 did not acquire"); return
        }
        q.fenceLeaseWrites(term: mine)
        let first = LeaseRecord(id: "L1", node: "node-a", instance: "i1", sendingIP: "127.0.0.10", messageID: "M1", domain: "x.test",
                                recipientIDs: [rids[0]], grantedAt: t0, expiresAt: t0 + 300)
        #expect(try q.recordLeases([first], countAttemptsOnDay: nil).count == 1, "the current term writes")
        #expect(try q.pool.withConnection { try $0.query("SELECT term FROM leases WHERE id = 'L1'").first?.int(0) } == mine)
        try q.saveIPOwners(["127.0.0.10": "node-a"])
        // coord-1 resigns (or its lease runs out) and coord-2 leads under a newer term.
        try leadership.resign(id: "coord-1", term: mine)
        #expect(try leadership.acquire(id: "coord-2", incarnation: "p2", lease: .seconds(30)) == .acquired(term: mine + 1))
        let second = LeaseRecord(id: "L2", node: "node-a", instance: "i1", sendingIP: "127.0.0.10", messageID: "M1", domain: "x.test",
                                 recipientIDs: [rids[1]], grantedAt: t0, expiresAt: t0 + 300)
        #expect(throws: LeadershipFenced(term: mine, current: mine + 1)) { try q.recordLeases([second], countAttemptsOnDay: nil) }
        #expect(throws: LeadershipFenced.self) { try q.saveIPOwners([:]) }
        #expect(throws: LeadershipFenced.self) { try q.requeueExpiredLeases(now: t0 + 1000) }
        #expect(throws: LeadershipFenced.self) { try q.requeueLeases(node: "node-a", exceptInstance: "i2", now: t0) }
        // Nothing of the fenced writes happened.
        #expect(try q.allLeases().map(\.id) == ["L1"])
        #expect(try q.ipOwners() == ["127.0.0.10": "node-a"])
        #expect(try q.countsByState()[.leased] == 1 && q.countsByState()[.queued] == 1)
        // The new leader's store writes under its term.
        q.fenceLeaseWrites(term: mine + 1)
        #expect(try q.requeueExpiredLeases(now: t0 + 1000) == ["L1"])
    }
}
