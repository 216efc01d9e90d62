import Foundation
import HatoCrypto
import HatoIO
import HatoSupport
import SMTPCore

/// Maximum cluster frame size for a configuration (bytes): two maximum messages plus 1 MiB of
/// headers — the limit of the coordinator, of its nodes and of hato-simnode alike.
public func clusterMaximumFrameSize(maxMessageSize: Int) -> Int { maxMessageSize * 2 + 1 << 20 }

/// One cluster protocol connection: a byte stream (a plain `Socket`, or a duplex `TLSStream`
/// over one), a frame decoder and a write lock.
///
/// One thread reads (`receive`) and owns the connection: it alone calls `close()`. Any thread
/// may `send` (writes are serialised), and any thread that wants the connection to end calls
/// `shutdown()`: the reader's `receive` then throws `SocketError(.closed)` and the reader
/// closes (see `Socket`'s close rule).
///
/// Over TLS the stream must be a duplex one (`TLSStream.accept/connect(…, duplex: true)`): the
/// reader waits for frames while the writer sends, and OpenSSL's one-thread-per-`SSL*` rule is
/// kept by the stream's own lock around each non-blocking call. The plaintext path reads and
/// writes the socket directly, as before.
///
/// Checked `Sendable`: the decoder and read buffer live in a `Locked` that only the reading
/// thread takes (held across its blocking read: a second reader would wait, not interleave);
/// writes hold `writer` across the stream write so frames never interleave.
public final class ClusterConnection: Sendable {
    /// The TCP socket (for both kinds of connection).
    public let socket: Socket
    /// The TLS stream over `socket`, nil for a plaintext connection.
    public let tls: TLSStream?
    private struct ReadState: Sendable {
        var decoder: FrameDecoder
        var buffer: [UInt8]
    }
    private let reader: Locked<ReadState>
    private let writer = Locked(())

    /// A plaintext connection.
    /// - Parameters:
    ///   - socket: a connected socket.
    ///   - maximumFrameSize: the largest frame accepted, octets.
    public init(socket: Socket, maximumFrameSize: Int) {
        self.socket = socket
        self.tls = nil
        self.reader = Locked(ReadState(decoder: FrameDecoder(maximumFrameSize: maximumFrameSize),
                                       buffer: [UInt8](repeating: 0, count: ClusterConnection.readSize(maximumFrameSize))))
    }

    /// A connection over TLS (RFC 8446 / RFC 5246).
    /// - Parameters:
    ///   - tls: a duplex TLS stream (`isDuplex`), its handshake done.
    ///   - maximumFrameSize: the largest frame accepted, octets.
    public init(tls: TLSStream, maximumFrameSize: Int) {
        precondition(tls.isDuplex, "a cluster connection's TLS stream must be duplex: a reader and a writer share it")
        self.socket = tls.socket
        self.tls = tls
        self.reader = Locked(ReadState(decoder: FrameDecoder(maximumFrameSize: maximumFrameSize),
                                       buffer: [UInt8](repeating: 0, count: ClusterConnection.readSize(maximumFrameSize))))
    }

    /// Opens the connection of a node (or a simulated one) to a coordinator over a connected
    /// socket: TLS first when `tls` is given (the certificate must name `serverName`; duplex, so
    /// the reader and the writer work at once), closing the socket if the handshake fails.
    /// Timeouts: 10 s per read, 30 s per write, until the caller sets others.
    /// - Throws: what `TLSStream.connect` throws.
    public static func open(over socket: Socket, tls: TLSContext?, serverName: String, maximumFrameSize: Int) throws -> ClusterConnection {
        let conn: ClusterConnection
        if let tls {
            do {
                conn = ClusterConnection(tls: try TLSStream.connect(over: socket, context: tls, serverName: serverName, duplex: true),
                                         maximumFrameSize: maximumFrameSize)
            } catch {
                socket.close()
                throw error
            }
        } else {
            conn = ClusterConnection(socket: socket, maximumFrameSize: maximumFrameSize)
        }
        conn.setTimeouts(read: .seconds(10), write: .seconds(30))
        return conn
    }

    /// Whether the connection is encrypted.
    public var isEncrypted: Bool { tls != nil }

    /// Octets per read: 256 KiB, or less for a connection whose frames are small (before authentication).
    private static func readSize(_ maximumFrameSize: Int) -> Int { min(256 * 1024, max(4096, maximumFrameSize + 4)) }

    /// Sets how long one `receive` waits for bytes and one `send` for room (`.zero`: forever).
    public func setTimeouts(read: Duration, write: Duration) {
        if let tls { tls.setTimeouts(read: read, write: write) } else { socket.setTimeouts(read: read, write: write) }
    }

    /// Sends one message.
    /// - Throws: `SocketError` when the write fails.
    public func send(_ message: ClusterMessage) throws { try send([message]) }

    /// Sends several messages, in order, with one write (one system call, one TLS record
    /// where they fit) when they come to at most `joinedWriteLimit` octets: e.g. a result and
    /// the credit its lease frees, which the peer then reads together. More go frame by frame
    /// (no second copy of a large grant in one buffer).
    /// - Throws: `SocketError` or a TLS error; the connection should then be closed.
    public func send(_ messages: [ClusterMessage]) throws {
        let frames = messages.map { $0.frame() }
        // Plaintext with a large payload: one gathered write (`sendmsg`) of each frame's prefix
        // and its payload where it lies, no copy of the payload into a frame buffer (issue 19:
        // a 100 KiB grant was copied once more only to be written).
        if tls == nil, frames.contains(where: { $0.payload.count >= ClusterConnection.gatheredPayloadMinimum }) {
            var parts: [[UInt8]] = []
            var prefix: [UInt8] = []
            for f in frames {
                f.encodePrefix(into: &prefix)
                if f.payload.count >= ClusterConnection.gatheredPayloadMinimum {
                    parts.append(prefix)
                    parts.append(f.payload)
                    prefix = []
                } else {
                    prefix.append(contentsOf: f.payload)
                }
            }
            if !prefix.isEmpty { parts.append(prefix) }
            try writer.withLock { _ in try socket.write(parts: parts) }
            return
        }
        let joined = frames.reduce(0) { $0 + $1.encodedCount } <= ClusterConnection.joinedWriteLimit
        try writer.withLock { _ in
            if joined {
                try writeHoldingLock(ClusterConnection.encoded(frames))
            } else {
                for f in frames { try writeHoldingLock(f.encoded()) }
            }
        }
    }

