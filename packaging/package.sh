#!/usr/bin/env bash
# package.sh: build the Debian package of urunc-bootfs.
# Usage: packaging/package.sh [--build-dir DIR] [--no-build] [--output DIR] [-j N]
#   default    configure build/package (Release, Debian's hardening flags from
#              dpkg-buildflags, no tests), build, and write
#              build/urunc-bootfs_<version>-<rev>+deb<N>_<arch>.deb, for the
#              Debian release N it is built on (Depends from dpkg-shlibdeps)
#   --build-dir DIR  package this build tree instead (built with its own
#              flags; configured first if it has no CMakeCache.txt)
#   --no-build package DIR as it is (cpack only; what the packaging test does)
#   --output DIR     where to put the .deb (default: build/)
# Prints the path of the .deb on its last line. Needs dpkg-dev (dpkg-shlibdeps).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build_dir=""
output="$root/build"
do_build=1
jobs=$(nproc)
while [[ $# -gt 0 ]]; do
  case $1 in
    --build-dir) build_dir=$2; shift 2 ;;
    --output) output=$2; shift 2 ;;
    --no-build) do_build=0; shift ;;
    -j) jobs=$2; shift 2 ;;
    -j*) jobs=${1#-j}; shift ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "package.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
for tool in cmake cpack dpkg-shlibdeps dpkg-buildflags gzip; do
  command -v "$tool" >/dev/null || { echo "package.sh: $tool not found (apt-get install cmake dpkg-dev gzip)" >&2; exit 1; }
done

if [[ -z $build_dir ]]; then
  build_dir="$root/build/package"
  if [[ $do_build -eq 1 ]]; then
    # Debian's build flags with every hardening feature: -O2, fortify,
    # stack protector, PIE, relro, bindnow.
    export DEB_BUILD_MAINT_OPTIONS=hardening=+all
    cxxflags="$(dpkg-buildflags --get CXXFLAGS) $(dpkg-buildflags --get CPPFLAGS)"
    ldflags=$(dpkg-buildflags --get LDFLAGS)
    cmake -G Ninja -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=None \
      -DCMAKE_CXX_FLAGS="$cxxflags" -DCMAKE_EXE_LINKER_FLAGS="$ldflags" \
      -DURUNC_BOOTFS_BUILD_TESTS=OFF -DURUNC_BOOTFS_BUILD_BENCH=OFF >/dev/null
  fi
fi
build_dir=$(cd "$build_dir" 2>/dev/null && pwd) || { echo "package.sh: no build directory $build_dir" >&2; exit 3; }
if [[ $do_build -eq 1 ]]; then
  [[ -f $build_dir/CMakeCache.txt ]] || cmake -G Ninja -S "$root" -B "$build_dir" >/dev/null
  cmake --build "$build_dir" -j"$jobs" --target urunc-bootfs-package-contents
fi
[[ -f $build_dir/CPackConfig.cmake ]] || { echo "package.sh: $build_dir is not a configured build tree" >&2; exit 3; }

# cpack only installs what the tree built: it never rebuilds anything.
staging="$build_dir/cpack"
rm -rf "$staging"
cpack --config "$build_dir/CPackConfig.cmake" -G DEB -B "$staging" >&2
debs=("$staging"/*.deb)
[[ -f ${debs[0]} ]] || { echo "package.sh: cpack made no .deb" >&2; exit 1; }
mkdir -p "$output"
deb="$output/$(basename "${debs[0]}")"
mv -f "${debs[0]}" "$deb"
echo "$deb"
