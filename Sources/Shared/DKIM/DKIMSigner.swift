import Foundation
import HatoCrypto

/// Signs messages for one (domain, selector) with DKIM (RFC 6376 §5, RFC 8463).
///
/// Signing is over the exact bytes that go on the wire: pass the final message (CRLF line
/// ends, after any 8-bit → 7-bit conversion, before dot-stuffing). The signature covers the
/// whole body (no `l=`), carries `t=` and no `x=`, and is returned as a folded
/// `DKIM-Signature:` field to put on top of the message.
public struct DKIMSigner: Sendable {
    /// The default signed header fields (RFC 6376 §5.4.1's recommendations plus list and MIME fields).
    public static let defaultHeaders = [
        "from", "to", "cc", "subject", "date", "message-id", "reply-to", "in-reply-to", "references",
        "mime-version", "content-type", "content-transfer-encoding", "list-unsubscribe", "list-unsubscribe-post",
    ]

    /// The signing domain (`d=`), lowercase.
    public let domain: String
    /// The selector (`s=`); the key record lives at `<selector>._domainkey.<domain>`.
    public let selector: String
    /// The private key; its type decides the algorithm (`a=`).
    public let key: DKIMPrivateKey
    /// Header canonicalization (`c=` first part).
    public let headerCanonicalization: DKIMCanonicalization
    /// Body canonicalization (`c=` second part).
    public let bodyCanonicalization: DKIMCanonicalization
    /// Names of the header fields to sign, lowercase. Each present instance is signed (bottom-up,
    /// RFC 6376 §5.4.2); `from` is additionally signed once more than it occurs ("oversigned",
    /// §8.15) so that a From field added later breaks the signature.
    public let headers: [String]

    /// - Parameters:
    ///   - domain: `d=`.
    ///   - selector: `s=`.
    ///   - key: the private key.
    ///   - headerCanonicalization: default relaxed.
    ///   - bodyCanonicalization: default relaxed.
    ///   - headers: field names to sign (`from` is always included).
    public init(domain: String, selector: String, key: DKIMPrivateKey,
                headerCanonicalization: DKIMCanonicalization = .relaxed, bodyCanonicalization: DKIMCanonicalization = .relaxed,
                headers: [String] = DKIMSigner.defaultHeaders) {
        self.domain = domain.lowercased()
        self.selector = selector
        self.key = key
        self.headerCanonicalization = headerCanonicalization
        self.bodyCanonicalization = bodyCanonicalization
        var names: [String] = []
        for h in headers.map({ $0.lowercased() }) where !names.contains(h) && h != "dkim-signature" { names.append(h) }
        if !names.contains("from") { names.insert("from", at: 0) }
        self.headers = names
    }

    /// The algorithm of the key.
    public var algorithm: DKIMAlgorithm { key.algorithm }

    /// The body hash (`bh=`): SHA-256 of the canonicalized body, base64 (RFC 6376 §3.7).
    public func bodyHash(_ body: [UInt8]) -> String {
        Data(Crypto.sha256(bodyCanonicalization.body(body))).base64EncodedString()
    }

