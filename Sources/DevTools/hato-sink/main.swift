// hato-sink: a local capture server that plays a recipient MX for the demo cluster
// (scripts/demo.sh). A development tool, not part of a deployment: it accepts every message
// and writes each one to a directory. Never point real mail at it.
import Foundation
import HatoConfig
import HatoIO
import HatoSupport
import HatoTestKit

let usage = """
    usage: hato-sink --listen HOST:PORT [--dir DIR]

    A local capture server playing a recipient MX (development and demo only): accepts every
    message and writes each one to DIR as a file. HOST must be a numeric address.

    options:
      --listen HOST:PORT   where to accept SMTP (e.g. 127.0.0.1:2526)
      --dir DIR            where to write captured messages (default: keep them in memory only)
      --help               this text

    example:
      hato-sink --listen 127.0.0.1:2526 --dir var/capture
    """

ignoreSIGPIPE()
let args: CLIArguments
do {
    args = try CLIArguments(Array(CommandLine.arguments.dropFirst()), valueOptions: ["listen", "dir"], flagOptions: [])
} catch {
    exitWithError("hato-sink: \(error)\n\(usage)", status: 2)
}
if args.flags.contains("help") {
    print(usage)
    exit(0)
}
guard args.subcommand == nil else { exitWithError("hato-sink: unexpected argument \(args.subcommand!)\n\(usage)", status: 2) }
guard let listen = args.options["listen"] else { exitWithError("hato-sink: --listen HOST:PORT is required\n\(usage)", status: 2) }
do {
    let addr = try ConfigValue.hostPort(listen, defaultPort: 25)
    guard addr.isIPLiteral else { exitWithError("hato-sink: --listen needs a numeric address", status: 2) }
    let server = try CaptureServer(address: SocketAddress(host: addr.host, port: addr.port), directory: args.options["dir"])
    Logger(label: "sink").info("capture server ready", ["listen": server.address.description, "dir": args.options["dir"] ?? "-"])
    while true { sleep(3600); _ = server.connections }
} catch {
    exitWithError("hato-sink: \(error)")
}
