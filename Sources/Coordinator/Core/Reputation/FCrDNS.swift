import Foundation
import HatoConfig
import HatoDNS

/// Forward-confirmed reverse DNS (FCrDNS) of a sending IP, and whether its PTR name is the HELO
/// name the nodes send from it (`ips[].helo`).
///
/// FCrDNS (RFC 8601 §3 "iprev", RFC 1912 §2.1): the IP's PTR (`in-addr.arpa` / `ip6.arpa`)
/// names a host whose A (or AAAA) records contain the IP. Receivers reject or score down mail
/// from an IP without it. The HELO name should be that PTR name (RFC 5321 §4.1.1.1 asks for
/// the client's primary host name). A resolver error or timeout is `unknown`: never a failure.
public enum FCrDNS {
    /// What one check found.
    public enum Status: String, Sendable, Equatable, Codable {
        /// The PTR resolves back to the IP and is the HELO name.
        case ok
        /// FCrDNS holds, but no forward-confirmed PTR name is the HELO name (a warning).
        case heloMismatch = "helo_mismatch"
        /// No PTR record (NXDOMAIN or no data): FCrDNS fails.
        case noPTR = "no_ptr"
        /// The PTR names resolve, but none back to the IP: FCrDNS fails.
        case notConfirmed = "not_confirmed"
        /// A lookup failed (SERVFAIL, timeout): nothing is known; never acted upon.
        case unknown
    }

    /// One IP's verdict.
    public struct Verdict: Sendable, Equatable, Codable {
        /// The verdict.
        public var status: Status
        /// The PTR names found (lowercase), in answer order.
        public var ptr: [String]
        /// The HELO name configured for the IP.
        public var helo: String
        /// Why, for anything not `ok`: one line.
        public var detail: String?

        /// A verdict from its parts.
        public init(status: Status, ptr: [String] = [], helo: String, detail: String? = nil) {
            self.status = status; self.ptr = ptr; self.helo = helo; self.detail = detail
        }

        /// Whether FCrDNS itself fails (`no_ptr`, `not_confirmed`): what `require_fcrdns` holds.
        public var failsFCrDNS: Bool { status == .noPTR || status == .notConfirmed }
    }

    /// At most this many PTR names are followed forward (a PTR RRset with more is unusual).
    public static let maxPTRNames = 10

    /// Interprets the answers.
    /// - Parameters:
    ///   - ip: the sending IP (IPv4 or IPv6 text).
    ///   - helo: its configured HELO name.
    ///   - ptr: the answer to the PTR query at the IP's reverse name.
    ///   - forward: for each PTR name, the answer to its A (IPv4) or AAAA (IPv6) query.
    /// - Returns: the verdict.
    public static func verdict(ip: String, helo: String, ptr: DNSAnswer, forward: [String: DNSAnswer]) -> Verdict {
        let helo = helo.lowercased()
        let names: [String]
        switch ptr {
        case .temporaryFailure(let why):
            return Verdict(status: .unknown, helo: helo, detail: "PTR lookup failed: \(why)")
        case .nxdomain, .noData:
            return Verdict(status: .noPTR, helo: helo, detail: "\(ip) has no PTR record")
        case .records(let rs):
            names = Array(rs.compactMap { if case .ptr(let n) = $0.data { return n.lowercased() } else { return nil } }.prefix(maxPTRNames))
        }
        guard !names.isEmpty else { return Verdict(status: .noPTR, helo: helo, detail: "\(ip) has no PTR record") }
        let wanted = (try? IPNetwork(parsing: ip).addressBytes) ?? []
        var confirmed: [String] = [], failed: [String] = [], elsewhere: [String] = []
        for name in names {
            switch forward[name] {
            case .records(let rs)?:
                let addresses = rs.compactMap { r -> String? in
                    switch r.data { case .a(let a), .aaaa(let a): return a; default: return nil }
                }
                if addresses.contains(where: { (try? IPNetwork(parsing: $0).addressBytes) == wanted }) { confirmed.append(name) }
                else { elsewhere.append("\(name) → \(addresses.isEmpty ? "nothing" : addresses.joined(separator: ","))") }
            case .temporaryFailure(let why)?: failed.append("\(name): \(why)")
            case .nxdomain?, .noData?, nil: elsewhere.append("\(name) → nothing")
            }
        }
        if confirmed.isEmpty {
            if !failed.isEmpty { return Verdict(status: .unknown, ptr: names, helo: helo, detail: "forward lookup failed: \(failed.joined(separator: "; "))") }
            return Verdict(status: .notConfirmed, ptr: names, helo: helo,
                           detail: "the PTR of \(ip) does not resolve back to it (\(elsewhere.joined(separator: "; ")))")
        }
        if confirmed.contains(helo) { return Verdict(status: .ok, ptr: names, helo: helo) }
        return Verdict(status: .heloMismatch, ptr: names, helo: helo,
                       detail: "HELO name \(helo) is not the PTR name \(confirmed.joined(separator: ", ")) of \(ip)")
    }

