import Foundation
import Testing
@testable import HatoConfig

/// `ConfigReload` as a value: which changed key applies live and which waits for a restart of
/// the coordinator, every node or one node; and what each process runs with afterwards.
@Suite("ConfigReload: which key applies live, which needs a restart")
struct ConfigReloadTests {
    static let yaml = """
        cluster: { name: t, secret: "0123456789abcdef0123" }
        coordinator: { listen: 127.0.0.1:7601, admin_listen: 127.0.0.1:7680, admin_token: tok, data_dir: /tmp/x, lease_time: 30s }
        smtp: { listen: [127.0.0.1:2525], hostname: relay.test, max_recipients: 100 }
        nodes:
          - { id: node-a, data_dir: /tmp/a }
          - { id: node-b, data_dir: /tmp/b }
        pools: [ { name: transactional }, { name: bulk } ]
        ips:
          - { address: 127.0.0.10, helo: a.test, pool: transactional, nodes: [node-a] }
          - { address: 127.0.0.11, helo: b.test, pool: bulk, nodes: [node-b] }
        routing:
          default_pool: transactional
          rules:
            - { header: X-Hato-Pool }
        delivery: { connections_per_ip: 4 }
        shaping:
          providers:
            - { name: gmail, mx_suffixes: [google.com], max_connections: 5 }
        """

    static func config(_ edit: (String) -> String = { $0 }) throws -> ClusterConfig {
        try ClusterConfig.parse(edit(yaml), path: "/tmp/cluster.yml")
    }

    static func reload(_ edit: (String) -> String) throws -> ConfigReload {
        let old = try config(), new = try config(edit)
        return ConfigReload(from: old, to: new)
    }

