/// Streaming decoder for the content that follows `354` (RFC 5321 §4.1.1.4, §4.5.2).
///
/// Feed it bytes in any split; it reports how many it consumed and whether the
/// end-of-data indicator was seen. Rules:
///
/// - Only `CRLF . CRLF` ends the content (RFC 5321 §4.1.1.4); the `.CRLF` line
///   may also be the very first line (empty body). No other variant
///   (`LF.LF`, `LF.CRLF`, `CRLF.LF`, `CR.CR`, `CRLF.CR CRLF`, …) ends the
///   content, so a message can never be cut short and a second one smuggled in
///   (CVE-2023-51764 and relatives).
/// - Transparency: a line starting with `.` loses that first dot (RFC 5321 §4.5.2).
/// - A bare LF (not preceded by CR) or a bare CR (not followed by LF) anywhere
///   in the content rejects the message with `550 5.6.0` once the terminator
///   arrives (RFC 5321 §2.3.8 requires CRLF line endings).
/// - Size: the content octets (after dot-unstuffing, CRLFs included, terminator
///   excluded, as RFC 1870 §3 counts) are counted as they arrive; past
///   `maxMessageSize` the decoder stops keeping them (memory stays bounded) and
///   the message is rejected with `552 5.3.4`.
/// - Line length: a text line longer than `maxLineLength` octets including
///   CRLF (1000, RFC 5321 §4.5.3.1.6; a leading transparency dot is not
///   counted) rejects the message *at the end of DATA* with
///   `550 5.6.0 line too long (max 998 octets plus CRLF)`. Rejecting after the
///   terminator rather than mid-stream keeps the session in sync without
///   closing the connection.
/// - Loops: `maxReceivedHeaders` or more `Received:` fields in the header
///   section reject with `554 5.4.6 Too many hops` (RFC 5321 §6.3).
///
/// BDAT (RFC 3030): with `framing: .chunked` the decoder takes the chunk octets (the
/// session counts them), does no dot-unstuffing and no terminator search, and
/// `finishChunks()` ends the content after the `LAST` chunk. The same CRLF, size,
/// line-length and hop rules apply, so a message received by BDAT can later be sent
/// with DATA without creating a smuggling vector downstream; content that does not end
/// in CRLF gets one.
///
/// - Memory: `shed()` (the server's content memory is exhausted) drops what is kept
///   and keeps only counting; the message then gets `452 4.3.1` at its end (a
///   temporary refusal: the client retries later, RFC 5321 §4.2.5, RFC 3463).
///
/// 8-bit octets are accepted whatever `BODY=` said (liberal, like Postfix).
/// When several problems apply, the reply is chosen in this order: bare line
/// ending, size, line length, shed for memory, hop count.
public struct DataDecoder: Sendable {
    /// What became of the content once the terminator was seen.
    public enum Outcome: Sendable, Equatable {
        /// The dot-unstuffed content, CRLF line endings, without the final `.CRLF`.
        case accepted([UInt8])
        /// The message must not be stored; send this reply instead.
        case rejected(SMTPReply)
    }

    /// How the end of the content is found.
    public enum Framing: Sendable, Equatable {
        /// DATA: dot-stuffed lines ended by `CRLF . CRLF` (RFC 5321 §4.1.1.4).
        case dotTerminated
        /// BDAT: counted chunks, the last one marked `LAST` (RFC 3030 §2).
        case chunked
    }

    private enum Phase: Sendable {
        /// At the start of a line (after CRLF, or the first line).
        case lineStart
        /// A line began with `.`, which is not (yet) part of the content.
        case leadingDot
        /// A line began with `.CR`: LF next ends the content.
        case leadingDotCR
        /// Inside a line.
        case inLine
        /// A CR inside a line: LF next ends the line.
        case sawCR
    }

    /// Octets kept for at most this many (RFC 1870 SIZE limit).
    public let maxMessageSize: Int
    /// Longest text line in octets including CRLF (RFC 5321 §4.5.3.1.6).
    public let maxLineLength: Int
    /// `Received:` fields at which the message is a loop (0 or less: no limit).
    public let maxReceivedHeaders: Int
    /// DATA or BDAT framing.
    public let framing: Framing

