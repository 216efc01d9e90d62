import Foundation
import HatoCoordinator
import HatoCrypto
import HatoIO
import HatoTestKit
import Testing

extension Integration {
    /// A coordinator process whose queue is PostgreSQL (`store: {kind: postgresql}`), on a fresh
    /// schema of the run's test server, with two nodes and the capture MX.
    @Suite("PostgreSQL store: a coordinator on PostgreSQL, end to end", .serialized)
    struct PostgreSQLStoreTests {
        @Test("mail submitted over SMTP to a coordinator on PostgreSQL is delivered exactly once; the rows are in PostgreSQL, no queue.db; it survives a restart")
        func endToEnd() throws {
            let schema = try TestSchema()
            let cluster = try LocalCluster(extraYAML: schema.storeYAML)
            defer { cluster.shutdown() }
            do {
                let (status, output) = try cluster.cli(["check"])
                #expect(status == 0, "check: \(output)")
                #expect(output.contains("store.url: postgresql://hato@127.0.0.1:"), "check: \(output)")
                #expect(output.contains("connected, PostgreSQL 1"), "check: \(output)")
                #expect(!output.contains(try String(contentsOfFile: schema.server.passwordFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))

                try cluster.startCoordinator()
                try cluster.startNodesAndWait()
                let count = 60
                let originals = (0..<count).map { testMessage($0, to: "user\($0)@hato.test") }
                let started = Date()
                let ids = try submitWithSmtplib(port: cluster.smtpPort,
                                                messages: originals.enumerated().map { ("sender@example.org", ["user\($0.offset)@hato.test"], $0.element) },
                                                connections: 4, dir: cluster.dir)
                #expect(ids.count == count)
                #expect(Set(ids).count == count)
                try cluster.waitForQueue(final: count, timeout: 120)
                let elapsed = Date().timeIntervalSince(started)
                print("end-to-end on PostgreSQL: \(count) messages in \(String(format: "%.2f", elapsed)) s = \(String(format: "%.1f", Double(count) / elapsed)) msg/s")
                #expect(try cluster.queue()["delivered"] == count)

                let received = cluster.capture.received
                #expect(received.count == count, "every message arrives exactly once")
                let subjects = received.compactMap(subjectNumber)
                #expect(Set(subjects) == Set(0..<count))
                // Byte-identical after the trace header.
                for m in received {
                    guard let n = subjectNumber(m), let split = EndToEndTests.splitTrace(m.content) else { Issue.record("unexpected capture"); continue }
                    #expect(split.rest == originals[n], "message \(n) differs")
                }

                // The queue is in PostgreSQL, not in a SQLite file.
                #expect(!FileManager.default.fileExists(atPath: cluster.queueDBPath))
                let db = try schema.connect()
                #expect(try db.query("SELECT COUNT(*) FROM messages WHERE id = ANY($1::text[])", [.text("{" + ids.joined(separator: ",") + "}")]).first?.int(0) == Int64(count))
                #expect(try db.query("SELECT COUNT(*) FROM recipients WHERE state = 'delivered'").first?.int(0) == Int64(count))
                #expect(try db.query("SELECT COUNT(*) FROM leases").first?.int(0) == 0)
                // Once the reporter has processed the delivery events, the content is purged.
                try waitUntil("delivered content purged", timeout: 20) {
                    try db.query("SELECT COUNT(*) FROM messages WHERE body IS NOT NULL AND id = ANY($1::text[])",
                                 [.text("{" + ids.joined(separator: ",") + "}")]).first?.int(0) == 0
                }
                #expect(try db.query("SELECT COUNT(*) FROM recipient_events").first?.int(0) == 0, "every event processed")
                #expect(try PostgreSQLMigrations.appliedVersions(on: db) == PostgreSQLQueueStore.migrations.migrations.map(\.version))
                #expect(try db.query("SELECT term FROM leadership").first?.int(0) == 1, "one start, one term")

                // A restart reads the same queue back.
                #expect(cluster.stopCoordinator() == 0)
                try cluster.startCoordinator()
                try waitUntil("admin API back", timeout: 30) { (try? cluster.status()) != nil }
                let record = try cluster.message(ids[0])
                #expect(record["id"] as? String == ids[0])
                #expect(((record["recipients"] as? [[String: Any]])?.first?["state"] as? String) == "delivered")
                #expect(try cluster.queue()["delivered"] == count)
                #expect(try db.query("SELECT term FROM leadership").first?.int(0) == 2, "the restart began a new term")
            } catch {
                Issue.record("\(error)\n\(cluster.logs)")
                throw error
            }
        }

        @Test("the database stops under the submission server: the next message gets 451 4.3.0, never 250; what got 250 is in the database")
        func outageRefusesWith451() throws {
            // A server of this test's own: it is stopped.
            let db = try PostgreSQLTestServer.startPrivate()
            defer { db.stop() }
            let s = try InProcessSubmission(smtpExtra: "", extraYAML: """
                store: { kind: postgresql, url: "\(db.url)", password_file: \(db.passwordFile), pool_size: 2 }
                """)
            defer { s.shutdown() }
            func submit(_ n: Int) throws -> String {
                let c = try RawSMTPClient(s.address)
                defer { c.close() }
                _ = try c.exchange("EHLO client.test\r\n")
                #expect(try c.exchange("MAIL FROM:<sender@example.org>\r\n").first?.hasPrefix("250") == true)
                #expect(try c.exchange("RCPT TO:<user\(n)@hato.test>\r\n").first?.hasPrefix("250") == true)
                #expect(try c.exchange("DATA\r\n").first?.hasPrefix("354") == true)
                return try c.exchange("Subject: message \(n)\r\n\r\nbody \(n)\r\n.\r\n").first ?? ""
            }
            let accepted = try submit(1)
            #expect(accepted.hasPrefix("250 2.0.0"), "\(accepted)")
            let id = try #require(accepted.split(separator: " ").last.map(String.init))
            let connection = try PostgreSQLConnection(db.configuration())
            #expect(try connection.query("SELECT COUNT(*) FROM messages WHERE id = $1", [.text(id)]).first?.int(0) == 1)
            db.stop()
            for n in 2...3 {
                let refused = try submit(n)
                #expect(refused.hasPrefix("451 4.3.0"), "message \(n): \(refused)")
            }
        }

        @Test("a coordinator whose PostgreSQL cannot be reached does not start, and says why without the password; check reports the same")
        func unreachable() throws {
            let server = try PostgreSQLTestServer.shared()
            let port = try freePort()
            let cluster = try LocalCluster(extraYAML: "store: { kind: postgresql, url: \"postgresql://hato@127.0.0.1:\(port)/hato_test\", password_file: \(server.passwordFile) }")
            defer { cluster.shutdown() }
            let (status, output) = try cluster.cli(["check"])
            #expect(status == 1)
            #expect(output.contains("error    store.url: postgresql connection failed: cannot connect to postgresql://hato@127.0.0.1:\(port)/hato_test"), "check: \(output)")
            let password = try String(contentsOfFile: server.passwordFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(!output.contains(password))
            let p = try ChildProcess(name: "coordinator-unreachable", executable: executablePath("hato-coordinator"),
                                     arguments: ["serve", "--config", cluster.configPath], logDirectory: cluster.dir)
            let exit = p.wait(timeout: 30)
            #expect(exit != nil && exit != 0, "the coordinator exits")
            #expect(p.log.contains("cannot connect to postgresql://hato@127.0.0.1:\(port)/hato_test"), "log: \(p.log)")
            #expect(!p.log.contains(password))
        }
    }
}
