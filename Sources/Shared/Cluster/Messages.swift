import Foundation
import HatoCrypto
import HatoIO
import HatoSupport
import SMTPCore

/// The cluster protocol version this build speaks.
public let clusterProtocolVersion = 1

/// `challenge` (coordinator → node), the first frame on every connection.
public struct ChallengeMessage: Codable, Sendable, Equatable {
    /// Protocol versions the coordinator accepts.
    public var versions: [Int]
    /// A fresh random nonce (hex, 32 octets).
    public var nonce: String
    /// The cluster name from cluster.yml (a node of another cluster refuses at once).
    public var cluster: String
    public init(versions: [Int], nonce: String, cluster: String) { self.versions = versions; self.nonce = nonce; self.cluster = cluster }
}

/// Optional parts of the protocol a node speaks beyond version 1, named in `hello.features`.
/// A peer sends a frame of a feature only to a node that named it, so nodes and coordinators
/// of different builds keep working together (an unknown frame type closes a connection).
public enum ClusterFeature {
    /// `config_changed` / `config_applied`: the node re-reads cluster.yml when the coordinator
    /// reloads it, applies what it can and answers.
    public static let configChanged = "config_changed"
    /// Leadership terms: frames carry the coordinator's term, and a standby coordinator answers
    /// `hello` with `redirect` instead of `welcome` (several coordinators, issue 15).
    public static let terms = "terms"
    /// Every feature this build speaks.
    public static let all = [configChanged, terms]
}

/// `hello` (node → coordinator): identity, proof of the cluster secret and what the node can do.
public struct HelloMessage: Codable, Sendable, Equatable {
    /// The protocol version the node speaks.
    public var version: Int
    /// The node id from cluster.yml `nodes[].id`.
    public var nodeID: String
    /// A random id for this node process; a restart is a new instance.
    public var instanceID: String
    /// HMAC-SHA256 (hex) over the coordinator's nonce: see `ClusterAuth.nodeProof`.
    public var proof: String
    /// The node's nonce (hex) that the coordinator proves itself over in `welcome`.
    public var nodeNonce: String
    /// Configured sending IPs that this host can bind.
    public var bindableIPs: [String]
    /// Concurrent leases the node can work on (its initial lease credit).
    public var capacity: Int
    /// Optional features the node speaks (`ClusterFeature`); absent from older nodes.
    public var features: [String]?
    public init(version: Int, nodeID: String, instanceID: String, proof: String, nodeNonce: String, bindableIPs: [String], capacity: Int,
                features: [String]? = nil) {
        self.version = version; self.nodeID = nodeID; self.instanceID = instanceID; self.proof = proof
        self.nodeNonce = nodeNonce; self.bindableIPs = bindableIPs; self.capacity = capacity; self.features = features
    }
}

/// One sending IP as assigned to a node.
public struct AssignedIP: Codable, Sendable, Equatable, Hashable {
    /// Numeric address the node binds before connect.
    public var address: String
    /// The HELO/EHLO name to present from this address.
    public var helo: String
    /// The pool the address belongs to.
    public var pool: String
    public init(address: String, helo: String, pool: String) { self.address = address; self.helo = helo; self.pool = pool }
}

/// `welcome` (coordinator → node): accepted; the coordinator's own proof and the node's sending IPs.
public struct WelcomeMessage: Codable, Sendable, Equatable {
    /// HMAC-SHA256 (hex) over the node's nonce: see `ClusterAuth.coordinatorProof`.
    public var proof: String
    /// Sending IPs the node owns from now on.
    public var assignedIPs: [AssignedIP]
    /// Seconds between heartbeats each side sends.
    public var heartbeatInterval: Double
    /// Seconds of silence after which the peer is considered gone.
    public var peerTimeout: Double
    /// The coordinator's leadership term (absent from coordinators before terms): the node
    /// refuses a welcome, and any later frame, from a term below the highest it has seen of the
    /// same store (`TermFence`).
    public var term: Int64? = nil
    /// The store's identity: terms are compared only within one store.
    public var storeID: String? = nil
    /// The coordinator's id (`coordinators[].id`), for logs.
    public var coordinatorID: String? = nil
    public init(proof: String, assignedIPs: [AssignedIP], heartbeatInterval: Double, peerTimeout: Double,
                term: Int64? = nil, storeID: String? = nil, coordinatorID: String? = nil) {
        self.proof = proof; self.assignedIPs = assignedIPs; self.heartbeatInterval = heartbeatInterval; self.peerTimeout = peerTimeout
        self.term = term; self.storeID = storeID; self.coordinatorID = coordinatorID
    }
}

