import Foundation
import HatoCrypto
import HatoDKIM

/// Making a tenant's sending domain with its DKIM keys (issue 16).
///
/// Every domain gets two keys and nodes sign with both (RFC 8463 §1: an Ed25519 signature for
/// verifiers that know it, an RSA one for the rest): ed25519 (RFC 8463) and rsa-2048 (RFC 6376
/// §3.3.3, RFC 8301 §3.2). Selectors carry the UTC date the key was made, so a later rotation
/// gets new names: `hato20261205e` (ed25519) and `hato20261205r` (rsa). The private keys are
/// kept only sealed (`SecretBox`, key derived from the cluster secret).
public enum SendingDomainKeys {
    /// Why a domain cannot be added.
    public struct InvalidDomain: Error, Sendable, Equatable, CustomStringConvertible {
        /// What is wrong with it.
        public let description: String
    }

    /// The selector prefix.
    public static let selectorPrefix = "hato"
    /// The RSA modulus size in bits.
    public static let rsaBits = 2048

    /// The selector of a key made on `date` (UTC): `hato` + `yyyyMMdd` + `e` (ed25519) or `r` (rsa).
    public static func selector(for algorithm: DKIMAlgorithm, date: Date) -> String {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        let c = calendar.dateComponents([.year, .month, .day], from: date)
        let stamp = String(format: "%04d%02d%02d", c.year ?? 1970, c.month ?? 1, c.day ?? 1)
        return selectorPrefix + stamp + (algorithm == .ed25519SHA256 ? "e" : "r")
    }

    /// The domain as stored: lower-case, no trailing dot, a DNS name of at least two labels.
    /// - Throws: `InvalidDomain`.
    public static func normalizedDomain(_ text: String) throws -> String {
        var d = text.trimmingCharacters(in: .whitespaces).lowercased()
        if d.hasSuffix(".") { d.removeLast() }
        let labels = d.split(separator: ".", omittingEmptySubsequences: false)
        guard labels.count >= 2, d.utf8.count <= 253,
              labels.allSatisfy({ l in
                  !l.isEmpty && l.utf8.count <= 63 && !l.hasPrefix("-") && !l.hasSuffix("-")
                      && l.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D }
              })
        else { throw InvalidDomain(description: "\"\(text)\" is not a domain name (e.g. mail.example.com)") }
        return d
    }

    /// Generates an ed25519 and an rsa-2048 key for `domain`, seals their PKCS#8 PEM with the
    /// cluster secret and returns the domain ready for `TenantStore.addSendingDomain`.
    /// - Parameters:
    ///   - domain: the sending domain (normalised: lower-case, no trailing dot).
    ///   - tenant: the owning tenant's name.
    ///   - date: when the keys are made (selectors carry its UTC date; `createdAt`).
    ///   - clusterSecret: `cluster.secret`: the sealing key is derived from it
    ///     (`SecretBox(clusterSecret:)`).
    /// - Returns: the domain with its two keys, ed25519 first.
    /// - Throws: `InvalidDomain`; `DKIMKeyError` or `SecretBoxError` when OpenSSL fails.
    public static func generate(domain: String, tenant: String, date: Date, clusterSecret: String) throws -> SendingDomain {
        let name = try normalizedDomain(domain)
        let box = SecretBox(clusterSecret: clusterSecret)
        var keys: [DomainSigningKey] = []
        for algorithm in [DKIMAlgorithm.ed25519SHA256, .rsaSHA256] {
            let key = try DKIMPrivateKey.generate(algorithm, rsaBits: rsaBits)
            var pem = try key.pem()
            defer { for i in pem.indices { pem[i] = 0 } }
            keys.append(DomainSigningKey(selector: selector(for: algorithm, date: date), algorithm: algorithm.rawValue,
                                         sealedPrivateKey: try box.seal(pem), publicKey: try key.publicKeyBase64()))
        }
        return SendingDomain(domain: name, tenant: tenant, keys: keys, createdAt: date.timeIntervalSince1970)
    }

    /// Opens a stored key with the cluster secret (what a node does with `signing_keys`).
    /// - Throws: `SecretBoxError` (another secret, or altered), `DKIMKeyError` (not a key).
    public static func open(_ key: DomainSigningKey, clusterSecret: String) throws -> DKIMPrivateKey {
        var pem = try SecretBox(clusterSecret: clusterSecret).open(key.sealedPrivateKey)
        defer { for i in pem.indices { pem[i] = 0 } }
        return try DKIMPrivateKey(pem: pem)
    }
}
