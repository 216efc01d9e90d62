import Foundation
import HatoConfig
import HatoCoordinator
import HatoCrypto
import HatoHTTP
import HatoIO
import HatoSupport
import HatoTestKit
import Testing

/// The HTTP send API running in this process on loopback, over a real SQLite store in a
/// temporary directory (no scheduler, no nodes): what a client of `POST /api/v1/messages` meets.
final class InProcessHTTPAPI: @unchecked Sendable {
    let dir: String
    let config: ClusterConfig
    let store: any QueueStore
    let tenants: TenantDirectory
    let api: TenantHTTPAPI
    let listener: HTTPAPIListener
    let address: SocketAddress
    /// How many times `onAccepted` ran.
    let accepted = Locked(0)

    /// - Parameters:
    ///   - apiExtra: lines added to the `http_api:` section (besides `listen`).
    ///   - smtpExtra: lines added to the `smtp:` section.
    ///   - extraYAML: further top-level YAML.
    init(apiExtra: String = "", smtpExtra: String = "", extraYAML: String = "") throws {
        dir = try makeTempDirectory("hato-api-")
        let api = (["listen: [127.0.0.1:0]"] + apiExtra.split(separator: "\n").map(String.init)).map { "  " + $0 }.joined(separator: "\n")
        let yaml = submissionClusterYAML(smtpPort: 0, clusterPort: try freePort(), adminPort: try freePort(), smtpExtra: smtpExtra,
                                         extraYAML: extraYAML + "\nhttp_api:\n" + api)
        config = try ClusterConfig.parse(yaml, path: (dir as NSString).appendingPathComponent("cluster.yml"))
        store = try SQLiteQueueStore(directory: config.coordinator.dataDir)
        try store.installReportingSchema()
        tenants = TenantDirectory(store: store)
        let counter = accepted
        self.api = TenantHTTPAPI(config: config, store: store, tenants: tenants, onAccepted: { counter.withLock { $0 += 1 } })
        listener = HTTPAPIListener(settings: config.httpAPI!, api: self.api)
        try listener.start()
        guard let bound = listener.boundAddresses.first else { throw HarnessError("no HTTP API address") }
        address = bound
    }

    /// Creates a tenant owning `domains`, with one API key.
    /// - Returns: the key's text (`hato_<id>_<secret>`).
    @discardableResult
    func addTenant(_ name: String, domains: [String], pool: String? = nil, limits: TenantLimits = TenantLimits()) throws -> String {
        let now = Date().timeIntervalSince1970
        try store.createTenant(Tenant(name: name, pool: pool, limits: limits, createdAt: now))
        for d in domains { try store.addSendingDomain(SendingDomain(domain: d, tenant: name, keys: [], createdAt: now)) }
        let key = try addKey(tenant: name)
        tenants.invalidate()
        return key
    }

    /// A new API key of `tenant`. - Returns: its text.
    func addKey(tenant: String) throws -> String {
        let k = APIKeyText.generate()
        try store.addAPIKey(APIKeyRecord(id: k.id, tenant: tenant, label: "test", secretHash: k.secretHash, createdAt: Date().timeIntervalSince1970))
        tenants.invalidate()
        return k.text
    }

    /// One response, its JSON body parsed (nil when not a JSON object).
    struct Reply {
        var status: Int
        var headers: [String: String]
        var json: [String: Any]?
        var body: String
        /// `error.code` of an error body.
        var errorCode: String? { (json?["error"] as? [String: Any])?["code"] as? String }
        /// `id` of a 202 body.
        var id: String? { json?["id"] as? String }
    }

    /// Sends one request (`Connection: close`) with the key as a Bearer token.
    func request(_ method: String, _ path: String, key: String?, body: String? = nil, headers: [(String, String)] = []) throws -> Reply {
        var h = headers
        if let key { h.append(("Authorization", "Bearer \(key)")) }
        if body != nil { h.append(("Content-Type", "application/json")) }
        let r = try HTTPClient.send(method, to: address, path: path, headers: h, body: body.map { Array($0.utf8) }, timeout: 10)
        let json = (try? JSONSerialization.jsonObject(with: Data(r.body))) as? [String: Any]
        return Reply(status: r.status, headers: r.headers, json: json, body: String(decoding: r.body, as: UTF8.self))
    }

    /// `POST /api/v1/messages` with `json`.
    func send(_ json: String, key: String?, idempotencyKey: String? = nil) throws -> Reply {
        try request("POST", "/api/v1/messages", key: key, body: json, headers: idempotencyKey.map { [("Idempotency-Key", $0)] } ?? [])
    }

    /// Ids of every queued message, oldest first.
    func messageIDs() throws -> [String] { try store.recentMessageIDs(limit: 1_000_000).reversed() }

    /// The stored content of a message (the body the scheduler leases out).
    func content(_ id: String) throws -> String {
        guard let body = try store.content(of: id) else { return "" }
        return String(decoding: body, as: UTF8.self)
    }

    func shutdown() {
        listener.stop()
        try? FileManager.default.removeItem(atPath: dir)
    }
}

/// A send request's JSON: `from` → `to` with a subject and a text body.
func sendJSON(from: String, to: [String], subject: String = "Hello", text: String = "Hi there.", extra: String = "") -> String {
    let rcpts = to.map { "\"\($0)\"" }.joined(separator: ",")
    return "{\"from\":\"\(from)\",\"to\":[\(rcpts)],\"subject\":\"\(subject)\",\"text\":\"\(text)\"\(extra.isEmpty ? "" : "," + extra)}"
}
