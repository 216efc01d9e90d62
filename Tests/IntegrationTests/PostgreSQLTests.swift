import Foundation
import HatoCoordinator
import HatoCrypto
import HatoTestKit
import Synchronization
import Testing

extension Integration {
    /// The PostgreSQL client over libpq against a real server (scripts/pg-test-server.sh): the
    /// run's shared one, and a private one for the test that stops its server.
    @Suite("PostgreSQL client: connection, binary-safe values, transactions, SQLSTATE, migrations, connection loss",
           .timeLimit(.minutes(2)))
    struct PostgreSQLTests {
        /// Runs `body` with a connection whose search_path is a fresh schema, dropped afterwards.
        private func withSchema<T>(statementTimeout: Duration? = .seconds(30),
                                   _ body: (PostgreSQLTestServer, String, PostgreSQLConnection) throws -> T) throws -> T {
            let server = try PostgreSQLTestServer.shared()
            let schema = "t_" + Identifier.random(bytes: 6).lowercased()
            let admin = try PostgreSQLConnection(server.configuration())
            try admin.execute("CREATE SCHEMA \(schema)")
            defer { _ = try? admin.execute("DROP SCHEMA \(schema) CASCADE") }
            let connection = try PostgreSQLConnection(server.configuration(schema: schema, statementTimeout: statementTimeout))
            return try body(server, schema, connection)
        }

        private func expectPostgreSQLError(_ body: () throws -> Void) -> PostgreSQLError? {
            do {
                try body()
                Issue.record("no error thrown")
                return nil
            } catch let error as PostgreSQLError {
                return error
            } catch {
                Issue.record("not a PostgreSQLError: \(error)")
                return nil
            }
        }

        @Test("connects with the URL and a password file, as role hato to database hato_test")
        func connectsWithURLAndPasswordFile() throws {
            let server = try PostgreSQLTestServer.shared()
            let connection = try PostgreSQLConnection(server.configuration())
            let rows = try connection.query("SELECT current_user, current_database(), current_setting('application_name')")
            #expect(rows.count == 1)
            #expect(try rows[0].text(0) == "hato")
            #expect(try rows[0].text(1) == "hato_test")
            #expect(try rows[0].text(2) == "hato-tests")
            #expect(connection.serverVersion >= 120000)
            #expect(connection.isConnected)
            #expect(!server.url.contains(try String(contentsOfFile: server.passwordFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
        }

