import Foundation

/// The cluster protocol's frame layer (see docs/protocol.md).
///
/// A frame on the wire:
/// ```
/// u32  length   big-endian, octets after this field (type + header length + header + payload)
/// u8   type     a `FrameType`
/// u32  hlen     big-endian, octets of the JSON header
/// hlen header   UTF-8 JSON object
/// ...  payload  raw octets (message bodies), never re-encoded
/// ```
public struct Frame: Sendable, Equatable {
    /// The message type.
    public var type: FrameType
    /// The JSON header (UTF-8).
    public var header: [UInt8]
    /// Raw payload octets.
    public var payload: [UInt8]

    public init(type: FrameType, header: [UInt8], payload: [UInt8] = []) {
        self.type = type; self.header = header; self.payload = payload
    }

    /// Octets of fixed framing around header and payload.
    public static let overhead = 9

    /// Octets of the frame on the wire.
    public var encodedCount: Int { Frame.overhead + header.count + payload.count }

    /// Serialises the frame.
    public func encoded() -> [UInt8] {
        var out = [UInt8](); out.reserveCapacity(encodedCount)
        encode(into: &out)
        return out
    }

    /// Appends the serialised frame to `out` (several frames in one buffer with one copy of
    /// each payload).
    public func encode(into out: inout [UInt8]) {
        encodePrefix(into: &out)
        out.append(contentsOf: payload)
    }

    /// Appends what precedes the payload on the wire: the length prefix, the type, the header
    /// length and the header (a gathered write sends the payload from where it is).
    public func encodePrefix(into out: inout [UInt8]) {
        out.appendUInt32(UInt32(1 + 4 + header.count + payload.count))
        out.append(type.rawValue)
        out.appendUInt32(UInt32(header.count))
        out.append(contentsOf: header)
    }
}

/// Frame types of cluster protocol version 1.
public enum FrameType: UInt8, Sendable, CaseIterable {
    case challenge = 1, hello = 2, welcome = 3, reject = 4, heartbeat = 5
    case leaseRequest = 6, leaseGrant = 7, result = 8, resultAck = 9
    case ipAssign = 10, ipRevoke = 11, ipReleased = 12
    case announce = 13, backoff = 14
    /// Sent only to nodes whose `hello.features` name `config_changed` (see `ClusterFeature`).
    case configChanged = 15, configApplied = 16
    /// A standby coordinator names the leader (feature `terms`).
    case redirect = 17
    /// The tenants' sealed DKIM keys (feature `signing_keys`).
    case signingKeys = 18
}

/// Why a byte stream is not a valid frame sequence. Any of these closes that connection only.
public enum FrameError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The length prefix exceeds the negotiated maximum (octets).
    case oversized(length: Int, maximum: Int)
    /// The length prefix is smaller than the fixed framing.
    case undersized(length: Int)
    /// The header length does not fit inside the frame.
    case badHeaderLength(Int)
    /// An unknown frame type byte.
    case unknownType(UInt8)
    /// The stream ended in the middle of a frame.
    case truncated(have: Int)

    public var description: String {
        switch self {
        case .oversized(let l, let m): return "frame of \(l) octets exceeds maximum \(m)"
        case .undersized(let l): return "frame length \(l) too small"
        case .badHeaderLength(let h): return "header length \(h) exceeds frame"
        case .unknownType(let t): return "unknown frame type \(t)"
        case .truncated(let n): return "stream ended inside a frame (\(n) octets buffered)"
        }
    }
}

/// An incremental frame decoder: feed bytes as they arrive, take whole frames out.
///
/// Memory is bounded by `maximumFrameSize` plus one read: an oversized length
/// prefix is rejected before its body is buffered.
public struct FrameDecoder: Sendable {
    /// The largest acceptable value of the length prefix, in octets.
    public let maximumFrameSize: Int
    private var buffer: [UInt8] = []
    private var start = 0

    public init(maximumFrameSize: Int) { self.maximumFrameSize = maximumFrameSize }

    /// A decoder with a new maximum that keeps the bytes `other` has buffered.
    public init(maximumFrameSize: Int, continuing other: FrameDecoder) {
        self.maximumFrameSize = maximumFrameSize
        buffer = Array(other.buffer[other.start...])
    }

    /// Octets buffered but not yet returned as frames.
    public var bufferedCount: Int { buffer.count - start }

    /// Appends received bytes.
    public mutating func feed<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        if start > 0 && start >= buffer.count / 2 { buffer.removeSubrange(0..<start); start = 0 }
        buffer.append(contentsOf: bytes)
    }

    /// The next complete frame, or nil if more bytes are needed.
    /// - Throws: `FrameError` for an invalid length, header length or type.
    public mutating func next() throws -> Frame? {
        let avail = buffer.count - start
        guard avail >= 4 else { return nil }
        let length = Int(buffer.readUInt32(at: start))
        guard length <= maximumFrameSize else { throw FrameError.oversized(length: length, maximum: maximumFrameSize) }
        guard length >= 5 else { throw FrameError.undersized(length: length) }
        guard avail >= 4 + length else { return nil }
        let typeByte = buffer[start + 4]
        guard let type = FrameType(rawValue: typeByte) else { throw FrameError.unknownType(typeByte) }
        let hlen = Int(buffer.readUInt32(at: start + 5))
        guard hlen <= length - 5 else { throw FrameError.badHeaderLength(hlen) }
        let hStart = start + 9
        let header = Array(buffer[hStart..<(hStart + hlen)])
        let payload = Array(buffer[(hStart + hlen)..<(start + 4 + length)])
        start += 4 + length
        if start == buffer.count { buffer.removeAll(keepingCapacity: true); start = 0 }
        return Frame(type: type, header: header, payload: payload)
    }

    /// Call at end of stream.
    /// - Throws: `FrameError.truncated` if a partial frame is buffered.
    public func finish() throws {
        if bufferedCount > 0 { throw FrameError.truncated(have: bufferedCount) }
    }
}

extension Array where Element == UInt8 {
    mutating func appendUInt32(_ v: UInt32) {
        append(UInt8(v >> 24)); append(UInt8((v >> 16) & 0xFF)); append(UInt8((v >> 8) & 0xFF)); append(UInt8(v & 0xFF))
    }
    func readUInt32(at i: Int) -> UInt32 {
        UInt32(self[i]) << 24 | UInt32(self[i + 1]) << 16 | UInt32(self[i + 2]) << 8 | UInt32(self[i + 3])
    }
}
