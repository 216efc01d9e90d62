#if canImport(Glibc)
import Glibc
#endif
import HatoSupport

/// An open file descriptor for durable writes (journals, spools) and whole-file reads, over
/// the syscall wrapper (`SystemCall`): `EINTR` retried, short writes completed, errors with the
/// call's name and path, a use after close a trap rather than a silent `EBADF`.
///
/// Typical durable replace-by-rename:
///
///     let f = try File.open(tmp, flags: O_WRONLY | O_CREAT | O_TRUNC)
///     try f.writeAll(bytes); try f.sync(); try f.close()
///     try File.rename(tmp, to: path)
///     try File.syncDirectory(containing: path)
///
/// Calls on one `File` are serialized by its lock (held across the system call: the lock is
/// what keeps two writers from interleaving). The descriptor is closed by `close()` or, if
/// the owner forgot, in `deinit`.
public final class File: Sendable {
    private let descriptor: Locked<Int32>
    /// The path the file was opened with (for messages).
    public let path: String

    private init(descriptor: Int32, path: String) {
        self.descriptor = Locked(descriptor)
        self.path = path
    }

    deinit {
        let fd = descriptor.snapshot
        if fd >= 0 { try? SystemCall.close(fd) }
    }

    /// Opens `path`; `O_CLOEXEC` is always added.
    /// - Parameters:
    ///   - path: the file.
    ///   - flags: `O_RDONLY`, `O_WRONLY | O_CREAT | O_APPEND`, …
    ///   - mode: permissions when the file is created.
    /// - Returns: the open file.
    /// - Throws: `SystemCallError` (`open <path>`), e.g. `ENOENT`, `EACCES`.
    public static func open(_ path: String, flags: Int32, mode: mode_t = 0o640) throws(SystemCallError) -> File {
        guard !path.utf8.contains(0) else { throw SystemCallError("open \(path)", code: EINVAL) }
        do {
            let fd = try SystemCall.runToCompletion("open") { Glibc.open(path, flags | O_CLOEXEC, mode) }
            return File(descriptor: fd, path: path)
        } catch {
            throw SystemCallError("open \(path)", code: error.code)
        }
    }

    /// Runs `body` with the descriptor under the lock; its error gets the path.
    private func withDescriptor<R>(_ call: String, _ body: (Int32) throws(SystemCallError) -> R) throws(SystemCallError) -> R {
        let outcome = descriptor.withLock { fd -> Result<R, SystemCallError> in
            if fd < 0 { fatalError("\(call) on \(path) after close(): a programming error in Hato") }
            do throws(SystemCallError) { return .success(try body(fd)) } catch { return .failure(error) }
        }
        switch outcome {
        case .success(let value): return value
        case .failure(let error): throw SystemCallError("\(call) \(path)", code: error.code)
        }
    }

    /// Writes every byte (short writes are continued).
    /// - Throws: `SystemCallError` (`write <path>`), e.g. `ENOSPC`, `EIO`.
    public func writeAll(_ bytes: UnsafeRawBufferPointer) throws(SystemCallError) {
        try withDescriptor("write") { fd throws(SystemCallError) in
            var offset = 0
            while offset < bytes.count {
                let n = try SystemCall.runToCompletion("write", misuse: .forbiddingEINVAL) {
                    Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
                }
                offset += n
            }
        }
    }

    /// Writes every byte of `bytes`.
    /// - Throws: `SystemCallError` (`write <path>`).
    public func writeAll(_ bytes: [UInt8]) throws(SystemCallError) {
        let outcome = bytes.withUnsafeBytes { raw -> Result<Void, SystemCallError> in
            do throws(SystemCallError) { try writeAll(raw); return .success(()) } catch { return .failure(error) }
        }
        try outcome.get()
    }

