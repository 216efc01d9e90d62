import Foundation
import HatoConfig
import HatoCoordinator
import HatoIO
import HatoSupport

let usage = """
    usage: hato-coordinator <command> [--config PATH] [options]

    commands:
      serve                 run the coordinator (SMTP listener, queue, scheduler, admin API)
      check                 validate what serve needs: cluster.yml, the files it names (TLS certificates
                            and keys, CA bundles, DKIM keys, admin_token_file), data_dir, bindable
                            listen addresses; one line per item (ok/warning/error), exit 1 on an error
      status [--json]       nodes, sending IPs and queue counts, from the admin API
      nodes [--json]        nodes with state, owned IPs and leases in flight
      ips [--detail] [--json]
                            the IP assignment table; --detail adds each IP's weight, the share of its
                            pool that gives it, and its real share of the recipients leased since start
      queue [--json]        recipient counts by state
      queue --by domain|provider|pool|ip|state|priority [--limit N]
                            waiting recipients (queued, deferred, leased, held) per key, with the oldest
      queue list [--state queued|deferred|leased|held] [--domain D] [--provider P] [--pool P]
                 [--ip A] [--sender S] [--limit N] [--after CURSOR]
                            a page of waiting recipients, each with why it waits
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
      doctor [--json]       every finding for the cluster (PTR/FCrDNS, HELO, SPF, DKIM, TLS expiry, clock
                            skew) with severity and a fix; exit status 1 when any is an error
      lift IP PROVIDER      end a suspension or throttle early
      lift --provider P     end every backoff of a provider (all its sending IPs)

    queue control (by ID… — message ids, or recipient ids of digits only — or by a selector:
    --domain D, --provider P, --pool P, --ip A (- = never tried), --sender ADDR|DOMAIN|'<>',
    --state S; --all to select every waiting recipient; --dry-run shows the count only;
    --reason TEXT; --operator NAME (or --as NAME) names the operator, default $SUDO_USER or $USER;
    COMMAND --help shows each one's arguments and examples):
      flush ...             make due now and wake the scheduler
      hold ...              keep from delivery (state held) until released
      release ...           put held recipients back in the queue, due now
      delete ...            remove from delivery without a DSN (state deleted)
      bounce ...            fail with a DSN to the sender (550 5.0.0 bounced by operator NAME)
      pause --provider P | --pool P | --ip A [--reason TEXT]
                            lease none of its mail (it waits, gets its delay notice, expires as usual)
      resume --provider P | --pool P | --ip A
                            end a pause
      pauses                the active pauses
      suppressions list [--address A]
      suppressions add ADDRESS [--scope DOMAIN] [--reason TEXT] [--expires 90d]
      suppressions remove ADDRESS [--scope DOMAIN|global]
                            the suppression list (hard-bounced addresses that are not tried again)
      log --message ID | --recipient ADDRESS [--limit N]
                            delivery log events of one message or one recipient
      tls-reports [--day YYYY-MM-DD] [--domain D]
                            TLS-RPT counts (MTA-STS, DANE) per day and policy domain
      complaints [--since 24h]
                            complaints from feedback loops per sending IP, provider, sender domain, tenant
      store migrate --from sqlite --to postgresql [--sqlite PATH] [--dry-run]
                            copy the SQLite queue (coordinator.data_dir/queue.db) into the PostgreSQL
                            store of cluster.yml's store:, in one verified transaction; refuses while a
                            coordinator serves; a second run copies nothing
      tenant list | create NAME [--pool P] [--priority bulk] [--limit 10000/day,500/hour,50/message] [--webhook URL]
                 [--webhook-secret-file F] | show NAME | set NAME [...] | delete NAME
                            create prints the tenant's first API key once
      tenant suspend NAME [--reason TEXT] | resume NAME
                            customers of the relay service: suspend refuses their new mail (550 5.7.1)
                            and holds their waiting mail; resume releases it
      tenant smtp-user add TENANT USER | smtp-user remove TENANT USER
                            a tenant's SMTP AUTH users (password from stdin or prompted; only its hash is sent)
      tenant key create TENANT [--label TEXT] | key list TENANT | key revoke TENANT ID
                            a tenant's HTTP API keys (the key is printed once; Hato keeps its hash)
      domain add DOMAIN --tenant T | list [--tenant T] | records DOMAIN | check DOMAIN | remove DOMAIN
                            a tenant's sending domains: add makes its DKIM keys (ed25519 and rsa-2048) and
                            prints the DNS records to publish; check looks each up (ok/missing/wrong)
      operator add NAME | list | remove NAME
                            the web dashboard's operator accounts (/ui/ on admin_listen): add reads the
                            password from stdin (prompted twice on a terminal); only its hash is sent
      hash-password [--iterations N]
                            read a password from stdin (prompted on a terminal) and print its
                            $pbkdf2-sha256$ hash for smtp.users[].password_hash; needs no config

    options:
      --config PATH         cluster configuration (default ./cluster.yml)
      --json                print the admin API's JSON instead of a table
      --operator NAME       the operator named in logs and events (also --as; default $SUDO_USER or $USER)
      --help                this text; COMMAND --help (or help COMMAND): that command's page
      --version             print the version
    """

