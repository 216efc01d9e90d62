#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import HatoSupport

/// An error from a socket system call, with the call's name and `errno`.
public struct SocketError: Error, CustomStringConvertible, Sendable, Equatable {
    /// What kind of failure this is.
    public enum Kind: Sendable, Equatable {
        /// A read or write did not complete within the socket's timeout.
        case timeout
        /// The peer closed the connection (EOF where more bytes were needed, or EPIPE/ECONNRESET).
        case closed
        /// Any other system call failure.
        case system
        /// An address string could not be parsed as a numeric IPv4/IPv6 address.
        case badAddress
    }
    /// The failure class.
    public let kind: Kind
    /// The system call or operation that failed, e.g. `connect`.
    public let operation: String
    /// `errno` at the time of the failure (0 when not applicable).
    public let code: Int32

    /// An error of `kind` from `operation`, with `errno` value `code` (0 when none).
    public init(_ kind: Kind, _ operation: String, code: Int32 = 0) {
        self.kind = kind; self.operation = operation; self.code = code
    }

    /// `operation: reason`.
    public var description: String {
        switch kind {
        case .timeout: return "\(operation): timed out"
        case .closed: return "\(operation): connection closed by peer"
        case .badAddress: return "\(operation): not a numeric IP address"
        case .system: return "\(operation): \(String(validatingCString: strerror(code)) ?? "errno \(code)")"
        }
    }
}

extension SocketError {
    /// The socket failure for a failed system call: a reset, a broken pipe or a connection
    /// that is gone (`ECONNRESET`, `EPIPE`, `ENOTCONN`, `ECONNABORTED`, `ESHUTDOWN`,
    /// `ECONNREFUSED`) is `.closed`; anything else `.system` with the call's errno.
    /// - Parameters:
    ///   - error: the wrapper's error.
    ///   - operation: what failed, e.g. `read` or `connect 127.0.0.1:25`.
    public init(_ error: SystemCallError, operation: String) {
        switch error.code {
        case ECONNRESET, EPIPE, ENOTCONN, ECONNABORTED, ESHUTDOWN, ECONNREFUSED:
            self.init(.closed, operation, code: error.code)
        default:
            self.init(.system, operation, code: error.code)
        }
    }

    /// Whether this is the process or system running out of descriptors or memory (`EMFILE`,
    /// `ENFILE`, `ENOBUFS`, `ENOMEM`): back off and retry.
    public var isResourceExhaustion: Bool {
        kind == .system && (code == EMFILE || code == ENFILE || code == ENOBUFS || code == ENOMEM)
    }
}
