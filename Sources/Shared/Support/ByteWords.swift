/// Word-at-a-time tests over raw bytes: eight octets are checked with a few integer operations,
/// so per-byte loops over message content (line endings, 8-bit octets) can skip the words that
/// hold nothing of interest — most of a message (issue 19: the node's per-byte passes over a
/// 100 KiB message were a third of its CPU).
public enum ByteWords {
    private static let ones: UInt64 = 0x0101_0101_0101_0101
    private static let highs: UInt64 = 0x8080_8080_8080_8080

    /// The eight octets at `offset` (any alignment, native byte order).
    /// - Precondition: `offset + 8 <= p.count`.
    @inline(__always)
    public static func load(_ p: UnsafeBufferPointer<UInt8>, _ offset: Int) -> UInt64 {
        UnsafeRawPointer(p.baseAddress! + offset).loadUnaligned(as: UInt64.self)
    }

    /// Whether any of the eight octets of `word` equals `byte` (exact: no false positives).
    @inline(__always)
    public static func contains(_ word: UInt64, _ byte: UInt8) -> Bool {
        let x = word ^ (ones &* UInt64(byte))
        // Per byte: (x - 1) & ~x has the high bit set only where x is 0, given x's own high
        // bit is clear; a byte with its high bit set never yields a false zero with ~x.
        return ((x &- ones) & ~x & highs) != 0
    }

    /// Whether any of the eight octets of `word` is 0x80 or above.
    @inline(__always)
    public static func hasHighBit(_ word: UInt64) -> Bool { word & highs != 0 }
}
