// A strict parser for the small YAML subset Hato's configuration uses.
//
// Supported: block maps, block lists (including `- key: v` list items whose further
// keys are indented under the first), flow maps `{ a: 1 }` and flow lists `[a, b]`
// (nested, may span lines), plain, single- and double-quoted scalars, comments,
// blank lines, one optional leading `---`.
// Rejected with an error: tabs in indentation, duplicate keys, anchors, aliases,
// tags, directives, block scalars (`|`, `>`), complex keys, multiple documents,
// multi-line plain or quoted scalars, bad indentation, unterminated quotes/flows.
//
// Pure: no I/O. Never traps on any input (nesting depth is bounded).

/// A node of the YAML subset, with the 1-based line and column where it starts.
public indirect enum YAMLNode: Sendable, Equatable {
    /// One `key: value` pair of a map.
    public struct Entry: Sendable, Equatable {
        /// The key text (quotes removed, escapes resolved).
        public let key: String
        /// The 1-based line of the key.
        public let keyLine: Int
        /// The 1-based column of the key (in Unicode scalars).
        public let keyColumn: Int
        /// The value; an empty key (`key:` with nothing after it) has a null value (see `YAMLNode.isNull`).
        public let value: YAMLNode

        /// Creates an entry.
        public init(key: String, keyLine: Int, keyColumn: Int, value: YAMLNode) {
            self.key = key; self.keyLine = keyLine; self.keyColumn = keyColumn; self.value = value
        }
    }

    /// A scalar: its text, whether it was quoted, and its position.
    case scalar(String, quoted: Bool, line: Int, column: Int)
    /// A map: entries in document order (keys are unique), and its position.
    case map([Entry], line: Int, column: Int)
    /// A list: items in document order, and its position.
    case list([YAMLNode], line: Int, column: Int)

    /// The 1-based line where the node starts.
    public var line: Int {
        switch self {
        case .scalar(_, _, let l, _), .map(_, let l, _), .list(_, let l, _): return l
        }
    }

    /// The 1-based column (in Unicode scalars) where the node starts.
    public var column: Int {
        switch self {
        case .scalar(_, _, _, let c), .map(_, _, let c), .list(_, _, let c): return c
        }
    }

    /// Whether this is a null value: an unquoted empty scalar (`key:` with nothing after it).
    public var isNull: Bool {
        if case .scalar(let s, false, _, _) = self, s.isEmpty { return true }
        return false
    }

    /// The scalar text, or nil for maps and lists.
    public var scalarValue: String? {
        if case .scalar(let s, _, _, _) = self { return s }
        return nil
    }

    /// The value of `key` when this is a map, else nil.
    public subscript(key: String) -> YAMLNode? {
        guard case .map(let entries, _, _) = self else { return nil }
        return entries.first { $0.key == key }?.value
    }

    /// A short description of the node's kind for error messages, e.g. `a map`.
    public var kindDescription: String {
        switch self {
        case .scalar(let s, let quoted, _, _):
            if s.isEmpty && !quoted { return "an empty value" }
            return "a scalar (\"\(s.count > 40 ? String(s.prefix(40)) + "…" : s)\")"
        case .map: return "a map"
        case .list: return "a list"
        }
    }
}

/// A YAML syntax error, or use of a YAML feature the subset does not support.
public struct YAMLError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The file name given to the parser.
    public let file: String
    /// The 1-based line of the problem.
    public let line: Int
    /// The 1-based column of the problem (in Unicode scalars).
    public let column: Int
    /// What is wrong.
    public let message: String

    /// Creates an error.
    public init(file: String, line: Int, column: Int, message: String) {
        self.file = file; self.line = line; self.column = column; self.message = message
    }

    /// `file:line:column: message`.
    public var description: String { "\(file):\(line):\(column): \(message)" }
}

/// Entry point of the YAML-subset parser.
public enum YAML {
    /// The deepest nesting of collections accepted (deeper input is rejected, never a stack overflow).
    public static let maxDepth = 64