    /// Computes the `DKIM-Signature` header field for `message`.
    /// - Parameters:
    ///   - message: the message as it will be sent (CRLF line ends).
    ///   - time: the signature time (`t=`).
    /// - Returns: the field, folded at about 78 columns, ending in CRLF.
    /// - Throws: `DKIMKeyError` when signing fails.
    public func signatureField(for message: [UInt8], time: Date = Date()) throws -> [UInt8] {
        let parsed = ParsedMessage(message)
        // h=: every present instance of each configured name; `from` once more (oversigning).
        var signedNames: [String] = []
        var selected: [[UInt8]] = []
        var used = Set<Int>()
        for name in headers {
            let indices = parsed.fields.indices.filter { parsed.fields[$0].name.lowercased() == name }
            for i in indices.reversed() where !used.contains(i) {
                used.insert(i)
                signedNames.append(name)
                selected.append(parsed.fields[i].raw)
            }
            if name == "from" { signedNames.append(name) }
        }
        let c = "\(headerCanonicalization.rawValue)/\(bodyCanonicalization.rawValue)"
        let tags = [
            "v=1", "a=\(algorithm.rawValue)", "c=\(c)", "d=\(domain)", "s=\(selector)",
            "t=\(Int(time.timeIntervalSince1970))", "h=\(signedNames.joined(separator: ":"))",
            "bh=\(bodyHash(parsed.body))", "b=",
        ]
        let unsigned = DKIMSigner.fold(name: "DKIM-Signature", tags: tags)
        var data: [UInt8] = []
        for raw in selected { data.append(contentsOf: headerCanonicalization.header(raw)) }
        var own = headerCanonicalization.header(unsigned + [0x0D, 0x0A])
        // The signature field itself is hashed without its trailing CRLF (RFC 6376 §3.7).
        if own.suffix(2) == [0x0D, 0x0A] { own.removeLast(2) }
        data.append(contentsOf: own)
        let signature = Data(try key.sign(data)).base64EncodedString()
        var field = unsigned
        // Continue the b= value on the current line, then on folded lines of at most 76 characters.
        let column = (field.lastIndex(of: 0x0A).map { field.count - $0 - 1 }) ?? field.count
        var rest = Substring(signature)
        let firstRoom = max(0, 76 - column)
        field.append(contentsOf: Array(rest.prefix(firstRoom).utf8))
        rest = rest.dropFirst(firstRoom)
        while !rest.isEmpty {
            field.append(contentsOf: [0x0D, 0x0A, 0x09])
            field.append(contentsOf: Array(rest.prefix(75).utf8))
            rest = rest.dropFirst(75)
        }
        field.append(contentsOf: [0x0D, 0x0A])
        return field
    }

    /// Prepends a `DKIM-Signature` field to `message`.
    /// - Returns: the signed message.
    /// - Throws: `DKIMKeyError` when signing fails.
    public func sign(_ message: [UInt8], time: Date = Date()) throws -> [UInt8] {
        try signatureField(for: message, time: time) + message
    }

    /// `Name: tag; tag; …` folded with CRLF HTAB before a tag that would pass column 76; the
    /// last tag (`b=`) is left open and without a line end.
    static func fold(name: String, tags: [String]) -> [UInt8] {
        var out = Array("\(name):".utf8)
        var column = out.count
        for (i, tag) in tags.enumerated() {
            let piece = tag + (i == tags.count - 1 ? "" : ";")
            // h= can be long: split it at colons.
            var parts: [String] = [piece]
            if tag.hasPrefix("h="), piece.count > 70 {
                parts = []
                var current = ""
                for (k, name) in piece.split(separator: ":", omittingEmptySubsequences: false).enumerated() {
                    let token = (k == 0 ? "" : ":") + name
                    if current.count + token.count > 70, !current.isEmpty { parts.append(current); current = "" }
                    current += token
                }
                if !current.isEmpty { parts.append(current) }
            }
            for (k, part) in parts.enumerated() {
                let needsSpace = k == 0
                if column + (needsSpace ? 1 : 0) + part.count > 76 && column > 1 {
                    out.append(contentsOf: [0x0D, 0x0A, 0x09])
                    column = 1
                } else if needsSpace {
                    out.append(0x20)
                    column += 1
                }
                out.append(contentsOf: Array(part.utf8))
                column += part.utf8.count
            }
        }
        return out
    }
}

/// The DKIM signers of a node, chosen by the domain of the message's From field.
public struct DKIMSignerSet: Sendable {
    /// The signers, in configuration order.
    public let signers: [DKIMSigner]

    /// A set from its signers.
    public init(_ signers: [DKIMSigner]) { self.signers = signers }

    /// Whether there is nothing to sign with.
    public var isEmpty: Bool { signers.isEmpty }

    /// The signers for a message: those whose domain equals the From domain; failing that, those
    /// of the closest parent domain (relaxed alignment, RFC 7489 §3.1.1). Several signers for one
    /// domain (e.g. an RSA and an Ed25519 key) all sign.
    public func signers(forFromDomain fromDomain: String) -> [DKIMSigner] {
        signers(forFromDomain: fromDomain, overriding: nil)
    }

