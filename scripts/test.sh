#!/usr/bin/env bash
# Runs every test: installs the real peers the tests talk to (Debian packages),
# builds debug and release with warnings treated as errors, then runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh

echo "== build (debug, warnings are errors)"
swift build -Xswiftc -warnings-as-errors 2>&1 | tee /tmp/hato-build-debug.log | grep -E "error|warning|Compiling|Build" | tail -5
echo "== build (release)"
swift build -c release -Xswiftc -warnings-as-errors 2>&1 | tail -3
echo "== tests"
swift test -Xswiftc -warnings-as-errors "$@"
if [ $# -eq 0 ]; then
  # The unit tests again under shifted clocks, time zones and locales: the 1st of a month,
  # a year end, a DST change, a Japanese locale (the whole suite: scripts/test-clocks.sh).
  echo "== unit tests under shifted clocks"
  bash scripts/test-clocks.sh --unit
fi