    private var phase: Phase = .lineStart
    /// The content kept so far: full segments, then `body` (the one being filled).
    private var segments: [[UInt8]] = []
    private var body: [UInt8] = []
    /// Octets in `segments`.
    private var segmentedCount = 0
    /// Allocated capacity of `segments`.
    private var segmentedCapacity = 0
    /// Content is kept in segments of this many octets: growth never copies what was kept and
    /// wastes at most one segment's slack (a doubling array would hold up to twice the content
    /// and copy it on every growth).
    static let segmentSize = 1 << 20
    private var lineLength = 0
    /// Content octets seen so far (after unstuffing), kept or not.
    public private(set) var octetCount = 0
    /// Whether the end-of-data indicator has been consumed.
    public private(set) var isFinished = false
    private var bareLineEnding = false
    private var lineTooLong = false
    private var sizeExceeded = false
    private var shedForMemory = false

    private static let crlf: [UInt8] = [0x0D, 0x0A]
    private static let cr: [UInt8] = [0x0D]
    private static let lf: [UInt8] = [0x0A]

    /// Creates a decoder for one message.
    /// - Parameters:
    ///   - maxMessageSize: octets above which the message is rejected with 552 (RFC 1870).
    ///   - maxLineLength: longest line including CRLF (RFC 5321 §4.5.3.1.6: 1000).
    ///   - maxReceivedHeaders: hop limit for `Received:` fields (RFC 5321 §6.3).
    ///   - expectedSize: the client's `SIZE=` hint, used only to pre-size the buffer (capped at 1 MiB).
    ///   - framing: `.dotTerminated` for DATA (default), `.chunked` for BDAT.
    public init(maxMessageSize: Int, maxLineLength: Int = 1000, maxReceivedHeaders: Int = 100, expectedSize: Int? = nil,
                framing: Framing = .dotTerminated) {
        self.maxMessageSize = max(0, maxMessageSize)
        self.maxLineLength = maxLineLength
        self.maxReceivedHeaders = maxReceivedHeaders
        self.framing = framing
        if let expectedSize, expectedSize > 0 {
            body.reserveCapacity(min(expectedSize, self.maxMessageSize, Self.segmentSize))
        }
    }

    /// Octets of content currently held in memory (0 once the message is known to be refused).
    public var keptByteCount: Int { segmentedCount + body.count }

    /// Octets of memory allocated for the content kept (at least `keptByteCount`): what a
    /// memory budget must count.
    public var allocatedByteCount: Int { segmentedCapacity + body.capacity }

    /// Drops everything kept.
    private mutating func discardKept() {
        segments = []
        segmentedCount = 0
        segmentedCapacity = 0
        body = []
    }

    /// Appends to the content, starting a new segment when the current one is full.
    private mutating func append(_ bytes: ArraySlice<UInt8>) {
        var rest = bytes
        while !rest.isEmpty {
            if body.capacity - body.count == 0 {
                if body.count >= Self.segmentSize {
                    segmentedCount += body.count
                    segmentedCapacity += body.capacity
                    segments.append(body)
                    body = []
                    body.reserveCapacity(Self.segmentSize)
                } else {
                    // Below a segment: grow by doubling (from 4 KiB) up to one segment.
                    body.reserveCapacity(min(Self.segmentSize, max(4096, body.capacity * 2)))
                }
            }
            let n = min(rest.count, body.capacity - body.count)
            body.append(contentsOf: rest.prefix(n))
            rest = rest.dropFirst(n)
        }
    }

    /// The content as one array (the segments joined; allocated exactly).
    private mutating func takeKept() -> [UInt8] {
        if segments.isEmpty {
            defer { body = [] }
            return body
        }
        var out: [UInt8] = []
        out.reserveCapacity(keptByteCount)
        for segment in segments { out.append(contentsOf: segment) }
        out.append(contentsOf: body)
        discardKept()
        return out
    }

    /// Whether `shed()` was called.
    public var isShed: Bool { shedForMemory }

    private var keeping: Bool { !sizeExceeded && !bareLineEnding && !lineTooLong && !shedForMemory }

    /// Drops the content kept so far and keeps none of what follows (the octets are still
    /// consumed and counted): the server ran out of memory for content, so the message gets
    /// `452 4.3.1` at its end unless a permanent rejection applies.
    public mutating func shed() {
        shedForMemory = true
        discardKept()
    }

