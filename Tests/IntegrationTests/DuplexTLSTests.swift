import Foundation
import HatoIO
import HatoSupport
import HatoTestKit
import Testing

/// A connected TLS pair on loopback: the server side accepted with `serverContext`, the client
/// side connected with `clientContext`, both handshakes run at once.
private func tlsPair(server serverContext: TLSContext, client clientContext: TLSContext, duplex: Bool,
                     serverName: String? = "127.0.0.1") throws -> (server: TLSStream, client: TLSStream) {
    let listener = try Socket.listen(on: SocketAddress(host: "127.0.0.1", port: 0))
    defer { listener.close() }
    let port = listener.localAddress?.port ?? 0
    let accepted = LockedCondition<Result<TLSStream, any Error>?>(nil)
    Thread.detachNewThread {
        let outcome = Result<TLSStream, any Error> {
            let (conn, _) = try listener.accept()
            conn.setTimeouts(read: 5, write: 5)
            return try TLSStream.accept(over: conn, context: serverContext, duplex: duplex)
        }
        accepted.withLockAndBroadcast { $0 = outcome }
    }
    let socket = try Socket.connect(to: SocketAddress(host: "127.0.0.1", port: port), timeout: 5)
    socket.setTimeouts(read: 5, write: 5)
    let clientResult = Result { try TLSStream.connect(over: socket, context: clientContext, serverName: serverName, duplex: duplex) }
    guard let serverResult = accepted.wait(until: .now + .seconds(10), for: { $0 != nil }, then: { v, _ in v }) else {
        throw HarnessError("server handshake did not finish")
    }
    // A client may finish its side before the server refuses its certificate (TLS 1.3): report the server's verdict first.
    let server = try serverResult.get()
    return (server, try clientResult.get())
}

/// Reads until `count` octets or the end of the stream.
private func readAll(_ stream: TLSStream, count: Int) throws -> [UInt8] {
    var out: [UInt8] = []
    out.reserveCapacity(count)
    var buf = [UInt8](repeating: 0, count: 64 * 1024)
    while out.count < count {
        let n = try buf.withUnsafeMutableBytes { try stream.read(into: $0) }
        if n == 0 { break }
        out += buf[0..<n]
    }
    return out
}

extension Integration {
    @Suite("TLS for the cluster link: duplex streams and client certificates")
    struct DuplexTLSTests {
        struct PKI {
            let dir: String
            let ca: TestCA
            let server: TestCertificate
            let client: TestCertificate
            let foreignClient: TestCertificate
        }

        func pki() throws -> PKI {
            let dir = try makeTempDirectory("hato-duplex-")
            let ca = try TestCA.make(in: dir, name: "ca")
            let other = try TestCA.make(in: dir, name: "other-ca")
            return PKI(dir: dir, ca: ca, server: try ca.issue("coordinator", commonName: "coordinator", subjectAltName: "IP:127.0.0.1"),
                       client: try ca.issue("node-a", commonName: "node-a"),
                       foreignClient: try other.issue("intruder", commonName: "node-a"))
        }

        @Test("duplex: both ends write 8 MiB while their readers read at once; a serialized stream would block both writers")
        func fullDuplex() throws {
            let p = try pki()
            defer { try? FileManager.default.removeItem(atPath: p.dir) }
            let server = try TLSContext.server(certificateChainPath: p.server.certificate, privateKeyPath: p.server.key, clientCAFile: p.ca.certificate)
            let client = try TLSContext.client(verifyPeer: true, trustedCAFile: p.ca.certificate,
                                               certificateChainPath: p.client.certificate, privateKeyPath: p.client.key)
            let (s, c) = try tlsPair(server: server, client: client, duplex: true)
            #expect(s.peerCertificateVerified && s.peerCommonName == "node-a", "mutual TLS: the client certificate verified")
            #expect(c.peerCertificateVerified && c.peerCommonName == "coordinator")
            for t in [s, c] { t.setTimeouts(read: .seconds(20), write: .seconds(20)) }
            let size = 8 << 20
            let payload = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31) }
            let results = Locked<[String: Result<[UInt8], any Error>]>([:])
            let group = DispatchGroup()
            for (name, stream) in [("server", s), ("client", c)] {
                group.enter()
                Thread.detachNewThread {
                    results.withLock { $0[name + "-write"] = Result { try stream.write(payload); return [] } }
                    group.leave()
                }
                group.enter()
                Thread.detachNewThread {
                    let r = Result { try readAll(stream, count: size) }
                    results.withLock { $0[name + "-read"] = r }
                    group.leave()
                }
            }
            #expect(group.wait(timeout: .now() + 60) == .success, "no deadlock between the reader and the writer of one SSL*")
            let r = results.snapshot
            for k in ["server-write", "client-write"] { #expect((try? r[k]?.get()) != nil, "\(k): \(String(describing: r[k]))") }
            #expect((try? r["server-read"]?.get()) == payload)
            #expect((try? r["client-read"]?.get()) == payload)
            s.close(); c.close()
        }

