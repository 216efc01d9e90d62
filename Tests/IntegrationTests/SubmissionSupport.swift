import Foundation
import HatoConfig
import HatoCoordinator
import HatoCrypto
import HatoIO
import HatoTestKit
import SMTPCore
import Testing

/// Runs a program to completion (bounded), its output going to a log file in `dir`.
/// - Returns: the exit status and the output.
@discardableResult
func runProgram(_ executable: String, _ arguments: [String], dir: String, timeout: TimeInterval = 60) throws -> (status: Int32, output: String) {
    let p = try ChildProcess(name: "run-\(Identifier.random(bytes: 4))", executable: executable, arguments: arguments, logDirectory: dir)
    guard let status = p.wait(timeout: timeout) else {
        p.stop(signal: SIGKILL)
        throw HarnessError("\(executable) did not finish in \(timeout) s")
    }
    // WEXITSTATUS without the macro.
    return ((status >> 8) & 0xFF, p.log)
}

/// A self-signed test certificate made at test time with the openssl CLI (never committed).
struct TestCertificate {
    let certificate: String
    let key: String

    /// Makes an EC P-256 certificate for `commonName` with the given subjectAltName list.
    static func make(in dir: String, name: String = "relay", commonName: String = "relay.it.test",
                     subjectAltName: String = "DNS:relay.it.test,IP:127.0.0.1") throws -> TestCertificate {
        let cert = (dir as NSString).appendingPathComponent("\(name)-cert.pem")
        let key = (dir as NSString).appendingPathComponent("\(name)-key.pem")
        let (status, output) = try runProgram("/usr/bin/openssl", [
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=\(commonName)", "-addext", "subjectAltName=\(subjectAltName)",
        ], dir: dir)
        guard status == 0 else { throw HarnessError("openssl req failed: \(output)") }
        return TestCertificate(certificate: cert, key: key)
    }
}

