import Foundation
import HatoIO

/// The kinds of delivery events the coordinator records (delivery log, webhooks, metrics).
public enum DeliveryEventKind: String, Sendable, Codable, CaseIterable, Hashable {
    /// A message was accepted and queued (one event per message).
    case received
    /// A recipient was delivered (remote 2xx).
    case delivered
    /// A recipient was deferred (4xx, timeout); it will be retried.
    case deferred
    /// A recipient failed permanently (5xx).
    case failed
    /// A recipient stayed undeliverable past `retry.max_age`.
    case expired
    /// A recipient was on the suppression list and was not attempted.
    case suppressed
    /// A delivery status notification was queued to the reverse-path.
    case dsnSent = "dsn-sent"
    /// An operator held a recipient (queue control): it is not leased until released.
    case held
    /// An operator released a held recipient: queued again, due at once.
    case released
    /// An operator deleted a recipient: removed from delivery without a DSN.
    case deleted
    /// An operator flushed a recipient: its next attempt is due at once.
    case flushed
    /// An operator paused a provider, a pool or a sending IP (no recipient, no message).
    case paused
    /// An operator resumed a paused provider, pool or sending IP (no recipient, no message).
    case resumed
    /// Backoffs ended: lifted early by an operator, or run out (then the operator is `hato`;
    /// no recipient, no message).
    case lifted
    /// A backoff rule suspended or throttled a (sending IP, provider) pair after a provider's
    /// reply (operator `hato`, target `ip A provider P`, note: the action, until when, the reply;
    /// no recipient, no message). Its end is a `lifted`.
    case suspended
    /// A DNS blocklist lists a sending IP: it gets no new leases (operator `hato`, target
    /// `ip A`, note: the zone, return codes and the list's reason; issue 18).
    case listed
    /// A sending IP is no longer on a blocklist (operator `hato`, target `ip A`, note: the zone).
    case delisted
    /// A mailbox provider's feedback loop reported a message as spam (ARF, RFC 5965; issue 18):
    /// the recipient, sending IP, provider (and the message, when matched); the feedback type is
    /// the record's `category`, the reporting MTA its `note`. The recipient is suppressed.
    case complained

    /// Whether the event records an operator's action (it carries `operator` and `target`).
    public var isOperatorAction: Bool {
        switch self {
        case .held, .released, .deleted, .flushed, .paused, .resumed, .lifted, .suspended, .listed, .delisted: return true
        default: return false
        }
    }
}

/// `dsn:` delivery status notifications (RFC 3464, RFC 3461).
public struct DSNSettings: Sendable, Equatable {
    /// `delay_warning`: after how long in the queue a still-deferred recipient whose NOTIFY
    /// allows it (DELAY, or no NOTIFY) gets one "delayed" DSN; `off` disables. Default 4h.
    public var delayWarning: TimeInterval?
    /// `max_returned_size`: the largest original returned whole for RET=FULL; larger originals
    /// return their header only (octets). Default 1 MiB.
    public var maxReturnedSize: Int

    /// Creates DSN settings.
    public init(delayWarning: TimeInterval? = 4 * 3600, maxReturnedSize: Int = 1 << 20) {
        self.delayWarning = delayWarning; self.maxReturnedSize = maxReturnedSize
    }
}

/// `suppression:` what happens to recipients that hard-bounced (bad-mailbox, bad-domain).
public struct SuppressionSettings: Sendable, Equatable {
    /// Whose mail a suppression entry blocks.
    public enum Scope: String, Sendable, Equatable {
        /// Every sender's mail to the address.
        case global
        /// Only mail from the sender domain whose message hard-bounced.
        case senderDomain = "sender_domain"
    }

    /// How a suppressed recipient is treated.
    public enum Mode: String, Sendable, Equatable {
        /// Refused at `RCPT TO` with `550 5.1.1 … suppressed`.
        case rejectAtRcpt = "reject_at_rcpt"
        /// Accepted, then marked `suppressed` without a delivery attempt (and reported by DSN).
        case markSuppressed = "mark_suppressed"
    }

    /// `scope`: default `global`.
    public var scope: Scope
    /// `mode`: default `mark_suppressed`.
    public var mode: Mode
    /// `expire_after`: how long an automatic entry lasts; `never` keeps it. Default 90d.
    public var expireAfter: TimeInterval?
    /// `auto_add`: whether hard bounces add entries automatically. Default true.
    public var autoAdd: Bool

