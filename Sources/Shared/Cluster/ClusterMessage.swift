import Foundation
import HatoCrypto
import HatoIO
import HatoSupport
import SMTPCore

/// The cluster protocol version this build speaks.
public let clusterProtocolVersion = 1

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
    case signingKeys(SigningKeysMessage)

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
        case .signingKeys: return .signingKeys
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
            var w = JSONObjectWriter(capacity: 48); w.field("leasesInFlight", m.leasesInFlight); w.field("sentAt", m.sentAt)
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
            o.field("priority", l.priority?.rawValue)
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

    /// A result as the JSON object of its frame header (UTF-8, sorted keys: what `JSONEncoder`
    /// gives, at a tenth of the cost) — also what the node's journal stores for it.
    public static func encodedResult(_ m: ResultMessage) -> [UInt8] { json(m) }

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
            o.field("tlsReports", objects: r.tlsReports.map { entries in
                entries.map { e in
                    var x = JSONObjectWriter(capacity: 128)
                    x.field("mxHost", e.mxHost)
                    x.field("policyDomain", e.policyDomain)
                    x.field("policyType", e.policyType)
                    x.field("result", e.result)
                    return x
                }
            })
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
        case .signingKeys(let m): return Frame(type: .signingKeys, header: h(m))
        }
    }

    /// Decodes a frame (the delivery frames with `JSONObjectReader`, the others with `JSONDecoder`).
    ///
    /// `decodeWithJSONDecoder` is the same through `JSONDecoder` for every type (tests compare them).
    /// - Throws: `ClusterProtocolError.malformed` when the header is not the JSON the type requires,
    ///   or a lease's body slice lies outside the payload.
    public static func decode(_ frame: Frame) throws -> ClusterMessage { try decode(frame, byHand: true) }

    /// Decodes a frame with `JSONDecoder` only (the reference the hand-written readers are tested against).
    /// - Throws: as `decode(_:)`.
    public static func decodeWithJSONDecoder(_ frame: Frame) throws -> ClusterMessage { try decode(frame, byHand: false) }

    private static func decode(_ frame: Frame, byHand: Bool) throws -> ClusterMessage {
        let d = decoder()
        func v<T: Decodable>(_ t: T.Type) throws -> T {
            do { return try d.decode(t, from: Data(frame.header)) } catch {
                throw ClusterProtocolError.malformed("\(frame.type) header: \(error)")
            }
        }
        func checked(_ m: LeaseGrantMessage) throws -> ClusterMessage {
            for l in m.leases {
                guard l.bodyOffset >= 0, l.bodyLength >= 0, l.bodyOffset <= frame.payload.count,
                      l.bodyLength <= frame.payload.count - l.bodyOffset else {
                    throw ClusterProtocolError.malformed("lease \(l.leaseID) body outside payload")
                }
            }
            return .leaseGrant(m, payload: frame.payload)
        }
        // The frames of every delivery: read by hand (`readDeliveryHeader`), the same values.
        // Where the hand reader is stricter than JSONDecoder (numbers it would round, keys of
        // skipped objects, nesting past 64) it throws, and JSONDecoder below decides: the same
        // outcome on every input; a well-formed frame never goes there.
        if byHand, let m = try? readDeliveryHeader(frame.type, frame.header) {
            if case .leaseGrant(let g, _) = m { return try checked(g) }
            return m
        }
        switch frame.type {
        case .challenge: return .challenge(try v(ChallengeMessage.self))
        case .hello: return .hello(try v(HelloMessage.self))
        case .welcome: return .welcome(try v(WelcomeMessage.self))
        case .reject: return .reject(try v(RejectMessage.self))
        case .heartbeat: return .heartbeat(try v(HeartbeatMessage.self))
        case .leaseRequest: return .leaseRequest(try v(LeaseRequestMessage.self))
        case .leaseGrant: return try checked(try v(LeaseGrantMessage.self))
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
        case .signingKeys:
            let m = try v(SigningKeysMessage.self)
            try m.validate()
            return .signingKeys(m)
        }
    }
}
