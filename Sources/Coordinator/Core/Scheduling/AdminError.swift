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
    /// This coordinator is a standby (several coordinators): the leader, when known, acts.
    case notLeader(String?)
    public var description: String {
        switch self {
        case .notLeader(let leader): return "this coordinator is a standby; the leader is \(leader ?? "not known right now (an election is under way)")"
        case .unknownNode(let n): return "unknown node \(n)"
        case .busy(let what): return "the coordinator did not answer in time: \(what)"
        }
    }
}
