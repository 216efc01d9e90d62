import Foundation
import HatoConfig
import HatoCrypto
import HatoSupport
import SMTPCore

/// Checks AUTH credentials against `smtp.users` for the submission server.
///
/// - Rate limiting: failures are counted per client address (`AuthFailureLimiter`); a client
///   over the limit gets `.rateLimited` without a password check, so guessing costs the
///   attacker time and the server no CPU.
/// - Unknown users cost the same PBKDF2 work as known ones (no user enumeration by timing).
/// - A successful check is cached for `cacheLifetime` under an HMAC of user and password with
///   a per-process random key, so an application that opens a connection per message pays
///   PBKDF2 once, not on every AUTH. Only successes are cached; the cache holds no password.
///
/// Thread-safe: the limiter and cache sit behind one lock; PBKDF2 runs outside it.
public final class SubmissionAuthenticator: Sendable {
    /// The failure limiter and the cache of verified pairs.
    private struct State: Sendable {
        var limiter: AuthFailureLimiter
        var cache: [[UInt8]: Date] = [:]
    }
    private let users: [String: PasswordHash]
    /// Accounts kept outside cluster.yml (tenant SMTP users, issue 16), looked up per check.
    private let moreUsers: (@Sendable (String) -> PasswordHash?)?
    private let decoy: PasswordHash
    private let clock: any WallClock
    private let state: Locked<State>
    private let cacheKey = Crypto.randomBytes(32)
    /// How long a verified user/password pair is remembered, in seconds.
    public let cacheLifetime: TimeInterval
    /// The most cached pairs (the cache is cleared when it would grow past this).
    public let cacheCapacity = 10_000

    /// Creates an authenticator.
    /// - Parameters:
    ///   - users: the configured accounts.
    ///   - maxFailures: failures per client address within `failureWindow` before refusing.
    ///   - failureWindow: seconds.
    ///   - cacheLifetime: seconds a success is remembered (default 600).
    ///   - clock: time source.
    ///   - moreUsers: looks up accounts not in `users` (tenant SMTP users); `users` win.
    public init(users: [SMTPUser], maxFailures: Int, failureWindow: TimeInterval, cacheLifetime: TimeInterval = 600,
                clock: any WallClock = SystemClock(), moreUsers: (@Sendable (String) -> PasswordHash?)? = nil) {
        self.moreUsers = moreUsers
        var table: [String: PasswordHash] = [:]
        for u in users { table[u.name] = u.passwordHash }
        self.users = table
        let iterations = users.map(\.passwordHash.iterations).max() ?? PasswordHash.minimumIterations
        decoy = PasswordHash.make(password: Crypto.randomBytes(16), iterations: iterations)
        state = Locked(State(limiter: AuthFailureLimiter(maxFailures: maxFailures, window: failureWindow)))
        self.cacheLifetime = cacheLifetime
        self.clock = clock
    }

    /// Checks one set of credentials from `client`.
    /// - Parameters:
    ///   - credentials: what the client sent.
    ///   - client: the numeric client address (the rate-limit key).
    /// - Returns: `.succeeded(user:)`, `.failed`, or `.rateLimited`.
    public func verify(_ credentials: SASLCredentials, client: String) -> AuthenticationResult {
        let now = clock.now()
        let hash = users[credentials.username] ?? moreUsers?(credentials.username)
        // The stored hash is part of the cached fingerprint: a removed account or a changed
        // password stops matching the cache at once.
        var fingerprint = Array(credentials.username.utf8)
        fingerprint.append(0)
        fingerprint += credentials.password
        fingerprint.append(0)
        fingerprint += hash.map { Array($0.description.utf8) } ?? []
        let key = Crypto.hmacSHA256(key: cacheKey, data: fingerprint)
        let (cached, blocked) = state.withLock { s in
            ((s.cache[key].map { $0 > now } ?? false), s.limiter.isBlocked(client, now: now))
        }
        if blocked { return .rateLimited }
        if cached && hash != nil { return .succeeded(user: credentials.username) }
        guard let hash else {
            _ = decoy.verify(credentials.password)
            state.withLock { $0.limiter.recordFailure(client, now: now) }
            return .failed
        }
        guard hash.verify(credentials.password) else {
            state.withLock { $0.limiter.recordFailure(client, now: now) }
            return .failed
        }
        let capacity = cacheCapacity, expiry = now.addingTimeInterval(cacheLifetime)
        state.withLock { s in
            if s.cache.count >= capacity { s.cache.removeAll(keepingCapacity: true) }
            s.cache[key] = expiry
        }
        return .succeeded(user: credentials.username)
    }
}
