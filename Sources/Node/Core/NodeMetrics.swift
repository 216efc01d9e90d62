import ClusterProtocol
import Foundation
import HatoConfig
import HatoDelivery
import HatoHTTP
import HatoIO
import HatoSupport

/// A node's Prometheus metrics, served at `/metrics` on `nodes[].metrics_listen`.
///
/// - `hato_node_recipients_total{sending_ip,provider,result}`: outcomes reported (delivered, deferred, failed).
/// - `hato_node_failures_total{sending_ip,provider,category}`: deferrals and failures by bounce category.
/// - `hato_node_transaction_seconds{sending_ip}`: MAIL FROM to final reply, per delivered recipient's session.
/// - `hato_node_tls_total{sending_ip,version}`: outcomes by TLS version (`none` for plaintext).
/// - `hato_node_connected`, `hato_node_sending_ips`, `hato_node_leases_in_flight`: the node's state, on scrape.
public final class NodeMetrics: Sendable {
    /// The registry rendered at `/metrics`.
    public let registry = MetricsRegistry()
    let recipients: Counter
    let failures: Counter
    let transaction: Histogram
    let tls: Counter
    let connected: Gauge
    let sendingIPs: Gauge
    let leasesInFlight: Gauge
    /// The provider rules in force (a reload replaces them: `setShaping`).
    private let shaping: Locked<ShapingSettings>

    /// - Parameter shaping: the `shaping.providers` rules that name providers (see `MailboxProvider`).
    public init(shaping: ShapingSettings = ShapingSettings()) {
        self.shaping = Locked(shaping)
        let r = registry
        recipients = r.counter("hato_node_recipients_total", help: "Recipient outcomes reported to the coordinator.",
                               labels: ["sending_ip", "provider", "result"])
        failures = r.counter("hato_node_failures_total", help: "Deferrals and failures by bounce category.",
                             labels: ["sending_ip", "provider", "category"])
        transaction = r.histogram("hato_node_transaction_seconds", help: "SMTP transaction time (MAIL FROM to the final reply).",
                                  labels: ["sending_ip"], buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300])
        tls = r.counter("hato_node_tls_total", help: "Recipient outcomes by TLS version of the session.", labels: ["sending_ip", "version"])
        connected = r.gauge("hato_node_connected", help: "1 while connected to the coordinator.")
        sendingIPs = r.gauge("hato_node_sending_ips", help: "Sending IPs this node owns.")
        leasesInFlight = r.gauge("hato_node_leases_in_flight", help: "Leases held and not yet reported.")
    }

    /// Names providers by these rules from now on (a reload changed `shaping`).
    public func setShaping(_ new: ShapingSettings) { shaping.withLock { $0 = new } }

    /// Counts the outcomes of one reported lease.
    public func record(_ result: ResultMessage) {
        let shaping = self.shaping.snapshot
        for o in result.outcomes {
            // A connection failure counts under the provider of the MX it could not reach.
            let provider = MailboxProvider.name(forMXHost: o.mxHost ?? result.mxHost ?? o.connectionFailure?.mxHost, shaping: shaping)
            recipients.inc(result.sendingIP, provider, o.status.rawValue)
            if o.status != .delivered {
                failures.inc(result.sendingIP, provider, BounceClassifier.classify(o.reply).rawValue)
            }
            if o.mxHost != nil || o.tlsVersion != nil { tls.inc(result.sendingIP, o.tlsVersion ?? "none") }
            if let t = o.timings?.transaction { transaction.observe(t, labels: [result.sendingIP]) }
        }
    }

    /// Sets the state gauges from `state` on every scrape.
    /// - Parameter state: returns (connected, sending IPs owned, leases in flight).
    public func observe(_ state: @escaping @Sendable () -> (connected: Bool, ips: Int, inFlight: Int)) {
        registry.addCollector { [self] in
            let s = state()
            connected.set(s.connected ? 1 : 0)
            sendingIPs.set(Double(s.ips))
            leasesInFlight.set(Double(s.inFlight))
        }
    }

    /// Serves `GET /metrics` (no authentication: bind it to a private address).
    /// - Throws: `SocketError` when the address cannot be bound.
    public func serve(on address: SocketAddress) throws -> HTTPServer {
        let registry = self.registry
        let server = try HTTPServer(address: address) { req in
            guard req.path == "/metrics" else { return .error(404, "no route \(req.path)") }
            guard req.method == "GET" else { return .error(405, "method not allowed") }
            return HTTPResponse(status: 200, contentType: MetricsRegistry.contentType, body: Array(registry.render().utf8))
        }
        server.start()
        return server
    }
}
