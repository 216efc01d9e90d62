import Foundation
import Testing
@testable import HatoConfig

/// `store:` in cluster.yml: the default, the PostgreSQL form and its errors (file, line, key).
@Suite("Cluster configuration: store")
struct StoreConfigTests {
    /// `ConfigTests.base` plus `store` text at the end (its first line is line 28).
    static func with(_ store: String) -> String { ConfigTests.base + store + "\n" }
    static let storeLine = ConfigTests.base.components(separatedBy: "\n").count

    @Test("absent: sqlite in coordinator.data_dir, exactly today's behaviour")
    func defaultIsSQLite() throws {
        let c = try ConfigTests.parse(ConfigTests.base)
        #expect(c.store == StoreSettings())
        #expect(c.store.kind == .sqlite && c.store.url == nil && c.store.passwordFile == nil && c.store.poolSize == 8)
        #expect(try ConfigTests.parse(Self.with("store: { kind: sqlite }")).store == StoreSettings())
    }

    @Test("kind postgresql: url, password_file resolved against the file's directory, pool_size")
    func postgresql() throws {
        let c = try ConfigTests.parse(Self.with("store: { kind: postgresql, url: \"postgresql://hato@127.0.0.1:5432/hato\", password_file: pg.secret, pool_size: 3 }"),
                                      path: "/etc/hato/cluster.yml")
        #expect(c.store.kind == .postgresql)
        #expect(c.store.url == "postgresql://hato@127.0.0.1:5432/hato")
        #expect(c.store.passwordFile == "/etc/hato/pg.secret")
        #expect(c.store.poolSize == 3)
        let block = try ConfigTests.parse(Self.with("store:\n  kind: postgresql\n  url: postgres://db.example/hato?sslmode=require"))
        #expect(block.store.url == "postgres://db.example/hato?sslmode=require")
        #expect(block.store.passwordFile == nil && block.store.poolSize == 8)
    }

    @Test("errors name file, line and key: unknown kind, missing url, not a URL, a password in the URL, pool_size out of range, postgresql keys with sqlite, unknown keys")
    func errors() {
        let line = Self.storeLine
        let cases: [(String, Int, String, String)] = [
            ("store: { kind: mysql }", line, "store.kind", "expected sqlite or postgresql, got \"mysql\""),
            ("store: { kind: postgresql }", line, "store.url", "required key is missing"),
            ("store: { kind: postgresql, url: \"host=db dbname=hato\" }", line, "store.url", "expected a URL such as postgresql://hato@db.example:5432/hato"),
            ("store: { kind: postgresql, url: \"postgresql://hato:s3cret@db/hato\" }", line, "store.url", "the URL holds a password: put it in password_file instead"),
            ("store: { kind: postgresql, url: \"postgresql://hato@db/hato?password=s3cret\" }", line, "store.url", "the URL holds a password: put it in password_file instead"),
            ("store:\n  kind: postgresql\n  url: postgresql://db/hato\n  pool_size: 0", line + 3, "store.pool_size", ""),
            ("store: { url: \"postgresql://db/hato\" }", line, "store.url", "only for kind: postgresql (kind is sqlite)"),
            ("store: { kind: postgresql, url: \"postgresql://db/hato\", pool: 3 }", line, "store.pool", ""),
        ]
        for (text, wantLine, wantKey, wantMessage) in cases {
            guard let e = ConfigTests.configError(Self.with(text)) else { continue }
            #expect(e.file == "test.yml", "\(text)")
            #expect(e.line == wantLine, "\(text): \(e)")
            #expect(e.key == wantKey, "\(text): \(e)")
            if !wantMessage.isEmpty { #expect(e.message.hasPrefix(wantMessage), "\(text): \(e)") }
            #expect(!e.description.contains("s3cret"), "the error never repeats a password: \(e)")
        }
    }

    @Test("a change of store needs a coordinator restart; the running coordinator keeps its store")
    func reload() throws {
        let old = try ConfigTests.parse(ConfigTests.base)
        let new = try ConfigTests.parse(Self.with("store: { kind: postgresql, url: \"postgresql://db/hato\" }"))
        let diff = ConfigReload(from: old, to: new)
        #expect(diff.coordinatorRestartKeys.contains("store"))
        #expect(diff.coordinatorConfig.store == old.store)
    }
}
