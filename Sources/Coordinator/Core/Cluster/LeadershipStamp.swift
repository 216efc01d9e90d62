import ClusterProtocol
import Foundation
import HatoConfig
import HatoCrypto
import HatoDelivery
import HatoSupport

/// The leadership a scheduler acts under: stamped on every welcome, grant, assignment and
/// revocation so that nodes can refuse a stale leader (`TermFence`).
public struct LeadershipStamp: Sendable, Equatable {
    /// The term (≥ 1).
    public var term: Int64
    /// The store's identity (terms are compared within one store).
    public var storeID: String
    /// This coordinator's id.
    public var coordinatorID: String
    /// - Parameters:
    ///   - term: the term (≥ 1).
    ///   - storeID: the store's identity.
    ///   - coordinatorID: this coordinator's id.
    public init(term: Int64, storeID: String, coordinatorID: String) {
        self.term = term; self.storeID = storeID; self.coordinatorID = coordinatorID
    }
}
