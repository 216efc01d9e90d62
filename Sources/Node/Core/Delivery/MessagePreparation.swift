import Foundation
import HatoDKIM
import HatoSupport
import SMTPCore

/// What the node knows about a message's content before sending it.
public struct MessageAnalysis: Sendable {
    /// The content with every line ending made CRLF and a final CRLF (RFC 5321 §2.3.8).
    public let bytes: [UInt8]
    /// Whether the header section has octets ≥ 0x80 (UTF-8 header fields need SMTPUTF8, RFC 6532).
    public let headers8Bit: Bool
    /// Whether the body has octets ≥ 0x80.
    public let body8Bit: Bool
    /// The longest line in octets, CRLF excluded.
    public let longestLine: Int

    /// Analyses `content` as stored by the coordinator.
    ///
    /// Content that already has CRLF line endings (what the coordinator stores) is used as it
    /// is, without a copy; the traits come from one pass over raw memory. The header section
    /// is every line before the first empty one, as `ParsedMessage` splits it.
    public init(_ content: [UInt8]) {
        bytes = MessageText.hasCanonicalLineEndings(content) ? content : MessageText.canonicalLineEndings(content)
        var headers8 = false, body8 = false, longest = 0
        bytes.withUnsafeBufferPointer { p in
            let n = p.count
            var inHeader = true
            var lineStart = 0
            // Line by line: `memchr` finds the LF; the 8-bit test reads eight octets at a time
            // and stops once the section in question is known to be 8-bit.
            while lineStart < n {
                let lf = ByteScan.index(of: 0x0A, in: p, from: lineStart)
                let end = lf ?? n
                if inHeader ? !headers8 : !body8 {
                    var k = lineStart
                    var high = false
                    while k + 8 <= end {
                        if ByteScan.hasHighBit(ByteScan.load(p, k)) { high = true; break }
                        k += 8
                    }
                    if !high {
                        while k < end { if p[k] >= 0x80 { high = true; break }; k += 1 }
                    }
                    if high { if inHeader { headers8 = true } else { body8 = true } }
                }
                guard let lf else {
                    longest = max(longest, n - lineStart)
                    break
                }
                let length = lf - lineStart - (lf > lineStart && p[lf - 1] == 0x0D ? 1 : 0)
                if length > longest { longest = length }
                if inHeader && length == 0 { inHeader = false }
                lineStart = lf + 1
            }
        }
        headers8Bit = headers8
        body8Bit = body8
        longestLine = longest
    }
}

/// The exact bytes to send to one server, and what the transaction needs to know about them.
public struct PreparedMessage: Sendable {
    /// The message as it goes on the wire before dot-stuffing: converted if needed, then signed.
    public let bytes: [UInt8]
    /// Size and 8-bit/UTF-8 traits of `bytes`.
    public let traits: SMTPMessageTraits
    /// Whether 8-bit content was converted to 7-bit MIME for a server without 8BITMIME.
    public let converted: Bool
    /// The DKIM signatures added, as `domain/selector/algorithm`.
    public let signatures: [String]
}

/// Why a message cannot be prepared for a server.
public struct PreparationFailure: Error, Sendable, Equatable {
    /// The outcome for every recipient: a synthetic 5yz (bounce) or 4yz (retry) reply with its
    /// enhanced status code and what went wrong.
    public let reply: DeliveryStatus

    /// A failure from its status.
    public init(_ reply: DeliveryStatus) { self.reply = reply }

    /// Whether the failure is permanent (bounce) or temporary (retry).
    public var permanent: Bool { reply.code.isPermanent }
}

/// Turns stored content into the bytes for one server: CRLF line ends, 8-bit → 7-bit MIME
/// when the server lacks 8BITMIME (RFC 6152 §3), then DKIM signatures over exactly those bytes.
///
/// Lines over 998 octets (RFC 5322 §2.1.1) are rejected at submission (`550 5.6.0`, see
/// `DataDecoder`); the node never sends one: content that still has such a line fails with
/// `554 5.6.0` here rather than being cut or re-encoded after signing.
public struct MessagePreparer: Sendable {
    /// The DKIM keys of cluster.yml `dkim:` (empty: only tenant keys sign).
    public let dkim: DKIMSignerSet
    /// The tenants' keys from the coordinator (`signing_keys`), nil for none: for a domain that
    /// has tenant keys they sign instead of `dkim` keys of that domain.
    public let tenantKeys: TenantSigningKeys?
    /// The signature time source.
    public let clock: any WallClock

