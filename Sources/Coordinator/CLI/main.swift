import Foundation
import HatoCoordinator
import HatoShared

let usage = """
    usage: hato-coordinator <command> [--config PATH] [options]

    commands:
      serve                 run the coordinator (SMTP listener, queue, scheduler, admin API)
      check                 validate what serve needs: cluster.yml, the files it names (TLS certificates
                            and keys, CA bundles, DKIM keys, admin_token_file), data_dir, bindable
                            listen addresses; one line per item (ok/warning/error), exit 1 on an error
      status [--json]       nodes, sending IPs and queue counts, from the admin API
      nodes [--json]        nodes with state, owned IPs and leases in flight
      ips [--json]          the IP assignment table
      queue [--json]        recipient counts by state
      messages [--limit N]  recent message ids
      message ID [--json]   one message and each recipient's state, node and sending IP
      recipient ADDRESS     messages for one recipient, with each recipient's state
      drain NODE [--wait] [--timeout 10m]
                            stop leasing to NODE, let its deliveries finish, hand its floating IPs over;
                            --wait shows progress and exits when drained (non-zero on timeout)
      resume NODE           make a draining or drained node active again
      rebalance [--dry-run] even out sending IPs over active nodes with the fewest moves (handover)
      reload                re-read cluster.yml, check it, and apply it: prints what applied live, what
                            needs a restart of which process, and each node's answer (also: SIGHUP)
      suspensions           active backoffs per (sending IP, provider)
      lift IP PROVIDER      end a suspension or throttle early
      suppressions list [--address A]
      suppressions add ADDRESS [--scope DOMAIN] [--reason TEXT] [--expires 90d]
      suppressions remove ADDRESS [--scope DOMAIN|global]
                            the suppression list (hard-bounced addresses that are not tried again)
      log --message ID | --recipient ADDRESS [--limit N]
                            delivery log events of one message or one recipient
      hash-password [--iterations N]
                            read a password from stdin (prompted on a terminal) and print its
                            $pbkdf2-sha256$ hash for smtp.users[].password_hash; needs no config

    options:
      --config PATH         cluster configuration (default ./cluster.yml)
      --json                print the admin API's JSON instead of a table
      --help                this text
    """

ignoreSIGPIPE()
// Each SMTP session, admin request and node link holds a descriptor: take the hard limit.
OpenFileLimit.raiseSoftLimit()
let args: CLIArguments
do {
    args = try CLIArguments(Array(CommandLine.arguments.dropFirst()), valueOptions: ["config", "iterations", "limit", "timeout", "message", "recipient", "address", "scope", "reason", "expires"], flagOptions: ["json", "wait", "dry-run"])
} catch {
    exitWithError("hato-coordinator: \(error)\n\(usage)", status: 2)
}
if args.flags.contains("help") || args.subcommand == nil || args.subcommand == "help" {
    print(usage)
    exit(args.subcommand == nil && !args.flags.contains("help") ? 2 : 0)
}

if args.subcommand == "hash-password" { exit(HashPasswordCommand.run(iterations: args.options["iterations"])) }

if args.subcommand == "check" {
    var (loaded, report) = ConfigCheck.load(path: args.configPath)
    if let loaded { report.items += ConfigCheck.coordinator(loaded).items }
    print(report.rendered())
    exit(report.hasErrors ? 1 : 0)
}

let config: ClusterConfig
do { config = try ClusterConfig.load(path: args.configPath) } catch { exitWithError("hato-coordinator: \(error)") }

switch args.subcommand! {
case "serve":
    do {
        let service = try CoordinatorService(config: config)
        try service.start()
        // SIGHUP reloads like `hato-coordinator reload`: the outcome (or why the file was
        // refused, the running configuration unchanged) is logged by `reload()`.
        signal(SIGHUP, SIG_IGN)
        let hup = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global())
        hup.setEventHandler { _ = try? service.reload() }
        hup.resume()
        // SIGTERM/SIGINT: stop listening, mark the queue cleanly stopped, exit 0.
        var stops: [any DispatchSourceSignal] = []
        for sig in [SIGTERM, SIGINT] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler {
                service.stopForExit()
                exit(0)
            }
            source.resume()
            stops.append(source)
        }
        withExtendedLifetime((hup, stops)) { while true { sleep(3600) } }
    } catch {
        exitWithError("hato-coordinator: cannot start: \(error)")
    }
case let c where AdminCommands.names.contains(c):
    let client = AdminClient(config: config)
    do {
        try AdminCommands(client: client, json: args.flags.contains("json")).run(c, positional: args.positional, options: args.options, flags: args.flags)
    } catch {
        exitWithError("hato-coordinator: \(error)")
    }
case let c where ReportingCommands.names.contains(c):
    do {
        try ReportingCommands(client: AdminClient(config: config), json: args.flags.contains("json")).run(c, positional: args.positional, options: args.options)
    } catch {
        exitWithError("hato-coordinator: \(error)")
    }
default:
    exitWithError("hato-coordinator: unknown command \(args.subcommand!)\n\(usage)", status: 2)
}
