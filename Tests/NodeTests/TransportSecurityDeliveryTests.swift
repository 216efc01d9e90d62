#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
@testable import ClusterProtocol
@testable import HatoConfig
@testable import HatoCrypto
@testable import HatoDNS
@testable import HatoHTTP
@testable import HatoIO
@testable import HatoNode
import HatoSupport

/// MTA-STS and DANE end to end through the node's `DeliveryEngine` with real sockets on
/// 127.0.0.0/8: an in-test DNS server (TXT, MX, A, TLSA with the AD bit), an HTTPS server with a
/// test CA serving the policies, and scripted MX servers with STARTTLS
/// (filter: `TransportSecurityDeliveryTests`).
@Suite("TransportSecurityDeliveryTests", .serialized)
struct TransportSecurityDeliveryTests {
    /// A test CA and its leaf certificates, made with the openssl CLI.
    struct CA {
        let dir: String
        let cert: String
        let key: String

        init(dir: String) throws {
            self.dir = dir
            cert = dir + "/ca.pem"; key = dir + "/ca.key"
            try CA.run(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key,
                        "-out", cert, "-days", "2", "-subj", "/CN=Hato MTA-STS test CA",
                        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"], dir: dir)
        }

        /// A leaf for `names` (DNS SANs), signed by this CA, or self-signed.
        func issue(_ leaf: String, names: [String], selfSigned: Bool = false) throws -> (cert: String, key: String) {
            let c = dir + "/\(leaf).pem", k = dir + "/\(leaf).key", csr = dir + "/\(leaf).csr", ext = dir + "/\(leaf).ext"
            try "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=\(names.map { "DNS:\($0)" }.joined(separator: ","))\n"
                .write(toFile: ext, atomically: true, encoding: .utf8)
            try CA.run(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", k, "-out", csr,
                        "-subj", "/CN=\(names[0])"], dir: dir)
            if selfSigned {
                try CA.run(["x509", "-req", "-in", csr, "-key", k, "-out", c, "-days", "2", "-extfile", ext], dir: dir)
            } else {
                try CA.run(["x509", "-req", "-in", csr, "-CA", cert, "-CAkey", key, "-CAcreateserial", "-out", c, "-days", "2",
                            "-extfile", ext], dir: dir)
            }
            return (c, k)
        }

        /// SHA-256 of the certificate's SubjectPublicKeyInfo (TLSA 3 1 1 data).
        func spkiSHA256(_ certPath: String) throws -> [UInt8] {
            let pub = certPath + ".pub.pem", der = certPath + ".pub.der"
            try CA.run(["x509", "-in", certPath, "-pubkey", "-noout", "-out", pub], dir: dir)
            try CA.run(["pkey", "-pubin", "-in", pub, "-outform", "DER", "-out", der], dir: dir)
            return Crypto.sha256(Array(try Data(contentsOf: URL(fileURLWithPath: der))))
        }

        static func run(_ args: [String], dir: String) throws {
            let p = try Spawned("/usr/bin/openssl", args, logPath: dir + "/openssl-\(Identifier.random(bytes: 3)).log")
            guard p.wait(timeout: 30) == 0 else { throw TestFailure("openssl \(args.first ?? "") failed: \(p.log)") }
        }
    }

    /// Scripted MX servers with STARTTLS on the given addresses, all on one port; `certs[i]` nil: no STARTTLS.
    static func tlsMXs(_ hosts: [String], certs: [(cert: String, key: String)?]) throws -> [ScriptedMX] {
        func script(_ pair: (cert: String, key: String)?) throws -> ScriptedMX.Script {
            guard let pair else { return ScriptedMX.Script() }
            return ScriptedMX.Script(ehlo: { _ in ScriptedMX.ehlo(["PIPELINING", "8BITMIME", "STARTTLS"]) },
                                     startTLS: "220 2.0.0 ready to start TLS\r\n",
                                     tls: try TLSContext.server(certificateChainPath: pair.cert, privateKeyPath: pair.key))
        }
        for _ in 0..<20 {
            let first = try ScriptedMX(try script(certs[0]), host: hosts[0])
            var all = [first]
            do {
                for (i, h) in hosts.enumerated().dropFirst() { all.append(try ScriptedMX(try script(certs[i]), host: h, port: first.port)) }
                return all
            } catch {
                for s in all { s.stop() }
            }
        }
        throw TestFailure("no common free port on \(hosts)")
    }

