import Foundation

/// Clock skew between the nodes and the coordinator, from the wall-clock time each node puts in
/// its heartbeats (`HeartbeatMessage.sentAt`). A pure value.
///
/// The estimate is `sentAt − receivedAt`: the node's clock minus the coordinator's, less the
/// one-way delay of the heartbeat (milliseconds on a LAN, far below the 2 s threshold). DKIM
/// signatures (`t=`), `Date:` headers and lease expiries are all wall-clock instants, so nodes
/// whose clocks drift make them wrong.
public enum ClockSkew {
    /// One heartbeat's times.
    public struct Sample: Sendable, Equatable {
        /// The node's wall clock when it sent the heartbeat.
        public var nodeTime: Date
        /// The coordinator's wall clock when it read it.
        public var receivedAt: Date
        /// A sample from its parts.
        public init(nodeTime: Date, receivedAt: Date) { self.nodeTime = nodeTime; self.receivedAt = receivedAt }
        /// The node's clock minus the coordinator's, in seconds (positive: the node is ahead).
        public var skew: TimeInterval { nodeTime.timeIntervalSince(receivedAt) }
    }

    /// Skew beyond this many seconds (either way) is a warning.
    public static let warningThreshold: TimeInterval = 2
    /// A sample older than this many seconds says nothing about now (the node stopped sending).
    public static let staleAfter: TimeInterval = 300

    /// The doctor finding for one node.
    /// - Parameters:
    ///   - node: the node id.
    ///   - sample: its last heartbeat's times, nil when it sent none with a time (an older node,
    ///     or none since it joined).
    ///   - now: the coordinator's clock now.
    /// - Returns: `ok` within ±2 s, `warning` beyond or when nothing recent is known.
    public static func finding(node: String, sample: Sample?, now: Date) -> DoctorFinding {
        guard let sample, now.timeIntervalSince(sample.receivedAt) <= staleAfter else {
            return DoctorFinding(check: "clock", subject: node, severity: .warning,
                                 message: "no recent heartbeat with a clock reading from node \(node)",
                                 fix: "make sure the node runs and is of this release (older nodes do not send their clock)")
        }
        let s = sample.skew
        let text = String(format: "%+.3f s", s)
        if abs(s) > warningThreshold {
            return DoctorFinding(check: "clock", subject: node, severity: .warning,
                                 message: "node \(node)'s clock is \(text) off the coordinator's (more than \(Int(warningThreshold)) s)",
                                 fix: "run NTP (chrony, systemd-timesyncd) on the node and the coordinator")
        }
        return DoctorFinding(check: "clock", subject: node, severity: .ok, message: "node \(node)'s clock is \(text) off the coordinator's", fix: nil)
    }
}
