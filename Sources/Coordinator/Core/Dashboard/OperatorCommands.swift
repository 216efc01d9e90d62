import Foundation
import SMTPCore

/// The operator CLI's `operator` commands: the dashboard's operator accounts over the admin
/// API (`/v1/operators`, `OperatorAdminAPI`):
///
/// - `operator add NAME`: the password from stdin (its first line), or prompted twice on a
///   terminal with echo off, like `hash-password`; only its PBKDF2 hash is sent.
/// - `operator list` · `operator remove NAME`
public struct OperatorCommands {
    let client: AdminClient
    let json: Bool

    /// Commands this type runs.
    public static let names: Set<String> = ["operator", "operators"]

    static let usage = """
        usage: hato-coordinator operator add NAME    (password from stdin, or prompted twice on a terminal)
               hato-coordinator operator list
               hato-coordinator operator remove NAME
        """

    /// Commands over `client`; `json` prints the API's JSON.
    public init(client: AdminClient, json: Bool) { self.client = client; self.json = json }

    /// Runs `operator …`.
    /// - Throws: `AdminClient.Failure` for API and usage errors.
    public func run(positional: [String]) throws {
        switch (positional.first, positional.count) {
        case ("list"?, 1):
            let data = try client.request("GET", "/v1/operators")
            if json { FileHandle.standardOutput.write(data); return }
            let d = JSONDecoder()
            d.keyDecodingStrategy = .convertFromSnakeCase
            let rows = try d.decode([OperatorAdminAPI.Row].self, from: data)
            printTable(["NAME", "ADDED"], rows.map { [$0.name, ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: $0.createdAt))] })
        case ("add"?, 2):
            let name = positional[1]
            guard OperatorAccount.isValidName(name) else { throw AdminClient.Failure(description: "operator name must be 1-64 of A-Z a-z 0-9 . _ @ -") }
            let password: [UInt8]
            do { password = try HashPasswordCommand.readPassword() } catch let e as HashPasswordCommand.PasswordInputError {
                throw AdminClient.Failure(description: e.message)
            }
            let e = JSONEncoder()
            e.keyEncodingStrategy = .convertToSnakeCase
            let body = try e.encode(OperatorAdminAPI.AddRequest(name: name, passwordHash: PasswordHash.make(password: password).encoded))
            let data = try client.request("POST", "/v1/operators", body: body)
            if json { FileHandle.standardOutput.write(data) } else { print("operator \(name) can log in to the dashboard") }
        case ("remove"?, 2), ("delete"?, 2):
            var allowed = CharacterSet.urlPathAllowed
            allowed.remove(charactersIn: "/?")
            let data = try client.request("DELETE", "/v1/operators/\(positional[1].addingPercentEncoding(withAllowedCharacters: allowed) ?? positional[1])")
            if json { FileHandle.standardOutput.write(data) } else { print("removed operator \(positional[1])") }
        default:
            throw AdminClient.Failure(description: Self.usage)
        }
    }
}
