import COpenSSL
import Foundation

/// Why a secret could not be sealed or opened.
///
/// Opening never says more than "it does not open": a wrong key and tampered octets look the
/// same to AES-GCM (the tag does not match), and telling them apart would help an attacker.
public struct SecretBoxError: Error, Sendable, Equatable, CustomStringConvertible {
    private enum Kind: Sendable, Equatable {
        case badKeyLength(Int)
        case unsupportedVersion(UInt8)
        case tooShort(Int)
        case authenticationFailed
        case openSSL(String)
    }

    private let kind: Kind

    /// The key is not 32 octets (AES-256).
    public static func badKeyLength(_ n: Int) -> SecretBoxError { SecretBoxError(kind: .badKeyLength(n)) }
    /// The sealed octets start with a version this build does not know.
    public static func unsupportedVersion(_ v: UInt8) -> SecretBoxError { SecretBoxError(kind: .unsupportedVersion(v)) }
    /// The sealed octets are shorter than version, nonce and tag (`n` octets).
    public static func tooShort(_ n: Int) -> SecretBoxError { SecretBoxError(kind: .tooShort(n)) }
    /// The tag does not match: another key (another cluster secret), or altered octets.
    public static let authenticationFailed = SecretBoxError(kind: .authenticationFailed)
    /// OpenSSL failed (`what` names the call).
    static func openSSL(_ what: String) -> SecretBoxError { SecretBoxError(kind: .openSSL(what)) }

    /// A sentence for the operator (never any key or plaintext octets).
    public var description: String {
        switch kind {
        case .badKeyLength(let n): return "the sealing key must be 32 octets (got \(n))"
        case .unsupportedVersion(let v): return "sealed data of unknown version \(v)"
        case .tooShort(let n): return "sealed data too short (\(n) octets)"
        case .authenticationFailed:
            return "sealed data does not open: sealed with another key (a different cluster secret?) or altered"
        case .openSSL(let what): return "OpenSSL failed: \(what)"
        }
    }
}

/// Authenticated encryption of small secrets (DKIM private keys, webhook secrets) at rest and on
/// the cluster link: AES-256-GCM (NIST SP 800-38D) through OpenSSL's EVP interface.
///
/// Sealed format: `version (1 octet, 1) | nonce (12 octets, random) | ciphertext | tag (16 octets)`.
/// The version octet is authenticated too (it is the GCM additional data), so it cannot be
/// changed without the tag failing. A random 96-bit nonce per seal keeps the nonce-reuse
/// probability negligible for far more than the secrets a cluster will ever seal with one key.
public struct SecretBox: Sendable {
    /// The format version written in the first octet.
    public static let version: UInt8 = 1
    /// Octets of the nonce (the GCM IV).
    public static let nonceLength = 12
    /// Octets of the authentication tag.
    public static let tagLength = 16
    /// Octets a sealed value has beyond its plaintext.
    public static let overhead = 1 + nonceLength + tagLength
    /// The HKDF `info` of the key that seals tenants' DKIM keys.
    public static let dkimKeyPurpose = "hato dkim-key-seal v1"

    private let key: [UInt8]

    /// A box over a raw 256-bit key.
    /// - Throws: `SecretBoxError.badKeyLength` unless `key` is 32 octets.
    public init(key: [UInt8]) throws {
        guard key.count == 32 else { throw SecretBoxError.badKeyLength(key.count) }
        self.key = key
    }

    /// A box whose key is derived from the cluster secret (`cluster.secret`) for one purpose:
    /// HKDF-SHA256 (RFC 5869) with salt `hato`, the secret's UTF-8 octets as input keying
    /// material and `purpose` as info, 32 octets of output. Every host with the same secret
    /// derives the same key; another purpose gives an unrelated key.
    /// - Parameters:
    ///   - clusterSecret: the shared cluster secret.
    ///   - purpose: the HKDF info string; default `dkimKeyPurpose`.
    public init(clusterSecret: String, purpose: String = SecretBox.dkimKeyPurpose) {
        key = SecretBox.hkdfSHA256(ikm: Array(clusterSecret.utf8), salt: Array("hato".utf8), info: Array(purpose.utf8))
    }

    /// HKDF-SHA256 (RFC 5869 §2.2, §2.3) with one block of output: 32 octets.
    static func hkdfSHA256(ikm: [UInt8], salt: [UInt8], info: [UInt8]) -> [UInt8] {
        let prk = Crypto.hmacSHA256(key: salt, data: ikm)
        return Crypto.hmacSHA256(key: prk, data: info + [0x01])
    }

    /// Seals `plaintext` under a fresh random nonce.
    /// - Returns: `version | nonce | ciphertext | tag`, `overhead` octets longer than `plaintext`.
    /// - Throws: `SecretBoxError.openSSL` when OpenSSL fails (it does not in practice).
    public func seal(_ plaintext: [UInt8]) throws -> [UInt8] {
        let nonce = Crypto.randomBytes(SecretBox.nonceLength)
        let context = try CipherContext()
        try context.initialise(encrypt: true, key: key, nonce: nonce)
        try context.additionalData([SecretBox.version])
        let ciphertext = try context.update(plaintext)
        try context.finish()
        let tag = try context.tag()
        return [SecretBox.version] + nonce + ciphertext + tag
    }

