import Foundation
import SMTPCore

/// A complete message a client gives as `raw`, made ready to enqueue: line endings made CRLF,
/// `Bcc:` fields removed (RFC 5322 §3.6.3; as a submission server's cleanup does), `Date:` and
/// `Message-ID:` added when missing (RFC 6409 §8.3). Nothing else is changed.
enum RawMessage {
    /// Checks and prepares a raw message.
    /// - Parameters:
    ///   - octets: the decoded message.
    ///   - messageID: the `Message-ID` to add when the message has none (with angle brackets).
    ///   - date: the `Date` to add when the message has none.
    /// - Returns: the content (CRLF line endings, ending with CRLF) and the message's Message-ID.
    /// - Throws: `MessageBuildError` (field `raw`) when the message is empty, has a line over 998
    ///   octets (RFC 5322 §2.1.1), a header section that is not header fields, 8-bit octets in
    ///   its header (RFC 6532 needs SMTPUTF8), or no `From:` field (RFC 5322 §3.6).
    static func prepare(_ octets: [UInt8], messageID: String, date: Date) throws(MessageBuildError)
        -> (content: [UInt8], messageID: String) {
        guard !octets.isEmpty else { throw .invalidField("raw", "`raw` is an empty message") }
        var content = MessageBuilder.canonicalLineBreaks(octets)
        if !content.suffix(2).elementsEqual([0x0D, 0x0A]) { content += [0x0D, 0x0A] }

        // Every line, without its CRLF.
        var lines: [Range<Int>] = []
        var start = 0
        for i in content.indices where content[i] == 0x0A {
            lines.append(start..<(i - 1))
            start = i + 1
        }
        for (number, line) in lines.enumerated() where line.count > 998 {
            throw .invalidField("raw", "line \(number + 1) of `raw` is \(line.count) octets long; at most 998 are allowed (RFC 5322 §2.1.1)")
        }

        // The header section: fields (name and line numbers) up to the first empty line.
        var fields: [(name: String, lines: ClosedRange<Int>)] = []
        for (number, line) in lines.enumerated() {
            let text = content[line]
            if text.isEmpty { break }
            if text.contains(where: { $0 >= 0x80 }) {
                throw .invalidField("raw", "line \(number + 1) of `raw`'s header has non-ASCII octets, which need SMTPUTF8 (RFC 6532); not supported yet")
            }
            if text.first == 0x20 || text.first == 0x09 {
                guard let last = fields.popLast() else {
                    throw .invalidField("raw", "`raw` starts with a continuation line, not a header field")
                }
                fields.append((last.name, last.lines.lowerBound...number))
                continue
            }
            guard let colon = text.firstIndex(of: 0x3A) else {
                throw .invalidField("raw", "line \(number + 1) of `raw` is neither a header field `name: value` nor the empty line that ends the header (RFC 5322 §2.2)")
            }
            var name = text[text.startIndex..<colon]
            while let last = name.last, last == 0x20 || last == 0x09 { name = name.dropLast() }  // obs-optional (§4.5)
            guard !name.isEmpty, name.allSatisfy({ $0 >= 33 && $0 <= 126 }) else {
                throw .invalidField("raw", "line \(number + 1) of `raw` has an invalid header field name (RFC 5322 §3.6.8)")
            }
            fields.append((String(decoding: name, as: UTF8.self).lowercased(), number...number))
        }
        guard fields.contains(where: { $0.name == "from" }) else {
            throw .missingField("raw", "`raw` has no From: field (RFC 5322 §3.6 requires one)")
        }
        let existingID = fields.first { $0.name == "message-id" }.map { field in
            let octets = field.lines.flatMap { Array(content[lines[$0]]) }
            let value = octets[(octets.firstIndex(of: 0x3A)! + 1)...]
            return String(decoding: value, as: UTF8.self).trimmingCharacters(in: .whitespaces)
        }

        let bcc = fields.filter { $0.name == "bcc" }.map(\.lines)
        if !bcc.isEmpty {
            var kept: [UInt8] = []
            kept.reserveCapacity(content.count)
            var next = 0
            for range in bcc {
                let from = lines[range.lowerBound].lowerBound
                let through = lines[range.upperBound].upperBound + 2  // with its CRLF
                kept += content[next..<from]
                next = through
            }
            kept += content[next...]
            content = kept
        }
        let fixed = SubmissionFixups.apply(to: content, messageID: messageID, date: date)
        return (fixed.content, existingID ?? messageID)
    }
}
