/// One SMTP reply: a three-digit code, an optional enhanced status code and
/// one or more text lines (RFC 5321 §4.2).
///
/// When `enhanced` is set it prefixes the text of *every* line (RFC 2034 §4).
/// By convention the greeting, the HELO/EHLO replies and 3xx replies (354) carry
/// none: RFC 2034 §3 exempts the first two, and RFC 3463 §3.1 has no class 3.
/// It conforms to `Error` so a parse failure can carry the reply to send.
public struct SMTPReply: Error, Sendable, Equatable, CustomStringConvertible {
    /// The reply code, e.g. 250 (RFC 5321 §4.2.1).
    public var code: Int
    /// The enhanced status code, e.g. `2.1.0` (RFC 3463), or nil.
    public var enhanced: String?
    /// The text lines, without code or CRLF. An empty array encodes as one line with no text.
    public var lines: [String]

    /// The code as a `ReplyCode`, for decisions by class (RFC 5321 §4.2.1).
    public var replyCode: ReplyCode { ReplyCode(code) }
    /// The enhanced status code parsed (RFC 3463), nil when absent or malformed.
    public var enhancedStatus: EnhancedStatusCode? { enhanced.flatMap(EnhancedStatusCode.init) }

    /// Creates a reply from variadic text lines.
    /// - Parameters:
    ///   - code: the three-digit reply code.
    ///   - enhanced: the RFC 3463 status code, or nil.
    ///   - lines: the text lines.
    public init(_ code: Int, _ enhanced: String?, _ lines: String...) {
        self.init(code: code, enhanced: enhanced, lines: lines)
    }

    /// Creates a reply from an array of text lines.
    /// - Parameters:
    ///   - code: the three-digit reply code.
    ///   - enhanced: the RFC 3463 status code, or nil.
    ///   - lines: the text lines.
    public init(code: Int, enhanced: String?, lines: [String]) {
        self.code = code
        self.enhanced = enhanced
        self.lines = lines
    }

    /// The wire form: `250-first\r\n250 last\r\n` (RFC 5321 §4.2.1), with the
    /// enhanced code after the separator on every line (RFC 2034 §4).
    ///
    /// CR, LF and other control characters in the text are replaced by spaces, so a
    /// reply can never be split or smuggle a second reply.
    public func encoded() -> [UInt8] {
        let codeText = String(code)
        let texts = lines.isEmpty ? [""] : lines
        var out: [UInt8] = []
        out.reserveCapacity(texts.reduce(0) { $0 + $1.utf8.count + 16 })
        for (index, text) in texts.enumerated() {
            out.append(contentsOf: codeText.utf8)
            out.append(index == texts.count - 1 ? 0x20 : 0x2D)
            var body: [UInt8] = []
            if let enhanced {
                body.append(contentsOf: enhanced.utf8)
                if !text.isEmpty { body.append(0x20) }
            }
            body.append(contentsOf: text.utf8)
            if body.isEmpty, index == texts.count - 1 {
                out.removeLast()  // "250\r\n": no trailing space when there is no text
            }
            for byte in body { out.append(byte < 0x20 || byte == 0x7F ? 0x20 : byte) }
            out.append(contentsOf: [0x0D, 0x0A])
        }
        return out
    }

    /// The encoded reply as text (for logs and tests).
    public var description: String { String(decoding: encoded(), as: UTF8.self) }

    /// Whether this is a positive completion or intermediate reply (2xx or 3xx).
    public var isPositive: Bool { code >= 200 && code < 400 }
}
