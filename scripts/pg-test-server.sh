#!/usr/bin/env bash
# A private PostgreSQL server for a test run, never the system service:
#
#   dir=$(bash scripts/pg-test-server.sh start [--owner PID] [--durable])   # prints the server's directory
#   bash scripts/pg-test-server.sh url DIR     # postgresql://hato@127.0.0.1:PORT/hato_test
#   bash scripts/pg-test-server.sh stop DIR    # stops it by its postmaster.pid, removes DIR
#
# `start` runs initdb into a new temporary directory, starts the server with pg_ctl on a free
# port on 127.0.0.1 (its unix socket inside that directory, fsync off: test data only), and
# creates the role `hato` with a random password and the database `hato_test` owned by it.
# DIR then holds `url` (no password in it), `password` (mode 600: pass it as a password file)
# and `server.log`. initdb and the server refuse to run as root: as root they run as
# $HATO_PG_TEST_USER (default: Debian's `postgres`), which owns DIR; otherwise as the caller.
# With --owner PID a watchdog stops the server once process PID has gone, so a test process
# that crashes leaves no server behind. With --durable the server keeps PostgreSQL's durable
# defaults (fsync, synchronous_commit and full_page_writes on, initdb's files synced): for
# benchmarks, where a commit must cost what it costs an operator's server. The binaries come
# from /usr/lib/postgresql/*/bin (the newest), else from PATH.
set -euo pipefail

script=$(readlink -f "$0")
die() { echo "pg-test-server: $*" >&2; exit 1; }
marker=.hato-pg-test-server

bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/initdb" ] && { echo "$d"; return; }
  done
  local initdb
  initdb=$(command -v initdb 2>/dev/null) || die "no PostgreSQL server binaries (apt-get install postgresql)"
  dirname "$initdb"
}

server_user() {
  if [ "$(id -u)" -eq 0 ]; then
    local u=${HATO_PG_TEST_USER:-postgres}
    id -u "$u" >/dev/null 2>&1 || die "user '$u' does not exist (install postgresql or set HATO_PG_TEST_USER)"
    echo "$u"
  else
    id -un
  fi
}

# Runs a command as the server's user (root cannot run initdb or postgres).
as_server_user() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u "$(server_user)" -- "$@"; else "$@"; fi
}

free_port() {
  local py=/usr/bin/python3
  [ -x "$py" ] || py=python3
  "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# True while PID is a live (not zombie) process.
alive() {
  [ -r "/proc/$1/stat" ] || return 1
  local state
  state=$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
  [ "$state" != "Z" ] && [ "$state" != "X" ]
}

check_dir() {
  [ -n "${1:-}" ] || die "missing DIR"
  [ -f "$1/$marker" ] || die "$1 is not a test server directory (no $marker)"
}

cmd_start() {
  local owner="" durable=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --owner) owner=$2; shift 2 ;;
      --durable) durable=1; shift ;;
      *) die "start: unknown argument $1" ;;
    esac
  done
  local t0 bin user base dir password port tries=0 nosync=--no-sync sync_settings
  # Test data may be lost in a crash, so tests skip every flush; a benchmark keeps them (a fair
  # operator runs with durability on, and a commit then waits for its WAL fdatasync).
  sync_settings="fsync = off
synchronous_commit = off
full_page_writes = off"
  if [ -n "$durable" ]; then
    nosync=""
    sync_settings="fsync = on
