#!/usr/bin/env bash
# trixie-stage.sh: build and test urunc-bootfs on Debian 13 (trixie) in a
# root made with debootstrap, from the host's kernel, /dev/fuse and loop
# devices.
# Usage: scripts/trixie-stage.sh [--rebuild-root] [--labels REGEX] [--package]
#                                [--shell | --run COMMAND]
#   (as root; needs debootstrap: scripts/install-deps.sh installs it)
#   --rebuild-root  make the root again even if the cached one is current
#   --labels REGEX  ctest labels to run (default 'unit|fuse|snapshot|integration|daemon')
#   --package       also run the packaging tier (build, install and mount the
#                   .deb inside the root)
#   --shell         an interactive shell in the prepared root instead of tests
#   --run COMMAND   run COMMAND (bash, in /src) in the root instead of tests
# The root (minbase, plus the packages of `scripts/install-deps.sh --groups
# build,tests,packaging` run inside it) is cached in
# ${URUNC_BOOTFS_CACHE:-/var/cache/urunc-bootfs}/trixie and made again only
# when that package list or the provisioning below changes. The source tree is
# bound read-only at /src, build/trixie of the tree at /src/build (so the
# trees are build/trixie/dev, build/trixie/package). Everything runs in a
# private mount namespace; every mount is undone and every process left in
# the root is ended on exit, also on failure.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cache=${URUNC_BOOTFS_CACHE:-/var/cache/urunc-bootfs}/trixie
mirror=${URUNC_BOOTFS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
labels='unit|fuse|snapshot|integration|daemon'
rebuild=0
package=0
shell=0
run=""
inner=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --rebuild-root) rebuild=1; shift ;;
    --labels) labels=$2; shift 2 ;;
    --package) package=1; shift ;;
    --shell) shell=1; shift ;;
    --run) run=$2; shift 2 ;;
    --inner) inner=$2; shift 2 ;;  # internal: this process is in the namespace
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "trixie-stage.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

say() { printf 'trixie-stage: %s\n' "$*"; }
die() { printf 'trixie-stage: %s\n' "$*" >&2; exit 1; }

root="$cache/root"
stamp="$cache/root.stamp"
# What the cached root is made from: a change to any of it makes it again.
provision_version=1
deps_groups=build,tests,packaging
root_key() {
  { echo "trixie minbase $mirror $provision_version"; "$here/scripts/install-deps.sh" --list --groups "$deps_groups"; } |
    sha256sum | cut -c1-16
}

