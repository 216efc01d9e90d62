import Foundation
import HatoHTTP
import HatoSupport

/// The body of `POST /v1/queue/{flush|delete|bounce|hold|release}`: which recipients (ids or a
/// selector; every criterion given must hold), and how.
public struct QueueActionRequest: Codable, Sendable, Equatable {
    /// Recipient row ids.
    public var recipientIds: [Int64]?
    /// Message queue ids (every recipient of each).
    public var messageIds: [String]?
    /// A destination domain.
    public var domain: String?
    /// A mailbox provider label (`gmail`, `microsoft`, a `shaping.providers` name, `unknown`).
    public var provider: String?
    /// A pool.
    public var pool: String?
    /// The last sending IP tried (`-`: never tried).
    public var ip: String?
    /// The reverse-path: an address, a domain, or `<>`.
    public var sender: String?
    /// One state (`queued`, `deferred`, `held`; `leased` is never touched).
    public var state: String?
    /// The message's tenant (issue 16).
    public var tenant: String?
    /// Required to select every waiting recipient without another criterion.
    public var all: Bool?
    /// Count what would be touched; change nothing.
    public var dryRun: Bool?
    /// The operator's reason (logged; a bounce's DSN diagnostic carries it).
    public var reason: String?

    /// A request; see the properties.
    public init(recipientIds: [Int64]? = nil, messageIds: [String]? = nil, domain: String? = nil, provider: String? = nil, pool: String? = nil,
                ip: String? = nil, sender: String? = nil, state: String? = nil, all: Bool? = nil, dryRun: Bool? = nil, reason: String? = nil,
                tenant: String? = nil) {
        self.recipientIds = recipientIds; self.messageIds = messageIds; self.domain = domain; self.provider = provider; self.pool = pool
        self.ip = ip; self.sender = sender; self.state = state; self.all = all; self.dryRun = dryRun; self.reason = reason
        self.tenant = tenant
    }

    /// Whether the request names any recipient or criterion (else it needs `all`).
    var hasSelector: Bool {
        !(recipientIds ?? []).isEmpty || !(messageIds ?? []).isEmpty
            || [domain, provider, pool, ip, sender, state, tenant].contains { !($0 ?? "").isEmpty }
    }

    /// The criteria in an operator's words: `domain gmail.com pool bulk`, `all`.
    var target: String {
        var parts: [String] = []
        if let r = recipientIds, !r.isEmpty { parts.append("recipient " + r.map(String.init).joined(separator: ",")) }
        if let m = messageIds, !m.isEmpty { parts.append("message " + m.joined(separator: ",")) }
        for (k, v) in [("domain", domain), ("provider", provider), ("pool", pool), ("ip", ip), ("sender", sender), ("state", state), ("tenant", tenant)] {
            if let v, !v.isEmpty { parts.append("\(k) \(v)") }
        }
        return parts.isEmpty ? "all" : parts.joined(separator: " ")
    }
}

/// The answer to a queue action.
public struct QueueActionReport: Codable, Sendable, Equatable {
    /// `flush`, `delete`, `bounce`, `hold`, `release`.
    public var action: String
    /// Whether nothing was changed (`dry_run`).
    public var dryRun: Bool
    /// The selector in words.
    public var target: String
    /// Recipients the selector matched in the states the action applies to.
    public var matched: Int
    /// Recipients changed (0 in a dry run; a flush changes only those not yet due).
    public var changed: Int
    /// Recipients the selector matches that are in a delivery now (leased): left alone.
    public var inFlight: Int
    /// Who asked.
    public var by: String
}

/// `GET /v1/queue/summary` body.
public struct QueueSummaryReport: Codable, Sendable, Equatable {
    /// `domain`, `provider`, `pool`, `ip` or `state`.
    public var by: String
    /// The groups, largest first (at most `limit`).
    public var groups: [QueueGroup]
    /// Groups in all (more than `groups.count` when cut at the limit).
    public var groupCount: Int
    /// Waiting recipients in all groups.
    public var total: Int
}

/// One row of `GET /v1/queue/recipients`.
public struct QueueListEntry: Codable, Sendable, Equatable {
    /// The recipient's row id (a `flush`/`hold`/… argument, and the page cursor).
    public var recipientId: Int64
    /// The message's queue id.
    public var messageId: String
    /// The forward-path.
    public var address: String
    /// The destination domain (lower case).
    public var domain: String
    /// `queued`, `deferred`, `leased` or `held`.
    public var state: String
    /// Delivery attempts so far (0: never attempted).
    public var attempts: Int
    /// Seconds since the message was accepted.
    public var age: Double
    /// The pool the message is routed to.
    public var pool: String
    /// The reverse-path (`""` for `<>`).
    public var sender: String
    /// The sending IP of the last attempt.
    public var sendingIp: String?
    /// When the next attempt is due (ISO 8601), if set.
    public var nextAttempt: String?
    /// The last reply, nil before the first attempt.
    public var lastReply: String?
    /// Why it waits (`ClusterHub.waitReason`).
    public var reason: String
}

/// `GET /v1/queue/recipients` body: a page and the cursor of the next (nil at the end).
public struct QueueListPage: Codable, Sendable, Equatable {
    /// At most `limit` recipients, in recipient id order.
    public var recipients: [QueueListEntry]
    /// Pass as `after=` for the next page; nil when this is the last.
    public var next: String?
}

/// The body of `POST /v1/pauses`.
public struct PauseRequest: Codable, Sendable, Equatable {
    /// `provider`, `pool` or `ip`.
    public var kind: String
    /// The provider label, pool name or sending IP address.
    public var name: String
    /// Why (shown by `queue list` and in the delay notices of the mail it holds).
    public var reason: String?
    /// A request; see the properties.
    public init(kind: String, name: String, reason: String? = nil) { self.kind = kind; self.name = name; self.reason = reason }
}

/// The answer to a lift of backoffs.
public struct LiftReport: Codable, Sendable, Equatable {
    /// What was lifted: `provider gmail`, `ip 192.0.2.10 provider gmail`.
    public var target: String
    /// The backoffs lifted.
    public var lifted: [BackoffTable.Entry]
}
