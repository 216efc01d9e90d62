import ClusterProtocol
import Foundation
import HatoIO
import HatoSupport
import SMTPCore

/// How the TLS session with one MX host must be authenticated.
public enum TLSRequirement: Sendable, Hashable {
    /// DANE (RFC 7672): TLS required, the certificate must match one of these TLSA records.
    case dane([TLSAssociation])
    /// MTA-STS (RFC 8461) of `domain`: with `enforce`, TLS is required with a certificate valid
    /// for the MX host name (chain to the trust roots and name check); otherwise (`testing`) the
    /// session is checked and failures reported, but delivery goes on.
    case mtaSTS(domain: String, enforce: Bool)

    /// Whether the message may only go over an authenticated TLS session.
    public var isEnforced: Bool {
        switch self {
        case .dane: return true
        case .mtaSTS(_, let enforce): return enforce
        }
    }

    /// The `TLSSessionInfo.authentication` tag of a session that satisfies it (`dane`, `mta-sts`).
    public var tag: String {
        switch self {
        case .dane: return "dane"
        case .mtaSTS: return "mta-sts"
        }
    }
}

/// The DANE state of one MX host (RFC 7672 §2.2), from its `_<port>._tcp.<host>` TLSA lookup.
public enum DANELookup: Sendable, Equatable {
    /// No AD bit (an unsigned zone, or a resolver that does not validate), no records, or a failed
    /// lookup: no DANE.
    case insecure
    /// Authenticated (AD) TLSA records; `usable` are those an SMTP client may use (RFC 7672 §3.1).
    case secure(usable: [TLSAssociation], total: Int)
}

/// The transport-security decision for one destination as a value: which MX targets remain and
/// how TLS must be authenticated with each, from the domain's MTA-STS policy (RFC 8461 §4, §5)
/// and each MX host's DANE state (RFC 7672). DANE takes precedence over MTA-STS for a host that
/// has usable authenticated TLSA records (RFC 8461 §2).
public struct TransportSecurityPlan: Sendable, Equatable {
    /// The targets to try, in order (MX hosts that an enforced policy rejects are dropped).
    public var targets: [DeliveryTarget]
    /// Per MX host name (lowercase): its requirement. Hosts absent: opportunistic TLS.
    public var requirements: [String: TLSRequirement]
    /// What was found before any connection (MX hosts outside the policy, unusable TLSA records).
    public var reports: [TLSReportEntry]
    /// When an enforced policy leaves no target: the deferral (451 4.7.5, naming the policy and
    /// the hosts); nil otherwise.
    public var failure: NextHopFailure?

    /// Decides for `domain`.
    /// - Parameters:
    ///   - domain: the recipient domain (the MTA-STS policy domain).
    ///   - targets: the MX targets in preference order.
    ///   - policy: the domain's MTA-STS policy (nil, or mode `none`: no policy).
    ///   - dane: each MX host's DANE state (hosts absent: insecure).
    /// - Returns: the plan.
    public static func plan(domain: String, targets: [DeliveryTarget], policy: MTASTSPolicy?,
                            dane: [String: DANELookup]) -> TransportSecurityPlan {
        var kept: [DeliveryTarget] = []
        var requirements: [String: TLSRequirement] = [:]
        var reports: [TLSReportEntry] = []
        var rejected: [String] = []
        var reported = Set<String>()
        let policy = policy?.mode == MTASTSPolicy.Mode.none ? nil : policy
        for target in targets {
            let host = target.host.lowercased()
            if case .secure(let usable, let total)? = dane[host] {
                if !usable.isEmpty {
                    requirements[host] = .dane(usable)
                    kept.append(target)
                    continue
                }
                if total > 0 && reported.insert("tlsa|" + host).inserted {
                    reports.append(TLSReportEntry(policyDomain: host, policyType: TLSReportPolicyType.tlsa.rawValue,
                                                  result: TLSReportResultType.tlsaInvalid.rawValue, mxHost: host))
                }
            }
            guard let policy else { kept.append(target); continue }
            let enforce = policy.mode == .enforce
            if !policy.matches(host) {
                if reported.insert("sts|" + host).inserted {
                    reports.append(TLSReportEntry(policyDomain: domain.lowercased(), policyType: TLSReportPolicyType.sts.rawValue,
                                                  result: TLSReportResultType.validationFailure.rawValue, mxHost: host))
                }
                if enforce {
                    if !rejected.contains(host) { rejected.append(host) }
                    continue
                }
            }
            requirements[host] = .mtaSTS(domain: domain.lowercased(), enforce: enforce)
            kept.append(target)
        }
        var failure: NextHopFailure? = nil
        if kept.isEmpty && !rejected.isEmpty {
            let hosts = rejected.prefix(3).joined(separator: ", ") + (rejected.count > 3 ? ", …" : "")
            failure = NextHopFailure(permanent: false, enhanced: EnhancedStatusCode(.persistentTransientFailure, 7, 5),
                                     text: "MTA-STS policy of \(domain.lowercased()): \(hosts) \(rejected.count == 1 ? "does" : "do") not match the policy")
        }
        return TransportSecurityPlan(targets: kept, requirements: requirements, reports: reports, failure: failure)
    }

