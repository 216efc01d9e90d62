import Foundation
import HatoIO
import HatoTestKit
import Testing

/// Opens `count` connections to `port`, spread round-robin over `sources` (local addresses).
private func openFlood(_ count: Int, port: UInt16, sources: [String]) throws -> [Socket] {
    var sockets: [Socket] = []
    sockets.reserveCapacity(count)
    for i in 0..<count {
        sockets.append(try Socket.connect(to: SocketAddress(host: "127.0.0.1", port: port), from: sources[i % sources.count], timeout: 10))
    }
    return sockets
}

/// Everything `socket` receives until end of stream, a reset or `deadline`.
/// - Returns: the bytes, and whether the stream ended (rather than the deadline passing).
private func drain(_ socket: Socket, until deadline: ContinuousClock.Instant) -> (bytes: [UInt8], ended: Bool) {
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let remaining = ContinuousClock.now.duration(to: deadline)
        if remaining <= .zero { return (out, false) }
        socket.setTimeouts(read: remaining, write: .seconds(1))
        do {
            let n = try buffer.withUnsafeMutableBytes { try socket.read(into: $0) }
            if n == 0 { return (out, true) }
            out += buffer[0..<n]
        } catch let e as SocketError where e.kind == .closed {
            return (out, true)
        } catch {
            return (out, false)
        }
    }
}

/// The first line `socket` receives (without CRLF), nil when none arrives before `deadline`.
private func firstLine(_ socket: Socket, until deadline: ContinuousClock.Instant) -> String? {
    var line: [UInt8] = []
    var byte = [UInt8](repeating: 0, count: 1)
    while true {
        let remaining = ContinuousClock.now.duration(to: deadline)
        if remaining <= .zero { return nil }
        socket.setTimeouts(read: remaining, write: .seconds(1))
        guard let n = try? byte.withUnsafeMutableBytes({ try socket.read(into: $0) }), n == 1 else { return nil }
        if byte[0] == 0x0A { return String(decoding: line.last == 0x0D ? line.dropLast() : line[...], as: UTF8.self) }
        line.append(byte[0])
    }
}

/// One legitimate admin request from `source`; returns the status line and body.
private func adminGet(port: UInt16, path: String, token: String, from source: String) throws -> (status: String, body: String) {
    let sock = try Socket.connect(to: SocketAddress(host: "127.0.0.1", port: port), from: source, timeout: 5)
    defer { sock.close() }
    try sock.write("GET \(path) HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(token)\r\nConnection: close\r\n\r\n")
    let (bytes, _) = drain(sock, until: .now + .seconds(10))
    let status = String(decoding: bytes.prefix { $0 != 0x0D }, as: UTF8.self)
    let body = bytes.firstRange(of: [13, 10, 13, 10]).map { String(decoding: bytes[$0.upperBound...], as: UTF8.self) } ?? ""
    return (status, body)
}

/// The number of `/proc/self/fd` entries (descriptors this test process holds).
private func openDescriptors() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
}

extension Integration {
    @Suite("Listener limits of a real coordinator: floods, memory, descriptor shortage")
    struct ListenerLimitsTests {
        static let memoryBoundMiB = 200
        static let floodSize = 5000

