import Foundation
import HatoConfig
import HatoCrypto
import HatoHTTP

/// `GET /v1/status` body.
public struct StatusReport: Codable, Sendable {
    public var cluster: String
    public var nodes: [NodeStatus]
    public var ips: [IPStatus]
    public var queue: [String: Int]
    /// The id of the coordinator that answered (`coordinators[].id`; the single form's `coordinator`).
    public var coordinator: String?
    /// `leader` or `standby`.
    public var role: String?
    /// The leader's id as the answering coordinator knows it (nil: none known right now).
    public var leader: String?
    /// The leadership term (issue 15): a new one at every start of a single coordinator and at
    /// every change of leader.
    public var term: Int64?
    /// Why a standby answered itself instead of the leader (the leader unreachable), else nil.
    public var note: String?

    public init(cluster: String, nodes: [NodeStatus], ips: [IPStatus], queue: [String: Int], coordinator: String? = nil,
                role: String? = nil, leader: String? = nil, term: Int64? = nil, note: String? = nil) {
        self.cluster = cluster; self.nodes = nodes; self.ips = ips; self.queue = queue
        self.coordinator = coordinator; self.role = role; self.leader = leader; self.term = term; self.note = note
    }
}

/// One row of `GET /v1/ips`.
public struct IPStatus: Codable, Sendable, Equatable {
    public var address: String
    public var helo: String
    public var pool: String
    public var owner: String?
    /// `owned`, `handover` (moving to `handoverTo`) or `unowned`.
    public var state: String
    public var handoverTo: String?
    /// Nodes allowed to own the IP; empty = any node.
    public var eligible: [String]
    /// Warm-up: the plan's day number today (nil when warmed or no plan).
    public var warmupDay: Int?
    /// Warm-up: today's cap in delivery attempts.
    public var warmupCap: Int?
    /// Warm-up: attempts counted today.
    public var warmupSent: Int?
    /// `ips[].weight`: the IP's share of its pool's mail relative to the pool's other IPs.
    public var weight: Int?
    /// The share of its pool's mail the weights give it: weight / the pool's total weight (0…1).
    public var targetShare: Double?
    /// Recipients leased to this IP since the coordinator started.
    public var recipientsLeased: Int?
    /// Its share of the recipients leased in its pool since the coordinator started (0…1; nil
    /// before the pool leased any).
    public var share: Double?
    /// `listed` when a DNS blocklist lists the IP (no new leases), `fcrdns` when
    /// `reputation.require_fcrdns` holds it (FCrDNS fails), else `ok` (issue 18).
    public var health: String?
    /// Why it is held: the zones, return codes and the lists' reasons, the FCrDNS failure; nil when `ok`.
    public var healthReason: String?
    /// The FCrDNS/HELO verdict (`ok`, `helo_mismatch`, `no_ptr`, `not_confirmed`, `unknown`;
    /// anything but `ok` is a warning), nil before the first check.
    public var fcrdns: String?
    /// Listings, FCrDNS detail and the stored history of changes (`IPHealthView`).
    public var reputation: IPHealthView?
    /// Per-provider warm-up caps today (`warmup[].providers`), by provider label; nil when none.
    public var warmupProviders: [ProviderWarmup]?
    /// When the IP resumed after a blocklist delisting, while it is on the re-warm ramp
    /// (`reputation.rewarm`; its `warmupCap` is the ramp's); nil otherwise.
    public var rewarmingSince: Date?
    /// The rolling reputation signals of the IP per provider, with the active rule actions
    /// (`reputation.rules`); nil when there are none.
    public var signals: [Scheduler.PairSignals]?
}

/// One per-provider warm-up cap of a sending IP today.
public struct ProviderWarmup: Codable, Sendable, Equatable {
    /// The provider label (`gmail`, …).
    public var provider: String
    /// Deliveries allowed today from the IP to the provider.
    public var cap: Int
    /// Recipients leased today from the IP to the provider, cluster-wide.
    public var sent: Int
}

/// `GET/POST /v1/rebalance` body.
public struct RebalanceReport: Codable, Sendable {
    public var applied: Bool
    public var moves: [IPAssignmentTable.Move]
}

