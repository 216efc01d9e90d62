import Foundation

/// One TLSA record's certificate association (RFC 6698 §2.1), as DANE for SMTP uses it
/// (RFC 7672): what `TLSStream.connect(…, dane:)` verifies the server's certificate against.
public struct TLSAssociation: Sendable, Hashable, CustomStringConvertible {
    /// Certificate usage: 2 DANE-TA (a trust anchor in the chain), 3 DANE-EE (the server's own
    /// certificate); 0 and 1 (PKIX-TA/EE) are not used for SMTP (RFC 7672 §3.1.3).
    public var usage: UInt8
    /// Selector: 0 the full certificate, 1 its SubjectPublicKeyInfo.
    public var selector: UInt8
    /// Matching type: 0 exact octets, 1 SHA-256, 2 SHA-512.
    public var matchingType: UInt8
    /// The certificate association data (a DER object or its digest).
    public var data: [UInt8]

    /// An association from its fields.
    public init(usage: UInt8, selector: UInt8, matchingType: UInt8, data: [UInt8]) {
        self.usage = usage; self.selector = selector; self.matchingType = matchingType; self.data = data
    }

    /// Whether an SMTP client may use the record (RFC 7672 §3.1): usage 2 or 3, selector 0 or 1,
    /// matching type 0, 1 or 2 with a digest of the right length (32 or 64 octets), data not empty.
    public var isUsable: Bool {
        guard usage == 2 || usage == 3, selector <= 1, !data.isEmpty else { return false }
        switch matchingType {
        case 0: return true
        case 1: return data.count == 32
        case 2: return data.count == 64
        default: return false
        }
    }

    /// Presentation form, e.g. `3 1 1 9f86d0…` (the data in lowercase hex).
    public var description: String {
        "\(usage) \(selector) \(matchingType) " + data.map { String(format: "%02x", $0) }.joined()
    }
}