ignoreSIGPIPE()
// Each SMTP session, admin request and node link holds a descriptor: take the hard limit.
OpenFileLimit.raiseSoftLimit()
let args: CLIArguments
do {
    args = try CLIArguments(Array(CommandLine.arguments.dropFirst()), valueOptions: ["config", "iterations", "limit", "timeout", "message", "recipient", "address", "scope", "reason", "expires",
                                                                                       "by", "state", "domain", "provider", "pool", "ip", "sender", "after", "as", "operator", "id",
                                                                                       "from", "to", "sqlite", "label", "per-hour", "per-day", "per-month", "max-recipients", "webhook", "webhook-secret-file", "tenant", "since", "priority"],
                          flagOptions: ["json", "wait", "dry-run", "all", "version", "detail"])
} catch {
    exitWithError("hato-coordinator: \(error)\n\(usage)", status: 2)
}
if args.flags.contains("version") || args.subcommand == "version" {
    print(HatoVersion.banner(program: "hato-coordinator"))
    exit(0)
}
// `COMMAND --help` and `help COMMAND`: that command's own page (usage, arguments, examples).
if let command = args.subcommand == "help" ? args.positional.first : args.flags.contains("help") ? args.subcommand : nil,
   let page = CommandHelp.page(command) {
    print(page)
    exit(0)
}
if args.flags.contains("help") || args.subcommand == nil || args.subcommand == "help" {
    print(usage)
    exit(args.subcommand == nil && !args.flags.contains("help") ? 2 : 0)
}

if args.subcommand == "hash-password" { exit(HashPasswordCommand.run(iterations: args.options["iterations"])) }

// Every --limit is a whole number of at least 1, within the command's bounds: checked before anything runs.
// (`tenant --limit` is a plan, 10000/day: TenantCommands checks it.)
do { if args.subcommand != "tenant" { _ = try args.integer("limit", in: QueueCommands.limits(args.subcommand ?? "", options: args.options) ?? 1...Int.max) } } catch {
    exitWithError("hato-coordinator: \(error) (see hato-coordinator \(args.subcommand ?? "") --help)", status: 2)
}

if args.subcommand == "check" {
    var (loaded, report) = ConfigCheck.load(path: args.configPath)
    if let loaded {
        // With a coordinators: list, --id names the coordinator of this host (its addresses are bind-tested).
        do {
            let mine = try loaded.selectingCoordinator(args.options["id"])
            report.items += ConfigCheck.coordinator(mine).items + StoreCheck.report(mine).items
        } catch {
            report.items.append(.init(.error, "coordinators", "\(error)"))
        }
    }
    print(report.rendered())
    exit(report.hasErrors ? 1 : 0)
}

// One-shot commands print their own output and plain errors: no JSON log lines on stderr.
if args.subcommand != "serve" { Logger.silenceProcess() }

let config: ClusterConfig
do { config = try ClusterConfig.load(path: args.configPath) } catch { exitWithError("hato-coordinator: \(error)") }

let operatorName = args.options["operator"] ?? args.options["as"] ?? AdminClient.defaultOperator()

switch args.subcommand! {
case "store":
    exit(StoreCommand.run(positional: args.positional, options: args.options, flags: args.flags, config: config))
case "serve":
    do {
        // With a coordinators: list, --id names this one (its own addresses).
        let config = try config.selectingCoordinator(args.options["id"])
        let service = try CoordinatorService(config: config, coordinatorID: args.options["id"])
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
case let c where QueueCommands.handles(c, positional: args.positional, options: args.options):
    do {
        try QueueCommands(client: try AdminClient.forCoordinators(config: config, id: args.options["id"], operatorName: operatorName), json: args.flags.contains("json"))
            .run(c, positional: args.positional, options: args.options, flags: args.flags)
    } catch let error as CLIArguments.UsageError {
        exitWithError("hato-coordinator: \(error) (see hato-coordinator \(c) --help)", status: 2)
    } catch {
        exitWithError("hato-coordinator: \(error)")
    }
case let c where AdminCommands.names.contains(c):
    do {
        let client = try AdminClient.forCoordinators(config: config, id: args.options["id"], operatorName: operatorName)
        try AdminCommands(client: client, json: args.flags.contains("json")).run(c, positional: args.positional, options: args.options, flags: args.flags)
    } catch let e as DoctorFailed {
        FileHandle.standardError.write(Data("hato-coordinator: \(e)\n".utf8))
        exit(1)
    } catch {
        exitWithError("hato-coordinator: \(error)")
    }
case let c where TenantCommands.names.contains(c):
    do {
        try TenantCommands(client: try AdminClient.forCoordinators(config: config, id: args.options["id"], operatorName: operatorName), json: args.flags.contains("json"))
            .run(positional: c == "tenants" ? ["list"] + args.positional : args.positional, options: args.options)
    } catch {
        exitWithError("hato-coordinator: \(error)")
    }
case let c where OperatorCommands.names.contains(c):
    do {
        try OperatorCommands(client: try AdminClient.forCoordinators(config: config, id: args.options["id"], operatorName: operatorName), json: args.flags.contains("json"))
            .run(positional: c == "operators" ? ["list"] : args.positional)
    } catch {
        exitWithError("hato-coordinator: \(error)")
    }
case let c where DomainCommands.names.contains(c):
    do {
        let status = try DomainCommands(client: try AdminClient.forCoordinators(config: config, id: args.options["id"], operatorName: operatorName),
                                        json: args.flags.contains("json"))
            .run(positional: c == "domains" ? ["list"] + args.positional : args.positional, options: args.options)
        exit(status)
    } catch {
        exitWithError("hato-coordinator: \(error)")
    }
case let c where ReportingCommands.names.contains(c):
    do {
        try ReportingCommands(client: try AdminClient.forCoordinators(config: config, id: args.options["id"], operatorName: operatorName), json: args.flags.contains("json")).run(c, positional: args.positional, options: args.options)
    } catch {
        exitWithError("hato-coordinator: \(error)")
    }
default:
    exitWithError("hato-coordinator: unknown command \(args.subcommand!)\n\(usage)", status: 2)
}
