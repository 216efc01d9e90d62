import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Log severity.
public enum LogLevel: Int, Sendable, Comparable, CustomStringConvertible {
    case debug = 0, info, warning, error
    public static func < (a: LogLevel, b: LogLevel) -> Bool { a.rawValue < b.rawValue }
    public var description: String { ["debug", "info", "warning", "error"][rawValue] }
}

/// A structured logger that writes one JSON object per line to standard error.
///
/// Never pass message bodies, passwords or secrets as fields: log the message id instead.
public struct Logger: Sendable {
    /// The component name, e.g. `coordinator.smtp`.
    public let label: String
    /// The least severe level written.
    public let minimum: LogLevel
    private static let lock = NSLock()

    /// Whether every logger of the process is silent (`silenceProcess()`).
    private static let silenced = Atomic<Bool>(false)

    /// Silences every logger of the process, created before or after: one-shot commands (the
    /// CLI's `status`, `queue`, `check`, …) print their own output and human-readable errors,
    /// never JSON log lines on standard error.
    public static func silenceProcess() { silenced.store(true, ordering: .relaxed) }

    public init(label: String, minimum: LogLevel = Logger.defaultLevel) {
        self.label = label; self.minimum = minimum
    }

    /// The level from `HATO_LOG_LEVEL` (debug, info, warning, error), default `info`.
    public static var defaultLevel: LogLevel {
        switch ProcessInfo.processInfo.environment["HATO_LOG_LEVEL"]?.lowercased() {
        case "debug": return .debug
        case "warning": return .warning
        case "error": return .error
        default: return .info
        }
    }

    /// Writes one event.
    /// - Parameters:
    ///   - level: severity.
    ///   - message: a short constant text; put values in `fields`.
    ///   - fields: key/value pairs (strings).
    public func log(_ level: LogLevel, _ message: String, _ fields: [String: String] = [:]) {
        guard level >= minimum, !Logger.silenced.load(ordering: .relaxed) else { return }
        let out = Logger.line(level: level, label: label, message: message, fields: fields, at: Date())
        Logger.lock.withLock {
            out.withUnsafeBytes { raw in
                var done = 0
                while done < raw.count {
                    let n = Glibc.write(2, raw.baseAddress! + done, raw.count - done)
                    if n > 0 { done += n } else if n < 0 && errno == EINTR { continue } else { break }
                }
            }
        }
    }

    /// One log line: a JSON object with sorted keys (`component`, `level`, `msg`, `ts` and the
    /// fields; a field of one of those four names is dropped), RFC 8259 escaping, then LF.
    ///
    /// Hand-built in one byte buffer (and written with one write(2)): this runs on every
    /// accepted message and every delivery (issue 19: a node's delivery line through `String`,
    /// `Data` and `FileHandle` was 6 % of its CPU).
    static func line(level: LogLevel, label: String, message: String, fields: [String: String], at date: Date) -> [UInt8] {
        var pairs: [(String, String)] = [("component", label), ("level", level.description), ("msg", message), ("ts", Logger.timestamp(date))]
        pairs.reserveCapacity(fields.count + 4)
        for (k, v) in fields where k != "component" && k != "level" && k != "msg" && k != "ts" { pairs.append((k, v)) }
        pairs.sort { $0.0 < $1.0 }
        var out: [UInt8] = []
        out.reserveCapacity(256)
        out.append(0x7B)
        for (i, (key, value)) in pairs.enumerated() {
            if i > 0 { out.append(0x2C) }
            Logger.appendJSONString(key, to: &out)
            out.append(0x3A)
            Logger.appendJSONString(value, to: &out)
        }
        out.append(0x7D)
        out.append(0x0A)
        return out
    }

    /// `2026-11-29T13:28:12.825Z` (RFC 3339, UTC, milliseconds).
    public static func timestamp(_ date: Date) -> String {
        let t = date.timeIntervalSince1970
        var secs = time_t(floor(t))
        let ms = Int((t - floor(t)) * 1000)
        var tmv = tm()
        gmtime_r(&secs, &tmv)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        let msText = ms < 10 ? "00\(ms)" : (ms < 100 ? "0\(ms)" : "\(ms)")
        return "\(tmv.tm_year + 1900)-\(two(tmv.tm_mon + 1))-\(two(tmv.tm_mday))T\(two(tmv.tm_hour)):\(two(tmv.tm_min)):\(two(tmv.tm_sec)).\(msText)Z"
    }

    /// Appends `s` as a JSON string literal (quotes, backslash and control characters escaped;
    /// everything else, UTF-8 included, as it is).
    static func appendJSONString(_ s: String, to out: inout [UInt8]) {
        out.append(0x22)
        let utf8 = s.utf8
        let plain = utf8.withContiguousStorageIfAvailable { p in !p.contains { $0 < 0x20 || $0 == 0x22 || $0 == 0x5C } }
            ?? !utf8.contains { $0 < 0x20 || $0 == 0x22 || $0 == 0x5C }
        if plain {
            out.append(contentsOf: utf8)
        } else {
            let hex: [UInt8] = Array("0123456789abcdef".utf8)
            for b in utf8 {
                switch b {
                case 0x22: out.append(0x5C); out.append(0x22)
                case 0x5C: out.append(0x5C); out.append(0x5C)
                case 0x0A: out.append(0x5C); out.append(0x6E)
                case 0x0D: out.append(0x5C); out.append(0x72)
                case 0x09: out.append(0x5C); out.append(0x74)
                case _ where b < 0x20: out.append(contentsOf: [0x5C, 0x75, 0x30, 0x30, hex[Int(b >> 4)], hex[Int(b & 0xF)]])
                default: out.append(b)
                }
            }
        }
        out.append(0x22)
    }

    public func debug(_ m: String, _ f: [String: String] = [:]) { log(.debug, m, f) }
    public func info(_ m: String, _ f: [String: String] = [:]) { log(.info, m, f) }
    public func warning(_ m: String, _ f: [String: String] = [:]) { log(.warning, m, f) }
    public func error(_ m: String, _ f: [String: String] = [:]) { log(.error, m, f) }
}
