import Foundation

/// Base64 (RFC 4648 §4) as MIME uses it: encoded bodies in lines of 76 characters
/// (RFC 2045 §6.8), and a lenient reader for base64 that clients send in JSON.
public enum Base64Body {
    /// The length of an encoded body line, in characters, without its CRLF (RFC 2045 §6.8).
    public static let lineLength = 76

    /// Encodes octets.
    /// - Parameters:
    ///   - octets: the data.
    ///   - lineLength: characters per line, lines joined with CRLF (no CRLF after the last);
    ///     nil for one line.
    /// - Returns: the base64 text.
    public static func encode(_ octets: [UInt8], lineLength: Int? = Base64Body.lineLength) -> String {
        let text = Data(octets).base64EncodedString()
        guard let lineLength, text.utf8.count > lineLength else { return text }
        let ascii = Array(text.utf8)
        var out: [UInt8] = []
        out.reserveCapacity(ascii.count + ascii.count / lineLength * 2 + 2)
        var start = 0
        while start < ascii.count {
            if start > 0 { out += [0x0D, 0x0A] }
            let end = min(start + lineLength, ascii.count)
            out += ascii[start..<end]
            start = end
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes base64 text, ignoring spaces, tabs and line breaks; padding is optional.
    /// - Parameter text: the base64 text (standard alphabet, RFC 4648 §4).
    /// - Returns: the octets, or nil when the text is not base64.
    public static func decode(_ text: String) -> [UInt8]? {
        var ascii = Array(text.utf8)
        ascii.removeAll { $0 == 0x20 || $0 == 0x09 || $0 == 0x0D || $0 == 0x0A }
        switch ascii.count % 4 {
        case 2: ascii += [0x3D, 0x3D]
        case 3: ascii += [0x3D]
        case 1: return nil
        default: break
        }
        return Data(base64Encoded: Data(ascii)).map { [UInt8]($0) }
    }
}
