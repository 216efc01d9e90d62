#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HatoTestKit
import Testing
@testable import SMTPCore
@testable import HatoCrypto
@testable import HatoIO
@testable import HatoNode

/// A scriptable SMTP server playing a recipient's MX in tests.
///
/// It plays a banner and a reply per command from a `Script`, serves each connection on its own
/// thread, and records for every connection the peer's source address, the exact bytes the
/// client sent, the commands, and the messages (DATA dot-unstuffed, or BDAT chunks joined); it
/// also tracks how many connections were open at once, in total and per peer address.
/// A reply starting with `421` is followed by closing the connection, as a real server does.
final class ScriptedMX: @unchecked Sendable {
    /// Where a connection is when a reply is chosen.
    struct Context: Sendable {
        /// The connection number (1-based, in accept order).
        var connection: Int
        /// The transaction number on this connection (1-based; counts MAIL commands).
        var transaction: Int
        /// RCPT commands accepted so far in this transaction.
        var acceptedInTransaction: Int
    }

    /// What the server says. Replies are wire text (`250 ok\r\n`, multiline allowed).
    struct Script: Sendable {
        /// The greeting; nil never sends one (the client must time out).
        var banner: String? = "220 mx.test ESMTP ready\r\n"
        /// The EHLO reply per connection; nil answers `502` (HELO fallback).
        var ehlo: @Sendable (Context) -> String? = { _ in ScriptedMX.ehlo(["PIPELINING", "8BITMIME", "SIZE 10000000", "ENHANCEDSTATUSCODES", "SMTPUTF8"]) }
        /// The HELO reply.
        var helo = "250 mx.test\r\n"
        /// The STARTTLS reply (sent verbatim, extra bytes included); nil answers 502.
        var startTLS: String? = nil
        /// With a reply starting 220: a TLS server context to run the handshake; nil hangs up instead.
        var tls: TLSContext? = nil
        /// The MAIL reply.
        var mail: @Sendable (Context) -> String = { _ in "250 2.1.0 sender ok\r\n" }
        /// The RCPT reply for an address.
        var rcpt: @Sendable (Context, String) -> String = { _, _ in "250 2.1.5 recipient ok\r\n" }
        /// The DATA reply.
        var data: @Sendable (Context) -> String = { _ in "354 end with <CRLF>.<CRLF>\r\n" }
        /// The reply after the final dot (or the last BDAT chunk); nil never answers.
        var final: @Sendable (Context) -> String? = { c in "250 2.0.0 ok: queued as C\(c.connection)T\(c.transaction)\r\n" }
        /// The RSET reply.
        var rset = "250 2.0.0 reset\r\n"
        /// Seconds to wait before the final reply (to make sessions overlap in load tests).
        var finalDelay: TimeInterval = 0
        /// Close the connection right after each final reply (a server that drops idle sessions).
        var closeAfterMessage = false
        /// Hang up without a reply when MAIL arrives (an idle timeout racing the client's next MAIL).
        var hangUpAtMail: @Sendable (Context) -> Bool = { _ in false }
    }

    /// One received message.
    struct Message: Sendable {
        var connection: Int
        var transaction: Int
        var peer: String
        var mailFrom: String
        var recipients: [String]
        /// The content: dot-unstuffed DATA, or the BDAT chunks joined.
        var content: [UInt8]
        /// Whether it came with BDAT.
        var viaBDAT: Bool
    }

    /// One connection's record.
    struct Connection: Sendable {
        var index: Int
        var peer: String
        /// Every byte the client sent (in plaintext; after STARTTLS the decrypted bytes).
        var transcript: [UInt8]
        var commands: [String]
        var messages: Int
        /// For each MAIL, what had already arrived behind it when it was read (before any reply to
        /// it): a pipelined envelope's RCPTs, DATA or BDAT and content.
        var arrivedWithMail: [[UInt8]] = []
        var text: String { String(decoding: transcript, as: UTF8.self) }
    }

    /// An EHLO reply with these keywords.
    static func ehlo(_ keywords: [String]) -> String {
        var lines = ["mx.test greets you"] + keywords
        let last = lines.removeLast()
        return lines.map { "250-\($0)\r\n" }.joined() + "250 \(last)\r\n"
    }

