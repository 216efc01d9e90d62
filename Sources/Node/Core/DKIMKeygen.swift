#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HatoConfig
import HatoDKIM
import HatoIO

/// `hato-node dkim-keygen`: makes a DKIM private key file and prints the DNS record to publish.
public enum DKIMKeygen {
    /// A bad or missing option (exit status 2).
    public struct UsageError: Error, Sendable {
        /// What is wrong.
        public let message: String
    }

    /// Generates a key, writes it as PKCS#8 PEM with mode 0600 (refusing to overwrite), and
    /// returns the zone-file line: `<selector>._domainkey.<domain>. IN TXT ( "v=DKIM1; k=…; " "p=…" )`
    /// with the value split into strings of at most 255 octets (RFC 1035 §3.3.14, RFC 6376 §3.6.2.2).
    /// - Parameter options: `domain`, `selector`, `out` (required); `algorithm` (default
    ///   `rsa-sha256`), `bits` (RSA size, default 2048).
    /// - Returns: the text to print.
    /// - Throws: `UsageError`, `DKIMKeyError`, or a file error.
    public static func run(options: [String: String]) throws -> String {
        guard let domainText = options["domain"] else { throw UsageError(message: "--domain is required") }
        guard let selector = options["selector"], !selector.isEmpty,
              selector.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7A) || $0 == 0x2D || $0 == 0x5F || $0 == 0x2E })
        else { throw UsageError(message: "--selector is required (letters, digits, '-', '_', '.')") }
        guard let out = options["out"], !out.isEmpty else { throw UsageError(message: "--out KEY.pem is required") }
        let domain: String
        do { domain = try ConfigValue.hostname(domainText) } catch let e as ConfigValueError {
            throw UsageError(message: "--domain: \(e.message)")
        }
        guard let algorithm = DKIMAlgorithm(rawValue: options["algorithm"] ?? "rsa-sha256") else {
            throw UsageError(message: "--algorithm must be rsa-sha256 or ed25519-sha256")
        }
        var bits = 2048
        if let b = options["bits"] {
            guard let n = Int(b), (1024...8192).contains(n) else { throw UsageError(message: "--bits must be 1024…8192") }
            bits = n
        }
        let key = try DKIMPrivateKey.generate(algorithm, rsaBits: bits)
        let pem = try key.pem()
        let fd = open(out, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            let reason = String(cString: strerror(errno))
            throw UsageError(message: "cannot create \(out): \(reason)")
        }
        defer { close(fd) }
        let written = pem.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard written == pem.count, fsync(fd) == 0 else { throw UsageError(message: "cannot write \(out)") }
        let record = try key.dnsRecord()
        return "\(selector)._domainkey.\(domain). IN TXT ( \(txtStrings(record)) )"
    }

    /// The record as quoted strings of at most 255 octets each.
    static func txtStrings(_ value: String) -> String { TXTStrings.quoted(value) }
}
