#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HatoTestKit
import Testing
@testable import HatoDNS
@testable import HatoIO
@testable import HatoSupport

/// DNS parser, resolver and MX resolution tests (filter: `DNSTests`).
@Suite("DNSTests")
struct DNSTests {}

// MARK: - Wire-format builder for hand-made messages

/// Builds DNS messages byte by byte (RFC 1035 §4.1) so tests control every pointer and length.
private struct Wire {
    var bytes: [UInt8] = []

    mutating func u16(_ v: UInt16) { bytes.append(UInt8(v >> 8)); bytes.append(UInt8(v & 0xFF)) }
    mutating func u32(_ v: UInt32) { u16(UInt16(v >> 16)); u16(UInt16(v & 0xFFFF)) }

    /// Header: id, flags (QR|RD|RA plus rcode), counts.
    mutating func header(id: UInt16 = 0x1234, rcode: UInt8 = 0, qd: UInt16 = 1, an: UInt16, ns: UInt16 = 0, ar: UInt16 = 0) {
        u16(id); u16(0x8180 | UInt16(rcode)); u16(qd); u16(an); u16(ns); u16(ar)
    }

    /// Uncompressed name; returns its offset.
    @discardableResult
    mutating func name(_ text: String, endingWithPointer pointer: UInt16? = nil) -> UInt16 {
        let at = UInt16(bytes.count)
        for label in text.split(separator: ".") {
            bytes.append(UInt8(label.utf8.count)); bytes.append(contentsOf: label.utf8)
        }
        if let pointer { u16(0xC000 | pointer) } else { bytes.append(0) }
        return at
    }

    mutating func pointer(_ offset: UInt16) { u16(0xC000 | offset) }

    mutating func question(_ qname: String, type: UInt16) -> UInt16 {
        let at = name(qname); u16(type); u16(1); return at
    }

    /// A record whose owner is a compression pointer; `rdata` writes the RDATA.
    mutating func record(ownerPointer: UInt16, type: UInt16, cls: UInt16 = 1, ttl: UInt32, rdata: (inout Wire) -> Void) {
        pointer(ownerPointer); u16(type); u16(cls); u32(ttl)
        let lengthAt = bytes.count
        u16(0)
        let start = bytes.count
        rdata(&self)
        let length = UInt16(bytes.count - start)
        bytes[lengthAt] = UInt8(length >> 8); bytes[lengthAt + 1] = UInt8(length & 0xFF)
    }
}

/// A message answering MX for example.com with every record type and compression.
private func sampleMessage() -> [UInt8] {
    var w = Wire()
    w.header(an: 6)
    let q = w.question("example.com", type: 15)
    w.record(ownerPointer: q, type: 15, ttl: 300) { r in r.u16(10); r.name("mx1", endingWithPointer: q) }
    w.record(ownerPointer: q, type: 15, ttl: 200) { r in r.u16(20); r.name("MX2.Example.COM") }
    w.record(ownerPointer: q, type: 1, ttl: 100) { r in r.bytes += [192, 0, 2, 1] }
    w.record(ownerPointer: q, type: 28, ttl: 100) { r in r.bytes += [0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 11) + [1] }
    w.record(ownerPointer: q, type: 5, ttl: 50) { r in r.name("alias", endingWithPointer: q) }
    w.record(ownerPointer: q, type: 16, ttl: 60) { r in
        r.bytes.append(5); r.bytes += Array("v=DKI".utf8); r.bytes.append(3); r.bytes += Array("M1;".utf8)
    }
    return w.bytes
}

// MARK: - Parser unit tests

extension DNSTests {
    @Suite("wire parser")
    struct WireParser {
        @Test("parses every record type with compression pointers")
        func parsesAllTypes() throws {
            let m = try DNSMessage.parse(sampleMessage())
            #expect(m.id == 0x1234)
            #expect(m.isResponse)
            #expect(m.rcode == 0)
            #expect(m.answers.count == 6)
            #expect(m.answers[0] == DNSRecord(name: "example.com", type: .mx, ttl: 300, data: .mx(preference: 10, exchange: "mx1.example.com")))
            #expect(m.answers[1].data == .mx(preference: 20, exchange: "mx2.example.com"))
            #expect(m.answers[2].data == .a("192.0.2.1"))
            #expect(m.answers[3].data == .aaaa("2001:db8::1"))
            #expect(m.answers[4].data == .cname("alias.example.com"))
            #expect(m.answers[4].recordType == .cname)
            #expect(m.answers[5].data == .txt(["v=DKI", "M1;"]))
            #expect(m.answers[5].ttl == 60)
        }

