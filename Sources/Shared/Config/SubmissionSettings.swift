import Foundation
import SMTPCore

/// `smtp.tls:` the certificate STARTTLS presents (RFC 3207). Both files are PEM; paths are
/// resolved against the configuration file's directory. The files are read when the
/// coordinator starts (not at load time: nodes share the file but not the key).
public struct SMTPTLSSettings: Sendable, Equatable {
    /// `certificate`: absolute path of the PEM certificate chain (server certificate first). Required.
    public var certificatePath: String
    /// `private_key`: absolute path of the PEM private key (unencrypted). Required.
    public var privateKeyPath: String

    /// Creates TLS settings.
    public init(certificatePath: String, privateKeyPath: String) {
        self.certificatePath = certificatePath
        self.privateKeyPath = privateKeyPath
    }
}

/// One `smtp.users:` entry: an account for AUTH PLAIN/LOGIN (RFC 4954).
public struct SMTPUser: Sendable, Equatable {
    /// `name`: the user name (`[A-Za-z0-9._@+-]{1,128}`, case-sensitive); unique. Required.
    public var name: String
    /// `password_hash`: `$pbkdf2-sha256$…` from `hato-coordinator hash-password`. Required.
    public var passwordHash: PasswordHash

    /// Creates a user.
    public init(name: String, passwordHash: PasswordHash) {
        self.name = name
        self.passwordHash = passwordHash
    }

    /// Whether `name` is an acceptable user name.
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 128 && name.utf8.allSatisfy { b in
            SMTPAddressSyntax.isLetDig(b) || b == UInt8(ascii: ".") || b == UInt8(ascii: "_") || b == UInt8(ascii: "@")
                || b == UInt8(ascii: "+") || b == UInt8(ascii: "-")
        }
    }
}

/// `smtp.queue_min_free`: the free space the queue's file system keeps for the queue itself, like
/// Postfix's `queue_minfree`. Below it new mail is refused at MAIL with `452 4.3.1 Insufficient
/// system storage` (RFC 5321 §4.2.5, RFC 3463 4.3.1) while the scheduler and result recording
/// keep writing in the headroom, so the queue drains by itself.
///
/// Written as a size (`512MiB`, any `ConfigValue.size` form), a share of the file system's size
/// (`5%`, `2.5%`), or `0` (also `0%`) to disable. The default is 1 GiB or 5 % of the file system,
/// whichever is smaller.
public struct QueueMinFree: Sendable, Equatable, CustomStringConvertible {
    /// A fixed amount in octets, nil when not part of the setting.
    public var bytes: Int?
    /// A share of the file system's size in percent (0 < percent < 100), nil when not part of the setting.
    public var percent: Double?

    /// Creates a setting; with both nil the check is disabled.
    /// - Parameters:
    ///   - bytes: octets.
    ///   - percent: percent of the file system size.
    public init(bytes: Int?, percent: Double?) {
        self.bytes = bytes
        self.percent = percent
    }

    /// 1 GiB or 5 % of the file system, whichever is smaller.
    public static let `default` = QueueMinFree(bytes: 1 << 30, percent: 5)
    /// No headroom check (`0`).
    public static let disabled = QueueMinFree(bytes: nil, percent: nil)

    /// Whether the check is off.
    public var isDisabled: Bool { (bytes ?? 0) == 0 && (percent ?? 0) == 0 }

    /// The free space to keep on a file system of `fileSystemSize` octets: the smaller of the
    /// configured amounts, 0 when disabled.
    /// - Parameter fileSystemSize: `f_blocks × f_frsize` in octets.
    /// - Returns: octets.
    public func threshold(fileSystemSize: Int) -> Int {
        var candidates: [Int] = []
        if let bytes, bytes > 0 { candidates.append(bytes) }
        if let percent, percent > 0 { candidates.append(Int((Double(max(0, fileSystemSize)) * percent / 100).rounded(.up))) }
        return candidates.min() ?? 0
    }

    public var description: String {
        if isDisabled { return "0" }
        func percentText(_ p: Double) -> String { p == p.rounded() ? "\(Int(p))%" : "\(p)%" }
        switch (bytes, percent) {
        case (let b?, let p?): return "\(b) bytes or \(percentText(p)), whichever is smaller"
        case (let b?, nil): return "\(b) bytes"
        case (nil, let p?): return percentText(p)
        default: return "0"
        }
    }

    /// Parses `512MiB`, `5%` or `0`.
    /// - Throws: `ConfigValueError` for a malformed size or a percentage outside 0…99.
    public static func parse(_ text: String) throws -> QueueMinFree {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if trimmed.hasSuffix("%") {
            let number = trimmed.dropLast().trimmingCharacters(in: .whitespaces)
            guard !number.isEmpty, number.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }),
                  let p = Double(number), p.isFinite else {
                throw ConfigValueError("invalid percentage \"\(text)\": expected e.g. \"5%\"")
            }
            guard p < 100 else { throw ConfigValueError("\(text) is out of range (0%…99%)") }
            return p == 0 ? .disabled : QueueMinFree(bytes: nil, percent: p)
        }
        let bytes = try ConfigValue.size(trimmed)
        return bytes == 0 ? .disabled : QueueMinFree(bytes: bytes, percent: nil)
    }
}

