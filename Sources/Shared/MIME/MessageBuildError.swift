/// Why a send request could not be turned into a message: a stable code for programs, the
/// field it is about, and a sentence for people.
///
/// Errors reach an HTTP client as they are, so each knows its status (`400`, or `413` for a
/// message over the size limit, RFC 9110 §15.5.14) and never quotes more of the request than the
/// field's name. Create them with the static constructors.
public struct MessageBuildError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The kind of failure; `rawValue` is the code string sent to clients.
    public enum Code: String, Sendable, Equatable, CaseIterable {
        /// The body is not JSON, or not a JSON object.
        case invalidJSON = "invalid_json"
        /// A field the request needs is absent.
        case missingField = "missing_field"
        /// A field has the wrong type or a value out of its domain, is unknown, or is given
        /// together with a field it excludes.
        case invalidField = "invalid_field"
        /// An address is not an RFC 5321 §4.1.2 mailbox, or a display name cannot be written.
        case invalidAddress = "invalid_address"
        /// An address needs SMTPUTF8 (RFC 6531), which the send API does not offer yet.
        case unsupportedAddress = "unsupported_address"
        /// An extra header field would break the message or collide with one Hato writes.
        case badHeader = "bad_header"
        /// An attachment's `content` or the `raw` message is not base64 (RFC 4648 §4).
        case badBase64 = "bad_base64"
        /// More distinct recipients than the limit.
        case tooManyRecipients = "too_many_recipients"
        /// The built message is larger than the limit.
        case messageTooLarge = "message_too_large"
    }

    /// The kind of failure.
    public let code: Code
    /// The JSON path of the field concerned, e.g. `to[2]` or `attachments[0].content`; nil when
    /// the failure is about the request as a whole.
    public let field: String?
    /// A sentence saying what is wrong and, where useful, what would be accepted.
    public let message: String

    private init(_ code: Code, field: String?, _ message: String) {
        self.code = code
        self.field = field
        self.message = message
    }

    /// The HTTP status for this error: `413` for `message_too_large`, `400` otherwise.
    public var httpStatus: Int { code == .messageTooLarge ? 413 : 400 }

    /// `code (field): message`.
    public var description: String {
        field.map { "\(code.rawValue) (\($0)): \(message)" } ?? "\(code.rawValue): \(message)"
    }

    /// The body is not a JSON object.
    /// - Parameter detail: what the JSON reader reported.
    public static func invalidJSON(_ detail: String) -> Self {
        Self(.invalidJSON, field: nil, "the body is not a valid JSON object: \(detail)")
    }

    /// A required field is absent.
    /// - Parameters:
    ///   - field: its JSON path.
    ///   - detail: when to give it, if the rule is not simply "always".
    public static func missingField(_ field: String, _ detail: String? = nil) -> Self {
        Self(.missingField, field: field, detail ?? "`\(field)` is required")
    }

    /// A field has a value the builder cannot use.
    public static func invalidField(_ field: String?, _ message: String) -> Self {
        Self(.invalidField, field: field, message)
    }

    /// An address that is not a mailbox, or a display name that cannot be written.
    public static func invalidAddress(_ field: String, _ message: String) -> Self {
        Self(.invalidAddress, field: field, message)
    }

    /// An address with non-ASCII characters (SMTPUTF8, RFC 6531), not offered yet.
    public static func unsupportedAddress(_ field: String) -> Self {
        Self(.unsupportedAddress, field: field,
             "internationalized (non-ASCII) addresses need SMTPUTF8 (RFC 6531), which the send API does not support yet")
    }

    /// An extra header field that cannot be written.
    public static func badHeader(_ field: String, _ message: String) -> Self {
        Self(.badHeader, field: field, message)
    }

    /// Text that is not base64.
    public static func badBase64(_ field: String) -> Self {
        Self(.badBase64, field: field, "`\(field)` is not valid base64 (RFC 4648 §4, standard alphabet, padding optional)")
    }

    /// More recipients than allowed.
    /// - Parameters:
    ///   - count: the distinct recipients asked for.
    ///   - limit: the most allowed.
    public static func tooManyRecipients(_ count: Int, limit: Int) -> Self {
        Self(.tooManyRecipients, field: nil, "\(count) distinct recipients; at most \(limit) per message")
    }

    /// A message over the size limit.
    /// - Parameters:
    ///   - size: the message's size (octets), or a lower bound of it.
    ///   - limit: the largest message allowed (octets).
    ///   - lowerBound: `size` is an estimate made before building (the decoded content alone).
    public static func messageTooLarge(_ size: Int, limit: Int, lowerBound: Bool = false) -> Self {
        Self(.messageTooLarge, field: nil,
             "the message is \(lowerBound ? "over " : "")\(size) octets; at most \(limit) are accepted")
    }
}