    /// The signers for a domain, where `overriding` (the tenants' keys, issue 16) is asked first
    /// at each level: the closest domain with keys wins, and at one domain the overriding keys
    /// replace this set's keys for it.
    /// - Parameters:
    ///   - fromDomain: the author domain (RFC 5322.From).
    ///   - overriding: keys of a domain that replace this set's for that domain (nil: none).
    public func signers(forFromDomain fromDomain: String, overriding: ((String) -> [DKIMSigner])?) -> [DKIMSigner] {
        var d = fromDomain.lowercased()
        if d.hasSuffix(".") { d.removeLast() }
        while !d.isEmpty {
            if let overriding {
                let own = overriding(d)
                if !own.isEmpty { return own }
            }
            let matching = signers.filter { $0.domain == d }
            if !matching.isEmpty { return matching }
            guard let dot = d.firstIndex(of: ".") else { break }
            d = String(d[d.index(after: dot)...])
            if !d.contains(".") { break }
        }
        return []
    }

    /// Signs `message` with every signer for its From domain (the first configured on top).
    /// - Returns: the signed message and the `d=`/algorithm pairs used (empty when no key matched
    ///   or the message has no single From address: the message is returned unchanged).
    /// - Throws: `DKIMKeyError` when a signature cannot be made.
    public func sign(_ message: [UInt8], time: Date = Date()) throws -> (message: [UInt8], signatures: [String]) {
        try sign(message, time: time, overriding: nil, fallbackDomain: nil)
    }

    /// Signs `message` with every signer for its author domain, `overriding` keys first (see
    /// `signers(forFromDomain:overriding:)`).
    ///
    /// The author domain is the domain of the single From address (RFC 5322 §3.6.2). A message
    /// without one (no From, several, or no domain in it) is signed only with `overriding` keys
    /// of `fallbackDomain` (the reverse-path domain), never with this set's keys.
    /// - Returns: the signed message and `domain/selector/algorithm` of each signature (empty:
    ///   unchanged).
    /// - Throws: `DKIMKeyError` when a signature cannot be made.
    public func sign(_ message: [UInt8], time: Date = Date(), overriding: ((String) -> [DKIMSigner])?,
                     fallbackDomain: String?) throws -> (message: [UInt8], signatures: [String]) {
        guard !signers.isEmpty || overriding != nil else { return (message, []) }
        let parsed = ParsedMessage(message)
        let froms = parsed.values("from")
        let chosen: [DKIMSigner]
        if froms.count == 1, let domain = DKIMSignerSet.addressDomain(froms[0]) {
            chosen = signers(forFromDomain: domain, overriding: overriding)
        } else if let overriding, let fallbackDomain, !fallbackDomain.isEmpty {
            chosen = DKIMSignerSet([]).signers(forFromDomain: fallbackDomain, overriding: overriding)
        } else {
            chosen = []
        }
        guard !chosen.isEmpty else { return (message, []) }
        var fields: [UInt8] = []
        for signer in chosen {
            // Each signature covers the original message (signatures are independent).
            fields.append(contentsOf: try signer.signatureField(for: message, time: time))
        }
        return (fields + message, chosen.map { "\($0.domain)/\($0.selector)/\($0.algorithm.rawValue)" })
    }

    /// The domain of the (first) address in a From value: `Name <user@example.org>`,
    /// `user@example.org (comment)`, quoted display names included.
    public static func addressDomain(_ value: String) -> String? {
        var text = value
        if let open = text.lastIndex(of: "<"), let close = text[open...].firstIndex(of: ">") {
            text = String(text[text.index(after: open)..<close])
        } else {
            // Drop comments and take the first address-looking word.
            var depth = 0
            var plain = ""
            for ch in text {
                if ch == "(" { depth += 1; continue }
                if ch == ")" { depth = max(0, depth - 1); continue }
                if depth == 0 { plain.append(ch) }
            }
            text = plain.split(separator: ",").first.map(String.init)?.trimmingCharacters(in: .whitespaces) ?? ""
        }
        guard let at = text.lastIndex(of: "@") else { return nil }
        let domain = text[text.index(after: at)...].trimmingCharacters(in: .whitespaces).lowercased()
        guard !domain.isEmpty, !domain.contains(" "), !domain.contains(">") else { return nil }
        return domain
    }
}