    /// Parses one YAML document.
    /// - Parameters:
    ///   - text: the document. CRLF and CR line ends are accepted; a leading BOM is ignored.
    ///   - file: the name used in errors.
    /// - Returns: the root node; an empty document (only blank lines and comments) is an empty map.
    /// - Throws: `YAMLError` with the line and column of the first problem.
    public static func parse(_ text: String, file: String = "<input>") throws(YAMLError) -> YAMLNode {
        var parser = YAMLParser(text: text, file: file)
        return try parser.parseDocument()
    }
}

/// The recursive-descent parser over the document's Unicode scalars.
struct YAMLParser {
    private var s: [Unicode.Scalar] = []
    private let file: String
    private var pos = 0
    private var line = 1
    private var lineStart = 0
    private var depth = 0
    private var seenContent = false
    private var seenStartMarker = false
    private var inputError: YAMLError?

    init(text: String, file: String) {
        self.file = file
        s.reserveCapacity(text.unicodeScalars.count)
        var previousWasCR = false
        var ln = 1, col = 1
        for (i, c) in text.unicodeScalars.enumerated() {
            if i == 0 && c == "\u{FEFF}" { continue }
            if c == "\r" { s.append("\n"); previousWasCR = true; ln += 1; col = 1; continue }
            if c == "\n" {
                if !previousWasCR { s.append(c); ln += 1; col = 1 }
                previousWasCR = false
                continue
            }
            previousWasCR = false
            let v = c.value
            if inputError == nil && ((v < 0x20 && c != "\t") || v == 0x7F || (0x80...0x9F).contains(v)) {
                let hex = String(v, radix: 16, uppercase: true)
                inputError = YAMLError(file: file, line: ln, column: col,
                                       message: "invalid control character U+\(String(repeating: "0", count: max(0, 4 - hex.count)))\(hex)")
            }
            s.append(c)
            col += 1
        }
    }

    // MARK: - Document

    /// Parses the whole document.
    mutating func parseDocument() throws(YAMLError) -> YAMLNode {
        if let inputError { throw inputError }
        guard let indent = try nextContentIndent() else { return .map([], line: 1, column: 1) }
        consumeIndent(indent)
        let root = try parseBlockNode(indent: indent, parent: -1)
        if let next = try nextContentIndent() {
            consumeIndent(next)
            throw error("bad indentation: expected \(indent) spaces (the document's top level), found \(next)")
        }
        return root
    }

    // MARK: - Block context

    /// Parses the node starting at the current position (its first character), which
    /// sits at column `indent + 1`; `parent` is the indentation of the enclosing block.
    private mutating func parseBlockNode(indent: Int, parent: Int) throws(YAMLError) -> YAMLNode {
        depth += 1
        defer { depth -= 1 }
        if depth > YAML.maxDepth { throw error("nesting too deep (more than \(YAML.maxDepth) levels)") }
        if isListItemStart(at: pos) { return try parseBlockList(indent: indent, compact: false) }
        if looksLikeMapKey() { return try parseBlockMap(indent: indent) }
        let node = try parseInlineValue(parent: parent)
        try finishLine(after: node)
        return node
    }

    /// Parses a block map whose keys sit at column `indent + 1`; the first key is at the current position.
    private mutating func parseBlockMap(indent n: Int) throws(YAMLError) -> YAMLNode {
        let startLine = line, startColumn = column
        var entries: [YAMLNode.Entry] = []
        var seen: [String: Int] = [:]
        while true {
            if !entries.isEmpty {
                guard let ind = try nextContentIndent() else { break }
                if ind < n { break }
                consumeIndent(ind)
                if ind > n {
                    throw error("bad indentation: expected \(n) spaces (continuing the map that starts on line \(startLine)), found \(ind)")
                }
                if isListItemStart(at: pos) {
                    throw error("expected 'key: value' (continuing the map that starts on line \(startLine)), found a list item")
                }
                if !looksLikeMapKey() {
                    throw error("expected 'key: value' (continuing the map that starts on line \(startLine))")
                }
            }
            let keyLine = line, keyColumn = column
            let key = try parseBlockKey()
            if let first = seen[key] {
                throw error("duplicate key \"\(key)\" (first defined on line \(first))", line: keyLine, column: keyColumn)
            }
            seen[key] = keyLine
            let value = try parseBlockValue(indent: n, inMap: true)
            entries.append(YAMLNode.Entry(key: key, keyLine: keyLine, keyColumn: keyColumn, value: value))
        }
        return .map(entries, line: startLine, column: startColumn)
    }

