#!/usr/bin/env bash
# Runs every test: installs the real peers the tests talk to (Debian packages),
# builds debug and release with warnings treated as errors, starts one private PostgreSQL
# server for the run (scripts/pg-test-server.sh), then runs in two lanes side by side the
# integration suites (then the LocalCluster ones again with every cluster on PostgreSQL) and
# the unit tests (then again under shifted clocks), and last the dashboard's browser tests in
# headless Chromium (scripts/browser-tests.sh). With arguments, `swift test "$@"` instead of
# the lanes (e.g. `bash scripts/test.sh --filter JournalCompactionTests`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh

echo "== build (debug, warnings are errors) (at ${SECONDS}s)"
swift build -Xswiftc -warnings-as-errors 2>&1 | tee /tmp/hato-build-debug.log | grep -E "error|warning|Compiling|Build" | tail -5
echo "== build (release) (at ${SECONDS}s)"
swift build -c release -Xswiftc -warnings-as-errors 2>&1 | tail -3
echo "== PostgreSQL test server (one for the whole run) (at ${SECONDS}s)"
# The PostgreSQL tests use it through these variables (without them they start their own);
# stopped at exit, and by the script's watchdog should this shell be killed.
pg_dir=$(bash scripts/pg-test-server.sh start --owner $$)
trap 'bash scripts/pg-test-server.sh stop "$pg_dir"' EXIT
HATO_TEST_PG_URL=$(bash scripts/pg-test-server.sh url "$pg_dir")
export HATO_TEST_PG_URL HATO_TEST_PG_PASSWORD_FILE="$pg_dir/password"
if [ $# -gt 0 ]; then
  # Arguments (e.g. --filter X) go to `swift test` as they are.
  echo "== tests (at ${SECONDS}s)"
  swift test -Xswiftc -warnings-as-errors "$@"
  exit 0
fi
echo "== build tests (at ${SECONDS}s)"
swift build --build-tests -Xswiftc -warnings-as-errors 2>&1 | grep -E "error|warning:|Build" | tail -3
tests_bin=$(ls -d "$(swift build --show-bin-path)"/*PackageTests.xctest | head -1)
run_tests() { "$tests_bin" --testing-library swift-testing "$@"; }

# The integration suites built on LocalCluster again, every cluster on PostgreSQL (a fresh
# schema of the same server each, HATO_TEST_STORE): end to end, MX path, durability, cluster
# operations, deliverability, reporting… against the other store. The suites are the files of
# Tests/IntegrationTests with a `LocalCluster(` that names no store (file name = suite name);
# those whose clusters all name theirs (store: / storeYAML) would only run again the same way.
# A suite the test binary does not know stops the run.
suites=()
for f in Tests/IntegrationTests/*Tests.swift; do
  grep 'LocalCluster(' "$f" | grep -qvE 'store:|storeYAML' && suites+=("$(basename "$f" .swift)")
done
known=$(run_tests --list-tests 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g')
for name in "${suites[@]}"; do
  grep -q "^IntegrationTests\.Integration/$name/" <<<"$known" || { echo "no suite Integration/$name in the test binary"; exit 1; }
done
pg_filter="^IntegrationTests\.Integration/($(IFS='|'; echo "${suites[*]}"))/"

# Two lanes side by side, each with its own log:
#  A. the integration suites, one at a time by design (they start processes and bind fixed
#     loopback addresses: `Integration` is .serialized), then again on PostgreSQL;
#  B. the unit tests, then again under shifted clocks, time zones and locales (the 1st of a
#     month, a year end, a DST change, a Japanese locale: scripts/test-clocks.sh), one
#     scenario at a time so that lane A keeps most of a core.
# Integration tests mostly wait (processes, sockets, timers): alone they left the 2 cores about
# 60 % idle, and one lane after the other took CI past 30 minutes.
logs=$(mktemp -d /tmp/hato-test-lanes-XXXXXX)
echo "== tests in two lanes (at ${SECONDS}s): A integration, then on PostgreSQL; B unit, then under shifted clocks"
(
  set -e
  echo "== A: integration tests (at ${SECONDS}s)"
  run_tests --filter '^IntegrationTests\.'
  echo "== A: integration tests on PostgreSQL (at ${SECONDS}s)"
  HATO_TEST_STORE=postgresql run_tests --filter "$pg_filter"
  echo "== A: done (at ${SECONDS}s)"
) >"$logs/a.log" 2>&1 &
lane_a=$!
(
  set -e
  echo "== B: unit tests (at ${SECONDS}s)"
  run_tests --filter '^(SharedTests|CoordinatorTests|NodeTests)\.'
  echo "== B: unit tests under shifted clocks (at ${SECONDS}s)"
  HATO_CLOCK_JOBS=1 bash scripts/test-clocks.sh --unit
  echo "== B: done (at ${SECONDS}s)"
) >"$logs/b.log" 2>&1 &
lane_b=$!
status_a=0; wait $lane_a || status_a=$?
status_b=0; wait $lane_b || status_b=$?
for lane in a b; do
  echo "== lane ${lane^^} log ($logs/$lane.log)"
  # The whole log on failure; the phase lines and summaries otherwise.
  if { [ $lane = a ] && [ $status_a -ne 0 ]; } || { [ $lane = b ] && [ $status_b -ne 0 ]; }; then
    sed 's/\x1b\[[0-9;]*m//g' "$logs/$lane.log"
  else
    sed 's/\x1b\[[0-9;]*m//g' "$logs/$lane.log" | grep -E '^== |^   |Test run with|recorded an issue' || true
  fi
done
echo "== lanes finished (at ${SECONDS}s): A exit $status_a, B exit $status_b"
[ $status_a -eq 0 ] && [ $status_b -eq 0 ] || exit 1

# The dashboard in a real headless Chromium against a real loopback cluster (the debug
# binaries built above; one browser for the run; every process stopped by its PID).
echo "== browser tests (dashboard) (at ${SECONDS}s)"
HATO_BIN=$(swift build --show-bin-path) HATO_BROWSER_TIMEOUT=600 timeout --kill-after=15 900 bash scripts/browser-tests.sh
echo "== all tests passed (${SECONDS}s)"
