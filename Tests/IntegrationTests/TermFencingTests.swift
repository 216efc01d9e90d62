import ClusterProtocol
import Foundation
import HatoConfig
import HatoCrypto
import HatoIO
import Testing

extension Integration {
    /// A real `hato-node` against a scripted coordinator on loopback that speaks under chosen
    /// leadership terms: the node refuses a welcome, and closes a connection on any grant,
    /// assignment or revocation, from a term older than one it has seen of the same store.
    @Suite("Term fencing at the node: a stale leader's welcome and frames are refused", .timeLimit(.minutes(2)))
    struct TermFencingTests {
        let secret = "integration-test-secret-0123456789"

        /// Accepts the node's next connection (polling, bounded) and runs the handshake with a
        /// welcome under `term` of `store` — or, with `redirectTo`, answers `hello` with a
        /// redirect naming that address.
        private func join(_ listener: Socket, term: Int64, store: String, ips: [AssignedIP],
                          redirectTo: String? = nil) throws -> ClusterConnection {
            let deadline = ContinuousClock.now + .seconds(20)
            var accepted: Socket?
            while accepted == nil, ContinuousClock.now < deadline {
                accepted = try listener.acceptIfPending()?.0
                if accepted == nil { usleep(20_000) }
            }
            let socket = try #require(accepted, "the node did not connect")
            let conn = ClusterConnection(socket: socket, maximumFrameSize: 1 << 20)
            conn.setTimeouts(read: .seconds(10), write: .seconds(10))
            try conn.send(.challenge(ChallengeMessage(versions: [clusterProtocolVersion], nonce: Identifier.random(bytes: 16), cluster: "it")))
            guard case .hello(let hello) = try conn.receive() else { throw HarnessError("expected hello") }
            #expect(hello.features?.contains(ClusterFeature.terms) == true)
            if let redirectTo {
                try conn.send(.redirect(RedirectMessage(leader: "coord-leader", address: redirectTo, term: term)))
                return conn
            }
            let proof = ClusterAuth.coordinatorProof(secret: secret, nodeNonce: hello.nodeNonce, nodeID: hello.nodeID)
            // A long peer timeout: the node must not drop the link on its own (no heartbeats here).
            try conn.send(.welcome(WelcomeMessage(proof: proof, assignedIPs: ips, heartbeatInterval: 1, peerTimeout: 600,
                                                  term: term, storeID: store, coordinatorID: "coord-\(term)")))
            return conn
        }

        /// The next frame that is not a heartbeat, or nil when the node closed the connection.
        private func nextFrame(_ conn: ClusterConnection) -> ClusterMessage? {
            while true {
                guard let m = try? conn.receive() else { return nil }
                if case .heartbeat = m { continue }
                return m
            }
        }

