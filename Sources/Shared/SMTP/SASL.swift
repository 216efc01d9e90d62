import COpenSSL
import Foundation
import HatoCrypto

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
