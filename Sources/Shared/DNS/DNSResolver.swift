#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CResolv
import Foundation
import HatoIO
import HatoSupport

/// The outcome of one DNS lookup for a (name, type) pair.
public enum DNSAnswer: Sendable, Equatable {
    /// NOERROR with records of the requested type. After following a CNAME chain these
    /// are the records owned by the chain's last name (the CNAMEs themselves are not included
    /// unless CNAME was the requested type).
    case records([DNSRecord])
    /// NOERROR, but the name has no records of the requested type (RFC 2308 §2.2 "NODATA").
    case noData
    /// RCODE 3: the name does not exist (RFC 2308 §2.1). A permanent condition.
    case nxdomain
    /// SERVFAIL, REFUSED, a timeout, a network error, a malformed answer or a CNAME chain
    /// longer than `DNSResolver.maxCNAMEHops`: try again later.
    case temporaryFailure(String)
}

/// What one query/response exchange with a nameserver produced (the resolver's transport seam).
public enum DNSExchangeResult: Sendable, Equatable {
    /// A parsed response (any RCODE).
    case response(DNSMessage)
    /// No usable response: timeout, network error, SERVFAIL/REFUSED dropped by libresolv,
    /// or a malformed message. The text says which.
    case failure(String)
}

/// A thread-safe stub resolver over libresolv (`res_nmkquery` + `res_nsend`, RFC 1035),
/// with a TTL-bounded answer cache.
///
/// Every query uses a freshly allocated `res_state`, so nothing but the cache is shared
/// between threads; the calls block the calling thread for at most about `timeout`
/// seconds per nameserver. Run them on dedicated threads, not on Swift's cooperative pool.
public final class DNSResolver: Sendable {
    /// The nameservers queried (empty: the system's `/etc/resolv.conf`). Only IPv4
    /// nameservers are used; at most 3 (`MAXNS`).
    public let nameservers: [SocketAddress]
    /// Seconds to wait for an answer from one nameserver (rounded up to whole seconds, 1…30).
    public let timeout: TimeInterval

    /// The most CNAME records followed for one lookup (RFC 1034 §3.6.2 chains).
    public static let maxCNAMEHops = 8
    /// Positive answers are cached for their smallest TTL, but at most this many seconds.
    public static let maxCacheTTL: UInt32 = 3600
    /// NXDOMAIN and NODATA answers are cached for this many seconds (RFC 2308 negative caching).
    public static let negativeCacheTTL: UInt32 = 60

    private let exchange: @Sendable (String, DNSRecordType) -> DNSExchangeResult
    /// The exchange for `secureQuery`: asks for DNSSEC (AD and DO bits) and keeps the AD bit.
    private let secureExchange: @Sendable (String, DNSRecordType) -> DNSExchangeResult
    private let clock: any WallClock
    private let cache = DNSAnswerCache(capacity: 50_000)
    private let secureCache = Locked<[DNSAnswerCache.Key: (answer: SecureDNSAnswer, expires: Date)]>([:])
    /// The most answers `secureQuery` keeps; the cache is emptied when it is full.
    public static let secureCacheCapacity = 10_000

    /// A resolver that asks real nameservers through libresolv.
    /// - Parameters:
    ///   - nameservers: numeric IPv4 nameserver addresses with ports (e.g. `127.0.0.1:5353`);
    ///     empty means the nameservers of `/etc/resolv.conf`.
    ///   - timeout: seconds to wait for each nameserver (one try each).
    ///   - clock: the time source for cache expiry.
    public convenience init(nameservers: [SocketAddress] = [], timeout: TimeInterval = 5, clock: any WallClock = SystemClock()) {
        let servers = nameservers
        self.init(nameservers: servers, timeout: timeout, clock: clock, exchange: { name, type in
            DNSResolver.libresolvExchange(name: name, type: type, nameservers: servers, timeout: timeout)
        }, secureExchange: { name, type in
            DNSResolver.libresolvExchange(name: name, type: type, nameservers: servers, timeout: timeout, dnssec: true)
        })
    }

    /// A resolver over an injected exchange function, for tests and alternative transports.
    /// CNAME chasing, RCODE mapping and caching work exactly as with libresolv.
    /// - Parameters:
    ///   - clock: the time source for cache expiry.
    ///   - exchange: called with a normalized name (lowercase, no trailing dot) and type;
    ///     returns the nameserver's response or a failure.
    public convenience init(clock: any WallClock = SystemClock(),
                            exchange: @escaping @Sendable (_ name: String, _ type: DNSRecordType) -> DNSExchangeResult) {
        self.init(nameservers: [], timeout: 0, clock: clock, exchange: exchange, secureExchange: exchange)
    }

