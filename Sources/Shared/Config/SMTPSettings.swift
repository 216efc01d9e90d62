import Foundation
import HatoIO
import SMTPCore

/// `smtp:` the inbound SMTP listener every node runs.
public struct SMTPSettings: Sendable, Equatable {
    /// `listen`: addresses to accept SMTP on (a list, or one address); at least one. Required.
    public var listen: [SocketAddress]
    /// `hostname`: the name used in the greeting and `Received:` headers. Required.
    public var hostname: String
    /// `relay_networks`: client networks allowed to relay (CIDRs). Default `[127.0.0.0/8, ::1/128]`.
    public var relayNetworks: [IPNetwork]
    /// `max_message_size`: largest accepted message in octets (1 KiB … 1 GiB). Default 25 MiB.
    public var maxMessageSize: Int
    /// `max_recipients`: most RCPT TO per message (≥ 1). Default 1000.
    public var maxRecipients: Int
    /// `tls`: `{ certificate, private_key }` PEM paths for STARTTLS (RFC 3207); nil: not offered. Default nil.
    public var tls: SMTPTLSSettings? = nil
    /// `require_tls`: refuse MAIL with `530 5.7.0` until STARTTLS (needs `tls`). Default false.
    public var requireTLS = false
    /// `users`: `[{ name, password_hash }]` accounts for AUTH PLAIN/LOGIN (RFC 4954); AUTH is offered
    /// only over TLS unless `auth_allow_plaintext_loopback`. Authenticated clients may relay. Default none.
    public var users: [SMTPUser] = []
    /// `auth_allow_plaintext_loopback`: also offer AUTH without TLS to clients on 127.0.0.0/8 or ::1
    /// (local apps; never off-host). Default false.
    public var authAllowPlaintextLoopback = false
    /// `max_connections`: most simultaneous SMTP sessions; more get `421 4.7.0`. Default 1000.
    public var maxConnections = 1000
    /// `max_connections_per_client`: most simultaneous sessions from one client address; more get
    /// `421 4.7.0`. Default 50.
    public var maxConnectionsPerClient = 50
    /// `command_timeout`: seconds a client may take to send one complete command line, counted
    /// from the previous reply (RFC 5321 §4.5.3.2.7); then `421 4.4.2`. Default 300 (5m).
    public var commandTimeout: TimeInterval = 300
    /// `data_timeout`: seconds without progress allowed while reading DATA or BDAT content (a
    /// deadline extended by received octets at 500 octets/s, capped at this); then `421 4.4.2`. Default 300 (5m).
    public var dataTimeout: TimeInterval = 300
    /// `auth_failure_limit`: failed AUTH attempts per client address within `auth_failure_window`
    /// before further attempts get `454 4.7.0` without a check. Default 10.
    public var authFailureLimit = 10
    /// `auth_failure_window`: seconds failed AUTH attempts are remembered. Default 900 (15m).
    public var authFailureWindow: TimeInterval = 900
    /// `queue_min_free`: free space the queue's file system keeps (Postfix's `queue_minfree`); below
    /// it MAIL gets `452 4.3.1` while delivery and result recording go on in the headroom. A size
    /// (`512MiB`), a share of the file system (`5%`), or `0` to disable. Default: 1 GiB or 5 %,
    /// whichever is smaller.
    public var queueMinFree: QueueMinFree = .default
    /// `max_content_memory`: octets of message content all sessions together may hold in memory
    /// while receiving it (DATA or BDAT). A message whose content would go past it is read to its
    /// end and refused with `452 4.3.1` (the client retries later), and MAIL gets `452 4.3.1`
    /// while less than its declared `SIZE` (or 1 MiB) is left, so many large transactions held
    /// open cannot exhaust the coordinator's memory. Nil (the default): 128 MiB, or
    /// 2 × `max_message_size` when that is larger (see `contentMemoryLimit`).
    public var maxContentMemory: Int? = nil

    /// The content memory limit in force, in octets: `max_content_memory`, or by default the
    /// larger of 128 MiB and 2 × `max_message_size` (one message of the largest size always fits).
    public var contentMemoryLimit: Int { maxContentMemory ?? max(128 << 20, 2 * maxMessageSize) }
    /// `postmaster`: the operator mailbox that `postmaster` and `postmaster@<hostname>` are delivered to,
    /// accepted from any client (RFC 5321 §4.5.1). Default none: clients that may not relay get
    /// `550 5.3.5` for postmaster, relaying clients relay it as `postmaster@<hostname>`.
    public var postmaster: Mailbox? = nil
    /// `postmaster_rate_limit`: postmaster recipients accepted per client address that may not relay
    /// within `postmaster_rate_window`; more get `452 4.7.1`. Default 10.
    public var postmasterRateLimit = 10
    /// `postmaster_rate_window`: the sliding window of `postmaster_rate_limit`, in seconds. Default 3600 (1h).
    public var postmasterRateWindow: TimeInterval = 3600

    /// The default `relay_networks`: loopback only.
    public static let defaultRelayNetworks: [IPNetwork] = {
        var nets: [IPNetwork] = []
        if let v4 = try? IPNetwork(parsing: "127.0.0.0/8") { nets.append(v4) }
        if let v6 = try? IPNetwork(parsing: "::1/128") { nets.append(v6) }
        return nets
    }()

    /// Creates SMTP settings.
    public init(listen: [SocketAddress], hostname: String, relayNetworks: [IPNetwork] = SMTPSettings.defaultRelayNetworks,
                maxMessageSize: Int = 25 * 1024 * 1024, maxRecipients: Int = 1000) {
        self.listen = listen; self.hostname = hostname; self.relayNetworks = relayNetworks
        self.maxMessageSize = maxMessageSize; self.maxRecipients = maxRecipients
    }

    /// Whether a client at `host` (numeric address) may relay.
    public func mayRelay(_ host: String) -> Bool { relayNetworks.contains { $0.contains(host) } }
}
