import Foundation
import Testing
@testable import HatoConfig

/// `dkim:`, `shaping:`, `delivery.tls/timeouts/idle_timeout/allow_loopback_mx` and `routes[].tls`.
extension ConfigTests {
    @Test("Outbound settings: DKIM keys, shaping with provider rules, TLS, per-step timeouts, idle timeout")
    func outboundSettings() throws {
        let text = Self.base + """
            routes:
              - { domain: partner.test, next_hop: "mx.partner.test", tls: required }
              - { domain: legacy.test, next_hop: "192.0.2.25", tls: disabled }
            delivery:
              tls: opportunistic
              command_timeout: 1m
              idle_timeout: 45s
              allow_loopback_mx: true
              mta_sts: { enabled: true, ca_file: certs/roots.pem, fetch_timeout: 4s, cache_size: 500, https_port: 8443 }
              dane: { enabled: true }
              timeouts: { connect: 10s, greeting: 2m, rcpt: 90s, data_done: 15m, rset: 5s }
            dkim:
              - { domain: Example.ORG, selector: s2026, private_key: keys/example.pem }
              - domain: example.org
                selector: ed-2026
                private_key: /etc/hato/ed.pem
                algorithm: ed25519-sha256
                canonicalization: simple/simple
                headers: [From, To, Subject]
              - { domain: other.test, selector: x, private_key: x.pem, canonicalization: relaxed }
            shaping:
              default: { max_connections: 4, messages_per_connection: 20, max_rate: "100/min" }
              providers:
                - { name: gmail, mx_suffixes: [google.com, googlemail.com], max_connections: 5, max_rate: 300/min }
                - { name: yahoo, mx_suffixes: yahoodns.net, messages_per_connection: 10, max_rate: unlimited }

            """
        let c = try Self.parse(text, path: "/etc/hato/cluster.yml")
        #expect(c.routes[0].tls == .required)
        #expect(c.routes[1].tls == .disabled)
        #expect(c.delivery.tls == .opportunistic)
        #expect(c.delivery.idleTimeout == 45)
        #expect(c.delivery.allowLoopbackMX)
        #expect(c.delivery.mtaSTS.enabled && c.delivery.daneEnabled)
        #expect(c.delivery.mtaSTS.caFile == "/etc/hato/certs/roots.pem", "relative to cluster.yml")
        #expect(c.delivery.mtaSTS.fetchTimeout == 4 && c.delivery.mtaSTS.cacheSize == 500 && c.delivery.mtaSTS.httpsPort == 8443)
        #expect(try Self.parse(Self.base, path: "/etc/hato/cluster.yml").delivery.mtaSTS == MTASTSSettings(), "off by default")
        let t = c.delivery.timeouts
        #expect(t.connect == 10)
        #expect(t.greeting == 120)
        #expect(t.ehlo == 60)   // from command_timeout
        #expect(t.mail == 60)
        #expect(t.rcpt == 90)
        #expect(t.dataInit == 120)
        #expect(t.dataDone == 900)
        #expect(t.rset == 5)
        #expect(c.dkim == [
            DKIMKeySettings(domain: "example.org", selector: "s2026", privateKeyPath: "/etc/hato/keys/example.pem"),
            DKIMKeySettings(domain: "example.org", selector: "ed-2026", privateKeyPath: "/etc/hato/ed.pem", algorithm: "ed25519-sha256",
                            headerCanonicalization: "simple", bodyCanonicalization: "simple", headers: ["from", "to", "subject"]),
            DKIMKeySettings(domain: "other.test", selector: "x", privateKeyPath: "/etc/hato/x.pem", headerCanonicalization: "relaxed", bodyCanonicalization: "simple"),
        ])
        #expect(c.shaping.defaults == ShapingLimits(maxConnections: 4, messagesPerConnection: 20, maxRate: MessageRate(count: 100, period: 60)))
        #expect(c.shaping.providers == [
            ShapingProvider(name: "gmail", mxSuffixes: ["google.com", "googlemail.com"],
                            limits: ShapingLimits(maxConnections: 5, messagesPerConnection: 20, maxRate: MessageRate(count: 300, period: 60))),
            ShapingProvider(name: "yahoo", mxSuffixes: ["yahoodns.net"], limits: ShapingLimits(maxConnections: 4, messagesPerConnection: 10, maxRate: nil)),
        ])
        #expect(c.shaping.group(forMXHost: "alt4.gmail-smtp-in.l.google.com").name == "gmail")
        #expect(c.shaping.group(forMXHost: "mta5.am0.yahoodns.net").limits.messagesPerConnection == 10)
    }

    @Test("Outbound defaults: no DKIM, opportunistic TLS, 30 s idle, loopback MX refused, RFC 5321 timeouts")
    func outboundDefaults() throws {
        let c = try Self.parse(Self.base)
        #expect(c.dkim.isEmpty)
        #expect(c.shaping == ShapingSettings(defaults: ShapingLimits(maxConnections: 10, messagesPerConnection: 100, maxRate: nil), providers: []))
        #expect(c.delivery.tls == .opportunistic)
        #expect(c.delivery.idleTimeout == 30)
        #expect(!c.delivery.allowLoopbackMX)
        #expect(c.delivery.timeouts == DeliveryTimeouts())
        #expect(c.delivery.timeouts.dataInit == 120 && c.delivery.timeouts.dataBlock == 180 && c.delivery.timeouts.dataDone == 600)
        #expect(c.routes.allSatisfy { $0.tls == nil })
        // The flat keys still work and feed the per-step timeouts.
        let flat = try Self.parse(Self.base + "delivery: { connect_timeout: 3s, command_timeout: 4s, data_timeout: 5s }\n")
        #expect(flat.delivery.timeouts == DeliveryTimeouts(connect: 3, greeting: 4, ehlo: 4, startTLS: 4, mail: 4, rcpt: 4, dataDone: 5))
    }

    @Test("Outbound settings are validated with file, line and key", arguments: [
        ("dkim: [ { domain: example.org, selector: s, private_key: k.pem, algorithm: rsa-sha1 } ]", "dkim[0].algorithm", "expected rsa-sha256 or ed25519-sha256"),
        ("dkim: [ { domain: example.org, selector: s, private_key: k.pem, canonicalization: relaxed/loose } ]", "dkim[0].canonicalization", "relaxed/relaxed"),
        ("dkim: [ { domain: example.org, selector: s, private_key: k.pem, headers: [to, subject] } ]", "dkim[0].headers", "must include from"),
        ("dkim: [ { domain: example.org, selector: \"bad selector\", private_key: k.pem } ]", "dkim[0].selector", "invalid selector"),
        ("dkim: [ { domain: example.org, private_key: k.pem } ]", "dkim[0].selector", "required key is missing"),
        ("dkim:\n  - { domain: example.org, selector: s, private_key: a.pem }\n  - { domain: EXAMPLE.org, selector: s, private_key: b.pem }", "dkim[1].selector", "duplicate DKIM key s._domainkey.example.org"),
        ("shaping: { default: { max_rate: 100/fortnight } }", "shaping.default.max_rate", "unknown unit"),
        ("shaping: { default: { max_connections: 0 } }", "shaping.default.max_connections", "out of range"),
        ("shaping: { default: { burst: 3 } }", "shaping.default.burst", "unknown key"),
        ("shaping: { providers: [ { name: gmail } ] }", "shaping.providers[0].mx_suffixes", "required key is missing"),
        ("shaping: { providers: [ { name: gmail, mx_suffixes: [] } ] }", "shaping.providers[0].mx_suffixes", "at least one"),
        ("shaping:\n  providers:\n    - { name: gmail, mx_suffixes: [google.com] }\n    - { name: gmail, mx_suffixes: [x.com] }", "shaping.providers[1].name", "duplicate provider"),
        ("delivery: { tls: maybe }", "delivery.tls", "expected disabled, opportunistic or required"),
        ("delivery: { idle_timeout: 10s, timeouts: { idle: 20s } }", "delivery.timeouts.idle", "set only one"),
        ("delivery: { timeouts: { data_done: 0s } }", "delivery.timeouts.data_done", "greater than zero"),
        ("delivery: { timeouts: { helo: 1s } }", "delivery.timeouts.helo", "unknown key"),
        ("delivery: { allow_loopback_mx: sometimes }", "delivery.allow_loopback_mx", "expected true or false"),
        ("delivery: { mta_sts: { enabled: yes-ish } }", "delivery.mta_sts.enabled", "expected true or false"),
        ("delivery: { mta_sts: { mode: enforce } }", "delivery.mta_sts.mode", "unknown key"),
        ("delivery: { mta_sts: { cache_size: 0 } }", "delivery.mta_sts.cache_size", "out of range"),
        ("delivery: { dane: { enabled: true, strict: true } }", "delivery.dane.strict", "unknown key"),
        ("routes: [ { domain: a.test, next_hop: x.test, tls: always } ]", "routes[0].tls", "expected disabled, opportunistic or required"),
    ])
    func outboundValidation(snippet: String, key: String, message: String) {
        let error = Self.configError(Self.base + snippet + "\n")
        #expect(error?.key == key, "\(snippet)")
        #expect(error?.message.contains(message) == true, "\(snippet): \(error?.message ?? "no error")")
        #expect(error?.line != nil)
    }
}

extension ConfigTests {
    @Test("hato-node check: an unreadable delivery.mta_sts.ca_file is an error; DANE without configured resolvers is a warning")
    func transportSecurityCheck() throws {
        let c = try Self.parse(Self.base + "delivery: { mta_sts: { enabled: true, ca_file: /nonexistent/roots.pem }, dane: { enabled: true } }\n",
                               path: "/etc/hato/cluster.yml")
        var r = ConfigCheckReport()
        ConfigCheck.checkTransportSecurity(c, into: &r)
        #expect(r.errors.map(\.key) == ["delivery.mta_sts.ca_file"])
        #expect(r.errors.first?.detail.contains("/nonexistent/roots.pem") == true, "\(r.errors)")
        #expect(r.warnings.map(\.key) == ["delivery.dane"])
        var off = ConfigCheckReport()
        ConfigCheck.checkTransportSecurity(try Self.parse(Self.base, path: "/etc/hato/cluster.yml"), into: &off)
        #expect(off.items.isEmpty)
    }
}
