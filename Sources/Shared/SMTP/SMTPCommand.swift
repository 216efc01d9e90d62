

/// One parsed SMTP command line (RFC 5321 §4.1.1).
///
/// Verbs are case-insensitive (RFC 5321 §2.4). `EXPN` is recognised and answered
/// `502 5.5.1` by the session.
public enum SMTPCommand: Sendable, Equatable {
    /// `EHLO domain` (RFC 5321 §4.1.1.1); the argument is a domain or address literal.
    case ehlo(String)
    /// `HELO domain` (RFC 5321 §4.1.1.1).
    case helo(String)
    /// `MAIL FROM:<reverse-path> [params]` (RFC 5321 §4.1.1.2).
    case mail(ReversePath, MailParameters)
    /// `RCPT TO:<forward-path> [params]` (RFC 5321 §4.1.1.3; NOTIFY and ORCPT, RFC 3461).
    case rcpt(ForwardPath, RecipientParameters)
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
    /// `STARTTLS` (RFC 3207 §4).
    case starttls
    /// `AUTH mechanism [initial-response]` (RFC 4954 §4): the mechanism upper-cased; the
    /// initial response as sent (base64, or `=` for an empty one), not yet decoded.
    case auth(mechanism: String, initialResponse: String?)
    /// `BDAT chunk-size [LAST]` (RFC 3030 §2): `size` octets of content follow the line.
    case bdat(size: Int, last: Bool)

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
    /// - Parameters:
    ///   - line: the command octets.
    ///   - smtputf8: the current transaction declared `SMTPUTF8` (RFC 6531 §3.4), so a RCPT
    ///     may carry a UTF-8 address. MAIL decides this from its own parameters.
    ///   - authParameter: whether the AUTH extension is advertised in this session, so `MAIL`
    ///     may carry `AUTH=` (RFC 4954 §5). When it is not, `AUTH=` is an unrecognised
    ///     parameter: `555 5.5.4` (RFC 5321 §4.1.1.11, §4.1.2: an extension's parameters only
    ///     after its EHLO keyword). Default true.
    /// - Returns: the command, or the reply to send instead.
    public static func parse(_ line: ArraySlice<UInt8>, smtputf8: Bool = false, authParameter: Bool = true) -> Result<SMTPCommand, SMTPReply> {
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
            return parseMail(args, authParameter: authParameter)
        case .rcpt:
            return parseRcpt(args, smtputf8: smtputf8)
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
        case .auth: return parseAuth(args)
        case .bdat: return parseBDAT(args).result
        }
    }

    /// Parses a command given as text (convenience for tests and tools).
    /// - Parameters:
    ///   - line: the command without CRLF.
    ///   - smtputf8: as for `parse(_:smtputf8:authParameter:)`.
    ///   - authParameter: as for `parse(_:smtputf8:authParameter:)`.
    /// - Returns: the command, or the reply to send instead.
    public static func parse(_ line: String, smtputf8: Bool = false, authParameter: Bool = true) -> Result<SMTPCommand, SMTPReply> {
        parse(Array(line.utf8)[...], smtputf8: smtputf8, authParameter: authParameter)
    }

    /// RFC 4422 §3.1 `sasl-mech`: 1 to 20 of upper-case letters, digits, `-`, `_` (matched
    /// case-insensitively here).
    static func isMechanismName(_ bytes: ArraySlice<UInt8>) -> Bool {
        !bytes.isEmpty && bytes.count <= 20
            && bytes.allSatisfy { SMTPAddressSyntax.isLetDig($0) || $0 == 0x2D || $0 == 0x5F }
    }

    /// `AUTH SP sasl-mech [SP initial-response]` (RFC 4954 §4).
    private static func parseAuth(_ args: ArraySlice<UInt8>) -> Result<SMTPCommand, SMTPReply> {
        let parts = args.split(separator: 0x20)
        guard (1...2).contains(parts.count), isMechanismName(parts[0]) else {
            return .failure(SMTPReply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]"))
        }
        let mechanism = String(decoding: parts[0], as: UTF8.self).uppercased()
        let initial = parts.count == 2 ? String(decoding: parts[1], as: UTF8.self) : nil
        return .success(.auth(mechanism: mechanism, initialResponse: initial))
    }

    /// The most digits a BDAT chunk size may have (fits in `Int` with room to add).
    static let maxChunkSizeDigits = 18

    /// `BDAT SP chunk-size [SP end-marker]` (RFC 3030 §2). Also reports the chunk size when
    /// it parsed but the rest did not, so the session can still consume the chunk and stay in
    /// sync ("a rejected BDAT still consumes its chunk").
    /// - Returns: the size when known, and the command or the reply to send.
    static func parseBDAT(_ args: ArraySlice<UInt8>) -> (size: Int?, result: Result<SMTPCommand, SMTPReply>) {
        let syntax = SMTPReply(501, "5.5.4", "Syntax: BDAT chunk-size [LAST]")
        let parts = args.split(separator: 0x20)
        guard let first = parts.first, first.count <= maxChunkSizeDigits, first.allSatisfy(SMTPAddressSyntax.isDigit) else {
            return (nil, .failure(syntax))
        }
        let size = first.reduce(0) { $0 * 10 + Int($1 - 0x30) }
        switch parts.count {
        case 1:
            return (size, .success(.bdat(size: size, last: false)))
        case 2 where SMTPAddressSyntax.equalsIgnoringCase(parts[1], "LAST"):
            return (size, .success(.bdat(size: size, last: true)))
        default:
            return (size, .failure(syntax))
        }
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

    /// RFC 5321 §4.1.2 `esmtp-param = esmtp-keyword ["=" esmtp-value]`; with `utf8`,
    /// RFC 6531 §3.3 `esmtp-value =/ UTF8-non-ascii` (well-formed UTF-8 only).
    private static func parseParameters(_ rest: ArraySlice<UInt8>, utf8: Bool = false) -> Result<[(keyword: String, value: String?)], SMTPReply> {
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
                guard !v.isEmpty, v.allSatisfy({ ($0 >= 33 && $0 <= 126 && $0 != 0x3D) || (utf8 && $0 >= 0x80) }) else { return .failure(bad) }
                guard let text = String(validating: v, as: UTF8.self) else { return .failure(bad) }
                value = text
            }
            out.append((String(decoding: keyword, as: UTF8.self).uppercased(), value))
        }
        return .success(out)
    }

    /// RFC 3461 §4 `xtext = *( xchar / hexchar )`: `!`…`~` except `+` and `=`, and `+XX`
    /// escapes (upper- or lower-case hex accepted).
    static func isXText(_ text: String) -> Bool {
        let b = Array(text.utf8)
        var i = 0
        while i < b.count {
            if b[i] == 0x2B {
                guard i + 2 < b.count, SMTPAddressSyntax.isHex(b[i + 1]), SMTPAddressSyntax.isHex(b[i + 2]) else { return false }
                i += 3
            } else {
                guard b[i] >= 0x21, b[i] <= 0x7E, b[i] != 0x3D else { return false }
                i += 1
            }
        }
        return true
    }

    private static func parseMail(_ args: ArraySlice<UInt8>, authParameter: Bool) -> Result<SMTPCommand, SMTPReply> {
        guard let (pathBytes, rest) = splitPath(args, keyword: "FROM:") else {
            return .failure(SMTPReply(501, "5.5.4", "Syntax: MAIL FROM:<address>"))
        }
        // The path is checked first (its errors name the sender), but whether it may hold UTF-8
        // depends on the SMTPUTF8 parameter (RFC 6531 §3.4).
        let parsedParameters = parseParameters(rest)
        var declaresUTF8 = false
        if case .success(let p) = parsedParameters { declaresUTF8 = p.contains { $0.keyword == "SMTPUTF8" } }
        let reversePath: ReversePath
        switch SMTPAddressSyntax.parsePath(pathBytes, allowNull: true, allowPostmaster: false, utf8: declaresUTF8) {
        case .success(.mailbox(let mailbox)): reversePath = .mailbox(mailbox)
        case .success: reversePath = .null
        case .failure(.nonASCII): return .failure(declaresUTF8 ? SMTPReply(553, "5.6.7", "Sender address is not valid UTF-8") : nonASCIIReply)
        case .failure(.tooLong): return .failure(SMTPReply(501, "5.1.7", "Sender address too long"))
        case .failure(.syntax): return .failure(SMTPReply(501, "5.1.7", "Bad sender address syntax"))
        }
        let params: [(keyword: String, value: String?)]
        switch parsedParameters {
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
            case "SMTPUTF8":
                // RFC 6531 §3.4: no value.
                guard value == nil else { return .failure(SMTPReply(501, "5.5.4", "SMTPUTF8 takes no value")) }
                result.smtputf8 = true
            case "RET":
                switch value?.uppercased() {
                case "FULL": result.ret = .full
                case "HDRS": result.ret = .headers
                default: return .failure(SMTPReply(501, "5.5.4", "Bad RET parameter (FULL or HDRS)"))
                }
            case "ENVID":
                // RFC 3461 §4.4: xtext, at most 100 characters.
                guard let value, value.utf8.count <= 100, isXText(value) else {
                    return .failure(SMTPReply(501, "5.5.4", "Bad ENVID parameter"))
                }
                result.envelopeID = value
            case "AUTH":
                // RFC 4954 §5 defines AUTH= only where AUTH is advertised (§3); elsewhere it is an
                // unrecognised parameter (RFC 5321 §4.1.1.11), whatever its value.
                guard authParameter else {
                    return .failure(SMTPReply(555, "5.5.4", "Unsupported parameter AUTH (AUTH is not offered in this session)"))
                }
                // RFC 4954 §5: AUTH=<> or AUTH=xtext(mailbox).
                guard let value, value == "<>" || (value.utf8.count <= 500 && isXText(value)) else {
                    return .failure(SMTPReply(501, "5.5.4", "Bad AUTH parameter"))
                }
                result.auth = value
            default:
                return .failure(SMTPReply(555, "5.5.4", "Unsupported parameter \(keyword)"))
            }
        }
        return .success(.mail(reversePath, result))
    }

    private static func parseRcpt(_ args: ArraySlice<UInt8>, smtputf8: Bool) -> Result<SMTPCommand, SMTPReply> {
        guard let (pathBytes, rest) = splitPath(args, keyword: "TO:") else {
            return .failure(SMTPReply(501, "5.5.4", "Syntax: RCPT TO:<address>"))
        }
        let forwardPath: ForwardPath
        switch SMTPAddressSyntax.parsePath(pathBytes, allowNull: false, allowPostmaster: true, utf8: smtputf8) {
        case .success(.mailbox(let mailbox)): forwardPath = .mailbox(mailbox)
        case .success(.postmaster): forwardPath = .postmaster
        case .success(.null): return .failure(SMTPReply(501, "5.1.3", "Bad recipient address syntax"))
        case .failure(.nonASCII): return .failure(smtputf8 ? SMTPReply(553, "5.6.7", "Recipient address is not valid UTF-8") : nonASCIIReply)
        case .failure(.tooLong): return .failure(SMTPReply(501, "5.1.3", "Recipient address too long"))
        case .failure(.syntax): return .failure(SMTPReply(501, "5.1.3", "Bad recipient address syntax"))
        }
        let params: [(keyword: String, value: String?)]
        switch parseParameters(rest, utf8: smtputf8) {
        case .success(let p): params = p
        case .failure(let reply): return .failure(reply)
        }
        var result = RecipientParameters()
        var seen: Set<String> = []
        for (keyword, value) in params {
            guard seen.insert(keyword).inserted else {
                return .failure(SMTPReply(501, "5.5.4", "Duplicate \(keyword) parameter"))
            }
            switch keyword {
            case "NOTIFY":
                guard let notify = value.flatMap(parseNotify) else {
                    return .failure(SMTPReply(501, "5.5.4", "Bad NOTIFY parameter (NEVER, or SUCCESS,FAILURE,DELAY)"))
                }
                result.notify = notify
            case "ORCPT":
                guard let value, let orcpt = validORCPT(value, smtputf8: smtputf8) else {
                    return .failure(SMTPReply(501, "5.5.4", "Bad ORCPT parameter (addr-type;xtext)"))
                }
                result.originalRecipient = orcpt
            default:
                return .failure(SMTPReply(555, "5.5.4", "Unsupported parameter \(keyword)"))
            }
        }
        return .success(.rcpt(forwardPath, result))
    }

    /// RFC 3461 §4.1: `NEVER` alone, or a comma list of `SUCCESS`, `FAILURE`, `DELAY`.
    private static func parseNotify(_ value: String) -> DSNNotify? {
        let items = value.uppercased().split(separator: ",", omittingEmptySubsequences: false)
        if items == ["NEVER"] { return .never }
        var success = false, failure = false, delay = false
        for item in items {
            switch item {
            case "SUCCESS": success = true
            case "FAILURE": failure = true
            case "DELAY": delay = true
            default: return nil
            }
        }
        return .on(success: success, failure: failure, delay: delay)
    }

    /// RFC 3461 §4.2 `ORCPT=addr-type ";" xtext`, at most 500 octets; `addr-type` is an atom
    /// (`rfc822`, or RFC 6533's `utf-8`, whose value may hold raw UTF-8 under SMTPUTF8).
    private static func validORCPT(_ value: String, smtputf8: Bool) -> String? {
        guard value.utf8.count <= 500, let semicolon = value.firstIndex(of: ";") else { return nil }
        let type = value[..<semicolon]
        let address = String(value[value.index(after: semicolon)...])
        guard !type.isEmpty, type.utf8.allSatisfy({ SMTPAddressSyntax.isAtext($0) }), !address.isEmpty else { return nil }
        if type.lowercased() == "utf-8" && smtputf8 {
            // utf-8-addr-xtext / unitext (RFC 6533 §3): printable ASCII except "+", "=" and "\"
            // escapes left as sent, plus UTF-8; no controls, no spaces.
            guard address.unicodeScalars.allSatisfy({ ($0.value > 0x20 && $0.value < 0x7F && $0 != "+" && $0 != "=") || $0.value >= 0x80 }) else { return nil }
            return value
        }
        return isXText(address) ? value : nil
    }

    /// RFC 6531 §3.5 / RFC 3463 5.6.7: a UTF-8 address without `SMTPUTF8` on MAIL.
    static let nonASCIIReply = SMTPReply(553, "5.6.7", "Must declare SMTPUTF8 to send unicode address")
}