    /// Looks `ip` up through `resolver` (PTR, then A/AAAA of each name) and judges it.
    /// - Parameters:
    ///   - ip: the sending IP.
    ///   - helo: its configured HELO name.
    ///   - resolver: the cluster's resolver (`dns:`); its calls block.
    /// - Returns: the verdict (`unknown` when `ip` is not a numeric address or a lookup failed).
    public static func check(ip: String, helo: String, resolver: DNSResolver) -> Verdict {
        guard let reverse = DomainRecords.reverseName(ip) else { return Verdict(status: .unknown, helo: helo, detail: "not a numeric address: \(ip)") }
        let ptr = resolver.query(reverse, type: .ptr)
        var forward: [String: DNSAnswer] = [:]
        if case .records(let rs) = ptr {
            let type: DNSRecordType = ip.contains(":") ? .aaaa : .a
            for r in rs.prefix(maxPTRNames) {
                if case .ptr(let name) = r.data { forward[name.lowercased()] = resolver.query(name, type: type) }
            }
        }
        return verdict(ip: ip, helo: helo, ptr: ptr, forward: forward)
    }
}

/// The FCrDNS verdicts of the sending IPs and what changed: a pure value, time passed in.
///
/// An `unknown` verdict changes nothing (a resolver timeout never holds an IP, nor resumes
/// one). An IP becomes failing when a verdict fails FCrDNS, and recovers when a later verdict
/// passes it (`ok` or `helo_mismatch`).
public struct FCrDNSWatch: Sendable, Equatable {
    /// The `zone` of FCrDNS rows in the stored health history (`IPHealthStore`).
    public static let historyZone = "fcrdns"

    /// What one verdict changed.
    public enum Event: Sendable, Equatable {
        /// `ip` fails FCrDNS now (it passed, or was not known, before).
        case failed(ip: String, verdict: FCrDNS.Verdict)
        /// `ip` passes FCrDNS again.
        case recovered(ip: String, verdict: FCrDNS.Verdict)
    }

    /// The last verdict of each sending IP (an `unknown` one only until a real verdict comes).
    public private(set) var verdicts: [String: FCrDNS.Verdict] = [:]
    /// When each IP was last checked.
    public private(set) var lastChecked: [String: Date] = [:]
    /// IPs whose last known verdict fails FCrDNS.
    public private(set) var failing: Set<String> = []

    /// No verdicts yet.
    public init() {}

    /// A watch that knows which IPs failed before a restart (`IPHealthHistory.fcrdnsFailing`):
    /// a first check that finds them failing still is not a new change.
    /// - Parameter failing: the sending IPs whose last stored verdict failed.
    public init(failing: Set<String>) { self.failing = failing }

    /// Records one verdict.
    /// - Parameters:
    ///   - verdict: what `FCrDNS.check` answered.
    ///   - ip: the sending IP.
    ///   - now: the current time.
    /// - Returns: the change it caused, if any.
    public mutating func record(_ verdict: FCrDNS.Verdict, ip: String, now: Date) -> [Event] {
        lastChecked[ip] = now
        if verdict.status == .unknown {
            // Keep what was known; show the failure only when nothing is.
            if verdicts[ip] == nil || verdicts[ip]?.status == .unknown { verdicts[ip] = verdict }
            return []
        }
        verdicts[ip] = verdict
        if verdict.failsFCrDNS {
            return failing.insert(ip).inserted ? [.failed(ip: ip, verdict: verdict)] : []
        }
        return failing.remove(ip) != nil ? [.recovered(ip: ip, verdict: verdict)] : []
    }

    /// Why `ip` is held under `reputation.require_fcrdns`, nil when it is not.
    /// - Parameters:
    ///   - ip: the sending IP.
    ///   - required: `reputation.require_fcrdns`.
    public func holdReason(_ ip: String, required: Bool) -> String? {
        guard required, failing.contains(ip), let v = verdicts[ip] else { return nil }
        if v.status == .unknown {
            return "FCrDNS failed at the last answered check; the latest lookup gave no answer (\(v.detail ?? "")) — require_fcrdns holds it"
        }
        return "FCrDNS fails (\(v.status.rawValue)): \(v.detail ?? "") — require_fcrdns holds it"
    }

    /// Forgets IPs no longer configured.
    /// - Parameter ips: the configured sending IPs.
    public mutating func keep(ips: Set<String>) {
        verdicts = verdicts.filter { ips.contains($0.key) }
        lastChecked = lastChecked.filter { ips.contains($0.key) }
        failing = failing.filter { ips.contains($0) }
    }
}
