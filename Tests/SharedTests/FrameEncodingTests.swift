import Foundation
@testable import HatoIO
import HatoTestKit
import HatoSupport
import Testing
@testable import ClusterProtocol
@testable import SMTPCore

/// The hand-built headers of the per-delivery frames against `JSONEncoder`: the same bytes,
/// and they decode back to the same message.
@Suite("Cluster frame encoding")
struct FrameEncodingTests {
    static let strings = ["", "x", "127.0.0.10", "mta10.it.test", "a \"quoted\" \\ text/with slash", "tab\tnl\n\u{1}",
                          "caf\u{E9} 😀", "550 5.1.1 <x@y.test>: unknown"]
    static let enhancedCodes: [String?] = [nil, "2.0.0", "4.4.1", "5.1.1", "5.7.651", "not a code"]
    static let doubles: [Double] = [0, 300, 1795967950.23, 0.003, 1.049041748046875e-05, 1e20, 0.1 + 0.2]

    static func s(_ rng: inout some RandomNumberGenerator) -> String { strings.randomElement(using: &rng)! }
    static func os(_ rng: inout some RandomNumberGenerator) -> String? { Bool.random(using: &rng) ? s(&rng) : nil }
    static func od(_ rng: inout some RandomNumberGenerator) -> Double? { Bool.random(using: &rng) ? doubles.randomElement(using: &rng)! : nil }

    static func grant(_ rng: inout some RandomNumberGenerator) -> LeaseGrantMessage {
        LeaseGrantMessage(leases: (0..<Int.random(in: 0...3, using: &rng)).map { _ in
            Lease(leaseID: s(&rng), sendingIP: s(&rng), helo: s(&rng), messageID: s(&rng), reversePath: s(&rng), domain: s(&rng),
                  recipients: (0..<Int.random(in: 0...3, using: &rng)).map { _ in LeasedRecipient(id: Int64.random(in: 0...Int64.max, using: &rng), address: s(&rng)) },
                  expiresIn: doubles.randomElement(using: &rng)!, expiresAt: od(&rng), bodyOffset: Int.random(in: 0...99999, using: &rng),
                  bodyLength: Int.random(in: 0...99999, using: &rng), priority: [nil, .transactional, .bulk].randomElement(using: &rng)!)
        }, term: Bool.random(using: &rng) ? Int64.random(in: 1...99, using: &rng) : nil)
    }

    static func result(_ rng: inout some RandomNumberGenerator) -> ResultMessage {
        ResultMessage(leaseID: s(&rng), instanceID: s(&rng), sendingIP: s(&rng), mxHost: os(&rng), remoteAddress: os(&rng),
                      outcomes: (0..<Int.random(in: 0...3, using: &rng)).map { _ in
                          var r = RecipientResult(recipientID: Int64.random(in: 0...9_999_999, using: &rng),
                                                  status: [.delivered, .deferred, .failed].randomElement(using: &rng)!,
                                                  reply: DeliveryStatus(code: Int.random(in: 200...599, using: &rng),
                                                                        enhanced: enhancedCodes.randomElement(using: &rng)!, text: s(&rng)))
                          r.mxHost = os(&rng); r.remoteAddress = os(&rng); r.tlsVersion = os(&rng); r.tlsCipher = os(&rng)
                          r.reusedConnection = Bool.random(using: &rng) ? Bool.random(using: &rng) : nil
                          r.dkim = Bool.random(using: &rng) ? [s(&rng), s(&rng)] : nil
                          r.timings = Bool.random(using: &rng) ? DeliveryTimings(resolve: od(&rng), shapingWait: od(&rng), connect: od(&rng),
                                                                                 setup: od(&rng), transaction: od(&rng)) : nil
                          r.tlsReports = Bool.random(using: &rng) ? [TLSReportEntry(policyDomain: s(&rng), policyType: "sts", result: s(&rng), mxHost: os(&rng)),
                                                                     TLSReportEntry(policyDomain: s(&rng), policyType: "tlsa", result: "success")] : nil
                          return r
                      }, finishedAt: doubles.randomElement(using: &rng)!)
    }