        @Test("5000 connections to the admin port and 5000 to the SMTP port are each answered or refused; a legitimate request and session are served meanwhile; the coordinator stays under 200 MiB")
        func floods() throws {
            // 10,000 client sockets here, plus the harness's own.
            OpenFileLimit.raiseSoftLimit()
            let needed = UInt64(2 * Self.floodSize + 512)
            try #require(OpenFileLimit.current.soft >= needed, "RLIMIT_NOFILE \(OpenFileLimit.current) is below \(needed)")
            let descriptorsBefore = openDescriptors()
            let coordinator = try CoordinatorProcess(smtpExtra: "relay_networks: [127.0.0.0/8]\nmax_connections: 1000\nmax_connections_per_client: 50")
            defer { coordinator.shutdown() }
            try coordinator.start()
            let token = "submission-test-token"
            // Warm up (first request, first session) so the baseline includes the steady state.
            #expect(try adminGet(port: coordinator.adminPort, path: "/v1/queue", token: token, from: "127.0.0.2").status == "HTTP/1.1 200 OK")
            let baselineKiB = coordinator.memoryKiB("VmRSS") ?? 0
            let started = ContinuousClock.now

            // Three flooding peers: 3 × 16 admitted on the admin port (64 in total, 16 per peer),
            // 3 × 50 on the SMTP port (max_connections_per_client: 50); everyone else refused.
            // (Not 127.0.0.1: the 10,000 local ports must not collide with other tests' binds there.)
            let floodSources = ["127.0.1.1", "127.0.1.2", "127.0.1.3"]
            var admin = try openFlood(Self.floodSize, port: coordinator.adminPort, sources: floodSources)
            var smtp = try openFlood(Self.floodSize, port: coordinator.smtpPort, sources: floodSources)
            defer { (admin + smtp).forEach { $0.close() } }
            let opened = ContinuousClock.now - started

            // While the admitted ones are held: a legitimate admin request and SMTP session from another peer.
            let legitAdmin = try adminGet(port: coordinator.adminPort, path: "/v1/queue", token: token, from: "127.0.0.2")
            #expect(legitAdmin.status == "HTTP/1.1 200 OK", "\(legitAdmin)")
            let session = try RawSMTPClient(SocketAddress(host: "127.0.0.1", port: coordinator.smtpPort), from: "127.0.0.2", timeout: 10)
            let replies = try session.exchange("EHLO legit.it.test\r\nMAIL FROM:<app@example.org>\r\nRCPT TO:<user@hato.test>\r\nDATA\r\n"
                                               + "Subject: during the flood\r\n\r\nhello\r\n.\r\nQUIT\r\n", replies: 6)
            session.close()
            #expect(replies[4].hasPrefix("250 2.0.0 Ok: queued as "), "\(replies)")

            // Every SMTP connection: a 220 greeting (admitted, held) or 421 4.7.0 and end of stream.
            let smtpDeadline = ContinuousClock.now + .seconds(30)
            var greeted = 0, smtpRefused = 0, smtpOther: [String] = []
            for s in smtp {
                let line = firstLine(s, until: smtpDeadline) ?? "<nothing>"
                if line.hasPrefix("220 ") {
                    greeted += 1
                } else if line.hasPrefix("421 4.7.0 ") && drain(s, until: smtpDeadline).ended {
                    smtpRefused += 1
                } else if smtpOther.count < 5 {
                    smtpOther.append(line)
                }
            }
            // Every admin connection: 503 and end of stream at once, or (admitted, silent) 408 at
            // the 10 s whole-request deadline.
            let adminDeadline = ContinuousClock.now + .seconds(30)
            var timedOut = 0, adminRefused = 0, adminOther: [String] = []
            for s in admin {
                let (bytes, ended) = drain(s, until: adminDeadline)
                let status = String(decoding: bytes.prefix { $0 != 0x0D }, as: UTF8.self)
                if ended && status == "HTTP/1.1 503 Service Unavailable" {
                    adminRefused += 1
                } else if ended && status == "HTTP/1.1 408 Request Timeout" {
                    timedOut += 1
                } else if adminOther.count < 5 {
                    adminOther.append("\(status) ended=\(ended)")
                }
            }
            let peakKiB = coordinator.memoryKiB("VmHWM") ?? Int.max
            let rssKiB = coordinator.memoryKiB("VmRSS") ?? Int.max
            let elapsed = ContinuousClock.now - started

            #expect(greeted == 150 && smtpRefused == Self.floodSize - 150, "SMTP: \(greeted) greeted, \(smtpRefused) refused, other \(smtpOther)")
            #expect(timedOut == 48 && adminRefused == Self.floodSize - 48, "admin: \(timedOut) got 408, \(adminRefused) got 503, other \(adminOther)")
            #expect(peakKiB < Self.memoryBoundMiB * 1024, "VmHWM \(peakKiB) KiB")
            #expect(elapsed < .seconds(60), "took \(elapsed)")
            // Refusals are logged in summaries, not one line each.
            let refusalLines = coordinator.log.components(separatedBy: "\n").filter { $0.contains("connections refused: limit reached") }.count
            #expect(refusalLines >= 1 && refusalLines < 40, "\(refusalLines) refusal log lines")

            (admin + smtp).forEach { $0.close() }
            admin = []
            smtp = []
            // The coordinator is still healthy, and this process let go of every flood socket.
            #expect(try adminGet(port: coordinator.adminPort, path: "/v1/queue", token: token, from: "127.0.0.1").status == "HTTP/1.1 200 OK")
            #expect(openDescriptors() <= descriptorsBefore + 64, "descriptors: \(descriptorsBefore) before, \(openDescriptors()) after")
            print("""
                listener floods: \(Self.floodSize) admin + \(Self.floodSize) SMTP connections opened in \(opened); \
                SMTP \(greeted) greeted / \(smtpRefused) refused with 421; admin \(timedOut) timed out with 408 / \(adminRefused) refused with 503; \
                coordinator VmRSS \(baselineKiB / 1024) MiB before, \(rssKiB / 1024) MiB after, VmHWM \(peakKiB / 1024) MiB (bound \(Self.memoryBoundMiB) MiB); \
                \(refusalLines) refusal log lines; \(elapsed) in all
                """)
        }

