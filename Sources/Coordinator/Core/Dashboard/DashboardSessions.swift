import Foundation
import HatoCrypto

/// Who a dashboard session belongs to.
public enum DashboardPrincipal: Sendable, Equatable {
    /// An operator: logged in with the admin token (`name` is `admin`) or an operator account.
    case `operator`(name: String)
    /// A tenant user (issue 16): sees only its tenant's data.
    case tenant(tenant: String, user: String)

    /// The name shown in the page header and written as the author of actions.
    public var displayName: String {
        switch self {
        case .operator(let name): return name
        case .tenant(let tenant, let user): return "\(user) (\(tenant))"
        }
    }

    /// Whether the operator pages are open to it.
    public var isOperator: Bool { if case .operator = self { return true } else { return false } }
}

/// One logged-in browser.
public struct DashboardSession: Sendable, Equatable {
    /// The cookie value: 256 random bits, hex. Never logged.
    public var id: String
    /// Who logged in.
    public var principal: DashboardPrincipal
    /// The CSRF token every POST of this session must carry (256 random bits, hex).
    public var csrfToken: String
    /// When it was created (absolute expiry counts from here).
    public var createdAt: Date
    /// When it was last used (idle expiry counts from here).
    public var lastSeen: Date
    /// For an account's login: a digest of the account's stored password hash at login, so that
    /// removing the account or setting a new password ends the session; nil for the admin token.
    public var accountDigest: String? = nil
}

/// The dashboard's sessions, a pure value: the caller passes the time and the random ids, so
/// expiry is tested with a manual clock and no sockets.
///
/// A session ends at logout, after `idleTimeout` without a request, or `absoluteLifetime`
/// after login, whichever comes first. The table holds at most `capacity` sessions; a new one
/// beyond it evicts the least recently used.
public struct DashboardSessionTable: Sendable {
    /// Seconds without a request after which a session ends. Default 30 minutes.
    public let idleTimeout: TimeInterval
    /// Seconds after login after which a session ends however active. Default 12 hours.
    public let absoluteLifetime: TimeInterval
    /// The most sessions kept. Default 10,000.
    public let capacity: Int
    private var sessions: [String: DashboardSession] = [:]

    /// An empty table.
    /// - Parameters:
    ///   - idleTimeout: seconds (default 1800).
    ///   - absoluteLifetime: seconds (default 43,200).
    ///   - capacity: sessions kept at most (default 10,000).
    public init(idleTimeout: TimeInterval = 1800, absoluteLifetime: TimeInterval = 43_200, capacity: Int = 10_000) {
        self.idleTimeout = idleTimeout; self.absoluteLifetime = absoluteLifetime; self.capacity = max(1, capacity)
    }

    /// Sessions held now (some may have expired and not been purged yet).
    public var count: Int { sessions.count }

    /// Starts a session.
    /// - Parameters:
    ///   - principal: who logged in.
    ///   - id: the new session id (random, from the caller).
    ///   - csrfToken: the new session's CSRF token (random, from the caller).
    ///   - accountDigest: see `DashboardSession.accountDigest`.
    ///   - now: the current time.
    /// - Returns: the session.
    public mutating func create(_ principal: DashboardPrincipal, id: String, csrfToken: String, accountDigest: String? = nil,
                                now: Date) -> DashboardSession {
        purge(now: now)
        if sessions.count >= capacity, let oldest = sessions.values.min(by: { $0.lastSeen < $1.lastSeen }) {
            sessions[oldest.id] = nil
        }
        let s = DashboardSession(id: id, principal: principal, csrfToken: csrfToken, createdAt: now, lastSeen: now, accountDigest: accountDigest)
        sessions[id] = s
        return s
    }

    /// The live session with `id`, touched (its idle time starts again); an expired one is
    /// removed and nil returned.
    /// - Parameters:
    ///   - id: the cookie value.
    ///   - now: the current time.
    public mutating func use(_ id: String, now: Date) -> DashboardSession? {
        guard var s = sessions[id] else { return nil }
        guard isLive(s, now: now) else { sessions[id] = nil; return nil }
        s.lastSeen = now
        sessions[id] = s
        return s
    }

    /// Ends a session (logout). - Returns: whether it existed.
    @discardableResult
    public mutating func remove(_ id: String) -> Bool { sessions.removeValue(forKey: id) != nil }

    /// Ends every session of `principal` (an operator account removed).
    public mutating func remove(principal: DashboardPrincipal) { sessions = sessions.filter { $0.value.principal != principal } }

    /// Drops the expired sessions.
    public mutating func purge(now: Date) { sessions = sessions.filter { isLive($0.value, now: now) } }

    private func isLive(_ s: DashboardSession, now: Date) -> Bool {
        now.timeIntervalSince(s.lastSeen) < idleTimeout && now.timeIntervalSince(s.createdAt) < absoluteLifetime
    }

    /// Whether `presented` is the session's CSRF token, compared in constant time.
    public static func csrfMatches(_ session: DashboardSession, _ presented: String?) -> Bool {
        guard let presented, !presented.isEmpty else { return false }
        return Crypto.constantTimeEquals(Array(session.csrfToken.utf8), Array(presented.utf8))
    }
}