    /// Creates suppression settings.
    public init(scope: Scope = .global, mode: Mode = .markSuppressed, expireAfter: TimeInterval? = 90 * 86_400, autoAdd: Bool = true) {
        self.scope = scope; self.mode = mode; self.expireAfter = expireAfter; self.autoAdd = autoAdd
    }
}

/// One `webhooks:` entry: where delivery events are POSTed.
public struct WebhookSettings: Sendable, Equatable {
    /// `url`: an `http://` or `https://` URL. Required.
    public var url: String
    /// `events`: which event kinds are sent. Default: all.
    public var events: Set<DeliveryEventKind>
    /// `secret` (inline) or `secret_file`: the HMAC-SHA256 key (at least 16 characters). Required.
    public var secret: String
    /// `timeout`: seconds to wait for the receiver's answer. Default 10.
    public var timeout: TimeInterval
    /// `initial_backoff`: the wait after the first failed POST; doubles each time. Default 5s.
    public var initialBackoff: TimeInterval
    /// `max_backoff`: the longest wait between attempts. Default 10m.
    public var maxBackoff: TimeInterval
    /// `max_age`: events older than this are dropped (logged) instead of retried. Default 1d.
    public var maxAge: TimeInterval
    /// `batch_size`: the most events in one POST. Default 100.
    public var batchSize: Int

    /// Creates webhook settings.
    public init(url: String, events: Set<DeliveryEventKind> = Set(DeliveryEventKind.allCases), secret: String, timeout: TimeInterval = 10,
                initialBackoff: TimeInterval = 5, maxBackoff: TimeInterval = 600, maxAge: TimeInterval = 86_400, batchSize: Int = 100) {
        self.url = url; self.events = events; self.secret = secret; self.timeout = timeout
        self.initialBackoff = initialBackoff; self.maxBackoff = maxBackoff; self.maxAge = maxAge; self.batchSize = batchSize
    }
}

/// `log:` the coordinator's delivery log (`<data_dir>/log/delivery.jsonl`).
public struct DeliveryLogSettings: Sendable, Equatable {
    /// `max_file_size`: rotate when the current file would grow past this (octets). Default 64 MiB.
    public var maxFileSize: Int
    /// `keep_files`: rotated files kept (`delivery.jsonl.1` … `.N`). Default 5.
    public var keepFiles: Int

    /// Creates delivery log settings.
    public init(maxFileSize: Int = 64 << 20, keepFiles: Int = 5) {
        self.maxFileSize = maxFileSize; self.keepFiles = keepFiles
    }
}

// MARK: - Decoding

extension ClusterConfigDecoder {
    /// Decodes the `dsn`, `suppression`, `webhooks` and `log` sections into `config`.
    func decodeReporting(_ top: ConfigSection, into config: inout ClusterConfig) throws {
        if let sec = try top.section("dsn", allowed: ["delay_warning", "max_returned_size"]) {
            if let v = try sec.get("delay_warning", { text -> TimeInterval? in
                ["off", "never", "none"].contains(text.lowercased()) ? nil : try ConfigValue.duration(text)
            }) { config.dsn.delayWarning = v }
            if let v = try sec.get("max_returned_size", { text -> Int in
                let n = try ConfigValue.size(text)
                guard n >= 1024 && n <= 1 << 30 else { throw ConfigValueError("\(text) is out of range (1KiB…1GiB)") }
                return n
            }) { config.dsn.maxReturnedSize = v }
        }
        if let sec = try top.section("suppression", allowed: ["scope", "mode", "expire_after", "auto_add"]) {
            if let v = try sec.get("scope", { text -> SuppressionSettings.Scope in
                guard let s = SuppressionSettings.Scope(rawValue: text) else { throw ConfigValueError("expected global or sender_domain, got \"\(text)\"") }
                return s
            }) { config.suppression.scope = v }
            if let v = try sec.get("mode", { text -> SuppressionSettings.Mode in
                guard let m = SuppressionSettings.Mode(rawValue: text) else { throw ConfigValueError("expected reject_at_rcpt or mark_suppressed, got \"\(text)\"") }
                return m
            }) { config.suppression.mode = v }
            if let v = try sec.get("expire_after", { text -> TimeInterval? in
                ["never", "off", "none"].contains(text.lowercased()) ? nil : try ConfigValue.duration(text)
            }) { config.suppression.expireAfter = v }
            if let v = try sec.get("auto_add", ConfigValue.bool) { config.suppression.autoAdd = v }
        }
        if let sec = try top.section("log", allowed: ["max_file_size", "keep_files"]) {
            if let v = try sec.get("max_file_size", { text -> Int in
                let n = try ConfigValue.size(text)
                guard n >= 4096 else { throw ConfigValueError("\(text) is too small (at least 4KiB)") }
                return n
            }) { config.log.maxFileSize = v }
            if let v = try sec.get("keep_files", { try ConfigValue.integer($0, in: 1...1000) }) { config.log.keepFiles = v }
        }
        config.webhooks = try decodeWebhooks(top)
    }