    private init(nameservers: [SocketAddress], timeout: TimeInterval, clock: any WallClock,
                 exchange: @escaping @Sendable (String, DNSRecordType) -> DNSExchangeResult,
                 secureExchange: @escaping @Sendable (String, DNSRecordType) -> DNSExchangeResult) {
        self.nameservers = nameservers
        self.timeout = timeout
        self.clock = clock
        self.exchange = exchange
        self.secureExchange = secureExchange
    }

    /// Looks up `name`/`type` asking the resolver for its DNSSEC verdict (the query sets the AD
    /// bit, RFC 6840 §5.7, and EDNS0 DO, RFC 3225): `authenticated` is the answer's AD bit
    /// (RFC 4035 §3.2.3), trusted because the nameservers are the configured ones. Used for DANE
    /// TLSA lookups (RFC 7672 §2.2). CNAMEs are not followed (a CNAME answer is `.noData`).
    /// Cached for the records' TTL (at most `maxCacheTTL`; NXDOMAIN/NODATA `negativeCacheTTL`;
    /// failures not cached), apart from `query`'s cache.
    /// - Parameters:
    ///   - name: a domain name such as `_25._tcp.mx.example.com`.
    ///   - type: the record type wanted.
    /// - Returns: the answer and whether it was authenticated; never throws.
    public func secureQuery(_ name: String, type: DNSRecordType) -> SecureDNSAnswer {
        let qname = DNSResolver.normalize(name)
        guard DNSResolver.isValidName(qname) else { return SecureDNSAnswer(answer: .nxdomain, authenticated: false) }
        let key = DNSAnswerCache.Key(name: qname, type: type.rawValue)
        let now = clock.now()
        if let hit = secureCache.withLock({ $0[key] }), hit.expires > now { return hit.answer }
        let result: SecureDNSAnswer
        var ttl: UInt32 = 0
        switch secureExchange(qname, type) {
        case .failure(let text):
            result = SecureDNSAnswer(answer: .temporaryFailure(text), authenticated: false)
        case .response(let m):
            switch m.rcode {
            case DNSMessage.noError:
                let matches = m.answers.filter { $0.type == type.rawValue && $0.name == qname }
                if matches.isEmpty {
                    result = SecureDNSAnswer(answer: .noData, authenticated: m.isAuthenticData)
                    ttl = DNSResolver.negativeCacheTTL
                } else {
                    result = SecureDNSAnswer(answer: .records(matches), authenticated: m.isAuthenticData)
                    ttl = min(matches.map(\.ttl).min() ?? 0, DNSResolver.maxCacheTTL)
                }
            case DNSMessage.nameError:
                result = SecureDNSAnswer(answer: .nxdomain, authenticated: m.isAuthenticData)
                ttl = DNSResolver.negativeCacheTTL
            default:
                result = SecureDNSAnswer(answer: .temporaryFailure("DNS rcode \(m.rcode) for \(qname)/\(type)"), authenticated: false)
            }
        }
        if ttl > 0 {
            let expires = now.addingTimeInterval(TimeInterval(ttl))
            secureCache.withLock { entries in
                if entries.count >= DNSResolver.secureCacheCapacity { entries.removeAll() }
                entries[key] = (result, expires)
            }
        }
        return result
    }

    /// Drops every cached answer.
    public func flushCache() { cache.removeAll() }

    /// Looks up records of `type` for `name`, following CNAME chains (at most
    /// `maxCNAMEHops`), answering from the cache while an earlier answer's TTL lasts.
    /// - Parameters:
    ///   - name: a domain name; case and a trailing dot are ignored. A syntactically
    ///     impossible name (empty label, label over 63 octets, name over 253 octets,
    ///     spaces, control characters or backslashes) is answered `.nxdomain` without a query.
    ///   - type: the record type wanted.
    /// - Returns: the answer; never throws and never traps.
    public func query(_ name: String, type: DNSRecordType) -> DNSAnswer {
        let qname = DNSResolver.normalize(name)
        guard DNSResolver.isValidName(qname) else { return .nxdomain }
        let key = DNSAnswerCache.Key(name: qname, type: type.rawValue)
        if let hit = cache.get(key, now: clock.now()) { return hit }
        let (answer, ttl) = resolveUncached(qname, type: type)
        if ttl > 0 { cache.put(key, answer: answer, ttl: ttl, now: clock.now()) }
        return answer
    }

