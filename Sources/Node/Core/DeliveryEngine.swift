import ClusterProtocol
import Foundation
import HatoConfig
import HatoDKIM
import HatoDNS
import HatoSupport
import SMTPCore

/// The node's outbound delivery machinery, built once from the configuration and shared by
/// every delivery thread: MX resolution with loop refusal, the session pool with shaping,
/// DKIM signing, STARTTLS, and the SMTP client.
public final class DeliveryEngine: Sendable {
    /// The SMTP client (its pool holds the shaping state).
    public let deliverer: SMTPDeliverer
    /// MX and next-hop resolution.
    public let nextHops: NextHopResolver
    /// MTA-STS and DANE (nil when both are off: `delivery.mta_sts.enabled`, `delivery.dane.enabled`).
    public let transportSecurity: TransportSecurityResolver?
    private let config: ClusterConfig
    private let log: Logger

    /// - Parameters:
    ///   - config: the cluster configuration (`delivery`, `shaping`, `dkim`, `routes`, `dns`).
    ///   - log: where delivery events are logged.
    ///   - tlsClient: the STARTTLS implementation: nil (the default) uses OpenSSL, or none when
    ///     every policy is `disabled`; `.some(nil)` means no TLS at all.
    ///   - tenantKeys: the tenants' DKIM keys (`signing_keys`), shared with the agent so that
    ///     they outlive a rebuilt engine; nil for none.
    /// - Throws: `DKIMKeyError` when a configured DKIM key cannot be loaded or does not match
    ///   its `algorithm`; `TLSError` when the TLS client cannot be created.
    public init(config: ClusterConfig, log: Logger = Logger(label: "node.delivery"), tlsClient: (any OutboundTLSClient)?? = nil,
                tenantKeys: TenantSigningKeys? = nil) throws {
        self.config = config
        self.log = log
        var signers: [DKIMSigner] = []
        for k in config.dkim {
            let key = try k.loadKey()
            signers.append(DKIMSigner(domain: k.domain, selector: k.selector, key: key,
                                      headerCanonicalization: DKIMCanonicalization(rawValue: k.headerCanonicalization) ?? .relaxed,
                                      bodyCanonicalization: DKIMCanonicalization(rawValue: k.bodyCanonicalization) ?? .relaxed,
                                      headers: k.headers ?? DKIMSigner.defaultHeaders))
        }
        let d = config.delivery
        let tls: (any OutboundTLSClient)?
        if let tlsClient {
            tls = tlsClient
        } else if d.tls == .disabled && config.routes.allSatisfy({ ($0.tls ?? .disabled) == .disabled })
                    && !d.mtaSTS.enabled && !d.daneEnabled {
            tls = nil
        } else {
            tls = try OpenSSLTLSClient()
        }
        let pool = SMTPConnectionPool(shaping: config.shaping, idleTimeout: d.idleTimeout, priority: config.priority)
        deliverer = SMTPDeliverer(timeouts: d.timeouts, pool: pool,
                                  preparer: MessagePreparer(dkim: DKIMSignerSet(signers), tenantKeys: tenantKeys), tlsClient: tls)
        // Our own addresses: the cluster's sending IPs, the SMTP listeners and this host's
        // interfaces (its loopback ones only when loopback MX hosts are not allowed).
        var own = Set(config.ips.map(\.address))
        for l in config.smtp.listen { own.insert(l.host) }
        for a in NextHopResolver.interfaceAddresses() where !(d.allowLoopbackMX && NextHopResolver.isLoopback(a)) { own.insert(a) }
        let resolver = DNSResolver(nameservers: config.dns.nameservers, timeout: config.dns.timeout)
        nextHops = NextHopResolver(resolver: resolver, mxPort: d.port, localAddresses: own, allowLoopback: d.allowLoopbackMX)
        transportSecurity = d.mtaSTS.enabled || d.daneEnabled
            ? try TransportSecurityResolver(settings: d.mtaSTS, daneEnabled: d.daneEnabled, resolver: resolver,
                                            log: Logger(label: log.label + ".mta-sts"))
            : nil
        log.info("delivery engine ready", ["dkim_keys": "\(signers.count)", "tls": tls == nil ? "none" : d.tls.rawValue,
                                           "shaping_providers": "\(config.shaping.providers.count)", "idle_timeout": "\(d.idleTimeout)"])
    }

