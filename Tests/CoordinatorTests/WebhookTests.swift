import Foundation
import HatoTestKit
import Testing
@testable import HatoConfig
@testable import HatoCoordinator
@testable import HatoCrypto
@testable import HatoHTTP
@testable import HatoIO

/// A webhook receiver played by Python's http.server (`/usr/bin/python3`): it checks each
/// POST's `X-Hato-Signature` with the shared secret and appends what it got to a JSON-lines file.
final class PythonWebhookReceiver: @unchecked Sendable {
    static let script = """
        import hashlib, hmac, http.server, json, sys, time
        port, out_path, secret, fail_first = int(sys.argv[1]), sys.argv[2], sys.argv[3].encode(), int(sys.argv[4])
        seen = {'n': 0}
        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers['Content-Length']))
                seen['n'] += 1
                if seen['n'] <= fail_first:
                    with open(out_path, 'a') as f:
                        f.write(json.dumps({'failed': True, 'at': time.time(), 'attempt': self.headers.get('X-Hato-Attempt')}) + '\\n')
                    self.send_response(503); self.end_headers(); return
                expected = 'sha256=' + hmac.new(secret, body, hashlib.sha256).hexdigest()
                valid = hmac.compare_digest(self.headers.get('X-Hato-Signature', ''), expected)
                with open(out_path, 'a') as f:
                    f.write(json.dumps({'valid': valid, 'at': time.time(), 'timestamp': self.headers.get('X-Hato-Timestamp'),
                                        'attempt': self.headers.get('X-Hato-Attempt'), 'body': json.loads(body)}) + '\\n')
                self.send_response(200 if valid else 401); self.end_headers()
            def log_message(self, *args): pass
        http.server.HTTPServer(('127.0.0.1', port), H).serve_forever()
        """
    let process = Process()
    let outPath: String

    init(port: UInt16, secret: String, failFirst: Int, dir: String) throws {
        outPath = dir + "/received-\(Identifier.random(bytes: 3)).jsonl"
        let scriptPath = dir + "/receiver.py"
        try Self.script.write(toFile: scriptPath, atomically: true, encoding: .utf8)
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = [scriptPath, "\(port)", outPath, secret, "\(failFirst)"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        // Wait until it accepts connections.
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if (try? Socket.connect(to: SocketAddress(host: "127.0.0.1", port: port), timeout: 1)) != nil { return }
            usleep(50_000)
        }
        throw PythonCheckError("webhook receiver did not start")
    }

    /// Every POST received so far (503s included, marked `failed`).
    var requests: [[String: Any]] {
        ((try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "").split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }

    /// Every POST accepted so far.
    var received: [[String: Any]] { requests.filter { $0["failed"] == nil } }

    /// SIGKILL: a child of a test thread may inherit a signal mask that blocks SIGTERM.
    func stop() {
        if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
    }
}

/// A free port on 127.0.0.1 below the kernel's ephemeral range (`ip_local_port_range`,
/// 32768–60999 by default), for a receiver that is down for a while before it starts: a port
/// the kernel handed out (a probe bound to port 0) can be handed out again meanwhile to any
/// socket of the parallel test run — a listener, a client's source port — and the posts then
/// went to that one (CI, under faketime: nothing received); below the range only a fixed port
/// could take it.
func portOutsideEphemeralRange() throws -> UInt16 {
    let range = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8)) ?? ""
    let low = range.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).first.flatMap { Int($0) } ?? 32768
    let upper = max(2048, min(low, 65536))
    let lower = max(1024, upper - 12_000)
    for _ in 0..<200 {
        let p = UInt16(Int.random(in: lower..<upper))
        guard let s = try? Socket.listen(on: SocketAddress(host: "127.0.0.1", port: p)) else { continue }
        s.close()
        return p
    }
    throw PythonCheckError("no free port between \(lower) and \(upper)")
}

struct PythonCheckError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

@Suite("Webhooks", .serialized)
struct WebhookTests {
    @Test("the signature is HMAC-SHA256 over the body; backoff doubles up to the maximum")
    func signatureAndBackoff() {
        let body = WebhookSignature.body(events: [Array("{\"a\":1}".utf8), Array("{\"b\":2}".utf8)], timestamp: 1_700_000_000)
        #expect(String(decoding: body, as: UTF8.self) == "{\"timestamp\":1700000000,\"events\":[{\"a\":1},{\"b\":2}]}")
        let header = WebhookSignature.header(secret: "0123456789abcdef", body: body)
        #expect(header == "sha256=" + Hex.encode(Crypto.hmacSHA256(key: Array("0123456789abcdef".utf8), data: body)))
        #expect(WebhookSignature.verify(header: header, secret: "0123456789abcdef", body: body))
        #expect(!WebhookSignature.verify(header: header, secret: "0123456789abcdeX", body: body))
        let hook = WebhookSettings(url: "http://x.test/", secret: "0123456789abcdef", initialBackoff: 5, maxBackoff: 60)
        #expect((1...6).map { WebhookDispatcher.backoff(attempts: $0, hook: hook) } == [5, 10, 20, 40, 60, 60])
    }