extension SMTPSettings {
    /// The `smtp:` keys decoded by `decodeSubmission`.
    static let submissionKeys = ["tls", "require_tls", "users", "auth_allow_plaintext_loopback", "max_connections",
                                 "max_connections_per_client", "command_timeout", "data_timeout",
                                 "auth_failure_limit", "auth_failure_window", "queue_min_free", "max_content_memory",
                                 "postmaster", "postmaster_rate_limit", "postmaster_rate_window"]

    /// Whether `host` (numeric) is a loopback address: 127.0.0.0/8, `::1`, or `::ffff:127.x.y.z`.
    public static func isLoopback(_ host: String) -> Bool {
        if host == "::1" { return true }
        let v4 = host.lowercased().hasPrefix("::ffff:") ? String(host.dropFirst(7)) : host
        return v4.hasPrefix("127.") && v4.split(separator: ".").count == 4
    }
}

extension ClusterConfigDecoder {
    /// Decodes the submission keys of `smtp:` (TLS, AUTH users, connection limits, timeouts).
    func decodeSubmission(_ sec: ConfigSection, into s: inout SMTPSettings) throws {
        func error(_ line: Int?, _ key: String, _ message: String) -> ConfigError {
            ConfigError(file: file, line: line, key: key, message: message)
        }
        if let tls = try sec.section("tls", allowed: ["certificate", "private_key"]) {
            func path(_ key: String) throws -> String {
                try tls.require(key) { text -> String in
                    guard !text.isEmpty else { throw ConfigValueError("must not be empty") }
                    return ConfigFiles.absolute(text, relativeTo: baseDirectory)
                }
            }
            s.tls = SMTPTLSSettings(certificatePath: try path("certificate"), privateKeyPath: try path("private_key"))
        }
        if let v = try sec.get("require_tls", ConfigValue.bool) { s.requireTLS = v }
        if s.requireTLS && s.tls == nil {
            throw error(sec.entryLine("require_tls"), sec.keyPath("require_tls"), "require_tls needs smtp.tls (certificate and private_key)")
        }
        if let v = try sec.get("auth_allow_plaintext_loopback", ConfigValue.bool) { s.authAllowPlaintextLoopback = v }
        var users: [SMTPUser] = []
        var seen: [String: Int] = [:]
        for item in try sec.list("users") ?? [] {
            let u = try item.section(allowed: ["name", "password_hash"])
            let name = try u.require("name") { text -> String in
                guard SMTPUser.isValidName(text) else {
                    throw ConfigValueError("user names are 1 to 128 of A-Z a-z 0-9 . _ @ + - (found \"\(text)\")")
                }
                return text
            }
            let line = u.entryLine("name")
            if let first = seen[name] {
                throw error(line, u.keyPath("name"), "duplicate user \"\(name)\" (first on line \(first))")
            }
            seen[name] = line ?? 0
            let hash = try u.require("password_hash") { text -> PasswordHash in
                do {
                    return try PasswordHash(parsing: text)
                } catch let e as PasswordHashError {
                    throw ConfigValueError(e.message)
                }
            }
            users.append(SMTPUser(name: name, passwordHash: hash))
        }
        s.users = users
        if !users.isEmpty && s.tls == nil && !s.authAllowPlaintextLoopback {
            throw error(sec.entryLine("users"), sec.keyPath("users"),
                        "AUTH is offered only over TLS: set smtp.tls, or auth_allow_plaintext_loopback: true for loopback clients")
        }
        if let v = try sec.get("max_connections", { try ConfigValue.integer($0, in: 1...1_000_000) }) { s.maxConnections = v }
        if let v = try sec.get("max_connections_per_client", { try ConfigValue.integer($0, in: 1...1_000_000) }) {
            s.maxConnectionsPerClient = v
        }
        if let v = try sec.get("command_timeout", { try ConfigValue.duration($0) }) { s.commandTimeout = v }
        if let v = try sec.get("data_timeout", { try ConfigValue.duration($0) }) { s.dataTimeout = v }
        if let v = try sec.get("auth_failure_limit", { try ConfigValue.integer($0, in: 1...1_000_000) }) { s.authFailureLimit = v }
        if let v = try sec.get("auth_failure_window", { try ConfigValue.duration($0) }) { s.authFailureWindow = v }
        if let v = try sec.get("queue_min_free", QueueMinFree.parse) { s.queueMinFree = v }
        if let v = try sec.get("max_content_memory", ConfigValue.size) {
            guard v >= s.maxMessageSize else {
                throw error(sec.entryLine("max_content_memory"), sec.keyPath("max_content_memory"),
                            "must be at least smtp.max_message_size (\(s.maxMessageSize) octets): one message of the largest size must fit")
            }
            s.maxContentMemory = v
        }
        let hostname = s.hostname
        if let v = try sec.get("postmaster", { text -> Mailbox in
            let mailbox: Mailbox
            do {
                mailbox = try Mailbox(parsing: text)
            } catch {
                throw ConfigValueError("\"\(text)\" is not a mailbox (local-part@domain, ASCII)")
            }
            if mailbox.localPart.lowercased() == "postmaster" && mailbox.domain.lowercased() == hostname.lowercased() {
                throw ConfigValueError("\(text) is this server's own postmaster (smtp.hostname): mail to it would loop")
            }
            return mailbox
        }) { s.postmaster = v }
        if let v = try sec.get("postmaster_rate_limit", { try ConfigValue.integer($0, in: 1...1_000_000) }) { s.postmasterRateLimit = v }
        if let v = try sec.get("postmaster_rate_window", { try ConfigValue.duration($0) }) { s.postmasterRateWindow = v }
    }
}
