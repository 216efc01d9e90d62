#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HatoTestKit
import Testing
@testable import HatoCrypto
@testable import HatoDKIM

/// DKIM canonicalization, keys and signatures, checked against RFC 6376 vectors and the
/// independent verifier dkimpy (Debian's python3-dkim) (filter: `DKIMTests`).
@Suite("DKIMTests")
struct DKIMTests {}

private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }
private func text(_ b: [UInt8]) -> String { String(decoding: b, as: UTF8.self) }

extension DKIMTests {
    @Suite("canonicalization")
    struct Canonicalization {
        /// RFC 6376 §3.4.5's example.
        static let example = "A: X\r\nB : Y\t\r\n\tZ  \r\n\r\n C \r\nD \t E\r\n\r\n\r\n"

        @Test("RFC 6376 §3.4.5 example, relaxed and simple")
        func rfcExample() {
            let m = ParsedMessage(bytes(Self.example))
            #expect(m.fields.map(\.name) == ["A", "B"])
            #expect(m.fields.map { text(DKIMCanonicalization.relaxed.header($0.raw)) }.joined() == "a:X\r\nb:Y Z\r\n")
            #expect(text(DKIMCanonicalization.relaxed.body(m.body)) == " C\r\nD E\r\n")
            #expect(m.fields.map { text(DKIMCanonicalization.simple.header($0.raw)) }.joined() == "A: X\r\nB : Y\t\r\n\tZ  \r\n")
            #expect(text(DKIMCanonicalization.simple.body(m.body)) == " C \r\nD \t E\r\n")
            #expect(m.bytes == bytes(Self.example))
        }

        @Test("empty bodies: simple is one CRLF, relaxed is empty (RFC 6376 §3.4.3, §3.4.4)")
        func emptyBodies() throws {
            let key = try DKIMPrivateKey.generate(.ed25519SHA256)
            for body in ["", "\r\n", "\r\n\r\n\r\n"] {
                #expect(DKIMCanonicalization.simple.body(bytes(body)) == [0x0D, 0x0A])
                #expect(DKIMCanonicalization.relaxed.body(bytes(body)) == [])
            }
            // The well-known hashes of the empty body.
            let simple = DKIMSigner(domain: "x.test", selector: "s", key: key, bodyCanonicalization: .simple)
            let relaxed = DKIMSigner(domain: "x.test", selector: "s", key: key, bodyCanonicalization: .relaxed)
            #expect(simple.bodyHash([]) == "frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY=")
            #expect(relaxed.bodyHash([]) == "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=")
        }

        @Test("whitespace-only trailing lines: kept by simple, removed by relaxed")
        func trailingWhitespaceLines() {
            let body = bytes("text\r\n \t\r\n\r\n  \r\n")
            #expect(text(DKIMCanonicalization.simple.body(body)) == "text\r\n \t\r\n\r\n  \r\n")
            #expect(text(DKIMCanonicalization.relaxed.body(body)) == "text\r\n")
            #expect(text(DKIMCanonicalization.simple.body(bytes("a\r\n\r\n"))) == "a\r\n")
            #expect(text(DKIMCanonicalization.relaxed.body(bytes("a  b \t\r\n"))) == "a b\r\n")
        }

        @Test("line endings become CRLF and the text ends with CRLF")
        func lineEndings() {
            #expect(text(MessageText.canonicalLineEndings(bytes("a\nb\rc\r\nd"))) == "a\r\nb\r\nc\r\nd\r\n")
            #expect(MessageText.canonicalLineEndings([]) == [])
            #expect(text(MessageText.canonicalLineEndings(bytes("\r\r\n\n"))) == "\r\n\r\n\r\n")
            #expect(MessageText.longestLine(bytes("ab\r\nabcd\r\nx")) == 4)
        }

        @Test("header parsing: folded and repeated fields, no separator, From domain")
        func parsing() {
            let m = ParsedMessage(bytes("To: a@x\r\nSubject: one\r\n  two\r\nTo: b@y\r\n"))
            #expect(m.fields.count == 3)
            #expect(m.lastValue("subject") == "one  two")
            #expect(m.values("to") == ["a@x", "b@y"])
            #expect(m.body.isEmpty)
            #expect(!m.hasSeparator)
            #expect(DKIMSignerSet.addressDomain("\"Shop, Inc\" <News@Shop.Example>") == "shop.example")
            #expect(DKIMSignerSet.addressDomain("user@mail.example (Some User)") == "mail.example")
            #expect(DKIMSignerSet.addressDomain("undisclosed-recipients:;") == nil)
        }
    }
}

