import Foundation
import HatoTestKit
import Testing
@testable import HatoConfig
@testable import HatoIO

/// Tests for the YAML-subset parser, the `cluster.yml` model, its validation and value parsers.
@Suite("Cluster configuration")
struct ConfigTests {
    // MARK: - Fixtures

    /// A small valid configuration; the line numbers are referenced by the validation tests.
    static let base = """
        cluster:
          name: test
          secret: "0123456789abcdef0123"
        coordinator:
          listen: 127.0.0.1:7601
          admin_listen: 127.0.0.1:7680
          admin_token: tok-123
          data_dir: var/coordinator
        smtp:
          listen: [127.0.0.1:2525]
          hostname: relay.hato.test
        nodes:
          - id: node-a
            data_dir: var/node-a
          - id: node-b
            data_dir: var/node-b
        pools:
          - name: transactional
        ips:
          - address: 127.0.0.10
            helo: mta10.hato.test
            pool: transactional
            nodes: [node-a]
          - address: 127.0.0.11
            helo: mta11.hato.test
            pool: transactional
        routing:
          default_pool: transactional

        """

    /// `base` with 1-based line `n` replaced by `text` (which may hold several lines, or be empty to delete it).
    static func base(replacingLine n: Int, with text: String) -> String {
        var lines = base.components(separatedBy: "\n")
        if text.isEmpty { lines.remove(at: n - 1) } else { lines[n - 1] = text }
        return lines.joined(separator: "\n")
    }

    static func parse(_ text: String, path: String = "test.yml") throws -> ClusterConfig {
        try ClusterConfig.parse(text, path: path)
    }

    /// The `ConfigError` parsing `text` throws, recording an issue when it does not throw one.
    static func configError(_ text: String, path: String = "test.yml",
                            sourceLocation: SourceLocation = #_sourceLocation) -> ConfigError? {
        do {
            _ = try ClusterConfig.parse(text, path: path)
            Issue.record("expected a ConfigError", sourceLocation: sourceLocation)
        } catch let error as ConfigError {
            return error
        } catch {
            Issue.record("unexpected error type: \(error)", sourceLocation: sourceLocation)
        }
        return nil
    }

    /// The `YAMLError` parsing `text` throws, recording an issue when it parses.
    static func yamlError(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) -> YAMLError? {
        do {
            let node = try YAML.parse(text, file: "t.yml")
            Issue.record("expected a YAMLError, parsed \(node)", sourceLocation: sourceLocation)
        } catch {
            return error
        }
        return nil
    }

