import Foundation
import HatoConfig
import HatoHTTP
import HatoIO
import HatoSupport

/// The HTTP send API's listeners (`http_api.listen`, HTTPS with `http_api.tls`) over one
/// `TenantHTTPAPI`. (API keys' last use and the purge of events and idempotency records past
/// `http_api.event_retention` / `idempotency_ttl` are `TenantMaintenance`'s work.)
///
/// Connections persist (up to 1000 requests each, RFC 9112 §9.3); a request must arrive
/// completely within 60 s; at most 256 connections (64 per client address); request bodies held
/// at once are bounded by 4 × `max_request_size` (at least 128 MiB; `503` beyond).
public final class HTTPAPIListener: Sendable {
    /// The API the listeners answer with.
    public let api: TenantHTTPAPI
    private let settings: HTTPAPISettings
    private let servers = Locked<[HTTPServer]>([])
    private let log = Logger(label: "coordinator.http_api")

    /// Creates the listeners (nothing is bound until `start`).
    /// - Parameters:
    ///   - settings: `http_api:`.
    ///   - api: the API.
    public init(settings: HTTPAPISettings, api: TenantHTTPAPI) {
        self.settings = settings; self.api = api
    }

    /// The server limits for the API.
    static func serverConfiguration(_ settings: HTTPAPISettings) -> HTTPServerConfiguration {
        var c = HTTPServerConfiguration()
        c.requestTimeout = .seconds(60)
        c.responseTimeout = .seconds(30)
        c.maxBodySize = settings.maxRequestSize
        c.maxBodyMemory = max(4 * settings.maxRequestSize, 128 << 20)
        c.maxRequestsPerConnection = 1000
        c.admission = AdmissionLimits(maxConnections: 256, maxConnectionsPerPeer: 64)
        return c
    }

    /// Loads the TLS pair (when configured), binds every address and starts serving.
    /// - Throws: `TLSError` when the certificate or key cannot be loaded; `SocketError` when an
    ///   address cannot be bound (the listeners bound so far are closed again).
    public func start() throws {
        let tls = try settings.tls.map { try TLSContext.server(certificateChainPath: $0.certificatePath, privateKeyPath: $0.privateKeyPath) }
        let configuration = Self.serverConfiguration(settings)
        let api = self.api
        var bound: [HTTPServer] = []
        do {
            for address in settings.listen {
                let server = try HTTPServer(address: address, configuration: configuration, tls: tls,
                                            errors: { APIError(status: $0, code: Self.code(forStatus: $0), message: $1).response },
                                            handler: { api.handle($0) })
                bound.append(server)
            }
        } catch {
            for s in bound { s.stop() }
            throw error
        }
        servers.withLock { $0 = bound }
        for s in bound {
            s.start()
            log.info("http api listener ready", ["listen": (s.isTLS ? "https://" : "http://") + s.address.description])
        }
    }

    /// Closes the listeners (requests in progress finish).
    public func stop() {
        for s in servers.snapshot { s.stop() }
    }

    /// The bound addresses (real ports when configured with port 0).
    public var boundAddresses: [SocketAddress] { servers.snapshot.map(\.address) }

    /// The error code of a status the server answers itself.
    static func code(forStatus status: Int) -> String {
        switch status {
        case 400: return "invalid_request"
        case 408: return "request_timeout"
        case 413: return "request_too_large"
        case 431: return "headers_too_large"
        case 503: return "unavailable"
        default: return "error"
        }
    }
}
