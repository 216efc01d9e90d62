import Foundation
import HatoTestKit
import Testing
@testable import HatoIO
@testable import HatoSupport

/// The close rule under fire: many connections read, written, shut down and closed from
/// several threads at once. A use after close would trap (EBADF is a programming error in
/// `SystemCall`); a descriptor number reused by another connection would show as a reader
/// receiving another connection's words.
@Suite("Socket close rule under concurrency", .serialized)
struct SocketRaceTests {
    /// What one thread reports about its side of one connection.
    struct Outcome: Sendable {
        var bytes = 0
        var foreignWords = 0
        var outOfOrder = 0
        var timeouts = 0
        var otherErrors: [String] = []
    }

    /// One connection's two owners and what they saw.
    final class Pair: Sendable {
        let done = LockedCondition<(reader: Outcome?, writer: Outcome?)>((nil, nil))
    }

    static let slots = 64
    static let iterationsPerSlot = 50
    /// Both ends on an address of their own: the thousands of ports this test takes (and leaves
    /// in TIME_WAIT) never collide with another test's `bind` on 127.0.0.1.
    static let host = "127.0.0.99"

    @Test("64 connection pairs × 50 rounds: readers, writers, shutdown and close from other threads; no trap, no foreign bytes, no hang")
    func closeRule() throws {
        let seed = ProcessInfo.processInfo.environment["HATO_TEST_SEED"].flatMap(UInt64.init) ?? UInt64.random(in: 1...UInt64.max)
        let started = ContinuousClock.now
        let listeners = try (0..<Self.slots).map { _ in try Socket.listen(on: SocketAddress(host: Self.host, port: 0), backlog: 8) }
        defer { listeners.forEach { $0.close() } }
        let totals = Locked((rounds: 0, bytes: 0, foreign: 0, disorder: 0, timeouts: 0, hung: 0, errors: [String]()))
        let finished = LockedCondition(0)
        for slot in 0..<Self.slots {
            let listener = listeners[slot]
            let thread = Thread {
                var rng = SplitMix64(seed: seed ^ UInt64(slot + 1) &* 0x9E37_79B9)
                for round in 0..<Self.iterationsPerSlot {
                    let result = Self.runRound(slot: slot, round: round, listener: listener, rng: &rng)
                    totals.withLock { t in
                        t.rounds += 1
                        t.bytes += result.bytes
                        t.foreign += result.foreign
                        t.disorder += result.disorder
                        t.timeouts += result.timeouts
                        t.hung += result.hung ? 1 : 0
                        if t.errors.count < 10 { t.errors += result.errors }
                    }
                }
                finished.withLockAndBroadcast { $0 += 1 }
            }
            thread.stackSize = 256 * 1024
            thread.start()
        }
        let allDone = finished.wait(until: .now + .seconds(150), for: { $0 == Self.slots }) { _, ok in ok }
        let t = totals.snapshot
        let elapsed = ContinuousClock.now - started
        let context = Comment(rawValue: "seed \(seed) (rerun with HATO_TEST_SEED=\(seed)); \(t.rounds) rounds in \(elapsed)")
        #expect(allDone, context)
        #expect(t.rounds == Self.slots * Self.iterationsPerSlot, context)
        #expect(t.foreign == 0, "words from another connection: \(t.foreign); \(context)")
        #expect(t.disorder == 0, "words out of order: \(t.disorder); \(context)")
        #expect(t.hung == 0, "rounds whose threads did not finish: \(t.hung); \(context)")
        #expect(t.timeouts == 0, "socket timeouts: \(t.timeouts); \(context)")
        #expect(t.errors.isEmpty, "\(t.errors); \(context)")
        print("close-rule race: \(t.rounds) rounds, \(t.bytes / 1024) KiB verified in \(elapsed) (seed \(seed))")
    }

    struct RoundResult {
        var bytes = 0, foreign = 0, disorder = 0, timeouts = 0
        var hung = false
        var errors: [String] = []
    }