        @Test("duplex: a read times out at the read timeout; shutdown() from another thread wakes a blocked reader")
        func timeoutAndShutdown() throws {
            let p = try pki()
            defer { try? FileManager.default.removeItem(atPath: p.dir) }
            let server = try TLSContext.server(certificateChainPath: p.server.certificate, privateKeyPath: p.server.key)
            let client = try TLSContext.client(verifyPeer: true, trustedCAFile: p.ca.certificate)
            let (s, c) = try tlsPair(server: server, client: client, duplex: true)
            c.setTimeouts(read: .milliseconds(300), write: .seconds(5))
            let start = ContinuousClock.now
            var buf = [UInt8](repeating: 0, count: 16)
            #expect(throws: SocketError.self) { _ = try buf.withUnsafeMutableBytes { try c.read(into: $0) } }
            let waited = ContinuousClock.now - start
            #expect(waited >= .milliseconds(250) && waited < .seconds(3), "\(waited)")
            c.setTimeouts(read: .seconds(30), write: .seconds(5))
            let woke = LockedCondition<Int?>(nil)
            Thread.detachNewThread {
                var b = [UInt8](repeating: 0, count: 16)
                let n = (try? b.withUnsafeMutableBytes { try c.read(into: $0) }) ?? -1
                woke.withLockAndBroadcast { $0 = n }
            }
            usleep(200_000)
            c.shutdown()
            let n = woke.wait(until: .now + .seconds(5), for: { $0 != nil }, then: { v, _ in v })
            #expect(n == 0 || n == -1, "the reader returned (end of stream) instead of waiting 30 s")
            c.close(); s.close()
        }

        @Test("mutual TLS: a client certificate from another CA, or none, is refused by the server")
        func foreignClientRefused() throws {
            let p = try pki()
            defer { try? FileManager.default.removeItem(atPath: p.dir) }
            let server = try TLSContext.server(certificateChainPath: p.server.certificate, privateKeyPath: p.server.key, clientCAFile: p.ca.certificate)
            #expect(server.requiresClientCertificate)
            let intruder = try TLSContext.client(verifyPeer: true, trustedCAFile: p.ca.certificate,
                                                 certificateChainPath: p.foreignClient.certificate, privateKeyPath: p.foreignClient.key)
            do {
                _ = try tlsPair(server: server, client: intruder, duplex: true)
                Issue.record("a certificate from another CA was accepted")
            } catch let e as TLSError {
                #expect(e.kind == .certificateVerification, "\(e)")
            }
            let anonymous = try TLSContext.client(verifyPeer: true, trustedCAFile: p.ca.certificate)
            #expect(throws: (any Error).self) { _ = try tlsPair(server: server, client: anonymous, duplex: true) }
        }

        @Test("contexts: a key that does not match its certificate and a CA file without certificates are configuration errors naming the file")
        func contextErrors() throws {
            let p = try pki()
            defer { try? FileManager.default.removeItem(atPath: p.dir) }
            do {
                _ = try TLSContext.server(certificateChainPath: p.server.certificate, privateKeyPath: p.client.key)
                Issue.record("mismatched key accepted")
            } catch {
                #expect(error.kind == .configuration && error.message.contains("does not match") && error.message.contains(p.client.key), "\(error)")
            }
            let empty = (p.dir as NSString).appendingPathComponent("empty.pem")
            try "not a certificate\n".write(toFile: empty, atomically: true, encoding: .utf8)
            do {
                _ = try TLSContext.client(verifyPeer: true, trustedCAFile: empty)
                Issue.record("empty CA file accepted")
            } catch {
                #expect(error.message.contains(empty), "\(error)")
            }
            let summary = try TLSCertificateFile.inspect(p.server.certificate)
            #expect(summary.count == 1 && summary.commonName == "coordinator" && summary.secondsUntilExpiry > 86_000)
        }
    }
}
