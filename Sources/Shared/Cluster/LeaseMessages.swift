import Foundation
import HatoCrypto
import HatoIO
import HatoSupport
import SMTPCore

/// `lease_request` (node → coordinator): grants the coordinator `credits` more leases (additive flow control).
public struct LeaseRequestMessage: Codable, Sendable, Equatable {
    /// Additional leases the node can take now.
    public var credits: Int
    public init(credits: Int) { self.credits = credits }
}

/// One recipient inside a lease.
public struct LeasedRecipient: Codable, Sendable, Equatable {
    /// The recipient's row id in the coordinator's queue.
    public var id: Int64
    /// The forward-path (address without angle brackets).
    public var address: String
    public init(id: Int64, address: String) { self.id = id; self.address = address }
}

/// One lease: deliveries of one message to one destination domain, from one sending IP.
public struct Lease: Codable, Sendable, Equatable {
    /// Unique lease id.
    public var leaseID: String
    /// The sending IP to bind.
    public var sendingIP: String
    /// The HELO name of that IP.
    public var helo: String
    /// The message's queue id.
    public var messageID: String
    /// The reverse-path (empty string for the null reverse-path `<>`).
    public var reversePath: String
    /// The destination domain (lower case).
    public var domain: String
    /// The recipients to deliver.
    public var recipients: [LeasedRecipient]
    /// Seconds from receipt until the lease expires and its recipients return to the queue.
    public var expiresIn: Double
    /// The coordinator's expiry time (seconds since 1970). A node never starts or completes
    /// a delivery after `min(receipt + expiresIn, expiresAt)` minus a safety margin.
    public var expiresAt: Double?
    /// Offset of this lease's message content in the frame payload, octets.
    public var bodyOffset: Int
    /// Length of the message content in the frame payload, octets.
    public var bodyLength: Int
    /// The message's priority class (issue 18); absent (from coordinators before priorities)
    /// means transactional. A node works transactional leases of an IP before bulk ones, and
    /// keeps `priority.bulk_reserve` of its workers and connections for transactional ones.
    public var priority: MessagePriority? = nil
    /// The class the node applies: `priority`, or transactional when absent.
    public var effectivePriority: MessagePriority { priority ?? .transactional }
    public init(leaseID: String, sendingIP: String, helo: String, messageID: String, reversePath: String, domain: String,
                recipients: [LeasedRecipient], expiresIn: Double, expiresAt: Double? = nil, bodyOffset: Int = 0, bodyLength: Int = 0,
                priority: MessagePriority? = nil) {
        self.priority = priority
        self.leaseID = leaseID; self.sendingIP = sendingIP; self.helo = helo; self.messageID = messageID
        self.reversePath = reversePath; self.domain = domain; self.recipients = recipients; self.expiresIn = expiresIn
        self.expiresAt = expiresAt
        self.bodyOffset = bodyOffset; self.bodyLength = bodyLength
    }
}

/// `lease_grant` (coordinator → node): leases whose bodies are the frame payload, raw.
public struct LeaseGrantMessage: Codable, Sendable, Equatable {
    /// The leases; each names its body's slice of the payload.
    public var leases: [Lease]
    /// The granting coordinator's term (absent from coordinators before terms).
    public var term: Int64? = nil
    public init(leases: [Lease], term: Int64? = nil) { self.leases = leases; self.term = term }
}