/// `redirect` (standby coordinator → node, instead of `welcome`): this coordinator does not lead;
/// connect to the leader instead. Sent only to a node that named the `terms` feature.
public struct RedirectMessage: Codable, Sendable, Equatable {
    /// The leader's id, nil when no leader is known right now (the node tries the next coordinator).
    public var leader: String?
    /// The leader's cluster address (`host:port`), nil when unknown.
    public var address: String?
    /// The highest term this coordinator has seen.
    public var term: Int64
    public init(leader: String?, address: String?, term: Int64) { self.leader = leader; self.address = address; self.term = term }
}

/// `reject` (either way): the connection is refused or ended; `reason` is for the operator.
public struct RejectMessage: Codable, Sendable, Equatable {
    /// A one-line reason.
    public var reason: String
    /// Whether retrying later can help (false for a version mismatch or bad secret).
    public var retryable: Bool
    public init(reason: String, retryable: Bool) { self.reason = reason; self.retryable = retryable }
}

/// `heartbeat` (either way).
public struct HeartbeatMessage: Codable, Sendable, Equatable {
    /// Leases the sender is working on (node) or has granted to this node (coordinator).
    public var leasesInFlight: Int
    public init(leasesInFlight: Int) { self.leasesInFlight = leasesInFlight }
}

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
    public init(leaseID: String, sendingIP: String, helo: String, messageID: String, reversePath: String, domain: String,
                recipients: [LeasedRecipient], expiresIn: Double, expiresAt: Double? = nil, bodyOffset: Int = 0, bodyLength: Int = 0) {
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
        case connectionFailure
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

/// `ip_assign` (coordinator → node): the node owns these IPs from now on.
public struct IPAssignMessage: Codable, Sendable, Equatable {
    public var ips: [AssignedIP]
    /// The coordinator's term (absent from coordinators before terms).
    public var term: Int64? = nil
    public init(ips: [AssignedIP], term: Int64? = nil) { self.ips = ips; self.term = term }
}

/// `ip_revoke` (coordinator → node): stop sending from these IPs, finish or abandon their work, then report `ip_released`.
public struct IPRevokeMessage: Codable, Sendable, Equatable {
    public var addresses: [String]
    /// The coordinator's term (absent from coordinators before terms).
    public var term: Int64? = nil
    public init(addresses: [String], term: Int64? = nil) { self.addresses = addresses; self.term = term }
}

/// `ip_released` (node → coordinator): no session from these IPs is open any more.
public struct IPReleasedMessage: Codable, Sendable, Equatable {
    public var addresses: [String]
    public init(addresses: [String]) { self.addresses = addresses }
}

/// `announce` (node → coordinator): the configured sending IPs this host can bind changed
/// (the node re-read cluster.yml on SIGHUP).
public struct AnnounceMessage: Codable, Sendable, Equatable {
    public var bindableIPs: [String]
    public init(bindableIPs: [String]) { self.bindableIPs = bindableIPs }
}

/// `backoff` (node → coordinator): a remote reply matched a backoff rule; stop or slow
/// leases for this (sending IP, provider) pair for `duration` seconds.
public struct BackoffMessage: Codable, Sendable, Equatable {
    public var sendingIP: String
    /// The provider (shaping provider name, or `mx:<host>`).
    public var provider: String
    /// The destination domain whose delivery got the reply (lets the coordinator map domains to providers).
    public var domain: String
    /// `suspend` or `throttle`.
    public var action: String
    /// Seconds.
    public var duration: Double
    /// For throttles: leases per minute.
    public var ratePerMinute: Int?
    /// The reply that matched (code, enhanced code, text; at most 512 characters).
    public var reply: String
    public init(sendingIP: String, provider: String, domain: String, action: String, duration: Double, ratePerMinute: Int?, reply: String) {
        self.sendingIP = sendingIP; self.provider = provider; self.domain = domain; self.action = action
        self.duration = duration; self.ratePerMinute = ratePerMinute; self.reply = reply
    }
}

/// `config_changed` (coordinator → node, feature `config_changed`): the coordinator reloaded
/// cluster.yml. The node re-reads its own copy (the same path on every host), checks it like
/// `hato-node check`, applies what applies live, re-announces the sending IPs it may own and
/// can bind, and answers `config_applied`. Unknown JSON keys are ignored by both sides.
public struct ConfigChangedMessage: Codable, Sendable, Equatable {
    /// The coordinator's reload counter (since its start); the answer carries it back.
    public var generation: Int
    /// SHA-256 (hex) of cluster.yml as the coordinator read it: a node whose file differs says so.
    public var digest: String
    public init(generation: Int, digest: String) { self.generation = generation; self.digest = digest }
}

/// `config_applied` (node → coordinator, answers `config_changed`): what the node did.
public struct ConfigAppliedMessage: Codable, Sendable, Equatable {
    /// The `generation` answered.
    public var generation: Int
    /// Whether the node took the file (false: refused, the node runs on unchanged).
    public var applied: Bool
    /// SHA-256 (hex) of the file the node read.
    public var digest: String
    /// Keys that changed and applied live on the node.
    public var live: [String]
    /// Keys that changed and wait for a restart of this node.
    public var restartRequired: [String]
    /// Why the file was refused (each naming the key and file), or other problems.
    public var errors: [String]
    public init(generation: Int, applied: Bool, digest: String, live: [String], restartRequired: [String], errors: [String]) {
        self.generation = generation; self.applied = applied; self.digest = digest
        self.live = live; self.restartRequired = restartRequired; self.errors = errors
    }
}

/// A decoded cluster protocol message.
public enum ClusterMessage: Sendable, Equatable {
    case challenge(ChallengeMessage)
    case hello(HelloMessage)
    case welcome(WelcomeMessage)
    case reject(RejectMessage)
    case heartbeat(HeartbeatMessage)
    case leaseRequest(LeaseRequestMessage)
    /// A grant and the raw payload its leases slice their bodies from.
    case leaseGrant(LeaseGrantMessage, payload: [UInt8])
    case result(ResultMessage)
    case resultAck(ResultAckMessage)
    case ipAssign(IPAssignMessage)
    case ipRevoke(IPRevokeMessage)
    case ipReleased(IPReleasedMessage)
    case announce(AnnounceMessage)
    case backoff(BackoffMessage)
    case configChanged(ConfigChangedMessage)
    case configApplied(ConfigAppliedMessage)
    case redirect(RedirectMessage)

    /// The frame type of this message.
    public var frameType: FrameType {
        switch self {
        case .challenge: return .challenge
        case .hello: return .hello
        case .welcome: return .welcome
        case .reject: return .reject
        case .heartbeat: return .heartbeat
        case .leaseRequest: return .leaseRequest
        case .leaseGrant: return .leaseGrant
        case .result: return .result
        case .resultAck: return .resultAck
        case .ipAssign: return .ipAssign
        case .ipRevoke: return .ipRevoke
        case .ipReleased: return .ipReleased
        case .announce: return .announce
        case .backoff: return .backoff
        case .configChanged: return .configChanged
        case .configApplied: return .configApplied
        case .redirect: return .redirect
        }
    }

    private static func encoder() -> JSONEncoder {
        let e = JSONEncoder(); e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]; return e
    }
    private static func decoder() -> JSONDecoder {
        JSONDecoder()
    }

    /// Encodes the message as a frame.
    ///
    /// The frames of every delivery (grant, result, ack, credits, heartbeat) are built with
    /// `JSONObjectWriter` — the same bytes `JSONEncoder` with sorted keys gives, at a tenth of
    /// the cost; the rare control frames use `JSONEncoder`.
    public func frame() -> Frame {
        switch self {
        case .leaseGrant(let m, let payload): return Frame(type: .leaseGrant, header: ClusterMessage.json(m), payload: payload)
        case .result(let m): return Frame(type: .result, header: ClusterMessage.json(m))
        case .resultAck(let m):
            var w = JSONObjectWriter(capacity: 48); w.field("leaseID", m.leaseID)
            return Frame(type: .resultAck, header: w.finish())
        case .leaseRequest(let m):
            var w = JSONObjectWriter(capacity: 24); w.field("credits", m.credits)
            return Frame(type: .leaseRequest, header: w.finish())
        case .heartbeat(let m):
            var w = JSONObjectWriter(capacity: 32); w.field("leasesInFlight", m.leasesInFlight)
            return Frame(type: .heartbeat, header: w.finish())
        default: return codableFrame()
        }
    }

    static func json(_ m: LeaseGrantMessage) -> [UInt8] {
        var w = JSONObjectWriter(capacity: 320 * m.leases.count + 16)
        w.field("leases", objects: m.leases.map { l in
            var o = JSONObjectWriter(capacity: 320)
            o.field("bodyLength", l.bodyLength)
            o.field("bodyOffset", l.bodyOffset)
            o.field("domain", l.domain)
            o.field("expiresAt", l.expiresAt)
            o.field("expiresIn", l.expiresIn)
            o.field("helo", l.helo)
            o.field("leaseID", l.leaseID)
            o.field("messageID", l.messageID)
            o.field("recipients", objects: l.recipients.map { r in
                var x = JSONObjectWriter(capacity: 64)
                x.field("address", r.address)
                x.field("id", r.id)
                return x
            })
            o.field("reversePath", l.reversePath)
            o.field("sendingIP", l.sendingIP)
            return o
        })
        w.field("term", m.term)
        return w.finish()
    }

    static func json(_ m: ResultMessage) -> [UInt8] {
        var w = JSONObjectWriter(capacity: 256 + 320 * m.outcomes.count)
        w.field("finishedAt", m.finishedAt)
        w.field("instanceID", m.instanceID)
        w.field("leaseID", m.leaseID)
        w.field("mxHost", m.mxHost)
        w.field("outcomes", objects: m.outcomes.map { r in
            var o = JSONObjectWriter(capacity: 320)
            o.field("code", r.reply.code.rawValue)
            o.field("connectionFailure", object: r.connectionFailure.map { c in
                var x = JSONObjectWriter(capacity: 128)
                x.field("addressFamily", c.addressFamily)
                x.field("mxHost", c.mxHost)
                x.field("remoteAddress", c.remoteAddress)
                return x
            })
            o.field("dkim", r.dkim)
            o.field("enhanced", r.reply.enhanced?.description)
            o.field("mxHost", r.mxHost)
            o.field("recipientID", r.recipientID)
            o.field("remoteAddress", r.remoteAddress)
            o.field("reusedConnection", r.reusedConnection)
            o.field("status", r.status.rawValue)
            o.field("text", r.reply.text)
            o.field("timings", object: r.timings.map { t in
                var x = JSONObjectWriter(capacity: 128)
                x.field("connect", t.connect)
                x.field("resolve", t.resolve)
                x.field("setup", t.setup)
                x.field("shapingWait", t.shapingWait)
                x.field("transaction", t.transaction)
                return x
            })
            o.field("tlsCipher", r.tlsCipher)
            o.field("tlsVersion", r.tlsVersion)
            return o
        })
        w.field("remoteAddress", m.remoteAddress)
        w.field("sendingIP", m.sendingIP)
        return w.finish()
    }

    /// The frame through `JSONEncoder` (sorted keys), for every message type.
    func codableFrame() -> Frame {
        let e = ClusterMessage.encoder()
        func h<T: Encodable>(_ v: T) -> [UInt8] { (try? Array(e.encode(v))) ?? Array("{}".utf8) }
        switch self {
        case .challenge(let m): return Frame(type: .challenge, header: h(m))
        case .hello(let m): return Frame(type: .hello, header: h(m))
        case .welcome(let m): return Frame(type: .welcome, header: h(m))
        case .reject(let m): return Frame(type: .reject, header: h(m))
        case .heartbeat(let m): return Frame(type: .heartbeat, header: h(m))
        case .leaseRequest(let m): return Frame(type: .leaseRequest, header: h(m))
        case .leaseGrant(let m, let payload): return Frame(type: .leaseGrant, header: h(m), payload: payload)
        case .result(let m): return Frame(type: .result, header: h(m))
        case .resultAck(let m): return Frame(type: .resultAck, header: h(m))
        case .ipAssign(let m): return Frame(type: .ipAssign, header: h(m))
        case .ipRevoke(let m): return Frame(type: .ipRevoke, header: h(m))
        case .ipReleased(let m): return Frame(type: .ipReleased, header: h(m))
        case .announce(let m): return Frame(type: .announce, header: h(m))
        case .backoff(let m): return Frame(type: .backoff, header: h(m))
        case .configChanged(let m): return Frame(type: .configChanged, header: h(m))
        case .configApplied(let m): return Frame(type: .configApplied, header: h(m))
        case .redirect(let m): return Frame(type: .redirect, header: h(m))
        }
    }

    /// Decodes a frame.
    /// - Throws: `ClusterProtocolError.malformed` when the header is not the JSON the type requires,
    ///   or a lease's body slice lies outside the payload.
    public static func decode(_ frame: Frame) throws -> ClusterMessage {
        let d = decoder()
        func v<T: Decodable>(_ t: T.Type) throws -> T {
            do { return try d.decode(t, from: Data(frame.header)) } catch {
                throw ClusterProtocolError.malformed("\(frame.type) header: \(error)")
            }
        }
        switch frame.type {
        case .challenge: return .challenge(try v(ChallengeMessage.self))
        case .hello: return .hello(try v(HelloMessage.self))
        case .welcome: return .welcome(try v(WelcomeMessage.self))
        case .reject: return .reject(try v(RejectMessage.self))
        case .heartbeat: return .heartbeat(try v(HeartbeatMessage.self))
        case .leaseRequest: return .leaseRequest(try v(LeaseRequestMessage.self))
        case .leaseGrant:
            let m = try v(LeaseGrantMessage.self)
            for l in m.leases {
                guard l.bodyOffset >= 0, l.bodyLength >= 0, l.bodyOffset <= frame.payload.count,
                      l.bodyLength <= frame.payload.count - l.bodyOffset else {
                    throw ClusterProtocolError.malformed("lease \(l.leaseID) body outside payload")
                }
            }
            return .leaseGrant(m, payload: frame.payload)
        case .result: return .result(try v(ResultMessage.self))
        case .resultAck: return .resultAck(try v(ResultAckMessage.self))
        case .ipAssign: return .ipAssign(try v(IPAssignMessage.self))
        case .ipRevoke: return .ipRevoke(try v(IPRevokeMessage.self))
        case .ipReleased: return .ipReleased(try v(IPReleasedMessage.self))
        case .announce: return .announce(try v(AnnounceMessage.self))
        case .backoff: return .backoff(try v(BackoffMessage.self))
        case .configChanged: return .configChanged(try v(ConfigChangedMessage.self))
        case .configApplied: return .configApplied(try v(ConfigAppliedMessage.self))
        case .redirect: return .redirect(try v(RedirectMessage.self))
        }
    }
}

