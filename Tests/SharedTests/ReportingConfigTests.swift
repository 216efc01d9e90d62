import Foundation
import Testing
@testable import HatoConfig
@testable import HatoIO

/// The `dsn`, `suppression`, `webhooks`, `log` sections and `nodes[].metrics_listen`.
@Suite("Reporting configuration")
struct ReportingConfigTests {
    @Test("defaults when the sections are absent")
    func defaults() throws {
        let c = try ConfigTests.parse(ConfigTests.base)
        #expect(c.dsn == DSNSettings(delayWarning: 4 * 3600, maxReturnedSize: 1 << 20))
        #expect(c.suppression == SuppressionSettings(scope: .global, mode: .markSuppressed, expireAfter: 90 * 86_400, autoAdd: true))
        #expect(c.webhooks.isEmpty)
        #expect(c.log == DeliveryLogSettings(maxFileSize: 64 << 20, keepFiles: 5))
        #expect(c.nodes.allSatisfy { $0.metricsListen == nil })
    }

    @Test("explicit sections parse, flow and block style")
    func explicit() throws {
        let text = ConfigTests.base.replacingOccurrences(of: "  - id: node-b\n", with: "  - id: node-b\n    metrics_listen: 127.0.0.1:9102\n") + """
            dsn: { delay_warning: 30m, max_returned_size: 2MiB }
            suppression: { scope: sender_domain, mode: reject_at_rcpt, expire_after: never, auto_add: no }
            log: { max_file_size: 1MiB, keep_files: 3 }
            webhooks:
              - url: "http://127.0.0.1:8080/hato"
                events: [delivered, failed, dsn-sent]
                secret: "0123456789abcdef-hook"
                initial_backoff: 1s
                max_backoff: 30s
                max_age: 2h
                batch_size: 10
              - { url: "https://hooks.example.com/x", secret: "another-secret-0123456789", events: [all] }
            """
        let c = try ConfigTests.parse(text)
        #expect(c.dsn.delayWarning == 1800)
        #expect(c.dsn.maxReturnedSize == 2 << 20)
        #expect(c.suppression == SuppressionSettings(scope: .senderDomain, mode: .rejectAtRcpt, expireAfter: nil, autoAdd: false))
        #expect(c.log == DeliveryLogSettings(maxFileSize: 1 << 20, keepFiles: 3))
        #expect(c.node(id: "node-b")?.metricsListen == SocketAddress(host: "127.0.0.1", port: 9102))
        #expect(c.node(id: "node-a")?.metricsListen == nil)
        #expect(c.webhooks.count == 2)
        #expect(c.webhooks[0] == WebhookSettings(url: "http://127.0.0.1:8080/hato", events: [.delivered, .failed, .dsnSent],
                                                 secret: "0123456789abcdef-hook", initialBackoff: 1, maxBackoff: 30, maxAge: 7200, batchSize: 10))
        #expect(c.webhooks[1].events == Set(DeliveryEventKind.allCases))
        #expect(c.webhooks[1].timeout == 10)
    }

    @Test("dsn.delay_warning: off disables delay warnings")
    func delayOff() throws {
        let c = try ConfigTests.parse(ConfigTests.base + "dsn: { delay_warning: off }\n")
        #expect(c.dsn.delayWarning == nil)
    }

    @Test("bad values name file, line and key", arguments: [
        ("suppression: { scope: everyone }\n", "suppression.scope", "expected global or sender_domain"),
        ("suppression: { mode: bounce }\n", "suppression.mode", "expected reject_at_rcpt or mark_suppressed"),
        ("suppression: { expire_after: 5 }\n", "suppression.expire_after", "missing unit"),
        ("dsn: { delay_warning: soon }\n", "dsn.delay_warning", "invalid duration"),
        ("log: { keep_files: 0 }\n", "log.keep_files", "out of range"),
        ("log: { max_file_size: 10 }\n", "log.max_file_size", "too small"),
        ("log: { rotate: daily }\n", "log.rotate", "unknown key"),
        ("webhooks:\n  - { url: \"ftp://x.test/\", secret: \"0123456789abcdef\" }\n", "webhooks[0].url", "http:// or https://"),
        ("webhooks:\n  - { url: \"http://x.test/\" }\n", "webhooks[0].secret", "required key is missing"),
        ("webhooks:\n  - { url: \"http://x.test/\", secret: short }\n", "webhooks[0].secret", "at least 16 characters"),
        ("webhooks:\n  - { url: \"http://x.test/\", secret: \"0123456789abcdef\", events: [bounced] }\n", "webhooks[0].events[0]", "unknown event \"bounced\""),
        ("webhooks:\n  - { url: \"http://x.test/\", secret: \"0123456789abcdef\", events: [] }\n", "webhooks[0].events", "at least one event"),
        ("webhooks:\n  - { url: \"http://x.test/\", secret: \"0123456789abcdef\", initial_backoff: 1m, max_backoff: 10s }\n", "webhooks[0].max_backoff", "not be shorter"),
        ("webhooks:\n  - { url: \"http://x.test/\", secret: \"0123456789abcdef\" }\n  - { url: \"http://x.test/\", secret: \"0123456789abcdef\" }\n",
         "webhooks[1].url", "duplicate webhook URL"),
    ])
    func badValues(_ yaml: String, _ key: String, _ message: String) throws {
        let lines = ConfigTests.base.components(separatedBy: "\n").count
        guard let e = ConfigTests.configError(ConfigTests.base + yaml) else { return }
        #expect(e.key == key)
        #expect(e.message.contains(message), "\(e.message)")
        #expect((e.line ?? 0) >= lines, "the line points into the appended section")
        #expect(e.file == "test.yml")
    }

    @Test("a bad nodes[].metrics_listen is an error at that key")
    func badMetricsListen() throws {
        let text = ConfigTests.base.replacingOccurrences(of: "  - id: node-b\n", with: "  - id: node-b\n    metrics_listen: localhost\n")
        guard let e = ConfigTests.configError(text) else { return }
        #expect(e.key == "nodes[1].metrics_listen")
    }

    @Test("a webhook secret_file is read relative to the configuration")
    func webhookSecretFile() throws {
        try ConfigTests.withTemporaryDirectory { dir in
            try "hook-secret-from-a-file-0123\n".write(toFile: dir + "/hook.secret", atomically: true, encoding: .utf8)
            let c = try ConfigTests.parse(ConfigTests.base + "webhooks:\n  - { url: \"http://x.test/h\", secret_file: hook.secret }\n",
                                          path: dir + "/cluster.yml")
            #expect(c.webhooks.first?.secret == "hook-secret-from-a-file-0123")
        }
    }
}
