import Foundation

// The table map of `hato-coordinator store migrate --from sqlite --to postgresql`: every table
// the SQLite store keeps (SQLiteQueueStore*.swift) next to its PostgreSQL twin
// (PostgreSQLQueueStore+Schema.swift). The columns are the same names and meanings on both
// sides; the SQLite types (TEXT, INTEGER, REAL, BLOB) become text, bigint, double precision and
// bytea.
//
// Copied, column for column (primary key in brackets):
//   messages [id]                 body BLOB → bytea, NULL when already purged; a body in the
//                                 spool (`body_segment`, `body_offset`: BodySpool.swift) is read
//                                 from it into `body` — PostgreSQL keeps every body in its row
//   recipients [id]               `pool` is NULL on rows written before it existed: filled
//                                 from the message (PostgreSQL's column is NOT NULL)
//   leases [id]                   PostgreSQL's `term` stays NULL (an SQLite run had no shared
//                                 term); the new leader reconciles or expires them as usual
//   ip_daily [ip, day]            warm-up counts
//   backoffs [ip, provider]
//   pauses [kind, name]
//   node_admin [node]             drain state
//   ip_owners [ip]                the IP assignment table
//   suppressions [address, scope]
//   recipient_events [seq]        events not yet processed by the reporter
//   dsn_pending [recipient_id]    DSN entries waiting for their message's DSN
//   dsn_delay_handled [recipient_id]
//   webhook_outbox [id]           body BLOB → bytea
//   tenants [name], tenant_users [name], api_keys [id], sending_domains [domain],
//   sending_domain_keys [domain, selector], tenant_usage [tenant, time_window],
//   idempotency_keys [tenant, key], tenant_events [id], tenant_version [id]
//                                 the tenant layer (issue 16), with `messages.tenant`;
//                                 sealed keys and key hashes BLOB → bytea
//   operators [name]              the dashboard's operator accounts (PostgreSQL migration 4)
//   complaints [id]               complaints from feedback loops (issue 18, PostgreSQL migration 5)
//   ip_health_history [ip, zone, at, event]
//                                 the sending IPs' blocklist/FCrDNS history (migration 7)
//   messages.priority, recipients.priority, tenants.priority
//                                 the priority class (issue 18, PostgreSQL migration 6)
//   reputation_counts [ip, provider, bucket, kind], ip_provider_daily [ip, provider, day]
//                                 reputation signals and per-provider warm-up counts (migration 8)
// The identity columns (recipients.id, recipient_events.seq, webhook_outbox.id, tenant_events.id, complaints.id) keep their
// values, and their PostgreSQL sequences continue after the SQLite high-water mark
// (`sqlite_sequence`), so a recipient id or an event id (`message.seq`, the webhook event id)
// is never given twice.
//
// Only in SQLite:
//   run_state [key]               mapped key by key (`StoreMigration.leaseHold`): the lease
//                                 hold is carried over (`lease_hold_until`, including the hold
//                                 an unclean stop after a reboot would have decided); `term` and
//                                 `store_id` are not (PostgreSQL has its leadership row);
//                                 `boot_id`, `clean_stop` and `lease_horizon` describe the
//                                 SQLite file's own runs (PostgreSQL commits every lease
//                                 durably and keeps no horizon). PostgreSQL has a run_state
//                                 table too: it receives `lease_hold_until` and the
//                                 `migrated_from_sqlite` marker.
//   sqlite_sequence               read for the identity high-water marks (above).
//   the TEMP triggers             per connection; PostgreSQL's triggers belong to the schema
//                                 and are switched off while rows are copied in (a copied
//                                 message must not make a second `received` event).
// Only in PostgreSQL:
//   leadership                    never copied; read to refuse while a leader is live, and its
//                                 term is stored in the marker (a later term: served since).
//   schema_migrations             brought up to date before the copy (the store's migrations).

