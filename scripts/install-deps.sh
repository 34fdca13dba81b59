#!/usr/bin/env bash
# install-deps.sh: install everything urunc-bootfs needs to build, test,
# benchmark and run its demo, from the Debian release's own packages
# (Debian 12 bookworm or Debian 13 trixie, read from /etc/os-release).
# Usage: scripts/install-deps.sh [--groups LIST] [--list]   (as root)
#   --groups LIST  only these comma-separated groups (default: all):
#                  build, tests, boot (qemu for the e2e tier), analysis
#                  (clang 19, fuzzers, tidy), packaging, bench, ci (debootstrap
#                  for the Debian 13 stage of scripts/test.sh)
#   --list         print the packages, one a line, and install nothing
set -euo pipefail

groups=build,tests,boot,analysis,packaging,bench,ci
list=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --groups) groups=$2; shift 2 ;;
    --list) list=1; shift ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install-deps.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
# shellcheck disable=SC1091  # the running system's file
release=$(. /etc/os-release && echo "${ID:-}:${VERSION_CODENAME:-}")
case $release in
  debian:bookworm | debian:trixie) ;;
  *) echo "install-deps.sh: $release is not Debian 12 (bookworm) or 13 (trixie); trying the same package names" >&2 ;;
esac

# The package names are the same on bookworm and trixie (clang 19 is in
# both: bookworm has it as a second version, trixie as its default).
declare -A group_packages=(
  [build]="build-essential cmake ninja-build pkg-config git
    libfuse3-dev fuse3 libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
    libdevmapper-dev nlohmann-json3-dev libspdlog-dev libgtest-dev libgmock-dev libcli11-dev"
  # a private containerd, images, snapshotters; autotools build mkfs.erofs
  # 1.8 for the erofs snapshotter (scripts/fetch-containerd.sh); jq edits
  # config.json in the runc wrapper of the hook test
  [tests]="containerd golang-github-containerd-containerd-dev btrfs-progs e2fsprogs xfsprogs
    busybox-static cpio gzip util-linux kmod python3 procps
    autoconf automake libtool jq"
  # a real kernel boot
  [boot]="qemu-system-x86"
  [analysis]="clang-19 clang-tidy-19 clang-format libclang-rt-19-dev"
  [packaging]="lintian bash-completion dpkg-dev fakeroot man-db groff-base bsdextrautils"
  # benchmark plot
  [bench]="gnuplot-nox"
  [ci]="debootstrap debian-archive-keyring"
)
packages=()
IFS=, read -ra wanted <<<"$groups"
for group in "${wanted[@]}"; do
  [[ -n ${group_packages[$group]:-} ]] || { echo "install-deps.sh: unknown group $group (see --help)" >&2; exit 2; }
  # shellcheck disable=SC2206  # a word list
  packages+=(${group_packages[$group]})
done
if [[ $list -eq 1 ]]; then
  printf '%s\n' "${packages[@]}"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps.sh: run as root (apt-get install)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Another apt on the machine (a second build) holds the lock for a while.
apt_opts=(-o DPkg::Lock::Timeout=600)
apt-get "${apt_opts[@]}" update -qq
apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
echo "install-deps.sh: ${#packages[@]} packages present (${release#debian:}: $groups)"
