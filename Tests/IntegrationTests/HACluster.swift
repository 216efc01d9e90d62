import Foundation
import HatoCrypto
import HatoIO
import HatoTestKit
import Testing

/// Several coordinators sharing one PostgreSQL store (issue 15), two nodes and the capture MX,
/// all on loopback. Each coordinator runs with its own copy of cluster.yml in a directory of its
/// own (as each host would have one), so their `data_dir`s differ; the nodes use the first copy.
final class HACluster: @unchecked Sendable {
    let dir: String
    let capture: CaptureServer
    let token = "test-admin-token-0123456789"
    let ids: [String]
    let clusterPorts: [UInt16]
    let adminPorts: [UInt16]
    let smtpPorts: [UInt16]
    let nodeIDs: [String]
    private let lock = NSLock()
    private var coordinators: [String: ChildProcess] = [:]
    private var nodes: [String: ChildProcess] = [:]
    private var retired: [ChildProcess] = []

    /// - Parameters:
    ///   - storeYAML: the `store:` section (a fresh schema of a PostgreSQL server).
    ///   - count: how many coordinators (`coord-1`…).
    ///   - coordinatorYAML: the shared `coordinator:` keys (timings).
    ///   - ipsYAML: the `ips:` section (floating IPs by default, so that they may move).
    ///   - captureDelay: seconds the capture MX waits before answering DATA (deliveries in flight).
    init(storeYAML: String, count: Int = 2, coordinatorYAML: String = "lease_time: 30s, node_timeout: 5s, heartbeat_interval: 1s, leadership_lease: 4s",
         ipsYAML: String = LocalCluster.floatingIPs(4), captureDelay: TimeInterval = 0, nodeIDs: [String] = ["node-a", "node-b"]) throws {
        dir = NSTemporaryDirectory() + "hato-ha-" + Identifier.random(bytes: 6)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        capture = try CaptureServer(address: SocketAddress(host: "127.0.0.1", port: 0), dataDelay: captureDelay)
        ids = (1...count).map { "coord-\($0)" }
        clusterPorts = try ids.map { _ in try freePort() }
        adminPorts = try ids.map { _ in try freePort() }
        smtpPorts = try ids.map { _ in try freePort() }
        self.nodeIDs = nodeIDs
        let list = ids.indices.map {
            "  - { id: \(ids[$0]), listen: 127.0.0.1:\(clusterPorts[$0]), admin_listen: 127.0.0.1:\(adminPorts[$0]), smtp_listen: [127.0.0.1:\(smtpPorts[$0])] }"
        }.joined(separator: "\n")
        let yaml = """
            cluster: { name: it-ha, secret: "integration-test-secret-0123456789" }
            coordinators:
            \(list)
            coordinator: { admin_token: "\(token)", data_dir: var/coordinator, \(coordinatorYAML) }
            smtp: { hostname: relay.it.test, relay_networks: [127.0.0.0/8], max_message_size: 10MiB, max_recipients: 100 }
            nodes:
            \(nodeIDs.map { "  - { id: \($0), data_dir: var/\($0) }" }.joined(separator: "\n"))
            pools:
              - { name: transactional }
            \(ipsYAML)
            routing: { default_pool: transactional }
            routes:
              - { domain: hato.test, next_hop: "127.0.0.1:\(capture.address.port)" }
            retry: { schedule: [1s], max_age: 1h }
            delivery: { connections_per_ip: 4, connect_timeout: 5s, command_timeout: 30s, data_timeout: 60s }
            \(storeYAML)
            """
        for id in ids {
            try FileManager.default.createDirectory(atPath: (dir as NSString).appendingPathComponent(id), withIntermediateDirectories: true)
            try yaml.write(toFile: configPath(id), atomically: true, encoding: .utf8)
        }
    }

    /// The copy of cluster.yml that coordinator `id` runs with.
    func configPath(_ id: String) -> String { (dir as NSString).appendingPathComponent("\(id)/cluster.yml") }

    /// The index of coordinator `id`.
    func index(_ id: String) -> Int { ids.firstIndex(of: id)! }

