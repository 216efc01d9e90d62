import Foundation

/// The `_mta-sts.<domain>` TXT record (RFC 8461 §3.1): `v=STSv1; id=<1–32 alphanumerics>;`.
public struct MTASTSRecord: Sendable, Equatable {
    /// The policy id: a change tells senders to fetch the policy again.
    public var id: String

    /// The record among a name's TXT strings: exactly one must start with `v=STSv1` (RFC 8461
    /// §3.1: several, or none, mean no policy).
    /// - Parameter txtRecords: each TXT record's strings (joined per record).
    /// - Returns: the record, or nil when there is none, more than one, or it is malformed.
    public static func find(in txtRecords: [[String]]) -> MTASTSRecord? {
        let candidates = txtRecords.map { $0.joined() }.filter { $0.hasPrefix("v=STSv1") }
        guard candidates.count == 1 else { return nil }
        return parse(candidates[0])
    }

    /// Parses `v=STSv1; id=20160831085700Z;` (fields separated by `;`, optional whitespace;
    /// unknown fields ignored).
    /// - Returns: the record, or nil when the version is not first or the id is missing or invalid.
    public static func parse(_ text: String) -> MTASTSRecord? {
        let fields = text.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard fields.first == "v=STSv1" else { return nil }
        var id: String? = nil
        for f in fields.dropFirst() where f.hasPrefix("id=") {
            let v = String(f.dropFirst(3))
            guard (1...32).contains(v.count), v.unicodeScalars.allSatisfy({ $0.isASCII && CharacterSet.alphanumerics.contains($0) }) else { return nil }
            id = v
        }
        return id.map { MTASTSRecord(id: $0) }
    }
}

/// A parsed MTA-STS policy (RFC 8461 §3.2).
public struct MTASTSPolicy: Sendable, Equatable {
    /// `mode`.
    public enum Mode: String, Sendable, Equatable {
        /// Deliver only to matching MX hosts over TLS with a valid certificate (RFC 8461 §5).
        case enforce
        /// Deliver anyway, but report failures (TLS-RPT, RFC 8460).
        case testing
        /// No policy (a domain leaving MTA-STS).
        case none
    }

    /// Why a policy body was refused.
    public struct ParseError: Error, Sendable, Equatable, CustomStringConvertible {
        /// What was wrong.
        public var description: String
    }

    /// `mode`.
    public var mode: Mode
    /// `mx` patterns in order, lowercase: host names or `*.suffix` wildcards (one leftmost label).
    public var mx: [String]
    /// `max_age` in seconds (at most 31 557 600, one year).
    public var maxAge: Int

    /// The largest policy body accepted, octets (RFC 8461 §3.3 lets the sender choose; 64 KiB).
    public static let maxBodySize = 64 * 1024
    /// The largest `max_age` (RFC 8461 §3.2).
    public static let maxMaxAge = 31_557_600

    /// A policy from its fields.
    public init(mode: Mode, mx: [String], maxAge: Int) {
        self.mode = mode; self.mx = mx.map { $0.lowercased() }; self.maxAge = maxAge
    }

    /// Parses a policy body: `key: value` lines separated by LF or CRLF (RFC 8461 §3.2);
    /// `version: STSv1` and `mode`, `max_age` are required, `mx` at least once unless the mode is
    /// `none`; unknown keys are ignored.
    /// - Parameter body: the body as fetched (UTF-8).
    /// - Returns: the policy.
    /// - Throws: `ParseError` naming the missing or invalid field, or a body over `maxBodySize`.
    public static func parse(_ body: [UInt8]) throws(ParseError) -> MTASTSPolicy {
        guard body.count <= maxBodySize else { throw ParseError(description: "policy larger than \(maxBodySize) octets") }
        var version: String? = nil, mode: Mode? = nil, maxAge: Int? = nil
        var mx: [String] = []
        for raw in String(decoding: body, as: UTF8.self).split(whereSeparator: { $0 == "\n" || $0 == "\r\n" }) {
            let line = raw.hasSuffix("\r") ? raw.dropLast() : raw[...]
            guard let colon = line.firstIndex(of: ":") else {
                if line.trimmingCharacters(in: .whitespaces).isEmpty { continue }
                throw ParseError(description: "policy line without a colon")
            }
            let key = line[..<colon].trimmingCharacters(in: .whitespaces)
            let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            switch key {
            case "version": version = value
            case "mode":
                guard let m = Mode(rawValue: value) else { throw ParseError(description: "unknown mode \"\(value.prefix(20))\"") }
                mode = m
            case "max_age":
                guard value.count <= 10, value.allSatisfy(\.isASCII), let n = Int(value), n >= 0 else {
                    throw ParseError(description: "invalid max_age")
                }
                maxAge = min(n, maxMaxAge)
            case "mx":
                guard isPattern(value) else { throw ParseError(description: "invalid mx pattern \"\(value.prefix(64))\"") }
                if mx.count < 100 { mx.append(value.lowercased()) }
            default: continue
            }
        }
        guard version == "STSv1" else { throw ParseError(description: "version is not STSv1") }
        guard let mode else { throw ParseError(description: "no mode") }
        guard let maxAge else { throw ParseError(description: "no max_age") }
        if mode != .none && mx.isEmpty { throw ParseError(description: "no mx pattern") }
        return MTASTSPolicy(mode: mode, mx: mx, maxAge: maxAge)
    }

