#!/usr/bin/env bash
# containerd-env.sh: start and stop a PRIVATE containerd for tests and demos.
#
# The instance lives entirely under one directory DIR (config, root, state,
# sockets, log, pid file, optional btrfs loop file), never touches
# /var/lib/containerd, /run/containerd or /opt/containerd, and is stopped by
# the PID it was started with (never by name).
#
# Layout of DIR after `start`:
#   DIR/config.toml          version 2 config written by this script
#   DIR/root, DIR/state      containerd root and state directories
#   DIR/opt                  io.containerd.internal.v1.opt path
#   DIR/containerd.sock      gRPC socket (printed on stdout by `start`)
#   DIR/containerd.sock.ttrpc, DIR/debug.sock
#   DIR/containerd.log       daemon stdout+stderr
#   DIR/containerd.pid       daemon PID
#   DIR/binaries             the containerd and ctr it runs (restart reuses them)
#   DIR/btrfs.img, DIR/btrfs (with --btrfs) 512 MiB btrfs loop file + mount
#   DIR/blockfile-scratch.ext4 (with --blockfile) the blockfile snapshotter's
#                            scratch image: 128 MiB sparse, ext4
#
# The containerd binary is $CONTAINERD_BIN (default /usr/bin/containerd) and
# ctr is $CTR_BIN: the test tiers run the same script against Debian 12's
# 1.6.20 and against the 1.7 and 2.x releases that scripts/fetch-containerd.sh
# caches. The config is version 2, which 1.7 reads as is and 2.x migrates in
# memory (it logs a warning saying so).
#
# Snapshotters seen loading with containerd 1.6.20 (Debian 12, kernel 6.18),
# from `ctr --address DIR/containerd.sock plugins ls`:
#   io.containerd.snapshotter.v1.overlayfs  ok
#   io.containerd.snapshotter.v1.native     ok
#   io.containerd.snapshotter.v1.btrfs      ok only with --btrfs (root_path on
#                                           the mounted btrfs); without it:
#                                           skip (root is ext4, "must be a
#                                           btrfs filesystem to be used with
#                                           the btrfs snapshotter")
#   aufs, zfs, devmapper                    disabled here (disabled_plugins)
# and with 1.7.24 (trixie) / 2.1.9 (sid) also:
#   io.containerd.snapshotter.v1.blockfile  ok only with --blockfile (scratch_file)
#   io.containerd.snapshotter.v1.erofs      ok (2.x only)
#   io.containerd.differ.v1.erofs           ok only when mkfs.erofs is on PATH
#                                           (--erofs MKFS puts its directory there)
# Without the disabled_plugins list, devmapper reports an error ("devmapper
# not configured") and aufs/zfs are skipped: the list keeps the log quiet.

set -euo pipefail

