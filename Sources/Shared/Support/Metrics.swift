import Foundation

/// A small Prometheus metrics registry: counters, gauges and histograms with labels,
/// rendered in the Prometheus text exposition format 0.0.4.
///
/// Thread-safe: every family keeps its samples in a `Locked` (an `NSLock`: cheap under
/// contention, see PLATFORM-NOTES.md). Families are created once and kept; label values are free-form
/// strings (escaped on output). Names must match `[a-zA-Z_:][a-zA-Z0-9_:]*`; label names
/// `[a-zA-Z_][a-zA-Z0-9_]*` — both are the caller's constants, checked with a precondition.
public final class MetricsRegistry: Sendable {
    private struct State: Sendable {
        var families: [MetricFamily] = []
        var collectors: [@Sendable () -> Void] = []
    }
    private let state = Locked(State())

    /// An empty registry.
    public init() {}

    /// A counter family (a value that only goes up), registered once.
    /// - Parameters:
    ///   - name: the metric name, conventionally ending in `_total`.
    ///   - help: one line of documentation.
    ///   - labels: the label names every sample carries.
    /// - Returns: the family; registering the same name again returns the existing one.
    public func counter(_ name: String, help: String, labels: [String] = []) -> Counter {
        Counter(family(name, help: help, type: "counter", labels: labels, buckets: []))
    }

    /// A gauge family (a value that goes up and down).
    public func gauge(_ name: String, help: String, labels: [String] = []) -> Gauge {
        Gauge(family(name, help: help, type: "gauge", labels: labels, buckets: []))
    }

    /// A histogram family.
    /// - Parameter buckets: upper bounds, ascending (the `+Inf` bucket is implicit).
    public func histogram(_ name: String, help: String, labels: [String] = [], buckets: [Double]) -> Histogram {
        Histogram(family(name, help: help, type: "histogram", labels: labels, buckets: buckets.sorted()))
    }

    /// Adds a function run before every `render()`, to set gauges computed on scrape
    /// (queue depth, node states). It must not call `render()`.
    public func addCollector(_ collect: @escaping @Sendable () -> Void) {
        state.withLock { $0.collectors.append(collect) }
    }

    /// The text exposition of every family, in registration order (content type
    /// `text/plain; version=0.0.4`).
    public func render() -> String {
        let (fams, colls) = state.withLock { ($0.families, $0.collectors) }
        for c in colls { c() }
        var out = ""
        for f in fams { f.render(into: &out) }
        return out
    }

    /// The HTTP content type of `render()`'s output.
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    private func family(_ name: String, help: String, type: String, labels: [String], buckets: [Double]) -> MetricFamily {
        precondition(MetricFamily.isValidName(name), "invalid metric name \(name)")
        precondition(labels.allSatisfy(MetricFamily.isValidLabel), "invalid label name in \(labels)")
        return state.withLock { s in
            if let f = s.families.first(where: { $0.name == name }) {
                precondition(f.type == type && f.labelNames == labels, "metric \(name) registered twice with different shapes")
                return f
            }
            let f = MetricFamily(name: name, help: help, type: type, labelNames: labels, buckets: buckets)
            s.families.append(f)
            return f
        }
    }
}

/// One metric family's samples. Internal: use `Counter`, `Gauge`, `Histogram`.
final class MetricFamily: Sendable {
    let name: String
    let help: String
    let type: String
    let labelNames: [String]
    let buckets: [Double]
    private struct Samples: Sendable {
        var values: [[String]: Double] = [:]
        var histograms: [[String]: (counts: [UInt64], sum: Double, count: UInt64)] = [:]
    }
    private let samples = Locked(Samples())

    init(name: String, help: String, type: String, labelNames: [String], buckets: [Double]) {
        self.name = name; self.help = help; self.type = type; self.labelNames = labelNames; self.buckets = buckets
    }

    static func isValidName(_ s: String) -> Bool {
        guard let f = s.unicodeScalars.first, f.isASCIILetter || f == "_" || f == ":" else { return false }
        return s.unicodeScalars.allSatisfy { $0.isASCIILetter || $0.isASCIIDigit || $0 == "_" || $0 == ":" }
    }

    static func isValidLabel(_ s: String) -> Bool {
        guard let f = s.unicodeScalars.first, f.isASCIILetter || f == "_" else { return false }
        return s.unicodeScalars.allSatisfy { $0.isASCIILetter || $0.isASCIIDigit || $0 == "_" }
    }

    private func key(_ labels: [String]) -> [String] {
        precondition(labels.count == labelNames.count, "\(name) takes labels \(labelNames), got \(labels.count) values")
        return labels
    }

    func add(_ labels: [String], _ delta: Double) { let k = key(labels); samples.withLock { $0.values[k, default: 0] += delta } }
    func set(_ labels: [String], _ value: Double) { let k = key(labels); samples.withLock { $0.values[k] = value } }
    func value(_ labels: [String]) -> Double { let k = key(labels); return samples.withLock { $0.values[k] ?? 0 } }
    func reset() { samples.withLock { $0.values.removeAll(); $0.histograms.removeAll() } }