    /// Whether `value` is a host name or `*.` followed by one.
    static func isPattern(_ value: String) -> Bool {
        let name = value.hasPrefix("*.") ? String(value.dropFirst(2)) : value
        guard !name.isEmpty, name.count <= 253 else { return false }
        return name.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
            !label.isEmpty && label.count <= 63 && label.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }
        }
    }

    /// Whether the MX host `host` matches one of the `mx` patterns (RFC 8461 §4.1): equal
    /// (case-insensitive, trailing dot ignored), or `*.suffix` and `host` is exactly one label
    /// followed by `.suffix`.
    public func matches(_ host: String) -> Bool {
        var h = host.lowercased()
        if h.hasSuffix(".") { h.removeLast() }
        return mx.contains { pattern in
            if pattern.hasPrefix("*.") {
                let suffix = String(pattern.dropFirst(1)) // ".example.com"
                guard h.hasSuffix(suffix) else { return false }
                let label = h.dropLast(suffix.count)
                return !label.isEmpty && !label.contains(".")
            }
            return pattern == h
        }
    }
}

/// The node's MTA-STS policy cache as a value (RFC 8461 §5.1): per policy domain the policy,
/// its id and when it was fetched; bounded (the oldest entry goes first), expired after
/// `max_age`, refetched when the TXT id changes. Time is passed in (seconds of a wall clock).
public struct MTASTSPolicyCache: Sendable {
    /// One cached policy.
    public struct Entry: Sendable, Equatable {
        /// The policy.
        public var policy: MTASTSPolicy
        /// The TXT record id it was fetched under.
        public var id: String
        /// When it was fetched (seconds since 1970).
        public var fetchedAt: Double
        /// When it expires (`fetchedAt + max_age`).
        public var expiresAt: Double { fetchedAt + Double(policy.maxAge) }
    }

    /// What to do for a domain.
    public enum Decision: Sendable, Equatable {
        /// Use this policy (cached, unexpired, same id).
        case use(MTASTSPolicy)
        /// Fetch the policy (none cached, expired, or the id changed); `fallback` is a cached
        /// unexpired policy to use when the fetch fails (RFC 8461 §5.1).
        case fetch(fallback: MTASTSPolicy?)
        /// No TXT record and nothing cached: the domain has no policy.
        case noPolicy
    }

    /// The most domains kept.
    public let capacity: Int
    /// The entries by lowercase domain.
    public private(set) var entries: [String: Entry] = [:]

    /// An empty cache holding at most `capacity` domains.
    public init(capacity: Int = 10_000) { self.capacity = max(1, capacity) }

    /// The decision for `domain` given its TXT record (nil when the lookup found none or failed)
    /// at `now` (seconds since 1970). A cached unexpired policy is used when the TXT record is
    /// gone or unchanged (RFC 8461 §5.1: a missing record does not remove a cached policy).
    public func decide(domain: String, record: MTASTSRecord?, now: Double) -> Decision {
        let cached = entries[domain.lowercased()].flatMap { $0.expiresAt > now ? $0 : nil }
        guard let record else { return cached.map { .use($0.policy) } ?? .noPolicy }
        if let cached, cached.id == record.id { return .use(cached.policy) }
        return .fetch(fallback: cached?.policy)
    }

    /// Stores a policy fetched under `id` at `now`; the oldest entry makes room when full.
    public mutating func store(domain: String, policy: MTASTSPolicy, id: String, now: Double) {
        let key = domain.lowercased()
        if entries[key] == nil && entries.count >= capacity,
           let oldest = entries.min(by: { $0.value.fetchedAt < $1.value.fetchedAt })?.key {
            entries.removeValue(forKey: oldest)
        }
        entries[key] = Entry(policy: policy, id: id, fetchedAt: now)
    }
}

/// RFC 8460 §4.3 result types counted for TLS-RPT.
public enum TLSReportResultType: String, Sendable, Hashable, Codable, CaseIterable {
    /// The MX did not offer STARTTLS.
    case starttlsNotSupported = "starttls-not-supported"
    /// The certificate does not name the MX host.
    case certificateHostMismatch = "certificate-host-mismatch"
    /// The certificate has expired.
    case certificateExpired = "certificate-expired"
    /// The certificate chain did not validate (or did not match the TLSA records).
    case validationFailure = "validation-failure"
    /// The MTA-STS policy could not be parsed.
    case stsPolicyInvalid = "sts-policy-invalid"
    /// The MTA-STS policy could not be fetched.
    case stsPolicyFetchError = "sts-policy-fetch-error"
    /// The policy host's certificate did not validate.
    case stsWebPKIInvalid = "sts-webpki-invalid"
    /// The TLSA records are not usable.
    case tlsaInvalid = "tlsa-invalid"
}

/// The kind of policy a TLS-RPT count is for (RFC 8460 §4.4 `policy-type`).
public enum TLSReportPolicyType: String, Sendable, Hashable, Codable {
    /// MTA-STS (RFC 8461).
    case sts
    /// DANE TLSA (RFC 7672).
    case tlsa
}
