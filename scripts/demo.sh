#!/usr/bin/env bash
# demo.sh: boot a real Linux guest from boot files that urunc-bootfs serves
# out of a containerd view, the way urunc does it, and show that nothing was
# copied. Then clean up everything it started.
# Usage: scripts/demo.sh   (as root, after scripts/install-deps.sh)
#
# Steps: build (cmake --preset release); start a private containerd
# (scripts/containerd-env.sh, everything under one temp dir, stopped by PID);
# build the minimal-VM image (scripts/make-boot-image.sh: Debian's vmlinuz, a
# busybox initramfs that prints a marker) and import it; create a container;
# run scripts/urunc-flow.sh (bundle, urunc-bootfs mount, read-only binds into
# monRootfs, qemu, teardown); print the marker line and the figures.
#
# Bytes copied are measured, not assumed: before the mount and after the
# boot it lists the files (and sizes) under /run and in the bundle, reads the
# used space of the bundle's filesystem (a private tmpfs standing in for
# /run/containerd), and searches /, /run, /tmp, /var/tmp, /dev/shm and the
# bundle's filesystem for any file created in between whose sha256 is the
# kernel's or the initrd's.
#
# Kept afterwards: build/release (the build) and the kernel cache
# ($URUNC_BOOTFS_CACHE, default /var/cache/urunc-bootfs), so that a second run
# neither rebuilds nor downloads. Everything else is removed.
set -euo pipefail

