import Foundation
import HatoCrypto
import HatoIO
import HatoSupport
import SMTPCore

/// A cluster protocol violation; it ends that one connection.
public enum ClusterProtocolError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A frame whose header or payload does not match its type.
    case malformed(String)
    /// A message that is not allowed in the current state (e.g. a lease request before `hello`).
    case unexpected(String)
    /// The peer speaks no version we do.
    case versionMismatch(ours: Int, theirs: [Int])
    /// The peer's HMAC proof is wrong (different cluster secret).
    case authenticationFailed
    /// The peer refused us.
    case rejected(String, retryable: Bool)
    /// A coordinator spoke under a term older than one already seen (a stale leader).
    case staleTerm(TermFence.Refusal)
    /// A standby coordinator named the leader to connect to instead.
    case redirected(RedirectMessage)

    public var description: String {
        switch self {
        case .malformed(let s): return "malformed frame: \(s)"
        case .unexpected(let s): return "unexpected message: \(s)"
        case .versionMismatch(let o, let t): return "protocol version mismatch: we speak \(o), peer speaks \(t)"
        case .authenticationFailed: return "authentication failed: cluster secret differs"
        case .rejected(let s, _): return "rejected by peer: \(s)"
        case .staleTerm(let r): return "refused the coordinator: \(r)"
        case .redirected(let r): return "redirected to the leader \(r.leader ?? "(unknown)") at \(r.address ?? "(unknown)") (term \(r.term))"
        }
    }
}
