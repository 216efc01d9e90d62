import Foundation

/// Which RFC 5321 §4.5.3.2 timeout applies while waiting for the next reply.
public enum SMTPClientWait: Sendable, Equatable {
    /// The 220 greeting (§4.5.3.2.1).
    case greeting
    /// The reply to EHLO or HELO.
    case ehlo
    /// The reply to STARTTLS (RFC 3207).
    case startTLS
    /// The reply to MAIL (§4.5.3.2.2).
    case mail
    /// The reply to RCPT (§4.5.3.2.3).
    case rcpt
    /// The 354 reply to DATA (§4.5.3.2.4).
    case dataInitiation
    /// The reply after the terminating CRLF.CRLF or to a BDAT chunk (§4.5.3.2.6).
    case dataTermination
    /// The reply to RSET.
    case reset
    /// The reply to QUIT.
    case quit
}

/// Why a session ended without a server reply.
public enum SMTPSessionFailure: Sendable, Equatable {
    /// No reply (or write progress) within the applicable timeout.
    case timeout(String)
    /// The connection was closed or reset.
    case connectionClosed(String)
    /// The server broke the reply syntax or limits.
    case protocolError(String)

    /// The deferral for recipients caught by this failure: 451 4.4.2 for timeouts and lost
    /// connections (RFC 3463 §3.5, bad connection), 451 4.5.0 for protocol errors.
    var deferral: DeliveryStatus {
        switch self {
        case .timeout(let what): return .localDeferral(4, 2, "timeout: \(what)")
        case .connectionClosed(let what): return .localDeferral(4, 2, "connection lost: \(what)")
        case .protocolError(let what): return .localDeferral(5, 0, "SMTP protocol error: \(what)")
        }
    }
}

/// Outbound STARTTLS policy (RFC 3207, RFC 7435 opportunistic security).
public enum SMTPTLSPolicy: String, Sendable, Equatable, CaseIterable {
    /// Never send STARTTLS.
    case disabled
    /// Use STARTTLS when offered; without it, or after a handshake failure, deliver in plaintext.
    case opportunistic
    /// Deliver only over TLS: a server without STARTTLS, or a failed handshake, defers the message.
    case required
}

/// The connection set-up of an SMTP client session as a pure state machine: 220 greeting →
/// EHLO (HELO only after a 500 or 502 to EHLO, never after 421) → STARTTLS when the policy and
/// the server allow it → EHLO again over TLS → ready for transactions (RFC 5321 §3.1, §4.1.1.1,
/// RFC 3207).
///
/// Every failure here is temporary for the message and means "try the next MX": a non-2xx
/// greeting, a rejected EHLO/HELO, a timeout, TLS required but unavailable, or a failed TLS
/// handshake (`Failure.tlsHandshakeFailed`: an opportunistic client may retry that MX in
/// plaintext). A 421 closes without QUIT; other rejections send QUIT first.
public struct SMTPClientHandshake: Sendable {
    /// The machine's position.
    public enum State: Sendable, Equatable {
        /// Connected; waiting for the 220 greeting.
        case awaitingGreeting
        /// EHLO sent (`secured`: over TLS).
        case awaitingEHLO(secured: Bool)
        /// HELO sent after EHLO was refused with 500/502.
        case awaitingHELO
        /// STARTTLS sent.
        case awaitingSTARTTLS
        /// The 220 to STARTTLS arrived; the driver runs the TLS handshake.
        case negotiatingTLS
        /// The session failed; QUIT sent, waiting for its reply.
        case awaitingQUIT
        /// Ready for mail transactions.
        case ready
        /// The session failed (see `failure`); close the connection.
        case failed
    }

