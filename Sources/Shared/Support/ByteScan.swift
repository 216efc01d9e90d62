#if canImport(Glibc)
import Glibc
#endif

/// Fast scans of message content over raw bytes (issue 19: the per-octet passes over a 100 KiB
/// message were a third of a node's CPU): an octet's next position through `memchr`, and a
/// word-at-a-time 8-bit test that checks eight octets with one integer operation.
public enum ByteScan {
    private static let highs: UInt64 = 0x8080_8080_8080_8080

    /// The position in `p` of the first `byte` at or after `start`, or nil (`memchr`).
    @inline(__always)
    public static func index(of byte: UInt8, in p: UnsafeBufferPointer<UInt8>, from start: Int) -> Int? {
        guard start < p.count, let base = p.baseAddress,
              let found = memchr(base + start, Int32(byte), p.count - start) else { return nil }
        return base.distance(to: found.assumingMemoryBound(to: UInt8.self))
    }

    /// The eight octets at `offset` (any alignment, native byte order).
    /// - Precondition: `offset + 8 <= p.count`.
    @inline(__always)
    public static func load(_ p: UnsafeBufferPointer<UInt8>, _ offset: Int) -> UInt64 {
        UnsafeRawPointer(p.baseAddress! + offset).loadUnaligned(as: UInt64.self)
    }

    /// Whether any of the eight octets of `word` is 0x80 or above.
    @inline(__always)
    public static func hasHighBit(_ word: UInt64) -> Bool { word & highs != 0 }
}
