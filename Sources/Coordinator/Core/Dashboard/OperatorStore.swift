import Foundation

/// An operator account of the dashboard (`hato-coordinator operator add NAME`): a name and a
/// PBKDF2 password hash in the `$pbkdf2-sha256$…` form of `smtp.users` (`PasswordHash`).
public struct OperatorAccount: Codable, Sendable, Equatable {
    /// The login name (1–64 of `A-Z a-z 0-9 . _ @ -`).
    public var name: String
    /// The `$pbkdf2-sha256$…` hash; never the password.
    public var passwordHash: String
    /// When it was added or its password last set, seconds since 1970.
    public var createdAt: Double

    /// An account from its parts.
    public init(name: String, passwordHash: String, createdAt: Double) {
        self.name = name; self.passwordHash = passwordHash; self.createdAt = createdAt
    }

    /// Whether `name` is a valid operator name.
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 64 && name.unicodeScalars.allSatisfy {
            ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || ".-_@".unicodeScalars.contains($0)
        }
    }
}

/// The operator accounts both queue stores keep (SQLite table `operators`, PostgreSQL
/// migration 4), so every coordinator of a cluster knows the same operators.
public protocol OperatorStore {
    /// Adds an account, or replaces the hash of the one with the same name.
    /// - Throws: a store error.
    func saveOperator(_ account: OperatorAccount) throws
    /// The account named `name`, nil when there is none.
    /// - Throws: a store error.
    func operatorAccount(named name: String) throws -> OperatorAccount?
    /// Every account, by name.
    /// - Throws: a store error.
    func operatorAccounts() throws -> [OperatorAccount]
    /// Removes an account. - Returns: whether it existed.
    /// - Throws: a store error.
    @discardableResult func removeOperator(named name: String) throws -> Bool
}
