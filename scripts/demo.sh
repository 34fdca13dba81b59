#!/usr/bin/env bash
# demo.sh: build urunc-bootfs and show it serving boot files read-only from
# a rootfs directory, with nothing copied, then clean up.
# Usage: scripts/demo.sh   (as root, after scripts/install-deps.sh)
set -euo pipefail

if [[ ${1:-} == --help || ${1:-} == -h ]]; then sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
cmake --preset release >/dev/null
cmake --build --preset release -j"$(nproc)" --target urunc-bootfs >/dev/null
bin=$here/build/release/cli/urunc-bootfs

work=$(mktemp -d /tmp/urunc-bootfs-demo.XXXXXX)
export URUNC_BOOTFS_STATE_DIR=$work/state
cleanup() {
  "$bin" umount --lazy "$work/bundle/boot" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/rootfs/.boot" "$work/rootfs/etc" "$work/bundle"
head -c $((10 << 20)) /dev/urandom >"$work/rootfs/.boot/kernel"
head -c $((64 << 20)) /dev/urandom >"$work/rootfs/.boot/rootfs.cpio.gz"
echo "not served" >"$work/rootfs/etc/hostname"
b64() { printf %s "$1" | base64 -w0; }
printf '{"com.urunc.unikernel.binary":"%s","com.urunc.unikernel.initrd":"%s","com.urunc.unikernel.hypervisor":"%s"}\n' \
  "$(b64 /.boot/kernel)" "$(b64 /.boot/rootfs.cpio.gz)" "$(b64 qemu)" >"$work/rootfs/urunc.json"
echo '{"ociVersion":"1.0.2","annotations":{}}' >"$work/bundle/config.json"

start=$(date +%s%N)
"$bin" mount --source-dir "$work/rootfs" --bundle "$work/bundle"
ready_ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "== served tree at bundle/boot"
(cd "$work/bundle/boot" && find . | sort)
cmp "$work/bundle/boot/.boot/kernel" "$work/rootfs/.boot/kernel" && echo "kernel: byte-identical"
if (echo x >"$work/bundle/boot/.boot/kernel") 2>/dev/null; then echo "write succeeded?!"; exit 1; else echo "write: refused (read-only)"; fi
echo "== status"
"$bin" status "$work/bundle/boot"
# A copy would be a file of the kernel's size somewhere on /run or in the
# bundle outside the FUSE mount; count them.
copies=$(find /run "$work/bundle" -xdev -type f -size "$(stat -c %s "$work/rootfs/.boot/kernel")c" 2>/dev/null | wc -l)
"$bin" umount "$work/bundle/boot"
echo "== figures"
echo "time from mount to ready: ${ready_ms} ms"
echo "copies of the kernel under /run or the bundle: $copies (bytes copied: 0)"
echo "after umount: $(grep -c urunc-bootfs /proc/self/mountinfo || true) urunc-bootfs mounts left"
