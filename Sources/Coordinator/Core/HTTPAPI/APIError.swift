import Foundation
import HatoHTTP
import HatoMIME

/// An error of the HTTP send API as the client sees it: an HTTP status (RFC 9110 §15), a stable
/// code for programs, a sentence for people, and the header fields the status calls for
/// (`WWW-Authenticate` with 401, RFC 9110 §11.6.1; `Retry-After` with 429/503, §10.2.3).
///
/// Rendered as `{"error": {"code": "…", "message": "…"}}` (with `"field"` when one field is at
/// fault). Messages never quote a request's values beyond a field's name or an address.
public struct APIError: Error, Sendable, Equatable {
    /// The HTTP status.
    public var status: Int
    /// The machine code, e.g. `invalid_json`, `rate_limited`.
    public var code: String
    /// The human-readable reason.
    public var message: String
    /// The JSON path of the field at fault, if any (`to[2]`).
    public var field: String?
    /// Extra response header fields.
    public var headers: [String: String] = [:]

    /// An error from its parts.
    public init(status: Int, code: String, message: String, field: String? = nil, headers: [String: String] = [:]) {
        self.status = status; self.code = code; self.message = message; self.field = field; self.headers = headers
    }

    /// The response: the JSON error body with `status` and `headers`.
    public var response: HTTPResponse {
        var error: [String: String] = ["code": code, "message": message]
        if let field { error["field"] = field }
        return HTTPResponse(status: status, body: APIJSON.encode(["error": error]), headers: headers)
    }

    /// 401: no usable API key (RFC 9110 §15.5.2, with `WWW-Authenticate: Bearer`, RFC 6750 §3).
    public static func unauthorized(_ message: String) -> APIError {
        APIError(status: 401, code: "unauthorized", message: message, headers: ["WWW-Authenticate": "Bearer realm=\"hato\""])
    }

    /// 404: an unknown path, or a message that is not the caller's (the same answer either way).
    public static func notFound(_ message: String) -> APIError { APIError(status: 404, code: "not_found", message: message) }

    /// 405 with the `Allow` field (RFC 9110 §15.5.6).
    public static func methodNotAllowed(_ method: String, allow: String) -> APIError {
        APIError(status: 405, code: "method_not_allowed", message: "\(method.prefix(16)) is not allowed here; use \(allow)", headers: ["Allow": allow])
    }

    /// 400 `invalid_request`: a malformed header or query parameter.
    public static func invalidRequest(_ message: String, field: String? = nil) -> APIError {
        APIError(status: 400, code: "invalid_request", message: message, field: field)
    }

    /// A request the builder refused (400, or 413 for `message_too_large`).
    public static func build(_ error: MessageBuildError) -> APIError {
        APIError(status: error.httpStatus, code: error.code.rawValue, message: error.message, field: error.field)
    }

    /// A tenant rule's refusal (403, 400 or 429 with `Retry-After`).
    public static func tenant(_ refusal: TenantRefusal) -> APIError {
        var headers: [String: String] = [:]
        if let after = refusal.retryAfter { headers["Retry-After"] = "\(max(1, after))" }
        return APIError(status: refusal.httpStatus, code: refusal.code, message: refusal.message, headers: headers)
    }

    /// 503 `unavailable`: the queue could not be written or read now (retry later).
    public static func unavailable(_ message: String) -> APIError {
        APIError(status: 503, code: "unavailable", message: message, headers: ["Retry-After": "5"])
    }

    /// 507 `insufficient_storage`: the queue's disk is full (RFC 4918 §11.5; retry later).
    public static let insufficientStorage = APIError(status: 507, code: "insufficient_storage",
                                                     message: "the queue is out of disk space; try again later", headers: ["Retry-After": "60"])
}

/// JSON for the API: snake_case keys, sorted, compact, ending with a line feed.
enum APIJSON {
    /// The UTF-8 JSON of `value` (`{}` if it cannot be encoded, which the API's own types never cause).
    static func encode<T: Encodable>(_ value: T) -> [UInt8] {
        let e = JSONEncoder()
        e.keyEncodingStrategy = .convertToSnakeCase
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array((try? e.encode(value)) ?? Data("{}".utf8)) + [0x0A]
    }

    /// A `status` response with `value` as JSON.
    static func response<T: Encodable>(_ value: T, status: Int = 200, headers: [String: String] = [:]) -> HTTPResponse {
        HTTPResponse(status: status, body: encode(value), headers: headers)
    }
}
