#!/usr/bin/env bash
# test.sh: install dependencies, build, and run every test tier; then the
# unit, FUSE and snapshot tiers again under ASan+UBSan and under TSan, the
# fuzzers for a bounded time, and clang-tidy.
# Usage: scripts/test.sh [--no-deps] [--quick]   (as root: tests mount FUSE,
#        start a private containerd, attach loop devices and boot qemu)
#   --no-deps  skip apt-get (dependencies already installed)
#   --quick    only the dev build and its tests
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
deps=1
quick=0
for arg in "$@"; do
  case $arg in
    --no-deps) deps=0 ;;
    --quick) quick=1 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "test.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

cd "$here"
[[ $deps -eq 1 ]] && scripts/install-deps.sh
jobs=$(nproc)
# The boot image builder caches the downloaded kernel here.
export URUNC_BOOTFS_CACHE=${URUNC_BOOTFS_CACHE:-/var/cache/urunc-bootfs}

section() { printf '\n== %s\n' "$*"; }

section "build (dev preset: warnings are errors)"
cmake --preset dev >/dev/null
cmake --build --preset dev -j"$jobs"
section "tests (dev preset): every tier"
ctest --preset dev -j1 --timeout 900
[[ $quick -eq 1 ]] && exit 0

# A sanitizer report from the daemon (whose stderr is /dev/null once it
# serves) goes to a log file; any such file fails the run.
sanitized_ctest() {
  local preset=$1 logs=$here/build/$1/sanitizer-logs
  rm -rf "$logs" && mkdir -p "$logs"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:log_path=$logs/asan \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$logs/ubsan \
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:suppressions=$here/tests/tsan.supp:log_path=$logs/tsan \
    ctest --preset "$preset" -j1 --timeout 900 -L 'unit|fuse|snapshot|integration'
  if compgen -G "$logs/*" >/dev/null; then
    echo "sanitizer reports in $logs:" >&2
    cat "$logs"/* >&2
    exit 1
  fi
}

targets=(unit_tests fuse_tests hostile_tests snapshot_tests urunc-bootfs)
[[ -d tests/integration ]] && targets+=(integration_tests)
for preset in asan tsan; do
  section "build ($preset preset)"
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset" -j"$jobs" --target "${targets[@]}"
  section "tests under $preset: unit, fuse, snapshot, integration"
  sanitized_ctest "$preset"
done

section "fuzzing (libFuzzer, clang 19, ASan + UBSan; bounded)"
scripts/fuzz.sh "${URUNC_BOOTFS_FUZZ_SECONDS:-30}"

section "clang-format (the project's .clang-format)"
cmake --build build/dev --target check-format >/dev/null
echo "clang-format: clean"

section "clang-tidy (the project's .clang-tidy, every project source)"
scripts/check-tidy.sh build/dev
echo "clang-tidy: clean"
