import ClusterProtocol
import Foundation
import HatoCrypto
import HatoDKIM
import HatoSupport

/// The tenants' DKIM keys on a node (issue 16), as the coordinator last sent them
/// (`signing_keys`), opened and ready to sign. The whole table is replaced at once by each
/// frame; a delivery sees either the old or the new table, never a mix.
///
/// For a domain with tenant keys those keys sign, all of them (ed25519 and rsa: dual signing,
/// RFC 8463 §1), instead of any cluster.yml `dkim:` key of the same domain. The table outlives
/// delivery engines (a reload rebuilds the engine, the tenant keys stay).
///
/// Key material is never logged: logs name `domain/selector` and counts only.
public final class TenantSigningKeys: Sendable {
    private struct Table: Sendable {
        var version: Int64? = nil
        var byDomain: [String: [DKIMSigner]] = [:]
        /// The sealed form of each opened key (`domain/selector` → base64), to skip re-opening
        /// unchanged keys when a new set arrives.
        var sealed: [String: String] = [:]
    }

    /// What a replacement did.
    public struct Update: Sendable, Equatable {
        /// The set's version.
        public var version: Int64
        /// Domains with keys now.
        public var domains: Int
        /// Keys in use now.
        public var keys: Int
        /// `domain/selector` of keys that did not open (another secret, altered, not a key):
        /// their domain signs with its other keys.
        public var failed: [String]
    }

    private let table = Locked(Table())

    /// An empty table.
    public init() {}

    /// Whether no tenant domain has keys (then messages need no look at their From).
    public var isEmpty: Bool { table.withLock { $0.byDomain.isEmpty } }

    /// The version of the set in use, nil before the first `signing_keys`.
    public var version: Int64? { table.withLock { $0.version } }

    /// The signers of exactly `domain` (lower-case, no trailing dot); empty when it has none.
    public func signers(forDomain domain: String) -> [DKIMSigner] {
        table.withLock { $0.byDomain[domain] ?? [] }
    }

    /// Every `domain/selector` in use, sorted (for tests and status; no key material).
    public var keyNames: [String] {
        table.withLock { $0.byDomain.values.flatMap { $0.map { "\($0.domain)/\($0.selector)" } }.sorted() }
    }

    /// Opens every key of `message` with the cluster secret and replaces the table with them.
    /// A key that does not open is left out (named in `Update.failed`); the rest still apply.
    /// - Parameters:
    ///   - message: the coordinator's set.
    ///   - clusterSecret: `cluster.secret`, which sealed the keys (`SecretBox(clusterSecret:)`).
    /// - Returns: what is in use now.
    @discardableResult
    public func replace(with message: SigningKeysMessage, clusterSecret: String) -> Update {
        let old = table.withLock { $0 }
        let box = SecretBox(clusterSecret: clusterSecret)
        var reusable: [String: DKIMSigner] = [:]
        for signers in old.byDomain.values { for s in signers { reusable["\(s.domain)/\(s.selector)"] = s } }
        var next = Table(version: message.version)
        var failed: [String] = []
        for k in message.keys {
            let name = "\(k.domain.lowercased())/\(k.selector)"
            let signer: DKIMSigner
            if let s = reusable[name], old.sealed[name] == k.sealedPrivateKey, s.algorithm.rawValue == k.algorithm {
                signer = s
            } else {
                do {
                    guard let sealed = Data(base64Encoded: k.sealedPrivateKey) else { throw SecretBoxError.tooShort(0) }
                    var pem = try box.open(Array(sealed))
                    defer { for i in pem.indices { pem[i] = 0 } }
                    let key = try DKIMPrivateKey(pem: pem)
                    guard key.algorithm.rawValue == k.algorithm else { throw DKIMKeyError("the key is not \(k.algorithm)") }
                    signer = DKIMSigner(domain: k.domain, selector: k.selector, key: key)
                } catch {
                    failed.append(name)
                    continue
                }
            }
            next.byDomain[signer.domain, default: []].append(signer)
            next.sealed[name] = k.sealedPrivateKey
        }
        let update = Update(version: message.version, domains: next.byDomain.count, keys: next.byDomain.values.map(\.count).reduce(0, +), failed: failed)
        table.withLock { $0 = next }
        return update
    }
}
