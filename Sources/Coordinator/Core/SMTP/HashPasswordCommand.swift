#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SMTPCore

/// `hato-coordinator hash-password [--iterations N]`: prints a `$pbkdf2-sha256$…` hash for
/// `smtp.users[].password_hash`.
///
/// The password is read from standard input: the first line when stdin is not a terminal
/// (`echo -n secret | hato-coordinator hash-password`), otherwise it is prompted for twice on
/// the terminal with echo off. It is never taken from the command line (it would show in `ps`).
public enum HashPasswordCommand {
    /// The longest password read, in octets.
    static let maxPasswordLength = 4096

    /// Runs the command.
    /// - Parameter iterations: the `--iterations` value, nil for `PasswordHash.defaultIterations`.
    /// - Returns: the exit status (0 ok, 1 error, 2 usage).
    public static func run(iterations: String?) -> Int32 {
        var count = PasswordHash.defaultIterations
        if let iterations {
            guard let n = Int(iterations), n >= PasswordHash.minimumIterations, n <= PasswordHash.maximumIterations else {
                fail("hash-password: --iterations must be a number from \(PasswordHash.minimumIterations) to \(PasswordHash.maximumIterations)")
                return 2
            }
            count = n
        }
        let password: [UInt8]
        do {
            password = isatty(0) == 1 ? try promptTwice() : try readFirstLine()
        } catch let error as PasswordInputError {
            fail("hash-password: \(error.message)")
            return 1
        } catch {
            fail("hash-password: \(error)")
            return 1
        }
        print(PasswordHash.make(password: password, iterations: count).encoded)
        return 0
    }

    /// A password from standard input: prompted twice on a terminal, else its first line.
    /// - Throws: `PasswordInputError` (empty, too long, not UTF-8, the two differ, unreadable).
    public static func readPassword() throws -> [UInt8] {
        isatty(0) == 1 ? try promptTwice() : try readFirstLine()
    }

    /// Why no password could be read.
    public struct PasswordInputError: Error {
        /// What went wrong.
        public let message: String
    }

    private static func fail(_ message: String) {
        FileHandle.standardError.write(Data((message + "\n").utf8))
    }

    /// The first line of standard input without its line ending.
    static func readFirstLine() throws -> [UInt8] {
        var data: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1024)
        while data.count <= maxPasswordLength, !data.contains(0x0A) {
            let n = chunk.withUnsafeMutableBytes { read(0, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw PasswordInputError(message: "cannot read standard input")
            }
            if n == 0 { break }
            data += chunk[0..<n]
        }
        var line = data.prefix { $0 != 0x0A }
        if line.last == 0x0D { line = line.dropLast() }
        return try checked(Array(line))
    }

    private static func checked(_ password: [UInt8]) throws -> [UInt8] {
        guard !password.isEmpty else { throw PasswordInputError(message: "empty password") }
        guard password.count <= maxPasswordLength else { throw PasswordInputError(message: "password longer than \(maxPasswordLength) octets") }
        guard String(validating: password, as: UTF8.self) != nil else { throw PasswordInputError(message: "password is not UTF-8") }
        return password
    }

    /// Prompts on the terminal (stderr) with echo off, twice, and compares.
    private static func promptTwice() throws -> [UInt8] {
        let first = try prompt("Password: ")
        let second = try prompt("Retype password: ")
        guard first == second else { throw PasswordInputError(message: "passwords do not match") }
        return first
    }

    private static func prompt(_ text: String) throws -> [UInt8] {
        FileHandle.standardError.write(Data(text.utf8))
        var saved = termios()
        let haveTerminal = tcgetattr(0, &saved) == 0
        if haveTerminal {
            var quiet = saved
            quiet.c_lflag &= ~tcflag_t(ECHO)
            _ = tcsetattr(0, TCSAFLUSH, &quiet)
        }
        defer {
            if haveTerminal { _ = tcsetattr(0, TCSAFLUSH, &saved) }
            FileHandle.standardError.write(Data("\n".utf8))
        }
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while line.count <= maxPasswordLength {
            let n = read(0, &byte, 1)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 || byte == 0x0A { break }
            line.append(byte)
        }
        if line.last == 0x0D { line.removeLast() }
        return try checked(line)
    }
}
