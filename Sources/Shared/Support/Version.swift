/// The release of Hato this build is (`hato-coordinator --version`, `hato-node --version`,
/// the cluster protocol's hello carries its own protocol version separately).
public enum HatoVersion {
    /// The version, `MAJOR.MINOR.PATCH` (semantic versioning).
    public static let current = "0.9.0"

    /// `<program> <version> (Swift, Linux)` for `--version`.
    public static func banner(program: String) -> String {
        "\(program) \(current) (Hato clustered SMTP relay; built with Swift for Linux)"
    }
}
