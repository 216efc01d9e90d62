import Foundation
import Testing
@testable import HatoDKIM
@testable import HatoNode

/// DKIM signing on the node, verified by dkimpy on the bytes captured at the test MX; and the
/// 8-bit → 7-bit MIME conversion checked with Python's `email` package (filter: `DeliveryDKIMTests`).
@Suite("DeliveryDKIMTests", .serialized)
struct DeliveryDKIMTests {}

/// Runs `hato-node dkim-keygen`'s logic and returns the TXT value from its output line.
private func keygen(_ dir: String, _ name: String, domain: String, selector: String, algorithm: String) throws -> String {
    let line = try DKIMKeygen.run(options: ["domain": domain, "selector": selector, "out": "\(dir)/\(name)", "algorithm": algorithm])
    #expect(line.hasPrefix("\(selector)._domainkey.\(domain). IN TXT ( \"v=DKIM1; k=\(algorithm == "rsa-sha256" ? "rsa" : "ed25519"); p="))
    // Join the quoted strings of the zone-file line.
    let quoted = line.split(separator: "\"", omittingEmptySubsequences: false).enumerated().filter { $0.offset % 2 == 1 }.map { String($0.element) }
    return quoted.joined()
}

private let multipart8Bit = """
    From: Shop <news@example.org>\r
    To: u1@plain.test\r
    Subject: receipt\r
    MIME-Version: 1.0\r
    Content-Type: multipart/alternative; boundary="b1"\r
    \r
    This is a MIME message.\r
    --b1\r
    Content-Type: text/plain; charset=utf-8\r
    Content-Transfer-Encoding: 8bit\r
    \r
    Total: 12,50 \u{20AC} \u{2014} merci, Zo\u{EB}!\r
    --b1\r
    Content-Type: text/html; charset=utf-8\r
    \r
    <p>Total: 12,50 &euro; \u{2014} merci, Zo\u{EB}!</p>\r
    --b1\r
    Content-Type: application/octet-stream\r
    Content-Transfer-Encoding: binary\r
    \r
    \u{FF}\u{FE} binary-ish \u{E9}\r
    --b1--\r
    epilogue\r

    """

