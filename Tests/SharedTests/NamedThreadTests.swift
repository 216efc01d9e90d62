import Foundation
import Testing
@testable import HatoSupport

/// Threads carry their names into the kernel, where `top -H`, `ps -L` and `perf` read them
/// (filter: `NamedThreadTests`).
@Suite("NamedThreadTests")
struct NamedThreadTests {
    /// Runs `body` on a thread started with `startNamed(name)` and returns what it saw:
    /// (Foundation's name, the kernel name through pthread, `/proc/self/task/TID/comm`).
    private func seen(_ name: String) throws -> (foundation: String?, kernel: String, comm: String) {
        let result = LockedCondition<(String?, String, String)?>(nil)
        Thread.startNamed(name) {
            let comm = (try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8)) ?? "?"
            result.withLockAndBroadcast { $0 = (Thread.current.name, Thread.kernelName, comm.trimmingCharacters(in: .newlines)) }
        }
        let seen = result.wait(until: .now + .seconds(10), for: { $0 != nil }) { r, _ in r }
        let (foundation, kernel, comm) = try #require(seen)
        return (foundation, kernel, comm)
    }

    @Test("a short name is the thread's name in Foundation and in the kernel")
    func shortName() throws {
        let s = try seen("smtp-commit")
        #expect(s.foundation == "smtp-commit")
        #expect(s.kernel == "smtp-commit")
        #expect(s.comm == "smtp-commit")
    }

    @Test("a long name is cut to the kernel's 15 octets (which Foundation then reports on the thread itself)")
    func longName() throws {
        let s = try seen("dlv 127.0.0.130-extra")
        #expect(s.foundation == "dlv 127.0.0.130")
        #expect(s.kernel == "dlv 127.0.0.130")
        #expect(s.comm == "dlv 127.0.0.130")
    }

    @Test("a name is never cut inside a character")
    func cutAtCharacter() throws {
        // 14 ASCII octets, then "é" (2 octets): the kernel name keeps only the 14.
        let s = try seen("abcdefghijklmné")
        #expect(s.kernel == "abcdefghijklmn")
        // "é" at octets 13-14 fits whole.
        #expect(try seen("abcdefghijklmé!").kernel == "abcdefghijklmé")
    }
}
