/// The declared body type of a message (RFC 6152 §2, `BODY=` MAIL parameter).
public enum BodyType: Sendable, Hashable {
    /// `BODY=7BIT`, or no BODY parameter (RFC 6152 §3).
    case sevenBit
    /// `BODY=8BITMIME` (RFC 6152 §2).
    case eightBitMIME
}

/// The ESMTP parameters of `MAIL FROM:` this server understands.
public struct MailParameters: Sendable, Hashable {
    /// `SIZE=n`: the client's size estimate in octets (RFC 1870 §3). Saturates at `Int.max`.
    public var size: Int?
    /// `BODY=7BIT|8BITMIME` (RFC 6152 §2).
    public var body: BodyType?

    /// Creates a parameter set.
    /// - Parameters:
    ///   - size: the declared `SIZE`, if any.
    ///   - body: the declared `BODY`, if any.
    public init(size: Int? = nil, body: BodyType? = nil) {
        self.size = size
        self.body = body
    }
}

/// One parsed SMTP command line (RFC 5321 §4.1.1).
///
/// Verbs are case-insensitive (RFC 5321 §2.4). `STARTTLS`, `AUTH`, `BDAT` and
/// `EXPN` are recognised so the session can answer `502 5.5.1` today and later
/// issues can implement them without touching the parser's callers.
public enum SMTPCommand: Sendable, Equatable {
    /// `EHLO domain` (RFC 5321 §4.1.1.1); the argument is a domain or address literal.
    case ehlo(String)
    /// `HELO domain` (RFC 5321 §4.1.1.1).
    case helo(String)
    /// `MAIL FROM:<reverse-path> [params]` (RFC 5321 §4.1.1.2).
    case mail(ReversePath, MailParameters)
    /// `RCPT TO:<forward-path>` (RFC 5321 §4.1.1.3). No RCPT parameters are supported.
    case rcpt(ForwardPath)
    /// `DATA` (RFC 5321 §4.1.1.4).
    case data
    /// `RSET` (RFC 5321 §4.1.1.5).
    case rset
    /// `VRFY string` (RFC 5321 §4.1.1.6).
    case vrfy(String)
    /// `EXPN` (RFC 5321 §4.1.1.7); not implemented.
    case expn
    /// `HELP [string]` (RFC 5321 §4.1.1.8).
    case help
    /// `NOOP [string]` (RFC 5321 §4.1.1.9).
    case noop
    /// `QUIT` (RFC 5321 §4.1.1.10).
    case quit
    /// `STARTTLS` (RFC 3207); not implemented yet.
    case starttls
    /// `AUTH mechanism [initial-response]` (RFC 4954) with its raw arguments; not implemented yet.
    case auth(String)
    /// `BDAT size [LAST]` (RFC 3030) with its raw arguments; not implemented yet.
    case bdat(String)

    /// The command verbs, for sequence checks made before argument syntax.
    enum Verb: String {
        case ehlo = "EHLO", helo = "HELO", mail = "MAIL", rcpt = "RCPT", data = "DATA", rset = "RSET"
        case vrfy = "VRFY", expn = "EXPN", help = "HELP", noop = "NOOP", quit = "QUIT"
        case starttls = "STARTTLS", auth = "AUTH", bdat = "BDAT"
    }

    /// Splits a line into its verb and the arguments after the separating spaces.
    /// Trailing spaces and tabs are ignored (liberal, RFC 5321 §4.1.1 notes).
    static func split(_ line: ArraySlice<UInt8>) -> (verb: Verb?, arguments: ArraySlice<UInt8>) {
        var end = line.endIndex
        while end > line.startIndex, line[end - 1] == 0x20 || line[end - 1] == 0x09 { end -= 1 }
        let trimmed = line[line.startIndex..<end]
        let verbEnd = trimmed.firstIndex(of: 0x20) ?? trimmed.endIndex
        let verbBytes = trimmed[trimmed.startIndex..<verbEnd]
        var argStart = verbEnd
        while argStart < trimmed.endIndex, trimmed[argStart] == 0x20 { argStart += 1 }
        guard verbBytes.count <= 8, verbBytes.allSatisfy(SMTPAddressSyntax.isAlpha) else {
            return (nil, trimmed[argStart...])
        }
        let name = String(decoding: verbBytes.map { $0 >= 0x61 ? $0 - 0x20 : $0 }, as: UTF8.self)
        return (Verb(rawValue: name), trimmed[argStart...])
    }

