#!/usr/bin/env bash
# check-tidy.sh: run clang-tidy (config: the project's .clang-tidy) over the
# project's own C++ sources listed in BUILD_DIR/compile_commands.json.
# Used by the `check-tidy` CMake target: cmake --build build --target check-tidy

set -euo pipefail

readonly PROG=${0##*/}
SOURCE_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
readonly SOURCE_DIR

usage() {
  cat <<EOF
Usage: $PROG BUILD_DIR [REGEX]
       $PROG --help

Run clang-tidy on every translation unit in BUILD_DIR/compile_commands.json
whose path matches REGEX (default: the project's common/ fs/ snapshot/ daemon/ cli/
bench/ sources; tests and generated protobuf code are left out). Exits
non-zero if clang-tidy crashes or reports a warning or an error.
The newest clang-tidy-NN installed is used (apt-get install clang-tidy-19):
Debian 12's default clang-tidy 14 knows C++23 only as c++2b and, in that
mode, crashes (SIGSEGV in readability-braces-around-statements) on any
'if (init; cond)'. With only 14 installed the flag is rewritten to c++2b
and a crash fails the check. Jobs: \$TIDY_JOBS (default nproc).
EOF
}

main() {
  case ${1:-} in
    -h | --help) usage; exit 0 ;;
    '') usage >&2; exit 2 ;;
  esac
  local build=$1
  local regex=${2:-"^$SOURCE_DIR/(common|fs|snapshot|daemon|cli|bench)/.*\\.cpp\$"}
  [[ -f $build/compile_commands.json ]] ||
    { printf '%s: %s/compile_commands.json not found (configure with CMake first)\n' "$PROG" "$build" >&2; exit 1; }
  # Newest versioned clang-tidy first, then the unversioned one.
  local v runner="" tidy=""
  for v in 21 20 19 18 17 16 15; do
    if command -v "run-clang-tidy-$v" >/dev/null && command -v "clang-tidy-$v" >/dev/null; then
      runner=run-clang-tidy-$v
      tidy=clang-tidy-$v
      break
    fi
  done
  if [[ -z $runner ]]; then
    if ! command -v run-clang-tidy >/dev/null || ! command -v clang-tidy >/dev/null; then
      printf '%s: run-clang-tidy not found (apt-get install clang-tidy-19)\n' "$PROG" >&2
      exit 1
    fi
    runner=run-clang-tidy
    tidy=clang-tidy
  fi
  local tmp log
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/check-tidy.XXXXXX")
  # shellcheck disable=SC2064 # expand $tmp now
  trap "rm -rf -- '$tmp'" EXIT
  log=$tmp/tidy.log
  # clang 14 and older know C++23 only as c++2b: rewrite the flag in a
  # private copy of the compilation database.
  local major
  major=$("$tidy" --version | sed -n 's/.*LLVM version \([0-9]*\).*/\1/p' | head -n1)
  if [[ -n $major ]] && ((major < 15)); then
    printf '%s: warning: %s is clang %s; it may crash on C++23 code (install clang-tidy-19)\n' \
      "$PROG" "$tidy" "$major" >&2
    sed -e 's/-std=c++23/-std=c++2b/g; s/-std=gnu++23/-std=gnu++2b/g' \
      "$build/compile_commands.json" >"$tmp/compile_commands.json"
  else
    cp -- "$build/compile_commands.json" "$tmp/compile_commands.json"
  fi
  local rc=0
  "$runner" -quiet -clang-tidy-binary "$(command -v "$tidy")" -p "$tmp" \
    -j "${TIDY_JOBS:-$(nproc)}" "$regex" >"$log" 2>&1 || rc=$?
  # run-clang-tidy exits 0 on warnings: fail on any diagnostic too.
  if ((rc != 0)) || grep -qE ': (warning|error): ' "$log"; then
    grep -E ': (warning|error): ' -A3 "$log" >&2 || tail -n 40 -- "$log" >&2
    printf '%s: clang-tidy found problems\n' "$PROG" >&2
    exit 1
  fi
  printf '%s: clean\n' "$PROG"
}

main "$@"