    /// Parses a block list whose dashes sit at column `indent + 1`; the first dash is at the
    /// current position. A `compact` list (the value of a map key at the key's own
    /// indentation) ends quietly at a line that is not a list item.
    private mutating func parseBlockList(indent n: Int, compact: Bool) throws(YAMLError) -> YAMLNode {
        let startLine = line, startColumn = column
        var items: [YAMLNode] = []
        while true {
            if !items.isEmpty {
                guard let ind = try nextContentIndent() else { break }
                if ind < n { break }
                if ind == n && !isListItemStart(at: pos + ind) && compact { break }
                consumeIndent(ind)
                if ind > n {
                    throw error("bad indentation: expected \(n) spaces (continuing the list that starts on line \(startLine)), found \(ind)")
                }
                if !isListItemStart(at: pos) {
                    throw error("expected a list item '- ' (continuing the list that starts on line \(startLine))")
                }
            }
            let itemLine = line, itemColumn = column
            advance() // the dash
            var sawTab = false
            while let c = peek(), c == " " || c == "\t" {
                if c == "\t" { sawTab = true }
                advance()
            }
            if atLineEndOrComment() {
                try finishLine(after: nil)
                if let ind = try nextContentIndent(), ind > n {
                    consumeIndent(ind)
                    items.append(try parseBlockNode(indent: ind, parent: n))
                } else {
                    items.append(.scalar("", quoted: false, line: itemLine, column: itemColumn))
                }
                continue
            }
            if sawTab { throw error("tab character in indentation after '-' (indent with spaces)") }
            items.append(try parseBlockNode(indent: column - 1, parent: n))
        }
        return .list(items, line: startLine, column: startColumn)
    }

    /// Parses the value after a block key's `:` (or returns a null node when there is none).
    private mutating func parseBlockValue(indent n: Int, inMap: Bool) throws(YAMLError) -> YAMLNode {
        skipInlineSpaces()
        if atLineEndOrComment() {
            let nullNode = YAMLNode.scalar("", quoted: false, line: line, column: column)
            try finishLine(after: nil)
            guard let ind = try nextContentIndent() else { return nullNode }
            if ind > n {
                consumeIndent(ind)
                return try parseBlockNode(indent: ind, parent: n)
            }
            if ind == n && inMap && isListItemStart(at: pos + ind) {
                consumeIndent(ind)
                depth += 1
                defer { depth -= 1 }
                if depth > YAML.maxDepth { throw error("nesting too deep (more than \(YAML.maxDepth) levels)") }
                return try parseBlockList(indent: n, compact: true)
            }
            return nullNode
        }
        let node = try parseInlineValue(parent: n)
        try finishLine(after: node)
        return node
    }

    /// Parses a block map key and its `:`.
    private mutating func parseBlockKey() throws(YAMLError) -> String {
        if let c = peek(), c == "\"" || c == "'" {
            let key = try parseQuoted()
            skipInlineSpaces()
            guard peek() == ":" else { throw error("expected ':' after the key \"\(key)\"") }
            advance()
            return key
        }
        try checkPlainStart(flow: false)
        let start = pos
        while let c = peek(), !(c == ":" && isBlankAt(pos + 1)) {
            if c == "\n" { throw error("expected ':' after the key") }
            advance()
        }
        let key = trimmedText(start, pos)
        guard peek() == ":" else { throw error("expected ':' after the key") }
        if key.isEmpty { throw error("empty key before ':'") }
        advance()
        return key
    }