extension StoreMigration {
    /// A column's type on both sides.
    enum Kind: Sendable {
        /// TEXT / text.
        case text
        /// INTEGER / bigint.
        case int
        /// REAL / double precision.
        case double
        /// BLOB / bytea.
        case blob

        /// The PostgreSQL type a parameter is cast to.
        var postgreSQLType: String {
            switch self {
            case .text: "text"
            case .int: "bigint"
            case .double: "double precision"
            case .blob: "bytea"
            }
        }
    }

    /// One column of a copied table.
    struct Column: Sendable {
        /// The name on both sides.
        let name: String
        let kind: Kind
        /// Whether the column may be NULL.
        let nullable: Bool
        /// What the SQLite side selects instead of the column itself (`%@` is the column when
        /// the file has it, else NULL), nil for the column as is.
        let sqliteExpression: String?

        init(_ name: String, _ kind: Kind, nullable: Bool = false, sqliteExpression: String? = nil) {
            self.name = name; self.kind = kind; self.nullable = nullable; self.sqliteExpression = sqliteExpression
        }
    }

    /// One copied table.
    struct Table: Sendable {
        /// The name on both sides.
        let name: String
        let columns: [Column]
        /// The primary key's columns (rows are copied and compared in this order).
        let key: [String]
        /// The identity column whose PostgreSQL sequence continues after the SQLite high-water mark.
        let identity: String?
        /// Rows read and inserted per statement (smaller for tables with content).
        let pageSize: Int

        var keyIndexes: [Int] { key.map { k in columns.firstIndex { $0.name == k }! } }

        /// Whether rows carry content (a blob column): pages are then sized by octets too.
        var hasContent: Bool { columns.contains { $0.kind == .blob } }

        /// The first page's rows: small for content, whose size is not known yet.
        var firstPageSize: Int { hasContent ? min(16, pageSize) : pageSize }

        /// The next page's rows after `rows`: about `StoreMigration.pageOctets` of content at
        /// the last page's average, at most `pageSize` (so a queue of large messages is never
        /// held in memory a few hundred at a time).
        func nextPageSize(after rows: [[Cell]]) -> Int {
            guard hasContent, !rows.isEmpty else { return pageSize }
            let octets = rows.reduce(0) { $0 + StoreMigration.contentOctets($1) }
            return max(1, min(pageSize, StoreMigration.pageOctets / max(1, octets / rows.count)))
        }
    }

