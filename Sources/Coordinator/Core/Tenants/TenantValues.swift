import Foundation
import SMTPCore

// The values of the tenant layer (issue 16): a relay service's customers, their credentials,
// sending domains, limits and delivery events. Stored by both queue stores (`TenantStore`),
// never in cluster.yml: tenants come and go while the cluster runs.

/// Whether a tenant may send.
public enum TenantState: String, Sendable, Codable, CaseIterable {
    /// Mail is accepted (within the limits) and delivered.
    case active
    /// New mail is refused (SMTP `550 5.7.1`, HTTP 403); the tenant's waiting mail is held
    /// (state `held`) until the tenant is resumed, never lost.
    case suspended
}

/// A tenant's volume plan and message limits. A nil limit is unlimited.
///
/// The hour, day and month windows are UTC calendar windows (an hour starts at :00, a day at
/// 00:00 UTC, a month on the 1st at 00:00 UTC), counted in messages accepted (one SMTP
/// transaction or one HTTP request is one message, whatever its number of recipients).
/// In JSON (admin API, snake_case): `messages_per_hour`, `messages_per_day`, `messages_per_month`,
/// `recipients_per_message`.
public struct TenantLimits: Sendable, Codable, Equatable {
    /// Messages per UTC hour.
    public var messagesPerHour: Int?
    /// Messages per UTC day.
    public var messagesPerDay: Int?
    /// Messages per UTC calendar month.
    public var messagesPerMonth: Int?
    /// Recipients per message (further RCPTs get `452 4.5.3`, HTTP 400).
    public var recipientsPerMessage: Int?

    /// Limits from their parts (nil: unlimited).
    public init(messagesPerHour: Int? = nil, messagesPerDay: Int? = nil, messagesPerMonth: Int? = nil, recipientsPerMessage: Int? = nil) {
        self.messagesPerHour = messagesPerHour; self.messagesPerDay = messagesPerDay
        self.messagesPerMonth = messagesPerMonth; self.recipientsPerMessage = recipientsPerMessage
    }
}

/// A customer of the relay service.
public struct Tenant: Sendable, Equatable {
    /// The tenant's name: 1–64 of `a-z 0-9 - _ .`, unique, the key everywhere (messages, metrics).
    public var name: String
    /// Whether it may send.
    public var state: TenantState
    /// Why it was suspended (shown in the 550 reply and the 403 body), nil when active.
    public var stateReason: String?
    /// The pool its mail is routed to; nil: the cluster's routing rules decide.
    public var pool: String?
    /// Its limits.
    public var limits: TenantLimits
    /// Where its delivery events are posted (HTTPS or loopback HTTP), nil for none.
    public var webhookURL: String?
    /// The HMAC-SHA256 key its webhook bodies are signed with (`X-Hato-Signature`); generated
    /// when a webhook URL is set without one. Nil for none.
    public var webhookSecret: String?
    /// When it was created, seconds since 1970.
    public var createdAt: Double
    /// The priority class of its mail (issue 18); nil: its pool's. `bulk` here cannot be raised
    /// by a message's `X-Hato-Priority` or the HTTP API's `priority` (see `MessagePriority.resolved`).
    public var priority: MessagePriority?

    /// A tenant from its parts.
    public init(name: String, state: TenantState = .active, stateReason: String? = nil, pool: String? = nil,
                limits: TenantLimits = TenantLimits(), webhookURL: String? = nil, webhookSecret: String? = nil, createdAt: Double,
                priority: MessagePriority? = nil) {
        self.name = name; self.state = state; self.stateReason = stateReason; self.pool = pool; self.limits = limits
        self.webhookURL = webhookURL; self.webhookSecret = webhookSecret; self.createdAt = createdAt; self.priority = priority
    }

    /// Whether a message is this tenant's: stored with its name and received since it was
    /// created — a tenant made again under a deleted one's name does not see the old one's mail.
    public func owns(_ message: MessageRecord) -> Bool {
        message.tenant == name && message.receivedAt >= createdAt
    }

