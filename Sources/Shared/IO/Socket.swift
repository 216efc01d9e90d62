#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// An error from a socket system call, with the call's name and `errno`.
public struct SocketError: Error, CustomStringConvertible, Sendable, Equatable {
    /// What kind of failure this is.
    public enum Kind: Sendable, Equatable {
        /// A read or write did not complete within the socket's timeout.
        case timeout
        /// The peer closed the connection (EOF where more bytes were needed, or EPIPE/ECONNRESET).
        case closed
        /// Any other system call failure.
        case system
        /// An address string could not be parsed as a numeric IPv4/IPv6 address.
        case badAddress
    }
    /// The failure class.
    public let kind: Kind
    /// The system call or operation that failed, e.g. `connect`.
    public let operation: String
    /// `errno` at the time of the failure (0 when not applicable).
    public let code: Int32

    public init(_ kind: Kind, _ operation: String, code: Int32 = 0) {
        self.kind = kind; self.operation = operation; self.code = code
    }

    public var description: String {
        switch kind {
        case .timeout: return "\(operation): timed out"
        case .closed: return "\(operation): connection closed by peer"
        case .badAddress: return "\(operation): not a numeric IP address"
        case .system: return "\(operation): \(String(validatingCString: strerror(code)) ?? "errno \(code)")"
        }
    }
}

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

/// A numeric IPv4 or IPv6 socket address.
public struct SocketAddress: Sendable, Hashable, CustomStringConvertible {
    /// The numeric address text, e.g. `127.0.0.10` or `::1`.
    public let host: String
    /// The port in host byte order.
    public let port: UInt16

    public init(host: String, port: UInt16) { self.host = host; self.port = port }

    /// `host:port`, with IPv6 hosts in brackets.
    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Whether `host` is an IPv6 literal.
    public var isIPv6: Bool { host.contains(":") }

    /// Builds the C socket address.
    /// - Throws: `SocketError(.badAddress)` when `host` is not a numeric address.
    func withSockAddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws -> R) throws -> R {
        if isIPv6 {
            var sa = sockaddr_in6()
            sa.sin6_family = sa_family_t(AF_INET6)
            sa.sin6_port = port.bigEndian
            guard inet_pton(AF_INET6, host, &sa.sin6_addr) == 1 else { throw SocketError(.badAddress, host) }
            return try withUnsafePointer(to: &sa) {
                try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
        } else {
            var sa = sockaddr_in()
            sa.sin_family = sa_family_t(AF_INET)
            sa.sin_port = port.bigEndian
            guard inet_pton(AF_INET, host, &sa.sin_addr) == 1 else { throw SocketError(.badAddress, host) }
            return try withUnsafePointer(to: &sa) {
                try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        }
    }

    /// Decodes a C socket address (IPv4 or IPv6); nil for other families.
    static func from(storage: inout sockaddr_storage) -> SocketAddress? {
        switch Int32(storage.ss_family) {
        case AF_INET:
            return withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { p -> SocketAddress in
                    var addr = p.pointee.sin_addr
                    var buf = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
                    inet_ntop(AF_INET, &addr, &buf, socklen_t(buf.count))
                    return SocketAddress(host: cString(buf), port: UInt16(bigEndian: p.pointee.sin_port))
                }
            }
        case AF_INET6:
            return withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { p -> SocketAddress in
                    var addr = p.pointee.sin6_addr
                    var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
                    inet_ntop(AF_INET6, &addr, &buf, socklen_t(buf.count))
                    return SocketAddress(host: cString(buf), port: UInt16(bigEndian: p.pointee.sin6_port))
                }
            }
        default:
            return nil
        }
    }
}

/// A blocking TCP socket that owns its file descriptor and closes it on deinit.
///
/// Blocking I/O with `SO_RCVTIMEO`/`SO_SNDTIMEO` timeouts: Hato runs one thread
/// per session (about 9 kB resident each on this platform), which keeps every
/// protocol driver a straight-line loop. `@unchecked Sendable`: the descriptor is
/// only closed once (guarded by a lock) and a socket is used by one reader and at
/// most one writer thread at a time.
public final class Socket: @unchecked Sendable {
    private let lock = NSLock()
    private var descriptor: Int32

