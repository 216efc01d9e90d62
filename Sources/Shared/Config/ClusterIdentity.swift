import Foundation
import HatoIO
import SMTPCore

/// `cluster:` the cluster's name and the secret shared by the coordinator and nodes.
public struct ClusterIdentity: Sendable, Equatable {
    /// `name`: identifier (`[A-Za-z0-9._-]{1,64}`). Required.
    public var name: String
    /// The shared secret, at least 16 characters: `secret` inline, or the contents of
    /// `secret_file` (relative to the config's directory; trailing line breaks removed).
    /// Exactly one of the two is required.
    public var secret: String
    /// `tls`: TLS for the cluster protocol (`certificate`, `private_key`, `ca`). Default none:
    /// plaintext TCP (the HMAC challenge–response still authenticates both sides).
    public var tls: ClusterTLSSettings? = nil

    /// Creates an identity.
    public init(name: String, secret: String) { self.name = name; self.secret = secret }
}