    /// Writes `bytes` whole (TLS or plain); the caller holds `writer`.
    private func writeHoldingLock(_ bytes: [UInt8]) throws {
        guard !bytes.isEmpty else { return }
        if let tls { try tls.write(bytes) } else { try socket.write(bytes) }
    }

    /// Sends what of `messages` fits in the socket's send buffer now, without waiting
    /// (`MSG_DONTWAIT`), on a plaintext connection; a TLS connection writes nothing.
    /// - Returns: the encoded octets not written (empty when every frame went; the caller must
    ///   send them, with `send(encoded:)`, before anything else), or nil for a TLS connection.
    /// - Throws: `SocketError` when the write fails; the connection should then be closed.
    public func sendIfReady(_ messages: [ClusterMessage]) throws -> [UInt8]? {
        guard tls == nil else { return nil }
        let bytes = ClusterConnection.encoded(messages)
        guard !bytes.isEmpty else { return [] }
        let written = try writer.withLock { _ in try socket.writeIfReady(bytes) }
        return written == bytes.count ? [] : Array(bytes[written...])
    }

    /// The most octets `send(_ messages:)` joins into one write (1 MiB).
    static let joinedWriteLimit = 1 << 20

    /// Payloads of at least this many octets are written from where they are, with the frame's
    /// prefix, in one gathered write on a plaintext connection (16 KiB: below it one copy costs
    /// less than the extra iovec).
    static let gatheredPayloadMinimum = 16 << 10

    /// The frames of `messages`, in order, in one buffer (each payload copied once).
    static func encoded(_ messages: [ClusterMessage]) -> [UInt8] { encoded(messages.map { $0.frame() }) }

    /// `frames` serialised in order into one buffer.
    static func encoded(_ frames: [Frame]) -> [UInt8] {
        if frames.count == 1 { return frames[0].encoded() }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(frames.reduce(0) { $0 + $1.encodedCount })
        for f in frames { f.encode(into: &bytes) }
        return bytes
    }

    /// Sends octets already framed (what `sendIfReady` left), waiting as `send` does.
    /// - Throws: `SocketError` or a TLS error; the connection should then be closed.
    public func send(encoded bytes: [UInt8]) throws {
        try writer.withLock { _ in try writeHoldingLock(bytes) }
    }

    /// Changes the largest frame accepted from now on (e.g. a small bound until the peer has
    /// authenticated, the full one after). Call from the reading thread only.
    public func setMaximumFrameSize(_ octets: Int) {
        reader.withLock { state in
            state.decoder = FrameDecoder(maximumFrameSize: octets, continuing: state.decoder)
            let size = ClusterConnection.readSize(octets)
            if size != state.buffer.count { state.buffer = [UInt8](repeating: 0, count: size) }
        }
    }

    /// Octets received but not yet returned as frames.
    public var bufferedCount: Int { reader.withLock { $0.decoder.bufferedCount } }

    /// Receives the next message, blocking up to the read timeout, or until `deadline` on the
    /// monotonic clock (a peer that trickles bytes cannot hold the read past it: each read
    /// waits at most the time left).
    /// - Throws: `SocketError` (timeout, closed — also after `shutdown()`), `FrameError` or
    ///   `ClusterProtocolError.malformed`.
    public func receive(deadline: ContinuousClock.Instant? = nil) throws -> ClusterMessage {
        try reader.withLock { state in
            while true {
                if let frame = try state.decoder.next() { return try ClusterMessage.decode(frame) }
                if let deadline {
                    let left = ContinuousClock.now.duration(to: deadline)
                    guard left > .zero else { throw SocketError(.timeout, "cluster read") }
                    let read = max(left, .milliseconds(1))
                    if let tls { tls.setTimeouts(readAtMost: read, write: .seconds(30)) } else { socket.setTimeouts(readAtMost: read, write: .seconds(30)) }
                }
                let n: Int
                do {
                    n = try state.buffer.withUnsafeMutableBytes { buffer in
                        if let tls { return try tls.read(into: buffer) }
                        return try socket.read(into: buffer)
                    }
                } catch let e as SocketError where e.kind == .timeout && deadline != nil {
                    // The read timeout is only bounded by the time left (`readAtMost`): one that
                    // passes before the deadline just means read again; the check above throws
                    // once the deadline itself has passed.
                    continue
                }
                if n == 0 {
                    try state.decoder.finish()
                    throw SocketError(.closed, "cluster read")
                }
                state.decoder.feed(state.buffer[0..<n])
            }
        }
    }

    /// Ends the connection from any thread: wakes the reader, whose `receive` throws; the
    /// reader then calls `close()`.
    public func shutdown() { socket.shutdown() }

    /// Closes the connection (over TLS: `close_notify` first). **Owner only** (the thread that
    /// calls `receive`); other threads call `shutdown()`. (A call from another thread is still
    /// safe: the descriptor is released only after the reader's call returns.)
    public func close() {
        if let tls { tls.close() } else { socket.close() }
    }
}
