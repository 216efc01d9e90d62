import Foundation
import HatoCoordinator
import HatoCrypto
import HatoTestKit

extension PostgreSQLTestServer {
    /// A configuration for this server, optionally with `search_path` set to `schema`.
    func configuration(schema: String? = nil, statementTimeout: Duration? = .seconds(30)) -> PostgreSQLConfiguration {
        PostgreSQLConfiguration(url: url, passwordFile: passwordFile, connectTimeout: .seconds(5), statementTimeout: statementTimeout,
                                applicationName: "hato-tests", settings: schema.map { ["search_path": $0] } ?? [:])
    }
}

/// A fresh schema on the run's PostgreSQL server, dropped when released, and the `store:`
/// section that points a coordinator at it (the schema goes in the URL as a session option,
/// as an operator would give it).
final class TestSchema: Sendable {
    let server: PostgreSQLTestServer
    let name: String

    /// - Throws: when the server cannot be had or the schema not made (the test fails).
    init() throws {
        server = try PostgreSQLTestServer.shared()
        name = "it_" + Identifier.random(bytes: 6).lowercased()
        try PostgreSQLConnection(server.configuration()).execute("CREATE SCHEMA \(name)")
    }

    deinit { _ = try? PostgreSQLConnection(server.configuration()).execute("DROP SCHEMA \(name) CASCADE") }

    /// `store: { kind: postgresql, … }` for this schema.
    var storeYAML: String {
        "store: { kind: postgresql, url: \"\(server.url)?options=-csearch_path%3D\(name)\", password_file: \(server.passwordFile), pool_size: 4 }"
    }

    /// A connection with the schema on its search path.
    func connect() throws -> PostgreSQLConnection { try PostgreSQLConnection(server.configuration(schema: name)) }
}
