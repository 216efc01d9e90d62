import Foundation
import HatoHTTP

/// `GET /api/v1/suppressions`, `DELETE /api/v1/suppressions/{address}` and `GET /api/v1/stats`.
///
/// A tenant's suppression list is the entries scoped to its sending domains: with
/// `suppression.scope: sender_domain` (what a relay service with tenants sets) a hard bounce of
/// a tenant's message suppresses the address for that sending domain only, and every domain
/// belongs to one tenant — so no tenant sees, or is blocked by, another's list. Global entries
/// (an operator's, or every bounce under `scope: global`) are the operator's and not shown.
extension TenantHTTPAPI {
    /// One suppression entry as the API shows it.
    struct SuppressionView: Encodable {
        var address: String
        /// The sending domain the entry applies to.
        var domain: String
        /// The bounce category (`bad-mailbox`, …) when it came from a bounce.
        var category: String?
        var reason: String?
        /// `bounce`, `operator`, `api`, …
        var source: String
        var messageId: String?
        var createdAt: String
        var expiresAt: String?
    }

    /// `GET /api/v1/stats`.
    struct StatsView: Encodable {
        var tenant: String
        var state: String
        var stateReason: String?
        var limits: TenantLimits
        /// Messages accepted this UTC hour, day and calendar month.
        var usage: TenantUsage
        var domains: [String]
    }

    /// The tenant's domains (lower-case).
    private func domains(of tenant: Tenant) throws -> [String] {
        try store.sendingDomains(tenant: tenant.name).map(\.domain)
    }

    /// The entries scoped to the tenant's domains, newest first (at most 1000; `address=` for one).
    func suppressions(_ query: [String: String], tenant: Tenant) -> HTTPResponse {
        do {
            let address = query["address"].flatMap { $0.isEmpty ? nil : $0 }
            let entries = try store.suppressions(scopes: try domains(of: tenant), address: address, now: clock.now(), limit: 1000)
            return APIJSON.response(["suppressions": entries.map { e in
                SuppressionView(address: e.address, domain: e.scope ?? "", category: e.category, reason: e.reason, source: e.source,
                                messageId: e.messageID, createdAt: Self.timestamp(e.createdAt), expiresAt: e.expiresAt.map(Self.timestamp))
            }])
        } catch {
            log.error("cannot read suppressions", ["tenant": tenant.name, "error": "\(error)"])
            return APIError.unavailable("the suppression list cannot be read now; try again").response
        }
    }

    /// Removes `address` from the lists of every domain of the tenant (`404` when none had it).
    func removeSuppression(_ address: String, tenant: Tenant) -> HTTPResponse {
        do {
            var removed = 0
            for domain in try domains(of: tenant) { removed += try store.removeSuppression(address: address, scope: domain) }
            guard removed > 0 else { return APIError.notFound("\(address) is not on this tenant's suppression list").response }
            log.info("suppression removed by a tenant", ["tenant": tenant.name, "entries": "\(removed)"])
            return APIJSON.response(["removed": removed])
        } catch {
            log.error("cannot remove a suppression", ["tenant": tenant.name, "error": "\(error)"])
            return APIError.unavailable("the suppression list cannot be changed now; try again").response
        }
    }

    /// The tenant's state, limits, counts and domains.
    func stats(tenant: Tenant) -> HTTPResponse {
        do {
            return APIJSON.response(StatsView(tenant: tenant.name, state: tenant.state.rawValue, stateReason: tenant.stateReason,
                                              limits: tenant.limits, usage: try store.usage(tenant: tenant.name, now: clock.now()),
                                              domains: try domains(of: tenant)))
        } catch {
            log.error("cannot read a tenant's counts", ["tenant": tenant.name, "error": "\(error)"])
            return APIError.unavailable("the counts cannot be read now; try again").response
        }
    }
}