/// The outcome of one recipient of a lease.
///
/// On the wire the status is flat, as it always was: `status`, `code`, `enhanced`, `text`
/// beside the delivery details (`init(from:)`/`encode(to:)`); frames from older nodes decode.
public struct RecipientResult: Codable, Sendable, Equatable {
    /// What happened: the node's decision (normally `reply.disposition`; a recipient carried over
    /// after a 452 or a 552 5.5.3 "too many recipients" is deferred whatever the code).
    public typealias Status = DeliveryStatus.Disposition
    /// The recipient's row id.
    public var recipientID: Int64
    /// Delivered (2xx), deferred (4xx, connection failures, timeouts) or failed (5xx).
    public var status: Status
    /// The reply behind the outcome: the server's, or the synthetic one of a local failure.
    public var reply: DeliveryStatus
    // Delivery details (optional: absent in frames from older nodes, which still decode).
    /// The MX host whose session gave this outcome (nil when no server answered).
    public var mxHost: String? = nil
    /// That host's numeric address.
    public var remoteAddress: String? = nil
    /// The TLS version of the session, e.g. `TLSv1.3` (nil: plaintext or no session).
    public var tlsVersion: String? = nil
    /// The TLS cipher suite of the session.
    public var tlsCipher: String? = nil
    /// Whether the session was reused from an earlier message.
    public var reusedConnection: Bool? = nil
    /// The DKIM signatures on the message sent (`domain/selector/algorithm`).
    public var dkim: [String]? = nil
    /// How long each step took.
    public var timings: DeliveryTimings? = nil
    /// For a deferral because no MX could be connected to: the last target tried (so metrics and
    /// the delivery log keep the MX host, its provider and the address family).
    public var connectionFailure: ConnectionFailureContext? = nil
    /// TLS sessions attempted under an MTA-STS or DANE policy for this delivery, successful or
    /// not (RFC 8460 TLS-RPT counts); carried on the first result of a lease only. Nil: none
    /// (and from nodes that predate it).
    public var tlsReports: [TLSReportEntry]? = nil

    /// A result from its parts.
    /// - Parameters:
    ///   - recipientID: the recipient's row id.
    ///   - status: delivered, deferred or failed.
    ///   - reply: the reply behind it.
    public init(recipientID: Int64, status: Status, reply: DeliveryStatus) {
        self.recipientID = recipientID; self.status = status; self.reply = reply
    }

    private enum CodingKeys: String, CodingKey {
        case recipientID, status, code, enhanced, text, mxHost, remoteAddress, tlsVersion, tlsCipher, reusedConnection, dkim, timings
        case connectionFailure, tlsReports
    }

    /// Decodes the flat wire form (`code`, `enhanced`, `text` beside the other keys).
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        recipientID = try c.decode(Int64.self, forKey: .recipientID)
        status = try c.decode(Status.self, forKey: .status)
        reply = try c.decodeDeliveryStatus(code: .code, enhanced: .enhanced, text: .text)
        mxHost = try c.decodeIfPresent(String.self, forKey: .mxHost)
        remoteAddress = try c.decodeIfPresent(String.self, forKey: .remoteAddress)
        tlsVersion = try c.decodeIfPresent(String.self, forKey: .tlsVersion)
        tlsCipher = try c.decodeIfPresent(String.self, forKey: .tlsCipher)
        reusedConnection = try c.decodeIfPresent(Bool.self, forKey: .reusedConnection)
        dkim = try c.decodeIfPresent([String].self, forKey: .dkim)
        timings = try c.decodeIfPresent(DeliveryTimings.self, forKey: .timings)
        connectionFailure = try c.decodeIfPresent(ConnectionFailureContext.self, forKey: .connectionFailure)
        tlsReports = try c.decodeIfPresent([TLSReportEntry].self, forKey: .tlsReports)
    }

    /// Encodes the flat wire form (absent details omitted).
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(recipientID, forKey: .recipientID)
        try c.encode(status, forKey: .status)
        try c.encode(reply, code: .code, enhanced: .enhanced, text: .text)
        try c.encodeIfPresent(mxHost, forKey: .mxHost)
        try c.encodeIfPresent(remoteAddress, forKey: .remoteAddress)
        try c.encodeIfPresent(tlsVersion, forKey: .tlsVersion)
        try c.encodeIfPresent(tlsCipher, forKey: .tlsCipher)
        try c.encodeIfPresent(reusedConnection, forKey: .reusedConnection)
        try c.encodeIfPresent(dkim, forKey: .dkim)
        try c.encodeIfPresent(timings, forKey: .timings)
        try c.encodeIfPresent(connectionFailure, forKey: .connectionFailure)
        try c.encodeIfPresent(tlsReports, forKey: .tlsReports)
    }
}

