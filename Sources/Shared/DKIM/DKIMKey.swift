import COpenSSL
import Foundation
import HatoCrypto

/// A DKIM signing algorithm (RFC 6376 §3.3, RFC 8463 §3).
public enum DKIMAlgorithm: String, Sendable, Hashable, CaseIterable {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (RFC 6376 §3.3.1); keys of at least 1024 bits (2048 recommended).
    case rsaSHA256 = "rsa-sha256"
    /// PureEdDSA Ed25519 over the SHA-256 hash of the signed data (RFC 8463 §3).
    case ed25519SHA256 = "ed25519-sha256"

    /// The `k=` tag value of the key record (RFC 6376 §3.6.1, RFC 8463 §4).
    public var keyType: String {
        switch self {
        case .rsaSHA256: return "rsa"
        case .ed25519SHA256: return "ed25519"
        }
    }
}

/// Why a DKIM key could not be loaded, generated or used.
public struct DKIMKeyError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What went wrong, with OpenSSL's reason when there is one.
    public let message: String
    /// An error from its explanation.
    public init(_ message: String) { self.message = message }
    /// The explanation.
    public var description: String { message }

    /// An error with OpenSSL's queued reasons appended (the queue is emptied).
    static func openSSL(_ what: String) -> DKIMKeyError {
        var reasons: [String] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            var buf = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buf, buf.count)
            reasons.append(String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        return DKIMKeyError(reasons.isEmpty ? what : "\(what): \(reasons.joined(separator: "; "))")
    }
}

/// A DKIM private key (RSA or Ed25519) held in an OpenSSL `EVP_PKEY`, freed on deinit.
///
/// `@unchecked Sendable`: the key is immutable after creation and OpenSSL allows concurrent
/// signing with one `EVP_PKEY` from several threads (each signature uses its own `EVP_MD_CTX`).
public final class DKIMPrivateKey: @unchecked Sendable {
    private let pkey: OpaquePointer
    /// The algorithm this key signs with.
    public let algorithm: DKIMAlgorithm
    /// The key size in bits (256 for Ed25519).
    public let bits: Int

    private init(pkey: OpaquePointer) throws {
        self.pkey = pkey
        let id = EVP_PKEY_get_base_id(pkey)
        if id == EVP_PKEY_RSA {
            algorithm = .rsaSHA256
        } else if id == EVP_PKEY_ED25519 {
            algorithm = .ed25519SHA256
        } else {
            EVP_PKEY_free(pkey)
            throw DKIMKeyError("unsupported key type (DKIM keys are RSA or Ed25519)")
        }
        bits = Int(EVP_PKEY_get_bits(pkey))
    }

    deinit { EVP_PKEY_free(pkey) }

    /// Loads a PEM private key (`BEGIN PRIVATE KEY` PKCS#8 or `BEGIN RSA PRIVATE KEY`).
    /// - Parameter pem: the PEM text.
    /// - Throws: `DKIMKeyError` for unreadable PEM, an encrypted key, or an RSA key under 1024 bits
    ///   (RFC 8301 §3.2: verifiers reject them).
    public convenience init(pem: [UInt8]) throws {
        guard !pem.isEmpty, pem.count <= 1 << 20 else { throw DKIMKeyError("empty or oversized PEM key") }
        let key: OpaquePointer? = pem.withUnsafeBytes { raw -> OpaquePointer? in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            // No password callback: an encrypted key fails instead of prompting on a terminal.
            return PEM_read_bio_PrivateKey(bio, nil, { _, _, _, _ in 0 }, nil)
        }
        guard let key else { throw DKIMKeyError.openSSL("cannot read the PEM private key") }
        try self.init(pkey: key)
        if algorithm == .rsaSHA256 && bits < 1024 {
            throw DKIMKeyError("RSA key of \(bits) bits is too short (at least 1024, RFC 8301 §3.2)")
        }
    }

