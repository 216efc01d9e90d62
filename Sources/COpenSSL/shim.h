#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/pem.h>
#include <openssl/crypto.h>
#include <openssl/x509v3.h>

static inline long hato_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version) {
    return SSL_CTX_set_min_proto_version(ctx, version);
}
static inline long hato_SSL_CTX_set_mode(SSL_CTX *ctx, long mode) { return SSL_CTX_set_mode(ctx, mode); }
static inline long hato_SSL_set_tlsext_host_name(SSL *ssl, const char *name) {
    return SSL_set_tlsext_host_name(ssl, name);
}
static inline unsigned long hato_SSL_OP_NO_COMPRESSION(void) { return SSL_OP_NO_COMPRESSION; }
static inline long hato_SSL_MODE_AUTO_RETRY(void) { return SSL_MODE_AUTO_RETRY; }
static inline int hato_TLS1_2_VERSION(void) { return TLS1_2_VERSION; }
// TLS (Sources/Shared/TLS): option constants and macros not importable from Swift.
static inline unsigned long long hato_SSL_OP_NO_RENEGOTIATION(void) { return SSL_OP_NO_RENEGOTIATION; }
static inline unsigned long long hato_SSL_OP_IGNORE_UNEXPECTED_EOF(void) { return SSL_OP_IGNORE_UNEXPECTED_EOF; }
static inline unsigned long long hato_SSL_OP_NO_COMPRESSION_64(void) { return SSL_OP_NO_COMPRESSION; }
static inline long hato_SSL_CTX_get_min_proto_version(SSL_CTX *ctx) { return SSL_CTX_get_min_proto_version(ctx); }
static inline int hato_TLS1_3_VERSION(void) { return TLS1_3_VERSION; }
// Cluster and admin TLS (issue 14): per-connection modes, client CA lists, partial chains.
static inline long hato_SSL_set_mode(SSL *ssl, long mode) { return SSL_set_mode(ssl, mode); }
static inline long hato_SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER(void) { return SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER; }
static inline int hato_SSL_VERIFY_PEER_REQUIRED(void) { return SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT; }
static inline unsigned long hato_X509_V_FLAG_PARTIAL_CHAIN(void) { return X509_V_FLAG_PARTIAL_CHAIN; }
static inline int hato_NID_commonName(void) { return NID_commonName; }
// SecretBox (AES-256-GCM): the GCM control codes are macros of macros.
static inline int hato_EVP_CTRL_GCM_SET_IVLEN(void) { return EVP_CTRL_GCM_SET_IVLEN; }
static inline int hato_EVP_CTRL_GCM_GET_TAG(void) { return EVP_CTRL_GCM_GET_TAG; }
static inline int hato_EVP_CTRL_GCM_SET_TAG(void) { return EVP_CTRL_GCM_SET_TAG; }
// DANE for outbound SMTP (RFC 7672, issue 18): the flag is a macro.
static inline unsigned long hato_DANE_FLAG_NO_DANE_EE_NAMECHECKS(void) { return DANE_FLAG_NO_DANE_EE_NAMECHECKS; }
