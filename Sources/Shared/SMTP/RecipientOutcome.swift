import Foundation

/// The result class of one recipient's delivery attempt: delivered (2xx to the content, RFC 5321
/// §4.2.5), deferred (4xx, timeout, connection failure: retry later) or failed (5xx: bounce).
public typealias OutcomeStatus = DeliveryStatus.Disposition

/// One recipient of a delivery attempt.
public struct DeliveryRecipient: Sendable, Hashable {
    /// The caller's recipient id (echoed in `RecipientOutcome.recipientID`).
    public let id: Int64
    /// The forward path without angle brackets, e.g. `user@example.com`.
    public let address: String

    /// A recipient from its id and address.
    public init(id: Int64, address: String) { self.id = id; self.address = address }
}

/// What happened to one recipient.
public struct RecipientOutcome: Sendable, Hashable {
    /// The recipient's id from `DeliveryRecipient.id`.
    public let recipientID: Int64
    /// Delivered, deferred or failed: normally `reply.disposition`, but a recipient carried over
    /// to a later transaction (452, or 552 5.5.3, to RCPT) is deferred whatever the code.
    public let status: OutcomeStatus
    /// The reply behind the outcome (e.g. 250, 451 4.4.2, 550 5.1.1): the server's, or a
    /// synthetic one for a local failure.
    public let reply: DeliveryStatus

    /// An outcome from its parts.
    public init(recipientID: Int64, status: OutcomeStatus, reply: DeliveryStatus) {
        self.recipientID = recipientID; self.status = status; self.reply = reply
    }
}