    /// Whether an event is of this tenant's mail (its name, and since it was created).
    public func owns(_ event: TenantEvent) -> Bool {
        event.tenant == name && event.at >= createdAt
    }

    /// Whether `name` is a valid tenant name (1–64 of lower-case letters, digits, `-`, `_`, `.`).
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 64
            && name.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D || $0 == 0x5F || $0 == 0x2E }
    }
}

/// An SMTP AUTH account (RFC 4954) of a tenant: mail submitted with it belongs to the tenant.
/// User names are unique across every tenant and `smtp.users` in cluster.yml.
public struct TenantSMTPUser: Sendable, Equatable {
    /// The AUTH user name.
    public var name: String
    /// The owning tenant.
    public var tenant: String
    /// The PBKDF2 hash (`$pbkdf2-sha256$…`), as `smtp.users` keeps it.
    public var passwordHash: String
    /// When it was created, seconds since 1970.
    public var createdAt: Double

    /// An account from its parts.
    public init(name: String, tenant: String, passwordHash: String, createdAt: Double) {
        self.name = name; self.tenant = tenant; self.passwordHash = passwordHash; self.createdAt = createdAt
    }
}

/// An HTTP API key of a tenant, as stored: never the secret itself, only its SHA-256.
///
/// A key is shown once, at creation, as `hato_<id>_<secret>`: `id` is 16 lower-case hex digits
/// (the lookup key, safe to log), `secret` 43 base64url characters (256 random bits).
public struct APIKeyRecord: Sendable, Equatable {
    /// The key's public id (16 hex digits).
    public var id: String
    /// The owning tenant.
    public var tenant: String
    /// The operator's label ("billing app, production").
    public var label: String
    /// SHA-256 of the secret part's UTF-8 octets (32 octets).
    public var secretHash: [UInt8]
    /// When it was created, seconds since 1970.
    public var createdAt: Double
    /// When it was last used (to the minute), nil if never.
    public var lastUsedAt: Double?
    /// When it was revoked, nil while valid.
    public var revokedAt: Double?

    /// A key record from its parts.
    public init(id: String, tenant: String, label: String, secretHash: [UInt8], createdAt: Double, lastUsedAt: Double? = nil, revokedAt: Double? = nil) {
        self.id = id; self.tenant = tenant; self.label = label; self.secretHash = secretHash
        self.createdAt = createdAt; self.lastUsedAt = lastUsedAt; self.revokedAt = revokedAt
    }
}

/// One DKIM key of a sending domain (RFC 6376; ed25519 per RFC 8463).
public struct DomainSigningKey: Sendable, Equatable {
    /// The selector, with the date it was made (`hato20261205e`, `hato20261205r`).
    public var selector: String
    /// `ed25519-sha256` or `rsa-sha256`.
    public var algorithm: String
    /// The private key as PKCS#8 PEM sealed with the cluster secret (`SecretBox`): the store
    /// alone does not reveal it.
    public var sealedPrivateKey: [UInt8]
    /// The `p=` value of the DNS record (base64 of the public key).
    public var publicKey: String

    /// A key from its parts.
    public init(selector: String, algorithm: String, sealedPrivateKey: [UInt8], publicKey: String) {
        self.selector = selector; self.algorithm = algorithm; self.sealedPrivateKey = sealedPrivateKey; self.publicKey = publicKey
    }
}

/// A domain a tenant may send from (envelope sender and `From:`), with its DKIM keys.
/// A domain belongs to one tenant at most.
public struct SendingDomain: Sendable, Equatable {
    /// The domain, lower-case, without a trailing dot.
    public var domain: String
    /// The owning tenant.
    public var tenant: String
    /// Its DKIM keys (normally one ed25519 and one rsa-2048: nodes sign with both, RFC 8463 §1).
    public var keys: [DomainSigningKey]
    /// When it was added, seconds since 1970.
    public var createdAt: Double

