import Foundation

/// Helpers for reading a send request from JSON with precise errors: JSON paths, unknown keys
/// refused, `DecodingError` turned into `MessageBuildError`.
enum JSONFields {
    /// A coding key for any name, to list the keys an object really has.
    struct AnyKey: CodingKey {
        var stringValue: String
        var intValue: Int?
        init(stringValue: String) { self.stringValue = stringValue }
        init(intValue: Int) { self.stringValue = String(intValue); self.intValue = intValue }
    }

    /// The JSON path of a coding path: `attachments[0].filename`.
    static func path(_ codingPath: [any CodingKey]) -> String {
        var out = ""
        for key in codingPath {
            if let index = key.intValue {
                out += "[\(index)]"
            } else {
                out += out.isEmpty ? key.stringValue : "." + key.stringValue
            }
        }
        return out
    }

    /// Throws when the object being decoded has a key outside `known` (a misspelt field would
    /// otherwise be ignored silently).
    /// - Throws: `MessageBuildError` (`invalid_field`) naming the first unknown key.
    static func refuseUnknownKeys(in decoder: any Decoder, known: [String]) throws {
        let all = try decoder.container(keyedBy: AnyKey.self)
        let unknown = all.allKeys.map(\.stringValue).filter { !known.contains($0) }.sorted()
        if let first = unknown.first {
            let field = path(decoder.codingPath + [AnyKey(stringValue: first)])
            throw MessageBuildError.invalidField(field, "unknown field `\(field)`; known fields here: \(known.joined(separator: ", "))")
        }
    }

    /// The `MessageBuildError` for an error thrown while decoding.
    static func error(from error: any Error) -> MessageBuildError {
        if let error = error as? MessageBuildError { return error }
        guard let error = error as? DecodingError else { return .invalidJSON("\(error)") }
        switch error {
        case .keyNotFound(let key, let context):
            return .missingField(path(context.codingPath + [key]))
        case .typeMismatch(let type, let context):
            let field = path(context.codingPath)
            return field.isEmpty ? .invalidJSON("expected an object")
                : .invalidField(field, "`\(field)` should be \(describe(type))")
        case .valueNotFound(let type, let context):
            let field = path(context.codingPath)
            return .invalidField(field.isEmpty ? nil : field, "`\(field)` is null; it should be \(describe(type))")
        case .dataCorrupted(let context):
            let field = path(context.codingPath)
            if field.isEmpty { return .invalidJSON(context.debugDescription) }
            return .invalidField(field, "`\(field)`: \(context.debugDescription)")
        @unknown default:
            return .invalidJSON("\(error)")
        }
    }

    /// A JSON-flavoured name for a Swift type in an error message.
    private static func describe(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: return "a string"
        case is Int.Type, is Double.Type: return "a number"
        case is Bool.Type: return "true or false"
        case is [String].Type: return "a list of strings"
        case is [String: String].Type: return "an object of string values"
        case is EmailAddress.Type: return "an address string or an object {\"name\", \"address\"}"
        default:
            let name = String(describing: type)
            if name.hasPrefix("Array<") { return "a list" }
            if name.hasPrefix("Dictionary<") { return "an object" }
            return "an object"
        }
    }
}
