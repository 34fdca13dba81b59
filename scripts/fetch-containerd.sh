#!/usr/bin/env bash
# fetch-containerd.sh: fetch later containerd releases (and erofs-utils) from
# later Debian releases into a cache, without touching this machine's apt
# sources, for the containerd matrix of the test tiers.
#
# Usage: scripts/fetch-containerd.sh [--erofs-utils] [--api-protos] LINE...
#   LINE           1.7 (Debian trixie's containerd) or 2.x (sid's)
#   --erofs-utils  also build mkfs.erofs from Debian trixie's erofs-utils
#                  source package (the erofs snapshotter's differ needs 1.8 or
#                  later; Debian 12 ships 1.5, trixie's binary needs a newer
#                  libc than Debian 12's)
#   --api-protos   also fetch sid's golang-github-containerd-containerd-api-dev
#                  (the containerd 2.x API .proto files; only they are kept)
#
# For each LINE it prints "LINE=<version> <dir>" where <dir>/usr/bin holds
# containerd, ctr and containerd-shim-runc-v2; with --erofs-utils also
# "MKFS_EROFS=<path>", with --api-protos "API_PROTOS=<dir>" (the directory
# holding services/ and types/). Everything lives under
# ${URUNC_BOOTFS_CACHE:-/var/cache/urunc-bootfs}: containerd/<version>/,
# erofs-utils/<version>/ and containerd-api/<version>/. A line already cached is not downloaded again
# (the newest cached version of that line is used); apt's package lists
# are kept under the cache's apt/ directory and refreshed at most once a day.
# The binaries need libc6 >= 2.34, which Debian 12 has.
# Exit status: 0 when everything asked for is in the cache, 1 otherwise
# (the reason on stderr), 2 on bad usage.
set -euo pipefail

readonly PROG=${0##*/}
readonly CACHE=${URUNC_BOOTFS_CACHE:-/var/cache/urunc-bootfs}
readonly MIRROR=${URUNC_BOOTFS_DEBIAN_MIRROR:-http://deb.debian.org/debian}

die() {
  printf '%s: %s\n' "$PROG" "$*" >&2
  exit 1
}

usage() { sed -n '5,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

erofs=0
api=0
lines=()
for arg in "$@"; do
  case $arg in
    --erofs-utils) erofs=1 ;;
    --api-protos) api=1 ;;
    1.7 | 2.x) lines+=("$arg") ;;
    -h | --help) usage; exit 0 ;;
    *) printf '%s: unknown argument: %s\n' "$PROG" "$arg" >&2; usage >&2; exit 2 ;;
  esac
