#pragma clang module import SwiftGlibc
#include <netinet/in.h>
#include <arpa/nameser.h>
#include <resolv.h>
#include <stdlib.h>
#include <string.h>

/// res_ninit/res_nclose are macros over __res_ninit/__res_nclose in glibc.
static inline int hato_res_ninit(res_state state) { return res_ninit(state); }
static inline void hato_res_nclose(res_state state) { res_nclose(state); }

/// Allocates a zeroed resolver state (caller frees with hato_res_free).
static inline res_state hato_res_alloc(void) {
    res_state s = (res_state)calloc(1, sizeof(struct __res_state));
    return s;
}
static inline void hato_res_free(res_state s) { free(s); }

/// Points the resolver at explicit IPv4 nameservers (address in network order, port in host order).
static inline void hato_res_set_nameserver(res_state s, int index, uint32_t addr_be, uint16_t port) {
    if (index < 0 || index >= MAXNS) return;
    memset(&s->nsaddr_list[index], 0, sizeof(struct sockaddr_in));
    s->nsaddr_list[index].sin_family = AF_INET;
    s->nsaddr_list[index].sin_addr.s_addr = addr_be;
    s->nsaddr_list[index].sin_port = htons(port);
    if (index + 1 > s->nscount) s->nscount = index + 1;
}
static inline void hato_res_set_nscount(res_state s, int count) { s->nscount = count; }
static inline void hato_res_set_timeouts(res_state s, int retrans_seconds, int retry) {
    s->retrans = retrans_seconds; s->retry = retry;
}
/// Keeps the AD bit of answers (glibc clears it unless `trust-ad`): used only for the DNSSEC
/// status queries of DANE (RFC 7672), towards the configured, trusted validating resolvers.
static inline void hato_res_trust_ad(res_state s) { s->options |= RES_TRUSTAD; }
static inline int hato_res_nsend(res_state s, const unsigned char *msg, int msglen, unsigned char *answer, int anslen) {
    return res_nsend(s, msg, msglen, answer, anslen);
}
static inline int hato_res_nmkquery(res_state s, int op, const char *dname, int cls, int type,
                                    unsigned char *buf, int buflen) {
    return res_nmkquery(s, op, dname, cls, type, NULL, 0, NULL, buf, buflen);
}
