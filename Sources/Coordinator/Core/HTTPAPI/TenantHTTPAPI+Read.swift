import Foundation
import HatoHTTP

/// `GET /api/v1/messages/{id}` and `GET /api/v1/events`.
extension TenantHTTPAPI {
    /// One recipient as the API shows it.
    struct RecipientView: Encodable {
        var address: String
        /// `queued`, `leased`, `deferred`, `delivered`, `failed`, `expired`, `suppressed`, `held`, `deleted`.
        var state: String
        var attempts: Int
        /// RFC 3339 UTC, nil when no attempt is planned.
        var nextAttemptAt: String?
        var lastReply: ReplyView?
        var mx: String?
        var sendingIp: String?
        var updatedAt: String
    }

    /// The last SMTP reply (or the local reason) for a recipient.
    struct ReplyView: Encodable {
        var code: Int?
        var enhanced: String?
        var text: String
    }

    /// One delivery event as the API shows it.
    struct EventView: Encodable {
        var id: Int64
        var kind: String
        var messageId: String
        var recipient: String?
        var code: Int?
        var enhanced: String?
        var text: String?
        var mx: String?
        var sendingIp: String?
        var at: String

        init(_ e: TenantEvent) {
            id = e.id; kind = e.kind; messageId = e.messageID; recipient = e.recipient; code = e.code; enhanced = e.enhanced
            text = e.text; mx = e.mx; sendingIp = e.sendingIP; at = TenantHTTPAPI.timestamp(e.at)
        }
    }

    /// A message as the API shows it.
    struct MessageView: Encodable {
        var id: String
        var tenant: String
        var mailFrom: String
        var size: Int
        var receivedAt: String
        var recipients: [RecipientView]
        var events: [EventView]
    }

    /// A page of events.
    struct EventPage: Encodable {
        var events: [EventView]
        /// The cursor for the next page (`since=`): the last event's id, or `since` when empty.
        var next: Int64
        /// Whether the page is full (more may follow at once).
        var hasMore: Bool
    }

    /// RFC 3339 UTC with milliseconds (`2026-01-31T12:00:00.123Z`) of seconds since 1970.
    static func timestamp(_ seconds: Double) -> String {
        Date(timeIntervalSince1970: seconds).formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true))
    }

    /// The message `id` when it is the tenant's; `404` otherwise (unknown and foreign alike).
    func message(id: String, tenant: Tenant) -> HTTPResponse {
        let record: MessageRecord?
        let events: [TenantEvent]
        do {
            record = try store.message(id: id)
            events = record.map(tenant.owns) == true ? try store.tenantEvents(messageID: id) : []
        } catch {
            log.error("cannot read a message", ["id": id, "error": "\(error)"])
            return APIError.unavailable("the queue cannot be read now; try again").response
        }
        guard let record, tenant.owns(record) else { return APIError.notFound("no message \(id) for this API key").response }
        let recipients = record.recipients.map { r in
            RecipientView(address: r.address, state: r.state.rawValue, attempts: r.attempts, nextAttemptAt: r.nextAttemptAt.map(Self.timestamp),
                          lastReply: r.lastReply.map { ReplyView(code: $0.code.rawValue, enhanced: $0.enhanced?.description, text: $0.text) }
                              ?? r.lastTextWithoutReply.map { ReplyView(code: nil, enhanced: nil, text: $0) },
                          mx: r.mxHost, sendingIp: r.sendingIP, updatedAt: Self.timestamp(r.updatedAt))
        }
        let view = MessageView(id: record.id, tenant: tenant.name, mailFrom: record.reversePath, size: record.size,
                               receivedAt: Self.timestamp(record.receivedAt), recipients: recipients, events: events.map(EventView.init))
        return APIJSON.response(view)
    }

    /// The events query: `since` (an event id, default 0) and `limit` (1–1000, default 100).
    /// - Returns: the values, or the `400` naming the bad parameter.
    static func eventQuery(_ query: [String: String]) -> Result<(since: Int64, limit: Int), APIError> {
        var since: Int64 = 0, limit = 100
        if let s = query["since"] {
            guard let v = Int64(s), v >= 0 else { return .failure(.invalidRequest("since must be an event id (an integer ≥ 0)", field: "since")) }
            since = v
        }
        if let l = query["limit"] {
            guard let v = Int(l), (1...1000).contains(v) else { return .failure(.invalidRequest("limit must be 1 to 1000", field: "limit")) }
            limit = v
        }
        return .success((since, limit))
    }

    /// The tenant's events after `since`, oldest first.
    func events(_ query: [String: String], tenant: Tenant) -> HTTPResponse {
        let since: Int64, limit: Int
        switch Self.eventQuery(query) {
        case .success(let q): (since, limit) = q
        case .failure(let e): return e.response
        }
        do {
            let events = try store.tenantEvents(tenant: tenant.name, after: since, limit: limit)
            // The cursor moves over every event read; a deleted namesake's are not shown.
            return APIJSON.response(EventPage(events: events.filter(tenant.owns).map(EventView.init), next: events.last?.id ?? since,
                                              hasMore: events.count == limit))
        } catch {
            log.error("cannot read events", ["tenant": tenant.name, "error": "\(error)"])
            return APIError.unavailable("the events cannot be read now; try again").response
        }
    }
}
