import Foundation

/// Splitting a TXT record value into character-strings of at most 255 octets (RFC 1035
/// §3.3.14): a DKIM record with an rsa-2048 key is about 410 octets, so it is published as
/// several strings that verifiers concatenate (RFC 6376 §3.6.2.2).
public enum TXTStrings {
    /// The most octets in one character-string.
    public static let maximumLength = 255

    /// `value` cut into pieces of at most `maximumLength` octets (never inside a UTF-8 sequence).
    public static func split(_ value: String) -> [String] {
        var parts: [String] = []
        var current: [UInt8] = []
        for scalar in value.unicodeScalars {
            let octets = Array(String(scalar).utf8)
            if current.count + octets.count > maximumLength {
                parts.append(String(decoding: current, as: UTF8.self))
                current = []
            }
            current.append(contentsOf: octets)
        }
        if !current.isEmpty || parts.isEmpty { parts.append(String(decoding: current, as: UTF8.self)) }
        return parts
    }

    /// The pieces of `value` as zone-file text: each in double quotes (with `"` and `\`
    /// escaped), separated by spaces.
    public static func quoted(_ value: String) -> String {
        split(value).map { "\"" + $0.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\"" }
            .joined(separator: " ")
    }
}
