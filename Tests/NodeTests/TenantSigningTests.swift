import Foundation
import Testing
@testable import ClusterProtocol
@testable import HatoCrypto
@testable import HatoDKIM
@testable import HatoNode

/// Issue 16 on the node: the tenants' keys from `signing_keys` are opened with the cluster secret
/// and sign mail of their domains with both keys (RFC 8463 §1), instead of cluster.yml keys of
/// the same domain; dkimpy verifies the signatures.
@Suite("Tenant signing keys", .serialized)
struct TenantSigningTests {
    static let secret = "0123456789abcdef0123"

    /// A tenant key as the coordinator sends it, and its DNS record.
    static func sealedKey(_ domain: String, _ selector: String, _ algorithm: DKIMAlgorithm, secret: String = secret) throws -> (SealedSigningKey, String) {
        let key = try DKIMPrivateKey.generate(algorithm)
        let sealed = try SecretBox(clusterSecret: secret).seal(try key.pem())
        return (SealedSigningKey(domain: domain, selector: selector, algorithm: algorithm.rawValue, sealedPrivateKey: Data(sealed).base64EncodedString()),
                try key.dnsRecord())
    }

    static func message(from: String?) -> MessageAnalysis {
        let head = from.map { "From: Shop <\($0)>\r\n" } ?? ""
        return MessageAnalysis(Array("\(head)To: u1@dest.test\r\nSubject: receipt\r\nDate: Sat, 05 Dec 2026 10:00:00 +0000\r\nMessage-ID: <m1@x>\r\n\r\nThanks.\r\n".utf8))
    }

    @Test("a From domain with tenant keys gets two DKIM-Signatures (ed25519 and rsa) that dkimpy verifies; cluster.yml keys sign other domains")
    func dualSigning() throws {
        var records: [String: String] = [:]
        let (ed, edRecord) = try Self.sealedKey("tenant.example", "hato20261205e", .ed25519SHA256)
        let (rsa, rsaRecord) = try Self.sealedKey("tenant.example", "hato20261205r", .rsaSHA256)
        records["hato20261205e._domainkey.tenant.example"] = edRecord
        records["hato20261205r._domainkey.tenant.example"] = rsaRecord
        // cluster.yml keys: one for the tenant's domain (not used while it has tenant keys), one for another domain.
        let configKey = try DKIMPrivateKey.generate(.rsaSHA256)
        let otherKey = try DKIMPrivateKey.generate(.ed25519SHA256)
        records["cfg._domainkey.tenant.example"] = try configKey.dnsRecord()
        records["cfg._domainkey.other.example"] = try otherKey.dnsRecord()
        let configured = DKIMSignerSet([DKIMSigner(domain: "tenant.example", selector: "cfg", key: configKey),
                                        DKIMSigner(domain: "other.example", selector: "cfg", key: otherKey)])

        let table = TenantSigningKeys()
        #expect(table.version == nil)
        let update = table.replace(with: SigningKeysMessage(version: 4, keys: [ed, rsa]), clusterSecret: Self.secret)
        #expect(update == TenantSigningKeys.Update(version: 4, domains: 1, keys: 2, failed: []))
        #expect(table.keyNames == ["tenant.example/hato20261205e", "tenant.example/hato20261205r"])
        let preparer = MessagePreparer(dkim: configured, tenantKeys: table)

        func prepare(_ from: String?, reversePath: String = "") throws -> PreparedMessage {
            try preparer.prepare(Self.message(from: from), eightBitMIME: true, reversePath: reversePath).get()
        }
        let tenant = try prepare("news@Tenant.Example")
        #expect(tenant.signatures == ["tenant.example/hato20261205e/ed25519-sha256", "tenant.example/hato20261205r/rsa-sha256"])
        let sub = try prepare("news@mail.tenant.example")
        #expect(sub.signatures.count == 2)  // the closest domain with keys (relaxed alignment)
        let other = try prepare("a@other.example")
        #expect(other.signatures == ["other.example/cfg/ed25519-sha256"])
        let noFrom = try prepare(nil, reversePath: "bounces@tenant.example")
        #expect(noFrom.signatures.count == 2)  // no From: the reverse-path domain's tenant keys
        #expect(try prepare(nil, reversePath: "bounces@other.example").signatures.isEmpty)  // never cluster.yml keys without a From
        #expect(try prepare("a@unsigned.example").signatures.isEmpty)

        let verdicts = try dkimpyVerify([tenant.bytes, sub.bytes, other.bytes, noFrom.bytes], records: records)
        #expect(verdicts == [[true, true], [true, true], [true], [true, true]])
        let header = String(decoding: tenant.bytes.prefix(2000), as: UTF8.self)
        #expect(header.components(separatedBy: "DKIM-Signature:").count == 3)

        // An empty set: the domain's cluster.yml key signs again.
        table.replace(with: SigningKeysMessage(version: 5, keys: []), clusterSecret: Self.secret)
        #expect(try prepare("news@tenant.example").signatures == ["tenant.example/cfg/rsa-sha256"])
        #expect(table.version == 5)
    }

    @Test("a key that does not open (another secret, altered, wrong algorithm) is left out; the others apply")
    func badKeys() throws {
        let (good, _) = try Self.sealedKey("a.example", "s1", .ed25519SHA256)
        let (foreign, _) = try Self.sealedKey("b.example", "s1", .ed25519SHA256, secret: "another-secret-0123")
        var (altered, _) = try Self.sealedKey("c.example", "s1", .rsaSHA256)
        var octets = Array(Data(base64Encoded: altered.sealedPrivateKey)!)
        octets[octets.count / 2] ^= 1
        altered.sealedPrivateKey = Data(octets).base64EncodedString()
        var (mislabelled, _) = try Self.sealedKey("d.example", "s1", .ed25519SHA256)
        mislabelled.algorithm = "rsa-sha256"
        let table = TenantSigningKeys()
        let update = table.replace(with: SigningKeysMessage(version: 1, keys: [good, foreign, altered, mislabelled]), clusterSecret: Self.secret)
        #expect(update.failed == ["b.example/s1", "c.example/s1", "d.example/s1"])
        #expect(update.keys == 1 && update.domains == 1)
        #expect(table.signers(forDomain: "a.example").count == 1)
        #expect(table.signers(forDomain: "b.example").isEmpty)
        // Unchanged keys are not opened again: the same signer object stays.
        let before = table.signers(forDomain: "a.example")[0].key
        table.replace(with: SigningKeysMessage(version: 2, keys: [good]), clusterSecret: Self.secret)
        #expect(table.signers(forDomain: "a.example")[0].key === before)
    }
}
