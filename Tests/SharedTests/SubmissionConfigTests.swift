import Foundation
import Testing
@testable import HatoConfig

/// The submission keys of `smtp:` (SubmissionSettings.swift).
extension ConfigTests {
    /// `base` with `lines` added to its `smtp:` section (two-space indented).
    static func withSMTP(_ lines: String) -> String {
        let marker = "  hostname: relay.hato.test\n"
        let indented = lines.split(separator: "\n", omittingEmptySubsequences: false).filter { !$0.isEmpty }.map { "  " + $0 + "\n" }.joined()
        return base.replacingOccurrences(of: marker, with: marker + indented)
    }

    static let userHash = "$pbkdf2-sha256$10000$MDEyMzQ1Njc4OWFiY2RlZg$TI2grtvV1HW5nz2rBY4tctlrmOj5bZs0dw9j8NHpRRc"

    @Test("smtp submission defaults: no TLS, no users, 1000/50 connections, 5m timeouts, 10 failures per 15m")
    func submissionDefaults() throws {
        let s = try Self.parse(Self.base).smtp
        #expect(s.tls == nil)
        #expect(!s.requireTLS)
        #expect(s.users.isEmpty)
        #expect(!s.authAllowPlaintextLoopback)
        #expect(s.maxConnections == 1000)
        #expect(s.maxConnectionsPerClient == 50)
        #expect(s.commandTimeout == 300)
        #expect(s.dataTimeout == 300)
        #expect(s.authFailureLimit == 10)
        #expect(s.authFailureWindow == 900)
    }

    @Test("smtp submission keys: tls paths resolved against the file, users with parsed hashes, limits and timeouts")
    func submissionKeys() throws {
        let text = Self.withSMTP("""
            tls: { certificate: certs/relay.pem, private_key: /etc/ssl/private/relay.key }
            require_tls: true
            auth_allow_plaintext_loopback: yes
            users:
              - { name: billing-app, password_hash: "\(Self.userHash)" }
              - name: alerts@example.org
                password_hash: '\(Self.userHash)'
            max_connections: 300
            max_connections_per_client: 20
            command_timeout: 2m
            data_timeout: 90s
            auth_failure_limit: 5
            auth_failure_window: 1h
            """)
        let s = try Self.parse(text, path: "/etc/hato/cluster.yml").smtp
        #expect(s.tls == SMTPTLSSettings(certificatePath: "/etc/hato/certs/relay.pem", privateKeyPath: "/etc/ssl/private/relay.key"))
        #expect(s.requireTLS)
        #expect(s.authAllowPlaintextLoopback)
        #expect(s.users.map(\.name) == ["billing-app", "alerts@example.org"])
        #expect(s.users[0].passwordHash.verify(Array("correct horse".utf8)))
        #expect(s.maxConnections == 300)
        #expect(s.maxConnectionsPerClient == 20)
        #expect(s.commandTimeout == 120)
        #expect(s.dataTimeout == 90)
        #expect(s.authFailureLimit == 5)
        #expect(s.authFailureWindow == 3600)
    }

    struct SubmissionConfigCase: Sendable, CustomTestStringConvertible {
        let name: String
        let smtp: String
        let key: String
        let message: String
        var testDescription: String { name }
    }

    static let submissionErrors: [SubmissionConfigCase] = [
        SubmissionConfigCase(name: "require_tls without tls", smtp: "require_tls: true",
                             key: "smtp.require_tls", message: "require_tls needs smtp.tls"),
        SubmissionConfigCase(name: "tls without private_key", smtp: "tls: { certificate: c.pem }",
                             key: "smtp.tls.private_key", message: "required key is missing"),
        SubmissionConfigCase(name: "unknown tls key", smtp: "tls: { certificate: c.pem, private_key: k.pem, ca: x }",
                             key: "smtp.tls.ca", message: "unknown key"),
        SubmissionConfigCase(name: "users without TLS or the loopback option",
                             smtp: "users: [ { name: app, password_hash: \"\(userHash)\" } ]",
                             key: "smtp.users", message: "AUTH is offered only over TLS"),
        SubmissionConfigCase(name: "bad password hash",
                             smtp: "auth_allow_plaintext_loopback: true\nusers: [ { name: app, password_hash: \"secret\" } ]",
                             key: "smtp.users[0].password_hash", message: "expected $pbkdf2-sha256$"),
        SubmissionConfigCase(name: "too few iterations",
                             smtp: "auth_allow_plaintext_loopback: true\nusers: [ { name: app, password_hash: \"$pbkdf2-sha256$1000$MDEyMzQ1Njc4OWFiY2RlZg$TI2grtvV1HW5nz2rBY4tctlrmOj5bZs0dw9j8NHpRRc\" } ]",
                             key: "smtp.users[0].password_hash", message: "iterations must be between 10000"),
        SubmissionConfigCase(name: "bad user name",
                             smtp: "auth_allow_plaintext_loopback: true\nusers: [ { name: \"a b\", password_hash: \"\(userHash)\" } ]",
                             key: "smtp.users[0].name", message: "user names are 1 to 128"),
        SubmissionConfigCase(name: "duplicate user",
                             smtp: "auth_allow_plaintext_loopback: true\nusers:\n  - { name: app, password_hash: \"\(userHash)\" }\n  - { name: app, password_hash: \"\(userHash)\" }",
                             key: "smtp.users[1].name", message: "duplicate user \"app\""),
        SubmissionConfigCase(name: "bad boolean", smtp: "auth_allow_plaintext_loopback: maybe",
                             key: "smtp.auth_allow_plaintext_loopback", message: "expected true or false"),
        SubmissionConfigCase(name: "zero connections", smtp: "max_connections: 0", key: "smtp.max_connections", message: "out of range"),
        SubmissionConfigCase(name: "zero command timeout", smtp: "command_timeout: 0s", key: "smtp.command_timeout", message: "must be greater than zero"),
        SubmissionConfigCase(name: "unknown smtp key", smtp: "starttls: true", key: "smtp.starttls", message: "unknown key"),
    ]

    @Test("smtp submission keys are validated with file, line and key", arguments: submissionErrors)
    func submissionErrors(_ c: SubmissionConfigCase) throws {
        let error = try #require(Self.configError(Self.withSMTP(c.smtp)))
        #expect(error.key == c.key)
        #expect(error.message.contains(c.message), "\(error)")
        #expect(error.line != nil)
    }

    @Test("the repository's cluster.yml stays loopback-only: relay only from loopback, no AUTH, no TLS needed")
    func repositoryConfigLoopbackOnly() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let c = try ClusterConfig.load(path: root.appendingPathComponent("cluster.yml").path)
        #expect(c.smtp.listen.allSatisfy { SMTPSettings.isLoopback($0.host) })
        #expect(c.smtp.relayNetworks.allSatisfy { $0.description.hasPrefix("127.") || $0.description.hasPrefix("::1") })
        #expect(c.smtp.users.isEmpty || c.smtp.tls != nil || c.smtp.authAllowPlaintextLoopback)
        #expect(SMTPSettings.isLoopback("127.0.0.1") && SMTPSettings.isLoopback("::1") && SMTPSettings.isLoopback("::ffff:127.0.0.5"))
        #expect(!SMTPSettings.isLoopback("10.0.0.1") && !SMTPSettings.isLoopback("::2") && !SMTPSettings.isLoopback("127.0.0"))
    }
}