    private func decodeWebhooks(_ top: ConfigSection) throws -> [WebhookSettings] {
        var hooks: [WebhookSettings] = []
        for item in try top.list("webhooks") ?? [] {
            let sec = try item.section(allowed: ["url", "events", "secret", "secret_file", "timeout", "initial_backoff",
                                                 "max_backoff", "max_age", "batch_size"])
            let url = try sec.require("url") { text -> String in
                guard let u = URL(string: text), let scheme = u.scheme?.lowercased(), scheme == "http" || scheme == "https",
                      let host = u.host, !host.isEmpty else {
                    throw ConfigValueError("expected an http:// or https:// URL, got \"\(text)\"")
                }
                return text
            }
            let secret: String
            switch (try sec.scalar("secret"), try sec.scalar("secret_file")) {
            case (nil, nil):
                throw ConfigError(file: file, line: sec.line, key: sec.keyPath("secret"), message: "required key is missing (set secret or secret_file)")
            case (.some, .some(let f)):
                throw ConfigError(file: file, line: f.line, key: f.path, message: "use either secret or secret_file, not both")
            case (.some(let s), nil):
                secret = s.text
            case (nil, .some(let f)):
                let path = ConfigFiles.absolute(f.text, relativeTo: baseDirectory)
                do {
                    var text = String(decoding: try ConfigFiles.readFile(path), as: UTF8.self)
                    while let last = text.unicodeScalars.last, last == "\n" || last == "\r" { text.unicodeScalars.removeLast() }
                    secret = text
                } catch {
                    throw ConfigError(file: file, line: f.line, key: f.path, message: "cannot read \(path): \(error.message)")
                }
            }
            guard secret.count >= 16 else {
                let at = try sec.scalar("secret") ?? sec.scalar("secret_file")
                throw ConfigError(file: file, line: at?.line ?? sec.line, key: at?.path ?? sec.keyPath("secret"),
                                  message: "the secret must be at least 16 characters (found \(secret.count))")
            }
            var hook = WebhookSettings(url: url, secret: secret)
            if let items = try sec.list("events") {
                var events = Set<DeliveryEventKind>()
                for i in items {
                    let s = try i.scalar()
                    if s.text == "all" || s.text == "*" { events.formUnion(DeliveryEventKind.allCases); continue }
                    guard let k = DeliveryEventKind(rawValue: s.text) else {
                        throw ConfigError(file: file, line: s.line, key: s.path,
                                          message: "unknown event \"\(s.text)\" (known: \(DeliveryEventKind.allCases.map(\.rawValue).joined(separator: ", ")), all)")
                    }
                    events.insert(k)
                }
                guard !events.isEmpty else {
                    throw ConfigError(file: file, line: sec.entryLine("events"), key: sec.keyPath("events"), message: "must list at least one event")
                }
                hook.events = events
            }
            if let v = try sec.get("timeout", { try ConfigValue.duration($0) }) { hook.timeout = v }
            if let v = try sec.get("initial_backoff", { try ConfigValue.duration($0) }) { hook.initialBackoff = v }
            if let v = try sec.get("max_backoff", { try ConfigValue.duration($0) }) { hook.maxBackoff = v }
            if let v = try sec.get("max_age", { try ConfigValue.duration($0) }) { hook.maxAge = v }
            if let v = try sec.get("batch_size", { try ConfigValue.integer($0, in: 1...10_000) }) { hook.batchSize = v }
            if hook.maxBackoff < hook.initialBackoff {
                let at = try sec.scalar("max_backoff")
                throw ConfigError(file: file, line: at?.line ?? sec.line, key: sec.keyPath("max_backoff"),
                                  message: "max_backoff must not be shorter than initial_backoff")
            }
            if hooks.contains(where: { $0.url == hook.url }), let at = try sec.scalar("url") {
                throw ConfigError(file: file, line: at.line, key: at.path, message: "duplicate webhook URL \(url)")
            }
            hooks.append(hook)
        }
        return hooks
    }

    /// Decodes `nodes[].metrics_listen`, nil when absent.
    func decodeMetricsListen(_ sec: ConfigSection) throws -> SocketAddress? {
        try sec.get("metrics_listen") { try ConfigValue.socketAddress($0, defaultPort: nil, allowZeroPort: true) }
    }
}
