import Foundation
import HatoTestKit

/// A test certificate authority made at test time with the openssl CLI (never committed): a
/// self-signed EC P-256 root, and leaf certificates it signs.
struct TestCA {
    /// The CA's certificate (PEM): what `cluster.tls.ca` points at.
    let certificate: String
    let key: String
    let dir: String
    let name: String

    /// Makes a CA named `name` in `dir`.
    static func make(in dir: String, name: String = "ca") throws -> TestCA {
        let cert = (dir as NSString).appendingPathComponent("\(name).pem")
        let key = (dir as NSString).appendingPathComponent("\(name).key")
        let (status, output) = try runProgram("/usr/bin/openssl", [
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=Hato test CA \(name)",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ], dir: dir)
        guard status == 0 else { throw HarnessError("openssl req (CA) failed: \(output)") }
        return TestCA(certificate: cert, key: key, dir: dir, name: name)
    }

    /// Issues a leaf certificate for `commonName` (server and client use), with `subjectAltName`
    /// (e.g. `IP:127.0.0.1`, or nil for none).
    func issue(_ leaf: String, commonName: String, subjectAltName: String? = nil) throws -> TestCertificate {
        let cert = (dir as NSString).appendingPathComponent("\(leaf)-cert.pem")
        let key = (dir as NSString).appendingPathComponent("\(leaf)-key.pem")
        let csr = (dir as NSString).appendingPathComponent("\(leaf).csr")
        let ext = (dir as NSString).appendingPathComponent("\(leaf).ext")
        var extensions = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n"
        if let subjectAltName { extensions += "subjectAltName=\(subjectAltName)\n" }
        try extensions.write(toFile: ext, atomically: true, encoding: .utf8)
        var (status, output) = try runProgram("/usr/bin/openssl", [
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", csr, "-subj", "/CN=\(commonName)",
        ], dir: dir)
        guard status == 0 else { throw HarnessError("openssl req (leaf) failed: \(output)") }
        (status, output) = try runProgram("/usr/bin/openssl", [
            "x509", "-req", "-in", csr, "-CA", certificate, "-CAkey", self.key, "-CAcreateserial",
            "-out", cert, "-days", "2", "-extfile", ext,
        ], dir: dir)
        guard status == 0 else { throw HarnessError("openssl x509 (sign) failed: \(output)") }
        return TestCertificate(certificate: cert, key: key)
    }
}
