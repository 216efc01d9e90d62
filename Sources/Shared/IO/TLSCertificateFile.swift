import COpenSSL
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import HatoSupport

/// Reads PEM certificate files without building a TLS context (configuration checks).
public enum TLSCertificateFile {
    /// What a PEM certificate file holds.
    public struct Summary: Sendable, Equatable {
        /// Certificates in the file (a chain or a CA bundle).
        public var count: Int
        /// The first certificate's subject common name (CN), if any.
        public var commonName: String?
        /// Seconds from now until the first certificate expires (negative: expired).
        public var secondsUntilExpiry: Int
    }

    /// Reads the certificates of a PEM file.
    /// - Parameter path: the file.
    /// - Returns: the count, the first certificate's CN and its expiry.
    /// - Throws: `TLSError(.configuration)` when the file cannot be read or holds no certificate.
    public static func inspect(_ path: String) throws(TLSError) -> Summary {
        var summary = Summary(count: 0, commonName: nil, secondsUntilExpiry: 0)
        try forEachCertificate(path, what: "certificate") { cert, index in
            summary.count += 1
            guard index == 0 else { return }
            summary.commonName = commonName(cert)
            var days: Int32 = 0, seconds: Int32 = 0
            if let notAfter = X509_get0_notAfter(cert), ASN1_TIME_diff(&days, &seconds, nil, notAfter) == 1 {
                summary.secondsUntilExpiry = Int(days) * 86_400 + Int(seconds)
            }
        }
        guard summary.count > 0 else { throw TLSError(.configuration, "\(path) holds no PEM certificate") }
        return summary
    }

    /// Whether the first certificate of `path` names `host`: an IP literal against its IP SANs,
    /// a host name against its DNS SANs (RFC 6125, as a client checks it).
    /// - Throws: `TLSError(.configuration)` when the file cannot be read or holds no certificate.
    public static func matches(_ path: String, host: String) throws(TLSError) -> Bool {
        var matched: Bool?
        try forEachCertificate(path, what: "certificate") { cert, index in
            guard index == 0 else { return }
            if SocketAddress(host: host, port: 0).isNumeric {
                matched = X509_check_ip_asc(cert, host, 0) == 1
            } else {
                matched = X509_check_host(cert, host, host.utf8.count, 0, nil) == 1
            }
        }
        guard let matched else { throw TLSError(.configuration, "\(path) holds no PEM certificate") }
        return matched
    }

    /// The number of PEM certificates in `path`.
    static func certificateCount(_ path: String, what: String) throws(TLSError) -> Int {
        var count = 0
        try forEachCertificate(path, what: what) { _, _ in count += 1 }
        return count
    }

    private static func forEachCertificate(_ path: String, what: String, _ body: (OpaquePointer, Int) -> Void) throws(TLSError) {
        ERR_clear_error()
        guard let bio = BIO_new_file(path, "r") else {
            let reason = String(validatingCString: strerror(errno)) ?? "errno \(errno)"
            ERR_clear_error()
            throw TLSError(.configuration, "cannot read \(what) \(path): \(reason)")
        }
        defer { BIO_free(bio) }
        var index = 0
        while let cert = PEM_read_bio_X509(bio, nil, nil, nil) {
            body(cert, index)
            X509_free(cert)
            index += 1
        }
        // The loop ends with a "no start line" error at the end of the file.
        ERR_clear_error()
    }

    /// The subject common name of a certificate.
    static func commonName(_ cert: OpaquePointer) -> String? {
        guard let name = X509_get_subject_name(cert) else { return nil }
        var buf = [CChar](repeating: 0, count: 256)
        let n = X509_NAME_get_text_by_NID(name, hato_NID_commonName(), &buf, Int32(buf.count))
        guard n > 0 else { return nil }
        return cString(buf)
    }
}

extension SocketAddress {
    /// Whether `host` is a numeric IPv4 or IPv6 address.
    var isNumeric: Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1
    }
}