    @Test("events reach a Python receiver with valid signatures after it was down and the coordinator restarted", arguments: StoreKind.allCases)
    func downThenRestart(kind: StoreKind) throws {
        let dir = NSTemporaryDirectory() + "hato-wh-" + Identifier.random(bytes: 5)
        let place = try TestStore(kind, directory: dir + "/queue")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let port = try portOutsideEphemeralRange()
        let secret = "webhook-test-secret-0123"
        let hook = WebhookSettings(url: "http://127.0.0.1:\(port)/hato", secret: secret, timeout: 2, initialBackoff: 0.2, maxBackoff: 0.5, batchSize: 2)
        let events = (1...3).map { i in (hook: hook.url, eventID: "M\(i).\(i)", body: Array("{\"id\":\"M\(i).\(i)\",\"event\":\"delivered\"}".utf8)) }

        // 1. The receiver is down: attempts fail and are rescheduled, nothing is lost.
        do {
            let store = try place.open()
            try store.installReportingSchema()
            var d = EventDisposition()
            d.webhooks = events
            try store.completeEvents(d, now: Date())
            let metrics = CoordinatorMetrics()
            let dispatcher = WebhookDispatcher(hooks: [hook], store: store, metrics: metrics)
            dispatcher.start()
            let deadline = Date().addingTimeInterval(10)
            while metrics.webhookPosts.value(hook.url, "failed") < 2 && Date() < deadline { usleep(50_000) }
            dispatcher.stop()
            #expect(metrics.webhookPosts.value(hook.url, "failed") >= 2)
            #expect(try store.webhookOutboxCount() == 3)
        }

        // 2. Restart (a new store and dispatcher on the same database); the receiver comes up
        //    and answers 503 once before accepting.
        let receiver = try PythonWebhookReceiver(port: port, secret: secret, failFirst: 1, dir: dir)
        defer { receiver.stop() }
        let store = try place.open()
        try store.installReportingSchema()
        let dispatcher = WebhookDispatcher(hooks: [hook], store: store)
        dispatcher.start()
        defer { dispatcher.stop() }
        let deadline = Date().addingTimeInterval(15)
        while (try store.webhookOutboxCount()) > 0 && Date() < deadline { usleep(50_000) }
        #expect(try store.webhookOutboxCount() == 0)
        let posts = receiver.received
        #expect(posts.count == 2, "two batches of at most 2 events")
        #expect(posts.allSatisfy { $0["valid"] as? Bool == true })
        let ids = posts.flatMap { (($0["body"] as? [String: Any])?["events"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? String } }
        #expect(ids.sorted() == ["M1.1", "M2.2", "M3.3"])
        for p in posts {
            let body = p["body"] as? [String: Any] ?? [:]
            #expect((body["timestamp"] as? Int).map(String.init) == p["timestamp"] as? String, "the signed body carries the timestamp header's value")
        }
        #expect(posts.compactMap { Int($0["attempt"] as? String ?? "") }.max() ?? 0 >= 3, "retried after the failures before the restart and the 503")
    }

    @Test("a receiver that is down gets one POST per back-off interval for the whole hook, not one per batch; then every event in full batches", arguments: StoreKind.allCases)
    func hookWideBackoff(kind: StoreKind) throws {
        let dir = NSTemporaryDirectory() + "hato-wh-" + Identifier.random(bytes: 5)
        let place = try TestStore(kind, directory: dir + "/queue")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let port = try portOutsideEphemeralRange()
        let secret = "webhook-test-secret-0123"
        let receiver = try PythonWebhookReceiver(port: port, secret: secret, failFirst: 6, dir: dir)
        defer { receiver.stop() }
        let hook = WebhookSettings(url: "http://127.0.0.1:\(port)/hato", secret: secret, timeout: 2, initialBackoff: 0.2, maxBackoff: 0.8, batchSize: 10)
        let store = try place.open()
        try store.installReportingSchema()
        var d = EventDisposition()
        d.webhooks = (1...100).map { i in (hook: hook.url, eventID: "M\(i).1", body: Array("{\"id\":\"M\(i).1\"}".utf8)) }
        try store.completeEvents(d, now: Date())
        let dispatcher = WebhookDispatcher(hooks: [hook], store: store)
        dispatcher.start()
        defer { dispatcher.stop() }
        let deadline = ContinuousClock.now + .seconds(20)
        while (try store.webhookOutboxCount()) > 0 && ContinuousClock.now < deadline { usleep(50_000) }
        #expect(try store.webhookOutboxCount() == 0)
        let requests = receiver.requests
        let failed = requests.filter { $0["failed"] != nil }
        let times = failed.compactMap { $0["at"] as? Double }
        print("webhook back-off: \(requests.count) POSTs for 100 events (\(failed.count) refused over \(String(format: "%.1f", (times.last ?? 0) - (times.first ?? 0))) s)")
        #expect(failed.count == 6)
        #expect(requests.count == 16, "6 refused, then 10 batches of 10")
        // Waits 0.2, 0.4, 0.8, 0.8, 0.8 s between the six refused POSTs: at least 2.5 s in all.
        #expect((times.last ?? 0) - (times.first ?? 0) >= 2.5)
    }

    @Test("hooks removed from the configuration have their pending events dropped at start", arguments: StoreKind.allCases)
    func removedHook(kind: StoreKind) throws {
        let dir = NSTemporaryDirectory() + "hato-wh-" + Identifier.random(bytes: 5)
        let place = try TestStore(kind, directory: dir + "/queue")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try place.open()
        try store.installReportingSchema()
        var d = EventDisposition()
        d.webhooks = [(hook: "http://gone.test/", eventID: "e1", body: Array("{}".utf8))]
        try store.completeEvents(d, now: Date())
        let dispatcher = WebhookDispatcher(hooks: [], store: store)
        dispatcher.start()
        dispatcher.stop()
        #expect(try store.webhookOutboxCount() == 0)
    }
}