    /// Parses a value that starts on the current line in block context: a flow
    /// collection, a quoted scalar or a single-line plain scalar.
    private mutating func parseInlineValue(parent: Int) throws(YAMLError) -> YAMLNode {
        guard let c = peek() else { return .scalar("", quoted: false, line: line, column: column) }
        if c == "[" || c == "{" { return try parseFlowNode(parent: parent) }
        let l = line, col = column
        if c == "\"" || c == "'" { return .scalar(try parseQuoted(), quoted: true, line: l, column: col) }
        try checkPlainStart(flow: false)
        let start = pos
        var end = pos
        while let ch = peek(), ch != "\n" {
            if ch == "#" && pos > start && isSpace(s[pos - 1]) { break }
            if ch == ":" && isBlankAt(pos + 1) {
                throw error("unexpected ': ' inside a plain value (quote the value if it contains ': ')")
            }
            advance()
            if !isSpace(ch) { end = pos }
        }
        return .scalar(text(start, end), quoted: false, line: l, column: col)
    }

    /// After a value: allows trailing spaces and a comment, then consumes the line end.
    private mutating func finishLine(after node: YAMLNode?) throws(YAMLError) {
        skipInlineSpaces()
        guard let c = peek() else { return }
        if c == "\n" { advance(); return }
        if c == "#" {
            if pos == lineStart || isSpace(s[pos - 1]) || node == nil {
                skipToLineEnd()
                advance()
                return
            }
            throw error("a comment needs a space before '#'")
        }
        switch node {
        case .list?, .map?:
            throw error("unexpected '\(c)' after the closing bracket (quote values that start with '[' or '{', e.g. \"[::1]:25\")")
        case .scalar(_, true, _, _)?:
            throw error("unexpected '\(c)' after the closing quote")
        default:
            throw error("unexpected '\(c)' after the value")
        }
    }

    // MARK: - Flow context

    /// Parses a flow node: a flow list, flow map, quoted or plain scalar.
    /// Continuation lines must be indented more than `parent` (closing brackets at least as much).
    private mutating func parseFlowNode(parent: Int) throws(YAMLError) -> YAMLNode {
        depth += 1
        defer { depth -= 1 }
        if depth > YAML.maxDepth { throw error("nesting too deep (more than \(YAML.maxDepth) levels)") }
        let l = line, col = column
        guard let c = peek() else { throw error("unexpected end of input, expected a value") }
        switch c {
        case "[": return try parseFlowList(parent: parent)
        case "{": return try parseFlowMap(parent: parent)
        case "\"", "'": return .scalar(try parseQuoted(), quoted: true, line: l, column: col)
        default:
            try checkPlainStart(flow: true)
            let value = scanFlowPlain()
            if value.isEmpty { throw error("expected a value") }
            return .scalar(value, quoted: false, line: l, column: col)
        }
    }

    private mutating func parseFlowList(parent: Int) throws(YAMLError) -> YAMLNode {
        let l = line, col = column
        advance() // [
        var items: [YAMLNode] = []
        while true {
            try skipFlowSpace(parent: parent, openLine: l)
            guard let c = peek() else { throw unterminatedFlow("list", "[", l, col) }
            if c == "]" { advance(); break }
            let item = try parseFlowNode(parent: parent)
            try skipFlowSpace(parent: parent, openLine: l)
            guard let next = peek() else { throw unterminatedFlow("list", "[", l, col) }
            items.append(item)
            switch next {
            case ",": advance()
            case "]": advance(); return .list(items, line: l, column: col)
            case ":": throw error("unsupported YAML feature: 'key: value' pairs inside a flow list (use { key: value })")
            default: throw error("expected ',' or ']' in the flow list opened on line \(l), found '\(next)'")
            }
        }
        return .list(items, line: l, column: col)
    }

