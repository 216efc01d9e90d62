import Foundation
import HatoIO

/// `http_api:` the tenants' HTTP send API (issue 16; docs/http-api.md). Absent: no listener.
///
/// ```yaml
/// http_api:
///   listen: [127.0.0.1:8025]
///   tls: { certificate: api.crt, private_key: api.key }
///   max_request_size: 35MiB
///   max_recipients: 1000
///   idempotency_ttl: 24h
///   event_retention: 30d
/// ```
///
/// With a `coordinators:` list every coordinator serves the same `listen` addresses on its own
/// host (a standby takes mail too, like SMTP); give addresses every host has (`0.0.0.0:8025`,
/// or a name the hosts share), not one host's own.
public struct HTTPAPISettings: Sendable, Equatable {
    /// `listen`: the addresses of the listener (port 0 picks a free port, for tests). Required.
    public var listen: [SocketAddress]
    /// `tls`: HTTPS with this certificate and key (PEM, read at start). Default nil: plain HTTP
    /// (for loopback or behind a TLS proxy only: API keys travel in every request).
    public var tls: TLSPairSettings?
    /// `max_request_size`: the largest request body in octets (`413` beyond). Default 35 MiB:
    /// base64 makes attachments a third larger, and the built message must still fit in
    /// `smtp.max_message_size`. 1 KiB…2 GiB.
    public var maxRequestSize: Int = 35 * 1024 * 1024
    /// `max_recipients`: the most distinct recipients of one request (`400 too_many_recipients`
    /// beyond), before any tenant's own limit. Default nil: `smtp.max_recipients`.
    public var maxRecipients: Int?
    /// `idempotency_ttl`: seconds an `Idempotency-Key` is remembered. Default 86 400 (24h).
    public var idempotencyTTL: TimeInterval = 86_400
    /// `event_retention`: seconds a tenant's delivery events stay readable through
    /// `GET /api/v1/events`. Default 2 592 000 (30d).
    public var eventRetention: TimeInterval = 30 * 86_400

    /// Settings listening on `listen`, with the defaults for the rest.
    public init(listen: [SocketAddress]) { self.listen = listen }

    /// The keys of the section.
    static let keys = ["listen", "tls", "max_request_size", "max_recipients", "idempotency_ttl", "event_retention"]
}

extension ClusterConfigDecoder {
    /// Decodes `http_api:` into `config.httpAPI` (after `smtp:` and `coordinator:`).
    /// - Throws: `ConfigError` naming the file, line and key of a bad value or an unknown key.
    func decodeHTTPAPI(_ top: ConfigSection, into config: inout ClusterConfig) throws {
        guard let sec = try top.section("http_api", allowed: HTTPAPISettings.keys) else { return }
        let items = try sec.requireList("listen", allowScalar: true)
        guard !items.isEmpty else {
            throw ConfigError(file: file, line: sec.entryLine("listen"), key: sec.keyPath("listen"), message: "must list at least one address")
        }
        var listen: [SocketAddress] = []
        let taken = [config.coordinator.listen, config.coordinator.adminListen] + config.smtp.listen
            + config.coordinators.flatMap { [$0.listen, $0.adminListen] + $0.smtpListen }
        for item in items {
            let s = try item.scalar()
            let address = try s.convert { try ConfigValue.socketAddress($0, defaultPort: nil, allowZeroPort: true) }
            if address.port != 0 {
                if listen.contains(address) {
                    throw ConfigError(file: file, line: s.line, key: s.path, message: "\(address) is listed twice")
                }
                if taken.contains(address) {
                    throw ConfigError(file: file, line: s.line, key: s.path, message: "\(address) is already used by the coordinator (cluster, admin or SMTP)")
                }
            }
            listen.append(address)
        }
        var settings = HTTPAPISettings(listen: listen)
        if let tls = try sec.section("tls", allowed: ["certificate", "private_key"]) { settings.tls = try decodePair(tls) }
        if let v = try sec.get("max_request_size", { text -> Int in
            let size = try ConfigValue.size(text)
            guard size >= 1024 && size <= 1 << 31 else { throw ConfigValueError("\(text) is out of range (1KiB…2GiB)") }
            return size
        }) { settings.maxRequestSize = v }
        settings.maxRecipients = try sec.get("max_recipients") { try ConfigValue.integer($0, in: 1...1_000_000) }
        for (key, minimum) in [("idempotency_ttl", 60.0), ("event_retention", 3600.0)] {
            guard let v = try sec.get(key, { try ConfigValue.duration($0) }) else { continue }
            guard v >= minimum else {
                let at = try sec.scalar(key)
                throw ConfigError(file: file, line: at?.line, key: at?.path, message: "must be at least \(Int(minimum))s")
            }
            if key == "idempotency_ttl" { settings.idempotencyTTL = v } else { settings.eventRetention = v }
        }
        // A replayed request answers with the first one's message id: that message must still
        // be there to look up (`coordinator.message_retention`).
        if settings.idempotencyTTL > config.coordinator.messageRetention {
            let at = try sec.scalar("idempotency_ttl")
            throw ConfigError(file: file, line: at?.line ?? sec.line, key: at?.path ?? sec.keyPath("idempotency_ttl"),
                              message: "must not be longer than coordinator.message_retention (\(Int(config.coordinator.messageRetention))s): a replay answers with a message id that must still be found")
        }
        config.httpAPI = settings
    }
}