# Mount points under DIR (deepest first), from this namespace's table.
mounts_under() {
  local dir=$1
  awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

# Ends every process whose root is DIR (only this stage uses it: it holds
# the lock): what a test left running inside, e.g. a daemon or containerd.
# A containerd watcher of scripts/containerd-env.sh polls once a second, so
# what is still there is given 3 s to end on its own first.
processes_in() {
  local dir=$1 proc
  for proc in /proc/[0-9]*; do
    [[ $(readlink "$proc/root" 2>/dev/null) == "$dir" ]] && echo "${proc#/proc/}"
  done
}
end_processes_in() {
  local dir=$1 left=() _
  for _ in 1 2 3 4 5 6; do
    mapfile -t left < <(processes_in "$dir")
    [[ ${#left[@]} -eq 0 ]] && return 0
    sleep 0.5
  done
  say "ending processes left in the root: $(ps -o pid=,comm= -p "$(IFS=,; echo "${left[*]}")" | tr -s ' \n' ' ')"
  kill -TERM "${left[@]}" 2>/dev/null || true
  sleep 2
  kill -KILL "${left[@]}" 2>/dev/null || true
}

unmount_all_under() {
  local dir=$1 m
  for m in $(mounts_under "$dir"); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || say "cannot unmount $m"
  done
}

# Binds the host's /dev, /proc, /sys and fresh /run and /tmp into DIR, and
# the source tree with its build directory. Undone by unmount_all_under.
bind_into() {
  local dir=$1 tmp=$2
  mount --rbind /dev "$dir/dev"
  mount -t proc proc "$dir/proc"
  mount --rbind /sys "$dir/sys"
  mount -t tmpfs -o mode=0755 tmpfs "$dir/run"
  # /tmp on disk, not tmpfs: the tests put containerd roots and loop images
  # there.
  mount --bind "$tmp" "$dir/tmp"
  mkdir -p "$dir/src" "$here/build/trixie"
  mount --bind "$here" "$dir/src"
  mount -o remount,bind,ro "$dir/src"
  mount --bind "$here/build/trixie" "$dir/src/build"
  cp -L /etc/resolv.conf "$dir/etc/resolv.conf"
}

in_root() {
  local dir=$1
  shift
  chroot "$dir" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" "$@"
}

provision() {
  local new="$cache/root.new" tmp=$1
  if [[ -d $new ]]; then
    [[ -z $(mounts_under "$new") ]] || die "$new still has mounts"
    rm -rf --one-file-system "$new"
  fi
  say "debootstrap --variant=minbase trixie from $mirror"
  mkdir -p "$cache/debs"
  debootstrap --variant=minbase --cache-dir="$cache/debs" trixie "$new" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
    { tail -n 20 "$cache/debootstrap.log" >&2; die "debootstrap failed (log: $cache/debootstrap.log)"; }
  bind_into "$new" "$tmp"
  # No service may start inside the root while packages install.
  printf '#!/bin/sh\nexit 101\n' >"$new/usr/sbin/policy-rc.d"
  chmod 0755 "$new/usr/sbin/policy-rc.d"
  say "installing the build, test and packaging dependencies with apt"
  in_root "$new" /src/scripts/install-deps.sh --groups "$deps_groups"
  in_root "$new" apt-get clean
  unmount_all_under "$new"
  [[ -z $(mounts_under "$new") ]] || die "cannot unmount everything under $new"
  if [[ -d $root ]]; then
    [[ -z $(mounts_under "$root") ]] || die "$root still has mounts"
    rm -rf --one-file-system "$root"
  fi
  mv "$new" "$root"
}

run_inner() {
  local tmp
  tmp=$(mktemp -d /var/tmp/urunc-bootfs-trixie.XXXXXX)
  chmod 1777 "$tmp"  # apt's sandbox user writes there too
  # shellcheck disable=SC2064  # expand now: the paths are fixed
  trap "end_processes_in '$root'; end_processes_in '$cache/root.new'; unmount_all_under '$root'; unmount_all_under '$cache/root.new'; rm -rf --one-file-system '$tmp'" EXIT

  local key
  key=$(root_key)
  if [[ $rebuild -eq 1 || ! -d $root || $(cat "$stamp" 2>/dev/null) != "$key" ]]; then
    local t0=$SECONDS
    rm -f "$stamp"
    provision "$tmp"
    echo "$key" >"$stamp"
    say "root made in $((SECONDS - t0)) s ($(du -sh --one-file-system "$root" | cut -f1))"
  else
    say "reusing the cached root $root ($key)"
  fi

  bind_into "$root" "$tmp"
  local release
  # shellcheck disable=SC2016  # expanded inside the root
  release=$(in_root "$root" sh -c '. /etc/os-release; echo "$PRETTY_NAME"')
  say "$release, $(in_root "$root" g++ --version | head -n1), libfuse $(in_root "$root" pkg-config --modversion fuse3), $(in_root "$root" containerd --version | cut -d' ' -f1,3)"
  if [[ $shell -eq 1 ]]; then
    in_root "$root" bash -c 'cd /src && exec bash -i' || true
    return 0
  fi
  if [[ -n $run ]]; then
    in_root "$root" bash -c "cd /src && $run"
    return
  fi
  local jobs
  jobs=$(nproc)
  local t0=$SECONDS
  in_root "$root" bash -c "cd /src && cmake --preset dev >/dev/null && nice -n 10 cmake --build --preset dev -j$jobs"
  say "dev build: $((SECONDS - t0)) s"
  t0=$SECONDS
  local rc=0
  in_root "$root" bash -c "cd /src && ctest --preset dev -j1 --timeout 900 -L '$labels'" || rc=$?
  say "tests ($labels): $((SECONDS - t0)) s"
  if [[ $package -eq 1 && $rc -eq 0 ]]; then
    t0=$SECONDS
    in_root "$root" bash -c "cd /src && ctest --preset dev -j1 --timeout 900 -L packaging" || rc=$?
    say "packaging tier: $((SECONDS - t0)) s"
  fi
  return "$rc"
}

[[ $(id -u) -eq 0 ]] || die "run as root (debootstrap, chroot, mounts)"
if [[ -n $inner ]]; then
  run_inner
  exit $?
fi
command -v debootstrap >/dev/null || die "debootstrap is not installed (scripts/install-deps.sh installs it)"
command -v unshare >/dev/null || die "unshare is not installed (util-linux)"
mkdir -p "$cache"
t_start=$SECONDS
exec 9>"$cache/lock"
flock -w 3600 9 || die "another trixie stage holds $cache/lock"
# A private mount namespace: nothing mounted here reaches the host's table,
# and what the trap misses goes with the namespace.
args=(--inner 1 --labels "$labels")
[[ $rebuild -eq 1 ]] && args+=(--rebuild-root)
[[ $package -eq 1 ]] && args+=(--package)
[[ $shell -eq 1 ]] && args+=(--shell)
[[ -n $run ]] && args+=(--run "$run")
rc=0
unshare --mount --propagation private -- "$0" "${args[@]}" || rc=$?
# A daemon that outlived the namespace's shell keeps the namespace; end it.
end_processes_in "$root"
say "stage: $((SECONDS - t_start)) s, exit $rc"
exit "$rc"
