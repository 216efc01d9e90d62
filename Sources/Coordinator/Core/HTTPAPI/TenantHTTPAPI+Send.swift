import Foundation
import HatoConfig
import HatoCrypto
import HatoHTTP
import HatoIO
import HatoMIME
import HatoSupport
import SMTPCore

/// `POST /api/v1/messages`.
extension TenantHTTPAPI {
    /// The most octets of an `Idempotency-Key`.
    static let maxIdempotencyKeyLength = 255

    /// The `Idempotency-Key` field: nil when absent, else 1–255 visible ASCII characters.
    /// - Returns: the key, or the `400` to answer.
    static func idempotencyKey(_ headers: [String: String]) -> Result<String?, APIError> {
        guard let key = headers["idempotency-key"] else { return .success(nil) }
        guard !key.isEmpty, key.utf8.count <= maxIdempotencyKeyLength, key.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            return .failure(.invalidRequest("Idempotency-Key must be 1 to \(maxIdempotencyKeyLength) visible ASCII characters",
                                            field: "Idempotency-Key"))
        }
        return .success(key)
    }

    /// Sends one message for `tenant`: checks, counts, queues, answers `202` (see docs/http-api.md
    /// "Errors" for the order of the checks). With an `Idempotency-Key` the whole exchange runs
    /// under that key's lock, so a retry racing its original waits and is answered from its record.
    func send(_ request: HTTPRequest, tenant: Tenant, keyID: String) -> HTTPResponse {
        if let refusal = tenants.rules.stateRefusal(tenant) { return APIError.tenant(refusal).response }
        if let type = request.headers["content-type"], !type.lowercased().hasPrefix("application/json") {
            return APIError(status: 415, code: "unsupported_media_type", message: "the body must be JSON: Content-Type: application/json").response
        }
        let key: String?
        switch Self.idempotencyKey(request.headers) {
        case .success(let k): key = k
        case .failure(let e): return e.response
        }
        guard let key else { return queue(request, tenant: tenant, keyID: keyID, idempotency: nil) }
        let hash = Hex.encode(Crypto.sha256(request.body))
        return idempotencyLocks.withLock(tenant.name + "\u{0}" + key) {
            let ttl = current.withLock { $0.settings.idempotencyTTL }
            let now = clock.now()
            do {
                if let earlier = try store.idempotencyRecord(tenant: tenant.name, key: key), earlier.createdAt < now.timeIntervalSince1970 - ttl {
                    // Expired but not purged yet: purge now, or the new record (written only when
                    // the key is free) would be lost and every retry queue again.
                    try store.purgeTenantData(eventsBefore: .distantPast, idempotencyBefore: now.addingTimeInterval(-ttl), now: now)
                }
                if let earlier = try store.idempotencyRecord(tenant: tenant.name, key: key),
                   earlier.createdAt >= now.timeIntervalSince1970 - ttl {
                    guard earlier.requestHash == hash else {
                        return APIError(status: 422, code: "idempotency_key_reused",
                                        message: "this Idempotency-Key was used for a different request body; use a new key for a new message").response
                    }
                    log.info("idempotent replay", ["id": earlier.messageID, "tenant": tenant.name, "key": keyID])
                    return APIJSON.response(["id": earlier.messageID], status: 202, headers: ["Idempotent-Replayed": "true"])
                }
            } catch {
                log.error("cannot read an idempotency record", ["tenant": tenant.name, "error": "\(error)"])
                return APIError.unavailable("the queue cannot be read now; retry with the same Idempotency-Key").response
            }
            let record = IdempotencyRecord(tenant: tenant.name, key: key, requestHash: hash, messageID: "", createdAt: now.timeIntervalSince1970)
            return queue(request, tenant: tenant, keyID: keyID, idempotency: record)
        }
    }

    /// Parses, builds, checks, counts and queues one message.
    private func queue(_ request: HTTPRequest, tenant: Tenant, keyID: String, idempotency: IdempotencyRecord?) -> HTTPResponse {
        let (settings, router) = current.snapshot
        let rules = tenants.rules
        let now = clock.now()
        // Parse and build: a malformed request is refused before anything is counted or stored.
        let built: BuiltMessage
        let requested: MessagePriority?
        do throws(MessageBuildError) {
            let send = try SendRequest(json: request.body)
            requested = send.priority
            // Limits are checked below, in the documented order; these bounds only cap the work.
            let builder = MessageBuilder(hostname: settings.hostname, maximumSize: max(settings.maxMessageSize, 2 * request.body.count + 65_536),
                                         maximumRecipients: Int.max)
            built = try builder.build(send, date: now)
        } catch {
            return APIError.build(error).response
        }
        let sender = built.reversePath.address
        if let refusal = rules.senderRefusal(tenant: tenant.name, reversePath: sender) ?? rules.authorRefusal(tenant: tenant.name, content: built.content) {
            return APIError.tenant(refusal).response
        }
        if let refusal = rules.recipientRefusal(tenant, count: built.recipients.count) {
            return APIError.tenant(refusal).response
        }
        if built.recipients.count > settings.maxRecipients {
            return APIError.build(.tooManyRecipients(built.recipients.count, limit: settings.maxRecipients)).response
        }
        let id = Identifier.queueID(now: now)
        let peer = request.peer ?? SocketAddress(host: "127.0.0.1", port: 0)
        let received = ReceivedHeader.build(heloName: "api", peer: peer, hostname: settings.hostname,
                                            protocol: request.isTLS ? "HTTPS" : "HTTP", tls: nil, id: id,
                                            recipient: built.recipients.count == 1 ? built.recipients[0] : nil, date: now)
        guard received.count + built.content.count <= settings.maxMessageSize else {
            return APIError.build(.messageTooLarge(received.count + built.content.count, limit: settings.maxMessageSize)).response
        }
        if settings.suppression.mode == .rejectAtRcpt {
            let suppressed = built.recipients.map(\.address).filter {
                store.suppressionReply(recipient: $0, sender: sender, settings: settings.suppression, now: now) != nil
            }
            if !suppressed.isEmpty {
                return APIError(status: 422, code: "recipients_suppressed",
                                                 message: "suppressed recipients (earlier hard bounces or complaints): \(suppressed.prefix(20).joined(separator: ", "))"
                                                     + (suppressed.count > 20 ? " and \(suppressed.count - 20) more" : "")).response
            }
        }
        // Routing: the tenant's pool, else the cluster's rules (as SMTP without an AUTH user).
        let pool: String, content: [UInt8], routeReason: String, headerPriority: MessagePriority?
        do throws(PoolRouter.UnknownPool) {
            let decision = try router.route(authUser: nil, reversePath: sender, content: built.content)
            content = decision.content
            headerPriority = decision.requestedPriority
            (pool, routeReason) = tenant.pool.map { ($0, "tenant \(tenant.name)") } ?? (decision.pool, decision.reason)
        } catch {
            return APIError(status: 400, code: "unknown_pool", message: "\(error.header) names a pool this cluster does not have").response
        }
        guard settings.pools.contains(pool) else {
            log.error("tenant's pool is not configured; message refused", ["tenant": tenant.name, "pool": pool])
            return APIError.unavailable("the tenant's pool \(pool) is not configured on this cluster; contact the operator").response
        }
        if let headroom, !headroom.admit(declaredSize: received.count + content.count) {
            return APIError.insufficientStorage.response
        }
        // Count against the limits last: nothing is counted for a request refused above.
        let refusal: TenantRefusal?
        do { refusal = try tenants.admit(tenant, now: now) } catch {
            log.error("cannot count a tenant's message; refused with 503", ["tenant": tenant.name, "error": "\(error)"])
            return APIError.unavailable("the tenant's limits cannot be checked now; try again").response
        }
        if let refusal { return APIError.tenant(refusal).response }

        var record = NewMessage(id: id, reversePath: sender, recipients: built.recipients.map(\.address), pool: pool,
                                content: received + content, heloName: "api", clientAddress: peer.host, receivedAt: now,
                                tenant: tenant.name, idempotency: idempotency)
        record.idempotency?.messageID = id
        // The lowest class named wins: the pool's, the tenant's, the request's field or header (issue 18).
        record.priority = MessagePriority.resolved([router.priority(ofPool: pool), tenant.priority, requested, headerPriority])
        do {
            try store.enqueue(record)
        } catch {
            tenants.release(tenant, reservedAt: now)
            let full = QueueWriteFailure.isStorageFull(error)
            if full { headroom?.noteStorageFull() }
            log.error(full ? "queue full; message refused with 507" : "queue write failed; message refused with 503",
                      ["error": "\(error)", "tenant": tenant.name, "client": peer.host])
            return full ? APIError.insufficientStorage.response
                                         : APIError.unavailable("the message could not be queued; nothing was stored, try again").response
        }
        headroom?.noteQueued(octets: record.content.count)
        metrics?.tenantMessages.inc(tenant.name, "accepted")
        onAccepted()
        var fields = ["id": id, "tenant": tenant.name, "key": keyID, "client": peer.host, "size": "\(record.content.count)",
                      "recipients": "\(record.recipients.count)", "pool": pool, "route": routeReason, "priority": record.priority.rawValue,
                      "protocol": request.isTLS ? "HTTPS" : "HTTP"]
        if idempotency != nil { fields["idempotency_key"] = "yes" }
        log.info("message queued", fields)
        return APIJSON.response(["id": id], status: 202)
    }
}