    private mutating func parseFlowMap(parent: Int) throws(YAMLError) -> YAMLNode {
        let l = line, col = column
        advance() // {
        var entries: [YAMLNode.Entry] = []
        var seen: [String: Int] = [:]
        while true {
            try skipFlowSpace(parent: parent, openLine: l)
            guard let c = peek() else { throw unterminatedFlow("map", "{", l, col) }
            if c == "}" { advance(); break }
            let keyLine = line, keyColumn = column
            let key: String
            if c == "\"" || c == "'" {
                key = try parseQuoted()
            } else if c == "[" || c == "{" {
                throw error("unsupported YAML feature: collections as map keys")
            } else {
                try checkPlainStart(flow: true)
                key = scanFlowPlain()
                if key.isEmpty { throw error("expected a key") }
            }
            try skipFlowSpace(parent: parent, openLine: l)
            guard let colon = peek() else { throw unterminatedFlow("map", "{", l, col) }
            guard colon == ":" else {
                throw error("expected ':' after the key \"\(key)\" in the flow map opened on line \(l) (YAML needs a space after ':')")
            }
            advance()
            try skipFlowSpace(parent: parent, openLine: l)
            guard let v = peek() else { throw unterminatedFlow("map", "{", l, col) }
            let value: YAMLNode
            if v == "," || v == "}" {
                value = .scalar("", quoted: false, line: line, column: column)
            } else {
                value = try parseFlowNode(parent: parent)
            }
            if let first = seen[key] {
                throw error("duplicate key \"\(key)\" (first defined on line \(first))", line: keyLine, column: keyColumn)
            }
            seen[key] = keyLine
            entries.append(YAMLNode.Entry(key: key, keyLine: keyLine, keyColumn: keyColumn, value: value))
            try skipFlowSpace(parent: parent, openLine: l)
            guard let next = peek() else { throw unterminatedFlow("map", "{", l, col) }
            switch next {
            case ",": advance()
            case "}": advance(); return .map(entries, line: l, column: col)
            default: throw error("expected ',' or '}' in the flow map opened on line \(l), found '\(next)'")
            }
        }
        return .map(entries, line: l, column: col)
    }

    /// Scans a plain scalar in flow context (ends at a flow indicator, `: `, ` #` or the line end).
    private mutating func scanFlowPlain() -> String {
        let start = pos
        var end = pos
        while let c = peek(), c != "\n" {
            if c == "," || c == "[" || c == "]" || c == "{" || c == "}" { break }
            if c == ":" && (isBlankAt(pos + 1) || isFlowIndicatorAt(pos + 1)) { break }
            if c == "#" && pos > start && isSpace(s[pos - 1]) { break }
            advance()
            if !isSpace(c) { end = pos }
        }
        return text(start, end)
    }

    /// Skips spaces, comments and line breaks between flow tokens, checking continuation indentation.
    private mutating func skipFlowSpace(parent: Int, openLine: Int) throws(YAMLError) {
        while let c = peek() {
            if isSpace(c) { advance(); continue }
            if c == "#" {
                if pos == lineStart || isSpace(s[pos - 1]) { skipToLineEnd(); continue }
                return
            }
            guard c == "\n" else { return }
            advance()
            var i = pos
            while i < s.count, s[i] == " " { i += 1 }
            var j = i
            while j < s.count, isSpace(s[j]) { j += 1 }
            if j >= s.count || s[j] == "\n" || s[j] == "#" { continue }
            if j != i {
                pos = i
                throw error("tab character in indentation (indent with spaces)")
            }
            let ind = i - pos
            let closing = s[i] == "]" || s[i] == "}"
            if ind <= parent && !(closing && ind == parent) {
                pos = i
                throw error("the flow collection opened on line \(openLine) is not closed before this line (continuation lines must be indented more than \(parent) spaces)")
            }
        }
    }

    private func unterminatedFlow(_ kind: String, _ bracket: String, _ l: Int, _ c: Int) -> YAMLError {
        error("unterminated flow \(kind): '\(bracket)' on line \(l) is never closed", line: l, column: c)
    }

    // MARK: - Scalars

