import Foundation
import HatoIO
import HatoTestKit
import Testing

/// A one-connection TLS server on loopback for the `TLSStream` tests.
private final class OneShotTLSServer: @unchecked Sendable {
    let listener: Socket
    let port: UInt16
    private let lock = NSLock()
    private var result: Result<String, Error>?
    private let done = DispatchSemaphore(value: 0)

    /// Accepts one connection, runs `TLSStream.accept`, then `body` on the stream.
    init(context: TLSContext, timeout: TimeInterval = 5, body: @escaping @Sendable (TLSStream) throws -> String) throws {
        listener = try Socket.listen(on: SocketAddress(host: "127.0.0.1", port: 0))
        port = listener.localAddress?.port ?? 0
        Thread.detachNewThread { [self] in
            let outcome: Result<String, Error>
            do {
                let (conn, _) = try listener.accept()
                conn.setTimeouts(read: timeout, write: timeout)
                let tls = try TLSStream.accept(over: conn, context: context)
                defer { tls.close() }
                outcome = .success(try body(tls))
            } catch {
                outcome = .failure(error)
            }
            lock.withLock { result = outcome }
            done.signal()
        }
    }

    /// The server side's outcome (waits up to 10 s).
    func outcome() -> Result<String, Error>? {
        _ = done.wait(timeout: .now() + 10)
        listener.close()
        return lock.withLock { result }
    }
}

extension Integration {
    @Suite("TLS over OpenSSL (TLSContext, TLSStream)")
    struct TLSTests {
        @Test("handshake on loopback: TLS 1.2 or newer, data both ways, verified chain and name, EOF after close")
        func roundTrip() throws {
            let dir = try makeTempDirectory("hato-tls-")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let cert = try TestCertificate.make(in: dir)
            let serverContext = try TLSContext.server(certificateChainPath: cert.certificate, privateKeyPath: cert.key)
            #expect(serverContext.minimumProtocolVersion == "TLSv1.2")
            let server = try OneShotTLSServer(context: serverContext) { tls in
                var buf = [UInt8](repeating: 0, count: 5)
                var got: [UInt8] = []
                while got.count < 5 {
                    let n = try buf.withUnsafeMutableBytes { try tls.read(into: $0) }
                    if n == 0 { break }
                    got += buf[0..<n]
                }
                try tls.write(Array("world".utf8))
                return String(decoding: got, as: UTF8.self) + " " + tls.protocolVersion
            }
            let socket = try Socket.connect(to: SocketAddress(host: "127.0.0.1", port: server.port), timeout: 5)
            socket.setTimeouts(read: 5, write: 5)
            let client = try TLSContext.client(verifyPeer: true, trustedCAFile: cert.certificate)
            let tls = try TLSStream.connect(over: socket, context: client, serverName: "relay.it.test")
            #expect(tls.peerCertificateVerified)
            #expect(tls.verificationError == nil)
            #expect(["TLSv1.2", "TLSv1.3"].contains(tls.protocolVersion))
            #expect(!tls.cipher.isEmpty && tls.cipher != "unknown")
            try tls.write(Array("hello".utf8))
            var buf = [UInt8](repeating: 0, count: 64)
            var got: [UInt8] = []
            while true {
                let n = try buf.withUnsafeMutableBytes { try tls.read(into: $0) }
                if n == 0 { break }  // the server's close_notify
                got += buf[0..<n]
            }
            #expect(got == Array("world".utf8))
            tls.close()
            #expect(try server.outcome()?.get() == "hello \(tls.protocolVersion)")
        }

        @Test("client verification: name mismatch and untrusted roots are reported, and fatal only with verifyPeer")
        func verification() throws {
            let dir = try makeTempDirectory("hato-tls-")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let cert = try TestCertificate.make(in: dir)
            let serverContext = try TLSContext.server(certificateChainPath: cert.certificate, privateKeyPath: cert.key)
            func connect(_ context: TLSContext, _ name: String?) throws -> TLSStream {
                let server = try OneShotTLSServer(context: serverContext) { _ in "ok" }
                defer { _ = server.outcome() }
                let socket = try Socket.connect(to: SocketAddress(host: "127.0.0.1", port: server.port), timeout: 5)
                socket.setTimeouts(read: 5, write: 5)
                let tls = try TLSStream.connect(over: socket, context: context, serverName: name)
                tls.close()
                return tls
            }
            let opportunistic = try TLSContext.client()
            let selfSigned = try connect(opportunistic, "relay.it.test")
            #expect(!selfSigned.peerCertificateVerified)
            #expect(selfSigned.verificationError == "self-signed certificate")
            let trusting = try TLSContext.client(verifyPeer: false, trustedCAFile: cert.certificate)
            let mismatch = try connect(trusting, "other.it.test")
            #expect(!mismatch.peerCertificateVerified)
            #expect(mismatch.verificationError == "hostname mismatch")
            #expect(try connect(trusting, "127.0.0.1").peerCertificateVerified, "IP SAN matches an IP literal")
            let strict = try TLSContext.client(verifyPeer: true, trustedCAFile: cert.certificate)
            #expect(throws: TLSError(.certificateVerification, "hostname mismatch")) { _ = try connect(strict, "other.it.test") }
            let strictSystem = try TLSContext.client(verifyPeer: true)
            #expect(throws: TLSError(.certificateVerification, "self-signed certificate")) { _ = try connect(strictSystem, "relay.it.test") }
        }

