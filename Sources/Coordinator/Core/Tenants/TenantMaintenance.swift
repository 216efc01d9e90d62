import Foundation
import HatoSupport

/// The tenant layer's background work on a coordinator (issue 16), one thread:
/// - every `interval` (default 5 s): records API keys' last use (`TenantDirectory.flushKeyUse`);
///   on the leader, holds the queued and deferred mail of suspended tenants — mail that was in
///   flight at the suspension and came back deferred, or that another coordinator accepted
///   before its copy of the tables showed the suspension;
/// - every hour: deletes tenant events older than `eventRetention`, idempotency records older
///   than `idempotencyTTL`, and the counts of past months (`TenantStore.purgeTenantData`).
public final class TenantMaintenance: Sendable {
    private let store: any QueueStore
    private let directory: TenantDirectory
    private let isLeader: @Sendable () -> Bool
    private let clock: any WallClock
    private let interval: Duration
    /// Seconds tenant events are kept.
    public let eventRetention: Double
    /// Seconds idempotency records are kept.
    public let idempotencyTTL: Double
    private let loop = Locked<BackgroundLoop?>(nil)
    private let lastPurge = Locked<Date?>(nil)
    private let log = Logger(label: "coordinator.tenants")

    /// - Parameters:
    ///   - isLeader: whether this coordinator leads now (holds are the leader's work).
    ///   - eventRetention: seconds (default 30 days).
    ///   - idempotencyTTL: seconds (default 24 h).
    ///   - interval: between sweeps (default 5 s).
    public init(store: any QueueStore, directory: TenantDirectory, isLeader: @escaping @Sendable () -> Bool, clock: any WallClock = SystemClock(),
                eventRetention: Double = 30 * 86400, idempotencyTTL: Double = 86400, interval: Duration = .seconds(5)) {
        self.store = store; self.directory = directory; self.isLeader = isLeader; self.clock = clock
        self.eventRetention = eventRetention; self.idempotencyTTL = idempotencyTTL; self.interval = interval
    }

    /// Starts the thread.
    public func start() {
        let interval = self.interval
        let l = BackgroundLoop(name: "hato-tenants") { [weak self] in
            self?.runOnce()
            return interval
        }
        loop.withLock { $0 = l }
        l.start()
    }

    /// Stops the thread (and records key use one last time).
    public func stop() {
        _ = loop.withLock { $0 }?.stop(waiting: true)
        directory.flushKeyUse()
    }

    /// One round of the work above.
    /// - Returns: recipients held by this round.
    @discardableResult
    public func runOnce() -> Int {
        directory.flushKeyUse()
        guard isLeader() else { return 0 }
        var held = 0
        for tenant in directory.rules.tenants.values where tenant.state == .suspended {
            do {
                let r = try store.applyQueueAction(.hold, to: RecipientSelector(states: [.queued, .deferred], tenant: tenant.name),
                                                   by: "hato", target: "tenant \(tenant.name)", note: tenant.stateReason, now: { clock.now() })
                if r.changed > 0 {
                    held += r.changed
                    log.info("held mail of a suspended tenant", ["tenant": tenant.name, "recipients": "\(r.changed)"])
                }
            } catch {
                log.warning("cannot hold a suspended tenant's mail", ["tenant": tenant.name, "error": "\(error)"])
            }
        }
        let now = clock.now()
        if lastPurge.withLock({ $0.map { now.timeIntervalSince($0) >= 3600 } ?? true }) {
            lastPurge.withLock { $0 = now }
            do {
                let n = try store.purgeTenantData(eventsBefore: now.addingTimeInterval(-eventRetention),
                                                  idempotencyBefore: now.addingTimeInterval(-idempotencyTTL), now: now)
                if n > 0 { log.info("old tenant events, idempotency records and counts removed", ["rows": "\(n)"]) }
            } catch {
                log.warning("cannot purge old tenant data", ["error": "\(error)"])
            }
        }
        return held
    }
}
