#!/usr/bin/env bash
# make-boot-image.sh: build the "minimal VM" OCI image used by the end-to-end
# test and the demo: a real Debian kernel, a busybox initramfs whose /init
# prints a marker line and powers off, and /urunc.json, spread over two
# layers so that serving the right files needs the merged (top) view:
#
#   bottom layer                          top layer
#   /.boot/kernel      decoy (text)       /.boot/kernel   the real vmlinuz
#   /.boot/rootfs.cpio.gz  the initrd     /.boot/.wh.extra  (whites out extra)
#   /.boot/extra       whited out above   /urunc.json
#   /etc/hostname, /bin/busybox  unrelated files that must NOT be served
#
# The kernel is vmlinuz from Debian's linux-image-6.1.0-N-amd64 package,
# fetched with `apt-get download` and cached (only vmlinuz is kept) under
# $URUNC_BOOTFS_CACHE, else WORK/cache. If it cannot be had, the script exits
# 77 with a one-line reason (test drivers treat 77 as "skip").
#
# stdout: KEY=VALUE lines: IMAGE, KERNEL, INITRD, MARKER, KERNEL_SHA256,
# INITRD_SHA256, CMDLINE, CHAIN_ID, OUT, KERNEL_FILE, INITRD_FILE,
# DECOY_KERNEL_SHA256, WHITEOUT_PATH, KERNEL_PACKAGE.
# Boot the result's kernel+initrd with scripts/boot-check.sh.

set -euo pipefail

readonly PROG=${0##*/}
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly BUSYBOX=${BUSYBOX:-/bin/busybox}
readonly KERNEL_PATH=/.boot/kernel
readonly INITRD_PATH=/.boot/rootfs.cpio.gz
readonly WHITEOUT_PATH=/.boot/extra
readonly CMDLINE="console=ttyS0 panic=-1 quiet"
readonly DEFAULT_MARKER=URUNC-BOOTFS-GUEST-OK
readonly SKIP=77

usage() {
  cat <<EOF
Usage: $PROG --work DIR --out FILE.tar --name NAME[:TAG] [--marker TEXT]
       $PROG --help

Build the minimal-VM OCI image tar (see make-oci-image.sh for the format).
  --work DIR       scratch directory (layer trees, initramfs, default cache)
  --out FILE.tar   output OCI layout tar
  --name NAME      image name (normalised like docker: NAME -> docker.io/library/NAME:latest)
  --marker TEXT    line the guest's /init prints (default $DEFAULT_MARKER;
                   characters A-Z a-z 0-9 space . _ : , = + - only)
Kernel cache: \$URUNC_BOOTFS_CACHE, else DIR/cache (only vmlinuz is kept).
Exit status: 0 ok, 77 kernel package not obtainable (skip), 1 other error,
2 bad usage. Prints KEY=VALUE lines (IMAGE, KERNEL, INITRD, MARKER,
KERNEL_SHA256, INITRD_SHA256, ...) on stdout.
EOF
}

die() {
  printf '%s: %s\n' "$PROG" "$*" >&2
  exit 1
}

skip() {
  printf '%s: SKIP: %s\n' "$PROG" "$*" >&2
  exit "$SKIP"
}

log() {
  printf '%s: %s\n' "$PROG" "$*" >&2
}

sha256_of() {
  local sum
  sum=$(sha256sum -- "$1")
  printf '%s' "${sum%% *}"
}

# True when $1 is an x86 bzImage (boot protocol magic "HdrS" at 0x202).
is_bzimage() {
  [[ -f $1 && $(od -An -c -j 514 -N 4 -- "$1" 2>/dev/null | tr -d ' ') == HdrS ]]
}

# Debian package names that may hold a 6.1 amd64 kernel, best first: the one
# linux-image-amd64 depends on (unsigned variant first, it is smaller to
# trust), then every linux-image-6.1.0-N-amd64[-unsigned] apt knows, newest
# first.
kernel_candidates() {
  local dep
  dep=$(apt-cache depends linux-image-amd64 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}') || true
  if [[ -n $dep ]]; then
    printf '%s-unsigned\n%s\n' "$dep" "$dep"
  fi
  apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64(-unsigned)?$' 2>/dev/null |
    awk '{print $1}' | sort -V -r
}

