import Foundation
import HatoCrypto
import HatoIO
import HatoSupport
import SMTPCore

/// `ip_assign` (coordinator → node): the node owns these IPs from now on.
public struct IPAssignMessage: Codable, Sendable, Equatable {
    public var ips: [AssignedIP]
    /// The coordinator's term (absent from coordinators before terms).
    public var term: Int64? = nil
    public init(ips: [AssignedIP], term: Int64? = nil) { self.ips = ips; self.term = term }
}

/// `ip_revoke` (coordinator → node): stop sending from these IPs, finish or abandon their work, then report `ip_released`.
public struct IPRevokeMessage: Codable, Sendable, Equatable {
    public var addresses: [String]
    /// The coordinator's term (absent from coordinators before terms).
    public var term: Int64? = nil
    public init(addresses: [String], term: Int64? = nil) { self.addresses = addresses; self.term = term }
}

/// `ip_released` (node → coordinator): no session from these IPs is open any more.
public struct IPReleasedMessage: Codable, Sendable, Equatable {
    public var addresses: [String]
    public init(addresses: [String]) { self.addresses = addresses }
}

/// `announce` (node → coordinator): the configured sending IPs this host can bind changed
/// (the node re-read cluster.yml on SIGHUP).
public struct AnnounceMessage: Codable, Sendable, Equatable {
    public var bindableIPs: [String]
    public init(bindableIPs: [String]) { self.bindableIPs = bindableIPs }
}

/// `backoff` (node → coordinator): a remote reply matched a backoff rule; stop or slow
/// leases for this (sending IP, provider) pair for `duration` seconds.
public struct BackoffMessage: Codable, Sendable, Equatable {
    public var sendingIP: String
    /// The provider (shaping provider name, or `mx:<host>`).
    public var provider: String
    /// The destination domain whose delivery got the reply (lets the coordinator map domains to providers).
    public var domain: String
    /// `suspend` or `throttle`.
    public var action: String
    /// Seconds.
    public var duration: Double
    /// For throttles: leases per minute.
    public var ratePerMinute: Int?
    /// The reply that matched (code, enhanced code, text; at most 512 characters).
    public var reply: String
    public init(sendingIP: String, provider: String, domain: String, action: String, duration: Double, ratePerMinute: Int?, reply: String) {
        self.sendingIP = sendingIP; self.provider = provider; self.domain = domain; self.action = action
        self.duration = duration; self.ratePerMinute = ratePerMinute; self.reply = reply
    }
}

/// `config_changed` (coordinator → node, feature `config_changed`): the coordinator reloaded
/// cluster.yml. The node re-reads its own copy (the same path on every host), checks it like
/// `hato-node check`, applies what applies live, re-announces the sending IPs it may own and
/// can bind, and answers `config_applied`. Unknown JSON keys are ignored by both sides.
public struct ConfigChangedMessage: Codable, Sendable, Equatable {
    /// The coordinator's reload counter (since its start); the answer carries it back.
    public var generation: Int
    /// SHA-256 (hex) of cluster.yml as the coordinator read it: a node whose file differs says so.
    public var digest: String
    public init(generation: Int, digest: String) { self.generation = generation; self.digest = digest }
}

/// `config_applied` (node → coordinator, answers `config_changed`): what the node did.
public struct ConfigAppliedMessage: Codable, Sendable, Equatable {
    /// The `generation` answered.
    public var generation: Int
    /// Whether the node took the file (false: refused, the node runs on unchanged).
    public var applied: Bool
    /// SHA-256 (hex) of the file the node read.
    public var digest: String
    /// Keys that changed and applied live on the node.
    public var live: [String]
    /// Keys that changed and wait for a restart of this node.
    public var restartRequired: [String]
    /// Why the file was refused (each naming the key and file), or other problems.
    public var errors: [String]
    public init(generation: Int, applied: Bool, digest: String, live: [String], restartRequired: [String], errors: [String]) {
        self.generation = generation; self.applied = applied; self.digest = digest
        self.live = live; self.restartRequired = restartRequired; self.errors = errors
    }
}
