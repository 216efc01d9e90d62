import Foundation
import Testing
@testable import ClusterProtocol
@testable import HatoCrypto
@testable import SMTPCore

@Suite("Cluster protocol frames")
struct ClusterProtocolTests {
    static let lease = Lease(leaseID: "L1", sendingIP: "127.0.0.10", helo: "mta10.test", messageID: "M1", reversePath: "",
                             domain: "hato.test", recipients: [LeasedRecipient(id: 7, address: "a@hato.test")], expiresIn: 300,
                             bodyOffset: 0, bodyLength: 5)

    @Test("every message type survives encode → decode")
    func roundTrip() throws {
        let messages: [ClusterMessage] = [
            .challenge(ChallengeMessage(versions: [1], nonce: "ab", cluster: "c")),
            .hello(HelloMessage(version: 1, nodeID: "n", instanceID: "i", proof: "p", nodeNonce: "nn", bindableIPs: ["127.0.0.10"], capacity: 8)),
            .welcome(WelcomeMessage(proof: "p", assignedIPs: [AssignedIP(address: "127.0.0.10", helo: "h", pool: "t")], heartbeatInterval: 2, peerTimeout: 10)),
            .reject(RejectMessage(reason: "no", retryable: false)),
            .heartbeat(HeartbeatMessage(leasesInFlight: 3)),
            .leaseRequest(LeaseRequestMessage(credits: 4)),
            .leaseGrant(LeaseGrantMessage(leases: [Self.lease]), payload: Array("hello".utf8)),
            .result(ResultMessage(leaseID: "L1", instanceID: "i", sendingIP: "127.0.0.10", mxHost: "mx", remoteAddress: "127.0.0.1",
                                  outcomes: [RecipientResult(recipientID: 7, status: .deferred, reply: DeliveryStatus(code: 451, enhanced: "4.7.1", text: "later"))], finishedAt: 1)),
            .resultAck(ResultAckMessage(leaseID: "L1")),
            .ipAssign(IPAssignMessage(ips: [])), .ipRevoke(IPRevokeMessage(addresses: ["127.0.0.10"])), .ipReleased(IPReleasedMessage(addresses: [])),
            .hello(HelloMessage(version: 1, nodeID: "n", instanceID: "i", proof: "p", nodeNonce: "nn", bindableIPs: [], capacity: 8,
                                features: ClusterFeature.all)),
            .configChanged(ConfigChangedMessage(generation: 3, digest: "ab12")),
            .configApplied(ConfigAppliedMessage(generation: 3, applied: false, digest: "ab12", live: ["ips"], restartRequired: ["nodes[0].tls"],
                                                errors: ["dkim[0].private_key: cannot read k.pem"])),
        ]
        var decoder = FrameDecoder(maximumFrameSize: 1 << 20)
        for m in messages { decoder.feed(m.frame().encoded()) }
        for m in messages { #expect(try ClusterMessage.decode(#require(try decoder.next())) == m) }
        #expect(try decoder.next() == nil)
        try decoder.finish()
    }

    @Test("config_changed is versioned by tolerance: a hello without features (an older node) decodes, unknown keys are ignored")
    func backwardTolerant() throws {
        let old = Frame(type: .hello, header: Array(#"{"bindableIPs":[],"capacity":8,"instanceID":"i","nodeID":"n","nodeNonce":"nn","proof":"p","version":1}"#.utf8))
        guard case .hello(let h) = try ClusterMessage.decode(old) else { Issue.record("not a hello"); return }
        #expect(h.features == nil, "the coordinator sends config_changed only to nodes that name it")
        let newer = Frame(type: .configChanged, header: Array(#"{"generation":4,"digest":"ff","scope":"a later field"}"#.utf8))
        #expect(try ClusterMessage.decode(newer) == .configChanged(ConfigChangedMessage(generation: 4, digest: "ff")))
    }

    @Test("bodies travel as raw bytes: NUL, CR, 8-bit octets are untouched")
    func rawBody() throws {
        let body: [UInt8] = [0, 13, 10, 0xFF, 0x80, 46, 13, 10]
        var l = Self.lease; l.bodyLength = body.count
        let bytes = ClusterMessage.leaseGrant(LeaseGrantMessage(leases: [l]), payload: body).frame().encoded()
        #expect(bytes.suffix(body.count) == body[...])
        var d = FrameDecoder(maximumFrameSize: 1 << 20)
        d.feed(bytes)
        guard case .leaseGrant(_, let payload) = try ClusterMessage.decode(#require(try d.next())) else { Issue.record("not a grant"); return }
        #expect(payload == body)
    }

    @Test("a frame split at every byte boundary decodes the same")
    func splitAnywhere() throws {
        let bytes = ClusterMessage.heartbeat(HeartbeatMessage(leasesInFlight: 9)).frame().encoded()
        for cut in 0...bytes.count {
            var d = FrameDecoder(maximumFrameSize: 1024)
            d.feed(bytes[0..<cut])
            if cut < bytes.count { #expect(try d.next() == nil) }
            d.feed(bytes[cut...])
            #expect(try ClusterMessage.decode(#require(try d.next())) == .heartbeat(HeartbeatMessage(leasesInFlight: 9)))
        }
    }

    @Test("an oversized length prefix is refused before its body is buffered")
    func oversized() {
        var d = FrameDecoder(maximumFrameSize: 1000)
        d.feed([0x00, 0x10, 0x00, 0x00, 5])
        #expect(throws: FrameError.oversized(length: 0x100000, maximum: 1000)) { try d.next() }
    }

    @Test("a truncated stream is reported at end of stream")
    func truncated() throws {
        let bytes = ClusterMessage.heartbeat(HeartbeatMessage(leasesInFlight: 1)).frame().encoded()
        var d = FrameDecoder(maximumFrameSize: 1024)
        d.feed(bytes.dropLast(3))
        #expect(try d.next() == nil)
        #expect(throws: FrameError.truncated(have: bytes.count - 3)) { try d.finish() }
    }

    @Test("garbage frames are rejected cleanly: unknown type, short length, bad header length, bad JSON, body outside payload")
    func garbage() throws {
        var d1 = FrameDecoder(maximumFrameSize: 1024)
        d1.feed([0, 0, 0, 5, 99, 0, 0, 0, 0])
        #expect(throws: FrameError.unknownType(99)) { try d1.next() }
        var d2 = FrameDecoder(maximumFrameSize: 1024)
        d2.feed([0, 0, 0, 2, 5, 0])
        #expect(throws: FrameError.undersized(length: 2)) { try d2.next() }
        var d3 = FrameDecoder(maximumFrameSize: 1024)
        d3.feed([0, 0, 0, 6, 5, 0, 0, 0, 9, 0])
        #expect(throws: FrameError.badHeaderLength(9)) { try d3.next() }
        let bad = Frame(type: .hello, header: Array("{not json".utf8))
        #expect(throws: ClusterProtocolError.self) { try ClusterMessage.decode(bad) }
        var l = Self.lease; l.bodyOffset = 3; l.bodyLength = 10
        let grant = ClusterMessage.leaseGrant(LeaseGrantMessage(leases: [l]), payload: [1, 2, 3, 4]).frame()
        #expect(throws: ClusterProtocolError.self) { try ClusterMessage.decode(grant) }
        // Random bytes never crash the decoder.
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<500 {
            var d = FrameDecoder(maximumFrameSize: 4096)
            d.feed((0..<Int.random(in: 0...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) })
            if let f = try? d.next() { _ = try? ClusterMessage.decode(f) }
        }
    }

    @Test("HMAC proofs: the right secret verifies, a different secret or nonce does not")
    func proofs() {
        let p = ClusterAuth.nodeProof(secret: "s3cret-s3cret-s3cret", nonce: "n1", nodeID: "node-a", instanceID: "i1")
        #expect(p.count == 64)
        #expect(ClusterAuth.verify(p, expected: ClusterAuth.nodeProof(secret: "s3cret-s3cret-s3cret", nonce: "n1", nodeID: "node-a", instanceID: "i1")))
        #expect(!ClusterAuth.verify(p, expected: ClusterAuth.nodeProof(secret: "other-secret-other", nonce: "n1", nodeID: "node-a", instanceID: "i1")))
        #expect(!ClusterAuth.verify(p, expected: ClusterAuth.nodeProof(secret: "s3cret-s3cret-s3cret", nonce: "n2", nodeID: "node-a", instanceID: "i1")))
        #expect(p != ClusterAuth.coordinatorProof(secret: "s3cret-s3cret-s3cret", nodeNonce: "n1", nodeID: "node-a"))
        // RFC 4231 test case 2.
        #expect(Hex.encode(Crypto.hmacSHA256(key: Array("Jefe".utf8), data: Array("what do ya want for nothing?".utf8)))
                == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    }

    @Test("queue ids are 18 characters, unique, and sort by time")
    func queueIDs() {
        let a = Identifier.queueID(now: Date(timeIntervalSince1970: 1_800_000_000))
        let b = Identifier.queueID(now: Date(timeIntervalSince1970: 1_800_000_001))
        #expect(a.count == 18 && b.count == 18)
        #expect(a < b)
        #expect(Set((0..<1000).map { _ in Identifier.queueID() }).count == 1000)
    }
}
