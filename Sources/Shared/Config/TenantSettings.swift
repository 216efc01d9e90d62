import Foundation

/// `tenants:` cluster-wide settings of the tenant layer (issue 16). Absent: the defaults.
///
/// ```yaml
/// tenants: { spf_include: _spf.relay.example }
/// ```
public struct TenantSettings: Sendable, Equatable {
    /// `spf_include`: a DNS name whose SPF record (RFC 7208 §5.2) lists every sending IP of the
    /// cluster, published once by the operator. Tenants' domains are then told to publish
    /// `v=spf1 include:<spf_include> ~all`, which keeps working when IPs are added. Default nil:
    /// tenants are told to list the sending IPs themselves (`ip4:`/`ip6:`).
    public var spfInclude: String?

    /// Settings from their parts (default: no SPF include name).
    public init(spfInclude: String? = nil) { self.spfInclude = spfInclude }
}

extension ClusterConfigDecoder {
    /// Decodes `tenants:` into `config.tenants`.
    /// - Throws: `ConfigError` naming the file, line and key of an unknown key or a bad value.
    func decodeTenants(_ top: ConfigSection, into config: inout ClusterConfig) throws {
        guard let sec = try top.section("tenants", allowed: ["spf_include"]) else { return }
        var settings = TenantSettings()
        if let s = try sec.scalar("spf_include") {
            settings.spfInclude = try s.convert { text -> String in
                let name = (text.hasSuffix(".") ? String(text.dropLast()) : text).lowercased()
                guard TenantSettings.isDomainName(name), name.contains(".") else {
                    throw ConfigValueError("\"\(text)\" is not a DNS name (e.g. _spf.relay.example)")
                }
                return name
            }
        }
        config.tenants = settings
    }
}

extension TenantSettings {
    /// Whether `name` is a DNS name: labels of 1–63 letters, digits, `-` or `_` (underscore
    /// labels such as `_spf` are common for SPF), at most 253 octets in all.
    public static func isDomainName(_ name: String) -> Bool {
        guard !name.isEmpty, name.utf8.count <= 253 else { return false }
        return name.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
            !label.isEmpty && label.utf8.count <= 63
                && label.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D || $0 == 0x5F }
        }
    }
}