        @Test("welcome under term 5, then an ip_assign of term 4 closes the connection; a welcome of term 3 is refused; term 6 is served; a new store starts again at term 1")
        func staleTermsAreRefused() throws {
            let cluster = try LocalCluster()
            defer { cluster.shutdown() }
            let listener = try Socket.listen(on: SocketAddress(host: "127.0.0.1", port: cluster.clusterPort))
            defer { listener.close() }
            let ip10 = AssignedIP(address: "127.0.0.10", helo: "mta10.it.test", pool: "transactional")
            let ip11 = AssignedIP(address: "127.0.0.11", helo: "mta11.it.test", pool: "transactional")
            try cluster.startNode("node-a")

            // Term 5: served (the node asks for leases), until a frame of term 4 arrives.
            let c1 = try join(listener, term: 5, store: "store-s", ips: [ip10])
            guard case .leaseRequest = nextFrame(c1) else { Issue.record("term 5 should be served"); return }
            try c1.send(.ipAssign(IPAssignMessage(ips: [ip11], term: 4)))
            #expect(nextFrame(c1) == nil, "an ip_assign of an older term must close the connection")
            c1.close()

            // Term 3 (older than 5, same store): the welcome is refused, no lease request follows.
            let c2 = try join(listener, term: 3, store: "store-s", ips: [ip10])
            #expect(nextFrame(c2) == nil, "a welcome of an older term must be refused")
            c2.close()

            // Term 6: served; a revocation of term 6 is obeyed (the node reports the IP released).
            let c3 = try join(listener, term: 6, store: "store-s", ips: [ip10, ip11])
            guard case .leaseRequest = nextFrame(c3) else { Issue.record("term 6 should be served"); return }
            try c3.send(.ipRevoke(IPRevokeMessage(addresses: ["127.0.0.11"], term: 6)))
            var released = false
            let until = ContinuousClock.now + .seconds(15)
            while !released, ContinuousClock.now < until, let m = nextFrame(c3) {
                if case .ipReleased(let r) = m, r.addresses == ["127.0.0.11"] { released = true }
            }
            #expect(released)
            // A real lease of term 5 on this term-6 connection: refused (the connection closes, no
            // result comes back and nothing reaches the MX).
            let body = Array("From: a@example.org\r\nTo: b@hato.test\r\nSubject: stale\r\n\r\nstale\r\n".utf8)
            let lease = Lease(leaseID: "L-stale", sendingIP: "127.0.0.10", helo: "mta10.it.test", messageID: "M-stale",
                              reversePath: "a@example.org", domain: "hato.test", recipients: [LeasedRecipient(id: 1, address: "b@hato.test")],
                              expiresIn: 60, bodyOffset: 0, bodyLength: body.count)
            try c3.send(.leaseGrant(LeaseGrantMessage(leases: [lease], term: 5), payload: body))
            var sawResult = false
            while let m = nextFrame(c3) { if case .result = m { sawResult = true } }
            #expect(!sawResult, "a lease_grant of an older term must not be delivered")
            #expect(cluster.capture.received.isEmpty)
            c3.close()

            // A different store (a new data directory) starts at term 1 and is accepted.
            let c4 = try join(listener, term: 1, store: "store-t", ips: [ip10])
            guard case .leaseRequest = nextFrame(c4) else { Issue.record("a new store's term 1 should be served"); return }
            c4.close()
            let log = (try? String(contentsOfFile: cluster.nodeProcess("node-a")?.logPath ?? "", encoding: .utf8)) ?? ""
            #expect(log.contains("lease_grant") && log.contains("ip_assign"), "the node logs each frame it refused")
        }
    
        @Test("a standby's redirect is followed at once to the leader it names, where the node joins")
        func redirectIsFollowed() throws {
            let cluster = try LocalCluster()
            defer { cluster.shutdown() }
            let standby = try Socket.listen(on: SocketAddress(host: "127.0.0.1", port: cluster.clusterPort))
            defer { standby.close() }
            let leaderPort = try freePort()
            let leader = try Socket.listen(on: SocketAddress(host: "127.0.0.1", port: leaderPort))
            defer { leader.close() }
            let ip10 = AssignedIP(address: "127.0.0.10", helo: "mta10.it.test", pool: "transactional")
            try cluster.startNode("node-a")
            let c1 = try join(standby, term: 2, store: "s", ips: [], redirectTo: "127.0.0.1:\(leaderPort)")
            let redirectedAt = ContinuousClock.now
            let c2 = try join(leader, term: 2, store: "s", ips: [ip10])
            // Straight there: the node's log shows the redirect followed with no failed attempt between.
            #expect(ContinuousClock.now - redirectedAt < .seconds(5))
            let log = cluster.nodeProcess("node-a")?.log ?? ""
            #expect(log.contains("following its redirect") && !log.contains("cluster connection ended"))
            guard case .leaseRequest = nextFrame(c2) else { Issue.record("the leader should be served"); return }
            c1.close(); c2.close()
        }
    }
}
