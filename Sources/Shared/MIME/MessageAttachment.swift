/// One attachment of a send request: a file carried base64-encoded in the JSON body and
/// written as a base64 MIME part (RFC 2045 §6.8) with a `Content-Disposition` (RFC 2183).
public struct MessageAttachment: Sendable, Hashable, Codable {
    /// How the receiving mail client should present the part (RFC 2183 §2).
    public enum Disposition: String, Sendable, Hashable, Codable {
        /// Offered as a separate file (RFC 2183 §2.2).
        case attachment
        /// Shown with the message; with a `content_id`, referenced from the HTML as `cid:`
        /// (RFC 2392) and placed in a `multipart/related` with it (RFC 2387).
        case inline
    }

    /// The file name shown to the recipient (`filename` parameter, RFC 2183 §2.3; RFC 2231
    /// encoded when it is not short ASCII). 1–255 UTF-8 octets, no control characters.
    public var filename: String
    /// The media type `type/subtype` (RFC 2045 §5.1), without parameters;
    /// `application/octet-stream` when absent. `multipart/*` and `message/*` are refused.
    public var contentType: String?
    /// The file's octets, base64 (RFC 4648 §4; line breaks and white space are ignored,
    /// padding is optional).
    public var content: String
    /// The `Content-ID` (RFC 2045 §7, RFC 2392) the HTML refers to as `cid:…`, with or without
    /// angle brackets; nil for none.
    public var contentID: String?
    /// `attachment` (the default) or `inline`.
    public var disposition: Disposition?

    /// Creates an attachment.
    /// - Parameters: see the properties.
    public init(filename: String, contentType: String? = nil, content: String, contentID: String? = nil,
                disposition: Disposition? = nil) {
        self.filename = filename
        self.contentType = contentType
        self.content = content
        self.contentID = contentID
        self.disposition = disposition
    }

    private enum CodingKeys: String, CodingKey, CaseIterable {
        case filename
        case contentType = "content_type"
        case content
        case contentID = "content_id"
        case disposition
    }

    /// Reads the JSON object; unknown keys are refused.
    /// - Throws: `DecodingError`, or `MessageBuildError` (`invalid_field`) for an unknown key.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        try JSONFields.refuseUnknownKeys(in: decoder, known: CodingKeys.allCases.map(\.rawValue))
        self.init(filename: try container.decode(String.self, forKey: .filename),
                  contentType: try container.decodeIfPresent(String.self, forKey: .contentType),
                  content: try container.decode(String.self, forKey: .content),
                  contentID: try container.decodeIfPresent(String.self, forKey: .contentID),
                  disposition: try container.decodeIfPresent(Disposition.self, forKey: .disposition))
    }
}