/// A temporary directory removed by `remove()`.
func makeTempDirectory(_ prefix: String) throws -> String {
    let dir = NSTemporaryDirectory() + prefix + Identifier.random(bytes: 6)
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

/// The cluster.yml of a submission test: one coordinator, no nodes running, `smtpExtra` lines
/// added to the `smtp:` flow map.
func submissionClusterYAML(smtpPort: UInt16, clusterPort: UInt16, adminPort: UInt16, smtpExtra: String, extraYAML: String = "") -> String {
    """
    cluster: { name: it, secret: "integration-test-secret-0123456789" }
    coordinator:
      listen: 127.0.0.1:\(clusterPort)
      admin_listen: 127.0.0.1:\(adminPort)
      admin_token: "submission-test-token"
      data_dir: var/coordinator
    smtp:
      listen: [127.0.0.1:\(smtpPort)]
      hostname: relay.it.test
    \(smtpExtra.split(separator: "\n").map { "  " + $0 }.joined(separator: "\n"))
    nodes:
      - { id: node-a, data_dir: var/node-a }
    pools:
      - { name: transactional }
    ips:
      - { address: 127.0.0.10, helo: mta10.it.test, pool: transactional, nodes: [node-a] }
    routing: { default_pool: transactional }
    \(extraYAML)
    """
}

/// A `SubmissionServer` running in this process against a temporary `QueueStore`.
final class InProcessSubmission: @unchecked Sendable {
    let dir: String
    let config: ClusterConfig
    let store: any QueueStore
    let server: SubmissionServer
    let port: UInt16

    /// The tenant tables, when made `withTenants`.
    let tenants: TenantDirectory?

    /// - Parameter smtpExtra: YAML lines for the `smtp:` section (besides listen and hostname).
    /// - Parameter withTenants: give the server a `TenantDirectory` over the store (issue 16).
    init(smtpExtra: String, extraYAML: String = "", dir existing: String? = nil, withTenants: Bool = false) throws {
        dir = try existing ?? makeTempDirectory("hato-sub-")
        let yaml = submissionClusterYAML(smtpPort: 0, clusterPort: try freePort(), adminPort: try freePort(), smtpExtra: smtpExtra, extraYAML: extraYAML)
        config = try ClusterConfig.parse(yaml, path: (dir as NSString).appendingPathComponent("cluster.yml"))
        store = try config.openQueueStore()  // SQLite unless extraYAML names a store
        tenants = withTenants ? TenantDirectory(store: store) : nil
        server = SubmissionServer(config: config, store: store, tenants: tenants, onAccepted: {})
        try server.start()
        guard let p = server.boundAddresses.first?.port else { throw HarnessError("no SMTP port") }
        port = p
    }

    var address: SocketAddress { SocketAddress(host: "127.0.0.1", port: port) }

    /// Ids of every queued message, oldest first.
    func messageIDs() throws -> [String] { try store.recentMessageIDs(limit: 1_000_000).reversed() }

    func shutdown() {
        server.stop()
        try? FileManager.default.removeItem(atPath: dir)
    }
}

/// A coordinator process with its own cluster.yml (no nodes): for real peers and for measuring
/// the process's memory.
final class CoordinatorProcess: @unchecked Sendable {
    let dir: String
    let smtpPort: UInt16
    let adminPort: UInt16
    let configPath: String
    private(set) var process: ChildProcess?

    init(smtpExtra: String, dir existing: String? = nil) throws {
        dir = try existing ?? makeTempDirectory("hato-subproc-")
        smtpPort = try freePort()
        adminPort = try freePort()
        configPath = (dir as NSString).appendingPathComponent("cluster.yml")
        try submissionClusterYAML(smtpPort: smtpPort, clusterPort: try freePort(), adminPort: adminPort, smtpExtra: smtpExtra)
            .write(toFile: configPath, atomically: true, encoding: .utf8)
    }

    func start() throws {
        process = try startCoordinatorProcess(name: "coordinator", configPath: configPath, smtpPort: smtpPort, logDirectory: dir)
    }

    /// A `/proc/<pid>/status` field in kB (`VmHWM` peak resident, `VmRSS` current).
    func memoryKiB(_ field: String) -> Int? {
        guard let pid = process?.pid,
              let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in status.split(separator: "\n") where line.hasPrefix(field + ":") {
            return Int(line.split(separator: " ").dropFirst().first { !$0.isEmpty }?.trimmingCharacters(in: .whitespaces) ?? "")
        }
        return nil
    }

    /// Recipient counts by state from the admin API.
    func queueCounts() throws -> [String: Int] {
        try JSONSerialization.jsonObject(with: Data(httpGetBody(port: adminPort, path: "/v1/queue", bearer: "submission-test-token"))) as? [String: Int] ?? [:]
    }

    var log: String { process?.log ?? "" }

    /// Stops the process (the queue can then be opened by the test).
    func stop() { process?.stop() }

    func shutdown() {
        stop()
        try? FileManager.default.removeItem(atPath: dir)
    }
}

/// A minimal SMTP client over a `ByteStream` for raw-socket tests: send exact bytes, read
/// replies (multi-line aware), upgrade to TLS.
final class RawSMTPClient: @unchecked Sendable {
    let socket: Socket
    private(set) var stream: any ByteStream
    private var buffer: [UInt8] = []

    /// Connects (optionally from a given local address) and reads the greeting.
    init(_ address: SocketAddress, from source: String? = nil, timeout: TimeInterval = 10, readGreeting: Bool = true) throws {
        socket = try Socket.connect(to: address, from: source, timeout: timeout)
        socket.setTimeouts(read: timeout, write: timeout)
        stream = socket
        if readGreeting {
            let greeting = try reply()
            guard greeting.code == 220 else { throw HarnessError("greeting: \(greeting.lines)") }
        }
    }

    func send(_ text: String) throws { try stream.write(Array(text.utf8)) }
    func send(_ bytes: [UInt8]) throws { try stream.write(bytes) }

    /// One complete reply: its code and its lines (without CRLF).
    func reply() throws -> (code: Int, lines: [String]) {
        var lines: [String] = []
        while true {
            let line = try readLine()
            lines.append(line)
            let chars = Array(line.utf8)
            guard chars.count >= 3, let code = Int(String(decoding: chars[0..<3], as: UTF8.self)) else {
                throw HarnessError("malformed reply line \(line)")
            }
            if chars.count == 3 || chars[3] == 0x20 { return (code, lines) }
        }
    }

    /// The last line of each of the next `count` replies.
    func replies(_ count: Int) throws -> [String] {
        try (0..<count).map { _ in try reply().lines.last ?? "" }
    }

    /// Sends `text` and returns the last line of each of `count` replies.
    func exchange(_ text: String, replies count: Int = 1) throws -> [String] {
        try send(text)
        return try replies(count)
    }

    private func readLine() throws -> String {
        while true {
            if let lf = buffer.firstIndex(of: 0x0A) {
                var line = Array(buffer[..<lf])
                buffer.removeFirst(lf + 1)
                if line.last == 0x0D { line.removeLast() }
                return String(decoding: line, as: UTF8.self)
            }
            var chunk = [UInt8](repeating: 0, count: 16 * 1024)
            let n = try chunk.withUnsafeMutableBytes { try stream.read(into: $0) }
            if n == 0 { throw SocketError(.closed, "read reply") }
            buffer += chunk[0..<n]
        }
    }

    /// Whether the server closed the connection (reads until EOF, bounded by the socket timeout).
    func isClosedByServer() -> Bool {
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            do {
                let n = try chunk.withUnsafeMutableBytes { try stream.read(into: $0) }
                if n == 0 { return true }
            } catch let e as SocketError where e.kind == .timeout {
                return false
            } catch {
                return true
            }
        }
    }

    /// Runs the TLS client handshake on the socket (after a 220 to STARTTLS).
    func startTLS(_ context: TLSContext, serverName: String? = "relay.it.test") throws -> TLSStream {
        buffer = []
        let tls = try TLSStream.connect(over: socket, context: context, serverName: serverName)
        stream = tls
        return tls
    }

    func close() { stream.close() }
}

/// The smtp flow keys most submission tests use: TLS with the test certificate and one user
/// `app` with password `app-password` (10,000 PBKDF2 iterations to keep tests fast).
func standardSubmissionSMTP(_ cert: TestCertificate, extra: String = "") -> String {
    let hash = PasswordHash.make(password: Array("app-password".utf8), iterations: 10_000).encoded
    return """
        relay_networks: [127.0.0.1/32]
        max_message_size: 1MiB
        max_recipients: 100
        tls: { certificate: "\(cert.certificate)", private_key: "\(cert.key)" }
        users: [ { name: app, password_hash: "\(hash)" } ]
        \(extra)
        """
}

/// base64 of UTF-8 text.
func base64(_ text: String) -> String { Data(text.utf8).base64EncodedString() }
