// Reading /proc/self/mountinfo: is a path a mount point, and of which type.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "urunc_bootfs/error.h"

namespace urunc::bootfs::cli {

// The filesystem type mounted exactly at `path` ("fuse.urunc-bootfs", ...),
// or nullopt when nothing is mounted there.
[[nodiscard]] std::optional<std::string> mounted_fstype(const std::string& path);

// Other mount points of the same filesystem as the one mounted at `path`
// (binds of it or of files in it), in this mount namespace.
[[nodiscard]] std::vector<std::string> other_mounts_of(const std::string& path);

// Whether `path` is the root of a mount (a dead FUSE mount included).
[[nodiscard]] bool is_mount_root(const std::string& path);
// What a mount may go on: an existing directory that is not already a
// mount point. The error names the path and what is wrong with it.
[[nodiscard]] Status check_mountpoint(const std::string& path);

inline constexpr const char* kOurFsType = "fuse.urunc-bootfs";

}  // namespace urunc::bootfs::cli
