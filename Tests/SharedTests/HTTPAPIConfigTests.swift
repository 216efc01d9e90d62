import Foundation
import Testing
@testable import HatoConfig
@testable import HatoIO

@Suite("Config: http_api")
struct HTTPAPIConfigTests {
    @Test("absent: no listener; present: defaults (35MiB, smtp.max_recipients, 24h, 30d) and each key read")
    func defaultsAndKeys() throws {
        #expect(try ConfigTests.parse(ConfigTests.base).httpAPI == nil)
        let plain = try #require(try ConfigTests.parse(ConfigTests.base + "http_api: { listen: [127.0.0.1:8025] }\n").httpAPI)
        #expect(plain.listen == [SocketAddress(host: "127.0.0.1", port: 8025)])
        #expect(plain.maxRequestSize == 35 * 1024 * 1024)
        #expect(plain.maxRecipients == nil && plain.tls == nil)
        #expect(plain.idempotencyTTL == 86_400 && plain.eventRetention == 30 * 86_400)
        let full = try #require(try ConfigTests.parse(ConfigTests.base + """
            http_api:
              listen: [127.0.0.1:8025, "[::1]:8025"]
              tls: { certificate: /etc/hato/api.crt, private_key: /etc/hato/api.key }
              max_request_size: 10MiB
              max_recipients: 50
              idempotency_ttl: 2h
              event_retention: 7d

            """).httpAPI)
        #expect(full.listen.count == 2)
        #expect(full.tls?.certificatePath == "/etc/hato/api.crt")
        #expect(full.maxRequestSize == 10 * 1024 * 1024 && full.maxRecipients == 50)
        #expect(full.idempotencyTTL == 7200 && full.eventRetention == 7 * 86_400)
    }

    @Test("an unknown key, a missing listen, an address taken by SMTP and a too-short TTL name file, line and key")
    func errors() throws {
        let lines = ConfigTests.base.split(separator: "\n", omittingEmptySubsequences: false).count
        let unknown = ConfigTests.configError(ConfigTests.base + "http_api:\n  listen: [127.0.0.1:8025]\n  max_body: 1MiB\n")
        #expect(unknown?.key == "http_api.max_body")
        #expect(unknown?.line == lines + 2)
        #expect(unknown?.message.hasPrefix("unknown key (allowed: listen, tls, max_request_size") == true)
        #expect(ConfigTests.configError(ConfigTests.base + "http_api: { max_recipients: 5 }\n")?.key == "http_api.listen")
        let taken = ConfigTests.configError(ConfigTests.base + "http_api: { listen: [\(try! ConfigTests.parse(ConfigTests.base).smtp.listen[0])] }\n")
        #expect(taken?.message.contains("already used by the coordinator") == true, "\(String(describing: taken))")
        let ttl = ConfigTests.configError(ConfigTests.base + "http_api: { listen: [127.0.0.1:8025], idempotency_ttl: 5s }\n")
        #expect(ttl?.key == "http_api.idempotency_ttl" && ttl?.message == "must be at least 60s")
        // A replay answers with a message id: the message must outlive the key.
        let longer = ConfigTests.configError(ConfigTests.base + "http_api: { listen: [127.0.0.1:8025], idempotency_ttl: 31d }\n")
        #expect(longer?.key == "http_api.idempotency_ttl" && longer?.message.hasPrefix("must not be longer than coordinator.message_retention (2592000s)") == true,
                "\(String(describing: longer))")
        #expect(try ConfigTests.parse(ConfigTests.base + "http_api: { listen: [127.0.0.1:8025], idempotency_ttl: 30d }\n").httpAPI?.idempotencyTTL == 30 * 86_400)
    }

    @Test("a changed http_api needs a coordinator restart and stays in force until then")
    func reload() throws {
        let old = try ConfigTests.parse(ConfigTests.base + "http_api: { listen: [127.0.0.1:8025] }\n")
        let new = try ConfigTests.parse(ConfigTests.base + "http_api: { listen: [127.0.0.1:8026] }\n")
        let r = ConfigReload(from: old, to: new)
        #expect(r.changes.map(\.key) == ["http_api"])
        #expect(r.changes.first?.restart == .coordinator && r.changes.first?.live == false)
        #expect(r.coordinatorConfig.httpAPI == old.httpAPI)
    }
}
