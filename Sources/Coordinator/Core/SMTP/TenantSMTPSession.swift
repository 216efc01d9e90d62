import Foundation
import HatoSupport
import SMTPCore

/// One SMTP session's tenant (issue 16): the tenant of its AUTH user and the recipients of the
/// transaction under way, for the session's MAIL and RCPT checks.
///
/// - At MAIL: a suspended tenant gets `550 5.7.1`; a reverse-path whose domain the tenant has
///   not added (or `<>`) gets `550 5.7.1` (RFC 5321 §3.3, RFC 3463 5.7.1).
/// - At RCPT: past `recipients_per_message`, `452 4.5.3` (RFC 5321 §4.5.3.1.10: the client
///   sends the rest in another transaction); at the first recipient, a tenant already at a
///   limit gets `452 4.7.1` with the time to wait, so the client does not send DATA in vain.
/// - At the end of DATA (SubmissionServer.accept): the `From:` domains, then the count.
///
/// Mail without a tenant (cluster.yml users, relay networks) is checked as before, except
/// that it may not use a tenant's sending domain (`550 5.7.1`, `TenantRules.foreignDomainRefusal`).
final class TenantSMTPSession: Sendable {
    private struct State: Sendable {
        var tenant: String?
        var user: String?
        var recipients = 0
    }
    private let state = Locked(State())

    /// Records the user that authenticated and its tenant (nil: not a tenant's user).
    func authenticated(user: String, tenant: String?) { state.withLock { $0.user = user; $0.tenant = tenant } }

    /// The tenant of the session's AUTH user as it was at AUTH (nil: none, or not a tenant's user).
    var tenant: String? { state.withLock { $0.tenant } }

    /// The tenant mail of this session belongs to now: the AUTH user's tenant, still existing
    /// and still owning that user (removing a user or deleting its tenant takes effect inside a
    /// session too, rather than turning the session into a tenant-less one).
    /// - Returns: `.none` for a session without a tenant user; else the tenant, or the refusal.
    func current(_ tenants: TenantDirectory) -> Result<Tenant, TenantRefusal>? {
        let (name, user) = state.withLock { ($0.tenant, $0.user) }
        guard let name else { return nil }
        guard let user, tenants.smtpUser(user)?.tenant == name, let tenant = tenants.tenant(named: name) else {
            let text = "SMTP user \(user ?? "-") of tenant \(name) no longer exists"
            return .failure(TenantRefusal(reply: SMTPReply(550, "5.7.1", text), httpStatus: 403, code: "unauthorized", message: text))
        }
        return .success(tenant)
    }

    /// Chains the tenant checks after the session's existing MAIL and RCPT checks.
    func install(on session: inout SMTPServerSession, tenants: TenantDirectory, clock: any WallClock) {
        let mailBefore = session.mailCheck, rcptBefore = session.recipientCheck
        session.mailCheck = { [self] reversePath, parameters in
            if let refusal = mailBefore?(reversePath, parameters) { return refusal }
            state.withLock { $0.recipients = 0 }
            let tenant: Tenant
            switch current(tenants) {
            case nil: return tenants.rules.foreignDomainRefusal(reversePath: reversePath.address, content: nil)?.reply
            case .failure(let refusal)?: return refusal.reply
            case .success(let t)?: tenant = t
            }
            let rules = tenants.rules
            return (rules.stateRefusal(tenant) ?? rules.senderRefusal(tenant: tenant.name, reversePath: reversePath.address))?.reply
        }
        session.recipientCheck = { [self] recipient, reversePath in
            if let refusal = rcptBefore?(recipient, reversePath) { return refusal }
            let (name, count) = state.withLock { s in (s.tenant, s.recipients + 1) }
            guard let name, let tenant = tenants.tenant(named: name) else { return nil }
            if let refusal = tenants.rules.recipientRefusal(tenant, count: count) { return refusal.reply }
            if count == 1, let refusal = tenants.usageRefusal(tenant, now: clock.now()) { return refusal.reply }
            state.withLock { $0.recipients = count }
            return nil
        }
    }
}
