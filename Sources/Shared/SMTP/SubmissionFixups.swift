import Foundation

/// The message fix-ups a submission server makes (RFC 6409 §8): a missing `Date:`
/// (§8.3) or `Message-ID:` (§8.3) is added to the header section. Nothing else in the
/// content is changed.
public enum SubmissionFixups {
    /// What `apply` did.
    public struct Result: Sendable, Equatable {
        /// The content, with any added fields.
        public var content: [UInt8]
        /// The names of the fields added, in order (`Date`, `Message-ID`).
        public var added: [String]
    }

    /// Adds `Date:` and `Message-ID:` when the header section has none.
    ///
    /// The header section is the run of lines before the first empty line (RFC 5322 §2.1);
    /// a line that is neither a header field (`name:` with printable name octets) nor a folded
    /// continuation ends it early, and then an empty line is inserted after the added fields so
    /// that line stays in the body. Added fields go at the end of the header section, as
    /// Postfix's cleanup does.
    /// - Parameters:
    ///   - content: the message with CRLF line endings.
    ///   - messageID: the `Message-ID` to add, with angle brackets (`<id@host>`).
    ///   - date: the `Date` to add (RFC 5322 §3.3, formatted in UTC).
    /// - Returns: the content and what was added.
    public static func apply(to content: [UInt8], messageID: String, date: Date) -> Result {
        let scan = scanHeader(content)
        var fields: [UInt8] = []
        var added: [String] = []
        if !scan.names.contains("date") {
            fields += Array("Date: \(ReceivedHeader.rfc5322Date(date))\r\n".utf8)
            added.append("Date")
        }
        if !scan.names.contains("message-id") {
            fields += Array("Message-ID: \(messageID)\r\n".utf8)
            added.append("Message-ID")
        }
        guard !added.isEmpty else { return Result(content: content, added: []) }
        if !scan.terminated { fields += [0x0D, 0x0A] }
        var out: [UInt8] = []
        out.reserveCapacity(content.count + fields.count)
        out += content[..<scan.end]
        out += fields
        out += content[scan.end...]
        return Result(content: out, added: added)
    }

    /// The lower-cased field names of the header section, where it ends (the offset of the
    /// empty line or of the first non-header line), and whether an empty line ends it.
    static func scanHeader(_ content: [UInt8]) -> (names: Set<String>, end: Int, terminated: Bool) {
        var names: Set<String> = []
        var start = 0
        var sawField = false
        while start < content.count {
            let lf = content[start...].firstIndex(of: 0x0A) ?? content.count
            var line = content[start..<lf]
            if line.last == 0x0D { line = line.dropLast() }
            if line.isEmpty { return (names, start, true) }
            if line.first == 0x20 || line.first == 0x09 {
                if !sawField { return (names, start, false) }  // continuation with nothing to continue
            } else if let colon = line.firstIndex(of: 0x3A),
                      case let name = trimTrailingWhitespace(line[line.startIndex..<colon]),  // obs-optional: WSP before ":"
                      !name.isEmpty, name.allSatisfy({ $0 >= 33 && $0 <= 126 }) {
                names.insert(String(decoding: name, as: UTF8.self).lowercased())
                sawField = true
            } else {
                return (names, start, false)
            }
            start = lf + 1
        }
        return (names, content.count, false)
    }

    private static func trimTrailingWhitespace(_ bytes: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        var end = bytes.endIndex
        while end > bytes.startIndex, bytes[end - 1] == 0x20 || bytes[end - 1] == 0x09 { end -= 1 }
        return bytes[bytes.startIndex..<end]
    }
}
