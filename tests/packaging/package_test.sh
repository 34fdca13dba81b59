#!/usr/bin/env bash
# package_test.sh STEP BUILD_DIR SOURCE_DIR WORK_DIR: the packaging tier.
#
# Steps (each one ctest test; `build` is the fixture the others need):
#   build       packaging/package.sh --no-build on BUILD_DIR -> WORK_DIR/*.deb,
#               then dpkg -x into WORK_DIR/root
#   contents    control fields (Depends: fuse3, the libraries) and the files
#   binary      the extracted binary's --version, --help and every verb's --help
#   man         man -l renders without warnings and covers every verb, option,
#               exit code and environment variable
#   completion  the bash completion completes verbs and options
#   lintian     no errors (warnings and infos printed)
#   mount       installs the package for real (apt-get install ./deb), mounts
#               with `mount -t fuse.urunc-bootfs` over a directory, reads,
#               unmounts with `urunc-bootfs umount`, plain `umount` and
#               `umount -l`, checks the daemon releases it and the state file goes,
#               then purges the package, even on failure
#   clean       removes WORK_DIR
# Exit 77 = skipped (the reason on stdout).
set -euo pipefail

step=$1
build_dir=$2
source_dir=$3
work=$4
deb_glob="$work/urunc-bootfs_*.deb"
root="$work/root"