/// A cluster protocol violation; it ends that one connection.
public enum ClusterProtocolError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A frame whose header or payload does not match its type.
    case malformed(String)
    /// A message that is not allowed in the current state (e.g. a lease request before `hello`).
    case unexpected(String)
    /// The peer speaks no version we do.
    case versionMismatch(ours: Int, theirs: [Int])
    /// The peer's HMAC proof is wrong (different cluster secret).
    case authenticationFailed
    /// The peer refused us.
    case rejected(String, retryable: Bool)
    /// A coordinator spoke under a term older than one already seen (a stale leader).
    case staleTerm(TermFence.Refusal)
    /// A standby coordinator named the leader to connect to instead.
    case redirected(RedirectMessage)

    public var description: String {
        switch self {
        case .malformed(let s): return "malformed frame: \(s)"
        case .unexpected(let s): return "unexpected message: \(s)"
        case .versionMismatch(let o, let t): return "protocol version mismatch: we speak \(o), peer speaks \(t)"
        case .authenticationFailed: return "authentication failed: cluster secret differs"
        case .rejected(let s, _): return "rejected by peer: \(s)"
        case .staleTerm(let r): return "refused the coordinator: \(r)"
        case .redirected(let r): return "redirected to the leader \(r.leader ?? "(unknown)") at \(r.address ?? "(unknown)") (term \(r.term))"
        }
    }
}