    /// - Parameters:
    ///   - dkim: the signers, chosen per message by its From domain.
    ///   - tenantKeys: the tenants' keys, asked first for each domain.
    ///   - clock: the time for `t=`.
    public init(dkim: DKIMSignerSet = DKIMSignerSet([]), tenantKeys: TenantSigningKeys? = nil, clock: any WallClock = SystemClock()) {
        self.dkim = dkim
        self.tenantKeys = tenantKeys
        self.clock = clock
    }

    /// Prepares the content for a server with the given capabilities.
    /// - Parameters:
    ///   - analysis: the content.
    ///   - eightBitMIME: whether the server offers 8BITMIME.
    ///   - reversePath: the envelope sender: its domain picks tenant keys for a message without
    ///     a single From address.
    /// - Returns: the bytes to send, or a failure for every recipient.
    public func prepare(_ analysis: MessageAnalysis, eightBitMIME: Bool, reversePath: String = "") -> Result<PreparedMessage, PreparationFailure> {
        if analysis.longestLine > MessageText.maxLineLength {
            return .failure(PreparationFailure(.localFailure(554, 6, 0,
                                               "message has a line of \(analysis.longestLine) octets; RFC 5322 §2.1.1 allows 998")))
        }
        var bytes = analysis.bytes
        var converted = false
        if analysis.body8Bit && !eightBitMIME {
            guard let downgraded = MIMEDowngrade.convert(bytes) else {
                return .failure(PreparationFailure(.localFailure(554, 6, 3,
                                                   "the server does not offer 8BITMIME and the 8-bit content cannot be converted to 7-bit MIME")))
            }
            bytes = downgraded
            converted = true
        }
        var signatures: [String] = []
        do {
            let fallback = reversePath.lastIndex(of: "@").map { String(reversePath[reversePath.index(after: $0)...]).lowercased() }
            // Without tenant keys the message is not parsed for them (no cost per message when
            // the cluster has no tenants, or only cluster.yml keys).
            let tenants = tenantKeys.flatMap { $0.isEmpty ? nil : $0 }
            (bytes, signatures) = try dkim.sign(bytes, time: clock.now(), overriding: tenants.map { keys in { keys.signers(forDomain: $0) } },
                                                fallbackDomain: fallback)
        } catch {
            return .failure(PreparationFailure(.localDeferral(3, 0, "DKIM signing failed: \(error)")))
        }
        // Unchanged content keeps the analysis it came with; converted or signed content is analysed again.
        let final = converted || !signatures.isEmpty ? MessageAnalysis(bytes) : analysis
        if final.longestLine > MessageText.maxLineLength {
            return .failure(PreparationFailure(.localFailure(554, 6, 0, "message has a line longer than 998 octets")))
        }
        let traits = SMTPMessageTraits(size: bytes.count, has8Bit: final.headers8Bit || final.body8Bit, needsSMTPUTF8: final.headers8Bit)
        return .success(PreparedMessage(bytes: bytes, traits: traits, converted: converted, signatures: signatures))
    }
}

/// 8-bit → 7-bit MIME conversion (RFC 6152 §3, RFC 2045 §6): every 8-bit leaf part is
/// re-encoded, `text/*` as quoted-printable and everything else as base64; multipart bodies
/// and `message/rfc822` parts are converted part by part. Header fields are never changed
/// except `Content-Transfer-Encoding` (and, on a message that had no MIME fields, `MIME-Version`
/// and `Content-Type` are added). Returns nil when the content cannot be converted: 8-bit
/// header fields, 8-bit text outside parts, `message/*` other than rfc822, an already
/// encoded part with raw 8-bit octets, or nesting deeper than 20.
public enum MIMEDowngrade {
    /// Converts a whole message (header section and body).
    public static func convert(_ message: [UInt8]) -> [UInt8]? {
        convertEntity(ParsedMessage(message), defaultType: "text/plain", depth: 0, topLevel: true)?.bytes
    }

