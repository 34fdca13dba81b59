// Per-mount state files: what a mount is, so that `status`, `list`, `umount`
// and `gc` can find and undo it even after its daemon died.
//
// One JSON file per mountpoint under the state directory (default
// /run/urunc-bootfs, env URUNC_BOOTFS_STATE_DIR), written atomically
// (temp + rename), mode 0600. The daemon writes it before mounting and
// removes it only after everything it holds was released; a file whose
// daemon is gone names what is left to undo.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "urunc_bootfs/error.h"
#include "urunc_bootfs/process.h"

namespace urunc::bootfs::cli {

struct ArtifactState {
  std::string path;
  std::string role;
  std::string resolved;
  std::int64_t size = 0;
  unsigned mode = 0;
};

// A view on a device-mapper device (the devmapper snapshotter), as
// libdevmapper saw it once the view was attached.
struct DevmapperState {
  std::string device;  // the view's mount source: /dev/mapper/NAME or /dev/dm-N
  std::string check;   // "ok" or "skipped: device-mapper not available: ..."
  std::string name;
  std::string uuid;
  std::uint32_t major = 0;
  std::uint32_t minor = 0;
  std::int32_t open_count = 0;  // at the check; the view's own mount is one
  bool live_table = false;
  bool suspended = false;
  std::string table;     // "0 2097152 thin 253:0 3"
  std::string released;  // after release: "free", "gone", "held by ...", "skipped: ..."
};

struct ContainerdState {
  std::string address;
  std::string ns;
  std::string container;
  std::string snapshotter;
  std::string parent;                    // the committed snapshot the view is made from
  std::string view_key;                  // empty until the view exists
  std::string lease_id;                  // only in records of earlier versions
  std::vector<std::string> view_mounts;  // "type source options", for status
  std::optional<DevmapperState> devmapper = std::nullopt;  // a devmapper view's device
  // How the container was found: "containerd" (asked while mounting) or
  // "events" (located ahead, when containerd announced it).
  std::string located_by;
};

struct MountState {
  std::string mountpoint;
  // The mount namespace the mountpoint lives in (inode of /proc/PID/ns/mnt);
  // 0 = the namespace of whoever reads the record.
  std::uint64_t mount_ns = 0;
  ProcessId daemon;
  std::string source_kind;  // "dir" or "containerd"
  std::string source_dir;   // for "dir"
  std::optional<ContainerdState> containerd;
  std::string origin;  // where the artifact paths came from
  std::vector<ArtifactState> artifacts;
  std::int64_t mounted_at = 0;  // unix seconds
  std::string phase;            // "starting", "serving", "releasing", "release-failed"
  std::string last_error;       // when phase is release-failed
  // How long each step of the mount took, in ms, in order (locate, view,
  // attach, resolve, fuse, ready).
  std::vector<std::pair<std::string, double>> timings;
  bool view_shared = false;  // the view was already there for another mount
  // The whole mount was prepared ahead, detached, and attached at mount.
  bool mount_made_ahead = false;
};

[[nodiscard]] std::filesystem::path state_dir();
// The normalized absolute form of a mountpoint: its parent directory
// canonicalized, its last component kept as given. Works on a mountpoint
// whose daemon died (stat on it fails with ENOTCONN).
[[nodiscard]] std::string normalize_mountpoint(const std::string& path);
// The record of `mountpoint` in mount namespace `mount_ns` (0: ours).
[[nodiscard]] std::filesystem::path state_path(const std::string& mountpoint,
                                               std::uint64_t mount_ns = 0);
// This process's mount namespace (cached).
[[nodiscard]] std::uint64_t own_mount_ns();

// The record's daemon runs and still holds what it names. A dead daemon's
// record, or one whose release failed (the daemon let go of that view),
// is left for `umount`, the next mount of the mountpoint, or `gc`.
[[nodiscard]] bool held_by_live_daemon(const MountState& state);

[[nodiscard]] Status save_state(const MountState& state);
[[nodiscard]] Result<std::optional<MountState>> load_state(const std::string& mountpoint,
                                                           std::uint64_t mount_ns = 0);
[[nodiscard]] Result<std::vector<MountState>> list_states();
void remove_state(const std::string& mountpoint, std::uint64_t mount_ns = 0);

[[nodiscard]] nlohmann::json to_json(const MountState& state);
[[nodiscard]] Result<MountState> state_from_json(const nlohmann::json& doc);

}  // namespace urunc::bootfs::cli