/// The HMAC-SHA256 challenge–response of the cluster protocol. No secret crosses the wire.
public enum ClusterAuth {
    /// The node's proof: HMAC-SHA256(secret, "hato-cluster/1 node|" + nonce + "|" + nodeID + "|" + instanceID), hex.
    public static func nodeProof(secret: String, nonce: String, nodeID: String, instanceID: String) -> String {
        Hex.encode(Crypto.hmacSHA256(key: Array(secret.utf8), data: Array("hato-cluster/1 node|\(nonce)|\(nodeID)|\(instanceID)".utf8)))
    }

    /// The coordinator's proof: HMAC-SHA256(secret, "hato-cluster/1 coordinator|" + nodeNonce + "|" + nodeID), hex.
    public static func coordinatorProof(secret: String, nodeNonce: String, nodeID: String) -> String {
        Hex.encode(Crypto.hmacSHA256(key: Array(secret.utf8), data: Array("hato-cluster/1 coordinator|\(nodeNonce)|\(nodeID)".utf8)))
    }

    /// Compares a received proof with the expected one in constant time.
    public static func verify(_ received: String, expected: String) -> Bool {
        Crypto.constantTimeEquals(Array(received.utf8), Array(expected.utf8))
    }
}

/// One cluster protocol connection: a byte stream (a plain `Socket`, or a duplex `TLSStream`
/// over one), a frame decoder and a write lock.
///
/// One thread reads (`receive`) and owns the connection: it alone calls `close()`. Any thread
/// may `send` (writes are serialised), and any thread that wants the connection to end calls
/// `shutdown()`: the reader's `receive` then throws `SocketError(.closed)` and the reader
/// closes (see `Socket`'s close rule).
///
/// Over TLS the stream must be a duplex one (`TLSStream.accept/connect(…, duplex: true)`): the
/// reader waits for frames while the writer sends, and OpenSSL's one-thread-per-`SSL*` rule is
/// kept by the stream's own lock around each non-blocking call. The plaintext path reads and
/// writes the socket directly, as before.
///
/// Checked `Sendable`: the decoder and read buffer live in a `Locked` that only the reading
/// thread takes (held across its blocking read: a second reader would wait, not interleave);
/// writes hold `writer` across the stream write so frames never interleave.
public final class ClusterConnection: Sendable {
    /// The TCP socket (for both kinds of connection).
    public let socket: Socket
    /// The TLS stream over `socket`, nil for a plaintext connection.
    public let tls: TLSStream?
    private struct ReadState: Sendable {
        var decoder: FrameDecoder
        var buffer: [UInt8]
    }
    private let reader: Locked<ReadState>
    private let writer = Locked(())

