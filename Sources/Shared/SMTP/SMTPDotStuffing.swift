import Foundation
import HatoSupport

/// The DATA body encoding of RFC 5321 §4.5.2 (transparency) and §4.1.1.4 (end of data).
public enum SMTPDotStuffing {
    /// Streams `body` as it goes on the wire after a 354: a `.` is prepended to every line
    /// that starts with `.`, bare LFs become CRLF, a final CRLF is added when the body does
    /// not end in one, and `.CRLF` ends the data. Line ends are found with `memchr` and runs
    /// of lines that need no change are copied in one piece; output is handed over in chunks
    /// of about `chunkSize` octets.
    /// - Parameters:
    ///   - body: the stored message (CRLF line ends).
    ///   - chunkSize: the preferred write size in octets.
    ///   - emit: called with each chunk, in order; the last chunk ends with the terminator.
    public static func encode(_ body: [UInt8], chunkSize: Int = 64 * 1024, emit: ([UInt8]) throws -> Void) rethrows {
        let limit = max(1, chunkSize)
        var out: [UInt8] = []
        out.reserveCapacity(min(body.count, limit) + 512)
        try body.withUnsafeBufferPointer { p in
            let n = p.count
            // Octets from `run` up to `i` go out unchanged (copied when a change or a chunk needs it).
            var run = 0
            var i = 0
            while i < n {
                if p[i] == 0x2E {
                    out.append(contentsOf: UnsafeBufferPointer(rebasing: p[run..<i]))
                    out.append(0x2E)
                    run = i
                }
                guard let lf = ByteScan.index(of: 0x0A, in: p, from: i) else {
                    // The last line has no line end: add CRLF.
                    out.append(contentsOf: UnsafeBufferPointer(rebasing: p[run..<n]))
                    out.append(0x0D); out.append(0x0A)
                    run = n
                    i = n
                    break
                }
                if lf > i && p[lf - 1] == 0x0D {
                    i = lf + 1
                } else {
                    // A bare LF becomes CRLF.
                    out.append(contentsOf: UnsafeBufferPointer(rebasing: p[run..<lf]))
                    out.append(0x0D); out.append(0x0A)
                    i = lf + 1
                    run = i
                }
                if out.count + (i - run) >= limit {
                    out.append(contentsOf: UnsafeBufferPointer(rebasing: p[run..<i]))
                    run = i
                    try emit(out)
                    out.removeAll(keepingCapacity: true)
                }
            }
            out.append(contentsOf: UnsafeBufferPointer(rebasing: p[run..<i]))
        }
        out.append(contentsOf: [0x2E, 0x0D, 0x0A])
        try emit(out)
    }

    /// The whole encoded body in one array (see `encode(_:chunkSize:emit:)`).
    public static func encoded(_ body: [UInt8]) -> [UInt8] {
        var all: [UInt8] = []
        all.reserveCapacity(body.count + body.count / 64 + 8)
        encode(body) { all.append(contentsOf: $0) }
        return all
    }
}
