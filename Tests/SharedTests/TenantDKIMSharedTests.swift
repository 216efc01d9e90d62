import Foundation
import Testing
@testable import ClusterProtocol
@testable import HatoConfig
@testable import HatoCrypto
@testable import HatoDKIM

/// Issue 16, the shared parts of tenants' DKIM keys: `SecretBox`, the `signing_keys` frame,
/// `tenants:` in cluster.yml and TXT string splitting.
@Suite("Tenant DKIM: shared parts")
struct TenantDKIMSharedTests {
    @Test("SecretBox: seal then open gives the plaintext back; the format is version | nonce | ciphertext | tag")
    func secretBoxRoundTrip() throws {
        let box = SecretBox(clusterSecret: "0123456789abcdef0123")
        for plaintext in [[], Array("x".utf8), Array(String(repeating: "-----BEGIN PRIVATE KEY-----\n", count: 100).utf8)] {
            let sealed = try box.seal(plaintext)
            #expect(sealed.count == plaintext.count + SecretBox.overhead)
            #expect(sealed[0] == 1)
            #expect(try box.open(sealed) == plaintext)
            // A fresh nonce each time: sealing twice differs.
            #expect(try box.seal(plaintext) != sealed)
        }
        // Another host with the same secret opens it.
        let sealed = try box.seal(Array("key".utf8))
        #expect(try SecretBox(clusterSecret: "0123456789abcdef0123").open(sealed) == Array("key".utf8))
    }

    @Test("SecretBox: another secret, another purpose, or any changed octet does not open")
    func secretBoxRefusals() throws {
        let box = SecretBox(clusterSecret: "0123456789abcdef0123")
        let sealed = try box.seal(Array("-----BEGIN PRIVATE KEY-----".utf8))
        #expect(throws: SecretBoxError.authenticationFailed) { try SecretBox(clusterSecret: "another-secret-of-16").open(sealed) }
        #expect(throws: SecretBoxError.authenticationFailed) { try SecretBox(clusterSecret: "0123456789abcdef0123", purpose: "webhook").open(sealed) }
        // Every octet after the version: nonce, ciphertext, tag.
        for i in 1..<sealed.count {
            var altered = sealed
            altered[i] ^= 0x01
            #expect(throws: SecretBoxError.authenticationFailed) { try box.open(altered) }
        }
        var version = sealed
        version[0] = 2
        #expect(throws: SecretBoxError.unsupportedVersion(2)) { try box.open(version) }
        #expect(throws: SecretBoxError.tooShort(28)) { try box.open(Array(sealed.prefix(28))) }
        #expect(throws: SecretBoxError.authenticationFailed) { try box.open(Array(sealed.dropLast())) }
        #expect(throws: SecretBoxError.badKeyLength(16)) { try SecretBox(key: [UInt8](repeating: 1, count: 16)) }
        #expect(SecretBoxError.authenticationFailed.description.contains("another key"))
    }

    @Test("SecretBox's key derivation is HKDF-SHA256 (RFC 5869 appendix A.1, first 32 octets)")
    func hkdfVector() {
        let okm = SecretBox.hkdfSHA256(ikm: [UInt8](repeating: 0x0B, count: 22), salt: Array(0x00...0x0C), info: Array(0xF0...0xF9))
        #expect(Hex.encode(okm) == "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf")
    }

    static let sealedSample = Data(SecretBox(clusterSecret: "0123456789abcdef0123").sealForTest()).base64EncodedString()

    @Test("signing_keys survives encode → decode; the hello of this build names the feature")
    func frameRoundTrip() throws {
        let m = ClusterMessage.signingKeys(SigningKeysMessage(version: 7, keys: [
            SealedSigningKey(domain: "shop.example", selector: "hato20261205e", algorithm: "ed25519-sha256", sealedPrivateKey: Self.sealedSample),
            SealedSigningKey(domain: "shop.example", selector: "hato20261205r", algorithm: "rsa-sha256", sealedPrivateKey: Self.sealedSample),
        ], term: 3))
        let frame = m.frame()
        #expect(frame.type == .signingKeys && frame.type.rawValue == 18)
        var decoder = FrameDecoder(maximumFrameSize: 1 << 20)
        decoder.feed(frame.encoded())
        #expect(try ClusterMessage.decode(#require(try decoder.next())) == m)
        #expect(ClusterFeature.all.contains("signing_keys"))
        // Logs show domain/selector only.
        #expect("\(SealedSigningKey(domain: "a.example", selector: "s", algorithm: "rsa-sha256", sealedPrivateKey: "SECRET"))" == "a.example/s")
    }

