import Foundation

/// What an operator can pause: a mailbox provider, a pool or a sending IP (as PowerMTA's
/// `pmta pause queue` and KumoMTA's `kcli suspend`). Paused mail stays queued — it is not
/// attempted, gets its delay notice and expires by `retry.max_age` like any waiting mail.
public struct PauseTarget: Sendable, Hashable, Codable, CustomStringConvertible {
    /// The kind of target.
    public enum Kind: String, Sendable, Codable, CaseIterable {
        /// A mailbox provider by its label (`gmail`, `microsoft`, a `shaping.providers` name).
        case provider
        /// A pool (`pools[].name`).
        case pool
        /// A sending IP (`ips[].address`).
        case ip
    }
    /// Provider, pool or sending IP.
    public var kind: Kind
    /// The provider label (lower case), pool name or IP address.
    public var name: String

    /// A target; see the properties.
    public init(kind: Kind, name: String) { self.kind = kind; self.name = name }

    /// `provider gmail`, `pool bulk`, `ip 192.0.2.10`.
    public var description: String { "\(kind.rawValue) \(name)" }
}

/// One active pause.
public struct Pause: Sendable, Equatable, Codable {
    /// What is paused.
    public var target: PauseTarget
    /// Who paused it (the operator name the CLI sends, or `admin`).
    public var by: String
    /// Why, as given.
    public var reason: String
    /// Seconds since 1970 when it was paused.
    public var at: Double

    /// A pause; see the properties (`at` in seconds since 1970).
    public init(target: PauseTarget, by: String, reason: String, at: Double) {
        self.target = target; self.by = by; self.reason = reason; self.at = at
    }
}
