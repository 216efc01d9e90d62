import Foundation
import HatoCrypto

/// `signing_keys` (coordinator → node, feature `signing_keys`): the tenants' DKIM keys, the
/// whole set each time (issue 16). Sent right after `welcome` and whenever the set changes, on
/// the same ordered stream as the grants, so every grant that follows is signed with the set
/// sent before it. The node replaces its table atomically with each frame.
///
/// The private keys stay sealed (`SecretBox`, AES-256-GCM under a key derived from the cluster
/// secret): the node opens them with the secret it already has. Neither side logs them.
public struct SigningKeysMessage: Codable, Sendable, Equatable {
    /// The store's `tenantsVersion()` the set was read at (only ever grows for one store).
    public var version: Int64
    /// Every tenant key, by domain then selector.
    public var keys: [SealedSigningKey]
    /// The coordinator's term (absent from coordinators before terms).
    public var term: Int64? = nil

    /// A message from its parts.
    public init(version: Int64, keys: [SealedSigningKey], term: Int64? = nil) {
        self.version = version; self.keys = keys; self.term = term
    }

    /// Checks what JSON decoding cannot: names are DNS names, the algorithm is one DKIM knows,
    /// the sealed key is base64 of at least a `SecretBox` overhead.
    /// - Throws: `ClusterProtocolError.malformed` naming the entry (never its key octets).
    public func validate() throws {
        for k in keys {
            guard SealedSigningKey.isName(k.domain), k.domain.contains("."), SealedSigningKey.isName(k.selector) else {
                throw ClusterProtocolError.malformed("signing_keys: bad domain or selector in \(k)")
            }
            guard SealedSigningKey.algorithms.contains(k.algorithm) else {
                throw ClusterProtocolError.malformed("signing_keys: unknown algorithm \(k.algorithm) for \(k)")
            }
            guard let raw = Data(base64Encoded: k.sealedPrivateKey), raw.count > SecretBox.overhead else {
                throw ClusterProtocolError.malformed("signing_keys: sealed key of \(k) is not base64 of a sealed value")
            }
        }
    }
}

/// One tenant DKIM key as it travels: the private key sealed, base64.
public struct SealedSigningKey: Codable, Sendable, Equatable, CustomStringConvertible {
    /// The signing domain (`d=`), lower-case, no trailing dot.
    public var domain: String
    /// The selector (`s=`).
    public var selector: String
    /// `ed25519-sha256` or `rsa-sha256` (RFC 6376 §3.3, RFC 8463 §3).
    public var algorithm: String
    /// Base64 of the `SecretBox`-sealed PKCS#8 PEM.
    public var sealedPrivateKey: String

    /// A key from its parts.
    public init(domain: String, selector: String, algorithm: String, sealedPrivateKey: String) {
        self.domain = domain; self.selector = selector; self.algorithm = algorithm; self.sealedPrivateKey = sealedPrivateKey
    }

    /// `domain/selector`: what logs may show of a key.
    public var description: String { "\(domain)/\(selector)" }

    /// The algorithms a key may have.
    static let algorithms: Set<String> = ["ed25519-sha256", "rsa-sha256"]

    /// 1–253 octets of letters, digits, `-`, `_`, `.` (DNS labels as DKIM uses them).
    static func isName(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 253 && !s.hasPrefix(".") && !s.hasSuffix(".") && !s.contains("..")
            && s.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D || $0 == 0x5F || $0 == 0x2E }
    }
}