    func observe(_ labels: [String], _ v: Double) {
        let k = key(labels)
        let buckets = self.buckets
        samples.withLock { s in
            var h = s.histograms[k] ?? (counts: Array(repeating: 0, count: buckets.count), sum: 0, count: 0)
            for (i, b) in buckets.enumerated() where v <= b { h.counts[i] += 1 }
            h.sum += v; h.count += 1
            s.histograms[k] = h
        }
    }

    func histogramCount(_ labels: [String]) -> UInt64 { let k = key(labels); return samples.withLock { $0.histograms[k]?.count ?? 0 } }

    func render(into out: inout String) {
        out += "# HELP \(name) \(Self.escapeHelp(help))\n# TYPE \(name) \(type)\n"
        let (vals, hists) = samples.withLock { ($0.values, $0.histograms) }
        if type == "histogram" {
            for (labels, h) in hists.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
                for (i, b) in buckets.enumerated() {
                    out += "\(name)_bucket\(Self.labelText(labelNames + ["le"], labels + [Self.number(b)])) \(h.counts[i])\n"
                }
                out += "\(name)_bucket\(Self.labelText(labelNames + ["le"], labels + ["+Inf"])) \(h.count)\n"
                out += "\(name)_sum\(Self.labelText(labelNames, labels)) \(Self.number(h.sum))\n"
                out += "\(name)_count\(Self.labelText(labelNames, labels)) \(h.count)\n"
            }
        } else {
            for (labels, v) in vals.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
                out += "\(name)\(Self.labelText(labelNames, labels)) \(Self.number(v))\n"
            }
        }
    }

    /// `{a="x",b="y"}`, or nothing without labels. Values escape `\`, `"` and newline.
    static func labelText(_ names: [String], _ values: [String]) -> String {
        guard !names.isEmpty else { return "" }
        let pairs = zip(names, values).map { n, v -> String in
            var e = ""
            for ch in v.unicodeScalars {
                switch ch {
                case "\\": e += "\\\\"
                case "\"": e += "\\\""
                case "\n": e += "\\n"
                default: e.unicodeScalars.append(ch)
                }
            }
            return "\(n)=\"\(e)\""
        }
        return "{" + pairs.joined(separator: ",") + "}"
    }

    static func escapeHelp(_ s: String) -> String {
        s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\n", with: "\\n")
    }

    /// A sample value: integers without a fraction, `+Inf`/`-Inf`/`NaN` as Prometheus spells them.
    static func number(_ v: Double) -> String {
        if v.isNaN { return "NaN" }
        if v.isInfinite { return v > 0 ? "+Inf" : "-Inf" }
        if v == v.rounded(), abs(v) < 1e15 { return String(Int64(v)) }
        return "\(v)"
    }
}

private extension Unicode.Scalar {
    var isASCIILetter: Bool { (value >= 0x41 && value <= 0x5A) || (value >= 0x61 && value <= 0x7A) }
    var isASCIIDigit: Bool { value >= 0x30 && value <= 0x39 }
}

/// A counter family: `inc(labels)` adds to the sample with those label values.
public struct Counter: Sendable {
    let family: MetricFamily
    init(_ f: MetricFamily) { family = f }
    /// Adds `by` (≥ 0) to the sample with `labels` (values in the family's label order).
    public func inc(_ labels: String..., by: Double = 1) { family.add(labels, max(0, by)) }
    /// Adds `by` to the sample with `labels` given as an array.
    public func inc(labels: [String], by: Double = 1) { family.add(labels, max(0, by)) }
    /// The current value (for tests and status).
    public func value(_ labels: String...) -> Double { family.value(labels) }
}

/// A gauge family.
public struct Gauge: Sendable {
    let family: MetricFamily
    init(_ f: MetricFamily) { family = f }
    /// Sets the sample with `labels`.
    public func set(_ value: Double, labels: [String] = []) { family.set(labels, value) }
    /// Adds `delta` (may be negative).
    public func add(_ delta: Double, labels: [String] = []) { family.add(labels, delta) }
    /// Drops every sample (before a collector sets the current set of label values).
    public func reset() { family.reset() }
    /// The current value.
    public func value(_ labels: String...) -> Double { family.value(labels) }
}

/// A histogram family with fixed buckets.
public struct Histogram: Sendable {
    let family: MetricFamily
    init(_ f: MetricFamily) { family = f }
    /// Records one observation (e.g. a latency in seconds).
    public func observe(_ value: Double, labels: [String] = []) { family.observe(labels, value) }
    /// Observations so far for `labels`.
    public func count(_ labels: String...) -> UInt64 { family.histogramCount(labels) }
}
