import ClusterProtocol
import Foundation
import SMTPCore
import HatoConfig
import HatoCoordinator
import HatoCrypto
import HatoIO
import HatoTestKit
import Testing

/// Whether the queue store implements the tenant layer yet (issue 16: it lands on another
/// branch; until then its methods refuse with "not implemented"). The end-to-end test below
/// runs once it does.

extension Integration {
    /// Tenants' DKIM keys reach the nodes over the cluster link (issue 16).
    @Suite("Tenant DKIM keys over the cluster link", .timeLimit(.minutes(3)))
    struct TenantDKIMTests {
        static let secret = "integration-test-secret-0123456789"

        /// Joins a real coordinator as node-a with a scripted node and returns the connection
        /// just after `welcome`.
        static func join(_ cluster: LocalCluster, features: [String]) throws -> ClusterConnection {
            let socket = try Socket.connect(to: SocketAddress(host: "127.0.0.1", port: cluster.clusterPort), timeout: 5)
            let conn = ClusterConnection(socket: socket, maximumFrameSize: 1 << 20)
            conn.setTimeouts(read: .seconds(10), write: .seconds(10))
            guard case .challenge(let c) = try conn.receive() else { throw HarnessError("expected challenge") }
            let instance = Identifier.random(bytes: 8)
            try conn.send(.hello(HelloMessage(version: clusterProtocolVersion, nodeID: "node-a", instanceID: instance,
                                              proof: ClusterAuth.nodeProof(secret: secret, nonce: c.nonce, nodeID: "node-a", instanceID: instance),
                                              nodeNonce: Identifier.random(bytes: 16), bindableIPs: ["127.0.0.10", "127.0.0.11"], capacity: 4,
                                              features: features)))
            guard case .welcome = try conn.receive() else { throw HarnessError("expected welcome") }
            return conn
        }

        /// A coordinator (no node process) whose one sending IP, 127.0.0.10, belongs to
        /// node-a — for a scripted node-a (`join`) — once its cluster port answers.
        static func coordinatorForScriptedNode(nodeTimeout: String = "5s", heartbeat: String = "1s") throws -> LocalCluster {
            let cluster = try LocalCluster(nodeIDs: ["node-a"], ipsYAML: """
                ips:
                  - { address: 127.0.0.10, helo: mta10.it.test, pool: transactional, nodes: [node-a] }
                """, nodeTimeout: nodeTimeout, heartbeat: heartbeat)
            do {
                try cluster.startCoordinator()
                try waitUntil("the coordinator listening", timeout: 20) {
                    (try? Socket.connect(to: SocketAddress(host: "127.0.0.1", port: cluster.clusterPort), timeout: 1))?.close() != nil
                }
            } catch {
                cluster.shutdown()
                throw error
            }
            return cluster
        }

        /// The frames other than heartbeats received within `seconds`.
        static func frames(_ conn: ClusterConnection, for seconds: Int) -> [ClusterMessage] {
            var out: [ClusterMessage] = []
            let until = ContinuousClock.now + .seconds(seconds)
            while ContinuousClock.now < until {
                guard let m = try? conn.receive(deadline: until) else { break }
                if case .heartbeat = m { continue }
                out.append(m)
            }
            return out
        }

        @Test("signing_keys follows welcome at once for a node that speaks it, before any grant; never to one that does not")
        func keysFollowWelcome() throws {
            let cluster = try Self.coordinatorForScriptedNode()
            defer { cluster.shutdown() }

            let speaking = try Self.join(cluster, features: ClusterFeature.all)
            // Mail waits, so that a grant would follow as soon as the node asks.
            _ = try submitWithSmtplib(port: cluster.smtpPort, messages: [(from: "a@example.org", to: ["u1@hato.test"], content: testMessage(1, to: "u1@hato.test"))],
                                      connections: 1, dir: cluster.dir)
            let first = try #require(Self.frames(speaking, for: 2).first, "no frame after welcome\n\(cluster.logs)")
            guard case .signingKeys(let m) = first else { Issue.record("expected signing_keys first, got \(first.frameType)"); return }
            // The store's version (the placeholder store: 0 and no keys until tenants are stored).
            #expect(m.version >= 0)
            #expect(m.term != nil)
            try speaking.send(.leaseRequest(LeaseRequestMessage(credits: 4)))
            let later = Self.frames(speaking, for: 3)
            #expect(later.contains { if case .leaseGrant = $0 { return true } else { return false } }, "a grant follows the keys")
            #expect(!later.contains { if case .signingKeys = $0 { return true } else { return false } }, "no new set while the version stays")
            speaking.close()

            let older = try Self.join(cluster, features: [ClusterFeature.configChanged, ClusterFeature.terms])
            #expect(!Self.frames(older, for: 3).contains { if case .signingKeys = $0 { return true } else { return false } })
            older.close()
            #expect(cluster.coordinator?.log.contains("PRIVATE KEY") == false)
        }

