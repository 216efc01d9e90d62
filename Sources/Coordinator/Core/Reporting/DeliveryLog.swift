#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import ClusterProtocol
import Foundation
import HatoSupport
import SMTPCore

/// One delivery log line (JSON, snake_case keys, absent fields omitted). Also the body of
/// each webhook event.
public struct DeliveryLogRecord: Codable, Sendable, Equatable {
    /// Unique event id: `<message id>.<sequence>`.
    public var id: String
    /// When it happened, ISO 8601 UTC with milliseconds.
    public var ts: String
    /// `received`, `delivered`, `deferred`, `failed`, `expired`, `suppressed`, `dsn-sent`; an
    /// operator's `held`, `released`, `deleted`, `flushed`, `paused`, `resumed`, `lifted`.
    public var event: String
    /// The message's queue id (nil for an operator's event about no message: a pause, a lift).
    public var messageId: String?
    /// The recipient (recipient events).
    public var recipient: String?
    /// The message's reverse-path (`""` for `<>`).
    public var reversePath: String?
    /// The message's pool.
    public var pool: String?
    /// The message's tenant (issue 16), nil for mail of no tenant.
    public var tenant: String?
    /// The node that reported the outcome.
    public var node: String?
    /// The sending IP of the attempt.
    public var sendingIp: String?
    /// The MX host that answered; for a connection failure (`connect_failed`), the one that
    /// could not be connected to.
    public var mx: String?
    /// For a connection failure: true (then `mx`, `remote_address` and `address_family` name the
    /// last target tried).
    public var connectFailed: Bool?
    /// `ipv4` or `ipv6`: the address family of a connection failure's target.
    public var addressFamily: String?
    /// The MX host's provider (`MailboxProvider`).
    public var provider: String?
    /// The reply code (remote or locally generated).
    public var code: Int?
    /// The enhanced status code (RFC 3463).
    public var enhanced: String?
    /// The reply text.
    public var reply: String?
    /// The `BounceCategory` of deferrals, failures and expiries.
    public var category: String?
    /// The attempt number (1-based) for recipient events.
    public var attempt: Int?
    /// Seconds from acceptance to this event.
    public var queueTime: Double?
    /// Seconds from lease grant to the reported result (this attempt's duration as the coordinator saw it).
    public var attemptTime: Double?
    /// For deferrals: when the next attempt is due (ISO 8601).
    public var nextAttempt: String?
    /// For `received`: size in octets, recipient count and client address.
    public var size: Int?
    /// For `received`: the recipient count.
    public var recipients: Int?
    /// For `received`: the client address.
    public var client: String?
    /// For `dsn-sent`: the DSN's queue id.
    public var dsnMessageId: String?
    /// Whether the delivery session used TLS (when the node reported the session).
    public var tls: Bool?
    /// The TLS version, e.g. `TLSv1.3`.
    public var tlsVersion: String?
    /// The TLS cipher suite.
    public var tlsCipher: String?
    /// The MX host's numeric address.
    public var remoteAddress: String?
    /// Whether the session was reused from an earlier message.
    public var reusedConnection: Bool?
    /// DKIM signatures applied (`domain/selector/algorithm`).
    public var dkim: [String]?
    /// Seconds per step of the attempt, as the node measured them.
    public var timings: DeliveryTimings?
    /// For an operator's action (queue control; a bounce's `failed`): who did it (the
    /// `X-Hato-Operator` the CLI sends, else `admin`).
    public var operatorName: String?
    /// For an operator's action: what it was applied to, e.g. `domain gmail.com pool bulk`, `provider gmail`.
    public var target: String?
    /// For an operator's action: the reason given, if any.
    public var note: String?

    enum CodingKeys: String, CodingKey {
        case id, ts, event, messageId, recipient, reversePath, pool, tenant, node, sendingIp, mx, provider, code, enhanced, reply, category
        case attempt, queueTime, attemptTime, nextAttempt, size, recipients, client, dsnMessageId, tls, tlsVersion, tlsCipher
        case remoteAddress, reusedConnection, dkim, timings, target, note, connectFailed, addressFamily
        case operatorName = "operator"
    }

    /// Creates a record with the fields every event has.
    public init(id: String, ts: String, event: String, messageId: String?) {
        self.id = id; self.ts = ts; self.event = event; self.messageId = messageId
    }

