import Foundation
import HatoConfig
import HatoHTTP
import HatoIO
import HatoSupport

/// The running coordinator: queue, cluster hub, SMTP listener, HTTP send API and admin API wired together.
public final class CoordinatorService: Sendable {
    /// The configuration the process started with (the hub holds the one in force after reloads).
    public let config: ClusterConfig
    public let store: any QueueStore
    public let hub: ClusterHub
    public let submission: SubmissionServer
    public let admin: HTTPServer
    /// Delivery log, metrics, webhooks, DSNs and suppression (Reporting/).
    public let reporting: ReportingService
    /// DNS blocklist checks of the sending IPs (`reputation.dnsbl`; idle without zones).
    public let blocklists: BlocklistChecker
    /// FCrDNS/HELO checks of the sending IPs (at start, on reload, every `reputation.fcrdns_interval`).
    public let fcrdns: FCrDNSChecker
    /// With several coordinators: the election of the leader through the store (nil for one).
    public let elector: LeaderElector?
    /// This coordinator's id (`coordinators[].id`; `coordinator` for the single form).
    public let coordinatorID: String
    /// The tenant tables as submission sees them (SMTP users, API keys, domains, limits; issue 16).
    public let tenants: TenantDirectory
    /// The tenants' HTTP send API (`http_api:`), nil when not configured.
    public let httpAPI: HTTPAPIListener?
    /// Key-use records, holds of suspended tenants' mail, purges of old tenant data.
    public let tenantMaintenance: TenantMaintenance
    /// The web dashboard under `/ui/` on the admin listener (issue 17).
    public let dashboard: Dashboard
    private let log = Logger(label: "coordinator")
    private let reloadLock = NSLock()