    /// Parses a single- or double-quoted scalar starting at the opening quote.
    private mutating func parseQuoted() throws(YAMLError) -> String {
        let l = line, col = column
        guard let quote = peek() else { throw error("expected a quoted string") }
        let double = quote == "\""
        advance()
        var out = String.UnicodeScalarView()
        func unterminated() -> YAMLError {
            error("unterminated \(double ? "double" : "single")-quoted string (quoted strings must close on the same line)", line: l, column: col)
        }
        while true {
            guard let c = peek(), c != "\n" else { throw unterminated() }
            if !double {
                advance()
                if c == "'" {
                    if peek() == "'" { advance(); out.append("'"); continue }
                    break
                }
                out.append(c)
                continue
            }
            if c == "\"" { advance(); break }
            if c != "\\" { advance(); out.append(c); continue }
            let escapeColumn = column
            advance()
            guard let e = peek(), e != "\n" else { throw unterminated() }
            advance()
            switch e {
            case "\\": out.append("\\")
            case "\"": out.append("\"")
            case "n": out.append("\n")
            case "t": out.append("\t")
            case "r": out.append("\r")
            case "/": out.append("/")
            case "u":
                var value: UInt32 = 0
                for _ in 0..<4 {
                    guard let h = peek(), let digit = Self.hexValue(h) else {
                        throw error("invalid \\u escape (expected 4 hex digits)", column: escapeColumn)
                    }
                    value = value * 16 + digit
                    advance()
                }
                guard value != 0, let scalar = Unicode.Scalar(value) else {
                    throw error("invalid \\u escape (not an allowed character)", column: escapeColumn)
                }
                out.append(scalar)
            default:
                throw error("unsupported escape '\\\(e)' in a double-quoted string (supported: \\\\ \\\" \\n \\t \\r \\/ \\uXXXX)",
                            column: escapeColumn)
            }
        }
        return String(out)
    }

    private static func hexValue(_ c: Unicode.Scalar) -> UInt32? {
        switch c.value {
        case 0x30...0x39: return c.value - 0x30
        case 0x41...0x46: return c.value - 0x41 + 10
        case 0x61...0x66: return c.value - 0x61 + 10
        default: return nil
        }
    }

    /// Rejects characters that cannot start a plain scalar, naming unsupported features.
    private func checkPlainStart(flow: Bool) throws(YAMLError) {
        guard let c = peek() else { return }
        let nextIsBreak = isBlankAt(pos + 1) || (flow && isFlowIndicatorAt(pos + 1))
        switch c {
        case "&": throw error("unsupported YAML feature: anchors ('&')")
        case "*": throw error("unsupported YAML feature: aliases ('*')")
        case "!": throw error("unsupported YAML feature: tags ('!'); quote the value if it starts with '!'")
        case "|", ">": throw error("unsupported YAML feature: block scalars ('\(c)'); use a quoted string")
        case "%": throw error("unsupported YAML feature: directives ('%'); quote the value if it starts with '%'")
        case "@", "`": throw error("'\(c)' is reserved in YAML and cannot start a plain value; quote the value")
        case "?" where nextIsBreak: throw error("unsupported YAML feature: complex keys ('? ')")
        case "-" where nextIsBreak: throw error("unexpected list item '- ' here")
        case ":" where nextIsBreak: throw error("unexpected ':' (missing key?)")
        case ",", "[", "]", "{", "}": throw error("unexpected '\(c)'")
        case "#": throw error("unexpected '#' (a comment needs a space before it)")
        default: return
        }
    }

    // MARK: - Lines and indentation

    /// From the start of a line, skips blank and comment-only lines. Returns the
    /// indentation (spaces) of the next content line, leaving the position at that
    /// line's start, or nil at the end of input.
    private mutating func nextContentIndent() throws(YAMLError) -> Int? {
        while pos < s.count {
            var i = pos
            while i < s.count, s[i] == " " { i += 1 }
            var j = i
            while j < s.count, isSpace(s[j]) { j += 1 }
            if j >= s.count || s[j] == "\n" || s[j] == "#" {
                skipToLineEnd()
                advance()
                continue
            }
            if j != i {
                let col = i - pos + 1
                throw error("tab character in indentation (indent with spaces)", column: col)
            }
            let indent = i - pos
            if indent == 0, let marker = documentMarker(at: i) {
                if marker == "---" && !seenContent && !seenStartMarker {
                    seenStartMarker = true
                    pos = i + 3
                    skipInlineSpaces()
                    if !atLineEndOrComment() {
                        throw error("unsupported YAML feature: content on the '---' line")
                    }
                    skipToLineEnd()
                    advance()
                    continue
                }
                throw error(marker == "---"
                            ? "unsupported YAML feature: multiple documents ('---')"
                            : "unsupported YAML feature: document end markers ('...')", column: 1)
            }
            seenContent = true
            return indent
        }
        return nil
    }