    /// Opens what `seal` made with the same key.
    /// - Returns: the plaintext.
    /// - Throws: `SecretBoxError.tooShort`, `.unsupportedVersion`, or `.authenticationFailed`
    ///   (another key, or any octet changed); nothing of the plaintext is returned then.
    public func open(_ sealed: [UInt8]) throws -> [UInt8] {
        guard sealed.count >= SecretBox.overhead else { throw SecretBoxError.tooShort(sealed.count) }
        guard sealed[0] == SecretBox.version else { throw SecretBoxError.unsupportedVersion(sealed[0]) }
        let nonce = Array(sealed[1...SecretBox.nonceLength])
        let body = Array(sealed[(1 + SecretBox.nonceLength)..<(sealed.count - SecretBox.tagLength)])
        let tag = Array(sealed.suffix(SecretBox.tagLength))
        let context = try CipherContext()
        try context.initialise(encrypt: false, key: key, nonce: nonce)
        try context.additionalData([SecretBox.version])
        var plaintext = try context.update(body)
        try context.setTag(tag)
        do { try context.finish() } catch {
            // Wipe what was decrypted before the tag said it is not ours.
            for i in plaintext.indices { plaintext[i] = 0 }
            throw SecretBoxError.authenticationFailed
        }
        return plaintext
    }
}

/// One OpenSSL `EVP_CIPHER_CTX` for AES-256-GCM, freed on deinit. Used by one thread for one
/// seal or open, never shared (so it is not `Sendable`).
private final class CipherContext {
    private let ctx: OpaquePointer
    private var encrypting = true

    init() throws {
        guard let c = EVP_CIPHER_CTX_new() else { throw SecretBoxError.openSSL("EVP_CIPHER_CTX_new") }
        ctx = c
    }

    deinit { EVP_CIPHER_CTX_free(ctx) }

    func initialise(encrypt: Bool, key: [UInt8], nonce: [UInt8]) throws {
        encrypting = encrypt
        let ok1 = encrypt ? EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), nil, nil, nil) : EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), nil, nil, nil)
        guard ok1 == 1 else { throw SecretBoxError.openSSL("cipher init") }
        guard EVP_CIPHER_CTX_ctrl(ctx, hato_EVP_CTRL_GCM_SET_IVLEN(), Int32(nonce.count), nil) == 1 else {
            throw SecretBoxError.openSSL("set IV length")
        }
        let ok2 = encrypt ? EVP_EncryptInit_ex(ctx, nil, nil, key, nonce) : EVP_DecryptInit_ex(ctx, nil, nil, key, nonce)
        guard ok2 == 1 else { throw SecretBoxError.openSSL("key and IV") }
    }

    func additionalData(_ aad: [UInt8]) throws {
        var n: Int32 = 0
        let ok = aad.withUnsafeBufferPointer { p in
            encrypting ? EVP_EncryptUpdate(ctx, nil, &n, p.baseAddress, Int32(p.count)) : EVP_DecryptUpdate(ctx, nil, &n, p.baseAddress, Int32(p.count))
        }
        guard ok == 1 else { throw SecretBoxError.openSSL("additional data") }
    }

    func update(_ input: [UInt8]) throws -> [UInt8] {
        guard !input.isEmpty else { return [] }
        var out = [UInt8](repeating: 0, count: input.count + 16)
        var n: Int32 = 0
        let ok = input.withUnsafeBufferPointer { p in
            encrypting ? EVP_EncryptUpdate(ctx, &out, &n, p.baseAddress, Int32(p.count)) : EVP_DecryptUpdate(ctx, &out, &n, p.baseAddress, Int32(p.count))
        }
        guard ok == 1 else { throw SecretBoxError.openSSL("update") }
        return Array(out.prefix(Int(n)))
    }

    /// Ends the operation; when decrypting, this is where a wrong tag fails.
    func finish() throws {
        var out = [UInt8](repeating: 0, count: 16)
        var n: Int32 = 0
        let ok = encrypting ? EVP_EncryptFinal_ex(ctx, &out, &n) : EVP_DecryptFinal_ex(ctx, &out, &n)
        guard ok == 1 else { throw SecretBoxError.authenticationFailed }
    }

    func tag() throws -> [UInt8] {
        var tag = [UInt8](repeating: 0, count: SecretBox.tagLength)
        guard EVP_CIPHER_CTX_ctrl(ctx, hato_EVP_CTRL_GCM_GET_TAG(), Int32(tag.count), &tag) == 1 else { throw SecretBoxError.openSSL("get tag") }
        return tag
    }

    func setTag(_ tag: [UInt8]) throws {
        var t = tag
        guard EVP_CIPHER_CTX_ctrl(ctx, hato_EVP_CTRL_GCM_SET_TAG(), Int32(t.count), &t) == 1 else { throw SecretBoxError.openSSL("set tag") }
    }
}