        @Test("header flags and NXDOMAIN rcode")
        func headerAndRcode() throws {
            var w = Wire()
            w.header(rcode: 3, an: 0)
            _ = w.question("nothere.example", type: 1)
            let m = try DNSMessage.parse(w.bytes)
            #expect(m.rcode == DNSMessage.nameError)
            #expect(m.answers.isEmpty)
            #expect(!m.isTruncated)
        }

        @Test("a self-referencing compression pointer is a loop, not a hang")
        func pointerLoop() {
            var w = Wire()
            w.header(an: 1)
            let q = w.question("example.com", type: 1)
            // Owner name: a pointer to itself.
            let selfOffset = UInt16(w.bytes.count)
            w.pointer(selfOffset)
            w.u16(1); w.u16(1); w.u32(60); w.u16(4); w.bytes += [1, 2, 3, 4]
            _ = q
            #expect(throws: DNSParseError.pointerLoop) { try DNSMessage.parse(w.bytes) }
        }

        @Test("two pointers pointing at each other are a loop")
        func mutualPointerLoop() {
            var w = Wire()
            w.header(qd: 1, an: 0)
            // Question name at 12: label "a" then pointer to 17; at 17 a pointer back to 12.
            w.bytes += [1, 0x61]            // 12..13
            w.pointer(17)                   // 14..15
            w.bytes += [0]                  // 16 (padding)
            w.pointer(12)                   // 17..18
            w.u16(1); w.u16(1)
            #expect(throws: DNSParseError.pointerLoop) { try DNSMessage.parse(w.bytes) }
        }

        @Test("every truncation of a valid message throws")
        func truncations() {
            let full = sampleMessage()
            for length in 0..<full.count {
                #expect(throws: DNSParseError.self) { try DNSMessage.parse(Array(full.prefix(length))) }
            }
        }

        @Test("pointer past the end, bad lengths and reserved label types throw")
        func malformed() {
            var w = Wire()
            w.header(an: 1)
            let q = w.question("example.com", type: 1)
            w.record(ownerPointer: q, type: 1, ttl: 1) { r in r.bytes += [1, 2, 3] } // A with 3 octets
            #expect(throws: DNSParseError.badRecord("A RDLENGTH 3")) { try DNSMessage.parse(w.bytes) }

            var p = Wire()
            p.header(an: 0)
            p.pointer(0x3FFF); p.u16(1); p.u16(1)
            #expect(throws: DNSParseError.truncated) { try DNSMessage.parse(p.bytes) }

            var e = Wire()
            e.header(an: 0)
            e.bytes += [0x41, 0]; e.u16(1); e.u16(1) // 0x40 extended label type
            #expect(throws: DNSParseError.badName) { try DNSMessage.parse(e.bytes) }

            var long = Wire()
            long.header(an: 0)
            for _ in 0..<5 { long.bytes.append(63); long.bytes += [UInt8](repeating: 0x61, count: 63) }
            long.bytes.append(0); long.u16(1); long.u16(1)
            #expect(throws: DNSParseError.badName) { try DNSMessage.parse(long.bytes) }

            var txt = Wire()
            txt.header(an: 1)
            let tq = txt.question("example.com", type: 16)
            txt.record(ownerPointer: tq, type: 16, ttl: 1) { r in r.bytes += [9, 0x61] } // string overruns RDATA
            #expect(throws: DNSParseError.self) { try DNSMessage.parse(txt.bytes) }

            var mx = Wire()
            mx.header(an: 1)
            let mq = mx.question("example.com", type: 15)
            // MX whose exchange name runs past RDLENGTH into the next bytes.
            mx.record(ownerPointer: mq, type: 15, ttl: 1) { r in r.u16(1); r.bytes += [3, 0x61] }
            mx.bytes += [0x62, 0x63, 0]
            #expect(throws: DNSParseError.self) { try DNSMessage.parse(mx.bytes) }
        }

        @Test("TTL with the top bit set reads as 0; non-IN classes and unknown types")
        func ttlClassesUnknown() throws {
            var w = Wire()
            w.header(an: 3)
            let q = w.question("example.com", type: 1)
            w.record(ownerPointer: q, type: 1, ttl: 0x8000_0001) { r in r.bytes += [10, 0, 0, 1] }
            w.record(ownerPointer: q, type: 1, cls: 3, ttl: 5) { r in r.bytes += [10, 0, 0, 2] } // CHAOS: dropped
            w.record(ownerPointer: q, type: 99, ttl: 7) { r in r.bytes += [1, 2] }
            let m = try DNSMessage.parse(w.bytes)
            #expect(m.answers.count == 2)
            #expect(m.answers[0].ttl == 0)
            #expect(m.answers[1] == DNSRecord(name: "example.com", type: 99, ttl: 7, data: .other([1, 2])))
            #expect(m.answers[1].recordType == nil)
        }