    private static func convertEntity(_ entity: ParsedMessage, defaultType: String, depth: Int, topLevel: Bool) -> ParsedMessage? {
        guard depth <= 20 else { return nil }
        guard entity.body.contains(where: { $0 >= 0x80 }) else { return entity }
        guard !entity.fields.contains(where: { $0.raw.contains { $0 >= 0x80 } }) else { return nil }
        let contentType = entity.lastValue("content-type")
        let (type, params) = parseContentType(contentType ?? defaultType)
        if type.hasPrefix("multipart/") {
            guard let boundary = params["boundary"], !boundary.isEmpty else { return nil }
            guard let body = convertMultipart(entity.body, boundary: boundary,
                                              defaultType: type == "multipart/digest" ? "message/rfc822" : "text/plain", depth: depth) else { return nil }
            var out = entity
            out.body = body
            return out
        }
        if type == "message/rfc822" {
            guard let inner = convertEntity(ParsedMessage(entity.body), defaultType: "text/plain", depth: depth + 1, topLevel: false) else { return nil }
            var out = entity
            out.body = inner.bytes
            return out
        }
        if type.hasPrefix("message/") { return nil }
        let cte = (entity.lastValue("content-transfer-encoding") ?? "7bit").lowercased()
        guard ["7bit", "8bit", "binary"].contains(cte) else { return nil }
        var out = entity
        let encoding: String
        if type.hasPrefix("text/") {
            out.body = quotedPrintable(entity.body)
            encoding = "quoted-printable"
        } else {
            out.body = base64Lines(entity.body)
            encoding = "base64"
        }
        out.fields.removeAll { $0.name.lowercased() == "content-transfer-encoding" }
        if topLevel && entity.lastValue("mime-version") == nil {
            out.fields.append(MessageHeaderField(name: "MIME-Version", raw: Array("MIME-Version: 1.0\r\n".utf8)))
        }
        if contentType == nil {
            let charset = String(validating: entity.body, as: UTF8.self) != nil ? "utf-8" : "unknown-8bit"
            out.fields.append(MessageHeaderField(name: "Content-Type", raw: Array("Content-Type: text/plain; charset=\(charset)\r\n".utf8)))
        }
        out.fields.append(MessageHeaderField(name: "Content-Transfer-Encoding", raw: Array("Content-Transfer-Encoding: \(encoding)\r\n".utf8)))
        out.hasSeparator = true
        return out
    }

