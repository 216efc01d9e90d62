import ClusterProtocol
import Foundation
import HatoConfig
import HatoCrypto
import HatoDelivery
import HatoSupport

/// What a configuration reload changed: every changed key either applied live (`live`) or is
/// listed as needing a restart of the coordinator, every node or a named node
/// (`restartRequired`); and what each node did (`nodes`).
public struct ReloadReport: Codable, Sendable, Equatable {
    public var ipsAdded: [String]
    public var ipsRemoved: [String]
    public var nodesAdded: [String]
    public var nodesRemoved: [String]
    public var poolsAdded: [String]
    public var poolsRemoved: [String]
    /// Changed keys that applied at once (`ConfigReload.liveKeys`).
    public var live: [String] = []
    /// `needs restart of coordinator: …`, `needs restart of every node: …`, `needs restart of
    /// node X: …` lines (`ConfigReload.restartRequired`).
    public var restartRequired: [String]
    /// The coordinator's reload counter since its start (what `config_changed` carried).
    public var generation = 0
    /// Each configured node's answer to `config_changed`.
    public var nodes: [NodeReloadAnswer] = []

    public init(ipsAdded: [String], ipsRemoved: [String], nodesAdded: [String], nodesRemoved: [String], poolsAdded: [String],
                poolsRemoved: [String], live: [String] = [], restartRequired: [String], generation: Int = 0, nodes: [NodeReloadAnswer] = []) {
        self.ipsAdded = ipsAdded; self.ipsRemoved = ipsRemoved; self.nodesAdded = nodesAdded; self.nodesRemoved = nodesRemoved
        self.poolsAdded = poolsAdded; self.poolsRemoved = poolsRemoved; self.live = live; self.restartRequired = restartRequired
        self.generation = generation; self.nodes = nodes
    }

    /// Decodes a report; the keys an older coordinator does not send default to empty.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        ipsAdded = try c.decode([String].self, forKey: .ipsAdded); ipsRemoved = try c.decode([String].self, forKey: .ipsRemoved)
        nodesAdded = try c.decode([String].self, forKey: .nodesAdded); nodesRemoved = try c.decode([String].self, forKey: .nodesRemoved)
        poolsAdded = try c.decode([String].self, forKey: .poolsAdded); poolsRemoved = try c.decode([String].self, forKey: .poolsRemoved)
        restartRequired = try c.decode([String].self, forKey: .restartRequired)
        live = try c.decodeIfPresent([String].self, forKey: .live) ?? []
        generation = try c.decodeIfPresent(Int.self, forKey: .generation) ?? 0
        nodes = try c.decodeIfPresent([NodeReloadAnswer].self, forKey: .nodes) ?? []
    }
}

/// One node's part of a reload: its answer to `config_changed`, or why there is none.
public struct NodeReloadAnswer: Codable, Sendable, Equatable {
    /// How the node fared.
    public enum Status: String, Codable, Sendable, Equatable {
        /// It re-read cluster.yml and applied what applies live.
        case applied
        /// It refused the file (`errors` say why) and runs on unchanged.
        case refused
        /// It did not answer within the reload's wait (it may still apply the file).
        case noAnswer = "no answer"
        /// It is not connected: it reads cluster.yml when it starts.
        case notConnected = "not connected"
        /// An older node without `config_changed`: send it SIGHUP (IPs only) or restart it.
        case unsupported
    }
    /// The node id.
    public var node: String
    public var status: Status
    /// Changed keys that applied on the node.
    public var live: [String] = []
    /// Changed keys that wait for a restart of the node.
    public var restartRequired: [String] = []
    /// Why the node refused the file, or a warning (its file differs from the coordinator's).
    public var errors: [String] = []

    public init(node: String, status: Status, live: [String] = [], restartRequired: [String] = [], errors: [String] = []) {
        self.node = node; self.status = status; self.live = live; self.restartRequired = restartRequired; self.errors = errors
    }
}
