/// An SMTP reply code (RFC 5321 §4.2): three digits, the first of which says whether the
/// command succeeded, needs more, failed for now or failed for good. Decisions ask the code's
/// class instead of dividing or comparing prefixes.
public struct ReplyCode: RawRepresentable, Hashable, Comparable, Sendable, Codable, ExpressibleByIntegerLiteral, CustomStringConvertible {
    /// The class of a reply: its first digit (RFC 5321 §4.2.1).
    public enum Class: Int, Sendable, Hashable {
        /// 2yz: the action completed.
        case positiveCompletion = 2
        /// 3yz: accepted, send more (354 after DATA, 334 in AUTH).
        case positiveIntermediate = 3
        /// 4yz: not done, try again later (a deferral).
        case transientNegative = 4
        /// 5yz: not done, do not repeat as is (a bounce).
        case permanentNegative = 5
    }

    /// The three-digit code, e.g. 250.
    public let rawValue: Int

    /// A code from its number (any value; `replyClass` is nil outside 200–599).
    public init(rawValue: Int) { self.rawValue = rawValue }
    /// A code from its number.
    public init(_ value: Int) { self.rawValue = value }
    /// `let c: ReplyCode = 250`.
    public init(integerLiteral value: Int) { self.rawValue = value }

    /// The class, nil for a number that is not a reply code (below 200 or above 599, RFC 5321 §4.2).
    public var replyClass: Class? { (200...599).contains(rawValue) ? Class(rawValue: rawValue / 100) : nil }
    /// 2yz.
    public var isPositiveCompletion: Bool { replyClass == .positiveCompletion }
    /// 3yz.
    public var isPositiveIntermediate: Bool { replyClass == .positiveIntermediate }
    /// 4yz: a transient failure (RFC 5321 §4.2.1).
    public var isTransient: Bool { replyClass == .transientNegative }
    /// 5yz: a permanent failure.
    public var isPermanent: Bool { replyClass == .permanentNegative }

    public static func < (a: ReplyCode, b: ReplyCode) -> Bool { a.rawValue < b.rawValue }
    /// The three digits.
    public var description: String { String(rawValue) }
}

/// An enhanced mail system status code (RFC 3463 §2, carried in replies per RFC 2034):
/// `class.subject.detail`, class 2 (success), 4 (persistent transient failure) or 5 (permanent
/// failure), subject and detail 0–999 written with one to three digits. Decisions use its
/// parts instead of comparing string prefixes.
public struct EnhancedStatusCode: Hashable, Sendable, CustomStringConvertible, LosslessStringConvertible {
    /// The class: 2, 4 or 5 (RFC 3463 §3.1).
    public enum Class: Int, Sendable, Hashable {
        /// 2.X.X: success.
        case success = 2
        /// 4.X.X: persistent transient failure.
        case persistentTransientFailure = 4
        /// 5.X.X: permanent failure.
        case permanentFailure = 5
    }

    /// The class.
    public let statusClass: Class
    /// The subject (RFC 3463 §3.2: 0 other, 1 addressing, 2 mailbox, 3 mail system, 4 network
    /// and routing, 5 mail delivery protocol, 6 message content, 7 security or policy).
    public let subject: Int
    /// The detail within the subject (0–999).
    public let detail: Int

    /// A code from its parts.
    /// - Parameters:
    ///   - statusClass: 2, 4 or 5.
    ///   - subject: 0–999 (clamped).
    ///   - detail: 0–999 (clamped).
    public init(_ statusClass: Class, _ subject: Int, _ detail: Int) {
        self.statusClass = statusClass
        self.subject = min(max(0, subject), 999)
        self.detail = min(max(0, detail), 999)
    }

    /// Parses `class.subject.detail` exactly as RFC 3463 §2 writes it: a class digit of 2, 4 or 5,
    /// then one to three ASCII digits for each of subject and detail; nil for anything else.
    public init?(_ text: String) {
        // Octet by octet (every reply a node reads goes through here; splitting the String
        // walked grapheme clusters).
        var fields = [0, 0, 0], digits = [0, 0, 0], field = 0
        for octet in text.utf8 {
            if octet == UInt8(ascii: ".") {
                field += 1
                guard field < 3 else { return nil }
            } else if octet >= UInt8(ascii: "0") && octet <= UInt8(ascii: "9") {
                digits[field] += 1
                guard digits[field] <= (field == 0 ? 1 : 3) else { return nil }
                fields[field] = fields[field] * 10 + Int(octet - UInt8(ascii: "0"))
            } else {
                return nil
            }
        }
        guard field == 2, digits[0] == 1, digits[1] >= 1, digits[2] >= 1, let cls = Class(rawValue: fields[0]) else { return nil }
        self.init(cls, fields[1], fields[2])
    }

    /// Success (2.X.X).
    public var isSuccess: Bool { statusClass == .success }
    /// Persistent transient failure (4.X.X).
    public var isTransient: Bool { statusClass == .persistentTransientFailure }
    /// Permanent failure (5.X.X).
    public var isPermanent: Bool { statusClass == .permanentFailure }

    /// The same subject and detail in another class, e.g. `5.7.1` → `4.7.1` when a permanent
    /// refusal is reported as a deferral.
    public func withClass(_ statusClass: Class) -> EnhancedStatusCode { EnhancedStatusCode(statusClass, subject, detail) }

    /// `5.1.1`.
    public var description: String { "\(statusClass.rawValue).\(subject).\(detail)" }
}