        @Test("the server refuses TLS 1.1 and plaintext with TLSError(.handshake); a silent client times out")
        func refusals() throws {
            let dir = try makeTempDirectory("hato-tls-")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let cert = try TestCertificate.make(in: dir)
            let context = try TLSContext.server(certificateChainPath: cert.certificate, privateKeyPath: cert.key)
            // TLS 1.1 from OpenSSL's own client (security level 0 so that the client is willing).
            let old = try OneShotTLSServer(context: context) { _ in "accepted" }
            let (status11, output11) = try runProgram("/usr/bin/openssl", [
                "s_client", "-connect", "127.0.0.1:\(old.port)", "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0", "-brief",
            ], dir: dir, timeout: 20)
            #expect(status11 != 0, "TLS 1.1 handshake must fail: \(output11)")
            guard case .failure(let e11)? = old.outcome() else { Issue.record("server accepted TLS 1.1"); return }
            #expect((e11 as? TLSError)?.kind == .handshake, "\(e11)")
            #expect("\(e11)".contains("unsupported protocol"), "\(e11)")
            // TLS 1.2 works with the same client.
            let modern = try OneShotTLSServer(context: context) { tls in tls.protocolVersion }
            let (status12, output12) = try runProgram("/usr/bin/openssl", [
                "s_client", "-connect", "127.0.0.1:\(modern.port)", "-tls1_2", "-brief",
            ], dir: dir, timeout: 20)
            #expect(status12 == 0, "\(output12)")
            #expect(try modern.outcome()?.get() == "TLSv1.2")
            // Plaintext SMTP where a ClientHello belongs.
            let plain = try OneShotTLSServer(context: context) { _ in "accepted" }
            let socket = try Socket.connect(to: SocketAddress(host: "127.0.0.1", port: plain.port), timeout: 5)
            try socket.write("MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\n")
            guard case .failure(let ep)? = plain.outcome() else { Issue.record("plaintext accepted"); return }
            #expect((ep as? TLSError)?.kind == .handshake, "\(ep)")
            socket.close()
            // A client that connects and says nothing: the socket timeout bounds the handshake.
            let silent = try OneShotTLSServer(context: context, timeout: 0.5) { _ in "accepted" }
            let idle = try Socket.connect(to: SocketAddress(host: "127.0.0.1", port: silent.port), timeout: 5)
            let started = Date()
            guard case .failure(let et)? = silent.outcome() else { Issue.record("silent client accepted"); return }
            #expect((et as? SocketError)?.kind == .timeout, "\(et)")
            #expect(Date().timeIntervalSince(started) < 5)
            idle.close()
        }

        @Test("context errors name the file: missing, not PEM, key of another certificate")
        func contextErrors() throws {
            let dir = try makeTempDirectory("hato-tls-")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let a = try TestCertificate.make(in: dir, name: "a")
            let b = try TestCertificate.make(in: dir, name: "b")
            let garbage = (dir as NSString).appendingPathComponent("garbage.pem")
            try "not a certificate\n".write(toFile: garbage, atomically: true, encoding: .utf8)
            func message(_ cert: String, _ key: String) -> String? {
                do {
                    _ = try TLSContext.server(certificateChainPath: cert, privateKeyPath: key)
                    return nil
                } catch {
                    #expect(error.kind == .configuration)
                    return error.message
                }
            }
            #expect(message(dir + "/missing.pem", a.key) == "cannot read certificate \(dir)/missing.pem: No such file or directory")
            #expect(message(garbage, a.key)?.hasPrefix("cannot load certificate \(garbage)") == true)
            #expect(message(a.certificate, garbage)?.hasPrefix("cannot load private key \(garbage)") == true)
            #expect(message(a.certificate, b.key)?.hasPrefix("private key \(b.key) does not match certificate \(a.certificate)") == true)
            #expect(message(a.certificate, a.key) == nil)
        }

        @Test("close() from another thread wakes a reader blocked in SSL_read")
        func closeWakesReader() throws {
            let dir = try makeTempDirectory("hato-tls-")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let cert = try TestCertificate.make(in: dir)
            let context = try TLSContext.server(certificateChainPath: cert.certificate, privateKeyPath: cert.key)
            let server = try OneShotTLSServer(context: context, timeout: 30) { tls in
                // A plain thread and a relative sleep: Dispatch's timers misfire under a shifted clock (faketime).
                Thread.detachNewThread { Thread.sleep(forTimeInterval: 0.3); tls.close() }
                let started = Date()
                var buf = [UInt8](repeating: 0, count: 16)
                let n = (try? buf.withUnsafeMutableBytes { try tls.read(into: $0) }) ?? -1
                return "\(n <= 0) \(Date().timeIntervalSince(started) < 5)"
            }
            let socket = try Socket.connect(to: SocketAddress(host: "127.0.0.1", port: server.port), timeout: 5)
            socket.setTimeouts(read: 10, write: 10)
            let tls = try TLSStream.connect(over: socket, context: try TLSContext.client(), serverName: nil)
            #expect(try server.outcome()?.get() == "true true")
            tls.close()
        }
    }
}
