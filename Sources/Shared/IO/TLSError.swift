import COpenSSL
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import HatoSupport

/// A TLS failure that is about TLS itself rather than the network.
public struct TLSError: Error, CustomStringConvertible, Sendable, Equatable {
    /// What failed.
    public enum Kind: Sendable, Equatable {
        /// A context could not be built: unreadable or invalid PEM, a key that does not match.
        case configuration
        /// The handshake failed: no common protocol or cipher, not TLS, an alert from the peer.
        case handshake
        /// The peer's certificate did not verify (chain or host name) and verification was required.
        case certificateVerification
    }

    /// The failure class.
    public let kind: Kind
    /// A human-readable reason, including OpenSSL's reason strings.
    public let message: String

    /// Creates an error.
    /// - Parameters:
    ///   - kind: the failure class.
    ///   - message: what happened.
    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    /// `TLS <kind>: <message>`.
    public var description: String {
        switch kind {
        case .configuration: return "TLS configuration: \(message)"
        case .handshake: return "TLS handshake failed: \(message)"
        case .certificateVerification: return "TLS certificate verification failed: \(message)"
        }
    }

    /// Drains this thread's OpenSSL error queue into one line of reason strings.
    static func drainOpenSSLErrors() -> String {
        var reasons: [String] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            if let reason = ERR_reason_error_string(code) {
                let text = String(cString: reason)
                if !reasons.contains(text) { reasons.append(text) }
            } else {
                reasons.append("error \(code)")
            }
        }
        return reasons.joined(separator: "; ")
    }
}

/// A TLS protocol version as OpenSSL names it (`TLSv1.2`, `TLSv1.3`).
public enum TLSProtocol {
    /// The lowest version Hato negotiates on either side.
    public static let minimum = "TLSv1.2"
}
