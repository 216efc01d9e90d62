import Foundation
import HatoCrypto
import Synchronization

/// A PostgreSQL test server that could not be had.
public struct PostgreSQLTestServerError: Error, CustomStringConvertible {
    /// What went wrong.
    public let description: String
    init(_ description: String) { self.description = description }
}

/// A PostgreSQL server for the tests, run by `scripts/pg-test-server.sh`.
///
/// `shared()` is the test run's server: the one `scripts/test.sh` started and exported as
/// `HATO_TEST_PG_URL` and `HATO_TEST_PG_PASSWORD_FILE`, or, when those are not set (a bare
/// `swift test`), one this process starts on first use. A server this process starts is
/// stopped by the script's watchdog once the process exits (`--owner`), or by `stop()`.
/// Tests that need PostgreSQL fail (never skip) when no server can be had.
public struct PostgreSQLTestServer: Sendable {
    /// `postgresql://hato@127.0.0.1:PORT/hato_test` (no password in it).
    public let url: String
    /// The file holding the role's password.
    public let passwordFile: String
    /// The server's directory when this process started it; nil for the run's shared server.
    public let directory: String?
    /// How long `start` took (initdb, server start, role and database), when this process started it.
    public let startTime: Duration?

    private static let sharedServer = Mutex<PostgreSQLTestServer?>(nil)

    /// The run's server (see the type's documentation).
    /// - Throws: `PostgreSQLTestServerError` when only one of the variables is set or the server does not start.
    public static func shared() throws -> PostgreSQLTestServer {
        try sharedServer.withLock { server in
            if let server { return server }
            let env = ProcessInfo.processInfo.environment
            let url = env["HATO_TEST_PG_URL"], file = env["HATO_TEST_PG_PASSWORD_FILE"]
            let found: PostgreSQLTestServer
            switch (url, file) {
            case let (url?, file?): found = PostgreSQLTestServer(url: url, passwordFile: file, directory: nil, startTime: nil)
            case (nil, nil): found = try startPrivate()
            default: throw PostgreSQLTestServerError("set both HATO_TEST_PG_URL and HATO_TEST_PG_PASSWORD_FILE, or neither")
            }
            server = found
            return found
        }
    }

    /// Starts a server of this test's own (for a test that stops it); `stop()` removes it.
    /// - Throws: `PostgreSQLTestServerError` with the script's output when it does not start within 120 s.
    public static func startPrivate() throws -> PostgreSQLTestServer {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let script = root.appendingPathComponent("scripts/pg-test-server.sh").path
        let log = NSTemporaryDirectory() + "hato-pg-start-" + Identifier.random(bytes: 6) + ".log"
        defer { try? FileManager.default.removeItem(atPath: log) }
        let started = ContinuousClock.now
        let status = try runScript(script, ["start", "--owner", String(getpid())], log: log, timeout: .seconds(120))
        let output = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        let dir = output.split(separator: "\n").last.map(String.init) ?? ""
        guard status == 0, dir.hasPrefix("/"), let url = try? String(contentsOfFile: dir + "/url", encoding: .utf8) else {
            throw PostgreSQLTestServerError("pg-test-server.sh start failed (status \(status)): \(output)")
        }
        return PostgreSQLTestServer(url: url.trimmingCharacters(in: .whitespacesAndNewlines), passwordFile: dir + "/password",
                                    directory: dir, startTime: ContinuousClock.now - started)
    }

    /// Stops a server this process started (fast shutdown by its postmaster.pid) and removes
    /// its directory; does nothing for the run's shared server.
    public func stop() {
        guard let directory else { return }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let log = NSTemporaryDirectory() + "hato-pg-stop-" + Identifier.random(bytes: 6) + ".log"
        defer { try? FileManager.default.removeItem(atPath: log) }
        _ = try? Self.runScript(root.appendingPathComponent("scripts/pg-test-server.sh").path, ["stop", directory], log: log, timeout: .seconds(30))
    }

    /// Stops a server this process started without removing it (an outage); `resume()` starts
    /// it again on the same port with the same data.
    /// - Throws: `PostgreSQLTestServerError` when it cannot be stopped or is the shared server.
    public func pause() throws { try control("pause") }

    /// Starts a paused server again (same port, same data).
    /// - Throws: `PostgreSQLTestServerError` when it does not start within 60 s.
    public func resume() throws { try control("resume") }

    private func control(_ command: String) throws {
        guard let directory else { throw PostgreSQLTestServerError("\(command): not a server of this test's own") }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let log = NSTemporaryDirectory() + "hato-pg-\(command)-" + Identifier.random(bytes: 6) + ".log"
        defer { try? FileManager.default.removeItem(atPath: log) }
        let status = try Self.runScript(root.appendingPathComponent("scripts/pg-test-server.sh").path, [command, directory], log: log, timeout: .seconds(70))
        guard status == 0 else {
            throw PostgreSQLTestServerError("pg-test-server.sh \(command) failed (status \(status)): \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
        }
    }

    /// Runs `bash script arguments` with output to `log`; returns its exit status (-1 on timeout, after SIGKILL).
    private static func runScript(_ script: String, _ arguments: [String], log: String, timeout: Duration) throws -> Int32 {
        let pid = try spawnChild("/bin/bash", [script] + arguments, logPath: log, truncate: true)
        let deadline = ContinuousClock.now + timeout
        var status: Int32 = 0
        while ContinuousClock.now < deadline {
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { return (status & 0x7f) == 0 ? (status >> 8) & 0xff : -1 }
            if r < 0 { return -1 }
            usleep(20_000)
        }
        kill(pid, SIGKILL)
        waitpid(pid, &status, 0)
        return -1
    }
}
