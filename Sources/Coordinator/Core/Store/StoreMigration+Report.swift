import Foundation

/// Why `StoreMigration` refused or failed; nothing was written to PostgreSQL.
public struct StoreMigrationError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The kind of failure (open for new kinds).
    public struct Reason: Hashable, Sendable, CustomStringConvertible {
        let name: String
        /// The SQLite queue file does not exist.
        public static let sourceMissing = Reason(name: "source missing")
        /// A coordinator serves from the SQLite queue or the PostgreSQL store.
        public static let coordinatorRunning = Reason(name: "coordinator running")
        /// The PostgreSQL store holds rows that did not come from this SQLite queue.
        public static let targetNotEmpty = Reason(name: "target not empty")
        /// Migrated before, and since then both the SQLite queue and the PostgreSQL store changed.
        public static let servedSinceMigration = Reason(name: "served since the migration")
        /// The copy read back from PostgreSQL differs from the SQLite rows.
        public static let verificationFailed = Reason(name: "verification failed")
        public var description: String { name }
    }

    /// The kind of failure.
    public let reason: Reason
    /// What happened and what to do, for the operator.
    public let description: String

    /// The SQLite queue file is missing.
    public static func sourceMissing(_ text: String) -> Self { Self(reason: .sourceMissing, description: text) }
    /// A coordinator is serving.
    public static func coordinatorRunning(_ text: String) -> Self { Self(reason: .coordinatorRunning, description: text) }
    /// The target holds other rows.
    public static func targetNotEmpty(_ text: String) -> Self { Self(reason: .targetNotEmpty, description: text) }
    /// Both sides changed since the migration.
    public static func servedSinceMigration(_ text: String) -> Self { Self(reason: .servedSinceMigration, description: text) }
    /// The copy differs.
    public static func verificationFailed(_ text: String) -> Self { Self(reason: .verificationFailed, description: text) }
}

extension StoreMigration {
    /// What a run did (or, for a dry run, would do).
    public struct Report: Sendable, Equatable {
        /// The result of a run.
        public enum Outcome: Sendable, Equatable {
            /// Every row was copied into an empty store and verified.
            case copied
            /// An earlier copy from the same queue was replaced by a fresh one (the queue had
            /// changed, PostgreSQL had not served since) and verified.
            case copiedAgain
            /// The store already holds this queue's rows: nothing was copied.
            case alreadyMigrated
            /// A dry run: nothing was written.
            case dryRun
        }

        /// One table's rows.
        public struct TableCount: Sendable, Equatable {
            /// The table's name (the same on both sides).
            public var table: String
            /// Rows in the SQLite queue.
            public var sqlite: Int
            /// Rows this run inserted.
            public var copied: Int
            /// Rows in PostgreSQL at the end of the run.
            public var postgreSQL: Int
        }

        /// The result.
        public var outcome: Outcome
        /// The SQLite file.
        public var sqlitePath: String
        /// The PostgreSQL database (password masked).
        public var target: String
        /// Every copied table, in copy order.
        public var tables: [TableCount]
        /// The lease hold carried over (no new lease before it), nil for none.
        public var leaseHoldUntil: Date?
        /// Octets of content (message bodies, webhook bodies) copied.
        public var contentBytes = 0
        /// Whether both sides were found to hold the same rows (counts and fingerprints).
        public var verified = false
        /// A dry run: whether a real run would copy.
        public var plannedCopy = false
        /// Seconds spent inserting, verifying, and in all.
        public var copySeconds = 0.0, verifySeconds = 0.0, totalSeconds = 0.0
        /// What else the operator should know.
        public var notes: [String] = []

        /// The counts of `table`, nil for a name that is not copied.
        public func count(_ table: String) -> TableCount? { tables.first { $0.table == table } }

        /// Rows copied in all.
        public var rowsCopied: Int { tables.reduce(0) { $0 + $1.copied } }

        /// The summary the CLI prints on stdout.
        public var rendered: String {
            var lines: [String] = []
            let messages = count("messages")?.sqlite ?? 0
            switch outcome {
            case .dryRun:
                lines.append("dry run, nothing written: \(sqlitePath) → \(target)")
                lines.append(plannedCopy ? "would copy \(tables.reduce(0) { $0 + $1.sqlite }) rows (\(messages) messages)"
                                         : "nothing to copy")
            case .alreadyMigrated:
                lines.append("already migrated: \(count("messages")?.postgreSQL ?? messages) messages present, nothing copied (\(sqlitePath) → \(target))")
            case .copied, .copiedAgain:
                lines.append("migrated \(sqlitePath) → \(target)" + (outcome == .copiedAgain ? " (the earlier copy replaced)" : ""))
            }
            let width = max(18, (tables.map(\.table.count).max() ?? 0) + 2)
            func pad(_ s: String, _ n: Int, left: Bool = false) -> String {
                s.count >= n ? s : left ? s + String(repeating: " ", count: n - s.count) : String(repeating: " ", count: n - s.count) + s
            }
            let copiedTitle = outcome == .dryRun ? "would copy" : "copied"
            lines.append(pad("table", width, left: true) + pad("sqlite", 10) + pad(copiedTitle, 12) + pad("postgresql", 12))
            for t in tables {
                let copied = outcome == .dryRun ? (plannedCopy ? t.sqlite : 0) : t.copied
                lines.append(pad(t.table, width, left: true) + pad(String(t.sqlite), 10) + pad(String(copied), 12) + pad(String(t.postgreSQL), 12))
            }
            let totals = tables.reduce((0, 0, 0)) { ($0.0 + $1.sqlite, $0.1 + (outcome == .dryRun ? (plannedCopy ? $1.sqlite : 0) : $1.copied), $0.2 + $1.postgreSQL) }
            lines.append(pad("total", width, left: true) + pad(String(totals.0), 10) + pad(String(totals.1), 12) + pad(String(totals.2), 12))
            lines.append("run_state: lease hold " + (leaseHoldUntil.map { "until \(ISO8601DateFormatter().string(from: $0)) carried over" } ?? "none")
                         + "; term, store_id, boot_id, clean_stop, lease_horizon not copied (PostgreSQL keeps its own)")
            if outcome == .copied || outcome == .copiedAgain {
                let rate = copySeconds > 0 ? Int((Double(rowsCopied) / copySeconds).rounded()) : rowsCopied
                lines.append(String(format: "copied %d rows (%d messages, %.1f MiB of content) in %.2f s: %d rows/s",
                                    rowsCopied, count("messages")?.copied ?? 0, Double(contentBytes) / 1_048_576, copySeconds, rate))
            }
            if verified {
                lines.append("verified" + (verifySeconds > 0 ? String(format: " in %.2f s", verifySeconds) : "")
                             + ": every table has the same row count and the same rows on both sides (SHA-256 of every row)")
            }
            lines += notes.map { "note: \($0)" }
            return lines.joined(separator: "\n")
        }
    }
}