    /// One connection: a reader thread owns the server side, a writer thread owns the client
    /// side, and this (slot) thread interferes from outside as `rng` decides.
    static func runRound(slot: Int, round: Int, listener: Socket, rng: inout SplitMix64) -> RoundResult {
        var result = RoundResult()
        let client: Socket, server: Socket
        do {
            client = try Socket.connect(to: listener.localAddress!, from: Self.host, timeout: 5)
            (server, _) = try listener.accept()
        } catch {
            result.errors.append("slot \(slot) round \(round): connect/accept: \(error)")
            return result
        }
        client.setTimeouts(read: .seconds(5), write: .seconds(5))
        server.setTimeouts(read: .seconds(5), write: .seconds(5))
        let budget = Int.random(in: 0...(96 * 1024), using: &rng) / 8 * 8
        let chaos = Int.random(in: 0..<5, using: &rng)
        let delayMicroseconds = UInt32.random(in: 0...1500, using: &rng)
        let pair = Pair()

        let reader = Thread {
            var outcome = Outcome()
            var buffer = [UInt8](repeating: 0, count: 4096)
            var carry: [UInt8] = []
            var expected: UInt32 = 0
            loop: while true {
                do {
                    let n = try buffer.withUnsafeMutableBytes { try server.read(into: $0) }
                    if n == 0 { break loop }
                    outcome.bytes += n
                    carry += buffer[0..<n]
                    let whole = carry.count / 8 * 8
                    var i = 0
                    while i < whole {
                        let s = UInt16(carry[i]) | UInt16(carry[i + 1]) << 8
                        let r = UInt16(carry[i + 2]) | UInt16(carry[i + 3]) << 8
                        let q = UInt32(carry[i + 4]) | UInt32(carry[i + 5]) << 8 | UInt32(carry[i + 6]) << 16 | UInt32(carry[i + 7]) << 24
                        if s != UInt16(slot) || r != UInt16(round) { outcome.foreignWords += 1 } else if q != expected { outcome.outOfOrder += 1 }
                        expected = q &+ 1
                        i += 8
                    }
                    carry.removeFirst(whole)
                } catch let e as SocketError {
                    if e.kind == .timeout { outcome.timeouts += 1 } else if e.kind != .closed { outcome.otherErrors.append("read: \(e)") }
                    break loop
                } catch {
                    outcome.otherErrors.append("read: \(error)")
                    break loop
                }
            }
            server.close()  // the owner closes
            pair.done.withLockAndBroadcast { $0.reader = outcome }
        }
        let writer = Thread {
            var outcome = Outcome()
            var seq: UInt32 = 0
            var sent = 0
            while sent < budget {
                let words = min(512, (budget - sent) / 8)
                var chunk = [UInt8]()
                chunk.reserveCapacity(words * 8)
                for _ in 0..<words {
                    chunk += [UInt8(slot & 0xFF), UInt8(slot >> 8), UInt8(round & 0xFF), UInt8(round >> 8),
                              UInt8(seq & 0xFF), UInt8(seq >> 8 & 0xFF), UInt8(seq >> 16 & 0xFF), UInt8(seq >> 24)]
                    seq &+= 1
                }
                do {
                    try client.write(chunk)
                    sent += chunk.count
                } catch let e as SocketError {
                    if e.kind == .timeout { outcome.timeouts += 1 } else if e.kind != .closed { outcome.otherErrors.append("write: \(e)") }
                    break
                } catch {
                    outcome.otherErrors.append("write: \(error)")
                    break
                }
            }
            outcome.bytes = sent
            client.close()  // the owner closes: the reader sees end of stream
            pair.done.withLockAndBroadcast { $0.writer = outcome }
        }
        reader.stackSize = 256 * 1024
        writer.stackSize = 256 * 1024
        reader.start()
        writer.start()

        // Interference from a thread that owns neither side.
        usleep(delayMicroseconds)
        switch chaos {
        case 0: server.shutdown()
        case 1: client.shutdown()
        case 2: server.close()  // breaks the rule on purpose: must still be safe
        case 3: client.close()  // likewise, while the writer may be inside send
        default: break  // a clean end: the writer finishes and closes
        }

        let finished = pair.done.wait(until: .now + .seconds(20), for: { $0.reader != nil && $0.writer != nil }) { v, ok in ok ? v : nil }
        guard let (readSide, writeSide) = finished, let readSide, let writeSide else {
            result.hung = true
            server.shutdown()
            client.shutdown()
            return result
        }
        result.bytes = readSide.bytes
        result.foreign = readSide.foreignWords
        result.disorder = readSide.outOfOrder
        result.timeouts = readSide.timeouts + writeSide.timeouts
        result.errors = (readSide.otherErrors + writeSide.otherErrors).map { "slot \(slot) round \(round) chaos \(chaos): \($0)" }
        if chaos == 4 && readSide.bytes != budget {
            result.errors.append("slot \(slot) round \(round): clean end delivered \(readSide.bytes) of \(budget) bytes")
        }
        if !server.isClosed || !client.isClosed { result.errors.append("slot \(slot) round \(round): a side was left open") }
        return result
    }
}