    /// Loads a PEM private key file.
    /// - Throws: `DKIMKeyError` when the file cannot be read or parsed.
    public convenience init(pemFile path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw DKIMKeyError("cannot read DKIM key file \(path)")
        }
        do {
            try self.init(pem: Array(data))
        } catch let e as DKIMKeyError {
            throw DKIMKeyError("\(path): \(e.message)")
        }
    }

    /// Generates a fresh key.
    /// - Parameters:
    ///   - algorithm: RSA or Ed25519.
    ///   - rsaBits: the RSA modulus size (1024…8192; default 2048); ignored for Ed25519.
    /// - Throws: `DKIMKeyError` when OpenSSL fails.
    public static func generate(_ algorithm: DKIMAlgorithm, rsaBits: Int = 2048) throws -> DKIMPrivateKey {
        let id = algorithm == .rsaSHA256 ? EVP_PKEY_RSA : EVP_PKEY_ED25519
        guard let ctx = EVP_PKEY_CTX_new_id(id, nil) else { throw DKIMKeyError.openSSL("EVP_PKEY_CTX_new_id") }
        defer { EVP_PKEY_CTX_free(ctx) }
        guard EVP_PKEY_keygen_init(ctx) == 1 else { throw DKIMKeyError.openSSL("EVP_PKEY_keygen_init") }
        if algorithm == .rsaSHA256 {
            guard (1024...8192).contains(rsaBits) else { throw DKIMKeyError("RSA key size \(rsaBits) out of range (1024…8192)") }
            guard EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, Int32(rsaBits)) == 1 else {
                throw DKIMKeyError.openSSL("EVP_PKEY_CTX_set_rsa_keygen_bits")
            }
        }
        var key: OpaquePointer? = nil
        guard EVP_PKEY_generate(ctx, &key) == 1, let key else { throw DKIMKeyError.openSSL("EVP_PKEY_generate") }
        return try DKIMPrivateKey(pkey: key)
    }

    /// The private key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), unencrypted.
    public func pem() throws -> [UInt8] {
        guard let bio = BIO_new(BIO_s_mem()) else { throw DKIMKeyError.openSSL("BIO_new") }
        defer { BIO_free(bio) }
        guard PEM_write_bio_PrivateKey(bio, pkey, nil, nil, 0, nil, nil) == 1 else {
            throw DKIMKeyError.openSSL("PEM_write_bio_PrivateKey")
        }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = BIO_read(bio, &buf, Int32(buf.count))
            if n <= 0 { break }
            out.append(contentsOf: buf[0..<Int(n)])
        }
        return out
    }

    /// The public key as the `p=` tag wants it: base64 of the DER SubjectPublicKeyInfo for RSA
    /// (RFC 6376 §3.6.1), base64 of the raw 32-octet key for Ed25519 (RFC 8463 §4).
    public func publicKeyBase64() throws -> String {
        switch algorithm {
        case .rsaSHA256:
            let length = i2d_PUBKEY(pkey, nil)
            guard length > 0 else { throw DKIMKeyError.openSSL("i2d_PUBKEY") }
            var der = [UInt8](repeating: 0, count: Int(length))
            let written = der.withUnsafeMutableBufferPointer { buf -> Int32 in
                var p: UnsafeMutablePointer<UInt8>? = buf.baseAddress
                return i2d_PUBKEY(pkey, &p)
            }
            guard written == length else { throw DKIMKeyError.openSSL("i2d_PUBKEY") }
            return Data(der).base64EncodedString()
        case .ed25519SHA256:
            var raw = [UInt8](repeating: 0, count: 32)
            var length = raw.count
            guard EVP_PKEY_get_raw_public_key(pkey, &raw, &length) == 1, length == 32 else {
                throw DKIMKeyError.openSSL("EVP_PKEY_get_raw_public_key")
            }
            return Data(raw).base64EncodedString()
        }
    }

    /// The DNS TXT record text for this key: `v=DKIM1; k=rsa; p=…` (RFC 6376 §3.6.1).
    public func dnsRecord() throws -> String {
        "v=DKIM1; k=\(algorithm.keyType); p=\(try publicKeyBase64())"
    }

    /// Signs `data` with the key's algorithm.
    ///
    /// RSA: RSASSA-PKCS1-v1_5 with SHA-256 over `data`. Ed25519: PureEdDSA over the SHA-256
    /// digest of `data` (RFC 8463 §3), with a nil digest and the one-shot `EVP_DigestSign`.
    /// - Returns: the signature octets.
    /// - Throws: `DKIMKeyError` when OpenSSL fails.
    public func sign(_ data: [UInt8]) throws -> [UInt8] {
        guard let ctx = EVP_MD_CTX_new() else { throw DKIMKeyError.openSSL("EVP_MD_CTX_new") }
        defer { EVP_MD_CTX_free(ctx) }
        let input: [UInt8]
        switch algorithm {
        case .rsaSHA256:
            guard EVP_DigestSignInit(ctx, nil, EVP_sha256(), nil, pkey) == 1 else { throw DKIMKeyError.openSSL("EVP_DigestSignInit") }
            input = data
        case .ed25519SHA256:
            guard EVP_DigestSignInit(ctx, nil, nil, nil, pkey) == 1 else { throw DKIMKeyError.openSSL("EVP_DigestSignInit") }
            input = Crypto.sha256(data)
        }
        var length = 0
        let sized = input.withUnsafeBufferPointer { EVP_DigestSign(ctx, nil, &length, $0.baseAddress, $0.count) }
        guard sized == 1, length > 0 else { throw DKIMKeyError.openSSL("EVP_DigestSign (size)") }
        var signature = [UInt8](repeating: 0, count: length)
        let signed = input.withUnsafeBufferPointer { EVP_DigestSign(ctx, &signature, &length, $0.baseAddress, $0.count) }
        guard signed == 1 else { throw DKIMKeyError.openSSL("EVP_DigestSign") }
        return Array(signature.prefix(length))
    }
}