    /// The tracking field added ahead of DKIM signing when `reputation.feedback_addresses` is
    /// set (issue 18): `X-Hato-Recipient: <queue id>.<recipient id>` for a delivery to one
    /// recipient, `X-Hato-Recipient: <queue id>` for several (then a feedback report is matched
    /// to the recipient by its `Original-Rcpt-To` or `To:`). Feedback loops return the header,
    /// also when they redact the complainant's address (RFC 6590), so the complaint still finds
    /// its recipient. Ids only: no address goes into it.
    /// - Parameter lease: the lease being delivered.
    /// - Returns: the field with its CRLF.
    public static func trackingField(_ lease: Lease) -> [UInt8] {
        let value = lease.recipients.count == 1 ? "\(lease.messageID).\(lease.recipients[0].id)" : lease.messageID
        return Array("X-Hato-Recipient: \(value)\r\n".utf8)
    }

    /// What one lease's delivery produced.
    public struct LeaseOutcome: Sendable {
        /// One result per leased recipient, with reply, MX, TLS and timings.
        public var results: [RecipientResult]
        /// The MX host of the (last) session, nil when no server answered.
        public var mxHost: String?
        /// Its address.
        public var remoteAddress: String?
    }

    /// Delivers one lease: resolves the destination, then sends from the lease's sending IP.
    /// - Parameters:
    ///   - lease: the lease (one message, one destination, one sending IP).
    ///   - body: the message content.
    ///   - deadline: the lease's local deadline on the monotonic clock; nothing is started or
    ///     sent after it, and shaping waits end a little before it (a quarter of the lease
    ///     time, at least 1 s, at most 60 s).
    /// - Returns: the results; never throws.
    public func deliver(lease: Lease, body: [UInt8], deadline: ContinuousClock.Instant) -> LeaseOutcome {
        let route = config.route(for: lease.domain)
        let resolveStart = ContinuousClock.now
        let resolved = nextHops.targets(for: lease.domain, staticNextHop: route.map { ($0.nextHop.host, $0.nextHop.port) })
        switch resolved {
        case .failure(let f):
            let resolveSeconds = (ContinuousClock.now - resolveStart).inSeconds
            let results = lease.recipients.map {
                var r = RecipientResult(recipientID: $0.id, status: f.reply.disposition, reply: f.reply)
                r.timings = DeliveryTimings(resolve: resolveSeconds)
                return r
            }
            return LeaseOutcome(results: results, mxHost: nil, remoteAddress: nil)
        case .success(var targets):
            // MTA-STS (RFC 8461) and DANE (RFC 7672) apply to MX delivery, not to static routes.
            var plan: TransportSecurityPlan? = nil
            if route == nil, let transportSecurity, deliverer.tlsClient != nil {
                let p = transportSecurity.plan(domain: lease.domain, targets: targets)
                if let f = p.failure {
                    log.warning("delivery refused by MTA-STS policy", ["domain": lease.domain, "reason": f.reply.text])
                    var results = lease.recipients.map {
                        var r = RecipientResult(recipientID: $0.id, status: f.reply.disposition, reply: f.reply)
                        r.timings = DeliveryTimings(resolve: (ContinuousClock.now - resolveStart).inSeconds)
                        return r
                    }
                    if !results.isEmpty && !p.reports.isEmpty { results[0].tlsReports = p.reports }
                    return LeaseOutcome(results: results, mxHost: nil, remoteAddress: nil)
                }
                targets = p.targets
                plan = p
            }
            let resolveSeconds = (ContinuousClock.now - resolveStart).inSeconds
            let tracked = config.reputation.acceptsFeedback ? Self.trackingField(lease) + body : body
            var request = DeliveryRequest(reversePath: lease.reversePath,
                                          recipients: lease.recipients.map { DeliveryRecipient(id: $0.id, address: $0.address) },
                                          body: tracked, sendingIP: lease.sendingIP, heloName: lease.helo)
            request.leaseDeadline = deadline
            request.priority = lease.effectivePriority
            let margin = min(60, max(1, lease.expiresIn / 4))
            request.shapingWaitDeadline = deadline - .seconds(margin)
            request.tlsPolicy = SMTPTLSPolicy(rawValue: (route?.tls ?? config.delivery.tls).rawValue) ?? .opportunistic
            var policyClient: PolicyTLSClient? = nil
            if let plan, !plan.requirements.isEmpty, let base = deliverer.tlsClient, let transportSecurity {
                let client = PolicyTLSClient(base: base, context: transportSecurity.context, requirements: plan.requirements)
                request.tlsClient = client
                request.authenticatedTLSHosts = plan.requirements.filter(\.value.isEnforced).mapValues(\.tag)
                policyClient = client
            }
            let report = deliverer.deliver(request, to: targets)
            var results = report.outcomes.map { o -> RecipientResult in
                var r = RecipientResult(recipientID: o.recipientID, status: o.status, reply: o.reply)
                if let s = report.sessions[o.recipientID] {
                    r.mxHost = s.mxHost
                    r.remoteAddress = s.remoteAddress
                    r.tlsVersion = s.tls?.version
                    r.tlsCipher = s.tls?.cipher
                    r.reusedConnection = s.reused
                    r.dkim = s.dkim.isEmpty ? nil : s.dkim
                    r.timings = DeliveryTimings(resolve: resolveSeconds, shapingWait: s.shapingWaitSeconds, connect: s.connectSeconds,
                                                setup: s.setupSeconds, transaction: s.transactionSeconds)
                } else {
                    r.mxHost = report.mxHost
                    r.remoteAddress = report.remoteAddress
                    r.timings = DeliveryTimings(resolve: resolveSeconds)
                    if o.status == .deferred, report.mxHost == nil, let t = report.unreachable {
                        r.connectionFailure = ConnectionFailureContext(mxHost: t.host, remoteAddress: t.address)
                    }
                }
                return r
            }
            let tlsReports = (plan?.reports ?? []) + (policyClient?.reports ?? [])
            if !results.isEmpty && !tlsReports.isEmpty { results[0].tlsReports = tlsReports }
            return LeaseOutcome(results: results, mxHost: report.mxHost, remoteAddress: report.remoteAddress)
        }
    }

    /// `deliver(lease:body:deadline:)` with a wall-clock deadline, converted once to the
    /// monotonic clock.
    public func deliver(lease: Lease, body: [UInt8], deadline: Date) -> LeaseOutcome {
        deliver(lease: lease, body: body, deadline: .from(deadline))
    }

    /// Closes the idle sessions from one sending IP (e.g. when it is released), or all.
    public func closeIdleSessions(sendingIP: String? = nil) {
        deliverer.pool.closeIdle(sendingIP: sendingIP)
    }

    /// The coordinator revoked `sendingIP`: its idle sessions are closed (QUIT) at once and
    /// no session from it is kept idle or opened in the background; deliveries in flight from
    /// it still finish.
    public func revokeSendingIP(_ sendingIP: String) {
        deliverer.pool.revoke(sendingIP: sendingIP)
    }

    /// `sendingIP` was assigned to this node (again): its sessions are kept for reuse.
    public func reinstateSendingIP(_ sendingIP: String) {
        deliverer.pool.reinstate(sendingIP: sendingIP)
    }

    /// Closes every idle session, stops reuse and the replacement worker.
    public func shutdown() {
        deliverer.replacer.stop()
        deliverer.pool.shutdown()
    }
}
