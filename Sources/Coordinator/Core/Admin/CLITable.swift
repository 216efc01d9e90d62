import Foundation

/// Prints a table for the CLI: a header row and one row per entry, columns padded to their
/// widest cell and separated by two spaces, the last column unpadded. Shared by every command
/// that prints rows (status, nodes, ips, queue, log, suppressions, …).
/// - Parameters:
///   - header: the column titles.
///   - rows: the cells of each row (a row shorter than the header leaves its last columns out).
func printTable(_ header: [String], _ rows: [[String]]) {
    var widths = header.map(\.count)
    for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { i, c in i == cells.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }.joined(separator: "  ")
    }
    print(line(header))
    for r in rows { print(line(r)) }
}
