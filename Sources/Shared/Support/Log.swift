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
        // Hand-built JSON (sorted keys, RFC 8259 escaping): this runs on every accepted
        // message and every delivery, so it avoids JSONSerialization and date formatters.
        var obj = fields
        obj["ts"] = Logger.timestamp(Date())
        obj["level"] = level.description
        obj["component"] = label
        obj["msg"] = message
        var out = "{"
        var first = true
        for key in obj.keys.sorted() {
            if !first { out += "," }
            first = false
            Logger.appendJSONString(key, to: &out)
            out += ":"
            Logger.appendJSONString(obj[key] ?? "", to: &out)
        }
        out += "}\n"
        let data = Data(out.utf8)
        Logger.lock.withLock { FileHandle.standardError.write(data) }
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

    /// Appends `s` as a JSON string literal (quotes, backslash and control characters escaped).
    static func appendJSONString(_ s: String, to out: inout String) {
        out += "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where u.value < 0x20:
                let hex = String(u.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(u)
            }
        }
        out += "\""
    }

    public func debug(_ m: String, _ f: [String: String] = [:]) { log(.debug, m, f) }
    public func info(_ m: String, _ f: [String: String] = [:]) { log(.info, m, f) }
    public func warning(_ m: String, _ f: [String: String] = [:]) { log(.warning, m, f) }
    public func error(_ m: String, _ f: [String: String] = [:]) { log(.error, m, f) }
}