    @Test("a corrupt signing_keys frame is refused as malformed (the connection closes)")
    func corruptFrames() {
        func header(_ key: String) -> [UInt8] { Array("{\"version\":1,\"keys\":[\(key)]}".utf8) }
        let good = "\"domain\":\"shop.example\",\"selector\":\"s1\",\"algorithm\":\"rsa-sha256\""
        let bad: [[UInt8]] = [
            Array("{\"version\":\"x\",\"keys\":[]}".utf8),
            Array("{\"keys\":[]}".utf8),
            Array("not json".utf8),
            header("{\(good)}"),  // no sealed key
            header("{\(good),\"sealedPrivateKey\":\"%%%\"}"),
            header("{\(good),\"sealedPrivateKey\":\"AAAA\"}"),  // too short to be sealed
            header("{\"domain\":\"shop example\",\"selector\":\"s1\",\"algorithm\":\"rsa-sha256\",\"sealedPrivateKey\":\"\(Self.sealedSample)\"}"),
            header("{\"domain\":\"shop.example\",\"selector\":\"s1\",\"algorithm\":\"rsa-sha1\",\"sealedPrivateKey\":\"\(Self.sealedSample)\"}"),
        ]
        for h in bad {
            #expect(throws: ClusterProtocolError.self, "\(String(decoding: h, as: UTF8.self))") {
                try ClusterMessage.decode(Frame(type: .signingKeys, header: h))
            }
        }
        #expect(throws: Never.self) { try ClusterMessage.decode(Frame(type: .signingKeys, header: header("{\(good),\"sealedPrivateKey\":\"\(Self.sealedSample)\"}"))) }
    }

    @Test("tenants.spf_include is decoded; unknown keys and bad names name file, line and key")
    func tenantSettings() throws {
        #expect(try ConfigTests.parse(ConfigTests.base).tenants == TenantSettings())
        let c = try ConfigTests.parse(ConfigTests.base + "tenants: { spf_include: _SPF.Relay.Example. }\n")
        #expect(c.tenants.spfInclude == "_spf.relay.example")
        let unknown = ConfigTests.configError(ConfigTests.base + "tenants:\n  spf_includes: _spf.relay.example\n")
        #expect(unknown?.key == "tenants.spf_includes")
        #expect(unknown?.line == 30)
        #expect(unknown?.message.contains("unknown key") == true)
        let badName = ConfigTests.configError(ConfigTests.base + "tenants: { spf_include: \"not a name\" }\n")
        #expect(badName?.key == "tenants.spf_include")
        #expect(badName?.file == "test.yml")
        // A reload of it applies live.
        var changed = c
        changed.tenants.spfInclude = nil
        #expect(ConfigReload(from: c, to: changed).liveKeys == ["tenants"])
    }

    @Test("TXT values are cut into strings of at most 255 octets")
    func txtStrings() {
        let value = String(repeating: "a", count: 600)
        #expect(TXTStrings.split(value).map(\.utf8.count) == [255, 255, 90])
        #expect(TXTStrings.split("v=DKIM1") == ["v=DKIM1"])
        #expect(TXTStrings.split("") == [""])
        #expect(TXTStrings.quoted(String(repeating: "b", count: 256)) == "\"\(String(repeating: "b", count: 255))\" \"b\"")
    }
}

extension SecretBox {
    /// A sealed value of some octets, for frames in tests.
    fileprivate func sealForTest() -> [UInt8] { (try? seal(Array("-----BEGIN PRIVATE KEY-----".utf8))) ?? [] }
}
