import Foundation
import HatoHTTP
import SMTPCore

/// The admin API routes of the dashboard's operator accounts (bearer token, `AdminAPI`):
///
/// | method | path | what |
/// |---|---|---|
/// | GET | `/v1/operators` | the accounts (names and when added; never the hashes) |
/// | POST | `/v1/operators` | `{"name": N, "password_hash": "$pbkdf2-sha256$…"}`: add, or set the password |
/// | DELETE | `/v1/operators/{name}` | remove (its dashboard sessions end at their next request) |
public struct OperatorAdminAPI: Sendable {
    let store: any OperatorStore & Sendable
    let now: @Sendable () -> Date

    /// `POST /v1/operators` body.
    public struct AddRequest: Codable, Sendable {
        /// The login name.
        public var name: String
        /// The `$pbkdf2-sha256$…` hash (`PasswordHash.encoded`).
        public var passwordHash: String
        /// A request from its parts.
        public init(name: String, passwordHash: String) { self.name = name; self.passwordHash = passwordHash }
    }

    /// One row of `GET /v1/operators`.
    public struct Row: Codable, Sendable, Equatable {
        /// The login name.
        public var name: String
        /// When added or its password last set, seconds since 1970.
        public var createdAt: Double
    }

    /// Routes over `store`.
    public init(store: any OperatorStore & Sendable, now: @escaping @Sendable () -> Date = { Date() }) { self.store = store; self.now = now }

    /// Answers a `/v1/operators…` request (the bearer token already checked); nil for other paths.
    public func handle(_ req: HTTPRequest) -> HTTPResponse? {
        let p = req.path.split(separator: "/").map(String.init)
        guard p.count >= 2, p[0] == "v1", p[1] == "operators" else { return nil }
        do {
            switch (req.method, p.count) {
            case ("GET", 2):
                return .json(try store.operatorAccounts().map { Row(name: $0.name, createdAt: $0.createdAt) })
            case ("POST", 2):
                let d = JSONDecoder()
                d.keyDecodingStrategy = .convertFromSnakeCase
                guard let body = try? d.decode(AddRequest.self, from: Data(req.body)) else {
                    return .error(400, "body must be {\"name\": N, \"password_hash\": H}")
                }
                guard OperatorAccount.isValidName(body.name) else { return .error(400, "name must be 1-64 of A-Z a-z 0-9 . _ @ -") }
                guard (try? PasswordHash(parsing: body.passwordHash)) != nil else {
                    return .error(400, "password_hash must be a $pbkdf2-sha256$ hash (hato-coordinator hash-password)")
                }
                try store.saveOperator(OperatorAccount(name: body.name, passwordHash: body.passwordHash, createdAt: now().timeIntervalSince1970))
                return .json(Row(name: body.name, createdAt: now().timeIntervalSince1970), status: 201)
            case ("DELETE", 3):
                guard try store.removeOperator(named: p[2]) else { return .error(404, "no operator \(p[2])") }
                return .json(["removed": p[2]])
            default:
                return .error(405, "no route \(req.method) \(req.path)")
            }
        } catch {
            return .error(500, "operator store: \(error)")
        }
    }
}
