#include <sqlite3.h>

/// SQLITE_TRANSIENT is a cast macro that Swift cannot import.
static inline sqlite3_destructor_type hato_sqlite_transient(void) { return SQLITE_TRANSIENT; }

#include <unistd.h>
#include <sys/syscall.h>

/// sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE): starts the write-out of the file's dirty
/// pages without waiting for it (Glibc declares the function only under _GNU_SOURCE).
/// Returns 0 or -1 with errno.
static inline int hato_start_writeout(int fd) {
    return (int)syscall(SYS_sync_file_range, fd, (long long)0, (long long)0, (unsigned int)2);
}
