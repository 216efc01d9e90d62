import Foundation
import HatoSupport
import HatoTestKit
import Testing

extension Integration {
    @Suite("CLI: --version, a help page per command, bad numbers, no JSON logs from one-shot commands")
    struct CLITests {
        static let coordinatorCommands = ["serve", "check", "status", "nodes", "ips", "queue", "messages", "message", "recipient",
                                          "drain", "resume", "rebalance", "reload", "suspensions", "lift", "flush", "hold", "release",
                                          "delete", "bounce", "pause", "pauses", "suppressions", "log", "hash-password", "store"]
        static let nodeCommands = ["run", "check", "bindable", "dkim-keygen"]

        @Test("--version on both binaries; COMMAND --help and help COMMAND print that command's usage and an example")
        func versionAndHelp() throws {
            let dir = try makeTempDirectory("hato-cli-")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let coordinator = try executablePath("hato-coordinator"), node = try executablePath("hato-node")
            for (exe, name) in [(coordinator, "hato-coordinator"), (node, "hato-node")] {
                let v = try runProgram(exe, ["--version"], dir: dir)
                #expect(v.status == 0)
                #expect(v.output.hasPrefix("\(name) \(HatoVersion.current) "), "\(v.output)")
            }
            for (exe, name, commands) in [(coordinator, "hato-coordinator", Self.coordinatorCommands), (node, "hato-node", Self.nodeCommands)] {
                for command in commands {
                    for args in [[command, "--help"], ["help", command]] {
                        let r = try runProgram(exe, args, dir: dir)
                        #expect(r.status == 0, "\(name) \(args): \(r.status)")
                        #expect(r.output.hasPrefix("usage: \(name) ") && r.output.contains("\(name) \(command)"), "\(name) \(args): \(r.output.prefix(200))")
                        #expect(r.output.contains("example"), "\(name) \(args) has no example")
                    }
                }
            }
        }

        @Test("invalid numbers are usage errors (exit 2) naming the option; one-shot commands write no JSON log lines")
        func numbersAndQuietOneShots() throws {
            let dir = try makeTempDirectory("hato-cli-")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let config = (dir as NSString).appendingPathComponent("cluster.yml")
            // The admin port is a free port nobody listens on: status fails with a plain error.
            try submissionClusterYAML(smtpPort: try freePort(), clusterPort: try freePort(), adminPort: try freePort(), smtpExtra: "")
                .write(toFile: config, atomically: true, encoding: .utf8)
            let coordinator = try executablePath("hato-coordinator")
            for args in [["messages", "--limit", "abc"], ["messages", "--limit", "0"], ["queue", "list", "--limit", "-3"], ["log", "--message", "x", "--limit", "1e3"]] {
                let r = try runProgram(coordinator, args + ["--config", config], dir: dir)
                #expect(r.status == 2, "\(args): \(r.status) \(r.output)")
                #expect(r.output.contains("--limit"), "\(args): \(r.output)")
            }
            for args in [["status"], ["check"], ["queue", "--by", "domain"]] {
                let r = try runProgram(coordinator, args + ["--config", config], dir: dir)
                let jsonLines = r.output.split(separator: "\n").filter { $0.hasPrefix("{\"") && $0.contains("\"level\"") }
                #expect(jsonLines.isEmpty, "\(args) logged JSON: \(jsonLines)")
            }
            let status = try runProgram(coordinator, ["status", "--config", config], dir: dir)
            #expect(status.status == 1)
            #expect(status.output.hasPrefix("hato-coordinator: cannot reach the coordinator's admin API"), "\(status.output)")
        }
    }
}
