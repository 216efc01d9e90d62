import HatoSupport
import SMTPCore

/// Hand-written decoders of the frames of every delivery (grant, result, ack, credits,
/// heartbeat) with `JSONObjectReader`: the values `JSONDecoder` gives for the same header —
/// unknown members skipped, absent or `null` optional members nil, a missing required member
/// or a value of the wrong type an error — without Codable's per-field containers (issue 19).
/// The rare control frames still go through `JSONDecoder`.
extension ClusterMessage {
    /// Decodes the header of a delivery frame type; nil for the other types.
    /// - Throws: `JSONReadError` when the header is not the JSON the type requires.
    static func readDeliveryHeader(_ type: FrameType, _ header: [UInt8]) throws -> ClusterMessage? {
        switch type {
        case .leaseGrant: return .leaseGrant(try JSONObjectReader.read(header) { try LeaseGrantMessage.read(&$0) }, payload: [])
        case .result: return .result(try JSONObjectReader.read(header) { try ResultMessage.read(&$0) })
        case .resultAck:
            return .resultAck(try JSONObjectReader.read(header) { r in
                var leaseID: String?
                try r.object { r, key in if key == "leaseID" { leaseID = try r.string() } else { try r.skipValue() } }
                return ResultAckMessage(leaseID: try required(leaseID, "leaseID", r))
            })
        case .leaseRequest:
            return .leaseRequest(try JSONObjectReader.read(header) { r in
                var credits: Int?
                try r.object { r, key in if key == "credits" { credits = try r.int() } else { try r.skipValue() } }
                return LeaseRequestMessage(credits: try required(credits, "credits", r))
            })
        case .heartbeat:
            return .heartbeat(try JSONObjectReader.read(header) { r in
                var inFlight: Int?, sentAt: Double?
                try r.object { r, key in
                    switch key {
                    case "leasesInFlight": inFlight = try r.int()
                    case "sentAt": sentAt = try r.optionalDouble()
                    default: try r.skipValue()
                    }
                }
                return HeartbeatMessage(leasesInFlight: try required(inFlight, "leasesInFlight", r), sentAt: sentAt)
            })
        default: return nil
        }
    }
}

/// The value of a required member, or the error `JSONDecoder` would give (key not found).
func required<T>(_ value: T?, _ key: String, _ r: borrowing JSONObjectReader) throws -> T {
    guard let value else { throw r.invalid("required member \"\(key)\" missing") }
    return value
}

/// A raw-value enum member (`status`, `priority`), or an error naming the value.
func enumValue<T: RawRepresentable>(_ r: inout JSONObjectReader, _ type: T.Type) throws -> T where T.RawValue == String {
    let raw = try r.string()
    guard let v = T(rawValue: raw) else { throw r.invalid("unknown \(T.self) \"\(raw)\"") }
    return v
}

extension LeaseGrantMessage {
    static func read(_ r: inout JSONObjectReader) throws -> LeaseGrantMessage {
        var leases: [Lease]?, term: Int64?
        try r.object { r, key in
            switch key {
            case "leases":
                var list: [Lease] = []
                try r.array { r in list.append(try Lease.read(&r)) }
                leases = list
            case "term": term = r.readNull() ? nil : try r.int64()
            default: try r.skipValue()
            }
        }
        return LeaseGrantMessage(leases: try required(leases, "leases", r), term: term)
    }
}

extension Lease {
    static func read(_ r: inout JSONObjectReader) throws -> Lease {
        var leaseID: String?, sendingIP: String?, helo: String?, messageID: String?, reversePath: String?, domain: String?
        var recipients: [LeasedRecipient]?, expiresIn: Double?, expiresAt: Double?, bodyOffset: Int?, bodyLength: Int?
        var priority: MessagePriority?
        try r.object { r, key in
            switch key {
            case "leaseID": leaseID = try r.string()
            case "sendingIP": sendingIP = try r.string()
            case "helo": helo = try r.string()
            case "messageID": messageID = try r.string()
            case "reversePath": reversePath = try r.string()
            case "domain": domain = try r.string()
            case "recipients":
                var list: [LeasedRecipient] = []
                try r.array { r in
                    var id: Int64?, address: String?
                    try r.object { r, key in
                        switch key {
                        case "id": id = try r.int64()
                        case "address": address = try r.string()
                        default: try r.skipValue()
                        }
                    }
                    list.append(LeasedRecipient(id: try required(id, "id", r), address: try required(address, "address", r)))
                }
                recipients = list
            case "expiresIn": expiresIn = try r.double()
            case "expiresAt": expiresAt = try r.optionalDouble()
            case "bodyOffset": bodyOffset = try r.int()
            case "bodyLength": bodyLength = try r.int()
            case "priority": priority = r.readNull() ? nil : try enumValue(&r, MessagePriority.self)
            default: try r.skipValue()
            }
        }
        return Lease(leaseID: try required(leaseID, "leaseID", r), sendingIP: try required(sendingIP, "sendingIP", r),
                     helo: try required(helo, "helo", r), messageID: try required(messageID, "messageID", r),
                     reversePath: try required(reversePath, "reversePath", r), domain: try required(domain, "domain", r),
                     recipients: try required(recipients, "recipients", r), expiresIn: try required(expiresIn, "expiresIn", r),
                     expiresAt: expiresAt, bodyOffset: try required(bodyOffset, "bodyOffset", r),
                     bodyLength: try required(bodyLength, "bodyLength", r), priority: priority)
    }
}

