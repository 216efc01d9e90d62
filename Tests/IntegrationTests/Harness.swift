import Foundation
import HatoCrypto
import HatoIO
import HatoSupport
import HatoTestKit
import Testing
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Errors the harness raises when the cluster does not reach an expected state in time.
struct HarnessError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// Where the built executables are: next to the test bundle, or under .build.
func executablePath(_ name: String) throws -> String {
    var candidates: [String] = []
    let argv0 = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    candidates.append(argv0.appendingPathComponent(name).path)
    candidates.append(argv0.deletingLastPathComponent().appendingPathComponent(name).path)
    if let exe = Bundle.main.executableURL?.deletingLastPathComponent() { candidates.append(exe.appendingPathComponent(name).path) }
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    candidates.append(root.appendingPathComponent(".build/debug/\(name)").path)
    for c in candidates where FileManager.default.isExecutableFile(atPath: c) { return c }
    throw HarnessError("\(name) not built; looked in \(candidates)")
}

/// Ports `freePort` has handed out in this test process.
private let handedOutPorts = Locked<Set<UInt16>>([])

/// A free TCP port on 127.0.0.1 (bound once and released), never one handed out before in this
/// test process: the kernel may give a port just released again, and two calls in a row then
/// named one port for two listeners (CI: a coordinator refused `admin_listen` equal to `listen`).
func freePort(host: String = "127.0.0.1") throws -> UInt16 {
    for _ in 0..<1000 {
        let s = try Socket.listen(on: SocketAddress(host: host, port: 0))
        defer { s.close() }
        guard let p = s.localAddress?.port else { throw HarnessError("no port") }
        if handedOutPorts.withLock({ $0.insert(p).inserted }) { return p }
    }
    throw HarnessError("no free port not handed out before")
}

/// A child process started with `posix_spawn`: default signal dispositions and an empty
/// signal mask (a child of a test thread would otherwise inherit a mask that blocks
/// SIGTERM), standard input from /dev/null, standard output and error to a log file,
/// and no pipes (so no inherited descriptor can keep a reader waiting).
final class ChildProcess: @unchecked Sendable {
    let name: String
    let logPath: String
    let pid: pid_t
    private let lock = NSLock()
    private var exitStatus: Int32?

    /// - Parameter environment: the child's whole environment; nil inherits this process's.
    init(name: String, executable: String, arguments: [String], logDirectory: String, environment: [String: String]? = nil) throws {
        self.name = name
        logPath = (logDirectory as NSString).appendingPathComponent("\(name).log")
        do { pid = try spawnChild(executable, arguments, logPath: logPath, environment: environment) } catch { throw HarnessError("\(error)") }
    }

    /// Reaps the child if it exited; true while it runs.
    var isRunning: Bool {
        lock.withLock {
            if exitStatus != nil { return false }
            var status: Int32 = 0
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid || r < 0 { exitStatus = status; return false }
            return true
        }
    }

    /// Waits (bounded) for the exit; returns the raw wait status, nil on timeout.
    @discardableResult
    func wait(timeout: TimeInterval) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while isRunning && Date() < deadline { usleep(10_000) }
        return lock.withLock { exitStatus }
    }

    /// Sends `signal` and waits (bounded) for the exit, then SIGKILL.
    func stop(signal: Int32 = SIGTERM) {
        guard isRunning else { return }
        kill(pid, signal)
        if wait(timeout: 5) == nil { kill(pid, SIGKILL); wait(timeout: 5) }
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
}

/// Starts `hato-coordinator serve` and waits (at most 20 s) until its SMTP listener on
/// 127.0.0.1:`smtpPort` accepts; throws with the log when it exits first (and kills it when it never listens).
func startCoordinatorProcess(name: String, configPath: String, smtpPort: UInt16, logDirectory: String) throws -> ChildProcess {
    let c = try ChildProcess(name: name, executable: executablePath("hato-coordinator"),
                             arguments: ["serve", "--config", configPath], logDirectory: logDirectory)
    do {
        try waitUntil("coordinator SMTP listener", timeout: 20) {
            guard c.isRunning else { throw HarnessError("coordinator exited:\n\(c.log)") }
            return (try? Socket.connect(to: SocketAddress(host: "127.0.0.1", port: smtpPort), timeout: 1)) != nil
        }
    } catch {
        c.stop(signal: SIGKILL)
        throw error
    }
    return c
}

