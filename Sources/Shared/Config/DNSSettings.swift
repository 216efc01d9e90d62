import Foundation
import HatoIO
import SMTPCore

/// `dns:` resolver settings for MX/A/AAAA lookups.
public struct DNSSettings: Sendable, Equatable {
    /// `nameservers`: resolvers as `ip[:port]` (port default 53). Default empty: use `/etc/resolv.conf`.
    public var nameservers: [SocketAddress]
    /// `timeout`: seconds to wait for one DNS answer. Default 5.
    public var timeout: TimeInterval

    /// Creates DNS settings.
    public init(nameservers: [SocketAddress] = [], timeout: TimeInterval = 5) {
        self.nameservers = nameservers; self.timeout = timeout
    }
}
