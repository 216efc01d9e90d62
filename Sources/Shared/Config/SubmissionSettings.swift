import Foundation

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

extension SMTPSettings {
    /// The `smtp:` keys decoded by `decodeSubmission`.
    static let submissionKeys = ["tls", "require_tls", "users", "auth_allow_plaintext_loopback", "max_connections",
                                 "max_connections_per_client", "command_timeout", "data_timeout",
                                 "auth_failure_limit", "auth_failure_window"]

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
    }
}
