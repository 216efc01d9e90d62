/// One address of a send request, in JSON either a string (`"ana@example.com"`) or an object
/// with an optional display name (`{"name": "Ana Díaz", "address": "ana@example.com"}`).
///
/// The value is kept as given; `MessageBuilder` checks it (RFC 5321 §4.1.2 mailbox, ASCII only
/// for now) and writes the display name as RFC 5322 §3.4 requires.
public struct EmailAddress: Sendable, Hashable, Codable {
    /// The display name (RFC 5322 §3.4 `display-name`), any Unicode text without control
    /// characters; nil or empty for none.
    public var name: String?
    /// The mailbox `local-part@domain` (RFC 5321 §4.1.2), without angle brackets.
    public var address: String

    /// Creates an address.
    /// - Parameters:
    ///   - address: the mailbox, e.g. `ana@example.com`.
    ///   - name: the display name, or nil.
    public init(_ address: String, name: String? = nil) {
        self.address = address
        self.name = name
    }

    private enum CodingKeys: String, CodingKey, CaseIterable {
        case name, address
    }

    /// Reads a string or a `{name, address}` object; other keys are refused.
    /// - Throws: `DecodingError.typeMismatch` for another JSON type; `MessageBuildError`
    ///   (`invalid_field`) for an unknown key.
    public init(from decoder: any Decoder) throws {
        if let single = try? decoder.singleValueContainer(), let text = try? single.decode(String.self) {
            self.init(text)
            return
        }
        guard let container = try? decoder.container(keyedBy: CodingKeys.self) else {
            throw DecodingError.typeMismatch(EmailAddress.self, .init(codingPath: decoder.codingPath,
                                                                      debugDescription: "neither an address string nor an object"))
        }
        try JSONFields.refuseUnknownKeys(in: decoder, known: CodingKeys.allCases.map(\.rawValue))
        self.init(try container.decode(String.self, forKey: .address),
                  name: try container.decodeIfPresent(String.self, forKey: .name))
    }

    /// Writes a string when there is no display name, an object otherwise.
    public func encode(to encoder: any Encoder) throws {
        if let name, !name.isEmpty {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(name, forKey: .name)
            try container.encode(address, forKey: .address)
        } else {
            var single = encoder.singleValueContainer()
            try single.encode(address)
        }
    }
}
