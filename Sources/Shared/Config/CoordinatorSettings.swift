import Foundation
import HatoIO
import SMTPCore

/// `coordinator:` where the coordinator listens, its storage and cluster timers.
public struct CoordinatorSettings: Sendable, Equatable {
    /// `listen`: the cluster protocol address nodes connect to (numeric IP, `[v6]:port`). Required.
    public var listen: SocketAddress
    /// `admin_listen`: the admin HTTP API address. Required.
    public var adminListen: SocketAddress
    /// The bearer token of the admin API (printable ASCII, no spaces): `admin_token` inline, or
    /// the contents of `admin_token_file` (trailing line breaks removed). Exactly one of the two
    /// is required. Empty when `admin_token_file` could not be read at load time (see
    /// `adminTokenError`; use `requireAdminToken()` where the token is needed).
    public var adminToken: String
    /// `admin_token_file`: absolute path of the file holding the token, nil when inline. Node
    /// hosts need not have the file. Default nil.
    public var adminTokenFile: String? = nil
    /// Why `admin_token_file` could not be read at load time; nil when the token is resolved.
    public var adminTokenError: String? = nil
    /// `admin_tls`: HTTPS on `admin_listen` (`certificate`, `private_key`, and `ca` the CLI
    /// trusts). Default none: plain HTTP.
    public var adminTLS: AdminTLSSettings? = nil
    /// `data_dir`: absolute directory for the coordinator's database. Required.
    public var dataDir: String
    /// `lease_time`: seconds a node holds a message lease before it may be re-assigned. Default 300 (5m).
    public var leaseTime: TimeInterval
    /// `node_timeout`: seconds without a heartbeat after which a node is considered down. Default 10.
    public var nodeTimeout: TimeInterval
    /// `heartbeat_interval`: seconds between node heartbeats; must be below `node_timeout`. Default 2.
    public var heartbeatInterval: TimeInterval
    /// `auto_rebalance`: re-spread floating sending IPs when a node becomes active or leaves. Default false.
    public var autoRebalance: Bool = false
    /// `leadership_lease`: with several coordinators, seconds one renewal of the leadership holds
    /// it in the store; a standby takes over at most this long after the leader died (then the
    /// nodes reconnect). The leader renews every third of it and stops a tenth of it early on its
    /// own clock. Default 10; at least 3.
    public var leadershipLease: TimeInterval = 10
    /// `message_retention`: seconds after its receipt that a finished message (every recipient
    /// delivered, bounced, expired, suppressed or deleted) is deleted from the queue store with
    /// its recipients' states; until then `queue show` and the HTTP API's message status find
    /// it, and a feedback-loop complaint about it is matched to its recipient, sending IP and
    /// tenant (later ones are recorded unmatched: nobody is suppressed). Messages still open are
    /// never deleted. The delivery log and the tenants' event log (`http_api.event_retention`)
    /// keep their own history. Default 2592000 (30d); at least 86400 (1d), and at least
    /// `http_api.idempotency_ttl`.
    public var messageRetention: TimeInterval = 30 * 86_400

    /// Creates coordinator settings.
    public init(listen: SocketAddress, adminListen: SocketAddress, adminToken: String, dataDir: String,
                leaseTime: TimeInterval = 300, nodeTimeout: TimeInterval = 10, heartbeatInterval: TimeInterval = 2) {
        self.listen = listen; self.adminListen = adminListen; self.adminToken = adminToken; self.dataDir = dataDir
        self.leaseTime = leaseTime; self.nodeTimeout = nodeTimeout; self.heartbeatInterval = heartbeatInterval
    }
}

/// One entry of `coordinators:` (several coordinators sharing one PostgreSQL store, issue 15):
/// its id and the addresses that are its own. The shared settings stay under `coordinator:`.
public struct CoordinatorInstance: Sendable, Equatable {
    /// `id`: the name `hato-coordinator serve --id` takes.
    public var id: String
    /// `listen`: the cluster protocol address nodes connect to.
    public var listen: SocketAddress
    /// `admin_listen`: the admin HTTP API address.
    public var adminListen: SocketAddress
    /// `smtp_listen`: the SMTP submission addresses (at least one).
    public var smtpListen: [SocketAddress]

    /// - Parameters: see the properties.
    public init(id: String, listen: SocketAddress, adminListen: SocketAddress, smtpListen: [SocketAddress]) {
        self.id = id; self.listen = listen; self.adminListen = adminListen; self.smtpListen = smtpListen
    }
}
