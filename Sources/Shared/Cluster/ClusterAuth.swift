import Foundation
import HatoCrypto
import HatoIO
import HatoSupport
import SMTPCore

/// The HMAC-SHA256 challenge–response of the cluster protocol. No secret crosses the wire.
public enum ClusterAuth {
    /// The node's proof: HMAC-SHA256(secret, "hato-cluster/1 node|" + nonce + "|" + nodeID + "|" + instanceID), hex.
    public static func nodeProof(secret: String, nonce: String, nodeID: String, instanceID: String) -> String {
        Hex.encode(Crypto.hmacSHA256(key: Array(secret.utf8), data: Array("hato-cluster/1 node|\(nonce)|\(nodeID)|\(instanceID)".utf8)))
    }

    /// The coordinator's proof: HMAC-SHA256(secret, "hato-cluster/1 coordinator|" + nodeNonce + "|" + nodeID), hex.
    public static func coordinatorProof(secret: String, nodeNonce: String, nodeID: String) -> String {
        Hex.encode(Crypto.hmacSHA256(key: Array(secret.utf8), data: Array("hato-cluster/1 coordinator|\(nodeNonce)|\(nodeID)".utf8)))
    }

    /// Compares a received proof with the expected one in constant time.
    public static func verify(_ received: String, expected: String) -> Bool {
        Crypto.constantTimeEquals(Array(received.utf8), Array(expected.utf8))
    }
}
