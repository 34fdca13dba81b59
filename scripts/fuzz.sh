#!/usr/bin/env bash
# fuzz.sh: build the libFuzzer targets with clang 19 (ASan + UBSan) and run
# each for a bounded time from its checked-in seed corpus.
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60)
# New inputs go to a scratch corpus, not into fuzz/corpus/. A crash fails the
# run and leaves the reproducer in build/fuzz/crashes/; turn it into a
# regression test before fixing.
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
seconds=${1:-60}
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j"$(nproc)" >/dev/null
mkdir -p build/fuzz/crashes
status=0
for target in urunc_json image_path mount_spec; do
  scratch=$(mktemp -d)
  cp fuzz/corpus/$target/* "$scratch"/
  log=build/fuzz/$target.log
  if build/fuzz/fuzz/fuzz_$target -max_total_time="$seconds" -max_len=4096 \
      -artifact_prefix=build/fuzz/crashes/$target- "$scratch" >"$log" 2>&1; then
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    [[ -z $execs ]] && execs=$(grep -Eo '^#[0-9]+' "$log" | tail -1 | tr -d '#')
    echo "fuzz_$target: ${execs:-?} executions in ${seconds}s, no crash"
  else
    echo "fuzz_$target: CRASH (see $log and build/fuzz/crashes/)"
    status=1
  fi
  rm -rf "$scratch"
done
exit $status