done
((${#lines[@]} || erofs || api)) || { usage >&2; exit 2; }

suite_of() {
  case $1 in
    1.7) echo trixie ;;
    2.x) echo sid ;;
  esac
}

# The newest cached version of a line, e.g. "1.7" -> "1.7.24~ds1-6" (empty if none).
cached_version() {
  local prefix=$1 d best=""
  for d in "$CACHE"/containerd/"$prefix".*; do
    [[ -x $d/usr/bin/containerd && -x $d/usr/bin/ctr ]] || continue
    best=${d##*/}
  done
  printf '%s' "$best"
}

# A private apt configuration: our own source list, state and cache; the
# machine's /etc/apt/sources.list* are never read or written.
apt_dir=$CACHE/apt
apt_opts=(
  -o "Dir::Etc::SourceList=$apt_dir/sources.list"
  -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$apt_dir/lists"
  -o "Dir::Cache=$apt_dir/cache"
  -o "APT::Get::List-Cleanup=0"
  -o "Debug::NoLocking=1"
  -o "APT::Sandbox::User=root"
)
apt_ready=0
apt_prepare() {
  ((apt_ready)) && return 0
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  {
    printf 'deb %s trixie main\n' "$MIRROR"
    printf 'deb %s sid main\n' "$MIRROR"
    printf 'deb-src %s trixie main\n' "$MIRROR"
  } >"$apt_dir/sources.list"
  local stamp=$apt_dir/lists/.updated
  if [[ ! -f $stamp || -n $(find "$stamp" -mmin +1440 2>/dev/null) ]]; then
    apt-get "${apt_opts[@]}" -qq update >&2 || die "apt-get update (private lists) failed"
    touch "$stamp"
  fi
  apt_ready=1
}

# Candidate version of PACKAGE in SUITE from the private lists.
suite_version() {
  local pkg=$1 suite=$2
  apt-cache "${apt_opts[@]}" madison "$pkg" 2>/dev/null |
    awk -F'|' -v s="$suite" '$3 ~ ("/" s "/") || $3 ~ (" " s "/") {gsub(/ /, "", $2); print $2; exit}'
}

fetch_line() {
  local line=$1 suite ver prefix dir tmp
  prefix=${line%.x}
  [[ $line == 2.x ]] && prefix=2
  ver=$(cached_version "$prefix")
  if [[ -n $ver ]]; then
    printf '%s=%s %s\n' "$line" "$ver" "$CACHE/containerd/$ver"
    return 0
  fi
  suite=$(suite_of "$line")
  apt_prepare
  ver=$(suite_version containerd "$suite")
  [[ -n $ver ]] || die "no containerd in Debian $suite's package lists"
  [[ $ver == "$prefix".* ]] || die "Debian $suite's containerd is $ver, not $line"
  dir=$CACHE/containerd/$ver
  tmp=$(mktemp -d "$CACHE/containerd/.fetch.XXXXXX")
  trap 'rm -rf -- "$tmp"' RETURN
  (cd "$tmp" && apt-get "${apt_opts[@]}" -qq download "containerd=$ver" >&2) ||
    die "apt-get download containerd=$ver failed"
  dpkg -x "$tmp"/containerd_*.deb "$tmp/root"
  [[ -x $tmp/root/usr/bin/containerd && -x $tmp/root/usr/bin/ctr ]] ||
    die "containerd $ver's package has no usr/bin/containerd or ctr"
  "$tmp/root/usr/bin/containerd" --version >/dev/null 2>&1 ||
    die "containerd $ver does not run here: $("$tmp/root/usr/bin/containerd" --version 2>&1 | head -n1)"
  # Another fetch of the same version may have finished first: its copy wins.
  mv -T -- "$tmp/root" "$dir" 2>/dev/null || [[ -x $dir/usr/bin/containerd ]] ||
    die "cannot move containerd $ver into $dir"
  printf '%s=%s %s\n' "$line" "$ver" "$dir"
}

# erofs-utils from trixie's source package, built against this machine's
# libraries (only the mkfs.erofs binary is kept).
fetch_erofs_utils() {
  local d ver dir tmp
  for d in "$CACHE"/erofs-utils/*; do
    if [[ -x $d/mkfs.erofs ]]; then
      printf 'MKFS_EROFS=%s\n' "$d/mkfs.erofs"
      return 0
    fi
  done
  for tool in gcc make autoreconf libtoolize pkg-config dpkg-source; do
    command -v "$tool" >/dev/null ||
      die "building erofs-utils needs $tool (apt-get install build-essential autoconf automake libtool pkg-config dpkg-dev)"
  done
  apt_prepare
  mkdir -p "$CACHE/erofs-utils"
  tmp=$(mktemp -d "$CACHE/erofs-utils/.build.XXXXXX")
  trap 'rm -rf -- "$tmp"' RETURN
  (cd "$tmp" && apt-get "${apt_opts[@]}" -qq source --download-only -t trixie erofs-utils >&2) ||
    die "apt-get source erofs-utils (trixie) failed"
  (cd "$tmp" && dpkg-source -x --no-check ./*.dsc src >/dev/null) || die "dpkg-source -x erofs-utils failed"
  ver=$(cd "$tmp/src" && dpkg-parsechangelog -S Version 2>/dev/null || true)
  [[ -n $ver ]] || ver=unknown
  (
    cd "$tmp/src"
    ./autogen.sh >/dev/null 2>&1 || autoreconf -fi >/dev/null 2>&1
    ./configure --disable-fuse --without-selinux >/dev/null
    make -j"$(nproc)" -C lib >/dev/null
    make -j"$(nproc)" -C mkfs >/dev/null
  ) >&2 || die "building erofs-utils $ver failed"
  dir=$CACHE/erofs-utils/$ver
  mkdir -p "$dir"
  install -m 0755 "$tmp/src/mkfs/mkfs.erofs" "$dir/mkfs.erofs"
  "$dir/mkfs.erofs" --version >/dev/null 2>&1 || die "the built mkfs.erofs does not run"
  printf 'MKFS_EROFS=%s\n' "$dir/mkfs.erofs"
}

# The 2.x API protos from sid's Go source package (only .proto files kept).
fetch_api_protos() {
  local d ver tmp rel=usr/share/gocode/src/github.com/containerd/containerd/api
  for d in "$CACHE"/containerd-api/*; do
    if [[ -d $d/$rel/services ]]; then
      printf 'API_PROTOS=%s\n' "$d/$rel"
      return 0
    fi
  done
  apt_prepare
  ver=$(suite_version golang-github-containerd-containerd-api-dev sid)
  [[ -n $ver ]] || die "no golang-github-containerd-containerd-api-dev in Debian sid's package lists"
  mkdir -p "$CACHE/containerd-api"
  tmp=$(mktemp -d "$CACHE/containerd-api/.fetch.XXXXXX")
  trap 'rm -rf -- "$tmp"' RETURN
  (cd "$tmp" && apt-get "${apt_opts[@]}" -qq download "golang-github-containerd-containerd-api-dev=$ver" >&2) ||
    die "apt-get download golang-github-containerd-containerd-api-dev=$ver failed"
  dpkg -x "$tmp"/golang-github-containerd-containerd-api-dev_*.deb "$tmp/root"
  [[ -d $tmp/root/$rel/services ]] || die "the api-dev package $ver has no $rel/services"
  find "$tmp/root" -type f ! -name '*.proto' -delete
  mv -T -- "$tmp/root" "$CACHE/containerd-api/$ver"
  printf 'API_PROTOS=%s\n' "$CACHE/containerd-api/$ver/$rel"
}

[[ $(id -u) -eq 0 ]] || [[ -w $CACHE ]] || die "cannot write the cache $CACHE (run as root)"
mkdir -p "$CACHE/containerd"
for line in "${lines[@]}"; do
  fetch_line "$line"
done
((erofs)) && fetch_erofs_utils
((api)) && fetch_api_protos
exit 0
