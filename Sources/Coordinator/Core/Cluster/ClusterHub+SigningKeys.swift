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
        message.term = term
        link.send(.message(.signingKeys(message)))
    }

    /// Polls the store's version (at most every `SigningKeyFeed.pollInterval`) and queues a
    /// changed set on every welcomed link that speaks `signing_keys`.
    func pollSigningKeys(term: Int64?) {
        let outcome = signingKeyFeed.withLock { $0.poll(store, now: .now) }
        report(outcome)
        guard case .changed(var message) = outcome, mayAct(under: term) else { return }
        message.term = term
        for link in links.withLock({ Array($0.values) }) where link.isWelcomed && link.features.contains(ClusterFeature.signingKeys) {
            link.send(.message(.signingKeys(message)))
        }
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
