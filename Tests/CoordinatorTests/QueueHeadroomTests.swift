import Foundation
import Testing
@testable import HatoConfig
@testable import HatoCoordinator
@testable import HatoCrypto
@testable import HatoIO
@testable import HatoSupport
@testable import SMTPCore

/// A file system and a monotonic clock the tests set by hand.
private final class FakeDisk: @unchecked Sendable {
    private let lock = NSLock()
    private var space: FileSystemSpace
    private var probes = 0
    private var seconds: TimeInterval = 1000
    var failing = false

    init(available: Int, total: Int) { space = FileSystemSpace(available: available, total: total) }

    func set(available: Int) { lock.withLock { space.available = available } }
    func advance(_ s: TimeInterval) { lock.withLock { seconds += s } }
    var now: TimeInterval { lock.withLock { seconds } }
    var probeCount: Int { lock.withLock { probes } }

    func probe(_ path: String) throws -> FileSystemSpace {
        try lock.withLock {
            probes += 1
            if failing { throw POSIXError(.EIO) }
            return space
        }
    }

    func headroom(_ minFree: QueueMinFree) -> QueueHeadroom {
        QueueHeadroom(directory: "/queue", minFree: minFree, monotonicNow: { self.now }, probe: { try self.probe($0) })
    }
}

private let mib = 1 << 20

@Suite("Queue disk headroom (smtp.queue_min_free) and the submission guards")
struct QueueHeadroomTests {