    private func documentMarker(at i: Int) -> String? {
        guard i + 2 < s.count else { return nil }
        let three = [s[i], s[i + 1], s[i + 2]]
        guard isBlankAt(i + 3) else { return nil }
        if three == ["-", "-", "-"] { return "---" }
        if three == [".", ".", "."] { return "..." }
        return nil
    }

    /// Whether a block list item (`-` followed by a blank or the line end) starts at `i`.
    private func isListItemStart(at i: Int) -> Bool {
        i < s.count && s[i] == "-" && isBlankAt(i + 1)
    }

    /// Whether the current line's content at the position is a `key:` (looking ahead, consuming nothing).
    private func looksLikeMapKey() -> Bool {
        var i = pos
        guard i < s.count else { return false }
        let first = s[i]
        if first == "\"" || first == "'" {
            i += 1
            while i < s.count, s[i] != "\n" {
                if first == "\"" && s[i] == "\\" { i += 2; continue }
                if s[i] == first {
                    if first == "'" && i + 1 < s.count && s[i + 1] == "'" { i += 2; continue }
                    i += 1
                    while i < s.count, isSpace(s[i]) { i += 1 }
                    return i < s.count && s[i] == ":" && isBlankAt(i + 1)
                }
                i += 1
            }
            return false
        }
        if first == "[" || first == "{" { return false }
        while i < s.count, s[i] != "\n" {
            if s[i] == ":" && isBlankAt(i + 1) { return true }
            if s[i] == "#" && i > pos && isSpace(s[i - 1]) { return false }
            i += 1
        }
        return false
    }

    // MARK: - Low level

    private var column: Int { pos - lineStart + 1 }

    private func peek(_ offset: Int = 0) -> Unicode.Scalar? {
        let i = pos + offset
        return i >= 0 && i < s.count ? s[i] : nil
    }

    private mutating func advance() {
        guard pos < s.count else { return }
        if s[pos] == "\n" { line += 1; lineStart = pos + 1 }
        pos += 1
    }

    private mutating func consumeIndent(_ n: Int) { pos = min(pos + n, s.count) }

    @discardableResult
    private mutating func skipInlineSpaces() -> Bool {
        var skipped = false
        while let c = peek(), isSpace(c) { advance(); skipped = true }
        return skipped
    }

    /// Moves to the next line break (not consuming it) or the end of input.
    private mutating func skipToLineEnd() {
        while let c = peek(), c != "\n" { advance() }
    }

    private func atLineEndOrComment() -> Bool {
        guard let c = peek() else { return true }
        return c == "\n" || c == "#"
    }

    private func isSpace(_ c: Unicode.Scalar) -> Bool { c == " " || c == "\t" }

    /// Whether index `i` is past the end, a space, a tab or a line break.
    private func isBlankAt(_ i: Int) -> Bool {
        guard i >= 0, i < s.count else { return true }
        let c = s[i]
        return c == " " || c == "\t" || c == "\n"
    }

    private func isFlowIndicatorAt(_ i: Int) -> Bool {
        guard i >= 0, i < s.count else { return false }
        let c = s[i]
        return c == "," || c == "[" || c == "]" || c == "{" || c == "}"
    }

    private func text(_ start: Int, _ end: Int) -> String {
        guard start < end, start >= 0, end <= s.count else { return "" }
        var v = String.UnicodeScalarView()
        v.append(contentsOf: s[start..<end])
        return String(v)
    }

    private func trimmedText(_ start: Int, _ end: Int) -> String {
        var e = end
        while e > start, isSpace(s[e - 1]) { e -= 1 }
        return text(start, e)
    }

    private func error(_ message: String, line l: Int? = nil, column c: Int? = nil) -> YAMLError {
        YAMLError(file: file, line: l ?? line, column: c ?? column, message: message)
    }
}