    /// A plaintext connection.
    /// - Parameters:
    ///   - socket: a connected socket.
    ///   - maximumFrameSize: the largest frame accepted, octets.
    public init(socket: Socket, maximumFrameSize: Int) {
        self.socket = socket
        self.tls = nil
        self.reader = Locked(ReadState(decoder: FrameDecoder(maximumFrameSize: maximumFrameSize),
                                       buffer: [UInt8](repeating: 0, count: ClusterConnection.readSize(maximumFrameSize))))
    }

    /// A connection over TLS (RFC 8446 / RFC 5246).
    /// - Parameters:
    ///   - tls: a duplex TLS stream (`isDuplex`), its handshake done.
    ///   - maximumFrameSize: the largest frame accepted, octets.
    public init(tls: TLSStream, maximumFrameSize: Int) {
        precondition(tls.isDuplex, "a cluster connection's TLS stream must be duplex: a reader and a writer share it")
        self.socket = tls.socket
        self.tls = tls
        self.reader = Locked(ReadState(decoder: FrameDecoder(maximumFrameSize: maximumFrameSize),
                                       buffer: [UInt8](repeating: 0, count: ClusterConnection.readSize(maximumFrameSize))))
    }

    /// Whether the connection is encrypted.
    public var isEncrypted: Bool { tls != nil }