        @Test("root exchange (null MX) and escaped label bytes")
        func rootAndEscapes() throws {
            var w = Wire()
            w.header(an: 2)
            let q = w.question("nullmx.example", type: 15)
            w.record(ownerPointer: q, type: 15, ttl: 300) { r in r.u16(0); r.bytes.append(0) }
            w.record(ownerPointer: q, type: 5, ttl: 300) { r in r.bytes += [3, 0x61, 0x2E, 0x01, 0] }
            let m = try DNSMessage.parse(w.bytes)
            #expect(m.answers[0].data == .mx(preference: 0, exchange: ""))
            #expect(m.answers[1].data == .cname("a\\.\\001"))
        }

        @Test("random garbage and mutated messages never crash")
        func fuzz() {
            var rng = SplitMix64(seed: 42)
            for _ in 0..<3000 {
                let n = Int.random(in: 0..<200, using: &rng)
                var bytes = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
                if n >= 12 && Bool.random(using: &rng) { bytes[5] = 1; bytes[7] = UInt8.random(in: 0...8, using: &rng) }
                _ = try? DNSMessage.parse(bytes)
            }
            let base = sampleMessage()
            for _ in 0..<5000 {
                var bytes = base
                for _ in 0..<Int.random(in: 1...4, using: &rng) {
                    bytes[Int.random(in: 0..<bytes.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                }
                _ = try? DNSMessage.parse(bytes)
            }
        }
    }
}

// MARK: - Resolver logic with an injected exchange

/// Counts exchanges and answers from a table of (name, type) → result.
private final class FakeDNS: @unchecked Sendable {
    private let lock = NSLock()
    private var table: [String: DNSExchangeResult] = [:]
    private var calls: [String] = []

    func set(_ name: String, _ type: DNSRecordType, _ result: DNSExchangeResult) {
        lock.withLock { table["\(name)/\(type)"] = result }
    }
    func answer(_ name: String, _ type: DNSRecordType, rcode: UInt8 = 0, _ records: [DNSRecord]) {
        set(name, type, .response(DNSMessage(rcode: rcode, answers: records)))
    }
    var callCount: Int { lock.withLock { calls.count } }
    var callLog: [String] { lock.withLock { calls } }

    func exchange(_ name: String, _ type: DNSRecordType) -> DNSExchangeResult {
        lock.withLock {
            calls.append("\(name)/\(type)")
            return table["\(name)/\(type)"] ?? .response(DNSMessage(rcode: DNSMessage.nameError, answers: []))
        }
    }

    func resolver(clock: any WallClock = SystemClock()) -> DNSResolver {
        DNSResolver(clock: clock) { [self] name, type in exchange(name, type) }
    }
}

private func mx(_ owner: String, _ pref: UInt16, _ host: String, ttl: UInt32 = 300) -> DNSRecord {
    DNSRecord(name: owner, type: .mx, ttl: ttl, data: .mx(preference: pref, exchange: host))
}
private func a(_ owner: String, _ ip: String, ttl: UInt32 = 300) -> DNSRecord {
    DNSRecord(name: owner, type: .a, ttl: ttl, data: .a(ip))
}
private func cname(_ owner: String, _ target: String, ttl: UInt32 = 300) -> DNSRecord {
    DNSRecord(name: owner, type: .cname, ttl: ttl, data: .cname(target))
}

extension DNSTests {
    @Suite("resolver logic")
    struct ResolverLogic {
        @Test("CNAME chain in one answer is followed; chain target re-queried when missing")
        func cnameChains() {
            let dns = FakeDNS()
            dns.answer("www.example", .a, [cname("www.example", "web.example"), a("web.example", "192.0.2.7")])
            dns.answer("alias.example", .a, [cname("alias.example", "elsewhere.example")])
            dns.answer("elsewhere.example", .a, [a("elsewhere.example", "192.0.2.8")])
            let r = dns.resolver()
            #expect(r.query("WWW.Example.", type: .a) == .records([a("web.example", "192.0.2.7")]))
            #expect(r.query("alias.example", type: .a) == .records([a("elsewhere.example", "192.0.2.8")]))
            #expect(dns.callLog == ["www.example/A", "alias.example/A", "elsewhere.example/A"])
        }