    @Test("the gate refuses below the minimum plus the declared SIZE, and says when an episode starts and ends")
    func gateDecisions() {
        var gate = QueueHeadroomGate(minFree: QueueMinFree(bytes: 16 * mib, percent: nil))
        #expect(gate.admit(declaredSize: nil, now: 0) == (true, nil), "no measurement yet: accept")
        #expect(gate.record(FileSystemSpace(available: 20 * mib, total: 24 * mib), now: 0) == nil)
        #expect(gate.admit(declaredSize: nil, now: 0) == (true, nil))
        #expect(gate.admit(declaredSize: 4 * mib, now: 0) == (true, nil), "exactly the minimum is left")
        let sized = gate.admit(declaredSize: 4 * mib + 1, now: 0)
        #expect(!sized.accept)
        #expect(sized.notice == .refusedForSize(free: 20 * mib, minimum: 16 * mib, refused: 1))
        #expect(!gate.refusing, "a SIZE refusal is no episode")
        #expect(gate.record(FileSystemSpace(available: 16 * mib - 1, total: 24 * mib), now: 1)
                == .refusing(free: 16 * mib - 1, minimum: 16 * mib))
        #expect(gate.refusing)
        #expect(gate.admit(declaredSize: nil, now: 1) == (false, nil), "the episode's first line was just written")
        #expect(gate.admit(declaredSize: nil, now: 30) == (false, nil))
        #expect(gate.admit(declaredSize: nil, now: 61) == (false, .stillRefusing(free: 16 * mib - 1, minimum: 16 * mib, refused: 3)))
        #expect(gate.admit(declaredSize: nil, now: 62) == (false, nil))
        #expect(gate.record(FileSystemSpace(available: 17 * mib, total: 24 * mib), now: 63)
                == .resumed(free: 17 * mib, minimum: 16 * mib, refused: 4))
        #expect(gate.admit(declaredSize: nil, now: 63) == (true, nil))
        #expect(gate.refusals == 5)
    }

    @Test("mail queued between two measurements counts against the free space, so a burst stops near the minimum")
    func gateCountsQueuedMail() {
        var gate = QueueHeadroomGate(minFree: QueueMinFree(bytes: 16 * mib, percent: nil))
        _ = gate.record(FileSystemSpace(available: 20 * mib, total: 24 * mib), now: 0)
        gate.noteWritten(16 << 10)
        #expect(gate.estimatedFree == 20 * mib - 64 * 1024,
                "content kept in its row counts twice (WAL and database file) plus the commit's pages")
        gate.noteWritten(mib + mib / 2 - QueueHeadroomGate.commitOverhead - 100)
        #expect(gate.estimatedFree == 20 * mib - 64 * 1024 - (mib + mib / 2),
                "spooled content (32 KiB and more) counts once, in whole 4 KiB blocks, plus the commit's pages")
        #expect(gate.admit(declaredSize: nil, now: 0.1) == (true, nil))
        gate.noteWritten(3 * mib - QueueHeadroomGate.commitOverhead)
        #expect(gate.admit(declaredSize: nil, now: 0.2) == (false, .refusing(free: 20 * mib - 64 * 1024 - (mib + mib / 2) - 3 * mib, minimum: 16 * mib)))
        #expect(gate.refusing)
        // The next measurement replaces the estimate (here the space was freed meanwhile).
        #expect(gate.record(FileSystemSpace(available: 20 * mib, total: 24 * mib), now: 1)
                == .resumed(free: 20 * mib, minimum: 16 * mib, refused: 1))
        #expect(gate.writtenSinceSample == 0)
        #expect(gate.admit(declaredSize: nil, now: 1) == (true, nil))
    }

    @Test("the gate measures at most once per second, and at once after SQLITE_FULL")
    func gateCaching() {
        var gate = QueueHeadroomGate(minFree: .default, recheckInterval: 1)
        #expect(gate.needsSample(now: 5))
        _ = gate.record(FileSystemSpace(available: 1 << 40, total: 1 << 41), now: 5)
        #expect(!gate.needsSample(now: 5.5))
        #expect(gate.needsSample(now: 6))
        _ = gate.record(FileSystemSpace(available: 1 << 40, total: 1 << 41), now: 6)
        gate.markStale()
        #expect(gate.needsSample(now: 6.1))
    }

    @Test("percentages and the default: 5 % of a small file system, 1 GiB of a large one; 0 never refuses")
    func gateThresholds() {
        var percent = QueueHeadroomGate(minFree: QueueMinFree(bytes: nil, percent: 10))
        _ = percent.record(FileSystemSpace(available: 9, total: 100), now: 0)
        #expect(percent.refusing)
        var byDefault = QueueHeadroomGate(minFree: .default)
        _ = byDefault.record(FileSystemSpace(available: (1 << 30) + 1, total: 1 << 40), now: 0)
        #expect(!byDefault.refusing, "5 % of 1 TiB is 51 GiB, but 1 GiB is smaller")
        #expect(byDefault.admit(declaredSize: nil, now: 0).accept)
        var off = QueueHeadroomGate(minFree: .disabled)
        #expect(off.record(FileSystemSpace(available: 0, total: 1 << 30), now: 0) == nil)
        #expect(off.admit(declaredSize: 1 << 20, now: 0).accept)
    }

    @Test("QueueHeadroom: statvfs is read at most once a second, again after SQLITE_FULL; refusals counted")
    func headroomProbing() {
        let disk = FakeDisk(available: 20 * mib, total: 24 * mib)
        let headroom = disk.headroom(QueueMinFree(bytes: 16 * mib, percent: nil))
        #expect(headroom.admit(declaredSize: nil))
        #expect(disk.probeCount == 1)
        disk.set(available: 10 * mib)
        #expect(headroom.admit(declaredSize: nil), "the measurement from less than a second ago is used")
        #expect(disk.probeCount == 1)
        disk.advance(1)
        #expect(!headroom.admit(declaredSize: nil))
        #expect(disk.probeCount == 2)
        disk.set(available: 20 * mib)
        headroom.noteStorageFull()
        #expect(disk.probeCount == 3, "SQLITE_FULL measures at once")
        #expect(headroom.admit(declaredSize: nil))
        #expect(headroom.freeBytes() == 20 * mib)
        #expect(headroom.refusals == 1)
        // A failing statvfs keeps the last measurement.
        disk.failing = true
        disk.advance(2)
        #expect(headroom.admit(declaredSize: nil))
        #expect(headroom.freeBytes() == 20 * mib)
        // Disabled: never measured for MAIL.
        let off = FakeDisk(available: 0, total: 24 * mib)
        #expect(off.headroom(.disabled).admit(declaredSize: 1 << 30))
        #expect(off.probeCount == 0)
    }

    @Test("FileSystemSpace.of measures a real directory")
    func realStatvfs() throws {
        let space = try FileSystemSpace.of(path: NSTemporaryDirectory())
        #expect(space.total > 0)
        #expect(space.available >= 0 && space.available <= space.total)
        #expect(throws: (any Error).self) { try FileSystemSpace.of(path: "/nonexistent-\(Identifier.random(bytes: 4))") }
    }

    static func config(_ smtpExtra: String = "") throws -> ClusterConfig {
        try ClusterConfig.parse("""
            cluster: { name: t, secret: "0123456789abcdef0123" }
            coordinator: { listen: 127.0.0.1:7601, admin_listen: 127.0.0.1:7680, admin_token: "token-0123456789", data_dir: /tmp/hato-guards }
            smtp:
              listen: [127.0.0.1:0]
              hostname: relay.test
              queue_min_free: 16MiB
              postmaster: ops@example.com
              postmaster_rate_limit: 2
              postmaster_rate_window: 1h
            \(smtpExtra)
            nodes: [ { id: node-a, data_dir: /tmp/hato-guards-a } ]
            pools: [ { name: p } ]
            ips: [ { address: 127.0.0.10, helo: mta.test, pool: p } ]
            routing: { default_pool: p }
            """, path: "/tmp/hato-guards.yml")
    }

    @Test("guards: 452 4.3.1 at MAIL below the minimum, SQLITE_FULL is 452 4.3.1, other errors 451; refusals in the metric")
    func guardsStorage() throws {
        let disk = FakeDisk(available: 10 * mib, total: 24 * mib)
        let metrics = CoordinatorMetrics()
        let guards = SubmissionGuards(config: try Self.config(), clock: ManualClock(), metrics: metrics,
                                      headroom: disk.headroom(QueueMinFree(bytes: 16 * mib, percent: nil)))
        #expect(guards.admitMail(declaredSize: nil) == SMTPReply(452, "4.3.1", "Insufficient system storage"))
        #expect(guards.storeFailure(for: SQLiteError(code: 13, message: "database or disk is full")) == .insufficientStorage)
        #expect(guards.storeFailure(for: SQLiteError(code: 5, message: "database is locked")) == .temporary)
        #expect(guards.storeFailure(for: POSIXError(.EIO)) == .temporary)
        let text = metrics.registry.render()
        #expect(text.contains("hato_smtp_refusals_total{reason=\"queue_min_free\"} 1"))
        #expect(text.contains("hato_smtp_refusals_total{reason=\"storage_full\"} 1"))
        #expect(text.contains("hato_queue_free_bytes \(10 * mib)"))
    }

    @Test("guards: postmaster rate limit per client address and window; 452 4.7.1 over it")
    func guardsPostmaster() throws {
        let clock = ManualClock()
        let metrics = CoordinatorMetrics()
        let guards = SubmissionGuards(config: try Self.config(), clock: clock, metrics: metrics,
                                      headroom: FakeDisk(available: 1 << 30, total: 1 << 31).headroom(.disabled))
        #expect(guards.admitPostmaster(client: "192.0.2.1") == nil)
        #expect(guards.admitPostmaster(client: "192.0.2.1") == nil)
        #expect(guards.admitPostmaster(client: "192.0.2.1") == SMTPReply(452, "4.7.1", "Error: too much mail to postmaster from this client, try again later"))
        #expect(guards.admitPostmaster(client: "192.0.2.2") == nil, "another client has its own count")
        clock.advance(3601)
        #expect(guards.admitPostmaster(client: "192.0.2.1") == nil, "the window moved on")
        #expect(metrics.registry.render().contains("hato_smtp_refusals_total{reason=\"postmaster_rate_limit\"} 1"))
        // Installed on a session of a client that may not relay.
        var session = SMTPServerSession(policy: SMTPServerPolicy(hostname: "relay.test", postmaster: Mailbox(localPart: "ops", domain: "example.com")),
                                        peer: SocketAddress(host: "192.0.2.9", port: 1), relayPermitted: false)
        guards.install(on: &session, peer: SocketAddress(host: "192.0.2.9", port: 1))
        _ = session.start()
        let replies = session.receive(Array("EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<postmaster>\r\nRCPT TO:<postmaster>\r\nRCPT TO:<postmaster>\r\n".utf8)[...])
        let text = replies.compactMap { if case .send(let b) = $0 { return String(decoding: b, as: UTF8.self) } else { return nil } }.joined()
        #expect(text.hasSuffix("250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n452 4.7.1 Error: too much mail to postmaster from this client, try again later\r\n"))
    }

    @Test("X-Original-To only when every recipient was rewritten; distinct addresses")
    func originalRecipientField() {
        let ops = Mailbox(localPart: "ops", domain: "example.com")
        let pm = Mailbox(localPart: "postmaster", domain: "relay.test")
        let pmUpper = Mailbox(localPart: "PostMaster", domain: "RELAY.test")
        func message(_ recipients: [Mailbox], _ originals: [Mailbox?]) -> SubmittedMessage {
            SubmittedMessage(heloName: "c.test", peer: SocketAddress(host: "192.0.2.1", port: 1), reversePath: .null, recipients: recipients,
                             body: [], bodyType: .sevenBit, declaredSize: nil, esmtp: true, originalRecipients: originals)
        }
        #expect(String(decoding: SubmissionGuards.originalRecipientField(message([ops, ops], [pm, pmUpper])), as: UTF8.self)
                == "X-Original-To: postmaster@relay.test\r\n")
        #expect(SubmissionGuards.originalRecipientField(message([ops, pm], [pm, nil])).isEmpty)
        #expect(SubmissionGuards.originalRecipientField(message([pm], [nil])).isEmpty)
    }
}
