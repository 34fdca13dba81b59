#!/usr/bin/env bash
# boot-check.sh: boot KERNEL + INITRD in qemu (TCG, no KVM: KVM hung on this
# kind of machine) and check that the guest prints MARKER on its serial
# console. The guest built by make-boot-image.sh powers itself off right
# after the marker, so qemu exits on its own (-no-reboot turns a panic's
# reboot into an exit too).
#
# Prints one summary line on stdout:
#   MARKER_SECONDS=<s to marker> QEMU_SECONDS=<s until qemu exited> QEMU_RC=<rc>
# Exit: 0 marker seen, 1 not seen (console log tail on stderr), 77 qemu
# missing, 2 bad usage.

set -euo pipefail

readonly PROG=${0##*/}
readonly QEMU=${QEMU:-qemu-system-x86_64}

usage() {
  cat <<EOF
Usage: $PROG [--timeout SECS] [--append CMDLINE] [--log FILE] KERNEL INITRD MARKER
       $PROG --help

Run: timeout SECS $QEMU -accel tcg -m 256 -nographic -no-reboot
       -kernel KERNEL -initrd INITRD -append CMDLINE
and wait for MARKER (a fixed string) on the console.
  --timeout SECS   bound for the whole boot (default 60)
  --append CMDLINE kernel command line (default "console=ttyS0 panic=-1 quiet")
  --log FILE       keep the console output there (default: a temp file, removed)
Environment: QEMU (default qemu-system-x86_64).
EOF
}

die() {
  printf '%s: %s\n' "$PROG" "$*" >&2
  exit 1
}

main() {
  local secs=60 append="console=ttyS0 panic=-1 quiet" log="" keep_log=0
  local -a pos=()
  while (($#)); do
    case $1 in
      -h | --help) usage; exit 0 ;;
      --timeout) (($# >= 2)) || die "--timeout needs a value"; secs=$2; shift ;;
      --append) (($# >= 2)) || die "--append needs a value"; append=$2; shift ;;
      --log) (($# >= 2)) || die "--log needs a value"; log=$2; keep_log=1; shift ;;
      --) shift; pos+=("$@"); break ;;
      -*) printf '%s: unknown option: %s\n' "$PROG" "$1" >&2; usage >&2; exit 2 ;;
      *) pos+=("$1") ;;
    esac
    shift
  done
  ((${#pos[@]} == 3)) || { usage >&2; exit 2; }
  [[ $secs =~ ^[0-9]+$ ]] || die "--timeout wants whole seconds"
  local kernel=${pos[0]} initrd=${pos[1]} marker=${pos[2]}
  [[ -r $kernel ]] || die "cannot read kernel $kernel"
  [[ -r $initrd ]] || die "cannot read initrd $initrd"
  [[ -n $marker ]] || die "empty marker"
  if ! command -v "$QEMU" >/dev/null; then
    printf '%s: SKIP: %s not installed\n' "$PROG" "$QEMU" >&2
    exit 77
  fi

  if [[ -z $log ]]; then
    log=$(mktemp "${TMPDIR:-/tmp}/boot-check.XXXXXX")
  fi
  if ((!keep_log)); then
    # shellcheck disable=SC2064 # expand $log now
    trap "rm -f -- '$log'" EXIT
  fi

  local t0=$EPOCHREALTIME
  # timeout(1) is the child we own; it kills qemu (TERM, then KILL 5 s later).
  timeout --kill-after=5 "$secs" "$QEMU" -accel tcg -m 256 -nographic -no-reboot \
    -kernel "$kernel" -initrd "$initrd" -append "$append" \
    </dev/null >"$log" 2>&1 &
  local qpid=$! marker_at=""
  # Poll the console log for the marker while qemu runs.
  while kill -0 "$qpid" 2>/dev/null; do
    if [[ -z $marker_at ]] && grep -qF -- "$marker" "$log"; then
      marker_at=$EPOCHREALTIME
    fi
    sleep 0.05
  done
  local rc=0
  wait "$qpid" || rc=$?
  local t1=$EPOCHREALTIME
  if [[ -z $marker_at ]] && grep -qF -- "$marker" "$log"; then
    marker_at=$t1
  fi

  # Seconds with two decimals from two $EPOCHREALTIME values (no bc needed).
  elapsed() {
    local a=${1//[.,]/} b=${2//[.,]/}
    local us=$((10#$b - 10#$a))
    printf '%d.%02d' $((us / 1000000)) $(((us % 1000000) / 10000))
  }

  if [[ -z $marker_at ]]; then
    printf '%s: marker "%s" not seen (qemu rc %d after %ss); console tail:\n' \
      "$PROG" "$marker" "$rc" "$(elapsed "$t0" "$t1")" >&2
    tail -n 25 -- "$log" | tr -d '\r' >&2 || true
    exit 1
  fi
  ((rc == 0)) || printf '%s: warning: qemu exited with %d after the marker\n' "$PROG" "$rc" >&2
  printf 'MARKER_SECONDS=%s QEMU_SECONDS=%s QEMU_RC=%d\n' \
    "$(elapsed "$t0" "$marker_at")" "$(elapsed "$t0" "$t1")" "$rc"
}

main "$@"