    /// What the driver must do next.
    public enum Action: Sendable, Equatable {
        /// Write this command line.
        case send([UInt8])
        /// Run the TLS client handshake, then call `tlsEstablished()` or `tlsFailed(_:)`. Bytes the
        /// server sent after its 220 are a protocol error: call `fail(.protocolError(…))` instead.
        case startTLS
        /// The session is ready (see `capabilities`, `secured`).
        case ready
        /// Close the connection.
        case close
    }

    /// Why the session could not be set up: the deferral every recipient gets if no other MX works.
    public struct Failure: Sendable, Equatable {
        /// The deferral: a 4yz code (the server's 4yz reply, or 451) with a `4.x.x` enhanced
        /// status code, and what happened as the text.
        public var reply: DeliveryStatus
        /// The TLS handshake itself failed (an opportunistic client may retry this MX in plaintext).
        public var tlsHandshakeFailed: Bool

        /// - Parameters:
        ///   - reply: the deferral.
        ///   - tlsHandshakeFailed: whether the TLS handshake itself failed.
        public init(reply: DeliveryStatus, tlsHandshakeFailed: Bool) {
            self.reply = reply; self.tlsHandshakeFailed = tlsHandshakeFailed
        }
    }

    /// The EHLO/HELO name.
    public let heloName: String
    /// The STARTTLS policy.
    public let tlsPolicy: SMTPTLSPolicy
    /// Whether the driver can run a TLS handshake at all.
    public let tlsAvailable: Bool
    /// The current state.
    public private(set) var state: State = .awaitingGreeting
    /// What the server advertised (after the last successful EHLO/HELO).
    public private(set) var capabilities: RemoteSMTPCapabilities? = nil
    /// Whether STARTTLS succeeded.
    public private(set) var secured = false
    /// Set when the state is `.failed` or `.awaitingQUIT`.
    public private(set) var failure: Failure? = nil
    /// The server's greeting.
    public private(set) var greeting: SMTPReply? = nil

    /// - Parameters:
    ///   - heloName: the EHLO/HELO argument (a host name or address literal).
    ///   - tlsPolicy: whether to use STARTTLS.
    ///   - tlsAvailable: whether the driver has a TLS client (false: behave as `.disabled`,
    ///     and `.required` fails).
    public init(heloName: String, tlsPolicy: SMTPTLSPolicy = .opportunistic, tlsAvailable: Bool = false) {
        self.heloName = heloName
        self.tlsPolicy = tlsPolicy
        self.tlsAvailable = tlsAvailable
        if !SMTPClientTransaction.isSafeArgument(heloName, allowEmpty: false) {
            failure = Failure(reply: .localDeferral(3, 5, "invalid HELO name configured"), tlsHandshakeFailed: false)
            state = .failed
        }
    }

    /// Whether the session is ready for transactions.
    public var isReady: Bool { state == .ready }

    /// Which timeout applies to the next read, or nil when no reply is awaited.
    public var waitingFor: SMTPClientWait? {
        switch state {
        case .awaitingGreeting: return .greeting
        case .awaitingEHLO, .awaitingHELO: return .ehlo
        case .awaitingSTARTTLS: return .startTLS
        case .awaitingQUIT: return .quit
        case .negotiatingTLS, .ready, .failed: return nil
        }
    }