    @Test("MTA-STS enforce/testing and DANE match/mismatch: deferred with a clear reason and never sent in clear, or delivered over TLS; TLS-RPT entries")
    func endToEnd() throws {
        let dir = try temporaryDirectory("hato-mtasts")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ca = try CA(dir: dir)
        let policyHost = try ca.issue("policy", names: ["mta-sts.wrong.test", "mta-sts.good.test", "mta-sts.badcert.test", "mta-sts.testing.test",
                                                          "mta-sts.nofetch.test"])
        let goodMX = try ca.issue("mx-good", names: ["mx.good.test"])
        let wrongName = try ca.issue("mx-wrongname", names: ["elsewhere.test"])
        let daneCert = try ca.issue("mx-dane", names: ["mx.dane.test"], selfSigned: true)
        // DANE-TA: a leaf from the test CA, served with the CA in its chain; TLSA 2 0 1 names the CA.
        let taLeaf = try ca.issue("mx-ta", names: ["mx.danta.test"])
        let taChain = dir + "/mx-ta-chain.pem"
        try (String(contentsOfFile: taLeaf.cert, encoding: .utf8) + String(contentsOfFile: ca.cert, encoding: .utf8))
            .write(toFile: taChain, atomically: true, encoding: .utf8)
        try CA.run(["x509", "-in", ca.cert, "-outform", "DER", "-out", dir + "/ca.der"], dir: dir)
        let caDigest = Crypto.sha256(Array(try Data(contentsOf: URL(fileURLWithPath: dir + "/ca.der"))))

        // MX hosts: .81 wrong.test's real MX (outside its policy), .82 mx.good.test, .83 a certificate
        // for another name (badcert.test and testing.test), .84 DANE (self-signed, only TLSA vouches for it).
        let mxs = try Self.tlsMXs(["127.0.0.81", "127.0.0.82", "127.0.0.83", "127.0.0.84", "127.0.0.85"],
                                  certs: [goodMX, goodMX, wrongName, daneCert, (taChain, taLeaf.key)])
        defer { for m in mxs { m.stop() } }
        let (outsideMX, good, badName, dane, danta) = (mxs[0], mxs[1], mxs[2], mxs[3], mxs[4])

        // The HTTPS policy server (test CA), policies by Host.
        let policies: [String: String] = [
            "mta-sts.wrong.test": "version: STSv1\nmode: enforce\nmx: mx.wrong.test\nmax_age: 86400\n",
            "mta-sts.good.test": "version: STSv1\nmode: enforce\nmx: *.good.test\nmax_age: 86400\n",
            "mta-sts.badcert.test": "version: STSv1\nmode: enforce\nmx: mx.badcert.test\nmax_age: 86400\n",
            "mta-sts.testing.test": "version: STSv1\nmode: testing\nmx: mx.testing.test\nmax_age: 86400\n",
        ]
        let fetches = Locked<[String]>([])
        let https = try HTTPServer(address: SocketAddress(host: "127.0.0.80", port: 0),
                                   tls: try TLSContext.server(certificateChainPath: policyHost.cert, privateKeyPath: policyHost.key)) { request in
            let host = (request.headers["host"] ?? "").lowercased()
            fetches.withLock { $0.append("\(host)\(request.path)") }
            guard request.path == "/.well-known/mta-sts.txt", let body = policies[host] else {
                return HTTPResponse(status: 404, contentType: "text/plain", body: Array("no\n".utf8))
            }
            return HTTPResponse(status: 200, contentType: "text/plain", body: Array(body.utf8))
        }
        https.start()
        defer { https.stop() }

        let tlsaName = "_\(good.port)._tcp.mx.dane.test"
        let matching = try ca.spkiSHA256(daneCert.cert)
        typealias R = SecureTestDNS
        var records: [R.Record] = [
            R.mx("wrong.test", 10, "mx.other.test"), R.a("mx.other.test", "127.0.0.81"),
            R.txt("_mta-sts.wrong.test", "v=STSv1; id=w1"), R.a("mta-sts.wrong.test", "127.0.0.80"),
            R.mx("good.test", 10, "mx.good.test"), R.a("mx.good.test", "127.0.0.82"),
            R.txt("_mta-sts.good.test", "v=STSv1; id=g1"), R.a("mta-sts.good.test", "127.0.0.80"),
            R.mx("badcert.test", 10, "mx.badcert.test"), R.a("mx.badcert.test", "127.0.0.83"),
            R.txt("_mta-sts.badcert.test", "v=STSv1; id=b1"), R.a("mta-sts.badcert.test", "127.0.0.80"),
            R.mx("testing.test", 10, "mx.testing.test"), R.a("mx.testing.test", "127.0.0.83"),
            R.txt("_mta-sts.testing.test", "v=STSv1; id=t1"), R.a("mta-sts.testing.test", "127.0.0.80"),
            R.mx("dane.test", 10, "mx.dane.test"), R.a("mx.dane.test", "127.0.0.84"),
            // The same MX host for a domain without a policy (its opportunistic session must not be reused under the policy).
            R.mx("nopolicy.test", 10, "mx.good.test"),
            // A TXT record but no policy file (404): delivered without a policy, the fetch error counted.
            R.mx("nofetch.test", 10, "mx.good.test"),
            R.txt("_mta-sts.nofetch.test", "v=STSv1; id=n1"), R.a("mta-sts.nofetch.test", "127.0.0.80"),
            // The policy host's certificate does not name it: sts-webpki-invalid.
            R.mx("webpki.test", 10, "mx.good.test"),
            R.txt("_mta-sts.webpki.test", "v=STSv1; id=p1"), R.a("mta-sts.webpki.test", "127.0.0.80"),
            R.mx("danta.test", 10, "mx.danta.test"), R.a("mx.danta.test", "127.0.0.85"),
            R.tlsa("_\(good.port)._tcp.mx.danta.test", 2, 0, 1, caDigest),
            R.tlsa(tlsaName, 3, 1, 1, matching),
        ]
        let dns = try SecureTestDNS(records: records, secure: [tlsaName, "_\(good.port)._tcp.mx.danta.test"])
        defer { dns.stop() }

        let config = try engineConfig(dns: dns.address, port: good.port, delivery: """
            , allow_loopback_mx: true, mta_sts: { enabled: true, ca_file: \(ca.cert), https_port: \(https.address.port), fetch_timeout: 5s }, dane: { enabled: true }
            """, dir: dir)
        let deadline = Date().addingTimeInterval(30)

        // Enforce, the MX is outside the policy: deferred, the MX never contacted.
        do {
            let engine = try DeliveryEngine(config: config)
            defer { engine.shutdown() }
            let out = engine.deliver(lease: lease("wrong.test", recipients: 2), body: sampleMessage(), deadline: deadline)
            #expect(out.results.map(\.status) == [.deferred, .deferred])
            #expect(out.results.first?.reply.code == 451)
            #expect(out.results.first?.reply.enhanced?.description == "4.7.5")
            #expect(out.results.first?.reply.text == "MTA-STS policy of wrong.test: mx.other.test does not match the policy")
            #expect(outsideMX.connectionCount == 0, "never sent in clear, never even connected")
            #expect(out.results.first?.tlsReports == [TLSReportEntry(policyDomain: "wrong.test", policyType: "sts", result: "validation-failure", mxHost: "mx.other.test")])

            // A domain without a policy on the same MX: an opportunistic TLS session, left idle in the pool.
            let plain = engine.deliver(lease: lease("nopolicy.test"), body: sampleMessage(), deadline: deadline)
            #expect(plain.results.map(\.status) == [.delivered])
            #expect(plain.results.first?.tlsReports == nil)
            #expect(good.connectionCount == 1)

            // Enforce, the right MX with a valid certificate: delivered over TLS, on a new session
            // (the idle one was not authenticated for the policy).
            let ok = engine.deliver(lease: lease("good.test"), body: sampleMessage(), deadline: deadline)
            #expect(ok.results.map(\.status) == [.delivered], "\(ok.results.map(\.reply))")
            #expect(ok.results.first?.tlsVersion != nil)
            #expect(good.messages.count == 2)
            #expect(good.connectionCount == 2)
            #expect(ok.results.first?.tlsReports == [TLSReportEntry(policyDomain: "good.test", policyType: "sts", result: "success", mxHost: "mx.good.test")])
            // The policy is cached: a second delivery fetches nothing.
            let before = fetches.withLock { $0.count }
            let again = engine.deliver(lease: lease("good.test"), body: sampleMessage("2"), deadline: deadline)
            #expect(fetches.withLock { $0.count } == before)
            #expect(good.messages.count == 3)
            #expect(again.results.first?.reusedConnection == true, "the policy-authenticated session is reused")
            #expect(good.connectionCount == 2)

            // A policy that cannot be fetched: no policy, reported; not fetched again at once.
            let nofetch = engine.deliver(lease: lease("nofetch.test"), body: sampleMessage(), deadline: deadline)
            #expect(nofetch.results.map(\.status) == [.delivered])
            #expect(nofetch.results.first?.tlsReports == [TLSReportEntry(policyDomain: "nofetch.test", policyType: "sts", result: "sts-policy-fetch-error")])
            let fetched = fetches.withLock { $0.filter { $0.hasPrefix("mta-sts.nofetch.test") }.count }
            #expect(fetched == 1)
            let nofetch2 = engine.deliver(lease: lease("nofetch.test"), body: sampleMessage("3"), deadline: deadline)
            #expect(nofetch2.results.map(\.status) == [.delivered])
            #expect(nofetch2.results.first?.tlsReports == nil)
            #expect(fetches.withLock { $0.filter { $0.hasPrefix("mta-sts.nofetch.test") }.count } == 1, "a failed fetch waits before the next")

            let webpki = engine.deliver(lease: lease("webpki.test"), body: sampleMessage(), deadline: deadline)
            #expect(webpki.results.map(\.status) == [.delivered])
            #expect(webpki.results.first?.tlsReports?.map(\.result) == ["sts-webpki-invalid"])

            // Enforce, a certificate for another name: deferred, nothing sent (no plaintext retry).
            let bad = engine.deliver(lease: lease("badcert.test"), body: sampleMessage(), deadline: deadline)
            #expect(bad.results.map(\.status) == [.deferred])
            #expect(bad.results.first?.reply.enhanced?.description == "4.7.5")
            #expect(bad.results.first?.reply.text.contains("MTA-STS policy of badcert.test: certificate not valid for mx.badcert.test") == true,
                    "\(bad.results.first?.reply.text ?? "")")
            #expect(badName.messages.isEmpty)
            #expect(badName.connections.allSatisfy { !$0.commands.contains { $0.hasPrefix("MAIL") } })
            #expect(bad.results.first?.tlsReports?.map(\.result) == ["certificate-host-mismatch"])

            // Testing mode with the same failure: delivered, the failure reported.
            let testing = engine.deliver(lease: lease("testing.test"), body: sampleMessage(), deadline: deadline)
            #expect(testing.results.map(\.status) == [.delivered])
            #expect(badName.messages.count == 1)
            #expect(testing.results.first?.tlsReports == [TLSReportEntry(policyDomain: "testing.test", policyType: "sts", result: "certificate-host-mismatch", mxHost: "mx.testing.test")])

            // DANE-EE matching the self-signed certificate: delivered over TLS.
            let daneOK = engine.deliver(lease: lease("dane.test"), body: sampleMessage(), deadline: deadline)
            #expect(daneOK.results.map(\.status) == [.delivered], "\(daneOK.results.map(\.reply))")
            #expect(daneOK.results.first?.tlsVersion != nil)
            #expect(dane.messages.count == 1)
            #expect(daneOK.results.first?.tlsReports == [TLSReportEntry(policyDomain: "mx.dane.test", policyType: "tlsa", result: "success", mxHost: "mx.dane.test")])

            // DANE-TA: the CA named by a 2 0 1 record, the leaf's name checked.
            let ta = engine.deliver(lease: lease("danta.test"), body: sampleMessage(), deadline: deadline)
            #expect(ta.results.map(\.status) == [.delivered], "\(ta.results.map(\.reply))")
            #expect(danta.messages.count == 1)
            #expect(ta.results.first?.tlsReports?.map(\.result) == ["success"])
        }