    /// Starts `hato-coordinator serve --id id` and waits until its SMTP listener accepts.
    func startCoordinator(_ id: String) throws {
        let i = index(id)
        let c = try ChildProcess(name: "\(id)-\(Identifier.random(bytes: 2))", executable: executablePath("hato-coordinator"),
                                 arguments: ["serve", "--config", configPath(id), "--id", id], logDirectory: dir)
        lock.withLock { if let old = coordinators[id] { retired.append(old) }; coordinators[id] = c }
        try waitUntil("\(id) SMTP listener", timeout: 20) {
            guard c.isRunning else { throw HarnessError("\(id) exited:\n\(c.log)") }
            return (try? Socket.connect(to: SocketAddress(host: "127.0.0.1", port: smtpPorts[i]), timeout: 1)) != nil
        }
    }

    /// Starts coord-1, waits until it leads, then starts coord-2 (a standby).
    func startLeaderAndStandby() throws {
        try startCoordinator("coord-1")
        try waitLeader("coord-1", timeout: 20)
        try startCoordinator("coord-2")
    }

    /// Runs `body`; when it throws, records the error with every process's log tail first.
    func recordingLogs(_ body: () throws -> Void) throws {
        do {
            try body()
        } catch {
            Issue.record("\(error)\n\(logs)")
            throw error
        }
    }

    /// The process of coordinator `id`.
    func process(_ id: String) -> ChildProcess? { lock.withLock { coordinators[id] } }

    /// Sends `signal` to coordinator `id` (SIGKILL, SIGSTOP, SIGCONT) without waiting.
    func signal(_ id: String, _ signal: Int32) {
        guard let p = process(id) else { return }
        kill(p.pid, signal)
        if signal == SIGKILL { p.wait(timeout: 5) }
    }

    func startNode(_ id: String) throws {
        let p = try ChildProcess(name: "\(id)-\(Identifier.random(bytes: 2))", executable: executablePath("hato-node"),
                                 arguments: ["run", "--config", configPath(ids[0]), "--id", id], logDirectory: dir)
        lock.withLock { if let old = nodes[id] { retired.append(old) }; nodes[id] = p }
    }

    /// GETs an admin API path of coordinator `id` as JSON.
    func admin(_ id: String, _ path: String) throws -> Any {
        try JSONSerialization.jsonObject(with: Data(httpGetBody(port: adminPorts[index(id)], path: path, bearer: token)))
    }

    /// `/v1/status` as coordinator `id` answers it (a standby forwards to the leader).
    func status(_ id: String) throws -> [String: Any] { try admin(id, "/v1/status") as? [String: Any] ?? [:] }

    /// The text of coordinator `id`'s `/metrics`.
    func metrics(_ id: String) throws -> String {
        String(decoding: try httpGetBody(port: adminPorts[index(id)], path: "/metrics", bearer: token), as: UTF8.self)
    }

    /// One gauge's value from coordinator `id`'s `/metrics` (unlabelled).
    func gauge(_ id: String, _ name: String) throws -> Double? {
        try metrics(id).split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }
    }

    /// Waits until coordinator `id` says it leads; returns when it did.
    @discardableResult
    func waitLeader(_ id: String, timeout: TimeInterval) throws -> Date {
        try waitUntil("\(id) leads", timeout: timeout) { (try? gauge(id, "hato_leader")) == 1 }
        return Date()
    }

    /// Starts the nodes and waits until `via` reports them active with every IP owned.
    func startNodesAndWait(via id: String, ips: Int = 4) throws {
        for n in nodeIDs { try startNode(n) }
        try waitUntil("nodes active", timeout: 30) {
            let nodes = (try status(id))["nodes"] as? [[String: Any]] ?? []
            let active = nodes.filter { ($0["state"] as? String) == "active" }
            return active.count == nodeIDs.count && active.reduce(0) { $0 + (($1["ips"] as? [String])?.count ?? 0) } == ips
        }
    }

    /// Runs `hato-coordinator ARGS --config <coordinator id's copy>` and returns (exit status, output).
    func cli(_ args: [String], configOf id: String = "coord-1", timeout: TimeInterval = 60) throws -> (Int32, String) {
        let p = try ChildProcess(name: "cli-\(Identifier.random(bytes: 3))", executable: executablePath("hato-coordinator"),
                                 arguments: args + ["--config", configPath(id)], logDirectory: dir)
        guard let status = p.wait(timeout: timeout) else { p.stop(signal: SIGKILL); throw HarnessError("CLI \(args) hung") }
        return ((status >> 8) & 0xFF, p.log)
    }

    /// Recipient counts by state as coordinator `id` answers (the shared store).
    func queue(_ id: String) throws -> [String: Int] { try admin(id, "/v1/queue") as? [String: Int] ?? [:] }

    /// Everything the processes logged (the tail of each), for failure messages.
    var logs: String {
        lock.withLock { retired + Array(coordinators.values) + Array(nodes.values) }
            .map { "==== \($0.name)\n\($0.log.suffix(5000))" }.joined(separator: "\n")
    }

    func shutdown() {
        let all = lock.withLock { Array(nodes.values) + Array(coordinators.values) }
        for p in all { kill(p.pid, SIGCONT); p.stop() }
        capture.stop()
        try? FileManager.default.removeItem(atPath: dir)
    }
}

