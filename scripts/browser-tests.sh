#!/usr/bin/env bash
# The dashboard's browser tests (issue 17): starts a real local cluster on loopback — a
# coordinator, nodes node-a and node-b, a capture MX (hato-sink) for sink.test and a "busy" MX
# for busy.test that answers RCPT with 421 (so a provider suspension appears) — then drives
# the dashboard in ONE headless Chromium with Selenium (tests/browser/test_dashboard.py), and
# stops every process it started by its PID.
#
# It builds nothing: build first (swift build). Binaries come from $HATO_BIN, else
# `swift build --show-bin-path`. Output (logs, screenshots) goes to $HATO_TEST_OUTPUT, default
# .build/test-output/browser (screenshots in .build/test-output/screenshots). Bounded by
# $HATO_BROWSER_TIMEOUT seconds (default 600). Needs chromium, chromium-driver and
# python3-selenium (scripts/install-test-deps.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN=${HATO_BIN:-$(swift build --show-bin-path)}
OUT=${HATO_TEST_OUTPUT:-$ROOT/.build/test-output/browser}
SHOTS=${HATO_SCREENSHOTS:-$ROOT/.build/test-output/screenshots}
LIMIT=${HATO_BROWSER_TIMEOUT:-600}
PY=/usr/bin/python3
for exe in hato-coordinator hato-node hato-sink; do
  [ -x "$BIN/$exe" ] || { echo "browser-tests: $BIN/$exe is not built (run swift build first)" >&2; exit 1; }
done
command -v chromedriver >/dev/null && command -v chromium >/dev/null && "$PY" -c 'import selenium' \
  || { echo "browser-tests: chromium, chromium-driver or python3-selenium missing (scripts/install-test-deps.sh)" >&2; exit 1; }