        @Test("CNAME loops and chains over 8 hops are temporary failures")
        func cnameLoop() {
            let dns = FakeDNS()
            dns.answer("l1.example", .mx, [cname("l1.example", "l2.example"), cname("l2.example", "l1.example")])
            var long: [DNSRecord] = []
            for i in 0..<10 { long.append(cname("c\(i).example", "c\(i + 1).example")) }
            long.append(mx("c10.example", 1, "mx.example"))
            dns.answer("c0.example", .mx, long)
            let r = dns.resolver()
            guard case .temporaryFailure = r.query("l1.example", type: .mx) else { Issue.record("loop not detected"); return }
            guard case .temporaryFailure = r.query("c0.example", type: .mx) else { Issue.record("long chain accepted"); return }
        }

        @Test("rcodes map to nxdomain / temporary; NOERROR without data is noData")
        func rcodes() {
            let dns = FakeDNS()
            dns.answer("servfail.example", .a, rcode: 2, [])
            dns.answer("refused.example", .a, rcode: 5, [])
            dns.answer("empty.example", .a, [])
            dns.set("down.example", .a, .failure("timed out"))
            let r = dns.resolver()
            #expect(r.query("nothing.example", type: .a) == .nxdomain)
            #expect(r.query("empty.example", type: .a) == .noData)
            #expect(r.query("down.example", type: .a) == .temporaryFailure("timed out"))
            guard case .temporaryFailure(let s) = r.query("servfail.example", type: .a) else { Issue.record("SERVFAIL"); return }
            #expect(s.contains("SERVFAIL"))
            guard case .temporaryFailure = r.query("refused.example", type: .a) else { Issue.record("REFUSED"); return }
            // Impossible names never reach the network.
            let before = dns.callCount
            #expect(r.query("", type: .a) == .nxdomain)
            #expect(r.query("a..b", type: .a) == .nxdomain)
            #expect(r.query(String(repeating: "x", count: 64) + ".example", type: .a) == .nxdomain)
            #expect(r.query("bad name.example", type: .a) == .nxdomain)
            #expect(r.query("a\\.b.example", type: .a) == .nxdomain)
            #expect(dns.callCount == before)
        }

        @Test("cache: min TTL, capped at 1 h, negative 60 s, TTL 0 and failures uncached")
        func cache() {
            let dns = FakeDNS()
            let clock = ManualClock()
            dns.answer("short.example", .a, [cname("short.example", "t.example", ttl: 30), a("t.example", "192.0.2.1", ttl: 500)])
            dns.answer("long.example", .a, [a("long.example", "192.0.2.2", ttl: 86_400)])
            dns.answer("zero.example", .a, [a("zero.example", "192.0.2.3", ttl: 0)])
            dns.set("down.example", .a, .failure("timeout"))
            let r = dns.resolver(clock: clock)
            for name in ["short.example", "long.example", "zero.example", "down.example", "none.example"] {
                _ = r.query(name, type: .a); _ = r.query(name, type: .a)
            }
            // short, long, none cached (1 call each); zero and down queried twice.
            #expect(dns.callCount == 7)
            clock.advance(31)  // the CNAME's 30 s bounds the chain
            _ = r.query("short.example", type: .a)
            _ = r.query("none.example", type: .a)  // 60 s negative TTL still valid
            #expect(dns.callCount == 8)
            clock.advance(30)  // 61 s: negative entry expired
            _ = r.query("none.example", type: .a)
            #expect(dns.callCount == 9)
            _ = r.query("long.example", type: .a)
            #expect(dns.callCount == 9)
            clock.advance(3600)  // capped at one hour
            _ = r.query("long.example", type: .a)
            #expect(dns.callCount == 10)
            r.flushCache()
            _ = r.query("long.example", type: .a)
            #expect(dns.callCount == 11)
            // Different types are cached separately.
            _ = r.query("long.example", type: .aaaa)
            #expect(dns.callCount == 12)
        }

