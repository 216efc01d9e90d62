import Foundation

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
        guard level >= minimum else { return }
        var obj: [String: String] = fields
        obj["ts"] = ISO8601DateFormatter.string(from: Date(), timeZone: .gmt, formatOptions: [.withInternetDateTime, .withFractionalSeconds])
        obj["level"] = level.description
        obj["component"] = label
        obj["msg"] = message
        guard var data = try? JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]) else { return }
        data.append(0x0A)
        Logger.lock.withLock { FileHandle.standardError.write(data) }
    }

    public func debug(_ m: String, _ f: [String: String] = [:]) { log(.debug, m, f) }
    public func info(_ m: String, _ f: [String: String] = [:]) { log(.info, m, f) }
    public func warning(_ m: String, _ f: [String: String] = [:]) { log(.warning, m, f) }
    public func error(_ m: String, _ f: [String: String] = [:]) { log(.error, m, f) }
}