# Sets KERNEL_FILE (cached vmlinuz) and KERNEL_PACKAGE. Downloads at most once
# per cache; concurrent runs serialise on a lock file.
fetch_kernel() {
  local cache=$1 kdir=$1/kernel
  mkdir -p -- "$kdir" || skip "cannot create kernel cache $kdir"
  exec 9>"$kdir/.lock"
  flock -w 900 9 || skip "timed out waiting for the kernel cache lock $kdir/.lock"

  local f
  KERNEL_FILE=""
  while IFS= read -r f; do
    is_bzimage "$f" && KERNEL_FILE=$f
  done < <(find "$kdir" -maxdepth 1 -type f -name 'vmlinuz-*' ! -name '*.package' | sort -V)
  if [[ -n $KERNEL_FILE ]]; then
    KERNEL_PACKAGE=$(cat -- "$KERNEL_FILE.package" 2>/dev/null || echo unknown)
    exec 9>&-
    return 0
  fi

  command -v apt-get >/dev/null || skip "apt-get not available to fetch a kernel"
  local -a cands=()
  mapfile -t cands < <(kernel_candidates | awk '!seen[$0]++')
  ((${#cands[@]})) || skip "apt knows no linux-image-6.1.0-*-amd64 package (run apt-get update)"

  local dl pkg got="" out last_err=""
  dl=$(mktemp -d "$kdir/download.XXXXXX")
  # apt's _apt user must be able to write here, else apt warns and downloads
  # unsandboxed.
  chmod 0755 -- "$dl"
  for pkg in "${cands[@]:0:4}"; do
    if out=$(cd -- "$dl" && timeout 600 apt-get download -qq "$pkg" 2>&1); then
      got=$pkg
      break
    fi
    last_err=$(printf '%s\n' "$out" | grep -v '^[[:space:]]*$' | tail -n1)
    rm -f -- "$dl"/*.deb
  done
  if [[ -z $got ]]; then
    rm -rf -- "$dl"
    # One line only: test drivers show it as the skip reason.
    skip "apt-get download of ${cands[0]} and fallbacks failed: ${last_err:-no output}"
  fi
  log "downloaded $got into the kernel cache $kdir"
  local deb
  deb=$(find "$dl" -maxdepth 1 -name '*.deb' | head -n1)
  # Only boot/vmlinuz-* is needed: extract that alone instead of dpkg -x
  # (which would write ~400 MB of modules).
  if ! dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dl" --wildcards './boot/vmlinuz-*'; then
    rm -rf -- "$dl"
    skip "could not extract boot/vmlinuz-* from $(basename -- "$deb")"
  fi
  f=$(find "$dl/boot" -maxdepth 1 -type f -name 'vmlinuz-*' | head -n1)
  if [[ -z $f ]] || ! is_bzimage "$f"; then
    rm -rf -- "$dl"
    skip "$got holds no bzImage vmlinuz"
  fi
  printf '%s\n' "$got" >"$kdir/$(basename -- "$f").package"
  mv -f -- "$f" "$kdir/$(basename -- "$f")"
  KERNEL_FILE=$kdir/$(basename -- "$f")
  KERNEL_PACKAGE=$got
  rm -rf -- "$dl"
  exec 9>&-
}

# Build WORK/rootfs.cpio.gz: newc cpio (gzip) with a static busybox and /init.
build_initramfs() {
  local work=$1 marker=$2 root=$1/initramfs-root out=$1/rootfs.cpio.gz
  [[ -x $BUSYBOX ]] || die "$BUSYBOX not found (apt-get install busybox-static)"
  if ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX is dynamically linked; the guest needs busybox-static"
  fi
  rm -rf -- "$root"
  mkdir -p -- "$root"/{bin,dev,proc,sys}
  cp -- "$BUSYBOX" "$root/bin/busybox"
  chmod 0755 -- "$root/bin/busybox"
  # No /dev/console node is needed in the archive (making one would need
  # mknod): /init mounts devtmpfs and redirects to /dev/console itself.
  cat >"$root/init" <<EOF
#!/bin/busybox sh
# /init of the urunc-bootfs test guest: print the marker line, power off.
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1
/bin/busybox mount -t proc proc /proc 2>/dev/null
/bin/busybox echo '$marker'
/bin/busybox sync
/bin/busybox poweroff -f
EOF
  chmod 0755 -- "$root/init"
  find "$root" -exec touch -h -d "@${SOURCE_DATE_EPOCH:-0}" {} +
  (cd -- "$root" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
    cpio --quiet -o -H newc --owner=0:0 --reproducible) | gzip -n -9 >"$out"
  INITRD_FILE=$out
}

main() {
  local work="" out="" name="" marker=$DEFAULT_MARKER
  while (($#)); do
    case $1 in
      -h | --help) usage; exit 0 ;;
      --work) (($# >= 2)) || die "--work needs a value"; work=$2; shift ;;
      --out) (($# >= 2)) || die "--out needs a value"; out=$2; shift ;;
      --name) (($# >= 2)) || die "--name needs a value"; name=$2; shift ;;
      --marker) (($# >= 2)) || die "--marker needs a value"; marker=$2; shift ;;
      *) printf '%s: unknown argument: %s\n' "$PROG" "$1" >&2; usage >&2; exit 2 ;;
    esac
    shift
  done
  [[ -n $work && -n $out && -n $name ]] || { usage >&2; exit 2; }
  [[ $marker =~ ^[A-Za-z0-9\ ._:,=+-]+$ ]] || die "--marker has characters outside [A-Za-z0-9 ._:,=+-]"
  mkdir -p -- "$work"
  work=$(realpath -- "$work")
  local cache=${URUNC_BOOTFS_CACHE:-$work/cache}

  KERNEL_FILE="" KERNEL_PACKAGE="" INITRD_FILE=""
  fetch_kernel "$cache"
  build_initramfs "$work" "$marker"

  # Host-side copies of what the guest boots (for boot-check.sh and tests).
  cp -f -- "$KERNEL_FILE" "$work/vmlinuz"
  local kernel_sha initrd_sha
  kernel_sha=$(sha256_of "$work/vmlinuz")
  initrd_sha=$(sha256_of "$INITRD_FILE")

  # Layer trees.
  local l0=$work/layers/0-base l1=$work/layers/1-boot
  rm -rf -- "$work/layers"
  mkdir -p -- "$l0/.boot" "$l0/etc" "$l0/bin" "$l1/.boot"
  printf 'URUNC-BOOTFS-DECOY-KERNEL: the top layer replaces this file\n' >"$l0$KERNEL_PATH"
  cp -- "$INITRD_FILE" "$l0$INITRD_PATH"
  printf 'URUNC-BOOTFS-WHITED-OUT: the top layer deletes this file\n' >"$l0$WHITEOUT_PATH"
  printf 'urunc-bootfs-guest\n' >"$l0/etc/hostname"
  cp -- "$BUSYBOX" "$l0/bin/busybox"
  cp -- "$work/vmlinuz" "$l1$KERNEL_PATH"
  : >"$l1$(dirname -- "$WHITEOUT_PATH")/.wh.$(basename -- "$WHITEOUT_PATH")"
  chmod 0644 -- "$l0$KERNEL_PATH" "$l0$INITRD_PATH" "$l0$WHITEOUT_PATH" "$l1$KERNEL_PATH"
  local decoy_sha
  decoy_sha=$(sha256_of "$l0$KERNEL_PATH")

  # urunc.json: annotation name -> base64(value); the same pairs as labels.
  local -a keys=(unikernelType hypervisor binary initrd cmdline mountRootfs)
  local -a vals=(linux qemu "$KERNEL_PATH" "$INITRD_PATH" "$CMDLINE" false)
  local -a labels=()
  local i sep="" json="{"
  for i in "${!keys[@]}"; do
    json+=$(printf '%s"com.urunc.unikernel.%s":"%s"' "$sep" "${keys[i]}" \
      "$(printf '%s' "${vals[i]}" | base64 -w0)")
    sep=,
    labels+=(--label "com.urunc.unikernel.${keys[i]}=${vals[i]}")
  done
  json+="}"
  printf '%s\n' "$json" >"$l1/urunc.json"
  chmod 0644 -- "$l1/urunc.json"

  local oci_out
  oci_out=$("$SCRIPT_DIR/make-oci-image.sh" --name "$name" --out "$out" "${labels[@]}" "$l0" "$l1") ||
    die "make-oci-image.sh failed"
  local image chain
  image=$(sed -n 's/^IMAGE=//p' <<<"$oci_out")
  chain=$(sed -n 's/^CHAIN_ID=//p' <<<"$oci_out")

  printf 'IMAGE=%s\n' "$image"
  printf 'KERNEL=%s\n' "$KERNEL_PATH"
  printf 'INITRD=%s\n' "$INITRD_PATH"
  printf 'MARKER=%s\n' "$marker"
  printf 'KERNEL_SHA256=%s\n' "$kernel_sha"
  printf 'INITRD_SHA256=%s\n' "$initrd_sha"
  printf 'CMDLINE=%s\n' "$CMDLINE"
  printf 'CHAIN_ID=%s\n' "$chain"
  printf 'OUT=%s\n' "$(realpath -- "$out")"
  printf 'KERNEL_FILE=%s\n' "$work/vmlinuz"
  printf 'INITRD_FILE=%s\n' "$INITRD_FILE"
  printf 'DECOY_KERNEL_SHA256=%s\n' "$decoy_sha"
  printf 'WHITEOUT_PATH=%s\n' "$WHITEOUT_PATH"
  printf 'KERNEL_PACKAGE=%s\n' "$KERNEL_PACKAGE"
}

main "$@"
