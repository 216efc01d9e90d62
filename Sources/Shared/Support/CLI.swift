import Foundation

/// Parsed command-line arguments: `SUBCOMMAND [positional…] [--flag] [--option VALUE]`.
///
/// Every subcommand of both binaries takes `--config PATH` (default `./cluster.yml`).
public struct CLIArguments: Sendable {
    /// The first non-option argument, if any.
    public var subcommand: String?
    /// Further non-option arguments.
    public var positional: [String] = []
    /// `--name value` options.
    public var options: [String: String] = [:]
    /// `--name` flags.
    public var flags: Set<String> = []

    /// A command-line usage error (exit status 2).
    public struct UsageError: Error, CustomStringConvertible {
        public var description: String
        /// A usage error that says `description`.
        public init(description: String) { self.description = description }
    }

    /// Parses `arguments` (without the program name).
    /// - Parameters:
    ///   - valueOptions: option names that take a value (e.g. `config`).
    ///   - flagOptions: option names that take none (e.g. `json`).
    /// - Throws: `UsageError` for an unknown option or a missing value.
    public init(_ arguments: [String], valueOptions: Set<String>, flagOptions: Set<String>) throws {
        var i = 0
        while i < arguments.count {
            let a = arguments[i]
            if a == "-h" { flags.insert("help"); i += 1; continue }
            if a.hasPrefix("--") {
                var name = String(a.dropFirst(2))
                var inlineValue: String?
                if let eq = name.firstIndex(of: "=") { inlineValue = String(name[name.index(after: eq)...]); name = String(name[..<eq]) }
                if valueOptions.contains(name) {
                    if let v = inlineValue { options[name] = v } else {
                        guard i + 1 < arguments.count else { throw UsageError(description: "option --\(name) needs a value") }
                        options[name] = arguments[i + 1]; i += 1
                    }
                } else if flagOptions.contains(name) || name == "help" {
                    flags.insert(name)
                } else {
                    throw UsageError(description: "unknown option --\(name)")
                }
            } else if subcommand == nil {
                subcommand = a
            } else {
                positional.append(a)
            }
            i += 1
        }
    }

    /// `--config`, default `./cluster.yml`.
    public var configPath: String { options["config"] ?? "cluster.yml" }

    /// The value of option `--name` as a whole number within `range`.
    /// - Parameters:
    ///   - name: the option without its dashes (e.g. `limit`).
    ///   - range: the values allowed.
    /// - Returns: the number; nil when the option was not given.
    /// - Throws: `UsageError` naming the option, the value given and the range allowed.
    public func integer(_ name: String, in range: ClosedRange<Int>) throws -> Int? {
        try Self.integer(options[name], option: name, in: range)
    }

    /// `text` (the value of `--option`) as a whole number within `range`; nil for nil.
    /// - Throws: `UsageError` (`--limit: 'abc' is not a whole number from 1 to 1000`).
    public static func integer(_ text: String?, option: String, in range: ClosedRange<Int>) throws -> Int? {
        guard let text else { return nil }
        let bounds = range.upperBound == Int.max ? "of at least \(range.lowerBound)" : "from \(range.lowerBound) to \(range.upperBound)"
        guard let n = Int(text.trimmingCharacters(in: .whitespaces)), range.contains(n) else {
            throw UsageError(description: "--\(option): '\(text)' is not a whole number \(bounds)")
        }
        return n
    }
}

/// Writes `message` to standard error and exits with `status`.
public func exitWithError(_ message: String, status: Int32 = 1) -> Never {
    FileHandle.standardError.write(Data((message + "\n").utf8))
    exit(status)
}
