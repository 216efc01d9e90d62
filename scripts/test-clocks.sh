#!/usr/bin/env bash
# Runs the test suite under shifted clocks, time zones and locales (Debian's faketime), to
# catch code and tests that assume a two-digit day, a fixed width for numbers, the machine's
# time zone or locale, or a date away from a month, year or DST boundary.
#
#   bash scripts/test-clocks.sh            # every scenario, whole suite (about 2-3 min each)
#   bash scripts/test-clocks.sh --unit     # every scenario, unit-test targets only (seconds each)
#   bash scripts/test-clocks.sh --filter X # passes --filter X to the test binary
#   HATO_CLOCK_JOBS=1 bash scripts/test-clocks.sh --unit   # one scenario at a time (default 3)
#   bash scripts/test-clocks.sh --unit --no-build          # what scripts/test.sh runs (built already)
#
# The clock is shifted by an offset (faketime -f "+Ns"), not set to a fixed start, so that
# every process the tests start (coordinator, nodes, Python peers) sees the same time and
# the clock keeps running: a run that starts at 23:59:59 on 31 December crosses into the
# new year while it runs. Monotonic clocks are shifted by the same offset.
set -euo pipefail
cd "$(dirname "$0")/.."
filter=()
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --unit) filter=(--filter '^(SharedTests|CoordinatorTests|NodeTests)\.') ;;
    --filter) filter=(--filter "$2"); shift ;;
    --no-build) build=0 ;;  # scripts/test.sh installed and built already (and may be building release now)
    *) echo "test-clocks.sh: unknown argument $1"; exit 2 ;;
  esac
  shift
done
[ $build = 1 ] && bash scripts/install-test-deps.sh
command -v faketime >/dev/null || { echo "faketime missing"; exit 1; }

# instant (UTC) | TZ | LANG | why
scenarios=(
  "2027-01-01 00:00:30|UTC|C.UTF-8|the 1st of a month and of a year, just after midnight"
  "2026-12-31 23:59:59|UTC|C.UTF-8|the last second of a year: the run crosses into the next"
  "2026-12-09 23:59:30|UTC|C.UTF-8|the 9th becomes the 10th: one-digit to two-digit day"
  "2027-03-28 00:59:30|Europe/Berlin|de_DE.UTF-8|Berlin's clocks jump from 02:00 to 03:00 CEST at 01:00 UTC"
  "2027-10-31 00:59:30|Europe/Berlin|de_DE.UTF-8|Berlin's clocks fall back from 03:00 to 02:00 CET at 01:00 UTC"
  "2027-01-31 23:59:30|Asia/Tokyo|ja_JP.UTF-8|the 1st of February in Tokyo is still 31 January in UTC"
  "2028-02-29 12:00:00|America/Los_Angeles|ja_JP.UTF-8|a leap day, a negative UTC offset, a Japanese locale"
)

if [ $build = 1 ]; then
  echo "== build"
  swift build --build-tests -Xswiftc -warnings-as-errors 2>&1 | grep -E "error|warning:" || true
fi
# The test binary itself (two `swift test` at once would wait for each other's lock on .build,
# as would `swift build --show-bin-path` while a release build runs).
tests_bin=$(ls -d .build/debug/*PackageTests.xctest | head -1)
[ -x "$tests_bin" ] || { echo "no test binary in .build/debug"; exit 1; }
# Scenarios run side by side (HATO_CLOCK_JOBS at once, default 3): the unit tests mostly wait
# (sockets, PostgreSQL, timers) on a test runner as wide as the cores, so one run at a time
# left the machine half idle: 7 × ~70 s in a row on 2 cores.
jobs=${HATO_CLOCK_JOBS:-3}
results=$(mktemp -d /tmp/hato-clocks-XXXXXX)
i=0
for s in "${scenarios[@]}"; do
  i=$((i + 1))
  IFS='|' read -r instant tz lang why <<<"$s"
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  (
    offset=$(( $(date -u -d "$instant" +%s) - $(date -u +%s) ))
    log=$(mktemp /tmp/hato-clock-XXXXXX.log)
    # Store tests on SQLite only: the PostgreSQL server's clock is not shifted (TestStores.swift).
    if HATO_TEST_STORES=sqlite TZ="$tz" LANG="$lang" LC_ALL="$lang" faketime -f "+${offset}s" "$tests_bin" --testing-library swift-testing "${filter[@]}" >"$log" 2>&1; then
      echo "   $(grep -E 'Test run with' "$log" | tail -1 | sed 's/\x1b\[[0-9;]*m//g')" >"$results/$i"
      rm -f "$log"
    else
      { echo "   FAILED (log: $log)"
        grep -E "recorded an issue|Test run with|error:" "$log" | head -20 | sed 's/^/   /'; } >"$results/$i"
      touch "$results/$i.failed"
    fi
  ) &
done
wait
failed=0
i=0
for s in "${scenarios[@]}"; do
  i=$((i + 1))
  IFS='|' read -r instant tz lang why <<<"$s"
  echo "== $instant UTC, TZ=$tz, LANG=$lang ($why)"
  cat "$results/$i" 2>/dev/null || { echo "   FAILED (no result)"; failed=1; }
  [ -e "$results/$i.failed" ] && failed=1
done
rm -rf "$results"
exit $failed