/// Polls `condition` every 50 ms for `seconds` and throws as soon as it fails: for what must
/// not happen (a paused pool's mail leased, a second notice sent) over a window.
func expectStays(_ what: String, for seconds: TimeInterval, _ condition: () throws -> Bool) throws {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    repeat {
        guard try condition() else { throw HarnessError("no longer true: \(what)") }
        Thread.sleep(forTimeInterval: 0.05)
    } while ContinuousClock.now < deadline
    guard try condition() else { throw HarnessError("no longer true: \(what)") }
}

/// Polls `condition` every 50 ms until it holds or `timeout` seconds pass.
func waitUntil(_ what: String, timeout: TimeInterval, _ condition: () throws -> Bool) throws {
    // A monotonic deadline: a step of the wall clock neither cuts the wait short nor stretches it.
    let deadline = ContinuousClock.now + .milliseconds(Int(timeout * 1000))
    while ContinuousClock.now < deadline {
        if (try? condition()) == true { return }
        usleep(50_000)
    }
    if try condition() { return }
    throw HarnessError("timed out after \(timeout)s waiting for \(what)")
}

/// Waits until the next UTC midnight when it is less than `seconds` away, so that a test
/// counting per UTC day (warm-up caps) runs within one day. Returns at once otherwise.
func waitOutUTCMidnight(ifWithin seconds: TimeInterval) {
    let now = Date().timeIntervalSince1970
    let untilMidnight = 86_400 - now.truncatingRemainder(dividingBy: 86_400)
    if untilMidnight < seconds {
        print("waiting \(Int(untilMidnight) + 1) s for UTC midnight to pass before a per-day test")
        Thread.sleep(forTimeInterval: untilMidnight + 1)
    }
}

/// A local cluster for one test: a temp directory, a cluster.yml, a capture MX in this
/// process, and coordinator/node processes started on demand. `shutdown()` stops all.
final class LocalCluster: @unchecked Sendable {
    let dir: String
    let configPath: String
    let smtpPort: UInt16
    let clusterPort: UInt16
    let adminPort: UInt16
    let capture: CaptureServer
    let token = "test-admin-token-0123456789"
    private(set) var coordinator: ChildProcess?
    private(set) var nodes: [String: ChildProcess] = [:]
    private var retired: [ChildProcess] = []