    /// Converts each part between `--boundary` delimiter lines (RFC 2046 §5.1.1); the preamble and
    /// epilogue must be 7-bit.
    private static func convertMultipart(_ body: [UInt8], boundary: String, defaultType: String, depth: Int) -> [UInt8]? {
        let delimiter = Array("--\(boundary)".utf8)
        // Find delimiter lines: (start of line, end of line incl. CRLF, isClose).
        var lines: [(start: Int, end: Int, close: Bool)] = []
        var i = 0
        let n = body.count
        while i < n {
            let lineEnd = (body[i..<n].firstIndex(of: 0x0A).map { $0 + 1 }) ?? n
            if lineEnd - i >= delimiter.count, body[i..<(i + delimiter.count)].elementsEqual(delimiter) {
                let rest = body[(i + delimiter.count)..<lineEnd]
                let close = rest.starts(with: [0x2D, 0x2D])
                let tail = close ? rest.dropFirst(2) : rest
                if tail.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D || $0 == 0x0A }) {
                    lines.append((i, lineEnd, close))
                }
            }
            i = lineEnd
        }
        guard let first = lines.first else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(body.count * 4 / 3 + 256)
        // Preamble: everything before the first delimiter.
        let preamble = body[0..<first.start]
        guard !preamble.contains(where: { $0 >= 0x80 }) else { return nil }
        out.append(contentsOf: preamble)
        for (k, line) in lines.enumerated() {
            out.append(contentsOf: body[line.start..<line.end])
            if line.close {
                let epilogue = body[line.end..<n]
                guard !epilogue.contains(where: { $0 >= 0x80 }) else { return nil }
                out.append(contentsOf: epilogue)
                return out
            }
            // The part runs to the CRLF that precedes the next delimiter line.
            let nextStart = k + 1 < lines.count ? lines[k + 1].start : n
            var partEnd = nextStart
            if k + 1 < lines.count, partEnd >= line.end + 2, body[partEnd - 2] == 0x0D, body[partEnd - 1] == 0x0A { partEnd -= 2 }
            let part = Array(body[line.end..<max(line.end, partEnd)])
            guard let converted = convertEntity(ParsedMessage(part), defaultType: defaultType, depth: depth + 1, topLevel: false) else { return nil }
            var partBytes = converted.bytes
            // Keep the CRLF that belongs to the next delimiter; `bytes` may end in one already.
            if partBytes.suffix(2) == [0x0D, 0x0A], !(part.suffix(2) == [0x0D, 0x0A]) { partBytes.removeLast(2) }
            out.append(contentsOf: partBytes)
            out.append(contentsOf: body[max(line.end, partEnd)..<nextStart])
        }
        // No closing delimiter: keep what followed the last part.
        return out
    }

    /// `type/subtype` (lowercase) and the parameters (names lowercase, quotes removed).
    static func parseContentType(_ value: String) -> (String, [String: String]) {
        let pieces = value.split(separator: ";", omittingEmptySubsequences: false)
        let type = pieces.first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() } ?? "text/plain"
        var params: [String: String] = [:]
        for p in pieces.dropFirst() {
            guard let eq = p.firstIndex(of: "=") else { continue }
            let name = p[..<eq].trimmingCharacters(in: .whitespaces).lowercased()
            var v = p[p.index(after: eq)...].trimmingCharacters(in: .whitespaces)
            if v.hasPrefix("\""), v.hasSuffix("\""), v.count >= 2 { v = String(v.dropFirst().dropLast()) }
            params[name] = v
        }
        return (type.isEmpty ? "text/plain" : type, params)
    }

    /// Quoted-printable (RFC 2045 §6.7): CRLF stay hard line breaks; soft breaks keep lines ≤ 76.
    static func quotedPrintable(_ body: [UInt8]) -> [UInt8] {
        let hex = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(body.count * 3 / 2)
        var column = 0
        func emit(_ token: [UInt8]) {
            if column + token.count > 75 {
                out.append(contentsOf: [0x3D, 0x0D, 0x0A])
                column = 0
            }
            out.append(contentsOf: token)
            column += token.count
        }
        var i = 0
        let n = body.count
        while i < n {
            let b = body[i]
            if b == 0x0D, i + 1 < n, body[i + 1] == 0x0A {
                out.append(contentsOf: [0x0D, 0x0A])
                column = 0
                i += 2
                continue
            }
            let atLineEnd = i + 1 >= n || (body[i + 1] == 0x0D && i + 2 < n && body[i + 2] == 0x0A)
            if (b >= 33 && b <= 126 && b != 0x3D) || ((b == 0x20 || b == 0x09) && !atLineEnd) {
                emit([b])
            } else {
                emit([0x3D, hex[Int(b >> 4)], hex[Int(b & 0x0F)]])
            }
            i += 1
        }
        return out
    }

    /// Base64 in lines of 76 characters, CRLF-terminated (RFC 2045 §6.8).
    static func base64Lines(_ body: [UInt8]) -> [UInt8] {
        let encoded = Array(Data(body).base64EncodedString().utf8)
        var out: [UInt8] = []
        out.reserveCapacity(encoded.count + encoded.count / 38 + 2)
        var i = 0
        while i < encoded.count {
            let end = min(encoded.count, i + 76)
            out.append(contentsOf: encoded[i..<end])
            out.append(contentsOf: [0x0D, 0x0A])
            i = end
        }
        return out
    }
}
