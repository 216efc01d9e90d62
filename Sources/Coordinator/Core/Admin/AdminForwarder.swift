import Foundation
import HatoConfig
import HatoCrypto
import HatoHTTP
import HatoIO
import HatoSupport

/// With several coordinators (issue 15), a standby's admin API answers like the leader's: every
/// request about the cluster (status, nodes, IPs, queue, operator actions) is forwarded to the
/// leader's admin listener with the caller's token and operator, and the leader's answer is
/// returned as it is. So every `hato-coordinator` subcommand works against any live coordinator.
///
/// What a standby answers itself: `/metrics` (its own submission figures), `POST /v1/reload`
/// (each coordinator re-reads its own copy of cluster.yml: a standby takes over with the
/// configuration in force; reload every coordinator, or send each SIGHUP); and, while no leader
/// can be reached (an election under way, the leader's host gone), `GET /v1/status` with the
/// queue counts from the shared store, `"role": "standby"` and the leader as far as known. Every
/// other request then gets `503` naming the reason. A forwarded request is never forwarded again
/// (`X-Hato-Forwarded-By`): two coordinators that each think the other leads answer 503.
public struct AdminForwarder: Sendable {
    /// The header a forwarded request carries: the id of the coordinator that forwarded it.
    public static let forwardedHeader = "X-Hato-Forwarded-By"

    let coordinatorID: String
    let token: String
    let coordinators: [CoordinatorInstance]
    let tls: TLSContext?
    let leader: @Sendable () -> ClusterHub.LeaderInfo
    let localStatus: @Sendable () throws -> StatusReport

    /// - Parameters:
    ///   - config: the configuration (its `coordinators:` list gives the leader's admin address;
    ///     `coordinator.admin_tls` makes the forwarded request HTTPS, trusting its CA or certificate).
    ///   - coordinatorID: this coordinator's id.
    ///   - leader: who leads now (`ClusterHub.leader`).
    ///   - localStatus: the status this standby can give without the leader.
    /// - Throws: `TLSError` when the admin TLS trust file cannot be loaded.
    public init(config: ClusterConfig, coordinatorID: String, leader: @escaping @Sendable () -> ClusterHub.LeaderInfo,
                localStatus: @escaping @Sendable () throws -> StatusReport) throws {
        self.coordinatorID = coordinatorID
        token = config.coordinator.adminToken
        coordinators = config.coordinators
        tls = try config.coordinator.adminTLS.map { try TLSContext.client(verifyPeer: true, trustedCAFile: $0.trustPath, trustPartialChain: true) }
        self.leader = leader
        self.localStatus = localStatus
    }

    /// The answer for `req` when this coordinator does not lead, nil when it leads (or for
    /// `/metrics`): the caller then handles the request itself.
    public func handle(_ req: HTTPRequest) -> HTTPResponse? {
        let info = leader()
        guard !info.isSelf, req.path != "/metrics", req.path != "/v1/reload" else { return nil }
        // Nothing is said (not even who leads) without the token; the leader checks it again.
        let expected = "Bearer " + token
        guard let auth = req.headers["authorization"], Crypto.constantTimeEquals(Array(auth.utf8), Array(expected.utf8)) else {
            return .error(401, "missing or wrong bearer token")
        }
        let forwardedBy = req.headers[Self.forwardedHeader.lowercased()]
        var reason: String
        if let forwardedBy {
            reason = "\(coordinatorID) is a standby too (the request came forwarded from \(forwardedBy))"
        } else if info.leader == coordinatorID {
            reason = "another process with this coordinator's id (\(coordinatorID)) holds the leadership: a restart within the leadership lease "
                + "(it passes when the lease runs out), or a second coordinator started with the same --id"
        } else if let id = info.leader, let target = coordinators.first(where: { $0.id == id }) {
            do {
                return try forward(req, to: target)
            } catch {
                reason = "the leader \(id) at \(target.adminListen) did not answer: \(error)"
            }
        } else {
            reason = "no leader is known right now (term \(info.term)); an election is under way or the store is unreachable"
        }
        if req.method == "GET" && req.path == "/v1/status" {
            do {
                var status = try localStatus()
                status.note = reason
                return .json(status)
            } catch {
                reason += "; the store: \(error)"
            }
        }
        return .error(503, "\(coordinatorID) is a standby and cannot act for the leader: \(reason)")
    }

    private func forward(_ req: HTTPRequest, to leader: CoordinatorInstance) throws -> HTTPResponse {
        var target = req.path
        if !req.query.isEmpty {
            var allowed = CharacterSet.urlQueryAllowed
            allowed.remove(charactersIn: "&=+")
            target += "?" + req.query.sorted { $0.key < $1.key }.map {
                "\($0.key.addingPercentEncoding(withAllowedCharacters: allowed) ?? $0.key)=\($0.value.addingPercentEncoding(withAllowedCharacters: allowed) ?? $0.value)"
            }.joined(separator: "&")
        }
        var headers: [(String, String)] = [(Self.forwardedHeader, coordinatorID)]
        for name in ["authorization", "x-hato-operator", "content-type"] {
            if let v = req.headers[name] { headers.append((name, v)) }
        }
        // (Wildcard addresses are refused in a list of several coordinators: the address is reachable.)
        // A frozen leader must not hold a reading operator for long: 5 s for reads (a new leader
        // is elected within the lease anyway), 30 s for actions.
        let response = try HTTPClient.send(req.method, to: leader.adminListen, path: target, headers: headers,
                                           body: req.body.isEmpty ? nil : req.body, tls: tls, timeout: req.method == "GET" ? 5 : 30)
        return HTTPResponse(status: response.status, contentType: response.headers["content-type"] ?? "application/json", body: response.body)
    }
}