readonly PROG=${0##*/}
# Seconds to wait for the socket to answer after starting.
readonly START_TIMEOUT=${CONTAINERD_ENV_START_TIMEOUT:-20}
# Seconds to wait after SIGTERM before sending SIGKILL, and after SIGKILL.
readonly STOP_TIMEOUT=${CONTAINERD_ENV_STOP_TIMEOUT:-10}
# Empty: the ones DIR was first started with (DIR/binaries), else Debian's.
CONTAINERD_BIN=${CONTAINERD_BIN:-}
CTR_BIN=${CTR_BIN:-}
readonly BTRFS_SIZE_MIB=512
readonly BLOCKFILE_SIZE_MIB=128
# CRI plugins of 1.6/1.7 and their 2.x successors: none is wanted here (they
# would look for CNI and start a sandbox controller).
readonly DISABLED_PLUGINS='"io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.podsandbox.controller.v1.podsandbox", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"'

usage() {
  cat <<EOF
Usage: $PROG start [--btrfs] [--blockfile] [--erofs MKFS] [--owner PID] DIR
       $PROG stop DIR
       $PROG restart DIR
       $PROG --help

start DIR     Write DIR/config.toml, start containerd with it in the
              background (log: DIR/containerd.log, PID: DIR/containerd.pid),
              wait up to ${START_TIMEOUT}s for 'ctr --address DIR/containerd.sock
              version' to answer, and print the socket path on stdout.
              DIR is created if needed.
  --btrfs     Also create a ${BTRFS_SIZE_MIB} MiB loop file DIR/btrfs.img, format it
              with mkfs.btrfs, mount it at DIR/btrfs and point the btrfs
              snapshotter's root_path there. (If DIR/btrfs is already a
              mounted btrfs, it is configured without --btrfs too.)
  --blockfile Also create DIR/blockfile-scratch.ext4 (${BLOCKFILE_SIZE_MIB} MiB, sparse,
              mkfs.ext4) and configure the blockfile snapshotter (1.7 and
              later) with it: scratch_file, fs_type "ext4".
  --erofs MKFS
              Configure the erofs snapshotter and differ (2.1 and later):
              the directory of MKFS (a mkfs.erofs, 1.8 or later) goes first
              on containerd's PATH and the diff service tries the erofs
              differ first (default = ["erofs", "walking"]).
  --owner PID Also start a small watcher that runs 'stop DIR' once PID has
              exited (checked every second) while DIR still exists: a test
              process that dies without running its cleanup (a sanitizer
              abort, SIGKILL) leaves no containerd, mount or loop device.
stop DIR      Kill exactly the PID in DIR/containerd.pid (TERM, then KILL
              after ${STOP_TIMEOUT}s), wait for it, unmount everything mounted
              under DIR (deepest/latest first), detach loop devices backed by
              files under DIR, and remove DIR. Safe to call twice.
restart DIR   Stop the containerd in DIR/containerd.pid as stop does, but keep
              DIR (config, root, state: images, snapshots and leases survive),
              then start it again as start does. For fault tests.

Environment: CONTAINERD_BIN (default /usr/bin/containerd), CTR_BIN (ctr),
CONTAINERD_ENV_START_TIMEOUT (20), CONTAINERD_ENV_STOP_TIMEOUT (10).
Exit status: 0 on success, 1 on failure, 2 on bad usage.
EOF
}

die() {
  printf '%s: %s\n' "$PROG" "$*" >&2
  exit 1
}

log() {
  printf '%s: %s\n' "$PROG" "$*" >&2
}

# Absolute, normalised path (DIR need not exist).
abspath() {
  realpath -m -- "$1"
}

# True when PID is a live (not zombie) process.
pid_alive() {
  local pid=$1 state
  [[ -r /proc/$pid/stat ]] || return 1
  # Field 3 of /proc/PID/stat is the state; the comm field (2) may contain
  # spaces, so cut after the last ')'.
  state=$(sed -e 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [[ -n $state && $state != Z && $state != X ]]
}

# True when PID is the containerd started with DIR/config.toml (guards
# against killing an unrelated process that reused the PID).
pid_is_our_containerd() {
  local pid=$1 dir=$2 cmdline
  [[ -r /proc/$pid/cmdline ]] || return 1
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmdline == *containerd*"--config $dir/config.toml"* ]]
}

# Wait until PID is gone (or a zombie), at most $2 seconds. 0 if gone.
wait_gone() {
  local pid=$1 secs=$2 i
  for ((i = 0; i < secs * 10; i++)); do
    pid_alive "$pid" || return 0
    sleep 0.1
  done
  ! pid_alive "$pid"
}