extension DeliveryDKIMTests {
    @Test("signatures from both algorithms and all canonicalizations verify with dkimpy on the captured bytes")
    func signedDeliveries() throws {
        let dir = try temporaryDirectory("hato-dkimdel")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var records: [String: String] = [:]
        records["rsa2026._domainkey.example.org"] = try keygen(dir, "rsa.pem", domain: "example.org", selector: "rsa2026", algorithm: "rsa-sha256")
        records["ed2026._domainkey.example.org"] = try keygen(dir, "ed.pem", domain: "example.org", selector: "ed2026", algorithm: "ed25519-sha256")
        records["s._domainkey.simple.test"] = try keygen(dir, "rsa2.pem", domain: "simple.test", selector: "s", algorithm: "rsa-sha256")
        records["e._domainkey.mixed.test"] = try keygen(dir, "ed2.pem", domain: "mixed.test", selector: "e", algorithm: "ed25519-sha256")
        // The key file is private.
        let attributes = try FileManager.default.attributesOfItem(atPath: dir + "/rsa.pem")
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
        #expect(throws: DKIMKeygen.UsageError.self) { try DKIMKeygen.run(options: ["domain": "example.org", "selector": "x", "out": dir + "/rsa.pem"]) }

        let full = try ScriptedMX()
        defer { full.stop() }
        let seven = try ScriptedMX(ScriptedMX.Script(ehlo: { _ in ScriptedMX.ehlo(["PIPELINING", "SIZE 1000000", "SMTPUTF8"]) }))
        defer { seven.stop() }
        let chunking = try ScriptedMX(ScriptedMX.Script(ehlo: { _ in ScriptedMX.ehlo(["PIPELINING", "CHUNKING", "8BITMIME"]) }))
        defer { chunking.stop() }
        let config = try engineConfig(dns: nil, port: 25, dir: dir, extra: """
            routes:
              - { domain: dest.test, next_hop: "127.0.0.1:\(full.port)" }
              - { domain: plain.test, next_hop: "127.0.0.1:\(seven.port)" }
              - { domain: chunk.test, next_hop: "127.0.0.1:\(chunking.port)" }
            dkim:
              - { domain: example.org, selector: rsa2026, private_key: rsa.pem }
              - { domain: example.org, selector: ed2026, private_key: ed.pem, algorithm: ed25519-sha256 }
              - { domain: simple.test, selector: s, private_key: rsa2.pem, canonicalization: simple/simple }
              - { domain: mixed.test, selector: e, private_key: ed2.pem, algorithm: ed25519-sha256, canonicalization: relaxed/simple, headers: [from, to, subject, content-type] }
            """)
        let engine = try DeliveryEngine(config: config, tlsClient: .some(nil))
        defer { engine.shutdown() }
        let cases: [(name: String, domain: String, message: String, signatures: Int)] = [
            ("plain", "dest.test", "From: Shop <news@example.org>\r\nTo: u1@dest.test\r\nSubject: Hello\r\nDate: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <p1@example.org>\r\n\r\nHello.\r\n", 2),
            ("empty body", "dest.test", "From: news@example.org\r\nTo: u1@dest.test\r\nSubject: empty\r\n\r\n", 2),
            ("folded and repeated headers", "dest.test", "From: \"A long display name\"\r\n <news@example.org>\r\nTo: u1@dest.test,\r\n\tu2@dest.test\r\nTo: u3@dest.test\r\nSubject:  spaced\t out \r\n   and folded\r\nReceived: from a\r\nReceived: from b\r\n\r\nbody  with   spaces \t\r\n", 2),
            ("whitespace-only trailing lines, simple/simple", "dest.test", "From: ops@simple.test\r\nTo: u1@dest.test\r\nSubject: ws\r\n\r\ntext\r\n \t\r\n\r\n  \r\n\r\n", 1),
            ("empty body, simple/simple", "dest.test", "From: ops@simple.test\r\nTo: u1@dest.test\r\nSubject: nothing\r\n\r\n", 1),
            ("relaxed/simple with bare LF line ends", "dest.test", "From: a@mixed.test\nTo: u1@dest.test\nSubject: lf\n\nline one\nline two  \n", 1),
            ("8-bit to a server without 8BITMIME", "plain.test", "From: news@example.org\r\nTo: u1@plain.test\r\nSubject: menu\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nCaf\u{E9} cr\u{E8}me\r\n", 2),
            ("8-bit multipart to a server without 8BITMIME", "plain.test", multipart8Bit, 2),
            ("BDAT", "chunk.test", "From: news@example.org\r\nTo: u1@chunk.test\r\nSubject: chunked\r\n\r\n.dot first\r\n", 2),
            ("unsigned domain", "dest.test", "From: someone@unsigned.test\r\nTo: u1@dest.test\r\nSubject: none\r\n\r\nx\r\n", 0),
        ]
        let deadline = Date().addingTimeInterval(30)
        for c in cases {
            let result = engine.deliver(lease: lease(c.domain, body: Array(c.message.utf8)), body: Array(c.message.utf8), deadline: deadline)
            #expect(result.results.map(\.status) == [.delivered], "\(c.name)")
            #expect((result.results.first?.dkim ?? []).count == c.signatures, "\(c.name)")
        }
        full.stop(); seven.stop(); chunking.stop()
        let captured = full.messages + seven.messages + chunking.messages
        #expect(captured.count == cases.count)
        #expect(chunking.messages.first?.viaBDAT == true)
        #expect(seven.messages.allSatisfy { $0.content.allSatisfy { $0 < 0x80 } })
        let verdicts = try dkimpyVerify(captured.map(\.content), records: records)
        #expect(verdicts.count == captured.count)
        var checked = 0
        for (message, v) in zip(captured, verdicts) {
            let subject = ParsedMessage(message.content).lastValue("subject") ?? "?"
            #expect(v.allSatisfy { $0 }, "\(subject): \(v)")
            checked += v.count
        }
        #expect(checked == cases.map(\.signatures).reduce(0, +))
        print("DKIM: \(checked) signatures on \(captured.count) captured messages verified by dkimpy: \(verdicts)")

        // The converted multipart decodes to the same parts as the original (Python's email package).
        let converted = try #require(seven.messages.first { String(decoding: $0.content, as: UTF8.self).contains("receipt") })
        try Data(Array(multipart8Bit.utf8)).write(to: URL(fileURLWithPath: dir + "/original.eml"))
        try Data(converted.content).write(to: URL(fileURLWithPath: dir + "/converted.eml"))
        try runPython("""
            import email, email.policy, sys
            def parts(path):
                m = email.message_from_binary_file(open(path, 'rb'), policy=email.policy.compat32)
                return [(p.get_content_type(), p.get_payload(decode=True)) for p in m.walk() if not p.is_multipart()]
            a, b = parts(sys.argv[1]), parts(sys.argv[2])
            assert len(a) == 3, a
            assert a == b, (a, b)
            m = email.message_from_binary_file(open(sys.argv[2], 'rb'))
            encodings = [p.get('Content-Transfer-Encoding') for p in m.walk() if not p.is_multipart()]
            assert encodings == ['quoted-printable', 'quoted-printable', 'base64'], encodings
            """, [dir + "/original.eml", dir + "/converted.eml"], dir: dir)
    }

    @Test("a key that does not match its configured algorithm, or an unreadable one, stops the engine at start")
    func badKeys() throws {
        let dir = try temporaryDirectory("hato-dkimbad")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = try keygen(dir, "ed.pem", domain: "example.org", selector: "e", algorithm: "ed25519-sha256")
        let mismatched = try engineConfig(dns: nil, port: 25, dir: dir, extra: "dkim: [ { domain: example.org, selector: e, private_key: ed.pem, algorithm: rsa-sha256 } ]")
        do { _ = try DeliveryEngine(config: mismatched, tlsClient: .some(nil)); Issue.record("accepted") } catch let e as DKIMKeyError {
            #expect(e.message.contains("the key is for ed25519-sha256"))
        }
        let missing = try engineConfig(dns: nil, port: 25, dir: dir, extra: "dkim: [ { domain: example.org, selector: e, private_key: none.pem } ]")
        #expect(throws: DKIMKeyError.self) { try DeliveryEngine(config: missing, tlsClient: .some(nil)) }
    }
}