extension DKIMTests {
    @Suite("keys")
    struct Keys {
        @Test("generate, export PEM, reload; DNS records have the right shape")
        func roundTrip() throws {
            let rsa = try DKIMPrivateKey.generate(.rsaSHA256, rsaBits: 2048)
            #expect(rsa.bits == 2048)
            let reloaded = try DKIMPrivateKey(pem: try rsa.pem())
            #expect(reloaded.algorithm == .rsaSHA256)
            #expect(try reloaded.publicKeyBase64() == rsa.publicKeyBase64())
            #expect(try rsa.dnsRecord().hasPrefix("v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"))
            let ed = try DKIMPrivateKey.generate(.ed25519SHA256)
            #expect(ed.algorithm == .ed25519SHA256)
            let edRecord = try ed.dnsRecord()
            #expect(edRecord.hasPrefix("v=DKIM1; k=ed25519; p="))
            #expect(Data(base64Encoded: try ed.publicKeyBase64())?.count == 32)
            #expect(text(try ed.pem()).hasPrefix("-----BEGIN PRIVATE KEY-----"))
            #expect(try DKIMPrivateKey(pem: try ed.pem()).publicKeyBase64() == ed.publicKeyBase64())
        }

        @Test("bad PEM, short RSA keys and unsupported key types are precise errors")
        func badKeys() throws {
            #expect(throws: DKIMKeyError.self) { try DKIMPrivateKey(pem: bytes("not a key")) }
            #expect(throws: DKIMKeyError.self) { try DKIMPrivateKey(pem: []) }
            #expect(throws: DKIMKeyError.self) { try DKIMPrivateKey(pemFile: "/nonexistent/key.pem") }
            #expect(throws: DKIMKeyError.self) { try DKIMPrivateKey.generate(.rsaSHA256, rsaBits: 512) }
            let dir = NSTemporaryDirectory() + "hato-dkim-" + Identifier.random(bytes: 4)
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            // A 512-bit RSA key and an EC key made by the openssl CLI.
            let short = dir + "/short.pem", ec = dir + "/ec.pem"
            #expect(try runTool("/usr/bin/openssl", ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:512", "-out", short], dir: dir) == 0)
            #expect(try runTool("/usr/bin/openssl", ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", ec], dir: dir) == 0)
            do { _ = try DKIMPrivateKey(pemFile: short); Issue.record("512-bit key accepted") } catch let e as DKIMKeyError {
                #expect(e.message.contains("too short"))
            }
            do { _ = try DKIMPrivateKey(pemFile: ec); Issue.record("EC key accepted") } catch let e as DKIMKeyError {
                #expect(e.message.contains("unsupported key type"))
            }
        }

        @Test("the signature header is folded under 78 columns and names every signed field")
        func folding() throws {
            let key = try DKIMPrivateKey.generate(.rsaSHA256)
            let signer = DKIMSigner(domain: "Example.ORG", selector: "s2026", key: key)
            let msg = bytes("From: a@example.org\r\nTo: b@x.test\r\nTo: c@x.test\r\nSubject: hi\r\nX-Other: y\r\n\r\nbody\r\n")
            let field = text(try signer.signatureField(for: msg, time: Date(timeIntervalSince1970: 1_800_000_000)))
            let unfolded = field.replacingOccurrences(of: "\r\n\t", with: " ")
            #expect(unfolded.hasPrefix("DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=s2026; t=1800000000;"))
            #expect(unfolded.contains(" h=from:from:to:to:subject; bh="))
            #expect(field.hasSuffix("\r\n"))
            for line in field.components(separatedBy: "\r\n") { #expect(line.count <= 78) }
        }
    }
}

// MARK: - Independent verification with dkimpy

/// Runs a program with `posix_spawn` (empty signal mask, output to `dir/tool.log`), waiting at most 60 s.
/// - Returns: the exit status.
private func runTool(_ path: String, _ arguments: [String], dir: String) throws -> Int32 {
    let pid: pid_t
    do { pid = try spawnChild(path, arguments, logPath: dir + "/tool.log") } catch { throw DKIMKeyError("\(error)") }
    let deadline = Date().addingTimeInterval(60)
    var status: Int32 = 0
    while waitpid(pid, &status, WNOHANG) == 0 {
        if Date() > deadline { kill(pid, SIGKILL); waitpid(pid, &status, 0); throw DKIMKeyError("\(path) did not finish in 60 s") }
        usleep(10_000)
    }
    return (status >> 8) & 0xFF
}

/// dkimpy's verdict for each message file: every DKIM-Signature is verified, with the key
/// records served by a `dnsfunc` from `records` (`selector._domainkey.domain` → TXT text).
/// - Returns: per file, one Bool per signature (top first).
func dkimpyVerify(_ messages: [[UInt8]], records: [String: String]) throws -> [[Bool]] {
    let dir = NSTemporaryDirectory() + "hato-dkimpy-" + Identifier.random(bytes: 4)
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    var paths: [String] = []
    for (i, m) in messages.enumerated() {
        let p = "\(dir)/m\(i).eml"
        try Data(m).write(to: URL(fileURLWithPath: p))
        paths.append(p)
    }
    try JSONSerialization.data(withJSONObject: records).write(to: URL(fileURLWithPath: dir + "/keys.json"))
    try dkimVerifyScript.write(toFile: dir + "/verify.py", atomically: true, encoding: .utf8)
    let status = try runTool("/usr/bin/python3", [dir + "/verify.py", dir + "/keys.json", dir + "/out.json"] + paths, dir: dir)
    guard status == 0, let data = FileManager.default.contents(atPath: dir + "/out.json"),
          let result = try JSONSerialization.jsonObject(with: data) as? [[Bool]] else {
        let log = (try? String(contentsOfFile: dir + "/tool.log", encoding: .utf8)) ?? ""
        throw DKIMKeyError("dkimpy failed (status \(status)): \(log)")
    }
    return result
}

extension DKIMTests {
    /// Messages that exercise the canonicalization corner cases.
    static let vectors: [(name: String, message: String)] = [
        ("plain", "From: Shop <news@example.org>\r\nTo: a@dest.test\r\nSubject: Hello\r\nDate: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\nHello there.\r\n"),
        ("empty body", "From: news@example.org\r\nTo: a@dest.test\r\nSubject: empty\r\n\r\n"),
        ("no body separator", "From: news@example.org\r\nTo: a@dest.test\r\nSubject: headers only\r\n"),
        ("folded headers", "From: \"A very long display name that goes on\"\r\n <news@example.org>\r\nTo: a@dest.test,\r\n\tb@dest.test,\r\n   c@dest.test\r\nSubject:   spaced \t out\r\n  and folded   \r\n\r\nbody\r\n"),
        ("repeated headers", "Received: from a\r\nFrom: news@example.org\r\nTo: a@dest.test\r\nTo: b@dest.test\r\nSubject: one\r\nReceived: from b\r\nSubject: two\r\n\r\nbody\r\n"),
        ("whitespace-only trailing lines", "From: news@example.org\r\nTo: a@dest.test\r\nSubject: ws\r\n\r\nline  with   spaces \t\r\n\r\n \t \r\n  \r\n\r\n\r\n"),
        ("8-bit body", "From: news@example.org\r\nTo: a@dest.test\r\nSubject: =?UTF-8?Q?caf=C3=A9?=\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nCaf\u{E9} cr\u{E8}me \u{2014} na\u{EF}ve\r\n"),
        ("dots and long lines", "From: news@example.org\r\nTo: a@dest.test\r\n\r\n.\r\n..leading\r\n" + String(repeating: "x", count: 990) + "\r\n"),
    ]

