import Foundation

/// A certificate and its private key, both PEM files (absolute paths, resolved against the
/// configuration file's directory). The files are read by the process that needs them when it
/// starts (and by `check`), never at load time: each host holds only its own key.
public struct TLSPairSettings: Sendable, Equatable {
    /// `certificate`: the certificate chain, the entity's own certificate first. Required.
    public var certificatePath: String
    /// `private_key`: the matching private key, unencrypted. Required.
    public var privateKeyPath: String

    /// Creates a pair.
    public init(certificatePath: String, privateKeyPath: String) {
        self.certificatePath = certificatePath
        self.privateKeyPath = privateKeyPath
    }
}

/// `cluster.tls:` TLS for the cluster protocol (RFC 8446, or RFC 5246 at least), in addition to
/// the HMAC challenge–response. When set, the coordinator accepts only TLS on
/// `coordinator.listen` and every node connects with TLS.
///
/// Which host needs which file:
/// - the coordinator's host: `certificate` and `private_key` (the coordinator's identity, with
///   the `coordinator.listen` address as an IP SAN, or its DNS name) and `ca`;
/// - each node's host: `ca`, and its own `nodes[].tls` pair (or, without one, this pair).
public struct ClusterTLSSettings: Sendable, Equatable {
    /// `certificate`, `private_key`: the coordinator's certificate and key; also the client
    /// certificate of nodes without a `nodes[].tls` pair. Required.
    public var pair: TLSPairSettings
    /// `ca`: PEM bundle of the CA(s) both sides trust. Nodes verify the coordinator's certificate
    /// against it (chain and the host of `coordinator.listen`); the coordinator requires each node
    /// to present a client certificate issued by it (mutual TLS). Default none: nodes verify the
    /// coordinator against the system's roots, and the coordinator asks nodes for no client
    /// certificate (the HMAC proof alone authenticates them).
    public var caPath: String?

    /// Creates cluster TLS settings.
    public init(pair: TLSPairSettings, caPath: String?) { self.pair = pair; self.caPath = caPath }
}

/// `coordinator.admin_tls:` HTTPS for the admin API (and `/metrics`, the dashboard) on
/// `admin_listen`. The CLI connects over HTTPS when it is set, trusting `ca` (or the certificate
/// itself: certificate pinning).
public struct AdminTLSSettings: Sendable, Equatable {
    /// `certificate`, `private_key`: what the admin listener presents. Required.
    public var pair: TLSPairSettings
    /// `ca`: PEM file the CLI trusts for the admin listener; default: `certificate` itself (a
    /// self-signed certificate, or a pinned one). Its host check is against `admin_listen`'s
    /// address (127.0.0.1 for an unspecified address), so the certificate needs that IP as SAN.
    public var caPath: String?

    /// Creates admin TLS settings.
    public init(pair: TLSPairSettings, caPath: String?) { self.pair = pair; self.caPath = caPath }

    /// The file the CLI trusts: `ca`, or the certificate itself.
    public var trustPath: String { caPath ?? pair.certificatePath }
}

extension ClusterConfig {
    /// The certificate pair node `id` presents to the coordinator: its `nodes[].tls`, or the
    /// cluster-wide `cluster.tls` pair; nil without `cluster.tls`.
    public func clusterTLSPair(forNode id: String) -> TLSPairSettings? {
        guard let tls = cluster.tls else { return nil }
        return node(id: id)?.tls ?? tls.pair
    }
}

extension CoordinatorSettings {
    /// The admin token: `admin_token`, or the contents of `admin_token_file`.
    /// - Throws: `ConfigError` naming `coordinator.admin_token_file` when that file could not be
    ///   read at load time (a node host need not have it; the coordinator and the CLI do).
    public func requireAdminToken() throws(ConfigError) -> String {
        if let adminTokenError {
            throw ConfigError(file: adminTokenFile ?? "", line: nil, key: "coordinator.admin_token_file", message: adminTokenError)
        }
        return adminToken
    }
}