        // DANE mismatch (a fresh engine: DNS answers are cached per resolver).
        // The DANE-TA host too: its chain would verify against ca_file, but DANE decides.
        records.removeLast(2)
        records.append(R.tlsa("_\(good.port)._tcp.mx.danta.test", 2, 0, 1, [UInt8](repeating: 0x42, count: 32)))
        records.append(R.tlsa(tlsaName, 3, 1, 1, [UInt8](repeating: 0x42, count: 32)))
        dns.update(records: records, secure: [tlsaName, "_\(good.port)._tcp.mx.danta.test"])
        do {
            let engine = try DeliveryEngine(config: config)
            defer { engine.shutdown() }
            let out = engine.deliver(lease: lease("dane.test"), body: sampleMessage(), deadline: deadline)
            #expect(out.results.map(\.status) == [.deferred])
            #expect(out.results.first?.reply.text.contains("DANE: certificate of mx.dane.test does not match its TLSA records") == true,
                    "\(out.results.first?.reply.text ?? "")")
            #expect(dane.messages.count == 1, "nothing more was sent")
            #expect(out.results.first?.tlsReports?.map(\.result) == ["validation-failure"])
            let ta = engine.deliver(lease: lease("danta.test"), body: sampleMessage(), deadline: deadline)
            #expect(ta.results.map(\.status) == [.deferred])
            #expect(ta.results.first?.reply.text.contains("DANE: certificate of mx.danta.test does not match its TLSA records") == true)
            #expect(danta.messages.count == 1, "nothing more was sent")
        }

        // The same mismatching records without the AD bit: no DANE, opportunistic TLS delivers.
        dns.update(records: records, secure: [])
        do {
            let engine = try DeliveryEngine(config: config)
            defer { engine.shutdown() }
            let out = engine.deliver(lease: lease("dane.test"), body: sampleMessage(), deadline: deadline)
            #expect(out.results.map(\.status) == [.delivered])
            #expect(out.results.first?.tlsReports == nil)
            #expect(dane.messages.count == 2)
        }
        #expect(dns.questions.contains("\(tlsaName)/TLSA"))
    }
}
