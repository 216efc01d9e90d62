/// Word-at-a-time tests over raw bytes: eight octets are checked with one integer operation, so
/// a scan of message content for 8-bit octets skips plain text eight octets at a time (issue 19:
/// the node's per-byte passes over a 100 KiB message were a third of its CPU; line ends are
/// found with `memchr`).
public enum ByteWords {
    private static let highs: UInt64 = 0x8080_8080_8080_8080

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
