import Foundation
import SMTPCore

// The values the queue store takes and returns (both implementations: SQLiteQueueStore,
// PostgreSQLQueueStore).

/// Recipient states (DESIGN.md): `queued → leased → delivered | deferred(→ queued) | failed | expired | suppressed`.
/// `suppressed`: on the suppression list at enqueue, never attempted (QueueStore+Suppression.swift).
/// Two more are set by an operator (queue control, QueueStore+Control.swift): `held` waits without
/// ever being leased until it is released (back to `queued`, due at once), and is kept by the delay
/// warning and the maximum queue age like any waiting recipient; `deleted` is final: removed from
/// delivery without a DSN (the record stays for lookups).
public enum RecipientState: String, Sendable, CaseIterable, Codable {
    case queued, leased, deferred, delivered, failed, expired, suppressed, held, deleted
    /// Whether no further delivery attempt will be made.
    public var isFinal: Bool {
        self == .delivered || self == .failed || self == .expired || self == .suppressed || self == .deleted
    }
    /// The states of a recipient still waiting in the queue: `queued`, `deferred`, `leased`, `held`.
    public static let waiting: [RecipientState] = [.queued, .deferred, .leased, .held]
}

/// A message as accepted by the SMTP listener, ready to be written.
public struct NewMessage: Sendable {
    /// Queue id.
    public var id: String
    /// Reverse-path (empty for `<>`).
    public var reversePath: String
    /// Forward-paths.
    public var recipients: [String]
    /// The pool the message is routed to.
    public var pool: String
    /// Content with the trace header prepended, CRLF line endings.
    public var content: [UInt8]
    /// The client's EHLO/HELO name.
    public var heloName: String
    /// The client's address.
    public var clientAddress: String
    /// Time of acceptance.
    public var receivedAt: Date
    /// The SMTP AUTH user that submitted the message (RFC 4954), nil when unauthenticated.
    public var authenticatedUser: String?
    /// `RET=` (RFC 3461 §4.3), nil when not given.
    public var dsnReturn: DSNReturn?
    /// `ENVID=` as received (xtext, RFC 3461 §4.4), nil when not given.
    public var envelopeID: String?
    /// NOTIFY/ORCPT per recipient (RFC 3461 §4.1–4.2), parallel to `recipients`; missing entries mean none.
    public var recipientParameters: [RecipientParameters]
    /// The tenant the message belongs to (issue 16), nil for mail of no tenant.
    public var tenant: String?
    /// The HTTP API's `Idempotency-Key` record, written in the same transaction (nil: none).
    public var idempotency: IdempotencyRecord?
    /// The priority class (issue 18), stored with the message and each of its recipients. Default transactional.
    public var priority: MessagePriority = .transactional
    public init(id: String, reversePath: String, recipients: [String], pool: String, content: [UInt8], heloName: String, clientAddress: String, receivedAt: Date,
                authenticatedUser: String? = nil, dsnReturn: DSNReturn? = nil, envelopeID: String? = nil, recipientParameters: [RecipientParameters] = [],
                tenant: String? = nil, idempotency: IdempotencyRecord? = nil) {
        self.id = id; self.reversePath = reversePath; self.recipients = recipients; self.pool = pool
        self.content = content; self.heloName = heloName; self.clientAddress = clientAddress; self.receivedAt = receivedAt
        self.authenticatedUser = authenticatedUser; self.dsnReturn = dsnReturn; self.envelopeID = envelopeID
        self.recipientParameters = recipientParameters; self.tenant = tenant; self.idempotency = idempotency
    }
}

/// A recipient due for delivery, as the scheduler sees it.
public struct DueRecipient: Sendable, Equatable {
    public var id: Int64
    public var messageID: String
    public var address: String
    public var domain: String
    public var pool: String
    public var reversePath: String
    /// The message's priority class (issue 18).
    public var priority: MessagePriority
    public init(id: Int64, messageID: String, address: String, domain: String, pool: String, reversePath: String,
                priority: MessagePriority = .transactional) {
        self.id = id; self.messageID = messageID; self.address = address; self.domain = domain; self.pool = pool; self.reversePath = reversePath
        self.priority = priority
    }
}

