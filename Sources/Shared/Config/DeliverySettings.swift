import Foundation
import HatoIO
import SMTPCore

/// `delivery:` outbound SMTP settings (all optional).
public struct DeliverySettings: Sendable, Equatable {
    /// `connections_per_ip`: most simultaneous outbound connections per sending IP. Default 8.
    public var connectionsPerIP: Int
    /// `port`: TCP port used for MX hosts. Default 25 (tests point it elsewhere).
    public var port: UInt16
    /// `connect_timeout`: seconds to wait for the TCP connection and greeting. Default 30.
    public var connectTimeout: TimeInterval
    /// `command_timeout`: seconds to wait for a reply to each SMTP command. Default 300 (5m).
    public var commandTimeout: TimeInterval
    /// `data_timeout`: seconds to wait for the reply to the end of DATA. Default 600 (10m).
    public var dataTimeout: TimeInterval
    /// `tls`: outbound STARTTLS policy. Default opportunistic.
    public var tls: OutboundTLSMode = .opportunistic
    /// `timeouts`: per-step timeouts (the flat `*_timeout` keys above set the matching ones). Default RFC 5321 values.
    public var timeouts = DeliveryTimeouts()
    /// `idle_timeout` (or `timeouts.idle`): seconds an unused outbound connection stays open for reuse. Default 30.
    public var idleTimeout: TimeInterval = 30
    /// `allow_loopback_mx`: accept MX hosts that resolve to loopback addresses (tests only; the node's
    /// own addresses are still refused). Default false: such mail fails as a loop (5.4.6).
    public var allowLoopbackMX = false
    /// `mta_sts`: MTA-STS (RFC 8461) for MX delivery. Default off.
    public var mtaSTS = MTASTSSettings()
    /// `dane: { enabled }`: DANE (RFC 7672) for MX delivery when the configured resolvers answer
    /// TLSA lookups with the AD bit (they must validate DNSSEC). Default off.
    public var daneEnabled = false

    /// Creates delivery settings.
    public init(connectionsPerIP: Int = 8, port: UInt16 = 25, connectTimeout: TimeInterval = 30,
                commandTimeout: TimeInterval = 300, dataTimeout: TimeInterval = 600) {
        self.connectionsPerIP = connectionsPerIP; self.port = port; self.connectTimeout = connectTimeout
        self.commandTimeout = commandTimeout; self.dataTimeout = dataTimeout
        // The flat timeouts set the matching per-step ones.
        timeouts = DeliveryTimeouts(connect: connectTimeout, greeting: commandTimeout, ehlo: commandTimeout, startTLS: commandTimeout,
                                    mail: commandTimeout, rcpt: commandTimeout, dataDone: dataTimeout)
    }
}

/// `delivery.mta_sts:` MTA-STS (RFC 8461) settings.
public struct MTASTSSettings: Sendable, Equatable {
    /// `enabled`: look up and enforce MTA-STS policies of recipient domains. Default false.
    public var enabled = false
    /// `ca_file`: PEM trust roots for the policy host's HTTPS certificate and for MX certificates
    /// under a policy; nil (the default) uses the system's roots.
    public var caFile: String? = nil
    /// `fetch_timeout`: seconds for fetching one policy (connect, TLS and each read). Default 10.
    public var fetchTimeout: TimeInterval = 10
    /// `cache_size`: most policy domains cached per node. Default 10 000.
    public var cacheSize = 10_000
    /// `https_port`: TCP port of `mta-sts.<domain>`. Default 443; for tests only (RFC 8461 §3.3
    /// fixes 443).
    public var httpsPort: UInt16 = 443

    /// Default settings (off).
    public init() {}
}
