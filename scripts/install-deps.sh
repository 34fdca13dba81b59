#!/usr/bin/env bash
# install-deps.sh: install everything urunc-bootfs needs to build, test,
# benchmark and run its demo, from Debian 12's own packages.
# Usage: scripts/install-deps.sh        (as root)
set -euo pipefail

if [[ ${1:-} == --help || ${1:-} == -h ]]; then
  sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps.sh: run as root (apt-get install)" >&2
  exit 1
fi

packages=(
  # build
  build-essential cmake ninja-build pkg-config git
  libfuse3-dev fuse3 libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libdevmapper-dev nlohmann-json3-dev libspdlog-dev libgtest-dev libgmock-dev libcli11-dev
  # tests: a private containerd, images, snapshotters, a real kernel boot
  containerd golang-github-containerd-containerd-dev btrfs-progs e2fsprogs xfsprogs
  busybox-static cpio gzip qemu-system-x86 util-linux kmod
  # analysis
  clang-19 clang-tidy-19 clang-format libclang-rt-19-dev
  # packaging
  lintian bash-completion dpkg-dev fakeroot man-db groff-base
  # benchmark plot
  gnuplot-nox
)

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
echo "install-deps.sh: ${#packages[@]} packages present"