    @Suite("dkimpy")
    struct Dkimpy {
        @Test("rsa-sha256 and ed25519-sha256 × all four canonicalizations verify with dkimpy")
        func verifiesEverything() throws {
            let rsa = try DKIMPrivateKey.generate(.rsaSHA256)
            let ed = try DKIMPrivateKey.generate(.ed25519SHA256)
            let records = ["rsa._domainkey.example.org": try rsa.dnsRecord(), "ed._domainkey.example.org": try ed.dnsRecord()]
            var messages: [[UInt8]] = []
            var labels: [String] = []
            for (name, message) in DKIMTests.vectors {
                for (selector, key) in [("rsa", rsa), ("ed", ed)] {
                    for h in DKIMCanonicalization.allCases {
                        for b in DKIMCanonicalization.allCases {
                            let signer = DKIMSigner(domain: "example.org", selector: selector, key: key,
                                                    headerCanonicalization: h, bodyCanonicalization: b)
                            messages.append(try signer.sign(MessageText.canonicalLineEndings(bytes(message))))
                            labels.append("\(name) \(key.algorithm.rawValue) \(h)/\(b)")
                        }
                    }
                }
            }
            let verdicts = try dkimpyVerify(messages, records: records)
            #expect(verdicts.count == messages.count)
            for (label, v) in zip(labels, verdicts) {
                #expect(v == [true], "\(label)")
            }
            #expect(messages.count == DKIMTests.vectors.count * 8)
        }

        @Test("two signers (RSA and Ed25519) on one message both verify; a changed body fails")
        func twoSignaturesAndTampering() throws {
            let rsa = try DKIMPrivateKey.generate(.rsaSHA256)
            let ed = try DKIMPrivateKey.generate(.ed25519SHA256)
            let set = DKIMSignerSet([
                DKIMSigner(domain: "example.org", selector: "rsa", key: rsa),
                DKIMSigner(domain: "example.org", selector: "ed", key: ed),
                DKIMSigner(domain: "other.test", selector: "x", key: ed),
            ])
            let msg = MessageText.canonicalLineEndings(bytes(DKIMTests.vectors[0].message))
            let (signed, used) = try set.sign(msg)
            #expect(used == ["example.org/rsa/rsa-sha256", "example.org/ed/ed25519-sha256"])
            // A subdomain sender is signed by its parent domain's keys; an unknown domain is not signed.
            #expect(set.signers(forFromDomain: "mail.example.org").count == 2)
            #expect(set.signers(forFromDomain: "unknown.test").isEmpty)
            #expect(try set.sign(bytes("From: x@unknown.test\r\n\r\nb\r\n")).signatures.isEmpty)
            var tampered = signed
            tampered.replaceSubrange((tampered.count - 6)..<(tampered.count - 2), with: bytes("HERE"))
            let records = ["rsa._domainkey.example.org": try rsa.dnsRecord(), "ed._domainkey.example.org": try ed.dnsRecord()]
            let verdicts = try dkimpyVerify([signed, tampered], records: records)
            #expect(verdicts == [[true, true], [false, false]])
        }
    }
}