    /// Opens the queue and binds every listener.
    ///
    /// With several coordinators (`coordinators:` with more than one entry, on PostgreSQL) this
    /// one starts as a standby: it accepts mail and answers the admin API (forwarding to the
    /// leader, `AdminForwarder`), and runs the scheduler, grants, heartbeats and the reporting
    /// outboxes only while a `LeaderElector` says it leads (issue 15).
    /// - Parameters:
    ///   - config: the configuration as this coordinator runs it (`selectingCoordinator(id)`).
    ///   - coordinatorID: this coordinator's `coordinators[].id`; required with several.
    /// - Throws: `ConfigError` when `admin_token_file` cannot be read; `ConfigValueError` for
    ///   several coordinators without an id or without PostgreSQL; `TLSError` when a TLS
    ///   certificate or key (`cluster.tls`, `admin_tls`) cannot be loaded; `SQLiteError` or
    ///   `PostgreSQLError` when the queue store (`store:`) cannot be opened; `SocketError`.
    public init(config: ClusterConfig, coordinatorID requestedID: String? = nil) throws {
        self.config = config
        let token = try config.coordinator.requireAdminToken()
        let adminTLS = try config.coordinator.adminTLS.map {
            try TLSContext.server(certificateChainPath: $0.pair.certificatePath, privateKeyPath: $0.pair.privateKeyPath)
        }
        store = try config.openQueueStore()
        let tenants = TenantDirectory(store: store)
        self.tenants = tenants
        let electorRef = Locked<LeaderElector?>(nil)
        let mode: ClusterHub.LeadershipMode
        var leadershipStore: PostgreSQLLeadershipStore? = nil
        if config.coordinators.count > 1 {
            guard let id = requestedID, config.coordinators.contains(where: { $0.id == id }) else {
                throw ConfigValueError("several coordinators are configured: pass --id (one of \(config.coordinators.map(\.id).joined(separator: ", ")))")
            }
            guard var pg = config.postgreSQLConfiguration else {
                throw ConfigValueError("several coordinators share one queue only on PostgreSQL: set store: { kind: postgresql, url: … }")
            }
            // The elector's calls block its thread: bounded well below the leadership lease, on
            // the server (statement) and on the wire (a database that hangs).
            let quarter = Duration.milliseconds(Int(config.coordinator.leadershipLease * 1000 / 4))
            pg.statementTimeout = quarter
            pg.connectTimeout = quarter
            pg.networkTimeout = quarter
            let storeID = try PostgreSQLLeadership(connection: PostgreSQLConnection(pg)).current().storeID
            leadershipStore = PostgreSQLLeadershipStore(configuration: pg)
            mode = .elected(coordinatorID: id, storeID: storeID, mayLead: { term in electorRef.snapshot?.term(at: .now) == term })
            self.coordinatorID = id
        } else {
            mode = .single
            self.coordinatorID = requestedID ?? config.coordinators.first?.id ?? "coordinator"
        }
        let hub = try ClusterHub(config: config, store: store, mode: mode)
        self.hub = hub
        // New mail's leases are planned while its commit's fsync runs (issue 19's latency).
        (store as? SQLiteQueueStore)?.observeInsertedRecipients { hub.newMailInserted($0) }
        let blocklists = BlocklistChecker(config: config) { change in
            hub.blocklistChanged(ip: change.ip, holdReason: change.holdReason, event: (change.kind, change.note), history: change.history)
        }
        self.blocklists = blocklists
        let fcrdns = FCrDNSChecker(config: { hub.currentConfig }) { change in
            hub.fcrdnsChanged(ip: change.ip, holdReason: change.holdReason, history: change.history)
        }
        self.fcrdns = fcrdns
        let reputation = ReputationAdminAPI(blocklists: blocklists, fcrdns: fcrdns, store: store, hub: hub)
        let reporting = try ReportingService(config: config, store: store, nodes: { try hub.nodeStatuses() },
                                             cluster: { hub.gauges() }, onEnqueued: { hub.wake() },
                                             waitReason: { hub.waitReason(pool: $0, domain: $1, state: $2, nextAttemptAt: $3) },
                                             tenants: tenants)
        self.reporting = reporting
        reputation.registerMetrics(reporting.metrics.registry)
        hub.setResultPreview { reporting.noteDetails($0) }
        hub.setResultObserver { reporting.noteResult($0) }
        // Complaints (any coordinator may take a report in; the leader reports each once) count in
        // the (IP, provider key) reputation signals that `reputation.rules` read (issue 18).
        reporting.reporter.observeComplaints { ip, mx, at in
            hub.recordComplaint(ip: ip, provider: hub.currentConfig.shaping.group(forMXHost: mx).name, at: at)
        }
        // http_api's retention and TTL; the defaults (30 d, 24 h) without the section.
        let apiSettings = config.httpAPI ?? HTTPAPISettings(listen: [])
        tenantMaintenance = TenantMaintenance(store: store, directory: tenants, isLeader: { hub.leader.isSelf },
                                              eventRetention: apiSettings.eventRetention, idempotencyTTL: apiSettings.idempotencyTTL)
        let submission = SubmissionServer(config: config, store: store, metrics: reporting.metrics, tenants: tenants, keepContent: { hub.keepContent($0, $1) },
                                          forgetContent: { hub.forgetContent($0) }, onAccepted: { reporting.wake(); hub.dispatchNewMail() })
        self.submission = submission
        let sendAPI = TenantHTTPAPI(config: config, store: store, tenants: tenants,
                                headroom: QueueHeadroom(directory: config.coordinator.dataDir, minFree: config.smtp.queueMinFree,
                                                        spoolThreshold: (store as? SQLiteQueueStore)?.spoolThreshold),
                                metrics: reporting.metrics, onAccepted: { reporting.wake(); hub.dispatchNewMail() })
        let httpAPI = config.httpAPI.map { HTTPAPIListener(settings: $0, api: sendAPI) }
        self.httpAPI = httpAPI
        let path = config.sourcePath
        let lock = reloadLock
        let log = Logger(label: "coordinator")
        let tenantAPI = TenantAdminAPI(store: store, directory: tenants, pools: { Set(hub.currentConfig.pools.map(\.name)) },
                                       onReleased: { hub.wake() })
        let domainAPI = DomainAdminAPI(store: store, directory: tenants, config: { hub.currentConfig }, keysChanged: {
            do { try hub.signingKeysChanged() } catch { log.warning("signing keys not sent at once; the next poll sends them", ["error": "\(error)"]) }
        })
        let api = AdminAPI(token: token, store: store, hub: hub, tenants: tenantAPI, domains: domainAPI, reputation: reputation, reload: {
            try CoordinatorService.reload(path: path, id: requestedID, lock: lock, hub: hub, submission: submission, httpAPI: httpAPI?.api, log: log)
        })
        let adminChain: @Sendable (HTTPRequest) -> HTTPResponse
        if let leadershipStore {
            reporting.setActive(false)
            let me = self.coordinatorID
            let elector = LeaderElector(id: me, timing: Leadership.Timing(lease: .milliseconds(Int(config.coordinator.leadershipLease * 1000))),
                                        store: leadershipStore) { directive in
                switch directive {
                case .becomeLeader(let term):
                    log.info("elected leader", ["coordinator": me, "term": "\(term)"])
                    hub.becomeLeader(term: term)  // with the blocklist holds the checker reported meanwhile
                    reporting.setActive(true)
                case .stepDown(let term, let reason):
                    log.warning("leadership lost", ["coordinator": me, "term": "\(term)", "reason": reason])
                    reporting.setActive(false)
                    hub.stepDown(term: term, reason: reason)
                case .leaderChanged(let leader, let term):
                    log.info("leader changed", ["leader": leader ?? "(none)", "term": "\(term)"])
                    hub.leaderChanged(leader: leader, term: term)
                case .acquire, .renew, .wake:
                    break
                }
            }
            electorRef.withLock { $0 = elector }
            self.elector = elector
            let forwarder = try AdminForwarder(config: config, coordinatorID: me, leader: { hub.leader }, localStatus: { try api.status() })
            adminChain = { req in forwarder.handle(req) ?? reporting.api.handle(req) ?? api.handle(req) }
        } else {
            elector = nil
            adminChain = { reporting.api.handle($0) ?? api.handle($0) }
        }
        // The dashboard first: its /ui/ routes use session cookies, not the bearer token; its
        // data comes from the chain below, in process (a standby forwards to the leader there).
        let dashboard = Dashboard(token: token, accounts: store, secureCookie: adminTLS != nil, maxFailures: config.smtp.authFailureLimit,
                                  failureWindow: config.smtp.authFailureWindow,
                                  data: DashboardData(token: token, admin: adminChain, activity: reporting.metrics.activity),
                                  tenantData: DashboardTenantData(store: store, token: token, admin: adminChain, activity: reporting.metrics.activity,
                                                                  config: { hub.currentConfig }),
                                  tenantUsers: { tenants.smtpUser($0) })
        self.dashboard = dashboard
        admin = try HTTPServer(address: config.coordinator.adminListen, tls: adminTLS) { req in dashboard.handle(req) ?? adminChain(req) }
    }

