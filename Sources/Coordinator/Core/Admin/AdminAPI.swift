import Foundation
import HatoShared

/// `GET /v1/status` body.
public struct StatusReport: Codable, Sendable {
    public var cluster: String
    public var nodes: [NodeStatus]
    public var ips: [IPStatus]
    public var queue: [String: Int]
}

/// One row of `GET /v1/ips`.
public struct IPStatus: Codable, Sendable, Equatable {
    public var address: String
    public var helo: String
    public var pool: String
    public var owner: String?
    public var eligible: [String]
}

/// The admin HTTP API (JSON, bearer `admin_token`): the routes and their handlers.
///
/// Routes: `GET /v1/status`, `GET /v1/nodes`, `GET /v1/ips`, `GET /v1/queue`,
/// `GET /v1/messages?limit=N` (recent ids), `GET /v1/messages/{id}`.
/// Every request needs `Authorization: Bearer <admin_token>`; otherwise 401.
public struct AdminAPI: Sendable {
    let config: ClusterConfig
    let store: QueueStore
    let hub: ClusterHub

    public init(config: ClusterConfig, store: QueueStore, hub: ClusterHub) {
        self.config = config; self.store = store; self.hub = hub
    }

    /// Handles one request.
    public func handle(_ req: HTTPRequest) -> HTTPResponse {
        let expected = "Bearer " + config.coordinator.adminToken
        guard let auth = req.headers["authorization"], Crypto.constantTimeEquals(Array(auth.utf8), Array(expected.utf8)) else {
            return .error(401, "missing or wrong bearer token")
        }
        guard req.method == "GET" else { return .error(405, "method not allowed") }
        do {
            let parts = req.path.split(separator: "/").map(String.init)
            switch parts {
            case ["v1", "status"]:
                return .json(StatusReport(cluster: config.cluster.name, nodes: try hub.nodeStatuses(), ips: ips(), queue: try queueCounts()))
            case ["v1", "nodes"]:
                return .json(try hub.nodeStatuses())
            case ["v1", "ips"]:
                return .json(ips())
            case ["v1", "queue"]:
                return .json(try queueCounts())
            case ["v1", "messages"]:
                let limit = min(max(Int(req.query["limit"] ?? "") ?? 50, 1), 1000)
                return .json(try store.recentMessageIDs(limit: limit))
            case let p where p.count == 3 && p[0] == "v1" && p[1] == "messages":
                guard let m = try store.message(id: p[2]) else { return .error(404, "no message \(p[2])") }
                return .json(m)
            default:
                return .error(404, "no route \(req.path)")
            }
        } catch {
            return .error(500, "\(error)")
        }
    }

    private func queueCounts() throws -> [String: Int] {
        Dictionary(uniqueKeysWithValues: try store.countsByState().map { ($0.key.rawValue, $0.value) })
    }

    private func ips() -> [IPStatus] {
        hub.ipTable().map { IPStatus(address: $0.ip.address, helo: $0.ip.helo, pool: $0.ip.pool, owner: $0.owner, eligible: $0.eligible) }
    }
}

/// The running coordinator: queue, cluster hub, SMTP listener and admin API wired together.
public final class CoordinatorService: @unchecked Sendable {
    public let config: ClusterConfig
    public let store: QueueStore
    public let hub: ClusterHub
    public let submission: SubmissionServer
    public let admin: HTTPServer
    private let log = Logger(label: "coordinator")

    /// Opens the queue and binds every listener.
    /// - Throws: `SQLiteError` or `SocketError`.
    public init(config: ClusterConfig) throws {
        self.config = config
        store = try QueueStore(directory: config.coordinator.dataDir)
        let hub = ClusterHub(config: config, store: store)
        self.hub = hub
        submission = SubmissionServer(config: config, store: store, onAccepted: { hub.wake() })
        let api = AdminAPI(config: config, store: store, hub: hub)
        admin = try HTTPServer(address: config.coordinator.adminListen) { api.handle($0) }
    }

    /// Starts all listeners and background loops.
    /// - Throws: `SocketError`.
    public func start() throws {
        let leased = try store.allLeases()
        if !leased.isEmpty {
            log.info("leases from before the restart will be reconciled or expire", ["leases": "\(leased.count)"])
        }
        try hub.start()
        try submission.start()
        admin.start()
        log.info("coordinator started", ["cluster": config.cluster.name, "admin": admin.address.description])
    }
}