        @Test("a domain added to the store reaches the node, which signs its mail with both keys (dkimpy verifies); needs the tenant store")
        func addedDomainSigns() throws {
            let cluster = try LocalCluster(nodeIDs: ["node-a"], ipsYAML: """
                ips:
                  - { address: 127.0.0.10, helo: mta10.it.test, pool: transactional, nodes: [node-a] }
                """, smtpYAML: "auth_allow_plaintext_loopback: true")
            defer { cluster.shutdown() }
            try cluster.startCoordinator()
            try cluster.startNode("node-a")
            try cluster.waitForNodes(["node-a"], state: "active")

            // The operator's `domain add`, as the lead's CLI will do it: keys made, sealed, stored.
            let config = try ClusterConfig.load(path: cluster.configPath)
            let store = try config.openQueueStore()
            try store.createTenant(Tenant(name: "acme", createdAt: Date().timeIntervalSince1970))
            let domain = try SendingDomainKeys.generate(domain: "shop.example", tenant: "acme", date: Date(), clusterSecret: config.cluster.secret)
            try store.addSendingDomain(domain)
            // Only the tenant may send from its domain: its SMTP user submits.
            try store.addTenantUser(TenantSMTPUser(name: "acme-app", tenant: "acme",
                                                   passwordHash: PasswordHash.make(password: Array("acme-password".utf8), iterations: 10_000).encoded,
                                                   createdAt: Date().timeIntervalSince1970))
            let records = DomainRecords(domain: domain, config: config).records.filter { $0.kind == .dkim }
            #expect(records.count == 2)
            // Within the poll interval the node has them.
            try waitUntil("the node has the tenant keys", timeout: 15) {
                cluster.nodeProcess("node-a")?.log.contains("tenant signing keys updated") == true
                    && cluster.nodeProcess("node-a")?.log.contains("\"keys\":\"2\"") == true
            }
            let message = Array("From: Shop <news@shop.example>\r\nTo: <u1@hato.test>\r\nSubject: receipt\r\nDate: Sat, 05 Dec 2026 10:00:00 +0000\r\nMessage-ID: <r1@shop.example>\r\n\r\nThanks.\r\n".utf8)
            try Data(message).write(to: URL(fileURLWithPath: cluster.dir + "/receipt.eml"))
            _ = try OutboundInteropTests.python("""
                import smtplib, sys
                s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=20)
                s.login('acme-app', 'acme-password')
                s.sendmail('news@shop.example', ['u1@hato.test'], open(sys.argv[2], 'rb').read())
                s.quit()
                """, ["\(cluster.smtpPort)", cluster.dir + "/receipt.eml"], dir: cluster.dir)
            try cluster.waitForQueue(final: 1, timeout: 30)
            let captured = try #require(cluster.capture.received.first)
            let path = cluster.dir + "/signed.eml"
            try Data(captured.content).write(to: URL(fileURLWithPath: path))
            var keys: [String: String] = [:]
            for r in records { keys[r.name] = r.value }
            let verdicts = try OutboundInteropTests.dkimpy([path], records: keys, dir: cluster.dir)
            #expect(verdicts == [[true, true]], "\(cluster.logs)")
            // Never a key in a log.
            for p in [cluster.coordinator, cluster.nodeProcess("node-a")].compactMap({ $0 }) { #expect(!p.log.contains("PRIVATE KEY")) }
        }
    }
}
