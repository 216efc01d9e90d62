import Foundation

/// The unfolded value of the first header field `name` (case-insensitive) in `message`:
/// the text after `name:` up to the CRLF that is not followed by folding white space
/// (RFC 5322 §2.2, §2.2.3), with leading white space removed. Only the header section
/// (up to the first empty line) is searched.
/// - Returns: nil when the field is absent.
public func headerFieldValue(_ name: String, in message: String) -> String? {
    let header = message.components(separatedBy: "\r\n\r\n").first ?? ""
    var fields: [String] = []
    for line in header.components(separatedBy: "\r\n") {
        if let first = line.first, first == " " || first == "\t", !fields.isEmpty {
            fields[fields.count - 1] += line
        } else {
            fields.append(line)
        }
    }
    for field in fields {
        guard let colon = field.firstIndex(of: ":") else { continue }
        if field[..<colon].lowercased() == name.lowercased() {
            return String(field[field.index(after: colon)...].drop { $0 == " " || $0 == "\t" })
        }
    }
    return nil
}