        @Test("out of descriptors (ulimit -n 128): accept backs off and logs it, sessions already admitted go on, and new ones are served once descriptors free up")
        func descriptorShortage() throws {
            let coordinator = try CoordinatorProcess(smtpExtra: "relay_networks: [127.0.0.0/8]\nmax_connections: 1000\nmax_connections_per_client: 1000")
            defer { coordinator.shutdown() }
            // A hard limit the coordinator cannot raise: dash's `ulimit -n` sets soft and hard.
            let process = try ChildProcess(name: "coordinator-lowfd", executable: "/bin/sh",
                                           arguments: ["-c", "ulimit -n 128 && exec \"$0\" serve --config \"$1\"",
                                                       try executablePath("hato-coordinator"), coordinator.configPath],
                                           logDirectory: coordinator.dir)
            defer { process.stop(signal: SIGKILL) }
            let address = SocketAddress(host: "127.0.0.1", port: coordinator.smtpPort)
            try waitUntil("the SMTP listener", timeout: 20) {
                guard process.isRunning else { throw HarnessError("coordinator exited:\n\(process.log)") }
                guard let s = try? Socket.connect(to: address, timeout: 1) else { return false }
                s.close()
                return true
            }
            // Hold more sessions than the coordinator has descriptors for.
            var held: [Socket] = []
            defer { held.forEach { $0.close() } }
            for _ in 0..<200 { held.append(try Socket.connect(to: address, from: "127.0.1.4", timeout: 5)) }
            try waitUntil("the back-off to be logged", timeout: 15) { process.log.contains("accept: out of descriptors or memory; backing off") }
            let deadline = ContinuousClock.now + .seconds(10)
            let greetedEarly = held.prefix(50).filter { firstLine($0, until: deadline)?.hasPrefix("220 ") == true }.count
            #expect(greetedEarly == 50, "sessions admitted before the shortage are served")
            #expect(process.isRunning)
            // Free the descriptors: the queued connections, then a new session, are served.
            held.prefix(150).forEach { $0.close() }
            held.removeFirst(150)
            let lateDeadline = ContinuousClock.now + .seconds(15)
            let greetedLate = held.filter { firstLine($0, until: lateDeadline)?.hasPrefix("220 ") == true }.count
            #expect(greetedLate == held.count, "queued connections greeted after the shortage: \(greetedLate) of \(held.count)")
            held.forEach { $0.close() }
            held = []
            var replies: [String] = []
            try waitUntil("a new session to be served", timeout: 15) {
                let session = try RawSMTPClient(address, timeout: 5)
                defer { session.close() }
                replies = try session.exchange("EHLO after.it.test\r\nMAIL FROM:<app@example.org>\r\nRCPT TO:<user@hato.test>\r\nDATA\r\n"
                                               + "Subject: after the shortage\r\n\r\nhello\r\n.\r\nQUIT\r\n", replies: 6)
                return replies[4].hasPrefix("250 2.0.0 Ok: queued as ")
            }
            let backoffLines = process.log.components(separatedBy: "\n").filter { $0.contains("backing off") }.count
            #expect(backoffLines >= 1 && backoffLines <= 5, "\(backoffLines) back-off log lines (at most one per 10 s)")
            print("descriptor shortage: 200 connections against ulimit -n 128; \(backoffLines) back-off log line(s); the coordinator recovered")
        }
    }
}
