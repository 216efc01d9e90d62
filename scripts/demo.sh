#!/usr/bin/env bash
# Builds Hato and runs the local cluster from ./cluster.yml: a coordinator, nodes
# node-a and node-b, and a capture server on 127.0.0.1:2526 that plays the MX for
# hato.test (nothing leaves the machine). Sends a few messages and prints which
# node and sending IP delivered each. Then keeps the cluster running until Ctrl-C
# (pass --once to stop right after the demo).
set -euo pipefail
cd "$(dirname "$0")/.."
ONCE=0; [ "${1:-}" = "--once" ] && ONCE=1
COUNT=${HATO_DEMO_MESSAGES:-8}

# The coordinator links libpq (PostgreSQL's client library, for the coming shared store):
# its headers must be there to build. Installed once when run as root.
if ! pkg-config --exists libpq 2>/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "== installing libpq-dev"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends libpq-dev >/dev/null
  else
    echo "demo: libpq-dev is missing (sudo apt-get install libpq-dev)" >&2
    exit 1
  fi
fi

# A release build that is already there is used (brought up to date first: a no-op when
# nothing changed); otherwise a debug build, which is quicker to make from scratch.
if [ -x .build/release/hato-coordinator ] && [ -x .build/release/hato-node ]; then
  echo "== building (release: an existing release build is used)"
  swift build -c release 2>&1 | tail -1
  BIN=$(swift build -c release --show-bin-path)
else
  echo "== building (debug)"
  swift build 2>&1 | tail -1
  BIN=$(swift build --show-bin-path)
fi

rm -rf var && mkdir -p var/logs
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$BIN/hato-sink" --listen 127.0.0.1:2526 --dir var/capture >var/logs/capture.log 2>&1 & PIDS+=($!)
"$BIN/hato-coordinator" serve --config cluster.yml >var/logs/coordinator.log 2>&1 & PIDS+=($!)
"$BIN/hato-node" run --config cluster.yml --id node-a >var/logs/node-a.log 2>&1 & PIDS+=($!)
"$BIN/hato-node" run --config cluster.yml --id node-b >var/logs/node-b.log 2>&1 & PIDS+=($!)

echo "== waiting for both nodes to join"
for i in $(seq 1 100); do
  if "$BIN/hato-coordinator" nodes --config cluster.yml 2>/dev/null | grep -c " active " | grep -q 2; then break; fi
  sleep 0.2
  [ "$i" = 100 ] && { echo "nodes did not join; see var/logs/"; tail -5 var/logs/*.log; exit 1; }
done
"$BIN/hato-coordinator" status --config cluster.yml

echo "== sending $COUNT messages to 127.0.0.1:2525 (Python smtplib)"
PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3
"$PY" - "$COUNT" <<'PYEOF'
import smtplib, sys
n = int(sys.argv[1])
with smtplib.SMTP("127.0.0.1", 2525, timeout=30) as s:
    for i in range(n):
        msg = ("From: Demo <demo@example.org>\r\nTo: <user%d@hato.test>\r\nSubject: Hato demo %d\r\n\r\n"
               "Hello from the Hato demo, message %d.\r\n" % (i, i, i)).encode()
        s.sendmail("demo@example.org", ["user%d@hato.test" % i], msg)
print("submitted %d messages" % n)
PYEOF
# sendmail() hides the queue id; read the ids back from the admin API instead.
for i in $(seq 1 100); do
  DONE=$("$BIN/hato-coordinator" queue --config cluster.yml --json | "$PY" -c 'import json,sys; q=json.load(sys.stdin); print(q["delivered"]+q["failed"]+q["expired"])')
  [ "$DONE" -ge "$COUNT" ] && break
  sleep 0.2
done
echo "== delivered: which node and sending IP carried each message"
first=1
for id in $("$BIN/hato-coordinator" messages --config cluster.yml --limit "$COUNT" | sort); do
  out=$("$BIN/hato-coordinator" message "$id" --config cluster.yml)
  if [ "$first" = 1 ]; then echo "$out" | sed -n 2p; first=0; fi
  echo "$out" | tail -n +3
done
echo
echo "captured messages are in var/capture/, logs in var/logs/"
"$BIN/hato-coordinator" queue --config cluster.yml
if [ "$ONCE" = 1 ]; then exit 0; fi
echo
echo "The cluster keeps running: submit mail to 127.0.0.1:2525 (e.g. swaks --server 127.0.0.1:2525 --to someone@hato.test)."
echo "hato-coordinator status --config cluster.yml shows it. Ctrl-C stops everything."
wait
