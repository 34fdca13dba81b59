#!/usr/bin/env bash
# urunc-flow.sh: do, for one container, what urunc does with urunc-bootfs:
#
#   1. bundle   make the bundle directory with a config.json carrying the
#               com.urunc.unikernel.* annotations, as the shim and urunc
#               would see them;
#   2. mount    urunc-bootfs mount --bundle B (from a containerd view of the
#               container's image, or with --source-dir from a directory);
#   3. bind     create B/monRootfs and bind-mount each artifact from
#               B/boot/<path> to B/monRootfs/<path>, then remount it
#               read-only (a bind mount ignores MS_RDONLY until a remount);
#   4. boot     qemu-system-x86_64 -accel tcg -kernel B/monRootfs/<binary>
#               -initrd B/monRootfs/<initrd>, bounded by a timeout, and look
#               for the marker on the serial console;
#   5. teardown unbind, urunc-bootfs umount B/boot, then check that nothing
#               is left: no mount under B, no record of it, and (containerd) no
#               urunc-bootfs lease or view for this mount.
#
# Everything the script starts or mounts is recorded and undone by an EXIT
# trap, also when a step fails or the script is interrupted. It never touches
# a mount, process or directory it did not create.
#
# stdout: KEY=VALUE result lines (see --help); stderr: one progress line per
# step, "urunc-flow: <step> ...".

set -euo pipefail