    /// Feeds one complete server reply.
    /// - Returns: what to do next, in order.
    public mutating func receive(_ reply: SMTPReply) -> [Action] {
        switch state {
        case .ready, .failed, .negotiatingTLS:
            return []
        case .awaitingQUIT:
            state = .failed
            return [.close]
        case .awaitingGreeting:
            greeting = reply
            guard reply.replyCode.isPositiveCompletion else { return reject(reply, stage: "greeting") }
            state = .awaitingEHLO(secured: false)
            return [.send(Array("EHLO \(heloName)\r\n".utf8))]
        case .awaitingEHLO(let isSecured):
            if reply.replyCode.isPositiveCompletion {
                capabilities = RemoteSMTPCapabilities(ehloReply: reply)
                return afterCapabilities()
            }
            if !isSecured && (reply.code == 500 || reply.code == 502) {
                state = .awaitingHELO
                return [.send(Array("HELO \(heloName)\r\n".utf8))]
            }
            return reject(reply, stage: "EHLO")
        case .awaitingHELO:
            guard reply.replyCode.isPositiveCompletion else { return reject(reply, stage: "HELO") }
            capabilities = RemoteSMTPCapabilities()
            return afterCapabilities()
        case .awaitingSTARTTLS:
            if reply.code == 220 {
                state = .negotiatingTLS
                return [.startTLS]
            }
            if reply.code == 421 || tlsPolicy == .required {
                return reject(reply, stage: "STARTTLS", enhanced: tlsPolicy == .required ? EnhancedStatusCode(.persistentTransientFailure, 7, 4) : nil)
            }
            // Opportunistic: the session stays usable in plaintext (RFC 3207 §4).
            state = .ready
            return [.ready]
        }
    }

    /// Reports that the TLS handshake succeeded: EHLO is sent again (RFC 3207 §4.2).
    public mutating func tlsEstablished() -> [Action] {
        guard state == .negotiatingTLS else { return [] }
        secured = true
        capabilities = nil
        state = .awaitingEHLO(secured: true)
        return [.send(Array("EHLO \(heloName)\r\n".utf8))]
    }

    /// Reports that the TLS handshake failed; the connection is unusable.
    public mutating func tlsFailed(_ reason: String) -> [Action] {
        guard state == .negotiatingTLS else { return [] }
        failure = Failure(reply: .localDeferral(7, 5, "TLS handshake failed: \(reason)"), tlsHandshakeFailed: true)
        state = .failed
        return [.close]
    }

    /// Reports that no reply will come (timeout, closed connection, protocol error).
    /// - Returns: `[.close]`.
    public mutating func fail(_ sessionFailure: SMTPSessionFailure) -> [Action] {
        if state == .awaitingQUIT || state == .failed {
            state = .failed
            return [.close]
        }
        failure = Failure(reply: sessionFailure.deferral, tlsHandshakeFailed: false)
        state = .failed
        return [.close]
    }

    private mutating func afterCapabilities() -> [Action] {
        let caps = capabilities ?? RemoteSMTPCapabilities()
        if !secured && tlsPolicy != .disabled && tlsAvailable && caps.startTLS {
            state = .awaitingSTARTTLS
            return [.send(Array("STARTTLS\r\n".utf8))]
        }
        if !secured && tlsPolicy == .required {
            let why = !tlsAvailable ? "this node has no TLS client" : "the server does not offer STARTTLS"
            failure = Failure(reply: .localDeferral(7, 4, "TLS is required but \(why)"), tlsHandshakeFailed: false)
            state = .awaitingQUIT
            return [.send(Array("QUIT\r\n".utf8))]
        }
        state = .ready
        return [.ready]
    }

    /// A non-2xx reply during set-up: QUIT (or close after 421), deferral, next MX.
    private mutating func reject(_ reply: SMTPReply, stage: String, enhanced override: EnhancedStatusCode? = nil) -> [Action] {
        // Set-up refusals defer: a 4yz keeps its code and enhanced status, anything else is 451 4.4.0.
        let code: ReplyCode = reply.replyCode.isTransient ? reply.replyCode : 451
        let enhanced = override ?? DeliveryStatus(reply: reply).enhancedStatus(ofClass: .persistentTransientFailure,
                                                                               orElse: EnhancedStatusCode(.persistentTransientFailure, 4, 0))
        failure = Failure(reply: DeliveryStatus(code, enhanced, "\(stage) rejected: \(SMTPClientTransaction.summary(reply))"),
                          tlsHandshakeFailed: false)
        if reply.code == 421 {
            state = .failed
            return [.close]
        }
        state = .awaitingQUIT
        return [.send(Array("QUIT\r\n".utf8))]
    }
}