    let address: SocketAddress
    var port: UInt16 { address.port }
    private let listener: Socket
    private let script: Script
    private let lock = NSLock()
    private var records: [Int: Connection] = [:]
    private var received: [Message] = []
    private var open: [Int: Socket] = [:]
    private var activeByPeer: [String: Int] = [:]
    private var peakByPeer: [String: Int] = [:]
    private var active = 0
    private var peak = 0
    private var accepted = 0
    private var stopped = false
    private let group = DispatchGroup()

    /// Binds `host:port` (port 0: any free port) and starts accepting.
    init(_ script: Script = Script(), host: String = "127.0.0.1", port: UInt16 = 0) throws {
        self.script = script
        listener = try Socket.listen(on: SocketAddress(host: host, port: port))
        guard let a = listener.localAddress else { throw SocketError(.system, "getsockname") }
        address = a
        group.enter()
        Thread.detachNewThread { [self] in
            acceptLoop()
            group.leave()
        }
    }

    deinit { listener.close() }

    var connections: [Connection] { lock.withLock { records.keys.sorted().compactMap { records[$0] } } }
    var messages: [Message] { lock.withLock { received } }
    var connectionCount: Int { lock.withLock { accepted } }
    /// Connections open right now.
    var activeCount: Int { lock.withLock { active } }
    /// The most connections open at once.
    var peakConcurrency: Int { lock.withLock { peak } }
    /// The most connections open at once from each peer address.
    var peakConcurrencyByPeer: [String: Int] { lock.withLock { peakByPeer } }

    /// Stops accepting, closes open connections, waits (at most 10 s) for the threads. Idempotent.
    func stop() {
        let sockets = lock.withLock { () -> [Socket] in
            stopped = true
            return Array(open.values)
        }
        listener.close()
        for s in sockets { s.shutdown() }
        _ = group.wait(timeout: .now() + 10)
    }

    private func acceptLoop() {
        while let (conn, peer) = try? listener.accept() {
            let index: Int? = lock.withLock {
                if stopped { return nil }
                accepted += 1
                open[accepted] = conn
                records[accepted] = Connection(index: accepted, peer: peer.host, transcript: [], commands: [], messages: 0)
                active += 1
                peak = max(peak, active)
                activeByPeer[peer.host, default: 0] += 1
                peakByPeer[peer.host] = max(peakByPeer[peer.host] ?? 0, activeByPeer[peer.host] ?? 0)
                return accepted
            }
            guard let index else { conn.close(); break }
            group.enter()
            Thread.detachNewThread { [self] in
                serve(conn, index: index, peer: peer.host)
                // Counted as open until the server closes it.
                lock.withLock {
                    open[index] = nil
                    active -= 1
                    activeByPeer[peer.host, default: 1] -= 1
                }
                conn.close()
                group.leave()
            }
        }
    }

    private func record(_ index: Int, _ bytes: some Collection<UInt8>) {
        lock.withLock { records[index]?.transcript.append(contentsOf: bytes) }
    }

