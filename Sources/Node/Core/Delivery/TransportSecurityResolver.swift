import ClusterProtocol
import Foundation
import HatoConfig
import HatoDNS
import HatoHTTP
import HatoIO
import HatoSupport

/// The I/O around `TransportSecurityPlan`: finds a destination's MTA-STS policy (TXT lookup,
/// HTTPS fetch, the node's `MTASTSPolicyCache`) and its MX hosts' DANE state (TLSA lookups with
/// the AD bit), all through the configured resolvers, and builds the plan and its TLS client.
/// Blocking: call it on a delivery thread.
public final class TransportSecurityResolver: Sendable {
    /// The settings in force.
    public let settings: MTASTSSettings
    /// Whether DANE lookups are made.
    public let daneEnabled: Bool
    /// The resolver (the `dns:` nameservers; never the system's for configured ones).
    public let resolver: DNSResolver
    /// The verifying TLS context for MX sessions under a policy (trust roots of `ca_file`, DANE on).
    public let context: TLSContext
    private let cache: Locked<MTASTSPolicyCache>
    /// Domains whose last fetch failed: no new fetch before the instant (seconds since 1970).
    private let failedFetches = Locked<[String: Double]>([:])
    /// Seconds a failed policy fetch is not retried (the cached policy, if any, is used meanwhile).
    public static let fetchRetryDelay: Double = 300
    private let clock: any WallClock
    private let log: Logger

    /// - Parameters:
    ///   - settings: `delivery.mta_sts`.
    ///   - daneEnabled: `delivery.dane.enabled`.
    ///   - resolver: the DNS resolver.
    ///   - clock: wall clock for the cache (seconds since 1970).
    ///   - log: where fetch failures are logged.
    /// - Throws: `TLSError` when the CA file cannot be loaded.
    public init(settings: MTASTSSettings, daneEnabled: Bool, resolver: DNSResolver, clock: any WallClock = SystemClock(),
                log: Logger = Logger(label: "node.mta-sts")) throws {
        self.settings = settings; self.daneEnabled = daneEnabled; self.resolver = resolver
        self.clock = clock; self.log = log
        context = try TLSContext.client(verifyPeer: false, trustedCAFile: settings.caFile, dane: true)
        cache = Locked(MTASTSPolicyCache(capacity: settings.cacheSize))
    }

    /// The domain's MTA-STS policy (RFC 8461 §5.1), and TLS-RPT entries for fetch failures.
    /// A fetch failure falls back to a cached unexpired policy, otherwise to no policy, and the
    /// domain is not fetched again for `fetchRetryDelay` seconds.
    public func policy(for domain: String) -> (MTASTSPolicy?, [TLSReportEntry]) {
        guard settings.enabled else { return (nil, []) }
        let d = domain.lowercased()
        var record: MTASTSRecord? = nil
        if case .records(let rs) = resolver.query("_mta-sts.\(d)", type: .txt) {
            record = MTASTSRecord.find(in: rs.compactMap { if case .txt(let t) = $0.data { return t } else { return nil } })
        }
        let now = clock.now().timeIntervalSince1970
        switch cache.withLock({ $0.decide(domain: d, record: record, now: now) }) {
        case .noPolicy: return (nil, [])
        case .use(let p): return (p, [])
        case .fetch(let fallback):
            guard let record else { return (fallback, []) }
            if let until = failedFetches.withLock({ $0[d] }), now < until { return (fallback, []) }
            switch fetch(d) {
            case .success(let p):
                cache.withLock { $0.store(domain: d, policy: p, id: record.id, now: now) }
                failedFetches.withLock { _ = $0.removeValue(forKey: d) }
                return (p, [])
            case .failure(let f):
                failedFetches.withLock { failed in
                    if failed.count >= settings.cacheSize { failed = failed.filter { $0.value > now } }
                    if failed.count < settings.cacheSize { failed[d] = now + Self.fetchRetryDelay }
                }
                log.warning("MTA-STS policy fetch failed", ["domain": d, "reason": f.reason])
                return (fallback, [TLSReportEntry(policyDomain: d, policyType: TLSReportPolicyType.sts.rawValue, result: f.type.rawValue)])
            }
        }
    }