/// A granted lease as recorded in the queue.
public struct LeaseRecord: Sendable, Equatable {
    public var id: String
    public var node: String
    public var instance: String
    public var sendingIP: String
    public var messageID: String
    public var domain: String
    public var recipientIDs: [Int64]
    public var grantedAt: Date
    public var expiresAt: Date
}

/// What applying one result changed.
public struct ResultApplication: Sendable, Equatable {
    /// Recipients moved to delivered/failed/deferred/expired by this result.
    public var applied = 0
    /// Outcomes ignored (recipient already final, or re-leased to someone else).
    public var ignored = 0
    /// Whether the lease was still known (false for a late or duplicate report).
    public var leaseKnown = false
}

/// One recipient's record for lookups. Its JSON (the admin API) keeps the flat `lastCode`,
/// `lastEnhanced` and `lastText` keys.
public struct RecipientRecord: Codable, Sendable, Equatable {
    public var id: Int64
    public var address: String
    public var state: RecipientState
    public var attempts: Int
    public var nextAttemptAt: Double?
    /// The last reply (remote or locally generated), nil before any.
    public var lastReply: DeliveryStatus?
    /// The last text when there is no reply (an expiry before any attempt), nil when `lastReply` is set.
    public var lastTextWithoutReply: String?
    public var node: String?
    public var sendingIP: String?
    public var mxHost: String?
    public var updatedAt: Double

    public init(id: Int64, address: String, state: RecipientState, attempts: Int, nextAttemptAt: Double?, lastReply: DeliveryStatus?,
                lastTextWithoutReply: String?, node: String?, sendingIP: String?, mxHost: String?, updatedAt: Double) {
        self.id = id; self.address = address; self.state = state; self.attempts = attempts; self.nextAttemptAt = nextAttemptAt
        self.lastReply = lastReply; self.lastTextWithoutReply = lastTextWithoutReply; self.node = node; self.sendingIP = sendingIP
        self.mxHost = mxHost; self.updatedAt = updatedAt
    }

    enum CodingKeys: String, CodingKey {
        case id, address, state, attempts, nextAttemptAt, lastCode, lastEnhanced, lastText, node, mxHost, updatedAt
        case sendingIP = "sendingIp"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = try c.decode(Int64.self, forKey: .id)
        address = try c.decode(String.self, forKey: .address)
        state = try c.decode(RecipientState.self, forKey: .state)
        attempts = try c.decode(Int.self, forKey: .attempts)
        nextAttemptAt = try c.decodeIfPresent(Double.self, forKey: .nextAttemptAt)
        let text = try c.decodeIfPresent(String.self, forKey: .lastText)
        if let code = try c.decodeIfPresent(Int.self, forKey: .lastCode) {
            lastReply = DeliveryStatus(code: code, enhanced: try c.decodeIfPresent(String.self, forKey: .lastEnhanced), text: text ?? "")
        } else {
            lastTextWithoutReply = text
        }
        node = try c.decodeIfPresent(String.self, forKey: .node)
        sendingIP = try c.decodeIfPresent(String.self, forKey: .sendingIP)
        mxHost = try c.decodeIfPresent(String.self, forKey: .mxHost)
        updatedAt = try c.decode(Double.self, forKey: .updatedAt)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(address, forKey: .address)
        try c.encode(state, forKey: .state)
        try c.encode(attempts, forKey: .attempts)
        try c.encodeIfPresent(nextAttemptAt, forKey: .nextAttemptAt)
        if let lastReply {
            try c.encode(lastReply, code: .lastCode, enhanced: .lastEnhanced, text: .lastText)
        } else {
            try c.encodeIfPresent(lastTextWithoutReply, forKey: .lastText)
        }
        try c.encodeIfPresent(node, forKey: .node)
        try c.encodeIfPresent(sendingIP, forKey: .sendingIP)
        try c.encodeIfPresent(mxHost, forKey: .mxHost)
        try c.encode(updatedAt, forKey: .updatedAt)
    }
}

/// One message's record for lookups.
public struct MessageRecord: Codable, Sendable, Equatable {
    public var id: String
    public var reversePath: String
    public var pool: String
    public var size: Int
    public var receivedAt: Double
    public var clientAddress: String
    public var recipients: [RecipientRecord]
    /// The tenant the message belongs to, nil for none (issue 16).
    public var tenant: String? = nil
    /// Its priority class (issue 18): `transactional` or `bulk`.
    public var priority: MessagePriority? = nil
}