extension ResultMessage {
    static func read(_ r: inout JSONObjectReader) throws -> ResultMessage {
        var leaseID: String?, instanceID: String?, sendingIP: String?, mxHost: String?, remoteAddress: String?
        var outcomes: [RecipientResult]?, finishedAt: Double?
        try r.object { r, key in
            switch key {
            case "leaseID": leaseID = try r.string()
            case "instanceID": instanceID = try r.string()
            case "sendingIP": sendingIP = try r.string()
            case "mxHost": mxHost = try r.optionalString()
            case "remoteAddress": remoteAddress = try r.optionalString()
            case "outcomes":
                var list: [RecipientResult] = []
                try r.array { r in list.append(try RecipientResult.read(&r)) }
                outcomes = list
            case "finishedAt": finishedAt = try r.double()
            default: try r.skipValue()
            }
        }
        return ResultMessage(leaseID: try required(leaseID, "leaseID", r), instanceID: try required(instanceID, "instanceID", r),
                             sendingIP: try required(sendingIP, "sendingIP", r), mxHost: mxHost, remoteAddress: remoteAddress,
                             outcomes: try required(outcomes, "outcomes", r), finishedAt: try required(finishedAt, "finishedAt", r))
    }
}

extension RecipientResult {
    static func read(_ r: inout JSONObjectReader) throws -> RecipientResult {
        var recipientID: Int64?, status: Status?, code: Int?, enhanced: String?, text: String?
        var mxHost: String?, remoteAddress: String?, tlsVersion: String?, tlsCipher: String?, reused: Bool?
        var dkim: [String]?, timings: DeliveryTimings?, failure: ConnectionFailureContext?, reports: [TLSReportEntry]?
        try r.object { r, key in
            switch key {
            case "recipientID": recipientID = try r.int64()
            case "status": status = try enumValue(&r, Status.self)
            case "code": code = try r.int()
            case "enhanced": enhanced = try r.optionalString()
            case "text": text = try r.string()
            case "mxHost": mxHost = try r.optionalString()
            case "remoteAddress": remoteAddress = try r.optionalString()
            case "tlsVersion": tlsVersion = try r.optionalString()
            case "tlsCipher": tlsCipher = try r.optionalString()
            case "reusedConnection": reused = r.readNull() ? nil : try r.bool()
            case "dkim":
                if r.readNull() { dkim = nil; return }
                var list: [String] = []
                try r.array { r in list.append(try r.string()) }
                dkim = list
            case "timings":
                if r.readNull() { timings = nil; return }
                var t = DeliveryTimings()
                try r.object { r, key in
                    switch key {
                    case "resolve": t.resolve = try r.optionalDouble()
                    case "shapingWait": t.shapingWait = try r.optionalDouble()
                    case "connect": t.connect = try r.optionalDouble()
                    case "setup": t.setup = try r.optionalDouble()
                    case "transaction": t.transaction = try r.optionalDouble()
                    default: try r.skipValue()
                    }
                }
                timings = t
            case "connectionFailure":
                if r.readNull() { failure = nil; return }
                var host: String?, address: String?, family: String?
                try r.object { r, key in
                    switch key {
                    case "mxHost": host = try r.string()
                    case "remoteAddress": address = try r.string()
                    case "addressFamily": family = try r.string()
                    default: try r.skipValue()
                    }
                }
                var c = ConnectionFailureContext(mxHost: try required(host, "mxHost", r), remoteAddress: try required(address, "remoteAddress", r))
                c.addressFamily = try required(family, "addressFamily", r)
                failure = c
            case "tlsReports":
                if r.readNull() { reports = nil; return }
                var list: [TLSReportEntry] = []
                try r.array { r in
                    var domain: String?, type: String?, result: String?, host: String?
                    try r.object { r, key in
                        switch key {
                        case "policyDomain": domain = try r.string()
                        case "policyType": type = try r.string()
                        case "result": result = try r.string()
                        case "mxHost": host = try r.optionalString()
                        default: try r.skipValue()
                        }
                    }
                    list.append(TLSReportEntry(policyDomain: try required(domain, "policyDomain", r), policyType: try required(type, "policyType", r),
                                               result: try required(result, "result", r), mxHost: host))
                }
                reports = list
            default: try r.skipValue()
            }
        }
        var v = RecipientResult(recipientID: try required(recipientID, "recipientID", r), status: try required(status, "status", r),
                                reply: DeliveryStatus(code: try required(code, "code", r), enhanced: enhanced, text: try required(text, "text", r)))
        v.mxHost = mxHost; v.remoteAddress = remoteAddress; v.tlsVersion = tlsVersion; v.tlsCipher = tlsCipher
        v.reusedConnection = reused; v.dkim = dkim; v.timings = timings; v.connectionFailure = failure; v.tlsReports = reports
        return v
    }
}
