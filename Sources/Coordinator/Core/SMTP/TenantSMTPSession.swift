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
/// Checks of mail without a tenant (cluster.yml users, relay networks) are unchanged.
final class TenantSMTPSession: Sendable {
    private struct State: Sendable {
        var tenant: String?
        var recipients = 0
    }
    private let state = Locked(State())

    /// Records the tenant of the user that authenticated (nil: not a tenant's user).
    func authenticated(tenant: String?) { state.withLock { $0.tenant = tenant } }

    /// Chains the tenant checks after the session's existing MAIL and RCPT checks.
    func install(on session: inout SMTPServerSession, tenants: TenantDirectory, clock: any WallClock) {
        let mailBefore = session.mailCheck, rcptBefore = session.recipientCheck
        session.mailCheck = { [self] reversePath, parameters in
            if let refusal = mailBefore?(reversePath, parameters) { return refusal }
            let name = state.withLock { s -> String? in s.recipients = 0; return s.tenant }
            guard let name else { return nil }
            guard let tenant = tenants.tenant(named: name) else {
                return SMTPReply(550, "5.7.1", "tenant \(name) no longer exists")
            }
            let rules = tenants.rules
            return (rules.stateRefusal(tenant) ?? rules.senderRefusal(tenant: name, reversePath: reversePath.address))?.reply
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