    /// The RFC 8460 result type for an OpenSSL verification result code.
    public static func resultType(verificationResult code: Int) -> TLSReportResultType {
        switch Int32(truncatingIfNeeded: code) {
        case verifyErrorHostnameMismatch: return .certificateHostMismatch
        case verifyErrorCertificateExpired: return .certificateExpired
        default: return .validationFailure
        }
    }
}

/// OpenSSL verification codes the classification needs (from `<openssl/x509_vfy.h>`).
/// `X509_V_ERR_HOSTNAME_MISMATCH`.
let verifyErrorHostnameMismatch: Int32 = 62
/// `X509_V_ERR_CERT_HAS_EXPIRED`.
let verifyErrorCertificateExpired: Int32 = 10

/// Why a TLS session under an enforced policy was refused (the session is closed; nothing was sent).
public struct TLSPolicyFailure: Error, Sendable, CustomStringConvertible {
    /// E.g. `MTA-STS policy of example.com: certificate not valid for mx.example.com: certificate has expired`.
    public var description: String
}

/// The STARTTLS client for one delivery under a plan: for each MX host, the session is
/// authenticated as its `TLSRequirement` says (DANE against the TLSA records, MTA-STS against the
/// trust roots and the MX host name); hosts without a requirement get opportunistic TLS from
/// `base`. Every session under a requirement is recorded as a TLS-RPT entry (`reports`).
public final class PolicyTLSClient: OutboundTLSClient {
    /// The opportunistic client for hosts without a requirement.
    public let base: any OutboundTLSClient
    /// A verifying context (trust roots, DANE-enabled; the check is done after the handshake).
    public let context: TLSContext
    /// Per lowercase MX host: the requirement.
    public let requirements: [String: TLSRequirement]
    private let entries = Locked<[TLSReportEntry]>([])

    /// - Parameters:
    ///   - base: the client for hosts without a requirement.
    ///   - context: a client context made with `dane: true` over the trust roots for MTA-STS.
    ///   - requirements: the plan's requirements.
    public init(base: any OutboundTLSClient, context: TLSContext, requirements: [String: TLSRequirement]) {
        self.base = base; self.context = context; self.requirements = requirements
    }

    /// The sessions recorded so far (successes and failures), in order.
    public var reports: [TLSReportEntry] { entries.withLock { $0 } }

    /// The requirement for `host`, if any.
    public func requirement(for host: String) -> TLSRequirement? { requirements[host.lowercased()] }

    /// Records that `host` (under a requirement) did not offer STARTTLS (`starttls-not-supported`).
    public func noteSTARTTLSMissing(host: String) {
        guard let r = requirement(for: host) else { return }
        record(r, host: host, result: TLSReportResultType.starttlsNotSupported.rawValue)
    }

    private func record(_ r: TLSRequirement, host: String, result: String) {
        let entry: TLSReportEntry
        switch r {
        case .dane: entry = TLSReportEntry(policyDomain: host.lowercased(), policyType: TLSReportPolicyType.tlsa.rawValue, result: result, mxHost: host.lowercased())
        case .mtaSTS(let domain, _): entry = TLSReportEntry(policyDomain: domain, policyType: TLSReportPolicyType.sts.rawValue, result: result, mxHost: host.lowercased())
        }
        entries.withLock { $0.append(entry) }
    }

    /// The handshake with `serverName` (the MX host name) under its requirement.
    /// - Throws: `TLSPolicyFailure` when an enforced requirement is not met (the stream is closed
    ///   first); the handshake's own errors (`TLSError`, `SocketError`).
    public func secure(_ socket: Socket, serverName: String, timeout: TimeInterval) throws -> (stream: any ByteStream, info: TLSSessionInfo) {
        guard let requirement = requirement(for: serverName) else {
            return try base.secure(socket, serverName: serverName, timeout: timeout)
        }
        socket.setTimeouts(read: timeout, write: timeout)
        let stream: TLSStream
        switch requirement {
        case .dane(let records):
            do {
                stream = try TLSStream.connect(over: socket, context: context, serverName: serverName, dane: records)
            } catch {
                record(requirement, host: serverName, result: TLSReportResultType.validationFailure.rawValue)
                throw error
            }
            guard stream.peerCertificateVerified else {
                let reason = stream.verificationError ?? "no match"
                stream.close()
                record(requirement, host: serverName, result: TLSReportResultType.validationFailure.rawValue)
                throw TLSPolicyFailure(description: "DANE: certificate of \(serverName) does not match its TLSA records (\(reason))")
            }
        case .mtaSTS(let domain, let enforce):
            do {
                stream = try TLSStream.connect(over: socket, context: context, serverName: serverName)
            } catch {
                record(requirement, host: serverName, result: TLSReportResultType.validationFailure.rawValue)
                throw error
            }
            if !stream.peerCertificateVerified {
                let type = TransportSecurityPlan.resultType(verificationResult: stream.verificationResult)
                record(requirement, host: serverName, result: type.rawValue)
                if enforce {
                    stream.close()
                    throw TLSPolicyFailure(description: "MTA-STS policy of \(domain): certificate not valid for \(serverName): \(stream.verificationError ?? "not verified")")
                }
                return (stream, TLSSessionInfo(version: stream.protocolVersion, cipher: stream.cipher, verified: false))
            }
        }
        record(requirement, host: serverName, result: "success")
        var info = TLSSessionInfo(version: stream.protocolVersion, cipher: stream.cipher, verified: true)
        info.authentication = requirement.tag
        return (stream, info)
    }
}