/// The admin HTTP API (JSON, bearer `admin_token`): the routes and their handlers.
///
/// | method | path | what |
/// |---|---|---|
/// | GET | `/v1/status` | nodes, IPs, queue counts |
/// | GET | `/v1/nodes` | nodes with state, IPs, leases |
/// | POST | `/v1/nodes/{id}/drain` | start a drain |
/// | POST | `/v1/nodes/{id}/resume` | end a drain |
/// | GET | `/v1/ips` | the IP assignment table |
/// | GET | `/v1/queue` | recipient counts by state |
/// | GET | `/v1/messages?limit=N` | recent message ids |
/// | GET | `/v1/messages/{id}` | one message and its recipients |
/// | GET | `/v1/recipients?address=A` | messages for a recipient, with their records |
/// | GET | `/v1/rebalance` | the plan, not applied |
/// | POST | `/v1/rebalance` | compute and apply the plan |
/// | POST | `/v1/reload` | re-read cluster.yml, check it (like `check`) and apply it: `ReloadReport` (live keys, restart lines, each node's answer); 400 naming file and key if invalid or refused |
/// | GET | `/v1/suspensions` | active backoffs per (sending IP, provider) |
/// | GET | `/v1/reputation` | rolling signals per (sending IP, provider) and active rule actions (`Scheduler.PairSignals`) |
/// | DELETE | `/v1/suspensions?ip=A&provider=P` | lift one; without `ip=`, every backoff of the provider |
/// | GET | `/v1/queue/summary?by=…` | waiting recipients per domain, provider, pool, IP or state (`QueueControlAPI`) |
/// | GET | `/v1/queue/recipients?…` | a page of waiting recipients and why each waits |
/// | POST | `/v1/queue/{flush,delete,bounce,hold,release}` | queue actions by id or selector |
/// | GET, POST | `/v1/pauses` | active pauses; pause a provider, pool or sending IP |
/// | DELETE | `/v1/pauses/{kind}/{name}` | resume |
/// | … | `/v1/tenants…` | tenants, their SMTP users, API keys (`TenantAdminAPI`) |
/// | … | `/v1/domains…` | sending domains, their DNS records and checks (`DomainAdminAPI`) |
/// | GET, POST, DELETE | `/v1/operators[/{name}]` | the dashboard's operator accounts (`OperatorAdminAPI`) |
/// | GET | `/v1/ips/{ip}/health` | one sending IP's listings, FCrDNS verdict and history (`ReputationAdminAPI`) |
/// | GET | `/v1/doctor` | every finding of `hato-coordinator doctor` (`DoctorReport`) |
///
/// Every request needs `Authorization: Bearer <admin_token>`; otherwise 401. Operators'
/// actions take their author from `X-Hato-Operator` (default `admin`).
public struct AdminAPI: Sendable {
    let token: String
    let store: any QueueStore
    let hub: ClusterHub
    let reload: @Sendable () throws -> ReloadReport
    let queueControl: QueueControlAPI
    /// The tenant routes (`/v1/tenants…`, issue 16), nil without them.
    let tenants: TenantAdminAPI?
    /// The sending-domain routes (`/v1/domains…`, issue 16), nil without them.
    let domains: DomainAdminAPI?
    /// The reputation routes (`/v1/doctor`, `/v1/ips/{ip}/health`) and each IP's health in
    /// `/v1/ips` (issue 18), nil without them.
    let reputation: ReputationAdminAPI?

    /// - Parameters:
    ///   - token: the bearer token.
    ///   - tenants: the tenant routes (nil: 404 for them).
    ///   - reload: re-reads and applies the configuration file; throws `ConfigError` when invalid.
    public init(token: String, store: any QueueStore, hub: ClusterHub, tenants: TenantAdminAPI? = nil, domains: DomainAdminAPI? = nil,
                reputation: ReputationAdminAPI? = nil, reload: @escaping @Sendable () throws -> ReloadReport) {
        self.token = token; self.store = store; self.hub = hub; self.reload = reload; self.tenants = tenants; self.domains = domains
        self.reputation = reputation
        queueControl = QueueControlAPI(store: store, hub: hub)
    }

    /// Handles one request.
    public func handle(_ req: HTTPRequest) -> HTTPResponse {
        let expected = "Bearer " + token
        guard let auth = req.headers["authorization"], Crypto.constantTimeEquals(Array(auth.utf8), Array(expected.utf8)) else {
            return .error(401, "missing or wrong bearer token")
        }
        if let response = queueControl.handle(req) { return response }
        if let response = tenants?.handle(req) { return response }
        if let response = domains?.handle(req) { return response }
        if let response = OperatorAdminAPI(store: store).handle(req) { return response }
        if let response = reputation?.handle(req) { return response }
        do {
            let p = req.path.split(separator: "/").map(String.init)
            switch (req.method, p) {
            case ("GET", ["v1", "status"]):
                return .json(try status())
            case ("GET", ["v1", "nodes"]):
                return .json(try hub.nodeStatuses())
            case ("POST", let p) where p.count == 4 && p[0] == "v1" && p[1] == "nodes" && (p[3] == "drain" || p[3] == "resume"):
                if p[3] == "drain" { try hub.drain(p[2]) } else { try hub.resume(p[2]) }
                guard let status = try hub.nodeStatuses().first(where: { $0.id == p[2] }) else { return .error(404, "no node \(p[2])") }
                return .json(status, status: 202)
            case ("GET", ["v1", "ips"]):
                return .json(ips())
            case ("GET", ["v1", "queue"]):
                return .json(try queueCounts())
            case ("GET", ["v1", "messages"]):
                let limit = min(max(Int(req.query["limit"] ?? "") ?? 50, 1), 1000)
                return .json(try store.recentMessageIDs(limit: limit))
            case ("GET", let p) where p.count == 3 && p[0] == "v1" && p[1] == "messages":
                guard let m = try store.message(id: p[2]) else { return .error(404, "no message \(p[2])") }
                return .json(m)
            case ("GET", ["v1", "recipients"]):
                guard let address = req.query["address"], !address.isEmpty else { return .error(400, "address= is required") }
                let limit = min(max(Int(req.query["limit"] ?? "") ?? 20, 1), 500)
                return .json(try store.messages(forRecipient: address, limit: limit).compactMap { try store.message(id: $0) })
            case ("GET", ["v1", "rebalance"]):
                return .json(RebalanceReport(applied: false, moves: hub.rebalancePlan()))
            case ("POST", ["v1", "rebalance"]):
                return .json(RebalanceReport(applied: true, moves: try hub.rebalance()), status: 202)
            case ("GET", ["v1", "suspensions"]):
                return .json(hub.activeBackoffs())
            case ("GET", ["v1", "reputation"]):
                return .json(hub.pairSignals())
            case ("POST", ["v1", "reload"]):
                do { return .json(try reload()) } catch let e as ConfigError { return .error(400, e.description) } catch let e as ConfigReloadRefused {
                    return .error(400, e.description)
                }
            case (_, let p) where p.first == "v1":
                return .error(404, "no route \(req.method) \(req.path)")
            default:
                return .error(404, "no route \(req.path)")
            }
        } catch let e as AdminError {
            switch e {
            case .busy, .notLeader: return .error(503, e.description)
            case .unknownNode: break
            }
            return .error(404, e.description)
        } catch {
            return .error(500, "\(error)")
        }
    }

