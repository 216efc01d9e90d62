import Foundation
import HatoConfig
import SMTPCore

/// Picks the pool of a submitted message from `routing.rules` (first match wins) or the
/// default pool, and removes routing headers (e.g. `X-Hato-Pool`) and `X-Hato-Priority` so
/// they are never sent (nor signed: DKIM signs on the node, after this).
/// A routing header that names no configured pool refuses the message (`UnknownPool`), never
/// the default pool in silence. Pure: no I/O.
public struct PoolRouter: Sendable {
    /// A `header` rule's field names a pool that `pools` does not have: the submission is
    /// refused with `550 5.7.1` and nothing is queued.
    public struct UnknownPool: Error, Sendable, Equatable {
        /// The header field, as the rule names it (e.g. `X-Hato-Pool`).
        public var header: String
        /// The value it carried.
        public var pool: String
        /// `550 5.7.1 unknown pool "<pool>" in <header>`.
        public var reply: SMTPReply {
            SMTPReply(550, "5.7.1", "unknown pool \"\(pool.prefix(64))\" in \(header)")
        }
    }

    let rules: [RoutingRule]
    let defaultPool: String
    let pools: Set<String>
    /// Each pool's priority class (`pools[].priority`).
    let poolPriority: [String: MessagePriority]

    public init(routing: RoutingSettings, pools: [PoolSettings]) {
        rules = routing.rules; defaultPool = routing.defaultPool; self.pools = Set(pools.map(\.name))
        poolPriority = Dictionary(pools.map { ($0.name, $0.priority) }, uniquingKeysWith: { a, _ in a })
    }

    /// The priority class of `pool` (`pools[].priority`; transactional for a pool not configured).
    public func priority(ofPool pool: String) -> MessagePriority { poolPriority[pool] ?? .transactional }

    /// The routing decision.
    public struct Decision: Sendable, Equatable {
        /// The chosen pool.
        public var pool: String
        /// The content with routing header fields removed (unchanged when there are none).
        public var content: [UInt8]
        /// Which rule matched, for the log (`default` when none).
        public var reason: String
        /// The class the message's `X-Hato-Priority` field asked for (removed from `content`);
        /// nil without the field or with a value that is neither `transactional` nor `bulk`.
        public var requestedPriority: MessagePriority? = nil
        /// The raw value of an `X-Hato-Priority` field that named no class (for the log), else nil.
        public var unknownPriority: String? = nil
    }

    /// Routes one message.
    /// - Parameters:
    ///   - authUser: the authenticated submitter, if any (RFC 4954).
    ///   - reversePath: the envelope sender (empty for `<>`).
    ///   - content: the message as received (CRLF line endings).
    /// - Returns: the pool, the content without routing headers, and the reason.
    /// - Throws: `UnknownPool` when a `header` rule without a fixed pool finds a value that names
    ///   no configured pool.
    public func route(authUser: String?, reversePath: String, content: [UInt8]) throws(UnknownPool) -> Decision {
        var decision = try routeByRules(authUser: authUser, reversePath: reversePath, content: content)
        if let value = decision.priorityField {
            decision.decision.requestedPriority = MessagePriority(parsing: value)
            if decision.decision.requestedPriority == nil { decision.decision.unknownPriority = String(value.prefix(64)) }
        }
        return decision.decision
    }

    /// `route`'s rule walk: strips the routing fields and `X-Hato-Priority` once, then picks the
    /// pool. - Returns: the decision and the raw `X-Hato-Priority` value (nil without one).
    private func routeByRules(authUser: String?, reversePath: String, content: [UInt8]) throws(UnknownPool) -> (decision: Decision, priorityField: String?) {
        let priorityName = PrioritySettings.headerField.lowercased()
        let headerNames = rules.compactMap { r -> String? in if case .header(let h) = r.match { return h.lowercased() }; return nil }
        let (body, headerValues) = PoolRouter.strip(fields: Set(headerNames + [priorityName]), from: content)
        let field = headerValues[priorityName]
        func decided(pool: String, content: [UInt8], reason: String) -> (decision: Decision, priorityField: String?) {
            (Decision(pool: pool, content: content, reason: reason), field)
        }
        let senderDomain = Queue.domain(of: reversePath)
        for r in rules {
            switch r.match {
            case .authUser(let u):
                if let authUser, authUser == u, let p = r.pool { return decided(pool: p, content: body, reason: "auth_user \(u)") }
            case .senderDomain(let d):
                if !senderDomain.isEmpty, d.matches(senderDomain) || d.pattern.lowercased() == senderDomain, let p = r.pool {
                    return decided(pool: p, content: body, reason: "sender_domain \(d.pattern)")
                }
            case .header(let h):
                guard let v = headerValues[h.lowercased()] else { continue }
                let pool = r.pool ?? v
                if r.pool != nil && r.pool != v { continue }
                guard pools.contains(pool) else { throw UnknownPool(header: h, pool: v) }
                return decided(pool: pool, content: body, reason: "header \(h)")
            }
        }
        return decided(pool: defaultPool, content: body, reason: "default")
    }

    /// Removes header fields named in `fields` (lower-case), folded lines included, from the
    /// header section (up to the first empty line, RFC 5322 §2.2).
    /// - Returns: the new content and the unfolded, trimmed value of each removed field (last wins);
    ///   `content` itself (no copy) when no field is removed — the usual case, where copying a
    ///   100 KiB body cost a pass over it per message (issue 19).
    static func strip(fields: Set<String>, from content: [UInt8]) -> ([UInt8], [String: String]) {
        // Nil until the first removed line: what precedes it is the content's own prefix.
        var out: [UInt8]?
        var values: [String: String] = [:]
        var i = 0
        var dropping = false
        var current: (name: String, value: [UInt8])?
        func close() {
            if let c = current {
                values[c.name] = String(decoding: c.value, as: UTF8.self).trimmingCharacters(in: .whitespaces)
                current = nil
            }
        }
        func keep(_ line: ArraySlice<UInt8>) { out?.append(contentsOf: line) }
        while i < content.count {
            let end = content[i...].firstIndex(of: 0x0A).map { $0 + 1 } ?? content.count
            let line = content[i..<end]
            if line.first == 0x0D || line.first == 0x0A {  // end of the header section
                close()
                guard var kept = out else { return (content, values) }
                kept.append(contentsOf: content[i...])
                return (kept, values)
            }
            let continuation = line.first == 0x20 || line.first == 0x09
            if continuation {
                if dropping {
                    current?.value.append(contentsOf: line.filter { $0 != 0x0D && $0 != 0x0A })
                } else { keep(line) }
            } else {
                close()
                let name = line.prefix { $0 != 0x3A }
                let lname = String(decoding: name, as: UTF8.self).lowercased()
                dropping = name.count < line.count && fields.contains(lname)
                if dropping {
                    if out == nil {
                        var prefix: [UInt8] = []
                        prefix.reserveCapacity(content.count)
                        prefix.append(contentsOf: content[0..<i])
                        out = prefix
                    }
                    current = (lname, Array(line.dropFirst(name.count + 1).filter { $0 != 0x0D && $0 != 0x0A }))
                } else { keep(line) }
            }
            i = end
        }
        close()
        return (out ?? content, values)
    }
}
