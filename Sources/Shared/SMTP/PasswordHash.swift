import COpenSSL
import Foundation
import HatoCrypto

/// Why a password hash string was refused.
public struct PasswordHashError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What is wrong, e.g. `iterations must be between 10000 and 10000000`.
    public let message: String

    init(_ message: String) { self.message = message }

    public var description: String { message }
}

/// A PBKDF2-HMAC-SHA256 password hash (RFC 8018 §5.2) in passlib's self-describing form:
///
///     $pbkdf2-sha256$<iterations>$<salt>$<derived key>
///
/// Salt and key are "adapted base64" (standard base64 with `.` instead of `+`, no padding),
/// so hashes made by Python's `passlib.hash.pbkdf2_sha256` are accepted too; standard base64
/// (`+`, with or without `=`) is also read. Computed with OpenSSL's `PKCS5_PBKDF2_HMAC`.
public struct PasswordHash: Sendable, Equatable, CustomStringConvertible {
    /// PBKDF2 iteration count.
    public let iterations: Int
    /// The salt octets (at least 8).
    public let salt: [UInt8]
    /// The derived key (16…64 octets; 32 when made here).
    public let derivedKey: [UInt8]

    /// Iterations used by `make` by default: 600,000 (OWASP's 2023 figure for
    /// PBKDF2-HMAC-SHA256; about 0.2 s of one core here, paid once per successful login
    /// thanks to the submission server's credential cache).
    public static let defaultIterations = 600_000
    /// The fewest iterations a configured hash may use.
    public static let minimumIterations = 10_000
    /// The most iterations a configured hash may use (bounds the CPU one AUTH can cost).
    public static let maximumIterations = 10_000_000
    private static let prefix = "$pbkdf2-sha256$"

    /// Parses a hash string.
    /// - Parameter text: `$pbkdf2-sha256$<iterations>$<salt>$<key>`.
    /// - Throws: `PasswordHashError` naming the part that is wrong.
    public init(parsing text: String) throws(PasswordHashError) {
        guard text.hasPrefix(Self.prefix) else {
            throw PasswordHashError("expected $pbkdf2-sha256$<iterations>$<salt>$<hash> (make one with `hato-coordinator hash-password`)")
        }
        let parts = text.dropFirst(Self.prefix.count).split(separator: "$", omittingEmptySubsequences: false)
        guard parts.count == 3 else { throw PasswordHashError("expected 3 fields after $pbkdf2-sha256$, found \(parts.count)") }
        guard let iterations = Int(parts[0]), String(iterations) == parts[0] else {
            throw PasswordHashError("iterations \"\(parts[0])\" is not a number")
        }
        guard iterations >= Self.minimumIterations, iterations <= Self.maximumIterations else {
            throw PasswordHashError("iterations must be between \(Self.minimumIterations) and \(Self.maximumIterations) (found \(iterations))")
        }
        guard let salt = Self.decodeBase64(String(parts[1])), salt.count >= 8, salt.count <= 1024 else {
            throw PasswordHashError("salt must be base64 of 8 to 1024 octets")
        }
        guard let key = Self.decodeBase64(String(parts[2])), key.count >= 16, key.count <= 64 else {
            throw PasswordHashError("hash must be base64 of 16 to 64 octets")
        }
        self.iterations = iterations
        self.salt = salt
        self.derivedKey = key
    }

    private init(iterations: Int, salt: [UInt8], derivedKey: [UInt8]) {
        self.iterations = iterations
        self.salt = salt
        self.derivedKey = derivedKey
    }

    /// Hashes a password with a fresh 16-octet random salt.
    /// - Parameters:
    ///   - password: the password octets (UTF-8).
    ///   - iterations: PBKDF2 iterations (default `defaultIterations`).
    ///   - salt: a fixed salt (tests); nil draws 16 random octets.
    /// - Returns: the hash (32-octet key).
    public static func make(password: [UInt8], iterations: Int = defaultIterations, salt: [UInt8]? = nil) -> PasswordHash {
        let salt = salt ?? Crypto.randomBytes(16)
        return PasswordHash(iterations: iterations, salt: salt,
                            derivedKey: pbkdf2(password: password, salt: salt, iterations: iterations, keyLength: 32))
    }

    /// Whether `password` matches, compared in constant time.
    /// - Parameter password: the candidate octets.
    /// - Returns: true on a match. Costs `iterations` HMAC rounds whatever the outcome.
    public func verify(_ password: [UInt8]) -> Bool {
        let candidate = Self.pbkdf2(password: password, salt: salt, iterations: iterations, keyLength: derivedKey.count)
        return Crypto.constantTimeEquals(candidate, derivedKey)
    }

    /// The `$pbkdf2-sha256$…` string.
    public var encoded: String {
        "\(Self.prefix)\(iterations)$\(Self.encodeBase64(salt))$\(Self.encodeBase64(derivedKey))"
    }

    /// The same as `encoded` (a hash, not a secret; still, do not log it).
    public var description: String { encoded }

    /// PBKDF2-HMAC-SHA256 through OpenSSL (`PKCS5_PBKDF2_HMAC`).
    static func pbkdf2(password: [UInt8], salt: [UInt8], iterations: Int, keyLength: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: keyLength)
        let passwordChars = password.map { CChar(bitPattern: $0) }
        let ok = passwordChars.withUnsafeBufferPointer { p in
            salt.withUnsafeBufferPointer { s in
                PKCS5_PBKDF2_HMAC(p.baseAddress, Int32(p.count), s.baseAddress, Int32(s.count), Int32(iterations),
                                  EVP_sha256(), Int32(keyLength), &out)
            }
        }
        // PKCS5_PBKDF2_HMAC fails only on allocation failure; an all-zero key then never matches
        // a stored one made by a successful call.
        if ok != 1 { return [UInt8](repeating: 0, count: keyLength) }
        return out
    }

    /// Adapted base64 (passlib): `+` → `.`, no padding.
    static func encodeBase64(_ bytes: [UInt8]) -> String {
        var text = Data(bytes).base64EncodedString()
        while text.hasSuffix("=") { text.removeLast() }
        return text.replacingOccurrences(of: "+", with: ".")
    }

    /// Reads adapted or standard base64, padded or not; nil when invalid.
    static func decodeBase64(_ text: String) -> [UInt8]? {
        guard !text.isEmpty else { return nil }
        var standard = text.replacingOccurrences(of: ".", with: "+")
        guard standard.utf8.allSatisfy({ SMTPAddressSyntax.isLetDig($0) || $0 == 0x2B || $0 == 0x2F || $0 == 0x3D }) else { return nil }
        if !standard.hasSuffix("=") {
            while standard.utf8.count % 4 != 0 { standard += "=" }
        }
        return Data(base64Encoded: standard).map { Array($0) }
    }
}