# Mount points at or under DIR, in /proc/self/mountinfo order. Field 5 is the
# mount point with space, tab, newline and backslash escaped as \ooo octal.
mounts_under() {
  local dir=$1 mp
  while read -r _ _ _ _ mp _; do
    mp=$(printf '%b' "$mp")
    if [[ $mp == "$dir" || $mp == "$dir"/* ]]; then
      printf '%s\n' "$mp"
    fi
  done </proc/self/mountinfo
}

# Loop devices (/dev/loopN) whose backing file is under DIR.
loops_under() {
  local dir=$1 f backing
  for f in /sys/block/loop*/loop/backing_file; do
    [[ -r $f ]] || continue
    backing=$(<"$f") || continue
    backing=${backing% (deleted)}
    if [[ $backing == "$dir"/* ]]; then
      f=${f#/sys/block/}
      printf '/dev/%s\n' "${f%%/*}"
    fi
  done
}

# True when PATH is a mount point of a btrfs filesystem.
is_btrfs_mount() {
  local path=$1
  mountpoint -q -- "$path" 2>/dev/null && [[ $(stat -f -c %T -- "$path") == btrfs ]]
}

setup_btrfs() {
  local dir=$1
  command -v mkfs.btrfs >/dev/null || die "--btrfs: mkfs.btrfs not found (apt-get install btrfs-progs)"
  mkdir -p -- "$dir/btrfs"
  if is_btrfs_mount "$dir/btrfs"; then
    return 0
  fi
  truncate -s "${BTRFS_SIZE_MIB}M" -- "$dir/btrfs.img"
  mkfs.btrfs -q -f -- "$dir/btrfs.img" >/dev/null
  # -o loop allocates a loop device with autoclear: it is detached when the
  # filesystem is unmounted (stop also detaches leftovers explicitly).
  mount -t btrfs -o loop -- "$dir/btrfs.img" "$dir/btrfs"
}

setup_blockfile() {
  local dir=$1 img=$1/blockfile-scratch.ext4
  command -v mkfs.ext4 >/dev/null || die "--blockfile: mkfs.ext4 not found (apt-get install e2fsprogs)"
  [[ -s $img ]] && return 0
  truncate -s "${BLOCKFILE_SIZE_MIB}M" -- "$img"
  mkfs.ext4 -q -F -- "$img" >/dev/null
}

write_config() {
  local dir=$1 btrfs_root=$2 blockfile=$3 erofs=$4
  # Quoted as TOML basic strings; paths from realpath contain no '"' or '\'
  # in practice, but refuse them rather than write a broken config.
  [[ $dir != *[\"\\]* ]] || die "DIR must not contain '\"' or '\\': $dir"
  {
    printf '# Written by %s: a private containerd, nothing outside this directory.\n' "$PROG"
    printf 'version = 2\n'
    printf 'root = "%s/root"\n' "$dir"
    printf 'state = "%s/state"\n' "$dir"
    printf 'disabled_plugins = [%s]\n' "$DISABLED_PLUGINS"
    printf '\n[grpc]\n  address = "%s/containerd.sock"\n' "$dir"
    printf '\n[ttrpc]\n  address = "%s/containerd.sock.ttrpc"\n' "$dir"
    printf '\n[debug]\n  address = "%s/debug.sock"\n' "$dir"
    printf '\n[plugins]\n'
    printf '  [plugins."io.containerd.internal.v1.opt"]\n    path = "%s/opt"\n' "$dir"
    if [[ -n $btrfs_root ]]; then
      printf '  [plugins."io.containerd.snapshotter.v1.btrfs"]\n    root_path = "%s"\n' "$btrfs_root"
    fi
    if ((blockfile)); then
      printf '  [plugins."io.containerd.snapshotter.v1.blockfile"]\n'
      printf '    scratch_file = "%s/blockfile-scratch.ext4"\n    fs_type = "ext4"\n' "$dir"
      printf '    mount_options = []\n    recreate_scratch = false\n'
    fi
    if ((erofs)); then
      printf '  [plugins."io.containerd.service.v1.diff-service"]\n    default = ["erofs", "walking"]\n'
    fi
  } >"$dir/config.toml"
}

# Runs `stop DIR` when OWNER has exited, unless DIR is gone first (the owner
# stopped it itself). Own session and no inherited stdio, so that neither a
# caller reading our stdout nor a process-group kill of the caller reaches it.
start_watcher() {
  local owner=$1 dir=$2
  # shellcheck disable=SC2016 # expanded by the inner bash, from its arguments
  setsid bash -c '
    script=$1 owner=$2 dir=$3
    alive() { [[ -r /proc/$1/stat ]] && ! sed -e "s/^.*) //" "/proc/$1/stat" | grep -q "^[ZX]"; }
    while [[ -e $dir ]] && alive "$owner"; do sleep 1; done
    [[ -e $dir ]] && exec "$script" stop "$dir"
    exit 0
  ' watcher "${BASH_SOURCE[0]}" "$owner" "$dir" </dev/null >/dev/null 2>&1 &
}

cmd_start() {
  local btrfs=0 blockfile=0 erofs=0 mkfs_erofs="" dir="" owner=""
  while (($#)); do
    case $1 in
      --btrfs) btrfs=1 ;;
      --blockfile) blockfile=1 ;;
      --erofs)
        [[ -n ${2:-} ]] || { usage >&2; exit 2; }
        erofs=1 mkfs_erofs=$2
        shift
        ;;
      --owner)
        [[ ${2:-} =~ ^[0-9]+$ ]] || { usage >&2; exit 2; }
        owner=$2
        shift
        ;;
      -h | --help) usage; exit 0 ;;
      --) shift; break ;;
      -*) printf '%s: unknown option: %s\n' "$PROG" "$1" >&2; usage >&2; exit 2 ;;
      *) [[ -z $dir ]] || { usage >&2; exit 2; }; dir=$1 ;;
    esac
    shift
  done
  if (($#)); then
    [[ -z $dir && $# -eq 1 ]] || { usage >&2; exit 2; }
    dir=$1
  fi
  [[ -n $dir ]] || { usage >&2; exit 2; }
  dir=$(abspath "$dir")

  # A restart (or a start of a kept DIR) runs the release DIR was made with:
  # its state is that release's.
  if [[ -z $CONTAINERD_BIN && -s $dir/binaries ]]; then
    { read -r CONTAINERD_BIN; read -r CTR_BIN; } <"$dir/binaries"
  fi
  CONTAINERD_BIN=${CONTAINERD_BIN:-/usr/bin/containerd}
  CTR_BIN=${CTR_BIN:-ctr}
  [[ -x $CONTAINERD_BIN ]] || die "containerd not found at $CONTAINERD_BIN"
  command -v "$CTR_BIN" >/dev/null || die "ctr not found"
  # sun_path holds 107 bytes plus NUL.
  local sock=$dir/containerd.sock
  ((${#sock} + 6 <= 107)) || die "socket path too long for a unix socket: $sock.ttrpc"

  if [[ -f $dir/containerd.pid ]]; then
    local old
    old=$(<"$dir/containerd.pid")
    if [[ $old =~ ^[0-9]+$ ]] && pid_alive "$old" && pid_is_our_containerd "$old" "$dir"; then
      die "a containerd (PID $old) already runs from $dir; stop it first"
    fi
  fi

  mkdir -p -- "$dir" "$dir/root" "$dir/state" "$dir/opt"
  chmod 0711 -- "$dir"
  printf '%s\n%s\n' "$CONTAINERD_BIN" "$CTR_BIN" >"$dir/binaries"

  local btrfs_root=""
  if ((btrfs)); then
    setup_btrfs "$dir"
  fi
  if [[ -d $dir/btrfs ]] && is_btrfs_mount "$dir/btrfs"; then
    btrfs_root=$dir/btrfs
  fi
  # restart passes no flags: a scratch image already there means blockfile.
  ((blockfile)) && setup_blockfile "$dir"
  [[ -s $dir/blockfile-scratch.ext4 ]] && blockfile=1
  if ((erofs)); then
    [[ -x $mkfs_erofs ]] || die "--erofs: $mkfs_erofs is not an executable mkfs.erofs"
    printf '%s\n' "$(cd "$(dirname "$mkfs_erofs")" && pwd)" >"$dir/erofs-path"
  fi
  local path_prefix=""
  if [[ -s $dir/erofs-path ]]; then
    erofs=1
    path_prefix=$(<"$dir/erofs-path"):
  fi
  write_config "$dir" "$btrfs_root" "$blockfile" "$erofs"
  rm -f -- "$sock" "$sock.ttrpc" "$dir/debug.sock"

  # Own session (no controlling terminal, not in the caller's process group),
  # no inherited stdio: a caller reading our stdout must not wait for the
  # daemon. Without job control (non-interactive script) the background
  # child is not a process-group leader, so setsid(1) execs containerd in
  # place and $! is containerd's own PID (checked below).
  # The binary's own directory first: containerd finds its shims on PATH.
  PATH=$(dirname -- "$(realpath -- "$CONTAINERD_BIN")"):$path_prefix$PATH setsid "$CONTAINERD_BIN" --config "$dir/config.toml" \
    </dev/null >>"$dir/containerd.log" 2>&1 &
  local pid=$!
  printf '%s\n' "$pid" >"$dir/containerd.pid"

  # On failure below, everything (btrfs mount, loop device, DIR) is undone
  # with `stop`, after showing the end of the log.
  local deadline=$((SECONDS + START_TIMEOUT)) ok=0
  while ((SECONDS < deadline)); do
    if ! pid_alive "$pid"; then
      log "containerd (PID $pid) exited during start; last log lines:"
      tail -n 20 -- "$dir/containerd.log" >&2 || true
      "${BASH_SOURCE[0]}" stop "$dir" >/dev/null 2>&1 || true
      exit 1
    fi
    if [[ -S $sock ]] && timeout 5 "$CTR_BIN" --address "$sock" version >/dev/null 2>&1; then
      ok=1
      break
    fi
    sleep 0.1
  done
  if ((!ok)); then
    log "containerd (PID $pid) did not answer on $sock within ${START_TIMEOUT}s; last log lines:"
    tail -n 20 -- "$dir/containerd.log" >&2 || true
    "${BASH_SOURCE[0]}" stop "$dir" >/dev/null 2>&1 || true
    exit 1
  fi
  pid_is_our_containerd "$pid" "$dir" ||
    log "warning: PID $pid does not look like containerd --config $dir/config.toml"
  [[ -z $owner ]] || start_watcher "$owner" "$dir"
  printf '%s\n' "$sock"
}

# Kill exactly the PID recorded in DIR/containerd.pid, if it is still the
# containerd of DIR (TERM, then KILL), and wait until it is gone.
kill_recorded() {
  local dir=$1
  if [[ -f $dir/containerd.pid ]]; then
    local pid
    pid=$(<"$dir/containerd.pid")
    if [[ $pid =~ ^[0-9]+$ ]] && pid_alive "$pid"; then
      if pid_is_our_containerd "$pid" "$dir"; then
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_gone "$pid" "$STOP_TIMEOUT"; then
          log "containerd (PID $pid) ignored SIGTERM for ${STOP_TIMEOUT}s; sending SIGKILL"
          kill -KILL "$pid" 2>/dev/null || true
          wait_gone "$pid" "$STOP_TIMEOUT" || die "containerd (PID $pid) survived SIGKILL"
        fi
      else
        log "PID $pid from $dir/containerd.pid is not this containerd; not killing it"
      fi
    fi
  fi
}

cmd_stop() {
  [[ $# -eq 1 ]] || { usage >&2; exit 2; }
  [[ $1 != -h && $1 != --help ]] || { usage; exit 0; }
  local dir
  dir=$(abspath "$1")
  [[ $dir != / ]] || die "refusing to stop/remove /"

  # 1. Kill exactly the recorded PID, if it is still our containerd.
  kill_recorded "$dir"

  [[ -e $dir ]] || return 0

  # 2. Unmount everything at or under DIR, last-mounted first (children are
  #    listed after their parents in mountinfo). Fall back to a lazy unmount.
  local -a mps=()
  local mp i rc=0
  mapfile -t mps < <(mounts_under "$dir")
  for ((i = ${#mps[@]} - 1; i >= 0; i--)); do
    mp=${mps[i]}
    umount -- "$mp" 2>/dev/null || umount -l -- "$mp" 2>/dev/null ||
      { log "could not unmount $mp"; rc=1; }
  done

  # 3. Detach loop devices whose backing file lives under DIR.
  local dev
  while IFS= read -r dev; do
    [[ -n $dev ]] || continue
    losetup -d "$dev" 2>/dev/null || { log "could not detach $dev"; rc=1; }
  done < <(loops_under "$dir")

  # 4. Remove DIR, never crossing into a filesystem still mounted below it.
  rm -rf --one-file-system -- "$dir" || rc=1
  ((rc == 0)) || die "stop: some of $dir could not be cleaned up"
}

cmd_restart() {
  [[ $# -eq 1 ]] || { usage >&2; exit 2; }
  [[ $1 != -h && $1 != --help ]] || { usage; exit 0; }
  local dir
  dir=$(abspath "$1")
  [[ -f $dir/config.toml ]] || die "no containerd was started from $dir (no config.toml)"
  kill_recorded "$dir"
  cmd_start "$dir"
}

main() {
  (($#)) || { usage >&2; exit 2; }
  local verb=$1
  shift
  case $verb in
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    restart) cmd_restart "$@" ;;
    -h | --help | help) usage ;;
    *) printf '%s: unknown command: %s\n' "$PROG" "$verb" >&2; usage >&2; exit 2 ;;
  esac
}

main "$@"
