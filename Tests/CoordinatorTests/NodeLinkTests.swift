import Foundation
import HatoIO
import Testing
@testable import ClusterProtocol
@testable import HatoCoordinator
@testable import HatoSupport

/// Issue 19: grants written from the scheduler thread on an idle link (`NodeLink.sendNow`)
/// (filter: `NodeLinkTests`).
@Suite("NodeLinkTests")
struct NodeLinkTests {
    /// A link over a loopback connection whose peer reads nothing until told, and the peer.
    private static func pair() throws -> (link: NodeLink, peer: ClusterConnection, close: () -> Void) {
        let listener = try Socket.listen(on: SocketAddress(host: "127.0.0.1", port: 0))
        let client = try Socket.connect(to: listener.localAddress!, timeout: 5)
        let (server, peerAddress) = try listener.accept()
        listener.close()
        server.setTimeouts(read: .seconds(30), write: .seconds(10))
        client.setTimeouts(read: .seconds(10), write: .seconds(10))
        let link = NodeLink(id: 1, nodeID: "node-1", peer: peerAddress, connection: ClusterConnection(socket: server, maximumFrameSize: 64 << 20),
                            log: Logger(label: "t"))
        link.start()
        let peer = ClusterConnection(socket: client, maximumFrameSize: 64 << 20)
        return (link, peer, { link.finish(); peer.close() })
    }

    private static func grant(_ tag: UInt8, octets: Int) -> ClusterMessage {
        .leaseGrant(LeaseGrantMessage(leases: [], term: Int64(tag)), payload: [UInt8](repeating: tag, count: octets))
    }

    @Test("a frame larger than the socket takes is written in part without blocking; the rest goes first, whole, then what was queued after it")
    func partialDirectWriteKeepsOrder() throws {
        let (link, peer, close) = try Self.pair()
        defer { close() }
        // 24 MiB: more than a loopback socket's send and receive buffers hold together.
        let big = Self.grant(1, octets: 24 << 20)
        // The peer reads nothing until `sendNow` has returned: a write that waited for the peer
        // would stall until the 10-second write timeout, fail and close the link, and the frames
        // below would never arrive whole. (No wall-clock bound here: encoding 24 MiB on a loaded
        // CI machine took 3.9 s once.)
        #expect(link.sendNow { [big] })
        // The rest is queued: a second direct write is refused until the writer has sent it.
        #expect(!link.sendNow { [Self.grant(9, octets: 1)] })
        link.send(.message(Self.grant(2, octets: 100)))
        link.send(.message(.heartbeat(HeartbeatMessage(leasesInFlight: 3))))
        let first = try peer.receive()
        guard case .leaseGrant(let g1, let p1) = first else { Issue.record("first frame: \(first)"); return }
        #expect(g1.term == 1 && p1.count == 24 << 20 && p1.allSatisfy { $0 == 1 })
        let second = try peer.receive()
        guard case .leaseGrant(let g2, let p2) = second else { Issue.record("second frame: \(second)"); return }
        #expect(g2.term == 2 && p2 == [UInt8](repeating: 2, count: 100))
        #expect(try peer.receive() == .heartbeat(HeartbeatMessage(leasesInFlight: 3)))
    }

    @Test("on an idle link the frames are written by the calling thread; the link then takes direct writes again")
    func idleLinkWritesDirectly() throws {
        let (link, peer, close) = try Self.pair()
        defer { close() }
        let caller = Thread.current
        let builtOn = Locked<Bool?>(nil)
        #expect(link.sendNow {
            builtOn.withLock { $0 = Thread.current == caller }
            return [Self.grant(5, octets: 4096), .heartbeat(HeartbeatMessage(leasesInFlight: 1))]
        })
        #expect(builtOn.snapshot == true)
        guard case .leaseGrant(let g, let p) = try peer.receive() else { Issue.record("not a grant"); return }
        #expect(g.term == 5 && p.count == 4096)
        #expect(try peer.receive() == .heartbeat(HeartbeatMessage(leasesInFlight: 1)))
        #expect(link.sendNow { [.heartbeat(HeartbeatMessage(leasesInFlight: 2))] })
        #expect(try peer.receive() == .heartbeat(HeartbeatMessage(leasesInFlight: 2)))
    }

    @Test("a link that is closing takes no direct write")
    func closingLinkRefuses() throws {
        let (link, _, close) = try Self.pair()
        defer { close() }
        link.shutdownWhenSent()
        var built = false
        #expect(!link.sendNow { built = true; return [] })
        #expect(!built)
    }
}