        @Test("null MX is a permanent 5.1.10 failure; NXDOMAIN 5.1.2; SERVFAIL temporary")
        func nullMX() {
            let dns = FakeDNS()
            dns.answer("nullmx.example", .mx, [mx("nullmx.example", 0, "")])
            dns.answer("mixed.example", .mx, [mx("mixed.example", 0, ""), mx("mixed.example", 10, "mx.mixed.example")])
            dns.answer("mx.mixed.example", .a, [a("mx.mixed.example", "192.0.2.9")])
            dns.answer("mx.mixed.example", .aaaa, [])
            dns.answer("sf.example", .mx, rcode: 2, [])
            let r = dns.resolver()
            guard case .permanentFailure(let text) = r.resolveMailExchangers(domain: "nullmx.example") else {
                Issue.record("null MX not permanent"); return
            }
            #expect(text.hasPrefix("5.1.10 "))
            guard case .permanentFailure(let nx) = r.resolveMailExchangers(domain: "nothere.example") else {
                Issue.record("NXDOMAIN not permanent"); return
            }
            #expect(nx.hasPrefix("5.1.2 "))
            guard case .temporaryFailure(let sf) = r.resolveMailExchangers(domain: "sf.example") else {
                Issue.record("SERVFAIL not temporary"); return
            }
            #expect(sf.hasPrefix("4."))
            #expect(r.resolveMailExchangers(domain: "mixed.example") == .hosts([
                MailExchanger(name: "mx.mixed.example", preference: 10, addresses: ["192.0.2.9"]),
            ]))
        }

        @Test("MX order: ascending preference, equal preferences shuffled, unresolvable hosts skipped")
        func ordering() {
            let dns = FakeDNS()
            dns.answer("example.org", .mx, [
                mx("example.org", 20, "c.example.org"), mx("example.org", 10, "a.example.org"),
                mx("example.org", 10, "b.example.org"), mx("example.org", 30, "gone.example.org"),
                mx("example.org", 40, "down.example.org"),
            ])
            for (h, ip) in [("a", "192.0.2.1"), ("b", "192.0.2.2"), ("c", "192.0.2.3")] {
                dns.answer("\(h).example.org", .a, [a("\(h).example.org", ip)])
                dns.answer("\(h).example.org", .aaaa, [])
            }
            dns.answer("c.example.org", .aaaa, [DNSRecord(name: "c.example.org", type: .aaaa, ttl: 60, data: .aaaa("2001:db8::3"))])
            dns.set("down.example.org", .a, .failure("timeout"))
            dns.set("down.example.org", .aaaa, .failure("timeout"))
            let r = dns.resolver()
            var firsts = Set<String>()
            for seed in 0..<32 {
                var rng = SplitMix64(seed: UInt64(seed))
                guard case .hosts(let hosts) = r.resolveMailExchangers(domain: "example.org", using: &rng) else {
                    Issue.record("expected hosts"); return
                }
                #expect(hosts.map(\.preference) == [10, 10, 20])
                #expect(Set(hosts.prefix(2).map(\.name)) == ["a.example.org", "b.example.org"])
                #expect(hosts[2] == MailExchanger(name: "c.example.org", preference: 20, addresses: ["192.0.2.3", "2001:db8::3"]))
                firsts.insert(hosts[0].name)
            }
            #expect(firsts.count == 2, "equal preferences must be shuffled")
        }

        @Test("no MX host resolves → temporary; implicit MX without addresses → permanent")
        func unresolvable() {
            let dns = FakeDNS()
            dns.answer("dead.example", .mx, [mx("dead.example", 10, "nowhere.dead.example")])
            dns.answer("bare.example", .mx, [])
            dns.answer("bare.example", .a, [])
            dns.answer("bare.example", .aaaa, [])
            dns.answer("implicit.example", .mx, [])
            dns.answer("implicit.example", .a, [a("implicit.example", "192.0.2.5")])
            dns.answer("implicit.example", .aaaa, [])
            let r = dns.resolver()
            guard case .temporaryFailure(let t) = r.resolveMailExchangers(domain: "dead.example") else {
                Issue.record("expected temporary"); return
            }
            #expect(t.hasPrefix("4.4.4 "))
            guard case .permanentFailure = r.resolveMailExchangers(domain: "bare.example") else {
                Issue.record("expected permanent"); return
            }
            #expect(r.resolveMailExchangers(domain: "implicit.example") == .hosts([
                MailExchanger(name: "implicit.example", preference: 0, addresses: ["192.0.2.5"]),
            ]))
        }

        @Test("address-literal domains skip DNS")
        func literals() {
            let dns = FakeDNS()
            let r = dns.resolver()
            #expect(r.resolveMailExchangers(domain: "[192.0.2.1]") == .hosts([MailExchanger(name: "[192.0.2.1]", preference: 0, addresses: ["192.0.2.1"])]))
            #expect(r.resolveMailExchangers(domain: "[IPv6:2001:db8::1]") == .hosts([MailExchanger(name: "[IPv6:2001:db8::1]", preference: 0, addresses: ["2001:db8::1"])]))
            guard case .permanentFailure = r.resolveMailExchangers(domain: "[300.1.1.1]") else { Issue.record("bad literal"); return }
            #expect(r.resolveHostAddresses("192.0.2.4") == .addresses(["192.0.2.4"]))
            #expect(dns.callCount == 0)
        }
    }
}

