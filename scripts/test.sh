#!/usr/bin/env bash
# Runs every test: installs the real peers the tests talk to (Debian packages),
# builds debug and release with warnings treated as errors, starts one private PostgreSQL
# server for the run (scripts/pg-test-server.sh), then runs the suite, the LocalCluster
# integration suites again with every cluster on PostgreSQL, the unit tests under shifted
# clocks, and the dashboard's browser tests in headless Chromium (scripts/browser-tests.sh).
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
echo "== tests (at ${SECONDS}s)"
swift test -Xswiftc -warnings-as-errors "$@"
if [ $# -eq 0 ]; then
  # The integration suites built on LocalCluster again, every cluster on PostgreSQL (a fresh
  # schema of the same server each, HATO_TEST_STORE): end to end, MX path, durability, cluster
  # operations, deliverability, reporting… against the other store. The suites are the files of
  # Tests/IntegrationTests with a `LocalCluster(` that names no store (file name = suite name);
  # those whose clusters all name theirs (store: / storeYAML) would only run again the same way.
  # A suite the test binary does not know stops the run.
  echo "== integration tests on PostgreSQL (at ${SECONDS}s)"
  suites=()
  for f in Tests/IntegrationTests/*Tests.swift; do
    grep 'LocalCluster(' "$f" | grep -qvE 'store:|storeYAML' && suites+=("$(basename "$f" .swift)")
  done
  known=$(swift test --skip-build list 2>/dev/null)
  for name in "${suites[@]}"; do
    grep -q "^IntegrationTests\.Integration/$name/" <<<"$known" || { echo "no suite Integration/$name in the test binary"; exit 1; }
  done
  pg_filter="^IntegrationTests\.Integration/($(IFS='|'; echo "${suites[*]}"))/"
  HATO_TEST_STORE=postgresql swift test --skip-build --filter "$pg_filter"
  # The unit tests again under shifted clocks, time zones and locales: the 1st of a month,
  # a year end, a DST change, a Japanese locale (the whole suite: scripts/test-clocks.sh).
  echo "== unit tests under shifted clocks (at ${SECONDS}s)"
  bash scripts/test-clocks.sh --unit
  # The dashboard in a real headless Chromium against a real loopback cluster (the debug
  # binaries built above; one browser for the run; every process stopped by its PID).
  echo "== browser tests (dashboard) (at ${SECONDS}s)"
  HATO_BIN=$(swift build --show-bin-path) HATO_BROWSER_TIMEOUT=600 timeout --kill-after=15 900 bash scripts/browser-tests.sh
fi
echo "== all tests passed (${SECONDS}s)"
