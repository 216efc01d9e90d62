import Foundation
#if canImport(Glibc)
import Glibc
#endif

extension Thread {
    /// Starts `body` on a new thread called `name`, both in Foundation (`Thread.current.name`)
    /// and in the kernel (`/proc/PID/task/TID/comm`: its first 15 octets), which is the name
    /// `top -H`, `ps -L`, `perf` and `gdb` show.
    ///
    /// swift-corelibs-foundation on Linux keeps a name set before `start()` to itself: every
    /// thread of a process showed the process's name to those tools (measured). On the thread
    /// itself, `Thread.current.name` then reads the kernel's copy (cut at 15 octets).
    /// - Parameters:
    ///   - name: the thread's name (ASCII is best: the kernel's copy is cut at 15 octets).
    ///   - stackSize: the stack's size in bytes, or nil for Foundation's default.
    ///   - body: what the thread runs; the thread ends when it returns.
    /// - Returns: the started thread.
    @discardableResult
    public static func startNamed(_ name: String, stackSize: Int? = nil, _ body: @escaping @Sendable () -> Void) -> Thread {
        let thread = Thread {
            Thread.setKernelName(name)
            body()
        }
        thread.name = name
        if let stackSize { thread.stackSize = stackSize }
        thread.start()
        return thread
    }

    /// Sets the calling thread's kernel name to the first 15 octets of `name` (cut at a
    /// character boundary); errors are ignored (the name is for people reading `top -H`).
    /// Linux only; elsewhere nothing is done.
    static func setKernelName(_ name: String) {
        #if os(Linux)
        var octets: [UInt8] = []
        for scalar in name.unicodeScalars {
            guard octets.count + scalar.utf8.count <= 15 else { break }
            octets += scalar.utf8
        }
        // /proc/thread-self/comm (Linux 3.17): pthread_setname_np and prctl(PR_SET_NAME) do not
        // reach Swift through Glibc (a _GNU_SOURCE function; a variadic one).
        let fd = open("/proc/thread-self/comm", O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        _ = octets.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        #endif
    }

    /// The calling thread's kernel name (what `setKernelName` set, or the process's name).
    static var kernelName: String {
        #if os(Linux)
        let fd = open("/proc/thread-self/comm", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 32)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return "" }
        return String(decoding: buffer.prefix(n).prefix { $0 != 0x0A }, as: UTF8.self)
        #else
        return Thread.current.name ?? ""
        #endif
    }
}