    /// - Parameters:
    ///   - extraYAML: appended sections (e.g. `dns:`), and `routesYAML` replaces the default route.
    ///   - retrySchedule: the `retry.schedule` flow list.
    ///   - capturePolicy: verdicts of the capture MX.
    ///   - nodeIDs: the `nodes:` list.
    ///   - ipsYAML: replaces the default `ips:` section (four fixed IPs, two per node).
    ///   - coordinatorYAML: extra keys of the `coordinator:` section (e.g. `lease_time: 6s`).
    ///   - smtpYAML: extra keys of the `smtp:` flow map, comma-separated (e.g. `queue_min_free: 8MiB`).
    init(routesYAML: String? = nil, extraYAML: String = "", retrySchedule: String = "[1s]",
         captureAddress: String = "127.0.0.1", captureDelay: TimeInterval = 0,
         nodeIDs: [String] = ["node-a", "node-b"], ipsYAML: String? = nil,
         leaseTime: String = "30s", nodeTimeout: String = "5s", heartbeat: String = "1s", connectionsPerIP: Int = 4,
         coordinatorYAML: String = "", smtpYAML: String = "", poolsYAML: String = "pools:\n  - { name: transactional }",
         routingYAML: String = "routing: { default_pool: transactional }",
         capturePolicy: @escaping @Sendable (String, Int) -> CaptureVerdict = { _, _ in .accept },
         captureSourcePolicy: (@Sendable (String) -> CaptureVerdict)? = nil) throws {
        dir = NSTemporaryDirectory() + "hato-it-" + Identifier.random(bytes: 6)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        capture = try CaptureServer(address: SocketAddress(host: captureAddress, port: 0), dataDelay: captureDelay, sourcePolicy: captureSourcePolicy, policy: capturePolicy)
        smtpPort = try freePort(); clusterPort = try freePort(); adminPort = try freePort()
        configPath = (dir as NSString).appendingPathComponent("cluster.yml")
        let routes = routesYAML ?? "routes:\n  - { domain: hato.test, next_hop: \"\(captureAddress):\(capture.address.port)\" }\n"
        let yaml = """
            cluster: { name: it, secret: "integration-test-secret-0123456789" }
            coordinator:
              listen: 127.0.0.1:\(clusterPort)
              admin_listen: 127.0.0.1:\(adminPort)
              admin_token: "\(token)"
              data_dir: var/coordinator
              lease_time: \(leaseTime)
              node_timeout: \(nodeTimeout)
              heartbeat_interval: \(heartbeat)
              \(coordinatorYAML.isEmpty ? "# no extra coordinator settings" : coordinatorYAML)
            smtp: { listen: [127.0.0.1:\(smtpPort)], hostname: relay.it.test, relay_networks: [127.0.0.0/8], max_message_size: 10MiB, max_recipients: 100\(smtpYAML.isEmpty ? "" : ", " + smtpYAML) }
            nodes:
            \(nodeIDs.map { "  - { id: \($0), data_dir: var/\($0) }" }.joined(separator: "\n"))
            \(poolsYAML)
            \(ipsYAML ?? LocalCluster.fixedIPs)
            \(routingYAML)
            \(routes)retry: { schedule: \(retrySchedule), max_age: 1h }
            delivery: { connections_per_ip: \(connectionsPerIP), connect_timeout: 5s, command_timeout: 30s, data_timeout: 60s }
            \(extraYAML)
            """
        // HATO_TEST_STORE=postgresql runs the cluster on a fresh schema of the run's PostgreSQL
        // server (unless the test names a store itself): the whole suite against the other store.
        if ProcessInfo.processInfo.environment["HATO_TEST_STORE"] == "postgresql" && !extraYAML.contains("store:") {
            let schema = try TestSchema()
            storeSchema = schema
            try (yaml + "\n" + schema.storeYAML + "\n").write(toFile: configPath, atomically: true, encoding: .utf8)
        } else {
            try yaml.write(toFile: configPath, atomically: true, encoding: .utf8)
        }
    }

    /// The PostgreSQL schema of the store when the suite runs on PostgreSQL (HATO_TEST_STORE), else nil.
    private(set) var storeSchema: TestSchema?

    static let fixedIPs = """
        ips:
          - { address: 127.0.0.10, helo: mta10.it.test, pool: transactional, nodes: [node-a] }
          - { address: 127.0.0.11, helo: mta11.it.test, pool: transactional, nodes: [node-a] }
          - { address: 127.0.0.12, helo: mta12.it.test, pool: transactional, nodes: [node-b] }
          - { address: 127.0.0.13, helo: mta13.it.test, pool: transactional, nodes: [node-b] }
        """

    /// `count` floating IPs 127.0.0.20… that any node may own.
    static func floatingIPs(_ count: Int) -> String {
        "ips:\n" + (0..<count).map { "  - { address: 127.0.0.\(20 + $0), helo: mta\(20 + $0).it.test, pool: transactional }" }.joined(separator: "\n")
    }

    /// IPs configured per node.
    static let ipsOf: [String: Set<String>] = ["node-a": ["127.0.0.10", "127.0.0.11"], "node-b": ["127.0.0.12", "127.0.0.13"]]

    func startCoordinator() throws {
        coordinator = try startCoordinatorProcess(name: "coordinator-\(retired.count)", configPath: configPath, smtpPort: smtpPort, logDirectory: dir)
    }

    func killCoordinator() { stopCoordinator(signal: SIGKILL) }

    /// Stops the coordinator (SIGTERM: a clean stop) and returns its exit status.
    @discardableResult
    func stopCoordinator(signal: Int32 = SIGTERM) -> Int32? {
        guard let c = coordinator else { return nil }
        c.stop(signal: signal)
        retired.append(c)
        coordinator = nil
        return c.wait(timeout: 0).map { ($0 >> 8) & 0xFF }
    }

