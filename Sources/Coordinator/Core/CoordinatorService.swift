import Foundation
import HatoShared

/// The running coordinator: queue, cluster hub, SMTP listener and admin API wired together.
public final class CoordinatorService: Sendable {
    /// The configuration the process started with (the hub holds the one in force after reloads).
    public let config: ClusterConfig
    public let store: QueueStore
    public let hub: ClusterHub
    public let submission: SubmissionServer
    public let admin: HTTPServer
    /// Delivery log, metrics, webhooks, DSNs and suppression (Reporting/).
    public let reporting: ReportingService
    private let log = Logger(label: "coordinator")
    private let reloadLock = NSLock()

    /// Opens the queue and binds every listener.
    /// - Throws: `ConfigError` when `admin_token_file` cannot be read; `TLSError` when a TLS
    ///   certificate or key (`cluster.tls`, `admin_tls`) cannot be loaded; `SQLiteError` or `SocketError`.
    public init(config: ClusterConfig) throws {
        self.config = config
        let token = try config.coordinator.requireAdminToken()
        let adminTLS = try config.coordinator.adminTLS.map {
            try TLSContext.server(certificateChainPath: $0.pair.certificatePath, privateKeyPath: $0.pair.privateKeyPath)
        }
        store = try QueueStore(directory: config.coordinator.dataDir)
        let hub = try ClusterHub(config: config, store: store)
        self.hub = hub
        let reporting = try ReportingService(config: config, store: store, nodes: { try hub.nodeStatuses() },
                                             cluster: { hub.gauges() }, onEnqueued: { hub.wake() })
        self.reporting = reporting
        hub.setResultObserver { reporting.noteResult($0) }
        submission = SubmissionServer(config: config, store: store, metrics: reporting.metrics, onAccepted: { reporting.wake(); hub.dispatchNewMail() })
        let path = config.sourcePath
        let lock = reloadLock
        let api = AdminAPI(token: token, store: store, hub: hub, reload: {
            try lock.withLock { try hub.reload(try ClusterConfig.load(path: path)) }
        })
        admin = try HTTPServer(address: config.coordinator.adminListen, tls: adminTLS) { reporting.api.handle($0) ?? api.handle($0) }
    }

    /// Re-reads cluster.yml and applies it; an invalid file is refused and the running config stays.
    /// - Throws: `ConfigError`.
    @discardableResult
    public func reload() throws -> ReloadReport {
        try reloadLock.withLock { try hub.reload(try ClusterConfig.load(path: config.sourcePath)) }
    }

    /// Starts all listeners and background loops.
    /// - Throws: `SocketError`.
    public func start() throws {
        let leaseHold = try store.beginRun(bootID: QueueStore.currentBootID(), now: Date())
        try store.startBackgroundCheckpoints()
        let leased = try store.allLeases()
        if !leased.isEmpty {
            log.info("leases from before the restart will be reconciled or expire", ["leases": "\(leased.count)"])
        }
        reporting.start()
        try hub.start(leaseHoldUntil: leaseHold)
        try submission.start()
        admin.start()
        log.info("coordinator started", ["cluster": config.cluster.name, "admin": (admin.isTLS ? "https://" : "http://") + admin.address.description,
                                         "cluster_tls": config.cluster.tls == nil ? "off" : (config.cluster.tls?.caPath == nil ? "on" : "mutual")])
    }

    /// Stops for good (SIGTERM): closes the listeners and node connections, then marks the
    /// queue cleanly stopped with one synced commit (`QueueStore.endRun`). The queue takes no
    /// writes afterwards; the caller exits.
    public func stopForExit() {
        submission.stop()
        hub.stop()
        do { try store.endRun() } catch { log.error("clean-stop mark not written", ["error": "\(error)"]) }
        log.info("coordinator stopped")
    }
}
