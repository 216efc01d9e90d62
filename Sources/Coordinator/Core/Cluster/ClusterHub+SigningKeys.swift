import ClusterProtocol
import Foundation

/// The tenants' DKIM keys to the nodes (issue 16): right after each `welcome`, and to every
/// joined node whenever the store's `tenantsVersion()` moves. Everything here runs on the
/// scheduler thread, the only thread that queues `welcome` and grants, so on each link the
/// keys are queued before any grant that follows them.
extension ClusterHub {
    /// Queues the current set on a just-welcomed link (reading the store first if no set has
    /// been read yet). Only for nodes that named the `signing_keys` feature.
    func sendSigningKeys(to link: NodeLink, term: Int64?) {
        guard link.features.contains(ClusterFeature.signingKeys) else { return }
        var message = signingKeyFeed.withLock { $0.message }
        if message == nil {
            let outcome = signingKeyFeed.withLock { $0.poll(store, now: .now, force: true) }
            report(outcome)
            message = signingKeyFeed.withLock { $0.message }
        }
        guard var message else {
            log.warning("node joined before the tenants' signing keys could be read; they follow when the store answers", ["node": link.nodeID])
            return
        }
        guard fitsOneFrame(message) else { return }
        message.term = term
        link.send(.message(.signingKeys(message)))
    }

    /// Polls the store's version (at most every `SigningKeyFeed.pollInterval`) and queues a
    /// changed set on every welcomed link that speaks `signing_keys`.
    /// - Parameter force: read the store now, whatever the interval.
    func pollSigningKeys(term: Int64?, force: Bool = false) {
        let outcome = signingKeyFeed.withLock { $0.poll(store, now: .now, force: force) }
        report(outcome)
        guard case .changed(var message) = outcome, mayAct(under: term), fitsOneFrame(message) else { return }
        message.term = term
        for link in links.withLock({ Array($0.values) }) where link.isWelcomed && link.features.contains(ClusterFeature.signingKeys) {
            link.send(.message(.signingKeys(message)))
        }
    }

    /// Whether the set fits the nodes' maximum frame (`clusterMaximumFrameSize`: 1 MiB plus twice
    /// `smtp.max_message_size`; about 2.6 kB a domain, so some 20 000 domains at the default
    /// 25 MiB). A larger set is not sent (a node would close the link on it): logged as an error.
    private func fitsOneFrame(_ message: SigningKeysMessage) -> Bool {
        let estimate = message.keys.reduce(256) { $0 + $1.sealedPrivateKey.utf8.count + $1.domain.utf8.count + $1.selector.utf8.count + 96 }
        let limit = clusterMaximumFrameSize(maxMessageSize: currentConfig.smtp.maxMessageSize)
        guard estimate > limit else { return true }
        log.error("the tenants' signing keys do not fit one cluster frame; not sent (raise smtp.max_message_size)",
                  ["keys": "\(message.keys.count)", "octets": "\(estimate)", "limit": "\(limit)"])
        return false
    }

    /// Logs a poll's outcome: counts only, never keys.
    private func report(_ outcome: SigningKeyFeed.Outcome) {
        switch outcome {
        case .unchanged: break
        case .changed(let m):
            log.info("tenant signing keys", ["version": "\(m.version)", "domains": "\(Set(m.keys.map(\.domain)).count)", "keys": "\(m.keys.count)"])
        case .failed(let error, let first):
            if first { log.error("reading the tenants' signing keys failed; nodes keep the keys they have", ["error": error]) }
        }
    }
}