extension ClusterConfigDecoder {
    /// A `{ certificate, private_key }` pair (paths resolved) from `sec`.
    func decodePair(_ sec: ConfigSection) throws -> TLSPairSettings {
        func path(_ key: String) throws -> String {
            try sec.require(key) { text -> String in
                guard !text.isEmpty else { throw ConfigValueError("must not be empty") }
                return ConfigFiles.absolute(text, relativeTo: baseDirectory)
            }
        }
        return TLSPairSettings(certificatePath: try path("certificate"), privateKeyPath: try path("private_key"))
    }

    /// An optional path key of `sec`, resolved.
    func decodeOptionalPath(_ sec: ConfigSection, _ key: String) throws -> String? {
        try sec.get(key) { text -> String in
            guard !text.isEmpty else { throw ConfigValueError("must not be empty") }
            return ConfigFiles.absolute(text, relativeTo: baseDirectory)
        }
    }

    /// `cluster.tls: { certificate, private_key, ca }`.
    func decodeClusterTLS(_ sec: ConfigSection) throws -> ClusterTLSSettings? {
        guard let tls = try sec.section("tls", allowed: ["certificate", "private_key", "ca"]) else { return nil }
        return ClusterTLSSettings(pair: try decodePair(tls), caPath: try decodeOptionalPath(tls, "ca"))
    }

    /// `coordinator.admin_tls: { certificate, private_key, ca }`.
    func decodeAdminTLS(_ sec: ConfigSection) throws -> AdminTLSSettings? {
        guard let tls = try sec.section("admin_tls", allowed: ["certificate", "private_key", "ca"]) else { return nil }
        return AdminTLSSettings(pair: try decodePair(tls), caPath: try decodeOptionalPath(tls, "ca"))
    }

    /// `nodes[].tls: { certificate, private_key }`.
    func decodeNodeTLS(_ sec: ConfigSection) throws -> TLSPairSettings? {
        guard let tls = try sec.section("tls", allowed: ["certificate", "private_key"]) else { return nil }
        return try decodePair(tls)
    }

    /// `coordinator.admin_token` or `coordinator.admin_token_file` (exactly one).
    ///
    /// The file is read now; when it cannot be read, the token stays unresolved (empty, with
    /// `adminTokenError` set) instead of failing the load, so node hosts need not hold it — the
    /// coordinator and the CLI then refuse to start (`requireAdminToken`). A file that is read
    /// but holds no valid token is an error everywhere.
    /// - Returns: the token (empty when unresolved), the file's path, and why it could not be read.
    func decodeAdminToken(_ sec: ConfigSection) throws -> (token: String, file: String?, error: String?) {
        func valid(_ text: String) throws -> String {
            guard !text.isEmpty, text.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F }) else {
                throw ConfigValueError("must be non-empty printable ASCII without spaces")
            }
            return text
        }
        let inline = try sec.scalar("admin_token")
        let fromFile = try sec.scalar("admin_token_file")
        switch (inline, fromFile) {
        case (nil, nil):
            throw ConfigError(file: file, line: sec.line, key: sec.keyPath("admin_token"),
                              message: "required key is missing (set admin_token, or admin_token_file in production)")
        case (.some, .some(let f)):
            throw ConfigError(file: file, line: f.line, key: f.path, message: "use either admin_token or admin_token_file, not both")
        case (.some(let t), nil):
            return (try t.convert(valid), nil, nil)
        case (nil, .some(let f)):
            guard !f.text.isEmpty else { throw ConfigError(file: file, line: f.line, key: f.path, message: "must not be empty") }
            let path = ConfigFiles.absolute(f.text, relativeTo: baseDirectory)
            let bytes: [UInt8]
            do {
                bytes = try ConfigFiles.readFile(path)
            } catch {
                return ("", path, "cannot read \(path): \(error.message)")
            }
            var text = String(decoding: bytes, as: UTF8.self)
            guard text.utf8.elementsEqual(bytes) else {
                throw ConfigError(file: file, line: f.line, key: f.path, message: "\(path) is not valid UTF-8")
            }
            while let last = text.unicodeScalars.last, last == "\n" || last == "\r" { text.unicodeScalars.removeLast() }
            do {
                return (try valid(text), path, nil)
            } catch let e as ConfigValueError {
                throw ConfigError(file: file, line: f.line, key: f.path, message: "\(path): the token \(e.message)")
            }
        }
    }
}
