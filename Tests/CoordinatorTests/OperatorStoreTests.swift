import Foundation
import HatoHTTP
import Testing
@testable import HatoCoordinator
@testable import SMTPCore

@Suite("Operator accounts (both stores) and /v1/operators")
struct OperatorStoreTests {
    @Test("accounts are added, replaced, listed by name, survive reopening and are removed", arguments: StoreKind.allCases)
    func accounts(kind: StoreKind) throws {
        let place = try TestStore(kind)
        do {
            let store = try place.open()
            #expect(try store.operatorAccounts().isEmpty)
            try store.saveOperator(OperatorAccount(name: "zoe", passwordHash: "$h1", createdAt: 1))
            try store.saveOperator(OperatorAccount(name: "alice", passwordHash: "$h2", createdAt: 2))
            try store.saveOperator(OperatorAccount(name: "zoe", passwordHash: "$h3", createdAt: 3))
            #expect(try store.operatorAccounts().map(\.name) == ["alice", "zoe"])
            #expect(try store.operatorAccount(named: "zoe") == OperatorAccount(name: "zoe", passwordHash: "$h3", createdAt: 3))
        }
        let reopened = try place.open()
        #expect(try reopened.operatorAccount(named: "alice")?.passwordHash == "$h2")
        #expect(try reopened.removeOperator(named: "alice"))
        #expect(try !reopened.removeOperator(named: "alice"))
        #expect(try reopened.operatorAccount(named: "alice") == nil)
    }

    @Test("POST checks the name and the hash (400), GET never shows hashes, DELETE of an unknown name is 404")
    func adminRoutes() throws {
        let place = try TestStore(.sqlite)
        let api = OperatorAdminAPI(store: try place.open() as! SQLiteQueueStore)
        func post(_ body: String) -> Int {
            api.handle(HTTPRequest(method: "POST", path: "/v1/operators", body: Array(body.utf8)))?.status ?? 0
        }
        let hash = PasswordHash.make(password: Array("pw".utf8), iterations: PasswordHash.minimumIterations).encoded
        #expect(post(#"{"name":"ops","password_hash":"\#(hash)"}"#) == 201)
        #expect(post(#"{"name":"bad name","password_hash":"\#(hash)"}"#) == 400)
        #expect(post(#"{"name":"ops","password_hash":"plaintext"}"#) == 400)
        #expect(post("not json") == 400)
        let list = try #require(api.handle(HTTPRequest(method: "GET", path: "/v1/operators")))
        let text = String(decoding: list.body, as: UTF8.self)
        #expect(list.status == 200 && text.contains("\"ops\"") && !text.contains("pbkdf2"))
        #expect(api.handle(HTTPRequest(method: "DELETE", path: "/v1/operators/nobody"))?.status == 404)
        #expect(api.handle(HTTPRequest(method: "DELETE", path: "/v1/operators/ops"))?.status == 200)
        #expect(api.handle(HTTPRequest(method: "GET", path: "/v1/status")) == nil)
    }
}
