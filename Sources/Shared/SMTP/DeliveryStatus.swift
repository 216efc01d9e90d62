/// What one delivery attempt ended with for one recipient: the reply code, the enhanced status
/// code and the text — the server's reply, or a local failure written as one.
///
/// One value carries this from the connection attempt and the mail transaction (node) through
/// the result frame to the coordinator, into the queue, the delivery log, webhooks and the DSN,
/// the way Postfix carries one `DSN_BUF` from connect to bounce.
///
/// - The reply code is RFC 5321 §4.2: its first digit decides the `disposition` (2yz delivered,
///   5yz failed, anything else deferred, RFC 5321 §4.2.1).
/// - The enhanced status code is RFC 3463 (sent per RFC 2034), optional: not every server sends
///   one. RFC 3463 §2 requires its class to agree with the reply code's; `enhancedAgreesWithCode`
///   says whether it does, and `enhancedStatus(ofClass:orElse:)` gives the DSN `Status` field of
///   RFC 3464 §2.3.4, which must agree with the DSN's `Action`.
/// - The text is the reply's lines joined by spaces, at most `maxTextLength` characters.
///
/// Its JSON form (`Codable`) is flat — `code`, `enhanced`, `text` — the keys the cluster protocol
/// and the node journal have always used; the `KeyedEncodingContainer`/`KeyedDecodingContainer`
/// helpers below write and read those keys inside another record.
public struct DeliveryStatus: Sendable, Hashable, Codable, CustomStringConvertible {
    /// What the status means for the recipient (RFC 3464 §2.3.3 `Action`, without `relayed`/`expanded`).
    public enum Disposition: String, Sendable, Hashable, Codable, CaseIterable {
        /// The next hop took responsibility: a 2yz reply to the content (RFC 5321 §4.2.5).
        case delivered
        /// Not delivered yet, try again later: a 4yz reply, a timeout, a connection failure.
        case deferred
        /// Not delivered, do not try again: a 5yz reply (a bounce).
        case failed
    }

    /// The longest text kept, in characters (longer texts are cut).
    public static let maxTextLength = 512

    /// The reply code (RFC 5321 §4.2), e.g. 250, 451, 550; a synthetic code for local failures.
    public let code: ReplyCode
    /// The enhanced status code (RFC 3463), when the server sent one or the failure is local.
    public let enhanced: EnhancedStatusCode?
    /// The reply text (lines joined by spaces), at most `maxTextLength` characters.
    public let text: String

    /// A status from its parts.
    /// - Parameters:
    ///   - code: the reply code.
    ///   - enhanced: the enhanced status code, if any (kept as given, even when its class
    ///     disagrees with the code's; see `enhancedAgreesWithCode`).
    ///   - text: the text; cut to `maxTextLength` characters.
    public init(_ code: ReplyCode, _ enhanced: EnhancedStatusCode?, _ text: String) {
        self.code = code
        self.enhanced = enhanced
        self.text = text.count > DeliveryStatus.maxTextLength ? String(text.prefix(DeliveryStatus.maxTextLength)) : text
    }

    /// A status from stored or received fields (a queue row, a result frame).
    /// - Parameters:
    ///   - code: the reply code's number.
    ///   - enhanced: the enhanced status code as text; one that is not `class.subject.detail`
    ///     (RFC 3463 §2) is dropped.
    ///   - text: the text; cut to `maxTextLength` characters.
    public init(code: Int, enhanced: String?, text: String) {
        self.init(ReplyCode(code), enhanced.flatMap(EnhancedStatusCode.init), text)
    }

    /// The status a server's reply gives: its code, its enhanced status code and its lines
    /// joined by spaces. The client reply parser only takes an enhanced code whose class agrees
    /// with the reply code (RFC 3463 §2); a parsed reply therefore never disagrees.
    /// - Parameter reply: a complete reply.
    public init(reply: SMTPReply) {
        self.init(reply.replyCode, reply.enhancedStatus, reply.lines.joined(separator: " "))
    }

    /// A failure found on this side that the recipient should be retried after: the synthetic
    /// reply `451` (RFC 5321 §4.2.3, "local error in processing") with the enhanced code
    /// `4.subject.detail` (RFC 3463), e.g. `localDeferral(4, 1, "cannot connect")` → 451 4.4.1.
    /// - Parameters:
    ///   - subject: the RFC 3463 §3.2 subject (4 network and routing, 7 security or policy, …).
    ///   - detail: the detail within the subject.
    ///   - text: what happened.
    ///   - code: another 4yz code when one fits better (451 by default).
    /// - Returns: the status.
    public static func localDeferral(_ subject: Int, _ detail: Int, _ text: String, code: ReplyCode = 451) -> DeliveryStatus {
        precondition(code.isTransient, "a local deferral has a 4yz reply code, not \(code)")
        return DeliveryStatus(code, EnhancedStatusCode(.persistentTransientFailure, subject, detail), text)
    }

