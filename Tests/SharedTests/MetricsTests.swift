import Foundation
import Testing
@testable import HatoSupport

@Suite("Metrics registry")
struct MetricsTests {
    /// Parses exposition text with prometheus_client's parser and dumps every sample.
    static let parse = """
        import json, sys
        from prometheus_client.parser import text_string_to_metric_families
        out = []
        for fam in text_string_to_metric_families(open(sys.argv[1]).read()):
            for s in fam.samples:
                out.append({'family': fam.name, 'type': fam.type, 'name': s.name, 'labels': s.labels, 'value': s.value})
        json.dump(out, open(sys.argv[2], 'w'))
        """

    @Test("counters, gauges and histograms render in the text format prometheus_client parses")
    func parsesWithPrometheusClient() throws {
        let r = MetricsRegistry()
        let delivered = r.counter("hato_test_delivered_total", help: "Delivered recipients.", labels: ["pool", "provider"])
        let depth = r.gauge("hato_test_queue", help: "Queue depth by state.", labels: ["state"])
        let latency = r.histogram("hato_test_latency_seconds", help: "Latency.", labels: ["pool"], buckets: [0.1, 1, 10])
        let up = r.gauge("hato_test_up", help: "Always 1.")
        delivered.inc("transactional", "gmail")
        delivered.inc("transactional", "gmail", by: 2)
        delivered.inc("bulk", "quote\"back\\slash\nnewline")
        latency.observe(0.05, labels: ["transactional"])
        latency.observe(0.5, labels: ["transactional"])
        latency.observe(50, labels: ["transactional"])
        up.set(1)
        r.addCollector { depth.set(7, labels: ["queued"]); depth.set(0, labels: ["leased"]) }
        let text = r.render()
        #expect(text.contains("# TYPE hato_test_delivered_total counter\n"))
        #expect(text.contains("hato_test_delivered_total{pool=\"transactional\",provider=\"gmail\"} 3\n"))
        let samples = try PythonCheck.run(Self.parse, input: Array(text.utf8)) as? [[String: Any]] ?? []
        func value(_ name: String, _ labels: [String: String]) -> Double? {
            samples.first { $0["name"] as? String == name && ($0["labels"] as? [String: String]) == labels }?["value"] as? Double
        }
        #expect(value("hato_test_delivered_total", ["pool": "transactional", "provider": "gmail"]) == 3)
        #expect(value("hato_test_delivered_total", ["pool": "bulk", "provider": "quote\"back\\slash\nnewline"]) == 1)
        #expect(value("hato_test_queue", ["state": "queued"]) == 7)
        #expect(value("hato_test_queue", ["state": "leased"]) == 0)
        #expect(value("hato_test_up", [:]) == 1)
        #expect(value("hato_test_latency_seconds_bucket", ["pool": "transactional", "le": "0.1"]) == 1)
        #expect(value("hato_test_latency_seconds_bucket", ["pool": "transactional", "le": "1"]) == 2)
        #expect(value("hato_test_latency_seconds_bucket", ["pool": "transactional", "le": "10"]) == 2)
        #expect(value("hato_test_latency_seconds_bucket", ["pool": "transactional", "le": "+Inf"]) == 3)
        #expect(value("hato_test_latency_seconds_count", ["pool": "transactional"]) == 3)
        #expect(value("hato_test_latency_seconds_sum", ["pool": "transactional"]) == 50.55)
        let types = Dictionary(samples.map { ($0["family"] as? String ?? "", $0["type"] as? String ?? "") }, uniquingKeysWith: { a, _ in a })
        #expect(types["hato_test_latency_seconds"] == "histogram")
        #expect(types["hato_test_queue"] == "gauge")
    }

    @Test("concurrent increments from many threads are all counted")
    func threadSafety() {
        let r = MetricsRegistry()
        let c = r.counter("hato_test_ops_total", help: "Ops.", labels: ["k"])
        DispatchQueue.concurrentPerform(iterations: 16) { i in
            for _ in 0..<1000 { c.inc("k\(i % 4)") }
        }
        #expect((0..<4).map { c.value("k\($0)") }.reduce(0, +) == 16_000)
    }

    @Test("registering the same name twice returns the same family")
    func sameFamily() {
        let r = MetricsRegistry()
        r.counter("hato_x_total", help: "x").inc()
        r.counter("hato_x_total", help: "x").inc()
        #expect(r.counter("hato_x_total", help: "x").value() == 2)
        #expect(r.render().components(separatedBy: "# TYPE hato_x_total").count == 2)
    }
}
