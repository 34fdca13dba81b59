// The mount(8) helper: /sbin/mount.fuse.urunc-bootfs is a link to the
// urunc-bootfs binary, which takes this form when called by that name.
//
//   mount -t fuse.urunc-bootfs SOURCE MOUNTPOINT -o OPTIONS
//     -> mount.fuse.urunc-bootfs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]
//     == urunc-bootfs mount <flags from SOURCE and OPTIONS> MOUNTPOINT
//
// There is no umount helper: umount(8) finds a FUSE mount's type by statfs,
// which says "fuse" without the subtype, so it would run one only for
// `umount -l`, `-f` or mounts with utab entries, inconsistently. A plain
// `umount MOUNTPOINT` unmounts and the daemon then releases everything,
// removes its state file and exits by itself; `urunc-bootfs umount` does the
// same and waits for it.
//
// SOURCE forms (TYPE:VALUE, or TYPE=VALUE):
//   /PATH, dir:/PATH                  a directory (--source-dir)
//   containerd:[NS/]ID, container=ID  a containerd container (--container,
//                                     --namespace)
//   snapshot:KEY                      an active snapshot (--snapshot; needs
//                                     -o snapshotter=NAME)
//   parent:KEY                        a committed snapshot (--parent; needs
//                                     -o snapshotter=NAME)
//   bundle:/PATH                      an OCI bundle (--bundle: the container
//                                     from the path under containerd)
// OPTIONS: NAME=VALUE for every name in kHelperOptions (config.h), which
// the config file's allowed_mount_options may narrow (ErrorKind::permission
// for one it does not allow). Generic options that change nothing for a
// read-only, nosuid, nodev mount, or that only mean something to mount(8),
// fstab or systemd, are accepted and ignored, "rw" among them (mount(8)
// adds it by itself; the mount is read-only whatever it says). suid, dev,
// noexec, fsname, subtype, allow_other and default_permissions are refused
// (ErrorKind::usage), as is anything else unless -s (sloppy).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "commands.h"
#include "config.h"

namespace urunc::bootfs::cli {

struct SourceSpec {
  enum class Kind : std::uint8_t { dir, container, snapshot, parent, bundle };
  Kind kind = Kind::dir;
  std::string value;  // path, container id or snapshot key
  std::string ns;     // containerd:NS/ID only
};

// Pure. ErrorKind::usage naming the spec when no form matches.
[[nodiscard]] Result<SourceSpec> parse_source_spec(std::string_view spec);

struct HelperMount {
  MountRequest request;   // ready for run_mount()
  std::string log_level;  // effective
  bool fake = false;      // -f: check everything, mount nothing
  bool verbose = false;   // -v: print the equivalent command line
};

// Pure: the helper's arguments (without argv[0]) and the effective config
// -> the mount to do. Environment overrides (CONTAINERD_ADDRESS,
// CONTAINERD_NAMESPACE) are already in `config`.
[[nodiscard]] Result<HelperMount> parse_mount_helper(const std::vector<std::string>& args,
                                                     const Config& config);

// The `urunc-bootfs mount ...` command line a request amounts to (-v).
[[nodiscard]] std::string equivalent_command(const MountRequest& request);

// True when argv[0] names the helper; then run_helper() is the whole
// program.
[[nodiscard]] bool is_helper_name(std::string_view argv0);
int run_helper(int argc, char** argv);

// `config` with the environment's overrides applied (and their origin).
[[nodiscard]] Config with_environment(Config config);

}  // namespace urunc::bootfs::cli
