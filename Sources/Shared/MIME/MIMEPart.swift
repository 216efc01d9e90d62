/// A MIME entity being built (RFC 2045, RFC 2046): a leaf with its content header fields and
/// encoded body, or a multipart whose boundary is chosen when it is rendered.
struct MIMEPart {
    /// What the entity holds.
    enum Content {
        /// A leaf: complete `Content-*` header fields (folded, without the final CRLF) and the
        /// body, already in a 7bit-safe transfer encoding.
        case leaf(fields: [String], body: [UInt8])
        /// `multipart/<subtype>` (RFC 2046 §5.1) with its parts in order.
        case multipart(subtype: String, parts: [MIMEPart])
    }

    /// What the entity holds.
    var content: Content

    /// A leaf part.
    static func leaf(fields: [String], body: [UInt8]) -> MIMEPart { MIMEPart(content: .leaf(fields: fields, body: body)) }

    /// A multipart part.
    static func multipart(_ subtype: String, _ parts: [MIMEPart]) -> MIMEPart {
        MIMEPart(content: .multipart(subtype: subtype, parts: parts))
    }

    /// Renders the entity: the `Content-*` header fields for its header and its body.
    ///
    /// Each multipart boundary is 31 characters, `=_hato_` and 24 random letters and digits
    /// (`=_` cannot occur in quoted-printable or base64 text, RFC 2045 §6.7 note 4), and is drawn
    /// again in the unlikely case it occurs anywhere in the parts it separates (RFC 2046 §5.1.1).
    /// - Parameter generator: the source of the boundaries.
    /// - Returns: the fields (each folded, without the final CRLF) and the body octets.
    func render(using generator: inout some RandomNumberGenerator) -> (fields: [String], body: [UInt8]) {
        switch content {
        case .leaf(let fields, let body):
            return (fields, body)
        case .multipart(let subtype, let parts):
            let entities: [[UInt8]] = parts.map { part in
                let (fields, body) = part.render(using: &generator)
                var entity: [UInt8] = []
                for field in fields { entity += Array(field.utf8) + [0x0D, 0x0A] }
                return entity + [0x0D, 0x0A] + body
            }
            var boundary: String
            repeat {
                boundary = "=_hato_" + RandomText.alphanumeric(24, using: &generator)
            } while entities.contains(where: { $0.firstRange(of: Array(boundary.utf8)) != nil })
            let delimiter = Array("--\(boundary)".utf8)
            var body: [UInt8] = []
            for (index, entity) in entities.enumerated() {
                body += (index == 0 ? [] : [0x0D, 0x0A]) + delimiter + [0x0D, 0x0A]
                body += entity
            }
            body += [0x0D, 0x0A] + delimiter + Array("--\r\n".utf8)
            var writer = HeaderFieldWriter(name: "Content-Type")
            writer.append("multipart/\(subtype);")
            writer.append("boundary=\"\(boundary)\"")
            return ([writer.text], body)
        }
    }
}
