import Foundation
import Testing
@testable import HatoCrypto
@testable import HatoIO

@Suite("SystemCall and File")
struct SystemCallTests {
    /// A fake call: fails with each errno of `failures` in turn, then returns `result`.
    final class Script: @unchecked Sendable {
        var failures: [Int32]
        var calls = 0
        let result: Int
        init(_ failures: [Int32], then result: Int) { self.failures = failures; self.result = result }
        func call() -> Int {
            calls += 1
            if failures.isEmpty { return result }
            errno = failures.removeFirst()
            return -1
        }
    }

    @Test("EINTR is retried; EAGAIN/EWOULDBLOCK come back as .wouldBlock; other errno values throw with the call's name")
    func errnoClasses() throws {
        let interrupted = Script([EINTR, EINTR, EINTR], then: 7)
        guard case .processed(let n) = try SystemCall.run("recv", interrupted.call) else { Issue.record("not processed"); return }
        #expect(n == 7)
        #expect(interrupted.calls == 4)

        let again = Script([EAGAIN], then: 1)
        guard case .wouldBlock = try SystemCall.run("recv", again.call) else { Issue.record("EAGAIN not a value"); return }
        #expect(again.calls == 1)

        let reset = Script([ECONNRESET], then: 0)
        #expect(throws: SystemCallError("recv", code: ECONNRESET)) { try SystemCall.run("recv", reset.call) }
        let full = Script([ENOSPC], then: 0)
        let error = #expect(throws: SystemCallError.self) { try SystemCall.runToCompletion("write", full.call) }
        #expect(error?.description == "write: No space left on device")
        // runToCompletion: EAGAIN is an error like any other (files, bind).
        let busy = Script([EINTR, EAGAIN], then: 0)
        #expect(throws: SystemCallError("write", code: EAGAIN)) { try SystemCall.runToCompletion("write", busy.call) }
        #expect(SystemCallError("accept", code: EMFILE).isResourceExhaustion)
        #expect(SocketError(SystemCallError("accept", code: EMFILE), operation: "accept").isResourceExhaustion)
        #expect(SocketError(SystemCallError("send", code: EPIPE), operation: "write").kind == .closed)
    }

    @Test("EBADF, EFAULT and ENOTSOCK are programming errors: the process traps instead of reading them as a closed peer")
    func misuseTraps() async {
        await #expect(processExitsWith: .failure) {
            _ = try? SystemCall.run("recv") { () -> Int in errno = EBADF; return -1 }
        }
        await #expect(processExitsWith: .failure) {
            _ = try? SystemCall.run("send", misuse: .forbiddingEINVAL) { () -> Int in errno = EINVAL; return -1 }
        }
        // A real use after close: recv on a descriptor number that is no longer open.
        await #expect(processExitsWith: .failure) {
            var fds: [Int32] = [0, 0]
            _ = socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds)
            close(fds[0])
            var byte: UInt8 = 0
            _ = try? SystemCall.run("recv") { recv(fds[0], &byte, 1, 0) }
        }
        // Closing a descriptor twice.
        await #expect(processExitsWith: .failure) {
            let fd = open("/dev/null", O_RDONLY)
            try? SystemCall.close(fd)
            try? SystemCall.close(fd)
        }
    }

    @Test("File: write-all, fsync, rename, fsync of the directory, read back; errors name the call and the path")
    func fileRoundTrip() throws {
        let dir = NSTemporaryDirectory() + "hato-file-" + Identifier.random(bytes: 6)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let tmp = dir + "/journal.tmp", path = dir + "/journal"
        let payload = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let f = try File.open(tmp, flags: O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
        try f.writeAll(payload)
        try f.sync()
        #expect(try f.size() == payload.count)
        try f.close()
        try f.close()  // idempotent
        try File.rename(tmp, to: path)
        try File.syncDirectory(containing: path)
        #expect(try File.readAll(path, limit: 1 << 20) == payload)
        #expect(try File.readAll(path, limit: 1000) == nil)
        try File.remove(path)
        try File.remove(path)  // a missing file is not an error

        let missing = #expect(throws: SystemCallError.self) { try File.open(dir + "/nope", flags: O_RDONLY) }
        #expect(missing?.code == ENOENT)
        #expect(missing?.description == "open \(dir)/nope: No such file or directory")
        let rename = #expect(throws: SystemCallError.self) { try File.rename(dir + "/nope", to: dir + "/x") }
        #expect(rename?.call == "rename \(dir)/nope to \(dir)/x")
    }

    @Test("OpenFileLimit: the soft limit can be raised to the hard limit")
    func openFileLimit() {
        let before = OpenFileLimit.current
        #expect(before.soft > 0 && before.soft <= before.hard)
        let raised = OpenFileLimit.raiseSoftLimit()
        #expect(raised >= before.soft)
        #expect(OpenFileLimit.current.soft == raised)
    }
}