synchronous_commit = on
full_page_writes = on"
  fi
  t0=$(date +%s%N)
  bin=$(bindir)
  user=$(server_user)
  # As root the directory must be reachable by the server's user: /tmp, not root's $TMPDIR.
  if [ "$(id -u)" -eq 0 ]; then base=/tmp; else base=${TMPDIR:-/tmp}; fi
  dir=$(mktemp -d "$base/hato-pg-XXXXXX")
  cd "$dir"   # the server's user may not be able to enter the caller's directory
  touch "$dir/$marker"
  (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/password"; echo >>"$dir/password")
  password=$(head -1 "$dir/password")
  [ "$(id -u)" -eq 0 ] && chown -R "$user:" "$dir"
  chmod 700 "$dir"

  if ! as_server_user "$bin/initdb" -D "$dir/data" -U postgres --auth-local=trust \
      --auth-host=scram-sha-256 --encoding=UTF8 --locale=C $nosync >"$dir/initdb.log" 2>&1; then
    cat "$dir/initdb.log" >&2
    rm -rf "$dir"
    die "initdb failed"
  fi

  while :; do
    tries=$((tries + 1))
    port=$(free_port)
    # Appended settings win over initdb's; a retry appends another port.
    as_server_user tee -a "$dir/data/postgresql.conf" >/dev/null <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
$sync_settings
max_connections = 200
log_min_messages = warning
EOF
    if as_server_user "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null 2>&1; then
      break
    fi
    if [ $tries -ge 5 ]; then
      tail -20 "$dir/server.log" >&2 || true
      rm -rf "$dir"
      die "the server did not start"
    fi
  done

  # The password goes over stdin, never on a command line.
  if ! as_server_user "$bin/psql" -h "$dir" -p "$port" -U postgres -d postgres -q -v ON_ERROR_STOP=1 \
      >"$dir/psql.log" 2>&1 <<EOF
CREATE ROLE hato LOGIN PASSWORD '$password';
CREATE DATABASE hato_test OWNER hato;
EOF
  then
    cat "$dir/psql.log" >&2
    cmd_stop "$dir"
    die "could not create the role and database"
  fi
  echo "postgresql://hato@127.0.0.1:$port/hato_test" >"$dir/url"
  echo "$port" >"$dir/port"

  if [ -n "$owner" ]; then
    # Detached from our stdout (a reader of it would otherwise wait for the watchdog).
    setsid bash -c 'while kill -0 "$1" 2>/dev/null && [ -d "$2" ]; do sleep 2; done; [ -d "$2" ] && exec bash "$3" stop "$2"' \
      watchdog "$owner" "$dir" "$script" </dev/null >/dev/null 2>&1 &
    echo $! >"$dir/watchdog.pid"
  fi
  echo "pg-test-server: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port in $dir ($([ -n "$durable" ] && echo durable || echo "fsync off")), started in $(( ($(date +%s%N) - t0) / 1000000 )) ms" >&2
  echo "$dir"
}

cmd_stop() {
  local dir=${1:-}
  check_dir "$dir"
  local pidfile="$dir/data/postmaster.pid" pid i
  if [ -f "$pidfile" ]; then
    pid=$(head -1 "$pidfile")
    # Only a postgres process whose command line names this data directory.
    if [ -n "$pid" ] && alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$dir/data"; then
      kill -INT "$pid" 2>/dev/null || true   # fast shutdown: ends sessions, checkpoints, exits
      for i in $(seq 100); do alive "$pid" || break; sleep 0.1; done
      if alive "$pid"; then kill -QUIT "$pid" 2>/dev/null || true; sleep 1; fi
      if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    fi
  fi
  if [ -f "$dir/watchdog.pid" ]; then
    pid=$(cat "$dir/watchdog.pid")
    [ "$pid" != "$$" ] && alive "$pid" && kill "$pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
}

# An outage for tests: the server stops (fast shutdown) but keeps its directory; resume
# starts it again on the same port and data.
cmd_pause() {
  local dir=${1:-}
  check_dir "$dir"
  as_server_user "$(bindir)/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null
}

cmd_resume() {
  local dir=${1:-}
  check_dir "$dir"
  cd "$dir"
  as_server_user "$(bindir)/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) cmd_stop "${2:-}" ;;
  pause) cmd_pause "${2:-}" ;;
  resume) cmd_resume "${2:-}" ;;
  url) check_dir "${2:-}"; cat "$2/url" ;;
  *) echo "usage: $0 start [--owner PID] [--durable] | url DIR | pause DIR | resume DIR | stop DIR" >&2; exit 2 ;;
esac