    static var repositoryRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }

    /// A fresh temporary directory, removed by `body`'s caller via the returned cleanup.
    static func withTemporaryDirectory(_ body: (String) throws -> Void) rethrows {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hato-config-\(UUID().uuidString)").path
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try body(dir)
    }

    // MARK: - YAML subset

    @Test("YAML block maps nest and carry line and column numbers")
    func yamlBlockMaps() throws {
        let doc = try YAML.parse("""
            # leading comment
            a: 1
            b:
              c: two words   # trailing comment

              d: x#y
            """)
        guard case .map(let entries, let line, let column) = doc else { Issue.record("not a map"); return }
        #expect(line == 2 && column == 1)
        #expect(entries.map(\.key) == ["a", "b"])
        #expect(entries[1].keyLine == 3)
        #expect(doc["a"] == .scalar("1", quoted: false, line: 2, column: 4))
        #expect(doc["b"]?["c"] == .scalar("two words", quoted: false, line: 4, column: 6))
        #expect(doc["b"]?["d"]?.scalarValue == "x#y")
        #expect(doc["b"]?.line == 4)
        #expect(doc["b"]?.column == 3)
    }

    @Test("YAML block lists, list-of-maps with continuation keys, and compact lists")
    func yamlBlockLists() throws {
        let doc = try YAML.parse("""
            plain:
              - one
              - "two"
            maps:
              - id: a
                dir: x
              -   id: b
                  dir: y
            compact:
            - p
            - q
            nested:
              - - 1
                - 2
            after: end
            """)
        guard case .list(let plain, _, _)? = doc["plain"] else { Issue.record("plain is not a list"); return }
        #expect(plain == [.scalar("one", quoted: false, line: 2, column: 5), .scalar("two", quoted: true, line: 3, column: 5)])
        guard case .list(let maps, let mapsLine, _)? = doc["maps"] else { Issue.record("maps is not a list"); return }
        #expect(mapsLine == 5)
        #expect(maps.count == 2)
        #expect(maps[0]["id"]?.scalarValue == "a" && maps[0]["dir"]?.scalarValue == "x")
        #expect(maps[1]["id"]?.scalarValue == "b" && maps[1]["dir"]?.line == 8)
        guard case .list(let compact, _, _)? = doc["compact"] else { Issue.record("compact is not a list"); return }
        #expect(compact.compactMap(\.scalarValue) == ["p", "q"])
        guard case .list(let nested, _, _)? = doc["nested"], case .list(let inner, _, _) = nested.first else {
            Issue.record("nested is not a list of lists"); return
        }
        #expect(inner.compactMap(\.scalarValue) == ["1", "2"])
        #expect(doc["after"]?.scalarValue == "end")
    }

    @Test("YAML flow maps and lists nest and may span lines")
    func yamlFlowCollections() throws {
        let doc = try YAML.parse("""
            m: { a: 1, b: [x, "y, z"], c: {}, d: [], "e": 127.0.0.1:25 }
            l: [
              { id: n1 },   # comment inside a flow
              [a, 'b'],
            ]
            """)
        #expect(doc["m"]?["a"]?.scalarValue == "1")
        guard case .list(let b, _, _)? = doc["m"]?["b"] else { Issue.record("b is not a list"); return }
        #expect(b == [.scalar("x", quoted: false, line: 1, column: 16), .scalar("y, z", quoted: true, line: 1, column: 19)])
        #expect(doc["m"]?["c"] == .map([], line: 1, column: 31))
        #expect(doc["m"]?["d"] == .list([], line: 1, column: 38))
        #expect(doc["m"]?["e"]?.scalarValue == "127.0.0.1:25")
        guard case .list(let l, _, _)? = doc["l"] else { Issue.record("l is not a list"); return }
        #expect(l.count == 2)
        #expect(l[0]["id"] == .scalar("n1", quoted: false, line: 3, column: 9))
        #expect(l[1] == .list([.scalar("a", quoted: false, line: 4, column: 4), .scalar("b", quoted: true, line: 4, column: 7)],
                              line: 4, column: 3))
    }

    @Test("YAML quoted scalars: escapes, doubled single quotes, '#' inside quotes")
    func yamlQuotedScalars() throws {
        let doc = try YAML.parse(#"""
            d: "tab\there \"q\" back\\slash\nnew # not a comment"  # comment
            s: 'it''s # also not'
            e: ""
            u: "caf\u00e9"
            """#)
        #expect(doc["d"]?.scalarValue == "tab\there \"q\" back\\slash\nnew # not a comment")
        #expect(doc["s"]?.scalarValue == "it's # also not")
        #expect(doc["e"] == .scalar("", quoted: true, line: 3, column: 4))
        #expect(doc["e"]?.isNull == false)
        #expect(doc["u"]?.scalarValue == "café")
    }

    @Test("YAML empty values are null, empty documents are empty maps, CRLF and a leading --- are accepted")
    func yamlNullsAndDocuments() throws {
        let doc = try YAML.parse("---\r\na:\r\nb: 1\r\n")
        #expect(doc["a"]?.isNull == true)
        #expect(doc["a"]?.line == 2)
        #expect(doc["b"] == .scalar("1", quoted: false, line: 3, column: 4))
        #expect(try YAML.parse("# only a comment\n\n") == .map([], line: 1, column: 1))
        #expect(try YAML.parse("") == .map([], line: 1, column: 1))
    }

    @Test("YAML rejects tabs in indentation with the line number")
    func yamlTabs() {
        let e = Self.yamlError("a:\n  b: 1\n\tc: 2\n")
        #expect(e?.line == 3)
        #expect(e?.message.contains("tab") == true)
        #expect(Self.yamlError("a:\n-\tb: 1\n")?.line == 2)
    }

    @Test("YAML rejects duplicate keys in block and flow maps, naming both lines")
    func yamlDuplicateKeys() {
        let block = Self.yamlError("a: 1\nb: 2\na: 3\n")
        #expect(block?.line == 3)
        #expect(block?.message == #"duplicate key "a" (first defined on line 1)"#)
        #expect(Self.yamlError("m: { x: 1, y: 2, x: 3 }")?.message.contains(#"duplicate key "x""#) == true)
    }

    @Test("YAML rejects unsupported features", arguments: [
        ("a: &anchor 1\n", "anchors"),
        ("a: *alias\n", "aliases"),
        ("a: !!str 1\n", "tags"),
        ("a: |\n  text\n", "block scalars"),
        ("a: >\n  text\n", "block scalars"),
        ("a: 1\n---\nb: 2\n", "multiple documents"),
        ("%YAML 1.2\na: 1\n", "directives"),
        ("? complex\n: key\n", "complex keys"),
        ("l: [a: 1]\n", "flow list"),
    ])
    func yamlUnsupported(text: String, feature: String) {
        let e = Self.yamlError(text)
        #expect(e?.message.contains("unsupported YAML feature") == true)
        #expect(e?.message.contains(feature) == true)
    }

    @Test("YAML rejects bad indentation at the offending line")
    func yamlBadIndentation() {
        let deeper = Self.yamlError("a:\n  b: 1\n    c: 2\n")
        #expect(deeper?.line == 3)
        #expect(deeper?.message.contains("bad indentation") == true)
        let between = Self.yamlError("a:\n  b: 1\n c: 2\n")
        #expect(between?.line == 3)
        #expect(Self.yamlError("l:\n  - a\n  b: 1\n")?.line == 3)
        #expect(Self.yamlError("a: 1\n- b\n")?.line == 2)
    }

    @Test("YAML rejects unterminated quotes and flows at the opening line")
    func yamlUnterminated() {
        let dq = Self.yamlError("a: 1\nb: \"open\nc: 2\n")
        #expect(dq?.line == 2 && dq?.column == 4)
        #expect(dq?.message.contains("unterminated double-quoted") == true)
        #expect(Self.yamlError("a: 'open\n")?.message.contains("unterminated single-quoted") == true)
        let flow = Self.yamlError("a: [1, 2\n")
        #expect(flow?.line == 1)
        #expect(flow?.message.contains("unterminated flow list") == true)
        #expect(Self.yamlError("a: { b: 1\n")?.message.contains("unterminated flow map") == true)
        // A flow left open before the next top-level key.
        #expect(Self.yamlError("a: [1, 2\nb: 3\n")?.line == 2)
    }

    @Test("YAML rejects ': ' in plain values and text after a flow, with a hint to quote")
    func yamlPlainValueErrors() {
        #expect(Self.yamlError("a: b: c\n")?.message.contains("quote the value") == true)
        let v6 = Self.yamlError("next_hop: [::1]:25\n")
        #expect(v6?.line == 1)
        #expect(v6?.message.contains("\"[::1]:25\"") == true)
        #expect(Self.yamlError("a: \"x\" y\n")?.message.contains("after the closing quote") == true)
        #expect(Self.yamlError("a: \"bad \\q escape\"\n")?.message.contains("unsupported escape") == true)
    }

    @Test("YAML never traps: deep nesting and random input only produce errors")
    func yamlNeverTraps() {
        #expect(Self.yamlError(String(repeating: "[", count: 100_000))?.message.contains("nesting too deep") == true)
        #expect(Self.yamlError(String(repeating: "- ", count: 5_000) + "x\n")?.message.contains("nesting too deep") == true)
        #expect(Self.yamlError("a: \u{0}\n")?.message.contains("control character") == true)
        var rng = SplitMix64(seed: 42)
        let alphabet = Array("ab: -#'\"\\[]{},\n\t|>&*!?%@`.1é\r")
        for _ in 0..<5_000 {
            let length = Int(rng.next() % 60)
            let text = String((0..<length).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] })
            _ = try? YAML.parse(text)
        }
        // Mutations of a real configuration must never crash the decoder either.
        let bytes = Array(Self.base.utf8)
        let insertable = Array(":- #[]{}'\"\n\t0".utf8)
        for _ in 0..<2_000 {
            var mutated = bytes
            for _ in 0..<3 {
                let at = Int(rng.next() % UInt64(mutated.count))
                switch rng.next() % 3 {
                case 0: mutated.remove(at: at)
                case 1: mutated.insert(insertable[Int(rng.next() % UInt64(insertable.count))], at: at)
                default: mutated[at] = UInt8(truncatingIfNeeded: rng.next())
                }
            }
            _ = try? ClusterConfig.parse(String(decoding: mutated, as: UTF8.self), path: "fuzz.yml")
        }
    }

    // MARK: - The model

    @Test("The repository's default cluster.yml loads with the documented values")
    func defaultClusterYAML() throws {
        let path = Self.repositoryRoot.appendingPathComponent("cluster.yml").path
        let config = try ClusterConfig.load(path: path)
        let dir = Self.repositoryRoot.standardizedFileURL.path
        #expect(config.sourcePath.hasSuffix("/cluster.yml"))
        #expect(config.cluster.name == "local")
        #expect(config.cluster.secret.count >= 32)
        #expect(config.coordinator.listen == SocketAddress(host: "127.0.0.1", port: 7601))
        #expect(config.coordinator.adminListen == SocketAddress(host: "127.0.0.1", port: 7680))
        #expect(config.coordinator.dataDir == dir + "/var/coordinator")
        #expect(config.coordinator.leaseTime == 300)
        #expect(config.smtp.listen == [SocketAddress(host: "127.0.0.1", port: 2525)])
        #expect(config.smtp.hostname == "relay.hato.test")
        #expect(config.smtp.mayRelay("127.0.0.1") && !config.smtp.mayRelay("10.0.0.1"))
        #expect(config.smtp.maxMessageSize == 25 * 1024 * 1024)
        #expect(config.nodes.map(\.id) == ["node-a", "node-b"])
        #expect(config.nodes.map(\.dataDir) == [dir + "/var/node-a", dir + "/var/node-b"])
        #expect(config.pools.map(\.name) == ["transactional"])
        #expect(config.ips.map(\.address) == ["127.0.0.10", "127.0.0.11", "127.0.0.12", "127.0.0.13"])
        #expect(config.ips.map(\.helo) == ["mta10.hato.test", "mta11.hato.test", "mta12.hato.test", "mta13.hato.test"])
        #expect(config.sendingIPs(inPool: "transactional", onNode: "node-a").map(\.address) == ["127.0.0.10", "127.0.0.11"])
        #expect(config.sendingIPs(inPool: "transactional", onNode: "node-b").map(\.address) == ["127.0.0.12", "127.0.0.13"])
        #expect(config.routing.defaultPool == "transactional")
        #expect(config.route(for: "hato.test")?.nextHop == NextHop(host: "127.0.0.1", port: 2526, isIPLiteral: true))
        #expect(config.retry.schedule == [60, 300, 900, 3600, 14_400])
        #expect(config.retry.maxAge == 5 * 86_400)
        #expect(config.delivery == DeliverySettings())
    }

    @Test("Optional sections and keys take their documented defaults")
    func defaults() throws {
        let config = try Self.parse(Self.base)
        #expect(config.coordinator.leaseTime == 300)
        #expect(config.coordinator.nodeTimeout == 10)
        #expect(config.coordinator.heartbeatInterval == 2)
        #expect(config.smtp.maxMessageSize == 26_214_400)
        #expect(config.smtp.maxRecipients == 1000)
        #expect(config.smtp.relayNetworks.map(\.description) == ["127.0.0.0/8", "::1/128"])
        #expect(config.ips[1].nodes.isEmpty)
        #expect(config.ips[1].isAllowed(onNode: "node-b"))
        #expect(!config.ips[0].isAllowed(onNode: "node-b"))
        #expect(config.routes.isEmpty)
        #expect(config.dns == DNSSettings(nameservers: [], timeout: 5))
        #expect(config.retry == RetrySettings(schedule: [60, 300, 900, 3600, 14_400], maxAge: 432_000))
        #expect(config.delivery == DeliverySettings(connectionsPerIP: 8, port: 25, connectTimeout: 30, commandTimeout: 300, dataTimeout: 600))
        #expect(config.node(id: "node-b")?.id == "node-b")
        #expect(config.node(id: "node-c") == nil)
        #expect(config.pool(named: "transactional") != nil)
        #expect(config.pool(named: "bulk") == nil)
    }

    @Test("Explicit optional sections are parsed: dns nameservers, delivery, routes, IPv6")
    func explicitSections() throws {
        let text = Self.base + """
            dns: { nameservers: ["127.0.0.1:5353", 192.0.2.53, "[2001:DB8::53]"], timeout: 1500ms }
            delivery: { connections_per_ip: 2, port: 2526, connect_timeout: 1s, command_timeout: 2s, data_timeout: 3s }
            routes:
              - { domain: Example.COM., next_hop: "mx.example.net" }
              - { domain: "*.example.com", next_hop: "[::1]:2526" }
            retry: { schedule: [30s], max_age: 1h }

            """
        let config = try Self.parse(text)
        #expect(config.dns.nameservers == [SocketAddress(host: "127.0.0.1", port: 5353), SocketAddress(host: "192.0.2.53", port: 53),
                                           SocketAddress(host: "2001:db8::53", port: 53)])
        #expect(config.dns.timeout == 1.5)
        #expect(config.delivery == DeliverySettings(connectionsPerIP: 2, port: 2526, connectTimeout: 1, commandTimeout: 2, dataTimeout: 3))
        #expect(config.routes[0].domain.pattern == "example.com")
        #expect(config.routes[0].nextHop == NextHop(host: "mx.example.net", port: 25, isIPLiteral: false))
        #expect(config.routes[1].nextHop == NextHop(host: "::1", port: 2526, isIPLiteral: true))
        #expect(config.retry.schedule == [30])
        #expect(config.retry.delay(afterAttempt: 7) == 30)
    }

    @Test("Relative data_dir paths resolve against the config file's directory")
    func relativePaths() throws {
        let text = Self.base(replacingLine: 16, with: "    data_dir: /srv/hato/../hato/node-b/")
        let config = try Self.parse(text, path: "/etc/hato/cluster.yml")
        #expect(config.sourcePath == "/etc/hato/cluster.yml")
        #expect(config.coordinator.dataDir == "/etc/hato/var/coordinator")
        #expect(config.nodes[0].dataDir == "/etc/hato/var/node-a")
        #expect(config.nodes[1].dataDir == "/srv/hato/node-b")
        let relative = try Self.parse(Self.base, path: "conf/c.yml")
        #expect(relative.nodes[0].dataDir == FileManager.default.currentDirectoryPath + "/conf/var/node-a")
    }

    @Test("secret_file is read relative to the config file, trailing newline trimmed")
    func secretFile() throws {
        try Self.withTemporaryDirectory { dir in
            try "s3cr3t-from-a-file-0123456789\n".write(toFile: dir + "/secret", atomically: true, encoding: .utf8)
            let text = Self.base(replacingLine: 3, with: "  secret_file: secret")
            let config = try Self.parse(text, path: dir + "/cluster.yml")
            #expect(config.cluster.secret == "s3cr3t-from-a-file-0123456789")

            try "short\n".write(toFile: dir + "/short", atomically: true, encoding: .utf8)
            let short = Self.configError(Self.base(replacingLine: 3, with: "  secret_file: short"), path: dir + "/cluster.yml")
            #expect(short?.line == 3)
            #expect(short?.key == "cluster.secret_file")
            #expect(short?.message == "the secret must be at least 16 characters (found 5)")

            let missing = Self.configError(Self.base(replacingLine: 3, with: "  secret_file: nope"), path: dir + "/cluster.yml")
            #expect(missing?.line == 3)
            #expect(missing?.message == "cannot read \(dir)/nope: No such file or directory")
        }
    }

    @Test("coordinator.message_retention: 30 days by default, a duration of at least 1d and of http_api.idempotency_ttl, else file, line and key")
    func messageRetention() throws {
        #expect(try Self.parse(Self.base).coordinator.messageRetention == 30 * 86_400)
        let set = try Self.parse(Self.base(replacingLine: 8, with: "  data_dir: var/coordinator\n  message_retention: 36h"))
        #expect(set.coordinator.messageRetention == 36 * 3600)
        let short = Self.configError(Self.base(replacingLine: 8, with: "  data_dir: var/coordinator\n  message_retention: 20h"))
        #expect(short?.description.hasPrefix("test.yml:9: coordinator.message_retention: must be at least 1d") == true, "\(String(describing: short))")
        let bad = Self.configError(Self.base(replacingLine: 8, with: "  data_dir: var/coordinator\n  message_retention: forever"))
        #expect(bad?.line == 9 && bad?.key == "coordinator.message_retention")
    }

    @Test("Exactly one of secret and secret_file; inline secrets need 16 characters")
    func secretRules() {
        let both = Self.configError(Self.base(replacingLine: 3, with: "  secret: \"0123456789abcdef0123\"\n  secret_file: s"))
        #expect(both?.line == 4)
        #expect(both?.key == "cluster.secret_file")
        let neither = Self.configError(Self.base(replacingLine: 3, with: ""))
        #expect(neither?.line == 1)
        #expect(neither?.key == "cluster.secret")
        let short = Self.configError(Self.base(replacingLine: 3, with: "  secret: tooshort"))
        #expect(short?.description == "test.yml:3: cluster.secret: the secret must be at least 16 characters (found 8)")
    }

    // MARK: - Validation errors: file, line, key

    @Test("A missing required key is reported at its parent key's line")
    func missingRequiredKey() {
        let coordinator = Self.configError(Self.base(replacingLine: 8, with: ""))
        #expect(coordinator?.line == 4)
        #expect(coordinator?.key == "coordinator.data_dir")
        #expect(coordinator?.message == "required key is missing")
        let ip = Self.configError(Self.base(replacingLine: 25, with: ""))
        #expect(ip?.line == 24)
        #expect(ip?.key == "ips[1].helo")
        let section = Self.configError(Self.base(replacingLine: 27, with: "").replacingOccurrences(of: "  default_pool: transactional\n", with: ""))
        #expect(section?.line == nil)
        #expect(section?.description == "test.yml: routing: required key is missing")
        let empty = Self.configError(Self.base(replacingLine: 11, with: "  hostname:"))
        #expect(empty?.line == 11)
        #expect(empty?.message == "missing value")
    }

    @Test("Unknown keys are rejected with the allowed keys listed")
    func unknownKeys() {
        let e = Self.configError(Self.base(replacingLine: 14, with: "    data_dri: var/node-a"))
        #expect(e?.line == 14)
        #expect(e?.key == "nodes[0].data_dri")
        #expect(e?.message == "unknown key (allowed: id, data_dir, metrics_listen, tls)")
        let top = Self.configError(Self.base + "smpt: {}\n")
        #expect(top?.line == 29)
        #expect(top?.key == "smpt")
    }

    @Test("Wrong value types name what was expected and what was found")
    func wrongTypes() {
        let mapForScalar = Self.configError(Self.base(replacingLine: 11, with: "  hostname: { a: b }"))
        #expect(mapForScalar?.line == 11)
        #expect(mapForScalar?.key == "smtp.hostname")
        #expect(mapForScalar?.message == "expected a single value, found a map")
        let scalarForList = Self.configError(Self.base.replacingOccurrences(of: "pools:\n  - name: transactional\n", with: "pools: transactional\n"))
        #expect(scalarForList?.line == 17)
        #expect(scalarForList?.message == "expected a list, found a scalar (\"transactional\")")
        let scalarForMap = Self.configError(Self.base.replacingOccurrences(of: "routing:\n  default_pool: transactional\n", with: "routing: transactional\n"))
        #expect(scalarForMap?.key == "routing")
        #expect(scalarForMap?.message.hasPrefix("expected a map") == true)
    }

    @Test("Bad addresses and networks are reported at the value's line")
    func badAddresses() {
        let ip = Self.configError(Self.base(replacingLine: 24, with: "  - address: 127.0.0.300"))
        #expect(ip?.line == 24)
        #expect(ip?.key == "ips[1].address")
        #expect(ip?.message == "\"127.0.0.300\" is not a numeric IPv4 or IPv6 address")
        let listen = Self.configError(Self.base(replacingLine: 5, with: "  listen: localhost:7601"))
        #expect(listen?.line == 5)
        #expect(listen?.key == "coordinator.listen")
        let smtpListen = Self.configError(Self.base(replacingLine: 10, with: "  listen: [127.0.0.1:2525, 127.0.0.1]"))
        #expect(smtpListen?.key == "smtp.listen[1]")
        #expect(smtpListen?.message.contains("missing port") == true)
        let cidr = Self.configError(Self.base(replacingLine: 11, with: "  hostname: relay.hato.test\n  relay_networks: [10.0.0.0/8, 127.0.0.1/8]"))
        #expect(cidr?.line == 12)
        #expect(cidr?.key == "smtp.relay_networks[1]")
        #expect(cidr?.message.contains("did you mean 127.0.0.0/8?") == true)
        let helo = Self.configError(Self.base(replacingLine: 21, with: "    helo: -bad-.test"))
        #expect(helo?.key == "ips[0].helo")
    }

    @Test("Duplicate IPs, node ids, pool names and data dirs are rejected at the second occurrence")
    func duplicates() {
        let ip = Self.configError(Self.base(replacingLine: 24, with: "  - address: 127.0.0.10"))
        #expect(ip?.description == "test.yml:24: ips[1].address: duplicate sending IP 127.0.0.10 (first on line 20)")
        let node = Self.configError(Self.base(replacingLine: 15, with: "  - id: node-a"))
        #expect(node?.line == 15)
        #expect(node?.key == "nodes[1].id")
        #expect(node?.message == "duplicate node id \"node-a\" (first on line 13)")
        let pool = Self.configError(Self.base(replacingLine: 18, with: "  - name: transactional\n  - name: transactional"))
        #expect(pool?.line == 19)
        #expect(pool?.key == "pools[1].name")
        let dir = Self.configError(Self.base(replacingLine: 16, with: "    data_dir: ./var/node-a"))
        #expect(dir?.line == 16)
        #expect(dir?.key == "nodes[1].data_dir")
    }

    @Test("References to unknown pools and nodes name the known ones")
    func unknownReferences() {
        let pool = Self.configError(Self.base(replacingLine: 26, with: "    pool: bulk"))
        #expect(pool?.description == #"test.yml:26: ips[1].pool: unknown pool "bulk" (known: transactional)"#)
        let node = Self.configError(Self.base(replacingLine: 23, with: "    nodes: [node-a, node-c]"))
        #expect(node?.line == 23)
        #expect(node?.key == "ips[0].nodes[1]")
        #expect(node?.message == #"unknown node "node-c" (known: node-a, node-b)"#)
        let defaultPool = Self.configError(Self.base(replacingLine: 28, with: "  default_pool: bulk"))
        #expect(defaultPool?.line == 28)
        #expect(defaultPool?.key == "routing.default_pool")
    }

    @Test("Warm-up start: a UTC calendar day read without locale or time zone; malformed and impossible dates are refused")
    func warmupStart() throws {
        func yaml(_ start: String) -> String {
            Self.base(replacingLine: 23, with: "    nodes: [node-a]\n    warmup: { plan: p, start: \(start) }") + "warmup:\n  - { name: p, daily: [10, 20] }\n"
        }
        let config = try Self.parse(yaml("2027-01-01"))
        #expect(config.ips[0].warmup?.start == 1_798_761_600)
        #expect(config.warmupCap(for: "127.0.0.10", now: Date(timeIntervalSince1970: 1_798_761_600 - 1))?.cap == 0)
        #expect(config.warmupCap(for: "127.0.0.10", now: Date(timeIntervalSince1970: 1_798_761_600))! == (1, 10))
        #expect(config.warmupCap(for: "127.0.0.10", now: Date(timeIntervalSince1970: 1_798_761_600 + 86_399))! == (1, 10))
        #expect(config.warmupCap(for: "127.0.0.10", now: Date(timeIntervalSince1970: 1_798_761_600 + 86_400))! == (2, 20))
        #expect(config.warmupCap(for: "127.0.0.10", now: Date(timeIntervalSince1970: 1_798_761_600 + 2 * 86_400)) == nil, "warmed")
        #expect(try Self.parse(yaml("2028-02-29")).ips[0].warmup?.start == 1_835_395_200)
        for bad in ["2027-02-29", "2027-1-5", "2027-13-01", "27-01-01", "2027-01-01T00:00:00Z", "01/05/2027"] {
            let error = Self.configError(yaml(bad))
            #expect(error?.key == "ips[0].warmup.start", "\(bad)")
            #expect(error?.message.contains("expected a date like 2026-12-01") == true, "\(bad)")
        }
    }

    @Test("Empty required lists and out-of-range limits are rejected")
    func limits() {
        let nodes = Self.configError(Self.base.replacingOccurrences(
            of: "nodes:\n  - id: node-a\n    data_dir: var/node-a\n  - id: node-b\n    data_dir: var/node-b\n", with: "nodes: []\n"))
        #expect(nodes?.line == 12)
        #expect(nodes?.message == "must list at least one node")
        let listen = Self.configError(Self.base(replacingLine: 10, with: "  listen: []"))
        #expect(listen?.key == "smtp.listen")
        let recipients = Self.configError(Self.base(replacingLine: 11, with: "  hostname: relay.hato.test\n  max_recipients: 0"))
        #expect(recipients?.line == 12)
        #expect(recipients?.key == "smtp.max_recipients")
        let small = Self.configError(Self.base(replacingLine: 11, with: "  hostname: relay.hato.test\n  max_message_size: 1000B"))
        #expect(small?.message == "1000B is out of range (1KiB…1GiB)")
        let large = Self.configError(Self.base(replacingLine: 11, with: "  hostname: relay.hato.test\n  max_message_size: 2GiB"))
        #expect(large?.key == "smtp.max_message_size")
        let schedule = Self.configError(Self.base + "retry:\n  schedule: []\n")
        #expect(schedule?.line == 30)
        #expect(schedule?.key == "retry.schedule")
        let heartbeat = Self.configError(Self.base(replacingLine: 8, with: "  data_dir: var/coordinator\n  node_timeout: 2s"))
        #expect(heartbeat?.line == 9)
        #expect(heartbeat?.key == "coordinator.node_timeout")
    }

    @Test("YAML syntax errors surface as ConfigError with file and line; missing files say so")
    func syntaxAndIOErrors() {
        let tab = Self.configError(Self.base(replacingLine: 11, with: "\thostname: relay.hato.test"), path: "cluster.yml")
        #expect(tab?.file == "cluster.yml")
        #expect(tab?.line == 11)
        #expect(tab?.key == nil)
        #expect(tab?.description.hasPrefix("cluster.yml:11: tab character") == true)
        do {
            _ = try ClusterConfig.load(path: "/nonexistent-hato-dir/cluster.yml")
            Issue.record("expected an error")
        } catch let e as ConfigError {
            #expect(e.description == "/nonexistent-hato-dir/cluster.yml: cannot read: No such file or directory")
        } catch {
            Issue.record("unexpected \(error)")
        }
        let top = Self.configError("- a\n- b\n")
        #expect(top?.line == 1)
    }

    // MARK: - Value parsers

    @Test("Durations: units ms, s, m, h, d; negatives, zero, bad units and overflow rejected")
    func durations() throws {
        #expect(try ConfigValue.duration("90s") == 90)
        #expect(try ConfigValue.duration("250ms") == 0.25)
        #expect(try ConfigValue.duration("5m") == 300)
        #expect(try ConfigValue.duration("1.5h") == 5400)
        #expect(try ConfigValue.duration("5d") == 432_000)
        #expect(try ConfigValue.duration("0s", allowZero: true) == 0)
        for bad in ["", "90", "-5s", "0s", "5x", "5 parsecs", "1..5s", ".5s", "s", "5S", "99999999999999999d", "4000d"] {
            #expect(throws: ConfigValueError.self, "\(bad)") { try ConfigValue.duration(bad) }
        }
        #expect(throws: ConfigValueError("invalid duration \"90\": missing unit (ms, s, m, h or d), e.g. \"90s\"")) {
            try ConfigValue.duration("90")
        }
    }

    @Test("Sizes: B, KB/KiB, MB/MiB, GB/GiB and plain bytes; negatives, fractions and overflow rejected")
    func sizes() throws {
        #expect(try ConfigValue.size("25MiB") == 26_214_400)
        #expect(try ConfigValue.size("25MB") == 25_000_000)
        #expect(try ConfigValue.size("1KiB") == 1024)
        #expect(try ConfigValue.size("1kb") == 1000)
        #expect(try ConfigValue.size("2 GiB") == 2_147_483_648)
        #expect(try ConfigValue.size("512") == 512)
        #expect(try ConfigValue.size("7B") == 7)
        for bad in ["", "-1KiB", "1.5MiB", "10TB", "MiB", "99999999999999999999", "9223372036854775807GiB"] {
            #expect(throws: ConfigValueError.self, "\(bad)") { try ConfigValue.size(bad) }
        }
    }

    @Test("host:port parsing: IPv4, bracketed IPv6, DNS names, default ports")
    func hostPorts() throws {
        #expect(try ConfigValue.hostPort("127.0.0.1:7601", defaultPort: nil) == NextHop(host: "127.0.0.1", port: 7601, isIPLiteral: true))
        #expect(try ConfigValue.hostPort("[2001:DB8::1]:25", defaultPort: nil) == NextHop(host: "2001:db8::1", port: 25, isIPLiteral: true))
        #expect(try ConfigValue.hostPort("[::1]", defaultPort: 25) == NextHop(host: "::1", port: 25, isIPLiteral: true))
        #expect(try ConfigValue.hostPort("MX.Example.com.", defaultPort: 25) == NextHop(host: "mx.example.com", port: 25, isIPLiteral: false))
        #expect(try ConfigValue.socketAddress("127.0.0.1:0", defaultPort: nil, allowZeroPort: true).port == 0)
        for bad in ["127.0.0.1", "::1:25", "[::1", "[127.0.0.1]:25", "host:0", "host:65536", "host:-1", "host:2x",
                    "bad_host:25", "1.2.3.999:25", "a b:25", ":25", "[::1]x"] {
            #expect(throws: ConfigValueError.self, "\(bad)") { try ConfigValue.hostPort(bad, defaultPort: bad == "127.0.0.1" ? nil : 25) }
        }
        #expect(throws: ConfigValueError.self) { try ConfigValue.socketAddress("example.com:25", defaultPort: nil) }
        #expect(throws: ConfigValueError.self) { try ConfigValue.ipAddress("127.0.0.1\u{0}junk") }
        #expect(try ConfigValue.ipAddress("2001:0DB8:0:0::0001") == "2001:db8::1")
    }

    @Test("CIDR networks: IPv4, IPv6, bare addresses, mapped addresses; bad prefixes rejected")
    func networks() throws {
        let loopback = try IPNetwork(parsing: "127.0.0.0/8")
        #expect(loopback.contains("127.1.2.3"))
        #expect(!loopback.contains("128.0.0.1"))
        #expect(loopback.contains("::ffff:127.0.0.1"))
        #expect(!loopback.contains("not an ip"))
        let v6 = try IPNetwork(parsing: "2001:db8::/32")
        #expect(v6.contains("2001:db8:ffff::1") && !v6.contains("2001:db9::1") && !v6.contains("127.0.0.1"))
        #expect(try IPNetwork(parsing: "::1").prefixLength == 128)
        #expect(try IPNetwork(parsing: "10.1.2.3").contains("10.1.2.3"))
        #expect(!(try IPNetwork(parsing: "10.1.2.3")).contains("10.1.2.4"))
        #expect(try IPNetwork(parsing: "0.0.0.0/0").contains("203.0.113.9"))
        #expect(try IPNetwork(parsing: "10.0.0.0/9").contains("10.127.255.255"))
        #expect(!(try IPNetwork(parsing: "10.0.0.0/9")).contains("10.128.0.0"))
        for bad in ["10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/8/8", "10.0.0/8", "10.0.0.1/8", "host/8", "10.0.0.0/-1"] {
            #expect(throws: ConfigValueError.self, "\(bad)") { try IPNetwork(parsing: bad) }
        }
    }

    @Test("Routes: exact domains beat wildcards, the longest wildcard wins, matching ignores case and a trailing dot")
    func routeMatching() throws {
        let text = Self.base + """
            routes:
              - { domain: "*.example", next_hop: "10.0.0.1" }
              - { domain: "*.mail.example", next_hop: "10.0.0.2" }
              - { domain: mail.example, next_hop: "10.0.0.3" }
              - { domain: other.test, next_hop: "10.0.0.4:2525" }

            """
        let config = try Self.parse(text)
        #expect(config.route(for: "a.example")?.nextHop.host == "10.0.0.1")
        #expect(config.route(for: "x.y.mail.example")?.nextHop.host == "10.0.0.2")
        #expect(config.route(for: "MAIL.Example.")?.nextHop.host == "10.0.0.3")
        #expect(config.route(for: "other.test")?.nextHop.port == 2525)
        #expect(config.route(for: "example") == nil)
        #expect(config.route(for: "notexample") == nil)
        #expect(config.route(for: "sub.other.test") == nil)
        let wildcard = try DomainPattern(parsing: "*.Example.")
        #expect(wildcard.pattern == "*.example" && wildcard.isWildcard)
        #expect(wildcard.matches("a.b.EXAMPLE") && !wildcard.matches("example") && !wildcard.matches("badexample"))
        #expect(throws: ConfigValueError.self) { try DomainPattern(parsing: "a.*.example") }
        let duplicate = Self.configError(Self.base + "routes:\n  - { domain: a.test, next_hop: x.test }\n  - { domain: A.test., next_hop: y.test }\n")
        #expect(duplicate?.line == 31)
        #expect(duplicate?.key == "routes[1].domain")
    }

    @Test("Retry delay follows the schedule, then repeats the last interval")
    func retryDelay() {
        let retry = RetrySettings()
        #expect(retry.delay(afterAttempt: 1) == 60)
        #expect(retry.delay(afterAttempt: 2) == 300)
        #expect(retry.delay(afterAttempt: 5) == 14_400)
        #expect(retry.delay(afterAttempt: 6) == 14_400)
        #expect(retry.delay(afterAttempt: 1_000) == 14_400)
        #expect(retry.delay(afterAttempt: 0) == 60)
        #expect(RetrySettings(schedule: [], maxAge: 1).delay(afterAttempt: 3) == 60)
    }
}
