import Foundation
import SMTPCore

/// Matches remote replies against backoff rules (node side).
public struct BackoffMatcher: Sendable {
    private let rules: [(BackoffRule, NSRegularExpression)]

    public init(settings: BackoffSettings) {
        rules = settings.effectiveRules.compactMap { r in
            (try? NSRegularExpression(pattern: r.match, options: [.caseInsensitive])).map { (r, $0) }
        }
    }

    /// The first rule matching a reply, if any: the rules' patterns are matched against the
    /// line `code enhanced text` (`DeliveryStatus.description`).
    /// - Parameters:
    ///   - status: the reply.
    ///   - provider: the provider the reply came from.
    public func match(_ status: DeliveryStatus, provider: String) -> BackoffRule? {
        let line = "\(status.code) \(status.enhanced.map { $0.description + " " } ?? "")\(status.text)"
        let range = NSRange(line.startIndex..., in: line)
        for (r, re) in rules where r.provider == nil || r.provider == provider {
            if re.firstMatch(in: line, range: range) != nil { return r }
        }
        return nil
    }
}