if [[ ${1:-} == --help || ${1:-} == -h ]]; then sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
(($# == 0)) || { echo "demo.sh: no arguments expected (see --help)" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "demo.sh: run as root (it mounts FUSE, tmpfs and bind mounts)" >&2; exit 1; }

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
export URUNC_BOOTFS_CACHE=${URUNC_BOOTFS_CACHE:-/var/cache/urunc-bootfs}
readonly NS=demo ID=demo-vm IMAGE_NAME=urunc-bootfs/minivm:demo

# ------------------------------------------------------------------ output

bold=$'\e[1m' dim=$'\e[2m' green=$'\e[32m' red=$'\e[31m' off=$'\e[0m'
[[ -t 1 ]] || bold="" dim="" green="" red="" off=""
step=0
section() { step=$((step + 1)); printf '\n%s== %d. %s%s\n' "$bold" "$step" "$1" "$off"; }
say() { printf '   %s\n' "$*"; }
row() { printf '   %-22s %s\n' "$1" "$2"; }
fail() { printf '\n%sdemo.sh: %s%s\n' "$red" "$*" "$off" >&2; exit 1; }
human() { numfmt --to=iec-i --suffix=B --format='%.1f' "$1" 2>/dev/null || printf '%s B' "$1"; }
ms_since() { local a=${1//[.,]/} b=${EPOCHREALTIME//[.,]/}; printf '%d' $(((10#$b - 10#$a) / 1000)); }

# ----------------------------------------------------------------- cleanup

work="" ctrd="" tmpfs_mounted=0
# The host daemon the first mount started for this state directory: SIGTERM
# (it ends its mounts and releases their views), by its pid.
stop_daemon() {
  local pidfile=$work/state/daemon.pid pid
  [[ -n $work && -s $pidfile ]] || return 0
  pid=$(<"$pidfile")
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_daemon
  if [[ -n $ctrd && -d $ctrd ]]; then
    scripts/containerd-env.sh stop "$ctrd" >/dev/null 2>&1 ||
      printf 'demo.sh: warning: containerd-env.sh stop %s reported a problem\n' "$ctrd" >&2
  fi
  if ((tmpfs_mounted)); then
    umount -- "$work/run" 2>/dev/null || umount -l -- "$work/run" 2>/dev/null || true
  fi
  if [[ -n $work && -d $work ]]; then rm -rf --one-file-system -- "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

printf '%surunc-bootfs demo%s: boot a Linux guest from a container image, with urunc-bootfs\n' "$bold" "$off"
printf 'serving the kernel and initrd read-only from a containerd view (nothing copied).\n'

# ------------------------------------------------------------------ 1. build

section "Build (cmake --preset release)"
work=$(mktemp -d /tmp/urunc-bootfs-demo.XXXXXX)
t0=$EPOCHREALTIME
if ! { cmake --preset release && cmake --build --preset release -j"$(nproc)" --target urunc-bootfs; } >"$work/build.log" 2>&1; then
  tail -n 30 "$work/build.log" >&2
  fail "the build failed (above: the end of its log)"
fi
bin=$here/build/release/cli/urunc-bootfs
build_ms=$(ms_since "$t0")
row "binary" "build/release/cli/urunc-bootfs (build step: $((build_ms / 1000)).$(((build_ms % 1000) / 100)) s)"
# State files go to the demo's own directory, not /run/urunc-bootfs.
export URUNC_BOOTFS_STATE_DIR=$work/state

# --------------------------------------------------------------- 2. containerd

section "A private containerd"
ctrd=$work/ctrd
sock=$(scripts/containerd-env.sh start "$ctrd") || fail "containerd did not start"
row "containerd" "PID $(<"$ctrd/containerd.pid"), socket $sock"
row "" "${dim}its root, state and config live under $ctrd only$off"
ctr() { command ctr --address "$sock" -n "$NS" "$@"; }

# ------------------------------------------------------------ 3. image, container

section "Boot image and container"
set +e
img_out=$(scripts/make-boot-image.sh --work "$work/image" --out "$work/image/minivm.tar" \
  --name "$IMAGE_NAME" 2>"$work/image.log")
img_rc=$?
set -e
if ((img_rc == 77)); then
  fail "no kernel to boot: $(grep -h 'SKIP' "$work/image.log" | tail -n1)"
elif ((img_rc != 0)); then
  cat "$work/image.log" >&2
  fail "make-boot-image.sh failed"
fi
kv() { sed -n "s/^$1=//p" <<<"$img_out"; }
image=$(kv IMAGE) kernel_path=$(kv KERNEL) initrd_path=$(kv INITRD) marker=$(kv MARKER)
kernel_file=$(kv KERNEL_FILE) initrd_file=$(kv INITRD_FILE)
row "kernel" "$kernel_path: vmlinuz from Debian's $(kv KERNEL_PACKAGE) ($(human "$(stat -c %s "$kernel_file")"))"
row "initrd" "$initrd_path: busybox initramfs ($(human "$(stat -c %s "$initrd_file")")), /init prints $marker"
row "" "${dim}kernel cache: $URUNC_BOOTFS_CACHE$off"
ctr images import --snapshotter overlayfs "$work/image/minivm.tar" >/dev/null
ctr containers create --snapshotter overlayfs --runtime io.containerd.urunc.v2 "$image" "$ID" >/dev/null
row "image" "$image (2 layers, /urunc.json, urunc labels)"
row "container" "$ID in namespace $NS (snapshotter overlayfs)"

# ------------------------------------------------------------ 4. urunc's flow

section "What urunc does (scripts/urunc-flow.sh)"
# The bundle sits where containerd's shim puts it (.../<namespace>/<id>), on a
# private tmpfs that stands in for /run/containerd: its used space is then
# exactly what this flow writes there.
mkdir -p "$work/run"
mount -t tmpfs -o size=64m,mode=0711 urunc-bootfs-demo "$work/run"
tmpfs_mounted=1
bundle=$work/run/io.containerd.runtime.v2.task/$NS/$ID
say "${dim}B = $bundle$off"

# The measuring hooks run inside the flow (bash -c), so they are exported.
meas=$work/measure
mkdir -p "$meas"
KERNEL_SHA256=$(kv KERNEL_SHA256) INITRD_SHA256=$(kv INITRD_SHA256)
KSIZE=$(stat -c %s "$kernel_file") ISIZE=$(stat -c %s "$initrd_file")
export meas bundle KERNEL_SHA256 INITRD_SHA256 KSIZE ISIZE

# Regular files on the filesystem of $1 under $1: "size path" lines (a file
# bind-mounted from elsewhere, like monRootfs/.boot/kernel, is not counted).
list_files() {
  local dev
  dev=$(stat -c %d -- "$1")
  find "$1" -xdev -type f -printf '%D %s %p\n' 2>/dev/null | awk -v d="$dev" '$1 == d {print $2, $3}' | sort -k2
}
# Roots of the filesystems to search for copies, each once.
search_roots() {
  local d
  for d in / /run /tmp /var/tmp /dev/shm "$bundle"; do
    [[ -e $d ]] && df --output=target -- "$d" | tail -n1
  done | sort -u
}
measure_before() {
  list_files /run >"$meas/run.before"
  list_files "$bundle" >"$meas/bundle.before"
  df -B1 --output=used -- "$bundle" | tail -n1 | tr -d ' ' >"$meas/bundlefs.before"
  touch "$meas/stamp"
}
measure_after() {
  list_files /run >"$meas/run.after"
  list_files "$bundle" >"$meas/bundle.after"
  df -B1 --output=used -- "$bundle" | tail -n1 | tr -d ' ' >"$meas/bundlefs.after"
  "$URUNC_FLOW_BIN" status "$URUNC_FLOW_MOUNTPOINT" >"$meas/status.txt"
  # Any file created since the stamp, with the kernel's or initrd's size, on
  # any of those filesystems (-xdev: not inside the FUSE mount), whose
  # content is the kernel's or the initrd's. Bind-mounted files are skipped.
  local root f sum
  : >"$meas/copies"
  search_roots >"$meas/roots"
  while IFS= read -r root; do
    while IFS= read -r -d '' f; do
      mountpoint -q -- "$f" && continue
      sum=$(sha256sum -- "$f" 2>/dev/null | cut -d' ' -f1) || continue
      if [[ $sum == "$KERNEL_SHA256" || $sum == "$INITRD_SHA256" ]]; then
        printf '%s %s\n' "$(stat -c %s -- "$f")" "$f" >>"$meas/copies"
      fi
    done < <(find "$root" -xdev -type f -cnewer "$meas/stamp" \( -size "${KSIZE}c" -o -size "${ISIZE}c" \) -print0 2>/dev/null)
  done <"$meas/roots"
}
export -f list_files search_roots measure_before measure_after

flow_rc=0
scripts/urunc-flow.sh --bin "$bin" --address "$sock" --bundle "$bundle" \
  --binary "$kernel_path" --initrd "$initrd_path" --marker "$marker" --timeout 60 \
  --before-mount measure_before --after-boot measure_after \
  2>&1 >"$work/flow.out" | sed -u 's/^urunc-flow.sh: /   /' || flow_rc=${PIPESTATUS[0]}
((flow_rc == 0)) || fail "urunc-flow.sh failed (exit $flow_rc)"
flow() { sed -n "s/^$1=//p" "$work/flow.out"; }

# --------------------------------------------------------------- 5. figures

# Bytes that appeared or grew in a "size path" list between before and after.
grown_bytes() {
  awk 'NR == FNR {b[$2] = $1; next} {d = $1 - ($2 in b ? b[$2] : 0); if (d > 0) {s += d; n++}}
       END {printf "%d %d\n", s, n}' "$1" "$2"
}
read -r run_bytes run_files < <(grown_bytes "$meas/run.before" "$meas/run.after")
read -r bun_bytes bun_files < <(grown_bytes "$meas/bundle.before" "$meas/bundle.after")
bunfs_delta=$(($(<"$meas/bundlefs.after") - $(<"$meas/bundlefs.before")))
copies=$(wc -l <"$meas/copies")
# Copies outside /run and the bundle (those two are counted above already).
copy_bytes=$(awk -v b="$bundle/" '$2 !~ "^/run/" && index($2, b) != 1 {s += $1} END {print s + 0}' "$meas/copies")
copied=$((run_bytes + bun_bytes + copy_bytes))

section "Figures"
row "guest's marker line" "$green$(flow MARKER_LINE)$off  (after $(flow BOOT_SECONDS) s of TCG boot)"
row "bytes copied" "$bold$copied$off"
row "" "${dim}/run: $run_files new or grown files, $run_bytes B$off"
row "" "${dim}bundle outside boot/: $bun_files new or grown files, $bun_bytes B; its tmpfs: $bunfs_delta B more used$off"
row "" "${dim}files with the kernel's or initrd's sha256 created anywhere ($(paste -sd' ' "$meas/roots")): $copies$off"
[[ ! -s $meas/copies ]] || sed 's/^/      copy: /' "$meas/copies"
row "mount -> ready" "$(flow MOUNT_READY_MS) ms  (urunc-bootfs mount, from the call until B/boot answers)"
if (($(flow PASSTHROUGH_FILES) > 0)); then
  row "qemu's reads" "$(flow SERVED_OPENS) opens through FUSE; the reads went by FUSE passthrough from the"
  row "" "kernel straight to the view's files (the daemon does not see them)"
else
  row "qemu's reads" "$(flow SERVED_BYTES) B in $(flow SERVED_READS) reads ($(flow SERVED_OPENS) opens) through FUSE"
fi
say "files served (urunc-bootfs status B/boot, after the boot):"
sed -n '/^source:/p; /^view:/p; /^paths from:/p; /^artifacts:/,$p' "$meas/status.txt" | sed 's/^/     /'

# --------------------------------------------------------------- 6. cleanup

section "Cleanup"
row "teardown" "binds, urunc-bootfs mount, the view: gone, no lease (checked by urunc-flow.sh)"
daemon_pid=$(cat "$work/state/daemon.pid" 2>/dev/null || true)
stop_daemon
row "daemon" "urunc-bootfsd ${daemon_pid:+PID $daemon_pid }stopped (SIGTERM)"
pid=$(<"$ctrd/containerd.pid")
scripts/containerd-env.sh stop "$ctrd" || fail "containerd-env.sh stop failed"
ctrd=""
row "containerd" "PID $pid stopped, its directory removed"
umount -- "$work/run"
tmpfs_mounted=0
rm -rf --one-file-system -- "$work"
left=$(grep -c -F "$work" /proc/self/mountinfo || true)
row "work dir" "$work removed ($left mounts left under it)"
row "kept" "build/release, and the kernel cache in $URUNC_BOOTFS_CACHE"
work=""
((copied == 0)) || fail "bytes were copied: $copied"
printf '\n%sDone:%s the guest booted from files served by urunc-bootfs; 0 bytes copied.\n' "$bold" "$off"
