import ClusterProtocol
import Foundation
import HatoConfig
import HatoCrypto
import HatoDelivery
import HatoSupport

/// Errors of operator actions, rendered by the admin API.
public enum AdminError: Error, CustomStringConvertible, Sendable {
    /// No `nodes[]` entry has this id.
    case unknownNode(String)
    /// The coordinator did not get to the request in time (its scheduler thread is busy or stuck).
    case busy(String)
    public var description: String {
        switch self {
        case .unknownNode(let n): return "unknown node \(n)"
        case .busy(let what): return "the coordinator did not answer in time: \(what)"
        }
    }
}
