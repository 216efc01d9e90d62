import Foundation
import HatoCoordinator
import HatoShared

let usage = """
    usage: hato-coordinator <command> [--config PATH] [options]

    commands:
      serve                 run the coordinator (SMTP listener, queue, scheduler, admin API)
      status [--json]       nodes, sending IPs and queue counts, from the admin API
      nodes [--json]        nodes with state, owned IPs and leases in flight
      ips [--json]          the IP assignment table
      queue [--json]        recipient counts by state
      messages [--limit N]  recent message ids
      message ID [--json]   one message and each recipient's state, node and sending IP

    options:
      --config PATH         cluster configuration (default ./cluster.yml)
      --json                print the admin API's JSON instead of a table
      --help                this text
    """

ignoreSIGPIPE()
let args: CLIArguments
do {
    args = try CLIArguments(Array(CommandLine.arguments.dropFirst()), valueOptions: ["config", "limit"], flagOptions: ["json"])
} catch {
    exitWithError("hato-coordinator: \(error)\n\(usage)", status: 2)
}
if args.flags.contains("help") || args.subcommand == nil || args.subcommand == "help" {
    print(usage)
    exit(args.subcommand == nil && !args.flags.contains("help") ? 2 : 0)
}

let config: ClusterConfig
do { config = try ClusterConfig.load(path: args.configPath) } catch { exitWithError("hato-coordinator: \(error)") }

switch args.subcommand! {
case "serve":
    do {
        let service = try CoordinatorService(config: config)
        try service.start()
    } catch {
        exitWithError("hato-coordinator: cannot start: \(error)")
    }
    while true { sleep(3600) }
case "status", "nodes", "ips", "queue", "messages", "message":
    let client = AdminClient(config: config)
    do {
        try AdminCommands(client: client, json: args.flags.contains("json")).run(args.subcommand!, positional: args.positional, options: args.options)
    } catch {
        exitWithError("hato-coordinator: \(error)")
    }
default:
    exitWithError("hato-coordinator: unknown command \(args.subcommand!)\n\(usage)", status: 2)
}
