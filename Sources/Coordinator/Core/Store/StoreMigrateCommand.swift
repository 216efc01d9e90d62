import Foundation
import HatoConfig
import HatoIO

extension StoreMigration {
    /// The id of another process that has the SQLite database open, nil when none has.
    ///
    /// SQLite in WAL mode (the queue's mode) keeps a shared `fcntl` lock on one byte of the
    /// `-shm` file (its "dead man switch", offset 128) for as long as a connection is open: a
    /// serving coordinator holds it from start to exit. `F_GETLK` asks for a write lock on that
    /// byte without taking it and names the process whose lock is in the way. Locks of this
    /// process are not reported.
    ///
    /// Call it before this process opens the database: closing the descriptor it uses drops
    /// every `fcntl` lock this process holds on that file, SQLite's own included.
    /// - Parameter databasePath: the database file (`…/queue.db`).
    /// - Returns: the process id, or nil (no `-shm` file: nobody has it open in WAL mode).
    public static func sqliteHolder(databasePath: String) -> pid_t? {
        let fd = open(databasePath + "-shm", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var probe = flock()
        probe.l_type = Int16(F_WRLCK)
        probe.l_whence = Int16(SEEK_SET)
        probe.l_start = 128
        probe.l_len = 1
        guard fcntl(fd, F_GETLK, &probe) == 0, probe.l_type != Int16(F_UNLCK) else { return nil }
        return probe.l_pid
    }

    /// The first admin API address of `config` (`coordinator.admin_listen` and every
    /// `coordinators[].admin_listen`) that accepts a TCP connection, nil when none does.
    /// - Parameters:
    ///   - config: the cluster configuration.
    ///   - timeout: seconds to wait for each address.
    /// - Returns: the address (`host:port`) that answered.
    public static func answeringAdminAddress(of config: ClusterConfig, timeout: TimeInterval = 1) -> String? {
        var seen = Set<String>()
        for listen in [config.coordinator.adminListen] + config.coordinators.map(\.adminListen) where seen.insert(listen.description).inserted {
            // An unspecified listen address is reached on loopback.
            let host = listen.host == "0.0.0.0" ? "127.0.0.1" : listen.host == "::" ? "::1" : listen.host
            if let socket = try? Socket.connect(to: SocketAddress(host: host, port: listen.port), timeout: timeout) {
                socket.close()
                return listen.description
            }
        }
        return nil
    }
}

/// `hato-coordinator store migrate --from sqlite --to postgresql [--sqlite PATH] [--dry-run]`:
/// copies the SQLite queue of `coordinator.data_dir` into the PostgreSQL store that cluster.yml's
/// `store:` names (`StoreMigration`), with progress on stderr and the summary on stdout.
public enum StoreCommand {
    /// The `store` command's help page.
    public static let help = """
        usage: hato-coordinator store migrate --from sqlite --to postgresql [--sqlite PATH] [--dry-run] [--config PATH]

        Copies a SQLite queue into the PostgreSQL store that cluster.yml's store: section names
        (kind: postgresql, url, password_file): messages and their content, recipients with their
        states, attempts and next attempt times, leases, the IP owners, node drain state, warm-up
        counts, backoffs, pauses, suppressions, unprocessed events, pending DSNs and the webhook
        outbox. One transaction: all or nothing. Verified before the commit: every table has the same
        row count and the same rows (SHA-256 of every row) on both sides; exit 1 otherwise.

        Refuses while a coordinator serves: another process has the SQLite file open (its pid is
        named), a coordinator holds the PostgreSQL leadership, or a coordinator answers on an admin
        address of cluster.yml while a store records it serving. Stop the coordinators first.

        Idempotent: a second run finds the same rows and copies nothing ("already migrated"); if the
        SQLite queue changed and no coordinator has served from PostgreSQL since, the copy is replaced
        by a fresh one. It never writes into a PostgreSQL store that holds other rows.

        arguments:
          --from sqlite        the source kind (the only one)
          --to postgresql      the target kind (the only one): the store: section of cluster.yml
          --sqlite PATH        the SQLite queue file (default: coordinator.data_dir/queue.db)
          --dry-run            print the row counts it would copy; write nothing
          --config PATH        cluster configuration (default ./cluster.yml)

        example:
          systemctl stop hato-coordinator
          hato-coordinator store migrate --from sqlite --to postgresql --dry-run --config /etc/hato/cluster.yml
          hato-coordinator store migrate --from sqlite --to postgresql --config /etc/hato/cluster.yml
          systemctl start hato-coordinator
        """

    /// Runs `store SUBCOMMAND`.
    /// - Parameters:
    ///   - positional: the arguments after `store` (`["migrate"]`).
    ///   - options: `--from`, `--to`, `--sqlite`.
    ///   - flags: `--dry-run`.
    ///   - config: the loaded cluster.yml.
    /// - Returns: the exit status: 0 done (or already migrated), 1 refused or failed, 2 usage.
    public static func run(positional: [String], options: [String: String], flags: Set<String>, config: ClusterConfig) -> Int32 {
        func fail(_ text: String, status: Int32 = 1) -> Int32 {
            FileHandle.standardError.write(Data("hato-coordinator: store migrate: \(text)\n".utf8))
            return status
        }
        guard positional == ["migrate"] else {
            return fail("usage: hato-coordinator store migrate --from sqlite --to postgresql [--sqlite PATH] [--dry-run] (see hato-coordinator store --help)", status: 2)
        }
        guard options["from"] == "sqlite", options["to"] == "postgresql" else {
            return fail("give --from sqlite --to postgresql (the only direction; got --from \(options["from"] ?? "(none)") --to \(options["to"] ?? "(none)"))", status: 2)
        }
        guard var target = config.postgreSQLConfiguration else {
            return fail("store: in \(config.sourcePath) names sqlite: set store: { kind: postgresql, url, password_file } to the database to copy into "
                        + "(the SQLite queue stays in coordinator.data_dir)", status: 2)
        }
        let path = options["sqlite"] ?? (config.coordinator.dataDir as NSString).appendingPathComponent("queue.db")
        guard FileManager.default.fileExists(atPath: path) else {
            return fail("\(StoreMigrationError.sourceMissing("no SQLite queue at \(path)"))")
        }
        if let pid = StoreMigration.sqliteHolder(databasePath: path) {
            let name = (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
            return fail("refusing: process \(pid)\(name.map { " (\($0))" } ?? "") has the SQLite queue \(path) open — a coordinator serving it? "
                        + "Stop it first, then run the migration again")
        }
        // One long transaction: no statement timeout (a lost server still ends it: tcp_user_timeout).
        target.statementTimeout = nil
        target.applicationName = "hato-coordinator store migrate"
        let dryRun = flags.contains("dry-run")
        do {
            let sqlite = try SQLiteDatabase(path: path)
            let postgreSQL = try PostgreSQLConnection(target)
            let migration = StoreMigration(sqlite: sqlite, sqlitePath: path, postgreSQL: postgreSQL, options: StoreMigration.Options(
                dryRun: dryRun,
                progress: { FileHandle.standardError.write(Data("store migrate: \($0)\n".utf8)) },
                coordinatorAnswering: { StoreMigration.answeringAdminAddress(of: config) }))
            let report = try migration.run()
            print(report.rendered)
            return 0
        } catch {
            return fail("\(error)")
        }
    }
}
