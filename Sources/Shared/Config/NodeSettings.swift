import Foundation
import HatoIO
import SMTPCore

/// One `nodes:` entry: a relay node.
public struct NodeSettings: Sendable, Equatable {
    /// `id`: unique node id (`[A-Za-z0-9._-]{1,64}`). Required.
    public var id: String
    /// `data_dir`: absolute directory for the node's spool; unique across the cluster. Required.
    public var dataDir: String
    /// `metrics_listen`: where the node serves `/metrics` (Prometheus text format); nil for none. Default none.
    public var metricsListen: SocketAddress? = nil
    /// `tls`: this node's own client certificate and key for the cluster link, overriding the
    /// `cluster.tls` pair (so each node host holds only its own key). Default none.
    public var tls: TLSPairSettings? = nil

    /// Creates node settings.
    public init(id: String, dataDir: String) { self.id = id; self.dataDir = dataDir }
}