    private func serve(_ socket: Socket, index: Int, peer: String) {
        socket.setTimeouts(read: 15, write: 5)
        var stream: any ByteStream = socket
        var reader = BufferedReader(stream: socket)
        var ctx = Context(connection: index, transaction: 0, acceptedInTransaction: 0)
        var mailFrom = ""
        var recipients: [String] = []
        var chunks: [UInt8] = []
        /// Writes a reply; false when the connection must end (write failed or 421).
        func reply(_ text: String) -> Bool {
            guard (try? stream.write(Array(text.utf8))) != nil else { return false }
            return !text.hasPrefix("421")
        }
        func drain() {
            while let line = try? reader.readLine(maxLength: 1 << 20) { record(index, line) }
        }
        func deliver(_ content: [UInt8], bdat: Bool) {
            lock.withLock {
                received.append(Message(connection: index, transaction: ctx.transaction, peer: peer, mailFrom: mailFrom,
                                        recipients: recipients, content: content, viaBDAT: bdat))
                records[index]?.messages += 1
            }
        }
        guard let banner = script.banner else { drain(); return }
        guard reply(banner) else { return }
        if !banner.hasPrefix("2") { drain(); return }
        while let line = try? reader.readLine(maxLength: 64 * 1024) {
            record(index, line)
            let text = String(decoding: line, as: UTF8.self).trimmingCharacters(in: .newlines)
            let upper = text.uppercased()
            lock.withLock { records[index]?.commands.append(text) }
            if upper.hasPrefix("EHLO") {
                guard reply(script.ehlo(ctx) ?? "502 5.5.1 EHLO not implemented\r\n") else { return }
            } else if upper.hasPrefix("HELO") {
                guard reply(script.helo) else { return }
            } else if upper == "STARTTLS" {
                guard let answer = script.startTLS else {
                    guard reply("502 5.5.1 no STARTTLS\r\n") else { return }
                    continue
                }
                guard reply(answer) else { return }
                guard answer.hasPrefix("220") else { continue }
                // Without a TLS context the server hangs up: the client's handshake fails at once.
                guard let tls = script.tls else { return }
                guard let secured = try? TLSStream.accept(over: socket, context: tls) else { return }
                stream = secured
                reader = BufferedReader(stream: secured)
            } else if upper.hasPrefix("MAIL") {
                ctx.transaction += 1
                ctx.acceptedInTransaction = 0
                mailFrom = text
                recipients = []
                chunks = []
                let behind = Array(reader.buffered)
                lock.withLock { records[index]?.arrivedWithMail.append(behind) }
                if script.hangUpAtMail(ctx) { return }
                guard reply(script.mail(ctx)) else { return }
            } else if upper.hasPrefix("RCPT") {
                let address = text.split(separator: "<").dropFirst().first?.split(separator: ">").first.map(String.init) ?? ""
                let answer = script.rcpt(ctx, address)
                if answer.hasPrefix("2") {
                    ctx.acceptedInTransaction += 1
                    recipients.append(address)
                }
                guard reply(answer) else { return }
            } else if upper == "DATA" {
                let answer = script.data(ctx)
                guard reply(answer) else { return }
                guard answer.hasPrefix("354") else { continue }
                var content: [UInt8] = []
                var ended = false
                while let dataLine = try? reader.readLine(maxLength: 1 << 20) {
                    record(index, dataLine)
                    if dataLine.elementsEqual([0x2E, 0x0D, 0x0A]) { ended = true; break }
                    content.append(contentsOf: dataLine.first == 0x2E ? dataLine.dropFirst() : dataLine[...])
                }
                guard ended else { return }
                if script.finalDelay > 0 { Thread.sleep(forTimeInterval: script.finalDelay) }
                guard let final = script.final(ctx) else { drain(); return }
                if final.hasPrefix("2") { deliver(content, bdat: false) }
                guard reply(final), !script.closeAfterMessage else { return }
            } else if upper.hasPrefix("BDAT") {
                let words = text.split(separator: " ")
                guard words.count >= 2, let size = Int(words[1]), size >= 0 else { _ = reply("501 5.5.4 bad BDAT\r\n"); return }
                let last = words.count >= 3 && words[2].uppercased() == "LAST"
                guard let bytes = try? reader.readExact(size) else { return }
                record(index, bytes)
                chunks.append(contentsOf: bytes)
                if !last {
                    guard reply("250 2.0.0 \(size) octets received\r\n") else { return }
                    continue
                }
                if script.finalDelay > 0 { Thread.sleep(forTimeInterval: script.finalDelay) }
                guard let final = script.final(ctx) else { drain(); return }
                if final.hasPrefix("2") { deliver(chunks, bdat: true) }
                guard reply(final), !script.closeAfterMessage else { return }
            } else if upper == "RSET" {
                mailFrom = ""; recipients = []; chunks = []
                guard reply(script.rset) else { return }
            } else if upper == "NOOP" {
                guard reply("250 2.0.0 ok\r\n") else { return }
            } else if upper == "QUIT" {
                _ = reply("221 2.0.0 bye\r\n")
                return
            } else {
                guard reply("500 5.5.2 unrecognized command\r\n") else { return }
            }
        }
    }
}

// MARK: - Shared helpers for the delivery tests

/// Short timeouts so failure cases finish quickly.
let testTimeouts = SMTPClientTimeouts(connect: 2, command: 3, dataInitiation: 3, dataBlock: 3, dataTermination: 3)

/// A target for a scripted MX.
func target(_ mx: ScriptedMX, host: String = "mx.dest.test") -> DeliveryTarget {
    DeliveryTarget(host: host, address: mx.address.host, port: mx.port)
}