    /// The file descriptor (-1 once closed).
    public var fd: Int32 { lock.withLock { descriptor } }

    init(fd: Int32) { self.descriptor = fd }

    deinit { if descriptor >= 0 { Glibc.close(descriptor) } }

    /// Opens a listening TCP socket with `SO_REUSEADDR`.
    /// - Parameters:
    ///   - address: numeric address and port; port 0 picks a free port (see `localAddress`).
    ///   - backlog: the kernel accept queue length.
    /// - Throws: `SocketError` from `socket`, `bind` or `listen`.
    public static func listen(on address: SocketAddress, backlog: Int32 = 1024) throws -> Socket {
        let fd = Glibc.socket(address.isIPv6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SocketError(.system, "socket", code: errno) }
        let sock = Socket(fd: fd)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        try address.withSockAddr { sa, len in
            guard Glibc.bind(fd, sa, len) == 0 else { throw SocketError(.system, "bind \(address)", code: errno) }
        }
        guard Glibc.listen(fd, backlog) == 0 else { throw SocketError(.system, "listen \(address)", code: errno) }
        return sock
    }

    /// Accepts one connection, retrying `EINTR`/`ECONNABORTED`.
    /// - Returns: the connected socket and the peer's address.
    /// - Throws: `SocketError` when the listener is closed or `accept` fails otherwise.
    public func accept() throws -> (Socket, SocketAddress) {
        while true {
            var storage = sockaddr_storage()
            var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let listenFD = fd
            guard listenFD >= 0 else { throw SocketError(.closed, "accept") }
            let cfd = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.accept(listenFD, $0, &len) }
            }
            if cfd < 0 {
                let e = errno
                if e == EINTR || e == ECONNABORTED || e == EAGAIN { continue }
                if e == EMFILE || e == ENFILE { usleep(10_000); continue }
                throw SocketError(e == EBADF || e == EINVAL ? .closed : .system, "accept", code: e)
            }
            let peer = SocketAddress.from(storage: &storage) ?? SocketAddress(host: "unknown", port: 0)
            let s = Socket(fd: cfd)
            s.setNoDelay()
            return (s, peer)
        }
    }

    /// Connects to `remote`, optionally binding the local end to `source` first
    /// (a sending IP: bind before connect, port chosen by the kernel).
    /// - Parameters:
    ///   - remote: the peer's numeric address and port.
    ///   - source: the local address to bind, or nil for the kernel's choice.
    ///   - timeout: seconds to wait for the TCP handshake.
    /// - Throws: `SocketError` (`.timeout` when the handshake did not finish in time;
    ///   `EADDRNOTAVAIL` from `bind` when `source` is not a local address).
    public static func connect(to remote: SocketAddress, from source: String? = nil, timeout: TimeInterval) throws -> Socket {
        let fd = Glibc.socket(remote.isIPv6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SocketError(.system, "socket", code: errno) }
        let sock = Socket(fd: fd)
        if let source {
            var one: Int32 = 1
            // Lets many outbound connections share one sending IP without port exhaustion on bind().
            setsockopt(fd, SOL_IP, IP_BIND_ADDRESS_NO_PORT, &one, socklen_t(MemoryLayout<Int32>.size))
            try SocketAddress(host: source, port: 0).withSockAddr { sa, len in
                guard Glibc.bind(fd, sa, len) == 0 else { throw SocketError(.system, "bind \(source)", code: errno) }
            }
        }
        // Non-blocking connect so the handshake timeout is ours, then back to blocking.
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        let rc = try remote.withSockAddr { sa, len in Glibc.connect(fd, sa, len) }
        if rc != 0 {
            guard errno == EINPROGRESS else { throw SocketError(errno == ECONNREFUSED ? .closed : .system, "connect \(remote)", code: errno) }
            var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            let ms = Int32(max(1, min(timeout * 1000, Double(Int32.max))))
            var pr: Int32
            repeat { pr = poll(&pfd, 1, ms) } while pr < 0 && errno == EINTR
            if pr == 0 { throw SocketError(.timeout, "connect \(remote)", code: ETIMEDOUT) }
            var err: Int32 = 0
            var elen = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen)
            if err != 0 { throw SocketError(.system, "connect \(remote)", code: err) }
        }
        _ = fcntl(fd, F_SETFL, flags)
        sock.setNoDelay()
        return sock
    }

    private func setNoDelay() {
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Sets the read and write timeouts in seconds (0 means wait forever).
    public func setTimeouts(read: TimeInterval, write: TimeInterval) {
        func tv(_ s: TimeInterval) -> timeval {
            timeval(tv_sec: Int(s), tv_usec: Int((s - Double(Int(s))) * 1_000_000))
        }
        var r = tv(read), w = tv(write)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &r, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &w, socklen_t(MemoryLayout<timeval>.size))
    }

    /// The local address of this socket (for a listener bound to port 0: the real port).
    public var localAddress: SocketAddress? {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        return ok == 0 ? SocketAddress.from(storage: &storage) : nil
    }

    /// Reads up to `count` bytes into `buffer`.
    /// - Returns: the number of bytes read; 0 at end of stream.
    /// - Throws: `SocketError(.timeout)` when the read timeout passed, `.closed` on reset.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        while true {
            let n = Glibc.recv(fd, buffer.baseAddress, buffer.count, 0)
            if n >= 0 { return n }
            let e = errno
            if e == EINTR { continue }
            if e == EAGAIN || e == EWOULDBLOCK { throw SocketError(.timeout, "read", code: e) }
            if e == ECONNRESET || e == EBADF || e == ENOTCONN { throw SocketError(.closed, "read", code: e) }
            throw SocketError(.system, "read", code: e)
        }
    }

    /// Writes every byte, retrying short writes and `EINTR`.
    /// - Throws: `SocketError(.timeout)` when the write timeout passed, `.closed` when the peer is gone.
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        var offset = 0
        while offset < bytes.count {
            let n = Glibc.send(fd, bytes.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
            if n > 0 { offset += n; continue }
            let e = errno
            if n < 0 && e == EINTR { continue }
            if n < 0 && (e == EAGAIN || e == EWOULDBLOCK) { throw SocketError(.timeout, "write", code: e) }
            if n < 0 && (e == EPIPE || e == ECONNRESET || e == EBADF) { throw SocketError(.closed, "write", code: e) }
            throw SocketError(.system, "write", code: e)
        }
    }

    /// Writes every byte of `bytes`.
    public func write(_ bytes: [UInt8]) throws {
        if bytes.isEmpty { return }
        try bytes.withUnsafeBytes { try write($0) }
    }

    /// Writes the UTF-8 bytes of `text`.
    public func write(_ text: String) throws { try write(Array(text.utf8)) }

    /// Whether a read would not block right now: data, end of stream or an error is pending
    /// (`poll` with a zero timeout). On an idle SMTP session any of these means the peer
    /// spoke or left unasked (a 421, a close); with TLS it may also be a post-handshake record.
    /// A closed socket counts as pending (the caller must not use it).
    public var hasPendingInput: Bool {
        let f = fd
        guard f >= 0 else { return true }
        var pfd = pollfd(fd: f, events: Int16(POLLIN), revents: 0)
        var r: Int32
        repeat { r = poll(&pfd, 1, 0) } while r < 0 && errno == EINTR
        return r != 0
    }

    /// Bytes written but not yet sent, because the peer's receive window is full
    /// (`SIOCOUTQNSD`); 0 when unknown or closed. A peer that stops reading shows here
    /// before a write blocks.
    public var unsentBytes: Int {
        let f = fd
        guard f >= 0 else { return 0 }
        var n: Int32 = 0
        return ioctl(f, UInt(0x894B), &n) == 0 ? Int(n) : 0  // SIOCOUTQNSD, linux/sockios.h
    }

    /// Shuts down both directions (wakes a thread blocked in `read` or `accept`) without closing the descriptor.
    public func shutdown() {
        let f = fd
        if f >= 0 { _ = Glibc.shutdown(f, Int32(SHUT_RDWR)) }
    }

    /// Closes the descriptor (idempotent).
    public func close() {
        lock.withLock {
            if descriptor >= 0 {
                _ = Glibc.shutdown(descriptor, Int32(SHUT_RDWR))
                Glibc.close(descriptor)
                descriptor = -1
            }
        }
    }
}

