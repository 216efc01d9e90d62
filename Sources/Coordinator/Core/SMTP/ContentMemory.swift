import HatoSupport

/// The memory all submission sessions together may use for message content while receiving it
/// (`smtp.max_content_memory`): each session reserves what its content holds as it grows and
/// gives it back when the message is stored, refused or abandoned. A session whose next
/// reservation does not fit sheds its content (`SMTPServerSession.shedContent()`: the message is
/// read to its end and refused with `452 4.3.1`), so a crowd of large transactions held open can
/// not exhaust the coordinator's memory; the sessions already inside the budget go on.
///
/// Thread-safe (one `Locked` counter).
final class ContentMemory: Sendable {
    /// The limit in octets.
    let limit: Int
    private let used = Locked(0)

    /// A budget of `limit` octets (at least 1).
    init(limit: Int) { self.limit = max(1, limit) }

    /// Octets reserved now.
    var reserved: Int { used.snapshot }

    /// Reserves `octets` more, if they fit.
    /// - Returns: whether they were reserved.
    func reserve(_ octets: Int) -> Bool {
        guard octets > 0 else { return true }
        return used.withLock { u in
            guard u + octets <= limit else { return false }
            u += octets
            return true
        }
    }

    /// Gives `octets` back.
    func release(_ octets: Int) {
        guard octets > 0 else { return }
        used.withLock { $0 = max(0, $0 - octets) }
    }

    /// Whether a new transaction declaring `declaredSize` octets (or 1 MiB without a `SIZE`)
    /// may start: MAIL gets `452 4.3.1` when it does not fit what is left (RFC 1870 §6.1).
    func admits(declaredSize: Int?) -> Bool {
        let need = max(1, min(declaredSize ?? (1 << 20), limit))
        return used.withLock { $0 + need <= limit }
    }

    /// One session's reservation, kept equal to what its content holds; released when dropped.
    /// Used by one session thread only.
    final class Reservation {
        private let memory: ContentMemory
        /// Octets this session holds reserved.
        private(set) var octets = 0

        init(_ memory: ContentMemory) { self.memory = memory }

        /// Follows the session's content: reserves growth, releases what was dropped.
        /// - Parameters:
        ///   - kept: octets the session's content holds now.
        ///   - releasing: false to keep a larger reservation (while a message handed over for
        ///     storing is still in memory outside the session).
        /// - Returns: false when growth did not fit (the caller sheds the content; call
        ///   `update` again afterwards to release what was held).
        func update(to kept: Int, releasing: Bool = true) -> Bool {
            if kept > octets {
                guard memory.reserve(kept - octets) else { return false }
            } else if kept < octets {
                guard releasing else { return true }
                memory.release(octets - kept)
            }
            octets = kept
            return true
        }

        deinit { memory.release(octets) }
    }
}