    /// Why a fetch failed.
    struct FetchFailure: Error {
        let type: TLSReportResultType
        let reason: String
    }

    /// GET `https://mta-sts.<domain>/.well-known/mta-sts.txt` (RFC 8461 §3.3): the host's A/AAAA
    /// through the resolver, certificate valid for the host (trust roots of `ca_file`), status 200
    /// only (no redirects), `text/plain`, at most `MTASTSPolicy.maxBodySize` octets, within
    /// `fetch_timeout`.
    func fetch(_ domain: String) -> Result<MTASTSPolicy, FetchFailure> {
        let host = "mta-sts.\(domain)"
        guard case .addresses(let addresses) = resolver.resolveHostAddresses(host), let address = addresses.first else {
            return .failure(FetchFailure(type: .stsPolicyFetchError, reason: "\(host) does not resolve"))
        }
        let response: HTTPClientResponse
        do {
            let strict = try TLSContext.client(verifyPeer: true, trustedCAFile: settings.caFile)
            response = try HTTPClient.send("GET", to: SocketAddress(host: address, port: settings.httpsPort),
                                           path: "/.well-known/mta-sts.txt", tls: strict, serverName: host,
                                           timeout: settings.fetchTimeout, host: host,
                                           maximumSize: MTASTSPolicy.maxBodySize + 16 * 1024,
                                           deadline: .now + .seconds(settings.fetchTimeout))
        } catch {
            let text = "\(error)"
            let webPKI = text.contains("certificate") || text.contains("verify")
            return .failure(FetchFailure(type: webPKI ? .stsWebPKIInvalid : .stsPolicyFetchError, reason: text))
        }
        guard response.status == 200 else {
            return .failure(FetchFailure(type: .stsPolicyFetchError, reason: "HTTP status \(response.status) (redirects are not followed)"))
        }
        if let type = response.headers["content-type"], !type.lowercased().hasPrefix("text/plain") {
            return .failure(FetchFailure(type: .stsPolicyInvalid, reason: "media type \(type.prefix(40)) is not text/plain"))
        }
        do {
            return .success(try MTASTSPolicy.parse(response.body))
        } catch {
            return .failure(FetchFailure(type: .stsPolicyInvalid, reason: error.description))
        }
    }

    /// The DANE state of `host` on `port` (RFC 7672 §2.2): `_<port>._tcp.<host>` TLSA with the AD bit.
    public func dane(host: String, port: UInt16) -> DANELookup {
        guard daneEnabled else { return .insecure }
        let answer = resolver.secureQuery("_\(port)._tcp.\(host)", type: .tlsa)
        guard answer.authenticated, case .records(let records) = answer.answer else { return .insecure }
        let all = records.compactMap { r -> TLSAssociation? in
            guard case .tlsa(let u, let s, let m, let data) = r.data else { return nil }
            return TLSAssociation(usage: u, selector: s, matchingType: m, data: data)
        }
        return .secure(usable: all.filter(\.isUsable), total: all.count)
    }

    /// The plan for `domain`'s MX targets, with pre-connection reports (policy fetch failures,
    /// MX hosts outside the policy, unusable TLSA records).
    public func plan(domain: String, targets: [DeliveryTarget]) -> TransportSecurityPlan {
        let (policy, fetchReports) = policy(for: domain)
        var dane: [String: DANELookup] = [:]
        if daneEnabled {
            for t in targets where dane[t.host.lowercased()] == nil { dane[t.host.lowercased()] = self.dane(host: t.host, port: t.port) }
        }
        var plan = TransportSecurityPlan.plan(domain: domain, targets: targets, policy: policy, dane: dane)
        plan.reports = fetchReports + plan.reports
        return plan
    }

    /// Drops every cached policy.
    public func flushPolicies() { cache.withLock { $0 = MTASTSPolicyCache(capacity: settings.cacheSize) } }
}
