import Foundation
import HatoTestKit
import Testing
@testable import HatoIO

/// A byte stream that hands out fixed chunks, one per read.
final class ChunkStream: ByteStream, @unchecked Sendable {
    // @unchecked: used by one test thread only.
    private var chunks: [[UInt8]]
    init(_ chunks: [[UInt8]]) { self.chunks = chunks }
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        guard !chunks.isEmpty else { return 0 }
        var c = chunks.removeFirst()
        if c.count > buffer.count { chunks.insert(Array(c[buffer.count...]), at: 0); c = Array(c[..<buffer.count]) }
        c.withUnsafeBytes { buffer.copyMemory(from: $0) }
        return c.count
    }
    func write(_ bytes: [UInt8]) throws {}
    func close() {}
    func shutdown() {}
}

@Suite("Buffered line reader")
struct BufferedReaderTests {
    @Test("lines spread over many reads, with the buffer compacted between reads, come out whole and in order")
    func compactionKeepsTheScan() throws {
        // Each read brings 7 octets; lines of various lengths; the reader compacts its buffer
        // (moves the unread bytes to the front) while a line is half read.
        var random = SplitMix64(seed: 42)
        var lines: [String] = []
        for i in 0..<300 { lines.append(String(repeating: "x", count: Int(random.next() % 40)) + "#\(i)") }
        let bytes = Array(lines.map { $0 + "\r\n" }.joined().utf8)
        var chunks: [[UInt8]] = []
        var i = 0
        while i < bytes.count { chunks.append(Array(bytes[i..<min(i + 7, bytes.count)])); i += 7 }
        let reader = BufferedReader(stream: ChunkStream(chunks), chunkSize: 7)
        var got: [String] = []
        while let line = try reader.readLine(maxLength: 1000) {
            got.append(String(decoding: line.dropLast(2), as: UTF8.self))
        }
        #expect(got == lines)
    }
}
