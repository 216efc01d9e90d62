import COpenSSL
import Foundation

/// Cryptographic primitives over OpenSSL 3 (libcrypto).
public enum Crypto {
    /// HMAC-SHA256 of `data` keyed with `key` (RFC 2104).
    /// - Returns: the 32-octet MAC.
    public static func hmacSHA256(key: [UInt8], data: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        var outLen: UInt32 = 0
        key.withUnsafeBufferPointer { k in
            data.withUnsafeBufferPointer { d in
                _ = HMAC(EVP_sha256(), k.baseAddress, Int32(k.count), d.baseAddress, d.count, &out, &outLen)
            }
        }
        return Array(out.prefix(Int(outLen)))
    }

    /// SHA-256 digest of `data`.
    /// - Returns: the 32-octet digest.
    public static func sha256(_ data: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        data.withUnsafeBufferPointer { d in _ = SHA256(d.baseAddress, d.count, &out) }
        return out
    }

    /// `count` bytes from OpenSSL's CSPRNG.
    public static func randomBytes(_ count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        if RAND_bytes(&out, Int32(count)) != 1 {
            // RAND_bytes only fails when the CSPRNG cannot be seeded; fall back to the system generator.
            var g = SystemRandomNumberGenerator()
            for i in out.indices { out[i] = UInt8.random(in: 0...255, using: &g) }
        }
        return out
    }

    /// Compares two byte strings in time independent of where they differ.
    public static func constantTimeEquals(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        if a.isEmpty { return true }
        return a.withUnsafeBytes { pa in b.withUnsafeBytes { pb in CRYPTO_memcmp(pa.baseAddress, pb.baseAddress, a.count) == 0 } }
    }
}

/// Lower-case hexadecimal encoding.
public enum Hex {
    /// Encodes bytes as lower-case hex.
    public static func encode(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8](); out.reserveCapacity(bytes.count * 2)
        for b in bytes { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 0xF)]) }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes hex (either case); nil on odd length or a non-hex digit.
    public static func decode(_ text: String) -> [UInt8]? {
        let u = Array(text.utf8)
        guard u.count % 2 == 0 else { return nil }
        func v(_ c: UInt8) -> UInt8? {
            switch c {
            case 0x30...0x39: return c - 0x30
            case 0x61...0x66: return c - 0x61 + 10
            case 0x41...0x46: return c - 0x41 + 10
            default: return nil
            }
        }
        var out = [UInt8](); out.reserveCapacity(u.count / 2)
        var i = 0
        while i < u.count {
            guard let h = v(u[i]), let l = v(u[i + 1]) else { return nil }
            out.append(h << 4 | l); i += 2
        }
        return out
    }
}

/// Identifiers for messages, leases and process instances.
public enum Identifier {
    private static let alphabet = Array("0123456789BCDFGHJKLMNPQRSTVWXYZ".utf8)

    /// A queue id: 12 characters of time-ordered base-31 (no vowels, so no words) followed by 6 random ones.
    /// Sorted ids follow submission order at millisecond resolution.
    public static func queueID(now: Date = Date()) -> String {
        var ms = UInt64(max(0, now.timeIntervalSince1970 * 1000))
        var head = [UInt8](repeating: alphabet[0], count: 9)
        for i in stride(from: 8, through: 0, by: -1) { head[i] = alphabet[Int(ms % 31)]; ms /= 31 }
        let tail = Crypto.randomBytes(9).map { alphabet[Int($0) % alphabet.count] }
        return String(decoding: head + tail, as: UTF8.self)
    }

    /// A random lower-case hex token of `bytes` octets.
    public static func random(bytes: Int = 8) -> String { Hex.encode(Crypto.randomBytes(bytes)) }
}
