#if canImport(Glibc)
import Glibc
#endif
import Foundation
@testable import HatoDNS
@testable import HatoIO

/// A tiny authoritative-looking DNS server for tests on 127.0.0.1 (UDP, a free port): answers
/// A, MX, TXT and TLSA questions from a table, and sets the AD bit (RFC 4035 §3.2.3) on answers
/// for names listed as secure, as a validating resolver would for a signed zone. dnsmasq cannot
/// serve TLSA records with AD, hence this server (tests only).
final class SecureTestDNS: @unchecked Sendable {
    /// One record: owner, type, RDATA octets.
    struct Record {
        var name: String
        var type: DNSRecordType
        var rdata: [UInt8]
    }

    let port: UInt16
    private let fd: Int32
    private let lock = NSLock()
    private var records: [Record]
    private var secure: Set<String>
    private var stopped = false
    private let done = DispatchSemaphore(value: 0)
    /// Questions asked, `name/TYPE`.
    private(set) var questions: [String] = []

    init(records: [Record], secure: Set<String>) throws {
        self.records = records
        self.secure = secure
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        var sa = sockaddr_in()
        sa.sin_family = sa_family_t(AF_INET)
        sa.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        guard bound == 0 else { close(fd); throw TestFailure("bind failed") }
        _ = withUnsafeMutablePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        port = UInt16(bigEndian: sa.sin_port)
        var tv = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        self.fd = fd
        Thread.detachNewThread { [self] in serve() }
    }

    var address: SocketAddress { SocketAddress(host: "127.0.0.1", port: port) }

    /// Replaces the records and the secure names.
    func update(records: [Record], secure: Set<String>) {
        lock.withLock { self.records = records; self.secure = secure }
    }

    func stop() {
        guard lock.withLock({ () -> Bool in
            if stopped { return false }
            stopped = true
            return true
        }) else { return }
        _ = done.wait(timeout: .now() + 5)
        close(fd)
    }

    private func serve() {
        var buf = [UInt8](repeating: 0, count: 4096)
        while !lock.withLock({ stopped }) {
            var from = sockaddr_in()
            var fromLen = socklen_t(MemoryLayout<sockaddr_in>.size)
            let n = buf.withUnsafeMutableBytes { b in
                withUnsafeMutablePointer(to: &from) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, b.baseAddress, b.count, 0, $0, &fromLen) } }
            }
            guard n > 12 else { continue }
            guard let reply = answer(Array(buf[0..<n])) else { continue }
            _ = reply.withUnsafeBytes { b in
                withUnsafePointer(to: &from) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, b.baseAddress, b.count, 0, $0, fromLen) } }
            }
        }
        done.signal()
    }

    /// The response to one query (nil when it cannot be read).
    private func answer(_ q: [UInt8]) -> [UInt8]? {
        var p = 12
        var labels: [String] = []
        while p < q.count {
            let len = Int(q[p])
            if len == 0 { p += 1; break }
            guard p + 1 + len <= q.count else { return nil }
            labels.append(String(decoding: q[(p + 1)...(p + len)], as: UTF8.self).lowercased())
            p += 1 + len
        }
        guard p + 4 <= q.count else { return nil }
        let qtype = UInt16(q[p]) << 8 | UInt16(q[p + 1])
        let questionEnd = p + 4
        let name = labels.joined(separator: ".")
        let (matches, isSecure, exists) = lock.withLock { () -> ([Record], Bool, Bool) in
            questions.append("\(name)/\(DNSRecordType(rawValue: qtype)?.description ?? "\(qtype)")")
            return (records.filter { $0.name == name && $0.type.rawValue == qtype }, secure.contains(name), records.contains { $0.name == name })
        }
        // QR, opcode 0, AA, RD copied, RA; AD for secure names; NXDOMAIN for unknown names.
        var flags: UInt16 = 0x8400 | (UInt16(q[2] & 0x01) << 8) | 0x0080
        if isSecure { flags |= 0x0020 }
        if !exists { flags |= 3 }
        var r: [UInt8] = [q[0], q[1], UInt8(flags >> 8), UInt8(flags & 0xFF), 0, 1, 0, UInt8(matches.count), 0, 0, 0, 0]
        r += q[12..<questionEnd]
        for m in matches {
            r += [0xC0, 0x0C, UInt8(m.type.rawValue >> 8), UInt8(m.type.rawValue & 0xFF), 0, 1, 0, 0, 0, 60,
                  UInt8(m.rdata.count >> 8), UInt8(m.rdata.count & 0xFF)]
            r += m.rdata
        }
        return r
    }

    // MARK: Record builders

    static func a(_ name: String, _ address: String) -> Record {
        Record(name: name, type: .a, rdata: address.split(separator: ".").map { UInt8($0) ?? 0 })
    }

    static func mx(_ name: String, _ preference: UInt16, _ exchange: String) -> Record {
        Record(name: name, type: .mx, rdata: [UInt8(preference >> 8), UInt8(preference & 0xFF)] + wireName(exchange))
    }

    static func txt(_ name: String, _ text: String) -> Record {
        let bytes = Array(text.utf8)
        return Record(name: name, type: .txt, rdata: [UInt8(bytes.count)] + bytes)
    }

    static func tlsa(_ name: String, _ usage: UInt8, _ selector: UInt8, _ matching: UInt8, _ data: [UInt8]) -> Record {
        Record(name: name, type: .tlsa, rdata: [usage, selector, matching] + data)
    }

    static func wireName(_ name: String) -> [UInt8] {
        var out: [UInt8] = []
        for label in name.split(separator: ".") { out.append(UInt8(label.utf8.count)); out += Array(label.utf8) }
        return out + [0]
    }
}