    /// Parses one command line given *without* its CRLF.
    ///
    /// The line must already be free of CR, LF and NUL (the session rejects those
    /// with `500 5.5.2`, RFC 5321 §2.3.8). Errors are complete replies:
    /// `500 5.5.1` unknown verb, `501 5.5.4` argument syntax, `501 5.1.7`/`501 5.1.3`
    /// bad sender/recipient address, `553 5.6.7` 8-bit address (no SMTPUTF8, RFC 6531 §3.5),
    /// `555 5.5.4` unsupported MAIL/RCPT parameter (RFC 5321 §4.1.1.11),
    /// `501 5.5.4` malformed or duplicate parameter. Syntax errors are never 4xx
    /// (RFC 5321 §4.2.4).
    /// - Parameter line: the command octets.
    /// - Returns: the command, or the reply to send instead.
    public static func parse(_ line: ArraySlice<UInt8>) -> Result<SMTPCommand, SMTPReply> {
        let (verb, args) = split(line)
        guard let verb else {
            if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) {
                return .failure(SMTPReply(500, "5.5.2", "Error: bad syntax"))
            }
            return .failure(SMTPReply(500, "5.5.1", "Error: command not recognized"))
        }
        switch verb {
        case .ehlo, .helo:
            let domain = args
            guard !domain.isEmpty, domain.count <= SMTPAddressSyntax.maxDomain,
                  SMTPAddressSyntax.isDomainOrLiteral(domain) else {
                return .failure(SMTPReply(501, "5.5.4", "Syntax: \(verb.rawValue) hostname"))
            }
            let name = String(decoding: domain, as: UTF8.self)
            return .success(verb == .ehlo ? .ehlo(name) : .helo(name))
        case .mail:
            return parseMail(args)
        case .rcpt:
            return parseRcpt(args)
        case .data, .rset, .quit, .starttls:
            guard args.isEmpty else { return .failure(SMTPReply(501, "5.5.4", "Syntax: \(verb.rawValue)")) }
            switch verb {
            case .data: return .success(.data)
            case .rset: return .success(.rset)
            case .quit: return .success(.quit)
            default: return .success(.starttls)
            }
        case .vrfy:
            guard !args.isEmpty else { return .failure(SMTPReply(501, "5.5.4", "Syntax: VRFY address")) }
            return .success(.vrfy(String(decoding: args, as: UTF8.self)))
        case .expn: return .success(.expn)
        case .help: return .success(.help)
        case .noop: return .success(.noop)
        case .auth: return .success(.auth(String(decoding: args, as: UTF8.self)))
        case .bdat: return .success(.bdat(String(decoding: args, as: UTF8.self)))
        }
    }

    /// Parses a command given as text (convenience for tests and tools).
    /// - Parameter line: the command without CRLF.
    /// - Returns: the command, or the reply to send instead.
    public static func parse(_ line: String) -> Result<SMTPCommand, SMTPReply> {
        parse(Array(line.utf8)[...])
    }

    /// Splits `FROM:`/`TO:` arguments into the bracketed path and the parameter text.
    /// Tolerates spaces after the colon (liberal; RFC 5321 §4.1.1.2 has none).
    /// - Returns: nil when the keyword is missing; otherwise the path (up to the first
    ///   `>` outside a quoted string, or everything when there is none) and the rest.
    private static func splitPath(_ args: ArraySlice<UInt8>, keyword: String) -> (path: ArraySlice<UInt8>, rest: ArraySlice<UInt8>)? {
        guard SMTPAddressSyntax.hasPrefixIgnoringCase(args, keyword) else { return nil }
        var i = args.startIndex + keyword.utf8.count
        while i < args.endIndex, args[i] == 0x20 { i += 1 }
        let start = i
        var inQuotes = false
        while i < args.endIndex {
            let b = args[i]
            if inQuotes {
                if b == 0x5C { i += 2; continue }
                if b == 0x22 { inQuotes = false }
            } else if b == 0x22 {
                inQuotes = true
            } else if b == 0x3E {
                return (args[start...i], args[(i + 1)...])
            }
            i += 1
        }
        return (args[start...], args[args.endIndex...])
    }

    /// RFC 5321 §4.1.2 `esmtp-param = esmtp-keyword ["=" esmtp-value]`.
    private static func parseParameters(_ rest: ArraySlice<UInt8>) -> Result<[(keyword: String, value: String?)], SMTPReply> {
        let bad = SMTPReply(501, "5.5.4", "Bad parameter syntax")
        if rest.isEmpty { return .success([]) }
        guard rest.first == 0x20 else { return .failure(bad) }
        var out: [(keyword: String, value: String?)] = []
        for token in rest.split(separator: 0x20) {
            let eq = token.firstIndex(of: 0x3D)
            let keyword = token[token.startIndex..<(eq ?? token.endIndex)]
            // esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
            guard let first = keyword.first, SMTPAddressSyntax.isLetDig(first),
                  keyword.allSatisfy({ SMTPAddressSyntax.isLetDig($0) || $0 == 0x2D }) else { return .failure(bad) }
            var value: String? = nil
            if let eq {
                // esmtp-value = 1*(%d33-60 / %d62-126)
                let v = token[(eq + 1)...]
                guard !v.isEmpty, v.allSatisfy({ $0 >= 33 && $0 <= 126 && $0 != 0x3D }) else { return .failure(bad) }
                value = String(decoding: v, as: UTF8.self)
            }
            out.append((String(decoding: keyword, as: UTF8.self).uppercased(), value))
        }
        return .success(out)
    }

    private static func parseMail(_ args: ArraySlice<UInt8>) -> Result<SMTPCommand, SMTPReply> {
        guard let (pathBytes, rest) = splitPath(args, keyword: "FROM:") else {
            return .failure(SMTPReply(501, "5.5.4", "Syntax: MAIL FROM:<address>"))
        }
        let reversePath: ReversePath
        switch SMTPAddressSyntax.parsePath(pathBytes, allowNull: true, allowPostmaster: false) {
        case .success(.mailbox(let mailbox)): reversePath = .mailbox(mailbox)
        case .success: reversePath = .null
        case .failure(.nonASCII): return .failure(nonASCIIReply)
        case .failure(.tooLong): return .failure(SMTPReply(501, "5.1.7", "Sender address too long"))
        case .failure(.syntax): return .failure(SMTPReply(501, "5.1.7", "Bad sender address syntax"))
        }
        let params: [(keyword: String, value: String?)]
        switch parseParameters(rest) {
        case .success(let p): params = p
        case .failure(let reply): return .failure(reply)
        }
        var result = MailParameters()
        var seen: Set<String> = []
        for (keyword, value) in params {
            guard seen.insert(keyword).inserted else {
                return .failure(SMTPReply(501, "5.5.4", "Duplicate \(keyword) parameter"))
            }
            switch keyword {
            case "SIZE":
                // RFC 1870 §3: size-value = 1*20DIGIT.
                guard let value, !value.isEmpty, value.utf8.count <= 20,
                      value.utf8.allSatisfy(SMTPAddressSyntax.isDigit) else {
                    return .failure(SMTPReply(501, "5.5.4", "Bad SIZE parameter"))
                }
                var n = 0
                for digit in value.utf8 {
                    let (m, o1) = n.multipliedReportingOverflow(by: 10)
                    let (s, o2) = m.addingReportingOverflow(Int(digit - 0x30))
                    if o1 || o2 { n = Int.max; break }
                    n = s
                }
                result.size = n
            case "BODY":
                switch value?.uppercased() {
                case "7BIT": result.body = .sevenBit
                case "8BITMIME": result.body = .eightBitMIME
                default: return .failure(SMTPReply(501, "5.5.4", "Unsupported BODY parameter"))
                }
            default:
                return .failure(SMTPReply(555, "5.5.4", "Unsupported parameter \(keyword)"))
            }
        }
        return .success(.mail(reversePath, result))
    }

    private static func parseRcpt(_ args: ArraySlice<UInt8>) -> Result<SMTPCommand, SMTPReply> {
        guard let (pathBytes, rest) = splitPath(args, keyword: "TO:") else {
            return .failure(SMTPReply(501, "5.5.4", "Syntax: RCPT TO:<address>"))
        }
        let forwardPath: ForwardPath
        switch SMTPAddressSyntax.parsePath(pathBytes, allowNull: false, allowPostmaster: true) {
        case .success(.mailbox(let mailbox)): forwardPath = .mailbox(mailbox)
        case .success(.postmaster): forwardPath = .postmaster
        case .success(.null): return .failure(SMTPReply(501, "5.1.3", "Bad recipient address syntax"))
        case .failure(.nonASCII): return .failure(nonASCIIReply)
        case .failure(.tooLong): return .failure(SMTPReply(501, "5.1.3", "Recipient address too long"))
        case .failure(.syntax): return .failure(SMTPReply(501, "5.1.3", "Bad recipient address syntax"))
        }
        switch parseParameters(rest) {
        case .success(let params):
            if let first = params.first {
                return .failure(SMTPReply(555, "5.5.4", "Unsupported parameter \(first.keyword)"))
            }
        case .failure(let reply):
            return .failure(reply)
        }
        return .success(.rcpt(forwardPath))
    }

    /// RFC 6531 §3.5 / RFC 3463 5.6.7: an address needs SMTPUTF8, which is not offered.
    static let nonASCIIReply = SMTPReply(553, "5.6.7", "Must declare SMTPUTF8 to send unicode address")
}