    private mutating func keep(_ bytes: ArraySlice<UInt8>) {
        octetCount += bytes.count
        if !sizeExceeded, octetCount > maxMessageSize {
            sizeExceeded = true
            discardKept()
        }
        if keeping { append(bytes) }
    }

    private mutating func flagBareLineEnding() {
        bareLineEnding = true
        discardKept()
    }

    private mutating func endLine() {
        if lineLength + 2 > maxLineLength, !lineTooLong {
            lineTooLong = true
            discardKept()
        }
        lineLength = 0
    }

    /// Consumes content bytes up to and including the end-of-data indicator.
    /// - Parameter bytes: the next input bytes.
    /// - Returns: how many bytes were consumed (all of them unless `finished`;
    ///   the rest belong to the next command) and whether the content is complete.
    public mutating func feed(_ bytes: ArraySlice<UInt8>) -> (consumed: Int, finished: Bool) {
        if isFinished { return (0, true) }
        var i = bytes.startIndex
        let end = bytes.endIndex
        while i < end {
            switch phase {
            case .lineStart:
                if bytes[i] == 0x2E && framing == .dotTerminated {
                    phase = .leadingDot
                    i += 1
                } else {
                    phase = .inLine
                }
            case .leadingDot:
                if bytes[i] == 0x0D {
                    phase = .leadingDotCR
                    i += 1
                } else {
                    phase = .inLine  // transparency dot dropped; reprocess this byte
                }
            case .leadingDotCR:
                if bytes[i] == 0x0A {
                    i += 1
                    isFinished = true
                    return (i - bytes.startIndex, true)
                }
                // ".<CR>" not followed by LF: the dot was stuffing, the CR is bare.
                flagBareLineEnding()
                keep(Self.cr[...])
                lineLength += 1
                phase = .inLine  // reprocess this byte
            case .inLine:
                // Whole ordinary lines in one run (issue 19: one `keep` per line and a
                // per-byte closure scan were a quarter of a 100 KiB session's CPU).
                let run = Self.ordinaryRun(bytes, from: i, lineLength: lineLength, maxLineLength: maxLineLength,
                                           dotTerminated: framing == .dotTerminated)
                if run.end > i {
                    keep(bytes[i..<run.end])
                    lineLength = run.lineLength
                    i = run.end
                    if run.atLineStart { phase = .lineStart; continue }
                }
                let stop = bytes[i...].firstIndex { $0 == 0x0D || $0 == 0x0A } ?? end
                if stop > i {
                    keep(bytes[i..<stop])
                    lineLength += stop - i
                    i = stop
                }
                if i < end {
                    if bytes[i] == 0x0D {
                        phase = .sawCR
                    } else {
                        flagBareLineEnding()
                        keep(Self.lf[...])
                        lineLength = 0
                    }
                    i += 1
                }
            case .sawCR:
                if bytes[i] == 0x0A {
                    keep(Self.crlf[...])
                    endLine()
                    phase = .lineStart
                    i += 1
                } else {
                    flagBareLineEnding()
                    keep(Self.cr[...])
                    lineLength += 1
                    phase = .inLine  // reprocess this byte (a second CR goes back to .sawCR)
                }
            }
        }
        return (i - bytes.startIndex, false)
    }

    /// The longest run from `start` (inside a line) that the state machine would keep octet
    /// for octet with nothing else to do: the rest of the current line and whole lines after
    /// it, each ended by CRLF within `maxLineLength`, none of them starting with `.` (with DATA
    /// framing). It stops before a bare CR or LF, a CR at the end of the input, a CRLF that
    /// ends an over-long line, or a line starting with `.`; also at the end of the input.
    /// - Returns: where the run ends, the length of the line then in progress (0 at a line
    ///   start) and whether the run ends at the start of a line.
    static func ordinaryRun(_ bytes: ArraySlice<UInt8>, from start: Int, lineLength: Int, maxLineLength: Int,
                            dotTerminated: Bool) -> (end: Int, lineLength: Int, atLineStart: Bool) {
        bytes.withUnsafeBufferPointer { p -> (Int, Int, Bool) in
            let base = bytes.startIndex
            let n = p.count
            var k = start - base
            var length = lineLength
            while k < n {
                let j = firstLineBreak(p, from: k)
                length += j - k
                // The line goes on past the input, or ends in something the machine decides.
                guard j + 1 < n, p[j] == 0x0D, p[j + 1] == 0x0A, length + 2 <= maxLineLength else {
                    return (base + j, length, false)
                }
                k = j + 2
                length = 0
                if k == n || (dotTerminated && p[k] == 0x2E) { return (base + k, 0, true) }
            }
            return (base + k, length, false)
        }
    }

