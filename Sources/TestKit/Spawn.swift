#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Why a test could not start a child process.
public struct SpawnError: Error, CustomStringConvertible {
    public let description: String
}

/// Starts `path` with `arguments` the way every test that runs a process must:
/// standard input from /dev/null, standard output and error appended (or truncated) to
/// `logPath`, default signal dispositions and an **empty signal mask** — a child of a
/// Swift Testing thread otherwise inherits a mask that blocks SIGTERM (Foundation's
/// `Process` has this trap) — and no pipes, so no inherited descriptor keeps a reader waiting.
/// The caller reaps the child with `waitpid`.
/// - Parameters:
///   - truncate: empty the log first instead of appending.
///   - environment: the child's whole environment; nil inherits this process's.
/// - Returns: the child's pid.
/// - Throws: `SpawnError` when `posix_spawn` fails.
public func spawnChild(_ path: String, _ arguments: [String], logPath: String, truncate: Bool = false,
                       environment: [String: String]? = nil) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | (truncate ? O_TRUNC : O_APPEND), 0o644)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    var attr = posix_spawnattr_t()
    posix_spawnattr_init(&attr)
    defer { posix_spawnattr_destroy(&attr) }
    var empty = sigset_t(); sigemptyset(&empty)
    var all = sigset_t(); sigfillset(&all)
    posix_spawnattr_setsigmask(&attr, &empty)
    posix_spawnattr_setsigdefault(&attr, &all)
    posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    let argv = ([path] + arguments).map { strdup($0) } + [nil]
    defer { for a in argv { free(a) } }
    let envp: [UnsafeMutablePointer<CChar>?]? = environment.map { $0.map { strdup("\($0.key)=\($0.value)") } + [nil] }
    defer { for e in envp ?? [] { free(e) } }
    var child: pid_t = 0
    let rc = envp.map { e in e.withUnsafeBufferPointer { posix_spawn(&child, path, &actions, &attr, argv, $0.baseAddress) } }
        ?? posix_spawn(&child, path, &actions, &attr, argv, environ)
    guard rc == 0 else { throw SpawnError(description: "posix_spawn \(path): \(String(validatingCString: strerror(rc)) ?? "errno \(rc)")") }
    return child
}
