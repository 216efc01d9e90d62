import Foundation

/// The service extensions a server advertised in its EHLO reply (RFC 5321 §4.1.1.1).
public struct RemoteSMTPCapabilities: Sendable, Equatable {
    /// PIPELINING (RFC 2920).
    public var pipelining = false
    /// 8BITMIME (RFC 6152).
    public var eightBitMIME = false
    /// SIZE (RFC 1870): nil when not advertised; 0 when advertised without a fixed limit;
    /// otherwise the largest message in octets.
    public var size: Int? = nil
    /// ENHANCEDSTATUSCODES (RFC 2034).
    public var enhancedStatusCodes = false
    /// STARTTLS (RFC 3207).
    public var startTLS = false
    /// SMTPUTF8 (RFC 6531).
    public var smtpUTF8 = false
    /// CHUNKING, the BDAT command (RFC 3030).
    public var chunking = false

    /// No extensions (what a HELO session has).
    public init() {}

    /// Reads the keywords from the second and later lines of a 250 EHLO reply.
    public init(ehloReply: SMTPReply) {
        for line in ehloReply.lines.dropFirst() {
            let words = line.split(separator: " ", omittingEmptySubsequences: true)
            guard let keyword = words.first?.uppercased() else { continue }
            switch keyword {
            case "PIPELINING": pipelining = true
            case "8BITMIME": eightBitMIME = true
            case "SIZE": size = words.count > 1 ? (Int(words[1]).map { max(0, $0) } ?? 0) : 0
            case "ENHANCEDSTATUSCODES": enhancedStatusCodes = true
            case "STARTTLS": startTLS = true
            case "SMTPUTF8": smtpUTF8 = true
            case "CHUNKING": chunking = true
            default: break
            }
        }
    }
}
