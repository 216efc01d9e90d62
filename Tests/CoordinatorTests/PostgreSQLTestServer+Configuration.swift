import Foundation
import HatoCoordinator
import HatoTestKit

extension PostgreSQLTestServer {
    /// A configuration for this server, optionally with `search_path` set to `schema`.
    func configuration(schema: String? = nil, statementTimeout: Duration? = .seconds(30)) -> PostgreSQLConfiguration {
        PostgreSQLConfiguration(url: url, passwordFile: passwordFile, connectTimeout: .seconds(5), statementTimeout: statementTimeout,
                                applicationName: "hato-tests", settings: schema.map { ["search_path": $0] } ?? [:])
    }
}
