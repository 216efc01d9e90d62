import Foundation
import HatoIO
import HatoSupport

/// A message received by a `CaptureServer`.
public struct CapturedMessage: Sendable, Codable, Equatable {
    /// The client's source address (the sending IP for Hato deliveries).
    public var peerAddress: String
    /// The server address the client connected to.
    public var localAddress: String
    /// The EHLO/HELO argument.
    public var helo: String
    /// The MAIL FROM path, without brackets.
    public var reversePath: String
    /// Accepted RCPT TO paths, without brackets.
    public var recipients: [String]
    /// The DATA bytes exactly as received on the wire, dot-stuffed, up to and excluding the final `.CRLF`.
    public var wire: [UInt8]
    /// The content after dot-unstuffing.
    public var content: [UInt8]
    /// When the final `250` was sent (seconds since 1970).
    public var receivedAt: Double
}

/// What the capture server answers to a recipient.
public enum CaptureVerdict: Sendable, Equatable {
    case accept
    /// Reply with this code and text (4xx or 5xx), e.g. `451 4.7.1 try later`.
    case reject(Int, String)
}

/// A recording SMTP server that plays a recipient's MX in tests and in the local
/// demo cluster (`hato-sink`): it records the peer's source address and the
/// exact bytes received, and can be told to refuse recipients.
///
/// RFC 5321 server subset: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT, with
/// PIPELINING and 8BITMIME advertised. Not hardened: never expose it. Connections come
/// through an `Acceptor` with generous limits (`CaptureServer.admissionLimits`).
public final class CaptureServer: Sendable {
    /// 4096 connections at once from anyone: a test MX receives every session of a load test
    /// from a few loopback addresses.
    public static let admissionLimits = AdmissionLimits(maxConnections: 4096, maxConnectionsPerPeer: 4096)

    private struct State: Sendable {
        var messages: [CapturedMessage] = []
        var rcptAttempts: [String: Int] = [:]
        var connectionCount = 0
    }
    private let state = Locked(State())
    /// Set once in `init`, after the acceptor exists (its handler needs `self`).
    private let acceptor = Locked<Acceptor?>(nil)
    private let policy: @Sendable (_ recipient: String, _ attempt: Int) -> CaptureVerdict
    private let sourcePolicy: (@Sendable (_ peer: String) -> CaptureVerdict)?
    private let directory: String?
    private let hostname: String
    /// Seconds to wait before answering the end of DATA (simulates a slow MX; keeps leases in flight).
    public let dataDelay: TimeInterval
    /// The bound address (the real port when bound to port 0).
    public let address: SocketAddress

    /// Binds and starts serving on a background thread.
    /// - Parameters:
    ///   - address: where to listen (port 0 picks a free port).
    ///   - hostname: the name in the greeting.
    ///   - directory: if set, each message is also written there as `<n>.eml` plus `<n>.json` metadata.
    ///   - dataDelay: seconds to wait before the reply to the end of DATA.
    ///   - sourcePolicy: a verdict by client source address, consulted at RCPT before `policy`.
    ///   - policy: the verdict for a recipient on its n-th RCPT (1-based, counted per address).
    /// - Throws: `SocketError` when the address cannot be bound.
    public init(address: SocketAddress, hostname: String = "mx.capture.test", directory: String? = nil, dataDelay: TimeInterval = 0,
                sourcePolicy: (@Sendable (_ peer: String) -> CaptureVerdict)? = nil,
                policy: @escaping @Sendable (_ recipient: String, _ attempt: Int) -> CaptureVerdict = { _, _ in .accept }) throws {
        self.policy = policy
        self.directory = directory
        self.hostname = hostname
        self.dataDelay = dataDelay
        self.sourcePolicy = sourcePolicy
        if let directory { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }
        // The handler holds the server weakly: the acceptor must not keep it alive.
        let box = WeakCaptureServer()
        let acceptor = try Acceptor(address: address, configuration: Acceptor.Configuration(name: "capture"),
                                    admission: AdmissionControl(limits: CaptureServer.admissionLimits),
                                    refusal: { _, _ in Array("421 4.7.0 too many connections\r\n".utf8) },
                                    handler: { connection in box.server?.serve(connection.socket, peer: connection.peer) })
        self.address = acceptor.address
        self.acceptor.withLock { $0 = acceptor }
        box.server = self
        acceptor.start()
    }

    deinit { stop() }

    /// Stops accepting connections (the listener is closed when this returns).
    public func stop() { acceptor.snapshot?.stop() }

    /// Every message received so far, in order.
    public var received: [CapturedMessage] { state.withLock { $0.messages } }