readonly PROG=${0##*/}
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly QEMU=${QEMU:-qemu-system-x86_64}
readonly CTR=${CTR:-ctr}
# containerd's shim puts bundles at .../io.containerd.runtime.v2.task/<ns>/<id>.
readonly TASK_DIR=io.containerd.runtime.v2.task
readonly SKIP=77

usage() {
  cat <<EOF
Usage: $PROG --bundle DIR --address SOCK [options]     (containerd view)
       $PROG --bundle DIR --source-dir ROOTFS [options] (no containerd)
       $PROG --help

Run urunc's part of a container's life against urunc-bootfs: write the
bundle's config.json, mount the boot files at DIR/boot, bind them read-only
into DIR/monRootfs, boot them with qemu (TCG), and tear everything down.

  --bundle DIR        bundle directory; must not exist or be empty. With
                      --address it must be laid out as containerd's shim lays
                      it out, .../$TASK_DIR/<namespace>/<container-id>:
                      urunc-bootfs derives the namespace and id from it.
  --address SOCK      containerd socket: serve a view of the container's image.
  --source-dir ROOTFS serve from this directory instead (podman, direct urunc).
  --binary PATH       com.urunc.unikernel.binary  (default /.boot/kernel)
  --initrd PATH       com.urunc.unikernel.initrd  (default /.boot/rootfs.cpio.gz;
                      "" for none)
  --cmdline TEXT      kernel command line (default "console=ttyS0 panic=-1 quiet")
  --marker TEXT       fixed string the guest prints (default URUNC-BOOTFS-GUEST-OK)
  --timeout SECS      bound for qemu (default 60)
  --bin PATH          urunc-bootfs binary (default \$URUNC_BOOTFS_BIN, else
                      build/release/cli/urunc-bootfs, else urunc-bootfs on PATH)
  --serial-log FILE   keep the guest's serial console there
  --before-mount CMD  run CMD (bash -c) after the bundle is written, before mount
  --after-boot CMD    run CMD (bash -c) after qemu exited, before teardown, with
                      everything still mounted; its failure fails the flow
                      Both see URUNC_FLOW_BUNDLE, URUNC_FLOW_MOUNTPOINT,
                      URUNC_FLOW_MONROOTFS, URUNC_FLOW_BIN, URUNC_FLOW_SERIAL_LOG.
Environment: QEMU, CTR, URUNC_BOOTFS_STATE_DIR (passed to urunc-bootfs).

stdout (KEY=VALUE): MODE, BUNDLE, MARKER_LINE, MOUNT_READY_MS, BOOT_SECONDS,
QEMU_SECONDS, QEMU_RC, DAEMON_PID, SERVED_OPENS, SERVED_READS, SERVED_BYTES,
PASSTHROUGH_FILES, VIEW, LEASE, LEFT_MOUNTS, LEFT_LEASES, LEFT_VIEWS.
Exit status: 0 marker seen and nothing left, 1 failure, 2 bad usage,
$SKIP qemu not installed.
EOF
}

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# ------------------------------------------------------------------ options

BUNDLE="" ADDRESS="" SOURCE_DIR="" BIN=${URUNC_BOOTFS_BIN:-}
BINARY=/.boot/kernel INITRD=/.boot/rootfs.cpio.gz
CMDLINE="console=ttyS0 panic=-1 quiet" MARKER=URUNC-BOOTFS-GUEST-OK
TIMEOUT=60 SERIAL_LOG="" BEFORE_MOUNT="" AFTER_BOOT=""

parse_args() {
  while (($#)); do
    case $1 in
      -h | --help) usage; exit 0 ;;
      --bundle | --address | --source-dir | --binary | --initrd | --cmdline | --marker | \
        --timeout | --bin | --serial-log | --before-mount | --after-boot)
        (($# >= 2)) || { log "$1 needs a value"; exit 2; }
        case $1 in
          --bundle) BUNDLE=$2 ;;
          --address) ADDRESS=$2 ;;
          --source-dir) SOURCE_DIR=$2 ;;
          --binary) BINARY=$2 ;;
          --initrd) INITRD=$2 ;;
          --cmdline) CMDLINE=$2 ;;
          --marker) MARKER=$2 ;;
          --timeout) TIMEOUT=$2 ;;
          --bin) BIN=$2 ;;
          --serial-log) SERIAL_LOG=$2 ;;
          --before-mount) BEFORE_MOUNT=$2 ;;
          --after-boot) AFTER_BOOT=$2 ;;
        esac
        shift
        ;;
      *) log "unknown argument: $1"; usage >&2; exit 2 ;;
    esac
    shift
  done
  [[ -n $BUNDLE ]] || { log "--bundle is required"; usage >&2; exit 2; }
  if [[ -n $ADDRESS && -n $SOURCE_DIR ]] || [[ -z $ADDRESS && -z $SOURCE_DIR ]]; then
    log "give exactly one of --address and --source-dir"
    exit 2
  fi
  [[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || { log "--timeout wants whole seconds"; exit 2; }
  [[ -n $MARKER ]] || { log "--marker must not be empty"; exit 2; }
  local p
  for p in "$BINARY" "$INITRD"; do
    [[ -z $p || $p =~ ^/[A-Za-z0-9._/-]+$ ]] ||
      { log "artifact path must be absolute and match [A-Za-z0-9._/-]: $p"; exit 2; }
  done
  [[ -n $BINARY ]] || { log "--binary must not be empty"; exit 2; }
  BUNDLE=$(realpath -m -- "$BUNDLE")
  [[ $BUNDLE != / ]] || { log "refusing / as the bundle"; exit 2; }
  if [[ -n $ADDRESS ]]; then
    # The namespace and id come from the path, as the shim lays it out.
    [[ $(basename -- "$(dirname -- "$(dirname -- "$BUNDLE")")") == "$TASK_DIR" ]] ||
      { log "with --address, --bundle must be .../$TASK_DIR/<namespace>/<id> (got $BUNDLE)"; exit 2; }
    NAMESPACE=$(basename -- "$(dirname -- "$BUNDLE")")
    CONTAINER=$(basename -- "$BUNDLE")
    MODE=containerd
  else
    [[ -d $SOURCE_DIR ]] || { log "--source-dir is not a directory: $SOURCE_DIR"; exit 2; }
    SOURCE_DIR=$(realpath -- "$SOURCE_DIR")
    MODE=source-dir
  fi
  if [[ -z $BIN ]]; then
    if [[ -x $SCRIPT_DIR/../build/release/cli/urunc-bootfs ]]; then
      BIN=$(realpath -- "$SCRIPT_DIR/../build/release/cli/urunc-bootfs")
    else
      BIN=$(command -v urunc-bootfs) || { log "urunc-bootfs not found (build it or pass --bin)"; exit 2; }
    fi
  fi
  [[ -x $BIN ]] || { log "not executable: $BIN"; exit 2; }
  MOUNTPOINT=$BUNDLE/boot
  MONROOTFS=$BUNDLE/monRootfs
}

# ------------------------------------------- what this run created (undo log)

CREATED_TOP=""    # outermost directory we created (the bundle or a parent)
FILLED_BUNDLE=0   # 1 if we wrote into a bundle directory that existed (empty)
BINDS=()          # bind mounts made by us, in order
BOOTFS_MOUNTED=0  # 1 while our urunc-bootfs mount is up
QEMU_PID=""       # timeout(1) running qemu, while it runs
WORK=""           # private scratch directory (serial log, status)
DAEMON_PID=""

# Seconds with two decimals between two $EPOCHREALTIME values.
elapsed() {
  local a=${1//[.,]/} b=${2//[.,]/}
  local us=$((10#$b - 10#$a))
  printf '%d.%02d' $((us / 1000000)) $(((us % 1000000) / 10000))
}

# Mount points at or under $1 (decoded), in mountinfo order.
mounts_under() {
  local dir=$1 mp
  while read -r _ _ _ _ mp _; do
    mp=$(printf '%b' "$mp")
    if [[ $mp == "$dir" || $mp == "$dir"/* ]]; then printf '%s\n' "$mp"; fi
  done </proc/self/mountinfo
}

pid_alive() {
  local state
  [[ -n $1 && -r /proc/$1/stat ]] || return 1
  state=$(sed -e 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [[ -n $state && $state != Z && $state != X ]]
}

# Serial console text (stdin) as a terminal shows it: SeaBIOS's last text and
# the console's reset (ESC c) or clear-screen (ESC [2J) can share a raw line
# with what follows, so keep what comes after the last of them on each line,
# and drop the remaining escape sequences and CRs.
render_console() {
  tr -d '\r' | sed 's/.*\x1b\(c\|\[2J\)//; s/\x1b\[[0-9;?]*[A-Za-z]//g'
}

# One value from urunc-bootfs's pretty-printed `status --json` ("key": value).
json_field() {
  sed -n "s/^ *\"$1\": \"\{0,1\}\([^\"]*\)\"\{0,1\},\{0,1\}\$/\1/p" <<<"$2" | head -n1
}

# Undo, newest first, whatever this run still holds. Idempotent; used by the
# normal teardown and by the EXIT trap.
undo_all() {
  local i mp
  if [[ -n $QEMU_PID ]] && pid_alive "$QEMU_PID"; then
    kill -TERM "$QEMU_PID" 2>/dev/null || true # timeout(1) passes it to qemu
    wait "$QEMU_PID" 2>/dev/null || true
  fi
  QEMU_PID=""
  for ((i = ${#BINDS[@]} - 1; i >= 0; i--)); do
    mp=${BINDS[i]}
    umount -- "$mp" 2>/dev/null || umount -l -- "$mp" 2>/dev/null || log "could not unmount $mp"
  done
  BINDS=()
  if ((BOOTFS_MOUNTED)); then
    if ! "$BIN" umount "$MOUNTPOINT" >/dev/null 2>&1; then
      "$BIN" umount --lazy "$MOUNTPOINT" >/dev/null 2>&1 || log "could not unmount $MOUNTPOINT"
    fi
    BOOTFS_MOUNTED=0
  fi
  # Remove what we created, never crossing into a filesystem mounted below.
  if [[ -n $CREATED_TOP || $FILLED_BUNDLE == 1 ]]; then
    if [[ -n $(mounts_under "$BUNDLE") ]]; then
      log "left $BUNDLE in place: something is still mounted under it"
    elif [[ -n $CREATED_TOP ]]; then
      rm -rf --one-file-system -- "$CREATED_TOP"
    else
      rm -rf --one-file-system -- "$BUNDLE/config.json" "$MOUNTPOINT" "$MONROOTFS"
    fi
    CREATED_TOP="" FILLED_BUNDLE=0
  fi
  if [[ -n $WORK ]]; then
    rm -rf -- "$WORK"
    WORK=""
  fi
}

on_exit() {
  local rc=$?
  trap - EXIT INT TERM HUP
  undo_all
  exit "$rc"
}

# ------------------------------------------------------------------- steps

# 1. The bundle: the directory (and any missing parent), config.json.
make_bundle() {
  if [[ -e $BUNDLE ]]; then
    [[ -d $BUNDLE && -z $(ls -A -- "$BUNDLE") ]] || die "bundle $BUNDLE exists and is not an empty directory"
    FILLED_BUNDLE=1
  else
    # Record the outermost directory we create so that cleanup removes
    # exactly the chain we made.
    local d=$BUNDLE top=""
    while [[ ! -e $d ]]; do
      top=$d
      d=$(dirname -- "$d")
    done
    CREATED_TOP=$top
    mkdir -p -- "$BUNDLE"
  fi
  # Annotations as urunc receives them in the spec: plain strings (urunc.json
  # in the image holds the same keys base64-encoded).
  local -a keys=(unikernelType hypervisor binary cmdline mountRootfs)
  local -a vals=(linux qemu "$BINARY" "$CMDLINE" false)
  if [[ -n $INITRD ]]; then
    keys+=(initrd)
    vals+=("$INITRD")
  fi
  local i sep="" ann=""
  for i in "${!keys[@]}"; do
    ann+=$(printf '%s\n    "com.urunc.unikernel.%s": "%s"' "$sep" "${keys[i]}" "${vals[i]}")
    sep=,
  done
  cat >"$BUNDLE/config.json" <<EOF
{
  "ociVersion": "1.0.2",
  "process": {"user": {"uid": 0, "gid": 0}, "args": ["/init"], "cwd": "/"},
  "root": {"path": "rootfs", "readonly": true},
  "annotations": {$ann
  }
}
EOF
  log "bundle   $BUNDLE (config.json: binary=$BINARY${INITRD:+ initrd=$INITRD})"
}

run_user_cmd() {
  local what=$1 cmd=$2
  [[ -n $cmd ]] || return 0
  URUNC_FLOW_BUNDLE=$BUNDLE URUNC_FLOW_MOUNTPOINT=$MOUNTPOINT URUNC_FLOW_MONROOTFS=$MONROOTFS \
    URUNC_FLOW_BIN=$BIN URUNC_FLOW_SERIAL_LOG=$SERIAL_LOG bash -c "$cmd" ||
    die "$what command failed: $cmd"
}

# 2. urunc-bootfs mount --bundle B: returns once B/boot answers.
mount_bootfs() {
  local -a args=(mount --bundle "$BUNDLE")
  if [[ $MODE == containerd ]]; then
    args+=(--address "$ADDRESS")
  else
    args+=(--source-dir "$SOURCE_DIR")
  fi
  local t0=$EPOCHREALTIME out
  # Mark it ours before it runs: on failure, mount leaves nothing, and
  # umount of an unmounted point is harmless.
  BOOTFS_MOUNTED=1
  out=$("$BIN" "${args[@]}" 2>&1) || { BOOTFS_MOUNTED=0; die "urunc-bootfs ${args[*]}: $out"; }
  local t1=$EPOCHREALTIME
  local a=${t0//[.,]/} b=${t1//[.,]/}
  MOUNT_READY_MS=$(((10#$b - 10#$a) / 1000))
  local js
  js=$("$BIN" status --json "$MOUNTPOINT") || die "urunc-bootfs status --json $MOUNTPOINT failed"
  DAEMON_PID=$(sed -n '/"daemon": {/,/}/s/^ *"pid": \([0-9]*\).*/\1/p' <<<"$js" | head -n1)
  VIEW=$(json_field view "$js")
  LEASE=$(json_field lease "$js")
  SNAPSHOTTER=$(json_field snapshotter "$js")
  if [[ $MODE == containerd ]]; then
    log "mount    urunc-bootfs mount --bundle B --address $ADDRESS: ready in ${MOUNT_READY_MS} ms"
    log "         (namespace $NAMESPACE, container $CONTAINER, view $VIEW on $SNAPSHOTTER)"
  else
    log "mount    urunc-bootfs mount --bundle B --source-dir $SOURCE_DIR: ready in ${MOUNT_READY_MS} ms"
  fi
}

# 3. monRootfs: one read-only bind mount per artifact, at its image path.
bind_artifacts() {
  mkdir -p -- "$MONROOTFS"
  local p src dst opts
  for p in "$BINARY" ${INITRD:+"$INITRD"}; do
    src=$MOUNTPOINT$p
    dst=$MONROOTFS$p
    [[ -f $src ]] || die "$src is not served"
    mkdir -p -- "$(dirname -- "$dst")"
    : >"$dst" # an empty file to mount over (nothing is written into it)
    mount --bind -- "$src" "$dst"
    BINDS+=("$dst")
    # MS_BIND ignores MS_RDONLY: read-only takes a second, remount call.
    mount -o remount,bind,ro -- "$dst"
    opts=$(findmnt -n -o VFS-OPTIONS --mountpoint "$dst" | tail -n1)
    [[ ,$opts, == *,ro,* ]] || die "$dst is not read-only after the remount ($opts)"
    log "bind     B/boot$p -> B/monRootfs$p ($opts)"
  done
}

# 4. qemu, bounded; the marker is a substring of the serial output (it shares
#    a line with SeaBIOS's escape sequences).
boot() {
  local -a cmd=("$QEMU" -accel tcg -m 256 -nographic -no-reboot
    -kernel "$MONROOTFS$BINARY")
  [[ -z $INITRD ]] || cmd+=(-initrd "$MONROOTFS$INITRD")
  cmd+=(-append "$CMDLINE")
  local shown="" arg
  for arg in "${cmd[@]/#"$BUNDLE"/B}"; do
    [[ $arg == *' '* ]] && arg="\"$arg\""
    shown+=${shown:+ }$arg
  done
  log "boot     $shown"
  local t0=$EPOCHREALTIME marker_at=""
  timeout --kill-after=5 "$TIMEOUT" "${cmd[@]}" </dev/null >"$SERIAL_LOG" 2>&1 &
  QEMU_PID=$!
  while pid_alive "$QEMU_PID"; do
    if [[ -z $marker_at ]] && grep -qaF -- "$MARKER" "$SERIAL_LOG"; then
      marker_at=$EPOCHREALTIME
    fi
    sleep 0.05
  done
  QEMU_RC=0
  wait "$QEMU_PID" || QEMU_RC=$?
  QEMU_PID=""
  local t1=$EPOCHREALTIME
  if [[ -z $marker_at ]] && grep -qaF -- "$MARKER" "$SERIAL_LOG"; then marker_at=$t1; fi
  QEMU_SECONDS=$(elapsed "$t0" "$t1")
  if [[ -z $marker_at ]]; then
    log "marker \"$MARKER\" not seen (qemu exit $QEMU_RC after ${QEMU_SECONDS}s); console tail:"
    tail -n 20 -- "$SERIAL_LOG" | render_console | sed 's/^/  | /' >&2 || true
    die "the guest did not boot to its marker"
  fi
  BOOT_SECONDS=$(elapsed "$t0" "$marker_at")
  # The line holding the marker, as a terminal shows it.
  MARKER_LINE=$(grep -aF -- "$MARKER" "$SERIAL_LOG" | head -n1 | render_console)
  log "guest    \"$MARKER_LINE\" after ${BOOT_SECONDS}s (qemu exited $QEMU_RC after ${QEMU_SECONDS}s)"
  local js
  js=$("$BIN" status --json "$MOUNTPOINT") || die "urunc-bootfs status --json failed after the boot"
  SERVED_OPENS=$(sed -n '/"counters": {/,/^  }/s/^ *"opens": \([0-9]*\).*/\1/p' <<<"$js" | head -n1)
  SERVED_READS=$(sed -n '/"counters": {/,/^  }/s/^ *"reads": \([0-9]*\).*/\1/p' <<<"$js" | head -n1)
  SERVED_BYTES=$(sed -n '/"counters": {/,/^  }/s/^ *"bytes": \([0-9]*\).*/\1/p' <<<"$js" | head -n1)
  # With FUSE passthrough the kernel reads the view's files directly: the
  # daemon sees the opens only.
  PASSTHROUGH_FILES=$(grep -c '"mode": "passthrough"' <<<"$js" || true)
  local note=""
  ((PASSTHROUGH_FILES == 0)) || note=" (passthrough: reads go from the kernel straight to the view, uncounted)"
  log "served   ${SERVED_OPENS:-?} opens, ${SERVED_READS:-?} reads, ${SERVED_BYTES:-?} bytes through the daemon$note"
}

# 5. Teardown in urunc's order (delete): unbind, umount, then verify.
teardown() {
  # Newest first; each one leaves the undo log once it is gone.
  while ((${#BINDS[@]})); do
    umount -- "${BINDS[-1]}" || die "umount ${BINDS[-1]} failed"
    unset 'BINDS[-1]'
  done
  log "unbind   ${MONROOTFS/#$BUNDLE/B}/*"
  "$BIN" umount "$MOUNTPOINT" || die "urunc-bootfs umount $MOUNTPOINT failed"
  BOOTFS_MOUNTED=0
  log "umount   urunc-bootfs umount B/boot"

  local -a left=()
  mapfile -t left < <(mounts_under "$BUNDLE")
  LEFT_MOUNTS=${#left[@]}
  ((LEFT_MOUNTS == 0)) || die "still mounted after teardown: ${left[*]}"
  # The host daemon serves on (other mounts); this mount must be gone from it.
  if "$BIN" status "$MOUNTPOINT" >/dev/null 2>&1; then
    die "urunc-bootfs still has a record of $MOUNTPOINT"
  fi

  LEFT_LEASES=0 LEFT_VIEWS=0
  if [[ $MODE == containerd ]]; then
    local leases views
    leases=$("$CTR" --address "$ADDRESS" -n "$NAMESPACE" leases ls) || die "ctr leases ls failed"
    views=$("$CTR" --address "$ADDRESS" -n "$NAMESPACE" snapshots --snapshotter "${SNAPSHOTTER:-overlayfs}" ls) ||
      die "ctr snapshots ls failed"
    # Ours: the recorded lease and view, and any lease labelled with our
    # mountpoint. (Other urunc-bootfs mounts in the namespace are not ours.)
    LEFT_LEASES=$(awk -v id="$LEASE" -v mp="io.urunc.bootfs/mountpoint=$MOUNTPOINT" \
      'NR > 1 && ($1 == id || index($0, mp)) {n++} END {print n + 0}' <<<"$leases")
    LEFT_VIEWS=$(awk -v id="$VIEW" 'NR > 1 && $1 == id {n++} END {print n + 0}' <<<"$views")
    local all_leases all_views
    all_leases=$(grep -c 'io.urunc.bootfs/' <<<"$leases" || true)
    all_views=$(awk 'NR > 1 && $1 ~ /^urunc-bootfs\// {n++} END {print n + 0}' <<<"$views")
    ((LEFT_LEASES == 0 && LEFT_VIEWS == 0)) ||
      die "containerd still holds $LEFT_LEASES lease(s) and $LEFT_VIEWS view(s) of this mount"
    log "check    containerd ($NAMESPACE): no lease, no view left (urunc-bootfs leases in the namespace: $all_leases, views: $all_views)"
  fi
  log "check    nothing mounted under B, no record of it (daemon $DAEMON_PID serves on)"
}

main() {
  parse_args "$@"
  if ! command -v "$QEMU" >/dev/null; then
    log "SKIP: $QEMU not installed"
    exit "$SKIP"
  fi
  trap on_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/urunc-flow.XXXXXX")
  if [[ -z $SERIAL_LOG ]]; then SERIAL_LOG=$WORK/serial.log; fi
  : >"$SERIAL_LOG"

  make_bundle
  run_user_cmd --before-mount "$BEFORE_MOUNT"
  mount_bootfs
  bind_artifacts
  boot
  run_user_cmd --after-boot "$AFTER_BOOT"
  teardown

  printf 'MODE=%s\n' "$MODE"
  printf 'BUNDLE=%s\n' "$BUNDLE"
  printf 'MARKER_LINE=%s\n' "$MARKER_LINE"
  printf 'MOUNT_READY_MS=%s\n' "$MOUNT_READY_MS"
  printf 'BOOT_SECONDS=%s\n' "$BOOT_SECONDS"
  printf 'QEMU_SECONDS=%s\n' "$QEMU_SECONDS"
  printf 'QEMU_RC=%s\n' "$QEMU_RC"
  printf 'DAEMON_PID=%s\n' "$DAEMON_PID"
  printf 'SERVED_OPENS=%s\n' "${SERVED_OPENS:-}"
  printf 'SERVED_READS=%s\n' "${SERVED_READS:-}"
  printf 'SERVED_BYTES=%s\n' "${SERVED_BYTES:-}"
  printf 'PASSTHROUGH_FILES=%s\n' "${PASSTHROUGH_FILES:-0}"
  printf 'VIEW=%s\n' "${VIEW:-}"
  printf 'LEASE=%s\n' "${LEASE:-}"
  printf 'LEFT_MOUNTS=%s\n' "$LEFT_MOUNTS"
  printf 'LEFT_LEASES=%s\n' "$LEFT_LEASES"
  printf 'LEFT_VIEWS=%s\n' "$LEFT_VIEWS"
}

main "$@"