    /// The coordinator's queue database.
    var queueDBPath: String { (dir as NSString).appendingPathComponent("var/coordinator/queue.db") }

    /// The node process for `id`.
    func nodeProcess(_ id: String) -> ChildProcess? { nodes[id] }

    func startNode(_ id: String) throws {
        if let old = nodes[id] { retired.append(old) }
        nodes[id] = try ChildProcess(name: "\(id)-\(retired.count)", executable: executablePath("hato-node"),
                                     arguments: ["run", "--config", configPath, "--id", id], logDirectory: dir)
    }

    /// Starts both nodes and waits until the coordinator reports them active with all four IPs owned.
    func startNodesAndWait() throws {
        try startNode("node-a"); try startNode("node-b")
        try waitUntil("both nodes active", timeout: 30) {
            let s = try status()
            let nodes = s["nodes"] as? [[String: Any]] ?? []
            return nodes.filter { ($0["state"] as? String) == "active" && (($0["ips"] as? [String])?.count ?? 0) == 2 }.count == 2
        }
    }

    /// GETs an admin API path as JSON.
    func admin(_ path: String) throws -> Any {
        try JSONSerialization.jsonObject(with: Data(httpGetBody(port: adminPort, path: path, bearer: token)))
    }

    func status() throws -> [String: Any] { try admin("/v1/status") as? [String: Any] ?? [:] }
    func queue() throws -> [String: Int] { try admin("/v1/queue") as? [String: Int] ?? [:] }
    func message(_ id: String) throws -> [String: Any] { try admin("/v1/messages/\(id)") as? [String: Any] ?? [:] }

    /// Waits until no recipient is queued, leased or deferred and `final` recipients are final.
    func waitForQueue(final: Int, timeout: TimeInterval) throws {
        try waitUntil("\(final) recipients in a final state", timeout: timeout) {
            let q = try queue()
            return (q["delivered"] ?? 0) + (q["failed"] ?? 0) + (q["expired"] ?? 0) + (q["suppressed"] ?? 0) == final
                && (q["queued"] ?? 0) + (q["leased"] ?? 0) + (q["deferred"] ?? 0) == 0
        }
    }

    /// Waits until each node in `ids` has `state` per the admin API.
    func waitForNodes(_ ids: [String], state: String, timeout: TimeInterval = 30) throws {
        try waitUntil("\(ids) \(state)", timeout: timeout) {
            let nodes = try admin("/v1/nodes") as? [[String: Any]] ?? []
            return ids.allSatisfy { id in nodes.contains { ($0["id"] as? String) == id && ($0["state"] as? String) == state } }
        }
    }

    /// One node's entry from `/v1/nodes`.
    func node(_ id: String) throws -> [String: Any] {
        (try admin("/v1/nodes") as? [[String: Any]] ?? []).first { ($0["id"] as? String) == id } ?? [:]
    }

    /// Runs `hato-coordinator ARGS --config <this cluster>` and returns (exit status, output).
    /// - Parameter environment: the CLI's whole environment (e.g. `USER`); nil inherits the test's.
    func cli(_ args: [String], timeout: TimeInterval = 120, environment: [String: String]? = nil) throws -> (Int32, String) {
        let p = try ChildProcess(name: "cli-\(Identifier.random(bytes: 3))", executable: executablePath("hato-coordinator"),
                                 arguments: args + ["--config", configPath], logDirectory: dir, environment: environment)
        guard let status = p.wait(timeout: timeout) else { p.stop(signal: SIGKILL); throw HarnessError("CLI \(args) hung") }
        return ((status >> 8) & 0xFF, p.log)
    }

    /// Everything the processes logged, for failure messages.
    var logs: String {
        (retired + [coordinator].compactMap { $0 } + Array(nodes.values)).map { "==== \($0.name)\n\($0.log.suffix(6000))" }.joined(separator: "\n")
    }

    func shutdown() {
        for n in nodes.values { n.stop() }
        coordinator?.stop()
        capture.stop()
        try? FileManager.default.removeItem(atPath: dir)
    }
}