    /// Sets `code`, `enhanced` and `reply` from a recipient's last reply, flat as the log and the
    /// webhooks have always written them; `reply` alone when there is only a text.
    /// - Parameters:
    ///   - status: the last reply, if any.
    ///   - textWithoutReply: the text recorded without a reply (an expiry before any attempt).
    public mutating func setReply(_ status: DeliveryStatus?, textWithoutReply: String? = nil) {
        code = status?.code.rawValue
        enhanced = status?.enhanced?.description
        reply = status?.text ?? textWithoutReply
    }

    /// ISO 8601 UTC with milliseconds.
    public static func timestamp(_ d: Date) -> String {
        Logger.timestamp(d)  // RFC 3339 UTC with milliseconds, without a formatter per call
    }

    /// The record as one JSON object (snake_case keys, sorted, absent fields omitted, no
    /// trailing newline): byte for byte what `JSONEncoder` with `.convertToSnakeCase`,
    /// `.sortedKeys` and `.withoutEscapingSlashes` gives, built directly (a tenth of the cost).
    public func json() -> [UInt8] {
        var w = JSONObjectWriter(capacity: 512)
        w.field("address_family", addressFamily)
        w.field("attempt", attempt)
        w.field("attempt_time", attemptTime)
        w.field("category", category)
        w.field("client", client)
        w.field("code", code)
        w.field("connect_failed", connectFailed)
        w.field("dkim", dkim)
        w.field("dsn_message_id", dsnMessageId)
        w.field("enhanced", enhanced)
        w.field("event", event)
        w.field("id", id)
        w.field("message_id", messageId)
        w.field("mx", mx)
        w.field("next_attempt", nextAttempt)
        w.field("node", node)
        w.field("note", note)
        w.field("operator", operatorName)
        w.field("pool", pool)
        w.field("provider", provider)
        w.field("queue_time", queueTime)
        w.field("recipient", recipient)
        w.field("recipients", recipients)
        w.field("remote_address", remoteAddress)
        w.field("reply", reply)
        w.field("reused_connection", reusedConnection)
        w.field("reverse_path", reversePath)
        w.field("sending_ip", sendingIp)
        w.field("size", size)
        w.field("target", target)
        w.field("tenant", tenant)
        w.field("timings", object: timings.map { t in
            var o = JSONObjectWriter(capacity: 128)
            o.field("connect", t.connect)
            o.field("resolve", t.resolve)
            o.field("setup", t.setup)
            o.field("shaping_wait", t.shapingWait)
            o.field("transaction", t.transaction)
            return o
        })
        w.field("tls", tls)
        w.field("tls_cipher", tlsCipher)
        w.field("tls_version", tlsVersion)
        w.field("ts", ts)
        return w.finish()
    }

    /// Decodes one JSON line.
    public static func decode(_ line: some Sequence<UInt8>) -> DeliveryLogRecord? {
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        return try? d.decode(DeliveryLogRecord.self, from: Data(line))
    }
}

/// The delivery log: one JSON line per event in `<directory>/delivery.jsonl`, rotated by size
/// (`delivery.jsonl.1` is the newest rotated file, up to `.keepFiles`), queryable by message id
/// or recipient.
///
/// Thread-safe (one lock). Lines are written with `write(2)` on an `O_APPEND` descriptor, so a
/// crash leaves whole lines except possibly the last one, which queries skip.
public final class DeliveryLog: @unchecked Sendable {
    // @unchecked: owns the log file's descriptor; `fd` and `size` are read and written only under `lock`.
    /// The log directory.
    public let directory: String
    private let maxFileSize: Int
    private let keepFiles: Int
    private let lock = NSLock()
    private var fd: Int32 = -1
    private var size = 0

    /// The current file's path.
    public var currentPath: String { (directory as NSString).appendingPathComponent("delivery.jsonl") }

