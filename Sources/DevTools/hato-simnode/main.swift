// hato-simnode: simulated worker nodes for the coordinator-ceiling benchmark
// (bench/coordinator-ceiling). A development tool, never part of a deployment: it speaks the
// real cluster protocol (ClusterProtocol's frames, handshake and messages) as every node of
// cluster.yml, or those named, takes leases as a node would, and reports every recipient
// delivered at once without sending anything, so that the coordinator alone is measured.
import Foundation
import HatoConfig
import HatoIO
import HatoSupport

let usage = """
    usage: hato-simnode --config cluster.yml [--nodes ID,ID,...] [--window N] [--stats-interval SECONDS]

    Simulated worker nodes (development and benchmarks only). Each node of cluster.yml (or each
    one named) joins the coordinator with its own id and its configured sending IPs over the real
    cluster protocol, takes leases (N per owned sending IP in flight, like a node with
    connections_per_ip N/2) and reports every leased recipient delivered at once (250 2.0.0):
    no SMTP, no DNS, nothing is sent. One thread per node reads its connection.

    Standard output gets one JSON line of totals every --stats-interval seconds and a last one at
    SIGTERM/SIGINT: t (seconds since 1970), nodes, joined, joins, reconnects, grants, leases,
    leased and reported (recipients), acked (recipients whose result the coordinator
    acknowledged: on its disk), unacked (results waiting for an ack), foreign_leases,
    signing_keys, config_changes, heartbeats. Log lines go to standard error.

    options:
      --config PATH            cluster.yml (default ./cluster.yml)
      --nodes ID,ID,...        the nodes to simulate (default: every nodes[] entry)
      --window N               leases per owned sending IP in flight (default delivery.connections_per_ip x 2, as hato-node)
      --stats-interval SECONDS seconds between stats lines, 0.1 to 60 (default 1)
      --help                   this text
    """

ignoreSIGPIPE()
let args: CLIArguments
do {
    args = try CLIArguments(Array(CommandLine.arguments.dropFirst()), valueOptions: ["config", "nodes", "window", "stats-interval"], flagOptions: [])
} catch {
    exitWithError("hato-simnode: \(error)\n\(usage)", status: 2)
}
if args.flags.contains("help") {
    print(usage)
    exit(0)
}
guard args.subcommand == nil else { exitWithError("hato-simnode: unexpected argument \(args.subcommand!)\n\(usage)", status: 2) }
let config: ClusterConfig
do { config = try ClusterConfig.load(path: args.configPath) } catch { exitWithError("hato-simnode: \(error)") }
let ids: [String]
if let list = args.options["nodes"] {
    ids = list.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    let known = Set(config.nodes.map(\.id))
    for id in ids where !known.contains(id) {
        exitWithError("hato-simnode: --nodes: unknown node id \"\(id)\" (cluster.yml nodes: \(config.nodes.map(\.id).joined(separator: ", ")))", status: 2)
    }
    guard !ids.isEmpty else { exitWithError("hato-simnode: --nodes: no node id given", status: 2) }
} else {
    ids = config.nodes.map(\.id)
    guard !ids.isEmpty else { exitWithError("hato-simnode: \(args.configPath) declares no nodes", status: 2) }
}
let window: Int
let interval: Double
do {
    window = try args.integer("window", in: 1...10_000) ?? max(1, config.delivery.connectionsPerIP) * 2
    let text = args.options["stats-interval"] ?? "1"
    guard let v = Double(text), v >= 0.1, v <= 60 else {
        throw CLIArguments.UsageError(description: "--stats-interval: '\(text)' is not a number of seconds from 0.1 to 60")
    }
    interval = v
} catch {
    exitWithError("hato-simnode: \(error)\n\(usage)", status: 2)
}

let fleet: SimNodeFleet
do {
    fleet = SimNodeFleet(nodes: try ids.map { try SimNode(config: config, nodeID: $0, window: window) })
} catch {
    exitWithError("hato-simnode: \(error)")
}

/// Runs `fleet` until SIGTERM/SIGINT (a last stats line, exit 0) or until every node was
/// refused for good (exit 1), writing a stats line to standard output every `interval` seconds.
func serve(_ fleet: SimNodeFleet, interval: Double, ids: [String], window: Int, config: ClusterConfig) -> Never {
    /// One stats line, written at once (the bench script polls the file).
    let emit: @Sendable () -> Void = { FileHandle.standardOutput.write(Data((fleet.statsLine() + "\n").utf8)) }
    Logger(label: "simnode").info("starting simulated nodes", ["nodes": "\(ids.count)", "window": "\(window)",
                                                                "coordinators": config.coordinatorAddresses.map(\.description).joined(separator: ",")])
    fleet.start()
    var sources: [DispatchSourceSignal] = []
    for sig in [SIGTERM, SIGINT] {
        signal(sig, SIG_IGN)
        let s = DispatchSource.makeSignalSource(signal: sig, queue: .main)
        s.setEventHandler {
            fleet.stop()
            emit()
            exit(0)
        }
        s.resume()
        sources.append(s)
    }
    let ticker = DispatchSource.makeTimerSource(queue: .main)
    ticker.schedule(deadline: .now() + interval, repeating: interval)
    ticker.setEventHandler {
        emit()
        // Every node refused for good (wrong secret, cluster or version): nothing left to do.
        if fleet.nodes.allSatisfy({ !$0.isRunning }) {
            FileHandle.standardError.write(Data("hato-simnode: every node stopped: \(fleet.nodes.first?.lastError ?? "?")\n".utf8))
            exit(1)
        }
    }
    ticker.resume()
    withExtendedLifetime((sources, ticker)) { dispatchMain() }
}

serve(fleet, interval: interval, ids: ids, window: window, config: config)