/// Submits messages with Python's smtplib (a real client nobody here wrote).
/// - Parameters:
///   - messages: (reverse-path, recipients, content bytes with CRLF endings).
/// - Returns: the queue id from each `250 2.0.0 Ok: queued as <id>` reply, in order.
func submitWithSmtplib(port: UInt16, messages: [(from: String, to: [String], content: [UInt8])], connections: Int = 4, dir: String) throws -> [String] {
    struct Job: Codable { var from: String; var to: [String]; var content: String }
    let jobs = messages.map { Job(from: $0.from, to: $0.to, content: Data($0.content).base64EncodedString()) }
    let jobsPath = (dir as NSString).appendingPathComponent("jobs-\(Identifier.random(bytes: 4)).json")
    try JSONEncoder().encode(jobs).write(to: URL(fileURLWithPath: jobsPath))
    let script = """
        import base64, json, smtplib, sys, threading, time
        jobs = json.load(open(sys.argv[1])); port = int(sys.argv[2]); n = int(sys.argv[3])
        ids = [None] * len(jobs); errors = []
        def connect():
            s = smtplib.SMTP("127.0.0.1", port, timeout=60)
            s.ehlo("client.it.test")
            return s
        def worker(k):
            # Like a real client: a message without a 250 is submitted again on a new
            # connection (for up to 60 s), so a coordinator restart mid-stream is survivable.
            s = None
            for i in range(k, len(jobs), n):
                j = jobs[i]
                deadline = time.time() + 60
                while True:
                    try:
                        if s is None: s = connect()
                        s.mail(j["from"])
                        for r in j["to"]:
                            code, _ = s.rcpt(r)
                            if code != 250: raise Exception("rcpt %s: %d" % (r, code))
                        code, msg = s.data(base64.b64decode(j["content"]))
                        if code != 250: raise Exception("data: %d %r" % (code, msg))
                        ids[i] = msg.decode().rsplit(" ", 1)[-1]
                        break
                    except Exception as e:
                        try: s.close()
                        except Exception: pass
                        s = None
                        if time.time() > deadline:
                            errors.append(repr(e)); return
                        time.sleep(0.2)
            try: s.quit()
            except Exception: pass
        def guarded(k):
            # A worker that dies of an unexpected exception must fail the run, not leave a hole.
            try: worker(k)
            except BaseException as e: errors.append("worker %d died: %r" % (k, e))
        ts = [threading.Thread(target=guarded, args=(k,)) for k in range(n)]
        [t.start() for t in ts]; [t.join() for t in ts]
        if errors: print("ERRORS", errors, file=sys.stderr); sys.exit(1)
        open(sys.argv[4], "w").write(json.dumps(ids))
        """
    let outPath = jobsPath + ".out"
    let scriptPath = jobsPath + ".py"
    try script.write(toFile: scriptPath, atomically: true, encoding: .utf8)
    let p = try ChildProcess(name: "smtplib-\(Identifier.random(bytes: 3))", executable: "/usr/bin/python3",
                             arguments: [scriptPath, jobsPath, "\(port)", "\(connections)", outPath], logDirectory: dir)
    guard let status = p.wait(timeout: 300) else {
        p.stop(signal: SIGKILL)
        throw HarnessError("smtplib client did not finish in 300 s")
    }
    guard status == 0 else { throw HarnessError("smtplib client failed: \(p.log)") }
    let data = try Data(contentsOf: URL(fileURLWithPath: outPath))
    return try JSONDecoder().decode([String].self, from: data)
}

/// A test message with a unique marker, CRLF line endings, a dot-stuffing trap and 8-bit-free text.
func testMessage(_ i: Int, to: String, extraLines: Int = 20) -> [UInt8] {
    // Date and Message-ID present, so the submission fix-ups (RFC 6409 §8.3) leave the content as sent.
    var s = "From: App <app@example.org>\r\nTo: <\(to)>\r\nSubject: message \(i)\r\nDate: Mon, 2 Nov 2026 10:00:00 +0000\r\n"
        + "Message-ID: <m\(i).\(Identifier.random(bytes: 4))@example.org>\r\n\r\n"
    s += "Hello \(i).\r\n.a line that starts with a dot\r\n..two dots\r\n"
    for k in 0..<extraLines { s += "line \(k) of message \(i): the quick brown fox jumps over the lazy dog\r\n" }
    return Array(s.utf8)
}