/// A port on 127.0.0.1 where nothing listens (connecting is refused).
func refusedPort() throws -> UInt16 {
    let s = try Socket.listen(on: SocketAddress(host: "127.0.0.1", port: 0))
    let port = s.localAddress?.port ?? 1
    s.close()
    return port
}

/// Test recipients `r1@dest.test` … with ids 1….
func recipients(_ n: Int, domain: String = "dest.test") -> [DeliveryRecipient] {
    (1...max(1, n)).prefix(n).map { DeliveryRecipient(id: Int64($0), address: "r\($0)@\(domain)") }
}

/// A small test message from `news@example.org`.
func sampleMessage(_ tag: String = "1", body: String = "Hello.\r\n.leading dot\r\n") -> [UInt8] {
    Array("From: Shop <news@example.org>\r\nTo: r1@dest.test\r\nSubject: test \(tag)\r\nMessage-ID: <\(tag)@example.org>\r\n\r\n\(body)".utf8)
}

/// A failure raised by test helpers.
struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// A child process started with `posix_spawn` (empty signal mask, default dispositions),
/// output to a log file, reaped on stop. Foundation's `Process` would hand it a blocked SIGTERM.
final class Spawned: @unchecked Sendable {
    let pid: pid_t
    let logPath: String
    private let lock = NSLock()
    private var status: Int32? = nil

    init(_ path: String, _ arguments: [String], logPath: String) throws {
        self.logPath = logPath
        do { pid = try spawnChild(path, arguments, logPath: logPath) } catch { throw TestFailure("\(error)") }
    }

    var isRunning: Bool {
        lock.withLock {
            if status != nil { return false }
            var st: Int32 = 0
            let r = waitpid(pid, &st, WNOHANG)
            if r == pid || r < 0 { status = st; return false }
            return true
        }
    }

    /// Waits up to `timeout` seconds; returns the exit code, or nil if still running.
    func wait(timeout: TimeInterval) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while isRunning && Date() < deadline { usleep(10_000) }
        return lock.withLock { status.map { ($0 >> 8) & 0xFF } }
    }

    /// SIGTERM, 2 s grace, SIGKILL; always reaps. Idempotent.
    func stop() {
        guard isRunning else { return }
        kill(pid, SIGTERM)
        if wait(timeout: 2) == nil {
            kill(pid, SIGKILL)
            _ = wait(timeout: 5)
        }
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    deinit { stop() }
}

/// A fresh temporary directory (removed by the caller).
func temporaryDirectory(_ prefix: String) throws -> String {
    let dir = NSTemporaryDirectory() + prefix + "-" + Identifier.random(bytes: 5)
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

/// Runs `/usr/bin/python3 script args…` to completion (at most 120 s).
/// - Returns: the script's output file contents (`out`), or throws with its log.
func runPython(_ script: String, _ arguments: [String], dir: String) throws {
    let path = dir + "/script-\(Identifier.random(bytes: 3)).py"
    try script.write(toFile: path, atomically: true, encoding: .utf8)
    let p = try Spawned("/usr/bin/python3", [path] + arguments, logPath: dir + "/python.log")
    guard let status = p.wait(timeout: 120) else {
        p.stop()
        throw TestFailure("python did not finish in 120 s: \(p.log)")
    }
    guard status == 0 else { throw TestFailure("python failed (\(status)): \(p.log)") }
}

/// dkimpy's verdict for each message (every DKIM-Signature, top first), with key records served
/// by a `dnsfunc` from `records` (`selector._domainkey.domain` → TXT text) instead of real DNS.
func dkimpyVerify(_ messages: [[UInt8]], records: [String: String]) throws -> [[Bool]] {
    let dir = try temporaryDirectory("hato-dkimpy")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    var paths: [String] = []
    for (i, m) in messages.enumerated() {
        let p = "\(dir)/m\(i).eml"
        try Data(m).write(to: URL(fileURLWithPath: p))
        paths.append(p)
    }
    try JSONSerialization.data(withJSONObject: records).write(to: URL(fileURLWithPath: dir + "/keys.json"))
    try runPython(dkimVerifyScript, [dir + "/keys.json", dir + "/out.json"] + paths, dir: dir)
    guard let data = FileManager.default.contents(atPath: dir + "/out.json"),
          let result = try JSONSerialization.jsonObject(with: data) as? [[Bool]] else { throw TestFailure("no dkimpy output") }
    return result
}
