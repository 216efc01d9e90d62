import Foundation
import HatoConfig
import HatoIO

/// Which coordinator a node connects to next: the leader a standby named in a `redirect`, else
/// the configured coordinators in turn (a failed or refused connection moves to the next one).
///
/// A pure value; `NodeAgent.run` asks it for each attempt. With one configured coordinator it
/// always answers that one, as before several coordinators existed.
public struct CoordinatorTargets: Sendable, Equatable {
    /// The configured coordinators' cluster addresses, in configuration order (at least one).
    public let configured: [SocketAddress]
    /// The leader a standby named, tried next (once) when set.
    public private(set) var redirect: SocketAddress? = nil
    private var index = 0
    /// Redirects followed in a row without a successful join (a loop guard).
    public private(set) var redirectsInARow = 0

    /// The most redirects followed in a row before falling back to the configured order (two
    /// standbys naming each other while the leadership moves must not spin).
    public static let maximumRedirectsInARow = 3

    /// - Parameter configured: the coordinators' cluster addresses (at least one).
    public init(configured: [SocketAddress]) {
        precondition(!configured.isEmpty, "at least one coordinator")
        self.configured = configured
    }

    /// The address for the next connection attempt.
    public var next: SocketAddress { redirect ?? configured[index % configured.count] }

    /// Whether the next attempt follows a redirect (the node then skips its backoff wait).
    public var followingRedirect: Bool { redirect != nil }

    /// A standby answered with a redirect naming `address` (nil: no leader known right now).
    /// - Parameter address: the leader's `host:port`, as the redirect named it.
    public mutating func redirected(to address: String?) {
        redirectsInARow += 1
        guard redirectsInARow <= Self.maximumRedirectsInARow, let address,
              let target = try? ConfigValue.socketAddress(address, defaultPort: nil) else {
            // Not followed: the configured order and the backoff, once; the next redirect is
            // followed again (the leader may just have been restarting).
            if redirectsInARow > Self.maximumRedirectsInARow { redirectsInARow = 0 }
            redirect = nil
            advance()
            return
        }
        redirect = target
    }

    /// The attempt failed (connection refused, timeout, refused welcome): try the next one.
    public mutating func failed() {
        if redirect != nil {
            redirect = nil
        } else {
            advance()
        }
    }

    /// The node joined: stay with this coordinator, and reset the redirect guard.
    public mutating func joined() {
        if let redirect, let i = configured.firstIndex(of: redirect) { index = i }
        redirect = nil
        redirectsInARow = 0
    }

    private mutating func advance() { index = (index + 1) % configured.count }
}
