import Foundation
import Testing
@testable import HatoConfig
@testable import HatoCrypto

/// `cluster.tls`, `nodes[].tls`, `coordinator.admin_tls` and `coordinator.admin_token_file`.
@Suite("Configuration: cluster TLS, admin TLS, admin token file")
struct SecurityConfigTests {
    static func yaml(cluster: String = "", coordinator: String = "  admin_token: tok-123\n", nodeA: String = "") -> String {
        """
        cluster:
          name: test
          secret: "0123456789abcdef0123"
        \(cluster)coordinator:
          listen: 127.0.0.1:7601
          admin_listen: 127.0.0.1:7680
        \(coordinator)  data_dir: var/coordinator
        smtp: { listen: [127.0.0.1:2525], hostname: relay.hato.test }
        nodes:
          - { id: node-a, data_dir: var/node-a\(nodeA) }
          - { id: node-b, data_dir: var/node-b }
        pools: [ { name: t } ]
        ips: [ { address: 127.0.0.10, helo: a.test, pool: t } ]
        routing: { default_pool: t }

        """
    }

    static func error(_ text: String, path: String = "/etc/hato/cluster.yml") -> ConfigError? {
        do {
            _ = try ClusterConfig.parse(text, path: path)
            return nil
        } catch {
            return error as? ConfigError
        }
    }

    @Test("cluster.tls: paths resolved against the file's directory; a node's own pair overrides the cluster pair")
    func clusterTLS() throws {
        let text = Self.yaml(cluster: "  tls: { certificate: tls/coordinator.pem, private_key: tls/coordinator.key, ca: /etc/pki/ca.pem }\n",
                             nodeA: ", tls: { certificate: tls/node-a.pem, private_key: tls/node-a.key }")
        let c = try ClusterConfig.parse(text, path: "/etc/hato/cluster.yml")
        #expect(c.cluster.tls == ClusterTLSSettings(pair: TLSPairSettings(certificatePath: "/etc/hato/tls/coordinator.pem",
                                                                          privateKeyPath: "/etc/hato/tls/coordinator.key"),
                                                    caPath: "/etc/pki/ca.pem"))
        #expect(c.clusterTLSPair(forNode: "node-a")?.certificatePath == "/etc/hato/tls/node-a.pem")
        #expect(c.clusterTLSPair(forNode: "node-b")?.certificatePath == "/etc/hato/tls/coordinator.pem", "no pair of its own: the cluster's")
        #expect(try ClusterConfig.parse(Self.yaml(), path: "/etc/hato/cluster.yml").clusterTLSPair(forNode: "node-a") == nil)
    }

    @Test("cluster.tls and nodes[].tls errors name the key: missing private_key, an unknown key, a node pair without cluster.tls")
    func clusterTLSErrors() {
        let missing = Self.error(Self.yaml(cluster: "  tls: { certificate: c.pem }\n"))
        #expect(missing?.key == "cluster.tls.private_key", "\(String(describing: missing))")
        let unknown = Self.error(Self.yaml(cluster: "  tls: { certificate: c.pem, private_key: k.pem, cert: x }\n"))
        #expect(unknown?.key == "cluster.tls.cert")
        let orphan = Self.error(Self.yaml(nodeA: ", tls: { certificate: a.pem, private_key: a.key }"))
        #expect(orphan?.key == "nodes[0].tls" && orphan?.message.contains("cluster.tls") == true, "\(String(describing: orphan))")
    }

    @Test("coordinator.admin_tls: the CLI trusts its ca, or the certificate itself")
    func adminTLS() throws {
        let pinned = try ClusterConfig.parse(Self.yaml(coordinator: "  admin_token: tok-123\n  admin_tls: { certificate: admin.pem, private_key: admin.key }\n"),
                                             path: "/etc/hato/cluster.yml")
        #expect(pinned.coordinator.adminTLS?.trustPath == "/etc/hato/admin.pem")
        let withCA = try ClusterConfig.parse(Self.yaml(coordinator: "  admin_token: tok-123\n  admin_tls: { certificate: admin.pem, private_key: admin.key, ca: ca.pem }\n"),
                                             path: "/etc/hato/cluster.yml")
        #expect(withCA.coordinator.adminTLS?.trustPath == "/etc/hato/ca.pem")
    }

    @Test("admin_token_file: read and trimmed; both keys or neither is an error; an unreadable file leaves the token unresolved, not the load failed")
    func adminTokenFile() throws {
        let dir = NSTemporaryDirectory() + "hato-token-" + Identifier.random(bytes: 4)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "s3cret-admin-token\r\n".write(toFile: dir + "/admin.token", atomically: true, encoding: .utf8)
        let path = dir + "/cluster.yml"
        let c = try ClusterConfig.parse(Self.yaml(coordinator: "  admin_token_file: admin.token\n"), path: path)
        #expect(c.coordinator.adminToken == "s3cret-admin-token" && c.coordinator.adminTokenFile == dir + "/admin.token")
        #expect(try c.coordinator.requireAdminToken() == "s3cret-admin-token")

        let both = Self.error(Self.yaml(coordinator: "  admin_token: tok\n  admin_token_file: admin.token\n"), path: path)
        #expect(both?.key == "coordinator.admin_token_file" && both?.message.contains("not both") == true)
        let neither = Self.error(Self.yaml(coordinator: ""), path: path)
        #expect(neither?.key == "coordinator.admin_token")

        let elsewhere = try ClusterConfig.parse(Self.yaml(coordinator: "  admin_token_file: nosuch.token\n"), path: path)
        #expect(elsewhere.coordinator.adminToken.isEmpty && elsewhere.coordinator.adminTokenError?.contains("nosuch.token") == true)
        do {
            _ = try elsewhere.coordinator.requireAdminToken()
            Issue.record("an unresolved token was returned")
        } catch {
            #expect(error.key == "coordinator.admin_token_file" && error.message.contains("No such file"), "\(error)")
        }

        try "two words\n".write(toFile: dir + "/bad.token", atomically: true, encoding: .utf8)
        let bad = Self.error(Self.yaml(coordinator: "  admin_token_file: bad.token\n"), path: path)
        #expect(bad?.key == "coordinator.admin_token_file" && bad?.message.contains("printable ASCII") == true)
    }
}
