#!/usr/bin/env bash
# test.sh: install dependencies, build, and run every test tier, then the
# unit and FUSE tiers again under ASan+UBSan.
# Usage: scripts/test.sh [--no-deps] [--quick]   (as root: tests mount FUSE,
#        start a private containerd, and attach loop devices)
#   --no-deps  skip apt-get (dependencies already installed)
#   --quick    skip the sanitizer and fuzzing passes
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
deps=1
quick=0
for arg in "$@"; do
  case $arg in
    --no-deps) deps=0 ;;
    --quick) quick=1 ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "test.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

cd "$here"
[[ $deps -eq 1 ]] && scripts/install-deps.sh
jobs=$(nproc)

echo "== build (dev preset)"
cmake --preset dev >/dev/null
cmake --build --preset dev -j"$jobs"
echo "== tests (dev preset)"
ctest --preset dev -j1 --timeout 900

if [[ $quick -eq 0 ]]; then
  echo "== build (asan preset: ASan + UBSan)"
  cmake --preset asan >/dev/null
  cmake --build --preset asan -j"$jobs" --target unit_tests fuse_tests snapshot_tests urunc-bootfs
  echo "== tests under ASan + UBSan (unit, fuse, snapshot)"
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  ctest --preset asan -j1 --timeout 900 -L 'unit|fuse|snapshot'
  echo "== fuzzing (libFuzzer, clang 19, ASan + UBSan; bounded)"
  scripts/fuzz.sh "${URUNC_BOOTFS_FUZZ_SECONDS:-30}"
fi
