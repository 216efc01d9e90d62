/// An invalid or unreadable cluster configuration.
///
/// `description` reads like a compiler diagnostic:
/// `cluster.yml:14: ips[2].pool: unknown pool "bulk" (known: transactional)`,
/// or `cluster.yml: cannot read: No such file or directory` when there is no line or key.
/// List indices in key paths are 0-based.
public struct ConfigError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The configuration file's path as it was given to `ClusterConfig.load`/`parse`.
    public let file: String
    /// The 1-based line the problem is reported at, when known.
    public let line: Int?
    /// The dotted key path, e.g. `ips[1].address`, when the problem concerns a key.
    public let key: String?
    /// What is wrong.
    public let message: String

    /// Creates an error.
    public init(file: String, line: Int?, key: String?, message: String) {
        self.file = file; self.line = line; self.key = key; self.message = message
    }

    /// `file[:line][: key]: message`.
    public var description: String {
        var text = file
        if let line { text += ":\(line)" }
        if let key { text += ": \(key)" }
        return text + ": " + message
    }
}

/// A configuration value that does not parse or is out of range (thrown by the
/// `ConfigValue` parsers, `IPNetwork.init(parsing:)` and `DomainPattern.init(parsing:)`).
/// The loader wraps it in a `ConfigError` with file, line and key.
public struct ConfigValueError: Error, CustomStringConvertible, Sendable, Equatable {
    /// What is wrong, naming the offending value, e.g. `invalid duration "5x": unknown unit "x" …`.
    public let message: String

    /// Creates an error.
    public init(_ message: String) { self.message = message }

    /// The message.
    public var description: String { message }
}
