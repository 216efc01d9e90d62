import ClusterProtocol
import Foundation

/// Frames the scheduler thread has queued for the nodes and not yet written, per link in
/// order — a value the scheduler thread alone changes (`ClusterHub.perform` appends, the
/// grants and `ClusterHub.flushOutgoing` take).
///
/// Why frames wait at all: a node reads every write of the coordinator with one wake-up of its
/// reader thread. A batch of results used to be acknowledged with one write per `result_ack`
/// (each a wake-up of the link's writer and of the node); now each node's acks of a batch go in
/// one write, together with the next lease grant to that node when one goes within `ackHold`
/// (the grant takes them along). That is a grant for mail queued meanwhile: the grant a
/// result's own credit buys usually leaves before the result is committed. Under load, with
/// four nodes each getting a grant frame per message or so, most acks then cost a node no
/// wake-up of their own (issue 19: CPU per message with the node count); at light load they go
/// alone, `ackHold` after the commit.
///
/// Only `result_ack` is held: it promises the node that a result is on the coordinator's disk,
/// so the node may drop it from its journal; it is sent only after that commit either way, and
/// waiting longer to send it costs nothing but a re-send of that result after a reconnect
/// (applied idempotently). Every other frame the scheduler queues goes at the end of the
/// scheduler loop's pass at the latest, and takes what is held for its link with it, in order
/// (frames other threads send — `signing_keys`, `config_changed` — go through the link's
/// writer at once and may pass held acks; nothing depends on that order).
struct OutgoingFrames: Sendable {
    /// The longest a `result_ack` waits for a grant to ride with (10 ms).
    ///
    /// Shorter than the node journal's `syncSpacing` (20 ms, `OutcomeJournal`) by the result's
    /// way here and its commit (a few ms): a node fsyncs a journal line only when its ack has
    /// not arrived 20 ms after the line was written, so an ack held for 20 ms always came too
    /// late and each node paid an fsync per batch of results once its share of the grants was
    /// too small for acks to ride with them — CPU per message grew with the node count
    /// (issue 19, bench/scale-nodes).
    static let ackHold: Duration = .milliseconds(10)

    private struct Queued: Sendable {
        var frames: [ClusterMessage] = []
        /// When the oldest frame was queued.
        var since: ContinuousClock.Instant
        /// Whether a frame other than `result_ack` is queued (then nothing is held).
        var urgent = false
    }

    /// Links in the order they were first named.
    private var order: [ConnectionID] = []
    private var queued: [ConnectionID: Queued] = [:]

    /// An empty queue.
    init() {}

    /// Whether nothing is queued.
    var isEmpty: Bool { order.isEmpty }

    /// Queues `message` for link `c` at `now`.
    mutating func append(_ message: ClusterMessage, to c: ConnectionID, now: ContinuousClock.Instant) {
        if queued[c] == nil { order.append(c); queued[c] = Queued(since: now) }
        queued[c]!.frames.append(message)
        if case .resultAck = message {} else { queued[c]!.urgent = true }
    }

    /// Removes and returns everything queued for `c` (a grant takes it along), in order.
    mutating func take(_ c: ConnectionID) -> [ClusterMessage] {
        guard let q = queued.removeValue(forKey: c) else { return [] }
        order.removeAll { $0 == c }
        return q.frames
    }

    /// Removes and returns what is due at `now`, per link in order: every link's frames when
    /// `force`, else those of links with a frame other than `result_ack` or whose oldest frame
    /// has waited `ackHold`.
    mutating func takeDue(now: ContinuousClock.Instant, force: Bool = false) -> [(ConnectionID, [ClusterMessage])] {
        guard !order.isEmpty else { return [] }
        var due: [(ConnectionID, [ClusterMessage])] = []
        var kept: [ConnectionID] = []
        for c in order {
            guard let q = queued[c] else { continue }
            if force || q.urgent || q.since + OutgoingFrames.ackHold <= now {
                due.append((c, q.frames))
                queued[c] = nil
            } else {
                kept.append(c)
            }
        }
        order = kept
        return due
    }

    /// When the next held frames fall due (nil when nothing is held).
    var nextDue: ContinuousClock.Instant? {
        queued.values.map { $0.urgent ? $0.since : $0.since + OutgoingFrames.ackHold }.min()
    }

    /// Drops everything (a leader that stepped down sends nothing more).
    mutating func removeAll() {
        order.removeAll()
        queued.removeAll()
    }
}