    /// Re-reads cluster.yml, checks it and applies it (SIGHUP, `POST /v1/reload`): see
    /// `reload(path:lock:hub:submission:log:)`.
    /// - Throws: `ConfigError`, `ConfigReloadRefused`, `AdminError.busy`.
    @discardableResult
    public func reload() throws -> ReloadReport {
        try CoordinatorService.reload(path: config.sourcePath, id: config.coordinators.isEmpty ? nil : coordinatorID, lock: reloadLock,
                                      hub: hub, submission: submission, httpAPI: httpAPI?.api, log: log)
    }

    /// One reload, under `lock`: loads the file (a `ConfigError` names file, line and key), runs
    /// the coordinator's `ConfigCheck` on it without bind tests (an error — a missing DKIM key,
    /// a TLS pair that does not match — refuses it, naming the file), then applies it: the
    /// scheduler takes the live keys (`ClusterHub.reload`, which also tells the nodes), the
    /// submission listener the routing and session settings. A refused file changes nothing.
    /// - Returns: what applied, what needs a restart of which process, each node's answer.
    /// - Throws: `ConfigError`, `ConfigReloadRefused`, `AdminError.busy`.
    static func reload(path: String, id: String?, lock: NSLock, hub: ClusterHub, submission: SubmissionServer, httpAPI: TenantHTTPAPI? = nil,
                       log: Logger) throws -> ReloadReport {
        try lock.withLock {
            let loaded: ClusterConfig
            // This coordinator's own entry of `coordinators:` (its addresses), as at start.
            do { loaded = try ClusterConfig.load(path: path).selectingCoordinator(id) } catch {
                log.error("reload refused; running configuration unchanged", ["error": "\(error)"])
                throw error
            }
            let check = ConfigCheck.coordinator(loaded, bindAddresses: false)
            guard !check.hasErrors else {
                let refused = ConfigReloadRefused(file: loaded.sourcePath, errors: check.errors)
                log.error("reload refused; running configuration unchanged", ["error": refused.description])
                throw refused
            }
            let (report, inForce) = try hub.reload(loaded)
            submission.apply(inForce)
            httpAPI?.apply(inForce)
            log.info("reload done", ["generation": "\(report.generation)", "live": report.live.joined(separator: ","),
                                     "needs_restart": report.restartRequired.joined(separator: "; "),
                                     "nodes": report.nodes.map { "\($0.node)=\($0.status.rawValue)" }.joined(separator: ",")])
            return report
        }
    }