/// A byte stream: plain socket today, TLS later (issues 3 and 4 wrap it).
public protocol ByteStream: AnyObject, Sendable {
    /// Reads up to `buffer.count` bytes; returns 0 at end of stream.
    /// - Throws: `SocketError` on timeout or failure.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int
    /// Writes all bytes.
    /// - Throws: `SocketError` on timeout or failure.
    func write(_ bytes: [UInt8]) throws
    /// Closes the stream.
    func close()
}

extension Socket: ByteStream {}

/// A read buffer over a `ByteStream` with bounded line reads.
///
/// Lines end in LF; the caller decides what a bare LF means (SMTP rejects it).
/// Not thread-safe: one reader owns it.
public final class BufferedReader {
    /// The underlying stream.
    public let stream: any ByteStream
    private var buffer: [UInt8] = []
    private var start = 0
    private let chunkSize: Int

    /// - Parameters:
    ///   - stream: what to read from.
    ///   - chunkSize: bytes per `read` system call.
    public init(stream: any ByteStream, chunkSize: Int = 64 * 1024) {
        self.stream = stream
        self.chunkSize = chunkSize
    }

    /// Bytes already received but not yet consumed.
    public var buffered: ArraySlice<UInt8> { buffer[start...] }

    /// Drops every buffered byte (e.g. what a client pipelined after STARTTLS, RFC 3207 §4.2).
    public func discardBuffered() { buffer.removeAll(keepingCapacity: true); start = 0 }

