#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import HatoSupport

/// Ignores SIGPIPE for the whole process. OpenSSL writes with `write()`, so
/// `MSG_NOSIGNAL` alone does not protect a closed peer from killing the process.
public func ignoreSIGPIPE() {
    signal(SIGPIPE, SIG_IGN)
}

/// Decodes a NUL-terminated C character buffer as UTF-8.
func cString(_ buf: [CChar]) -> String {
    let bytes = buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    return String(decoding: bytes, as: UTF8.self)
}

/// A blocking TCP socket that owns its file descriptor.
///
/// Blocking I/O with `SO_RCVTIMEO`/`SO_SNDTIMEO` timeouts: most of Hato runs one thread per
/// connection (about 9 kB resident each on this platform), which keeps every protocol driver a
/// straight-line loop; SMTP submission sessions run on an `EventLoop` with `readIfReady` and
/// `writeIfReady` (`MSG_DONTWAIT`), the descriptor staying blocking for a later hand-over. Every system call goes through `SystemCall` (EINTR retried, EAGAIN a
/// timeout, EBADF/EFAULT/ENOTSOCK a trap).
///
/// **The close rule.** The thread that reads a socket owns it and is the one that calls
/// `close()`. Any other thread that wants the connection to end calls `shutdown()`: the
/// owner's blocked `read` (or `accept`) returns end of stream (or `.closed`), and the owner
/// then closes. The rule is also enforced structurally, so a mistake cannot turn into a use
/// after close: every system call holds a use of the descriptor, and the descriptor is
/// released (`close(2)`) exactly once — by `close()` when no call is in progress, otherwise by
/// the last call in progress as it returns (after `close()` has shut the socket down to wake
/// it), or in `deinit`. So a `recv` never runs on a number that was closed and handed to a new
/// connection, and a late call on a closed socket throws `SocketError(.closed)` instead of
/// reaching the kernel.
///
/// Checked `Sendable`: the descriptor, its use count and the close/shutdown flags live in a
/// `Locked`; at most one reader and one writer use a connected socket at a time.
public final class Socket: Sendable {
    private struct State: Sendable {
        /// -1 once released.
        var descriptor: Int32
        /// System calls in progress on `descriptor`.
        var users = 0
        /// `close()` was called: no new call may start; the last user releases the descriptor.
        var closeRequested = false
        /// `shutdown()` was called (a listener's `accept` failing with EINVAL is then expected).
        var shutDown = false
    }

    private let state: Locked<State>

    /// The `SO_RCVTIMEO`/`SO_SNDTIMEO` values last set (seconds; nil: unknown), so that setting
    /// the same value again costs no system call. Held while the options are set, so the
    /// values here are the kernel's.
    private let timeouts = Locked<(read: TimeInterval?, write: TimeInterval?)>((nil, nil))

    init(descriptor: Int32) { state = Locked(State(descriptor: descriptor)) }

    deinit {
        // No call can be in progress: each holds a reference to the socket.
        let fd = state.snapshot.descriptor
        if fd >= 0 { try? SystemCall.close(fd) }
    }

    /// Whether `close()` was called (the descriptor is released or about to be).
    public var isClosed: Bool { state.withLock { $0.closeRequested || $0.descriptor < 0 } }

    /// Whether `shutdown()` or `close()` was called.
    public var isShutDown: Bool { state.withLock { $0.shutDown || $0.closeRequested || $0.descriptor < 0 } }

    /// The descriptor for the owner thread's own `poll` sets (the `Acceptor`): valid while the
    /// owner has not called `close()`, which only the owner does. -1 once closed.
    var ownerDescriptor: Int32 { state.withLock { $0.closeRequested ? -1 : $0.descriptor } }

    /// Runs `body` with the descriptor held open: `close()` from another thread meanwhile
    /// shuts it down (waking `body`'s blocking call) and the release waits until `body` returns.
    /// - Parameters:
    ///   - operation: the call, for the error.
    ///   - body: the system calls.
    /// - Returns: what `body` returns.
    /// - Throws: `SocketError(.closed)` when `close()` was already called; what `body` throws.
    func withDescriptor<R>(_ operation: StaticString, _ body: (Int32) throws -> R) throws -> R {
        let fd = try state.withLock { s -> Int32 in
            guard !s.closeRequested, s.descriptor >= 0 else { throw SocketError(.closed, "\(operation)") }
            s.users += 1
            return s.descriptor
        }
        defer { endUse() }
        return try body(fd)
    }