    /// Reads up to `buffer.count` bytes at the current offset.
    /// - Returns: the number read; 0 at end of file.
    /// - Throws: `SystemCallError` (`read <path>`), e.g. `EIO`, `EISDIR`.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(SystemCallError) -> Int {
        try withDescriptor("read") { fd throws(SystemCallError) in
            try SystemCall.runToCompletion("read") { Glibc.read(fd, buffer.baseAddress, buffer.count) }
        }
    }

    /// Reads from the current offset to the end of the file.
    /// - Parameter limit: the most octets accepted.
    /// - Returns: the bytes, or nil when the file holds more than `limit` octets.
    /// - Throws: `SystemCallError` (`read <path>`).
    public func readToEnd(limit: Int) throws(SystemCallError) -> [UInt8]? {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = try chunk.withUnsafeMutableBytes { raw -> Result<Int, SystemCallError> in
                do throws(SystemCallError) { return .success(try read(into: raw)) } catch { return .failure(error) }
            }.get()
            if n == 0 { return out }
            out.append(contentsOf: chunk[0..<n])
            if out.count > limit { return nil }
        }
    }

    /// Flushes the file's data and metadata to stable storage (`fsync`).
    /// - Throws: `SystemCallError` (`fsync <path>`), e.g. `EIO`: the data may be lost; do not
    ///   report it as durable.
    public func sync() throws(SystemCallError) {
        try withDescriptor("fsync") { fd throws(SystemCallError) in _ = try SystemCall.runToCompletion("fsync") { fsync(fd) } }
    }

    /// Flushes the file's data, and the metadata needed to read it back (its size), to stable
    /// storage (`fdatasync`): cheaper than `sync()` for an appended file (no timestamps).
    /// - Throws: `SystemCallError` (`fdatasync <path>`), e.g. `EIO`: do not report the data as durable.
    public func syncData() throws(SystemCallError) {
        try withDescriptor("fdatasync") { fd throws(SystemCallError) in _ = try SystemCall.runToCompletion("fdatasync") { fdatasync(fd) } }
    }

    /// Reads exactly `count` octets at `offset` (`pread`; the file offset is unchanged).
    /// - Returns: the bytes, or nil when the file ends first.
    /// - Throws: `SystemCallError` (`pread <path>`), e.g. `EIO`.
    public func read(count: Int, at offset: Int) throws(SystemCallError) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: max(0, count))
        let got = try out.withUnsafeMutableBytes { raw -> Result<Int, SystemCallError> in
            do throws(SystemCallError) {
                return .success(try withDescriptor("pread") { fd throws(SystemCallError) in
                    var done = 0
                    while done < raw.count {
                        let n = try SystemCall.runToCompletion("pread") { Glibc.pread(fd, raw.baseAddress! + done, raw.count - done, off_t(offset + done)) }
                        if n == 0 { break }
                        done += n
                    }
                    return done
                })
            } catch { return .failure(error) }
        }.get()
        return got == out.count ? out : nil
    }

    /// The file's size in octets (`fstat`).
    /// - Throws: `SystemCallError` (`fstat <path>`).
    public func size() throws(SystemCallError) -> Int {
        try withDescriptor("fstat") { fd throws(SystemCallError) in
            var st = stat()
            _ = try SystemCall.runToCompletion("fstat") { fstat(fd, &st) }
            return Int(st.st_size)
        }
    }

    /// Closes the file (idempotent).
    /// - Throws: `SystemCallError` (`close <path>`), e.g. `EIO` from a network file system: the
    ///   last writes may be lost.
    public func close() throws(SystemCallError) {
        let fd = descriptor.withLock { fd -> Int32 in defer { fd = -1 }; return fd }
        guard fd >= 0 else { return }
        do { try SystemCall.close(fd) } catch { throw SystemCallError("close \(path)", code: error.code) }
    }

    /// Renames `source` to `destination` atomically (replacing it); make it durable with
    /// `syncDirectory(containing:)`.
    /// - Throws: `SystemCallError` (`rename <source>`).
    public static func rename(_ source: String, to destination: String) throws(SystemCallError) {
        do { try SystemCall.runToCompletion("rename") { Glibc.rename(source, destination) } } catch {
            throw SystemCallError("rename \(source) to \(destination)", code: error.code)
        }
    }

    /// Removes `path`; a missing file is not an error.
    /// - Throws: `SystemCallError` (`unlink <path>`).
    public static func remove(_ path: String) throws(SystemCallError) {
        do { try SystemCall.runToCompletion("unlink") { unlink(path) } } catch {
            if error.code == ENOENT { return }
            throw SystemCallError("unlink \(path)", code: error.code)
        }
    }

    /// `fsync`s the directory `directory`, so that names created, renamed or removed in it
    /// survive a power cut.
    /// - Throws: `SystemCallError` (`open`/`fsync <directory>`).
    public static func syncDirectory(_ directory: String) throws(SystemCallError) {
        let dir = try open(directory, flags: O_RDONLY | O_DIRECTORY)
        try dir.sync()
        try dir.close()
    }

    /// `fsync`s the directory holding `path` (see `syncDirectory`).
    /// - Throws: `SystemCallError`.
    public static func syncDirectory(containing path: String) throws(SystemCallError) {
        guard let slash = path.lastIndex(of: "/") else { return try syncDirectory(".") }
        let dir = String(path[..<slash])
        try syncDirectory(dir.isEmpty ? "/" : dir)
    }

    /// Reads a whole file.
    /// - Parameters:
    ///   - path: the file.
    ///   - limit: the most octets accepted.
    /// - Returns: the bytes, or nil when the file is larger than `limit`.
    /// - Throws: `SystemCallError` (`open`/`read <path>`).
    public static func readAll(_ path: String, limit: Int) throws(SystemCallError) -> [UInt8]? {
        let f = try open(path, flags: O_RDONLY)
        let bytes = try f.readToEnd(limit: limit)
        try? f.close()
        return bytes
    }
}