    @Test("reputation: the blocklist zones and interval need a coordinator restart; hold_when_all_listed and the FCrDNS keys apply live")
    func reputationKeys() throws {
        let r = try Self.reload {
            $0 + "\nreputation: { dnsbl: [bl.test], check_interval: 10m, hold_when_all_listed: false, require_fcrdns: true, fcrdns_interval: 6h }"
        }
        #expect(Set(r.liveKeys) == ["reputation.hold_when_all_listed", "reputation.require_fcrdns", "reputation.fcrdns_interval"])
        #expect(Set(r.coordinatorRestartKeys.map { $0.split(separator: " ").first.map(String.init) ?? $0 })
                == ["reputation.dnsbl", "reputation.check_interval"])
        #expect(r.restartKeys(forNode: "node-a").isEmpty)
    }

    @Test("an unchanged file changes nothing and needs no restart")
    func unchanged() throws {
        let r = ConfigReload(from: try Self.config(), to: try Self.config())
        #expect(r.changes.isEmpty && r.restartRequired.isEmpty && r.liveKeys.isEmpty)
    }

    @Test("routing.rules apply live; the coordinator runs with the new rules", arguments: [
        "    - { header: X-Hato-Pool }\n    - { sender_domain: news.example, pool: bulk }",
        "    - { auth_user: newsletter, pool: bulk }",
    ])
    func routingRulesLive(rules: String) throws {
        let r = try Self.reload { $0.replacingOccurrences(of: "    - { header: X-Hato-Pool }", with: rules) }
        #expect(r.changes == [ConfigChange(key: "routing.rules", live: true, restart: .none)])
        #expect(r.restartRequired.isEmpty)
        #expect(r.coordinatorConfig.routing.rules == r.new.routing.rules)
    }

    @Test("ips: an added IP or a moved one (eligibility) applies live, on the coordinator and on nodes")
    func ipsLive() throws {
        let moved = try Self.reload { $0.replacingOccurrences(of: "pool: bulk, nodes: [node-b]", with: "pool: bulk, nodes: [node-a]") }
        #expect(moved.liveKeys == ["ips"] && moved.restartRequired.isEmpty)
        #expect(moved.nodeConfig("node-a").ips.first { $0.address == "127.0.0.11" }?.nodes == ["node-a"])
        let added = try Self.reload { $0.replacingOccurrences(of: "ips:\n", with: "ips:\n  - { address: 127.0.0.12, helo: c.test, pool: bulk }\n") }
        #expect(added.liveKeys == ["ips"])
        #expect(added.coordinatorConfig.ips.count == 3)
    }

    @Test("listener, hostname and TLS of smtp wait for a coordinator restart and keep their values; session settings apply")
    func smtpKeys() throws {
        let r = try Self.reload {
            $0.replacingOccurrences(of: "listen: [127.0.0.1:2525], hostname: relay.test, max_recipients: 100",
                                    with: "listen: [127.0.0.1:2526], hostname: relay2.test, max_recipients: 50")
        }
        #expect(r.coordinatorRestartKeys == ["smtp.listen", "smtp.hostname"])
        let memory = try Self.reload { $0.replacingOccurrences(of: "max_recipients: 100", with: "max_recipients: 100, max_content_memory: 256MiB") }
        #expect(memory.restartRequired == ["needs restart of coordinator: smtp.max_content_memory"])
        #expect(r.liveKeys == ["smtp.max_recipients"])
        #expect(r.restartRequired == ["needs restart of coordinator: smtp.listen, smtp.hostname"])
        let c = r.coordinatorConfig
        #expect(c.smtp.listen.map(\.port) == [2525] && c.smtp.hostname == "relay.test", "kept until the restart")
        #expect(c.smtp.maxRecipients == 50, "applied")
        #expect(r.restartKeys(forNode: "node-a").isEmpty)
    }

    @Test("delivery.connections_per_ip and cluster.secret need the coordinator and every node restarted")
    func everyProcess() throws {
        let r = try Self.reload {
            $0.replacingOccurrences(of: "connections_per_ip: 4", with: "connections_per_ip: 2")
                .replacingOccurrences(of: "0123456789abcdef0123", with: "another-secret-0123456789")
        }
        #expect(r.liveKeys.isEmpty)
        #expect(r.restartRequired == ["needs restart of coordinator: cluster.secret, delivery.connections_per_ip",
                                      "needs restart of every node: cluster.secret, delivery.connections_per_ip"])
        #expect(r.restartKeys(forNode: "node-b") == ["cluster.secret", "delivery.connections_per_ip"])
        #expect(r.coordinatorConfig.cluster.secret == "0123456789abcdef0123" && r.coordinatorConfig.delivery.connectionsPerIP == 4)
        #expect(r.nodeConfig("node-a").cluster.secret == "0123456789abcdef0123" && r.nodeConfig("node-a").delivery.connectionsPerIP == 4)
    }

    @Test("a node's own settings need only that node restarted; the others and the coordinator run on")
    func oneNode() throws {
        let r = try Self.reload { $0.replacingOccurrences(of: "data_dir: /tmp/b }", with: "data_dir: /tmp/b2 }") }
        #expect(r.changes == [ConfigChange(key: "nodes[1].data_dir", live: false, restart: .node("node-b"))])
        #expect(r.restartRequired == ["needs restart of node node-b: nodes[1].data_dir"])
        #expect(r.restartKeys(forNode: "node-a").isEmpty && r.coordinatorRestartKeys.isEmpty)
        #expect(r.nodeConfig("node-b").node(id: "node-b")?.dataDir == "/tmp/b", "kept until node-b restarts")
    }

    @Test("nodes added or removed, pools, lease time apply live; coordinator-only settings wait for it")
    func membershipAndCoordinator() throws {
        let r = try Self.reload {
            $0.replacingOccurrences(of: "  - { id: node-b, data_dir: /tmp/b }", with: "  - { id: node-b, data_dir: /tmp/b }\n  - { id: node-c, data_dir: /tmp/c }")
                .replacingOccurrences(of: "{ name: bulk } ]", with: "{ name: bulk }, { name: fresh } ]")
                .replacingOccurrences(of: "lease_time: 30s", with: "lease_time: 60s")
                .replacingOccurrences(of: "admin_listen: 127.0.0.1:7680", with: "admin_listen: 127.0.0.1:7681")
        }
        #expect(Set(r.liveKeys) == ["nodes", "pools", "coordinator.lease_time"])
        #expect(r.coordinatorRestartKeys == ["coordinator.admin_listen"])
        #expect(r.coordinatorConfig.coordinator.leaseTime == 60 && r.coordinatorConfig.coordinator.adminListen.port == 7680)
    }

    @Test("dkim applies live on nodes; shaping too, but renamed providers relabel the coordinator's log only after its restart")
    func nodeSideLive() throws {
        let dkim = try Self.reload { $0 + "\ndkim:\n  - { domain: example.org, selector: s1, private_key: k.pem, algorithm: rsa-sha256 }\n" }
        #expect(dkim.changes == [ConfigChange(key: "dkim", live: true, restart: .none)])
        #expect(dkim.nodeConfig("node-a").dkim.count == 1)
        let limits = try Self.reload { $0.replacingOccurrences(of: "max_connections: 5 }", with: "max_connections: 2 }") }
        #expect(limits.changes == [ConfigChange(key: "shaping", live: true, restart: .none)])
        let renamed = try Self.reload { $0.replacingOccurrences(of: "name: gmail", with: "name: google") }
        #expect(renamed.changes.first?.live == true && renamed.changes.first?.restart == .coordinator)
        #expect(renamed.restartRequired == ["needs restart of coordinator: shaping (provider labels in the delivery log and metrics)"])
    }

    @Test("routing.default_pool applies to the next submission; DSNs take it after a coordinator restart")
    func defaultPool() throws {
        let r = try Self.reload { $0.replacingOccurrences(of: "default_pool: transactional", with: "default_pool: bulk") }
        #expect(r.changes == [ConfigChange(key: "routing.default_pool", live: true, restart: .coordinator, note: "DSNs")])
        #expect(r.liveKeys == ["routing.default_pool"])
        #expect(r.restartRequired == ["needs restart of coordinator: routing.default_pool (DSNs)"])
    }

    @Test("a refusal names every error's key and detail, and says nothing changed")
    func refusal() {
        let e = ConfigReloadRefused(file: "/etc/hato/cluster.yml",
                                    errors: [.init(.error, "dkim[0].private_key", "cannot read /etc/hato/keys/k.pem: No such file or directory")])
        #expect(e.description == "reload refused (/etc/hato/cluster.yml): dkim[0].private_key: cannot read /etc/hato/keys/k.pem: No such file or directory; the running configuration is unchanged")
    }
}
