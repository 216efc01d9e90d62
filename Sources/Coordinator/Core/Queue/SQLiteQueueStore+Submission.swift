import Foundation

/// What the submission server recorded about a message beyond its envelope: the AUTH user
/// (routing to pools uses it) and the RFC 3461 parameters (DSNs use them).
public struct SubmissionRecord: Sendable, Equatable {
    /// One recipient's DSN parameters.
    public struct Recipient: Sendable, Equatable {
        /// The forward-path.
        public var address: String
        /// NOTIFY (`NEVER` or a comma list, RFC 3461 §4.1), nil when not given.
        public var notify: String?
        /// ORCPT as received (`addr-type;xtext`, RFC 3461 §4.2), nil when not given.
        public var originalRecipient: String?

        /// Creates a recipient record.
        public init(address: String, notify: String?, originalRecipient: String?) {
            self.address = address
            self.notify = notify
            self.originalRecipient = originalRecipient
        }
    }

    /// The SMTP AUTH user (RFC 4954), nil when the client did not authenticate.
    public var authenticatedUser: String?
    /// RET (`FULL`/`HDRS`, RFC 3461 §4.3), nil when not given.
    public var dsnReturn: String?
    /// ENVID as received (xtext, RFC 3461 §4.4), nil when not given.
    public var envelopeID: String?
    /// The recipients in RCPT order.
    public var recipients: [Recipient]
}

extension SQLiteQueueStore {
    /// The AUTH user and DSN parameters stored with a message.
    /// - Parameter messageID: the queue id.
    /// - Returns: the record, nil for an unknown id.
    /// - Throws: `SQLiteError`.
    public func submissionRecord(messageID: String) throws -> SubmissionRecord? {
        try lock.withLock {
            guard var record = try db.prepare("SELECT auth_user, dsn_ret, dsn_envid FROM messages WHERE id=?").query([.text(messageID)], {
                SubmissionRecord(authenticatedUser: $0.optionalText(0), dsnReturn: $0.optionalText(1), envelopeID: $0.optionalText(2), recipients: [])
            }).first else { return nil }
            record.recipients = try db.prepare("SELECT address, dsn_notify, dsn_orcpt FROM recipients WHERE message_id=? ORDER BY id").query([.text(messageID)]) {
                SubmissionRecord.Recipient(address: $0.text(0), notify: $0.optionalText(1), originalRecipient: $0.optionalText(2))
            }
            return record
        }
    }
}