/// Where a delivery attempt failed to connect: the last MX (or next hop) tried.
public struct ConnectionFailureContext: Codable, Sendable, Equatable {
    /// The MX host name (or next hop) that could not be connected to.
    public var mxHost: String
    /// Its numeric address.
    public var remoteAddress: String
    /// `ipv4` or `ipv6`: the address family of that address (and of the sending IP used).
    public var addressFamily: String

    /// A context from its parts; the family is taken from the address (`:` means IPv6).
    public init(mxHost: String, remoteAddress: String) {
        self.mxHost = mxHost
        self.remoteAddress = remoteAddress
        self.addressFamily = remoteAddress.contains(":") ? "ipv6" : "ipv4"
    }
}

/// Seconds spent in each step of a delivery (all optional: a step that did not happen is absent).
public struct DeliveryTimings: Codable, Sendable, Equatable {
    /// Resolving the MX hosts and their addresses.
    public var resolve: Double?
    /// Waiting for a shaping slot (connection limit or message rate).
    public var shapingWait: Double?
    /// The TCP handshake (absent for a reused session).
    public var connect: Double?
    /// Greeting, EHLO and STARTTLS (absent for a reused session).
    public var setup: Double?
    /// The mail transaction, MAIL FROM to the final reply.
    public var transaction: Double?
    public init(resolve: Double? = nil, shapingWait: Double? = nil, connect: Double? = nil, setup: Double? = nil, transaction: Double? = nil) {
        self.resolve = resolve; self.shapingWait = shapingWait; self.connect = connect; self.setup = setup; self.transaction = transaction
    }
}

/// `result` (node → coordinator): the outcomes of one lease.
public struct ResultMessage: Codable, Sendable, Equatable {
    /// The lease reported on.
    public var leaseID: String
    /// The node instance that did the work.
    public var instanceID: String
    /// The sending IP actually used.
    public var sendingIP: String
    /// The MX host name that answered (nil when none could be reached).
    public var mxHost: String?
    /// The numeric address of that host.
    public var remoteAddress: String?
    /// One entry per leased recipient.
    public var outcomes: [RecipientResult]
    /// When the delivery attempt finished (seconds since 1970).
    public var finishedAt: Double
    public init(leaseID: String, instanceID: String, sendingIP: String, mxHost: String?, remoteAddress: String?, outcomes: [RecipientResult], finishedAt: Double) {
        self.leaseID = leaseID; self.instanceID = instanceID; self.sendingIP = sendingIP; self.mxHost = mxHost
        self.remoteAddress = remoteAddress; self.outcomes = outcomes; self.finishedAt = finishedAt
    }
}

/// `result_ack` (coordinator → node): the results are on the coordinator's disk; the node may forget them.
public struct ResultAckMessage: Codable, Sendable, Equatable {
    /// The lease whose result is durable.
    public var leaseID: String
    public init(leaseID: String) { self.leaseID = leaseID }
}

/// One TLS session attempted under a policy, as a node reports it for TLS-RPT (RFC 8460).
public struct TLSReportEntry: Codable, Sendable, Equatable, Hashable {
    /// The policy domain: the recipient domain for MTA-STS, the MX host for DANE (RFC 8460 §4.4).
    public var policyDomain: String
    /// `sts` (MTA-STS, RFC 8461) or `tlsa` (DANE, RFC 7672).
    public var policyType: String
    /// `success`, or an RFC 8460 §4.3 result type such as `certificate-host-mismatch`,
    /// `validation-failure`, `starttls-not-supported`, `sts-policy-fetch-error`.
    public var result: String
    /// The MX host the session was with (nil for policy fetch failures).
    public var mxHost: String?

    /// An entry from its parts.
    public init(policyDomain: String, policyType: String, result: String, mxHost: String? = nil) {
        self.policyDomain = policyDomain; self.policyType = policyType; self.result = result; self.mxHost = mxHost
    }

    /// Whether the session succeeded.
    public var isSuccess: Bool { result == "success" }
}