    /// Starts all listeners and background loops.
    /// - Throws: `SocketError`.
    public func start() throws {
        let leaseHold = try store.beginRun(bootID: Queue.currentBootID(), now: Date())
        try store.startBackgroundWork()
        let leased = try store.allLeases()
        if !leased.isEmpty {
            log.info("leases from before the restart will be reconciled or expire", ["leases": "\(leased.count)"])
        }
        reporting.start()
        try hub.start(leaseHoldUntil: leaseHold)
        // Listings stored before this start hold their IPs until a check says otherwise.
        do {
            let history = try store.ipHealthHistory(ip: nil, limit: IPHealthHistory.maxRows)
            let fcrdnsHeld = fcrdns.restore(failing: IPHealthHistory.fcrdnsFailing(from: history), required: config.reputation.requireFCrDNS)
            for (ip, reason) in fcrdnsHeld.sorted(by: { $0.key < $1.key }) { hub.fcrdnsChanged(ip: ip, holdReason: reason, history: nil) }
            let held = blocklists.restore(IPHealthHistory.listings(from: history))
            for (ip, reason) in held.sorted(by: { $0.key < $1.key }) { hub.blocklistChanged(ip: ip, holdReason: reason, event: nil) }
            if !held.isEmpty { log.info("blocklist listings restored from the store", ["ips": held.keys.sorted().joined(separator: ",")]) }
        } catch {
            log.error("the stored IP health history could not be read", ["error": "\(error)"])
        }
        blocklists.start()
        fcrdns.start()
        tenantMaintenance.start()
        try submission.start()
        try httpAPI?.start()
        admin.start()
        elector?.start()
        log.info("coordinator started", ["cluster": config.cluster.name, "id": coordinatorID, "role": elector == nil ? "single" : "standby until elected", "store": "\(config.store.kind.rawValue) \(store.location)", "admin": (admin.isTLS ? "https://" : "http://") + admin.address.description,
                                         "http_api": httpAPI.map { $0.boundAddresses.map(\.description).joined(separator: ",") } ?? "off",
                                         "cluster_tls": config.cluster.tls == nil ? "off" : (config.cluster.tls?.caPath == nil ? "on" : "mutual")])
    }

    /// Stops for good (SIGTERM): closes the listeners and node connections, then marks the
    /// queue cleanly stopped with one synced commit (`QueueStore.endRun`). The queue takes no
    /// writes afterwards; the caller exits.
    public func stopForExit() {
        blocklists.stop()
        fcrdns.stop()
        tenantMaintenance.stop()
        submission.stop()
        httpAPI?.stop()
        // A leader resigns in the store, so that a standby takes over at once.
        elector?.stop()
        hub.stop()
        do { try store.endRun() } catch { log.error("clean-stop mark not written", ["error": "\(error)"]) }
        log.info("coordinator stopped")
    }
}