    @Test("1000 random grants, results, acks, credits and heartbeats: same header bytes as JSONEncoder, and they decode back")
    func identical() throws {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<1000 {
            let messages: [ClusterMessage] = [
                .leaseGrant(LeaseGrantMessage(leases: []), payload: [1, 2, 3]), .result(Self.result(&rng)),
                .resultAck(ResultAckMessage(leaseID: Self.s(&rng))), .leaseRequest(LeaseRequestMessage(credits: Int.random(in: 0...64, using: &rng))),
                .heartbeat(HeartbeatMessage(leasesInFlight: Int.random(in: 0...64, using: &rng))),
            ]
            for m in messages {
                let fast = m.frame(), slow = m.codableFrame()
                guard fast.header == slow.header, fast.payload == slow.payload, fast.type == slow.type else {
                    Issue.record("differs:\n\(String(decoding: fast.header, as: UTF8.self))\n\(String(decoding: slow.header, as: UTF8.self))")
                    return
                }
                if case .leaseGrant(let g, _) = m, g.leases.contains(where: { $0.bodyOffset + $0.bodyLength > 3 }) { continue }
                #expect(try ClusterMessage.decode(fast) == m)
            }
            // Several frames for one write: each frame's bytes, in order, and they decode back in order.
            let picked = messages.shuffled(using: &rng).prefix(Int.random(in: 0...messages.count, using: &rng))
            let joined = ClusterConnection.encoded(Array(picked))
            #expect(joined == Array(picked.map { $0.frame().encoded() }.joined()))
            #expect(joined.count == picked.reduce(0) { $0 + $1.frame().encodedCount })
            var decoder = FrameDecoder(maximumFrameSize: 1 << 20)
            decoder.feed(joined)
            var frames: [Frame] = []
            while let f = try decoder.next() { frames.append(f) }
            #expect(frames == picked.map { $0.frame() })
        }
    }

    @Test("large payloads go in a gathered write (sendmsg: prefix and payload where it lies) over a real connection whose reader is slow: the peer decodes every frame as sent, in order")
    func gatheredWrites() throws {
        let listener = try Socket.listen(on: SocketAddress(host: "127.0.0.1", port: 0))
        let client = try Socket.connect(to: listener.localAddress!, timeout: 5)
        let (server, _) = try listener.accept()
        let sender = ClusterConnection(socket: client, maximumFrameSize: 64 << 20)
        let receiver = ClusterConnection(socket: server, maximumFrameSize: 64 << 20)
        defer { sender.close(); receiver.close() }
        func payload(_ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ n) } }
        // Sizes around the threshold and past the socket buffers (partial writes), mixed with small frames.
        let batches: [[ClusterMessage]] = [
            [.leaseGrant(LeaseGrantMessage(leases: []), payload: payload(ClusterConnection.gatheredPayloadMinimum))],
            [.leaseGrant(LeaseGrantMessage(leases: []), payload: payload(ClusterConnection.gatheredPayloadMinimum - 1))],
            [.heartbeat(HeartbeatMessage(leasesInFlight: 3)), .leaseGrant(LeaseGrantMessage(leases: []), payload: payload(100 << 10)),
             .leaseGrant(LeaseGrantMessage(leases: []), payload: payload(700)), .leaseGrant(LeaseGrantMessage(leases: []), payload: payload(3 << 20)),
             .heartbeat(HeartbeatMessage(leasesInFlight: 4))],
        ]
        let expected = batches.flatMap { $0 }
        let received = Locked<[ClusterMessage]>([])
        let reader = Thread {
            for _ in expected {
                let m: ClusterMessage
                do { m = try receiver.receive() } catch {
                    received.withLock { _ in print("gatheredWrites: receive failed: \(error)") }
                    return
                }
                received.withLock { $0.append(m) }
                Thread.sleep(forTimeInterval: 0.002)  // slow: the sender's writes come back short
            }
        }
        reader.start()
        for batch in batches { try sender.send(batch) }
        let deadline = ContinuousClock.now + .seconds(20)
        while received.withLock({ $0.count }) < expected.count && ContinuousClock.now < deadline { Thread.sleep(forTimeInterval: 0.01) }
        let got = received.withLock { $0 }
        #expect(got.count == expected.count)
        for (g, e) in zip(got, expected) { #expect(g.frame() == e.frame()) }
    }

    @Test("a short gathered write resumes at the right octet: after any split, the iovecs left hold exactly the rest of the stream")
    func gatheredWriteResumes() {
        var random = SplitMix64(seed: 3)
        for _ in 0..<500 {
            let parts: [[UInt8]] = (0..<Int(1 + random.next() % 5)).map { p in (0..<Int(1 + random.next() % 40)).map { UInt8(truncatingIfNeeded: $0 + p * 50) } }
            let stream = parts.flatMap { $0 }
            var storage = parts  // kept alive for the pointers below
            var sent = 0
            storage.withUnsafeMutableBufferPointer { all in
                var iov = all.indices.map { i in all[i].withUnsafeMutableBytes { iovec(iov_base: $0.baseAddress, iov_len: $0.count) } }
                var first = 0
                while first < iov.count {
                    let left = iov[first...].reduce(0) { $0 + $1.iov_len }
                    let n = Int(random.next() % UInt64(left + 1))
                    Socket.advance(&iov, first: &first, by: n)
                    sent += n
                    let rest = iov[first...].flatMap { Array(UnsafeRawBufferPointer(start: $0.iov_base, count: $0.iov_len)) }
                    #expect(rest == Array(stream[sent...]))
                }
            }
            #expect(sent == stream.count)
        }
    }
}