    /// Resolves without the cache. Returns the answer and its cache lifetime in seconds (0: do not cache).
    private func resolveUncached(_ qname: String, type: DNSRecordType) -> (DNSAnswer, UInt32) {
        var current = qname
        var hops = 0
        var chainTTL = UInt32.max
        while true {
            let message: DNSMessage
            switch exchange(current, type) {
            case .failure(let text):
                return (.temporaryFailure(text), 0)
            case .response(let m):
                message = m
            }
            switch message.rcode {
            case DNSMessage.noError: break
            case DNSMessage.nameError: return (.nxdomain, DNSResolver.negativeCacheTTL)
            case DNSMessage.serverFailure: return (.temporaryFailure("SERVFAIL for \(current)/\(type)"), 0)
            case DNSMessage.refused: return (.temporaryFailure("REFUSED for \(current)/\(type)"), 0)
            default: return (.temporaryFailure("DNS rcode \(message.rcode) for \(current)/\(type)"), 0)
            }
            var owner = current
            if type != .cname {
                while let alias = message.answers.first(where: { $0.type == DNSRecordType.cname.rawValue && $0.name == owner }),
                      case .cname(let target) = alias.data {
                    hops += 1
                    guard hops <= DNSResolver.maxCNAMEHops else {
                        return (.temporaryFailure("CNAME chain for \(qname) longer than \(DNSResolver.maxCNAMEHops)"), 0)
                    }
                    chainTTL = min(chainTTL, alias.ttl)
                    owner = target
                }
            }
            let matches = message.answers.filter { $0.type == type.rawValue && $0.name == owner }
            if !matches.isEmpty {
                let ttl = min(chainTTL, matches.map(\.ttl).min() ?? 0, DNSResolver.maxCacheTTL)
                return (.records(matches), ttl)
            }
            if owner != current {
                // The chain's target was not answered in this response: ask for it directly.
                current = owner
                continue
            }
            return (.noData, DNSResolver.negativeCacheTTL)
        }
    }

    /// Lowercases ASCII letters and drops one trailing dot.
    static func normalize(_ name: String) -> String {
        var s = name.lowercased()
        if s.hasSuffix(".") { s.removeLast() }
        return s
    }

    /// Whether `name` (normalized) can be sent as a query name (RFC 1035 §2.3.4 lengths).
    static func isValidName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty, bytes.count <= 253 else { return false }
        var labelLength = 0
        for b in bytes {
            if b == 0x2E {
                guard labelLength > 0 else { return false }
                labelLength = 0
                continue
            }
            guard b > 0x20, b != 0x7F, b != 0x5C else { return false }
            labelLength += 1
            guard labelLength <= 63 else { return false }
        }
        return labelLength > 0
    }

    /// One libresolv exchange with a fresh resolver state.
    /// With `dnssec`, the query is built here with the AD bit (RFC 6840 §5.7) and an EDNS0 OPT
    /// record with DO (RFC 3225), and the answer's AD bit is kept (glibc's `trust-ad`).
    static func libresolvExchange(name: String, type: DNSRecordType, nameservers: [SocketAddress], timeout: TimeInterval,
                                  dnssec: Bool = false) -> DNSExchangeResult {
        let ipv4 = nameservers.filter { !$0.isIPv6 }.prefix(Int(MAXNS))
        if !nameservers.isEmpty && ipv4.isEmpty { return .failure("no IPv4 nameserver configured") }
        guard let state = hato_res_alloc() else { return .failure("out of memory for resolver state") }
        defer { hato_res_free(state) }
        guard hato_res_ninit(state) == 0 else { return .failure("res_ninit failed") }
        defer { hato_res_nclose(state) }
        for (index, server) in ipv4.enumerated() {
            var addr = in_addr()
            guard inet_pton(AF_INET, server.host, &addr) == 1 else { return .failure("bad nameserver address \(server.host)") }
            hato_res_set_nameserver(state, Int32(index), addr.s_addr, server.port)
        }
        if !ipv4.isEmpty { hato_res_set_nscount(state, Int32(ipv4.count)) }
        let seconds = Int32(max(1, min(30, timeout.rounded(.up))))
        hato_res_set_timeouts(state, seconds, 1)

        var query = [UInt8](repeating: 0, count: 512)
        var queryLength: Int32
        if dnssec {
            hato_res_trust_ad(state)
            guard let built = DNSResolver.dnssecQuery(name: name, type: type, id: UInt16.random(in: 0...UInt16.max)) else {
                return .failure("cannot build a DNS query for \(name)")
            }
            query = built
            queryLength = Int32(built.count)
        } else {
            queryLength = hato_res_nmkquery(state, 0 /* QUERY */, name, 1 /* C_IN */, Int32(type.rawValue), &query, Int32(query.count))
        }
        guard queryLength > 0 else { return .failure("cannot build a DNS query for \(name)") }
        var answer = [UInt8](repeating: 0, count: 65_536)
        let answerLength = hato_res_nsend(state, query, queryLength, &answer, Int32(answer.count))
        guard answerLength > 0 else {
            let code = errno
            let reason = code == 0 ? "no answer" : (String(validatingCString: strerror(code)) ?? "errno \(code)")
            return .failure("no usable answer for \(name)/\(type) (timeout, SERVFAIL or REFUSED): \(reason)")
        }
        answer.removeSubrange(min(Int(answerLength), answer.count)...)
        do {
            return .response(try DNSMessage.parse(answer))
        } catch {
            return .failure("\(error) for \(name)/\(type)")
        }
    }
}