    /// A failure found on this side that no retry can cure: a synthetic 5yz reply with the
    /// enhanced code `5.subject.detail` (RFC 3463), e.g. `localFailure(553, 1, 3, "invalid recipient
    /// address syntax")` → 553 5.1.3.
    /// - Parameters:
    ///   - code: the 5yz reply code (RFC 5321 §4.2.3).
    ///   - subject: the RFC 3463 §3.2 subject.
    ///   - detail: the detail within the subject.
    ///   - text: what happened.
    /// - Returns: the status.
    public static func localFailure(_ code: ReplyCode, _ subject: Int, _ detail: Int, _ text: String) -> DeliveryStatus {
        precondition(code.isPermanent, "a local failure has a 5yz reply code, not \(code)")
        return DeliveryStatus(code, EnhancedStatusCode(.permanentFailure, subject, detail), text)
    }

    /// The reply code's class (RFC 5321 §4.2.1), nil for a number that is not a reply code.
    public var replyClass: ReplyCode.Class? { code.replyClass }

    /// What the code means for the recipient: 2yz delivered, 5yz failed, anything else
    /// (4yz, and a 3yz or a number out of range where a final reply was due) deferred.
    public var disposition: Disposition {
        switch code.replyClass {
        case .positiveCompletion: return .delivered
        case .permanentNegative: return .failed
        case .transientNegative, .positiveIntermediate, nil: return .deferred
        }
    }

    /// Whether the enhanced code's class is the reply code's class (RFC 3463 §2: 2.X.X with 2yz,
    /// 4.X.X with 4yz, 5.X.X with 5yz); true when there is no enhanced code.
    public var enhancedAgreesWithCode: Bool {
        guard let enhanced else { return true }
        return enhanced.statusClass.rawValue == code.replyClass?.rawValue
    }

    /// The enhanced code when it has `statusClass`, else `fallback` — the DSN `Status` field,
    /// which must agree with the DSN's `Action` (RFC 3464 §2.3.4: a failure's status is 5.X.X, a
    /// delay's 4.X.X).
    /// - Parameters:
    ///   - statusClass: the class the status must have.
    ///   - fallback: used when there is no enhanced code or it is of another class.
    /// - Returns: the enhanced status code.
    public func enhancedStatus(ofClass statusClass: EnhancedStatusCode.Class, orElse fallback: EnhancedStatusCode) -> EnhancedStatusCode {
        guard let enhanced, enhanced.statusClass == statusClass else { return fallback }
        return enhanced
    }

    /// `code enhanced text` with the parts that are present, e.g. `550 5.1.1 no such user`
    /// (a DSN's `Diagnostic-Code`, a log line, what backoff rules match).
    public var description: String {
        var s = code.description
        if let enhanced { s += " " + enhanced.description }
        if !text.isEmpty { s += " " + text }
        return s
    }

    // MARK: Codable: flat `code`, `enhanced`, `text`

    private enum CodingKeys: String, CodingKey { case code, enhanced, text }

    /// Decodes `{"code": 550, "enhanced": "5.1.1", "text": "…"}` (`enhanced` optional).
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self = try c.decodeDeliveryStatus(code: .code, enhanced: .enhanced, text: .text)
    }

    /// Encodes `{"code": 550, "enhanced": "5.1.1", "text": "…"}` (`enhanced` omitted when absent).
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(self, code: .code, enhanced: .enhanced, text: .text)
    }
}

extension KeyedDecodingContainer {
    /// Reads a `DeliveryStatus` written flat into this record: a number under `code`, an optional
    /// `class.subject.detail` string under `enhanced` (dropped when malformed) and a string under `text`.
    /// - Throws: `DecodingError` when `code` or `text` is missing or of another type.
    public func decodeDeliveryStatus(code: Key, enhanced: Key, text: Key) throws -> DeliveryStatus {
        DeliveryStatus(code: try decode(Int.self, forKey: code), enhanced: try decodeIfPresent(String.self, forKey: enhanced),
                       text: try decode(String.self, forKey: text))
    }
}

extension KeyedEncodingContainer {
    /// Writes a `DeliveryStatus` flat into this record (see `decodeDeliveryStatus`).
    /// - Throws: what the encoder throws.
    public mutating func encode(_ status: DeliveryStatus, code: Key, enhanced: Key, text: Key) throws {
        try encode(status.code.rawValue, forKey: code)
        try encodeIfPresent(status.enhanced?.description, forKey: enhanced)
        try encode(status.text, forKey: text)
    }
}