    /// Consumes `count` buffered bytes.
    public func consume(_ count: Int) {
        start += count
        if start >= buffer.count { buffer.removeAll(keepingCapacity: true); start = 0 }
    }

    /// Reads more bytes from the stream into the buffer.
    /// - Returns: the number of new bytes; 0 at end of stream.
    /// - Throws: `SocketError` from the stream.
    @discardableResult
    public func fill() throws -> Int {
        if start > 0 && start > buffer.count / 2 {
            buffer.removeSubrange(0..<start); start = 0
        }
        let old = buffer.count
        buffer.reserveCapacity(old + chunkSize)
        var tmp = [UInt8](repeating: 0, count: chunkSize)
        let n = try tmp.withUnsafeMutableBytes { try stream.read(into: $0) }
        if n > 0 { buffer.append(contentsOf: tmp[0..<n]) }
        return n
    }

    /// Reads one line including its terminating LF.
    /// - Parameter maxLength: the most octets a line may have, terminator included.
    /// - Returns: the line, or nil at a clean end of stream with nothing buffered.
    /// - Throws: `LineTooLong` when `maxLength` is exceeded (the overlong bytes up
    ///   to the next LF are discarded so the stream stays in sync), or `SocketError`.
    public func readLine(maxLength: Int) throws -> ArraySlice<UInt8>? {
        var scanFrom = start
        var overlong = false
        while true {
            if let lf = buffer[scanFrom...].firstIndex(of: 0x0A) {
                if overlong || lf - start + 1 > maxLength {
                    consume(lf - start + 1)
                    throw LineTooLong()
                }
                let line = buffer[start...lf]
                consume(lf - start + 1)
                return line
            }
            if buffer.count - start > maxLength {
                // Drop what we have and keep discarding until LF.
                overlong = true
                buffer.removeAll(keepingCapacity: true); start = 0
            }
            scanFrom = buffer.count
            if try fill() == 0 {
                if buffer.count - start == 0 && !overlong { return nil }
                throw SocketError(.closed, "read line")
            }
        }
    }

    /// Reads exactly `count` bytes.
    /// - Throws: `SocketError(.closed)` if the stream ends first.
    public func readExact(_ count: Int) throws -> [UInt8] {
        while buffer.count - start < count {
            if try fill() == 0 { throw SocketError(.closed, "read") }
        }
        let out = Array(buffer[start..<(start + count)])
        consume(count)
        return out
    }
}

/// Thrown by `BufferedReader.readLine` when a line exceeds its limit.
public struct LineTooLong: Error, Sendable {}