    /// Octets per read: 256 KiB, or less for a connection whose frames are small (before authentication).
    private static func readSize(_ maximumFrameSize: Int) -> Int { min(256 * 1024, max(4096, maximumFrameSize + 4)) }

    /// Sets how long one `receive` waits for bytes and one `send` for room (`.zero`: forever).
    public func setTimeouts(read: Duration, write: Duration) {
        if let tls { tls.setTimeouts(read: read, write: write) } else { socket.setTimeouts(read: read, write: write) }
    }

    /// Sends one message.
    /// - Throws: `SocketError` when the write fails.
    public func send(_ message: ClusterMessage) throws {
        let bytes = message.frame().encoded()
        try writer.withLock { _ in
            if let tls { try tls.write(bytes) } else { try socket.write(bytes) }
        }
    }

    /// Changes the largest frame accepted from now on (e.g. a small bound until the peer has
    /// authenticated, the full one after). Call from the reading thread only.
    public func setMaximumFrameSize(_ octets: Int) {
        reader.withLock { state in
            state.decoder = FrameDecoder(maximumFrameSize: octets, continuing: state.decoder)
            let size = ClusterConnection.readSize(octets)
            if size != state.buffer.count { state.buffer = [UInt8](repeating: 0, count: size) }
        }
    }

