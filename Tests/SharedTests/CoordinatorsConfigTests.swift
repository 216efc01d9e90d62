import Foundation
import Testing
@testable import HatoConfig
@testable import HatoIO

/// `coordinators:` in cluster.yml (several coordinators on PostgreSQL, issue 15): the list form,
/// choosing one with --id, and its errors (file, line, key).
@Suite("Cluster configuration: coordinators")
struct CoordinatorsConfigTests {
    /// `ConfigTests.base` without the single coordinator's and SMTP addresses, plus `tail`.
    static func listForm(_ tail: String) -> String {
        ConfigTests.base
            .replacingOccurrences(of: "  listen: 127.0.0.1:7601\n  admin_listen: 127.0.0.1:7680\n", with: "")
            .replacingOccurrences(of: "  listen: [127.0.0.1:2525]\n", with: "") + tail + "\n"
    }
    static let two = """
        store: { kind: postgresql, url: "postgresql://hato@127.0.0.1:5432/hato" }
        coordinators:
          - { id: coord-1, listen: 127.0.0.1:7601, admin_listen: 127.0.0.1:7680, smtp_listen: [127.0.0.1:2525] }
          - { id: coord-2, listen: 127.0.0.2:7601, admin_listen: 127.0.0.2:7680, smtp_listen: [127.0.0.2:2525, 127.0.0.2:587] }
        """

    @Test("the list form: every coordinator's addresses; --id picks one; nodes know them all")
    func listForm() throws {
        let c = try ConfigTests.parse(Self.listForm(Self.two))
        #expect(c.coordinators.map(\.id) == ["coord-1", "coord-2"])
        #expect(c.coordinatorAddresses == [SocketAddress(host: "127.0.0.1", port: 7601), SocketAddress(host: "127.0.0.2", port: 7601)])
        let second = try c.selectingCoordinator("coord-2")
        #expect(second.coordinator.listen == SocketAddress(host: "127.0.0.2", port: 7601))
        #expect(second.coordinator.adminListen == SocketAddress(host: "127.0.0.2", port: 7680))
        #expect(second.smtp.listen == [SocketAddress(host: "127.0.0.2", port: 2525), SocketAddress(host: "127.0.0.2", port: 587)])
        #expect(second.coordinator.adminToken == "tok-123", "shared settings stay under coordinator:")
        #expect(throws: ConfigValueError.self) { try c.selectingCoordinator(nil) }
        #expect(throws: ConfigValueError.self) { try c.selectingCoordinator("coord-9") }
        // The single form is unchanged; one listed coordinator needs no --id.
        let single = try ConfigTests.parse(ConfigTests.base)
        #expect(single.coordinators.isEmpty && single.coordinatorAddresses == [SocketAddress(host: "127.0.0.1", port: 7601)])
        #expect(try single.selectingCoordinator(nil) == single)
        let one = try ConfigTests.parse(Self.listForm("coordinators:\n  - { id: solo, listen: 127.0.0.1:7601, admin_listen: 127.0.0.1:7680, smtp_listen: 127.0.0.1:2525 }"))
        #expect(try one.selectingCoordinator(nil).coordinator.listen == SocketAddress(host: "127.0.0.1", port: 7601))
    }

    @Test("errors name file, line and key: several on SQLite, addresses also under coordinator: or smtp:, duplicates, a missing smtp_listen")
    func errors() {
        let listLines = Self.listForm("").components(separatedBy: "\n").count - 1
        let sqliteTwo = Self.listForm("""
            coordinators:
              - { id: a, listen: 127.0.0.1:7601, admin_listen: 127.0.0.1:7680, smtp_listen: [127.0.0.1:2525] }
              - { id: b, listen: 127.0.0.2:7601, admin_listen: 127.0.0.2:7680, smtp_listen: [127.0.0.2:2525] }
            """)
        let cases: [(String, Int, String, String)] = [
            (sqliteTwo, listLines, "coordinators", "2 coordinators share one queue only on PostgreSQL"),
            (ConfigTests.base + "coordinators:\n  - { id: a, listen: 127.0.0.1:7601, admin_listen: 127.0.0.1:7680, smtp_listen: [127.0.0.1:2525] }\n",
             5, "coordinator.listen", "with a coordinators: list, give each coordinator's listen there"),
            (Self.listForm("coordinators:\n  - { id: a, listen: 127.0.0.1:7601, admin_listen: 127.0.0.1:7680, smtp_listen: [127.0.0.1:2525] }\n  - { id: a, listen: 127.0.0.2:7601, admin_listen: 127.0.0.2:7680, smtp_listen: [127.0.0.2:2525] }"),
             listLines + 2, "coordinators[1].id", "duplicate coordinator id \"a\""),
            (Self.listForm("coordinators:\n  - { id: a, listen: 127.0.0.1:7601, admin_listen: 127.0.0.1:7601, smtp_listen: [127.0.0.1:2525] }"),
             listLines + 1, "coordinators[0].admin_listen", "127.0.0.1:7601 is already used by a.listen"),
            (Self.listForm("coordinators:\n  - { id: a, listen: 127.0.0.1:7601, admin_listen: 127.0.0.1:7680 }"),
             listLines + 1, "coordinators[0].smtp_listen", "required key is missing"),
        ]
        for (text, wantLine, wantKey, wantMessage) in cases {
            guard let e = ConfigTests.configError(text) else { Issue.record("no error for \(text)"); continue }
            #expect(e.file == "test.yml", "\(text)")
            #expect(e.line == wantLine, "\(e)")
            #expect(e.key == wantKey, "\(e)")
            #expect(e.message.hasPrefix(wantMessage), "\(e)")
        }
    }
}