say() { printf '%s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
skip() { printf 'SKIP: %s\n' "$*"; exit 77; }
need() { command -v "$1" >/dev/null || fail "$1 is not installed (${2:-scripts/install-deps.sh installs it})"; }
the_deb() {
  # shellcheck disable=SC2206  # the glob is meant to expand
  local debs=($deb_glob)
  [[ -f ${debs[0]} ]] || fail "no package in $work (the build step failed?)"
  printf '%s\n' "${debs[0]}"
}

step_build() {
  need cpack
  need dpkg-shlibdeps dpkg-dev
  rm -rf "$work"
  mkdir -p "$work"
  local deb
  deb=$("$source_dir/packaging/package.sh" --build-dir "$build_dir" --no-build --output "$work" | tail -n1)
  [[ -f $deb ]] || fail "package.sh printed no package"
  dpkg-deb -x "$deb" "$root"
  say "built $(basename "$deb") ($(stat -c %s "$deb") bytes), extracted into $root"
}

step_contents() {
  local deb
  deb=$(the_deb)
  local depends
  depends=$(dpkg-deb -f "$deb" Depends)
  say "Depends: $depends"
  # Library package names are the release's own (libfuse3-3 on Debian 12,
  # libfuse3-4 and the t64 names on Debian 13), from dpkg-shlibdeps.
  for dep in fuse3 libfuse3- libdevmapper1.02.1 libgrpc++ libprotobuf libc6; do
    [[ $depends == *"$dep"* ]] || fail "Depends lacks $dep"
  done
  # Every library the binary needs, by the package that holds it here.
  local soname path pkg checked=0
  for soname in $(objdump -p "$root/usr/bin/urunc-bootfs" | awk '$1 == "NEEDED" { print $2 }'); do
    path=$(ldconfig -p | awk -v l="$soname" '!found && $1 == l { print $NF; found = 1 }')  # no early exit: pipefail
    [[ -n $path ]] || fail "$soname (needed by the binary) is not on this system"
    # dpkg knows the path the package ships: /lib/... or /usr/lib/...
    pkg=$({ dpkg -S "$path" || dpkg -S "/usr${path#/usr}" || dpkg -S "${path#/usr}"; } 2>/dev/null | sed -n 1p | cut -d: -f1)
    [[ -n $pkg ]] || fail "no package holds $path"
    # shlibs may name a virtual package the library's package provides
    # (libspdlog1.10 provides libspdlog1.10-fmt9).
    local names found=0
    names="$pkg $(dpkg-query -W -f='${Provides}' "$pkg" | sed 's/([^)]*)//g; s/,/ /g')"
    for name in $names; do
      [[ " ${depends//,/ } " == *" $name "* ]] && found=1
    done
    [[ $found -eq 1 ]] || fail "Depends names neither $pkg nor what it provides ($soname here)"
    checked=$((checked + 1))
  done
  say "Depends names the package of each of the $checked libraries the binary needs"
  [[ $(dpkg-deb -f "$deb" Package) == urunc-bootfs ]] || fail "Package is not urunc-bootfs"
  local version
  version=$(dpkg-deb -f "$deb" Version)
  [[ $version == *-* ]] || fail "Version has no Debian revision"
  local release
  # shellcheck disable=SC1091  # the running system's file
  release=$(. /etc/os-release && [[ ${ID:-} == debian && ${VERSION_ID:-} =~ ^[0-9]+$ ]] && echo "$VERSION_ID") || true
  if [[ -n $release ]]; then
    [[ $version == *+deb$release ]] || fail "Version $version does not name Debian $release (+deb$release)"
    [[ $(basename "$deb") == urunc-bootfs_*+deb${release}_*.deb ]] || fail "$(basename "$deb") does not name Debian $release"
    say "Version $version: for Debian $release"
  fi
  for file in usr/bin/urunc-bootfs usr/share/man/man8/urunc-bootfs.8.gz \
      usr/share/bash-completion/completions/urunc-bootfs usr/share/doc/urunc-bootfs/copyright \
      usr/share/doc/urunc-bootfs/changelog.Debian.gz usr/share/doc/urunc-bootfs/examples/config.json; do
    [[ -f $root/$file ]] || fail "missing /$file"
  done
  local helper=mount.fuse.urunc-bootfs
  [[ $(readlink "$root/usr/sbin/$helper") == ../bin/urunc-bootfs ]] || fail "/usr/sbin/$helper is not a link to ../bin/urunc-bootfs"
  [[ -f $root/usr/share/man/man8/$helper.8.gz ]] || fail "no man page for $helper"
  "$root/usr/bin/urunc-bootfs" --version >/dev/null || fail "the extracted binary does not run"
  if [[ -n $(find "$root" -perm /022 ! -type l) ]]; then fail "group/world-writable files: $(find "$root" -perm /022 ! -type l)"; fi
  python3 -m json.tool "$root/usr/share/doc/urunc-bootfs/examples/config.json" >/dev/null || fail "the example config is not JSON"
  URUNC_BOOTFS_CONFIG="$root/usr/share/doc/urunc-bootfs/examples/config.json" \
    "$root/usr/bin/urunc-bootfs" config >/dev/null || fail "urunc-bootfs config rejects the example config"
  say "control fields and $(dpkg-deb -c "$deb" | wc -l) entries ok"
}

verbs=(mount umount status list gc hook config)

step_binary() {
  local bin="$root/usr/bin/urunc-bootfs" out version
  version=$("$bin" --version) || fail "--version failed"
  say "--version: $version"
  [[ $version == "urunc-bootfs "* ]] || fail "--version says \"$version\""
  local deb_version
  deb_version=$(dpkg-deb -f "$(the_deb)" Version)
  [[ ${deb_version%-*} == "${version#urunc-bootfs }" ]] || fail "--version $version but package $deb_version"
  out=$("$bin" --help) || fail "--help failed"
  for verb in "${verbs[@]}"; do
    grep -qE "^  $verb( |$)" <<<"$out" || fail "--help does not list $verb"
    "$bin" "$verb" --help >/dev/null || fail "$verb --help failed"
  done
  local rc=0
  "$bin" no-such-verb >/dev/null 2>&1 || rc=$?
  [[ $rc -eq 2 ]] || fail "an unknown verb exits $rc, not 2"
  say "--help lists ${verbs[*]}; every verb's --help works; usage errors exit 2"
}

step_man() {
  need man man-db
  local page="$root/usr/share/man/man8/urunc-bootfs.8.gz" text warnings
  warnings=$(MANWIDTH=80 man --warnings -l "$page" 2>&1 >/dev/null)
  [[ -z $warnings ]] || fail "man --warnings: $warnings"
  text=$(MANWIDTH=80 man -l "$page" 2>/dev/null | col -b)
  [[ -n $text ]] || fail "the page renders empty"
  local bin="$root/usr/bin/urunc-bootfs" missing=()
  for verb in "${verbs[@]}"; do
    grep -qE "^   $verb( |$)" <<<"$text" || missing+=("verb $verb")
    for opt in $("$bin" "$verb" --help | grep -oE -- '--[a-z][a-z-]+' | sort -u); do
      grep -qF -- "$opt" <<<"$text" || missing+=("$verb $opt")
    done
  done
  for opt in $("$bin" --help | grep -oE -- '--[a-z][a-z-]+' | sort -u); do
    grep -qF -- "$opt" <<<"$text" || missing+=("global $opt")
  done
  local exit_status
  exit_status=$(sed -n '/^EXIT STATUS/,/^ENVIRONMENT/p' <<<"$text")
  for code in 0 1 2 3 4 5 6 7; do
    grep -qE "^       $code " <<<"$exit_status" || missing+=("exit code $code")
  done
  # Every environment variable the code reads.
  for var in $(grep -rhoE 'getenv\("[A-Z_]+"\)|envname\("[A-Z_]+"\)|k[A-Za-z]*Env = "[A-Z_]+"' \
      "$source_dir/cli" "$source_dir/common" "$source_dir/fs" "$source_dir/snapshot" | grep -oE '"[A-Z_]+"' | tr -d '"' | sort -u); do
    grep -qF "$var" <<<"$text" || missing+=("environment $var")
  done
  for file in /etc/urunc-bootfs/config.json /run/urunc-bootfs/mounts /sbin/mount.fuse.urunc-bootfs \
      /dev/mapper/control; do
    grep -qF "$file" <<<"$text" || missing+=("file $file")
  done
  for form in 'dir:/PATH' 'containerd:[NS/]ID' 'container=' 'snapshot:KEY' 'parent:KEY' 'bundle:/PATH'; do
    grep -qF -- "$form" <<<"$text" || missing+=("source form $form")
  done
  [[ ${#missing[@]} -eq 0 ]] || fail "the man page lacks: ${missing[*]}"
  say "man -l: no warnings, $(wc -l <<<"$text") lines, every verb, option, exit code, variable and source form"
}

step_completion() {
  local lib=/usr/share/bash-completion/bash_completion
  [[ -f $lib ]] || fail "bash-completion is not installed (scripts/install-deps.sh installs it)"
  local file="$root/usr/share/bash-completion/completions/urunc-bootfs"
  bash -n "$file" || fail "syntax error in $file"
  complete_line() {
    # shellcheck disable=SC2016
    bash -c 'source "$1"; source "$2"; shift 2
      COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
      _urunc_bootfs urunc-bootfs "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
      printf "%s\n" "${COMPREPLY[@]}"' _ "$lib" "$file" "$@"
  }
  [[ $(complete_line urunc-bootfs mo) == mount ]] || fail "'urunc-bootfs mo' does not complete to mount"
  [[ $(complete_line urunc-bootfs co) == config ]] || fail "'urunc-bootfs co' does not complete to config"
  [[ $(complete_line urunc-bootfs mount --pass) == --passthrough ]] || fail "mount --pass"
  [[ $(complete_line urunc-bootfs mount --passthrough o | sort | tr '\n' ' ') == "off on " ]] || fail "--passthrough values"
  [[ $(complete_line urunc-bootfs hook c) == create-runtime ]] || fail "hook c"
  say "completion: verbs, options and values complete"
}

step_lintian() {
  need lintian
  local deb out rc=0
  deb=$(the_deb)
  # The verdict from a run without --show-overrides: with it, lintian
  # (2.116) fails on an error-level tag even when it is overridden (the
  # thin client's statically-linked-binary).
  lintian --fail-on error "$deb" >/dev/null 2>&1 || rc=$?
  out=$(lintian --display-info --pedantic --show-overrides "$deb" 2>&1 || true)
  out=$(grep -v '^running with root privileges' <<<"$out" || true)
  say "lintian $(lintian --version | awk '{print $2}') on $(basename "$deb"):"
  say "${out:-(nothing to report)}"
  if grep -q '^E: ' <<<"$out" || [[ $rc -ne 0 ]]; then fail "lintian reports errors (exit $rc)"; fi
  say "lintian: $(grep -c '^W: ' <<<"$out" || true) warning(s), $(grep -c '^I: ' <<<"$out" || true) info(s), $(grep -c '^P: ' <<<"$out" || true) pedantic, $(grep -c '^O: ' <<<"$out" || true) overridden, no errors"
}

# ------------------------------------------------------------------- mount

marker=/var/lib/urunc-bootfs-test/installed-by-package-test
installed=0
mnt=""

cleanup_mount() {
  local rc=$?
  set +e
  if [[ -n $mnt ]] && findmnt -rn --mountpoint "$mnt" >/dev/null 2>&1; then
    urunc-bootfs umount --lazy "$mnt" >/dev/null 2>&1 || umount -l "$mnt" 2>/dev/null
  fi
  # The host daemon the first mount started for the private state dir.
  local dpid
  dpid=$(cat "${URUNC_BOOTFS_STATE_DIR:-/nonexistent}/daemon.pid" 2>/dev/null)
  if [[ -n $dpid ]] && kill -TERM "$dpid" 2>/dev/null; then
    for _ in $(seq 100); do kill -0 "$dpid" 2>/dev/null || break; sleep 0.1; done
  fi
  if [[ $installed -eq 1 ]]; then
    apt-get purge -y -qq -o DPkg::Lock::Timeout=300 urunc-bootfs >/dev/null 2>&1 ||
      dpkg --purge urunc-bootfs >/dev/null 2>&1
    if dpkg-query -W -f='${Status}' urunc-bootfs 2>/dev/null | grep -q 'installed'; then
      echo "FAIL: could not remove the package urunc-bootfs" >&2
      rc=1
    else
      rm -f "$marker"; rmdir "$(dirname "$marker")" 2>/dev/null
      echo "removed the package"
    fi
  fi
  exit $rc
}

state_files() { find "$URUNC_BOOTFS_STATE_DIR/mounts" -name '*.json' 2>/dev/null | wc -l; }
daemon_pid() { urunc-bootfs status --json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["daemon"]["pid"])'; }
is_mounted() { findmnt -rn --mountpoint "$1" >/dev/null 2>&1; }
# FUSE connections a process holds (the host daemon holds none once its
# mounts are released; it stays for the next one).
fuse_conns() { find "/proc/$1/fd" -lname /dev/fuse 2>/dev/null | wc -l; }
wait_gone() {  # PID MOUNTPOINT: daemon serves nothing, nothing mounted, no state file (10 s)
  local i
  for ((i = 0; i < 100; i++)); do
    if [[ $(fuse_conns "$1") -eq 0 ]] && ! is_mounted "$2" && [[ $(state_files) -eq 0 ]]; then return 0; fi
    sleep 0.1
  done
  return 1
}
alive() { [[ -d /proc/$1 ]] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }

step_mount() {
  [[ $(id -u) -eq 0 ]] || skip "needs root (installs the package, mounts FUSE)"
  [[ -e /dev/fuse ]] || skip "no /dev/fuse"
  need apt-get
  local deb
  deb=$(the_deb)
  if dpkg-query -W -f='${Status}' urunc-bootfs 2>/dev/null | grep -q 'installed'; then
    [[ -f $marker ]] || skip "urunc-bootfs $(dpkg-query -W -f='${Version}' urunc-bootfs) is installed on this host; not replacing it"
    # Left by an earlier run of this test that was killed: ours to remove.
    dpkg --purge urunc-bootfs >/dev/null
  fi
  trap cleanup_mount EXIT
  mkdir -p "$(dirname "$marker")"
  : >"$marker"
  installed=1
  # apt-get resolves the dependencies (all present after install-deps.sh)
  # and waits for the dpkg lock instead of failing on it.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o DPkg::Lock::Timeout=300 "$deb" >"$work/apt.log" 2>&1 || { cat "$work/apt.log"; fail "apt-get install $deb"; }
  say "installed $(dpkg-query -W -f='${Package} ${Version}' urunc-bootfs)"
  [[ -x /sbin/mount.fuse.urunc-bootfs ]] || fail "mount(8) cannot find /sbin/mount.fuse.urunc-bootfs"
  [[ $(command -v urunc-bootfs) == /usr/bin/urunc-bootfs ]] || fail "urunc-bootfs is not /usr/bin/urunc-bootfs on PATH"
  [[ $(man -w urunc-bootfs) == /usr/share/man/man8/urunc-bootfs.8.gz ]] || fail "man urunc-bootfs does not find the page"
  urunc-bootfs --version

  # A rootfs whose /urunc.json names the kernel; a private state dir and
  # config (mount(8) passes the environment on to the helper).
  local t="$work/mount"
  rm -rf "$t"
  mkdir -p "$t/rootfs/boot" "$t/mnt" "$t/state"
  mnt="$t/mnt"
  export URUNC_BOOTFS_STATE_DIR="$t/state"
  export URUNC_BOOTFS_CONFIG="$t/config.json"
  printf '{"threads": 2, "allowed_mount_options": ["kernel", "initrd", "threads"]}\n' >"$URUNC_BOOTFS_CONFIG"
  head -c 300000 /dev/urandom >"$t/rootfs/boot/vmlinuz"
  printf '{"com.urunc.unikernel.binary": "%s", "com.urunc.unikernel.hypervisor": "%s"}\n' \
    "$(printf /boot/vmlinuz | base64)" "$(printf qemu | base64)" >"$t/rootfs/urunc.json"
  urunc-bootfs config | grep -E '^threads +2 ' >/dev/null || fail "urunc-bootfs config does not show threads 2 from the file"

  check_served() {
    is_mounted "$mnt" || fail "nothing mounted at $mnt"
    [[ $(findmnt -rn -o FSTYPE --mountpoint "$mnt") == fuse.urunc-bootfs ]] || fail "$mnt is not fuse.urunc-bootfs"
    cmp "$t/rootfs/boot/vmlinuz" "$mnt/boot/vmlinuz" || fail "the kernel read through the mount differs"
    cmp "$t/rootfs/urunc.json" "$mnt/urunc.json" || fail "urunc.json read through the mount differs"
    [[ $(state_files) -eq 1 ]] || fail "expected one state file, found $(state_files)"
    urunc-bootfs status "$mnt" | grep -q "directory $t/rootfs" || fail "status does not name the directory"
  }

  # 1. mount -t fuse.urunc-bootfs /PATH, then urunc-bootfs umount.
  mount -t fuse.urunc-bootfs "$t/rootfs" "$mnt" -o threads=2
  check_served
  local pid
  pid=$(daemon_pid "$mnt")
  urunc-bootfs umount "$mnt"
  [[ $(fuse_conns "$pid") -eq 0 ]] || fail "the daemon $pid still serves after urunc-bootfs umount"
  ! is_mounted "$mnt" || fail "still mounted after urunc-bootfs umount"
  [[ $(state_files) -eq 0 ]] || fail "a state file is left after urunc-bootfs umount"
  say "mount -t fuse.urunc-bootfs $t/rootfs + urunc-bootfs umount: served, read, released"

  # 2. dir: form with kernel=, then plain umount(8): it only unmounts; the
  #    daemon notices, releases, removes its state file and exits by itself.
  mount -t fuse.urunc-bootfs "dir:$t/rootfs" "$mnt" -o kernel=/boot/vmlinuz,ro,nosuid,nodev
  check_served
  pid=$(daemon_pid "$mnt")
  umount "$mnt"
  ! is_mounted "$mnt" || fail "still mounted after umount"
  wait_gone "$pid" "$mnt" || fail "after umount: daemon connections=$(fuse_conns "$pid"), state files=$(state_files)"
  say "mount -t fuse.urunc-bootfs dir:... + umount: the daemon released the mount and its state"

  # 3. The same with umount -l.
  mount -t fuse.urunc-bootfs "$t/rootfs" "$mnt"
  check_served
  pid=$(daemon_pid "$mnt")
  umount -l "$mnt"
  wait_gone "$pid" "$mnt" || fail "after umount -l: daemon connections=$(fuse_conns "$pid"), mounted=$(is_mounted "$mnt" && echo yes || echo no), state files=$(state_files)"
  say "mount + umount -l: the daemon released the mount and its state"

  # 4. Refusals leave nothing behind, with the documented exit codes.
  local rc=0
  mount -t fuse.urunc-bootfs "$t/rootfs" "$mnt" -o passthrough=off 2>"$t/err" || rc=$?
  [[ $rc -eq 5 ]] || fail "an option the config does not allow: mount exited $rc, not 5 ($(cat "$t/err"))"
  grep -q 'not allowed' "$t/err" || fail "no reason given: $(cat "$t/err")"
  rc=0
  mount -t fuse.urunc-bootfs "$t/rootfs" "$mnt" -o noexec 2>"$t/err" || rc=$?
  [[ $rc -eq 2 ]] || fail "-o noexec: mount exited $rc, not 2"
  rc=0
  mount -t fuse.urunc-bootfs "$t/no-such-dir" "$mnt" 2>"$t/err" || rc=$?
  [[ $rc -eq 3 ]] || fail "a missing directory: mount exited $rc, not 3 ($(cat "$t/err"))"
  ! is_mounted "$mnt" || fail "a refused mount left something mounted"
  [[ $(state_files) -eq 0 ]] || fail "a refused mount left a state file"
  [[ $(mount -f -v -t fuse.urunc-bootfs "containerd:default/vm1" "$mnt" -o kernel=/k 2>&1) == *"urunc-bootfs mount --container vm1"*"--namespace default"* ]] ||
    fail "mount -f -v does not print the equivalent command"
  say "refusals: not allowed -> 5, noexec -> 2, missing source -> 3, nothing left; -f -v prints the command"
}

case $step in
  build) step_build ;;
  contents) step_contents ;;
  binary) step_binary ;;
  man) step_man ;;
  completion) step_completion ;;
  lintian) step_lintian ;;
  mount) step_mount ;;
  clean) rm -rf "$work" ;;
  *) fail "unknown step $step" ;;
esac