    /// A domain from its parts.
    public init(domain: String, tenant: String, keys: [DomainSigningKey], createdAt: Double) {
        self.domain = domain; self.tenant = tenant; self.keys = keys; self.createdAt = createdAt
    }
}

/// A tenant's message counts in the current UTC hour, day and month.
public struct TenantUsage: Sendable, Equatable, Codable {
    /// Messages this UTC hour.
    public var hour: Int
    /// Messages this UTC day.
    public var day: Int
    /// Messages this UTC month.
    public var month: Int

    /// Counts from their parts.
    public init(hour: Int, day: Int, month: Int) { self.hour = hour; self.day = day; self.month = month }
}

/// The answer of `TenantStore.reserveQuota`.
public enum QuotaDecision: Sendable, Equatable {
    /// Counted: the message may be queued (release it with `releaseQuota` if queueing fails).
    case reserved
    /// Over a limit: nothing counted. `window` is `hour`, `day` or `month`; `limit` the limit;
    /// `retryAfter` the seconds until that window ends.
    case overLimit(window: String, limit: Int, retryAfter: Int)
}

/// What an earlier request with the same `Idempotency-Key` produced.
public struct IdempotencyRecord: Sendable, Equatable {
    /// The owning tenant.
    public var tenant: String
    /// The client's key (at most 255 octets).
    public var key: String
    /// SHA-256 (hex) of the request body: the same key with another body is a client error.
    public var requestHash: String
    /// The queue id the request produced.
    public var messageID: String
    /// When it was recorded, seconds since 1970 (kept `http_api.idempotency_ttl`, default 24 h).
    public var createdAt: Double

    /// A record from its parts.
    public init(tenant: String, key: String, requestHash: String, messageID: String, createdAt: Double) {
        self.tenant = tenant; self.key = key; self.requestHash = requestHash; self.messageID = messageID; self.createdAt = createdAt
    }
}

/// One delivery event of a tenant's message, kept for the events API (the reporting outbox
/// deletes its own rows once processed; these stay `http_api.event_retention`, default 30 days).
public struct TenantEvent: Sendable, Equatable, Codable {
    /// Increasing id: the paging cursor (`GET /api/v1/events?since=`).
    public var id: Int64
    /// The owning tenant.
    public var tenant: String
    /// The kind: `received`, `delivered`, `deferred`, `failed` (a bounce), `expired`,
    /// `suppressed`, `held`, `released`, `deleted`, `leased`.
    public var kind: String
    /// The queue id.
    public var messageID: String
    /// The recipient (nil for message-level events such as `received`).
    public var recipient: String?
    /// The SMTP reply code behind it, if any.
    public var code: Int?
    /// The enhanced status code (RFC 3463), if any.
    public var enhanced: String?
    /// The reply text or the reason.
    public var text: String?
    /// The MX host, if any.
    public var mx: String?
    /// The sending IP, if any.
    public var sendingIP: String?
    /// When it happened, seconds since 1970.
    public var at: Double

    /// An event from its parts.
    public init(id: Int64, tenant: String, kind: String, messageID: String, recipient: String? = nil, code: Int? = nil, enhanced: String? = nil,
                text: String? = nil, mx: String? = nil, sendingIP: String? = nil, at: Double) {
        self.id = id; self.tenant = tenant; self.kind = kind; self.messageID = messageID; self.recipient = recipient
        self.code = code; self.enhanced = enhanced; self.text = text; self.mx = mx; self.sendingIP = sendingIP; self.at = at
    }
}

/// Why a tenant store write was refused (the store itself is fine).
public enum TenantStoreError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A tenant, user, key or domain with that name exists already (`what` says which).
    case exists(String)
    /// No such tenant, user, key or domain (`what` says which).
    case notFound(String)
    /// The change is not allowed as asked (e.g. deleting a tenant that still owns mail).
    case conflict(String)

    /// A sentence for the operator.
    public var description: String {
        switch self {
        case .exists(let w): return "\(w) already exists"
        case .notFound(let w): return "\(w) not found"
        case .conflict(let w): return w
        }
    }
}