rm -rf "$OUT" && mkdir -p "$OUT/logs" "$SHOTS"
rm -f "$SHOTS"/*.png
PIDS=()
stop_all() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
}
trap stop_all EXIT INT TERM

read -r P_CLUSTER P_ADMIN P_SMTP P_SINK P_BUSY < <("$PY" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks: s.close()
EOF
)
TOKEN="browser-test-admin-token-$RANDOM$RANDOM"
cat >"$OUT/cluster.yml" <<EOF
cluster: { name: browser, secret: "browser-test-secret-$RANDOM" }
coordinator:
  listen: 127.0.0.1:$P_CLUSTER
  admin_listen: 127.0.0.1:$P_ADMIN
  admin_token: "$TOKEN"
  data_dir: $OUT/coordinator
  lease_time: 1m
  node_timeout: 10s
  heartbeat_interval: 1s
smtp:
  listen: [127.0.0.1:$P_SMTP]
  hostname: relay.browser.test
  relay_networks: [127.0.0.0/8]
  auth_failure_limit: 5
  auth_allow_plaintext_loopback: true   # tenant users submit with AUTH over loopback
nodes:
  - { id: node-a, data_dir: $OUT/node-a }
  - { id: node-b, data_dir: $OUT/node-b }
pools:
  - name: transactional
ips:
  - { address: 127.0.0.20, helo: mta20.browser.test, pool: transactional, nodes: [node-a], warmup: { plan: gentle, start: $(date -u +%F) } }
  - { address: 127.0.0.21, helo: mta21.browser.test, pool: transactional, nodes: [node-b] }
warmup:
  - { name: gentle, daily: [1000, 2000] }
routing: { default_pool: transactional }
routes:
  - { domain: sink.test, next_hop: "127.0.0.1:$P_SINK" }
  - { domain: busy.test, next_hop: "127.0.0.1:$P_BUSY" }
retry: { schedule: [30m], max_age: 1d }
delivery: { connect_timeout: 5s }
# No DNS here: the tenants' domain check gets quick lookup failures from a closed port.
dns: { nameservers: ["127.0.0.1:$P_CLUSTER"], timeout: 1s }
# Feedback loops' abuse reports (issue 18): the tenant overview shows its complaint rate.
reputation: { feedback_addresses: [fbl@relay.browser.test] }
EOF

"$BIN/hato-sink" --listen "127.0.0.1:$P_SINK" >"$OUT/logs/sink.log" 2>&1 & PIDS+=($!)
"$PY" "$ROOT/tests/browser/busy_mx.py" "$P_BUSY" >"$OUT/logs/busy-mx.log" 2>&1 & PIDS+=($!)
"$BIN/hato-coordinator" serve --config "$OUT/cluster.yml" >"$OUT/logs/coordinator.log" 2>&1 & PIDS+=($!)
for i in $(seq 1 100); do
  curl -s -o /dev/null -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$P_ADMIN/v1/status" && break
  sleep 0.1
  [ "$i" = 100 ] && { echo "coordinator did not start"; cat "$OUT/logs/coordinator.log"; exit 1; }
done
"$BIN/hato-node" run --config "$OUT/cluster.yml" --id node-a >"$OUT/logs/node-a.log" 2>&1 & PIDS+=($!)
"$BIN/hato-node" run --config "$OUT/cluster.yml" --id node-b >"$OUT/logs/node-b.log" 2>&1 & PIDS+=($!)
for i in $(seq 1 150); do
  n=$("$BIN/hato-coordinator" nodes --config "$OUT/cluster.yml" 2>/dev/null | grep -c " active " || true)
  [ "$n" = 2 ] && break
  sleep 0.2
  [ "$i" = 150 ] && { echo "nodes did not join"; tail -5 "$OUT"/logs/*.log; exit 1; }
done

# An operator account made with the CLI (the password from stdin, as hash-password reads it).
OP_PASSWORD="browser-op-password-$RANDOM"
echo "$OP_PASSWORD" | "$BIN/hato-coordinator" operator add browser-op --config "$OUT/cluster.yml"

# Two tenants, each with an SMTP user (who also logs in to the tenant view) and a sending
# domain (with its DKIM keys), and a suppression on acme's domain for the tenant to remove.
T_PASSWORD="tenant-password-$RANDOM"
for t in acme other; do
  "$BIN/hato-coordinator" tenant create "$t" --config "$OUT/cluster.yml" >/dev/null
  echo "$T_PASSWORD" | "$BIN/hato-coordinator" tenant smtp-user add "$t" "$t-app" --config "$OUT/cluster.yml"
  "$BIN/hato-coordinator" domain add "$t.test" --tenant "$t" --config "$OUT/cluster.yml" >/dev/null
done
"$BIN/hato-coordinator" suppressions add gone@example.net --scope acme.test --reason "550 5.1.1 no such user" --config "$OUT/cluster.yml" >/dev/null

echo "== browser tests (headless Chromium, limit ${LIMIT}s)"
status=0
HATO_UI="http://127.0.0.1:$P_ADMIN" HATO_SMTP_PORT=$P_SMTP HATO_OPERATOR=browser-op HATO_OPERATOR_PASSWORD="$OP_PASSWORD" HATO_TENANT_PASSWORD="$T_PASSWORD" \
  HATO_SCREENSHOTS="$SHOTS" HATO_OUTPUT="$OUT" \
  timeout --kill-after=10 "$LIMIT" "$PY" "$ROOT/tests/browser/test_dashboard.py" || status=$?
if [ "$status" != 0 ]; then
  echo "browser tests failed ($status); logs in $OUT/logs:"
  tail -n 20 "$OUT"/logs/*.log
else
  # Nothing secret may reach the logs: not the token, the password or a session id.
  if grep -q -e "$TOKEN" -e "$OP_PASSWORD" -e "$T_PASSWORD" "$OUT"/logs/*.log; then echo "a secret appeared in a log"; status=1; fi
fi
echo "screenshots: $SHOTS"
exit "$status"