    /// TCP connections accepted so far.
    public var connections: Int { state.withLock { $0.connectionCount } }

    private func serve(_ conn: Socket, peer: SocketAddress) {
        state.withLock { $0.connectionCount += 1 }
        conn.setTimeouts(read: 60, write: 60)
        let local = conn.localAddress?.host ?? address.host
        let reader = BufferedReader(stream: conn)
        var helo = "", from: String? = nil, rcpts: [String] = []
        func reply(_ s: String) throws { try conn.write(s + "\r\n") }
        func path(_ arg: Substring) -> String {
            guard let lt = arg.firstIndex(of: "<"), let gt = arg[lt...].firstIndex(of: ">") else { return String(arg) }
            return String(arg[arg.index(after: lt)..<gt])
        }
        do {
            try reply("220 \(hostname) ESMTP capture")
            while let raw = try reader.readLine(maxLength: 4096) {
                let line = String(decoding: raw.prefix { $0 != 0x0D && $0 != 0x0A }, as: UTF8.self)
                let verb = line.prefix { $0 != " " && $0 != ":" }.uppercased()
                switch verb {
                case "EHLO":
                    helo = String(line.dropFirst(5))
                    try reply("250-\(hostname)\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 104857600")
                case "HELO":
                    helo = String(line.dropFirst(5)); try reply("250 \(hostname)")
                case "MAIL":
                    from = path(line.dropFirst(5)); rcpts = []; try reply("250 2.1.0 Ok")
                case "RCPT":
                    let r = path(line.dropFirst(5))
                    if let v = sourcePolicy?(peer.host), case .reject(let code, let text) = v {
                        try reply("\(code) \(text)"); continue
                    }
                    let n = state.withLock { s -> Int in s.rcptAttempts[r, default: 0] += 1; return s.rcptAttempts[r]! }
                    switch policy(r, n) {
                    case .accept: rcpts.append(r); try reply("250 2.1.5 Ok")
                    case .reject(let code, let text): try reply("\(code) \(text)")
                    }
                case "DATA":
                    guard from != nil, !rcpts.isEmpty else { try reply("554 5.5.1 no valid recipients"); continue }
                    try reply("354 End data with <CR><LF>.<CR><LF>")
                    var wire: [UInt8] = [], content: [UInt8] = []
                    while let l = try reader.readLine(maxLength: 1 << 20) {
                        if l.elementsEqual([0x2E, 0x0D, 0x0A]) { break }
                        wire.append(contentsOf: l)
                        content.append(contentsOf: l.first == 0x2E ? l.dropFirst() : l[...])
                    }
                    if dataDelay > 0 { Thread.sleep(forTimeInterval: dataDelay) }
                    let m = CapturedMessage(peerAddress: peer.host, localAddress: local, helo: helo, reversePath: from ?? "",
                                            recipients: rcpts, wire: wire, content: content, receivedAt: Date().timeIntervalSince1970)
                    let index = state.withLock { s -> Int in s.messages.append(m); return s.messages.count }
                    if let directory { save(m, index: index, in: directory) }
                    from = nil; rcpts = []
                    try reply("250 2.0.0 Ok: captured as \(index)")
                case "RSET":
                    from = nil; rcpts = []; try reply("250 2.0.0 Ok")
                case "NOOP": try reply("250 2.0.0 Ok")
                case "QUIT": try reply("221 2.0.0 Bye"); return
                default: try reply("502 5.5.2 not implemented")
                }
            }
        } catch {}
    }

    private func save(_ m: CapturedMessage, index: Int, in dir: String) {
        let base = (dir as NSString).appendingPathComponent(String(format: "%06d", index))
        _ = FileManager.default.createFile(atPath: base + ".eml", contents: Data(m.content))
        struct Meta: Codable { var peerAddress, helo, reversePath: String; var recipients: [String]; var receivedAt: Double }
        let meta = Meta(peerAddress: m.peerAddress, helo: m.helo, reversePath: m.reversePath, recipients: m.recipients, receivedAt: m.receivedAt)
        if let d = try? JSONEncoder().encode(meta) { _ = FileManager.default.createFile(atPath: base + ".json", contents: d) }
    }
}

/// The capture server as its acceptor's handler sees it: weakly, so that dropping the last
/// reference to the server stops it.
private final class WeakCaptureServer: Sendable {
    private let reference = Locked<WeakReference>(WeakReference())
    private struct WeakReference: Sendable {
        weak var value: CaptureServer?
    }

    var server: CaptureServer? {
        get { reference.withLock { $0.value } }
        set { reference.withLock { $0.value = newValue } }
    }
}