// MARK: - Integration against a real dnsmasq

private struct DNSTestFailure: Error, CustomStringConvertible {
    let description: String
}

/// Finds the dnsmasq binary (Debian package dnsmasq-base).
private func dnsmasqPath() throws -> String {
    var candidates = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq"]
    for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") {
        candidates.append("\(dir)/dnsmasq")
    }
    if let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) { return found }
    throw DNSTestFailure(description: "dnsmasq is not installed: the DNS integration tests need it (Debian: apt-get install dnsmasq-base)")
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
private func freeUDPPort() -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    defer { close(fd) }
    var sa = sockaddr_in()
    sa.sin_family = sa_family_t(AF_INET)
    sa.sin_addr.s_addr = inet_addr("127.0.0.1")
    sa.sin_port = 0
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
    _ = withUnsafeMutablePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    return UInt16(bigEndian: sa.sin_port)
}

/// A child process started with `posix_spawn`, with an empty signal mask and default signal
/// dispositions. (Foundation's `Process` spawns from threads that block signals, so a child
/// inherits a blocked SIGTERM and ignores `terminate()`.) Reaped with `waitpid` on its own pid.
private final class ChildProcess {
    let pid: pid_t
    private var status: Int32? = nil

    init(_ path: String, _ arguments: [String], logPath: String) throws {
        do { pid = try spawnChild(path, arguments, logPath: logPath, truncate: true) } catch { throw DNSTestFailure(description: "\(error)") }
    }

    /// Whether the child has not exited yet (reaps it when it has).
    var isRunning: Bool {
        if status != nil { return false }
        var st: Int32 = 0
        if waitpid(pid, &st, WNOHANG) == pid { status = st; return false }
        return true
    }

    /// SIGTERM, up to 2 s grace, then SIGKILL; always reaps. Idempotent.
    func stop() {
        guard isRunning else { return }
        kill(pid, SIGTERM)
        let deadline = Date().addingTimeInterval(2)
        while isRunning && Date() < deadline { usleep(10_000) }
        if isRunning {
            kill(pid, SIGKILL)
            var st: Int32 = 0
            while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
            status = st
        }
    }

    deinit { stop() }
}

/// Runs `body` with a private dnsmasq serving the `test` zone from `records` (dnsmasq options).
/// dnsmasq is stopped on every path; start-up is bounded to about 5 s per attempt.
private func withDnsmasq(_ records: [String], _ body: (_ server: SocketAddress, _ dnsmasq: ChildProcess) throws -> Void) throws {
    let binary = try dnsmasqPath()
    let logPath = FileManager.default.temporaryDirectory.appendingPathComponent("hato-dnsmasq-\(UUID().uuidString).log").path
    defer { try? FileManager.default.removeItem(atPath: logPath) }
    for _ in 0..<5 {
        let port = freeUDPPort()
        let dnsmasq = try ChildProcess(binary, [
            "--no-daemon", "--port=\(port)", "--listen-address=127.0.0.1", "--bind-interfaces",
            "--no-resolv", "--no-hosts", "--local=/test/", "--conf-file=/dev/null", "--pid-file=",
            "--local-ttl=300", "--host-record=ready.test,127.0.0.99",
        ] + records, logPath: logPath)
        defer { dnsmasq.stop() }
        let server = SocketAddress(host: "127.0.0.1", port: port)
        let probe = DNSResolver(nameservers: [server], timeout: 1)
        let deadline = Date().addingTimeInterval(5)
        var ready = false
        while Date() < deadline && dnsmasq.isRunning {
            if case .records = probe.query("ready.test", type: .a) { ready = true; break }
            usleep(50_000)
        }
        if ready {
            try body(server, dnsmasq)
            return
        }
        if dnsmasq.isRunning {
            throw DNSTestFailure(description: "dnsmasq on port \(port) did not answer within 5 s")
        }
        // Exited early (likely the port was taken): try another port.
    }
    let output = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
    throw DNSTestFailure(description: "dnsmasq did not start: \(output)")
}