    /// Octets received but not yet returned as frames.
    public var bufferedCount: Int { reader.withLock { $0.decoder.bufferedCount } }

    /// Receives the next message, blocking up to the read timeout, or until `deadline` on the
    /// monotonic clock (a peer that trickles bytes cannot hold the read past it: each read
    /// waits at most the time left).
    /// - Throws: `SocketError` (timeout, closed — also after `shutdown()`), `FrameError` or
    ///   `ClusterProtocolError.malformed`.
    public func receive(deadline: ContinuousClock.Instant? = nil) throws -> ClusterMessage {
        try reader.withLock { state in
            while true {
                if let frame = try state.decoder.next() { return try ClusterMessage.decode(frame) }
                if let deadline {
                    let left = ContinuousClock.now.duration(to: deadline)
                    guard left > .zero else { throw SocketError(.timeout, "cluster read") }
                    setTimeouts(read: max(left, .milliseconds(1)), write: .seconds(30))
                }
                let n = try state.buffer.withUnsafeMutableBytes { buffer in
                    if let tls { return try tls.read(into: buffer) }
                    return try socket.read(into: buffer)
                }
                if n == 0 {
                    try state.decoder.finish()
                    throw SocketError(.closed, "cluster read")
                }
                state.decoder.feed(state.buffer[0..<n])
            }
        }
    }

    /// Ends the connection from any thread: wakes the reader, whose `receive` throws; the
    /// reader then calls `close()`.
    public func shutdown() { socket.shutdown() }

    /// Closes the connection (over TLS: `close_notify` first). **Owner only** (the thread that
    /// calls `receive`); other threads call `shutdown()`. (A call from another thread is still
    /// safe: the descriptor is released only after the reader's call returns.)
    public func close() {
        if let tls { tls.close() } else { socket.close() }
    }
}