/// A submission running on a background thread while a test operates the cluster.
final class BackgroundSubmission: @unchecked Sendable {
    private let lock = NSLock()
    private var result: Result<[String], Error>?
    let originals: [[UInt8]]

    /// Starts submitting `count` test messages to `user<i>@hato.test` over `connections` sessions.
    init(cluster: LocalCluster, count: Int, connections: Int = 4, tag: String = "s") {
        originals = (0..<count).map { testMessage($0, to: "\(tag)\($0)@hato.test", extraLines: 10) }
        let msgs = originals.enumerated().map { ("sender@example.org", ["\(tag)\($0.offset)@hato.test"], $0.element) }
        let port = cluster.smtpPort, dir = cluster.dir
        Thread.detachNewThread { [self] in
            let r = Result { try submitWithSmtplib(port: port, messages: msgs, connections: connections, dir: dir) }
            lock.withLock { result = r }
        }
    }

    /// Waits for the submission to finish and returns the queue ids.
    func wait(timeout: TimeInterval) throws -> [String] {
        try waitUntil("submission to finish", timeout: timeout) { lock.withLock { result != nil } }
        return try lock.withLock { result! }.get()
    }
}

/// The "Subject: message N" number of a captured message.
func subjectNumber(_ m: CapturedMessage) -> Int? {
    let t = String(decoding: m.content.prefix(2048), as: UTF8.self)
    guard let r = t.range(of: "Subject: message ") else { return nil }
    return Int(t[r.upperBound...].prefix { $0.isNumber })
}

/// GETs `path` from 127.0.0.1:`port` over HTTP/1.1 (the admin API answers with `Connection: close`).
/// - Returns: the response body.
/// Sends one HTTP/1.1 request to 127.0.0.1:`port` and returns the status and body.
/// - Parameters:
///   - headers: extra header fields (e.g. `X-Hato-Operator`).
///   - body: sent with `Content-Length` (and `Content-Type: application/json` when not empty).
func httpRequest(port: UInt16, method: String, path: String, bearer: String? = nil, headers: [String: String] = [:],
                 body: [UInt8] = []) throws -> (status: Int, body: [UInt8]) {
    let sock = try Socket.connect(to: SocketAddress(host: "127.0.0.1", port: port), timeout: 2)
    sock.setTimeouts(read: 30, write: 5)
    var head = "\(method) \(path) HTTP/1.1\r\nHost: x\r\n" + (bearer.map { "Authorization: Bearer \($0)\r\n" } ?? "")
    for (k, v) in headers { head += "\(k): \(v)\r\n" }
    if !body.isEmpty { head += "Content-Type: application/json\r\n" }
    head += "Content-Length: \(body.count)\r\nConnection: close\r\n\r\n"
    try sock.write(head)
    if !body.isEmpty { try sock.write(body) }
    var data = [UInt8]()
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = try buf.withUnsafeMutableBytes { try sock.read(into: $0) }
        if n == 0 { break }
        data += buf[0..<n]
    }
    guard let sep = data.firstRange(of: [13, 10, 13, 10]),
          let statusLine = String(decoding: data[..<sep.lowerBound], as: UTF8.self).split(separator: "\r\n").first,
          let status = statusLine.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) else { throw HarnessError("bad HTTP response") }
    return (status, Array(data[sep.upperBound...]))
}

func httpGetBody(port: UInt16, path: String, bearer: String? = nil) throws -> [UInt8] {
    let sock = try Socket.connect(to: SocketAddress(host: "127.0.0.1", port: port), timeout: 2)
    sock.setTimeouts(read: 5, write: 5)
    try sock.write("GET \(path) HTTP/1.1\r\nHost: x\r\n" + (bearer.map { "Authorization: Bearer \($0)\r\n" } ?? "") + "Connection: close\r\n\r\n")
    var data = [UInt8]()
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = try buf.withUnsafeMutableBytes { try sock.read(into: $0) }
        if n == 0 { break }
        data += buf[0..<n]
    }
    guard let sep = data.firstRange(of: [13, 10, 13, 10]) else { throw HarnessError("bad HTTP response") }
    return Array(data[sep.upperBound...])
}
