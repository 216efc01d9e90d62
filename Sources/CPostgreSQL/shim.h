// libpq, PostgreSQL's C client library (Debian: libpq-dev puts libpq-fe.h in
// /usr/include/postgresql; pkg-config libpq adds that directory).
#include <libpq-fe.h>