        @Test("a wrong password, a missing password file and a password in the URL give clear errors that name no secret")
        func badPasswordIsAClearErrorNamingNoSecret() throws {
            let server = try PostgreSQLTestServer.shared()
            let realPassword = try String(contentsOfFile: server.passwordFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            let dir = try makeTempDirectory("hato-pg-pw-")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let wrong = "wrong-" + Identifier.random(bytes: 8)
            try (wrong + "\n").write(toFile: dir + "/password", atomically: true, encoding: .utf8)
            var config = server.configuration()
            config.passwordFile = dir + "/password"
            let error = expectPostgreSQLError { _ = try PostgreSQLConnection(config) }
            #expect(error?.kind == .connectionFailed)
            #expect(error?.isConnectionError == true)
            let text = error?.description ?? ""
            #expect(text.contains("password authentication failed"), "\(text)")
            #expect(text.contains(server.url), "names the server: \(text)")
            #expect(!text.contains(wrong) && !text.contains(realPassword), "\(text)")

            config.passwordFile = dir + "/missing"
            let missing = expectPostgreSQLError { _ = try PostgreSQLConnection(config) }
            #expect(missing?.kind == .connectionFailed)
            #expect(missing?.description.contains(dir + "/missing") == true, "\(missing?.description ?? "")")

            // A password in the URL itself is masked in the message.
            config.passwordFile = nil
            config.url = server.url.replacingOccurrences(of: "hato@", with: "hato:\(wrong)@")
            let inline = expectPostgreSQLError { _ = try PostgreSQLConnection(config) }
            #expect(inline?.description.contains("hato:***@") == true, "\(inline?.description ?? "")")
            #expect(inline?.description.contains(wrong) == false)
            for url in ["postgresql://db/x?user=u&password=\(wrong)", "postgresql://u:\(wrong)@db/x", "postgresql://u:a/\(wrong)@db:5432/x",
                        "postgresql://u:a@\(wrong)@db/x?sslmode=disable", "postgres://u:a%2F\(wrong)@[::1]:5432/x"] {
                #expect(!PostgreSQLConfiguration(url: url).redactedURL.contains(wrong), "\(PostgreSQLConfiguration(url: url).redactedURL)")
            }
            #expect(PostgreSQLConfiguration(url: "postgresql://u:\(wrong)@db:5432/x").redactedURL == "postgresql://u:***@db:5432/x")
        }

        @Test("bytea: all 256 byte values round-trip exactly, in text and binary results, and the server sees exactly those bytes")
        func byteaAll256ByteValues() throws {
            try withSchema { _, _, db in
                let all = (0...255).map { UInt8($0) }
                try db.execute("CREATE TABLE blobs (id bigint PRIMARY KEY, b bytea)")
                try db.run("INSERT INTO blobs VALUES ($1, $2), ($3, $4)", [.int(1), .bytea(all), .int(2), .bytea(all.reversed())])
                for binary in [false, true] {
                    let rows = try db.query("SELECT b FROM blobs ORDER BY id", binaryResults: binary)
                    #expect(try rows[0].bytea(0) == all)
                    #expect(try rows[1].bytea(0) == Array(all.reversed()))
                    #expect(try rows[0].value(0) == .bytea(all))
                }
                // Checked on the server side too: length, and equality with the hex literal.
                let hex = all.map { String(format: "%02x", $0) }.joined()
                let check = try db.query("SELECT length(b), b = decode('\(hex)', 'hex') FROM blobs WHERE id = 1")
                #expect(try check[0].int(0) == 256)
                #expect(try check[0].bool(1))
                #expect(try db.query("SELECT $1::bytea", [.bytea([])])[0].bytea(0) == [])
            }
        }

        @Test("bytea: a 10 MiB payload with NULs round-trips exactly (timed)")
        func byteaTenMiB() throws {
            try withSchema { _, _, db in
                var payload = [UInt8](repeating: 0, count: 10 * 1024 * 1024)
                var x: UInt32 = 2463534242
                for i in payload.indices {
                    x ^= x << 13; x ^= x >> 17; x ^= x << 5
                    payload[i] = i % 7 == 0 ? 0 : UInt8(truncatingIfNeeded: x)
                }
                try db.execute("CREATE TABLE blobs (id bigint PRIMARY KEY, b bytea)")
                let clock = ContinuousClock()
                let insert = try clock.measure { try db.run("INSERT INTO blobs VALUES (1, $1)", [.bytea(payload)]) }
                var back: [UInt8] = []
                let selectText = try clock.measure { back = try db.query("SELECT b FROM blobs WHERE id = 1")[0].bytea(0) }
                #expect(back == payload)
                back = []
                let selectBinary = try clock.measure { back = try db.query("SELECT b FROM blobs WHERE id = 1", binaryResults: true)[0].bytea(0) }
                #expect(back == payload)
                let serverSide = try db.query("SELECT length(b), sha256(b) FROM blobs WHERE id = 1", binaryResults: true)
                #expect(try serverSide[0].int(0) == Int64(payload.count))
                #expect(try serverSide[0].bytea(1) == Crypto.sha256(payload))
                print("postgresql: 10 MiB bytea insert \(insert), select (text results) \(selectText), select (binary results) \(selectBinary)")
            }
        }

        @Test("NULL round-trips as every type; optional accessors give nil, plain ones throw")
        func nulls() throws {
            try withSchema { _, _, db in
                try db.execute("CREATE TABLE n (i bigint, d double precision, b boolean, t text, y bytea)")
                try db.run("INSERT INTO n VALUES ($1, $2, $3, $4, $5)", [.null, .null, .null, .null, .null])
                for binary in [false, true] {
                    let row = try db.query("SELECT i, d, b, t, y FROM n", binaryResults: binary)[0]
                    for c in 0..<5 {
                        #expect(row.isNull(c))
                        #expect(try row.value(c) == .null)
                    }
                    #expect(try row.optionalInt(0) == nil)
                    #expect(try row.optionalDouble(1) == nil)
                    #expect(try row.optionalBool(2) == nil)
                    #expect(try row.optionalText(3) == nil)
                    #expect(try row.optionalBytea(4) == nil)
                    #expect(expectPostgreSQLError { _ = try row.int(0) }?.kind == .misuse)
                }
                // NULL and a value for the same statement (the cached statement's types differ).
                try db.run("INSERT INTO n (i, t) VALUES ($1, $2)", [.int(5), .text("x")])
                #expect(try db.query("SELECT count(*) FROM n WHERE i IS NULL")[0].int(0) == 1)
            }
        }

        @Test("int64 extremes, doubles bit for bit, booleans and Unicode text round-trip; text with NUL is refused")
        func scalarValues() throws {
            try withSchema { _, _, db in
                try db.execute("CREATE TABLE v (id serial PRIMARY KEY, i bigint, d double precision, b boolean, t text)")
                let ints: [Int64] = [.min, .min + 1, -1, 0, 1, .max - 1, .max]
                let doubles: [Double] = [0, -0.0, 0.1, -1.5e300, .leastNonzeroMagnitude, .greatestFiniteMagnitude, .infinity, -.infinity, .pi]
                let texts = ["", "plain", "鳩 ✉️ Grüße", "quote ' and \\ backslash", String(repeating: "x", count: 100_000)]
                for (n, i) in ints.enumerated() {
                    try db.run("INSERT INTO v (i, d, b, t) VALUES ($1, $2, $3, $4)",
                               [.int(i), .double(doubles[n % doubles.count]), .bool(n % 2 == 0), .text(texts[n % texts.count])])
                }
                for binary in [false, true] {
                    let rows = try db.query("SELECT i, d, b, t FROM v ORDER BY id", binaryResults: binary)
                    #expect(rows.count == ints.count)
                    for (n, row) in rows.enumerated() {
                        #expect(try row.int(0) == ints[n])
                        #expect(try row.double(1).bitPattern == doubles[n % doubles.count].bitPattern, "row \(n) binary \(binary)")
                        #expect(try row.bool(2) == (n % 2 == 0))
                        #expect(try row.text(3) == texts[n % texts.count])
                    }
                }
                #expect(try db.query("SELECT $1::double precision", [.double(.nan)])[0].double(0).isNaN)
                #expect(try db.query("SELECT $1::bigint = -9223372036854775808", [.int(.min)])[0].bool(0))
                // An integer column narrower than bigint, and a text parameter parsed as a timestamp.
                #expect(try db.query("SELECT $1::integer, $2::timestamptz = '2027-01-01T00:00:00Z'", [.int(42), .text("2027-01-01 00:00:00+00")], binaryResults: true)[0].int(0) == 42)
                #expect(try db.query("SELECT $1::timestamptz = '2027-01-01T00:00:00Z'", [.text("2027-01-01 00:00:00+00")])[0].bool(0))
                let nul = expectPostgreSQLError { try db.run("INSERT INTO v (t) VALUES ($1)", [.text("a\u{0}b")]) }
                #expect(nul?.kind == .misuse)
                #expect(try db.query("SELECT count(*) FROM v")[0].int(0) == Int64(ints.count))
            }
        }

        @Test("transaction: commits on return, rolls back when the body throws or a caught statement failed; no nesting")
        func transactions() throws {
            struct Boom: Error {}
            try withSchema { _, _, db in
                try db.execute("CREATE TABLE t (k text PRIMARY KEY)")
                let value = try db.transaction { try db.run("INSERT INTO t VALUES ($1)", [.text("kept")]); return 7 }
                #expect(value == 7)
                #expect(throws: Boom.self) {
                    try db.transaction { try db.run("INSERT INTO t VALUES ($1)", [.text("lost")]); throw Boom() }
                }
                // A failed statement whose error the body caught: the commit refuses and rolls back.
                let aborted = expectPostgreSQLError {
                    try db.transaction(isolation: .serializable) {
                        try db.run("INSERT INTO t VALUES ($1)", [.text("lost-too")])
                        _ = try? db.run("INSERT INTO t VALUES ($1)", [.text("kept")])
                    }
                }
                #expect(aborted?.kind == .misuse)
                let nested = expectPostgreSQLError { try db.transaction { try db.transaction {} } }
                #expect(nested?.kind == .misuse)
                #expect(try db.query("SELECT k FROM t ORDER BY k").map { try $0.text(0) } == ["kept"])
                // BEGIN goes with the first statement, whichever call sends it, with its isolation level.
                #expect(try db.transaction(isolation: .serializable) { try db.query("SHOW transaction_isolation")[0].text(0) } == "serializable")
                #expect(try db.transaction(isolation: .repeatableRead) {
                    try db.queryPipelined([("SELECT 1", []), ("SELECT current_setting('transaction_isolation')", [])])[1][0].text(0)
                } == "repeatable read")
                try db.transaction {
                    try db.execute("INSERT INTO t VALUES ('by-execute'); INSERT INTO t VALUES ('by-execute-2')")
                    #expect(try db.query("SELECT count(*) FROM t")[0].int(0) == 3)
                    try db.execute("SAVEPOINT inside")  // only in a transaction block
                }
                #expect(throws: Boom.self) {
                    try db.transaction { try db.execute("DELETE FROM t WHERE k LIKE 'by-execute%'"); throw Boom() }
                }
                #expect(try db.query("SELECT count(*) FROM t")[0].int(0) == 3)
                try db.run("DELETE FROM t WHERE k LIKE 'by-execute%'")
                // A transaction that sends nothing commits nothing and leaves nothing open.
                #expect(try db.transaction { 5 } == 5)
                #expect(throws: Boom.self) { try db.transaction { throw Boom() } }
                #expect(expectPostgreSQLError { try db.execute("SAVEPOINT outside") }?.sqlState == "25P01", "no transaction block left open")
                // The connection is usable afterwards, outside any transaction.
                try db.run("INSERT INTO t VALUES ($1)", [.text("after")])
                #expect(try db.query("SELECT count(*) FROM t")[0].int(0) == 2)
            }
        }

        @Test("pipelined statements run in order, over several syncs, with their rows; the first failure throws with its SQLSTATE, skips the rest and aborts the transaction; the connection stays usable")
        func pipelined() throws {
            try withSchema { _, _, db in
                try db.execute("CREATE TABLE p (k bigint PRIMARY KEY, v text NOT NULL, n bigint NOT NULL DEFAULT 0)")
                // 600 inserts then 600 updates that each depend on the insert before them: more
                // statements than one sync carries.
                let inserts = (0..<600).map { (sql: "INSERT INTO p(k, v) VALUES($1, $2)", parameters: [PostgreSQLValue.int(Int64($0)), .text("v\($0)")]) }
                let updates = (0..<600).map { (sql: "UPDATE p SET n = n + $1, v = v || 'x' WHERE k = $2", parameters: [PostgreSQLValue.int(1), .int(Int64($0))]) }
                let results = try db.transaction {
                    try db.queryPipelined(inserts + updates + [("DELETE FROM p WHERE k >= $1", [.int(590)]), ("SELECT k, v FROM p WHERE k < $1 ORDER BY k", [.int(2)])])
                }
                #expect(results.map(\.affectedRows) == Array(repeating: 1, count: 1200) + [10, 2])
                #expect(try results.last?.map { [try $0.text(0), try $0.text(1)] } == [["0", "v0x"], ["1", "v1x"]])
                #expect(try db.query("SELECT count(*), sum(n) FROM p").map { [try $0.int(0), try $0.int(1)] } == [[590, 590]])
                #expect(try db.query("SELECT v FROM p WHERE k = 7")[0].text(0) == "v7x")
                #expect(try db.queryPipelined([]).isEmpty)

                // A duplicate key in the middle: 23505, nothing after it ran, nothing of it kept.
                let failed = expectPostgreSQLError {
                    _ = try db.transaction {
                        try db.queryPipelined([("UPDATE p SET n = 100 WHERE k = $1", [.int(1)]), ("INSERT INTO p(k, v) VALUES($1, $2)", [.int(2), .text("dup")]),
                                             ("UPDATE p SET n = 200 WHERE k = $1", [.int(3)])])
                    }
                }
                #expect(failed?.sqlState == "23505")
                #expect(try db.query("SELECT k, n FROM p WHERE k IN (1, 3) ORDER BY k").map { [try $0.int(0), try $0.int(1)] } == [[1, 1], [3, 1]])
                // The connection works as before: plain statements, a transaction, another pipeline.
                #expect(db.isConnected)
                _ = try db.transaction { try db.run("UPDATE p SET n = 5 WHERE k = $1", [.int(4)]) }
                #expect(try db.queryPipelined([("UPDATE p SET n = n + 1 WHERE k = $1", [.int(4)]), ("UPDATE p SET n = n + 1 WHERE k = $1", [.int(4)])])
                    .map(\.affectedRows) == [1, 1])
                #expect(try db.query("SELECT n FROM p WHERE k = 4")[0].int(0) == 7)
            }
        }

        @Test("errors carry SQLSTATE: 23505 on a duplicate key (row values only in detail), 40001 on a serialization conflict")
        func sqlStates() throws {
            try withSchema { server, schema, db in
                try db.execute("CREATE TABLE u (k text PRIMARY KEY, n bigint)")
                try db.run("INSERT INTO u VALUES ($1, 0)", [.text("someone@example.com")])
                let dup = expectPostgreSQLError { try db.run("INSERT INTO u VALUES ($1, 1)", [.text("someone@example.com")]) }
                #expect(dup?.sqlState == "23505")
                #expect(dup?.isUniqueViolation == true)
                #expect(dup?.kind == .server)
                #expect(dup?.description.contains("someone@example.com") == false, "\(dup?.description ?? "")")
                #expect(dup?.detail?.contains("someone@example.com") == true)

                let syntax = expectPostgreSQLError { try db.execute("SELEC 1") }
                #expect(syntax?.sqlState == "42601")

                // Two sessions: a repeatable-read transaction updates a row another committed meanwhile.
                let other = try PostgreSQLConnection(server.configuration(schema: schema))
                let conflict = expectPostgreSQLError {
                    try db.transaction(isolation: .repeatableRead) {
                        _ = try db.query("SELECT n FROM u")
                        try other.run("UPDATE u SET n = n + 1")
                        try db.run("UPDATE u SET n = n + 10")
                    }
                }
                #expect(conflict?.sqlState == "40001")
                #expect(conflict?.isSerializationFailure == true)
                #expect(conflict?.isRetryableTransactionFailure == true)
                #expect(try db.query("SELECT n FROM u")[0].int(0) == 1)
            }
        }

        @Test("a statement past the statement timeout is cancelled with 57014 and the connection stays usable")
        func statementTimeout() throws {
            try withSchema(statementTimeout: .milliseconds(300)) { _, _, db in
                let started = ContinuousClock.now
                let error = expectPostgreSQLError { _ = try db.query("SELECT pg_sleep(10)") }
                #expect(error?.isStatementTimeout == true, "\(String(describing: error))")
                #expect(ContinuousClock.now - started < .seconds(5))
                try db.setStatementTimeout(.seconds(5))
                #expect(try db.query("SELECT current_setting('statement_timeout')")[0].text(0) == "5s")
                #expect(try db.query("SELECT 1")[0].int(0) == 1)
            }
        }

        private static let migrations = [
            PostgreSQLMigration(version: 1, sql: """
                CREATE TABLE runs (version bigint NOT NULL, backend integer NOT NULL DEFAULT pg_backend_pid());
                INSERT INTO runs (version) VALUES (1);
                SELECT pg_sleep(0.2);
                """),
            PostgreSQLMigration(version: 2, sql: "CREATE TABLE messages (id text PRIMARY KEY, body bytea NOT NULL); INSERT INTO runs (version) VALUES (2)"),
            PostgreSQLMigration(version: 5, sql: "CREATE INDEX messages_body ON messages (length(body)); INSERT INTO runs (version) VALUES (5)"),
        ]

        @Test("migrations: applied once in order, a re-run is a no-op, a later version applies alone, a failing one is not recorded")
        func migrationsApplyOnce() throws {
            try withSchema { _, _, db in
                #expect(try PostgreSQLMigrations.appliedVersions(on: db) == [])
                let runner = try PostgreSQLMigrations(Self.migrations)
                #expect(try runner.apply(on: db) == [1, 2, 5])
                #expect(try runner.apply(on: db) == [])
                #expect(try PostgreSQLMigrations.appliedVersions(on: db) == [1, 2, 5])
                #expect(try db.query("SELECT count(*) FROM schema_migrations WHERE applied_at <= now()")[0].int(0) == 3)

                let more = try PostgreSQLMigrations(Self.migrations + [
                    PostgreSQLMigration(version: 6, sql: "ALTER TABLE messages ADD COLUMN pool text; INSERT INTO runs (version) VALUES (6)"),
                    PostgreSQLMigration(version: 7, sql: "INSERT INTO runs (version) VALUES (7); ALTER TABLE nowhere ADD COLUMN x int"),
                ])
                let failed = expectPostgreSQLError { try more.apply(on: db) }
                #expect(failed?.sqlState == "42P01")
                #expect(try PostgreSQLMigrations.appliedVersions(on: db) == [1, 2, 5, 6])
                #expect(try db.query("SELECT version FROM runs ORDER BY version").map { try $0.int(0) } == [1, 2, 5, 6])

                #expect(throws: PostgreSQLError.self) {
                    try PostgreSQLMigrations([PostgreSQLMigration(version: 2, sql: ""), PostgreSQLMigration(version: 2, sql: "")])
                }
            }
        }

        @Test("migrations: four threads starting at once apply each migration exactly once (pg_advisory_xact_lock)")
        func concurrentMigrations() throws {
            try withSchema { server, schema, db in
                let runner = try PostgreSQLMigrations(Self.migrations)
                let connections = try (0..<4).map { _ in try PostgreSQLConnection(server.configuration(schema: schema)) }
                let results = Mutex<(applied: [Int64], failures: [String], finished: Int)>(([], [], 0))
                let group = DispatchGroup()
                for connection in connections {
                    group.enter()
                    Thread {
                        do {
                            let versions = try runner.apply(on: connection)
                            results.withLock { $0.applied += versions; $0.finished += 1 }
                        } catch {
                            results.withLock { $0.failures.append("\(error)"); $0.finished += 1 }
                        }
                        group.leave()
                    }.start()
                }
                #expect(group.wait(timeout: .now() + 60) == .success)
                let (applied, failures, finished) = results.withLock { $0 }
                #expect(finished == 4)
                #expect(failures == [])
                #expect(applied.sorted() == [1, 2, 5])
                #expect(try db.query("SELECT version FROM runs ORDER BY version").map { try $0.int(0) } == [1, 2, 5])
                #expect(try PostgreSQLMigrations.appliedVersions(on: db) == [1, 2, 5])
            }
        }

        @Test("a server stopped under an open connection gives a connection error, not a crash or a hang; reset fails cleanly")
        func serverStoppedMidTest() throws {
            let server = try PostgreSQLTestServer.startPrivate()
            defer { server.stop() }
            print("postgresql: private test server started in \(server.startTime.map { "\($0)" } ?? "?")")
            let db = try PostgreSQLConnection(server.configuration())
            try db.execute("CREATE TABLE t (k bigint)")
            try db.run("INSERT INTO t VALUES ($1)", [.int(1)])
            let statement = "SELECT count(*) FROM t WHERE k = $1"
            #expect(try db.query(statement, [.int(1)])[0].int(0) == 1)

            let stopping = ContinuousClock.now
            server.stop()
            let lost = expectPostgreSQLError { _ = try db.query(statement, [.int(1)]) }
            #expect(lost?.isConnectionError == true, "\(String(describing: lost))")
            #expect(!db.isConnected)
            let again = expectPostgreSQLError { try db.execute("SELECT 1") }
            #expect(again?.kind == .connectionLost)
            let reset = expectPostgreSQLError { try db.reset() }
            #expect(reset?.kind == .connectionFailed)
            let fresh = expectPostgreSQLError { _ = try PostgreSQLConnection(server.configuration()) }
            #expect(fresh?.kind == .connectionFailed)
            #expect(ContinuousClock.now - stopping < .seconds(30))
            #expect(!FileManager.default.fileExists(atPath: server.directory ?? "/"))
        }
    }
}
