#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// The one place where Hato's Swift code meets `errno` (the shape of swift-nio's
// Sources/NIOPosix/System.swift). Every socket call of `Socket` and every file call of
// Sources/Shared goes through `SystemCall.run`, which:
// - retries EINTR;
// - returns EAGAIN/EWOULDBLOCK as a value (`IOResult.wouldBlock`): a socket timeout
//   (`SO_RCVTIMEO`/`SO_SNDTIMEO`) or an empty non-blocking queue, never an error;
// - traps on EBADF, EFAULT and ENOTSOCK (and EINVAL where the call says it can only mean a bad
//   argument): those are programming errors — a use after close, a descriptor number reused
//   by another connection — that must never be read as "the peer went away";
// - throws `SystemCallError` with the call's name for every other errno value.

/// What a call that may be interrupted by a timeout or an empty non-blocking queue produced.
public enum IOResult<Value: Sendable>: Sendable {
    /// The call completed with this result.
    case processed(Value)
    /// The call would have blocked: `EAGAIN`/`EWOULDBLOCK` (on a blocking socket: its timeout passed).
    case wouldBlock
}

/// A system call that failed with an `errno` value that is about the world (the network, the
/// disk, limits), not about the program.
public struct SystemCallError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The call (and, where useful, its object), e.g. `fsync` or `open /var/lib/hato/journal`.
    public let call: String
    /// `errno` after the call.
    public let code: Int32

    /// An error of `call` with `errno` value `code`.
    public init(_ call: String, code: Int32) {
        self.call = call
        self.code = code
    }

    /// The system's text for `code`, e.g. `No such file or directory`.
    public var reason: String { SystemCall.errorText(code) }

    /// `call: reason`.
    public var description: String { "\(call): \(reason)" }

    /// Whether the failure is the process or the system running out of descriptors or memory
    /// (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`): a reason to back off, not to stop.
    public var isResourceExhaustion: Bool { code == EMFILE || code == ENFILE || code == ENOBUFS || code == ENOMEM }
}

/// The syscall wrapper: see the comment at the top of System.swift.
public enum SystemCall {
    /// Which `errno` values mean the program is wrong.
    public enum Misuse: Sendable {
        /// `EBADF`, `EFAULT`, `ENOTSOCK`.
        case standard
        /// Also `EINVAL`: for calls where it can only mean a bad argument (e.g. `recv`, `send`).
        case forbiddingEINVAL
    }

    /// Runs `body` (a C call returning -1 and setting `errno` on failure) until it is not
    /// interrupted.
    /// - Parameters:
    ///   - name: the call's name, for messages.
    ///   - misuse: which `errno` values trap.
    ///   - body: the call.
    /// - Returns: `.processed(result)`, or `.wouldBlock` on `EAGAIN`/`EWOULDBLOCK`.
    /// - Throws: `SystemCallError` for any other failure. Traps on a programming error (see `Misuse`).
    @inline(__always)
    public static func run<T: FixedWidthInteger & Sendable>(_ name: StaticString, misuse: Misuse = .standard,
                                                             _ body: () -> T) throws(SystemCallError) -> IOResult<T> {
        while true {
            let result = body()
            if result != -1 { return .processed(result) }
            let code = errno
            if code == EINTR { continue }
            if code == EAGAIN || code == EWOULDBLOCK { return .wouldBlock }
            checkNotMisuse(code, name, misuse: misuse)
            throw SystemCallError("\(name)", code: code)
        }
    }

    /// Like `run`, for calls where `EAGAIN` cannot happen or is itself a failure (files, `bind`).
    /// - Returns: the call's result.
    /// - Throws: `SystemCallError` (including for `EAGAIN`). Traps on a programming error.
    @inline(__always)
    @discardableResult
    public static func runToCompletion<T: FixedWidthInteger & Sendable>(_ name: StaticString, misuse: Misuse = .standard,
                                                                         _ body: () -> T) throws(SystemCallError) -> T {
        while true {
            let result = body()
            if result != -1 { return result }
            let code = errno
            if code == EINTR { continue }
            checkNotMisuse(code, name, misuse: misuse)
            throw SystemCallError("\(name)", code: code)
        }
    }

    /// Traps when `code` is a programming error for this call (see `Misuse`). For errno values
    /// that reach Swift by another road (OpenSSL's `SSL_read` on a socket).
    /// - Parameters:
    ///   - code: the `errno` value.
    ///   - name: the call, for the message.
    ///   - misuse: which values trap.
    public static func checkNotMisuse(_ code: Int32, _ name: StaticString, misuse: Misuse = .standard) {
        if code == EBADF || code == EFAULT || code == ENOTSOCK || (misuse == .forbiddingEINVAL && code == EINVAL) {
            fatalError("\(name) failed with \(errorName(code)) (\(errorText(code))): a programming error in Hato "
                       + "(a descriptor used after it was closed, or never valid)")
        }
    }

    /// Closes `descriptor` exactly once. `EINTR` counts as closed (Linux has released the
    /// number by then; retrying could close a descriptor another thread just got).
    /// - Throws: `SystemCallError` for `EIO` and the like (data of a file may be lost). Traps on
    ///   `EBADF`: the descriptor was already closed, the worst kind of use after close.
    public static func close(_ descriptor: Int32) throws(SystemCallError) {
        if Glibc.close(descriptor) == 0 { return }
        let code = errno
        if code == EINTR { return }
        checkNotMisuse(code, "close")
        throw SystemCallError("close", code: code)
    }

    /// The system's text for an `errno` value.
    public static func errorText(_ code: Int32) -> String {
        guard let text = strerror(code) else { return "errno \(code)" }
        return String(cString: text)
    }

    private static func errorName(_ code: Int32) -> String {
        switch code {
        case EBADF: return "EBADF"
        case EFAULT: return "EFAULT"
        case ENOTSOCK: return "ENOTSOCK"
        case EINVAL: return "EINVAL"
        default: return "errno \(code)"
        }
    }
}

// MARK: - Process limits

/// Open-file limits of the process (`RLIMIT_NOFILE`).
public enum OpenFileLimit {
    /// The current soft and hard limits.
    public static var current: (soft: UInt64, hard: UInt64) {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return (0, 0) }
        return (UInt64(limit.rlim_cur), UInt64(limit.rlim_max))
    }

    /// Raises the soft limit to the hard limit (capped at `cap`), as Postfix and KumoMTA do at
    /// start: each SMTP session, HTTP request and node link holds a descriptor, and the default
    /// soft limit (often 1024) is far below what the listeners admit.
    /// - Parameter cap: the highest soft limit wanted (a huge hard limit is not worth taking).
    /// - Returns: the soft limit in force afterwards.
    @discardableResult
    public static func raiseSoftLimit(cap: UInt64 = 1 << 20) -> UInt64 {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 0 }
        let wanted = min(UInt64(limit.rlim_max), cap)
        if UInt64(limit.rlim_cur) < wanted {
            var raised = limit
            raised.rlim_cur = rlim_t(wanted)
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { return wanted }
        }
        return UInt64(limit.rlim_cur)
    }
}
