#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import HatoSupport

/// A byte stream: a plain `Socket` or a `TLSStream` over one.
///
/// The close rule of `Socket` holds for every stream: the reading thread calls `close()`;
/// other threads call `shutdown()`.
public protocol ByteStream: AnyObject, Sendable {
    /// Reads up to `buffer.count` bytes; returns 0 at end of stream.
    /// - Throws: `SocketError` on timeout or failure.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int
    /// Writes all bytes.
    /// - Throws: `SocketError` on timeout or failure.
    func write(_ bytes: [UInt8]) throws
    /// Wakes a blocked reader and ends the connection; safe from any thread.
    func shutdown()
    /// Closes the stream (owner only: the reading thread).
    func close()
}

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
        // Scanned octets are counted from `start`: `fill()` may move the buffered bytes to the
        // front of the buffer, and an absolute index would then point past the end or skip an LF.
        var scanned = 0
        var overlong = false
        while true {
            if let lf = buffer[(start + scanned)...].firstIndex(of: 0x0A) {
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
            scanned = buffer.count - start
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