extension DNSResolver {
    /// A recursive query (RD) for `name`/`type` that asks for the DNSSEC status: AD set
    /// (RFC 6840 §5.7) and an EDNS0 OPT record (RFC 6891 §6) advertising 1232 octets with DO
    /// (RFC 3225). Nil when `name` cannot be encoded (a label over 63 octets, an empty label).
    static func dnssecQuery(name: String, type: DNSRecordType, id: UInt16) -> [UInt8]? {
        var q: [UInt8] = [UInt8(id >> 8), UInt8(id & 0xFF), 0x01, 0x20, 0, 1, 0, 0, 0, 0, 0, 1]
        for label in name.split(separator: ".", omittingEmptySubsequences: false) {
            let bytes = Array(label.utf8)
            guard !bytes.isEmpty, bytes.count <= 63 else { return nil }
            q.append(UInt8(bytes.count))
            q += bytes
        }
        q.append(0)
        q += [UInt8(type.rawValue >> 8), UInt8(type.rawValue & 0xFF), 0, 1]
        // OPT: root name, TYPE 41, CLASS = UDP payload size 1232, TTL = ext-rcode 0, version 0, DO.
        q += [0, 0, 41, 0x04, 0xD0, 0, 0, 0x80, 0, 0, 0]
        return q
    }
}

/// A `DNSResolver.secureQuery` answer: the records and the resolver's DNSSEC verdict.
public struct SecureDNSAnswer: Sendable, Equatable {
    /// The answer (as `DNSResolver.query` gives it).
    public var answer: DNSAnswer
    /// Whether the resolver set the AD bit: the records (or their absence) are DNSSEC-validated.
    public var authenticated: Bool

    /// An answer from its parts.
    public init(answer: DNSAnswer, authenticated: Bool) { self.answer = answer; self.authenticated = authenticated }
}

/// The answer cache: (name, type) → answer until its expiry, behind one lock.
final class DNSAnswerCache: Sendable {
    struct Key: Hashable, Sendable {
        let name: String
        let type: UInt16
    }
    private struct Entry: Sendable {
        let answer: DNSAnswer
        let expires: Date
    }
    private let entries = Locked<[Key: Entry]>([:])
    private let capacity: Int

    init(capacity: Int) { self.capacity = capacity }

    func get(_ key: Key, now: Date) -> DNSAnswer? {
        entries.withLock { entries in
            guard let e = entries[key] else { return nil }
            if e.expires <= now { entries[key] = nil; return nil }
            return e.answer
        }
    }

    func put(_ key: Key, answer: DNSAnswer, ttl: UInt32, now: Date) {
        let capacity = self.capacity
        entries.withLock { entries in
            if entries.count >= capacity {
                entries = entries.filter { $0.value.expires > now }
                if entries.count >= capacity { entries.removeAll(keepingCapacity: true) }
            }
            entries[key] = Entry(answer: answer, expires: now.addingTimeInterval(TimeInterval(ttl)))
        }
    }

    func removeAll() { entries.withLock { $0.removeAll() } }
}