/// A client submitting a steady stream of one-recipient messages to several coordinators, as a
/// client with several smarthosts does: each message goes to the next coordinator in turn, and
/// to the others when that one cannot be reached or answers 4xx.
final class StreamSubmitter: @unchecked Sendable {
    /// What became of one message.
    struct Outcome: Sendable {
        var number: Int
        /// The instant of the final reply (or of the last failure).
        var at: Date
        /// The `250` reply's queue id, nil when no coordinator accepted it.
        var queueID: String?
        /// Every final DATA reply seen (250 or 4xx), in order.
        var replies: [String]
    }

    private let ports: [UInt16]
    private let total: Int
    private let pause: TimeInterval
    private let state = NSLock()
    private var outcomes: [Outcome] = []
    private var finished = false
    private var stopRequested = false

    /// - Parameters:
    ///   - ports: the coordinators' SMTP ports.
    ///   - total: messages to send (numbered 0…).
    ///   - pause: seconds between messages.
    init(ports: [UInt16], total: Int, pause: TimeInterval) {
        self.ports = ports; self.total = total; self.pause = pause
        let t = Thread { [self] in run() }
        t.name = "stream-submitter"
        t.start()
    }

    var snapshot: [Outcome] { state.withLock { outcomes } }
    var accepted: [Outcome] { snapshot.filter { $0.queueID != nil } }
    var isFinished: Bool { state.withLock { finished } }
    func stop() { state.withLock { stopRequested = true } }

    /// Waits (bounded) until every message was tried.
    func wait(timeout: TimeInterval) throws {
        try waitUntil("the stream submitted", timeout: timeout) { isFinished }
    }

    private func run() {
        for n in 0..<total {
            if state.withLock({ stopRequested }) { break }
            var outcome = Outcome(number: n, at: Date(), queueID: nil, replies: [])
            for k in 0..<ports.count {
                let port = ports[(n + k) % ports.count]
                guard let reply = try? send(n, port: port) else { continue }
                outcome.replies.append(reply)
                outcome.at = Date()
                if reply.hasPrefix("250") {
                    outcome.queueID = reply.split(separator: " ").last.map(String.init)
                    break
                }
            }
            outcome.at = Date()
            state.withLock { outcomes.append(outcome) }
            Thread.sleep(forTimeInterval: pause)
        }
        state.withLock { finished = true }
    }

    /// One message over one connection: the final reply to DATA (or to an earlier refusal).
    private func send(_ n: Int, port: UInt16) throws -> String {
        let c = try RawSMTPClient(SocketAddress(host: "127.0.0.1", port: port), timeout: 10)
        defer { c.socket.close() }
        _ = try c.exchange("EHLO client.test\r\n")
        let mail = try c.exchange("MAIL FROM:<sender@example.org>\r\n").first ?? ""
        guard mail.hasPrefix("250") else { return mail }
        let rcpt = try c.exchange("RCPT TO:<user\(n)@hato.test>\r\n").first ?? ""
        guard rcpt.hasPrefix("250") else { return rcpt }
        let data = try c.exchange("DATA\r\n").first ?? ""
        guard data.hasPrefix("354") else { return data }
        let content = String(decoding: testMessage(n, to: "user\(n)@hato.test", extraLines: 5), as: UTF8.self)
            .replacingOccurrences(of: "\r\n.", with: "\r\n..")  // dot-stuffing (RFC 5321 4.5.2)
        let final = try c.exchange(content + ".\r\n").first ?? ""
        _ = try? c.exchange("QUIT\r\n")
        return final
    }
}
