/// Random text for boundaries and Message-IDs.
enum RandomText {
    private static let alphabet = Array("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".unicodeScalars)

    /// `count` characters drawn uniformly from letters and digits (lower case only when `lowercase`).
    static func alphanumeric(_ count: Int, lowercase: Bool = false, using generator: inout some RandomNumberGenerator) -> String {
        let range = lowercase ? 36 : alphabet.count
        var out = ""
        for _ in 0..<count { out.unicodeScalars.append(alphabet[Int.random(in: 0..<range, using: &generator)]) }
        return out
    }
}