extension DNSTests {
    @Suite("dnsmasq integration")
    struct Dnsmasq {
        @Test("MX preference order with A and AAAA addresses")
        func preferenceOrder() throws {
            try withDnsmasq([
                "--mx-host=example.test,mx2.example.test,20", "--mx-host=example.test,mx1.example.test,10",
                "--mx-host=example.test,mx3.example.test,30",
                "--host-record=mx1.example.test,192.0.2.1", "--host-record=mx2.example.test,192.0.2.2,2001:db8::2",
                "--host-record=mx3.example.test,192.0.2.3",
            ]) { server, _ in
                let r = DNSResolver(nameservers: [server], timeout: 2)
                #expect(r.resolveMailExchangers(domain: "Example.TEST.") == .hosts([
                    MailExchanger(name: "mx1.example.test", preference: 10, addresses: ["192.0.2.1"]),
                    MailExchanger(name: "mx2.example.test", preference: 20, addresses: ["192.0.2.2", "2001:db8::2"]),
                    MailExchanger(name: "mx3.example.test", preference: 30, addresses: ["192.0.2.3"]),
                ]))
                guard case .records(let records) = r.query("example.test", type: .mx) else { Issue.record("no MX"); return }
                #expect(records.count == 3)
                #expect(records.allSatisfy { $0.ttl == 300 })
            }
        }

        @Test("implicit MX for a domain with only an A record; NXDOMAIN; null MX")
        func implicitNxdomainNull() throws {
            try withDnsmasq([
                "--host-record=aonly.test,192.0.2.10", "--mx-host=nullmx.test,.,0",
            ]) { server, _ in
                let r = DNSResolver(nameservers: [server], timeout: 2)
                #expect(r.query("aonly.test", type: .mx) == .noData)
                #expect(r.resolveMailExchangers(domain: "aonly.test") == .hosts([
                    MailExchanger(name: "aonly.test", preference: 0, addresses: ["192.0.2.10"]),
                ]))
                #expect(r.query("nothere.test", type: .mx) == .nxdomain)
                guard case .permanentFailure(let nx) = r.resolveMailExchangers(domain: "nothere.test") else {
                    Issue.record("NXDOMAIN must be permanent"); return
                }
                #expect(nx.hasPrefix("5.1.2 "))
                #expect(r.query("nullmx.test", type: .mx) == .records([
                    DNSRecord(name: "nullmx.test", type: .mx, ttl: 300, data: .mx(preference: 0, exchange: "")),
                ]))
                guard case .permanentFailure(let null) = r.resolveMailExchangers(domain: "nullmx.test") else {
                    Issue.record("null MX must be permanent"); return
                }
                #expect(null.hasPrefix("5.1.10 "))
            }
        }

        @Test("CNAME'd MX host and CNAME'd domain are followed; TXT records")
        func cnames() throws {
            try withDnsmasq([
                "--mx-host=cn.test,alias.cn.test,10", "--cname=alias.cn.test,real.cn.test",
                "--host-record=real.cn.test,192.0.2.20",
                "--mx-host=target.test,mx.target.test,5", "--host-record=mx.target.test,192.0.2.21",
                "--cname=aliasdomain.test,target.test",
                "--txt-record=sel._domainkey.cn.test,v=DKIM1; k=rsa; p=MIIB",
            ]) { server, _ in
                let r = DNSResolver(nameservers: [server], timeout: 2)
                #expect(r.query("alias.cn.test", type: .a) == .records([
                    DNSRecord(name: "real.cn.test", type: .a, ttl: 300, data: .a("192.0.2.20")),
                ]))
                #expect(r.resolveMailExchangers(domain: "cn.test") == .hosts([
                    MailExchanger(name: "alias.cn.test", preference: 10, addresses: ["192.0.2.20"]),
                ]))
                #expect(r.resolveMailExchangers(domain: "aliasdomain.test") == .hosts([
                    MailExchanger(name: "mx.target.test", preference: 5, addresses: ["192.0.2.21"]),
                ]))
                guard case .records(let txt) = r.query("sel._domainkey.cn.test", type: .txt) else { Issue.record("no TXT"); return }
                #expect(txt.first?.data == .txt(["v=DKIM1; k=rsa; p=MIIB"]))
            }
        }

        @Test("DNS blocklists (RFC 5782): a listed IP with its return code and reason, an unlisted one, a refused query and a dead server are told apart")
        func blocklist() throws {
            try withDnsmasq([
                "--host-record=10.2.0.192.bl.test,127.0.0.2",
                "--txt-record=10.2.0.192.bl.test,Listed: see https://bl.test/lookup?ip=192.0.2.10",
                "--host-record=11.2.0.192.bl.test,127.255.255.254",
                "--host-record=12.2.0.192.bl.test,192.0.2.99",
                "--host-record=1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test,127.0.0.4",
                "--local=/bl.test/",
            ]) { server, _ in
                let r = DNSResolver(nameservers: [server], timeout: 2)
                #expect(DNSBL.check("192.0.2.10", zone: "bl.test", resolver: r)
                        == .listed(codes: ["127.0.0.2"], reason: "Listed: see https://bl.test/lookup?ip=192.0.2.10"))
                #expect(DNSBL.check("192.0.2.20", zone: "bl.test", resolver: r) == .notListed)
                guard case .unknown = DNSBL.check("192.0.2.11", zone: "bl.test", resolver: r) else { Issue.record("a refused query is no listing"); return }
                guard case .unknown = DNSBL.check("192.0.2.12", zone: "bl.test", resolver: r) else { Issue.record("an answer outside 127/8 is no listing"); return }
                #expect(DNSBL.check("2001:db8::1", zone: "bl.test", resolver: r) == .listed(codes: ["127.0.0.4"], reason: nil))
            }
            // A server that does not answer: unknown, never a listing.
            let dead = DNSResolver(nameservers: [SocketAddress(host: "127.0.0.1", port: 9)], timeout: 0.3)
            guard case .unknown = DNSBL.check("192.0.2.10", zone: "bl.test", resolver: dead) else { Issue.record("a timeout must not list"); return }
        }

        @Test("concurrent queries from many threads each use their own resolver state")
        func concurrent() throws {
            var records: [String] = []
            for i in 0..<16 { records.append("--host-record=h\(i).conc.test,192.0.2.\(i + 1)") }
            try withDnsmasq(records) { server, _ in
                let r = DNSResolver(nameservers: [server], timeout: 2)
                let lock = NSLock()
                nonisolated(unsafe) var wrong = 0
                DispatchQueue.concurrentPerform(iterations: 8) { worker in
                    for round in 0..<25 {
                        let i = (worker * 7 + round) % 16
                        if round % 5 == 0 { r.flushCache() }
                        let answer = r.query("h\(i).conc.test", type: .a)
                        if answer != .records([DNSRecord(name: "h\(i).conc.test", type: .a, ttl: 300, data: .a("192.0.2.\(i + 1)"))]) {
                            lock.withLock { wrong += 1 }
                        }
                    }
                }
                #expect(lock.withLock { wrong } == 0)
            }
        }

        @Test("REFUSED and unreachable nameservers are temporary; answers stay cached after the server stops")
        func failuresAndCache() throws {
            try withDnsmasq(["--mx-host=cached.test,mx.cached.test,10", "--host-record=mx.cached.test,192.0.2.30"]) { server, dnsmasq in
                let r = DNSResolver(nameservers: [server], timeout: 1)
                // Outside the local zone and without upstreams dnsmasq refuses.
                guard case .temporaryFailure = r.query("example.invalid", type: .a) else { Issue.record("REFUSED"); return }
                guard case .hosts = r.resolveMailExchangers(domain: "cached.test") else { Issue.record("cached.test"); return }
                dnsmasq.stop()
                guard case .hosts(let hosts) = r.resolveMailExchangers(domain: "cached.test") else {
                    Issue.record("cache miss after the server stopped"); return
                }
                #expect(hosts.first?.addresses == ["192.0.2.30"])
                let start = Date()
                guard case .temporaryFailure = r.query("uncached.test", type: .a) else { Issue.record("dead server"); return }
                #expect(Date().timeIntervalSince(start) < 10)
                guard case .temporaryFailure(let t) = r.resolveMailExchangers(domain: "uncached.test") else {
                    Issue.record("dead server MX must be temporary"); return
                }
                #expect(t.hasPrefix("4.4.3 "))
            }
        }
    }
}

@Suite("DNSBL query names")
struct DNSBLNameTests {
    @Test("reversed octets for IPv4 and nibbles for IPv6 (RFC 5782 §2.1, §2.4); non-addresses refused")
    func names() {
        #expect(DNSBL.queryName(for: "192.0.2.10", zone: "zen.spamhaus.org") == "10.2.0.192.zen.spamhaus.org")
        #expect(DNSBL.queryName(for: "192.0.2.10", zone: "bl.spamcop.net.") == "10.2.0.192.bl.spamcop.net")
        #expect(DNSBL.queryName(for: "2001:db8:1:2:3:4:567:89ab", zone: "bl.test")
                == "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.test")
        #expect(DNSBL.queryName(for: "192.0.2", zone: "z") == nil)
        #expect(DNSBL.queryName(for: "192.0.2.010", zone: "z") == nil)
        #expect(DNSBL.queryName(for: "mail.example", zone: "z") == nil)
    }
}