    /// `GET /v1/status` as this coordinator answers it (a standby's without nodes or IPs, see
    /// `AdminForwarder`).
    /// - Throws: a store error counting the queue.
    public func status() throws -> StatusReport {
        let info = hub.leader
        let leading = info.isSelf
        return StatusReport(cluster: hub.currentConfig.cluster.name, nodes: leading ? try hub.nodeStatuses() : [], ips: leading ? ips() : [],
                            queue: try queueCounts(), coordinator: hub.coordinatorID, role: leading ? "leader" : "standby",
                            leader: info.leader, term: info.term)
    }

    private func queueCounts() throws -> [String: Int] {
        Dictionary(uniqueKeysWithValues: try store.countsByState().map { ($0.key.rawValue, $0.value) })
    }

    private func ips() -> [IPStatus] {
        let table = hub.ipTable()
        let leased = hub.recipientsLeased()
        let weights = hub.ipWeights()
        let listed = hub.blocklisted()
        let dnsblHeld = hub.blocklistHoldReasons()
        // The holds as the checkers decided them (the scheduler applies them at its next
        // round): an IP whose DNSBL or FCrDNS verdict shows as failing shows as held too.
        let fcrdnsHeld = hub.fcrdnsHoldReasons()
        let health = reputation?.health(table.map(\.ip.address)) ?? [:]
        let signals = Dictionary(grouping: hub.pairSignals(), by: \.ip)
        let rewarming = hub.rewarming()
        var poolWeight: [String: Int] = [:], poolLeased: [String: Int] = [:]
        for e in table {
            poolWeight[e.ip.pool, default: 0] += weights[e.ip.address, default: 1]
            poolLeased[e.ip.pool, default: 0] += leased[e.ip.address, default: 0]
        }
        return table.map {
            let w = hub.warmupStatus($0.ip.address)
            var row = IPStatus(address: $0.ip.address, helo: $0.ip.helo, pool: $0.ip.pool, owner: $0.owner, state: $0.state,
                               handoverTo: $0.handoverTo, eligible: $0.eligible, warmupDay: w?.day, warmupCap: w?.cap, warmupSent: w?.used)
            let weight = weights[$0.ip.address, default: 1]
            row.weight = weight
            row.targetShare = Double(weight) / Double(max(1, poolWeight[$0.ip.pool, default: 1]))
            row.recipientsLeased = leased[$0.ip.address, default: 0]
            let total = poolLeased[$0.ip.pool, default: 0]
            row.share = total > 0 ? Double(row.recipientsLeased ?? 0) / Double(total) : nil
            row.healthReason = listed[$0.ip.address] ?? dnsblHeld[$0.ip.address] ?? fcrdnsHeld[$0.ip.address]
            row.health = row.healthReason == nil ? "ok" : dnsblHeld[$0.ip.address] != nil ? "listed" : "fcrdns"
            row.reputation = health[$0.ip.address]
            row.fcrdns = row.reputation?.fcrdns
            let caps = hub.warmupProviderStatus($0.ip.address)
            row.warmupProviders = caps.isEmpty ? nil : caps.keys.sorted().map { ProviderWarmup(provider: $0, cap: caps[$0]!.cap, sent: caps[$0]!.used) }
            row.rewarmingSince = rewarming[$0.ip.address]
            row.signals = signals[$0.ip.address]
            return row
        }
    }
}