    private func endUse() {
        let release = state.withLock { s -> Int32 in
            s.users -= 1
            guard s.users == 0, s.closeRequested, s.descriptor >= 0 else { return -1 }
            defer { s.descriptor = -1 }
            return s.descriptor
        }
        if release >= 0 { try? SystemCall.close(release) }
    }

    /// Sets an integer socket option (best effort: a failure leaves the default).
    private func setOption(_ level: Int32, _ name: Int32, _ value: Int32) {
        _ = try? withDescriptor("setsockopt") { fd in
            var v = value
            try SystemCall.runToCompletion("setsockopt") { setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size)) }
        }
    }

    private static func newTCP(ipv6: Bool) throws -> Socket {
        do {
            let fd = try SystemCall.runToCompletion("socket") {
                Glibc.socket(ipv6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            }
            return Socket(descriptor: fd)
        } catch {
            throw SocketError(error, operation: "socket")
        }
    }

    /// Opens a listening TCP socket with `SO_REUSEADDR`.
    /// - Parameters:
    ///   - address: numeric address and port; port 0 picks a free port (see `localAddress`).
    ///   - backlog: the kernel accept queue length.
    /// - Throws: `SocketError` from `socket`, `bind` or `listen` (e.g. `EADDRINUSE`).
    public static func listen(on address: SocketAddress, backlog: Int32 = 1024) throws -> Socket {
        let sock = try newTCP(ipv6: address.isIPv6)
        sock.setOption(SOL_SOCKET, SO_REUSEADDR, 1)
        try sock.withDescriptor("bind") { fd in
            try address.withSockAddr { sa, len in
                do throws(SystemCallError) { try SystemCall.runToCompletion("bind") { Glibc.bind(fd, sa, len) } } catch {
                    throw SocketError(error, operation: "bind \(address)")
                }
            }
            do throws(SystemCallError) { try SystemCall.runToCompletion("listen") { Glibc.listen(fd, backlog) } } catch {
                throw SocketError(error, operation: "listen \(address)")
            }
        }
        return sock
    }

    /// Makes `accept` (and every other call) return at once instead of waiting (`O_NONBLOCK`).
    func setNonBlocking() throws {
        try withDescriptor("fcntl") { fd in
            do throws(SystemCallError) {
                let flags = try SystemCall.runToCompletion("fcntl") { fcntl(fd, F_GETFL) }
                try SystemCall.runToCompletion("fcntl") { fcntl(fd, F_SETFL, flags | O_NONBLOCK) }
            } catch {
                throw SocketError(error, operation: "fcntl")
            }
        }
    }

    /// Accepts one connection if one is pending (`accept4`, close-on-exec, blocking I/O).
    /// - Returns: the connected socket (with `TCP_NODELAY`) and the peer's address; nil when
    ///   none was pending (a non-blocking listener, the listener's timeout, or a connection
    ///   that was reset before it was accepted).
    /// - Throws: `SocketError(.closed)` once the listener is shut down or closed;
    ///   `SocketError(.system)` with `isResourceExhaustion` on `EMFILE`/`ENFILE`/`ENOBUFS`/
    ///   `ENOMEM` (back off, then retry); other `SocketError(.system)` failures.
    public func acceptIfPending() throws -> (Socket, SocketAddress)? {
        var storage = sockaddr_storage()
        let result: IOResult<Int32>
        do {
            result = try withDescriptor("accept") { fd in
                var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
                return try withUnsafeMutablePointer(to: &storage) { p in
                    try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                        try SystemCall.run("accept") { Glibc.accept(fd, sa, &len) }
                    }
                }
            }
        } catch let e as SystemCallError {
            switch e.code {
            case EINVAL:
                // Not listening: expected once shut down (stop()), a bug otherwise.
                if isShutDown { throw SocketError(.closed, "accept", code: e.code) }
                SystemCall.checkNotMisuse(e.code, "accept", misuse: .forbiddingEINVAL)
                throw SocketError(e, operation: "accept")
            case ECONNABORTED, EPROTO, EPERM, ENETDOWN, ENOPROTOOPT, EHOSTDOWN, ENONET, EHOSTUNREACH, EOPNOTSUPP, ENETUNREACH:
                // accept(2): errors of the new connection, already gone; the listener is fine.
                return nil
            default:
                throw SocketError(e, operation: "accept")
            }
        }
        guard case .processed(let cfd) = result else { return nil }
        // accept4(SOCK_CLOEXEC) is not exported by Glibc's module. The window between the two
        // calls matters only to a process that spawns children; Hato's binaries spawn none.
        _ = try? SystemCall.runToCompletion("fcntl") { fcntl(cfd, F_SETFD, FD_CLOEXEC) }
        let peer = SocketAddress.from(storage: &storage) ?? SocketAddress(host: "unknown", port: 0)
        let s = Socket(descriptor: cfd)
        s.setOption(Int32(IPPROTO_TCP), TCP_NODELAY, 1)
        return (s, peer)
    }

    /// Waits for and accepts one connection, retrying `EINTR`, aborted connections and (after
    /// 10 ms) a shortage of descriptors. Prefer `Acceptor`, which adds admission limits.
    /// - Returns: the connected socket and the peer's address.
    /// - Throws: `SocketError(.closed)` once the listener is shut down or closed; other
    ///   `SocketError` failures.
    public func accept() throws -> (Socket, SocketAddress) {
        while true {
            do {
                if let accepted = try acceptIfPending() { return accepted }
            } catch let e as SocketError where e.isResourceExhaustion {
                usleep(10_000)
            }
        }
    }

    /// Connects to `remote`, optionally binding the local end to `source` first
    /// (a sending IP: bind before connect, port chosen by the kernel).
    /// - Parameters:
    ///   - remote: the peer's numeric address and port.
    ///   - source: the local address to bind, or nil for the kernel's choice.
    ///   - timeout: seconds to wait for the TCP handshake.
    /// - Throws: `SocketError` (`.timeout` when the handshake did not finish in time; `.closed`
    ///   when refused; `EADDRNOTAVAIL` from `bind` when `source` is not a local address).
    public static func connect(to remote: SocketAddress, from source: String? = nil, timeout: TimeInterval) throws -> Socket {
        let sock = try newTCP(ipv6: remote.isIPv6)
        let deadline = ContinuousClock.now + .milliseconds(Int64(max(1, min(timeout * 1000, Double(Int32.max)))))
        try sock.withDescriptor("connect") { fd in
            if let source {
                // Lets many outbound connections share one sending IP without port exhaustion on bind().
                var one: Int32 = 1
                _ = try? SystemCall.runToCompletion("setsockopt") {
                    setsockopt(fd, SOL_IP, IP_BIND_ADDRESS_NO_PORT, &one, socklen_t(MemoryLayout<Int32>.size))
                }
                try SocketAddress(host: source, port: 0).withSockAddr { sa, len in
                    do throws(SystemCallError) { try SystemCall.runToCompletion("bind") { Glibc.bind(fd, sa, len) } } catch {
                        throw SocketError(.system, "bind \(source)", code: error.code)
                    }
                }
            }
            // Non-blocking connect so the handshake timeout is ours, then back to blocking.
            let flags: Int32
            do throws(SystemCallError) {
                flags = try SystemCall.runToCompletion("fcntl") { fcntl(fd, F_GETFL) }
                try SystemCall.runToCompletion("fcntl") { fcntl(fd, F_SETFL, flags | O_NONBLOCK) }
            } catch {
                throw SocketError(error, operation: "fcntl")
            }
            do {
                try remote.withSockAddr { sa, len in _ = try SystemCall.runToCompletion("connect") { Glibc.connect(fd, sa, len) } }
            } catch let e as SystemCallError where e.code == EINPROGRESS {
                while true {
                    let remaining = ContinuousClock.now.duration(to: deadline)
                    if remaining <= .zero { throw SocketError(.timeout, "connect \(remote)", code: ETIMEDOUT) }
                    var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                    let ready: Int32
                    do throws(SystemCallError) {
                        ready = try SystemCall.runToCompletion("poll") { poll(&pfd, 1, remaining.pollMilliseconds) }
                    } catch {
                        throw SocketError(error, operation: "connect \(remote)")
                    }
                    if ready > 0 { break }
                }
                var err: Int32 = 0
                var elen = socklen_t(MemoryLayout<Int32>.size)
                _ = try? SystemCall.runToCompletion("getsockopt") { getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) }
                if err != 0 {
                    throw SocketError(err == ECONNREFUSED ? .closed : .system, "connect \(remote)", code: err)
                }
            } catch let e as SystemCallError {
                throw SocketError(e.code == ECONNREFUSED ? .closed : .system, "connect \(remote)", code: e.code)
            }
            do throws(SystemCallError) { try SystemCall.runToCompletion("fcntl") { fcntl(fd, F_SETFL, flags) } } catch {
                throw SocketError(error, operation: "fcntl")
            }
        }
        sock.setOption(Int32(IPPROTO_TCP), TCP_NODELAY, 1)
        return sock
    }

    /// Sets the read and write timeouts in seconds (0 means wait forever). No effect once closed.
    /// A timeout equal to the one already set costs no system call.
    public func setTimeouts(read: TimeInterval, write: TimeInterval) {
        applyTimeouts(read: max(0, read), rule: .exact, write: max(0, write))
    }

    /// Sets the write timeout and bounds the read timeout by `read` seconds, for a reader
    /// working to a deadline (each read waits at most the time left): a read timeout already set
    /// that is neither longer than `read` (within 1 % + 1 ms) nor shorter than half of it is
    /// kept, so a session reading command after command does not reset it before each read —
    /// a read that times out early just lets the caller check its deadline and come back.
    /// `read` 0 means wait forever (set exactly). No effect once closed.
    public func setTimeouts(readAtMost read: TimeInterval, write: TimeInterval) {
        applyTimeouts(read: max(0, read), rule: .atMost, write: max(0, write))
    }

    /// Sets the read timeout to `read` seconds, keeping one already set that is at least that
    /// long and at most 1 % + 1 ms longer (so a read never times out before `read`, nor much
    /// after it), and leaves the write timeout as it is: for a reader between two writes to a
    /// deadline (an SMTP client awaiting a reply), usually no system call at all. `read` 0
    /// means wait forever (set exactly). No effect once closed.
    public func setReadTimeout(notBefore read: TimeInterval) {
        applyTimeouts(read: max(0, read), rule: .notBefore, write: nil)
    }

    /// `setTimeouts(readAtMost:write:)` with durations (a positive duration below a microsecond counts as one).
    public func setTimeouts(readAtMost read: Duration, write: Duration) {
        setTimeouts(readAtMost: read.timeoutSeconds, write: write.timeoutSeconds)
    }

    /// When a read timeout already set is kept instead of setting `read` (0 is always set exactly).
    private enum ReadTimeoutRule {
        /// Only the same value.
        case exact
        /// At most 1 % + 1 ms longer and at least half as long (`setTimeouts(readAtMost:write:)`).
        case atMost
        /// At least as long and at most 1 % + 1 ms longer (`setReadTimeout(notBefore:)`).
        case notBefore
    }

    /// `write` nil: left as it is.
    private func applyTimeouts(read: TimeInterval, rule: ReadTimeoutRule, write: TimeInterval?) {
        func tv(_ s: TimeInterval) -> timeval {
            timeval(tv_sec: Int(s), tv_usec: Int((s - Double(Int(s))) * 1_000_000))
        }
        timeouts.withLock { current in
            let keepRead: Bool
            switch current.read {
            case nil: keepRead = false
            case let r? where read > 0 && rule == .atMost: keepRead = r > 0 && r <= read * 1.01 + 0.001 && r >= read / 2
            case let r? where read > 0 && rule == .notBefore: keepRead = r >= read && r <= read * 1.01 + 0.001
            case let r?: keepRead = r == read
            }
            let keepWrite = write == nil || current.write == write
            if keepRead && keepWrite { return }
            _ = try? withDescriptor("setsockopt") { fd in
                let size = socklen_t(MemoryLayout<timeval>.size)
                if !keepRead {
                    current.read = nil
                    var r = tv(read)
                    try SystemCall.runToCompletion("setsockopt") { setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &r, size) }
                    current.read = read
                }
                if !keepWrite, let write {
                    current.write = nil
                    var w = tv(write)
                    try SystemCall.runToCompletion("setsockopt") { setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &w, size) }
                    current.write = write
                }
            }
        }
    }

    /// Sets the read and write timeouts (`.zero` means wait forever; a positive duration below
    /// a microsecond counts as one). No effect once closed.
    public func setTimeouts(read: Duration, write: Duration) {
        setTimeouts(read: read.timeoutSeconds, write: write.timeoutSeconds)
    }

    /// The local address of this socket (for a listener bound to port 0: the real port); nil once closed.
    public var localAddress: SocketAddress? {
        var storage = sockaddr_storage()
        let ok: Bool? = try? withDescriptor("getsockname") { fd in
            var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
            return withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                    (try? SystemCall.runToCompletion("getsockname") { getsockname(fd, sa, &len) }) != nil
                }
            }
        }
        return ok == true ? SocketAddress.from(storage: &storage) : nil
    }

    /// Reads up to `count` bytes into `buffer`.
    /// - Returns: the number of bytes read; 0 at end of stream (also after `shutdown()`).
    /// - Throws: `SocketError(.timeout)` when the read timeout passed, `.closed` on reset or
    ///   after `close()`, `.system` otherwise.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let result: IOResult<Int>
        do {
            result = try withDescriptor("read") { fd in
                try SystemCall.run("recv", misuse: .forbiddingEINVAL) { recv(fd, buffer.baseAddress, buffer.count, 0) }
            }
        } catch let e as SystemCallError {
            throw SocketError(e, operation: "read")
        }
        guard case .processed(let n) = result else { throw SocketError(.timeout, "read", code: EAGAIN) }
        return n
    }

    /// Reads what is already received, without waiting (`MSG_DONTWAIT`).
    /// - Returns: `.processed(n)` (0 at end of stream) or `.wouldBlock` when nothing is pending.
    /// - Throws: `SocketError(.closed)` on reset or after `close()`; `.system` otherwise.
    public func readIfReady(into buffer: UnsafeMutableRawBufferPointer) throws -> IOResult<Int> {
        do {
            return try withDescriptor("read") { fd in
                try SystemCall.run("recv", misuse: .forbiddingEINVAL) { recv(fd, buffer.baseAddress, buffer.count, Int32(MSG_DONTWAIT)) }
            }
        } catch let e as SystemCallError {
            throw SocketError(e, operation: "read")
        }
    }

    /// Writes what fits in the send buffer now, without waiting (`MSG_DONTWAIT`).
    /// - Returns: the number of bytes written (0 when the buffer is full).
    /// - Throws: `SocketError(.closed)` when the peer is gone or after `close()`.
    @discardableResult
    public func writeIfReady(_ bytes: [UInt8]) throws -> Int {
        if bytes.isEmpty { return 0 }
        do {
            let result = try withDescriptor("write") { fd in
                try bytes.withUnsafeBytes { raw in
                    try SystemCall.run("send", misuse: .forbiddingEINVAL) {
                        send(fd, raw.baseAddress, raw.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
                    }
                }
            }
            if case .processed(let n) = result { return n }
            return 0
        } catch let e as SystemCallError {
            throw SocketError(e, operation: "write")
        }
    }

    /// Writes every byte, retrying short writes and `EINTR`.
    /// - Throws: `SocketError(.timeout)` when the write timeout passed, `.closed` when the peer
    ///   is gone (or after `close()`/`shutdown()`), `.system` otherwise.
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard let base = bytes.baseAddress else { return }
        do {
            try withDescriptor("write") { fd in
                var offset = 0
                while offset < bytes.count {
                    let result = try SystemCall.run("send", misuse: .forbiddingEINVAL) {
                        send(fd, base + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
                    }
                    guard case .processed(let n) = result else { throw SocketError(.timeout, "write", code: EAGAIN) }
                    offset += n
                }
            }
        } catch let e as SystemCallError {
            throw SocketError(e, operation: "write")
        }
    }

    /// Writes the octets of `parts`, in order, every one, with one `sendmsg` per round (an iovec
    /// per part, at most `IOV_MAX`): no copy of the parts into one buffer. Short writes and
    /// `EINTR` are continued where they stopped.
    /// - Parameter parts: the buffers, written one after the other as one stream of octets.
    /// - Throws: as `write(_:)`.
    public func write(parts: [[UInt8]]) throws {
        let nonEmpty = parts.filter { !$0.isEmpty }
        if nonEmpty.isEmpty { return }
        if nonEmpty.count == 1 { return try nonEmpty[0].withUnsafeBytes { try write($0) } }
        var buffers: [UnsafeRawBufferPointer] = []
        buffers.reserveCapacity(nonEmpty.count)
        try Socket.withBuffers(nonEmpty[...], &buffers) { buffers in
            var iov = buffers.map { iovec(iov_base: UnsafeMutableRawPointer(mutating: $0.baseAddress), iov_len: $0.count) }
            var first = 0
            do {
                try withDescriptor("write") { fd in
                    while first < iov.count {
                        let count = min(iov.count - first, Socket.maximumIOVectors)
                        let result = try iov.withUnsafeMutableBufferPointer { all -> IOResult<Int> in
                            var message = msghdr()
                            message.msg_iov = all.baseAddress! + first
                            message.msg_iovlen = count
                            return try SystemCall.run("sendmsg", misuse: .forbiddingEINVAL) { sendmsg(fd, &message, Int32(MSG_NOSIGNAL)) }
                        }
                        guard case .processed(let n) = result else { throw SocketError(.timeout, "write", code: EAGAIN) }
                        Socket.advance(&iov, first: &first, by: n)
                    }
                }
            } catch let e as SystemCallError {
                throw SocketError(e, operation: "write")
            }
        }
    }

    /// After `written` octets of `iov[first...]` went out: `first` moves past the iovecs sent
    /// whole and the next one is trimmed to what is left of it.
    static func advance(_ iov: inout [iovec], first: inout Int, by written: Int) {
        var n = written
        while n > 0 && first < iov.count {
            if n >= iov[first].iov_len {
                n -= iov[first].iov_len
                first += 1
            } else {
                iov[first].iov_base = iov[first].iov_base! + n
                iov[first].iov_len -= n
                n = 0
            }
        }
    }

    /// The most iovecs one `sendmsg` takes (`IOV_MAX`, 1024 on Linux; glibc's macro is not
    /// imported into Swift).
    static let maximumIOVectors = 1024

    /// Calls `body` with the bytes of every array in `parts` (nested `withUnsafeBytes`: each
    /// pointer valid for the whole call).
    private static func withBuffers<R>(_ parts: ArraySlice<[UInt8]>, _ collected: inout [UnsafeRawBufferPointer],
                                       _ body: ([UnsafeRawBufferPointer]) throws -> R) throws -> R {
        guard let first = parts.first else { return try body(collected) }
        return try first.withUnsafeBytes { raw in
            collected.append(raw)
            return try withBuffers(parts.dropFirst(), &collected, body)
        }
    }

    /// Writes every byte before `deadline`: each `send` waits at most until the deadline, so a
    /// peer that reads a byte at a time cannot stretch the write past it. Replaces the socket's
    /// write timeout.
    /// - Parameters:
    ///   - bytes: what to send.
    ///   - deadline: when to give up (monotonic).
    /// - Throws: `SocketError(.timeout)` when the deadline passed first; otherwise as `write(_:)`.
    public func write(_ bytes: [UInt8], before deadline: ContinuousClock.Instant) throws {
        if bytes.isEmpty { return }
        // The write timeout is set here per send: whatever `setTimeouts` remembered is stale.
        timeouts.withLock { $0.write = nil }
        defer { timeouts.withLock { $0.write = nil } }
        do {
            try withDescriptor("write") { fd in
                try bytes.withUnsafeBytes { raw in
                    var offset = 0
                    while offset < raw.count {
                        let remaining = ContinuousClock.now.duration(to: deadline)
                        guard remaining > .zero else { throw SocketError(.timeout, "write", code: ETIMEDOUT) }
                        let seconds = remaining.timeoutSeconds
                        var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1_000_000))
                        try SystemCall.runToCompletion("setsockopt") {
                            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                        }
                        let result = try SystemCall.run("send", misuse: .forbiddingEINVAL) {
                            send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                        }
                        if case .processed(let n) = result { offset += n }
                    }
                }
            }
        } catch let e as SystemCallError {
            throw SocketError(e, operation: "write")
        }
    }

    /// Writes every byte of `bytes`.
    /// - Throws: as `write(_:)`.
    public func write(_ bytes: [UInt8]) throws {
        if bytes.isEmpty { return }
        try bytes.withUnsafeBytes { try write($0) }
    }

    /// Writes the UTF-8 bytes of `text`.
    /// - Throws: as `write(_:)`.
    public func write(_ text: String) throws { try write(Array(text.utf8)) }

    /// `poll`s the socket with a zero timeout; nil once closed.
    private func pollNow(_ events: Int16) -> Int16? {
        try? withDescriptor("poll") { fd in
            var pfd = pollfd(fd: fd, events: events, revents: 0)
            let r = try SystemCall.runToCompletion("poll") { poll(&pfd, 1, 0) }
            return r > 0 ? pfd.revents : 0
        }
    }

    /// Whether a read would not block right now: data, end of stream or an error is pending
    /// (`poll` with a zero timeout). On an idle SMTP session any of these means the peer
    /// spoke or left unasked (a 421, a close); with TLS it may also be a post-handshake record.
    /// A closed socket counts as pending (the caller must not use it).
    public var hasPendingInput: Bool {
        guard let revents = pollNow(Int16(POLLIN)) else { return true }
        return revents != 0
    }

    /// Whether bytes (or end of stream) can be read right now (`POLLIN`); false once closed.
    /// A driver checks it before flushing pipelined replies (RFC 2920 §3.2).
    public var hasReadableInput: Bool {
        guard let revents = pollNow(Int16(POLLIN)) else { return false }
        return revents & Int16(POLLIN) != 0
    }

    /// Bytes written but not yet sent, because the peer's receive window is full
    /// (`SIOCOUTQNSD`); 0 when unknown or closed. A peer that stops reading shows here
    /// before a write blocks.
    public var unsentBytes: Int {
        let n: Int32? = try? withDescriptor("ioctl") { fd in
            var n: Int32 = 0
            try SystemCall.runToCompletion("ioctl") { ioctl(fd, UInt(0x894B), &n) }  // SIOCOUTQNSD, linux/sockios.h
            return n
        }
        return Int(n ?? 0)
    }

    /// Shuts down both directions without releasing the descriptor: a thread blocked in
    /// `read` (or `accept`) returns, and the peer sees end of stream. Safe from any thread,
    /// at any time, any number of times; the owner still calls `close()`.
    public func shutdown() {
        let fd = state.withLock { s -> Int32 in
            guard !s.closeRequested, s.descriptor >= 0 else { return -1 }
            s.shutDown = true
            s.users += 1
            return s.descriptor
        }
        guard fd >= 0 else { return }
        defer { endUse() }
        // ENOTCONN (never connected, or already reset) leaves nothing to shut down.
        _ = try? SystemCall.runToCompletion("shutdown") { Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
    }

    /// Shuts down the sending direction only: the peer reads end of stream after what was
    /// written, and this side can still read (a lingering close).
    func shutdownWrite() {
        _ = try? withDescriptor("shutdown") { fd in
            _ = try? SystemCall.runToCompletion("shutdown") { Glibc.shutdown(fd, Int32(SHUT_WR)) }
        }
    }

    /// Closes the socket (idempotent). **Owner only** (the thread that reads it); other
    /// threads call `shutdown()`. Should another thread close it anyway while a call is in
    /// progress, the socket is shut down to wake that call and the descriptor is released
    /// when it returns — never under it.
    public func close() {
        let (fd, now) = state.withLock { s -> (Int32, Bool) in
            guard !s.closeRequested, s.descriptor >= 0 else { return (-1, false) }
            s.closeRequested = true
            if s.users == 0 {
                defer { s.descriptor = -1 }
                return (s.descriptor, true)
            }
            s.users += 1  // held across the shutdown below
            return (s.descriptor, false)
        }
        guard fd >= 0 else { return }
        if now {
            try? SystemCall.close(fd)
        } else {
            _ = try? SystemCall.runToCompletion("shutdown") { Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
            endUse()
        }
    }
}

extension Duration {
    /// Seconds for a socket timeout: `.zero` stays 0 ("forever"), other durations at least 1 µs.
    var timeoutSeconds: TimeInterval {
        if self <= .zero { return 0 }
        let (s, atto) = components
        return max(0.000_001, Double(s) + Double(atto) / 1e18)
    }

    /// Milliseconds for `poll`: rounded up, at least 0, at most `Int32.max`.
    var pollMilliseconds: Int32 {
        if self <= .zero { return 0 }
        let (s, atto) = components
        let ms = s * 1000 + (atto + 999_999_999_999_999) / 1_000_000_000_000_000
        return Int32(clamping: ms)
    }
}

extension Socket: ByteStream {}
