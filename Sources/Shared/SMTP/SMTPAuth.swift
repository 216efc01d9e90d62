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

/// Credentials a client presented with AUTH (RFC 4954), for the driver to check.
///
/// `description` never shows the password.
public struct SASLCredentials: Sendable, Equatable, CustomStringConvertible {
    /// `PLAIN` (RFC 4616) or `LOGIN`.
    public let mechanism: String
    /// PLAIN's authorization identity when one was given (RFC 4616 §2); nil when empty.
    /// The session only lets it through when it equals `username`.
    public let authorizationID: String?
    /// The authentication identity (user name).
    public let username: String
    /// The password octets.
    public let password: [UInt8]

    /// Creates credentials.
    /// - Parameters: see the properties.
    public init(mechanism: String, authorizationID: String?, username: String, password: [UInt8]) {
        self.mechanism = mechanism
        self.authorizationID = authorizationID
        self.username = username
        self.password = password
    }

    /// `PLAIN user=<name> password=<redacted>`.
    public var description: String { "\(mechanism) user=\(username) password=<redacted>" }
}

/// The driver's verdict on `SASLCredentials`.
public enum AuthenticationResult: Sendable, Equatable {
    /// The credentials are valid for this user: `235 2.7.0` (RFC 4954 §6).
    case succeeded(user: String)
    /// Wrong user name or password: `535 5.7.8` (RFC 4954 §6).
    case failed
    /// The check could not be made: `454 4.7.0` (RFC 4954 §6).
    case temporaryFailure
    /// Too many failures from this client address recently: `454 4.7.0`, no check made.
    case rateLimited
}

/// SASL message codecs for AUTH PLAIN (RFC 4616) and LOGIN.
public enum SASL {
    /// The longest decoded identity or password, in octets (RFC 4616 §2: 255).
    public static let maxFieldLength = 255

    /// Strict base64 (RFC 4648 §4, padded, no whitespace) as used by RFC 4954 §4.
    /// - Parameter text: the response line without CRLF.
    /// - Returns: the octets (empty for an empty line), or nil when `text` is not base64.
    public static func decodeBase64(_ text: String) -> [UInt8]? {
        if text.isEmpty { return [] }
        guard text.utf8.count % 4 == 0,
              text.utf8.allSatisfy({ SMTPAddressSyntax.isLetDig($0) || $0 == 0x2B || $0 == 0x2F || $0 == 0x3D }) else { return nil }
        return Data(base64Encoded: text).map { Array($0) }
    }

    /// Decodes a PLAIN message `[authzid] NUL authcid NUL passwd` (RFC 4616 §2).
    /// - Parameter message: the decoded client response.
    /// - Returns: the credentials, or nil when the message is malformed (not exactly two NULs,
    ///   an empty user or password, a field over 255 octets, or not UTF-8).
    public static func decodePlain(_ message: [UInt8]) -> SASLCredentials? {
        let fields = message.split(separator: 0, omittingEmptySubsequences: false)
        guard fields.count == 3, !fields[1].isEmpty, !fields[2].isEmpty,
              fields.allSatisfy({ $0.count <= maxFieldLength }),
              let authzid = String(validating: fields[0], as: UTF8.self),
              let authcid = String(validating: fields[1], as: UTF8.self),
              String(validating: fields[2], as: UTF8.self) != nil else { return nil }
        return SASLCredentials(mechanism: "PLAIN", authorizationID: authzid.isEmpty ? nil : authzid,
                               username: authcid, password: Array(fields[2]))
    }
}

/// Failed AUTH attempts per client address in a sliding window: once `maxFailures` are
/// recorded within `window`, further attempts from that address are refused without a
/// password check until the oldest failure ages out. A success does not clear the record
/// (one valid account must not unlock guessing at others).
///
/// Memory: at most `maxFailures` timestamps per address and `maxClients` addresses; beyond
/// that, expired entries are pruned and then the least recently failing addresses dropped.
public struct AuthFailureLimiter: Sendable {
    /// Failures allowed within `window` (≥ 1).
    public let maxFailures: Int
    /// The sliding window in seconds.
    public let window: TimeInterval
    /// The most client addresses tracked.
    public let maxClients: Int
    private var failures: [String: [Date]] = [:]

    /// Creates a limiter.
    /// - Parameters:
    ///   - maxFailures: failures per address within `window` before refusing.
    ///   - window: seconds.
    ///   - maxClients: addresses tracked at most (default 100,000).
    public init(maxFailures: Int, window: TimeInterval, maxClients: Int = 100_000) {
        self.maxFailures = max(1, maxFailures)
        self.window = window
        self.maxClients = max(1, maxClients)
    }

    /// Whether `client` has used up its failures.
    /// - Parameters:
    ///   - client: the numeric client address.
    ///   - now: the current time.
    /// - Returns: true when `maxFailures` failures fall within the window before `now`.
    public func isBlocked(_ client: String, now: Date) -> Bool {
        guard let list = failures[client] else { return false }
        return list.filter { now.timeIntervalSince($0) < window }.count >= maxFailures
    }

    /// Records one failed attempt.
    /// - Parameters:
    ///   - client: the numeric client address.
    ///   - now: the current time.
    public mutating func recordFailure(_ client: String, now: Date) {
        var list = (failures[client] ?? []).filter { now.timeIntervalSince($0) < window }
        list.append(now)
        if list.count > maxFailures { list.removeFirst(list.count - maxFailures) }
        failures[client] = list
        if failures.count > maxClients { prune(now: now) }
    }

    /// Addresses currently tracked.
    public var trackedClients: Int { failures.count }

    private mutating func prune(now: Date) {
        failures = failures.filter { entry in entry.value.contains { now.timeIntervalSince($0) < window } }
        if failures.count > maxClients {
            let byAge = failures.sorted { ($0.value.last ?? .distantPast) < ($1.value.last ?? .distantPast) }
            for (client, _) in byAge.prefix(failures.count - maxClients) { failures[client] = nil }
        }
    }
}
