import Testing

/// Every suite that starts processes or binds fixed addresses nests here, so they
/// run one at a time (the trait applies recursively) and never compete for the two cores.
@Suite("Integration", .serialized)
enum Integration {}
