#!/usr/bin/env bash
# Runs every test: installs the real peers the tests talk to (Debian packages),
# builds debug (with the tests) and release with warnings treated as errors, starts one private
# PostgreSQL server for the run (scripts/pg-test-server.sh), runs the unit tests under shifted
# clocks beside the release build, then the whole suite, the LocalCluster integration suites
# again with every cluster on PostgreSQL, and the dashboard's browser tests in headless
# Chromium (scripts/browser-tests.sh). With arguments, `swift test "$@"` instead (debug only,
# e.g. `bash scripts/test.sh --filter JournalCompactionTests`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh

echo "== build (debug with tests, warnings are errors) (at ${SECONDS}s)"
swift build --build-tests -Xswiftc -warnings-as-errors 2>&1 | tee /tmp/hato-build-debug.log | grep -E "error|warning|Build" | tail -5
if [ $# -gt 0 ]; then
  # Arguments (e.g. --filter X) go to `swift test` as they are; no release build.
  echo "== tests (at ${SECONDS}s)"
  swift test --skip-build "$@"
  exit 0
fi
echo "== PostgreSQL test server (one for the whole run) (at ${SECONDS}s)"
# The PostgreSQL tests use it through these variables (without them they start their own);
# stopped at exit, and by the script's watchdog should this shell be killed.
pg_dir=$(bash scripts/pg-test-server.sh start --owner $$)
trap 'bash scripts/pg-test-server.sh stop "$pg_dir"' EXIT
HATO_TEST_PG_URL=$(bash scripts/pg-test-server.sh url "$pg_dir")
export HATO_TEST_PG_URL HATO_TEST_PG_PASSWORD_FILE="$pg_dir/password"
tests_bin=$(ls -d .build/debug/*PackageTests.xctest | head -1)
run_tests() { "$tests_bin" --testing-library swift-testing "$@"; }

# The release build and, beside it, the unit tests again under shifted clocks, time zones and
# locales (the 1st of a month, a year end, a DST change, a Japanese locale:
# scripts/test-clocks.sh, two scenarios at a time). The compiler leaves a core idle for much of
# a release build and the unit tests mostly wait, so the two share the machine well; the
# integration suites, which time processes, run later on a quiet machine. (One phase after the
# other took CI past 30 minutes.)
echo "== build (release) and, beside it, the unit tests under shifted clocks (at ${SECONDS}s)"
clocks_log=$(mktemp /tmp/hato-clocks-XXXXXX.log)
HATO_CLOCK_JOBS=2 bash scripts/test-clocks.sh --unit --no-build >"$clocks_log" 2>&1 &
clocks_pid=$!
release_status=0
swift build -c release -Xswiftc -warnings-as-errors 2>&1 | tail -3 || release_status=$?
echo "   release build done (at ${SECONDS}s)"
clocks_status=0; wait $clocks_pid || clocks_status=$?
sed 's/\x1b\[[0-9;]*m//g' "$clocks_log"
echo "   unit tests under shifted clocks done (at ${SECONDS}s)"
[ $release_status -eq 0 ] || { echo "release build failed"; exit 1; }
[ $clocks_status -eq 0 ] || { echo "unit tests under shifted clocks failed"; exit 1; }

echo "== tests (at ${SECONDS}s)"
run_tests

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
known=$(run_tests --list-tests 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g')
for name in "${suites[@]}"; do
  grep -q "^IntegrationTests\.Integration/$name/" <<<"$known" || { echo "no suite Integration/$name in the test binary"; exit 1; }
done
pg_filter="^IntegrationTests\.Integration/($(IFS='|'; echo "${suites[*]}"))/"
HATO_TEST_STORE=postgresql run_tests --filter "$pg_filter"

# The dashboard in a real headless Chromium against a real loopback cluster (the debug
# binaries built above; one browser for the run; every process stopped by its PID).
echo "== browser tests (dashboard) (at ${SECONDS}s)"
HATO_BIN=$(swift build --show-bin-path) HATO_BROWSER_TIMEOUT=600 timeout --kill-after=15 900 bash scripts/browser-tests.sh
echo "== all tests passed (${SECONDS}s)"
