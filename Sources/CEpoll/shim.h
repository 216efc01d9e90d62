#pragma clang module import SwiftGlibc
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

/// epoll(7) and eventfd(2) for HatoIO's EventLoop, through plain integers: `struct epoll_event`
/// is packed on x86-64 and holds a union, which these wrappers keep out of Swift.

/// The interest bits, as the kernel spells them.
static const uint32_t hato_epoll_in = EPOLLIN;
static const uint32_t hato_epoll_out = EPOLLOUT;
static const uint32_t hato_epoll_err = EPOLLERR;
static const uint32_t hato_epoll_hup = EPOLLHUP;

/// epoll_create1(EPOLL_CLOEXEC).
static inline int hato_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

/// eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK).
static inline int hato_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

/// epoll_ctl with `events` and a 64-bit data word (op: 1 add, 2 delete, 3 modify).
static inline int hato_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data) {
    struct epoll_event ev;
    ev.events = events;
    ev.data.u64 = data;
    int kernelOp = op == 1 ? EPOLL_CTL_ADD : op == 2 ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
    return epoll_ctl(epfd, kernelOp, fd, &ev);
}

/// epoll_wait into two parallel arrays (at most 256 events per call).
static inline int hato_epoll_wait(int epfd, uint32_t *events, uint64_t *data, int max, int timeoutMilliseconds) {
    struct epoll_event ready[256];
    if (max > 256) max = 256;
    int n = epoll_wait(epfd, ready, max, timeoutMilliseconds);
    for (int i = 0; i < n; i++) {
        events[i] = ready[i].events;
        data[i] = ready[i].data.u64;
    }
    return n;
}
