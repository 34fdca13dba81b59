#!/usr/bin/env bash
# test.sh: install dependencies, build, and run every test tier; then the
# Debian 13 (trixie) stage, the unit, fuse, snapshot, integration and daemon
# tiers again under ASan+UBSan and under TSan, the fuzzers for a bounded
# time, and clang-tidy.
# Usage: scripts/test.sh [--no-deps] [--quick] [--no-trixie]   (as root: tests
#        mount FUSE, start a private containerd, attach loop devices and boot qemu)
#   --no-deps    skip apt-get (dependencies already installed)
#   --quick      only the dev build and its tests
#   --no-trixie  skip the Debian 13 stage (also URUNC_BOOTFS_TRIXIE=0): a
#                trixie root from debootstrap (cached), the dev build and the
#                unit, fuse, snapshot and integration tiers inside it
#                (scripts/trixie-stage.sh)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
deps=1
quick=0
trixie=${URUNC_BOOTFS_TRIXIE:-1}
for arg in "$@"; do
  case $arg in
    --no-deps) deps=0 ;;
    --quick) quick=1 ;;
    --no-trixie) trixie=0 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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

# The static checks come before the long stages, so that a finding fails
# the run in minutes rather than at its end.
section "clang-format (the project's .clang-format)"
cmake --build build/dev --target check-format >/dev/null
echo "clang-format: clean"

section "clang-tidy (the project's .clang-tidy, every project source)"
scripts/check-tidy.sh build/dev
echo "clang-tidy: clean"

if [[ $trixie -eq 1 ]]; then
  section "Debian 13 (trixie) stage: dev build, unit, fuse, snapshot, integration and daemon tiers in a debootstrap root"
  scripts/trixie-stage.sh
else
  section "Debian 13 (trixie) stage: skipped (--no-trixie or URUNC_BOOTFS_TRIXIE=0)"
fi

# A sanitizer report from the daemon (whose stderr is /dev/null once it
# serves) goes to a log file; any such file fails the run.
sanitized_ctest() {
  local preset=$1 logs=$here/build/$1/sanitizer-logs rc=0
  rm -rf "$logs" && mkdir -p "$logs"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:log_path=$logs/asan \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$logs/ubsan \
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:suppressions=$here/tests/tsan.supp:log_path=$logs/tsan \
    ctest --preset "$preset" -j1 --timeout 900 -L 'unit|fuse|snapshot|integration|daemon' \
      -E "$matrix_only_in_dev" || rc=$?
  # Print the reports whether ctest failed or not: a daemon stopped by its
  # sanitizer fails a test with only "the daemon went away" to show for it.
  if compgen -G "$logs/*" >/dev/null; then
    echo "sanitizer reports in $logs:" >&2
    cat "$logs"/* >&2
    exit 1
  fi
  return "$rc"
}

# The containerd matrix's 1.7 and 2.x cells run in the dev build only: the
# code they reach is the same under every release, and the snapshot tier
# covers the blockfile/erofs mount paths under the sanitizers.
matrix_only_in_dev='/v1_7_|/v2_x_'
targets=(unit_tests fuse_tests hostile_tests snapshot_tests urunc-bootfs)
[[ -d tests/integration ]] && targets+=(integration_tests)
[[ -d tests/daemon ]] && targets+=(daemon_tests urunc-bootfsd)
for preset in asan tsan; do
  section "build ($preset preset)"
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset" -j"$jobs" --target "${targets[@]}"
  section "tests under $preset: unit, fuse, snapshot, integration, daemon"
  sanitized_ctest "$preset"
done

section "fuzzing (libFuzzer, clang 19, ASan + UBSan; bounded)"
scripts/fuzz.sh "${URUNC_BOOTFS_FUZZ_SECONDS:-30}"