    /// Every table copied, parents before children (recipients reference messages).
    static let tables: [Table] = [
        Table(name: "messages", columns: [
            Column("id", .text), Column("reverse_path", .text), Column("pool", .text), Column("size", .int),
            Column("received_at", .double), Column("helo", .text), Column("client_address", .text),
            Column("body", .blob, nullable: true), Column("open_recipients", .int), Column("auth_user", .text, nullable: true),
            Column("dsn_ret", .text, nullable: true), Column("dsn_envid", .text, nullable: true), Column("tenant", .text, nullable: true),
            Column("priority", .text),
        ], key: ["id"], identity: nil, pageSize: 200),
        Table(name: "recipients", columns: [
            Column("id", .int), Column("message_id", .text), Column("address", .text), Column("domain", .text), Column("state", .text),
            Column("attempts", .int), Column("next_attempt_at", .double, nullable: true), Column("lease_id", .text, nullable: true),
            Column("last_code", .int, nullable: true), Column("last_enhanced", .text, nullable: true), Column("last_text", .text, nullable: true),
            Column("node", .text, nullable: true), Column("ip", .text, nullable: true), Column("mx", .text, nullable: true),
            Column("updated_at", .double), Column("dsn_notify", .text, nullable: true), Column("dsn_orcpt", .text, nullable: true),
            Column("pool", .text, sqliteExpression: "COALESCE(%@, (SELECT m.\"pool\" FROM \"messages\" m WHERE m.\"id\" = \"recipients\".\"message_id\"))"),
            Column("priority", .text),
        ], key: ["id"], identity: "id", pageSize: 2000),
        Table(name: "leases", columns: [
            Column("id", .text), Column("node", .text), Column("instance", .text), Column("ip", .text), Column("message_id", .text),
            Column("domain", .text), Column("granted_at", .double), Column("expires_at", .double),
        ], key: ["id"], identity: nil, pageSize: 2000),
        Table(name: "ip_daily", columns: [Column("ip", .text), Column("day", .int), Column("attempts", .int)],
              key: ["ip", "day"], identity: nil, pageSize: 2000),
        Table(name: "backoffs", columns: [
            Column("ip", .text), Column("provider", .text), Column("action", .text), Column("until", .double),
            Column("rate", .int, nullable: true), Column("reason", .text),
        ], key: ["ip", "provider"], identity: nil, pageSize: 2000),
        Table(name: "pauses", columns: [
            Column("kind", .text), Column("name", .text), Column("by", .text), Column("reason", .text), Column("at", .double),
        ], key: ["kind", "name"], identity: nil, pageSize: 2000),
        Table(name: "node_admin", columns: [Column("node", .text), Column("draining", .int), Column("updated_at", .double)],
              key: ["node"], identity: nil, pageSize: 2000),
        Table(name: "ip_owners", columns: [Column("ip", .text), Column("node", .text)], key: ["ip"], identity: nil, pageSize: 2000),
        Table(name: "suppressions", columns: [
            Column("address", .text), Column("scope", .text), Column("category", .text, nullable: true), Column("reason", .text, nullable: true),
            Column("source", .text), Column("message_id", .text, nullable: true), Column("created_at", .double),
            Column("expires_at", .double, nullable: true),
        ], key: ["address", "scope"], identity: nil, pageSize: 2000),
        Table(name: "recipient_events", columns: [
            Column("seq", .int), Column("kind", .text), Column("message_id", .text), Column("recipient_id", .int, nullable: true),
            Column("address", .text, nullable: true), Column("code", .int, nullable: true), Column("enhanced", .text, nullable: true),
            Column("text", .text, nullable: true), Column("node", .text, nullable: true), Column("ip", .text, nullable: true),
            Column("mx", .text, nullable: true), Column("attempts", .int, nullable: true), Column("next_attempt_at", .double, nullable: true),
            Column("lease_granted_at", .double, nullable: true), Column("at", .double), Column("detail", .text, nullable: true),
            Column("operator", .text, nullable: true), Column("note", .text, nullable: true), Column("tenant", .text, nullable: true),
        ], key: ["seq"], identity: "seq", pageSize: 2000),
        Table(name: "dsn_pending", columns: [
            Column("recipient_id", .int), Column("message_id", .text), Column("action", .text), Column("status", .text),
            Column("diagnostic", .text, nullable: true), Column("diagnostic_type", .text), Column("remote_mta", .text, nullable: true),
            Column("at", .double),
        ], key: ["recipient_id"], identity: nil, pageSize: 2000),
        Table(name: "dsn_delay_handled", columns: [Column("recipient_id", .int), Column("at", .double)],
              key: ["recipient_id"], identity: nil, pageSize: 2000),
        Table(name: "webhook_outbox", columns: [
            Column("id", .int), Column("hook", .text), Column("event_id", .text), Column("body", .blob), Column("created_at", .double),
            Column("attempts", .int), Column("next_attempt_at", .double), Column("last_error", .text, nullable: true),
        ], key: ["id"], identity: "id", pageSize: 200),
        // The tenant layer (issue 16: SQLiteQueueStore+Tenants.swift, migration 3).
        Table(name: "tenants", columns: [
            Column("name", .text), Column("state", .text), Column("state_reason", .text, nullable: true), Column("pool", .text, nullable: true),
            Column("messages_per_hour", .int, nullable: true), Column("messages_per_day", .int, nullable: true),
            Column("messages_per_month", .int, nullable: true), Column("recipients_per_message", .int, nullable: true),
            Column("webhook_url", .text, nullable: true), Column("webhook_secret", .text, nullable: true), Column("created_at", .double),
            Column("priority", .text, nullable: true),
        ], key: ["name"], identity: nil, pageSize: 2000),
        Table(name: "tenant_users", columns: [Column("name", .text), Column("tenant", .text), Column("password_hash", .text), Column("created_at", .double)],
              key: ["name"], identity: nil, pageSize: 2000),
        Table(name: "api_keys", columns: [
            Column("id", .text), Column("tenant", .text), Column("label", .text), Column("secret_hash", .blob), Column("created_at", .double),
            Column("last_used_at", .double, nullable: true), Column("revoked_at", .double, nullable: true),
        ], key: ["id"], identity: nil, pageSize: 2000),
        Table(name: "sending_domains", columns: [Column("domain", .text), Column("tenant", .text), Column("created_at", .double)],
              key: ["domain"], identity: nil, pageSize: 2000),
        Table(name: "sending_domain_keys", columns: [
            Column("domain", .text), Column("selector", .text), Column("algorithm", .text), Column("sealed_private_key", .blob), Column("public_key", .text),
        ], key: ["domain", "selector"], identity: nil, pageSize: 2000),
        Table(name: "tenant_usage", columns: [Column("tenant", .text), Column("time_window", .text), Column("count", .int)],
              key: ["tenant", "time_window"], identity: nil, pageSize: 2000),
        Table(name: "idempotency_keys", columns: [
            Column("tenant", .text), Column("key", .text), Column("request_hash", .text), Column("message_id", .text), Column("created_at", .double),
        ], key: ["tenant", "key"], identity: nil, pageSize: 2000),
        Table(name: "tenant_events", columns: [
            Column("id", .int), Column("tenant", .text), Column("kind", .text), Column("message_id", .text), Column("recipient", .text, nullable: true),
            Column("code", .int, nullable: true), Column("enhanced", .text, nullable: true), Column("text", .text, nullable: true),
            Column("mx", .text, nullable: true), Column("ip", .text, nullable: true), Column("at", .double),
        ], key: ["id"], identity: "id", pageSize: 2000),
        Table(name: "tenant_version", columns: [Column("id", .int), Column("version", .int)], key: ["id"], identity: nil, pageSize: 2000),
        Table(name: "operators", columns: [Column("name", .text), Column("password_hash", .text), Column("created_at", .double)],
              key: ["name"], identity: nil, pageSize: 2000),
        // Complaints from feedback loops (issue 18: SQLiteQueueStore+Complaints.swift, migration 5).
        Table(name: "complaints", columns: [
            Column("id", .int), Column("at", .double), Column("ip", .text), Column("provider", .text), Column("sender_domain", .text),
            Column("tenant", .text, nullable: true), Column("recipient", .text, nullable: true), Column("queue_id", .text, nullable: true),
            Column("recipient_id", .int, nullable: true), Column("feedback_type", .text), Column("reporting_mta", .text, nullable: true),
        ], key: ["id"], identity: "id", pageSize: 2000),
        Table(name: "ip_health_history", columns: [
            Column("ip", .text), Column("zone", .text), Column("at", .double), Column("event", .text), Column("codes", .text),
            Column("reason", .text, nullable: true),
        ], key: ["ip", "zone", "at", "event"], identity: nil, pageSize: 2000),
        // Reputation signals and per-provider warm-up counts (issue 18, migration 8).
        Table(name: "reputation_counts", columns: [
            Column("ip", .text), Column("provider", .text), Column("bucket", .int), Column("kind", .text), Column("count", .int),
        ], key: ["ip", "provider", "bucket", "kind"], identity: nil, pageSize: 2000),
        Table(name: "ip_provider_daily", columns: [Column("ip", .text), Column("provider", .text), Column("day", .int), Column("attempts", .int)],
              key: ["ip", "provider", "day"], identity: nil, pageSize: 2000),
    ]

    /// The names of the copied tables, in copy order.
    public static var tableNames: [String] { tables.map(\.name) }
}
