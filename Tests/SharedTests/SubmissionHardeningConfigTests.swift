import Foundation
import Testing
@testable import HatoConfig
@testable import SMTPCore

/// `smtp.queue_min_free`, `smtp.postmaster` and its rate limit (SubmissionSettings.swift).
extension ConfigTests {
    @Test("queue_min_free and postmaster defaults: 1 GiB or 5 %, no postmaster, 10 per hour")
    func hardeningDefaults() throws {
        let s = try Self.parse(Self.base).smtp
        #expect(s.queueMinFree == .default)
        #expect(s.queueMinFree.threshold(fileSystemSize: 100 << 30) == 1 << 30, "5 % of 100 GiB is 5 GiB: 1 GiB is smaller")
        #expect(s.queueMinFree.threshold(fileSystemSize: 10 << 30) == 512 << 20, "5 % of 10 GiB is 512 MiB: smaller than 1 GiB")
        #expect(s.queueMinFree.threshold(fileSystemSize: 24 << 20) == 1_258_292, "5 % of 24 MiB, rounded up")
        #expect(s.postmaster == nil)
        #expect(s.postmasterRateLimit == 10)
        #expect(s.postmasterRateWindow == 3600)
    }

    @Test("queue_min_free as a size, a percentage or 0; postmaster and its rate limit")
    func hardeningKeys() throws {
        func minFree(_ text: String) throws -> QueueMinFree {
            try Self.parse(Self.withSMTP("queue_min_free: \(text)")).smtp.queueMinFree
        }
        #expect(try minFree("512MiB") == QueueMinFree(bytes: 512 << 20, percent: nil))
        #expect(try minFree("512MiB").threshold(fileSystemSize: 1 << 40) == 512 << 20)
        #expect(try minFree("5%") == QueueMinFree(bytes: nil, percent: 5))
        #expect(try minFree("2.5%").threshold(fileSystemSize: 1000) == 25)
        #expect(try minFree("0").isDisabled)
        #expect(try minFree("0").threshold(fileSystemSize: 1 << 40) == 0)
        #expect(try minFree("0%").isDisabled)
        #expect(try minFree("\"16 MiB\"") == QueueMinFree(bytes: 16 << 20, percent: nil))
        #expect(QueueMinFree.default.description == "1073741824 bytes or 5%, whichever is smaller")
        let s = try Self.parse(Self.withSMTP("""
            postmaster: ops@example.com
            postmaster_rate_limit: 3
            postmaster_rate_window: 10m
            """)).smtp
        #expect(s.postmaster == Mailbox(localPart: "ops", domain: "example.com"))
        #expect(s.postmasterRateLimit == 3)
        #expect(s.postmasterRateWindow == 600)
    }

    static let hardeningErrors: [SubmissionConfigCase] = [
        SubmissionConfigCase(name: "queue_min_free: a negative size", smtp: "queue_min_free: -1MiB",
                             key: "smtp.queue_min_free", message: "must not be negative"),
        SubmissionConfigCase(name: "queue_min_free: an unknown unit", smtp: "queue_min_free: 5TB",
                             key: "smtp.queue_min_free", message: "unknown unit"),
        SubmissionConfigCase(name: "queue_min_free: 100 %", smtp: "queue_min_free: 100%",
                             key: "smtp.queue_min_free", message: "out of range"),
        SubmissionConfigCase(name: "queue_min_free: a malformed percentage", smtp: "queue_min_free: \"x%\"",
                             key: "smtp.queue_min_free", message: "invalid percentage"),
        SubmissionConfigCase(name: "postmaster: not a mailbox", smtp: "postmaster: ops",
                             key: "smtp.postmaster", message: "is not a mailbox"),
        SubmissionConfigCase(name: "postmaster: this server's own postmaster", smtp: "postmaster: Postmaster@RELAY.hato.test",
                             key: "smtp.postmaster", message: "would loop"),
        SubmissionConfigCase(name: "postmaster_rate_limit: 0", smtp: "postmaster_rate_limit: 0",
                             key: "smtp.postmaster_rate_limit", message: "out of range"),
        SubmissionConfigCase(name: "postmaster_rate_window: 0s", smtp: "postmaster_rate_window: 0s",
                             key: "smtp.postmaster_rate_window", message: "must be greater than zero"),
    ]

    @Test("queue_min_free and postmaster keys are validated with file, line and key", arguments: hardeningErrors)
    func hardeningErrors(_ c: SubmissionConfigCase) throws {
        let error = try #require(Self.configError(Self.withSMTP(c.smtp)))
        #expect(error.key == c.key)
        #expect(error.message.contains(c.message), "\(error)")
        #expect(error.line != nil)
    }
}
