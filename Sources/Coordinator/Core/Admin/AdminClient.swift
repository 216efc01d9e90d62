import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import HatoShared

/// A client of the admin API for the CLI subcommands (URLSession, bearer token).
public struct AdminClient: Sendable {
    let base: String
    let token: String

    /// Talks to `coordinator.admin_listen` with `coordinator.admin_token`.
    public init(config: ClusterConfig) {
        base = "http://\(config.coordinator.adminListen.description)"
        token = config.coordinator.adminToken
    }

    /// An admin API failure.
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// GETs `path` and returns the body.
    /// - Throws: `Failure` when the coordinator cannot be reached or answers non-2xx.
    public func get(_ path: String) throws -> Data {
        guard let url = URL(string: base + path) else { throw Failure(description: "bad URL \(base + path)") }
        var req = URLRequest(url: url, timeoutInterval: 10)
        req.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization")
        final class Box: @unchecked Sendable { var result: Result<(Data, Int), Error> = .failure(Failure(description: "no response")) }
        let box = Box()
        let done = DispatchSemaphore(value: 0)
        let session = URLSession(configuration: .ephemeral)
        session.dataTask(with: req) { data, resp, err in
            if let err { box.result = .failure(err) } else {
                box.result = .success((data ?? Data(), (resp as? HTTPURLResponse)?.statusCode ?? 0))
            }
            done.signal()
        }.resume()
        done.wait()
        session.finishTasksAndInvalidate()
        switch box.result {
        case .failure(let e):
            throw Failure(description: "cannot reach the coordinator's admin API at \(base): \(e.localizedDescription)")
        case .success(let (data, status)):
            guard (200..<300).contains(status) else {
                let msg = (try? JSONDecoder().decode([String: String].self, from: data))?["error"] ?? "HTTP \(status)"
                throw Failure(description: "admin API \(path): \(msg)")
            }
            return data
        }
    }

    /// GETs and decodes `path`.
    public func get<T: Decodable>(_ path: String, as: T.Type) throws -> T {
        let d = JSONDecoder(); d.keyDecodingStrategy = .convertFromSnakeCase
        return try d.decode(T.self, from: get(path))
    }
}

/// The operator CLI's read-only commands, rendered as tables or raw JSON.
public struct AdminCommands {
    let client: AdminClient
    let json: Bool

    public init(client: AdminClient, json: Bool) { self.client = client; self.json = json }

    /// Runs `command`.
    /// - Throws: `AdminClient.Failure` or a usage error.
    public func run(_ command: String, positional: [String], options: [String: String]) throws {
        let path: String
        switch command {
        case "status": path = "/v1/status"
        case "nodes": path = "/v1/nodes"
        case "ips": path = "/v1/ips"
        case "queue": path = "/v1/queue"
        case "messages": path = "/v1/messages?limit=\(Int(options["limit"] ?? "") ?? 50)"
        case "message":
            guard let id = positional.first else { throw AdminClient.Failure(description: "usage: hato-coordinator message ID") }
            path = "/v1/messages/\(id)"
        default: throw AdminClient.Failure(description: "unknown command \(command)")
        }
        if json {
            FileHandle.standardOutput.write(try client.get(path))
            return
        }
        switch command {
        case "status":
            let s = try client.get(path, as: StatusReport.self)
            print("cluster \(s.cluster)\n")
            printNodes(s.nodes)
            print("")
            printQueue(s.queue)
        case "nodes": printNodes(try client.get(path, as: [NodeStatus].self))
        case "ips":
            let ips = try client.get(path, as: [IPStatus].self)
            printTable(["IP", "HELO", "POOL", "OWNER", "ELIGIBLE"], ips.map { [$0.address, $0.helo, $0.pool, $0.owner ?? "-", $0.eligible.isEmpty ? "any" : $0.eligible.joined(separator: ",")] })
        case "queue": printQueue(try client.get(path, as: [String: Int].self))
        case "messages": for id in try client.get(path, as: [String].self) { print(id) }
        default:
            let m = try client.get(path, as: MessageRecord.self)
            print("message \(m.id)  from <\(m.reversePath)>  pool \(m.pool)  \(m.size) octets  client \(m.clientAddress)")
            printTable(["RECIPIENT", "STATE", "ATTEMPTS", "NODE", "SENDING IP", "MX", "LAST REPLY"], m.recipients.map { r in
                let reply = r.lastCode.map { code in String("\(code) \(r.lastEnhanced ?? "") \(r.lastText ?? "")".prefix(70)) } ?? "-"
                return [r.address, r.state.rawValue, "\(r.attempts)", r.node ?? "-", r.sendingIP ?? "-", r.mxHost ?? "-", reply]
            })
        }
    }

    private func printNodes(_ nodes: [NodeStatus]) {
        printTable(["NODE", "STATE", "INSTANCE", "ADDRESS", "SENDING IPS", "LEASES"], nodes.map {
            [$0.id, $0.state, $0.instance ?? "-", $0.address ?? "-", $0.ips.isEmpty ? "-" : $0.ips.joined(separator: ","), "\($0.leasesInFlight)"]
        })
    }

    private func printQueue(_ q: [String: Int]) {
        let order = RecipientState.allCases.map(\.rawValue)
        printTable(order.map { $0.uppercased() }, [order.map { "\(q[$0] ?? 0)" }])
    }

    private func printTable(_ header: [String], _ rows: [[String]]) {
        var widths = header.map(\.count)
        for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { i, c in i == cells.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }.joined(separator: "  ")
        }
        print(line(header))
        for r in rows { print(line(r)) }
    }
}
