/// A node's memory of the coordinators' leadership terms: the highest term it has seen per store,
/// so that a stale leader — one that was paused or partitioned while another took over — can
/// never grant, assign or revoke again (issue 15 fencing; the store fences its writes likewise).
///
/// Terms are compared only within one store (`storeID`): a coordinator with a new, empty store
/// starts again at term 1 and is accepted. Frames from coordinators that send no term (before
/// terms existed) are accepted and change nothing. A pure value; the node keeps it for the
/// life of its process.
public struct TermFence: Sendable, Equatable {
    /// Why a welcome or frame was refused.
    public struct Refusal: Error, Sendable, Equatable, CustomStringConvertible {
        /// The term the coordinator sent.
        public let term: Int64
        /// The highest term the node has seen of that store.
        public let highest: Int64
        /// `term 3 is older than term 4 already seen: a stale leader`.
        public var description: String { "term \(term) is older than term \(highest) already seen: a stale leader" }
    }

    /// The store of the highest term seen, nil before the first term.
    public private(set) var storeID: String? = nil
    /// The highest term seen of `storeID` (0 before the first).
    public private(set) var highest: Int64 = 0

    /// A node that has seen no term yet.
    public init() {}

    /// Checks a coordinator's `welcome` and, when accepted, raises the highest term seen.
    /// - Parameters:
    ///   - term: the welcome's term, nil from a coordinator without terms.
    ///   - storeID: the welcome's store identity, nil when absent.
    /// - Returns: the term the connection runs under (nil without terms).
    /// - Throws: `Refusal` when the term is below the highest seen of the same store.
    @discardableResult
    public mutating func admitWelcome(term: Int64?, storeID: String?) throws -> Int64? {
        guard let term else { return nil }
        if let storeID, storeID != self.storeID {
            self.storeID = storeID
            highest = term
            return term
        }
        guard term >= highest else { throw Refusal(term: term, highest: highest) }
        highest = term
        return term
    }

    /// Checks a grant, assignment or revocation that arrived on a connection welcomed under
    /// `connectionTerm`.
    /// - Parameters:
    ///   - term: the frame's term, nil from a coordinator without terms.
    ///   - connectionTerm: the term the connection's welcome carried.
    /// - Throws: `Refusal` when the frame's term is not the connection's (a frame without a term
    ///   on a connection welcomed with one included), or another connection has since seen a
    ///   higher term of the store.
    public func admitFrame(term: Int64?, connectionTerm: Int64?) throws {
        guard let term else {
            // Only a connection welcomed without a term may send frames without one.
            if let connectionTerm { throw Refusal(term: 0, highest: max(highest, connectionTerm)) }
            return
        }
        guard let connectionTerm, term == connectionTerm else {
            throw Refusal(term: term, highest: max(highest, connectionTerm ?? 0))
        }
        guard term >= highest else { throw Refusal(term: term, highest: highest) }
    }
}
