import ClusterProtocol
import Foundation

/// What the coordinator sends the nodes of the tenants' DKIM keys (issue 16): the whole set as
/// one `signing_keys` frame, read from the store again only when `tenantsVersion()` moved.
///
/// A value owned by the hub's scheduler thread: `poll` reads the version at most every
/// `pollInterval`, and the domains only when the version changed. The keys stay sealed.
struct SigningKeyFeed: Sendable {
    /// The least time between two reads of `tenantsVersion()`.
    static let pollInterval: Duration = .seconds(2)

    /// The set as last read (nil before the first successful read).
    private(set) var message: SigningKeysMessage?
    private var lastPoll: ContinuousClock.Instant?
    /// Whether the last read failed (an error is logged once per failing stretch).
    private(set) var failing = false

    /// What a poll found.
    enum Outcome: Sendable, Equatable {
        /// Not due yet, or the version is unchanged.
        case unchanged
        /// A new set to send to every node.
        case changed(SigningKeysMessage)
        /// The store could not be read; `firstFailure` says whether to log it.
        case failed(String, firstFailure: Bool)
    }

    /// Reads the version when due (or at once with `force`, or before the first set), and the
    /// domains when it changed.
    /// - Parameters:
    ///   - store: the tenant store.
    ///   - now: the monotonic time.
    ///   - force: read now whatever the interval.
    mutating func poll(_ store: any TenantStore, now: ContinuousClock.Instant, force: Bool = false) -> Outcome {
        if !force, let last = lastPoll, now - last < SigningKeyFeed.pollInterval { return .unchanged }
        lastPoll = now
        do {
            let version = try store.tenantsVersion()
            if let message, message.version == version { failing = false; return .unchanged }
            let next = SigningKeyFeed.message(from: try store.sendingDomains(tenant: nil), version: version)
            failing = false
            message = next
            return .changed(next)
        } catch {
            defer { failing = true }
            return .failed("\(error)", firstFailure: !failing)
        }
    }

    /// The frame for a set of domains: every key, sealed private key in base64, by domain then
    /// selector.
    static func message(from domains: [SendingDomain], version: Int64) -> SigningKeysMessage {
        var keys: [SealedSigningKey] = []
        for d in domains.sorted(by: { $0.domain < $1.domain }) {
            for k in d.keys.sorted(by: { $0.selector < $1.selector }) {
                keys.append(SealedSigningKey(domain: d.domain, selector: k.selector, algorithm: k.algorithm,
                                             sealedPrivateKey: Data(k.sealedPrivateKey).base64EncodedString()))
            }
        }
        return SigningKeysMessage(version: version, keys: keys)
    }
}
