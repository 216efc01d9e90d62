// Hato runs on Linux only: it uses glibc's socket options (IP_BIND_ADDRESS_NO_PORT,
// SIOCOUTQNSD), libresolv's res_n* functions, /proc for memory and boot ids, and statvfs.
#if !os(Linux)
#error("Hato builds and runs on Linux only")
#endif