    /// The index of the first CR or LF in `p` at or after `start`, or `p.count`. Compares 32
    /// octets at a time (vector instructions; issue 19: the octet-by-octet scan was most of the
    /// DATA reader's time at 100 KiB), then octet by octet within the 32 that hold one.
    @inline(__always)
    static func firstLineBreak(_ p: UnsafeBufferPointer<UInt8>, from start: Int) -> Int {
        let n = p.count
        var j = start
        if let base = p.baseAddress, n - j >= 32 {
            let raw = UnsafeRawPointer(base)
            let cr = SIMD32<UInt8>(repeating: 0x0D), lf = SIMD32<UInt8>(repeating: 0x0A)
            while n - j >= 32 {
                let v = raw.loadUnaligned(fromByteOffset: j, as: SIMD32<UInt8>.self)
                if any((v .== cr) .| (v .== lf)) { break }
                j += 32
            }
        }
        while j < n {
            let b = p[j]
            if b == 0x0D || b == 0x0A { return j }
            j += 1
        }
        return n
    }

    /// BDAT: ends the content after the `LAST` chunk (RFC 3030 §2). A trailing bare CR
    /// rejects the message; a last line without CRLF gets one. No effect with DATA framing
    /// or when already finished.
    public mutating func finishChunks() {
        guard framing == .chunked, !isFinished else { return }
        switch phase {
        case .sawCR:
            flagBareLineEnding()
        case .inLine where !bareLineEnding:
            keep(Self.crlf[...])
            endLine()
        default:
            break
        }
        phase = .lineStart
        isFinished = true
    }

    /// The rejection already certain before the end of the content (bare line ending,
    /// size, line length; in that order), or nil. BDAT answers it on the chunk where it
    /// became known.
    public var rejection: SMTPReply? {
        if bareLineEnding { return SMTPReply(550, "5.6.0", "bare LF/CR not allowed") }
        if sizeExceeded { return SMTPReply(552, "5.3.4", "Message size exceeds fixed maximum message size") }
        if lineTooLong { return SMTPReply(550, "5.6.0", "line too long (max \(max(0, maxLineLength - 2)) octets plus CRLF)") }
        if shedForMemory { return SMTPServerSession.insufficientStorage }
        return nil
    }

    /// The verdict once `isFinished`; hands over the body (call once).
    /// - Returns: `.accepted(body)` or `.rejected(reply)`; before the terminator,
    ///   a `451 4.3.0` rejection (a driver bug, never expected).
    public mutating func outcome() -> Outcome {
        guard isFinished else { return .rejected(SMTPReply(451, "4.3.0", "Error: message not complete")) }
        if let rejection { return .rejected(rejection) }
        let out = takeKept()
        if maxReceivedHeaders > 0, Self.receivedCount(out, limit: maxReceivedHeaders) >= maxReceivedHeaders {
            return .rejected(SMTPReply(554, "5.4.6", "Too many hops"))
        }
        return .accepted(out)
    }

    /// Counts `Received:` fields (name, optional WSP, colon; RFC 5322 §3.6.7, §4.5.3)
    /// in the header section (up to the first empty line), stopping at `limit`.
    static func receivedCount(_ message: [UInt8], limit: Int) -> Int {
        let name = Array("received".utf8)
        var count = 0
        var start = message.startIndex
        while start < message.endIndex, count < limit {
            let lineEnd = message[start...].firstIndex(of: 0x0A) ?? message.endIndex
            var line = message[start..<lineEnd]
            if line.last == 0x0D { line = line.dropLast() }
            if line.isEmpty { break }  // end of the header section
            if line.count > name.count,
               zip(line.prefix(name.count), name).allSatisfy({ SMTPAddressSyntax.lower($0) == $1 }) {
                var rest = line.dropFirst(name.count)
                while let b = rest.first, b == 0x20 || b == 0x09 { rest = rest.dropFirst() }
                if rest.first == 0x3A { count += 1 }
            }
            start = lineEnd + 1
        }
        return count
    }
}