    /// - Parameters:
    ///   - directory: created if missing.
    ///   - maxFileSize: rotate before a write would grow the file past this (octets).
    ///   - keepFiles: rotated files kept.
    /// - Throws: a file system error when the directory cannot be created.
    public init(directory: String, maxFileSize: Int, keepFiles: Int) throws {
        self.directory = directory
        self.maxFileSize = max(1024, maxFileSize)
        self.keepFiles = max(1, keepFiles)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    deinit { if fd >= 0 { close(fd) } }

    /// Rotated file `n` (1 = newest).
    func rotatedPath(_ n: Int) -> String { currentPath + ".\(n)" }

    /// Appends records, one line each.
    /// - Throws: `DeliveryLogError` when the file cannot be opened or written.
    public func append(_ records: [DeliveryLogRecord]) throws {
        guard !records.isEmpty else { return }
        var lines: [[UInt8]] = records.map { $0.json() + [0x0A] }
        try lock.withLock {
            try openIfNeeded()
            while !lines.isEmpty {
                // Write as many lines as fit; rotate when the next line would overflow a non-empty file.
                var chunk: [UInt8] = []
                while let l = lines.first, size + chunk.count + l.count <= maxFileSize || (size == 0 && chunk.isEmpty) {
                    chunk += l; lines.removeFirst()
                }
                if chunk.isEmpty { try rotate(); continue }
                try writeAll(chunk)
                size += chunk.count
                if !lines.isEmpty { try rotate() }
            }
        }
    }

    private func openIfNeeded() throws {
        guard fd < 0 else { return }
        let f = open(currentPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
        guard f >= 0 else { throw DeliveryLogError("cannot open \(currentPath): \(String(cString: strerror(errno)))") }
        var st = stat()
        size = fstat(f, &st) == 0 ? Int(st.st_size) : 0
        fd = f
    }

    private func writeAll(_ bytes: [UInt8]) throws {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + off, $0.count - off) }
            if n < 0 {
                if errno == EINTR { continue }
                throw DeliveryLogError("cannot write \(currentPath): \(String(cString: strerror(errno)))")
            }
            off += n
        }
    }

    /// `delivery.jsonl.(k-1)` → `.k`, …, current → `.1`; the oldest beyond `keepFiles` is deleted.
    private func rotate() throws {
        if fd >= 0 { close(fd); fd = -1 }
        unlink(rotatedPath(keepFiles))
        if keepFiles > 1 {
            for n in stride(from: keepFiles - 1, through: 1, by: -1) { rename(rotatedPath(n), rotatedPath(n + 1)) }
        }
        rename(currentPath, rotatedPath(1))
        size = 0
        try openIfNeeded()
    }

    /// The log files, oldest first (rotated files that exist, then the current one).
    public func files() -> [String] {
        let rotated = (1...keepFiles).reversed().map(rotatedPath).filter { FileManager.default.fileExists(atPath: $0) }
        return rotated + (FileManager.default.fileExists(atPath: currentPath) ? [currentPath] : [])
    }

    /// Records about a message or a recipient, oldest first, at most the `limit` most recent.
    /// - Parameters:
    ///   - messageID: only events of this message (or whose DSN is this message).
    ///   - recipient: only events of this recipient (case-insensitive).
    ///   - limit: the most records returned.
    public func query(messageID: String?, recipient: String?, limit: Int = 1000) -> [DeliveryLogRecord] {
        let needle = Array((messageID ?? recipient?.lowercased() ?? "").utf8)
        var out: [DeliveryLogRecord] = []
        let paths = lock.withLock { files() }
        for path in paths {
            guard let data = FileManager.default.contents(atPath: path) else { continue }
            let bytes = [UInt8](data)
            var start = 0
            while start < bytes.count {
                let end = bytes[start...].firstIndex(of: 0x0A) ?? bytes.count
                let line = bytes[start..<end]
                start = end + 1
                if !needle.isEmpty {
                    let hay = recipient != nil ? Array(String(decoding: line, as: UTF8.self).lowercased().utf8)[...] : line
                    guard hay.firstRange(of: needle) != nil else { continue }
                }
                guard let r = DeliveryLogRecord.decode(line) else { continue }
                if let messageID, r.messageId != messageID && r.dsnMessageId != messageID { continue }
                if let recipient, r.recipient?.lowercased() != recipient.lowercased() && r.reversePath?.lowercased() != recipient.lowercased() { continue }
                out.append(r)
                if out.count > limit { out.removeFirst(out.count - limit) }
            }
        }
        return out
    }
}

/// A delivery log file could not be written.
public struct DeliveryLogError: Error, CustomStringConvertible {
    public var description: String
    init(_ d: String) { description = d }
}
