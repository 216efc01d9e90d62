import Foundation
import HatoConfig
import HatoIO
import HatoNode
import HatoSupport

let usage = """
    usage: hato-node <command> [--config PATH] [options]

    commands:
      run --id NODE                 join the coordinator and deliver from this node's sending IPs
      check --id NODE               validate what run needs on this host: cluster.yml, this node's TLS
                                    certificate and key, the CA, DKIM keys, data_dir, metrics_listen,
                                    the sending IPs it may own (unbindable ones are warnings); one line
                                    per item (ok/warning/error), exit 1 on an error
      bindable --id NODE            list the configured sending IPs this host can bind for NODE
      dkim-keygen --domain D --selector S --out KEY.pem [--algorithm rsa-sha256|ed25519-sha256] [--bits N]
                                    make a DKIM key (mode 0600) and print its DNS TXT record

    options:
      --config PATH                 cluster configuration (default ./cluster.yml)
      --help                        this text; COMMAND --help (or help COMMAND): that command's page
      --version                     print the version
    """

/// `hato-node COMMAND --help`: usage, what it does, arguments and an example.
let pages: [String: String] = [
    "run": """
        usage: hato-node run --id NODE [--config PATH]

        Joins the coordinator named in cluster.yml as NODE and delivers the mail it is leased from the
        sending IPs it is assigned. Logs one JSON object per line on standard error
        (HATO_LOG_LEVEL=debug|info|warning|error). SIGHUP re-reads cluster.yml like a coordinator
        reload. Drain the node first (hato-coordinator drain NODE --wait), then stop it with SIGTERM.

        arguments:
          --id NODE            this node's id in cluster.yml (nodes[].id)
          --config PATH        cluster configuration (default ./cluster.yml)

        example:
          hato-node run --id node-a --config /etc/hato/cluster.yml
        """,
    "check": """
        usage: hato-node check --id NODE [--config PATH]

        Validates what `run` needs on this host without starting it: cluster.yml, this node's TLS
        certificate and key, the CA, DKIM keys, data_dir, metrics_listen, and the sending IPs NODE may
        own (those this host cannot bind are warnings). One line per item; exit status 1 on an error.

        example:
          hato-node check --id node-a --config /etc/hato/cluster.yml
        """,
    "bindable": """
        usage: hato-node bindable --id NODE [--config PATH]

        Lists the sending IPs configured for NODE that this host can bind (one per line): what the node
        would announce to the coordinator.

        example:
          hato-node bindable --id node-a
        """,
    "dkim-keygen": """
        usage: hato-node dkim-keygen --domain D --selector S --out KEY.pem [--algorithm rsa-sha256|ed25519-sha256] [--bits N]

        Makes a DKIM private key (PEM, file mode 0600; an existing file is not overwritten) and prints
        the DNS TXT record to publish at S._domainkey.D (RFC 6376, RFC 8463).

        arguments:
          --domain D           the signing domain (d=)
          --selector S         the selector (s=)
          --out KEY.pem        where to write the private key
          --algorithm A        rsa-sha256 (default) or ed25519-sha256
          --bits N             RSA key size, 1024…8192 (default 2048)

        example:
          hato-node dkim-keygen --domain example.com --selector s2026 --out /etc/hato/dkim/example.com.pem
        """,
]

ignoreSIGPIPE()
let args: CLIArguments
do {
    args = try CLIArguments(Array(CommandLine.arguments.dropFirst()), valueOptions: ["config", "id",
                                                                                         "domain", "selector", "out", "algorithm", "bits"], flagOptions: ["version"])
} catch {
    exitWithError("hato-node: \(error)\n\(usage)", status: 2)
}
if args.flags.contains("version") || args.subcommand == "version" {
    print(HatoVersion.banner(program: "hato-node"))
    exit(0)
}
if let command = args.subcommand == "help" ? args.positional.first : args.flags.contains("help") ? args.subcommand : nil,
   let page = pages[command] {
    print(page)
    exit(0)
}
if args.flags.contains("help") || args.subcommand == nil || args.subcommand == "help" {
    print(usage)
    exit(args.subcommand == nil && !args.flags.contains("help") ? 2 : 0)
}

// One-shot commands print their own output and plain errors: no JSON log lines on stderr.
if args.subcommand != "run" { Logger.silenceProcess() }

switch args.subcommand! {
case "dkim-keygen":
    do {
        print(try DKIMKeygen.run(options: args.options))
    } catch let e as DKIMKeygen.UsageError {
        exitWithError("hato-node dkim-keygen: \(e.message)", status: 2)
    } catch {
        exitWithError("hato-node dkim-keygen: \(error)")
    }
case "sink":
    // The demo's capture server is a development tool of its own, not part of the node.
    exitWithError("hato-node sink: the capture server moved to the development tool hato-sink (swift build; .build/debug/hato-sink --listen HOST:PORT --dir DIR)", status: 2)
case "check":
    guard let id = args.options["id"] else { exitWithError("hato-node check: --id NODE is required", status: 2) }
    var (loaded, report) = ConfigCheck.load(path: args.configPath)
    if let loaded { report.items += ConfigCheck.node(loaded, id: id).items }
    print(report.rendered())
    exit(report.hasErrors ? 1 : 0)
case "run", "bindable":
    guard let id = args.options["id"] else { exitWithError("hato-node \(args.subcommand!): --id NODE is required", status: 2) }
    let config: ClusterConfig
    do { config = try ClusterConfig.load(path: args.configPath) } catch { exitWithError("hato-node: \(error)") }
    do {
        let agent = try NodeAgent(config: config, nodeID: id)
        if args.subcommand == "bindable" {
            for ip in agent.bindableIPs() { print(ip) }
        } else {
            // SIGHUP re-reads cluster.yml like the coordinator's `config_changed` does: applies
            // what applies live, re-announces the sending IPs this host can bind, logs the rest.
            signal(SIGHUP, SIG_IGN)
            let hup = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global())
            hup.setEventHandler { agent.reload() }
            hup.resume()
            let metricsServer = try config.node(id: id)?.metricsListen.map { try agent.metrics.serve(on: $0) }
            withExtendedLifetime((hup, metricsServer)) { agent.run() }
            exit(1)
        }
    } catch {
        exitWithError("hato-node: \(error)")
    }
default:
    exitWithError("hato-node: unknown command \(args.subcommand!)\n\(usage)", status: 2)
}
