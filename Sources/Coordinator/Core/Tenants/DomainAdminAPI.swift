import Foundation
import HatoConfig
import HatoHTTP
import HatoSupport

/// The sending-domain routes of the admin API (issue 16; bearer `admin_token`, JSON in snake_case):
///
/// | method | path | body | what |
/// |---|---|---|---|
/// | GET | `/v1/domains[?tenant=T]` | | every sending domain (of one tenant) with its selectors |
/// | POST | `/v1/domains` | `{"domain", "tenant"}` | add: makes its DKIM keys (ed25519 and rsa-2048, dated selectors, sealed with the cluster secret); 201 with the DNS records to publish |
/// | GET | `/v1/domains/{d}` | | its DNS records to publish (`DomainRecords`) |
/// | GET | `/v1/domains/{d}/check` | | each record looked up through the `dns:` resolvers: `ok`, `missing`, `wrong`, `lookup_failed` |
/// | DELETE | `/v1/domains/{d}` | | remove it (its tenant can no longer send from it; nodes stop signing for it) |
///
/// Errors: 400 (bad domain), 404 (no such domain or tenant), 409 (the domain belongs to a tenant already).
public struct DomainAdminAPI: Sendable {
    let store: any QueueStore
    let directory: TenantDirectory
    /// The configuration in force (sending IPs, `tenants.spf_include`, `dns:`, the cluster secret).
    let config: @Sendable () -> ClusterConfig
    let clock: any WallClock
    /// Called after a domain was added or removed (sends the keys to the nodes at once).
    let keysChanged: @Sendable () -> Void
    private let log = Logger(label: "coordinator.tenants")

    /// The routes over `store`; `config` gives the configuration in force; `keysChanged` is
    /// called after a domain was added or removed.
    public init(store: any QueueStore, directory: TenantDirectory, clock: any WallClock = SystemClock(), config: @escaping @Sendable () -> ClusterConfig,
                keysChanged: @escaping @Sendable () -> Void = {}) {
        self.store = store; self.directory = directory; self.clock = clock; self.config = config; self.keysChanged = keysChanged
    }

    /// One row of `GET /v1/domains`.
    public struct DomainView: Codable, Sendable, Equatable {
        public var domain: String
        public var tenant: String
        public var selectors: [String]
        public var createdAt: Double
    }

    /// The body of `POST /v1/domains`.
    public struct AddRequest: Codable, Sendable {
        public var domain: String
        public var tenant: String
        public init(domain: String, tenant: String) { self.domain = domain; self.tenant = tenant }
    }

    /// The answer of `POST /v1/domains` and `GET /v1/domains/{d}`: the records, and the same as zone-file text.
    public struct RecordsAnswer: Codable, Sendable {
        public var tenant: String
        public var records: DomainRecords
        public var zoneText: String
    }

    /// Handles the request when its route is a domain route (the caller checked the token); nil otherwise.
    public func handle(_ req: HTTPRequest) -> HTTPResponse? {
        let p = req.path.split(separator: "/").map(String.init)
        guard p.count >= 2, p[0] == "v1", p[1] == "domains" else { return nil }
        do {
            switch (req.method, Array(p.dropFirst(2))) {
            case ("GET", []):
                let tenant = req.query["tenant"].flatMap { $0.isEmpty ? nil : $0 }
                if let tenant, try store.tenant(named: tenant) == nil { return .error(404, "no tenant \(tenant)") }
                return .json(try store.sendingDomains(tenant: tenant).map {
                    DomainView(domain: $0.domain, tenant: $0.tenant, selectors: $0.keys.map(\.selector), createdAt: $0.createdAt)
                })
            case ("POST", []):
                return try add(req)
            case ("GET", let r) where r.count == 1:
                guard let d = try find(r[0]) else { return .error(404, "no sending domain \(r[0])") }
                let records = DomainRecords(domain: d, config: config())
                return .json(RecordsAnswer(tenant: d.tenant, records: records, zoneText: records.zoneText))
            case ("GET", let r) where r.count == 2 && r[1] == "check":
                guard let d = try find(r[0]) else { return .error(404, "no sending domain \(r[0])") }
                let c = config()
                return .json(DomainCheck(records: DomainRecords(domain: d, config: c)).run(config: c))
            case ("DELETE", let r) where r.count == 1:
                guard let d = try find(r[0]) else { return .error(404, "no sending domain \(r[0])") }
                try store.removeSendingDomain(d.domain, tenant: d.tenant)
                directory.invalidate()
                keysChanged()
                log.info("sending domain removed", ["domain": d.domain, "tenant": d.tenant, "by": QueueControlAPI.operatorName(req)])
                return .json(["removed": d.domain])
            default:
                return nil
            }
        } catch let e as TenantStoreError {
            switch e {
            case .exists, .conflict: return .error(409, e.description)
            case .notFound: return .error(404, e.description)
            }
        } catch {
            log.error("domain request failed", ["path": req.path, "error": "\(error)"])
            return .error(500, "\(error)")
        }
    }

    private func find(_ name: String) throws -> SendingDomain? {
        let domain = name.lowercased().trimmingCharacters(in: CharacterSet(charactersIn: "."))
        return try store.sendingDomains(tenant: nil).first { $0.domain == domain }
    }

    private func add(_ req: HTTPRequest) throws -> HTTPResponse {
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        guard let body = try? d.decode(AddRequest.self, from: Data(req.body)) else {
            return .error(400, "expected JSON {\"domain\": …, \"tenant\": …}")
        }
        guard try store.tenant(named: body.tenant) != nil else { return .error(404, "no tenant \(body.tenant)") }
        let c = config()
        let domain: SendingDomain
        do {
            domain = try SendingDomainKeys.generate(domain: body.domain, tenant: body.tenant, date: clock.now(), clusterSecret: c.cluster.secret)
        } catch let e as SendingDomainKeys.InvalidDomain {
            return .error(400, "\(e)")
        }
        try store.addSendingDomain(domain)
        directory.invalidate()
        keysChanged()
        log.info("sending domain added", ["domain": domain.domain, "tenant": body.tenant, "selectors": domain.keys.map(\.selector).joined(separator: ","),
                                          "by": QueueControlAPI.operatorName(req)])
        let records = DomainRecords(domain: domain, config: c)
        return .json(RecordsAnswer(tenant: body.tenant, records: records, zoneText: records.zoneText), status: 201)
    }
}
