import Foundation
import HatoDNS

/// What the DNS blocklist checks (RFC 5782) found for each sending IP, and what changed.
///
/// Fed one verdict per (sending IP, zone) lookup; answers the events to act upon: an IP that
/// became listed on a zone (pause it), or whose last listing is gone (resume it). A lookup that
/// failed or that the list refused to answer (`DNSBL.Verdict.unknown`) changes nothing: a
/// resolver timeout never pauses an IP, and never resumes one either. A pure value: time is
/// passed in.
public struct BlocklistWatch: Sendable, Equatable {
    /// One listing of one IP on one zone.
    public struct Listing: Sendable, Equatable, Codable {
        /// The blocklist zone, e.g. `zen.spamhaus.org`.
        public var zone: String
        /// The return codes (`127.0.0.x`), sorted.
        public var codes: [String]
        /// The list's TXT reason, when it gave one (at most 300 characters).
        public var reason: String?
        /// When the listing was first seen.
        public var since: Date
    }

    /// A change, newest last in `history`.
    public struct Change: Sendable, Equatable, Codable {
        /// When it was seen.
        public var at: Date
        /// The sending IP.
        public var ip: String
        /// The zone.
        public var zone: String
        /// `listed` or `delisted`.
        public var event: String
        /// The return codes of a listing (empty for a delisting).
        public var codes: [String]
        /// The list's reason, for a listing.
        public var reason: String?
    }

    /// What one verdict changed.
    public enum Event: Sendable, Equatable {
        /// `ip` is newly listed on `listing.zone`; `firstListing` when it was listed nowhere before.
        case listed(ip: String, listing: Listing, firstListing: Bool)
        /// `ip` is no longer listed on `zone` after `seconds`; `clear` when it is listed nowhere now.
        case delisted(ip: String, zone: String, seconds: Double, clear: Bool)
    }

    /// The most changes `history` keeps (oldest dropped first).
    public static let historyLimit = 500

    /// Current listings: sending IP → zone → listing.
    public private(set) var listings: [String: [String: Listing]] = [:]
    /// The last lookup that gave no answer, per sending IP and zone (cleared by an answer).
    public private(set) var unanswered: [String: [String: String]] = [:]
    /// When each sending IP was last checked (any answer or not).
    public private(set) var lastChecked: [String: Date] = [:]
    /// Listings and delistings seen, oldest first, at most `historyLimit`.
    public private(set) var history: [Change] = []

    /// An empty watch (nothing known to be listed).
    public init() {}

    /// A watch that starts from listings stored before a restart.
    /// - Parameter listings: the stored listings (sending IP → zone → listing).
    public init(listings: [String: [String: Listing]]) {
        self.listings = listings.filter { !$0.value.isEmpty }
    }

    /// Whether `ip` is listed on any zone.
    public func isListed(_ ip: String) -> Bool { !(listings[ip]?.isEmpty ?? true) }

    /// Why `ip` is held, for operators and the delivery log: `listed on zen.spamhaus.org
    /// (127.0.0.2: reason)`, zones in name order; nil when not listed.
    public func holdReason(_ ip: String) -> String? {
        guard let zones = listings[ip], !zones.isEmpty else { return nil }
        return "listed on " + zones.keys.sorted().map { zone in
            let l = zones[zone]!
            return "\(zone) (\(l.codes.joined(separator: ","))\(l.reason.map { ": " + $0 } ?? ""))"
        }.joined(separator: ", ")
    }

    /// Records one lookup's verdict.
    /// - Parameters:
    ///   - verdict: what `DNSBL.check` answered for `ip` in `zone`.
    ///   - ip: the sending IP.
    ///   - zone: the blocklist zone.
    ///   - now: the current time.
    /// - Returns: the listing or delisting this verdict caused, if any.
    public mutating func record(_ verdict: DNSBL.Verdict, ip: String, zone: String, now: Date) -> [Event] {
        lastChecked[ip] = now
        switch verdict {
        case .unknown(let why):
            unanswered[ip, default: [:]][zone] = why
            return []
        case .listed(let codes, let reason):
            unanswered[ip]?[zone] = nil
            if var existing = listings[ip]?[zone] {
                // Still listed: keep `since`, take the current codes and reason.
                existing.codes = codes; existing.reason = reason
                listings[ip]?[zone] = existing
                return []
            }
            let first = !isListed(ip)
            let listing = Listing(zone: zone, codes: codes, reason: reason, since: now)
            listings[ip, default: [:]][zone] = listing
            remember(Change(at: now, ip: ip, zone: zone, event: "listed", codes: codes, reason: reason))
            return [.listed(ip: ip, listing: listing, firstListing: first)]
        case .notListed:
            unanswered[ip]?[zone] = nil
            guard let old = listings[ip]?.removeValue(forKey: zone) else { return [] }
            if listings[ip]?.isEmpty == true { listings[ip] = nil }
            remember(Change(at: now, ip: ip, zone: zone, event: "delisted", codes: [], reason: nil))
            return [.delisted(ip: ip, zone: zone, seconds: now.timeIntervalSince(old.since), clear: !isListed(ip))]
        }
    }

    /// Forgets IPs and zones no longer configured (after a reload), without events.
    /// - Parameters:
    ///   - ips: the configured sending IPs.
    ///   - zones: the configured zones.
    /// - Returns: the IPs that were listed only on removed zones (now clear: resume them).
    public mutating func keep(ips: Set<String>, zones: Set<String>) -> [String] {
        var cleared: [String] = []
        for (ip, zoneMap) in listings {
            guard ips.contains(ip) else { listings[ip] = nil; continue }
            let kept = zoneMap.filter { zones.contains($0.key) }
            listings[ip] = kept.isEmpty ? nil : kept
            if kept.isEmpty { cleared.append(ip) }
        }
        unanswered = unanswered.filter { ips.contains($0.key) }
        lastChecked = lastChecked.filter { ips.contains($0.key) }
        return cleared.sorted()
    }

    private mutating func remember(_ change: Change) {
        history.append(change)
        if history.count > Self.historyLimit { history.removeFirst(history.count - Self.historyLimit) }
    }
}
