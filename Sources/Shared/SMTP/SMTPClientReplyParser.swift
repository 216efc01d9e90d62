import Foundation

/// Assembles SMTP replies from the lines a server sends (RFC 5321 §4.2, §4.2.1).
///
/// Accepts `250-…` continuation lines and a final `250 …` (or a bare `250`) line,
/// CRLF or LF-only line ends, and an RFC 2034 enhanced status code (`x.y.z`, class
/// equal to the reply's first digit) at the start of the text, which is removed from
/// every line that carries it. A malformed line, mixed codes within one reply, or a
/// reply longer than `maxLines` lines or `maxBytes` octets is a protocol error.
/// Never traps on any input.
public struct SMTPClientReplyParser: Sendable {
    /// The most lines one reply may have.
    public static let maxLines = 100
    /// The most octets one reply may have, line ends included (64 KiB).
    public static let maxBytes = 64 * 1024

    /// What feeding one line produced.
    public enum Step: Sendable, Equatable {
        /// The reply continues on further lines.
        case needMore
        /// A complete reply.
        case reply(SMTPReply)
        /// The input is not a valid SMTP reply; the session must be abandoned.
        case error(String)
    }

    private var code: Int? = nil
    private var texts: [String] = []
    private var byteCount = 0

    /// An empty parser, ready for the first line of a reply.
    public init() {}

    /// Whether part of a multiline reply has been read.
    public var isMidReply: Bool { code != nil }

    /// Feeds one received line (with or without its CRLF/LF).
    public mutating func feed<C: Collection>(_ line: C) -> Step where C.Element == UInt8 {
        byteCount += line.count
        guard byteCount <= SMTPClientReplyParser.maxBytes else {
            self = SMTPClientReplyParser()
            return .error("reply longer than \(SMTPClientReplyParser.maxBytes) octets")
        }
        guard texts.count < SMTPClientReplyParser.maxLines else {
            self = SMTPClientReplyParser()
            return .error("reply longer than \(SMTPClientReplyParser.maxLines) lines")
        }
        var content = Array(line)
        if content.last == 0x0A { content.removeLast() }
        if content.last == 0x0D { content.removeLast() }
        guard content.count >= 3,
              (0x32...0x35).contains(content[0]),
              (0x30...0x39).contains(content[1]),
              (0x30...0x39).contains(content[2]) else {
            self = SMTPClientReplyParser()
            return .error("malformed reply line: \(SMTPClientReplyParser.printable(content.prefix(60)))")
        }
        let lineCode = Int(content[0] - 0x30) * 100 + Int(content[1] - 0x30) * 10 + Int(content[2] - 0x30)
        let isLast: Bool
        if content.count == 3 {
            isLast = true
        } else if content[3] == 0x20 {
            isLast = true
        } else if content[3] == 0x2D {
            isLast = false
        } else {
            self = SMTPClientReplyParser()
            return .error("malformed reply line: \(SMTPClientReplyParser.printable(content.prefix(60)))")
        }
        if let code, code != lineCode {
            self = SMTPClientReplyParser()
            return .error("reply code changed from \(code) to \(lineCode) within a multiline reply")
        }
        code = lineCode
        texts.append(content.count > 4 ? SMTPClientReplyParser.printable(content[4...]) : "")
        guard isLast else { return .needMore }
        let reply = SMTPClientReplyParser.makeReply(code: lineCode, texts: texts)
        self = SMTPClientReplyParser()
        return .reply(reply)
    }

    /// Parses a complete byte string holding zero or more replies (for tests and tools).
    /// - Returns: the replies, or the first protocol error; a trailing incomplete reply is an error.
    public static func parseAll(_ bytes: [UInt8]) -> Result<[SMTPReply], SMTPProtocolError> {
        var parser = SMTPClientReplyParser()
        var replies: [SMTPReply] = []
        var start = 0
        while start < bytes.count {
            let end = bytes[start...].firstIndex(of: 0x0A).map { $0 + 1 } ?? bytes.count
            switch parser.feed(bytes[start..<end]) {
            case .needMore: break
            case .reply(let r): replies.append(r)
            case .error(let e): return .failure(SMTPProtocolError(e))
            }
            start = end
        }
        if parser.isMidReply { return .failure(SMTPProtocolError("incomplete multiline reply")) }
        return .success(replies)
    }

    private static func makeReply(code: Int, texts: [String]) -> SMTPReply {
        guard let first = texts.first, let enhanced = enhancedCode(in: first, code: code) else {
            return SMTPReply(code: code, enhanced: nil, lines: texts)
        }
        let lines = texts.map { text -> String in
            guard text.hasPrefix(enhanced) else { return text }
            let rest = text.dropFirst(enhanced.count)
            if rest.isEmpty { return "" }
            if rest.first == " " { return String(rest.dropFirst()) }
            return text
        }
        return SMTPReply(code: code, enhanced: enhanced, lines: lines)
    }

    /// The RFC 2034/3463 enhanced status code at the start of `text`, if its class matches the
    /// reply code's class (RFC 3463 §2: the two must agree), as the server wrote it.
    static func enhancedCode(in text: String, code: Int) -> String? {
        let token = String(Substring(text.utf8.prefix { $0 != UInt8(ascii: " ") }))
        guard let enhanced = EnhancedStatusCode(token), enhanced.statusClass.rawValue == ReplyCode(code).replyClass?.rawValue else { return nil }
        return token
    }

    /// Decodes bytes as UTF-8 (invalid sequences replaced) with control characters turned into spaces.
    static func printable<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
        String(decoding: bytes.map { $0 < 0x20 || $0 == 0x7F ? 0x20 : $0 }, as: UTF8.self)
    }
}

/// A violation of the SMTP reply syntax or limits by the remote server.
public struct SMTPProtocolError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What was wrong.
    public let message: String
    /// An error with its explanation.
    public init(_ message: String) { self.message = message }
    /// The explanation.
    public var description: String { message }
}
